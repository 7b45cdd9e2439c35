//! Which runtime a process runs, read from its executable once per file
//! (device, inode) and cached.
//!
//! It matters for parent links: a thread-per-request program serves one
//! request per OS thread at a time, so the thread that reads a request is
//! the one that writes the calls it causes. Go's scheduler runs many
//! goroutines on each OS thread in turn and moves them between threads,
//! so a thread-keyed link there is a guess, and often a wrong one.

use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::fs::MetadataExt as _,
    sync::Arc,
};

use crate::{
    golang::buildinfo::{self, BuildInfo, BuildInfoError},
    telemetry::Counters,
};

/// Executables remembered at once; beyond this the cache is cleared.
const MAX_FILES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Runtime {
    /// Native code (C, C++, Rust), or an interpreter (Python, node): one
    /// request per thread at a time, or an event loop the ambiguity rule
    /// already covers.
    #[default]
    Native,
    /// A Go binary; its build info when readable.
    Go(Option<Arc<BuildInfo>>),
}

impl Runtime {
    /// Whether an OS thread identifies the unit serving a request.
    pub fn threads_are_tasks(&self) -> bool {
        matches!(self, Self::Native)
    }

    /// The Go version, as the binary states it.
    pub fn go_version(&self) -> Option<&str> {
        match self {
            Self::Go(Some(b)) if !b.go_version.is_empty() => Some(&b.go_version),
            _ => None,
        }
    }
}

/// Runtimes by executable file.
#[derive(Debug, Default)]
pub struct RuntimeCache {
    by_file: HashMap<(u64, u64), Runtime>,
}

impl RuntimeCache {
    /// The runtime of process `pid`'s executable (`Native` when it cannot
    /// be read, e.g. the process is gone).
    pub fn of_pid(&mut self, pid: u32, counters: &Counters) -> Runtime {
        let path = format!("/proc/{pid}/exe");
        let Ok(meta) = fs::metadata(&path) else {
            return Runtime::Native;
        };
        let key = (meta.dev(), meta.ino());
        if let Some(r) = self.by_file.get(&key) {
            return r.clone();
        }
        let Ok(mut f) = File::open(&path) else {
            return Runtime::Native;
        };
        let r = match buildinfo::read(&mut f) {
            Ok(None) => Runtime::Native,
            Ok(Some(info)) => Runtime::Go(Some(Arc::new(info))),
            // Not ELF (or not one we parse): not a Go binary.
            Err(BuildInfoError::Elf(_)) => Runtime::Native,
            Err(BuildInfoError::Io(_)) => return Runtime::Native,
            Err(e @ BuildInfoError::Malformed(_)) => {
                Counters::inc(&counters.go_buildinfo_errors);
                tracing::debug!(pid, "Go build info unreadable ({e}): Go of unknown version");
                Runtime::Go(None)
            }
        };
        if self.by_file.len() >= MAX_FILES {
            self.by_file.clear();
        }
        self.by_file.insert(key, r.clone());
        r
    }
}

/// Every running process whose runtime does not map requests to threads
/// (a walk of /proc, for the kernel's injection context at start).
pub fn running_multiplexed(cache: &mut RuntimeCache, counters: &Counters) -> Vec<(u32, Runtime)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let r = cache.of_pid(pid, counters);
            (!r.threads_are_tasks()).then_some((pid, r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_native_and_cached_by_file() {
        let mut c = RuntimeCache::default();
        let counters = Counters::default();
        let me = std::process::id();
        assert_eq!(c.of_pid(me, &counters), Runtime::Native);
        assert_eq!(c.by_file.len(), 1);
        assert_eq!(c.of_pid(me, &counters), Runtime::Native);
        assert_eq!(c.by_file.len(), 1);
        assert_eq!(c.of_pid(u32::MAX - 1, &counters), Runtime::Native);
        assert!(Runtime::Native.threads_are_tasks());
        assert!(!Runtime::Go(None).threads_are_tasks());
    }
}
