//! Automatic degradation on a real load: wrk against nginx, the agent
//! given a tiny --max-cpu. It climbs to L2, where the kernel follows 10% of
//! connections, its CPU per request falls by at least half against an
//! undegraded run of the same load, and it recovers level by level once
//! the load stops.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tracer_tests::*;

/// Requests wrk reported, from its "N requests in Ts" line.
fn wrk(url: &str, secs: u32) -> u64 {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", &format!("-d{secs}s"), url])
        .stderr(Stdio::null())
        .output()
        .expect("wrk (installed by cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Agent CPU seconds per request over one wrk run.
fn cpu_per_request(agent: &Agent, url: &str, secs: u32) -> (f64, u64) {
    let before = cpu_seconds(agent.pid());
    let n = wrk(url, secs);
    // The agent drains what the run left in the ring.
    thread::sleep(Duration::from_millis(500));
    let used = cpu_seconds(agent.pid()) - before;
    assert!(n > 1000, "wrk did only {n} requests");
    (used / n as f64, n)
}

fn wait_log(agent: &Agent, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !agent.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {within:?}:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_tiny_cpu_budget_degrades_to_l2_halves_the_cost_and_recovers() {
    if !require_root("a_tiny_cpu_budget_degrades_to_l2_halves_the_cost_and_recovers") {
        return;
    }
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "location /load/ { return 200 \"l\\n\"; }");
    let url = format!("http://127.0.0.1:{port}/load/x");

    // Spans go to the metrics only (no output to fall behind at
    // saturation): what is measured is capture, parsing and span building.
    let start = |mport: u16, extra: &[&str]| {
        let mut cmd = Command::new(tracer_bin());
        cmd.args([
            "--output",
            "none",
            "--log-level",
            "info",
            "--metrics-listen",
        ])
        .arg(format!("127.0.0.1:{mport}"))
        .args(extra)
        .env_remove("RUST_LOG");
        Agent::start_command(cmd)
    };
    let nginx_requests = |mport: u16| {
        let (_, text) = curl(&[&format!("http://127.0.0.1:{mport}/metrics")]);
        text.lines()
            .filter(|l| {
                l.starts_with("http_server_request_duration_seconds_count{")
                    && l.contains("service_name=\"nginx\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };

    // The same load, undegraded.
    let full = {
        let mport = free_port();
        let agent = start(mport, &["--degradation", "off"]);
        let (per_req, n) = cpu_per_request(&agent, &url, 6);
        let traced = nginx_requests(mport);
        eprintln!("undegraded: {n} requests, {traced} nginx SERVER spans");
        assert!(
            traced > n as f64 * 0.9,
            "the undegraded run traces the load"
        );
        per_req
    };

    let mport = free_port();
    let mut agent = start(
        mport,
        &[
            "--max-cpu",
            "0.05",
            "--max-degradation-level",
            "2",
            "--degrade-cooldown",
            "3s",
        ],
    );
    // Load until the agent reaches L2 (one level per 3 s at most).
    let warm = thread::spawn({
        let url = url.clone();
        move || wrk(&url, 10)
    });
    wait_log(&agent, "degradation L0 -> L1", Duration::from_secs(10));
    wait_log(&agent, "degradation L1 -> L2", Duration::from_secs(15));
    assert!(
        agent.log().contains("over --max-cpu 0.05"),
        "{}",
        agent.log()
    );
    let _ = warm.join();
    assert_eq!(metric(mport, "tracer_degradation_level"), Some(2.0));
    // What L0 and L1 left in the ring is drained before measuring.
    thread::sleep(Duration::from_secs(2));
    let traced_before = nginx_requests(mport);
    let (degraded, n) = cpu_per_request(&agent, &url, 6);
    let traced = nginx_requests(mport) - traced_before;
    eprintln!("L2: {n} requests, {traced} nginx SERVER spans");
    assert!(
        degraded <= full / 2.0,
        "agent CPU per request at L2 {:.2} µs, undegraded {:.2} µs: not halved",
        degraded * 1e6,
        full * 1e6
    );
    // The kernel shed most connections: far fewer spans than requests.
    assert!(
        traced < n as f64 / 2.0,
        "{traced} spans for {n} requests at L2"
    );
    assert!(metric(mport, "tracer_kernel_shed_events_total").is_some_and(|v| v > 0.0));

    // Idle: one level per cooldown, down to L0, each transition logged once.
    wait_log(&agent, "degradation L2 -> L1", Duration::from_secs(15));
    wait_log(&agent, "degradation L1 -> L0", Duration::from_secs(15));
    assert_eq!(metric(mport, "tracer_degradation_level"), Some(0.0));
    assert_eq!(agent.log().matches("degradation L1 -> L2").count(), 1);
    // Back at L0 every new connection is followed again (each request
    // on its own connection).
    let before = nginx_requests(mport);
    for i in 0..5 {
        let url = format!("http://127.0.0.1:{port}/load/after{i}");
        curl(&["-o", "/dev/null", &url]);
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(nginx_requests(mport) - before, 5.0);
    agent.stop();
    eprintln!(
        "agent CPU per request: undegraded {:.2} µs, L2 {:.2} µs",
        full * 1e6,
        degraded * 1e6
    );
}
