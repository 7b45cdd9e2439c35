//! Events written by the kernel programs into the ring buffer.
//!
//! Layout rule: the first byte of every event is its `kind`; the agent checks
//! the length of the record against the kind's size before reading a field.

/// Hard upper bound of payload bytes copied per syscall. A power of two: the
/// kernel programs mask offsets with `MAX_CAPTURE - 1` to satisfy the
/// verifier. The runtime cap (`--max-capture-bytes`) is at most this.
pub const MAX_CAPTURE: usize = 16 * 1024;
/// Default runtime cap: covers ordinary request and response headers.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// iovec segments inspected per readv/writev/recvmsg/sendmsg call.
pub const MAX_IOV_SEGMENTS: u32 = 8;

pub const EVENT_CONN_OPEN: u8 = 1;
pub const EVENT_DATA: u8 = 2;
pub const EVENT_CONN_CLOSE: u8 = 3;
pub const EVENT_PROC_EXIT: u8 = 4;
/// A process called `execve` (layout [`ProcEvent`]): its libraries may
/// need TLS probes.
pub const EVENT_EXEC: u8 = 7;
/// A process's `dlopen` returned (layout [`ProcEvent`]): it may have
/// loaded a TLS library.
pub const EVENT_DLOPEN: u8 = 8;
/// A socket's first bytes were a TLS handshake (layout [`TlsSeenEvent`]);
/// the agent checks whether that process's TLS library is probed.
pub const EVENT_TLS_SEEN: u8 = 9;
/// A Go goroutine's request context met a connection (layout
/// [`GoTaskEvent`]): the agent links by it instead of by thread.
pub const EVENT_GO_TASK: u8 = 10;

/// [`GoTaskEvent::role`]: net/http began serving the request just read
/// on `fd`, in a goroutine that now carries context `ctx_id`.
pub const GO_TASK_SERVE: u8 = 1;
/// [`GoTaskEvent::role`]: the next request written on client connection
/// `fd` is made on behalf of context `ctx_id` (net/http's transport took
/// it from a goroutine carrying that context).
pub const GO_TASK_CLIENT: u8 = 2;

/// Bytes read by the traced process (it received them).
pub const DIR_INGRESS: u8 = 0;
/// Bytes written by the traced process (it sent them).
pub const DIR_EGRESS: u8 = 1;

/// The syscall moved more bytes than were captured; the rest is a gap.
pub const DATA_FLAG_TRUNCATED: u8 = 1;
/// Nothing was captured on purpose (sendfile): `total_len` bytes are a gap.
pub const DATA_FLAG_GAP: u8 = 2;

/// The payload is a list of segments of the syscall's data, each a
/// [`SegmentHeader`] and its bytes; what no segment covers was not
/// captured. The kernel sends HTTP/2 this way: every frame header and
/// non-DATA frame whole, DATA payloads as gaps.
pub const DATA_FLAG_SEGMENTS: u8 = 4;

/// Before each segment's bytes (with [`DATA_FLAG_SEGMENTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment's first byte in the syscall's data.
    pub offset: u32,
    pub len: u16,
    /// `SEG_*` flags.
    pub flags: u16,
}

/// Which syscall produced a data event (diagnostics only).
pub const SRC_READ: u8 = 1;
pub const SRC_WRITE: u8 = 2;
pub const SRC_READV: u8 = 3;
pub const SRC_WRITEV: u8 = 4;
pub const SRC_RECVFROM: u8 = 5;
pub const SRC_SENDTO: u8 = 6;
pub const SRC_RECVMSG: u8 = 7;
pub const SRC_SENDMSG: u8 = 8;
pub const SRC_SENDFILE: u8 = 9;
/// Plaintext passed to `SSL_write`/`SSL_write_ex` (uprobe).
pub const SRC_SSL_WRITE: u8 = 10;
/// Plaintext returned by `SSL_read`/`SSL_read_ex` (uretprobe).
pub const SRC_SSL_READ: u8 = 11;

/// A connection was classified as a protocol we parse; sent once, before its
/// first data event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOpenEvent {
    pub kind: u8,
    pub role: u8,
    pub origin: u8,
    pub family: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub open_ts: u64,
    pub raddr: [u8; 16],
    pub rport: u16,
    pub proto: u8,
    /// Non-zero: the payload comes from a TLS library (plaintext).
    pub tls: u8,
    pub _pad: [u8; 4],
    pub comm: [u8; 16],
}

/// Header of a data event; `captured_len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u8,
    pub direction: u8,
    pub source: u8,
    pub flags: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    /// Kernel monotonic ns: syscall entry for writes, exit for reads.
    pub ts: u64,
    /// Bytes the syscall actually moved.
    pub total_len: u32,
    /// Bytes of payload that follow this header (<= total_len, <= MAX_CAPTURE).
    pub captured_len: u32,
    /// Per-connection sequence number of this data event.
    pub seq: u32,
    pub _pad: u32,
}

/// A tracked connection's fd was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCloseEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub ts: u64,
}

/// A process-level event: [`EVENT_PROC_EXIT`] (the thread-group leader
/// exited: all of its state can go), [`EVENT_EXEC`], [`EVENT_DLOPEN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub tgid: u32,
    pub ts: u64,
}

/// A socket's first bytes were a TLS handshake ([`EVENT_TLS_SEEN`]); the
/// command name says who, should the process be gone by the time the
/// agent looks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSeenEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub tgid: u32,
    pub comm: [u8; 16],
}

/// See [`EVENT_GO_TASK`]. `ctx_id` names a SERVER request of the process:
/// chosen by the kernel when net/http starts serving it, inherited by the
/// goroutines its goroutine starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTaskEvent {
    pub kind: u8,
    pub role: u8,
    pub _pad: [u8; 2],
    pub tgid: u32,
    pub fd: u32,
    /// HTTP/2 stream id of the request (gRPC); 0 for HTTP/1, where the
    /// connection carries one request at a time.
    pub stream: u32,
    pub ctx_id: u64,
    pub ts: u64,
}

/// Per-CPU scratch value used to assemble a data event: the header, then room
/// for two capture caps so that `offset < MAX_CAPTURE` plus
/// `len <= MAX_CAPTURE` is provably in bounds for the verifier.
#[repr(C)]
pub struct DataScratch {
    pub header: DataHeader,
    pub data: [u8; 2 * MAX_CAPTURE],
}

const _: () = assert!(core::mem::size_of::<ConnOpenEvent>() == 72);
const _: () = assert!(core::mem::size_of::<DataHeader>() == 48);
const _: () = assert!(core::mem::size_of::<ConnCloseEvent>() == 32);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 16);
const _: () = assert!(core::mem::size_of::<TlsSeenEvent>() == 24);
const _: () = assert!(core::mem::size_of::<GoTaskEvent>() == 32);
const _: () = assert!(core::mem::size_of::<SegmentHeader>() == 8);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());
const _: () = assert!(DEFAULT_CAPTURE as usize <= MAX_CAPTURE);
