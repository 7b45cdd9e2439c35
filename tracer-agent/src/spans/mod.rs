//! The span model, protocol-neutral: ids, kind, name, times, status and
//! attributes. [`build`] turns a protocol's record into a span; the
//! semantic-convention attributes are mapped per protocol ([`http`]).
pub mod build;
pub mod clock;
pub mod http;
pub mod route;
pub mod rpc;

use std::sync::Arc;

pub use build::SpanBuilder;

use crate::{
    metadata::{process::Process, resource::Resource},
    trace::ids::SpanIds,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Error,
}

/// An attribute value. Constant and per-connection strings are shared
/// rather than allocated per span (allocation dominated the agent's
/// profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Str(String),
    Static(&'static str),
    Shared(Arc<str>),
    Int(i64),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Static(s) => Some(s),
            AttrValue::Shared(s) => Some(s),
            AttrValue::Int(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Span {
    /// Trace, span and parent ids, W3C trace flags (bit 0: sampled, kept
    /// from the remote parent) and `tracestate`.
    pub ids: SpanIds,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: StatusCode,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub process: Arc<Process>,
    /// Where the span comes from: service, process, host, pod.
    pub resource: Arc<Resource>,
    pub tid: u32,
    /// How a CLIENT span relates to what its thread was serving, for the
    /// trace-integrity checks.
    pub link: LocalLink,
}

/// A CLIENT span's in-process relation to a SERVER span on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalLink {
    /// None known (a SERVER span, a Go span, an application's context).
    None,
    /// Its parent is the SERVER span its thread was serving: that parent
    /// is expected to be exported too.
    Parent,
    /// A root made while its thread was serving a request: a second root
    /// on one thread, so a broken chain.
    Ambiguous,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Lowercase hex of an id, without going through `fmt`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}
