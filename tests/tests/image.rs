//! The container image (`cargo xtask image`: the release binary and its
//! shared libraries on an empty root), run for real: imported into a
//! dockerd of the test's own, started `--pid=host` with the DaemonSet's
//! mounts, read-only root and dropped capabilities, tracing a server and a
//! client that run on the host.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{
    attr, curl, exe, free_port, python_server, require_root, s, Agent, Proc, TempDir,
};

/// A dockerd of the test's own (no bridge, no iptables: nothing on the
/// host's network changes), stopped and its state removed on drop.
struct Dockerd {
    proc: Proc,
    dir: TempDir,
    sock: String,
}

impl Dockerd {
    fn start() -> Self {
        let dir = TempDir::new("dockerd");
        let sock = format!("unix://{}/d.sock", dir.0.display());
        let log = std::fs::File::create(dir.0.join("dockerd.log")).expect("log file");
        let proc = Proc::spawn(
            "dockerd",
            Command::new("dockerd")
                .args([
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                    "-H",
                    &sock,
                ])
                .arg("--data-root")
                .arg(dir.0.join("data"))
                .arg("--exec-root")
                .arg(dir.0.join("exec"))
                .arg("--pidfile")
                .arg(dir.0.join("dockerd.pid"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let d = Self { proc, dir, sock };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["info", "--format", "{{.ServerVersion}}"]).0 {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("dockerd.log")).unwrap_or_default()
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.sock]);
        c
    }

    /// Runs a docker command; (success, stdout + stderr).
    fn docker(&self, args: &[&str]) -> (bool, String) {
        match self.cmd().args(args).output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("docker: {e}")),
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (their shims and mounts), then the daemon and
        // its containerd; the data root is removed with the temp dir.
        let (_, ids) = self.docker(&["ps", "-aq"]);
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        self.proc.stop(libc::SIGTERM, Duration::from_secs(20));
        let root = self.dir.0.display().to_string();
        // Anything still mounted under the data root (overlay layers).
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let mut under: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
                .collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

fn image_tar() -> PathBuf {
    let p = std::env::var_os("TRACER_IMAGE_TAR")
        .map(PathBuf::from)
        .expect(
            "TRACER_IMAGE_TAR is not set: run this through `cargo xtask test`, which assembles \
         the image's root file system (as `cargo xtask image` does)",
        );
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// The DaemonSet's capability set, as docker flags. Docker 20.10 (Debian
/// 12's) predates CAP_BPF and CAP_PERFMON and refuses their names; there
/// the kernel's older equivalent of both, CAP_SYS_ADMIN, stands in (the
/// README's privileged overlay covers such runtimes).
fn capability_flags(minimal: bool) -> Vec<&'static str> {
    let mut f = vec!["--cap-drop", "ALL"];
    if minimal {
        f.extend(["--cap-add", "BPF", "--cap-add", "PERFMON"]);
    } else {
        f.extend(["--cap-add", "SYS_ADMIN"]);
    }
    f.extend(["--cap-add", "SYS_PTRACE", "--cap-add", "DAC_READ_SEARCH"]);
    f
}

#[test]
fn image_runs_with_the_manifest_mounts_and_traces_the_host() {
    if !require_root("image_runs_with_the_manifest_mounts_and_traces_the_host") {
        return;
    }
    let tar = image_tar();
    let docker = Dockerd::start();
    let (ok, out) = docker.docker(&[
        "import",
        "--change",
        r#"ENTRYPOINT ["/bin/tracer"]"#,
        &tar.to_string_lossy(),
        "tracer:test",
    ]);
    assert!(ok, "docker import: {out}");

    let port = free_port();
    let server = python_server(port);
    let name = format!("tracer-test-{}", std::process::id());
    // Whether this daemon knows CAP_BPF: `docker create` validates the
    // capability names without starting anything.
    let (minimal, why) = docker.docker(&[
        "create",
        "--name",
        &name,
        "--cap-add",
        "BPF",
        "--cap-add",
        "PERFMON",
        "tracer:test",
    ]);
    let _ = docker.docker(&["rm", "-f", &name]);
    if !minimal {
        assert!(why.contains("unknown capability"), "docker create: {why}");
        eprintln!(
            "note: this docker refuses CAP_BPF/CAP_PERFMON ({}); running with CAP_SYS_ADMIN in their place",
            why.trim()
        );
    }
    let mut cmd = docker.cmd();
    cmd.args([
        "run",
        "--rm",
        "--name",
        &name,
        "--pid=host",
        "--network=none",
        "--read-only",
    ])
    .args(capability_flags(minimal))
    .args(["--security-opt", "seccomp=unconfined"])
    .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
    .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
    .args(["-e", "NODE_NAME=image-test-node"])
    .arg("tracer:test")
    .args([
        "--output",
        "json",
        "--log-level",
        "info",
        "--port",
        &port.to_string(),
    ]);
    let mut agent = Agent::start_command(cmd);
    // Off the cluster (no service account, no kubeconfig) the default
    // `--kubernetes auto` stays out of the way: no API, no error.
    let log = agent.log();
    assert!(
        !log.contains("Kubernetes API found") && !log.contains("ERROR"),
        "{log}"
    );

    // The host's server and client, seen from inside the container.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let server_span = loop {
        let path = format!("/from-image/{i}");
        i += 1;
        curl(&[&format!("http://127.0.0.1:{port}{path}")]);
        thread::sleep(Duration::from_millis(300));
        let spans = agent.spans();
        let found = spans
            .iter()
            .find(|sp| s(sp, "kind") == "SERVER" && attr(sp, "url.path") == path.as_str());
        if let Some(sp) = found {
            assert!(
                spans
                    .iter()
                    .any(|c| s(c, "kind") == "CLIENT" && exe(c) == "curl"),
                "the host's curl is traced too: {spans:#?}"
            );
            break sp.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no SERVER span from the host's server: {spans:#?}\nagent log:\n{}",
            agent.log()
        );
    };
    assert!(exe(&server_span).starts_with("python3"), "{server_span:#}");
    // Host pids (--pid=host), and the node's name as host.name.
    assert_eq!(server_span["resource"]["process.pid"], server.pid());
    assert_eq!(server_span["resource"]["host.name"], "image-test-node");
    assert_eq!(
        attr(&server_span, "http.response.status_code"),
        &Value::from(200)
    );

    // docker run forwards the signal: the agent shuts down in order.
    agent.stop();
    let log = agent.log();
    assert!(log.contains("summary:"), "no orderly shutdown:\n{log}");
    drop(server);
}
