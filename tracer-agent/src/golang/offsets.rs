//! Struct field offsets the Go probes follow, by Go version.
//!
//! From DWARF when the binary has it ([`super::dwarf`]), else from
//! [`TABLE`]. Versions the table does not cover, in binaries without
//! DWARF, get no probes ("not visible"), never guessed offsets.
//!
//! How the table is made and checked: `tests/tests/golang.rs` builds a
//! small program with each Go toolchain the tests install (the oldest and
//! the newest supported), reads the offsets from its DWARF with
//! [`super::dwarf::tls_offsets`], and asserts they equal [`for_version`].
//! A new Go release gets a row (or a wider range) only after that test
//! passes with its toolchain.

use super::buildinfo::GoVersion;

/// The offsets of the path from a `*crypto/tls.Conn` to its socket fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsOffsets {
    /// `crypto/tls.Conn.conn` (a `net.Conn` interface).
    pub tls_conn: u16,
    /// `fun` of `runtime.itab` (`internal/abi.ITab.Fun` from Go 1.22).
    pub itab_fun0: u16,
    /// `net.TCPConn.conn` + `net.conn.fd`.
    pub tcpconn_fd: u16,
    /// `net.netFD.pfd` + `internal/poll.FD.Sysfd`.
    pub netfd_sysfd: u16,
}

/// The offsets net/http's request-context probes follow to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOffsets {
    /// `net/http.response.conn` (`*conn`).
    pub response_conn: u16,
    /// `net/http.conn.rwc` (`net.Conn`).
    pub conn_rwc: u16,
    /// `net/http.persistConn.conn` (`net.Conn`).
    pub pconn_conn: u16,
}

/// The offsets grpc-go's request-context probes follow (to a stream's id
/// and to the socket of its transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcOffsets {
    /// `internal/transport.Stream.id` (`uint32`).
    pub stream_id: u16,
    /// `internal/transport.Stream.ct` (`*http2Client`).
    pub stream_ct: u16,
    /// `internal/transport.http2Client.conn` (`net.Conn`).
    pub client_conn: u16,
    /// `internal/transport.http2Server.conn` (`net.Conn`).
    pub server_conn: u16,
    /// The `net.Conn` embedded in `internal/credentials.syscallConn`
    /// (its TLS wrapper).
    pub syscallconn_conn: u16,
}

/// The oldest Go the probes support: the register ABI (1.17) and the
/// pclntab layout [`super::pclntab`] reads (1.18).
pub const OLDEST: GoVersion = GoVersion {
    major: 1,
    minor: 18,
    patch: 0,
};

/// Rows of (first version, last version, offsets), inclusive. The last
/// version is a minor release: every patch release of it is covered.
const TABLE: &[(GoVersion, GoVersion, TlsOffsets)] = &[(
    OLDEST,
    GoVersion {
        major: 1,
        minor: 27,
        patch: u32::MAX,
    },
    // Unchanged from 1.18 to 1.27: `conn` is tls.Conn's first field;
    // TCPConn embeds `conn` whose first field is `fd`; netFD starts with
    // `pfd`, whose `fdMutex` (16 bytes) precedes `Sysfd`; an itab is two
    // pointers and a hash padded to 8 before `fun`.
    TlsOffsets {
        tls_conn: 0,
        itab_fun0: 24,
        tcpconn_fd: 0,
        netfd_sysfd: 16,
    },
)];

/// Rows like [`TABLE`]'s, for net/http (part of the standard library, so
/// keyed by Go version too).
const HTTP_TABLE: &[(GoVersion, GoVersion, HttpOffsets)] = &[(
    OLDEST,
    GoVersion {
        major: 1,
        minor: 27,
        patch: u32::MAX,
    },
    // `response` starts with `conn`; `conn` with `server` and
    // `cancelCtx` (a func value) before `rwc`; `persistConn` with `alt`
    // (an interface), `t` and the 56-byte `cacheKey` before `conn`.
    HttpOffsets {
        response_conn: 0,
        conn_rwc: 16,
        pconn_conn: 80,
    },
)];

/// Rows for grpc-go, keyed by its module version (`vMAJOR.MINOR.`
/// prefix, from the build info's dependency list). Its structs hold only
/// pointers, interfaces, strings and integers before these fields, whose
/// sizes do not change with the Go version. Checked like [`TABLE`]: a
/// test builds a grpc-go program (Debian's grpc-go sources) and compares
/// its DWARF with this row. A binary built without module information
/// (GOPATH mode) names no version: DWARF or nothing.
const GRPC_TABLE: &[(&str, GrpcOffsets)] = &[(
    "v1.33.",
    // `Stream` starts with `id`, then `st` (an interface) and `ct`;
    // `http2Client` has `lastRead`, `ctx`, `cancel`, `ctxDone`,
    // `userAgent` and `md` (72 bytes) before `conn`; `http2Server` has
    // `lastRead`, `ctx` and `done` (32 bytes) before it; `syscallConn`
    // embeds the `net.Conn` first.
    GrpcOffsets {
        stream_id: 0,
        stream_ct: 24,
        client_conn: 72,
        server_conn: 32,
        syscallconn_conn: 0,
    },
)];

/// The grpc-go table's offsets for module version `v` (`v1.33.3`).
pub fn grpc_for_version(v: &str) -> Option<GrpcOffsets> {
    GRPC_TABLE
        .iter()
        .find(|(prefix, _)| v.starts_with(prefix))
        .map(|(_, o)| *o)
}

/// The table's offsets for Go `v`, if it covers it.
pub fn for_version(v: GoVersion) -> Option<TlsOffsets> {
    TABLE
        .iter()
        .find(|(lo, hi, _)| *lo <= v && v <= *hi)
        .map(|(_, _, o)| *o)
}

/// The net/http table's offsets for Go `v`, if it covers it.
pub fn http_for_version(v: GoVersion) -> Option<HttpOffsets> {
    HTTP_TABLE
        .iter()
        .find(|(lo, hi, _)| *lo <= v && v <= *hi)
        .map(|(_, _, o)| *o)
}

/// The range the table covers, for messages.
pub fn supported_range() -> String {
    match (TABLE.first(), TABLE.last()) {
        (Some((lo, _, _)), Some((_, hi, _))) => {
            format!("go{}.{} to go{}.{}", lo.major, lo.minor, hi.major, hi.minor)
        }
        _ => "none".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> GoVersion {
        GoVersion::parse(s).expect("version")
    }

    #[test]
    fn covers_the_supported_range_and_nothing_else() {
        assert!(for_version(v("go1.17.13")).is_none());
        assert_eq!(for_version(v("go1.18")).map(|o| o.netfd_sysfd), Some(16));
        assert!(for_version(v("go1.21.13")).is_some());
        assert!(for_version(v("go1.27.3")).is_some());
        assert!(for_version(v("go1.28.0")).is_none());
        assert!(for_version(GoVersion {
            major: 2,
            minor: 0,
            patch: 0
        })
        .is_none());
        assert_eq!(supported_range(), "go1.18 to go1.27");
    }

    #[test]
    fn grpc_rows_match_by_minor_version_only() {
        assert_eq!(grpc_for_version("v1.33.3").map(|o| o.client_conn), Some(72));
        assert!(grpc_for_version("v1.33").is_none());
        assert!(grpc_for_version("v1.3.0").is_none());
        assert!(grpc_for_version("v1.60.1").is_none());
    }
}
