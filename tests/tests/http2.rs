//! HTTP/2 and gRPC through the real kernel programs: a Python grpcio
//! greeter, etcd (grpc-go), nghttpd with nghttp, h2load and curl (prior
//! knowledge and `Upgrade: h2c`), curl to nginx over TLS (ALPN h2), and a
//! gRPC connection that was open before the agent started.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tracer_tests::{
    attr, attr_i, curl, free_port,
    h2::{
        etcd, etcdctl, grpc_client, grpc_js, grpc_server, nghttpd, nghttpx,
        node_grpc_client_script, node_grpc_server_script,
    },
    nginx_tls_h2, pid, require_root, s, self_signed_cert, wait_port, Agent, Proc, TempDir, Value,
};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";

fn name(sp: &Value) -> &str {
    s(sp, "name")
}

fn duration_ms(sp: &Value) -> u64 {
    sp["duration_ns"].as_u64().unwrap_or(0) / 1_000_000
}

#[test]
fn grpc_python_unary_streaming_errors_and_large_replies() {
    if !require_root("grpc_python_unary_streaming_errors_and_large_replies") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let server = grpc_server(port);
    let tp = format!("00-{T}-{S}-01");
    let (client_pid, out) = grpc_client(
        port,
        Some(&tp),
        &[
            "SayHello:world",
            "Stream:x",
            "SayHello:missing",
            "Big:x",
            "Collect:abcd",
            "Chat:hi",
        ],
    );
    assert_eq!(
        out,
        [
            "SayHello OK 11",
            "Stream OK 5",
            "SayHello NOT_FOUND",
            "Big OK 307200",
            "Collect OK 2",
            "Chat OK 3"
        ]
    );
    let srv = u64::from(server.pid());
    let servers = agent.wait_for(6, |sp| s(sp, "kind") == "SERVER" && pid(sp) == srv);
    let clients = agent.wait_for(6, |sp| {
        s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(client_pid)
    });
    let by = |spans: &[Value], method: &str, code: i64| -> Value {
        let found: Vec<&Value> = spans
            .iter()
            .filter(|sp| {
                name(sp) == format!("helloworld.Greeter/{method}")
                    && attr_i(sp, "rpc.grpc.status_code") == code
            })
            .collect();
        assert_eq!(found.len(), 1, "{method} {code}: {spans:#?}");
        found[0].clone()
    };
    for spans in [&servers, &clients] {
        assert_eq!(spans.len(), 6, "{spans:#?}");
        for sp in spans.iter() {
            // The metadata's traceparent continues the trace on both sides.
            assert_eq!(s(sp, "trace_id"), T, "{sp:#}");
            assert_eq!(s(sp, "parent_span_id"), S, "{sp:#}");
            assert_eq!(attr(sp, "rpc.system"), "grpc");
            assert_eq!(attr(sp, "rpc.service"), "helloworld.Greeter");
            assert_eq!(attr(sp, "network.protocol.version"), "2");
            assert_eq!(attr_i(sp, "server.port"), i64::from(port));
        }
        let ok = by(spans, "SayHello", 0);
        assert_eq!(attr(&ok, "rpc.method"), "SayHello");
        assert_ne!(s(&ok, "status"), "ERROR");
        // Server streaming: one span from the request to the trailers
        // after the fifth message (50 ms apart).
        let stream = by(spans, "Stream", 0);
        assert!(duration_ms(&stream) >= 200, "{stream:#}");
        // 300 KiB of DATA, then the trailers with the status.
        by(spans, "Big", 0);
        // Client streaming and bidirectional: one span per call.
        by(spans, "Collect", 0);
        by(spans, "Chat", 0);
    }
    // NOT_FOUND, from the trailers-only response: the caller's error.
    let nf = by(&servers, "SayHello", 5);
    assert_ne!(s(&nf, "status"), "ERROR", "{nf:#}");
    let nf = by(&clients, "SayHello", 5);
    assert_eq!(s(&nf, "status"), "ERROR");
    assert_eq!(attr(&nf, "error.type"), "NOT_FOUND");
    let log = agent.log();
    assert!(!log.contains("frame walk unavailable"), "{log}");
}

#[test]
fn etcd_grpc_go_put_and_range() {
    if !require_root("etcd_grpc_go_put_and_range") {
        return;
    }
    let dir = TempDir::new("etcd");
    let (port, peer) = (free_port(), free_port());
    let server = etcd(port, peer, &dir);
    let agent = Agent::start(&[]);
    let (put_pid, put) = etcdctl(port, &["put", "tracer-key", "v1"]);
    assert!(put.status.success(), "{put:?}");
    let (get_pid, get) = etcdctl(port, &["get", "tracer-key"]);
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("v1"),
        "{get:?}"
    );
    // A revision from the future: etcd answers with a non-zero status in
    // the trailers.
    let (bad_pid, bad) = etcdctl(port, &["get", "tracer-key", "--rev=999"]);
    assert!(!bad.status.success());
    let srv = u64::from(server.pid());
    let on_server = |n: &'static str| {
        move |sp: &Value| s(sp, "kind") == "SERVER" && pid(sp) == srv && name(sp) == n
    };
    let puts = agent.wait_for(1, on_server("etcdserverpb.KV/Put"));
    assert_eq!(attr_i(&puts[0], "rpc.grpc.status_code"), 0);
    assert_eq!(attr(&puts[0], "rpc.method"), "Put");
    let ranges = agent.wait_for(2, on_server("etcdserverpb.KV/Range"));
    let mut codes: Vec<i64> = ranges
        .iter()
        .map(|sp| attr_i(sp, "rpc.grpc.status_code"))
        .collect();
    codes.sort();
    assert_eq!(codes[0], 0);
    assert!(codes[1] > 0, "{ranges:#?}");
    for (p, n) in [
        (put_pid, "etcdserverpb.KV/Put"),
        (get_pid, "etcdserverpb.KV/Range"),
        (bad_pid, "etcdserverpb.KV/Range"),
    ] {
        let c = agent.wait_for(1, |sp| {
            s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(p) && name(sp) == n
        });
        assert_eq!(attr(&c[0], "rpc.system"), "grpc");
        assert_eq!(s(&c[0], "status") == "ERROR", p == bad_pid, "{:#}", c[0]);
    }
}

#[test]
fn nghttp2_clients_curl_prior_knowledge_and_h2c_upgrade() {
    if !require_root("nghttp2_clients_curl_prior_knowledge_and_h2c_upgrade") {
        return;
    }
    let www = TempDir::new("h2www");
    std::fs::write(www.0.join("index.html"), "hello\n").expect("index");
    std::fs::write(www.0.join("big.bin"), vec![b'x'; 300 * 1024]).expect("big");
    let port = free_port();
    let server = nghttpd(port, &www);
    let agent = Agent::start(&[]);
    let base = format!("http://127.0.0.1:{port}");
    let srv = u64::from(server.pid());
    let server_spans = |path: &'static str| {
        move |sp: &Value| {
            s(sp, "kind") == "SERVER" && pid(sp) == srv && attr(sp, "url.path") == path
        }
    };

    // nghttp: three concurrent streams on one connection.
    let out = std::process::Command::new("nghttp")
        .args(["-n", "-m", "3"])
        .arg(format!("{base}/index.html"))
        .output()
        .expect("nghttp");
    assert!(out.status.success());
    let sv = agent.wait_for(3, server_spans("/index.html"));
    let cl = agent.wait_for(3, |sp| {
        s(sp, "kind") == "CLIENT" && s(sp, "name") == "GET /index.html"
    });
    for sp in sv.iter().chain(&cl) {
        assert_eq!(attr_i(sp, "http.response.status_code"), 200);
        assert_eq!(attr(sp, "network.protocol.version"), "2");
    }

    // h2load: 200 requests, 2 connections, 10 streams each at once.
    let out = std::process::Command::new("h2load")
        .args(["-n", "200", "-c", "2", "-m", "10"])
        .arg(format!("{base}/big.bin"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("200 succeeded"), "{text}");
    let big = agent.wait_for(200, server_spans("/big.bin"));
    assert_eq!(big.len(), 200);
    assert!(big
        .iter()
        .all(|sp| attr_i(sp, "http.response.status_code") == 200));
    let h2load_clients = agent.wait_for(200, |sp| {
        s(sp, "kind") == "CLIENT" && attr(sp, "url.path") == "/big.bin"
    });
    assert_eq!(h2load_clients.len(), 200);

    // curl with prior knowledge, and a 404.
    let (curl_pid, _) = curl(&[
        "-o",
        "/dev/null",
        "--http2-prior-knowledge",
        &format!("{base}/nope"),
    ]);
    let nf = agent.wait_for(1, |sp| pid(sp) == u64::from(curl_pid));
    assert_eq!(attr_i(&nf[0], "http.response.status_code"), 404);
    assert_eq!(name(&nf[0]), "GET /nope");
    assert_eq!(s(&nf[0], "status"), "ERROR");

    // curl --http2 on http:// asks for `Upgrade: h2c` (nghttpd does not
    // take it; nghttpx, in front of it, does). The answer comes on stream
    // 1 after the 101, in the same write, and the span is that answer's.
    let px_port = free_port();
    let _px = nghttpx(px_port, port);
    let (up_pid, body) = curl(&[
        "--http2",
        &format!("http://127.0.0.1:{px_port}/index.html?up=1"),
    ]);
    assert_eq!(body, "hello\n");
    let up = agent.wait_for(1, |sp| pid(sp) == u64::from(up_pid));
    assert_eq!(up.len(), 1);
    let up_srv = agent.wait_for(1, |sp| {
        s(sp, "kind") == "SERVER" && attr_i(sp, "server.port") == i64::from(px_port)
    });
    for sp in [&up[0], &up_srv[0]] {
        assert_eq!(attr_i(sp, "http.response.status_code"), 200, "{sp:#}");
        assert_eq!(attr(sp, "network.protocol.version"), "2");
        assert_eq!(name(sp), "GET /index.html");
    }
}

#[test]
fn node_grpc_js_over_tls() {
    if !require_root("node_grpc_js_over_tls") {
        return;
    }
    let dir = TempDir::new("grpc-js");
    let (cert, key) = self_signed_cert(&dir);
    let port = free_port();
    let server = Proc::spawn(
        "node grpc server",
        Command::new("node")
            .arg("-e")
            .arg(node_grpc_server_script())
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .env("GRPC_JS", grpc_js())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    let agent = Agent::start(&[]);
    let tp = format!("00-{T}-{S}-01");
    let out = Command::new("node")
        .arg("-e")
        .arg(node_grpc_client_script())
        .arg(port.to_string())
        .arg(&cert)
        .arg(&tp)
        .args(["world", "missing", "again"])
        .env("GRPC_JS", grpc_js())
        .output()
        .expect("node grpc client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "world 0\nmissing 5\nagain 0\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = u64::from(server.pid());
    let servers = agent.wait_for(3, |sp| s(sp, "kind") == "SERVER" && pid(sp) == srv);
    let clients = agent.wait_for(3, |sp| {
        s(sp, "kind") == "CLIENT" && attr_i(sp, "server.port") == i64::from(port)
    });
    for spans in [&servers, &clients] {
        let mut codes: Vec<i64> = spans
            .iter()
            .map(|sp| attr_i(sp, "rpc.grpc.status_code"))
            .collect();
        codes.sort();
        assert_eq!(codes, [0, 0, 5], "{spans:#?}");
        for sp in spans.iter() {
            // h2 over TLS, through node's own OpenSSL and the TLS probes.
            assert_eq!(name(sp), "helloworld.Greeter/SayHello", "{sp:#}");
            assert_eq!(attr(sp, "network.protocol.version"), "2");
            assert_eq!(s(sp, "trace_id"), T);
            assert_eq!(s(sp, "parent_span_id"), S);
        }
    }
    let nf = clients
        .iter()
        .find(|sp| attr_i(sp, "rpc.grpc.status_code") == 5)
        .expect("NOT_FOUND client span");
    assert_eq!(s(nf, "status"), "ERROR");
}

#[test]
fn curl_http2_over_tls_to_nginx() {
    if !require_root("curl_http2_over_tls_to_nginx") {
        return;
    }
    let port = free_port();
    let (nginx, _dir) = nginx_tls_h2(port, "");
    let agent = Agent::start(&[]);
    let (curl_pid, body) = curl(&["-k", "--http2", &format!("https://127.0.0.1:{port}/hello")]);
    assert_eq!(body, "hello\n");
    let cl = agent.wait_for(1, |sp| pid(sp) == u64::from(curl_pid));
    let sv = agent.wait_for(1, |sp| {
        s(sp, "kind") == "SERVER"
            && attr(sp, "url.path") == "/hello"
            && attr_i(sp, "server.port") == i64::from(port)
    });
    for sp in [&cl[0], &sv[0]] {
        assert_eq!(attr(sp, "network.protocol.version"), "2", "{sp:#}");
        assert_eq!(attr(sp, "url.scheme"), "https");
        assert_eq!(attr_i(sp, "http.response.status_code"), 200);
        assert_eq!(name(sp), "GET /hello");
    }
    drop(nginx);
}

#[test]
fn joined_mid_connection_never_names_a_stream_wrongly() {
    if !require_root("joined_mid_connection_never_names_a_stream_wrongly") {
        return;
    }
    let port = free_port();
    let server = grpc_server(port);
    // One channel: SayHello before the agent starts (its :path and
    // content-type go into the HPACK tables then), then three methods
    // never called before, each :path a new literal.
    let client = std::thread::spawn(move || {
        grpc_client(
            port,
            None,
            &[
                "SayHello:a",
                "SayHello:b",
                "sleep:6",
                "Echo1:x",
                "Echo2:x",
                "Echo3:x",
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    let agent = Agent::start(&[]);
    let (_, out) = client.join().expect("client thread");
    assert_eq!(
        out.iter().filter(|l| l.starts_with("Echo")).count(),
        3,
        "{out:?}"
    );
    let srv = u64::from(server.pid());
    // The first stream after the join may go by before the connection is
    // recognised; the last two are seen.
    agent.wait_for(2, |sp| s(sp, "kind") == "SERVER" && pid(sp) == srv);
    std::thread::sleep(Duration::from_millis(500));
    let spans: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| pid(sp) == srv || s(sp, "kind") == "CLIENT")
        .collect();
    let echo = |n: &str| n.starts_with("helloworld.Greeter/Echo");
    for sp in &spans {
        // A SayHello name would come from a stale table entry: never.
        assert!(
            echo(name(sp)) || ["*", "POST"].contains(&name(sp)),
            "{sp:#}"
        );
        if !echo(name(sp)) {
            assert_eq!(attr_i(sp, "tracer.headers_unknown"), 1, "{sp:#}");
        }
    }
    // A :path first sent after the join is known exactly.
    let exact: Vec<&str> = spans
        .iter()
        .filter(|sp| s(sp, "kind") == "SERVER" && echo(name(sp)))
        .map(name)
        .collect();
    assert!(exact.contains(&"helloworld.Greeter/Echo3"), "{spans:#?}");
    for sp in spans.iter().filter(|sp| echo(name(sp))) {
        assert_eq!(attr(sp, "rpc.system"), "grpc");
    }
}
