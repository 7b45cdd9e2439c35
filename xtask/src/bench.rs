//! `cargo xtask bench`: nginx on loopback under load with the tracer off,
//! then on, in the same run; reports the on/off ratios.
//!
//! - Fixed rate (default 10k req/s): our own open-loop load generator over
//!   keep-alive connections. Latency is measured from each request's
//!   *scheduled* send time, so a stall is not hidden (no coordinated
//!   omission).
//! - Saturation: wrk, requests per second.
//! - Agent CPU (utime+stime from /proc) and peak RSS (VmHWM).
//! - BPF run time per program (`kernel.bpf_stats_enabled`, bpftool).
//! - Spans produced vs requests completed, and ring-buffer drops (from the
//!   agent's shutdown summary).
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
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

use crate::{tasks, util::is_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Offered rate of the fixed-rate phase, requests per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Keep-alive connections of the fixed-rate load generator.
    #[arg(long, default_value_t = 20)]
    connections: u64,
    /// Run the agent under `nice -n N` (0: same priority as the workload).
    #[arg(long, default_value_t = 0)]
    agent_nice: i32,
    /// Off/on rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Where to write the report (markdown) besides stdout.
    #[arg(long, default_value = "target/bench-report.md")]
    report: String,
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone)]
struct LoadResult {
    completed: u64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
    achieved_rps: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

/// Open-loop load at `rate` req/s over `conns` keep-alive connections.
fn fixed_rate(port: u16, rate: u64, conns: u64, dur: Duration) -> LoadResult {
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_nanos(1_000_000_000 * conns / rate.max(1));
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let lat = lat.clone();
            let errors = errors.clone();
            thread::spawn(move || {
                let mut local = Vec::with_capacity((dur.as_secs() * rate / conns) as usize + 16);
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let _ = s.set_nodelay(true);
                let req =
                    b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: xtask-bench\r\n\r\n";
                let mut buf = Vec::with_capacity(1024);
                // Stagger connections across one interval.
                let mut next = start + interval * c as u32 / conns as u32;
                let end = start + dur;
                while next < end {
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                    if s.write_all(req).is_err() || read_response(&mut s, &mut buf).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(n) => s = n,
                            Err(_) => break,
                        }
                    } else {
                        local.push(next.elapsed().as_nanos() as u64);
                    }
                    next += interval;
                }
                if let Ok(mut l) = lat.lock() {
                    l.extend(local);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    LoadResult {
        completed: l.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        p50_us: percentile(&l, 0.50),
        p99_us: percentile(&l, 0.99),
        achieved_rps: l.len() as f64 / dur.as_secs_f64(),
    }
}

/// wrk at saturation; returns requests/s.
fn saturate(port: u16, dur: Duration) -> anyhow::Result<f64> {
    Ok(wrk(&format!("http://127.0.0.1:{port}/bench"), dur)?.0)
}

/// wrk -t2 -c50 against `url`; returns requests/s and requests completed.
fn wrk(url: &str, dur: Duration) -> anyhow::Result<(f64, u64)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c50", &format!("-d{}s", dur.as_secs())])
        .arg(url)
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    // "  123456 requests in 5.00s, ..."
    let total = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((rps, total))
}

/// Port of the bench nginx's HTTPS listener.
const TLS_PORT: u16 = 18_443;

fn tls_url() -> String {
    format!("https://127.0.0.1:{TLS_PORT}/bench")
}

fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    // Another server on these ports (a leftover of an interrupted run)
    // would be measured instead of ours: refuse.
    for p in [port, TLS_PORT] {
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
    listen 127.0.0.1:{TLS_PORT} ssl;\n    ssl_certificate {d}/cert.pem;\n\
    ssl_certificate_key {d}/key.pem;\n\
    location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let g = Guard(child);
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
fn proc_usage(pid: u32) -> (u64, u64) {
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

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (program name, run_cnt, run_time_ns) of the tracer's loaded programs.
fn bpf_prog_stats() -> Vec<(String, u64, u64)> {
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

struct AgentRun {
    child: Guard,
    server_spans: Arc<AtomicU64>,
    client_spans: Arc<AtomicU64>,
    log: Arc<Mutex<String>>,
}

fn start_agent(bin: &Path, nice: i32, inject: bool) -> anyhow::Result<AgentRun> {
    let mut child = Command::new("nice")
        .arg("-n")
        .arg(nice.to_string())
        .arg(bin)
        .args(["--output", "text", "--log-level", "info"])
        .args(["--inject-context", if inject { "on" } else { "off" }])
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

fn sysctl_bpf_stats(on: bool) -> Option<String> {
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(path).ok()?;
    std::fs::write(path, if on { "1" } else { "0" }).ok()?;
    Some(old.trim().to_owned())
}

/// What one tracer-on phase measured.
struct OnPhase {
    load: LoadResult,
    sat_rps: f64,
    /// wrk over HTTPS: requests/s, requests, SERVER spans during it.
    tls_rps: f64,
    tls_requests: u64,
    tls_spans: u64,
    cpu_fixed: f64,
    cpu_sat: f64,
    rss_kib: u64,
    server_spans: u64,
    client_spans: u64,
    /// (program, runs, run time ns) during the fixed-rate load.
    bpf: Vec<(String, u64, u64)>,
    ringbuf_drops: u64,
    spans_dropped: u64,
    /// Requests the kernel injected a traceparent into.
    injected: u64,
}

fn summary_counter(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn on_phase(
    bin: &Path,
    port: u16,
    a: &BenchArgs,
    dur: Duration,
    tck: f64,
    inject: bool,
) -> anyhow::Result<OnPhase> {
    let agent = start_agent(bin, a.agent_nice, inject)?;
    let apid = agent.child.0.id();
    let (t0, _) = proc_usage(apid);
    let w0 = Instant::now();
    let bpf0 = bpf_prog_stats();
    let load = fixed_rate(port, a.rate, a.connections, dur);
    let bpf1 = bpf_prog_stats();
    let (t1, _) = proc_usage(apid);
    let cpu_fixed = (t1 - t0) as f64 / tck / w0.elapsed().as_secs_f64();
    // Let the agent drain what is queued before counting.
    thread::sleep(Duration::from_millis(500));
    let server_spans = agent.server_spans.load(Ordering::Relaxed);
    let client_spans = agent.client_spans.load(Ordering::Relaxed);
    let (s0, _) = proc_usage(apid);
    let ws = Instant::now();
    let sat_rps = saturate(port, dur)?;
    let (s1, rss_kib) = proc_usage(apid);
    let cpu_sat = (s1 - s0) as f64 / tck / ws.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    let spans_before = agent.server_spans.load(Ordering::Relaxed);
    let (tls_rps, tls_requests) = wrk(&tls_url(), dur)?;
    thread::sleep(Duration::from_millis(500));
    let tls_spans = agent.server_spans.load(Ordering::Relaxed) - spans_before;
    // SIGINT: the agent prints its counter summary on the way out.
    let _ = Command::new("kill")
        .args(["-INT", &apid.to_string()])
        .status();
    let mut child = agent.child;
    let _ = child.0.wait();
    thread::sleep(Duration::from_millis(200));
    let log = agent.log.lock().map(|l| l.clone()).unwrap_or_default();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    let bpf = bpf1
        .iter()
        .map(|(name, rc1, rt1)| {
            let (rc0, rt0) = bpf0
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, c, t)| (*c, *t))
                .unwrap_or((0, 0));
            (
                name.clone(),
                rc1.saturating_sub(rc0),
                rt1.saturating_sub(rt0),
            )
        })
        .collect();
    Ok(OnPhase {
        load,
        sat_rps,
        tls_rps,
        tls_requests,
        tls_spans,
        cpu_fixed,
        cpu_sat,
        rss_kib,
        server_spans,
        client_spans,
        bpf,
        ringbuf_drops: summary_counter(summary, "ringbuf_drops"),
        spans_dropped: summary_counter(summary, "spans_dropped"),
        injected: summary_counter(summary, "injected"),
    })
}

/// BPF run counts and times per program, summed over phases.
fn bpf_totals(phases: &[OnPhase]) -> Vec<(String, u64, u64)> {
    let mut totals: Vec<(String, u64, u64)> = Vec::new();
    for p in phases {
        for (name, rc, rt) in &p.bpf {
            match totals.iter_mut().find(|(n, _, _)| n == name) {
                Some(t) => {
                    t.1 += rc;
                    t.2 += rt;
                }
                None => totals.push((name.clone(), *rc, *rt)),
            }
        }
    }
    totals
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    crate::setup::all()?;
    let bin = tasks::build()?;
    let dur = Duration::from_secs(a.duration);
    let port = 18_080;
    let dir = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
    let _nginx = start_nginx(&dir, port)?;
    let tck = clk_tck();
    let old_stats = sysctl_bpf_stats(true);

    eprintln!("warm-up (2s)...");
    fixed_rate(port, a.rate, a.connections, Duration::from_secs(2));
    // Off and on alternate, so drift on a shared machine hits both alike;
    // medians over the rounds are reported.
    let mut off = Vec::new();
    let mut off_sat = Vec::new();
    let mut off_tls = Vec::new();
    let mut on = Vec::new();
    let mut inj = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}: tracer OFF", a.rounds);
        off.push(fixed_rate(port, a.rate, a.connections, dur));
        off_sat.push(saturate(port, dur)?);
        off_tls.push(wrk(&tls_url(), dur)?.0);
        eprintln!("round {round}/{}: tracer ON", a.rounds);
        on.push(on_phase(&bin, port, a, dur, tck, false)?);
        eprintln!(
            "round {round}/{}: tracer ON + --inject-context on",
            a.rounds
        );
        inj.push(on_phase(&bin, port, a, dur, tck, true)?);
    }
    if let Some(old) = old_stats {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let f = |v: &[LoadResult], g: fn(&LoadResult) -> f64| v.iter().map(g).collect::<Vec<_>>();
    let on_loads: Vec<LoadResult> = on.iter().map(|p| p.load.clone()).collect();
    let (off_p50, on_p50) = (f(&off, |l| l.p50_us), f(&on_loads, |l| l.p50_us));
    let (off_p99, on_p99) = (f(&off, |l| l.p99_us), f(&on_loads, |l| l.p99_us));
    let (off_rps, on_rps) = (
        f(&off, |l| l.achieved_rps),
        f(&on_loads, |l| l.achieved_rps),
    );
    let on_sat: Vec<f64> = on.iter().map(|p| p.sat_rps).collect();
    let sat_ratio: Vec<f64> = on_sat.iter().zip(&off_sat).map(|(n, f)| n / f).collect();
    let cpu_fixed: Vec<f64> = on.iter().map(|p| p.cpu_fixed).collect();
    let cpu_sat: Vec<f64> = on.iter().map(|p| p.cpu_sat).collect();
    let rss = on.iter().map(|p| p.rss_kib).max().unwrap_or(0);
    let completed: u64 = on.iter().map(|p| p.load.completed).sum();
    let server_spans: u64 = on.iter().map(|p| p.server_spans).sum();
    let client_spans: u64 = on.iter().map(|p| p.client_spans).sum();
    let errors: u64 =
        on.iter().map(|p| p.load.errors).sum::<u64>() + off.iter().map(|l| l.errors).sum::<u64>();

    let mut r = String::new();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(r, "## tracer benchmark\n\nnginx (1 worker) on 127.0.0.1, {cores} cores shared by nginx, the load generator and the agent (nice {}); {} rounds of {} s per phase, tracer off then on in each round; medians (per-round values in brackets).\n", a.agent_nice, a.rounds, a.duration);
    let _ = writeln!(
        r,
        "| fixed rate {} req/s, {} keep-alive conns | off | on | on − off |",
        a.rate, a.connections
    );
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| achieved req/s | {:.0} | {:.0} | |",
        median(&off_rps),
        median(&on_rps)
    );
    let _ = writeln!(
        r,
        "| p50 latency µs | {:.1} [{}] | {:.1} [{}] | {:+.1} µs |",
        median(&off_p50),
        list(&off_p50, 1),
        median(&on_p50),
        list(&on_p50, 1),
        median(&on_p50) - median(&off_p50)
    );
    let _ = writeln!(
        r,
        "| p99 latency µs | {:.1} [{}] | {:.1} [{}] | {:+.1} µs |",
        median(&off_p99),
        list(&off_p99, 1),
        median(&on_p99),
        list(&on_p99, 1),
        median(&on_p99) - median(&off_p99)
    );
    let _ = writeln!(r, "| request errors (all phases) | | | {errors} |");
    let _ = writeln!(r);
    let _ = writeln!(r, "| capture at the fixed rate (all rounds) | value |");
    let _ = writeln!(r, "|---|---|");
    let _ = writeln!(
        r,
        "| SERVER spans (nginx) / requests completed | {server_spans} / {completed} = {:.2}% |",
        100.0 * server_spans as f64 / completed.max(1) as f64
    );
    let _ = writeln!(r, "| CLIENT spans (load generator) / requests completed | {client_spans} / {completed} = {:.2}% |", 100.0 * client_spans as f64 / completed.max(1) as f64);
    let _ = writeln!(
        r,
        "| agent CPU, cores | {:.3} [{}] |",
        median(&cpu_fixed),
        list(&cpu_fixed, 3)
    );
    let _ = writeln!(
        r,
        "| ring-buffer drops (whole run) | {} |",
        on.iter().map(|p| p.ringbuf_drops).sum::<u64>()
    );
    let _ = writeln!(
        r,
        "| spans dropped by the agent (whole run) | {} |",
        on.iter().map(|p| p.spans_dropped).sum::<u64>()
    );
    let _ = writeln!(r, "| agent peak RSS, MiB | {:.1} |", rss as f64 / 1024.0);
    let _ = writeln!(r);
    let _ = writeln!(r, "| saturation, wrk -t2 -c50 | off | on | on/off |");
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| req/s | {:.0} [{}] | {:.0} [{}] | {:.3} [{}] |",
        median(&off_sat),
        list(&off_sat, 0),
        median(&on_sat),
        list(&on_sat, 0),
        median(&sat_ratio),
        list(&sat_ratio, 3)
    );
    let _ = writeln!(
        r,
        "| agent CPU, cores | | {:.3} [{}] | |",
        median(&cpu_sat),
        list(&cpu_sat, 3)
    );
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "| BPF program (fixed-rate phases) | runs | mean ns/run |"
    );
    let _ = writeln!(r, "|---|---|---|");
    let totals = bpf_totals(&on);
    let (mut all_rc, mut all_rt) = (0u64, 0u64);
    for (name, rc, rt) in &totals {
        all_rc += rc;
        all_rt += rt;
        if *rc > 0 {
            let _ = writeln!(r, "| {name} | {rc} | {:.0} |", *rt as f64 / *rc as f64);
        }
    }
    if all_rc > 0 {
        let _ = writeln!(
            r,
            "| all programs | {all_rc} | {:.0} |",
            all_rt as f64 / all_rc as f64
        );
    }
    tls_report(&mut r, &off_tls, &on);
    inject_report(&mut r, a, &off, &off_sat, &inj);
    println!("{r}");
    let report = crate::util::root().join(&a.report);
    if let Some(parent) = report.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&report, &r).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("report written to {}", report.display());
    Ok(())
}

/// The same load with context injection on (the load generator's and
/// wrk's client sockets take the sk_msg path; nginx's reads go through the
/// SERVER-context program), against the same off rounds.
fn inject_report(
    r: &mut String,
    a: &BenchArgs,
    off: &[LoadResult],
    off_sat: &[f64],
    inj: &[OnPhase],
) {
    let pick = |v: &[LoadResult], g: fn(&LoadResult) -> f64| v.iter().map(g).collect::<Vec<_>>();
    let loads: Vec<LoadResult> = inj.iter().map(|p| p.load.clone()).collect();
    let (off_p50, p50) = (pick(off, |l| l.p50_us), pick(&loads, |l| l.p50_us));
    let (off_p99, p99) = (pick(off, |l| l.p99_us), pick(&loads, |l| l.p99_us));
    let sat: Vec<f64> = inj.iter().map(|p| p.sat_rps).collect();
    let ratio: Vec<f64> = sat.iter().zip(off_sat).map(|(n, f)| n / f).collect();
    let cpu: Vec<f64> = inj.iter().map(|p| p.cpu_fixed).collect();
    let completed: u64 = inj.iter().map(|p| p.load.completed).sum();
    let injected: u64 = inj.iter().map(|p| p.injected).sum();
    let errors: u64 = inj.iter().map(|p| p.load.errors).sum();
    let _ = writeln!(
        r,
        "\n| with --inject-context on | off | inject on | inject − off |"
    );
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| p50 latency µs at {} req/s | {:.1} | {:.1} [{}] | {:+.1} µs |",
        a.rate,
        median(&off_p50),
        median(&p50),
        list(&p50, 1),
        median(&p50) - median(&off_p50)
    );
    let _ = writeln!(
        r,
        "| p99 latency µs at {} req/s | {:.1} | {:.1} [{}] | {:+.1} µs |",
        a.rate,
        median(&off_p99),
        median(&p99),
        list(&p99, 1),
        median(&p99) - median(&off_p99)
    );
    let _ = writeln!(
        r,
        "| saturation req/s (wrk) | {:.0} | {:.0} [{}] | ratio {:.3} [{}] |",
        median(off_sat),
        median(&sat),
        list(&sat, 0),
        median(&ratio),
        list(&ratio, 3)
    );
    let _ = writeln!(
        r,
        "| agent CPU at the fixed rate, cores | | {:.3} | |",
        median(&cpu)
    );
    let _ = writeln!(
        r,
        "| requests injected (fixed rate + saturation) / fixed-rate requests | | {injected} / {completed} | |"
    );
    let _ = writeln!(r, "| request errors | | {errors} | |");
    let totals = bpf_totals(inj);
    let _ = writeln!(
        r,
        "\n| BPF program, inject on (fixed-rate phases) | runs | mean ns/run |"
    );
    let _ = writeln!(r, "|---|---|---|");
    for (name, rc, rt) in totals.iter().filter(|t| t.1 > 0) {
        let _ = writeln!(r, "| {name} | {rc} | {:.0} |", *rt as f64 / *rc as f64);
    }
}

/// HTTPS saturation (wrk through OpenSSL, nginx through OpenSSL): the TLS
/// uprobes on both sides, against the same machine with the tracer off.
fn tls_report(r: &mut String, off_tls: &[f64], on: &[OnPhase]) {
    let rps: Vec<f64> = on.iter().map(|p| p.tls_rps).collect();
    let ratio: Vec<f64> = rps.iter().zip(off_tls).map(|(n, f)| n / f).collect();
    let requests: u64 = on.iter().map(|p| p.tls_requests).sum();
    let spans: u64 = on.iter().map(|p| p.tls_spans).sum();
    let _ = writeln!(
        r,
        "\n| HTTPS saturation, wrk -t2 -c50 (TLS uprobes) | off | on | on/off |"
    );
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| req/s | {:.0} [{}] | {:.0} [{}] | {:.3} [{}] |",
        median(off_tls),
        list(off_tls, 0),
        median(&rps),
        list(&rps, 0),
        median(&ratio),
        list(&ratio, 3)
    );
    let _ = writeln!(
        r,
        "| SERVER spans (nginx) / requests wrk completed | | {spans} / {requests} = {:.2}% | |",
        100.0 * spans as f64 / requests.max(1) as f64
    );
}
