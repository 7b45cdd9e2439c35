//! HTTPS through the OpenSSL uprobes: real TLS clients and servers
//! (curl, nginx, Python's `ssl`, node with its static OpenSSL) on loopback.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use tracer_tests::*;

fn assert_https(sp: &Value, method: &str, path: &str, status: i64) {
    assert_eq!(attr(sp, "http.request.method"), method, "{sp:#}");
    assert_eq!(attr(sp, "url.path"), path, "{sp:#}");
    assert_eq!(attr_i(sp, "http.response.status_code"), status, "{sp:#}");
    assert_eq!(attr(sp, "url.scheme"), "https", "{sp:#}");
    assert_eq!(attr(sp, "network.protocol.name"), "http", "{sp:#}");
}

#[test]
fn curl_to_nginx_over_tls_started_after_the_agent() {
    if !require_root("curl_to_nginx_over_tls_started_after_the_agent") {
        return;
    }
    let agent = Agent::start(&[]);
    // The server starts after the agent.
    let port = free_port();
    let (_nginx, _dir) = nginx_tls(port, "");
    // Three requests on one keep-alive connection.
    let base = format!("https://127.0.0.1:{port}");
    let (curl_pid, _) = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("{base}/hello/1"),
        &format!("{base}/hello/2"),
        &format!("{base}/missing"),
    ]);
    let servers = agent.wait_for(3, |sp| is_span(sp, "SERVER", "nginx", port));
    let clients = agent.wait_for(3, |sp| {
        s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(curl_pid)
    });
    thread::sleep(Duration::from_millis(300));
    // Exactly one span per request and side.
    assert_eq!(
        agent
            .spans()
            .iter()
            .filter(|sp| is_span(sp, "SERVER", "nginx", port))
            .count(),
        3
    );
    assert_eq!(clients.len(), 3, "{clients:#?}");
    for (i, (path, status)) in [("/hello/1", 200), ("/hello/2", 200), ("/missing", 404)]
        .iter()
        .enumerate()
    {
        assert_https(&servers[i], "GET", path, *status);
        assert_https(&clients[i], "GET", path, *status);
        assert_eq!(attr_i(&clients[i], "server.port"), i64::from(port));
    }
    // One connection: the same client port for all three.
    let ports: Vec<i64> = servers.iter().map(|sp| attr_i(sp, "client.port")).collect();
    assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
}

const PY_TLS_SERVER: &str = r#"
import sys, ssl, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"secure\n"
        self.send_response(201 if self.path.startswith("/created") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
srv = S(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

const PY_TLS_CLIENT: &str = r#"
import sys, ssl, http.client
ctx = ssl._create_unverified_context()
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
for path in sys.argv[2:]:
    c.request("GET", path)
    c.getresponse().read()
"#;

fn python_tls_server(port: u16, dir: &TempDir) -> Proc {
    let (cert, key) = self_signed_cert(dir);
    let p = Proc::spawn(
        "python TLS server",
        Command::new("python3")
            .arg("-c")
            .arg(PY_TLS_SERVER)
            .arg(port.to_string())
            .arg(cert)
            .arg(key)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

fn run_to_end(name: &str, cmd: &mut Command) -> u32 {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect(name);
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

#[test]
fn python_http_client_to_python_ssl_server() {
    if !require_root("python_http_client_to_python_ssl_server") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let dir = TempDir::new("py-tls");
    let server = python_tls_server(port, &dir);
    let client = run_to_end(
        "python https client",
        Command::new("python3")
            .arg("-c")
            .arg(PY_TLS_CLIENT)
            .arg(port.to_string())
            .args(["/a", "/created/7"]),
    );
    let servers = agent.wait_for(2, |sp| {
        s(sp, "kind") == "SERVER" && pid(sp) == u64::from(server.pid())
    });
    let clients = agent.wait_for(2, |sp| {
        s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(client)
    });
    assert_https(&servers[0], "GET", "/a", 200);
    assert_https(&servers[1], "GET", "/created/7", 201);
    assert_https(&clients[0], "GET", "/a", 200);
    assert_https(&clients[1], "GET", "/created/7", 201);
    assert_eq!(s(&servers[1], "name"), "GET /created/{id}");
}

#[test]
fn node_with_static_openssl_both_sides() {
    if !require_root("node_with_static_openssl_both_sides") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let dir = TempDir::new("node-tls");
    let (cert, key) = self_signed_cert(&dir);
    let server = Proc::spawn(
        "node https server",
        Command::new("node")
            .arg("-e")
            .arg(NODE_SERVER)
            .arg(port.to_string())
            .arg(cert)
            .arg(key)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    let base = format!("https://127.0.0.1:{port}");
    curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("{base}/x"),
        &format!("{base}/missing"),
    ]);
    let servers = agent.wait_for(2, |sp| {
        s(sp, "kind") == "SERVER" && pid(sp) == u64::from(server.pid())
    });
    assert_https(&servers[0], "GET", "/x", 200);
    assert_https(&servers[1], "GET", "/missing", 404);
    // node as the client too, three requests on one connection.
    let client = run_to_end(
        "node https client",
        Command::new("node")
            .arg("-e")
            .arg(NODE_CLIENT)
            .arg(port.to_string())
            .arg("3"),
    );
    let clients = agent.wait_for(3, |sp| {
        s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(client)
    });
    for (i, sp) in clients.iter().enumerate() {
        assert_https(sp, "GET", &format!("/from-node/{i}"), 200);
    }
    assert!(
        agent.log().contains("TLS: probing"),
        "node's executable should be probed:\n{}",
        agent.log()
    );
}

#[test]
fn without_tls_probes_ciphertext_yields_no_spans() {
    if !require_root("without_tls_probes_ciphertext_yields_no_spans") {
        return;
    }
    let mut agent = Agent::start(&["--tls", "off"]);
    let port = free_port();
    let (_nginx, _dir) = nginx_tls(port, "");
    let base = format!("https://127.0.0.1:{port}");
    for _ in 0..3 {
        curl(&["-k", "-o", "/dev/null", &format!("{base}/hello")]);
    }
    // A plaintext request afterwards proves the agent was tracing all along.
    let plain_port = free_port();
    let (_plain, _pdir) = nginx(plain_port, "");
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{plain_port}/hello"),
    ]);
    agent.wait_for(1, |sp| is_span(sp, "SERVER", "nginx", plain_port));
    let tls_spans: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| attr_i(sp, "server.port") == i64::from(port))
        .collect();
    assert!(
        tls_spans.is_empty(),
        "spans from ciphertext: {tls_spans:#?}"
    );
    agent.stop();
    // The TLS connections were seen, classified as not HTTP and skipped.
    let log = agent.log();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    let ignored: u64 = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("conns_ignored="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        ignored >= 6,
        "TLS sockets (both sides) not classified as ignored: {summary}"
    );
}

/// A Go program from a Go release the agent does not know, stripped (no
/// DWARF to read offsets from): its TLS is not probed, never guessed at,
/// and that is said once for the executable however many processes run
/// it. Its plaintext HTTP side is still traced.
#[test]
fn invisible_tls_is_reported_once_per_executable() {
    if !require_root("invisible_tls_is_reported_once_per_executable") {
        return;
    }
    use tracer_tests::golang::{build_stamped, fanout, NEWEST};
    let bin = build_stamped("fanout", NEWEST, "go1.99.0");
    let dir = TempDir::new("future-go");
    let cert = self_signed_cert(&dir);
    let down = free_port();
    let _py = python_server_tls(down, &cert);
    let agent = Agent::start(&[]);
    let base = format!("https://127.0.0.1:{down}");
    let mut ports = Vec::new();
    for i in 0..2 {
        let port = free_port();
        ports.push(port);
        let mut go = fanout(&bin, port, &base, None);
        let (_, code) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/direct/future{i}"),
        ]);
        assert_eq!(code, "200");
        go.stop(libc::SIGTERM, Duration::from_secs(5));
    }
    let warned = || {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("not visible") && l.contains("fanout-1.27.3-as-go1.99.0"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Its SERVER spans (plaintext) arrive; by then the verdict on its TLS
    // handshakes has had time.
    let future = |sp: &Value| exe(sp).starts_with("fanout");
    for port in &ports {
        agent.wait_for(1, |sp| {
            future(sp) && s(sp, "kind") == "SERVER" && attr_i(sp, "server.port") == i64::from(*port)
        });
    }
    thread::sleep(Duration::from_secs(1));
    let lines = warned();
    assert_eq!(
        lines.len(),
        1,
        "one warning per executable:\n{}",
        agent.log()
    );
    assert!(
        lines[0].contains("go1.99.0 is outside the supported range (go1.18 to go1.27)"),
        "{}",
        lines[0]
    );
    // Processes whose TLS is visible are not reported.
    assert!(!agent.log().contains("TLS traffic of"), "{}", agent.log());
    // And no CLIENT spans were made up from its ciphertext (the Python
    // server's side, through OpenSSL, is visible).
    assert!(!agent
        .spans()
        .iter()
        .any(|sp| future(sp) && s(sp, "kind") == "CLIENT"));
    agent.wait_for(2, |sp| {
        exe(sp).starts_with("python3") && attr_i(sp, "server.port") == i64::from(down)
    });
}

/// Debian's hey (Go 1.19, stripped): its HTTPS requests are CLIENT spans,
/// from Go's crypto/tls, each matching one of nginx's SERVER spans.
#[test]
fn go_tls_client_spans_from_debian_hey() {
    if !require_root("go_tls_client_spans_from_debian_hey") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let (_nginx, _dir) = nginx_tls(port, "");
    // 40 requests at 20 a second on one connection each (-disable-keepalive):
    // the probes go on within milliseconds of hey's exec, so its first
    // request or two may precede them (a documented limit).
    let n = 40;
    run_to_end(
        "hey",
        Command::new("hey")
            .args([
                "-n",
                &n.to_string(),
                "-c",
                "1",
                "-q",
                "20",
                "-disable-keepalive",
            ])
            .arg(format!("https://127.0.0.1:{port}/hello")),
    );
    let nginx = agent.wait_for(n, |sp| is_span(sp, "SERVER", "nginx", port));
    assert_eq!(nginx.len(), n);
    let _ = agent.wait_for(n - 3, |sp| is_span(sp, "CLIENT", "hey", port));
    thread::sleep(Duration::from_millis(500));
    let hey: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| is_span(sp, "CLIENT", "hey", port))
        .collect();
    assert!(hey.len() <= n, "{hey:#?}");
    for sp in &hey {
        assert_https(sp, "GET", "/hello", 200);
        // Each is one of nginx's requests: it ran inside the client's time.
        assert!(
            nginx
                .iter()
                .any(|srv| start(srv) >= start(sp) && end(srv) <= end(sp)),
            "{sp:#}"
        );
    }
    assert!(!agent.log().contains("not visible"), "{}", agent.log());
}

#[test]
fn tls_library_inside_another_mount_namespace() {
    if !require_root("tls_library_inside_another_mount_namespace") {
        return;
    }
    let agent = Agent::start(&[]);
    let port = free_port();
    let dir = TempDir::new("ns-tls");
    let server = python_tls_server(port, &dir);
    // A private copy of libssl (another inode) mounted over the system one
    // in a new mount namespace, as a container image would ship it.
    let system =
        std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libssl.so.3").expect("system libssl.so.3");
    let copy = dir.0.join("libssl.so.3");
    std::fs::copy(&system, &copy).expect("copy libssl");
    // `ssl` is imported 1.5 s after the exec, past the agent's exec-time
    // re-scans: only the dlopen hook can find the library then. (The
    // first request waits 0.5 s more: attaching takes milliseconds, and a
    // request made in that window would not be seen.)
    let script = format!(
        "mount --bind {} {} && exec python3 -c \"{}\" {port} /in-namespace",
        copy.display(),
        system.display(),
        "import time, sys; time.sleep(1.5); import ssl; time.sleep(0.5); exec(open('/dev/stdin').read())"
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(PY_TLS_CLIENT.as_bytes())
            .expect("client script");
    }
    let client = child.id();
    let out = child.wait_with_output().expect("namespace client");
    assert!(
        out.status.success(),
        "client in a mount namespace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clients = agent.wait_for(1, |sp| {
        s(sp, "kind") == "CLIENT" && pid(sp) == u64::from(client)
    });
    assert_https(&clients[0], "GET", "/in-namespace", 200);
    agent.wait_for(1, |sp| {
        s(sp, "kind") == "SERVER" && pid(sp) == u64::from(server.pid())
    });
    let log = agent.log();
    assert!(
        log.contains(&format!("TLS: probing /proc/{client}/root")),
        "the namespace's own libssl should be probed through /proc/PID/root:\n{log}"
    );
    // Its only user exited: the probes on that copy go.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let gone = format!("TLS: no process maps /proc/{client}/root");
    while !agent.log().contains(&gone) {
        assert!(
            std::time::Instant::now() < deadline,
            "probes on the namespace's libssl not removed after its process exited:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}
