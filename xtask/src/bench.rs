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
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Offered rate of the fixed-rate phase, requests per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Keep-alive connections of the fixed-rate load generator.
    #[arg(long, default_value_t = 20)]
    connections: u64,
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
    let out = Command::new("wrk")
        .args(["-t2", "-c50", &format!("-d{}s", dur.as_secs())])
        .arg(format!("http://127.0.0.1:{port}/bench"))
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    let d = dir.display();
    std::fs::create_dir_all(dir)?;
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n\
  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n\
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

fn start_agent(bin: &Path) -> anyhow::Result<AgentRun> {
    let mut child = Command::new(bin)
        .args(["--output", "text", "--log-level", "info"])
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

    eprintln!("warm-up (2s)...");
    fixed_rate(port, a.rate, a.connections, Duration::from_secs(2));

    eprintln!(
        "tracer OFF: fixed rate {} req/s for {}s...",
        a.rate, a.duration
    );
    let off = fixed_rate(port, a.rate, a.connections, dur);
    eprintln!("tracer OFF: saturation (wrk) for {}s...", a.duration);
    let off_sat = saturate(port, dur)?;

    let old_stats = sysctl_bpf_stats(true);
    let agent = start_agent(&bin)?;
    let apid = agent.child.0.id();
    let (t0, _) = proc_usage(apid);
    let w0 = Instant::now();
    let bpf0 = bpf_prog_stats();
    eprintln!(
        "tracer ON: fixed rate {} req/s for {}s...",
        a.rate, a.duration
    );
    let on = fixed_rate(port, a.rate, a.connections, dur);
    let bpf1 = bpf_prog_stats();
    let (t1, _) = proc_usage(apid);
    let fixed_wall = w0.elapsed().as_secs_f64();
    // Let the agent drain what is queued before counting.
    thread::sleep(Duration::from_millis(1000));
    let server_spans = agent.server_spans.load(Ordering::Relaxed);
    let client_spans = agent.client_spans.load(Ordering::Relaxed);
    eprintln!("tracer ON: saturation (wrk) for {}s...", a.duration);
    let (s0, _) = proc_usage(apid);
    let ws = Instant::now();
    let on_sat = saturate(port, dur)?;
    let (s1, rss_kib) = proc_usage(apid);
    let sat_wall = ws.elapsed().as_secs_f64();
    // SIGINT: the agent prints its counter summary on the way out.
    // SAFETY: kill(2) on our own child.
    unsafe_kill(apid);
    let mut child = agent.child;
    let _ = child.0.wait();
    thread::sleep(Duration::from_millis(200));
    let log = agent.log.lock().map(|l| l.clone()).unwrap_or_default();
    if let Some(old) = old_stats {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let summary = log
        .lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or("")
        .to_owned();
    let counter = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };

    let mut r = String::new();
    let _ = writeln!(
        r,
        "## tracer benchmark ({} s per phase, nginx on 127.0.0.1, {} cores)\n",
        a.duration,
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let _ = writeln!(
        r,
        "| fixed rate {} req/s ({} keep-alive conns) | off | on | on/off |",
        a.rate, a.connections
    );
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| achieved req/s | {:.0} | {:.0} | {:.3} |",
        off.achieved_rps,
        on.achieved_rps,
        on.achieved_rps / off.achieved_rps
    );
    let _ = writeln!(
        r,
        "| p50 latency µs | {:.1} | {:.1} | +{:.1} µs |",
        off.p50_us,
        on.p50_us,
        on.p50_us - off.p50_us
    );
    let _ = writeln!(
        r,
        "| p99 latency µs | {:.1} | {:.1} | +{:.1} µs |",
        off.p99_us,
        on.p99_us,
        on.p99_us - off.p99_us
    );
    let _ = writeln!(r, "| errors | {} | {} | |", off.errors, on.errors);
    let _ = writeln!(r);
    let _ = writeln!(r, "| capture (fixed-rate phase) | value |");
    let _ = writeln!(r, "|---|---|");
    let _ = writeln!(r, "| requests completed | {} |", on.completed);
    let _ = writeln!(
        r,
        "| SERVER spans (nginx) / requests | {} / {} = {:.2}% |",
        server_spans,
        on.completed,
        100.0 * server_spans as f64 / on.completed.max(1) as f64
    );
    let _ = writeln!(
        r,
        "| CLIENT spans (load generator) / requests | {} / {} = {:.2}% |",
        client_spans,
        on.completed,
        100.0 * client_spans as f64 / on.completed.max(1) as f64
    );
    let _ = writeln!(
        r,
        "| agent CPU, cores | {:.3} |",
        (t1 - t0) as f64 / tck / fixed_wall
    );
    let _ = writeln!(
        r,
        "| ring-buffer drops (whole run) | {} |",
        counter("ringbuf_drops")
    );
    let _ = writeln!(
        r,
        "| spans dropped by agent (whole run) | {} |",
        counter("spans_dropped")
    );
    let _ = writeln!(r);
    let _ = writeln!(r, "| saturation (wrk -t2 -c50) | off | on | on/off |");
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| req/s | {:.0} | {:.0} | {:.3} |",
        off_sat,
        on_sat,
        on_sat / off_sat
    );
    let _ = writeln!(
        r,
        "| agent CPU, cores | | {:.3} | |",
        (s1 - s0) as f64 / tck / sat_wall
    );
    let _ = writeln!(
        r,
        "| agent peak RSS, MiB (whole run) | | {:.1} | |",
        rss_kib as f64 / 1024.0
    );
    let _ = writeln!(r);
    let _ = writeln!(r, "| BPF program (fixed-rate phase) | runs | mean ns/run |");
    let _ = writeln!(r, "|---|---|---|");
    let mut total_rt = 0u64;
    let mut total_rc = 0u64;
    for (name, rc1, rt1) in &bpf1 {
        let (rc0, rt0) = bpf0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, c, t)| (*c, *t))
            .unwrap_or((0, 0));
        let (rc, rt) = (rc1.saturating_sub(rc0), rt1.saturating_sub(rt0));
        total_rt += rt;
        total_rc += rc;
        if rc > 0 {
            let _ = writeln!(r, "| {name} | {rc} | {:.0} |", rt as f64 / rc as f64);
        }
    }
    if total_rc > 0 {
        let _ = writeln!(
            r,
            "| all programs | {total_rc} | {:.0} |",
            total_rt as f64 / total_rc as f64
        );
    }
    let _ = writeln!(r, "\nagent {summary}");
    println!("{r}");
    let report = crate::util::root().join(&a.report);
    if let Some(parent) = report.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&report, &r).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("report written to {}", report.display());
    Ok(())
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}
