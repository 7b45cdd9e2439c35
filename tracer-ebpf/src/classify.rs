//! In-kernel protocol classification from the first bytes of a connection.
//!
//! This is what keeps overhead low: a connection that is clearly not HTTP
//! stops being copied after its first payload. Only the method token (or the
//! status-line / HTTP/2 preface prefix) is checked; the agent parses for real.
use tracer_common::{HTTP1_METHOD_PREFIXES, HTTP1_RESPONSE_PREFIX, PROTO_HTTP1, PROTO_HTTP2};

/// Bytes looked at: enough for an HTTP/2 frame header and the first bytes
/// of its header block.
pub const PEEK: usize = 16;

/// What the first bytes looked like.
pub struct Class {
    pub proto: u8,
    /// A request (or the HTTP/2 client preface) rather than a response.
    pub is_request: bool,
}

#[inline(always)]
fn starts_with(b: &[u8; PEEK], pat: &[u8]) -> bool {
    let mut i = 0;
    while i < pat.len() && i < 8 {
        if b[i] != pat[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// HTTP/2 HEADERS flags: END_STREAM, END_HEADERS, PADDED, PRIORITY.
const H2_HEADERS_FLAGS: u8 = 0x01 | 0x04 | 0x08 | 0x20;

/// An HTTP/2 HEADERS frame in the middle of a connection the agent joined
/// (RFC 9113 §6.2): type 1, only its flags and END_HEADERS, an odd
/// stream, a length of at most the default frame size. Whether it is a request or a
/// response comes from its first field: pseudo-headers come first
/// (§8.3), and HPACK encodes the static `:authority`..`:scheme` entries
/// as indexes 1-7 and `:status` as 8-14 (RFC 7541 Appendix A), as an
/// indexed field (`1xxxxxxx`) or a literal's name (`01xxxxxx`,
/// `0000xxxx`, `0001xxxx`). Anything else (a dynamic index first) is
/// left for a later frame.
#[inline(always)]
fn h2_headers_frame(b: &[u8; PEEK], len: u64) -> Option<bool> {
    let flen = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    if b[3] != 1 || b[4] & !H2_HEADERS_FLAGS != 0 || flen == 0 || flen > 16_384 {
        return None;
    }
    let stream = u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]);
    // A client-initiated (odd) stream and a whole header block
    // (END_HEADERS): what a request or its response looks like, and
    // fewer chances for file bytes to pass (reads of any fd come here).
    if stream & 1 == 0 || b[4] & 0x04 == 0 || len < PEEK as u64 {
        return None;
    }
    // First header-block byte: after the pad length and priority fields.
    let mut at = 9usize;
    if b[4] & 0x08 != 0 {
        at += 1;
    }
    if b[4] & 0x20 != 0 {
        at += 5;
    }
    let first = b[at & (PEEK - 1)];
    let index = if first & 0x80 != 0 {
        first & 0x7f
    } else if first & 0xc0 == 0x40 {
        first & 0x3f
    } else if first & 0xe0 == 0 {
        first & 0x0f
    } else {
        return None;
    };
    match index {
        1..=7 => Some(true),
        8..=14 => Some(false),
        _ => None,
    }
}

/// A SETTINGS frame (§6.5): type 4 on stream 0, whole 6-byte entries,
/// no ACK. An HTTP/2 server's first bytes (its preface) are one, often
/// before it has read the client's.
#[inline(always)]
fn h2_settings_frame(b: &[u8; PEEK]) -> bool {
    let flen = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    b[3] == 4 && b[4] == 0 && flen % 6 == 0 && flen <= 96 && b[5] | b[6] | b[7] | b[8] == 0
}

/// Classifies the first bytes of a payload (`len` of them were moved;
/// fewer than [`PEEK`] read are zero). `tracked`: the connection was
/// seen at accept/connect, so its role is known and a SETTINGS frame
/// (which either side may send) is enough.
#[inline(always)]
pub fn classify(b: &[u8; PEEK], len: u64, tracked: bool) -> Option<Class> {
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
    if tracked && len >= 9 && h2_settings_frame(b) {
        return Some(Class {
            proto: PROTO_HTTP2,
            is_request: false,
        });
    }
    if len >= PEEK as u64 {
        if let Some(is_request) = h2_headers_frame(b, len) {
            return Some(Class {
                proto: PROTO_HTTP2,
                is_request,
            });
        }
    }
    None
}
