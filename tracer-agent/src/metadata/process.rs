//! What the agent knows about a traced process, read from /proc once and
//! cached until the process exits.

use std::{collections::HashMap, fs, io::Read, path::PathBuf, sync::Arc};

use super::{
    runtime::{Runtime, RuntimeCache},
    HostView,
};
use crate::telemetry::Counters;

/// Processes cached at once; beyond this the cache is cleared (and counted)
/// rather than grown: entries are cheap to rebuild.
const MAX_PROCESSES: usize = 8192;
/// Bytes of /proc/PID/environ read when looking for `OTEL_SERVICE_NAME`.
const MAX_ENVIRON_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// `comm` of the thread that opened the first traced connection.
    pub comm: String,
    /// Base name of /proc/PID/exe (falls back to `comm`).
    pub exe_name: String,
    pub exe_path: Option<PathBuf>,
    /// `--service-name` override, else `OTEL_SERVICE_NAME` of the process,
    /// else the executable name.
    pub service_name: String,
    /// Whether `service_name` was named for this process (the flag or its
    /// environment), so that it wins over what its pod says.
    pub service_name_explicit: bool,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22), so a
    /// reused pid is told apart.
    pub start_ticks: u64,
    /// Container id from /proc/PID/cgroup, when in a container.
    pub container_id: Option<String>,
    /// Kubernetes pod UID from the kubelet's cgroup path, when in a pod.
    pub pod_uid: Option<String>,
    /// What runs it (Go or native), from the executable.
    pub runtime: Runtime,
}

/// `--service-name` rules: `NAME=pid:PID` or `NAME=EXE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceNames {
    by_pid: Vec<(u32, String)>,
    by_exe: Vec<(String, String)>,
}

impl ServiceNames {
    pub fn parse(rules: &[String]) -> Result<Self, String> {
        let mut s = Self::default();
        for r in rules {
            let (name, target) = r
                .split_once('=')
                .filter(|(n, t)| !n.is_empty() && !t.is_empty())
                .ok_or_else(|| {
                    format!("--service-name {r:?}: expected NAME=EXE or NAME=pid:PID")
                })?;
            match target.strip_prefix("pid:") {
                Some(pid) => s.by_pid.push((
                    pid.parse()
                        .map_err(|_| format!("--service-name {r:?}: bad pid"))?,
                    name.to_owned(),
                )),
                None => s.by_exe.push((target.to_owned(), name.to_owned())),
            }
        }
        Ok(s)
    }

    fn lookup(&self, pid: u32, exe: &str, comm: &str) -> Option<String> {
        self.by_pid
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, n)| n.clone())
            .or_else(|| {
                self.by_exe
                    .iter()
                    .find(|(e, _)| e == exe || e == comm)
                    .map(|(_, n)| n.clone())
            })
    }
}

impl Process {
    /// Reads /proc for `pid`; a process that is already gone still yields
    /// an entry built from the kernel-reported `comm`.
    #[cfg(test)]
    pub fn read(pid: u32, comm: &str) -> Self {
        Self::read_with(
            pid,
            comm,
            &ServiceNames::default(),
            &mut RuntimeCache::default(),
            &Counters::default(),
        )
    }

    /// A process known only by what the kernel reported (replay).
    pub fn from_comm(pid: u32, comm: &str, names: &ServiceNames) -> Self {
        let named = names.lookup(pid, comm, comm);
        Self {
            pid,
            comm: comm.to_owned(),
            exe_name: comm.to_owned(),
            exe_path: None,
            service_name_explicit: named.is_some(),
            service_name: named.unwrap_or_else(|| comm.to_owned()),
            start_ticks: 0,
            container_id: None,
            pod_uid: None,
            runtime: Runtime::Native,
        }
    }

    pub fn read_with(
        pid: u32,
        comm: &str,
        names: &ServiceNames,
        runtimes: &mut RuntimeCache,
        counters: &Counters,
    ) -> Self {
        let exe_path = fs::read_link(format!("/proc/{pid}/exe")).ok();
        let exe_name = exe_path
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| comm.to_owned());
        let named = names
            .lookup(pid, &exe_name, comm)
            .or_else(|| env_var(pid, "OTEL_SERVICE_NAME").filter(|s| !s.is_empty()));
        let service_name_explicit = named.is_some();
        let service_name = named.unwrap_or_else(|| exe_name.clone());
        let start_ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after "(comm)": state is field 3, starttime 22.
                let after = s.rsplit_once(')')?.1;
                after.split_whitespace().nth(19)?.parse().ok()
            })
            .unwrap_or(0);
        let ids = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| super::container::ids_from_cgroup(&t))
            .unwrap_or_default();
        Self {
            pid,
            comm: comm.to_owned(),
            exe_name,
            exe_path,
            service_name,
            service_name_explicit,
            start_ticks,
            container_id: ids.container_id,
            pod_uid: ids.pod_uid,
            runtime: runtimes.of_pid(pid, counters),
        }
    }
}

/// Looks up one variable in /proc/PID/environ (bounded read).
fn env_var(pid: u32, name: &str) -> Option<String> {
    let f = fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_ENVIRON_BYTES).read_to_end(&mut buf).ok()?;
    let prefix = format!("{name}=");
    buf.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Decodes a NUL-padded kernel `comm`.
pub fn comm_str(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Processes seen in events, read from /proc once each (or, offline, built
/// from the kernel's `comm` alone).
#[derive(Default)]
pub struct ProcessCache {
    procs: HashMap<u32, Arc<Process>>,
    names: ServiceNames,
    view: HostView,
    runtimes: RuntimeCache,
}

impl ProcessCache {
    pub fn new(names: ServiceNames, view: HostView) -> Self {
        Self {
            names,
            view,
            ..Self::default()
        }
    }

    pub fn get_or_read(&mut self, pid: u32, comm: &str, counters: &Counters) -> Arc<Process> {
        if let Some(p) = self.procs.get(&pid) {
            return p.clone();
        }
        if self.procs.len() >= MAX_PROCESSES {
            self.procs.clear();
            Counters::inc(&counters.process_cache_resets);
        }
        let p = Arc::new(match self.view {
            HostView::Live => {
                Process::read_with(pid, comm, &self.names, &mut self.runtimes, counters)
            }
            HostView::Offline => Process::from_comm(pid, comm, &self.names),
        });
        self.procs.insert(pid, p.clone());
        p
    }

    pub fn remove(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// The runtime cache, for classifying a process without caching it.
    pub fn runtimes(&mut self) -> &mut RuntimeCache {
        &mut self.runtimes
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let p = Process::read(me, "x");
        assert_eq!(p.pid, me);
        assert!(p.exe_path.is_some());
        assert!(!p.exe_name.is_empty());
        assert_eq!(comm_str(b"nginx\0\0\0\0\0\0\0\0\0\0\0"), "nginx");
    }

    #[test]
    fn service_name_rules() {
        let n = ServiceNames::parse(&["checkout=pid:42".into(), "web=nginx".into()])
            .expect("valid rules");
        assert_eq!(n.lookup(42, "x", "x").as_deref(), Some("checkout"));
        assert_eq!(n.lookup(7, "nginx", "x").as_deref(), Some("web"));
        assert_eq!(n.lookup(7, "x", "y"), None);
        assert!(ServiceNames::parse(&["bad".into()]).is_err());
        assert!(ServiceNames::parse(&["a=pid:x".into()]).is_err());
        let me = std::process::id();
        let p = Process::read_with(
            me,
            "x",
            &ServiceNames::parse(&[format!("svc=pid:{me}")]).expect("ok"),
            &mut RuntimeCache::default(),
            &Counters::default(),
        );
        assert_eq!(p.service_name, "svc");
        assert!(p.start_ticks > 0);
    }

    #[test]
    fn gone_process_falls_back_to_comm() {
        let p = Process::read(u32::MAX - 1, "ghost");
        assert_eq!(p.exe_name, "ghost");
        assert_eq!(p.service_name, "ghost");
    }
}
