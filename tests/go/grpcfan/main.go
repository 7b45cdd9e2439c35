// A Go service whose net/http handlers make grpc-go unary calls, in the
// shapes a goroutine-aware tracer has to link to the right parent: one
// call from the handler's goroutine, three concurrent calls from three
// goroutines it spawned, and a call made by a gRPC handler itself. All
// calls share one *grpc.ClientConn, so they are HTTP/2 streams
// multiplexed on one TCP connection and written by grpc's loopy writer
// goroutine, not by the goroutine that made the call.
//
//	grpcfan -http 127.0.0.1:P -grpc 127.0.0.1:Q -target 127.0.0.1:R [-cert C -key K]
//
// With -cert and -key, gRPC goes over TLS both ways (grpc-go's TLS
// credentials, which wrap the *tls.Conn in a type of their own).
//
// Routes (each answers 200 "ok" once its calls succeeded):
//
//	GET /grpc/TAG       calls /grpc.TAG/Call
//	GET /grpcfan/TAG    calls /grpcfan.TAG.0/Call .. .2/Call, concurrently
//	GET /grpcchain/TAG  calls /grpcchain.TAG/Call, whose gRPC handler calls
//	                    /grpcchain.TAG.hop/Call
//
// Every call names the request that caused it in its method path (the
// only per-call field a tracer sees without the message bodies), so a
// test can check each link exactly. The server answers any method
// (grpc.UnknownServiceHandler) with an empty message, so no generated
// code is needed. -target may be this process's own -grpc.
//
// Builds in GOPATH mode against Debian's golang-google-grpc-dev (1.33).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var cc *grpc.ClientConn

// call makes one unary call of `method`; the caller's context bounds it,
// so a stuck downstream fails the request instead of hanging the test.
// Any proto message does as the empty request and response.
func call(ctx context.Context, method string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return cc.Invoke(ctx, method, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
}

// serveAny answers every method. It runs on the goroutine grpc-go starts
// for the stream, so the call it makes for /grpcchain.TAG/Call is that
// stream's child (the gRPC-handler shape).
func serveAny(_ interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var in healthpb.HealthCheckRequest
	if err := stream.RecvMsg(&in); err != nil {
		return err
	}
	if strings.HasPrefix(method, "/grpcchain.") && !strings.HasSuffix(method, ".hop/Call") {
		hop := strings.TrimSuffix(method, "/Call") + ".hop/Call"
		if err := call(stream.Context(), hop); err != nil {
			return err
		}
	}
	return stream.SendMsg(&healthpb.HealthCheckResponse{})
}

func handle(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 2 {
		http.Error(w, "want /SHAPE/TAG", 404)
		return
	}
	shape, tag := parts[0], parts[1]
	var err error
	switch shape {
	case "grpc", "grpcchain":
		err = call(ctx, fmt.Sprintf("/%s.%s/Call", shape, tag))
	case "grpcfan":
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				errs[i] = call(ctx, fmt.Sprintf("/grpcfan.%s.%d/Call", tag, i))
			}(i)
		}
		wg.Wait()
		for _, e := range errs {
			if e != nil {
				err = e
			}
		}
	default:
		http.Error(w, "unknown shape", 404)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), 502)
		return
	}
	fmt.Fprintln(w, "ok")
}

func main() {
	httpAddr := flag.String("http", "127.0.0.1:18100", "HTTP/1 listen address")
	grpcAddr := flag.String("grpc", "127.0.0.1:18101", "gRPC listen address")
	target := flag.String("target", "127.0.0.1:18101", "gRPC server to call")
	cert := flag.String("cert", "", "TLS certificate for gRPC (with -key)")
	key := flag.String("key", "", "TLS key for gRPC (with -cert)")
	flag.Parse()

	serverOpts := []grpc.ServerOption{grpc.UnknownServiceHandler(serveAny)}
	dialOpt := grpc.WithInsecure()
	if *cert != "" {
		creds, err := credentials.NewServerTLSFromFile(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		serverOpts = append(serverOpts, grpc.Creds(creds))
		// The test's certificate is self-signed for 127.0.0.1.
		dialOpt = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))
	}

	// Listen before printing, so "listening" means connectable.
	gl, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(serverOpts...)
	go func() { log.Fatal(srv.Serve(gl)) }()

	// Not WithBlock: the target may be a process started after this one.
	// One ClientConn for every call, so streams share one connection.
	cc, err = grpc.Dial(*target, dialOpt)
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println("listening grpc", gl.Addr())
	fmt.Println("listening http", hl.Addr())
	log.Fatal(http.Serve(hl, http.HandlerFunc(handle)))
}
