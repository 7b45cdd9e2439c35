//! Kubelet-style cgroups without a kubelet: the directories the systemd
//! cgroup driver makes for a pod and its containers, created under the
//! cgroup2 mount, with real processes moved into them. Removed on drop
//! (processes moved back to the root first), so a test leaves nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .expect("no cgroup2 mount: the Kubernetes selection needs cgroup v2")
}

/// One container's cgroup in one pod:
/// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`.
pub struct KubeletCgroup {
    root: PathBuf,
    /// Directories this guard made, outermost first.
    made: Vec<PathBuf>,
    pub leaf: PathBuf,
}

impl KubeletCgroup {
    pub fn create(qos: &str, pod_uid: &str, container_id: &str) -> Self {
        let root = cgroup2_root();
        let pod = format!("kubepods-{qos}-pod{}.slice", pod_uid.replace('-', "_"));
        let parts = [
            "kubepods.slice".to_owned(),
            format!("kubepods-{qos}.slice"),
            pod,
            format!("cri-containerd-{container_id}.scope"),
        ];
        let mut dir = root.clone();
        let mut made = Vec::new();
        for p in parts {
            dir.push(p);
            if !dir.exists() {
                fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        Self {
            root,
            made,
            leaf: dir,
        }
    }

    /// Moves a process (all its threads) into the container's cgroup.
    pub fn add(&self, pid: u32) {
        fs::write(self.leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.leaf.display()));
    }

    /// The cgroup v2 id the kernel reports for tasks in it.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.leaf).expect("cgroup dir").ino()
    }
}

fn move_all_out(dir: &Path, root: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            let _ = fs::write(root.join("cgroup.procs"), pid);
        }
    }
}

impl Drop for KubeletCgroup {
    fn drop(&mut self) {
        move_all_out(&self.leaf, &self.root);
        for dir in self.made.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                move_all_out(dir, &self.root);
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
