//! What the agent knows about a traced process, read from /proc once and
//! cached until the process exits.

use std::{collections::HashMap, fs, io::Read, path::PathBuf, sync::Arc};

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
    /// `OTEL_SERVICE_NAME` of the process if set, else the executable name.
    pub service_name: String,
}

impl Process {
    /// Reads /proc for `pid`; a process that is already gone still yields
    /// an entry built from the kernel-reported `comm`.
    pub fn read(pid: u32, comm: &str) -> Self {
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
        let service_name = env_var(pid, "OTEL_SERVICE_NAME")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| exe_name.clone());
        Self {
            pid,
            comm: comm.to_owned(),
            exe_name,
            exe_path,
            service_name,
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

#[derive(Default)]
pub struct ProcessCache {
    procs: HashMap<u32, Arc<Process>>,
    pub evictions: u64,
}

impl ProcessCache {
    pub fn get_or_read(&mut self, pid: u32, comm: &str) -> Arc<Process> {
        if let Some(p) = self.procs.get(&pid) {
            return p.clone();
        }
        if self.procs.len() >= MAX_PROCESSES {
            self.procs.clear();
            self.evictions += 1;
        }
        let p = Arc::new(Process::read(pid, comm));
        self.procs.insert(pid, p.clone());
        p
    }

    pub fn remove(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.procs.len()
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
    fn gone_process_falls_back_to_comm() {
        let p = Process::read(u32::MAX - 1, "ghost");
        assert_eq!(p.exe_name, "ghost");
        assert_eq!(p.service_name, "ghost");
    }
}
