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

pub fn map(ex: &HttpExchange, conn: &ConnMeta, kind: SpanKind) -> HttpSpan {
    let path = route::path_of(&ex.target);
    let known = KNOWN_METHODS.iter().find(|m| **m == ex.method);
    let method: &'static str = known.copied().unwrap_or("_OTHER");
    let name = format!("{method} {}", route::route_of(path));

    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(16);
    attrs.push(("http.request.method", AttrValue::Static(method)));
    if known.is_none() {
        attrs.push((
            "http.request.method_original",
            AttrValue::Str(ex.method.clone()),
        ));
    }
    attrs.push(("url.path", AttrValue::Str(path.to_owned())));
    attrs.push((
        "url.scheme",
        AttrValue::Static(if conn.tls { "https" } else { "http" }),
    ));
    attrs.push(("network.protocol.name", AttrValue::Static("http")));
    attrs.push((
        "http.response.status_code",
        AttrValue::Int(i64::from(ex.status)),
    ));
    attrs.push(("network.protocol.version", AttrValue::Static(ex.version)));
    // server.* is the logical server: the Host header when present, else
    // the socket's server end (local for SERVER, peer for CLIENT).
    let server_sock: Option<SocketAddr> = match kind {
        SpanKind::Server => conn.local,
        SpanKind::Client => conn.peer,
    };
    let (server_addr, server_port) = match ex.host.as_deref() {
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
    if let Some(ua) = &ex.user_agent {
        attrs.push(("user_agent.original", AttrValue::Str(ua.clone())));
    }
    let error = match kind {
        SpanKind::Server => ex.status >= 500,
        SpanKind::Client => ex.status >= 400,
    };
    if error {
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
