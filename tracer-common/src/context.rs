//! Trace-context propagation: the kernel chooses the ids of a SERVER span
//! when its request is read, and of a CLIENT span when its request is
//! written (so they can be injected into the outgoing bytes before they
//! leave). Both decisions reach the agent as [`TraceCtxEvent`]s, ahead of
//! the data event they belong to.

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
/// Tail-call table of the TLS return probe.
pub const MAP_TLS_TAIL_PROGS: &str = "TLS_TAIL_PROGS";
/// The `sk_msg` injector.
pub const PROG_INJECT: &str = "tracer_inject";
/// The cgroup `sock_ops` program that fills [`MAP_SOCKS`].
pub const PROG_SOCK_OPS: &str = "tracer_sock_ops";

/// Header bytes searched for trace headers, the end of the head, and the
/// body framing. A request head longer than this is never injected into.
pub const SCAN_MAX: usize = 1024;
/// Longest `tracestate` value carried from an inbound request to the
/// requests it causes (the W3C limit is 512; longer ones are not carried).
pub const TRACESTATE_MAX: usize = 256;
/// Sizes of the per-thread and per-socket maps.
pub const MAX_THREAD_CTX: u32 = 16_384;
pub const MAX_SOCK_STATE: u32 = 65_536;

/// The kernel chose the ids of the SERVER span whose request starts the
/// data event (`conn_id`, `seq`) that follows.
pub const EVENT_SERVER_CTX: u8 = 5;
/// The kernel injected a `traceparent` into the next request the thread
/// `tid` writes (the data event follows on the same thread).
pub const EVENT_INJECTED: u8 = 6;

/// `TraceCtxEvent::origin` of a SERVER context: from an inbound trace
/// header (W3C, B3 or Jaeger, in `Config::propagators` order), or a new
/// trace.
pub const CTX_FROM_TRACEPARENT: u8 = 1;
pub const CTX_NEW_TRACE: u8 = 2;
/// `TraceCtxEvent::origin` of an injection: child of the SERVER span the
/// thread is serving, or the root of a new trace.
pub const CTX_LINKED: u8 = 3;
pub const CTX_ROOT: u8 = 4;

/// Ids chosen in the kernel for one span.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCtxEvent {
    pub kind: u8,
    /// W3C trace flags.
    pub flags: u8,
    /// One of the `CTX_*` values.
    pub origin: u8,
    pub _pad: u8,
    pub tgid: u32,
    pub tid: u32,
    /// Sequence number of the data event this context belongs to (server).
    pub seq: u32,
    /// Connection of that data event (server); 0 for injections.
    pub conn_id: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Parent span id; all zero for none.
    pub parent_id: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<TraceCtxEvent>() == 56);

/// Identity of a TCP socket as both `sock_ops` and `sk_msg` see it
/// (`bpf_sock_ops` and `sk_msg_md` share the conventions: remote port in
/// network byte order, local port in host byte order, IPv4 in `*_ip4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockKey {
    pub family: u32,
    pub local_port: u32,
    pub remote_port: u32,
    pub _pad: u32,
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<SockKey>() == 48);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, explicit padding, integer fields only.
    unsafe impl aya::Pod for super::TraceCtxEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
}
