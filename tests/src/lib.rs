//! Harness for the root integration tests: starts the real agent (which
//! loads the real BPF programs) and real peers on loopback, and collects the
//! spans the agent prints as JSON lines. Every process is owned by an RAII
//! guard, so a failing test still cleans up.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod cgroups;
pub mod golang;
pub mod h2;
pub mod kubeapi;
pub mod otlp;
pub mod prometheus;

/// Integration tests need root to load BPF. Returns false (after saying
/// why) when not root, so the caller can return early.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIP {test}: not root; loading BPF programs needs root");
    false
}

pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracer");
    assert!(
        p.exists(),
        "{} missing: run the suite with `cargo xtask test`",
        p.display()
    );
    p
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {name} ({cmd:?}): {e}"));
        Self {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends SIGTERM and waits up to `timeout`; SIGKILL after that.
    pub fn stop(&mut self, sig: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        self.signal(sig);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop in time: killing it", self.name);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM, Duration::from_secs(5));
    }
}

/// The tracer under test.
pub struct Agent {
    proc: Proc,
    spans: Arc<Mutex<Vec<Value>>>,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent with `--output json` plus `args`, and waits until it
    /// reports that its probes are attached. Panics (with the agent's log)
    /// if it exits or is not ready in time: a BPF load failure fails the test.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`Agent::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(tracer_bin());
        cmd.args(["--output", "json", "--log-level", "info"])
            .args(args)
            // The caller's RUST_LOG is not the test's; the test's own is.
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        Self::start_command(cmd)
    }

    /// Starts an agent command line of the caller's (one that runs the
    /// agent inside a container, say) whose stdout is JSON spans and whose
    /// stderr is the agent's log, and waits as [`Agent::start`] does.
    pub fn start_command(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("tracer", &mut cmd);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let stderr = proc.child.stderr.take().expect("piped stderr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let spans = spans.clone();
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) => spans.lock().expect("lock").push(v),
                        Err(e) => log
                            .lock()
                            .expect("lock")
                            .push_str(&format!("BAD STDOUT LINE ({e}): {line}\n")),
                    }
                }
            });
        }
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("tracer ready") {
                        let _ = ready_tx.send(());
                    }
                    let mut l = log.lock().expect("lock");
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Ok(Some(st)) = proc.child.try_wait() {
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "tracer exited before it was ready ({st}); BPF programs did not load:\n{}",
                    log.lock().expect("lock")
                );
            }
            assert!(
                Instant::now() < deadline,
                "tracer not ready after 60s:\n{}",
                log.lock().expect("lock")
            );
        }
        Self { proc, spans, log }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Resident memory of the agent in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// All spans so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().expect("lock").clone()
    }

    /// How many spans so far match `pred` (counted under the lock: no copy).
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| pred(s))
            .count()
    }

    /// Waits until `want` spans match `pred` (and returns those), panicking
    /// with everything seen if they do not arrive within 20 s.
    pub fn wait_for(&self, want: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Filtered under the lock: cloning every span each turn (tens
            // of thousands after a load test) would starve the reader.
            let got: Vec<Value> = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| pred(s))
                .cloned()
                .collect();
            if got.len() >= want {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {want} matching spans, got {}.\nmatching: {got:#?}\nall spans: {:#?}\nagent log:\n{}",
                    got.len(),
                    self.spans(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGINT and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_with(libc::SIGINT)
    }

    /// Stops the agent with `sig` (SIGKILL after 10 s) and returns its exit
    /// status.
    pub fn stop_with(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        self.proc.stop(sig, Duration::from_secs(10))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the tracer with `args` and waits (at most 30 s) for it to exit on
/// its own; returns its status and stderr.
pub fn run_tracer_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut p = Proc::spawn(
        "tracer",
        Command::new(tracer_bin())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = p.child.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "tracer {args:?} kept running; it should have refused to start"
        );
        thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap_or_default())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "tracer-test-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u64()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// nginx (master + one worker) on 127.0.0.1:`port`, with `locations`
/// spliced into its server block. Static files live in the returned dir.
pub fn nginx(port: u16, locations: &str) -> (Proc, TempDir) {
    nginx_with(port, locations, None)
}

/// nginx serving HTTPS (self-signed certificate) on 127.0.0.1:`port`.
pub fn nginx_tls(port: u16, locations: &str) -> (Proc, TempDir) {
    nginx_with(port, locations, Some(""))
}

/// nginx over TLS offering HTTP/2 by ALPN (`h2`), as well as HTTP/1.1.
pub fn nginx_tls_h2(port: u16, locations: &str) -> (Proc, TempDir) {
    nginx_with(port, locations, Some(" http2"))
}

fn nginx_with(port: u16, locations: &str, tls: Option<&str>) -> (Proc, TempDir) {
    let dir = TempDir::new("nginx");
    let listen = if let Some(extra) = tls {
        let (cert, key) = self_signed_cert(&dir);
        format!(
            "127.0.0.1:{port} ssl{extra};\n    ssl_certificate {};\n    ssl_certificate_key {}",
            cert.display(),
            key.display()
        )
    } else {
        format!("127.0.0.1:{port}")
    };
    let d = dir.0.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  keepalive_requests 1000;\n  sendfile on;\n  server {{\n    listen {listen};\n    root {d}/www;\n\
    location = /hello {{ return 200 \"hello\\n\"; }}\n    location /hello/ {{ return 200 \"hello\\n\"; }}\n\
    location /missing {{ return 404; }}\n{locations}\n  }}\n}}\n"
    );
    std::fs::create_dir_all(dir.0.join("www")).expect("www dir");
    std::fs::write(dir.0.join("nginx.conf"), conf).expect("nginx.conf");
    let p = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(dir.0.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    (p, dir)
}

/// nginx on `port` with `/ok` (200), `/fail` (503) and `/slow/MS`
/// (proxied to a Python upstream that answers after MS milliseconds): the
/// statuses and latencies the metrics and sampling tests expect. Returns
/// nginx, its directory and the upstream.
pub fn nginx_red(port: u16) -> (Proc, TempDir, Proc) {
    let py_port = free_port();
    let py = python_server(py_port);
    let (nginx, dir) = nginx(
        port,
        &format!(
            "location = /ok {{ return 200 \"ok\\n\"; }}\n\
             location = /fail {{ return 503; }}\n\
             location /slow/ {{ proxy_pass http://127.0.0.1:{py_port}/sleep/; }}"
        ),
    );
    (nginx, dir, py)
}

/// A self-signed certificate and key for 127.0.0.1, written into `dir`.
pub fn self_signed_cert(dir: &TempDir) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl req failed");
    (cert, key)
}

/// One hop of a service chain: a ThreadingHTTPServer whose handler calls
/// the next service with urllib (on the handler thread) at `/next<path>`,
/// served over TLS when a certificate and key follow the ports.
pub const PY_HOP: &str = r#"
import sys, ssl, http.server, socketserver, urllib.request
NEXT = int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/next%s" % (NEXT, self.path)) as r:
            body = r.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
srv = S(("127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 4:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// Starts a [`PY_HOP`] on `port` calling `next`; over TLS with `tls`'s
/// certificate and key.
pub fn python_hop(name: &str, port: u16, next: u16, tls: Option<&(PathBuf, PathBuf)>) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PY_HOP)
        .arg(port.to_string())
        .arg(next.to_string());
    if let Some((cert, key)) = tls {
        cmd.arg(cert).arg(key);
    }
    let p = Proc::spawn(
        name,
        cmd.env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

/// A Python stdlib ThreadingHTTPServer fixture on 127.0.0.1:`port`.
/// `/status/N` answers with status N; POST echoes the body length;
/// `/chunked/N` answers with N bytes in chunked encoding; `/sleep/MS`
/// answers after MS milliseconds.
pub const PY_SERVER: &str = r#"
import sys, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _send(self, code, body, chunked=False):
        self.send_response(code)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 1000):
                part = body[i:i+1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    def do_GET(self):
        parts = self.path.split("?")[0].split("/")
        if len(parts) > 2 and parts[1] == "status":
            self._send(int(parts[2]), b"status\n")
        elif len(parts) > 2 and parts[1] == "chunked":
            self._send(200, b"x" * int(parts[2]), chunked=True)
        elif len(parts) > 2 and parts[1] == "sleep":
            import time
            time.sleep(int(parts[2]) / 1000)
            self._send(200, b"slept\n")
        else:
            self._send(200, b"ok\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self._send(201, b"got %d\n" % len(data))
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
srv = S(("127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 3:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

pub fn python_server(port: u16) -> Proc {
    python_server_with_env(port, &[])
}

/// [`PY_SERVER`] over TLS with `tls`'s certificate and key.
pub fn python_server_tls(port: u16, tls: &(PathBuf, PathBuf)) -> Proc {
    spawn_python_server(port, &[tls.0.as_os_str(), tls.1.as_os_str()], &[])
}

pub fn python_server_with_env(port: u16, env: &[(&str, &str)]) -> Proc {
    spawn_python_server(port, &[], env)
}

fn spawn_python_server(port: u16, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Proc {
    let p = Proc::spawn(
        "python3 server",
        Command::new("python3")
            .arg("-c")
            .arg(PY_SERVER)
            .arg(port.to_string())
            .args(args)
            .envs(env.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

/// Runs curl to completion (`-s -o /dev/null` unless overridden); returns
/// its pid and stdout.
pub fn curl(args: &[&str]) -> (u32, String) {
    let child = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl output");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- span accessors -------------------------------------------------------

pub fn s<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

pub fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

pub fn attr_i(span: &Value, key: &str) -> i64 {
    attr(span, key).as_i64().unwrap_or(-1)
}

pub fn exe(span: &Value) -> &str {
    span["resource"]["process.executable.name"]
        .as_str()
        .unwrap_or("")
}

pub fn pid(span: &Value) -> u64 {
    span["resource"]["process.pid"].as_u64().unwrap_or(0)
}

pub fn start(span: &Value) -> u64 {
    span["start_time_unix_nano"].as_u64().unwrap_or(0)
}

pub fn end(span: &Value) -> u64 {
    span["end_time_unix_nano"].as_u64().unwrap_or(0)
}

/// A span of `kind` from executable `exe` whose server.port is `port`.
pub fn is_span(span: &Value, kind: &str, exe_name: &str, port: u16) -> bool {
    s(span, "kind") == kind
        && exe(span) == exe_name
        && attr_i(span, "server.port") == i64::from(port)
}

/// A node HTTPS server on 127.0.0.1:PORT (argv: port, cert, key); paths
/// starting with `/missing` answer 404.
pub const NODE_SERVER: &str = r#"
const https = require('https'), fs = require('fs');
const [port, cert, key] = process.argv.slice(1);
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  res.writeHead(req.url.startsWith('/missing') ? 404 : 200, { 'Content-Type': 'text/plain' });
  res.end('node ' + req.url + '\n');
}).listen(+port, '127.0.0.1');
"#;

/// A node HTTPS client making N keep-alive requests on one connection
/// (argv: port, n) to `/from-node/<i>`.
pub const NODE_CLIENT: &str = r#"
const https = require('https');
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
const [port, n] = process.argv.slice(1);
let i = 0;
function next() {
  if (i >= +n) { agent.destroy(); return; }
  https.get({ host: '127.0.0.1', port: +port, path: '/from-node/' + (i++), agent,
              rejectUnauthorized: false },
    res => { res.resume(); res.on('end', next); })
    .on('error', e => { console.error(e); process.exit(1); });
}
next();
"#;

/// The `name` of every object `bpftool {prog|map} show` lists.
fn bpftool_names(kind: &str) -> Vec<String> {
    let out = Command::new("bpftool")
        .args([kind, "show"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.position(|x| x == "name")?;
            w.next().map(str::to_owned)
        })
        .collect()
}

/// Names of the loaded BPF programs that are ours (`tracer_*`).
pub fn loaded_tracer_programs() -> Vec<String> {
    bpftool_names("prog")
        .into_iter()
        .filter(|n| n.starts_with("tracer_"))
        .collect()
}

/// Names of the BPF maps of the given names that exist now.
pub fn bpf_maps_named(names: &[&str]) -> Vec<String> {
    bpftool_names("map")
        .into_iter()
        .filter(|n| names.contains(&n.as_str()))
        .collect()
}
