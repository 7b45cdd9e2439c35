//! Context injection (`--inject-context on`): uninstrumented services are
//! joined into one trace by the `traceparent` the kernel inserts into their
//! outgoing requests, and the inserted line is the only change on the wire.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use tracer_tests::*;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";

/// Answers every request (keep-alive, pipelining, Content-Length and
/// chunked bodies) with the exact bytes of that request as its body.
const PY_ECHO: &str = r#"
import socket, sys, threading
def read_request(f):
    raw = b""
    while True:
        line = f.readline(65537)
        if not line:
            return None
        raw += line
        if line == b"\r\n":
            break
    chunked, length = False, 0
    for l in raw.lower().split(b"\r\n")[1:]:
        if l.startswith(b"transfer-encoding:") and b"chunked" in l:
            chunked = True
        if l.startswith(b"content-length:"):
            length = int(l.split(b":", 1)[1])
    if chunked:
        while True:
            size = f.readline()
            raw += size
            n = int(size.split(b";")[0].strip(), 16)
            if n == 0:
                raw += f.readline()
                break
            raw += f.read(n + 2)
    elif length:
        raw += f.read(length)
    return raw
def handle(c):
    f = c.makefile("rb")
    while True:
        r = read_request(f)
        if r is None:
            break
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(r) + r)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

fn python(name: &str, script: &str, args: &[String]) -> Proc {
    Proc::spawn(
        name,
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
}

/// A [`PY_ECHO`] server on a free port.
fn echo_server() -> (Proc, u16) {
    let port = free_port();
    let p = python("echo server", PY_ECHO, &[port.to_string()]);
    wait_port(port);
    (p, port)
}

fn by_path<'a>(spans: &'a [Value], kind: &str, pid_: u32, path: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|sp| {
            s(sp, "kind") == kind && pid(sp) == u64::from(pid_) && attr(sp, "url.path") == path
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {kind} {path} span of pid {pid_}, got {found:#?}"
    );
    found[0]
}

/// Runs `tracer check` on spans written as the agent's JSON lines.
fn tracer_check(spans: &[Value]) -> (i32, String) {
    let dir = TempDir::new("check");
    let file = dir.0.join("spans.jsonl");
    let text: String = spans.iter().map(|sp| format!("{sp}\n")).collect();
    std::fs::write(&file, text).expect("write spans");
    let out = std::process::Command::new(tracer_bin())
        .arg("check")
        .arg(&file)
        .output()
        .expect("tracer check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn three_uninstrumented_services_form_one_trace() {
    if !require_root("three_uninstrumented_services_form_one_trace") {
        return;
    }
    // always_on: every trace is exported whatever its sampled flag, so
    // the flags can be checked as they went on the wire (case 3 sends
    // X-B3-Sampled: 0).
    let mut agent = Agent::start(&["--inject-context", "on", "--sampler", "always_on"]);
    let c_port = free_port();
    let (nginx_c, _dir) = nginx(c_port, "location /next/ { return 200 \"c\\n\"; }");
    let b_port = free_port();
    let b = python_hop("service B", b_port, c_port, None);
    let a_port = free_port();
    let a = python_hop("service A", a_port, b_port, None);
    let nginx_pid = nginx_c.pid();

    // The spans of one request through the chain, by hop.
    let chain = |tag: &str| {
        let (a_path, b_path, c_path) = (
            format!("/{tag}"),
            format!("/next/{tag}"),
            format!("/next/next/{tag}"),
        );
        let spans = agent.wait_for(6, |sp| {
            let p = attr(sp, "url.path").as_str().unwrap_or("");
            p == a_path || p == b_path || p == c_path
        });
        let curl = spans
            .iter()
            .find(|sp| s(sp, "kind") == "CLIENT" && exe(sp) == "curl")
            .unwrap_or_else(|| panic!("no curl span in {spans:#?}"))
            .clone();
        let a_server = by_path(&spans, "SERVER", a.pid(), &a_path).clone();
        let a_client = by_path(&spans, "CLIENT", a.pid(), &b_path).clone();
        let b_server = by_path(&spans, "SERVER", b.pid(), &b_path).clone();
        let b_client = by_path(&spans, "CLIENT", b.pid(), &c_path).clone();
        let c_server = spans
            .iter()
            .find(|sp| {
                s(sp, "kind") == "SERVER"
                    && exe(sp) == "nginx"
                    && attr(sp, "url.path") == c_path.as_str()
            })
            .unwrap_or_else(|| panic!("no nginx span (master {nginx_pid}) in {spans:#?}"))
            .clone();
        (
            spans,
            [curl, a_server, a_client, b_server, b_client, c_server],
        )
    };

    // 1. No incoming context: the trace starts at curl (whose request got
    //    a traceparent too) and every hop continues it.
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{a_port}/plain"),
    ]);
    let (spans, [curl_c, a_s, a_c, b_s, b_c, c_s]) = chain("plain");
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let trace = s(&curl_c, "trace_id").to_owned();
    for sp in &spans {
        assert_eq!(s(sp, "trace_id"), trace, "one trace id: {spans:#?}");
    }
    assert!(curl_c["parent_span_id"].is_null(), "{curl_c:#}");
    let parent_is = |child: &Value, parent: &Value| {
        assert_eq!(
            s(child, "parent_span_id"),
            s(parent, "span_id"),
            "{child:#}\nshould be a child of\n{parent:#}"
        )
    };
    parent_is(&a_s, &curl_c);
    parent_is(&a_c, &a_s);
    parent_is(&b_s, &a_c);
    parent_is(&b_c, &b_s);
    parent_is(&c_s, &b_c);
    // Ids are unique along the chain.
    let mut ids: Vec<&str> = spans.iter().map(|sp| s(sp, "span_id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    // `tracer check` on this real output: one whole trace over 4 services.
    let (code, out) = tracer_check(&spans);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("200 complete {trace} spans=6 services=")),
        "{out}"
    );
    assert!(
        out.contains("traces=1 complete(200)=1 broken(409)=0 inverted(422)=0"),
        "{out}"
    );

    // 2. An incoming traceparent from curl: kept end to end.
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &format!("traceparent: 00-{T}-{S}-01"),
        &format!("http://127.0.0.1:{a_port}/ctx"),
    ]);
    let (spans, [curl_c, a_s, a_c, b_s, b_c, c_s]) = chain("ctx");
    for sp in &spans {
        assert_eq!(s(sp, "trace_id"), T, "trace id kept: {spans:#?}");
        assert_eq!(sp["trace_flags"], 1, "sampled flag kept: {sp:#}");
    }
    // curl propagated context itself: its span joins that trace.
    assert_eq!(s(&curl_c, "parent_span_id"), S);
    assert_eq!(s(&a_s, "parent_span_id"), S);
    // The caller that sent that traceparent is not in the output: to
    // `tracer check` the chain hangs off a parent it does not have.
    let (code, out) = tracer_check(&spans);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("409 broken   {T} spans=6")), "{out}");
    assert!(
        out.contains(&format!("has parent {S}, which is not in the trace")),
        "{out}"
    );
    parent_is(&a_c, &a_s);
    parent_is(&b_s, &a_c);
    parent_is(&b_c, &b_s);
    parent_is(&c_s, &b_c);

    // 3. Incoming B3 (single, multi) or Jaeger context only: continued end
    //    to end too (the kernel reads them in the agent's order). The
    //    Jaeger trace id has 31 digits, as clients print it without
    //    leading zeros.
    let t31 = &T[1..];
    let cases: [(&str, Vec<String>, String, u8); 4] = [
        ("b3single", vec![format!("b3: {T}-{S}-1")], T.to_owned(), 1),
        (
            "b3multi",
            vec![
                format!("X-B3-TraceId: {T}"),
                format!("X-B3-SpanId: {S}"),
                "X-B3-Sampled: 0".to_owned(),
            ],
            T.to_owned(),
            0,
        ),
        (
            "jaeger",
            vec![format!("uber-trace-id: {t31}:{S}:0:1")],
            format!("0{t31}"),
            1,
        ),
        // A 64-bit B3 trace id is the low half of the 128-bit one.
        (
            "b3short",
            vec![format!("b3: {}-{S}-1", &T[16..])],
            format!("{}{}", "0".repeat(16), &T[16..]),
            1,
        ),
    ];
    for (tag, headers, trace, flags) in &cases {
        let url = format!("http://127.0.0.1:{a_port}/{tag}");
        let mut args = vec!["-o", "/dev/null"];
        for h in headers {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        curl(&args);
        let (spans, [_curl_c, a_s, a_c, b_s, b_c, c_s]) = chain(tag);
        for sp in &spans {
            assert_eq!(s(sp, "trace_id"), trace, "{tag}: trace id kept: {spans:#?}");
            assert_eq!(
                sp["trace_flags"], *flags,
                "{tag}: sampled flag kept: {sp:#}"
            );
        }
        assert_eq!(s(&a_s, "parent_span_id"), S, "{tag}");
        parent_is(&a_c, &a_s);
        parent_is(&b_s, &a_c);
        parent_is(&b_c, &b_s);
        parent_is(&c_s, &b_c);
    }
    // The kernel and the agent agreed on every SERVER context, and the
    // kernel injected into each hop's requests.
    agent.stop();
    let log = agent.log();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    assert!(
        !summary.contains("inject_context_mismatch="),
        "kernel and agent chose different traces: {summary}"
    );
    assert!(summary.contains(" injected="), "{summary}");
}

/// Reads one `Content-Length` response and returns its body.
fn read_response(conn: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).expect("response body");
    body
}

/// Splits `echoed` into the request as sent and the injected traceparent
/// value; panics unless the only difference is one `traceparent` line
/// right after the request line.
fn strip_injection(sent: &[u8], echoed: &[u8]) -> String {
    let line_end = sent
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("request line")
        + 2;
    assert_eq!(
        &echoed[..line_end],
        &sent[..line_end],
        "request line changed:\n{}",
        String::from_utf8_lossy(echoed)
    );
    let rest = &echoed[line_end..];
    let prefix = b"traceparent: 00-";
    assert!(
        rest.starts_with(prefix) && rest.len() >= 70 && &rest[68..70] == b"\r\n",
        "no traceparent line after the request line:\n{}",
        String::from_utf8_lossy(echoed)
    );
    assert_eq!(
        &rest[70..],
        &sent[line_end..],
        "bytes other than the injected line changed:\nsent:\n{}\nreceived:\n{}",
        String::from_utf8_lossy(sent),
        String::from_utf8_lossy(echoed)
    );
    String::from_utf8_lossy(&rest[13..68]).into_owned()
}

/// Sends `writes` (one `write` each, paced so each is its own send) on one
/// connection and reads one echoed response per request in `requests`.
fn exchange(port: u16, writes: &[&[u8]], requests: usize) -> Vec<Vec<u8>> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.set_nodelay(true).expect("nodelay");
    for w in writes {
        conn.write_all(w).expect("write");
        thread::sleep(Duration::from_millis(30));
    }
    (0..requests).map(|_| read_response(&mut conn)).collect()
}

#[test]
fn injected_header_is_the_only_change_on_the_wire() {
    if !require_root("injected_header_is_the_only_change_on_the_wire") {
        return;
    }
    let agent = Agent::start(&["--inject-context", "on"]);
    let (_echo, port) = echo_server();
    let me = std::process::id();
    // Bodies that look like requests: a header must never land in them.
    let get = b"GET /get HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n".to_vec();
    let post_body = b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = [
        format!(
            "POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            post_body.len()
        )
        .into_bytes(),
        post_body.to_vec(),
    ]
    .concat();
    let chunked_head = b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk_data = b"GET /inside-a-chunk HTTP/1.1\r\n";
    let chunk1 = [
        format!("{:x}\r\n", chunk_data.len()).as_bytes(),
        chunk_data,
        b"\r\n",
    ]
    .concat();
    let chunk2 = b"5\r\nhello\r\n0\r\n\r\n";
    let chunked = [&chunked_head[..], &chunk1, chunk2].concat();

    let mut injected = Vec::new();
    // GET, and POST with its head and its request-like body in one send.
    for req in [&get, &post] {
        let echoed = exchange(port, &[req], 1);
        injected.push(strip_injection(req, &echoed[0]));
    }
    // POST whose body comes in a later send: it starts with "GET ".
    let split_at = post.len() - post_body.len();
    let echoed = exchange(port, &[&post[..split_at], &post[split_at..]], 1);
    injected.push(strip_injection(&post, &echoed[0]));
    // Chunked body over three sends, one chunk starting with "GET ".
    let echoed = exchange(port, &[chunked_head, &chunk1, chunk2], 1);
    injected.push(strip_injection(&chunked, &echoed[0]));
    // Pipelined: two requests in one send, then a keep-alive request after
    // a chunked one on the same connection.
    let two = [&get[..], &post[..]].concat();
    let echoed = exchange(port, &[&two], 2);
    injected.push(strip_injection(&get, &echoed[0]));
    injected.push(strip_injection(&post, &echoed[1]));
    let echoed = exchange(port, &[&chunked, &get], 2);
    injected.push(strip_injection(&chunked, &echoed[0]));
    injected.push(strip_injection(&get, &echoed[1]));

    // Each injected context is the CLIENT span the agent reports for that
    // request: a new trace (this test serves nothing), parent none.
    assert_eq!(injected.len(), 8);
    for tp in &injected {
        let (trace, span) = (&tp[3..35], &tp[36..52]);
        let sp = agent.wait_for(1, |sp| {
            s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(me) && s(sp, "span_id") == span
        });
        assert_eq!(s(&sp[0], "trace_id"), trace, "{:#}", sp[0]);
        assert!(sp[0]["parent_span_id"].is_null(), "{:#}", sp[0]);
        // The echo server's SERVER span continues it.
        let server = agent.wait_for(1, |x| {
            s(x, "kind") == "SERVER" && s(x, "parent_span_id") == span
        });
        assert_eq!(s(&server[0], "trace_id"), trace);
    }
}

#[test]
fn requests_that_carry_context_get_no_second_header() {
    if !require_root("requests_that_carry_context_get_no_second_header") {
        return;
    }
    let agent = Agent::start(&["--inject-context", "on"]);
    let (_echo, port) = echo_server();
    let me = std::process::id();
    let cases = [
        format!("GET /w3c HTTP/1.1\r\nHost: t\r\nTraceparent: 00-{T}-{S}-01\r\n\r\n"),
        format!("GET /b3 HTTP/1.1\r\nHost: t\r\nb3: {T}-{S}-1\r\n\r\n"),
        format!("GET /b3multi HTTP/1.1\r\nX-B3-TraceId: {T}\r\nX-B3-SpanId: {S}\r\n\r\n"),
        format!("GET /jaeger HTTP/1.1\r\nuber-trace-id: {T}:{S}:0:1\r\n\r\n"),
    ];
    for req in &cases {
        let echoed = exchange(port, &[req.as_bytes()], 1);
        assert_eq!(
            String::from_utf8_lossy(&echoed[0]),
            *req,
            "a request with its own context must pass untouched"
        );
    }
    // The CLIENT spans follow the application's context: no competing trace.
    for path in ["/w3c", "/b3", "/b3multi", "/jaeger"] {
        let sp = agent.wait_for(1, |sp| {
            s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(me) && attr(sp, "url.path") == path
        });
        assert_eq!(s(&sp[0], "trace_id"), T, "{path}: {:#}", sp[0]);
        assert_eq!(s(&sp[0], "parent_span_id"), S, "{path}: {:#}", sp[0]);
    }
}

#[test]
fn injection_is_off_by_default() {
    if !require_root("injection_is_off_by_default") {
        return;
    }
    let _agent = Agent::start(&[]);
    let (_echo, port) = echo_server();
    let req = b"GET /untouched HTTP/1.1\r\nHost: t\r\n\r\n";
    let echoed = exchange(port, &[req], 1);
    assert_eq!(echoed[0], req);
}

#[test]
fn tls_server_propagates_to_plaintext_downstream() {
    if !require_root("tls_server_propagates_to_plaintext_downstream") {
        return;
    }
    let agent = Agent::start(&["--inject-context", "on"]);
    let b_port = free_port();
    let (_b, _bdir) = nginx(b_port, "location /next/ { return 200 \"b\\n\"; }");
    let dir = TempDir::new("tls-hop");
    let cert = self_signed_cert(&dir);
    let a_port = free_port();
    let a = python_hop("TLS service A", a_port, b_port, Some(&cert));
    curl(&[
        "-k",
        "-o",
        "/dev/null",
        &format!("https://127.0.0.1:{a_port}/secure"),
    ]);
    let spans = agent.wait_for(3, |sp| {
        let p = attr(sp, "url.path").as_str().unwrap_or("");
        (pid(sp) == u64::from(a.pid()) && (p == "/secure" || p == "/next/secure"))
            || (exe(sp) == "nginx" && s(sp, "kind") == "SERVER" && p == "/next/secure")
    });
    let a_server = by_path(&spans, "SERVER", a.pid(), "/secure");
    let a_client = by_path(&spans, "CLIENT", a.pid(), "/next/secure");
    let b_server = spans
        .iter()
        .find(|sp| exe(sp) == "nginx")
        .expect("nginx span");
    assert_eq!(attr(a_server, "url.scheme"), "https");
    assert_eq!(s(a_client, "parent_span_id"), s(a_server, "span_id"));
    assert_eq!(s(b_server, "parent_span_id"), s(a_client, "span_id"));
    assert_eq!(s(a_client, "trace_id"), s(a_server, "trace_id"));
    assert_eq!(s(b_server, "trace_id"), s(a_server, "trace_id"));
}

#[test]
fn kill_9_mid_load_leaves_nothing_attached_and_traffic_intact() {
    if !require_root("kill_9_mid_load_leaves_nothing_attached_and_traffic_intact") {
        return;
    }
    let (_echo, port) = echo_server();
    let mut agent = Agent::start(&["--inject-context", "on"]);
    // Requests on fresh connections all along, before, during and after
    // the kill: every one must come back byte-exact (with at most the one
    // injected line while the agent lives).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent =
                    format!("POST /load/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
                let echoed = exchange(port, &[sent.as_bytes()], 1).remove(0);
                if echoed != sent.as_bytes() {
                    strip_injection(sent.as_bytes(), &echoed);
                }
                n += 1;
            }
            n
        })
    };
    thread::sleep(Duration::from_millis(1500));
    assert!(!loaded_tracer_programs().is_empty());
    agent.stop_with(libc::SIGKILL);
    // The kernel drops every program, link, cgroup attachment and map
    // with the agent's file descriptors: nothing is left to hurt traffic.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let progs = loaded_tracer_programs();
        let maps = bpf_maps_named(&["SOCKS", "SOCK_STATE", "CONNS", "EVENTS"]);
        if progs.is_empty() && maps.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind after kill -9: programs {progs:?}, maps {maps:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = load
        .join()
        .expect("load thread: a request was changed or lost");
    assert!(done > 20, "only {done} requests completed");
    // A restarted agent traces at once.
    let again = Agent::start(&[]);
    let url = format!("http://127.0.0.1:{port}/after/restart");
    curl(&["-o", "/dev/null", &url]);
    let spans = again.wait_for(1, |sp| {
        s(sp, "kind") == "SERVER" && attr(sp, "url.path") == "/after/restart"
    });
    assert_eq!(spans.len(), 1, "{spans:#?}");
}
