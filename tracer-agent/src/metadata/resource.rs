//! The resource of a traced process: every attribute that names where a
//! span comes from (service, process, host, container, Kubernetes pod),
//! composed once here so the OTLP Resource and the `--output json`
//! `resource` object carry the same keys and values.
//!
//! The service name follows one rule, most specific first:
//! 1. `--service-name`, or the process's own `OTEL_SERVICE_NAME`;
//! 2. the pod's `resource.opentelemetry.io/service.name` annotation;
//! 3. its `app.kubernetes.io/name` label;
//! 4. its owner's name (Deployment, StatefulSet, ...);
//! 5. the executable name.

use std::{collections::HashMap, sync::Arc};

use super::{
    kubernetes::{PodMatch, Pods},
    process::Process,
};

/// Processes whose resource is cached; as for the process cache, the
/// table is cleared rather than grown past this.
const MAX_RESOURCES: usize = 8192;

/// An attribute value: the Resource only needs strings and integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResValue {
    Str(String),
    Int(i64),
}

/// The attributes of one process's resource, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub service_name: String,
    pub attrs: Vec<(&'static str, ResValue)>,
}

impl Resource {
    /// Composes the resource of `p` on `host`, in `pod` when known.
    /// Command lines are not included: they can carry secrets.
    pub fn of(p: &Process, host: &str, pod: Option<&PodMatch>) -> Self {
        let service_name = match pod.and_then(|m| m.pod.service_name()) {
            Some(name) if !p.service_name_explicit => name.to_owned(),
            _ => p.service_name.clone(),
        };
        let s = |v: &str| ResValue::Str(v.to_owned());
        let mut attrs = vec![("service.name", s(&service_name))];
        if let Some(m) = pod {
            attrs.push(("service.namespace", s(&m.pod.namespace)));
        }
        attrs.push((
            "service.instance.id",
            ResValue::Str(instance_id(host, p.pid, p.start_ticks)),
        ));
        attrs.push(("process.pid", ResValue::Int(i64::from(p.pid))));
        attrs.push(("process.executable.name", s(&p.exe_name)));
        if let Some(path) = &p.exe_path {
            attrs.push((
                "process.executable.path",
                ResValue::Str(path.display().to_string()),
            ));
        }
        if !host.is_empty() {
            attrs.push(("host.name", s(host)));
        }
        attrs.push(("telemetry.distro.name", s("tracer")));
        attrs.push(("telemetry.distro.version", s(env!("CARGO_PKG_VERSION"))));
        if let Some(id) = &p.container_id {
            attrs.push(("container.id", s(id)));
        }
        match pod {
            Some(m) => {
                let mut k8s = Vec::new();
                m.pod.attributes(m.container.as_deref(), &mut k8s);
                attrs.extend(k8s.into_iter().map(|(k, v)| (k, ResValue::Str(v))));
            }
            // The API has not named the pod (down, slow, or not yet): its
            // uid is still known from the kubelet's cgroup path.
            None => {
                if let Some(uid) = &p.pod_uid {
                    attrs.push(("k8s.pod.uid", s(uid)));
                }
            }
        }
        Self {
            service_name,
            attrs,
        }
    }

    pub fn get(&self, key: &str) -> Option<&ResValue> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// The host's name (`gethostname`), read once.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer and length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A stable id for one run of one process on this host: host, pid and the
/// process start time (so a reused pid is a new instance), formatted as a
/// UUID.
pub fn instance_id(host: &str, pid: u32, start_ticks: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (host, pid, start_ticks, "a").hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (host, pid, start_ticks, "b").hash(&mut b);
    let (x, y) = (a.finish(), b.finish());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xffff,
        y >> 48,
        y & 0xffff_ffff_ffff
    )
}

struct Cached {
    process: Arc<Process>,
    /// [`Pods::generation`] when composed.
    generation: u64,
    resource: Arc<Resource>,
}

/// Each process's resource, recomposed only when the process entry or the
/// pod view changed. The pod view is read with `try_read`: when the watch
/// holds the lock, the span keeps the resource already known instead of
/// waiting.
pub struct Resources {
    host: String,
    pods: Option<Arc<Pods>>,
    by_pid: HashMap<u32, Cached>,
}

impl Resources {
    pub fn new(host: String, pods: Option<Arc<Pods>>) -> Self {
        Self {
            host,
            pods,
            by_pid: HashMap::new(),
        }
    }

    pub fn get(&mut self, p: &Arc<Process>) -> Arc<Resource> {
        let generation = self.pods.as_ref().map_or(0, |x| x.generation());
        let cached = self.by_pid.get(&p.pid);
        if let Some(c) = cached {
            if Arc::ptr_eq(&c.process, p) && c.generation == generation {
                return c.resource.clone();
            }
        }
        let pod = match &self.pods {
            Some(pods) if p.container_id.is_some() || p.pod_uid.is_some() => {
                match pods.try_lookup(p.container_id.as_deref(), p.pod_uid.as_deref()) {
                    Ok(m) => m,
                    // Busy: keep what is known, and try again next span.
                    Err(()) => {
                        if let Some(c) = cached.filter(|c| Arc::ptr_eq(&c.process, p)) {
                            return c.resource.clone();
                        }
                        None
                    }
                }
            }
            _ => None,
        };
        let resource = Arc::new(Resource::of(p, &self.host, pod.as_ref()));
        if self.by_pid.len() >= MAX_RESOURCES && !self.by_pid.contains_key(&p.pid) {
            self.by_pid.clear();
        }
        self.by_pid.insert(
            p.pid,
            Cached {
                process: p.clone(),
                generation,
                resource: resource.clone(),
            },
        );
        resource
    }

    pub fn remove(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::kubernetes::{Owner, PodMeta};

    #[test]
    fn instance_ids_are_uuid_shaped_and_distinct() {
        let a = instance_id("h", 1, 100);
        assert_eq!(a.len(), 36);
        assert_ne!(a, instance_id("h", 1, 101));
        assert_eq!(a, instance_id("h", 1, 100));
    }

    fn pod(annotation: Option<&str>, label: Option<&str>) -> PodMeta {
        PodMeta {
            uid: "u1".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            node: Some("node-a".into()),
            owner: Some(Owner::StatefulSet("web".into())),
            service_annotation: annotation.map(str::to_owned),
            app_label: label.map(str::to_owned),
            containers: vec![],
        }
    }

    fn process(explicit: bool) -> Process {
        let mut p = Process::from_comm(7, "python3", &Default::default());
        p.pod_uid = Some("u1".into());
        if explicit {
            p.service_name = "from-env".into();
            p.service_name_explicit = true;
        }
        p
    }

    #[test]
    fn service_name_rule_most_specific_first() {
        let name = |p: &Process, m: Option<PodMeta>| {
            let m = m.map(|pod| PodMatch {
                pod: Arc::new(pod),
                container: Some("app".into()),
            });
            Resource::of(p, "h", m.as_ref()).service_name
        };
        let all = || Some(pod(Some("annotated"), Some("labelled")));
        assert_eq!(name(&process(true), all()), "from-env");
        assert_eq!(name(&process(false), all()), "annotated");
        assert_eq!(
            name(&process(false), Some(pod(None, Some("labelled")))),
            "labelled"
        );
        assert_eq!(name(&process(false), Some(pod(None, None))), "web");
        assert_eq!(name(&process(false), None), "python3");
    }

    #[test]
    fn pod_attributes_and_namespace_join_the_process_ones() {
        let m = PodMatch {
            pod: Arc::new(pod(None, None)),
            container: Some("app".into()),
        };
        let r = Resource::of(&process(false), "h", Some(&m));
        let s = |k| match r.get(k) {
            Some(ResValue::Str(v)) => v.as_str(),
            _ => "",
        };
        assert_eq!(s("service.namespace"), "shop");
        assert_eq!(s("k8s.pod.name"), "web-0");
        assert_eq!(s("k8s.container.name"), "app");
        assert_eq!(s("k8s.statefulset.name"), "web");
        assert_eq!(s("host.name"), "h");
        assert_eq!(r.get("process.pid"), Some(&ResValue::Int(7)));
    }

    #[test]
    fn recomposed_when_the_pod_view_changes() {
        let pods = Pods::new();
        let mut res = Resources::new("h".into(), Some(pods.clone()));
        let p = Arc::new(process(false));
        assert_eq!(res.get(&p).service_name, "python3");
        pods.upsert(pod(None, Some("labelled")));
        assert_eq!(res.get(&p).service_name, "labelled");
        let same = res.get(&p);
        assert!(
            Arc::ptr_eq(&same, &res.get(&p)),
            "cached while nothing changes"
        );
        pods.remove("u1");
        assert_eq!(res.get(&p).service_name, "python3");
    }

    #[test]
    fn an_unknown_pod_still_has_its_uid_from_the_cgroup() {
        let r = Resource::of(&process(false), "h", None);
        assert_eq!(r.get("k8s.pod.uid"), Some(&ResValue::Str("u1".into())));
        assert_eq!(r.get("k8s.pod.name"), None);
        let mut host = process(false);
        host.pod_uid = None;
        assert_eq!(Resource::of(&host, "h", None).get("k8s.pod.uid"), None);
    }
}
