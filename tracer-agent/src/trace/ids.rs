//! Span identities: the ids a span is given, the ids the kernel chose for
//! some requests, and the generator of fresh ones.

use rand::{rngs::SmallRng, Rng, SeedableRng};

/// Ids chosen for one request's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags, kept from the remote parent (sampled by default).
    pub flags: u8,
    pub tracestate: Option<String>,
}

/// Ids the kernel chose for a request (context injection on): for a
/// SERVER request when it was read, for a CLIENT request when its
/// `traceparent` was injected. These are what went on the wire, so they win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
    /// The CLIENT request was made a child of the thread's SERVER span.
    pub linked: bool,
}

impl From<&tracer_common::TraceCtxEvent> for KernelIds {
    fn from(ev: &tracer_common::TraceCtxEvent) -> Self {
        Self {
            trace_id: ev.trace_id,
            span_id: ev.span_id,
            parent_span_id: (ev.parent_id != [0; 8]).then_some(ev.parent_id),
            flags: ev.flags,
            linked: ev.origin == tracer_common::CTX_LINKED,
        }
    }
}

/// Fresh random ids, never all zero (W3C: an all-zero id is invalid).
pub struct IdGenerator {
    rng: SmallRng,
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self {
            rng: SmallRng::from_entropy(),
        }
    }
}

impl IdGenerator {
    pub fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let id: [u8; 16] = self.rng.gen();
            if id != [0; 16] {
                return id;
            }
        }
    }

    pub fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id: [u8; 8] = self.rng.gen();
            if id != [0; 8] {
                return id;
            }
        }
    }

    /// A new sampled root with the given span id.
    pub fn root(&mut self, span_id: [u8; 8]) -> SpanIds {
        SpanIds {
            trace_id: self.trace_id(),
            span_id,
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        }
    }
}
