//! The DaemonSet's minimal capability set, on the host: the agent runs as
//! root with its bounding set cut to BPF, PERFMON, SYS_PTRACE and
//! DAC_READ_SEARCH (`setpriv`), as the manifest's `capabilities` leave
//! it, and must still trace a real server and client. Without NET_ADMIN,
//! `--inject-context on` is declined with a clear line and tracing goes on.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{attr, curl, exe, free_port, python_server, require_root, s, tracer_bin, Agent};

/// The base manifest's `capabilities.add`, as setpriv spells them.
const MINIMAL: &str = "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search";

fn agent_with_caps(bounding: &str, args: &[&str]) -> Agent {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", bounding, "--"])
        .arg(tracer_bin())
        .args(["--output", "json", "--log-level", "info"])
        .args(args)
        .env_remove("RUST_LOG");
    Agent::start_command(cmd)
}

/// Curls `port` until its SERVER span arrives; returns it with the spans.
fn traced_request(agent: &Agent, port: u16, tag: &str) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        let path = format!("/{tag}/{i}");
        i += 1;
        curl(&[&format!("http://127.0.0.1:{port}{path}")]);
        thread::sleep(Duration::from_millis(200));
        let spans = agent.spans();
        if let Some(sp) = spans
            .iter()
            .find(|sp| s(sp, "kind") == "SERVER" && attr(sp, "url.path") == path.as_str())
        {
            return (sp.clone(), spans);
        }
        assert!(
            Instant::now() < deadline,
            "no SERVER span for {path}: {spans:#?}\nagent log:\n{}",
            agent.log()
        );
    }
}

fn effective_caps(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .expect("CapEff of the agent")
}

#[test]
fn minimal_capabilities_trace_a_server_and_its_client() {
    if !require_root("minimal_capabilities_trace_a_server_and_its_client") {
        return;
    }
    let port = free_port();
    let server = python_server(port);
    let mut agent = agent_with_caps(MINIMAL, &["--port", &port.to_string()]);
    // The agent really runs without CAP_SYS_ADMIN (21) and CAP_NET_ADMIN (12).
    let caps = effective_caps(agent.pid());
    assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN present: {caps:#x}");
    assert_eq!(caps & (1 << 12), 0, "CAP_NET_ADMIN present: {caps:#x}");
    assert_ne!(caps & (1 << 39), 0, "CAP_BPF missing: {caps:#x}");

    let (sp, spans) = traced_request(&agent, port, "minimal");
    assert!(exe(&sp).starts_with("python3"), "{sp:#}");
    assert_eq!(sp["resource"]["process.pid"], server.pid());
    assert_eq!(attr(&sp, "http.response.status_code"), &Value::from(200));
    let client = spans
        .iter()
        .find(|c| {
            s(c, "kind") == "CLIENT"
                && exe(c) == "curl"
                && attr(c, "url.path") == attr(&sp, "url.path")
        })
        .unwrap_or_else(|| panic!("no curl CLIENT span: {spans:#?}"));
    assert_eq!(attr(client, "http.response.status_code"), &Value::from(200));

    agent.stop();
    let log = agent.log();
    assert!(log.contains("summary:"), "no orderly shutdown:\n{log}");
    assert!(!log.contains("ERROR"), "{log}");
    drop(server);
}

#[test]
fn injection_without_net_admin_is_declined_and_tracing_goes_on() {
    if !require_root("injection_without_net_admin_is_declined_and_tracing_goes_on") {
        return;
    }
    let port = free_port();
    let server = python_server(port);
    let mut agent = agent_with_caps(
        MINIMAL,
        &["--port", &port.to_string(), "--inject-context", "on"],
    );
    let log = agent.log();
    assert!(
        log.contains("context injection unavailable") && log.contains("CAP_NET_ADMIN"),
        "{log}"
    );
    let (sp, _) = traced_request(&agent, port, "no-inject");
    assert_eq!(sp["resource"]["process.pid"], server.pid());
    agent.stop();
    assert!(agent.log().contains("summary:"), "{}", agent.log());
    drop(server);
}
