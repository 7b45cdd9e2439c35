//! The benchmark's environment: nginx (plain and TLS listeners), the
//! agent, and what is read about them (CPU and memory from /proc, BPF
//! program stats).
use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Kills the child on drop.
/// A child started in a process group of its own, and ended with all of
/// it: killing an nginx master alone orphans its workers, which keep the
/// ports and make the next run refuse to start.
pub(super) struct Guard(pub(super) Child);

impl Guard {
    /// Spawns `cmd` as the leader of a new process group.
    pub(super) fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0).spawn().map(Self)
    }

    fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Politely first (nginx's master then stops its workers), then
        // the whole group for good.
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("-KILL");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Port of the bench nginx's HTTPS listener.
const TLS_PORT: u16 = 18_443;

pub(super) fn tls_url() -> String {
    format!("https://127.0.0.1:{TLS_PORT}/bench")
}

/// nginx's HTTP/2 listener (h2c, prior knowledge).
const H2_PORT: u16 = 18_082;

pub(super) fn h2_url() -> String {
    format!("http://127.0.0.1:{H2_PORT}/bench")
}

/// The Go server's listeners (`tests/go/hello`): plaintext and HTTPS.
const GO_PORT: u16 = 18_090;
const GO_TLS_PORT: u16 = 18_091;

pub(super) fn go_url() -> String {
    format!("http://127.0.0.1:{GO_PORT}/bench")
}

pub(super) fn go_tls_url() -> String {
    format!("https://127.0.0.1:{GO_TLS_PORT}/bench")
}

/// Builds `tests/go/hello` (stripped, newest toolchain, as distributions
/// ship Go programs) and starts it with nginx's certificate in `dir`.
pub(super) fn start_go_server(dir: &Path) -> anyhow::Result<Guard> {
    for p in [GO_PORT, GO_TLS_PORT] {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!("port {p} on 127.0.0.1 is in use: stop whatever listens there first");
        }
    }
    let bin = crate::setup::build_go_program("hello")?;
    let g = Guard::spawn(
        Command::new(&bin)
            .arg("-http")
            .arg(format!("127.0.0.1:{GO_PORT}"))
            .arg("-https")
            .arg(format!("127.0.0.1:{GO_TLS_PORT}"))
            .arg("-cert")
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting the Go server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in [GO_PORT, GO_TLS_PORT] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            if Instant::now() > deadline {
                bail!("the Go server did not listen on {p}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(g)
}

pub(super) fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    // Another server on these ports (a leftover of an interrupted run)
    // would be measured instead of ours: refuse.
    for p in [port, TLS_PORT, H2_PORT] {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!("port {p} on 127.0.0.1 is in use: stop whatever listens there first");
        }
    }
    let d = dir.display();
    std::fs::create_dir_all(dir)?;
    // A self-signed certificate for the HTTPS listener.
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("openssl req")?;
    if !st.success() {
        bail!("openssl could not make a certificate");
    }
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n\
  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n\
    listen 127.0.0.1:{TLS_PORT} ssl;\n    listen 127.0.0.1:{H2_PORT} http2;\n    ssl_certificate {d}/cert.pem;\n\
    ssl_certificate_key {d}/key.pem;\n\
    location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut child = Command::new("nginx");
    child
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null());
    let g = Guard::spawn(&mut child).context("starting nginx")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not start on port {port}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(g)
}

/// CPU ticks (utime+stime) and peak RSS (KiB) of a process.
pub(super) fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, hwm)
}

pub(super) fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (program name, run_cnt, run_time_ns) of the tracer's loaded programs.
pub(super) fn bpf_prog_stats() -> Vec<(String, u64, u64)> {
    let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines() {
        // "123: tracepoint  name tracer_sys_exit  tag ... run_time_ns 123 run_cnt 4"
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
        };
        if let Some(name) = get("name") {
            if name.starts_with("tracer_") {
                let rt = get("run_time_ns").and_then(|s| s.parse().ok()).unwrap_or(0);
                let rc = get("run_cnt").and_then(|s| s.parse().ok()).unwrap_or(0);
                v.push((name, rc, rt));
            }
        }
    }
    v
}

pub(super) struct AgentRun {
    pub(super) child: Guard,
    pub(super) server_spans: Arc<AtomicU64>,
    pub(super) client_spans: Arc<AtomicU64>,
    pub(super) log: Arc<Mutex<String>>,
}

pub(super) fn start_agent(bin: &Path, nice: i32, inject: bool) -> anyhow::Result<AgentRun> {
    let mut child = Command::new("nice")
        .arg("-n")
        .arg(nice.to_string())
        .arg(bin)
        .args(["--output", "text", "--log-level", "info"])
        .args(["--inject-context", if inject { "on" } else { "off" }])
        // The bench measures full tracing: degradation would shed load.
        .args(["--degradation", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the tracer")?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let server_spans = Arc::new(AtomicU64::new(0));
    let client_spans = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(String::new()));
    {
        let (s, c) = (server_spans.clone(), client_spans.clone());
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(" SERVER ") && line.contains("GET /bench") {
                    s.fetch_add(1, Ordering::Relaxed);
                } else if line.contains(" CLIENT ") && line.contains("GET /bench") {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tracer ready") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
    }
    let mut g = Guard(child);
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = g.0.kill();
        bail!(
            "tracer did not become ready:\n{}",
            log.lock().map(|l| l.clone()).unwrap_or_default()
        );
    }
    Ok(AgentRun {
        child: g,
        server_spans,
        client_spans,
        log,
    })
}

pub(super) fn sysctl_bpf_stats(on: bool) -> Option<String> {
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(path).ok()?;
    std::fs::write(path, if on { "1" } else { "0" }).ok()?;
    Some(old.trim().to_owned())
}

pub(super) fn summary_counter(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
