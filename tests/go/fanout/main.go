// A Go net/http service whose handlers call a downstream in the shapes
// that lose (or, worse, misattribute) trace context in Go: a call from the
// handler's goroutine, from a goroutine it spawned, and fanned out to
// several goroutines at once. Each downstream path carries the incoming
// request's tag, so a test can tell which request caused which call.
//
//	fanout -listen 127.0.0.1:P -down http://127.0.0.1:Q [-cert C -key K]
//
// GET /direct/TAG, /spawned/TAG, /fanout/TAG (3 calls). Stdlib only: it
// builds offline with every toolchain the tests use.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
)

var client *http.Client

func call(r *http.Request, path string) error {
	req, err := http.NewRequestWithContext(r.Context(), "GET", *down+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

var down = flag.String("down", "", "downstream base URL")

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address")
	cert := flag.String("cert", "", "TLS certificate (serve HTTPS)")
	key := flag.String("key", "", "TLS key")
	flag.Parse()
	client = &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		// The downstream's certificate is the tests' self-signed one.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		// HTTP/1.1 to the downstream, over TLS too.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		if len(parts) != 2 {
			http.Error(w, "want /SHAPE/TAG", 404)
			return
		}
		shape, tag := parts[0], parts[1]
		var errs []error
		var mu sync.Mutex
		record := func(err error) {
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}
		switch shape {
		case "direct":
			record(call(r, fmt.Sprintf("/down/direct/%s/0", tag)))
		case "spawned":
			done := make(chan struct{})
			go func() {
				defer close(done)
				record(call(r, fmt.Sprintf("/down/spawned/%s/0", tag)))
			}()
			<-done
		case "fanout":
			var wg sync.WaitGroup
			for i := 0; i < 3; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					record(call(r, fmt.Sprintf("/down/fanout/%s/%d", tag, i)))
				}(i)
			}
			wg.Wait()
		default:
			http.Error(w, "unknown shape", 404)
			return
		}
		if len(errs) > 0 {
			http.Error(w, errs[0].Error(), 502)
			return
		}
		fmt.Fprintf(w, "%s %s ok\n", shape, tag)
	})
	fmt.Fprintln(os.Stderr, "listening on", *listen)
	if *cert != "" {
		log.Fatal(http.ListenAndServeTLS(*listen, *cert, *key, nil))
	}
	log.Fatal(http.ListenAndServe(*listen, nil))
}
