//! The Kubernetes manifests: every kustomization (the base and each
//! overlay) rendered by the real `kubectl kustomize`, offline, validated
//! against the Kubernetes 1.33 schemas (`kubernetes-validate --strict`),
//! and checked for what the agent needs and must not get.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tracer_tests::{h2::tools_dir, TempDir};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn venv_bin(name: &str) -> PathBuf {
    let p = tools_dir().join("venv/bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (it installs kubernetes-validate)",
        p.display()
    );
    p
}

fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 YAML")
}

/// Validates rendered YAML; returns (success, output).
fn validate(yaml: &str, tmp: &TempDir, name: &str) -> (bool, String) {
    let file = tmp.0.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write rendered YAML");
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["-k", "1.33.0", "--strict"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

/// The rendered documents as JSON (PyYAML, from the validator's venv).
fn documents(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(venv_bin("python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write YAML");
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "YAML to JSON failed");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn caps(container: &Value) -> Vec<String> {
    let mut c: Vec<String> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    c.sort();
    c
}

#[test]
fn manifests_render_and_validate_offline() {
    let tmp = TempDir::new("manifests");
    let mut dirs = vec![("base".to_owned(), deploy_dir().join("base"))];
    let overlays = std::fs::read_dir(deploy_dir().join("overlays")).expect("overlays dir");
    for e in overlays.flatten() {
        dirs.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    dirs.sort();
    let names: Vec<&str> = dirs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "base",
            "injection",
            "namespace-filter",
            "otlp-collector",
            "privileged"
        ]
    );

    let mut rendered = std::collections::BTreeMap::new();
    for (name, dir) in &dirs {
        let yaml = render(dir);
        let (ok, out) = validate(&yaml, &tmp, name);
        assert!(ok, "{name} does not validate:\n{out}");
        // One "passed" line per object: nothing skipped as unknown.
        assert_eq!(out.matches("passed").count(), 5, "{name}:\n{out}");
        rendered.insert(name.clone(), documents(&yaml));
    }

    // The validator does reject a bad manifest (so a pass means something).
    let base_yaml = render(&deploy_dir().join("base"));
    let broken = base_yaml.replacen("hostPID: true", "hostPID: true\n      hostPIDs: true", 1);
    assert_ne!(broken, base_yaml);
    assert!(
        !validate(&broken, &tmp, "broken").0,
        "an unknown field passed"
    );

    let base = &rendered["base"];
    let ds = kind(base, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(ds["metadata"]["namespace"], "tracer");
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["serviceAccountName"], "tracer");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    assert_eq!(
        env(c, "NODE_NAME").expect("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env(c, "TRACER_METRICS_LISTEN").expect("metrics")["value"],
        "0.0.0.0:9464"
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].is_string(), "resources.{k}.{r}");
        }
    }
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, ["/sys/kernel/tracing", "/sys/fs/cgroup"]);
    // The minimal set, not privileged.
    assert_eq!(caps(c), ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"]);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(c["securityContext"]["privileged"].is_null());
    // RBAC: read pods, nothing else.
    let role = kind(base, "ClusterRole");
    assert_eq!(role["rules"].as_array().map(Vec::len), Some(1));
    assert_eq!(role["rules"][0]["resources"][0], "pods");
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    let binding = kind(base, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["namespace"], "tracer");

    let container = |name: &str| {
        rendered[name]
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .expect("ds")["spec"]["template"]["spec"]["containers"][0]
            .clone()
    };
    let inj = container("injection");
    assert_eq!(
        caps(&inj),
        [
            "BPF",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "PERFMON",
            "SYS_PTRACE"
        ]
    );
    assert_eq!(
        env(&inj, "TRACER_INJECT_CONTEXT").expect("inject")["value"],
        "on"
    );
    let privileged = container("privileged");
    assert_eq!(privileged["securityContext"]["privileged"], true);
    let otlp = container("otlp-collector");
    assert!(env(&otlp, "OTEL_EXPORTER_OTLP_ENDPOINT").is_some());
    assert_eq!(
        env(&otlp, "TRACER_OUTPUT").expect("output")["value"],
        "none"
    );
    let ns = container("namespace-filter");
    assert!(env(&ns, "TRACER_NAMESPACE").is_some());
}
