//! Finding TLS libraries and attaching the OpenSSL uprobes to them.
//!
//! Uprobes attach to a file (device + inode), so one attachment covers
//! every process that maps it, now or later. Candidates:
//! - `libssl.so*` mapped by any process (OpenSSL 1.1 and 3.x), reached
//!   through `/proc/PID/root` so that libraries inside containers (other
//!   mount namespaces) are found;
//! - each distinct executable, for programs that link OpenSSL or BoringSSL
//!   statically but export its API (node);
//! - the system library directories at start, so servers started later
//!   that use the system libssl are covered before their first request.
//!
//! Discovery runs at start (every process), on `exec` (the kernel's
//! `sched_process_exec` notice, re-checked a few times while the dynamic
//! loader maps libraries), and on every `dlopen` return (a uretprobe on
//! libc's `dlopen`). Nothing polls. When the kernel reports a TLS handshake
//! from a process none of whose files is probed, the agent says once per
//! executable that its TLS traffic is not visible, and why.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use thiserror::Error;

/// Entry probes and the function each one goes on; the return probe is
/// attached to the same functions. `required`: a file without it is not
/// a usable TLS library.
const FUNCTIONS: [(&str, &str, bool); 4] = [
    ("SSL_write", "tracer_ssl_write", true),
    ("SSL_read", "tracer_ssl_read", true),
    ("SSL_write_ex", "tracer_ssl_write_ex", false),
    ("SSL_read_ex", "tracer_ssl_read_ex", false),
];
const RET_PROGRAM: &str = "tracer_ssl_ret";
const DLOPEN_PROGRAM: &str = "tracer_dlopen_ret";

/// Where distributions keep the system libssl.
const SYSTEM_LIB_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
];

/// After an exec, when to look at the process's libraries again (the
/// dynamic loader maps them right after the exec returns).
/// Two are enough: libraries loaded later come through `dlopen`, which is
/// hooked, and each re-scan costs a maps read (hosts that exec thousands
/// of processes a second pay it per exec).
const EXEC_RESCANS: [Duration; 2] = [Duration::from_millis(5), Duration::from_millis(100)];
/// Pending re-scans kept at once; beyond it new ones are dropped (counted).
const MAX_PENDING_SCANS: usize = 4096;
/// Files remembered as not usable (no exported `SSL_write`), so they are
/// never parsed again; beyond it the set is reset.
const MAX_REJECTED: usize = 65_536;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("program {0} is missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// A file identity: (device, inode).
type FileKey = (u64, u64);

struct Attached {
    /// Where it was found (for logs).
    path: String,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Processes known to map the file; detached when the last one exits
    /// (unless it is a system library attached at start).
    users: HashSet<u32>,
    permanent: bool,
}

/// How long after a TLS handshake its process's visibility is judged.
const TLS_VERDICT_DELAY: Duration = Duration::from_millis(500);

/// A TLS handshake waiting for its visibility verdict.
struct Verdict {
    pid: u32,
    exe: String,
    /// The process's files when the handshake was seen.
    keys: Vec<FileKey>,
    /// Its libssl files among them.
    libssl: Vec<Mapped>,
    due: Instant,
}

/// Files of one process remembered for a verdict.
const MAX_VERDICT_FILES: usize = 1024;

/// A file mapped by a process, from `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub key: FileKey,
    pub path: String,
}

/// Counters the agent reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsCounters {
    pub libraries: usize,
    pub rescans_dropped: u64,
}

pub struct TlsProbes {
    attached: HashMap<FileKey, Attached>,
    rejected: HashMap<FileKey, String>,
    libc_hooked: HashSet<FileKey>,
    warned_exes: HashSet<String>,
    /// Processes whose TLS is known to be visible: their library produced
    /// plaintext or is probed (bounded).
    visible: HashSet<u32>,
    /// TLS handshakes waiting for a visibility verdict.
    verdicts: Vec<Verdict>,
    pending: BTreeMap<Instant, Vec<u32>>,
    pending_len: usize,
    pub counters: TlsCounters,
}

/// Parses `/proc/PID/maps` text: file-backed mappings, once per file.
pub fn parse_maps(text: &str) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_range), Some(_perms), Some(_off), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path: String = f.collect::<Vec<_>>().join(" ");
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
        ) else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let key = (libc::makedev(major, minor), inode);
        if !out.iter().any(|m| m.key == key) {
            out.push(Mapped { key, path });
        }
    }
    out
}

/// What "once per executable" is keyed by: the file name cut to the
/// kernel's command-name length, so a path read from /proc and the command
/// name of a process already gone name the same program.
fn exe_key(exe: &str) -> String {
    basename(exe).chars().take(15).collect()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// An OpenSSL (or BoringSSL) shared library by its file name.
pub fn is_libssl(path: &str) -> bool {
    basename(path).starts_with("libssl.so")
}

fn is_libc(path: &str) -> bool {
    basename(path).starts_with("libc.so")
}

fn file_key(path: &Path) -> Option<FileKey> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.dev(), md.ino()))
}

impl TlsProbes {
    /// Loads the TLS programs (attaching comes later, per file).
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, TlsError> {
        let names = FUNCTIONS
            .iter()
            .map(|f| f.1)
            .chain([RET_PROGRAM, DLOPEN_PROGRAM]);
        for name in names {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(TlsError::MissingProgram(name))?
                .try_into()
                .map_err(|source| TlsError::Program { name, source })?;
            prog.load()
                .map_err(|source| TlsError::Program { name, source })?;
        }
        Ok(Self {
            attached: HashMap::new(),
            rejected: HashMap::new(),
            libc_hooked: HashSet::new(),
            warned_exes: HashSet::new(),
            visible: HashSet::new(),
            verdicts: Vec::new(),
            pending: BTreeMap::new(),
            pending_len: 0,
            counters: TlsCounters::default(),
        })
    }

    /// Start: the system libssl files, then every running process.
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) {
        for dir in SYSTEM_LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Some(name) = path.to_str() else { continue };
                if !is_libssl(name) {
                    continue;
                }
                if let Some(key) = file_key(&path) {
                    if self.attach_file(ebpf, key, &path, None) {
                        if let Some(a) = self.attached.get_mut(&key) {
                            a.permanent = true;
                        }
                    }
                }
            }
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in procs.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                self.scan_pid(ebpf, pid);
            }
        }
        tracing::info!("TLS: OpenSSL probes on {} file(s)", self.attached.len());
    }

    /// Attaches to the TLS libraries (and the executable) of one process.
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if pid == std::process::id() {
            return;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        for m in parse_maps(&maps) {
            let in_ns = root.join(m.path.trim_start_matches('/'));
            if is_libssl(&m.path) {
                self.attach_file(ebpf, m.key, &in_ns, Some(pid));
            } else if is_libc(&m.path) && !self.libc_hooked.contains(&m.key) {
                self.hook_dlopen(ebpf, m.key, &in_ns);
            }
        }
        // Statically linked TLS exported by the executable itself (node).
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        if let Some(key) = file_key(&exe) {
            self.attach_file(ebpf, key, &exe, Some(pid));
        }
    }

    /// Attaches the TLS probes to one file (once per device+inode); returns
    /// whether the file is probed.
    fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
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
        for (func, prog, required) in FUNCTIONS {
            let entry = attach_one(ebpf, prog, func, path);
            let ret = entry
                .as_ref()
                .ok()
                .map(|_| attach_one(ebpf, RET_PROGRAM, func, path));
            match (entry, ret) {
                (Ok(e), Some(Ok(r))) => {
                    links.push((prog, e));
                    links.push((RET_PROGRAM, r));
                }
                (Ok(e), _) => {
                    // Never leave an entry probe without its return probe.
                    detach(ebpf, prog, e);
                    if required {
                        why = Some(format!("return probe on {func} failed"));
                        break;
                    }
                }
                (Err(e), _) if required => {
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
        self.counters.libraries = self.attached.len();
        true
    }

    fn hook_dlopen(&mut self, ebpf: &mut Ebpf, key: FileKey, libc_path: &Path) {
        // Whatever happens, a libc is tried once.
        self.libc_hooked.insert(key);
        if let Err(e) = attach_one(ebpf, DLOPEN_PROGRAM, "dlopen", libc_path) {
            tracing::debug!(
                "TLS: no dlopen hook in {}: {e} (libraries it loads late are found at the next exec)",
                libc_path.display()
            );
        }
    }

    /// A process called exec: look again while its libraries get mapped.
    pub fn on_exec(&mut self, pid: u32, now: Instant) {
        for d in EXEC_RESCANS {
            self.schedule(pid, now + d);
        }
    }

    fn schedule(&mut self, pid: u32, at: Instant) {
        if self.pending_len >= MAX_PENDING_SCANS {
            self.counters.rescans_dropped += 1;
            return;
        }
        self.pending.entry(at).or_default().push(pid);
        self.pending_len += 1;
    }

    /// Runs the re-scans and visibility verdicts that are due.
    pub fn run_due(&mut self, ebpf: &mut Ebpf, now: Instant) {
        self.run_verdicts(now);
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > now {
                break;
            }
            let pids = entry.remove();
            self.pending_len = self.pending_len.saturating_sub(pids.len());
            for pid in pids {
                self.scan_pid(ebpf, pid);
            }
        }
    }

    /// The next time a re-scan or verdict is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        let verdict = self.verdicts.iter().map(|v| v.due).min();
        match (self.pending.keys().next().copied(), verdict) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        self.counters.libraries = self.attached.len();
    }

    /// The kernel saw a TLS handshake from `pid`. Whether its TLS is
    /// visible is decided a little later ([`TLS_VERDICT_DELAY`]): by then
    /// its plaintext, if probed, has arrived, even if the process is gone.
    pub fn on_tls_seen(&mut self, pid: u32, comm: String, now: Instant) {
        // A busy TLS server reports a handshake per connection: once it is
        // known to be visible, nothing more is read.
        if self.visible.contains(&pid)
            || self.verdicts.len() >= MAX_PENDING_SCANS
            || self.verdicts.iter().any(|v| v.pid == pid)
        {
            return;
        }
        // The executable, read while the process (probably) still runs;
        // else its command name (the kernel's 15-byte cut of the file name).
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or(comm);
        if self.warned_exes.contains(&exe_key(&exe)) {
            return;
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|m| parse_maps(&m))
            .unwrap_or_default();
        // Kept small: the file identities (bounded) and the libssl entries
        // (for the reason given).
        let keys = maps.iter().take(MAX_VERDICT_FILES).map(|m| m.key).collect();
        let libssl = maps
            .into_iter()
            .filter(|m| is_libssl(&m.path))
            .take(8)
            .collect();
        self.verdicts.push(Verdict {
            pid,
            exe,
            keys,
            libssl,
            due: now + TLS_VERDICT_DELAY,
        });
    }

    /// `pid`'s TLS library produced plaintext.
    pub fn on_plaintext(&mut self, pid: u32) {
        self.mark_visible(pid);
    }

    fn mark_visible(&mut self, pid: u32) {
        if self.visible.len() >= MAX_REJECTED {
            self.visible.clear();
        }
        self.visible.insert(pid);
    }

    /// Decides the handshakes that are due: a process whose TLS produced no
    /// plaintext and none of whose files is probed is invisible; say so
    /// once per executable.
    fn run_verdicts(&mut self, now: Instant) {
        let (due, keep): (Vec<Verdict>, Vec<Verdict>) = std::mem::take(&mut self.verdicts)
            .into_iter()
            .partition(|v| v.due <= now);
        self.verdicts = keep;
        for v in due {
            if v.keys.iter().any(|k| self.attached.contains_key(k)) {
                self.mark_visible(v.pid);
                continue;
            }
            let key = exe_key(&v.exe);
            if self.visible.contains(&v.pid) || self.warned_exes.contains(&key) {
                continue;
            }
            let why = v
                .libssl
                .iter()
                .find_map(|m| {
                    self.rejected
                        .get(&m.key)
                        .map(|w| format!("{} could not be probed: {w}", m.path))
                })
                .unwrap_or_else(|| {
                    "it exports no SSL_read/SSL_write (a statically linked TLS library \
                     without exported symbols, such as BoringSSL in grpcio, or a TLS stack \
                     other than OpenSSL)"
                        .to_owned()
                });
            tracing::warn!(
                "TLS traffic of {} (pid {}) is not visible: {why}; its HTTPS requests produce no spans",
                v.exe,
                v.pid
            );
            if self.warned_exes.len() >= MAX_REJECTED {
                self.warned_exes.clear();
            }
            self.warned_exes.insert(key);
        }
    }

    /// Detaches everything. Each uprobe detach waits for the kernel to
    /// quiesce (hundreds of ms), so the links are closed from several
    /// threads at once instead of one after another.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let mut links = Vec::new();
        for (_, a) in self.attached.drain() {
            for (prog, id) in a.links {
                if let Some(p) = program(ebpf, prog) {
                    if let Ok(link) = p.take_link(id) {
                        links.push(link);
                    }
                }
            }
        }
        crate::probes::drop_concurrently(links);
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut UProbe> {
    ebpf.program_mut(name)?.try_into().ok()
}

fn attach_one(
    ebpf: &mut Ebpf,
    prog: &str,
    func: &str,
    path: &Path,
) -> Result<UProbeLinkId, String> {
    let p = program(ebpf, prog).ok_or_else(|| format!("program {prog} missing"))?;
    p.attach(func, path, UProbeScope::AllProcesses)
        .map_err(|e| format!("{func}: {e}"))
}

fn detach(ebpf: &mut Ebpf, prog: &str, id: UProbeLinkId) {
    if let Some(p) = program(ebpf, prog) {
        let _ = p.detach(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_each_file_once_with_its_device() {
        let text = "\
7f00-7f10 r--p 00000000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10-7f20 r-xp 00010000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f20-7f30 rw-p 00000000 00:00 0 [heap]
7f30-7f40 r-xp 00000000 08:02 99 /opt/my app/bin (deleted)
7f40-7f50 r-xp 00000000 08:02 77 /opt/my app/lib/libc.so.6
garbage line
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key, (libc::makedev(0xfd, 1), 1234));
        assert!(is_libssl(&m[0].path));
        assert_eq!(m[1].path, "/opt/my app/lib/libc.so.6");
        assert!(is_libc(&m[1].path));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
        assert!(is_libssl("/usr/lib/libssl.so.1.1"));
    }

    #[test]
    fn an_executable_is_the_same_by_path_or_command_name() {
        assert_eq!(exe_key("/usr/bin/hey"), exe_key("hey"));
        assert_eq!(
            exe_key("/opt/app/bin/a-very-long-program-name"),
            exe_key("a-very-long-pro")
        );
    }
}
