//! In-kernel protocol classification from the first bytes of a connection.
//!
//! This is what keeps overhead low: a connection that is clearly not HTTP
//! stops being copied after its first payload. Only the method token (or the
//! status-line / HTTP/2 preface prefix) is checked; the agent parses for real.
use tracer_common::{HTTP1_METHOD_PREFIXES, HTTP1_RESPONSE_PREFIX, PROTO_HTTP1, PROTO_HTTP2};

/// What the first bytes looked like.
pub struct Class {
    pub proto: u8,
    /// A request (or the HTTP/2 client preface) rather than a response.
    pub is_request: bool,
}

#[inline(always)]
fn starts_with(b: &[u8; 8], pat: &[u8]) -> bool {
    let mut i = 0;
    while i < pat.len() && i < 8 {
        if b[i] != pat[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Classifies the first 8 bytes of a payload.
#[inline(always)]
pub fn classify(b: &[u8; 8]) -> Option<Class> {
    if starts_with(b, HTTP1_RESPONSE_PREFIX) {
        return Some(Class {
            proto: PROTO_HTTP1,
            is_request: false,
        });
    }
    if starts_with(b, b"PRI * HT") {
        return Some(Class {
            proto: PROTO_HTTP2,
            is_request: true,
        });
    }
    let mut i = 0;
    while i < HTTP1_METHOD_PREFIXES.len() {
        if starts_with(b, HTTP1_METHOD_PREFIXES[i]) {
            return Some(Class {
                proto: PROTO_HTTP1,
                is_request: true,
            });
        }
        i += 1;
    }
    None
}
