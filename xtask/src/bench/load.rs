//! Load generation: the fixed-rate open-loop generator and wrk (plain
//! and HTTPS), with the parsing of their results.
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

#[derive(Clone)]
pub(super) struct LoadResult {
    pub(super) completed: u64,
    pub(super) errors: u64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) achieved_rps: f64,
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
pub(super) fn fixed_rate(port: u16, rate: u64, conns: u64, dur: Duration) -> LoadResult {
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
pub(super) fn saturate(port: u16, dur: Duration) -> anyhow::Result<f64> {
    Ok(wrk(&format!("http://127.0.0.1:{port}/bench"), dur)?.0)
}

/// wrk -t2 -c50 against `url`; returns requests/s and requests completed.
pub(super) fn wrk(url: &str, dur: Duration) -> anyhow::Result<(f64, u64)> {
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

/// What one h2load run measured.
#[derive(Clone)]
pub(super) struct H2Result {
    pub(super) succeeded: u64,
    pub(super) rps: f64,
    pub(super) p99_us: f64,
}

/// h2load (nghttp2) against `url` for `dur`: 10 connections of 10
/// concurrent streams each, at `rate` streams/s in all (or as fast as it
/// goes). p99 comes from its per-request log (`--log-file`: start time,
/// status, elapsed µs).
pub(super) fn h2load(
    url: &str,
    rate: Option<u64>,
    dur: Duration,
    log: &std::path::Path,
) -> anyhow::Result<H2Result> {
    const CLIENTS: u64 = 10;
    let mut c = Command::new("h2load");
    c.args(["-c", &CLIENTS.to_string(), "-m", "10", "-D"])
        .arg(dur.as_secs().to_string())
        .arg(format!("--log-file={}", log.display()));
    if let Some(r) = rate {
        c.arg(format!("--rps={}", (r / CLIENTS).max(1)));
    }
    let out = c
        .arg(url)
        .output()
        .context("running h2load (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: 50000 total, 50000 started, 50000 done, 49990 succeeded, ..."
    let succeeded = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" succeeded")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no request count in h2load output:\n{text}"))?;
    // "finished in 5.00s, 9998.40 req/s, ..."
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let mut lat: Vec<u64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .map(|us| us * 1000)
        .collect();
    lat.sort_unstable();
    Ok(H2Result {
        succeeded,
        rps,
        p99_us: percentile(&lat, 0.99),
    })
}
