//! Application protocols. Each one turns a connection's two byte streams
//! into neutral [`Record`]s (request side + response side + timing + the
//! ids chosen when the request started), behind the [`Protocol`] trait:
//! framing of each direction (with gaps), per-connection and per-direction
//! state, and stitching requests to responses (in order for HTTP/1; by
//! stream id for HTTP/2, by correlation id for Kafka).
//!
//! Parsers are pure functions of bytes: no aya, no I/O, so they are
//! unit-tested on split, truncated and malformed input.
pub mod http1;
pub mod http2;

use std::sync::Arc;

use tracer_common::{PROTO_HTTP1, PROTO_HTTP2};

pub use crate::trace::{ContextChooser, RequestStart};
use crate::{
    metadata::conn::ConnMeta,
    telemetry::Counters,
    trace::{ids::SpanIds, task::TaskId},
};

/// The protocols the agent parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolKind {
    Http1,
    Http2,
}

impl ProtocolKind {
    /// The parser for the kernel's classification of a connection
    /// (`tracer_common::PROTO_*`), if there is one.
    pub fn from_kernel(proto: u8) -> Option<Self> {
        match proto {
            PROTO_HTTP1 => Some(Self::Http1),
            PROTO_HTTP2 => Some(Self::Http2),
            _ => None,
        }
    }
}

/// Which half of an exchange a chunk of bytes belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// One captured syscall's bytes, on one side of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub side: Side,
    pub bytes: &'a [u8],
    /// Bytes that moved right after `bytes` but were not captured.
    pub gap: u64,
    /// Kernel monotonic ns of the syscall.
    pub ts: u64,
    /// Who made the syscall.
    pub task: TaskId,
    /// `bytes` start the syscall's data (which may come in several
    /// pieces, with gaps between them), or start where the kernel saw an
    /// HTTP/2 frame header: where a parser that lost its framing may
    /// look for it again.
    pub starts_syscall: bool,
}

/// What a request and its response were, protocol-neutrally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Http(HttpExchange),
    Grpc(GrpcCall),
}

/// An HTTP request and its response, whatever the wire version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpExchange {
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// `network.protocol.version`: "1.0", "1.1", "2".
    pub version: &'static str,
    /// Host header or `:authority`.
    pub host: Option<String>,
    pub user_agent: Option<String>,
    /// 0 when the response never came (HTTP/2 stream reset first).
    pub status: u16,
    /// HTTP/2: the stream was ended by RST_STREAM with this error code.
    pub reset: Option<u32>,
    /// HTTP/2: some header fields were unknown (HPACK entries from before
    /// the agent joined the connection), so method or path may be missing.
    pub headers_unknown: bool,
}

/// A gRPC call (unary or streaming): one HTTP/2 stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// `:path`, `/package.Service/Method`.
    pub path: Option<String>,
    pub authority: Option<String>,
    pub user_agent: Option<String>,
    pub http_status: Option<u16>,
    /// `grpc-status` from the trailers (or a trailers-only response).
    pub status: Option<u32>,
    /// The stream was ended by RST_STREAM with this error code.
    pub reset: Option<u32>,
    /// Some header fields were unknown (joined mid-connection).
    pub headers_unknown: bool,
}

/// A completed request/response pair.
#[derive(Debug, Clone)]
pub struct Record {
    pub conn: Arc<ConnMeta>,
    /// Who read (server) or wrote (client) the request.
    pub task: TaskId,
    /// Kernel monotonic ns of the request's first byte.
    pub start_ts: u64,
    /// Kernel monotonic ns of the response's last byte.
    pub end_ts: u64,
    /// The end could not be followed exactly (e.g. uncaptured chunked body).
    pub end_estimated: bool,
    /// Trace context chosen when the request started.
    pub ids: SpanIds,
    /// The HTTP/2 stream id (None for HTTP/1).
    pub stream: Option<u32>,
    pub message: Message,
}

/// What a protocol needs from its surroundings while it stitches.
pub struct Stitch<'a> {
    pub conn: &'a Arc<ConnMeta>,
    pub out: &'a mut Vec<Record>,
    pub counters: &'a Counters,
}

/// One connection's protocol state (both directions).
pub trait Protocol {
    /// Feeds one syscall's bytes; `ids` chooses the ids of each request
    /// that starts in them.
    fn on_chunk(&mut self, chunk: &Chunk<'_>, ids: &mut dyn ContextChooser, cx: &mut Stitch<'_>);
    /// Events of this connection were lost: neither direction can be
    /// trusted until it restarts at a message boundary.
    fn on_lost(&mut self, cx: &mut Stitch<'_>);
    /// The connection closed: complete what can be completed.
    fn on_close(&mut self, ts: u64, cx: &mut Stitch<'_>);
    /// Bytes held for partial messages.
    fn buffered(&self) -> usize;
    /// Drops partial messages (the agent-wide buffer budget is exceeded).
    fn shed(&mut self);
    /// The connection stopped speaking this protocol (an upgrade or a
    /// tunnel); the session takes over.
    fn switched(&self) -> bool;
    /// After [`Protocol::switched`]: the protocol the connection switched
    /// to, if the agent parses it, with what carries over.
    fn take_upgrade(&mut self) -> Option<Upgrade> {
        None
    }
}

/// A switch to a protocol the agent parses.
#[derive(Debug)]
pub enum Upgrade {
    /// `Upgrade: h2c` answered by 101: HTTP/2 follows, and the request
    /// that asked is its stream 1 (RFC 7540 §3.2).
    H2c(UpgradedRequest),
}

/// The HTTP/1 request an upgrade carries over.
#[derive(Debug)]
pub struct UpgradedRequest {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub start_ts: u64,
    pub task: TaskId,
    pub ids: SpanIds,
    /// Response-side bytes that followed the 101 in the same write (the
    /// server's first HTTP/2 frames), and the gap after them.
    pub leftover: Vec<u8>,
    pub leftover_gap: u64,
}

/// Helpers for unit tests of the protocol and connection layers.
#[cfg(test)]
pub mod test_support {
    use crate::trace::{ids::SpanIds, ContextChooser, RequestStart};

    /// Gives every request the same ids.
    pub struct FixedIds;

    impl ContextChooser for FixedIds {
        fn on_request(&mut self, _: &RequestStart<'_>) -> SpanIds {
            SpanIds {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: None,
                flags: 1,
                tracestate: None,
            }
        }
    }
}
