//! Span assembly: a protocol's [`Record`] plus its process becomes a
//! [`Span`]; the attributes come from the protocol's semantic-convention
//! mapping.

use std::sync::Arc;

use super::{clock::Clock, http, rpc, AttrValue, Span, SpanKind, StatusCode};
use crate::{
    metadata::conn::Role,
    metadata::{process::Process, resource::Resource},
    protocols::{Message, Record},
    telemetry::Counters,
};

/// Turns records into spans (ids were chosen when each request started).
#[derive(Default)]
pub struct SpanBuilder;

impl SpanBuilder {
    pub fn build(
        &self,
        r: Record,
        (process, resource): (Arc<Process>, Arc<Resource>),
        clock: &Clock,
        c: &Counters,
    ) -> Span {
        let kind = match r.conn.role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        };
        let (name, mut attributes, error) = match &r.message {
            Message::Http(ex) => {
                let h = http::map(ex, &r.conn, kind);
                (h.name, h.attributes, h.error)
            }
            Message::Grpc(call) => {
                let h = rpc::map(call, &r.conn, kind);
                (h.name, h.attributes, h.error)
            }
        };
        if r.end_estimated {
            attributes.push(("tracer.end_estimated", AttrValue::Int(1)));
        }
        Counters::inc(&c.spans);
        Span {
            ids: r.ids,
            kind,
            name,
            start_unix_ns: clock.to_unix_ns(r.start_ts),
            end_unix_ns: clock.to_unix_ns(r.end_ts),
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            attributes,
            process,
            resource,
            tid: r.task.tid(),
            link: crate::spans::LocalLink::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metadata::conn::ConnMeta,
        protocols::HttpExchange,
        trace::{ids::SpanIds, task::TaskId},
    };

    fn record(role: Role, target: &str, status: u16, host: Option<&str>) -> Record {
        let mut conn = ConnMeta::new(
            1,
            7,
            3,
            role,
            Some("127.0.0.1:8080".parse().expect("addr")),
            Some("127.0.0.1:40000".parse().expect("addr")),
        );
        conn.tls = false;
        Record {
            conn: Arc::new(conn),
            task: TaskId::thread(7, 8),
            start_ts: 1_000,
            end_ts: 5_000,
            end_estimated: false,
            stream: None,
            ids: SpanIds {
                trace_id: [0xab; 16],
                span_id: [0xcd; 8],
                parent_span_id: Some([0xef; 8]),
                flags: 0,
                tracestate: Some("k=v".into()),
            },
            message: Message::Http(HttpExchange {
                method: "GET".into(),
                target: target.into(),
                version: "1.1",
                host: host.map(str::to_owned),
                user_agent: Some("ua/1".into()),
                status,
                reset: None,
                headers_unknown: false,
            }),
        }
    }

    fn process() -> (Arc<Process>, Arc<Resource>) {
        let p = Process::read(u32::MAX - 1, "svc");
        let r = Resource::of(&p, "h", None);
        (Arc::new(p), Arc::new(r))
    }

    #[test]
    fn server_span_from_record() {
        let c = Counters::default();
        let s = SpanBuilder.build(
            record(
                Role::Server,
                "/users/42?x=secret",
                503,
                Some("shop.local:8080"),
            ),
            process(),
            &Clock::new(),
            &c,
        );
        // The chosen ids are used unchanged.
        assert_eq!(s.ids.trace_id, [0xab; 16]);
        assert_eq!(s.ids.span_id, [0xcd; 8]);
        assert_eq!(s.ids.parent_span_id, Some([0xef; 8]));
        assert_eq!(s.ids.flags, 0);
        assert_eq!(s.ids.tracestate.as_deref(), Some("k=v"));
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.status, StatusCode::Error);
        assert_eq!(s.duration_ns(), 4_000);
        assert_eq!(s.tid, 8);
        let st = |k: &str| s.attr(k).and_then(AttrValue::as_str).map(str::to_owned);
        assert_eq!(st("url.path").as_deref(), Some("/users/42"));
        assert_eq!(st("server.address").as_deref(), Some("shop.local"));
        assert_eq!(st("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(st("user_agent.original").as_deref(), Some("ua/1"));
        assert_eq!(st("error.type").as_deref(), Some("503"));
        assert_eq!(st("network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(s.attr("server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&AttrValue::Int(503))
        );
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn client_status_and_server_from_socket() {
        let c = Counters::default();
        let s404 = SpanBuilder.build(
            record(Role::Client, "/", 404, None),
            process(),
            &Clock::new(),
            &c,
        );
        let s200 = SpanBuilder.build(
            record(Role::Client, "/", 200, None),
            process(),
            &Clock::new(),
            &c,
        );
        assert_eq!(s404.status, StatusCode::Error);
        assert_eq!(s200.status, StatusCode::Unset);
        // Client spans name the server by its socket when there is no Host.
        assert_eq!(s200.attr("server.port"), Some(&AttrValue::Int(40000)));
        assert!(s200.attr("client.address").is_none());
    }
}
