//! RED metrics end to end: real nginx and a real gRPC server traced by
//! the agent, scraped by a real Prometheus; the PromQL of the Grafana
//! dashboard answers with the values the traffic implies.

use std::{process::Command, thread, time::Duration};

use serde_json::Value;
use tracer_tests::{h2::*, prometheus::Prometheus, *};

fn get(url: &str, n: usize) {
    for _ in 0..n {
        curl(&["-s", "-o", "/dev/null", url]);
    }
}

/// The agent's /metrics as a scraper without OpenMetrics asks for it.
fn scrape(port: u16, accept: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-D", "-", "--max-time", "10"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn prometheus_sees_red_metrics_and_the_dashboard_queries_answer() {
    if !require_root("prometheus_sees_red_metrics_and_the_dashboard_queries_answer") {
        return;
    }
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let agent = Agent::start(&["--metrics-listen", &listen]);
    let port = free_port();
    let (_nginx, _dir, _py) = nginx_red(port);
    let grpc_port = free_port();
    let _grpc = grpc_server(grpc_port);
    let base = format!("http://127.0.0.1:{port}");
    let (ok, fail, slow) = (
        format!("{base}/ok"),
        format!("{base}/fail"),
        format!("{base}/slow/300"),
    );

    // One request per series first: a series' first scrape already holds
    // it, so rate() over the later window sees only the main traffic.
    get(&ok, 1);
    get(&fail, 1);
    get(&slow, 1);
    grpc_client(grpc_port, None, &["SayHello:a", "SayHello:missing"]);
    agent.wait_for(3, |sp| is_span(sp, "SERVER", "nginx", port));
    let prom_port = free_port();
    let prom = Prometheus::start(prom_port, &listen);
    let nginx_count = |route: &str, code: &str| {
        format!(
            "http_server_request_duration_seconds_count{{service_name=\"nginx\",\
             http_route=\"{route}\",http_response_status_code=\"{code}\"}}"
        )
    };
    prom.wait_value(&nginx_count("/ok", "200"), 1.0);
    // Two more scrapes of the warm-up state.
    thread::sleep(Duration::from_secs(3));

    get(&ok, 20);
    get(&fail, 5);
    get(&slow, 10);
    grpc_client(
        grpc_port,
        None,
        &["SayHello:a", "SayHello:b", "SayHello:c", "SayHello:missing"],
    );
    agent.wait_for(38, |sp| is_span(sp, "SERVER", "nginx", port));
    prom.wait_value(&nginx_count("/ok", "200"), 21.0);
    prom.wait_value(&nginx_count("/fail", "503"), 6.0);
    prom.wait_value(&nginx_count("/slow/{id}", "200"), 11.0);
    thread::sleep(Duration::from_secs(2));

    // The success rate over the counters themselves: 32 of 38 were 2xx.
    let total = prom.value(
        "sum(http_server_request_duration_seconds_count{service_name=\"nginx\",\
         http_response_status_code=~\"2..|3..\"}) / \
         sum(http_server_request_duration_seconds_count{service_name=\"nginx\"})",
    );
    assert!((total - 32.0 / 38.0).abs() < 1e-9, "success ratio {total}");
    // The dashboard's rate() form over the window of the main traffic:
    // 30 of 35. rate() extrapolates each series to the window's edges
    // (limited where a counter would cross zero, which differs per
    // series), so the ratio is close, not exact.
    let success = prom.value(
        "sum(rate(http_server_request_duration_seconds_count{service_name=\"nginx\",\
         http_response_status_code=~\"2..|3..\"}[1m])) / \
         sum(rate(http_server_request_duration_seconds_count{service_name=\"nginx\"}[1m]))",
    );
    assert!(
        (success - 30.0 / 35.0).abs() < 0.01,
        "success rate {success}"
    );
    // P95 of the 300 ms route falls in its bucket (0.25, 0.5]; the quick
    // route's well under 100 ms.
    let p95 = |route: &str| {
        prom.value(&format!(
            "histogram_quantile(0.95, sum by (le) (rate(\
             http_server_request_duration_seconds_bucket{{service_name=\"nginx\",\
             http_route=\"{route}\"}}[1m])))"
        ))
    };
    let slow_p95 = p95("/slow/{id}");
    assert!(slow_p95 > 0.25 && slow_p95 <= 0.5, "slow p95 {slow_p95}");
    let ok_p95 = p95("/ok");
    assert!(ok_p95 < 0.1, "ok p95 {ok_p95}");
    // gRPC: 2 of 6 calls failed NOT_FOUND (5), on both ends.
    for metric in ["rpc_server_duration_seconds", "rpc_client_duration_seconds"] {
        let q = |code: &str| {
            format!(
                "sum({metric}_count{{rpc_service=\"helloworld.Greeter\",rpc_method=\"SayHello\",\
                 rpc_grpc_status_code=\"{code}\"}})"
            )
        };
        prom.wait_value(&q("0"), 4.0);
        prom.wait_value(&q("5"), 2.0);
    }
    // The agent's own health is scraped too.
    assert!(prom.value("tracer_spans_total") >= 76.0);
    assert!(prom.value("tracer_agent_resident_memory_bytes") > 1e6);
    assert_eq!(prom.value("tracer_kernel_ringbuf_drops_total"), 0.0);
    assert!(prom.value("tracer_bpf_programs_attached") > 0.0);
    // Every local trace went out whole: nginx's 11 slow requests each
    // carry their upstream call inside them.
    let integrity =
        |r: &str| prom.value(&format!("tracer_trace_integrity_total{{result=\"{r}\"}}"));
    assert!(integrity("complete") >= 38.0, "{}", integrity("complete"));
    assert_eq!(integrity("broken"), 0.0);
    assert_eq!(integrity("inverted"), 0.0);

    // Every query of every dashboard panel answers with data.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/tracer-red.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$service", ".*");
            let r = prom.query(&q);
            assert!(!r.is_empty(), "panel {:?}: no data for {q}", panel["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} queries");

    // The exposition itself: classic text passes promtool's lint, and
    // OpenMetrics is served to who asks for it.
    let (head, body) = scrape(metrics_port, None);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write as _;
    lint.stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = lint.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = scrape(
        metrics_port,
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    // The health paths share the server.
    let (_, ready) = curl(&["-s", &format!("http://127.0.0.1:{metrics_port}/readyz")]);
    assert_eq!(ready, "ready\n");
}
