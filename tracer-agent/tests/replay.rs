//! The whole pipeline (decode → session → protocol → trace ids → span)
//! on captures recorded from real programs with `tracer --record`: no
//! root, no BPF. The recordings live in `tests/data/` and are re-made with
//! `cargo xtask record-fixtures` (see `tests/tests/fixtures.rs`).

use std::collections::HashSet;

use tracer_agent::{
    bpf::recording,
    pipeline::{
        decode::{decode, Event},
        replay::{default_propagators, replay, Replayed},
    },
    spans::{hex, AttrValue, Span, SpanKind, StatusCode},
};
use tracer_common::{DIR_INGRESS, EVENT_INJECTED, EVENT_SERVER_CTX};

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn records(data: &[u8]) -> Vec<&[u8]> {
    recording::parse(data)
        .expect("a valid recording")
        .into_iter()
        .map(|r| r.bytes)
        .collect()
}

fn run(records: &[&[u8]]) -> Replayed {
    replay(records.iter().copied(), default_propagators())
}

fn load_counter(r: &Replayed, name: &str) -> u64 {
    let mut out = Vec::new();
    r.counters.samples(&mut out);
    out.iter()
        .find(|s| s.name == name)
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn str_attr<'a>(s: &'a Span, key: &str) -> &'a str {
    s.attr(key)
        .and_then(AttrValue::as_str)
        .unwrap_or_else(|| panic!("{key} missing in {s:?}"))
}

fn int_attr(s: &Span, key: &str) -> i64 {
    match s.attr(key) {
        Some(AttrValue::Int(i)) => *i,
        other => panic!("{key} is {other:?} in {s:?}"),
    }
}

/// Spans of one kind from one command, in start order.
fn of<'a>(spans: &'a [Span], kind: SpanKind, comm: &str) -> Vec<&'a Span> {
    let mut v: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == kind && s.process.comm == comm)
        .collect();
    v.sort_by_key(|s| s.start_unix_ns);
    v
}

/// (name, status) of each span.
fn summary(spans: &[&Span]) -> Vec<(String, i64)> {
    spans
        .iter()
        .map(|s| (s.name.clone(), int_attr(s, "http.response.status_code")))
        .collect()
}

#[test]
fn nginx_keep_alive_gives_one_span_per_request_and_side() {
    let data = load("nginx_keepalive.trec");
    let r = run(&records(&data));
    let servers = of(&r.spans, SpanKind::Server, "nginx");
    let clients = of(&r.spans, SpanKind::Client, "curl");
    let want = vec![
        ("GET /users/{id}".to_owned(), 200),
        ("GET /users/{id}".to_owned(), 200),
        ("GET /missing".to_owned(), 404),
    ];
    assert_eq!(summary(&servers), want);
    assert_eq!(summary(&clients), want);
    assert_eq!(r.spans.len(), 6, "{:#?}", r.spans);
    // One connection: the same client port on every server span.
    let ports: HashSet<i64> = servers.iter().map(|s| int_attr(s, "client.port")).collect();
    assert_eq!(ports.len(), 1);
    for s in servers.iter().chain(&clients) {
        assert_eq!(str_attr(s, "url.scheme"), "http");
        assert_eq!(str_attr(s, "network.protocol.version"), "1.1");
        assert_eq!(s.ids.parent_span_id, None, "no incoming context: roots");
        assert!(s.duration_ns() > 0);
    }
    // 4xx is an error for the client only.
    assert_eq!(servers[2].status, StatusCode::Unset);
    assert_eq!(clients[2].status, StatusCode::Error);
    // Each server span nests in time inside its client span.
    for (sv, cl) in servers.iter().zip(&clients) {
        assert!(cl.start_unix_ns <= sv.start_unix_ns && sv.end_unix_ns <= cl.end_unix_ns);
    }
    for c in [
        "seq_gaps",
        "parse_errors",
        "orphan_responses",
        "decode_errors",
    ] {
        assert_eq!(load_counter(&r, c), 0, "{c}");
    }
}

#[test]
fn pipelined_requests_pair_in_order() {
    let data = load("nginx_pipelined.trec");
    let r = run(&records(&data));
    let servers = of(&r.spans, SpanKind::Server, "nginx");
    assert_eq!(
        summary(&servers),
        vec![
            ("GET /users/{id}".to_owned(), 200),
            ("HEAD /users/{id}".to_owned(), 200),
            ("GET /missing/{id}".to_owned(), 404),
        ]
    );
    // All three arrived in one read: one connection, the same thread.
    let tids: HashSet<u32> = servers.iter().map(|s| s.tid).collect();
    assert_eq!(tids.len(), 1);
    // The client (the recording test itself) saw the same three.
    let clients: Vec<&Span> = r
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client && str_attr(s, "url.path").contains("/1"))
        .collect();
    assert_eq!(clients.len(), 3, "{:#?}", r.spans);
    assert_eq!(load_counter(&r, "parse_errors"), 0);
}

#[test]
fn a_lost_event_never_mispairs() {
    let data = load("nginx_keepalive.trec");
    let all = records(&data);
    // Drop nginx's read of the second request: its response then has no
    // request on that side.
    let second_request = all
        .iter()
        .enumerate()
        .filter(|(_, raw)| match decode(raw) {
            Ok(Event::Data(h, payload)) => {
                h.direction == DIR_INGRESS && payload.starts_with(b"GET /users/2 ")
            }
            _ => false,
        })
        .map(|(i, _)| i)
        .next()
        .expect("nginx reading GET /users/2");
    let mut lossy = all.clone();
    lossy.remove(second_request);
    let r = run(&lossy);
    assert_eq!(load_counter(&r, "seq_gaps"), 1);
    let servers = of(&r.spans, SpanKind::Server, "nginx");
    // /users/1 was complete before the loss, /missing restarts cleanly
    // after it; /users/2 is gone, never paired with another response.
    assert_eq!(
        summary(&servers),
        vec![
            ("GET /users/{id}".to_owned(), 200),
            ("GET /missing".to_owned(), 404),
        ]
    );
    // The client side lost nothing.
    assert_eq!(of(&r.spans, SpanKind::Client, "curl").len(), 3);
}

#[test]
fn node_tls_plaintext_gives_https_spans() {
    let data = load("node_tls.trec");
    let r = run(&records(&data));
    let servers: Vec<&Span> = of(&r.spans, SpanKind::Server, "node");
    let clients: Vec<&Span> = of(&r.spans, SpanKind::Client, "node");
    let want: Vec<(String, i64)> = (0..3)
        .map(|_| ("GET /from-node/{id}".to_owned(), 200))
        .collect();
    assert_eq!(summary(&servers), want);
    assert_eq!(summary(&clients), want);
    for (i, s) in servers.iter().chain(&clients).enumerate() {
        assert_eq!(str_attr(s, "url.scheme"), "https", "{s:?}");
        assert_eq!(str_attr(s, "url.path"), format!("/from-node/{}", i % 3));
    }
    // Ciphertext never became a span.
    assert_eq!(r.spans.len(), 6, "{:#?}", r.spans);
}

#[test]
fn kernel_chosen_ids_are_the_spans_ids() {
    let data = load("inject_chain.trec");
    let all = records(&data);
    let mut kernel_server = HashSet::new();
    let mut injected = HashSet::new();
    for raw in &all {
        if let Ok(Event::Context(ev)) = decode(raw) {
            match ev.kind {
                EVENT_SERVER_CTX => kernel_server.insert(hex(&ev.span_id)),
                EVENT_INJECTED => injected.insert(hex(&ev.span_id)),
                _ => false,
            };
        }
    }
    assert!(!kernel_server.is_empty() && !injected.is_empty());
    let r = run(&all);
    let curl = of(&r.spans, SpanKind::Client, "curl");
    let hop_server = of(&r.spans, SpanKind::Server, "python3");
    let hop_client = of(&r.spans, SpanKind::Client, "python3");
    let next = of(&r.spans, SpanKind::Server, "nginx");
    assert_eq!(
        (curl.len(), hop_server.len(), hop_client.len(), next.len()),
        (1, 1, 1, 1),
        "{:#?}",
        r.spans
    );
    let (curl, hop_server, hop_client, next) = (curl[0], hop_server[0], hop_client[0], next[0]);
    // The ids on the wire are the ones the spans carry.
    assert!(injected.contains(&hex(&curl.ids.span_id)));
    assert!(injected.contains(&hex(&hop_client.ids.span_id)));
    assert!(kernel_server.contains(&hex(&hop_server.ids.span_id)));
    // One trace, one parent chain: curl -> hop -> nginx.
    assert_eq!(curl.ids.parent_span_id, None);
    assert_eq!(hop_server.ids.parent_span_id, Some(curl.ids.span_id));
    assert_eq!(hop_client.ids.parent_span_id, Some(hop_server.ids.span_id));
    assert_eq!(next.ids.parent_span_id, Some(hop_client.ids.span_id));
    for s in [hop_server, hop_client, next] {
        assert_eq!(s.ids.trace_id, curl.ids.trace_id);
    }
    for c in [
        "kernel_ctx_unmatched",
        "inject_context_mismatch",
        "links_ambiguous",
    ] {
        assert_eq!(load_counter(&r, c), 0, "{c}");
    }
    assert_eq!(load_counter(&r, "links_in_process"), 1);
}

#[test]
fn garbage_recordings_fail_cleanly() {
    let data = load("nginx_keepalive.trec");
    assert!(recording::parse(&data[..data.len() - 3]).is_err());
    // Records cut or corrupted inside are decode errors, counted, never a
    // panic or a span.
    let all = records(&data);
    let cut: Vec<&[u8]> = all.iter().map(|r| &r[..r.len() / 2]).collect();
    let r = run(&cut);
    assert!(r.spans.is_empty(), "{:#?}", r.spans);
    assert!(load_counter(&r, "decode_errors") > 0);
}
