//! Which pods are traced (`--namespace`, `--exclude-namespace`,
//! `--container-name`), enforced in the kernel: the cgroups of the pods
//! the selection names are written to `CGROUP_FILTER`, and every probe
//! checks the current task's cgroup against it before doing any work
//! (`traced()` in the kernel crate). Spans are never dropped after the
//! fact.
//!
//! A pod's cgroups are found by walking the cgroup v2 hierarchy: the
//! kubelet names each pod's directory after its UID and each container's
//! after its id (see [`crate::metadata::container`]).

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tracer_common::{
    CGROUP_FILTER_ALLOW, CGROUP_FILTER_DENY, CGROUP_FILTER_OFF, MAX_CGROUP_FILTER,
};

use super::{PodMeta, Pods};
use crate::{
    metadata::container::{container_id_of_segment, pod_uid_of_segment},
    telemetry::{Counters, Gauges},
};

/// Directories visited per walk of the hierarchy, and how deep: a node's
/// tree is a few hundred directories, kubelet's pods sit at depth 3-4.
const MAX_WALK_DIRS: usize = 65_536;
const MAX_WALK_DEPTH: usize = 8;
/// How often the filter is checked for pod changes, and re-walked even
/// without one (a container's cgroup can appear before its pod update).
const POLL: Duration = Duration::from_millis(200);
const REWALK: Duration = Duration::from_secs(2);

/// The selection flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub containers: Vec<String>,
}

impl Selection {
    /// How the kernel reads the filter: with an include list only the
    /// listed cgroups are traced (processes outside any pod are not);
    /// with exclusions only, the listed cgroups are the ones skipped.
    pub fn kernel_mode(&self) -> u32 {
        if !self.namespaces.is_empty() || !self.containers.is_empty() {
            CGROUP_FILTER_ALLOW
        } else if !self.exclude_namespaces.is_empty() {
            CGROUP_FILTER_DENY
        } else {
            CGROUP_FILTER_OFF
        }
    }

    /// Whether a process of `pod` (in `container`, when known) is traced.
    /// An exclusion wins over an inclusion.
    pub fn traces(&self, pod: &PodMeta, container: Option<&str>) -> bool {
        let ns = pod.namespace.as_str();
        if self.exclude_namespaces.iter().any(|n| n == ns) {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == ns) {
            return false;
        }
        if !self.containers.is_empty() {
            return container.is_some_and(|c| self.containers.iter().any(|n| n == c));
        }
        true
    }
}

/// One directory of a pod in the cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The cgroup id `bpf_get_current_cgroup_id` reports: the directory's
    /// inode number in cgroupfs.
    pub id: u64,
    pub pod_uid: String,
    pub container_id: Option<String>,
}

/// Every directory below a kubelet pod directory under `root` (bounded).
pub fn walk(root: &Path) -> Vec<PodCgroup> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, usize, Option<String>)> = vec![(root.to_path_buf(), 0, None)];
    let mut visited = 0;
    while let Some((dir, depth, pod)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            if visited >= MAX_WALK_DIRS {
                return out;
            }
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            visited += 1;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let pod_here = pod.clone().or_else(|| pod_uid_of_segment(&name));
            if let Some(uid) = &pod_here {
                if let Ok(meta) = entry.metadata() {
                    out.push(PodCgroup {
                        id: meta.ino(),
                        pod_uid: uid.clone(),
                        container_id: container_id_of_segment(&name),
                    });
                }
            }
            if depth + 1 < MAX_WALK_DEPTH {
                stack.push((entry.path(), depth + 1, pod_here));
            }
        }
    }
    out
}

/// The cgroup ids to list in the kernel for this selection and pod view.
pub fn listed(sel: &Selection, pods: &Pods, cgroups: &[PodCgroup]) -> HashSet<u64> {
    let allow = sel.kernel_mode() == CGROUP_FILTER_ALLOW;
    cgroups
        .iter()
        .filter_map(|cg| {
            // A pod not known yet: not traced in allow mode (not listed),
            // traced in deny mode (not listed either).
            let m = pods.lookup(cg.container_id.as_deref(), Some(&cg.pod_uid))?;
            let container = cg
                .container_id
                .as_deref()
                .and_then(|c| m.pod.container_name(c));
            (sel.traces(&m.pod, container) == allow).then_some(cg.id)
        })
        .collect()
}

/// Keeps the kernel's filter in step with the pod view, on its own thread
/// (the walk does file-system reads, which must not stall the event loop).
pub struct FilterSync {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl FilterSync {
    pub fn start(
        mut map: BpfHashMap<MapData, u64, u8>,
        root: PathBuf,
        sel: Selection,
        pods: Arc<Pods>,
        counters: Arc<Counters>,
        gauges: Arc<Gauges>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("k8s-filter".into())
            .spawn(move || {
                let mut current: HashSet<u64> = HashSet::new();
                let mut seen_gen = u64::MAX;
                let mut last_walk: Option<Instant> = None;
                while !flag.load(Ordering::Relaxed) {
                    let gen = pods.generation();
                    let due = last_walk.is_none_or(|t| t.elapsed() >= REWALK);
                    if gen != seen_gen || due {
                        seen_gen = gen;
                        last_walk = Some(Instant::now());
                        let want = listed(&sel, &pods, &walk(&root));
                        sync(&mut map, &mut current, &want, &counters);
                        Gauges::set(&gauges.k8s_cgroups_filtered, current.len() as u64);
                    }
                    thread::sleep(POLL);
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for FilterSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Writes the difference between what the kernel has and what it should.
fn sync(
    map: &mut BpfHashMap<MapData, u64, u8>,
    current: &mut HashSet<u64>,
    want: &HashSet<u64>,
    counters: &Counters,
) {
    for id in current.difference(want).copied().collect::<Vec<_>>() {
        let _ = map.remove(&id);
        current.remove(&id);
    }
    for id in want {
        if current.contains(id) {
            continue;
        }
        if current.len() >= MAX_CGROUP_FILTER as usize || map.insert(id, 1, 0).is_err() {
            Counters::inc(&counters.k8s_cgroup_filter_failed);
            continue;
        }
        current.insert(*id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, uid: &str, containers: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: "p".into(),
            namespace: ns.into(),
            node: None,
            owner: None,
            service_annotation: None,
            app_label: None,
            containers: containers
                .iter()
                .map(|(i, n)| ((*i).to_owned(), (*n).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn exclusion_wins_and_container_names_need_a_known_container() {
        let sel = Selection {
            namespaces: vec!["shop".into()],
            exclude_namespaces: vec!["kube-system".into(), "shop".into()],
            containers: vec![],
        };
        assert!(!sel.traces(&pod("shop", "u", &[]), None));
        let sel = Selection {
            namespaces: vec![],
            exclude_namespaces: vec!["kube-system".into()],
            containers: vec!["web".into()],
        };
        assert_eq!(sel.kernel_mode(), CGROUP_FILTER_ALLOW);
        assert!(sel.traces(&pod("shop", "u", &[]), Some("web")));
        assert!(!sel.traces(&pod("shop", "u", &[]), Some("sidecar")));
        assert!(!sel.traces(&pod("shop", "u", &[]), None));
        assert!(!sel.traces(&pod("kube-system", "u", &[]), Some("web")));
        assert_eq!(Selection::default().kernel_mode(), CGROUP_FILTER_OFF);
    }

    #[test]
    fn walk_finds_pod_and_container_directories() {
        let root = std::env::temp_dir().join(format!("tracer-cg-{}", std::process::id()));
        let uid = "0e9b6f4c-1d2a-4b3c-8d5e-6f7a8b9c0d1e";
        let cid = "ab".repeat(32);
        let pod_dir = root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let c_dir = pod_dir.join(format!("cri-containerd-{cid}.scope"));
        std::fs::create_dir_all(&c_dir).expect("dirs");
        std::fs::create_dir_all(root.join("system.slice/nginx.service")).expect("dirs");
        let mut found = walk(&root);
        found.sort_by_key(|c| c.container_id.is_some());
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].container_id, None);
        assert_eq!(found[1].container_id.as_deref(), Some(cid.as_str()));
        assert!(found.iter().all(|c| c.pod_uid == uid));

        let pods = Pods::new();
        pods.upsert(pod("shop", uid, &[(&cid, "web")]));
        let deny = Selection {
            exclude_namespaces: vec!["shop".into()],
            ..Selection::default()
        };
        assert_eq!(listed(&deny, &pods, &found).len(), 2);
        let allow_web = Selection {
            containers: vec!["web".into()],
            ..Selection::default()
        };
        assert_eq!(
            listed(&allow_web, &pods, &found),
            HashSet::from([found[1].id])
        );
        let other = Selection {
            namespaces: vec!["other".into()],
            ..Selection::default()
        };
        assert!(listed(&other, &pods, &found).is_empty());
    }
}
