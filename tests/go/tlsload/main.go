// An HTTPS server and its clients in one process, under goroutine churn:
// every request goes on a fresh TLS connection (so the transport starts
// new reader and writer goroutines, with small stacks, whose first
// crypto/tls Read runs the record layer), each client and handler first
// recurses deeply (stacks grow and are copied while probed calls are in
// flight on other goroutines), and bodies of varied sizes arrive in
// several Reads. It checks every body and exits non-zero on any error.
//
//	tlsload -workers W -requests R [-delay D]
//
// prints "ok N" with N = W*R. Stdlib only, offline.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// deep recurses d frames (each with some stack) before calling f.
func deep(d int, f func()) {
	var pad [256]byte
	pad[d%256] = byte(d)
	if d == 0 {
		f()
		return
	}
	deep(d-1, f)
	if pad[d%256] != byte(d) {
		panic("stack corrupted")
	}
}

func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + (i*7+n)%26)
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

func main() {
	workers := flag.Int("workers", 32, "concurrent clients")
	requests := flag.Int("requests", 8, "requests per client")
	delay := flag.Duration("delay", 0, "wait before the first request")
	flag.Parse()

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{selfSigned()},
		// HTTP/1.1: one request per connection, as asked.
		NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/load/", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path[len("/load/"):], ""))
		if err != nil {
			n = 1
		}
		n = n%65536 + 1
		var wg sync.WaitGroup
		var b []byte
		wg.Add(1)
		// The answer is made on a goroutine of its own, deep in its stack.
		go func() {
			defer wg.Done()
			deep(64+n%192, func() { b = body(n) })
		}()
		wg.Wait()
		w.Header().Set("X-Sum", sum(b))
		w.Write(b)
	})
	go http.Serve(ln, mux)
	url := "https://" + ln.Addr().String()
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
		ForceAttemptHTTP2: false,
		TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	time.Sleep(*delay)

	var ok, bad int64
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < *requests; i++ {
				n := (w*7919 + i*104729) % 65536
				deep(32+(w+i)%128, func() {
					resp, err := client.Get(fmt.Sprintf("%s/load/%d", url, n))
					if err != nil {
						log.Printf("request: %v", err)
						atomic.AddInt64(&bad, 1)
						return
					}
					got, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || len(got) != n%65536+1 || sum(got) != resp.Header.Get("X-Sum") {
						log.Printf("bad body for %d: %d bytes, %v", n, len(got), err)
						atomic.AddInt64(&bad, 1)
						return
					}
					atomic.AddInt64(&ok, 1)
				})
			}
		}(w)
	}
	wg.Wait()
	fmt.Printf("ok %d\n", ok)
	if bad != 0 || ok != int64(*workers**requests) {
		os.Exit(1)
	}
}
