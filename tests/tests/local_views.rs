//! The local views: `--output tree` waterfalls and the `--log-level
//! trace` lifecycle lines, on real nginx proxying to a real upstream.

use std::process::Command;

use tracer_tests::*;

#[test]
fn tree_output_and_trace_lifecycle_lines_follow_one_request() {
    if !require_root("tree_output_and_trace_lifecycle_lines_follow_one_request") {
        return;
    }
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["--output", "tree", "--log-level", "trace", "--tls", "off"])
        .env_remove("RUST_LOG");
    let mut agent = Agent::start_command(cmd);
    let py_port = free_port();
    let _py = python_server(py_port);
    let port = free_port();
    let (_nginx, _dir) = nginx(
        port,
        &format!("location /up/ {{ proxy_pass http://127.0.0.1:{py_port}/sleep/; }}"),
    );
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/up/50")]);
    // The waterfall is printed once the root ended and a grace passed.
    std::thread::sleep(std::time::Duration::from_secs(2));
    agent.stop();
    let log = agent.log();
    // Waterfall lines are not JSON: the harness keeps them in the log.
    let tree: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("): ").map(|(_, rest)| rest))
        .collect();
    let nginx_server = tree
        .iter()
        .position(|l| l.contains("nginx SERVER GET /up/{id}"))
        .unwrap_or_else(|| panic!("no nginx waterfall in:\n{log}"));
    // The trace header names both services; the upstream call is indented
    // under the nginx SERVER span, with its status, offset and bar.
    let header = tree[..nginx_server]
        .iter()
        .rev()
        .find(|l| l.starts_with("trace "))
        .unwrap_or_else(|| panic!("no header above:\n{}", tree.join("\n")));
    assert!(header.contains("2 spans"), "{header}");
    let call = tree[nginx_server + 1];
    assert!(
        call.starts_with("    nginx CLIENT GET /sleep/{id}"),
        "{}",
        tree.join("\n")
    );
    assert!(call.contains(" 200 "), "{call}");
    assert!(call.contains('█') && call.ends_with('|'), "{call}");
    // The python upstream's own SERVER span is its own local trace (no
    // context was injected), printed on its own.
    assert!(
        tree.iter().any(|l| l.contains("SERVER GET /sleep/{id}")),
        "{}",
        tree.join("\n")
    );

    // One lifecycle line per phase for nginx's SERVER span: find its id
    // from the "ids chosen" line of its request.
    let phase_lines = |span: &str, phase: &str| {
        log.lines()
            .filter(|l| {
                l.contains(&format!("phase=\"{phase}\"")) || l.contains(&format!("phase={phase}"))
            })
            .filter(|l| l.contains(span))
            .count()
    };
    let lines: Vec<&str> = log.lines().collect();
    let seen = lines
        .iter()
        .position(|l| l.contains("request seen") && l.contains("/up/50"))
        .unwrap_or_else(|| panic!("no request line in:\n{log}"));
    let ids_line = lines[seen..]
        .iter()
        .find(|l| l.contains("ids chosen"))
        .unwrap_or_else(|| panic!("no ids line in:\n{log}"));
    let span = ids_line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("span_id="))
        .unwrap_or_else(|| panic!("{ids_line}"));
    for phase in ["ids", "response", "sampled", "exported"] {
        assert_eq!(
            phase_lines(span, phase),
            1,
            "phase {phase} of {span}:\n{log}"
        );
    }
    assert!(log.contains("request seen"), "{log}");
}
