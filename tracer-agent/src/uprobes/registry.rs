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
}

#[derive(Default)]
pub struct Registry {
    attached: HashMap<FileKey, Attached>,
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
            if self.rejected.len() >= MAX_REJECTED {
                self.rejected.clear();
            }
            self.rejected.insert(key, why);
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
            },
        );
        true
    }

    /// A process exited: files nobody maps any more are detached.
    pub fn on_exit(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let mut gone = Vec::new();
        for (key, a) in self.attached.iter_mut() {
            if a.users.remove(&pid) && a.users.is_empty() && !a.permanent {
                gone.push(*key);
            }
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
