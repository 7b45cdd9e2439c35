//! Fault tests: the agent under conditions that break weaker tracers
//! (connection churn, process storms), with bounded memory and exact
//! spans afterwards. Root integration tests against real programs.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tracer_tests::*;

/// Requests wrk reported, from its "N requests in Ts" line.
fn wrk_requests(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .unwrap_or(0)
}

#[test]
fn connection_churn_stays_bounded_and_exact() {
    if !require_root("connection_churn_stays_bounded_and_exact") {
        return;
    }
    // 100k short connections (one request each) through a table capped at
    // 1024: eviction and closes keep both tables within their caps.
    // Degradation off: this test wants every request followed under the
    // churn (degradation would shed connections; tests/degradation.rs).
    let agent = Agent::start(&[
        "--max-connections",
        "1024",
        "--span-queue",
        "1024",
        "--degradation",
        "off",
    ]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "location /churn/ { return 200 \"c\\n\"; }");
    let url = format!("http://127.0.0.1:{port}/churn/x");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut total = 0;
    while total < 100_000 {
        assert!(
            Instant::now() < deadline,
            "only {total} connections in 90 s"
        );
        let out = Command::new("wrk")
            .args(["-t2", "-c16", "-d5s", "-H", "Connection: close", &url])
            .stderr(Stdio::null())
            .output()
            .expect("wrk (installed by cargo xtask setup)");
        total += wrk_requests(&String::from_utf8_lossy(&out.stdout));
    }
    let rss = agent.rss_kib();
    assert!(
        rss < 150 * 1024,
        "agent RSS {rss} KiB after {total} connections"
    );
    let out = Command::new("bpftool")
        .args(["map", "show", "name", "CONNS"])
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("max_entries 1024"),
        "kernel table not capped: {text}"
    );
    // The next request is traced exactly, on both sides.
    thread::sleep(Duration::from_millis(300));
    let after = format!("http://127.0.0.1:{port}/churn/after");
    curl(&["-o", "/dev/null", &after]);
    let spans = agent.wait_for(2, |sp| attr(sp, "url.path") == "/churn/after");
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for sp in &spans {
        assert_eq!(attr_i(sp, "http.response.status_code"), 200);
    }
}

#[test]
fn process_storm_keeps_caches_and_uprobes_bounded() {
    if !require_root("process_storm_keeps_caches_and_uprobes_bounded") {
        return;
    }
    // Degradation off: the storm starves the agent of CPU on purpose, and
    // the requests after it must be traced in full.
    let mut agent = Agent::start(&["--degradation", "off"]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "location /storm/ { return 200 \"s\\n\"; }");
    // A private libssl copy (another inode): every process that maps it
    // gets it probed; when the last one is gone its probes must go.
    let dir = TempDir::new("storm-libssl");
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("the system libssl");
    let private = dir.0.join("libssl.so.3");
    std::fs::copy(&system, &private).expect("copy libssl");
    // 2000 processes, 40 at a time, each exec'ed and exiting; a fifth of
    // them map the private libssl and live long enough to be probed.
    let script = format!(
        "for b in $(seq 50); do \
           for i in $(seq 32); do /bin/true & done; \
           for i in $(seq 8); do LD_PRELOAD={} sleep 0.3 & done; \
           wait; \
         done",
        private.display()
    );
    let mut storm = Proc::spawn(
        "process storm",
        Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Traffic goes on through the storm.
    let url = format!("http://127.0.0.1:{port}/storm/[1-50]");
    let start = Instant::now();
    while storm.child.try_wait().ok().flatten().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "storm did not end"
        );
        curl(&["-o", "/dev/null", &url]);
    }
    let rss = agent.rss_kib();
    assert!(rss < 100 * 1024, "agent RSS {rss} KiB after the storm");
    // The agent still traces once the storm is over. It may be seconds
    // behind at that point (it was starved of CPU and reads its backlog
    // now), so a request is repeated until one is seen on both sides.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut traced = None;
    for k in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let path = format!("/storm/after/{k}");
        curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}{path}")]);
        thread::sleep(Duration::from_millis(500));
        if agent.count(|sp| attr(sp, "url.path") == path.as_str()) == 2 {
            traced = Some(k);
            break;
        }
    }
    agent.stop();
    let log = agent.log();
    let summary = log
        .lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_default();
    let k = traced.unwrap_or_else(|| panic!("nothing traced after the storm: {summary}"));
    eprintln!("traced again from request {k} after the storm");
    let private_s = private.display().to_string();
    let probed = log
        .lines()
        .filter(|l| l.contains("TLS: probing") && l.contains(&private_s))
        .count();
    let removed = log
        .lines()
        .filter(|l| l.contains("probes removed") && l.contains(&private_s))
        .count();
    assert!(probed > 0, "the private libssl was never probed:\n{log}");
    assert_eq!(
        probed, removed,
        "probes of an exited library left attached:\n{log}"
    );
}
