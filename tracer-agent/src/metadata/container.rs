//! Which container (and which Kubernetes pod) a process runs in, from its
//! cgroup path.
//!
//! The layouts this reads, as `/proc/PID/cgroup` shows them:
//! - cgroup v2: one `0::/path` line; v1: one `N:controllers:/path` line per
//!   hierarchy (the same container id appears in each).
//! - systemd driver: `kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//!   (CRI-O: `crio-<id>.scope`, docker: `docker-<id>.scope`).
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` (containerd,
//!   CRI-O) and `/docker/<id>` for plain docker.

/// What a cgroup path tells about its process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIds {
    /// The 64-hex-digit container id, lower case.
    pub container_id: Option<String>,
    /// The pod's UID (dashed form), for a kubelet-made path.
    pub pod_uid: Option<String>,
}

/// Reads both ids from a /proc/PID/cgroup text. The last match wins: the
/// innermost path segment names the container, not a parent slice.
pub fn ids_from_cgroup(text: &str) -> CgroupIds {
    let mut out = CgroupIds::default();
    for path in text.lines().filter_map(|l| l.splitn(3, ':').nth(2)) {
        for seg in path.split('/') {
            if let Some(id) = container_id_of_segment(seg) {
                out.container_id = Some(id);
            }
            if let Some(uid) = pod_uid_of_segment(seg) {
                out.pod_uid = Some(uid);
            }
        }
    }
    out
}

/// The container id in a /proc/PID/cgroup text.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    ids_from_cgroup(text).container_id
}

/// A segment such as `cri-containerd-<id>.scope`, `crio-<id>`,
/// `docker-<id>.scope` or a bare `<id>`: the 64-hex tail.
pub fn container_id_of_segment(seg: &str) -> Option<String> {
    let seg = seg.trim_end_matches(".scope");
    let tail = seg.rsplit(['-', ':']).next().unwrap_or(seg);
    (tail.len() == 64 && tail.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| tail.to_ascii_lowercase())
}

/// A segment such as `kubepods-besteffort-pod<uid_with_underscores>.slice`
/// (systemd driver) or `pod<uid>` (cgroupfs driver): the dashed UID.
pub fn pod_uid_of_segment(seg: &str) -> Option<String> {
    let seg = seg.trim_end_matches(".slice");
    let at = seg.rfind("pod")?;
    // The systemd form is always preceded by `-`; the cgroupfs form is the
    // whole segment.
    if at != 0 && seg.as_bytes().get(at - 1) != Some(&b'-') {
        return None;
    }
    let uid = &seg[at + 3..];
    let dashed: String = uid
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    is_uid(&dashed).then(|| dashed.to_ascii_lowercase())
}

/// An RFC 4122 textual UUID: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1a9c2b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const UID: &str = "0e9b6f4c-1d2a-4b3c-8d5e-6f7a8b9c0d1e";

    fn both(text: &str) -> (Option<String>, Option<String>) {
        let ids = ids_from_cgroup(text);
        (ids.container_id, ids.pod_uid)
    }

    #[test]
    fn docker_and_plain_hosts() {
        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(both(&docker), (Some(ID.into()), None));
        let v1 = format!("12:pids:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}");
        assert_eq!(both(&v1), (Some(ID.into()), None));
        assert_eq!(both("0::/user.slice/session-3.scope"), (None, None));
        assert_eq!(both("0::/"), (None, None));
    }

    #[test]
    fn kubelet_systemd_driver_v2() {
        let u = UID.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            let t = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/{runtime}-{ID}.scope\n"
            );
            assert_eq!(both(&t), (Some(ID.into()), Some(UID.into())), "{runtime}");
        }
        // Guaranteed QoS pods sit right under kubepods.slice.
        let g = format!("0::/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(both(&g), (Some(ID.into()), Some(UID.into())));
    }

    #[test]
    fn kubelet_cgroupfs_driver_v1_and_v2() {
        let v2 = format!("0::/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(both(&v2), (Some(ID.into()), Some(UID.into())));
        let v1 = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{ID}"
        );
        assert_eq!(both(&v1), (Some(ID.into()), Some(UID.into())));
        // The pod's own (sandbox-less) slice: a pod but no container.
        assert_eq!(
            both(&format!("0::/kubepods/pod{UID}")),
            (None, Some(UID.into()))
        );
    }

    #[test]
    fn near_misses_are_not_ids() {
        assert_eq!(pod_uid_of_segment("ipod1234"), None);
        assert_eq!(pod_uid_of_segment("kubepods-besteffort.slice"), None);
        assert_eq!(pod_uid_of_segment(&format!("xpod{UID}")), None);
        assert_eq!(container_id_of_segment(&ID[1..]), None);
        assert_eq!(container_id_of_segment(&format!("{}g", &ID[1..])), None);
        // Hostile lines do not panic.
        assert_eq!(both(":::\n\u{0}::pod\n0::/pod-"), (None, None));
    }
}
