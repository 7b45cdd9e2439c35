//! What the agent tells the kernel about a Go process so that its
//! `crypto/tls` probes can find the socket behind a `*tls.Conn`.

/// Where the socket fd is inside a Go program's `crypto/tls.Conn`, and how
/// to tell that its `net.Conn` really is a `*net.TCPConn`. One per traced
/// Go process (in [`crate::MAP_GO_TLS`]): field offsets depend on the Go
/// version, and the function address on where the binary is loaded.
///
/// The path, from the `*tls.Conn` in RAX (Go register ABI):
/// `Conn.conn` (a `net.Conn` interface: itab pointer, then data pointer)
/// -> `*net.TCPConn` -> `conn.fd` (`*net.netFD`) -> `pfd.Sysfd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsLayout {
    /// Run-time address of `net.(*TCPConn).Close`: the first method slot
    /// of the itab of a `net.Conn` holding a `*net.TCPConn` (interface
    /// methods are sorted by name, and `Close` comes first). Anything
    /// else in `Conn.conn` (a wrapped or custom conn) is not followed.
    pub tcpconn_close: u64,
    /// Offset of `crypto/tls.Conn.conn`.
    pub tls_conn: u16,
    /// Offset of the itab's first method slot (`itab.fun[0]`).
    pub itab_fun0: u16,
    /// Offset of `net.conn.fd` inside `net.TCPConn`.
    pub tcpconn_fd: u16,
    /// Offset of `poll.FD.Sysfd` inside `net.netFD` (through `pfd`).
    pub netfd_sysfd: u16,
    /// Run-time address of `crypto/tls.(*Conn).Close`: the first method
    /// slot of a `net.Conn` holding a `*tls.Conn` (HTTPS connections of
    /// net/http), whose socket is then followed as above.
    pub tlsconn_close: u64,
    /// Run-time address of `net/http.(*response).Header`: the first method
    /// slot of a `http.ResponseWriter` holding net/http's HTTP/1
    /// `*response` (0: goroutine links off for the process).
    pub response_header: u64,
    /// Offset of `net/http.response.conn` (`*http.conn`).
    pub response_conn: u16,
    /// Offset of `net/http.conn.rwc` (`net.Conn`).
    pub conn_rwc: u16,
    /// Offset of `net/http.persistConn.conn` (`net.Conn`).
    pub pconn_conn: u16,
    /// Non-zero: goroutine links are on for the process (its goroutine
    /// creation is probed, and at least one serving or client site).
    pub links: u16,
    /// Run-time address of grpc-go's
    /// `internal/transport.(*http2Server).Close`: the first method slot of
    /// a `transport.ServerTransport` holding an `*http2Server` (0: gRPC
    /// serving not followed).
    pub grpc_server_close: u64,
    /// Offset of `transport.Stream.id` (`uint32`).
    pub grpc_stream_id: u16,
    /// Offset of `transport.Stream.ct` (`*http2Client`).
    pub grpc_stream_ct: u16,
    /// Offset of `transport.http2Client.conn` (`net.Conn`).
    pub grpc_client_conn: u16,
    /// Offset of `transport.http2Server.conn` (`net.Conn`).
    pub grpc_server_conn: u16,
    /// Run-time address of grpc-go's
    /// `internal/credentials.(*syscallConn).Close`: the first method slot
    /// of a `net.Conn` holding the wrapper grpc-go's TLS credentials put
    /// around a `*tls.Conn` (0: not followed).
    pub grpc_syscallconn_close: u64,
    /// Offset of the `net.Conn` embedded in `syscallConn` (the `*tls.Conn`).
    pub grpc_syscallconn_conn: u16,
    pub _pad2: [u16; 3],
}

const _: () = assert!(core::mem::size_of::<GoTlsLayout>() == 72);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, no padding, integer fields only.
    unsafe impl aya::Pod for super::GoTlsLayout {}
}
