//! Names and default sizes of every map and program the kernel object
//! declares, so the agent finds them by the same constants (aya's
//! `EbpfLoader::map_max_entries` resizes some of them at load time).

/// Single-entry array map holding a [`crate::Config`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-connection state, keyed by [`crate::conn_key`]. LRU so that leaked
/// entries (a process killed mid-connection) age out instead of filling it.
pub const MAP_CONNS: &str = "CONNS";
/// Syscall arguments saved at `sys_enter_*`, consumed at `sys_exit_*`: an
/// array indexed by `tid & inflight_mask` (one store per syscall instead
/// of a hash update, which cost more than the rest of the probe).
pub const MAP_INFLIGHT: &str = "INFLIGHT";
/// Event ring buffer (kernel -> agent).
pub const MAP_EVENTS: &str = "EVENTS";
/// Scratch space for building data events, one slot per CPU (the BPF stack
/// is 512 B).
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Per-CPU counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";
/// Set of tgids to trace when `--pid` is given.
pub const MAP_PID_FILTER: &str = "PID_FILTER";
/// cgroup v2 ids (`bpf_get_current_cgroup_id`) listed by the agent's
/// Kubernetes selection: the only ones traced, or the ones not traced,
/// as [`crate::Config::filter_cgroups`] says.
pub const MAP_CGROUP_FILTER: &str = "CGROUP_FILTER";
/// Size of [`MAP_CGROUP_FILTER`]: a node's container cgroups (250 pods of
/// a few containers each, with room to spare).
pub const MAX_CGROUP_FILTER: u32 = 8192;
/// TLS library calls in progress, indexed like [`MAP_INFLIGHT`].
pub const MAP_TLS_CALLS: &str = "TLS_CALLS";
/// Each thread's last read outside TLS calls, indexed like [`MAP_INFLIGHT`].
pub const MAP_LAST_READ: &str = "LAST_READ";
/// Socket fd of each `SSL*` seen, keyed by (tgid, `SSL*`).
pub const MAP_SSL_FDS: &str = "SSL_FDS";
/// Size of [`MAP_SSL_FDS`].
pub const MAX_SSL_FDS: u32 = 65_536;

/// Default size of [`MAP_CONNS`]; the agent can change it at load time.
pub const DEFAULT_MAX_CONNS: u32 = 65_536;
/// Compiled-in size of [`MAP_INFLIGHT`]; the agent sizes it to the next
/// power of two of `kernel.pid_max` (capped by [`MAX_INFLIGHT_SLOTS`]) so
/// that, below the cap, no two threads share a slot.
pub const DEFAULT_MAX_INFLIGHT: u32 = 32_768;
/// Upper bound of [`MAP_INFLIGHT`] (48 B a slot: 12 MiB).
pub const MAX_INFLIGHT_SLOTS: u32 = 1 << 18;
/// Default ring buffer size in bytes (power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// Compiled-in size of [`MAP_SCRATCH`]; the agent resizes it to the number
/// of possible CPUs.
pub const DEFAULT_SCRATCH_SLOTS: u32 = 256;
/// Size of [`MAP_PID_FILTER`].
pub const MAX_PID_FILTER: u32 = 1024;

/// Client TCP sockets (added by the cgroup `sock_ops` program when an
/// active connection is established) whose sends run the `sk_msg` injector.
pub const MAP_SOCKS: &str = "SOCKS";
/// Per-socket framing state of the injector, keyed by [`SockKey`].
pub const MAP_SOCK_STATE: &str = "SOCK_STATE";
/// Per-thread SERVER context (keyed by pid_tgid): the request the thread
/// is serving, so a CLIENT request it writes can be made its child.
pub const MAP_THREAD_CTX: &str = "THREAD_CTX";
/// Tail-call table of the capture path (index [`TAIL_SERVER_CTX`]).
pub const MAP_TAIL_PROGS: &str = "TAIL_PROGS";
/// Per-CPU scratch of the injector.
pub const MAP_INJECT_SCRATCH: &str = "INJECT_SCRATCH";

/// Index in [`MAP_TAIL_PROGS`] of the program that reads an inbound
/// request's trace context.
pub const TAIL_SERVER_CTX: u32 = 0;
/// Name of that program in the object.
pub const PROG_SERVER_CTX: &str = "tracer_server_ctx";
/// The same program for TLS plaintext (kprobe type), in
/// [`MAP_TLS_TAIL_PROGS`].
pub const PROG_TLS_SERVER_CTX: &str = "tracer_tls_server_ctx";
/// Index in [`MAP_TAIL_PROGS`] (and [`MAP_TLS_TAIL_PROGS`]) of the HTTP/2
/// frame walker.
pub const TAIL_H2_WALK: u32 = 1;
/// The HTTP/2 frame walker (tracepoint type) and its kprobe-type twin for
/// TLS plaintext. Both need `bpf_loop` (5.17); without them HTTP/2 is
/// copied like HTTP/1, up to the capture cap.
pub const PROG_H2_WALK: &str = "tracer_h2_walk";
pub const PROG_TLS_H2_WALK: &str = "tracer_tls_h2_walk";
/// Per-connection HTTP/2 framing state of the walker (LRU, keyed like
/// [`MAP_CONNS`]).
pub const MAP_H2_STATE: &str = "H2_STATE";
/// Size of [`MAP_H2_STATE`].
pub const MAX_H2_STATE: u32 = 65_536;
/// Steps (frame headers, frame pieces, iovec entries) the walker takes per
/// syscall; past them the rest of the syscall is a gap and the framing is
/// found again at a later syscall.
pub const H2_WALK_STEPS: u32 = 4096;
/// iovec entries the walker follows per syscall (`UIO_MAXIOV`).
pub const H2_WALK_IOV: u64 = 1024;
/// `SegmentHeader::flags`: the segment starts at a frame header.
pub const SEG_FRAME_START: u16 = 1;

/// Tail-call table of the TLS return probe.
pub const MAP_TLS_TAIL_PROGS: &str = "TLS_TAIL_PROGS";
/// The `sk_msg` injector.
pub const PROG_INJECT: &str = "tracer_inject";
/// The cgroup `sock_ops` program that fills [`MAP_SOCKS`].
pub const PROG_SOCK_OPS: &str = "tracer_sock_ops";
/// Processes whose threads must not key parent links (tgid -> one of
/// [`NO_LINK_PENDING`], [`NO_LINK_RUNTIME`]): the kernel keeps no SERVER
/// context per thread for them, so the injector gives their requests root
/// contexts.
pub const MAP_NO_THREAD_LINK: &str = "NO_THREAD_LINK";
/// Size of [`MAP_NO_THREAD_LINK`] (entries live as long as the process).
pub const MAX_NO_THREAD_LINK: u32 = 65_536;

/// The [`crate::GoTlsLayout`] of each Go process whose `crypto/tls` is
/// probed, keyed by tgid (set by the agent when it attaches, removed when
/// the process exits or execs another program).
pub const MAP_GO_TLS: &str = "GO_TLS";
/// Size of [`MAP_GO_TLS`].
pub const MAX_GO_TLS: u32 = 16_384;
/// `crypto/tls.(*Conn).Read` calls in progress, keyed by (tgid, goroutine):
/// a Read that parks resumes on another thread, so not by thread.
pub const MAP_GO_TLS_READS: &str = "GO_TLS_READS";
/// Size of [`MAP_GO_TLS_READS`] (LRU).
pub const MAX_GO_TLS_READS: u32 = 65_536;
/// The request context each goroutine carries, keyed by (tgid, g): set
/// where net/http starts serving a request, inherited at goroutine
/// creation (`runtime.newproc1`), overwritten when a `g` is reused.
pub const MAP_GO_CTX: &str = "GO_CTX";
/// Size of [`MAP_GO_CTX`] (LRU: goroutine exit is not probed).
pub const MAX_GO_CTX: u32 = 262_144;
/// Go SERVER contexts chosen in the kernel (injection on), keyed by the
/// connection (`conn_key`) until net/http starts serving its request.
pub const MAP_GO_SERVER_CTX: &str = "GO_SERVER_CTX";
/// The SERVER context of each goroutine context id, keyed by (tgid,
/// ctx_id) (injection on).
pub const MAP_GO_TRACE: &str = "GO_TRACE";
/// The context the next request written on a Go client socket is for,
/// keyed by `conn_key` (injection on).
pub const MAP_GO_PENDING: &str = "GO_PENDING";
/// Size of each of the three Go injection maps (LRU; an evicted entry
/// makes the request a root, never another request's child). Shrunk to
/// one entry when injection is off.
pub const MAX_GO_INJECT: u32 = 8_192;
/// Set by the exec hook: a new program the agent has not classified yet.
pub const NO_LINK_PENDING: u8 = 1;
/// Set by the agent: the runtime runs many requests on each OS thread in
/// turn (Go).
pub const NO_LINK_RUNTIME: u8 = 2;
/// Size of [`MAP_THREAD_CTX`].
pub const MAX_THREAD_CTX: u32 = 16_384;
/// Size of [`MAP_SOCK_STATE`] (and of [`MAP_SOCKS`]).
pub const MAX_SOCK_STATE: u32 = 65_536;
/// Parent of each process forked by a traced one (child tgid -> parent
/// tgid), so a child's `dup2` of an inherited socket finds its connection.
pub const MAP_PARENTS: &str = "PARENTS";
/// Size of [`MAP_PARENTS`] (LRU).
pub const MAX_PARENTS: u32 = 16_384;
/// Accepted sockets a process closed before reading them (handed to a
/// child), keyed like [`MAP_CONNS`], with when they were closed.
pub const MAP_CLOSED: &str = "CLOSED";
/// Size of [`MAP_CLOSED`] (LRU).
pub const MAX_CLOSED: u32 = 4096;
