//! Kubernetes metadata and selection, against a test API server that
//! speaks the real list+watch protocol (checked with the real kubectl),
//! real python servers moved into kubelet-style cgroups, and the real
//! agent with its kernel programs.

use std::{
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{
    attr,
    cgroups::KubeletCgroup,
    curl, exe, free_port,
    kubeapi::{pod, raw_get, FakeApi, PodSpec},
    otlp::Receiver,
    python_server, python_server_with_env, require_root, run_tracer_to_exit, s, Agent, TempDir,
};

const NODE: &str = "node-a";
const UID: &str = "7d4c2a10-5b3e-4f6a-9c8d-0e1f2a3b4c5d";
const SYS_UID: &str = "1b2c3d4e-5f60-4a7b-8c9d-aabbccddeeff";

fn cid(byte: &str) -> String {
    byte.repeat(32)
}

/// The checkout pod: a Deployment's, with containers web and sidecar.
fn checkout(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let (web, side) = (cid("a1"), cid("b2"));
    pod(&PodSpec {
        name: "checkout-7c9d8f6b5-x2x9q",
        namespace: "shop",
        uid: UID,
        node: NODE,
        labels,
        annotations,
        owner: Some(("ReplicaSet", "checkout-7c9d8f6b5")),
        containers: &[("web", &web), ("sidecar", &side)],
    })
}

fn kube_dns() -> Value {
    pod(&PodSpec {
        name: "coredns-5d78c9869d-abcde",
        namespace: "kube-system",
        uid: SYS_UID,
        node: NODE,
        labels: &[],
        annotations: &[],
        owner: Some(("ReplicaSet", "coredns-5d78c9869d")),
        containers: &[("coredns", &cid("c3"))],
    })
}

fn kubectl(kubeconfig: &std::path::Path, cache: &std::path::Path) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--request-timeout=20s")
        .env("HOME", cache);
    c
}

/// The test API server is a real one as far as kubectl can tell: it lists
/// with a field selector and pages, and watches a stream of add, update
/// and delete events. Bookmarks and 410 Gone are checked on the wire.
#[test]
fn fake_api_serves_kubectl_list_and_watch() {
    let api = FakeApi::start();
    api.add(checkout(&[], &[]));
    api.add(pod(&PodSpec {
        name: "elsewhere",
        namespace: "shop",
        uid: "00000000-0000-4000-8000-000000000001",
        node: "node-b",
        labels: &[],
        annotations: &[],
        owner: None,
        containers: &[],
    }));
    let dir = TempDir::new("kubectl");
    let kc = api.kubeconfig(&dir.0);
    let cache = dir.0.join("cache");

    let out = kubectl(&kc, &cache)
        .args(["get", "pods", "-A", "-o", "json", "--chunk-size=1"])
        .args(["--field-selector", &format!("spec.nodeName={NODE}")])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl JSON");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["checkout-7c9d8f6b5-x2x9q"], "node filter applied");
    // Two pages of one were asked for (--chunk-size=1): all pods.
    let out = kubectl(&kc, &cache)
        .args(["get", "pods", "-n", "shop", "-o", "name", "--chunk-size=1"])
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "paged list: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl's watch: the list, then the events after it.
    let mut watch = kubectl(&kc, &cache)
        .args([
            "get",
            "pods",
            "-A",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl watch");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    thread::spawn(move || {
        for ev in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            let Ok(ev) = ev else { break };
            let _ = tx.send(ev);
        }
    });
    let mut seen: Vec<(String, String, String)> = Vec::new();
    let mut next = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(ev) => seen.push((
                    s(&ev, "type").to_owned(),
                    ev["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    ev["object"]["metadata"]["labels"]["v"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )),
                Err(_) => panic!("kubectl watch: only {seen:?}"),
            }
        }
        seen.clone()
    };
    assert_eq!(next(2).len(), 2, "the initial list as ADDED events");
    api.wait_stats("kubectl's watch", |s| s.watches >= 1);
    let mut new = checkout(&[("v", "1")], &[]);
    new["metadata"]["name"] = "late".into();
    new["metadata"]["uid"] = "00000000-0000-4000-8000-000000000002".into();
    api.add(new.clone());
    new["metadata"]["labels"]["v"] = "2".into();
    api.update(new.clone());
    api.delete(new);
    let got = next(5);
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        got[2..],
        [
            ("ADDED".into(), "late".into(), "1".into()),
            ("MODIFIED".into(), "late".into(), "2".into()),
            ("DELETED".into(), "late".into(), "2".into()),
        ]
    );

    // On the wire: bookmarks when asked for, 410 Gone from a compacted version.
    let listed = raw_get(api.port, "/api/v1/pods", Duration::from_secs(5));
    let body = listed.split("\r\n\r\n").nth(1).unwrap_or("");
    let rv: u64 = serde_json::from_str::<Value>(body).expect("list JSON")["metadata"]
        ["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("a list resourceVersion");
    let stream = raw_get(
        api.port,
        &format!("/api/v1/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"),
        Duration::from_millis(1500),
    );
    assert!(
        stream.contains("transfer-encoding: chunked") && stream.contains(r#""type":"BOOKMARK""#),
        "{stream}"
    );
    api.compact_with(vec![]);
    let gone = raw_get(
        api.port,
        &format!("/api/v1/pods?watch=true&resourceVersion={rv}"),
        Duration::from_secs(5),
    );
    assert!(
        gone.contains(r#""type":"ERROR""#) && gone.contains(r#""code":410"#),
        "{gone}"
    );
}

/// Waits until a request to `port` yields a SERVER span whose resource
/// satisfies `ok`, sending a new request (a fresh path) every 300 ms: the
/// agent learns of pod changes asynchronously, so the first spans after a
/// change may still carry the old view.
fn span_with(agent: &Agent, port: u16, tag: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        let path = format!("/{tag}/{i}");
        curl(&[&format!("http://127.0.0.1:{port}{path}")]);
        i += 1;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            if let Some(sp) = agent.spans().into_iter().find(|sp| {
                s(sp, "kind") == "SERVER" && attr(sp, "url.path") == path.as_str() && ok(sp)
            }) {
                return sp;
            }
            thread::sleep(Duration::from_millis(30));
        }
        assert!(
            Instant::now() < deadline,
            "no span for {tag} with the expected resource; last ones: {:#?}\nagent log:\n{}",
            agent
                .spans()
                .iter()
                .rev()
                .take(3)
                .map(|s| s["resource"].clone())
                .collect::<Vec<_>>(),
            agent.log()
        );
    }
}

fn res<'a>(span: &'a Value, key: &str) -> &'a str {
    span["resource"][key].as_str().unwrap_or("")
}

/// The agent on this node (`--kubernetes on --node-name NODE`) with the
/// API of `kubeconfig`, plus `args` and `env`.
fn node_agent(kubeconfig: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
    let kc = kubeconfig.to_string_lossy().into_owned();
    let mut all = vec!["--kubernetes", "on", "--node-name", NODE];
    all.extend_from_slice(args);
    let mut vars = vec![("KUBECONFIG", kc.as_str())];
    vars.extend_from_slice(env);
    Agent::start_with_env(&all, &vars)
}

fn wait_log(agent: &Agent, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.log().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "agent never logged {needle:?} {times}x:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn counter(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {summary}"))
}

fn summary(agent: &mut Agent) -> String {
    agent.stop();
    let log = agent.log();
    log.lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"))
        .to_owned()
}

/// A process in a kubelet-made cgroup gets its pod's attributes and the
/// service.name rule, and the view follows the API across updates, a
/// dropped watch, a 410 Gone and a delete. Pods of kube-system (excluded
/// by default) are not traced, in the kernel.
#[test]
fn pods_name_their_processes_through_watch_restarts() {
    if !require_root("pods_name_their_processes_through_watch_restarts") {
        return;
    }
    let api = FakeApi::start();
    let label = [("app.kubernetes.io/name", "checkout-app")];
    api.add(checkout(&label, &[]));
    api.add(kube_dns());
    let dir = TempDir::new("k8s-agent");
    let kc = api.kubeconfig(&dir.0);

    // Cgroups first: guards drop in reverse, so the servers are stopped
    // before their cgroups go.
    let web_cg = KubeletCgroup::create("besteffort", UID, &cid("a1"));
    let side_cg = KubeletCgroup::create("besteffort", UID, &cid("b2"));
    let dns_cg = KubeletCgroup::create("besteffort", SYS_UID, &cid("c3"));
    let (web_port, side_port, dns_port) = (free_port(), free_port(), free_port());
    let web = python_server(web_port);
    let side = python_server_with_env(side_port, &[("OTEL_SERVICE_NAME", "sidecar-env")]);
    let dns = python_server(dns_port);
    web_cg.add(web.pid());
    side_cg.add(side.pid());
    dns_cg.add(dns.pid());

    let mut agent = node_agent(&kc, &["--stats-interval", "1"], &[]);
    wait_log(&agent, "listed this node's pods", 1);

    // Rule 3: the app.kubernetes.io/name label; every k8s attribute.
    let sp = span_with(&agent, web_port, "label", |sp| {
        res(sp, "service.name") == "checkout-app"
    });
    for (k, v) in [
        ("service.namespace", "shop"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-7c9d8f6b5-x2x9q"),
        ("k8s.pod.uid", UID),
        ("k8s.container.name", "web"),
        ("k8s.node.name", NODE),
        ("k8s.replicaset.name", "checkout-7c9d8f6b5"),
        ("k8s.deployment.name", "checkout"),
        ("container.id", &cid("a1")),
    ] {
        assert_eq!(res(&sp, k), v, "{k} in {:#}", sp["resource"]);
    }
    // Rule 1: the process's own OTEL_SERVICE_NAME wins over the pod's.
    let sp = span_with(&agent, side_port, "env", |sp| {
        res(sp, "k8s.container.name") == "sidecar"
    });
    assert_eq!(res(&sp, "service.name"), "sidecar-env");
    assert_eq!(res(&sp, "k8s.pod.uid"), UID);

    // Rule 2: the annotation, seen through the watch.
    api.update(checkout(
        &label,
        &[(
            "resource.opentelemetry.io/service.name",
            "checkout-annotated",
        )],
    ));
    span_with(&agent, web_port, "annotation", |sp| {
        res(sp, "service.name") == "checkout-annotated"
    });

    // A dropped watch is resumed from its version (no new list).
    let before = api.stats();
    api.drop_watches();
    api.wait_stats("a resumed watch", |s| s.watches > before.watches);
    // Rule 4: no label or annotation: the owner (the Deployment).
    api.update(checkout(&[], &[]));
    span_with(&agent, web_port, "owner", |sp| {
        res(sp, "service.name") == "checkout"
    });
    assert_eq!(
        api.stats().lists,
        1,
        "a dropped watch resumes, it does not re-list"
    );

    // History compacted while the watch was away: the resume gets 410 Gone,
    // and the agent lists again, learning what it missed.
    api.compact_with(vec![checkout(
        &[("app.kubernetes.io/name", "checkout-v2")],
        &[],
    )]);
    span_with(&agent, web_port, "relisted", |sp| {
        res(sp, "service.name") == "checkout-v2"
    });
    let st = api.stats();
    assert!(st.gone_sent >= 1 && st.lists >= 2, "{st:?}");
    assert!(
        st.bookmarks_sent >= 1,
        "the agent asks for bookmarks: {st:?}"
    );

    // Rule 5 once the pod is gone: the executable; no pod attributes.
    api.delete(checkout(&[], &[]));
    let sp = span_with(&agent, web_port, "deleted", |sp| {
        sp["resource"]["k8s.pod.name"].is_null()
    });
    assert_eq!(res(&sp, "service.name"), exe(&sp));
    assert!(res(&sp, "service.namespace").is_empty());

    // kube-system is excluded by default: its server is never traced.
    curl(&[&format!("http://127.0.0.1:{dns_port}/dns")]);
    span_with(&agent, web_port, "after-dns", |_| true);
    let dns_spans: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|sp| s(sp, "kind") == "SERVER" && sp["resource"]["process.pid"] == dns.pid())
        .collect();
    assert!(dns_spans.is_empty(), "kube-system traced: {dns_spans:#?}");
    let line = summary(&mut agent);
    assert!(counter(&line, "cgroup_filtered") > 0, "{line}");
    assert!(counter(&line, "k8s_lists") >= 2, "{line}");
    assert!(
        counter(&line, "k8s_watch_errors") >= 1,
        "the 410 is counted: {line}"
    );
    drop((web, side, dns));
}

/// `--namespace` and `--container-name` select in the kernel: only the
/// named container is traced; its pod's other container and host
/// processes (curl) are not. The health endpoint answers.
#[test]
fn container_selection_traces_only_the_named_container() {
    if !require_root("container_selection_traces_only_the_named_container") {
        return;
    }
    let api = FakeApi::start();
    api.add(checkout(&[], &[]));
    let dir = TempDir::new("k8s-select");
    let kc = api.kubeconfig(&dir.0);
    let web_cg = KubeletCgroup::create("burstable", UID, &cid("a1"));
    let side_cg = KubeletCgroup::create("burstable", UID, &cid("b2"));
    let (web_port, side_port, health_port) = (free_port(), free_port(), free_port());
    let web = python_server(web_port);
    let side = python_server(side_port);
    web_cg.add(web.pid());
    side_cg.add(side.pid());

    let kc_s = kc.to_string_lossy().into_owned();
    let health = format!("127.0.0.1:{health_port}");
    let mut agent = Agent::start_with_env(
        &[
            "--node-name",
            NODE,
            "--namespace",
            "shop",
            "--container-name",
            "web",
            "--health-listen",
            &health,
        ],
        &[("KUBECONFIG", &kc_s)],
    );
    let (_, ready) = curl(&[&format!("http://{health}/readyz")]);
    assert_eq!(ready, "ready\n");
    wait_log(&agent, "listed this node's pods", 1);
    let sp = span_with(&agent, web_port, "web", |sp| {
        res(sp, "k8s.container.name") == "web"
    });
    assert_eq!(res(&sp, "service.name"), "checkout");
    curl(&[&format!("http://127.0.0.1:{side_port}/side")]);
    span_with(&agent, web_port, "after-side", |_| true);
    let spans = agent.spans();
    let stray: Vec<&Value> = spans
        .iter()
        .filter(|sp| res(sp, "k8s.container.name") != "web")
        .collect();
    assert!(
        stray.is_empty(),
        "only the web container is traced: {stray:#?}"
    );
    let line = summary(&mut agent);
    assert!(counter(&line, "cgroup_filtered") > 0, "{line}");
    drop((web, side));
}

/// Outside a cluster a pod selection cannot be honoured: a clear error,
/// not a silent trace-everything. `--kubernetes on` without an API too.
#[test]
fn selection_without_kubernetes_is_refused() {
    if !require_root("selection_without_kubernetes_is_refused") {
        return;
    }
    let (st, err) = run_tracer_to_exit(&["--kubernetes", "off", "--namespace", "shop"]);
    assert!(
        !st.success() && err.contains("need the Kubernetes API"),
        "{err}"
    );
    let (st, err) = run_tracer_to_exit(&["--kubernetes", "on"]);
    assert!(
        !st.success() && err.contains("Kubernetes"),
        "--kubernetes on with no API: {err}"
    );
}

/// A pod as a busy node has it: a dozen labels, kubectl's
/// last-applied-configuration (kilobytes), three containers.
fn bulky_pod(i: usize, node: &str, generation: usize, app: &str) -> Value {
    let name = format!("svc{i:03}-6d5f7b9c8-{i:05}");
    let uid = format!("00000000-0000-4000-8000-{i:012}");
    let ids: Vec<String> = (0..3).map(|c| format!("{i:060}{c:04}")).collect();
    let applied = format!("{{\"spec\":\"{}\"}}", "x".repeat(6000));
    let gen = generation.to_string();
    let labels: Vec<(String, String)> = (0..10)
        .map(|l| (format!("example.com/label-{l}"), format!("value-{i}-{l}")))
        .chain([
            ("app.kubernetes.io/name".to_owned(), app.to_owned()),
            ("generation".to_owned(), gen.clone()),
        ])
        .collect();
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let rs = format!("svc{i:03}-6d5f7b9c8");
    pod(&PodSpec {
        name: &name,
        namespace: "shop",
        uid: &uid,
        node,
        labels: &labels,
        annotations: &[("kubectl.kubernetes.io/last-applied-configuration", &applied)],
        owner: Some(("ReplicaSet", &rs)),
        containers: &[("app", &ids[0]), ("proxy", &ids[1]), ("log", &ids[2])],
    })
}

/// 250 pods on this node (and 50 on another, which the field selector
/// keeps out), each re-sent four times by the watch: the agent holds
/// all 250, its memory stays small and flat through the churn, and the
/// last update is the one its spans carry.
#[test]
fn a_node_with_250_pods_keeps_memory_bounded() {
    if !require_root("a_node_with_250_pods_keeps_memory_bounded") {
        return;
    }
    const PODS: usize = 250;
    let api = FakeApi::start();
    for i in 0..PODS {
        api.add(bulky_pod(i, NODE, 0, "app-0"));
    }
    for i in PODS..PODS + 50 {
        api.add(bulky_pod(i, "node-b", 0, "other"));
    }
    let dir = TempDir::new("k8s-250");
    let kc = api.kubeconfig(&dir.0);
    // Pod 0's "app" container holds a real server, to see the updates land.
    let first = bulky_pod(0, NODE, 0, "app-0");
    let app_id = first["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|s| s.strip_prefix("containerd://"))
        .expect("container id")
        .to_owned();
    let uid = first["metadata"]["uid"].as_str().expect("uid").to_owned();
    let cg = KubeletCgroup::create("burstable", &uid, &app_id);
    let port = free_port();
    let server = python_server(port);
    cg.add(server.pid());

    // The periodic self-metrics line (debug) carries the gauges.
    let mut agent = node_agent(
        &kc,
        &["--stats-interval", "1"],
        &[("RUST_LOG", "info,tracer_agent::agent=debug")],
    );
    wait_log(&agent, "listed this node's pods", 1);
    span_with(&agent, port, "listed", |sp| {
        res(sp, "service.name") == "app-0" && res(sp, "k8s.container.name") == "app"
    });
    let listed = agent.rss_kib();

    for generation in 1..=4 {
        for i in 0..PODS {
            api.update(bulky_pod(i, NODE, generation, &format!("app-{generation}")));
        }
    }
    // Updates arrive in order: pod 0's last one seen means all were.
    let sp = span_with(&agent, port, "churned", |sp| {
        res(sp, "service.name") == "app-4"
    });
    assert_eq!(res(&sp, "k8s.deployment.name"), "svc000");
    let churned = agent.rss_kib();
    eprintln!("agent RSS: {listed} KiB after the list, {churned} KiB after 1000 updates");
    // The pods' raw objects are ~2 MiB; what is kept is a few KiB each.
    assert!(
        listed < 96 * 1024,
        "agent RSS {listed} KiB with {PODS} pods"
    );
    assert!(
        churned < listed + 16 * 1024,
        "agent RSS grew from {listed} to {churned} KiB over 1000 pod updates"
    );
    wait_log(&agent, "k8s_pods=", 1);
    let log = agent.log();
    let stats = log
        .lines()
        .rfind(|l| l.contains("k8s_pods="))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(counter(&stats, "k8s_pods"), PODS as u64, "{stats}");
    let line = summary(&mut agent);
    assert!(!line.contains("k8s_pods_dropped="), "{line}");
    drop(server);
}

/// The agent in a mount namespace of its own with every cgroup2 mount
/// taken away, as on a cgroup v1-only node.
/// `limit`: killed after that long (for a run expected to exit by itself).
fn without_cgroup2(args: &[&str], kubeconfig: &str, limit: Option<u32>) -> Command {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cgroup2: Vec<String> = mounts
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|f| f.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect();
    let script = cgroup2
        .iter()
        .map(|m| format!("umount -l '{m}' && "))
        .collect::<String>()
        + r#"exec "$0" "$@""#;
    let mut cmd = match limit {
        Some(secs) => {
            let mut c = Command::new("timeout");
            c.args(["-s", "KILL", &secs.to_string(), "unshare"]);
            c
        }
        None => Command::new("unshare"),
    };
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(tracer_tests::tracer_bin())
        .args(["--output", "json", "--log-level", "info"])
        .args(["--kubernetes", "on", "--node-name", NODE])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG");
    cmd
}

/// With no cgroup v2 hierarchy the kernel cannot select by cgroup: an
/// explicit selection is refused (tracing more than asked is no
/// fallback), the default exclusions give way with a warning.
#[test]
fn no_cgroup2_refuses_explicit_selection_and_drops_default_exclusions() {
    if !require_root("no_cgroup2_refuses_explicit_selection_and_drops_default_exclusions") {
        return;
    }
    let api = FakeApi::start();
    api.add(kube_dns());
    let dir = TempDir::new("k8s-nocg2");
    let kc = api.kubeconfig(&dir.0);
    let kc_s = kc.to_string_lossy().into_owned();

    let out = without_cgroup2(&["--namespace", "shop"], &kc_s, Some(60))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("Kubernetes selection")
            && err.contains("no cgroup v2 mount"),
        "explicit selection without cgroup v2: {err}"
    );

    let port = free_port();
    let server = python_server(port);
    let mut agent =
        Agent::start_command(without_cgroup2(&["--port", &port.to_string()], &kc_s, None));
    let log = agent.log();
    assert!(
        log.contains("no cgroup v2 hierarchy") && log.contains("kube-system"),
        "{log}"
    );
    span_with(&agent, port, "nocg2", |sp| {
        sp["resource"]["process.pid"] == server.pid()
    });
    agent.stop();
    drop(server);
}

/// The OTLP Resource and the `--output json` resource are one: every
/// attribute, k8s ones included, with the same value.
#[test]
fn the_otlp_resource_is_the_json_resource() {
    if !require_root("the_otlp_resource_is_the_json_resource") {
        return;
    }
    let api = FakeApi::start();
    api.add(checkout(&[("app.kubernetes.io/name", "checkout-app")], &[]));
    let dir = TempDir::new("k8s-otlp");
    let kc = api.kubeconfig(&dir.0);
    let web_cg = KubeletCgroup::create("besteffort", UID, &cid("a1"));
    let port = free_port();
    let web = python_server(port);
    web_cg.add(web.pid());
    let rx = Receiver::grpc(0, 0);
    let endpoint = format!("http://127.0.0.1:{}", rx.port);
    let agent = node_agent(
        &kc,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-batch-timeout",
            "200ms",
        ],
        &[],
    );
    let sp = span_with(&agent, port, "otlp", |sp| {
        res(sp, "service.name") == "checkout-app"
    });
    let path = attr(&sp, "url.path")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let got = rx.wait_for(1, |r| {
        r.span.kind == 2 && r.attr("url.path").as_deref() == Some(path.as_str())
    });
    let otlp = &got[0].resource;
    let json = sp["resource"].as_object().expect("resource object");
    for (k, v) in json {
        let want = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(
            otlp.get(k),
            Some(&want),
            "{k}: OTLP {otlp:#?} JSON {json:#?}"
        );
    }
    assert_eq!(otlp.len(), json.len(), "OTLP {otlp:#?} JSON {json:#?}");
    assert_eq!(
        otlp.get("k8s.deployment.name").map(String::as_str),
        Some("checkout")
    );
    drop(web);
}

/// An API server that accepts connections and never answers: requests
/// to it hang until the client gives up.
struct BlackHole {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHole {
    fn start() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((c, _)) = l.accept() {
                    if held.len() < 256 {
                        held.push(c);
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        Self { port, stop }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The API hangs: the agent starts, and a pod's process gets spans with
/// what is known without it (the executable's name, the container id and
/// pod uid from its cgroup); nothing on the event path waits.
#[test]
fn spans_flow_while_the_api_hangs() {
    if !require_root("spans_flow_while_the_api_hangs") {
        return;
    }
    let hole = BlackHole::start();
    let dir = TempDir::new("k8s-hang");
    let kc = dir.0.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: hang\n  cluster:\n    server: http://127.0.0.1:{}\n\
             users:\n- name: hang\n  user: {{}}\ncontexts:\n- name: hang\n  context:\n    cluster: hang\n    user: hang\n\
             current-context: hang\n",
            hole.port
        ),
    )
    .expect("kubeconfig");
    let web_cg = KubeletCgroup::create("besteffort", UID, &cid("a1"));
    let port = free_port();
    let web = python_server(port);
    web_cg.add(web.pid());
    let started = Instant::now();
    let mut agent = node_agent(&kc, &[], &[]);
    let sp = span_with(&agent, port, "hang", |sp| {
        sp["resource"]["process.pid"] == web.pid()
    });
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "spans took {:?}",
        started.elapsed()
    );
    assert_eq!(res(&sp, "service.name"), exe(&sp));
    assert_eq!(res(&sp, "container.id"), cid("a1"));
    assert_eq!(res(&sp, "k8s.pod.uid"), UID);
    assert!(
        sp["resource"]["k8s.pod.name"].is_null(),
        "{:#}",
        sp["resource"]
    );
    assert!(
        !agent.log().contains("listed this node's pods"),
        "{}",
        agent.log()
    );
    agent.stop();
    assert!(agent.log().contains("summary:"), "{}", agent.log());
    drop(web);
}
