//! Root integration tests: the real agent (real BPF programs on syscall
//! tracepoints) tracing real, unmodified programs over loopback HTTP/1.x.

use std::{io::Write, process::Command, process::Stdio, thread, time::Duration};

use tracer_tests::*;

const TP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TP_PARENT: &str = "00f067aa0ba902b7";

fn python(span: &Value) -> bool {
    exe(span).starts_with("python3")
}

#[test]
fn curl_to_nginx_gives_server_and_client_spans() {
    if !require_root("curl_to_nginx_gives_server_and_client_spans") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let url = format!("http://127.0.0.1:{port}/hello/42?token=secret");
    let (curl_pid, _) = curl(&["-o", "/dev/null", "-A", "tracer-test/1.0", &url]);

    let server = agent.wait_for(1, |sp| is_span(sp, "SERVER", "nginx", port));
    let client = agent.wait_for(1, |sp| is_span(sp, "CLIENT", "curl", port));
    assert_eq!(server.len(), 1, "{server:#?}");
    assert_eq!(client.len(), 1, "{client:#?}");
    let (sv, cl) = (&server[0], &client[0]);
    for sp in [sv, cl] {
        assert_eq!(s(sp, "name"), "GET /hello/{id}");
        assert_eq!(attr(sp, "http.request.method"), "GET");
        assert_eq!(attr(sp, "url.path"), "/hello/42");
        assert_eq!(attr_i(sp, "http.response.status_code"), 200);
        assert_eq!(attr(sp, "server.address"), "127.0.0.1");
        assert_eq!(attr(sp, "user_agent.original"), "tracer-test/1.0");
        assert_eq!(attr(sp, "network.protocol.version"), "1.1");
        assert_eq!(s(sp, "status"), "UNSET");
        assert!(sp["duration_ns"].as_u64().unwrap_or(0) > 0, "{sp:#}");
        assert_eq!(s(sp, "trace_id").len(), 32);
        assert_eq!(s(sp, "span_id").len(), 16);
        assert!(
            sp["parent_span_id"].is_null(),
            "no incoming context: root span"
        );
        // The query string is never exported.
        assert!(!sp.to_string().contains("secret"), "{sp:#}");
    }
    assert_eq!(pid(cl), u64::from(curl_pid));
    // Same request seen from both ends: the server span nests in time
    // inside the client span (both from the kernel's monotonic clock).
    assert!(start(cl) <= start(sv), "client {cl:#} server {sv:#}");
    assert!(end(sv) <= end(cl), "client {cl:#} server {sv:#}");
    // The client's socket is the server's peer and vice versa.
    assert_eq!(attr(sv, "client.address"), "127.0.0.1");
    assert_eq!(attr_i(cl, "network.peer.port"), i64::from(port));
    assert!(attr_i(sv, "network.peer.port") > 0);
}

#[test]
fn incoming_traceparent_is_continued() {
    if !require_root("incoming_traceparent_is_continued") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let tp = format!("traceparent: 00-{TP_TRACE}-{TP_PARENT}-01");
    let url = format!("http://127.0.0.1:{port}/hello");
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &tp,
        "-H",
        "tracestate: vendor=x",
        &url,
    ]);
    // And one with an invalid header (upper-case hex): a new trace.
    let bad = format!("traceparent: 00-{}-{TP_PARENT}-01", TP_TRACE.to_uppercase());
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &bad,
        &format!("http://127.0.0.1:{port}/missing"),
    ]);

    let ok = agent.wait_for(1, |sp| {
        is_span(sp, "SERVER", "nginx", port) && attr(sp, "url.path") == "/hello"
    });
    assert_eq!(s(&ok[0], "trace_id"), TP_TRACE);
    assert_eq!(s(&ok[0], "parent_span_id"), TP_PARENT);
    assert_eq!(s(&ok[0], "tracestate"), "vendor=x");
    let fresh = agent.wait_for(1, |sp| {
        is_span(sp, "SERVER", "nginx", port) && attr(sp, "url.path") == "/missing"
    });
    assert_ne!(
        s(&fresh[0], "trace_id"),
        TP_TRACE.to_uppercase().to_lowercase()
    );
    assert!(fresh[0]["parent_span_id"].is_null());
    assert_eq!(attr_i(&fresh[0], "http.response.status_code"), 404);
    // 404 is not a server error, but it is a client error.
    assert_eq!(s(&fresh[0], "status"), "UNSET");
    let c = agent.wait_for(1, |sp| {
        is_span(sp, "CLIENT", "curl", port) && attr(sp, "url.path") == "/missing"
    });
    assert_eq!(s(&c[0], "status"), "ERROR");
}

#[test]
fn keep_alive_connection_with_n_requests_gives_n_spans() {
    if !require_root("keep_alive_connection_with_n_requests_gives_n_spans") {
        return;
    }
    const N: usize = 7;
    let agent = Agent::start(&[]);
    let port = free_port();
    let (_nginx, dir) = nginx(port, "");
    // A static body large enough to be cut by the capture cap and sent with
    // sendfile: its bytes are skipped, not parsed as the next response.
    std::fs::write(dir.0.join("www/big.bin"), vec![b'z'; 200_000]).expect("big file");
    let mut urls: Vec<String> = (0..N)
        .map(|i| format!("http://127.0.0.1:{port}/hello/{i}"))
        .collect();
    urls.insert(3, format!("http://127.0.0.1:{port}/big.bin"));
    let mut args = vec!["-o", "/dev/null"];
    for _ in 1..urls.len() {
        args.extend(["-o", "/dev/null"]);
    }
    args.extend(urls.iter().map(String::as_str));
    curl(&args);

    agent.wait_for(N + 1, |sp| is_span(sp, "SERVER", "nginx", port));
    let client = agent.wait_for(N + 1, |sp| is_span(sp, "CLIENT", "curl", port));
    thread::sleep(Duration::from_millis(300));
    let server: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| is_span(sp, "SERVER", "nginx", port))
        .collect();
    assert_eq!(server.len(), N + 1, "{server:#?}");
    assert_eq!(client.len(), N + 1, "{client:#?}");
    let paths: Vec<&str> = server
        .iter()
        .map(|sp| attr(sp, "url.path").as_str().unwrap_or(""))
        .collect();
    let mut want: Vec<String> = (0..N).map(|i| format!("/hello/{i}")).collect();
    want.insert(3, "/big.bin".into());
    assert_eq!(paths, want);
    // One connection: every server span has the same client port.
    let ports: std::collections::HashSet<i64> =
        server.iter().map(|sp| attr_i(sp, "client.port")).collect();
    assert_eq!(
        ports.len(),
        1,
        "requests were not on one connection: {ports:?}"
    );
    for sp in server.iter().chain(client.iter()) {
        assert_eq!(attr_i(sp, "http.response.status_code"), 200, "{sp:#}");
        assert!(
            sp["attributes"].get("tracer.end_estimated").is_none(),
            "{sp:#}"
        );
    }
}

#[test]
fn python_server_started_after_agent_post_and_errors() {
    if !require_root("python_server_started_after_agent_post_and_errors") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let _py = python_server(port);
    let base = format!("http://127.0.0.1:{port}");
    let body = "x".repeat(10_000);
    curl(&[
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "--data-binary",
        &body,
        &format!("{base}/items"),
    ]);
    curl(&["-o", "/dev/null", &format!("{base}/status/503")]);
    curl(&[
        "-o",
        "/dev/null",
        &format!("{base}/chunked/50000"),
        &format!("{base}/status/204"),
    ]);

    let server = agent.wait_for(4, |sp| {
        s(sp, "kind") == "SERVER" && python(sp) && attr_i(sp, "server.port") == i64::from(port)
    });
    let by_path = |p: &str| {
        server
            .iter()
            .find(|sp| attr(sp, "url.path") == p)
            .unwrap_or_else(|| panic!("no server span for {p}: {server:#?}"))
    };
    let post = by_path("/items");
    assert_eq!(s(post, "name"), "POST /items");
    assert_eq!(attr_i(post, "http.response.status_code"), 201);
    let err = by_path("/status/503");
    assert_eq!(s(err, "name"), "GET /status/{id}");
    assert_eq!(s(err, "status"), "ERROR");
    assert_eq!(attr(err, "error.type"), "503");
    let chunked = by_path("/chunked/50000");
    assert_eq!(attr_i(chunked, "http.response.status_code"), 200);
    let no_content = by_path("/status/204");
    assert_eq!(attr_i(no_content, "http.response.status_code"), 204);
    let client = agent.wait_for(4, |sp| is_span(sp, "CLIENT", "curl", port));
    assert_eq!(client.len(), 4, "{client:#?}");
}

/// A Python client holding one keep-alive connection: one request before
/// the agent starts, more after a line on stdin.
const PY_CLIENT: &str = r#"
import sys, http.client
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
def get(p):
    c.request("GET", p); r = c.getresponse(); r.read()
get("/before")
print("ready", flush=True)
sys.stdin.readline()
for i in range(3):
    get("/after/%d" % i)
print("done", flush=True)
"#;

#[test]
fn connection_opened_before_agent_is_traced() {
    if !require_root("connection_opened_before_agent_is_traced") {
        return;
    }
    let port = free_port();
    let _py = python_server(port);
    let mut client = Proc::spawn(
        "python3 client",
        Command::new("python3")
            .arg("-c")
            .arg(PY_CLIENT)
            .arg(port.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut out = std::io::BufReader::new(client.child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("client ready");
    assert_eq!(line.trim(), "ready");

    let agent = Agent::start(&[]);
    client
        .child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).expect("client done");
    assert_eq!(line.trim(), "done");

    let paths = |spans: &[Value]| -> Vec<String> {
        spans
            .iter()
            .map(|sp| attr(sp, "url.path").as_str().unwrap_or("").to_owned())
            .collect()
    };
    let on_port = move |sp: &Value, kind: &str| {
        s(sp, "kind") == kind && python(sp) && attr_i(sp, "server.port") == i64::from(port)
    };
    // The client writes every request after the agent started: all three.
    let client_spans = agent.wait_for(3, |sp| on_port(sp, "CLIENT"));
    assert_eq!(paths(&client_spans), ["/after/0", "/after/1", "/after/2"]);
    // The server thread was already blocked in recv() for /after/0 when the
    // probes attached. A syscall entered before attach is invisible (its
    // arguments were never recorded), so that request is missed and its
    // response is counted as an orphan, never mis-paired. The rest is traced.
    agent.wait_for(2, |sp| on_port(sp, "SERVER"));
    thread::sleep(Duration::from_millis(300));
    let server: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| on_port(sp, "SERVER"))
        .collect();
    assert_eq!(paths(&server), ["/after/1", "/after/2"], "{server:#?}");
    assert_eq!(s(&server[0], "name"), "GET /after/{id}");
}

#[test]
fn exe_filter_keeps_only_matching_processes() {
    if !require_root("exe_filter_keeps_only_matching_processes") {
        return;
    }
    let agent = Agent::start(&["--exe", "nginx"]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/hello")]);
    }
    agent.wait_for(3, |sp| is_span(sp, "SERVER", "nginx", port));
    thread::sleep(Duration::from_millis(500));
    let others: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| exe(sp) != "nginx")
        .collect();
    assert!(others.is_empty(), "filtered processes leaked: {others:#?}");
}

#[test]
fn agent_refuses_bad_configuration_loudly() {
    if !require_root("agent_refuses_bad_configuration_loudly") {
        return;
    }
    // The kernel refuses a connection map with no entries: the agent must
    // exit non-zero with the kernel's reason, never run without its probes.
    let (status, err) = run_tracer_to_exit(&["--max-connections", "0"]);
    assert!(!status.success(), "tracer ran without its BPF maps: {err}");
    assert!(err.contains("failed to create map `CONNS`"), "{err}");
    assert!(err.contains("Invalid argument"), "{err}");
}

/// Names of loaded BPF programs that belong to the tracer (bpftool).
#[test]
fn sigterm_detaches_every_program() {
    if !require_root("sigterm_detaches_every_program") {
        return;
    }
    let mut agent = Agent::start(&[]);
    let loaded = loaded_tracer_programs();
    // Other tests' agents are stopped before this one starts (the suite
    // runs one test at a time), so every tracer program is this agent's.
    for p in [
        "tracer_sys_exit",
        "tracer_enter_re",
        "tracer_enter_cl",
        "tracer_process_",
    ] {
        assert!(
            loaded.iter().any(|n| n.starts_with(p)),
            "{p} not loaded: {loaded:?}"
        );
    }
    let st = agent.stop_with(libc::SIGTERM).expect("agent exit status");
    assert!(st.success(), "agent exited with {st}: {}", agent.log());
    assert!(agent.log().contains("summary:"), "{}", agent.log());
    let left = loaded_tracer_programs();
    assert!(
        left.is_empty(),
        "programs still loaded after exit: {left:?}"
    );
}

#[test]
fn inetd_style_server_is_one_connection_across_fds() {
    if !require_root("inetd_style_server_is_one_connection_across_fds") {
        return;
    }
    // busybox httpd accepts in the parent, forks, and the child reads the
    // request on fd 0 and writes the response on fd 1 (dup2): to the
    // kernel, three fds in two processes; to the tracer, one connection.
    let mut agent = Agent::start(&[]);
    let port = free_port();
    let dir = TempDir::new("busybox-httpd");
    std::fs::write(dir.0.join("index.html"), "hello\n").expect("page");
    let httpd = Proc::spawn(
        "busybox httpd",
        Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    let base = format!("http://127.0.0.1:{port}");
    curl(&["-o", "/dev/null", &format!("{base}/index.html")]);
    curl(&["-o", "/dev/null", &format!("{base}/missing/7")]);
    let servers = agent.wait_for(2, |sp| is_span(sp, "SERVER", "busybox", port));
    assert_eq!(servers.len(), 2, "{servers:#?}");
    assert_eq!(s(&servers[0], "name"), "GET /index.html");
    assert_eq!(attr_i(&servers[0], "http.response.status_code"), 200);
    assert_eq!(s(&servers[1], "name"), "GET /missing/{id}");
    assert_eq!(attr_i(&servers[1], "http.response.status_code"), 404);
    for sv in &servers {
        // Served by a child, whose socket came from the parent's accept.
        assert_ne!(pid(sv), u64::from(httpd.pid()), "{sv:#}");
        assert!(attr_i(sv, "client.port") > 0, "{sv:#}");
    }
    // Each request seen from both ends, nothing left unpaired.
    let clients = agent.wait_for(2, |sp| is_span(sp, "CLIENT", "curl", port));
    assert_eq!(clients.len(), 2);
    agent.stop();
    let log = agent.log();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    assert!(summary.contains("conns_joined=2"), "{summary}");
    assert!(!summary.contains("orphan_responses"), "{summary}");
    assert!(!summary.contains("unanswered_requests"), "{summary}");
}

#[test]
fn ring_buffer_overflow_is_counted_and_never_mispairs() {
    if !require_root("ring_buffer_overflow_is_counted_and_never_mispairs") {
        return;
    }
    // The smallest ring the kernel takes, under two saturating loads with
    // different answers: events are lost, but a span never pairs a
    // request with another request's response.
    // Degradation off: the drops are the point here (it would shed).
    let mut agent = Agent::start(&[
        "--ring-buffer-bytes",
        "4096",
        "--stats-interval",
        "1",
        "--degradation",
        "off",
    ]);
    let port = free_port();
    let (_nginx, _dir) = nginx(
        port,
        "location /ok/ { return 200 \"ok\\n\"; } location /nf/ { return 404; }",
    );
    let wrk = |path: &str| {
        Command::new("wrk")
            .args([
                "-t1",
                "-c4",
                "-d3s",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wrk (installed by cargo xtask setup)")
    };
    let (mut a, mut b) = (wrk("/ok/a"), wrk("/nf/b"));
    a.wait().expect("wrk");
    b.wait().expect("wrk");
    // Load is gone: tracing is exact again.
    thread::sleep(Duration::from_millis(500));
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/ok/after"),
    ]);
    // Both ends: waiting for the first alone raced the second's event.
    let after = agent.wait_for(2, |sp| attr(sp, "url.path") == "/ok/after");
    assert_eq!(after.len(), 2, "one SERVER and one CLIENT span: {after:#?}");
    agent.stop();
    let spans = agent.spans();
    let nginx_spans: Vec<&Value> = spans
        .iter()
        .filter(|sp| s(sp, "kind") == "SERVER" && exe(sp) == "nginx")
        .collect();
    assert!(
        nginx_spans.len() > 10,
        "hardly any spans: {}",
        nginx_spans.len()
    );
    for sp in &nginx_spans {
        let path = attr(sp, "url.path").as_str().unwrap_or("");
        let want = if path.starts_with("/ok/") { 200 } else { 404 };
        assert_eq!(
            attr_i(sp, "http.response.status_code"),
            want,
            "mispaired: {sp:#}"
        );
    }
    let log = agent.log();
    assert!(
        log.contains("kernel ring buffer full"),
        "no drop warning:\n{log}"
    );
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    assert!(summary.contains("ringbuf_drops="), "{summary}");
    assert!(summary.contains("seq_gaps="), "{summary}");
}

/// Reads a request on the accepted socket, moves the socket to fd 9 with
/// dup2 and answers there; the next request is read and answered on 9.
const PY_DUP2_SERVER: &str = r#"
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
while True:
    c, _ = s.accept()
    if not c.recv(65536):
        c.close()  # a port probe
        continue
    os.dup2(c.fileno(), 9)
    body = b"first\n"
    os.write(9, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    os.read(9, 65536)
    os.write(9, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    os.close(9)
    c.close()
"#;

#[test]
fn dup2_of_a_socket_in_use_keeps_one_connection() {
    if !require_root("dup2_of_a_socket_in_use_keeps_one_connection") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let _server = Proc::spawn(
        "dup2 server",
        Command::new("python3")
            .arg("-c")
            .arg(PY_DUP2_SERVER)
            .arg(port.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    let base = format!("http://127.0.0.1:{port}");
    curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("{base}/one"),
        &format!("{base}/two"),
    ]);
    let servers = agent.wait_for(2, |sp| s(sp, "kind") == "SERVER" && python(sp));
    let got: Vec<(String, i64)> = servers
        .iter()
        .map(|sp| {
            (
                s(sp, "name").to_owned(),
                attr_i(sp, "http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("GET /one".to_owned(), 200), ("GET /two".to_owned(), 404)]
    );
}
