//! The report: markdown tables of the off/on medians and ratios, as in
//! BENCHMARKS.md.
use std::{fmt::Write as _, thread};

use super::{
    load::{H2Result, LoadResult},
    BenchArgs, OnPhase,
};

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

/// Per-round values of one field of the load results.
fn pick(v: &[LoadResult], g: fn(&LoadResult) -> f64) -> Vec<f64> {
    v.iter().map(g).collect::<Vec<_>>()
}

/// The whole report, from the off rounds and the tracer-on phases.
/// What the tracer-off phases measured, per round.
pub(super) struct OffPhases {
    pub load: Vec<LoadResult>,
    pub sat: Vec<f64>,
    pub tls: Vec<f64>,
    pub h2: Vec<(H2Result, f64)>,
    /// The Go server: (plaintext, HTTPS) req/s.
    pub go: Vec<(f64, f64)>,
}

pub(super) fn render(a: &BenchArgs, offs: &OffPhases, on: &[OnPhase], inj: &[OnPhase]) -> String {
    let (off, off_sat, off_tls, off_h2, off_go) = (
        &offs.load[..],
        &offs.sat[..],
        &offs.tls[..],
        &offs.h2[..],
        &offs.go[..],
    );
    let on_loads: Vec<LoadResult> = on.iter().map(|p| p.load.clone()).collect();
    let (off_p50, on_p50) = (pick(off, |l| l.p50_us), pick(&on_loads, |l| l.p50_us));
    let (off_p99, on_p99) = (pick(off, |l| l.p99_us), pick(&on_loads, |l| l.p99_us));
    let (off_rps, on_rps) = (
        pick(off, |l| l.achieved_rps),
        pick(&on_loads, |l| l.achieved_rps),
    );
    let on_sat: Vec<f64> = on.iter().map(|p| p.sat_rps).collect();
    let sat_ratio: Vec<f64> = on_sat.iter().zip(off_sat).map(|(n, f)| n / f).collect();
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
    latency_row(&mut r, "p50", &off_p50, &on_p50);
    latency_row(&mut r, "p99", &off_p99, &on_p99);
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
        median(off_sat),
        list(off_sat, 0),
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
    let totals = bpf_totals(on);
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
    tls_report(&mut r, off_tls, on);
    h2_report(&mut r, a, off_h2, on);
    go_report(&mut r, off_go, on);
    inject_report(&mut r, a, off, off_sat, inj);
    r
}

/// One latency row: off and on medians with their rounds, and on − off.
fn latency_row(r: &mut String, label: &str, off: &[f64], on: &[f64]) {
    let _ = writeln!(
        r,
        "| {label} latency µs | {:.1} [{}] | {:.1} [{}] | {:+.1} µs |",
        median(off),
        list(off, 1),
        median(on),
        list(on, 1),
        median(on) - median(off)
    );
}

/// HTTP/2: streams captured at a fixed rate, p99, and saturation.
fn h2_report(r: &mut String, a: &BenchArgs, off: &[(H2Result, f64)], on: &[OnPhase]) {
    let off_p99: Vec<f64> = off.iter().map(|(h, _)| h.p99_us).collect();
    let on_p99: Vec<f64> = on.iter().map(|p| p.h2.p99_us).collect();
    let off_rps: Vec<f64> = off.iter().map(|(h, _)| h.rps).collect();
    let on_rps: Vec<f64> = on.iter().map(|p| p.h2.rps).collect();
    let off_sat: Vec<f64> = off.iter().map(|(_, s)| *s).collect();
    let on_sat: Vec<f64> = on.iter().map(|p| p.h2_sat_rps).collect();
    let ratio: Vec<f64> = on_sat.iter().zip(&off_sat).map(|(n, f)| n / f).collect();
    let done: u64 = on.iter().map(|p| p.h2.succeeded).sum();
    let spans: u64 = on.iter().map(|p| p.h2_spans).sum();
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "| HTTP/2: h2load -c10 -m10 → nginx h2c, {} streams/s | off | on | on − off |",
        a.rate
    );
    let _ = writeln!(r, "|---|---|---|---|");
    let _ = writeln!(
        r,
        "| achieved streams/s | {:.0} | {:.0} | |",
        median(&off_rps),
        median(&on_rps)
    );
    latency_row(r, "p99", &off_p99, &on_p99);
    let _ = writeln!(
        r,
        "| SERVER spans / streams completed | | {spans} / {done} ({:.1}%) | |",
        100.0 * spans as f64 / done.max(1) as f64
    );
    let _ = writeln!(
        r,
        "| saturation streams/s (h2load, no rate) | {:.0} [{}] | {:.0} [{}] | on/off {:.3} [{}] |",
        median(&off_sat),
        list(&off_sat, 0),
        median(&on_sat),
        list(&on_sat, 0),
        median(&ratio),
        list(&ratio, 3)
    );
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

/// The Go server: saturation off and on, plaintext and HTTPS, spans
/// captured, and what each probed call costs.
fn go_report(r: &mut String, off: &[(f64, f64)], on: &[OnPhase]) {
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let _ = writeln!(
        r,
        "\n| Go net/http (stripped Go 1.27), wrk -t2 -c50 | off | on | on/off | SERVER spans / requests |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|");
    type Pick = fn(&(f64, f64)) -> f64;
    type PickOn = fn(&OnPhase) -> (f64, u64, u64);
    let rows: [(&str, Pick, PickOn); 2] = [
        (
            "plaintext req/s",
            |o| o.0,
            |p| (p.go.rps, p.go.requests, p.go.spans),
        ),
        (
            "HTTPS (crypto/tls probes) req/s",
            |o| o.1,
            |p| (p.go.tls_rps, p.go.tls_requests, p.go.tls_spans),
        ),
    ];
    for (label, off_of, on_of) in rows {
        let off_v: Vec<f64> = off.iter().map(off_of).collect();
        let on_v: Vec<f64> = on.iter().map(|p| on_of(p).0).collect();
        let ratio: Vec<f64> = on_v.iter().zip(&off_v).map(|(n, f)| n / f).collect();
        let requests: u64 = on.iter().map(|p| on_of(p).1).sum();
        let spans: u64 = on.iter().map(|p| on_of(p).2).sum();
        let _ = writeln!(
            r,
            "| {label} | {:.0} [{}] | {:.0} [{}] | {:.3} [{}] | {spans} / {requests} = {:.2}% |",
            median(&off_v),
            list(&off_v, 0),
            median(&on_v),
            list(&on_v, 0),
            median(&ratio),
            list(&ratio, 3),
            100.0 * spans as f64 / requests.max(1) as f64
        );
    }
    // Cost per probed call in the HTTPS phase: the probes' own run time
    // (bpf_stats), and the machine time each request gained at
    // saturation (cores x (1/on - 1/off)) over the probe hits per request
    // (the uprobe trap and the syscall-side capture included).
    let mut runs: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for p in on {
        for (name, rc, rt) in &p.go.tls_bpf {
            if name.starts_with("tracer_go_") {
                let e = runs.entry(name.clone()).or_default();
                e.0 += rc;
                e.1 += rt;
            }
        }
    }
    let requests: u64 = on.iter().map(|p| p.go.tls_requests).sum();
    let hits: u64 = runs.values().map(|(rc, _)| rc).sum();
    let _ = writeln!(
        r,
        "\n| Go probe (HTTPS phase) | runs per request | mean ns/run |"
    );
    let _ = writeln!(r, "|---|---|---|");
    for (name, (rc, rt)) in &runs {
        if *rc > 0 {
            let _ = writeln!(
                r,
                "| {name} | {:.2} | {:.0} |",
                *rc as f64 / requests.max(1) as f64,
                *rt as f64 / *rc as f64
            );
        }
    }
    let off_tls = median(&off.iter().map(|o| o.1).collect::<Vec<_>>());
    let on_tls = median(&on.iter().map(|p| p.go.tls_rps).collect::<Vec<_>>());
    if off_tls > 0.0 && on_tls > 0.0 && hits > 0 {
        let added_us = cores * (1.0 / on_tls - 1.0 / off_tls) * 1e6;
        let per_req = hits as f64 / requests.max(1) as f64;
        let _ = writeln!(
            r,
            "| **per request**: {per_req:.2} probe hits, {added_us:.1} µs of machine time added (all tracer costs, agent included) | | **≤ {:.1} µs per probe hit** |",
            added_us / per_req
        );
    }
}
