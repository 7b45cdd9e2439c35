//! Go's `crypto/tls` probes: which Go executables get them, where they go
//! (`.gopclntab` and RET decoding, since Go binaries are usually
//! stripped), and the per-process layout the kernel needs to find the
//! socket behind a `*tls.Conn` (see `tracer_common::GoTlsLayout`).
//!
//! A file is analysed once (device, inode): its Go version, the struct
//! offsets (DWARF, else the versioned table), the entries of
//! `(*Conn).Write` and `(*Conn).Read` and every RET of `Read`. A version
//! neither covers is not probed, with one log line: no guessed offsets.
//! Each process running a probed file then gets its layout in the
//! kernel's `GO_TLS` map (the `net.(*TCPConn).Close` address moves with
//! the load address of position-independent builds), removed at exit or
//! exec.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::Path,
    sync::Arc,
};

use aya::{maps::HashMap as BpfHashMap, Ebpf};
use tracer_common::{GoTlsLayout, MAP_GO_TLS};

use super::registry::{FileKey, Registry, MAX_REJECTED};
use crate::{
    golang::{
        buildinfo::{self, BuildInfoError},
        dwarf,
        offsets::{self, GrpcOffsets, HttpOffsets, TlsOffsets},
        pclntab::{Func, Pclntab, PclntabError},
        rets::{self, Layout, RetError},
    },
    telemetry::Counters,
};

/// The kernel programs (see `tracer-ebpf/src/probes/tls/golang.rs`).
pub const PROG_WRITE: &str = "tracer_go_tls_write";
pub const PROG_READ: &str = "tracer_go_tls_read";
pub const PROG_READ_RET: &str = "tracer_go_tls_read_ret";
/// The goroutine-context programs (`tracer-ebpf/src/probes/goroutines.rs`).
pub const PROG_SERVE: &str = "tracer_go_serve";
pub const PROG_CLIENT: &str = "tracer_go_client";
pub const PROG_NEWPROC: &str = "tracer_go_newproc";
pub const PROG_NEWPROC_RET: &str = "tracer_go_newproc_ret";
pub const PROG_GRPC_SERVE: &str = "tracer_go_grpc_serve";
pub const PROG_GRPC_CLIENT: &str = "tracer_go_grpc_client";
pub const PROGRAMS: [&str; 9] = [
    PROG_WRITE,
    PROG_READ,
    PROG_READ_RET,
    PROG_SERVE,
    PROG_CLIENT,
    PROG_NEWPROC,
    PROG_NEWPROC_RET,
    PROG_GRPC_SERVE,
    PROG_GRPC_CLIENT,
];

/// The probed functions, and the one whose address identifies a
/// `*net.TCPConn` inside a `net.Conn`.
pub const FN_WRITE: &str = "crypto/tls.(*Conn).Write";
pub const FN_READ: &str = "crypto/tls.(*Conn).Read";
pub const FN_TCPCONN_CLOSE: &str = "net.(*TCPConn).Close";
/// Goroutine links: where net/http serves a request and hands one to a
/// client connection, goroutine creation, and the methods whose
/// addresses identify a `*tls.Conn` and net/http's HTTP/1 `*response`.
pub const FN_SERVE: &str = "net/http.serverHandler.ServeHTTP";
pub const FN_PCONN_ROUNDTRIP: &str = "net/http.(*persistConn).roundTrip";
pub const FN_NEWPROC1: &str = "runtime.newproc1";
pub const FN_TLSCONN_CLOSE: &str = "crypto/tls.(*Conn).Close";
pub const FN_RESPONSE_HEADER: &str = "net/http.(*response).Header";
/// grpc-go: where a server starts serving a stream, where a client is
/// given a new stream, and the method whose address identifies its own
/// HTTP/2 server transport.
pub const FN_GRPC_HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";
pub const FN_GRPC_NEW_STREAM: &str =
    "google.golang.org/grpc/internal/transport.(*http2Client).NewStream";
pub const FN_GRPC_SERVER_CLOSE: &str =
    "google.golang.org/grpc/internal/transport.(*http2Server).Close";
/// The wrapper grpc-go's TLS credentials put around a `*tls.Conn`.
pub const FN_GRPC_SYSCALLCONN_CLOSE: &str =
    "google.golang.org/grpc/internal/credentials.(*syscallConn).Close";
/// grpc-go's module path in the build info.
const GRPC_MODULE: &str = "google.golang.org/grpc";

/// What goroutine links need of a file, besides the TLS probes. Each
/// site is optional (a server may make no HTTP calls, a CLI serves
/// nothing); goroutine creation and at least one site are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoLinks {
    /// net/http's offsets, when its serving or client site is probed.
    pub http: Option<HttpOffsets>,
    /// grpc-go's offsets, when one of its sites is probed.
    pub grpc: Option<GrpcOffsets>,
    /// Virtual addresses of `crypto/tls.(*Conn).Close`,
    /// `net/http.(*response).Header` and grpc-go's
    /// `(*http2Server).Close` (0: absent, or that site not probed).
    pub tlsconn_close: u64,
    pub response_header: u64,
    pub grpc_server_close: u64,
    /// grpc-go's TLS wrapper's `(*syscallConn).Close` (0: absent).
    pub grpc_syscallconn_close: u64,
    /// (program, file offset) of the link probes.
    pub points: Vec<(&'static str, u64)>,
    /// What is followed, for the log ("net/http serve, ...").
    pub sites: Vec<&'static str>,
}

/// What a Go executable's `crypto/tls` probes need, found once per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsFile {
    pub go_version: String,
    pub offsets: TlsOffsets,
    /// Where the offsets came from: "DWARF" or "table".
    pub offsets_from: &'static str,
    /// Virtual address of `net.(*TCPConn).Close` in the file.
    pub tcpconn_close: u64,
    /// Virtual address of the first loaded segment (file offset 0): with
    /// the address it is mapped at, the load bias of a PIE build.
    pub base_vaddr: u64,
    /// (program, file offset) of every TLS probe.
    pub points: Vec<(&'static str, u64)>,
    /// Goroutine links, when the file has net/http and its offsets are
    /// known (else the reason, for the log).
    pub links: Result<GoLinks, String>,
}

impl GoTlsFile {
    /// The kernel's layout for a process that loaded the file with `bias`.
    pub fn layout(&self, bias: u64) -> GoTlsLayout {
        let mut l = GoTlsLayout {
            tcpconn_close: self.tcpconn_close.wrapping_add(bias),
            tls_conn: self.offsets.tls_conn,
            itab_fun0: self.offsets.itab_fun0,
            tcpconn_fd: self.offsets.tcpconn_fd,
            netfd_sysfd: self.offsets.netfd_sysfd,
            ..GoTlsLayout::default()
        };
        if let Ok(links) = &self.links {
            let at = |va: u64| if va == 0 { 0 } else { va.wrapping_add(bias) };
            l.links = 1;
            l.tlsconn_close = at(links.tlsconn_close);
            l.response_header = at(links.response_header);
            l.grpc_server_close = at(links.grpc_server_close);
            l.grpc_syscallconn_close = at(links.grpc_syscallconn_close);
            if let Some(http) = links.http {
                l.response_conn = http.response_conn;
                l.conn_rwc = http.conn_rwc;
                l.pconn_conn = http.pconn_conn;
            }
            if let Some(grpc) = links.grpc {
                l.grpc_stream_id = grpc.stream_id;
                l.grpc_stream_ct = grpc.stream_ct;
                l.grpc_client_conn = grpc.client_conn;
                l.grpc_server_conn = grpc.server_conn;
                l.grpc_syscallconn_conn = grpc.syscallconn_conn;
            }
        }
        l
    }

    /// Every probe of the file: TLS, then goroutine links if usable.
    pub fn all_points(&self) -> Vec<(&'static str, u64)> {
        let mut p = self.points.clone();
        if let Ok(links) = &self.links {
            p.extend(links.points.iter().copied());
        }
        p
    }
}

/// Why a file gets no Go TLS probes.
#[derive(Debug, thiserror::Error)]
pub enum GoTlsError {
    #[error("not a Go binary")]
    NotGo,
    #[error("no crypto/tls in it")]
    NoCryptoTls,
    #[error("reading it: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    BuildInfo(#[from] BuildInfoError),
    #[error("{0}")]
    Pclntab(#[from] PclntabError),
    #[error("{func}: {err}")]
    Rets { func: &'static str, err: RetError },
    #[error("Go version {0:?} unknown")]
    UnknownVersion(String),
    #[error(
        "{0} is outside the supported range ({range}) and the binary has no DWARF",
        range = offsets::supported_range()
    )]
    Unsupported(String),
    #[error("{0} is older than the register ABI the probes read")]
    TooOld(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} appears more than once in its function table")]
    Duplicate(&'static str),
}

impl GoTlsError {
    /// Whether the file simply has nothing to probe (no log line).
    pub fn is_silent(&self) -> bool {
        matches!(self, Self::NotGo | Self::NoCryptoTls)
    }
}

/// Analyses the executable at `path`.
pub fn analyse(path: &Path) -> Result<GoTlsFile, GoTlsError> {
    let mut f = File::open(path)?;
    let info = match buildinfo::read(&mut f) {
        Ok(Some(info)) => info,
        Ok(None) | Err(BuildInfoError::Elf(_)) => return Err(GoTlsError::NotGo),
        Err(e) => return Err(e.into()),
    };
    let version = info
        .version()
        .ok_or_else(|| GoTlsError::UnknownVersion(info.go_version.clone()))?;
    if version < offsets::OLDEST {
        return Err(GoTlsError::TooOld(info.go_version));
    }
    let table = Pclntab::read(&mut f)?;
    let funcs = table.find(&[
        FN_WRITE,
        FN_READ,
        FN_TCPCONN_CLOSE,
        FN_SERVE,
        FN_PCONN_ROUNDTRIP,
        FN_NEWPROC1,
        FN_TLSCONN_CLOSE,
        FN_RESPONSE_HEADER,
        FN_GRPC_HANDLE_STREAM,
        FN_GRPC_NEW_STREAM,
        FN_GRPC_SERVER_CLOSE,
        FN_GRPC_SYSCALLCONN_CLOSE,
    ]);
    let one = |name: &'static str| {
        let mut it = funcs.iter().filter(|f| f.name == name);
        match (it.next(), it.next()) {
            (Some(f), None) => Ok(f),
            (None, _) => Err(GoTlsError::Missing(name)),
            // An ABI wrapper shares the name; its arguments are on the
            // stack, not in registers. Which is which is not certain.
            (Some(_), Some(_)) => Err(GoTlsError::Duplicate(name)),
        }
    };
    let (write, read) = match (one(FN_WRITE), one(FN_READ)) {
        (Err(GoTlsError::Missing(_)), Err(GoTlsError::Missing(_))) => {
            return Err(GoTlsError::NoCryptoTls)
        }
        (w, r) => (w?, r?),
    };
    let close = one(FN_TCPCONN_CLOSE)?;
    // DWARF first (it is the binary's own truth), else the table. DWARF
    // that cannot be read (too large, malformed) is as good as none.
    let members = dwarf::members(&mut f).unwrap_or_else(|e| {
        tracing::debug!(
            "{}: DWARF not used ({e}): offsets from the table",
            path.display()
        );
        None
    });
    let (offsets, offsets_from) = match members.as_ref().map(dwarf::tls_from) {
        Some(Ok(o)) => (o, "DWARF"),
        // No DWARF, or DWARF without these types: the table.
        _ => (
            offsets::for_version(version)
                .ok_or_else(|| GoTlsError::Unsupported(info.go_version.clone()))?,
            "table",
        ),
    };
    let http = match members.as_ref().map(dwarf::http_from) {
        Some(Ok(o)) => Ok(o),
        _ => offsets::http_for_version(version)
            .ok_or_else(|| format!("no net/http offsets for {}", info.go_version)),
    };
    let layout = Layout::read(&mut f).map_err(|err| GoTlsError::Rets { func: FN_READ, err })?;
    // Where a function's entry probe goes.
    let entry = |func: &Func| layout.file_offset(func.entry, 1);
    let unmapped = |func: &'static str, va: u64| GoTlsError::Rets {
        func,
        err: RetError::Unmapped(va),
    };
    let mut points = vec![
        (
            PROG_WRITE,
            entry(write).ok_or_else(|| unmapped(FN_WRITE, write.entry))?,
        ),
        (
            PROG_READ,
            entry(read).ok_or_else(|| unmapped(FN_READ, read.entry))?,
        ),
    ];
    let read_rets = rets::ret_offsets(&mut f, &layout, read)
        .map_err(|err| GoTlsError::Rets { func: FN_READ, err })?;
    points.extend(read_rets.into_iter().map(|o| (PROG_READ_RET, o)));
    let grpc = match members.as_ref().map(dwarf::grpc_from) {
        Some(Ok(o)) => Some(o),
        _ => info.dep(GRPC_MODULE).and_then(offsets::grpc_for_version),
    };
    let links = (|| -> Result<GoLinks, String> {
        let need = |name: &'static str| one(name).map_err(|e| e.to_string());
        let at = |func: &Func| {
            entry(func).ok_or_else(|| format!("{} is not in a loaded segment", func.name))
        };
        let rets_of = |f: &mut File, name: &'static str, func: &Func| {
            rets::ret_offsets(f, &layout, func).map_err(|e| format!("{name}: {e}"))
        };
        let newproc = need(FN_NEWPROC1)?;
        let mut points = vec![(PROG_NEWPROC, at(newproc)?)];
        points.extend(
            rets_of(&mut f, FN_NEWPROC1, newproc)?
                .into_iter()
                .map(|o| (PROG_NEWPROC_RET, o)),
        );
        let mut l = GoLinks {
            http: None,
            grpc: None,
            tlsconn_close: one(FN_TLSCONN_CLOSE).map_or(0, |f| f.entry),
            response_header: 0,
            grpc_server_close: 0,
            grpc_syscallconn_close: 0,
            points,
            sites: Vec::new(),
        };
        if let Ok(http) = &http {
            if let (Ok(serve), Ok(header)) = (one(FN_SERVE), one(FN_RESPONSE_HEADER)) {
                l.points.push((PROG_SERVE, at(serve)?));
                l.response_header = header.entry;
                l.sites.push("net/http serving");
            }
            if let Ok(rt) = one(FN_PCONN_ROUNDTRIP) {
                l.points.push((PROG_CLIENT, at(rt)?));
                l.sites.push("net/http client");
            }
            if !l.sites.is_empty() {
                l.http = Some(*http);
            }
        }
        if let Some(grpc) = grpc {
            let before = l.sites.len();
            if let (Ok(handle), Ok(close)) = (one(FN_GRPC_HANDLE_STREAM), one(FN_GRPC_SERVER_CLOSE))
            {
                l.points.push((PROG_GRPC_SERVE, at(handle)?));
                l.grpc_server_close = close.entry;
                l.sites.push("grpc-go serving");
            }
            if let Ok(new_stream) = one(FN_GRPC_NEW_STREAM) {
                let rets = rets_of(&mut f, FN_GRPC_NEW_STREAM, new_stream)?;
                l.points
                    .extend(rets.into_iter().map(|o| (PROG_GRPC_CLIENT, o)));
                l.sites.push("grpc-go client");
            }
            if l.sites.len() > before {
                l.grpc = Some(grpc);
                l.grpc_syscallconn_close = one(FN_GRPC_SYSCALLCONN_CLOSE).map_or(0, |f| f.entry);
            }
        }
        if l.sites.is_empty() {
            return Err(match &http {
                Err(why) => why.clone(),
                Ok(_) => "no net/http or grpc-go site to follow".to_owned(),
            });
        }
        Ok(l)
    })();
    Ok(GoTlsFile {
        go_version: info.go_version,
        offsets,
        offsets_from,
        tcpconn_close: close.entry,
        base_vaddr: layout
            .base_vaddr()
            .ok_or(GoTlsError::Missing("a segment at file offset 0"))?,
        points,
        links,
    })
}

/// Where process `pid` mapped file `key` at offset 0, from its maps.
fn mapped_at(pid: u32, key: FileKey) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (range, _perms, off, dev, inode) =
            (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        if u64::from_str_radix(off, 16).ok()? != 0 || inode.parse::<u64>().ok()? != key.1 {
            return None;
        }
        let (major, minor) = dev.split_once(':')?;
        let dev = libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        );
        if dev != key.0 {
            return None;
        }
        u64::from_str_radix(range.split_once('-')?.0, 16).ok()
    })
}

/// The file behind `/proc/PID/exe`, for messages.
fn real_path(exe: &Path) -> std::path::PathBuf {
    std::fs::read_link(exe).unwrap_or_else(|_| exe.to_path_buf())
}

/// What is known of an executable.
enum Analysis {
    Usable(Arc<GoTlsFile>),
    /// Nothing to probe, or not probeable (the reason is in the registry).
    Skip,
}

/// The Go side of the TLS probes.
pub struct GoTls {
    files: HashMap<FileKey, Analysis>,
    /// Go executables whose TLS cannot be probed, and why.
    not_visible: HashMap<FileKey, String>,
    /// Processes with a layout in the kernel.
    described: HashSet<u32>,
    counters: Arc<Counters>,
    /// The Go programs could not be loaded (the reason was logged then).
    disabled: bool,
}

impl GoTls {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            files: HashMap::new(),
            not_visible: HashMap::new(),
            described: HashSet::new(),
            counters,
            disabled: false,
        }
    }

    /// The kernel refused the Go programs: Go executables then take the
    /// OpenSSL path, which finds no TLS symbols in them.
    pub fn disable(&mut self) {
        self.disabled = true;
    }

    /// Why the Go executable `key`'s TLS is not visible, if it is one.
    pub fn why_not_visible(&self, key: &FileKey) -> Option<&str> {
        self.not_visible.get(key).map(String::as_str)
    }

    /// Probes process `pid`'s executable `exe` (file `key`) if it is a Go
    /// binary using crypto/tls, and describes the process to the kernel.
    /// Returns false when it is not a Go binary (other TLS libraries may
    /// then be looked for in it).
    pub fn scan(
        &mut self,
        ebpf: &mut Ebpf,
        registry: &mut Registry,
        pid: u32,
        key: FileKey,
        exe: &Path,
    ) -> bool {
        if self.disabled {
            return false;
        }
        if !self.files.contains_key(&key) {
            let Some(a) = self.analyse(registry, key, exe) else {
                // The process went away while its file was read: nothing
                // is known of the file yet.
                return false;
            };
            if self.files.len() >= MAX_REJECTED {
                self.files.clear();
            }
            self.files.insert(key, a);
        }
        let file = match self.files.get(&key) {
            Some(Analysis::Usable(f)) => f.clone(),
            Some(Analysis::Skip) | None => {
                self.forget(ebpf, pid);
                return self.not_visible.contains_key(&key);
            }
        };
        if let Err(e) = registry.attach_offsets(ebpf, key, exe, Some(pid), &file.all_points()) {
            // A process gone before its probes went on says nothing about
            // the file; a file that takes no probes is remembered.
            if exe.exists() {
                self.not_visible_because(registry, key, exe, &e);
                self.files.insert(key, Analysis::Skip);
            }
            return true;
        }
        let bias = mapped_at(pid, key)
            .map(|at| at.wrapping_sub(file.base_vaddr))
            .unwrap_or(0);
        self.describe(ebpf, pid, file.layout(bias));
        true
    }

    /// `None` when the file could not be read because its process (and
    /// with it the `/proc/PID/exe` path) is gone.
    fn analyse(&mut self, registry: &mut Registry, key: FileKey, exe: &Path) -> Option<Analysis> {
        Some(match analyse(exe) {
            Ok(f) => {
                let links = match &f.links {
                    Ok(l) => format!(
                        "goroutine links on ({} probes: {})",
                        l.points.len(),
                        l.sites.join(", ")
                    ),
                    Err(why) => format!("goroutine links off: {why}"),
                };
                tracing::info!(
                    "Go TLS: {} ({}, offsets from {}): {} probes; {links}",
                    real_path(exe).display(),
                    f.go_version,
                    f.offsets_from,
                    f.points.len()
                );
                Analysis::Usable(Arc::new(f))
            }
            Err(e) if e.is_silent() => Analysis::Skip,
            Err(_) if !exe.exists() => return None,
            Err(e) => {
                self.not_visible_because(registry, key, exe, &e);
                Analysis::Skip
            }
        })
    }

    /// Says once why the Go executable `key` is not probed, and remembers.
    fn not_visible_because(
        &mut self,
        registry: &mut Registry,
        key: FileKey,
        exe: &Path,
        e: &dyn std::fmt::Display,
    ) {
        tracing::warn!(
            "Go TLS of {} is not visible: {e}; its HTTPS requests produce no spans",
            real_path(exe).display()
        );
        Counters::inc(&self.counters.go_tls_not_visible);
        let why = format!("its Go crypto/tls cannot be probed: {e}");
        registry.reject(key, why.clone());
        if self.not_visible.len() >= MAX_REJECTED {
            self.not_visible.clear();
        }
        self.not_visible.insert(key, why);
    }

    fn describe(&mut self, ebpf: &mut Ebpf, pid: u32, layout: GoTlsLayout) {
        let Some(map) = ebpf.map_mut(MAP_GO_TLS) else {
            return;
        };
        let Ok(mut map) = BpfHashMap::<_, u32, GoTlsLayout>::try_from(map) else {
            return;
        };
        match map.insert(pid, layout, 0) {
            Ok(()) => {
                self.described.insert(pid);
            }
            Err(e) => {
                Counters::inc(&self.counters.go_tls_not_visible);
                tracing::warn!(
                    "Go TLS of pid {pid} is not visible: the kernel's table is full ({e})"
                );
            }
        }
    }

    /// Process `pid` exited or runs another program: its layout goes.
    pub fn forget(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if !self.described.remove(&pid) {
            return;
        }
        if let Some(map) = ebpf.map_mut(MAP_GO_TLS) {
            if let Ok(mut map) = BpfHashMap::<_, u32, GoTlsLayout>::try_from(map) {
                let _ = map.remove(&pid);
            }
        }
    }
}
