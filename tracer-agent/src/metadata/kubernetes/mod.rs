//! Kubernetes metadata: this node's pods, as the API reports them, kept in
//! a bounded table that the event path reads without waiting.
//!
//! - [`watch`] finds the API (in-cluster or `KUBECONFIG`) and keeps the
//!   table current with a list+watch of the node's pods.
//! - [`select`] turns `--namespace` / `--exclude-namespace` /
//!   `--container-name` into the kernel's cgroup filter.
//! - Here: the trimmed pod record, its resource attributes, and the
//!   service-name rule.

pub mod select;
pub mod watch;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use k8s_openapi::api::core::v1::Pod;

/// Pods kept at once. The kubelet's default limit is 110 pods a node and
/// large nodes run 250; beyond this bound new pods are counted and not
/// kept, so a misconfigured watch (all pods of a cluster) cannot grow the
/// agent without limit.
pub const MAX_PODS: usize = 1024;
/// Containers kept per pod (init, regular and ephemeral).
const MAX_CONTAINERS: usize = 64;
/// Longest label or annotation value kept.
const MAX_VALUE: usize = 253;

/// The annotation that names a pod's service (OTel semantic conventions).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// The recommended label that names an application.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// What owns a pod, as the resource attribute that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A ReplicaSet made by a Deployment: the Deployment's name is the
    /// ReplicaSet's without its pod-template hash.
    Deployment {
        deployment: String,
        replicaset: String,
    },
    ReplicaSet(String),
    StatefulSet(String),
    DaemonSet(String),
    /// A Job made by a CronJob: its name is the CronJob's plus the
    /// scheduled minute.
    CronJob {
        cronjob: String,
        job: String,
    },
    Job(String),
}

impl Owner {
    /// The owner's name, the fallback service name.
    pub fn name(&self) -> &str {
        match self {
            Owner::Deployment { deployment: n, .. }
            | Owner::CronJob { cronjob: n, .. }
            | Owner::ReplicaSet(n)
            | Owner::StatefulSet(n)
            | Owner::DaemonSet(n)
            | Owner::Job(n) => n,
        }
    }

    /// From a controller owner reference. The Deployment and CronJob are
    /// derived from the names their controllers give (no extra API reads,
    /// so the agent needs no RBAC beyond pods).
    pub fn from_reference(kind: &str, name: &str) -> Option<Owner> {
        let name = name.to_owned();
        Some(match kind {
            "ReplicaSet" => match strip_suffix_after_dash(&name, is_template_hash) {
                Some(d) => Owner::Deployment {
                    deployment: d.to_owned(),
                    replicaset: name,
                },
                None => Owner::ReplicaSet(name),
            },
            "StatefulSet" => Owner::StatefulSet(name),
            "DaemonSet" => Owner::DaemonSet(name),
            // The CronJob controller names Jobs `<cronjob>-<minutes since
            // the epoch>`: 8 digits or more from 1973 on.
            "Job" => match strip_suffix_after_dash(&name, |s| {
                s.len() >= 8 && s.bytes().all(|c| c.is_ascii_digit())
            }) {
                Some(c) => Owner::CronJob {
                    cronjob: c.to_owned(),
                    job: name,
                },
                None => Owner::Job(name),
            },
            _ => return None,
        })
    }
}

/// `name` without its last `-suffix`, when `ok(suffix)`.
fn strip_suffix_after_dash(name: &str, ok: impl Fn(&str) -> bool) -> Option<&str> {
    let (head, tail) = name.rsplit_once('-')?;
    (!head.is_empty() && ok(tail)).then_some(head)
}

/// A pod-template hash: what the Deployment controller appends (safe
/// alphanumerics, bcdfghjklmnpqrstvwxz2456789, 5 to 10 characters).
fn is_template_hash(s: &str) -> bool {
    (5..=10).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// What the agent keeps of one pod: only what spans and the selection
/// use, so the table stays small (about 1 KiB a pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub owner: Option<Owner>,
    pub service_annotation: Option<String>,
    pub app_label: Option<String>,
    /// (container id without the runtime prefix, container name).
    pub containers: Vec<(String, String)>,
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl PodMeta {
    /// The parts of an API object the agent keeps; `None` without a UID.
    pub fn from_pod(pod: &Pod) -> Option<PodMeta> {
        let m = &pod.metadata;
        let uid = m.uid.as_deref().filter(|u| !u.is_empty())?;
        let owner = m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .and_then(|o| Owner::from_reference(&o.kind, &o.name));
        let pick = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key))
                .filter(|v| !v.is_empty())
                .map(|v| bounded(v))
        };
        let mut containers = Vec::new();
        if let Some(st) = &pod.status {
            let all = st
                .init_container_statuses
                .iter()
                .flatten()
                .chain(st.container_statuses.iter().flatten())
                .chain(st.ephemeral_container_statuses.iter().flatten());
            for c in all.take(MAX_CONTAINERS) {
                if let Some(id) = c.container_id.as_deref().and_then(runtime_id) {
                    containers.push((id, bounded(&c.name)));
                }
            }
        }
        Some(PodMeta {
            uid: uid.to_ascii_lowercase(),
            name: bounded(m.name.as_deref().unwrap_or_default()),
            namespace: bounded(m.namespace.as_deref().unwrap_or("default")),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(bounded),
            owner,
            service_annotation: pick(&m.annotations, SERVICE_NAME_ANNOTATION),
            app_label: pick(&m.labels, APP_NAME_LABEL),
            containers,
        })
    }

    /// The name of the container with this runtime id.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, n)| n.as_str())
    }

    /// The service name this pod gives (rules 2 to 4 of the README's
    /// service.name order: annotation, `app.kubernetes.io/name`, owner).
    pub fn service_name(&self) -> Option<&str> {
        self.service_annotation
            .as_deref()
            .or(self.app_label.as_deref())
            .or(self.owner.as_ref().map(Owner::name))
    }

    /// Semantic-convention resource attributes of a process in this pod.
    pub fn attributes(&self, container: Option<&str>, out: &mut Vec<(&'static str, String)>) {
        out.push(("k8s.namespace.name", self.namespace.clone()));
        out.push(("k8s.pod.name", self.name.clone()));
        out.push(("k8s.pod.uid", self.uid.clone()));
        if let Some(c) = container {
            out.push(("k8s.container.name", c.to_owned()));
        }
        if let Some(n) = &self.node {
            out.push(("k8s.node.name", n.clone()));
        }
        match &self.owner {
            Some(Owner::Deployment {
                deployment,
                replicaset,
            }) => {
                out.push(("k8s.replicaset.name", replicaset.clone()));
                out.push(("k8s.deployment.name", deployment.clone()));
            }
            Some(Owner::ReplicaSet(n)) => out.push(("k8s.replicaset.name", n.clone())),
            Some(Owner::StatefulSet(n)) => out.push(("k8s.statefulset.name", n.clone())),
            Some(Owner::DaemonSet(n)) => out.push(("k8s.daemonset.name", n.clone())),
            Some(Owner::CronJob { cronjob, job }) => {
                out.push(("k8s.job.name", job.clone()));
                out.push(("k8s.cronjob.name", cronjob.clone()));
            }
            Some(Owner::Job(n)) => out.push(("k8s.job.name", n.clone())),
            None => {}
        }
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`: the id, when it
/// is the 64 hex digits the cgroup path carries.
fn runtime_id(s: &str) -> Option<String> {
    let id = s.rsplit_once("://").map_or(s, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The pod table, by UID and by container id.
#[derive(Debug, Default)]
struct Table {
    by_uid: HashMap<String, Arc<PodMeta>>,
    by_container: HashMap<String, String>,
}

impl Table {
    fn insert(&mut self, pod: PodMeta) -> bool {
        if self.by_uid.len() >= MAX_PODS && !self.by_uid.contains_key(&pod.uid) {
            return false;
        }
        self.remove(&pod.uid);
        for (id, _) in &pod.containers {
            self.by_container.insert(id.clone(), pod.uid.clone());
        }
        self.by_uid.insert(pod.uid.clone(), Arc::new(pod));
        true
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for (id, _) in &old.containers {
                if self.by_container.get(id).is_some_and(|u| u == uid) {
                    self.by_container.remove(id);
                }
            }
        }
    }
}

/// A pod and, when the process's container is known, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMatch {
    pub pod: Arc<PodMeta>,
    pub container: Option<String>,
}

/// This node's pods, shared by the watch (the only writer) and the
/// pipeline and selection (readers). Writers hold the lock only to swap
/// entries in memory, never across I/O; readers first compare
/// [`Pods::generation`] and skip the lock when nothing changed.
#[derive(Debug, Default)]
pub struct Pods {
    table: RwLock<Table>,
    generation: AtomicU64,
}

impl Pods {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds or replaces a pod; false when the table is full.
    pub fn upsert(&self, pod: PodMeta) -> bool {
        let ok = match self.table.write() {
            Ok(mut t) => t.insert(pod),
            Err(_) => false,
        };
        self.changed();
        ok
    }

    pub fn remove(&self, uid: &str) {
        if let Ok(mut t) = self.table.write() {
            t.remove(uid);
        }
        self.changed();
    }

    /// Replaces every pod (after a full list); returns how many did not fit.
    pub fn replace_all(&self, pods: Vec<PodMeta>) -> usize {
        let mut t = Table::default();
        let mut dropped = 0;
        for p in pods {
            if !t.insert(p) {
                dropped += 1;
            }
        }
        if let Ok(mut cur) = self.table.write() {
            *cur = t;
        }
        self.changed();
        dropped
    }

    pub fn len(&self) -> usize {
        self.table.read().map_or(0, |t| t.by_uid.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pod of a process, by its container id, else by the pod UID of
    /// its cgroup path (a container whose id the status does not show yet).
    pub fn lookup(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Option<PodMatch> {
        let t = self.table.read().ok()?;
        t.lookup(container_id, pod_uid)
    }

    /// [`Pods::lookup`] without waiting: `Err` while the watch is writing.
    #[allow(clippy::result_unit_err)]
    pub fn try_lookup(
        &self,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
    ) -> Result<Option<PodMatch>, ()> {
        match self.table.try_read() {
            Ok(t) => Ok(t.lookup(container_id, pod_uid)),
            Err(std::sync::TryLockError::WouldBlock) => Err(()),
            Err(std::sync::TryLockError::Poisoned(_)) => Ok(None),
        }
    }
}

impl Table {
    fn lookup(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Option<PodMatch> {
        if let Some(cid) = container_id {
            if let Some(pod) = self.by_container.get(cid).and_then(|u| self.by_uid.get(u)) {
                return Some(PodMatch {
                    pod: pod.clone(),
                    container: pod.container_name(cid).map(str::to_owned),
                });
            }
        }
        let pod = self.by_uid.get(pod_uid?)?;
        Some(PodMatch {
            pod: pod.clone(),
            container: container_id
                .and_then(|c| pod.container_name(c))
                .map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f1a9c2b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    fn checkout() -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": "checkout-7c9d8f6b5-x2x9q", "namespace": "shop",
                "uid": "0E9B6F4C-1D2A-4B3C-8D5E-6F7A8B9C0D1E",
                "labels": {"app.kubernetes.io/name": "checkout-app"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "checkout-7c9d8f6b5", "uid": "u", "controller": true}]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "web"}]},
            "status": {"containerStatuses": [{"name": "web", "containerID": format!("containerd://{CID}"),
                "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
    }

    #[test]
    fn a_deployment_pod_is_trimmed_to_what_spans_use() {
        let m = PodMeta::from_pod(&checkout()).expect("has a uid");
        assert_eq!(m.uid, "0e9b6f4c-1d2a-4b3c-8d5e-6f7a8b9c0d1e");
        assert_eq!(m.containers, [(CID.to_owned(), "web".to_owned())]);
        assert_eq!(m.service_name(), Some("checkout-app"));
        let mut attrs = Vec::new();
        m.attributes(Some("web"), &mut attrs);
        let get = |k: &str| attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("k8s.deployment.name"), Some("checkout"));
        assert_eq!(get("k8s.replicaset.name"), Some("checkout-7c9d8f6b5"));
        assert_eq!(get("k8s.node.name"), Some("node-a"));
        assert_eq!(get("k8s.container.name"), Some("web"));
        assert_eq!(get("k8s.namespace.name"), Some("shop"));
    }

    #[test]
    fn owners_from_controller_names() {
        let o = |k, n| Owner::from_reference(k, n);
        assert_eq!(
            o("Job", "nightly-29123456"),
            Some(Owner::CronJob {
                cronjob: "nightly".into(),
                job: "nightly-29123456".into()
            })
        );
        assert_eq!(o("Job", "migrate-2"), Some(Owner::Job("migrate-2".into())));
        // A ReplicaSet made by hand keeps its own name.
        assert_eq!(
            o("ReplicaSet", "cache"),
            Some(Owner::ReplicaSet("cache".into()))
        );
        assert_eq!(
            o("DaemonSet", "fluentd").map(|x| x.name().to_owned()),
            Some("fluentd".into())
        );
        assert_eq!(o("Node", "x"), None);
    }

    #[test]
    fn table_is_bounded_and_indexed_by_container_and_uid() {
        let pods = Pods::new();
        let m = PodMeta::from_pod(&checkout()).expect("pod");
        let g = pods.generation();
        assert!(pods.upsert(m.clone()));
        assert!(pods.generation() > g);
        let by_cid = pods.lookup(Some(CID), None).expect("by container");
        assert_eq!(by_cid.container.as_deref(), Some("web"));
        let by_uid = pods.lookup(None, Some(&m.uid)).expect("by uid");
        assert_eq!(by_uid.container, None);
        assert!(pods.lookup(Some(&CID.replace('3', "4")), None).is_none());
        pods.remove(&m.uid);
        assert!(pods.lookup(Some(CID), None).is_none());
        let many: Vec<PodMeta> = (0..MAX_PODS + 5)
            .map(|i| PodMeta {
                uid: format!("u{i}"),
                containers: vec![],
                ..m.clone()
            })
            .collect();
        assert_eq!(pods.replace_all(many), 5);
        assert_eq!(pods.len(), MAX_PODS);
        // Replacing an existing pod still works when full.
        assert!(pods.upsert(PodMeta {
            uid: "u0".into(),
            ..m
        }));
    }

    #[test]
    fn hostile_objects_do_not_panic() {
        assert_eq!(
            PodMeta::from_pod(&pod(serde_json::json!({"metadata": {}}))),
            None
        );
        let long = "é".repeat(400);
        let p = pod(serde_json::json!({"metadata": {"uid": "x", "name": long,
            "annotations": {SERVICE_NAME_ANNOTATION: long}},
            "status": {"containerStatuses": [{"name": "c", "containerID": "containerd://short",
                "image": "", "imageID": "", "ready": false, "restartCount": 0}]}}));
        let m = PodMeta::from_pod(&p).expect("pod");
        assert!(m.name.len() <= MAX_VALUE && m.containers.is_empty());
        assert_eq!(m.namespace, "default");
    }
}
