//! Trace context: every common incoming format is continued, and a client
//! call made while serving a request is that request's child.

use tracer_tests::*;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";

#[test]
fn b3_jaeger_and_custom_headers_are_continued() {
    if !require_root("b3_jaeger_and_custom_headers_are_continued") {
        return;
    }
    let agent = Agent::start(&["--trace-header", "JD-Trace-ID"]);
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "");
    let cases: [(&str, Vec<String>); 4] = [
        ("/hello/b3single", vec![format!("b3: {T}-{S}-1")]),
        (
            "/hello/b3multi",
            vec![
                format!("X-B3-TraceId: {T}"),
                format!("X-B3-SpanId: {S}"),
                "X-B3-Sampled: 1".into(),
            ],
        ),
        ("/hello/jaeger", vec![format!("uber-trace-id: {T}:{S}:0:1")]),
        ("/hello/custom", vec![format!("JD-Trace-ID: {T}:{S}")]),
    ];
    for (path, headers) in &cases {
        let url = format!("http://127.0.0.1:{port}{path}");
        let mut args = vec!["-o", "/dev/null"];
        for h in headers {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        curl(&args);
    }
    for (path, _) in &cases {
        let sp = agent.wait_for(1, |sp| {
            is_span(sp, "SERVER", "nginx", port) && attr(sp, "url.path") == *path
        });
        assert_eq!(s(&sp[0], "trace_id"), T, "{path}: {:#}", sp[0]);
        assert_eq!(s(&sp[0], "parent_span_id"), S, "{path}: {:#}", sp[0]);
    }
    // A B3 header with a bad id is ignored: new trace, no parent.
    let url = format!("http://127.0.0.1:{port}/hello/bad");
    curl(&["-o", "/dev/null", "-H", &format!("b3: {T}-xyz-1"), &url]);
    let bad = agent.wait_for(1, |sp| {
        is_span(sp, "SERVER", "nginx", port) && attr(sp, "url.path") == "/hello/bad"
    });
    assert_ne!(s(&bad[0], "trace_id"), T);
    assert!(bad[0]["parent_span_id"].is_null());
}

#[test]
fn client_call_made_while_serving_is_child_of_the_server_span() {
    if !require_root("client_call_made_while_serving_is_child_of_the_server_span") {
        return;
    }
    let agent = Agent::start(&[]);
    let b_port = free_port();
    let (_nginx, _dir) = nginx(b_port, "location /next/ { return 200 \"b\n\"; }");
    let a_port = free_port();
    let _a = python_hop("service A", a_port, b_port, None);
    let a = |sp: &Value, kind: &str, port: u16| {
        s(sp, "kind") == kind
            && exe(sp).starts_with("python3")
            && attr_i(sp, "server.port") == i64::from(port)
    };
    // Without incoming context: A's server span is a root, and the call it
    // makes to B is its child in the same trace.
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{a_port}/first"),
    ]);
    let server = agent.wait_for(1, |sp| a(sp, "SERVER", a_port));
    let client = agent.wait_for(1, |sp| a(sp, "CLIENT", b_port));
    assert!(server[0]["parent_span_id"].is_null(), "{:#}", server[0]);
    assert_eq!(s(&client[0], "trace_id"), s(&server[0], "trace_id"));
    assert_eq!(s(&client[0], "parent_span_id"), s(&server[0], "span_id"));
    assert_eq!(s(&client[0], "name"), "GET /next/first");
    // Nested in time too.
    assert!(start(&server[0]) <= start(&client[0]));
    assert!(end(&client[0]) <= end(&server[0]));

    // With an incoming traceparent, the whole in-process chain keeps it.
    let tp = format!("traceparent: 00-{T}-{S}-01");
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &tp,
        &format!("http://127.0.0.1:{a_port}/second"),
    ]);
    let server2 = agent.wait_for(1, |sp| {
        a(sp, "SERVER", a_port) && attr(sp, "url.path") == "/second"
    });
    assert_eq!(s(&server2[0], "trace_id"), T);
    assert_eq!(s(&server2[0], "parent_span_id"), S);
    let client2 = agent.wait_for(1, |sp| a(sp, "CLIENT", b_port) && s(sp, "trace_id") == T);
    assert_eq!(s(&client2[0], "parent_span_id"), s(&server2[0], "span_id"));
}
