//! HTTP semantic conventions (OTel `http.*`, `url.*`, `server.*`,
//! `client.*`, `network.*`): the name, attributes and error status of a
//! span for one HTTP exchange, whatever its wire version.

use std::net::SocketAddr;

use super::{route, AttrValue, SpanKind};
use crate::{metadata::conn::ConnMeta, protocols::HttpExchange};

/// Methods kept as-is in `http.request.method`; anything else is `_OTHER`
/// (semantic conventions, to bound cardinality).
const KNOWN_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Splits a Host header into name and port.
fn split_host(host: &str) -> (String, Option<u16>) {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr.to_owned(), port);
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().ok()),
        _ => (host.to_owned(), None),
    }
}

/// What the HTTP mapping gives a span.
pub struct HttpSpan {
    pub name: String,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub error: bool,
}

/// `server.*` (the logical server: the Host header or `:authority` when
/// present, else the socket's server end), `client.*` and
/// `network.peer.*`; shared by every protocol over HTTP.
pub fn push_endpoints(
    attrs: &mut Vec<(&'static str, AttrValue)>,
    host: Option<&str>,
    conn: &ConnMeta,
    kind: SpanKind,
) {
    // server.* is the logical server: the Host header when present, else
    // the socket's server end (local for SERVER, peer for CLIENT).
    let server_sock: Option<SocketAddr> = match kind {
        SpanKind::Server => conn.local,
        SpanKind::Client => conn.peer,
    };
    let (server_addr, server_port) = match host {
        Some(h) if !h.is_empty() => {
            let (name, port) = split_host(h);
            (Some(name), port.or(server_sock.map(|s| s.port())))
        }
        _ => (
            server_sock.map(|s| s.ip().to_string()),
            server_sock.map(|s| s.port()),
        ),
    };
    if let Some(a) = server_addr {
        attrs.push(("server.address", AttrValue::Str(a)));
    }
    if let Some(p) = server_port {
        attrs.push(("server.port", AttrValue::Int(i64::from(p))));
    }
    if let (Some(peer), Some(ip)) = (conn.peer, &conn.peer_ip) {
        if kind == SpanKind::Server {
            attrs.push(("client.address", AttrValue::Shared(ip.clone())));
            attrs.push(("client.port", AttrValue::Int(i64::from(peer.port()))));
        }
        attrs.push(("network.peer.address", AttrValue::Shared(ip.clone())));
        attrs.push(("network.peer.port", AttrValue::Int(i64::from(peer.port()))));
    }
}

/// RFC 9113 §7 error codes, for `error.type` of a reset stream.
pub fn h2_error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "_OTHER",
    }
}

pub fn map(ex: &HttpExchange, conn: &ConnMeta, kind: SpanKind) -> HttpSpan {
    let path = route::path_of(&ex.target);
    let known = KNOWN_METHODS.iter().find(|m| **m == ex.method);
    let method: &'static str = known.copied().unwrap_or("_OTHER");
    // HTTP/2 fields from before a mid-connection join are unknown, never
    // guessed: the name says only what is known.
    let name = match (ex.method.is_empty(), ex.target.is_empty()) {
        (true, _) => "*".to_owned(),
        (false, true) => method.to_owned(),
        (false, false) => format!("{method} {}", route::route_of(path)),
    };

    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(16);
    if !ex.method.is_empty() {
        attrs.push(("http.request.method", AttrValue::Static(method)));
    }
    if known.is_none() && !ex.method.is_empty() {
        attrs.push((
            "http.request.method_original",
            AttrValue::Str(ex.method.clone()),
        ));
    }
    if !ex.target.is_empty() {
        attrs.push(("url.path", AttrValue::Str(path.to_owned())));
    }
    attrs.push((
        "url.scheme",
        AttrValue::Static(if conn.tls { "https" } else { "http" }),
    ));
    attrs.push(("network.protocol.name", AttrValue::Static("http")));
    if ex.status != 0 {
        attrs.push((
            "http.response.status_code",
            AttrValue::Int(i64::from(ex.status)),
        ));
    }
    attrs.push(("network.protocol.version", AttrValue::Static(ex.version)));
    push_endpoints(&mut attrs, ex.host.as_deref(), conn, kind);
    if let Some(ua) = &ex.user_agent {
        attrs.push(("user_agent.original", AttrValue::Str(ua.clone())));
    }
    if ex.headers_unknown {
        attrs.push(("tracer.headers_unknown", AttrValue::Int(1)));
    }
    let error = match (kind, ex.reset) {
        // A stream reset before its response (or mid-body) failed.
        (_, Some(code)) if code != 0 || ex.status == 0 => {
            attrs.push(("error.type", AttrValue::Static(h2_error_name(code))));
            true
        }
        (SpanKind::Server, _) if ex.status >= 500 => true,
        (SpanKind::Client, _) if ex.status >= 400 => true,
        _ => false,
    };
    if error && ex.reset.is_none() {
        attrs.push(("error.type", AttrValue::Str(ex.status.to_string())));
    }
    HttpSpan {
        name,
        attributes: attrs,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_forms() {
        assert_eq!(split_host("a:1"), ("a".into(), Some(1)));
        assert_eq!(split_host("[::1]:80"), ("::1".into(), Some(80)));
        assert_eq!(split_host("a"), ("a".into(), None));
        assert_eq!(split_host("::1"), ("::1".into(), None));
    }
}
