//! The OpenSSL API probes: which files get them, when, and whether a
//! process's TLS is visible at all. Candidates:
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
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::Ebpf;

use super::{
    discover::{
        exe_key, file_key, is_libc, is_libssl, parse_maps, Mapped, RescanQueue, EXEC_RESCANS,
        MAX_PENDING_SCANS, SYSTEM_LIB_DIRS,
    },
    golang::{self, GoTls},
    registry::{attach_one, load_programs, FileKey, Probe, ProbeSet, Registry, MAX_REJECTED},
};
use crate::{
    bpf::BpfError,
    pipeline::notices::Notice,
    telemetry::{Counters, Gauges},
};

/// `SSL_read`/`SSL_write` and their `_ex` forms (OpenSSL 1.1.1+, 3.x): the
/// entry probe saves the `SSL*`, buffer and byte-count pointer, the shared
/// return probe copies the plaintext with the count the call returned. A
/// file without `SSL_write`/`SSL_read` is not a usable TLS library.
const OPENSSL: ProbeSet = ProbeSet {
    entries: &[
        Probe {
            function: "SSL_write",
            program: "tracer_ssl_write",
            required: true,
        },
        Probe {
            function: "SSL_read",
            program: "tracer_ssl_read",
            required: true,
        },
        Probe {
            function: "SSL_write_ex",
            program: "tracer_ssl_write_ex",
            required: false,
        },
        Probe {
            function: "SSL_read_ex",
            program: "tracer_ssl_read_ex",
            required: false,
        },
    ],
    ret: "tracer_ssl_ret",
};
/// The uretprobe on libc's `dlopen`: a library loaded late is probed
/// before its first use.
const DLOPEN_PROGRAM: &str = "tracer_dlopen_ret";

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
    /// Its executable.
    exe_key: Option<FileKey>,
    due: Instant,
}

/// Files of one process remembered for a verdict.
const MAX_VERDICT_FILES: usize = 1024;

pub struct TlsProbes {
    files: Registry,
    go: GoTls,
    libc_hooked: HashSet<FileKey>,
    warned_exes: HashSet<String>,
    /// Processes whose TLS is known to be visible: their library produced
    /// plaintext or is probed (bounded).
    visible: HashSet<u32>,
    /// TLS handshakes waiting for a visibility verdict.
    verdicts: Vec<Verdict>,
    rescans: RescanQueue,
    counters: Arc<Counters>,
    gauges: Arc<Gauges>,
}

impl TlsProbes {
    /// Loads the TLS programs (attaching comes later, per file).
    pub fn load(
        ebpf: &mut Ebpf,
        counters: Arc<Counters>,
        gauges: Arc<Gauges>,
    ) -> Result<Self, BpfError> {
        load_programs(ebpf, OPENSSL.programs().chain([DLOPEN_PROGRAM]))?;
        // Go's programs are larger: a kernel whose verifier rejects them
        // still gets OpenSSL capture, and says why Go TLS is missing.
        let mut go = GoTls::new(counters.clone());
        if let Err(e) = load_programs(ebpf, golang::PROGRAMS) {
            tracing::warn!(
                "Go TLS and goroutine capture unavailable: {:#}",
                anyhow::Error::new(e)
            );
            go.disable();
        }
        Ok(Self {
            files: Registry::default(),
            go,
            libc_hooked: HashSet::new(),
            warned_exes: HashSet::new(),
            visible: HashSet::new(),
            verdicts: Vec::new(),
            rescans: RescanQueue::default(),
            counters,
            gauges,
        })
    }

    fn update_gauge(&self) {
        Gauges::set(&self.gauges.tls_files_probed, self.files.len() as u64);
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
                    if self.files.attach_file(ebpf, &OPENSSL, key, &path, None) {
                        self.files.make_permanent(&key);
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
        tracing::info!("TLS: OpenSSL probes on {} file(s)", self.files.len());
        self.update_gauge();
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
                self.files
                    .attach_file(ebpf, &OPENSSL, m.key, &in_ns, Some(pid));
            } else if is_libc(&m.path) && !self.libc_hooked.contains(&m.key) {
                self.hook_dlopen(ebpf, m.key, &in_ns);
            }
        }
        // Go's crypto/tls in the executable, else statically linked TLS
        // it exports (node).
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        match file_key(&exe) {
            Some(key) => {
                if !self.go.scan(ebpf, &mut self.files, pid, key, &exe) {
                    self.files.attach_file(ebpf, &OPENSSL, key, &exe, Some(pid));
                }
            }
            None => self.go.forget(ebpf, pid),
        }
        self.update_gauge();
    }

    fn hook_dlopen(&mut self, ebpf: &mut Ebpf, key: FileKey, libc_path: &std::path::Path) {
        // Whatever happens, a libc is tried once.
        self.libc_hooked.insert(key);
        if let Err(e) = attach_one(ebpf, DLOPEN_PROGRAM, "dlopen", libc_path) {
            tracing::debug!(
                "TLS: no dlopen hook in {}: {e} (libraries it loads late are found at the next exec)",
                libc_path.display()
            );
        }
    }

    /// Acts on the process notices of one drain of the ring; a process
    /// that dlopens in a loop is scanned once per drain.
    pub fn on_notices(&mut self, ebpf: &mut Ebpf, notices: &mut Vec<Notice>, now: Instant) {
        let mut scanned = HashSet::new();
        for notice in notices.drain(..) {
            match notice {
                Notice::Exec(pid) => {
                    // Go programs at once (a static binary needs no
                    // loader to run first): a known one may still have
                    // its probes on (they linger) and needs only its
                    // layout, before its first TLS call if possible.
                    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                    if let Some(key) = file_key(&exe) {
                        self.go.scan(ebpf, &mut self.files, pid, key, &exe);
                    }
                    for d in EXEC_RESCANS {
                        if !self.rescans.schedule(pid, now + d) {
                            Counters::inc(&self.counters.tls_rescans_dropped);
                        }
                    }
                }
                Notice::Dlopen(pid) if scanned.insert(pid) => self.scan_pid(ebpf, pid),
                Notice::Dlopen(_) => {}
                Notice::Exit(pid) => {
                    self.go.forget(ebpf, pid);
                    self.files.on_exit(ebpf, pid);
                    self.update_gauge();
                }
                Notice::TlsHandshake { tgid, comm } => self.on_tls_seen(tgid, comm, now),
                Notice::TlsPlaintext(pid) => self.mark_visible(pid),
            }
        }
    }

    /// Runs the re-scans and visibility verdicts that are due.
    pub fn run_due(&mut self, ebpf: &mut Ebpf, now: Instant) {
        self.run_verdicts(now);
        let mut due = Vec::new();
        self.rescans.take_due(now, &mut due);
        for pid in due {
            self.scan_pid(ebpf, pid);
        }
    }

    /// The next time a re-scan or verdict is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        let verdict = self.verdicts.iter().map(|v| v.due).min();
        match (self.rescans.next_due(), verdict) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        let exe_key = file_key(std::path::Path::new(&format!("/proc/{pid}/exe")));
        self.verdicts.push(Verdict {
            pid,
            exe,
            keys,
            libssl,
            exe_key,
            due: now + TLS_VERDICT_DELAY,
        });
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
            if v.keys.iter().any(|k| self.files.is_attached(k)) {
                self.mark_visible(v.pid);
                continue;
            }
            let key = exe_key(&v.exe);
            if self.visible.contains(&v.pid) || self.warned_exes.contains(&key) {
                continue;
            }
            // A Go executable whose TLS cannot be probed was reported when
            // it was analysed.
            if v.exe_key
                .is_some_and(|k| self.go.why_not_visible(&k).is_some())
            {
                continue;
            }
            let why = v
                .libssl
                .iter()
                .find_map(|m| {
                    self.files
                        .rejected(&m.key)
                        .map(|w| format!("{} could not be probed: {w}", m.path))
                })
                .or_else(|| {
                    v.exe_key
                        .and_then(|k| self.go.why_not_visible(&k))
                        .map(str::to_owned)
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

    /// Uprobe links attached now.
    pub fn links(&self) -> usize {
        self.files.links()
    }

    /// Detaches every probe.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        self.files.detach_all(ebpf);
    }
}
