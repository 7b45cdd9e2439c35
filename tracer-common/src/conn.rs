//! Per-connection state kept by the kernel programs in [`crate::MAP_CONNS`].

/// The connection was accepted: this process is the server.
pub const ROLE_SERVER: u8 = 1;
/// The connection was connected: this process is the client.
pub const ROLE_CLIENT: u8 = 2;

/// Not classified yet; payload is inspected but not copied.
pub const PROTO_UNKNOWN: u8 = 0;
/// HTTP/1.x: payload is copied to the agent.
pub const PROTO_HTTP1: u8 = 1;
/// HTTP/2 (prior knowledge or upgraded): payload is copied to the agent.
pub const PROTO_HTTP2: u8 = 2;
/// Not a protocol we parse (or vetoed by the agent): nothing is copied.
pub const PROTO_IGNORED: u8 = 0xff;

/// `ConnState::tls`: a TLS library call was seen on the socket (its
/// syscall bytes are ciphertext).
pub const TLS_SOCKET: u8 = 1;
/// `ConnState::tls`: the TLS probes' plaintext has been classified
/// (`proto` describes it).
pub const TLS_PLAINTEXT: u8 = 2;

/// Seen at `accept`/`accept4`.
pub const ORIGIN_ACCEPT: u8 = 1;
/// Seen at `connect`.
pub const ORIGIN_CONNECT: u8 = 2;
/// Existed before the agent (or was inherited): role inferred from the first
/// bytes (a request read means server side, a request written client side).
pub const ORIGIN_INFERRED: u8 = 3;

/// Unclassified reads/writes on a known socket before it is given up on
/// (e.g. a client that reads one byte at a time before sending a request).
pub const MAX_CLASSIFY_ATTEMPTS: u8 = 8;

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub const FAMILY_INET: u8 = 2;
pub const FAMILY_INET6: u8 = 10;

/// Request-line prefixes (method and space) that start an HTTP/1 request.
/// The kernel classifies with them and the agent resynchronises with them,
/// so both agree on what a message start looks like.
pub const HTTP1_METHOD_PREFIXES: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];
/// Status-line prefix of an HTTP/1 response.
pub const HTTP1_RESPONSE_PREFIX: &[u8] = b"HTTP/1.";

/// Key of [`crate::MAP_CONNS`]: the tgid in the high half, the fd in the low.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Value of [`crate::MAP_CONNS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// Unique per connection (kernel monotonic ns at creation), so the agent
    /// can tell a reused fd from the connection it replaced.
    pub conn_id: u64,
    /// Kernel monotonic ns when the connection was seen first.
    pub open_ts: u64,
    /// Remote address as captured at accept/connect (IPv4 in the first 4 bytes).
    pub raddr: [u8; 16],
    /// Remote port, host byte order.
    pub rport: u16,
    pub family: u8,
    pub role: u8,
    pub proto: u8,
    pub origin: u8,
    /// Classification attempts so far (see [`MAX_CLASSIFY_ATTEMPTS`]).
    pub attempts: u8,
    /// Non-zero once a TLS library call was seen on this socket: its
    /// syscall bytes are ciphertext (never copied); payload comes from the
    /// TLS probes and `proto` describes the plaintext.
    pub tls: u8,
    /// Data events emitted for this connection, so the agent can detect a
    /// lost event (ring buffer full) and resynchronise its parser.
    pub seq: u32,
    pub _pad2: u32,
}

const _: () = assert!(core::mem::size_of::<ConnState>() == 48);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `ConnState` is `repr(C)` with explicit padding and integer fields.
    unsafe impl aya::Pod for super::ConnState {}
}
