//! Span assembly: an [`Exchange`] plus its process becomes a [`Span`] with
//! OpenTelemetry semantic-convention attributes.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    clock::Clock,
    conntrack::{Exchange, Role},
    procinfo::Process,
    route,
    stats::Stats,
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
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags (bit 0: sampled), kept from the remote parent.
    pub trace_flags: u8,
    pub tracestate: Option<String>,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: StatusCode,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub process: Arc<Process>,
    pub tid: u32,
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

/// Turns exchanges into spans (ids were chosen by the linker).
#[derive(Default)]
pub struct SpanBuilder;

impl SpanBuilder {
    pub fn build(&self, ex: Exchange, process: Arc<Process>, clock: &Clock, stats: &Stats) -> Span {
        let kind = match ex.role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        };
        let req = &ex.request;
        let path = route::path_of(&req.target);
        let known = KNOWN_METHODS.iter().find(|m| **m == req.method);
        let method: &'static str = known.copied().unwrap_or("_OTHER");
        let name = format!("{method} {}", route::route_of(path));

        let crate::linker::SpanIds {
            trace_id,
            span_id,
            parent_span_id,
            flags: trace_flags,
            tracestate,
        } = ex.ids.clone();

        let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(12);
        attrs.push(("http.request.method", AttrValue::Static(method)));
        if known.is_none() {
            attrs.push((
                "http.request.method_original",
                AttrValue::Str(req.method.clone()),
            ));
        }
        attrs.push(("url.path", AttrValue::Str(path.to_owned())));
        attrs.push((
            "url.scheme",
            AttrValue::Static(if ex.tls { "https" } else { "http" }),
        ));
        attrs.push(("network.protocol.name", AttrValue::Static("http")));
        attrs.push((
            "http.response.status_code",
            AttrValue::Int(i64::from(ex.response.status)),
        ));
        attrs.push((
            "network.protocol.version",
            AttrValue::Static(if req.version == 0 { "1.0" } else { "1.1" }),
        ));
        // server.* is the logical server: the Host header when present,
        // else the socket's server end (local for SERVER, peer for CLIENT).
        let server_sock: Option<SocketAddr> = match kind {
            SpanKind::Server => ex.local,
            SpanKind::Client => ex.peer,
        };
        let (server_addr, server_port) = match req.headers.host.as_deref() {
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
        if let (Some(peer), Some(ip)) = (ex.peer, &ex.peer_ip) {
            if kind == SpanKind::Server {
                attrs.push(("client.address", AttrValue::Shared(ip.clone())));
                attrs.push(("client.port", AttrValue::Int(i64::from(peer.port()))));
            }
            attrs.push(("network.peer.address", AttrValue::Shared(ip.clone())));
            attrs.push(("network.peer.port", AttrValue::Int(i64::from(peer.port()))));
        }
        if let Some(ua) = &req.headers.user_agent {
            attrs.push(("user_agent.original", AttrValue::Str(ua.clone())));
        }
        if ex.end_estimated {
            attrs.push(("tracer.end_estimated", AttrValue::Int(1)));
        }
        let status = ex.response.status;
        let error = match kind {
            SpanKind::Server => status >= 500,
            SpanKind::Client => status >= 400,
        };
        if error {
            attrs.push(("error.type", AttrValue::Str(status.to_string())));
        }
        Stats::inc(&stats.spans);
        Span {
            trace_id,
            span_id,
            parent_span_id,
            trace_flags,
            tracestate,
            kind,
            name,
            start_unix_ns: clock.to_unix_ns(ex.start_ts),
            end_unix_ns: clock.to_unix_ns(ex.end_ts),
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            attributes: attrs,
            process,
            tid: ex.tid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        linker::SpanIds,
        protocols::http1::{Headers, RequestHead, ResponseHead},
    };

    fn exchange(role: Role, target: &str, status: u16, headers: Headers) -> Exchange {
        Exchange {
            role,
            tgid: 7,
            tid: 8,
            request: RequestHead {
                method: "GET".into(),
                target: target.into(),
                version: 1,
                headers,
            },
            response: ResponseHead {
                status,
                version: 1,
                headers: Headers::default(),
            },
            start_ts: 1_000,
            end_ts: 5_000,
            end_estimated: false,
            local: Some("127.0.0.1:8080".parse().expect("addr")),
            peer: Some("127.0.0.1:40000".parse().expect("addr")),
            peer_ip: Some("127.0.0.1".into()),
            tls: false,
            ids: SpanIds {
                trace_id: [0xab; 16],
                span_id: [0xcd; 8],
                parent_span_id: Some([0xef; 8]),
                flags: 0,
                tracestate: Some("k=v".into()),
            },
        }
    }

    fn process() -> Arc<Process> {
        Arc::new(Process::read(u32::MAX - 1, "svc"))
    }

    #[test]
    fn server_span_from_exchange() {
        let h = Headers {
            host: Some("shop.local:8080".into()),
            user_agent: Some("ua/1".into()),
            ..Default::default()
        };
        let stats = Stats::default();
        let s = SpanBuilder.build(
            exchange(Role::Server, "/users/42?x=secret", 503, h),
            process(),
            &Clock::new(),
            &stats,
        );
        // The linker's ids are used unchanged.
        assert_eq!(s.trace_id, [0xab; 16]);
        assert_eq!(s.span_id, [0xcd; 8]);
        assert_eq!(s.parent_span_id, Some([0xef; 8]));
        assert_eq!(s.trace_flags, 0);
        assert_eq!(s.tracestate.as_deref(), Some("k=v"));
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.status, StatusCode::Error);
        assert_eq!(s.duration_ns(), 4_000);
        let st = |k: &str| s.attr(k).and_then(AttrValue::as_str).map(str::to_owned);
        assert_eq!(st("url.path").as_deref(), Some("/users/42"));
        assert_eq!(st("server.address").as_deref(), Some("shop.local"));
        assert_eq!(st("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(st("user_agent.original").as_deref(), Some("ua/1"));
        assert_eq!(st("error.type").as_deref(), Some("503"));
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&AttrValue::Int(503))
        );
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn client_status_and_server_from_socket() {
        let stats = Stats::default();
        let s404 = SpanBuilder.build(
            exchange(Role::Client, "/", 404, Headers::default()),
            process(),
            &Clock::new(),
            &stats,
        );
        let s200 = SpanBuilder.build(
            exchange(Role::Client, "/", 200, Headers::default()),
            process(),
            &Clock::new(),
            &stats,
        );
        assert_eq!(s404.status, StatusCode::Error);
        assert_eq!(s200.status, StatusCode::Unset);
        // Client spans name the server by its socket when there is no Host.
        assert_eq!(s200.attr("server.port"), Some(&AttrValue::Int(40000)));
        assert!(s200.attr("client.address").is_none());
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(split_host("a:1"), ("a".into(), Some(1)));
        assert_eq!(split_host("[::1]:80"), ("::1".into(), Some(80)));
        assert_eq!(split_host("a"), ("a".into(), None));
        assert_eq!(split_host("::1"), ("::1".into(), None));
    }
}
