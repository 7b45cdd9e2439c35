//! Trace-context propagation: the kernel chooses the ids of a SERVER span
//! when its request is read, and of a CLIENT span when its request is
//! written (so they can be injected into the outgoing bytes before they
//! leave). Both decisions reach the agent as [`TraceCtxEvent`]s, ahead of
//! the data event they belong to.

/// Header bytes searched for trace headers, the end of the head, and the
/// body framing. A request head longer than this is never injected into.
pub const SCAN_MAX: usize = 1024;
/// Longest `tracestate` value carried from an inbound request to the
/// requests it causes (the W3C limit is 512; longer ones are not carried).
pub const TRACESTATE_MAX: usize = 256;

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
    /// SERVER: the connection of that data event. Injections: the
    /// socket's ports, local in bits 16..32 and remote in bits 0..16 (an
    /// `sk_msg` program has no fd to name the connection by; see
    /// [`unpack_inject_ports`]).
    pub conn_id: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Parent span id; all zero for none.
    pub parent_id: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<TraceCtxEvent>() == 56);

/// Packs an injected socket's ports into [`TraceCtxEvent::conn_id`].
pub const fn pack_inject_ports(local: u16, remote: u16) -> u64 {
    ((local as u64) << 16) | remote as u64
}

/// (local, remote) ports of an injection's [`TraceCtxEvent::conn_id`].
pub const fn unpack_inject_ports(p: u64) -> (u16, u16) {
    (((p >> 16) & 0xffff) as u16, (p & 0xffff) as u16)
}

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

/// The SERVER request a thread is serving, as the kernel saw it: read by
/// the `sk_msg` injector when the same thread writes a CLIENT request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadCtx {
    /// Connection the request arrived on (`ConnState::conn_id`).
    pub conn_id: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span id from an inbound `traceparent` (parsed here
    /// first; not used after the event is sent).
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// The thread read another request before answering this one (event
    /// loop, pipelining across connections): no CLIENT request it writes
    /// can be attributed, so none is linked.
    pub ambiguous: u8,
    pub _pad: [u8; 2],
    /// Bytes of `tracestate` (0: none).
    pub tracestate_len: u32,
    pub tracestate: [u8; TRACESTATE_MAX],
}

const _: () = assert!(core::mem::size_of::<ThreadCtx>() == 48 + TRACESTATE_MAX);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, explicit padding, integer fields only.
    unsafe impl aya::Pod for super::TraceCtxEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThreadCtx {}
}
