//! Sampling end to end: the real agent's head sampler (route rules,
//! parent-based, the kernel's decision for injected requests) and its
//! keep-errors / keep-slow rules, on real nginx, curl and Python servers.

use std::collections::HashMap;

use tracer_tests::*;

/// The value of a counter in the agent's exit summary (0 when absent).
fn summary_count(log: &str, name: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn path(sp: &Value) -> &str {
    attr(sp, "url.path").as_str().unwrap_or("")
}

#[test]
fn route_rules_keep_their_ratio_over_2000_requests() {
    if !require_root("route_rules_keep_their_ratio_over_2000_requests") {
        return;
    }
    let mut agent = Agent::start(&[
        "--sampler",
        "always_off",
        "--sample-route",
        "/api/payment=1",
        "--sample-route",
        "/api/health=0.1",
        "--keep-errors",
        "off",
    ]);
    let port = free_port();
    let (_nginx, dir) = nginx(port, "location /api/ { return 200 \"ok\\n\"; }");
    // One curl, 2000 requests on one keep-alive connection.
    let mut cfg = String::new();
    for i in 0..1000 {
        cfg.push_str(&format!(
            "url = \"http://127.0.0.1:{port}/api/health\"\noutput = \"/dev/null\"\n\
             url = \"http://127.0.0.1:{port}/api/payment/{i}\"\noutput = \"/dev/null\"\n"
        ));
    }
    let cfg_path = dir.0.join("curl.cfg");
    std::fs::write(&cfg_path, cfg).expect("curl config");
    curl(&["-K", cfg_path.to_str().expect("path")]);
    // The payment route is kept whole: every request, on both ends.
    let payment = agent.wait_for(2000, |sp| path(sp).starts_with("/api/payment/"));
    agent.stop();
    let spans = agent.spans();
    let count = |kind: &str, exe_name: &str, health: bool| {
        spans
            .iter()
            .filter(|sp| s(sp, "kind") == kind && exe(sp) == exe_name)
            .filter(|sp| (path(sp) == "/api/health") == health)
            .filter(|sp| health || path(sp).starts_with("/api/payment/"))
            .count()
    };
    assert_eq!(count("SERVER", "nginx", false), 1000, "{}", payment.len());
    assert_eq!(count("CLIENT", "curl", false), 1000);
    // 10% of the health checks, within ~4.5 standard deviations
    // (binomial, n=1000, p=0.1: sd 9.5), on each end independently: the
    // two ends are separate traces (no injection here).
    for (kind, exe_name) in [("SERVER", "nginx"), ("CLIENT", "curl")] {
        let n = count(kind, exe_name, true);
        assert!(
            (57..=143).contains(&n),
            "{kind} {exe_name}: {n} of 1000 kept"
        );
    }
    let kept_health = count("SERVER", "nginx", true) + count("CLIENT", "curl", true);
    let out = summary_count(&agent.log(), "spans_sampled_out");
    assert!(
        out >= (2000 - kept_health) as u64,
        "sampled out {out}, kept {kept_health} of 2000 health spans"
    );
    // Sampled spans say so in their flags.
    assert!(payment.iter().all(|sp| sp["trace_flags"] == 1));
}

#[test]
fn parent_based_sampling_follows_the_incoming_flag() {
    if !require_root("parent_based_sampling_follows_the_incoming_flag") {
        return;
    }
    // Ratio 0 for traces this node starts: only an incoming sampled=1
    // parent gets a trace exported.
    let mut agent = Agent::start(&[
        "--sampler",
        "parentbased_traceidratio",
        "--sampler-arg",
        "0",
        "--keep-errors",
        "off",
    ]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let url = format!("http://127.0.0.1:{port}/hello");
    let tp = |trace: &str, flags: &str| format!("traceparent: 00-{trace}-00f067aa0ba902b7-{flags}");
    let (yes, no) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    );
    curl(&["-o", "/dev/null", "-H", &tp(no, "00"), &url]);
    curl(&["-o", "/dev/null", &url]);
    curl(&["-o", "/dev/null", "-H", &tp(yes, "01"), &url]);
    let kept = agent.wait_for(1, |sp| is_span(sp, "SERVER", "nginx", port));
    assert_eq!(s(&kept[0], "trace_id"), yes, "{kept:#?}");
    assert_eq!(kept[0]["trace_flags"], 1);
    agent.stop();
    let servers: Vec<_> = agent
        .spans()
        .into_iter()
        .filter(|sp| is_span(sp, "SERVER", "nginx", port))
        .collect();
    assert_eq!(servers.len(), 1, "{servers:#?}");
    let clients: Vec<_> = agent
        .spans()
        .into_iter()
        .filter(|sp| is_span(sp, "CLIENT", "curl", port))
        .collect();
    assert_eq!(clients.len(), 1, "{clients:#?}");
    assert_eq!(s(&clients[0], "trace_id"), yes);
    // The other two requests' four spans were decided and counted.
    let out = summary_count(&agent.log(), "spans_sampled_out");
    assert!(out >= 4, "spans_sampled_out={out}\n{}", agent.log());
}

#[test]
fn injected_flags_agree_with_what_is_exported_across_two_services() {
    if !require_root("injected_flags_agree_with_what_is_exported_across_two_services") {
        return;
    }
    let mut agent = Agent::start(&[
        "--inject-context",
        "on",
        "--sampler",
        "parentbased_traceidratio",
        "--sampler-arg",
        "0.5",
        "--keep-errors",
        "off",
    ]);
    let b_port = free_port();
    let (_nginx, _dir) = nginx(b_port, "location /next/ { return 200 \"b\\n\"; }");
    let a_port = free_port();
    let a = python_hop("service A", a_port, b_port, None);
    // A warm-up with an incoming sampled parent (always exported), so that
    // the hop is known to be traced before the counted requests.
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "traceparent: 00-33333333333333333333333333333333-00f067aa0ba902b7-01",
        &format!("http://127.0.0.1:{a_port}/warm"),
    ]);
    agent.wait_for(1, |sp| {
        is_span(sp, "SERVER", "nginx", b_port) && path(sp) == "/next/warm"
    });
    const N: usize = 40;
    for i in 0..N {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{a_port}/run/{i}"),
        ]);
    }
    // Let the last requests' spans come out.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut by_trace: HashMap<String, Vec<Value>> = HashMap::new();
    for sp in agent.spans() {
        let p = path(&sp);
        if p.starts_with("/run/") || p.starts_with("/next/run/") {
            by_trace
                .entry(s(&sp, "trace_id").to_owned())
                .or_default()
                .push(sp);
        }
    }
    // The kernel decided each trace where it started (curl's injected
    // request), every hop followed the flag on the wire, and the agent
    // exported exactly the sampled ones: whole, never half.
    agent.stop();
    // The documented split-read race (README, Known limits): when curl's
    // send reaches A in two reads, the kernel chose A's context before the
    // injected traceparent arrived, so A's calls carry a trace of their
    // own (counted as inject_context_mismatch). Such a trace is A's CLIENT
    // span and B's SERVER span, consistent with each other.
    let mismatches = summary_count(&agent.log(), "inject_context_mismatch") as usize;
    let mut split = 0;
    for (trace, spans) in &by_trace {
        assert!(spans.iter().all(|sp| sp["trace_flags"] == 1), "{spans:#?}");
        let has = |kind: &str, pid_: u32| {
            spans
                .iter()
                .any(|sp| s(sp, "kind") == kind && pid(sp) == u64::from(pid_))
        };
        let b_server = spans
            .iter()
            .any(|sp| is_span(sp, "SERVER", "nginx", b_port));
        let curl_client = spans
            .iter()
            .any(|sp| s(sp, "kind") == "CLIENT" && exe(sp) == "curl");
        // Both halves of a split are whole in themselves: curl -> A, and
        // A's call -> B.
        let halves = spans.len() == 2
            && ((curl_client && has("SERVER", a.pid())) || (b_server && has("CLIENT", a.pid())));
        if halves {
            split += 1;
            continue;
        }
        assert_eq!(spans.len(), 4, "trace {trace} not whole: {spans:#?}");
        assert!(
            b_server && curl_client && has("SERVER", a.pid()) && has("CLIENT", a.pid()),
            "{spans:#?}"
        );
    }
    assert!(
        split <= 2 * mismatches,
        "{split} split halves but {mismatches} counted mismatches"
    );
    let kept = by_trace.len() - split / 2;
    // Binomial(40, 0.5): sd 3.2; 8..=32 is beyond 3.7 sd either side.
    assert!((8..=32).contains(&kept), "{kept} of {N} traces kept");
}

#[test]
fn errors_and_slow_requests_are_kept_at_ratio_zero() {
    if !require_root("errors_and_slow_requests_are_kept_at_ratio_zero") {
        return;
    }
    let mut agent = Agent::start(&[
        "--sampler",
        "traceidratio",
        "--sampler-arg",
        "0",
        "--keep-slower-than",
        "200ms",
    ]);
    let port = free_port();
    let (_nginx, _dir, py) = nginx_red(port);
    let base = format!("http://127.0.0.1:{port}");
    for p in ["/ok", "/fail", "/slow/300", "/ok"] {
        curl(&["-o", "/dev/null", &format!("{base}{p}")]);
    }
    let kept = agent.wait_for(2, |sp| is_span(sp, "SERVER", "nginx", port));
    agent.stop();
    let spans = agent.spans();
    let reason = |sp: &Value| {
        attr(sp, "tracer.sampling.kept_by")
            .as_str()
            .map(str::to_owned)
    };
    let nginx_servers: Vec<_> = spans
        .iter()
        .filter(|sp| is_span(sp, "SERVER", "nginx", port))
        .collect();
    let mut got: Vec<(String, Option<String>)> = nginx_servers
        .iter()
        .map(|sp| (path(sp).to_owned(), reason(sp)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("/fail".to_owned(), Some("error".to_owned())),
            ("/slow/300".to_owned(), Some("slow".to_owned())),
        ],
        "{kept:#?}"
    );
    // The slow trace is kept whole on this node: nginx's call to the
    // upstream (its child) and the upstream's own SERVER span.
    let slow_trace = nginx_servers
        .iter()
        .find(|sp| path(sp) == "/slow/300")
        .map(|sp| s(sp, "trace_id").to_owned())
        .unwrap_or_default();
    let nginx_call = spans
        .iter()
        .find(|sp| s(sp, "kind") == "CLIENT" && exe(sp) == "nginx" && path(sp) == "/sleep/300")
        .unwrap_or_else(|| panic!("nginx's upstream call not kept: {spans:#?}"));
    assert_eq!(s(nginx_call, "trace_id"), slow_trace);
    assert_eq!(reason(nginx_call).as_deref(), Some("slow"));
    assert!(spans
        .iter()
        .any(|sp| s(sp, "kind") == "SERVER" && pid(sp) == u64::from(py.pid())));
    // curl saw the 503 (a client error) and the slow one; the two /ok
    // requests are dropped on both ends.
    assert!(!spans.iter().any(|sp| path(sp) == "/ok"), "{spans:#?}");
    assert!(summary_count(&agent.log(), "spans_sampled_out") >= 4);
    assert!(summary_count(&agent.log(), "spans_kept_by_rule") >= 5);
}
