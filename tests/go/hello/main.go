// The benchmark's Go server: net/http answering GET /bench with a short
// body, over plaintext HTTP/1.1 and over HTTPS (crypto/tls, HTTP/1.1 so
// that wrk's requests map to Reads and Writes one for one).
//
//	hello -http 127.0.0.1:P -https 127.0.0.1:Q -cert C -key K
//
// Stdlib only: builds offline with every toolchain the tests use.
package main

import (
	"crypto/tls"
	"flag"
	"log"
	"net/http"
)

func main() {
	plain := flag.String("http", "127.0.0.1:18090", "plaintext address")
	secure := flag.String("https", "127.0.0.1:18091", "HTTPS address")
	cert := flag.String("cert", "", "certificate")
	key := flag.String("key", "", "key")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/bench", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok\n"))
	})
	go func() {
		log.Fatal(http.ListenAndServe(*plain, mux))
	}()
	srv := &http.Server{
		Addr:         *secure,
		Handler:      mux,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}
