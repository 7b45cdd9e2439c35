//! Uprobes attached per file. A uprobe attaches to a file (device +
//! inode), so one attachment covers every process that maps it, now or
//! later. The registry attaches a [`ProbeSet`] to a file once, remembers
//! which processes use it, and detaches it when the last one exits
//! (unless it is permanent, like a system library probed at start).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use aya::{
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};

use crate::bpf::{loader::drop_concurrently, program, BpfError};

/// A file identity: (device, inode).
pub type FileKey = (u64, u64);

/// Files remembered as not usable, so they are never parsed again; beyond
/// this the set is reset.
pub const MAX_REJECTED: usize = 65_536;

/// One function to probe: its entry program, and whether a file without it
/// is unusable.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub function: &'static str,
    pub program: &'static str,
    pub required: bool,
}

/// Probes that go on one file together: every entry probe with the shared
/// return probe on the same function.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSet {
    pub entries: &'static [Probe],
    pub ret: &'static str,
}

impl ProbeSet {
    /// Every program the set uses.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries
            .iter()
            .map(|p| p.program)
            .chain(std::iter::once(self.ret))
    }
}

struct Attached {
    /// Where it was found (for logs).
    path: String,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Processes known to map the file.
    users: HashSet<u32>,
    permanent: bool,
    /// Kept attached for a while once unused (see [`MAX_LINGERING`]).
    linger: bool,
    /// When it last lost its last user (an ordinal), if it has none.
    idle_since: Option<u64>,
}

/// Unused lingering files kept attached at once; beyond it the longest
/// unused is detached. Go executables linger: a program run again and
/// again (a CLI, a cron job) is then probed from its first instruction,
/// instead of from the agent's scan some milliseconds after its exec.
pub const MAX_LINGERING: usize = 32;

#[derive(Default)]
pub struct Registry {
    attached: HashMap<FileKey, Attached>,
    /// Ordinal of the last exit that left a file unused.
    idle_clock: u64,
    /// Files that could not be probed, and why.
    rejected: HashMap<FileKey, String>,
}

/// Loads uprobe programs (attaching comes later, per file).
pub fn load_programs(
    ebpf: &mut Ebpf,
    names: impl IntoIterator<Item = &'static str>,
) -> Result<(), BpfError> {
    for name in names {
        let prog: &mut UProbe = program(ebpf, name)?;
        prog.load().map_err(BpfError::program(name))?;
    }
    Ok(())
}

/// Attaches program `prog` to `func` in the file at `path`.
pub fn attach_one(
    ebpf: &mut Ebpf,
    prog: &'static str,
    func: &str,
    path: &Path,
) -> Result<UProbeLinkId, String> {
    let p: &mut UProbe = program(ebpf, prog).map_err(|e| e.to_string())?;
    p.attach(func, path, UProbeScope::AllProcesses)
        .map_err(|e| format!("{func}: {e}"))
}

fn detach(ebpf: &mut Ebpf, prog: &'static str, id: UProbeLinkId) {
    if let Ok(p) = program::<UProbe>(ebpf, prog) {
        let _ = p.detach(id);
    }
}

impl Registry {
    /// Files with probes attached.
    pub fn len(&self) -> usize {
        self.attached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attached.is_empty()
    }

    /// Uprobe links attached over all files.
    pub fn links(&self) -> usize {
        self.attached.values().map(|a| a.links.len()).sum()
    }

    pub fn is_attached(&self, key: &FileKey) -> bool {
        self.attached.contains_key(key)
    }

    /// Why a file could not be probed, if it was tried.
    pub fn rejected(&self, key: &FileKey) -> Option<&str> {
        self.rejected.get(key).map(String::as_str)
    }

    /// The file stays probed when its users exit.
    pub fn make_permanent(&mut self, key: &FileKey) {
        if let Some(a) = self.attached.get_mut(key) {
            a.permanent = true;
        }
    }

    /// Attaches `set` to one file (once per device+inode); returns whether
    /// the file is probed. `pid` becomes one of its users.
    pub fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
        set: &ProbeSet,
        key: FileKey,
        path: &Path,
        pid: Option<u32>,
    ) -> bool {
        if let Some(a) = self.attached.get_mut(&key) {
            if let Some(pid) = pid {
                a.users.insert(pid);
            }
            return true;
        }
        if self.rejected.contains_key(&key) {
            return false;
        }
        let mut links = Vec::new();
        let mut why = None;
        for p in set.entries {
            let entry = attach_one(ebpf, p.program, p.function, path);
            let ret = entry
                .as_ref()
                .ok()
                .map(|_| attach_one(ebpf, set.ret, p.function, path));
            match (entry, ret) {
                (Ok(e), Some(Ok(r))) => {
                    links.push((p.program, e));
                    links.push((set.ret, r));
                }
                (Ok(e), _) => {
                    // Never leave an entry probe without its return probe.
                    detach(ebpf, p.program, e);
                    if p.required {
                        why = Some(format!("return probe on {} failed", p.function));
                        break;
                    }
                }
                (Err(e), _) if p.required => {
                    why = Some(e);
                    break;
                }
                (Err(_), _) => {}
            }
        }
        if let Some(why) = why {
            for (prog, id) in links {
                detach(ebpf, prog, id);
            }
            self.reject(key, why);
            return false;
        }
        tracing::info!("TLS: probing {}", path.display());
        self.attached.insert(
            key,
            Attached {
                path: path.display().to_string(),
                links,
                users: pid.into_iter().collect(),
                permanent: false,
                linger: false,
                idle_since: None,
            },
        );
        true
    }

    /// Attaches each `(program, file offset)` of `points` to one file (once
    /// per device+inode), all or none. For code found without symbols
    /// (Go's pclntab). `pid` becomes one of its users. A failure is not
    /// remembered here: the caller knows whether it can last (the file is
    /// unusable) or not (the process and its path are already gone).
    pub fn attach_offsets(
        &mut self,
        ebpf: &mut Ebpf,
        key: FileKey,
        path: &Path,
        pid: Option<u32>,
        points: &[(&'static str, u64)],
    ) -> Result<(), String> {
        if let Some(a) = self.attached.get_mut(&key) {
            if let Some(pid) = pid {
                a.users.insert(pid);
                a.idle_since = None;
            }
            return Ok(());
        }
        // `rejected` is not consulted: it holds why other probe sets did
        // not fit this file (an executable tried for OpenSSL symbols);
        // the caller knows whether these points were refused before.
        let mut links = Vec::new();
        for &(prog, offset) in points {
            let attached = program::<UProbe>(ebpf, prog)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    p.attach(offset, path, UProbeScope::AllProcesses)
                        .map_err(|e| format!("{prog} at {offset:#x}: {e}"))
                });
            match attached {
                Ok(id) => links.push((prog, id)),
                Err(why) => {
                    for (prog, id) in links {
                        detach(ebpf, prog, id);
                    }
                    return Err(why);
                }
            }
        }
        // `/proc/PID/exe` names the file only while PID lives.
        let shown = std::fs::read_link(path).unwrap_or_else(|_| path.to_path_buf());
        tracing::info!("TLS: probing {} ({} probes)", shown.display(), links.len());
        self.attached.insert(
            key,
            Attached {
                path: shown.display().to_string(),
                links,
                users: pid.into_iter().collect(),
                permanent: false,
                linger: true,
                idle_since: None,
            },
        );
        Ok(())
    }

    /// Remembers that a file cannot be probed, and why.
    pub fn reject(&mut self, key: FileKey, why: String) {
        if self.rejected.len() >= MAX_REJECTED {
            self.rejected.clear();
        }
        self.rejected.insert(key, why);
    }

    /// A process exited: files nobody maps any more are detached (or, if
    /// they linger, detached once too many are unused).
    pub fn on_exit(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let mut gone = Vec::new();
        let mut new_idle = false;
        for (key, a) in self.attached.iter_mut() {
            if a.users.remove(&pid) && a.users.is_empty() && !a.permanent {
                if a.linger {
                    self.idle_clock += 1;
                    a.idle_since = Some(self.idle_clock);
                    new_idle = true;
                } else {
                    gone.push(*key);
                }
            }
        }
        // Only an exit that left a lingering file unused can take the
        // idle ones over the bound (most exits leave none).
        let mut idle: Vec<(u64, FileKey)> = if new_idle {
            self.attached
                .iter()
                .filter_map(|(k, a)| a.idle_since.map(|t| (t, *k)))
                .collect()
        } else {
            Vec::new()
        };
        if idle.len() > MAX_LINGERING {
            idle.sort_unstable();
            let extra = idle.len() - MAX_LINGERING;
            gone.extend(idle.into_iter().take(extra).map(|(_, k)| k));
        }
        for key in gone {
            if let Some(a) = self.attached.remove(&key) {
                tracing::info!("TLS: no process maps {} any more: probes removed", a.path);
                for (prog, id) in a.links {
                    detach(ebpf, prog, id);
                }
            }
        }
    }

    /// Detaches everything. Each uprobe detach waits for the kernel to
    /// quiesce (hundreds of ms), so the links are closed from several
    /// threads at once instead of one after another.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let mut links = Vec::new();
        for (_, a) in self.attached.drain() {
            for (prog, id) in a.links {
                if let Ok(p) = program::<UProbe>(ebpf, prog) {
                    if let Ok(link) = p.take_link(id) {
                        links.push(link);
                    }
                }
            }
        }
        drop_concurrently(links);
    }
}
