//! OTLP export to a real receiver (built from the official protobufs), with
//! spans from real traffic traced by the real BPF programs.

use std::{collections::HashSet, thread, time::Duration};

use tracer_tests::{otlp::Receiver, *};

const TP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TP_PARENT: &str = "00f067aa0ba902b7";
/// OTLP `Span.SpanKind` values.
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[test]
fn grpc_export_keeps_ids_parents_kinds_and_resources() {
    if !require_root("grpc_export_keeps_ids_parents_kinds_and_resources") {
        return;
    }
    let rx = Receiver::grpc(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-batch-timeout",
        "200ms",
        "--otlp-compression",
        "gzip",
    ]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let before = now_ns();
    let tp = format!("traceparent: 00-{TP_TRACE}-{TP_PARENT}-01");
    let url = format!("http://127.0.0.1:{port}/hello/7?secret=1");
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &tp,
        "-H",
        "tracestate: v=1",
        "-H",
        "Authorization: Bearer hunter2",
        "-H",
        "Cookie: session=hunter2",
        &url,
    ]);

    let on_port = |r: &otlp::Received| r.attr("server.port").as_deref() == Some(&port.to_string());
    let server = rx.wait_for(1, |r| on_port(r) && r.span.kind == KIND_SERVER);
    let client = rx.wait_for(1, |r| on_port(r) && r.span.kind == KIND_CLIENT);
    let (sv, cl) = (&server[0], &client[0]);
    assert_eq!(sv.span.name, "GET /hello/{id}");
    assert_eq!(sv.trace_id(), TP_TRACE);
    assert_eq!(sv.parent_id(), TP_PARENT);
    assert_eq!(sv.span.trace_state, "v=1");
    assert_eq!(sv.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(sv.attr("url.path").as_deref(), Some("/hello/7"));
    assert_eq!(sv.attr("http.response.status_code").as_deref(), Some("200"));
    assert!(
        !format!("{:?}", sv.span).contains("secret"),
        "query string exported"
    );
    // Resource of the process that served the request.
    assert_eq!(
        sv.resource.get("service.name").map(String::as_str),
        Some("nginx")
    );
    assert_eq!(
        sv.resource
            .get("process.executable.name")
            .map(String::as_str),
        Some("nginx")
    );
    assert!(sv
        .resource
        .get("process.pid")
        .is_some_and(|p| p.parse::<u32>().is_ok()));
    assert!(sv.resource.get("host.name").is_some_and(|h| !h.is_empty()));
    assert_eq!(
        sv.resource.get("service.instance.id").map(String::len),
        Some(36)
    );
    assert_eq!(
        sv.resource.get("telemetry.distro.name").map(String::as_str),
        Some("tracer")
    );
    assert!(!sv.resource.contains_key("process.command_line"));
    assert_eq!(
        cl.resource.get("service.name").map(String::as_str),
        Some("curl")
    );
    // Timestamps: ordered, recent, and the server inside the client.
    for r in [sv, cl] {
        assert!(
            r.span.start_time_unix_nano < r.span.end_time_unix_nano,
            "{r:?}"
        );
        assert!(
            r.span.start_time_unix_nano + 2_000_000_000 > before,
            "{r:?}"
        );
        assert!(r.span.end_time_unix_nano <= now_ns(), "{r:?}");
    }
    assert!(cl.span.start_time_unix_nano <= sv.span.start_time_unix_nano);
    assert!(sv.span.end_time_unix_nano <= cl.span.end_time_unix_nano);
    // The very ids the agent printed locally: nothing was re-created.
    let local = agent.wait_for(1, |sp| is_span(sp, "SERVER", "nginx", port));
    assert_eq!(s(&local[0], "span_id"), sv.span_id());
    assert_eq!(s(&local[0], "trace_id"), sv.trace_id());
}

#[test]
fn http_export_from_env_vars_with_process_service_name() {
    if !require_root("http_export_from_env_vars_with_process_service_name") {
        return;
    }
    let rx = Receiver::http(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let _agent = Agent::start_with_env(
        &["--otlp-batch-timeout", "200ms"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    let port = free_port();
    let _py = python_server_with_env(port, &[("OTEL_SERVICE_NAME", "checkout")]);
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/status/503"),
    ]);
    let server = rx.wait_for(1, |r| {
        r.span.kind == KIND_SERVER && r.attr("server.port").as_deref() == Some(&port.to_string())
    });
    let sv = &server[0];
    assert_eq!(
        sv.resource.get("service.name").map(String::as_str),
        Some("checkout")
    );
    assert!(sv
        .resource
        .get("process.executable.name")
        .is_some_and(|e| e.starts_with("python3")));
    assert_eq!(sv.attr("http.response.status_code").as_deref(), Some("503"));
    // Status code ERROR (2) for a server-side 5xx.
    assert_eq!(sv.span.status.as_ref().map(|s| s.code), Some(2));
}

#[test]
fn retryable_failures_are_retried_without_duplicates() {
    if !require_root("retryable_failures_are_retried_without_duplicates") {
        return;
    }
    const N: usize = 5;
    let rx = Receiver::grpc(0, 2);
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let _agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-batch-timeout",
        "300ms",
    ]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let urls: Vec<String> = (0..N)
        .map(|i| format!("http://127.0.0.1:{port}/hello/{i}"))
        .collect();
    let mut args = vec!["-o", "/dev/null"];
    args.extend(urls.iter().map(String::as_str));
    curl(&args);
    rx.wait_for(N, |r| {
        r.span.kind == KIND_SERVER && r.attr("server.port").as_deref() == Some(&port.to_string())
    });
    thread::sleep(Duration::from_millis(800));
    let server: Vec<otlp::Received> = rx
        .spans()
        .into_iter()
        .filter(|r| {
            r.span.kind == KIND_SERVER
                && r.attr("server.port").as_deref() == Some(&port.to_string())
        })
        .collect();
    assert!(
        rx.refused() >= 2,
        "receiver refused {} exports",
        rx.refused()
    );
    let ids: HashSet<String> = server.iter().map(|r| r.span_id()).collect();
    assert_eq!(ids.len(), N, "{server:#?}");
    assert_eq!(server.len(), N, "duplicated spans: {server:#?}");
}

#[test]
fn collector_down_keeps_tracing_bounded_and_resumes() {
    if !require_root("collector_down_keeps_tracing_bounded_and_resumes") {
        return;
    }
    let otlp_port = free_port();
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-batch-timeout",
        "200ms",
        "--otlp-batch-size",
        "50",
        "--otlp-queue-size",
        "100",
    ]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let glob = format!("http://127.0.0.1:{port}/hello/[1-400]");
    curl(&["-o", "/dev/null", &glob]);
    // Tracing goes on while nothing listens for OTLP.
    agent.wait_for(400, |sp| is_span(sp, "SERVER", "nginx", port));
    // A minute of steady traffic with the collector down: memory stays
    // put (the export queue is bounded; what does not fit is counted).
    let steady = format!("http://127.0.0.1:{port}/steady/[1-20]");
    let start = std::time::Instant::now();
    let mut rss_early = 0;
    let mut rss_max = 0;
    while start.elapsed() < Duration::from_secs(60) {
        curl(&["-o", "/dev/null", &steady]);
        let rss = agent.rss_kib();
        if rss_early == 0 && start.elapsed() > Duration::from_secs(10) {
            rss_early = rss;
        }
        rss_max = rss_max.max(rss);
        thread::sleep(Duration::from_millis(250));
    }
    assert!(
        rss_max > 0 && rss_max < 100 * 1024,
        "agent RSS {rss_max} KiB"
    );
    assert!(
        rss_max < rss_early + 16 * 1024,
        "agent RSS grew from {rss_early} to {rss_max} KiB with the collector down"
    );

    // The collector comes up; export resumes by itself.
    let rx = Receiver::grpc(otlp_port, 0);
    let glob2 = format!("http://127.0.0.1:{port}/after/[1-5]");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        curl(&["-o", "/dev/null", &glob2]);
        if rx
            .spans()
            .iter()
            .any(|r| r.attr("url.path").is_some_and(|p| p.starts_with("/after/")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "export did not resume; agent log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(500));
    }
    agent.stop();
    let log = agent.log();
    let summary = log.lines().find(|l| l.contains("summary:")).unwrap_or("");
    assert!(
        summary.contains("otlp_dropped=") || summary.contains("otlp_failed="),
        "no drop/failure counted while the collector was down: {summary}"
    );
    assert!(summary.contains("otlp_exported="), "{summary}");
}

#[test]
fn shutdown_flushes_queued_spans() {
    if !require_root("shutdown_flushes_queued_spans") {
        return;
    }
    let rx = Receiver::grpc(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    // Nothing would be sent for a minute: only the shutdown flush can
    // deliver these spans.
    let mut agent = Agent::start(&["--otlp-endpoint", &endpoint, "--otlp-batch-timeout", "60s"]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/hello/[1-3]"),
    ]);
    let local = agent.wait_for(3, |sp| is_span(sp, "SERVER", "nginx", port));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.requests(), 0, "exported before shutdown");
    let st = agent.stop_with(libc::SIGTERM).expect("exit status");
    assert!(st.success(), "{st}: {}", agent.log());
    let got = rx.wait_for(3, |r| {
        r.span.kind == KIND_SERVER && r.attr("server.port").as_deref() == Some(&port.to_string())
    });
    let exported: HashSet<String> = got.iter().map(|r| r.span_id()).collect();
    for sp in &local {
        assert!(exported.contains(s(sp, "span_id")), "{sp:#} not flushed");
    }
}
