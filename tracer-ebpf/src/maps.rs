//! Every map the kernel programs use, their value types, and the small
//! helpers around them. Names and default sizes live in `tracer-common` so
//! the agent can find and resize them at load time.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
pub use tracer_common::ThreadCtx;
use tracer_common::{
    Config, ConnState, DataScratch, SockKey, DEFAULT_MAX_CONNS, DEFAULT_MAX_INFLIGHT,
    DEFAULT_RING_BYTES, DEFAULT_SCRATCH_SLOTS, MAX_CGROUP_FILTER, MAX_CLOSED, MAX_H2_STATE,
    MAX_NO_THREAD_LINK, MAX_PARENTS, MAX_PID_FILTER, MAX_SOCK_STATE, MAX_SSL_FDS, MAX_THREAD_CTX,
    SCAN_MAX, STAT_COUNT, TRACESTATE_MAX,
};
use tracer_common::{GoTlsLayout, MAX_GO_CTX, MAX_GO_INJECT, MAX_GO_TLS, MAX_GO_TLS_READS};
use tracer_common::{CGROUP_FILTER_ALLOW, CGROUP_FILTER_OFF, STAT_CGROUP_FILTERED};

use crate::scan::head::{HeadScan, SCAN_BUF};

/// Arguments of a traced syscall, saved at entry and consumed at exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// Owner of the slot; 0 when free. Written last at entry, checked
    /// before and after the copy at exit, so a thread sharing the slot can
    /// never hand its arguments to another.
    pub pid_tgid: u64,
    /// Kernel monotonic ns at syscall entry.
    pub ts: u64,
    /// Buffer, iovec array, msghdr or sockaddr pointer (by `kind`).
    pub ptr: u64,
    /// Buffer length or iovec count.
    pub len: u64,
    pub fd: u32,
    /// `__syscall_nr` at entry: the exit must match it, so a stale entry (a
    /// missed exit) can never be paired with another syscall's return value.
    pub nr: u32,
    pub kind: u8,
    /// A Go client write armed with its request's context (see
    /// `probes::goroutines::arm_injection`): the exit disarms it.
    pub armed: u8,
    pub _pad: [u8; 6],
}

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Indexed by `tid & Config::inflight_mask`. Array lookups are inlined by
/// the verifier, so saving arguments is a few stores.
#[map]
pub static INFLIGHT: Array<PendingCall> = Array::with_max_entries(DEFAULT_MAX_INFLIGHT, 0);

/// The in-flight slot of a thread.
#[inline(always)]
pub fn inflight_slot(pid_tgid: u64, cfg: &Config) -> Option<*mut PendingCall> {
    INFLIGHT.get_ptr_mut((pid_tgid as u32) & cfg.inflight_mask)
}

/// Takes this thread's saved arguments out of its slot.
#[inline(always)]
pub fn take_inflight(pid_tgid: u64, cfg: &Config) -> Option<PendingCall> {
    let slot = inflight_slot(pid_tgid, cfg)?;
    // SAFETY: valid map value pointer; volatile so the owner check really
    // brackets the copy.
    unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) != pid_tgid {
            return None;
        }
        let call = core::ptr::read_volatile(slot);
        core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        if call.pid_tgid != pid_tgid {
            return None;
        }
        Some(call)
    }
}

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// One scratch slot per CPU, indexed by `bpf_get_smp_processor_id()`. A
/// plain array rather than a per-CPU one because per-CPU values are capped
/// at 32 KiB, less than a header plus two capture caps. Safe because
/// tracepoint programs run with migration disabled. The agent sizes it to
/// the number of possible CPUs at load time.
#[map]
pub static SCRATCH: Array<DataScratch> = Array::with_max_entries(DEFAULT_SCRATCH_SLOTS, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PID_FILTER, 0);

/// See `tracer_common::MAP_CGROUP_FILTER`. Written by the agent from its
/// pod view; a plain hash, since an evicted entry would flip a decision.
#[map]
pub static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(MAX_CGROUP_FILTER, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn bump(stat: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU value, and programs do not migrate while running.
        unsafe { *counter += 1 };
    }
}

/// Adds `n` to a kernel counter.
#[inline(always)]
pub fn bump_by(stat: u32, n: u64) {
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: as in `bump`.
        unsafe { *counter += n };
    }
}

/// Whether this process is traced at all: never the agent itself, only
/// the `--pid` set when one is given, and only the cgroups the Kubernetes
/// selection lets through.
#[inline(always)]
pub fn traced(tgid: u32, cfg: &Config) -> bool {
    if tgid == cfg.self_tgid {
        return false;
    }
    if cfg.filter_cgroups != CGROUP_FILTER_OFF && !cgroup_traced(cfg.filter_cgroups) {
        bump(STAT_CGROUP_FILTERED);
        return false;
    }
    if cfg.filter_pids != 0 {
        // SAFETY: plain lookup; the value is not dereferenced.
        return unsafe { PID_FILTER.get(tgid) }.is_some();
    }
    true
}

/// The current task's cgroup v2 id against the agent's list
/// (`bpf_get_current_cgroup_id`: the id of the task's cgroup in the
/// unified hierarchy, i.e. the inode number of its cgroupfs directory).
#[inline(always)]
fn cgroup_traced(mode: u32) -> bool {
    // SAFETY: no arguments; valid in every tracing program type.
    let id = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    // SAFETY: plain lookup; the value is not dereferenced.
    let listed = unsafe { CGROUP_FILTER.get(id) }.is_some();
    listed == (mode == CGROUP_FILTER_ALLOW)
}

/// The configuration in place, for a program that reads a field or two:
/// [`config`]'s copy costs its size in the 512-byte BPF stack, which the
/// sk_msg injector cannot spare.
#[inline(always)]
pub fn config_ref() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// The agent's configuration, or the defaults if it has not been written yet.
#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

/// See `tracer_common::MAP_NO_THREAD_LINK`. A plain hash, not LRU: an
/// evicted entry would let a Go process be linked by thread. The exec
/// and exit hooks and the agent keep it to live processes.
#[map]
pub static NO_THREAD_LINK: HashMap<u32, u8> = HashMap::with_max_entries(MAX_NO_THREAD_LINK, 0);

/// Whether thread-keyed links are off for this process (checked where a
/// SERVER context would be stored: with none stored, the injector finds
/// nothing to link to).
#[inline(always)]
pub fn thread_link_off(tgid: u32) -> bool {
    // SAFETY: the value is not read, only its presence.
    unsafe { NO_THREAD_LINK.get(tgid) }.is_some()
}

/// Keyed by pid_tgid. LRU: a thread that exits or never answers cannot
/// leak an entry for long.
#[map]
pub static THREAD_CTX: LruHashMap<u64, ThreadCtx> = LruHashMap::with_max_entries(MAX_THREAD_CTX, 0);

/// Where a [`ThreadCtx`] is built before it is stored (too big for the
/// stack).
#[map]
pub static CTX_BUILD: PerCpuArray<ThreadCtx> = PerCpuArray::with_max_entries(1, 0);

/// Programs the capture path tail-calls (see `tracer_common::TAIL_*`).
#[map]
pub static TAIL_PROGS: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// A call handed to the HTTP/2 frame walker (`probes::h2`) by a tail
/// call, which keeps nothing of the caller's stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct H2Args {
    pub call: PendingCall,
    pub ret: u64,
    pub pid_tgid: u64,
    pub key: u64,
    pub conn_id: u64,
    pub seq: u32,
    pub ingress: u8,
    pub _pad: [u8; 3],
}

#[map]
pub static H2_ARGS: PerCpuArray<H2Args> = PerCpuArray::with_max_entries(1, 0);

/// The HTTP/2 frame walker's working state (`probes::h2`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Walk {
    /// A plain buffer (no iovec array).
    pub single: u64,
    pub iov_ptr: u64,
    pub iov_cnt: u64,
    pub iov_next: u64,
    /// The current buffer or iovec entry, and where it starts in the
    /// call's data.
    pub cur_base: u64,
    pub cur_len: u64,
    pub cur_start: u64,
    /// Bytes of the call walked so far, and how many it moved.
    pub pos: u64,
    pub total: u64,
    /// Bytes of `scratch.data` used, and the most it may use.
    pub out: u32,
    pub cap: u32,
    /// `scratch.data` offset of the open segment's header, and where in
    /// the call's data the open segment ends.
    pub seg_at: u32,
    pub seg_end: u64,
    pub skipped: u64,
    pub not_copied: u64,
}

#[map]
pub static H2_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Where one direction of an HTTP/2 connection is in its framing.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct H2Dir {
    /// Payload bytes of the current frame still to come.
    pub rem: u32,
    /// The current frame is DATA: its payload is skipped.
    pub skip: u8,
    /// Bytes of a frame header cut by the end of a call, so far.
    pub have: u8,
    /// The framing is lost until a call starts with a frame header.
    pub lost: u8,
    /// A call of this direction was walked (the first one is checked for
    /// the preface or a frame header).
    pub started: u8,
    /// The frame header being read (9 bytes; 16 so an index masked with
    /// 15 is provably inside).
    pub hdr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct H2State {
    /// The connection this belongs to (an fd number is reused).
    pub conn_id: u64,
    /// Ingress, egress.
    pub dirs: [H2Dir; 2],
}

#[map]
pub static H2_STATE: LruHashMap<u64, H2State> = LruHashMap::with_max_entries(MAX_H2_STATE, 0);

/// Client sockets whose sends the injector sees.
#[map]
pub static SOCKS: SockHash<SockKey> = SockHash::with_max_entries(MAX_SOCK_STATE, 0);

/// What the injector knows about the byte stream of a client socket.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SockState {
    /// One of the `MODE_*` values of `probes::inject`.
    pub mode: u32,
    pub _pad: u32,
}

#[map]
pub static SOCK_STATE: LruHashMap<SockKey, SockState> =
    LruHashMap::with_max_entries(MAX_SOCK_STATE, 0);

/// Per-CPU scratch of the injector: the head being inspected, the scan
/// results, and the header lines to insert.
#[repr(C)]
pub struct InjectScratch {
    pub data: [u8; SCAN_BUF],
    pub scan: HeadScan,
    pub line: [u8; INJECT_LINE_MAX],
    /// Bytes of `line` to insert.
    pub line_len: u32,
    /// Writing the inserted bytes failed.
    pub write_failed: u32,
}

/// `traceparent: 00-<32>-<16>-<2>\r\n` plus `tracestate: <value>\r\n`.
pub const INJECT_LINE_MAX: usize = 512;
const _: () = assert!(70 + 14 + TRACESTATE_MAX <= INJECT_LINE_MAX);
const _: () = assert!(SCAN_BUF >= 2 * SCAN_MAX + 64);

#[map]
pub static INJECT_SCRATCH: PerCpuArray<InjectScratch> = PerCpuArray::with_max_entries(1, 0);

/// Scan results for the server-side context reader (its bytes are in
/// [`SCRATCH`]).
#[map]
pub static SERVER_SCAN: PerCpuArray<HeadScan> = PerCpuArray::with_max_entries(1, 0);

/// A TLS call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// Owner (0 when free); written last at entry, checked at return.
    pub pid_tgid: u64,
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` that receives the byte count (`_ex` variants), else 0.
    pub count_ptr: u64,
    pub ts: u64,
    /// Socket seen inside the call, or `u32::MAX`.
    pub fd: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// Indexed by `tid & Config::inflight_mask`, like `INFLIGHT` (sized the
/// same by the agent). Separate from it: the syscalls a TLS call makes use
/// that one.
#[map]
pub static TLS_CALLS: Array<TlsCall> = Array::with_max_entries(DEFAULT_MAX_INFLIGHT, 0);

/// Key of [`SSL_FDS`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// The socket fd behind each `SSL*` seen (LRU: `SSL_free` is not probed).
#[map]
pub static SSL_FDS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(MAX_SSL_FDS, 0);

/// Tail-call table of the TLS return probe (kprobe-type programs cannot
/// share the tracepoint one).
#[map]
pub static TLS_TAIL_PROGS: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// See `tracer_common::MAP_GO_TLS`. A plain hash: the agent removes a
/// process's entry when it exits or execs.
#[map]
pub static GO_TLS: HashMap<u32, GoTlsLayout> = HashMap::with_max_entries(MAX_GO_TLS, 0);

/// A goroutine of a process, keyed by its `g` pointer (R14 under Go's
/// register ABI), which stays the same when the goroutine moves to
/// another thread or its stack is moved (and is reused after it exits).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// A `crypto/tls.(*Conn).Read` in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoRead {
    /// The `[]byte` the plaintext is read into: data pointer and length
    /// (a returned count beyond it is not believed).
    pub buf: u64,
    pub len: u64,
    pub ts: u64,
    pub fd: u32,
    pub _pad: u32,
}

/// LRU: a goroutine that never returns from Read (its process killed)
/// cannot leak an entry for long; evictions show as `go_tls_read_lost`.
#[map]
pub static GO_TLS_READS: LruHashMap<GoKey, GoRead> =
    LruHashMap::with_max_entries(MAX_GO_TLS_READS, 0);

/// See `tracer_common::MAP_GO_CTX`: the request context id of each
/// goroutine that carries one.
#[map]
pub static GO_CTX: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(MAX_GO_CTX, 0);

/// See `tracer_common::MAP_GO_SERVER_CTX`. The value's `conn_id` names
/// the connection, so a reused fd never hands on its predecessor's.
#[map]
pub static GO_SERVER_CTX: LruHashMap<u64, ThreadCtx> =
    LruHashMap::with_max_entries(MAX_GO_INJECT, 0);

/// See `tracer_common::MAP_GO_TRACE` (`GoKey::g` holds the context id).
#[map]
pub static GO_TRACE: LruHashMap<GoKey, ThreadCtx> = LruHashMap::with_max_entries(MAX_GO_INJECT, 0);

/// See `tracer_common::MAP_GO_PENDING`.
#[map]
pub static GO_PENDING: LruHashMap<u64, ThreadCtx> = LruHashMap::with_max_entries(MAX_GO_INJECT, 0);

/// The last request a goroutine started serving (see
/// `probes::goroutines::start_serving`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoServed {
    pub conn_id: u64,
    /// The connection's event count then (HTTP/1; 0 for HTTP/2).
    pub seq: u32,
    pub stream: u32,
    pub ctx_id: u64,
}

/// Keyed like `GO_CTX`. LRU: an evicted entry only means a re-entered
/// serving site is taken for a new request (its calls then stay roots).
#[map]
pub static GO_SERVED: LruHashMap<GoKey, GoServed> = LruHashMap::with_max_entries(65_536, 0);

/// `runtime.newproc1`'s `callergp` argument, from its entry to its RETs
/// (it runs on the system stack, never switching goroutines: keyed by
/// thread).
#[map]
pub static GO_NEWPROC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// The last read-family syscall of a thread (outside TLS calls).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastRead {
    pub pid_tgid: u64,
    pub ts: u64,
    pub fd: u32,
    pub _pad: u32,
}

/// Indexed like [`TLS_CALLS`]. For TLS libraries that do their socket I/O
/// outside `SSL_read` (memory BIOs, as node does): the ciphertext a thread
/// read just before `SSL_read` came from the socket behind that `SSL*`.
#[map]
pub static LAST_READ: Array<LastRead> = Array::with_max_entries(DEFAULT_MAX_INFLIGHT, 0);

/// Where and when a process was forked.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkedFrom {
    pub parent: u32,
    pub _pad: u32,
    /// Kernel monotonic ns of the fork.
    pub ts: u64,
}

/// Child tgid -> its fork, from `sched_process_fork` (see
/// `probes/fds.rs`). LRU: exited children age out.
#[map]
pub static PARENTS: LruHashMap<u32, ForkedFrom> = LruHashMap::with_max_entries(MAX_PARENTS, 0);

/// A connection entry removed by `close`, and when.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ClosedConn {
    pub st: ConnState,
    pub ts: u64,
}

/// Accepted sockets closed before their process read them: a parent that
/// hands the socket to a child closes its own fd, often before the child
/// runs (see `probes/fds.rs`).
#[map]
pub static CLOSED: LruHashMap<u64, ClosedConn> = LruHashMap::with_max_entries(MAX_CLOSED, 0);
