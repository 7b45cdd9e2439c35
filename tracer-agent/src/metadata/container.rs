//! Which container a process runs in, from its cgroup path.

/// The container id in a /proc/PID/cgroup text: the last 64-hex-digit run
/// in a path (docker, containerd, cri-o and podman all embed it, with
/// prefixes such as `docker-`, `cri-containerd-` and a `.scope` suffix).
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|path| path.split('/'))
        .filter_map(|seg| {
            let seg = seg.trim_end_matches(".scope");
            let tail = seg.rsplit(['-', ':']).next().unwrap_or(seg);
            (tail.len() == 64 && tail.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| tail.to_ascii_lowercase())
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        let id = "3f1a9c2b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        let docker = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_id_from_cgroup(&docker).as_deref(), Some(id));
        let k8s = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{id}.scope"
        );
        assert_eq!(container_id_from_cgroup(&k8s).as_deref(), Some(id));
        let v1 = format!("12:pids:/docker/{id}\n11:cpu:/docker/{id}");
        assert_eq!(container_id_from_cgroup(&v1).as_deref(), Some(id));
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/session-3.scope"),
            None
        );
    }
}
