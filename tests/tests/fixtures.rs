//! Records the captures that `tracer-agent/tests/replay.rs` replays: the
//! real agent with `--record` while real programs talk on loopback. Not
//! part of the suite (the recordings are committed); regenerate them with
//! `cargo xtask record-fixtures` when the wire format changes, then check
//! that the replay tests still pin what they should.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use tracer_tests::*;

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tracer-agent/tests/data");
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

/// Runs `traffic` while the agent records into `name`; returns the spans
/// the live agent printed, to compare with what the replay must give.
fn record(name: &str, extra: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    let path = data_dir().join(name);
    let path_s = path.to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["--record", &path_s];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(&args);
    traffic();
    // Let the last events drain.
    thread::sleep(Duration::from_millis(300));
    agent.stop();
    let spans = agent.spans();
    println!("{name}: {} spans live", spans.len());
    for sp in &spans {
        println!(
            "  {} {} {} parent={}",
            exe(sp),
            s(sp, "kind"),
            s(sp, "name"),
            sp["parent_span_id"]
        );
    }
    spans
}

fn run_to_end(name: &str, cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(st.success(), "{name} failed: {st}");
}

#[test]
#[ignore = "writes tracer-agent/tests/data; run with `cargo xtask record-fixtures`"]
fn record_fixtures() {
    if !require_root("record_fixtures") {
        return;
    }
    // nginx keep-alive: curl makes three requests on one connection.
    let port = free_port();
    let (_nginx, _dir) = nginx(port, "location /users/ { return 200 \"u\\n\"; }");
    let spans = record("nginx_keepalive.trec", &[], || {
        let base = format!("http://127.0.0.1:{port}");
        curl(&[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            &format!("{base}/users/1"),
            &format!("{base}/users/2"),
            &format!("{base}/missing"),
        ]);
    });
    assert_eq!(spans.len(), 6, "{spans:#?}");

    // Pipelining: three requests in one write, answered in order.
    let spans = record("nginx_pipelined.trec", &[], || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let reqs = "GET /users/10 HTTP/1.1\r\nHost: h\r\n\r\n\
                    HEAD /users/11 HTTP/1.1\r\nHost: h\r\n\r\n\
                    GET /missing/12 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        c.write_all(reqs.as_bytes()).expect("write");
        let mut all = Vec::new();
        let _ = c.read_to_end(&mut all);
    });
    // The client here is this test process, which the live agent traces
    // too (it is not the agent).
    assert!(spans.len() >= 3, "{spans:#?}");

    // node over TLS, both sides, three keep-alive requests.
    let tls_port = free_port();
    let dir = TempDir::new("fixture-node-tls");
    let (cert, key) = self_signed_cert(&dir);
    let spans = record("node_tls.trec", &[], || {
        let _server = Proc::spawn(
            "node https server",
            Command::new("node")
                .arg("-e")
                .arg(NODE_SERVER)
                .arg(tls_port.to_string())
                .arg(&cert)
                .arg(&key)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        wait_port(tls_port);
        run_to_end(
            "node https client",
            Command::new("node")
                .arg("-e")
                .arg(NODE_CLIENT)
                .arg(tls_port.to_string())
                .arg("3"),
        );
    });
    assert_eq!(spans.len(), 6, "{spans:#?}");

    // Injection: curl -> python hop -> nginx, ids chosen in the kernel.
    let (hop_port, next_port) = (free_port(), free_port());
    let (_next, _next_dir) = nginx(next_port, "location /next/ { return 200 \"c\\n\"; }");
    let spans = record("inject_chain.trec", &["--inject-context", "on"], || {
        let _hop = python_hop("hop", hop_port, next_port, None);
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{hop_port}/order/7"),
        ]);
    });
    assert_eq!(spans.len(), 4, "{spans:#?}");
}
