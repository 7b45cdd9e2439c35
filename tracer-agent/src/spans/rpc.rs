//! gRPC semantic conventions (OTel `rpc.*`): a call's name
//! (`package.Service/Method`), its status code from the trailers, and
//! which codes are errors on which side.

use super::{
    http::{h2_error_name, push_endpoints, HttpSpan},
    AttrValue, SpanKind,
};
use crate::{metadata::conn::ConnMeta, protocols::GrpcCall};

/// gRPC status code names (grpc/doc/statuscodes.md).
const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Codes a SERVER span reports as errors (OTel's gRPC conventions): the
/// server failed, rather than the caller asking for something wrong.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

pub fn map(call: &GrpcCall, conn: &ConnMeta, kind: SpanKind) -> HttpSpan {
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(14);
    attrs.push(("rpc.system", AttrValue::Static("grpc")));
    let parts = call.path.as_deref().and_then(split_path);
    let name = match (parts, call.path.as_deref()) {
        (Some((service, method)), _) => {
            attrs.push(("rpc.service", AttrValue::Str(service.to_owned())));
            attrs.push(("rpc.method", AttrValue::Str(method.to_owned())));
            format!("{service}/{method}")
        }
        // Not the gRPC path form: keep it, but it names nothing.
        (None, Some(_)) => "grpc".to_owned(),
        (None, None) => "*".to_owned(),
    };
    attrs.push(("network.protocol.name", AttrValue::Static("http")));
    attrs.push(("network.protocol.version", AttrValue::Static("2")));
    push_endpoints(&mut attrs, call.authority.as_deref(), conn, kind);
    if let Some(s) = call.status {
        attrs.push(("rpc.grpc.status_code", AttrValue::Int(i64::from(s))));
    }
    if let Some(h) = call.http_status {
        attrs.push(("http.response.status_code", AttrValue::Int(i64::from(h))));
    }
    if let Some(ua) = &call.user_agent {
        attrs.push(("user_agent.original", AttrValue::Str(ua.clone())));
    }
    if call.headers_unknown {
        attrs.push(("tracer.headers_unknown", AttrValue::Int(1)));
    }
    let error = match (call.status, call.reset) {
        (Some(s), _) => {
            let err = match kind {
                SpanKind::Server => SERVER_ERRORS.contains(&s),
                SpanKind::Client => s != 0,
            };
            if err {
                let n = STATUS_NAMES.get(s as usize).copied().unwrap_or("_OTHER");
                attrs.push(("error.type", AttrValue::Static(n)));
            }
            err
        }
        // Reset with no status: the call failed at the HTTP/2 level.
        (None, Some(code)) => {
            attrs.push(("error.type", AttrValue::Static(h2_error_name(code))));
            true
        }
        // The status may be an unknown table entry (joined mid-way):
        // unknown is not an error.
        (None, None) if call.headers_unknown => false,
        // A response ended without trailers: not a valid gRPC response.
        (None, None) => {
            attrs.push(("error.type", AttrValue::Static("missing grpc-status")));
            true
        }
    };
    HttpSpan {
        name,
        attributes: attrs,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: Option<u32>, reset: Option<u32>) -> GrpcCall {
        GrpcCall {
            path: Some("/helloworld.Greeter/SayHello".into()),
            authority: Some("localhost:50051".into()),
            user_agent: Some("grpc-python/1.60".into()),
            http_status: Some(200),
            status,
            reset,
            headers_unknown: false,
        }
    }

    fn conn() -> ConnMeta {
        ConnMeta::new(
            1,
            2,
            3,
            crate::metadata::conn::Role::Server,
            Some("127.0.0.1:50051".parse().expect("addr")),
            Some("127.0.0.1:40000".parse().expect("addr")),
        )
    }

    fn attr<'a>(s: &'a HttpSpan, k: &str) -> Option<&'a AttrValue> {
        s.attributes.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }

    #[test]
    fn names_and_status_codes_by_side() {
        let s = map(&call(Some(5), None), &conn(), SpanKind::Server);
        assert_eq!(s.name, "helloworld.Greeter/SayHello");
        assert!(!s.error, "NOT_FOUND is the caller's problem");
        assert_eq!(attr(&s, "rpc.grpc.status_code"), Some(&AttrValue::Int(5)));
        assert_eq!(
            attr(&s, "rpc.service").and_then(AttrValue::as_str),
            Some("helloworld.Greeter")
        );
        assert_eq!(
            attr(&s, "rpc.method").and_then(AttrValue::as_str),
            Some("SayHello")
        );
        let c = map(&call(Some(5), None), &conn(), SpanKind::Client);
        assert!(c.error);
        assert_eq!(
            attr(&c, "error.type").and_then(AttrValue::as_str),
            Some("NOT_FOUND")
        );
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(map(&call(Some(code), None), &conn(), SpanKind::Server).error);
        }
        assert!(!map(&call(Some(0), None), &conn(), SpanKind::Client).error);
        let r = map(&call(None, Some(8)), &conn(), SpanKind::Server);
        assert!(r.error);
        assert_eq!(
            attr(&r, "error.type").and_then(AttrValue::as_str),
            Some("CANCEL")
        );
    }

    #[test]
    fn odd_paths_never_make_names() {
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        assert_eq!(split_path("/a.B/C/D"), None);
        assert_eq!(split_path("//C"), None);
        let mut c = call(Some(0), None);
        c.path = None;
        c.headers_unknown = true;
        let s = map(&c, &conn(), SpanKind::Server);
        assert_eq!(s.name, "*");
        assert_eq!(attr(&s, "tracer.headers_unknown"), Some(&AttrValue::Int(1)));
    }
}
