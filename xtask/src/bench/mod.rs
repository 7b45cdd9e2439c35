//! `cargo xtask bench`: nginx on loopback under load with the tracer off,
//! then on, in the same run; reports the on/off ratios.
//!
//! - Fixed rate (default 10k req/s): our own open-loop load generator over
//!   keep-alive connections. Latency is measured from each request's
//!   *scheduled* send time, so a stall is not hidden (no coordinated
//!   omission).
//! - Saturation: wrk, requests per second.
//! - HTTP/2: h2load against nginx's h2c listener, at a fixed rate of
//!   streams (captured vs completed, p99) and at saturation.
//! - Go: a stripped Go 1.27 net/http server (`tests/go/hello`), plaintext
//!   and HTTPS (Go's crypto/tls, whose uprobes are the Go TLS probes), at
//!   saturation; spans vs requests, and the cost per probed call.
//! - Agent CPU (utime+stime from /proc) and peak RSS (VmHWM).
//! - BPF run time per program (`kernel.bpf_stats_enabled`, bpftool).
//! - Spans produced vs requests completed, and ring-buffer drops (from the
//!   agent's shutdown summary).
mod env;
mod load;
mod report;

use std::{
    path::Path,
    process::Command,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{tasks, util::is_root};
use env::{
    bpf_prog_stats, clk_tck, go_tls_url, go_url, h2_url, proc_usage, start_agent, start_go_server,
    start_nginx, summary_counter, sysctl_bpf_stats, tls_url,
};
use load::{fixed_rate, h2load, saturate, wrk, H2Result, LoadResult};

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
    /// HTTP/2 at the fixed rate, the SERVER spans it gave, and h2load at
    /// saturation (streams/s).
    h2: H2Result,
    h2_spans: u64,
    h2_sat_rps: f64,
    /// The Go server at saturation: plaintext req/s; HTTPS req/s,
    /// requests, SERVER spans, and the BPF programs' runs during it.
    go: GoOn,
}

/// What the Go phases measured with the tracer on.
pub(super) struct GoOn {
    pub rps: f64,
    pub requests: u64,
    pub spans: u64,
    pub tls_rps: f64,
    pub tls_requests: u64,
    pub tls_spans: u64,
    pub tls_bpf: Vec<(String, u64, u64)>,
}

/// Program stats between two snapshots.
fn bpf_delta(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
) -> Vec<(String, u64, u64)> {
    after
        .iter()
        .map(|(name, rc1, rt1)| {
            let (rc0, rt0) = before
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
        .collect()
}

/// The Go server with the tracer on: plaintext, then HTTPS.
fn go_on(agent: &env::AgentRun, dur: Duration) -> anyhow::Result<GoOn> {
    let spans = || agent.server_spans.load(Ordering::Relaxed);
    let s0 = spans();
    let (rps, requests) = wrk(&go_url(), dur)?;
    thread::sleep(Duration::from_millis(500));
    let s1 = spans();
    let b0 = bpf_prog_stats();
    let (tls_rps, tls_requests) = wrk(&go_tls_url(), dur)?;
    let b1 = bpf_prog_stats();
    thread::sleep(Duration::from_millis(500));
    Ok(GoOn {
        rps,
        requests,
        spans: s1 - s0,
        tls_rps,
        tls_requests,
        tls_spans: spans() - s1,
        tls_bpf: bpf_delta(&b0, &b1),
    })
}

/// The HTTP/2 phase, shared by off and on: fixed rate, then saturation.
fn h2_phase(rate: u64, dur: Duration, dir: &Path) -> anyhow::Result<(H2Result, f64)> {
    let log = dir.join("h2load.log");
    let fixed = h2load(&h2_url(), Some(rate), dur, &log)?;
    let sat = h2load(&h2_url(), None, dur, &log)?;
    Ok((fixed, sat.rps))
}

fn on_phase(
    bin: &Path,
    port: u16,
    a: &BenchArgs,
    dur: Duration,
    tck: f64,
    inject: bool,
    dir: &Path,
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
    let h2_before = agent.server_spans.load(Ordering::Relaxed);
    let log = dir.join("h2load.log");
    let h2 = h2load(&h2_url(), Some(a.rate), dur, &log)?;
    thread::sleep(Duration::from_millis(500));
    let h2_spans = agent.server_spans.load(Ordering::Relaxed) - h2_before;
    let h2_sat_rps = h2load(&h2_url(), None, dur, &log)?.rps;
    let go = go_on(&agent, dur)?;
    // SIGINT: the agent prints its counter summary on the way out.
    let _ = Command::new("kill")
        .args(["-INT", &apid.to_string()])
        .status();
    let mut child = agent.child;
    let _ = child.0.wait();
    thread::sleep(Duration::from_millis(200));
    let log = agent.log.lock().map(|l| l.clone()).unwrap_or_default();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    let bpf = bpf_delta(&bpf0, &bpf1);
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
        h2,
        h2_spans,
        h2_sat_rps,
        go,
    })
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
    let _go = start_go_server(&dir)?;
    let tck = clk_tck();
    let old_stats = sysctl_bpf_stats(true);

    eprintln!("warm-up (2s)...");
    fixed_rate(port, a.rate, a.connections, Duration::from_secs(2));
    // Off and on alternate, so drift on a shared machine hits both alike;
    // medians over the rounds are reported.
    let mut off = Vec::new();
    let mut off_sat = Vec::new();
    let mut off_tls = Vec::new();
    let mut off_h2 = Vec::new();
    let mut off_go = Vec::new();
    let mut on = Vec::new();
    let mut inj = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}: tracer OFF", a.rounds);
        off.push(fixed_rate(port, a.rate, a.connections, dur));
        off_sat.push(saturate(port, dur)?);
        off_tls.push(wrk(&tls_url(), dur)?.0);
        off_h2.push(h2_phase(a.rate, dur, &dir)?);
        off_go.push((wrk(&go_url(), dur)?.0, wrk(&go_tls_url(), dur)?.0));
        eprintln!("round {round}/{}: tracer ON", a.rounds);
        on.push(on_phase(&bin, port, a, dur, tck, false, &dir)?);
        eprintln!(
            "round {round}/{}: tracer ON + --inject-context on",
            a.rounds
        );
        inj.push(on_phase(&bin, port, a, dur, tck, true, &dir)?);
    }
    if let Some(old) = old_stats {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let offs = report::OffPhases {
        load: off,
        sat: off_sat,
        tls: off_tls,
        h2: off_h2,
        go: off_go,
    };
    let r = report::render(a, &offs, &on, &inj);
    println!("{r}");
    let report = crate::util::root().join(&a.report);
    if let Some(parent) = report.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&report, &r).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("report written to {}", report.display());
    Ok(())
}
