//! `tracer check` on hand-made span files: each verdict, both input
//! shapes (the agent's JSON lines and a Collector's OTLP JSON), one trace
//! spread over files from two nodes, hostile lines, exit status.

use std::{io::Write as _, process::Command, process::Stdio};

use tracer_tests::{tracer_bin, TempDir};

const T1: &str = "11111111111111111111111111111111";
const T2: &str = "22222222222222222222222222222222";
const T3: &str = "33333333333333333333333333333333";

fn own(trace: &str, span: &str, parent: Option<&str>, svc: &str, start: u64, end: u64) -> String {
    let parent = parent.map_or("null".to_owned(), |p| format!("\"{p}\""));
    format!(
        r#"{{"trace_id":"{trace}","span_id":"{span}","parent_span_id":{parent},"kind":"SERVER","name":"GET /","start_time_unix_nano":{start},"end_time_unix_nano":{end},"resource":{{"service.name":"{svc}"}}}}"#
    )
}

fn otlp(svc: &str, spans: &[(&str, &str, &str, u64, u64)]) -> String {
    let spans: Vec<String> = spans
        .iter()
        .map(|(trace, span, parent, start, end)| {
            format!(
                r#"{{"traceId":"{trace}","spanId":"{span}","parentSpanId":"{parent}","name":"op","kind":2,"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{svc}"}}}}]}},"scopeSpans":[{{"scope":{{"name":"tracer"}},"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

fn check(args: &[&std::path::Path], stdin: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("check").args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("tracer check");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("tracer check output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn each_verdict_from_the_agents_json_lines() {
    let dir = TempDir::new("check-own");
    let file = dir.0.join("spans.jsonl");
    let lines = [
        // T1: complete, three services.
        own(T1, "a000000000000001", None, "web", 100, 1000),
        own(
            T1,
            "a000000000000002",
            Some("a000000000000001"),
            "api",
            200,
            900,
        ),
        own(
            T1,
            "a000000000000003",
            Some("a000000000000002"),
            "db",
            300,
            800,
        ),
        // T2: a parent that is not there.
        own(T2, "b000000000000001", None, "web", 100, 1000),
        own(
            T2,
            "b000000000000002",
            Some("b0000000000000ff"),
            "api",
            200,
            900,
        ),
        // T3: a child that ends 5 ms after its parent.
        own(T3, "c000000000000001", None, "web", 100, 1_000_000),
        own(
            T3,
            "c000000000000002",
            Some("c000000000000001"),
            "api",
            200,
            6_000_000,
        ),
        "not json at all".to_owned(),
        r#"{"span_id":"short","trace_id":"x"}"#.to_owned(),
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let (code, out) = check(&[&file], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("200 complete {T1} spans=3 services=api,db,web")),
        "{out}"
    );
    assert!(out.contains(&format!("409 broken   {T2} spans=2")), "{out}");
    assert!(
        out.contains("has parent b0000000000000ff, which is not in the trace"),
        "{out}"
    );
    assert!(out.contains(&format!("422 inverted {T3} spans=2")), "{out}");
    assert!(out.contains("ends 5000000 ns after its parent"), "{out}");
    assert!(
        out.contains("traces=3 complete(200)=1 broken(409)=1 inverted(422)=1 spans=7 unreadable_lines=1 skipped_spans=1"),
        "{out}"
    );
    // A wider tolerance forgives the skew; --quiet hides complete traces.
    let (_, out) = check(
        &[
            &file,
            std::path::Path::new("--tolerance"),
            std::path::Path::new("10ms"),
            std::path::Path::new("--quiet"),
        ],
        None,
    );
    assert!(!out.contains("200 complete"), "{out}");
    assert!(!out.contains("422 inverted"), "{out}");
    assert!(
        out.contains("complete(200)=2 broken(409)=1 inverted(422)=0"),
        "{out}"
    );
}

#[test]
fn one_trace_over_two_nodes_in_otlp_json() {
    let dir = TempDir::new("check-otlp");
    // Node 1: the frontend (root) and its call out; node 2: the backend.
    let n1 = dir.0.join("node1.json");
    let n2 = dir.0.join("node2.json");
    std::fs::write(
        &n1,
        otlp(
            "frontend",
            &[
                (T1, "d000000000000001", "", 1_000, 90_000),
                (T1, "d000000000000002", "d000000000000001", 2_000, 80_000),
            ],
        ) + "\n",
    )
    .expect("write");
    std::fs::write(
        &n2,
        otlp(
            "backend",
            &[(T1, "d000000000000003", "d000000000000002", 3_000, 70_000)],
        ) + "\n",
    )
    .expect("write");
    // Either file alone is not the whole trace.
    let (code, out) = check(&[&n2], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("409 broken"), "{out}");
    let (code, out) = check(&[&n1, &n2], None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "200 complete {T1} spans=3 services=backend,frontend"
        )),
        "{out}"
    );
    // A loop in the parent links, on stdin.
    let looped = otlp(
        "x",
        &[
            (T2, "e000000000000001", "e000000000000002", 0, 10),
            (T2, "e000000000000002", "e000000000000001", 0, 10),
        ],
    );
    let (code, out) = check(&[std::path::Path::new("-")], Some(&looped));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("422 inverted") && out.contains("loop"),
        "{out}"
    );
    // A missing file is an error of its own.
    let (code, out) = check(&[&dir.0.join("absent.json")], None);
    assert_eq!(code, 2, "{out}");
}
