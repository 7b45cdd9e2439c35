//! The fields of a decoded header block that spans need: pseudo-headers,
//! a few regular headers, gRPC's status and the trace-context headers.
//! Everything else is dropped as it is decoded.

use super::hpack::Field;
use crate::propagation::HeaderLookup;

/// Longest value kept of any field.
const MAX_VALUE_LEN: usize = 1024;
/// Trace-context headers kept per block.
const MAX_TRACE_HEADERS: usize = 16;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub grpc_status: Option<u32>,
    pub trace: Vec<(String, String)>,
    /// Fields whose name was unknown (HPACK index from before a join).
    pub unknown: u32,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..v.len().min(MAX_VALUE_LEN)]).into_owned()
}

impl Fields {
    /// Takes one decoded field; `trace_names` are lower case.
    pub fn take(&mut self, f: Field<'_>, trace_names: &[String]) {
        let (Some(name), Some(value)) = (f.name, f.value) else {
            if f.name.is_none() {
                self.unknown += 1;
            }
            return;
        };
        match name {
            b":method" => self.method = Some(text(value)),
            b":path" => self.path = Some(text(value)),
            b":authority" => self.authority = Some(text(value)),
            // HTTP/1-style Host is allowed instead of :authority.
            b"host" if self.authority.is_none() => self.authority = Some(text(value)),
            b":status" => {
                self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            b"content-type" => self.content_type = Some(text(value)),
            b"user-agent" => self.user_agent = Some(text(value)),
            b"grpc-status" => {
                self.grpc_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            _ => {
                if self.trace.len() < MAX_TRACE_HEADERS {
                    // HPACK names are lower case on the wire (RFC 9113
                    // §8.2.1); compare exactly.
                    if let Some(n) = trace_names.iter().find(|n| n.as_bytes() == name) {
                        self.trace.push((n.clone(), text(value)));
                    }
                }
            }
        }
    }

    /// Whether a field of this (lower-case) name is kept: the others'
    /// values are not even decoded.
    pub fn wanted(name: &[u8], trace_names: &[String]) -> bool {
        matches!(
            name,
            b":method"
                | b":path"
                | b":authority"
                | b"host"
                | b":status"
                | b"content-type"
                | b"user-agent"
                | b"grpc-status"
        ) || trace_names.iter().any(|n| n.as_bytes() == name)
    }

    /// `content-type: application/grpc` or `application/grpc+proto`...
    pub fn is_grpc(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/grpc"))
    }
}

impl HeaderLookup for Fields {
    fn get(&self, lower_name: &str) -> Option<&str> {
        self.trace
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_str())
    }
}
