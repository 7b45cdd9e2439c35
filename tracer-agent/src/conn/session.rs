//! One connection's session: its metadata and the protocol state chosen
//! for it. The session routes each syscall's bytes to the request or
//! response side and switches protocol when the connection stops speaking
//! the one it started with. (Lost events are found by the table, per fd:
//! a socket held on several fds has a sequence per fd.)

use std::sync::Arc;

use tracer_common::{DataHeader, DIR_INGRESS};

use super::segments::{for_each_piece, Piece};
use crate::metadata::conn::{ConnMeta, Role};
use crate::{
    protocols::{
        http1::Http1, http2::Http2, Chunk, ContextChooser, Protocol, ProtocolKind, Record, Side,
        Stitch, Upgrade,
    },
    telemetry::Counters,
    trace::task::TaskId,
};

/// The protocol state of a connection.
#[derive(Debug)]
enum State {
    Http1(Box<Http1>),
    Http2(Box<Http2>),
    /// Not (or no longer) a protocol the agent parses: bytes are dropped.
    /// An HTTP/1 upgrade (h2c, WebSocket) or CONNECT tunnel ends here
    /// until the agent parses what follows.
    Opaque,
}

impl State {
    fn protocol(&mut self) -> Option<&mut dyn Protocol> {
        match self {
            State::Http1(p) => Some(p.as_mut()),
            State::Http2(p) => Some(p.as_mut()),
            State::Opaque => None,
        }
    }
}

#[derive(Debug)]
pub struct Session {
    meta: Arc<ConnMeta>,
    state: State,
    last_ts: u64,
    trace_names: Arc<[String]>,
}

impl Session {
    pub fn new(meta: ConnMeta, kind: ProtocolKind, trace_names: Arc<[String]>) -> Self {
        let state = match kind {
            ProtocolKind::Http1 => State::Http1(Box::new(Http1::new(trace_names.clone()))),
            ProtocolKind::Http2 => {
                State::Http2(Box::new(Http2::new(trace_names.clone(), meta.joined)))
            }
        };
        Self {
            meta: Arc::new(meta),
            state,
            last_ts: 0,
            trace_names,
        }
    }

    pub fn meta(&self) -> &ConnMeta {
        &self.meta
    }

    /// Kernel time of the last event on the connection.
    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }

    /// Bytes held for partial messages.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Http1(p) => p.buffered(),
            State::Http2(p) => p.buffered(),
            State::Opaque => 0,
        }
    }

    /// Drops partial messages (buffer budget exceeded).
    pub fn shed(&mut self) {
        if let Some(p) = self.state.protocol() {
            p.shed();
        }
    }

    /// Feeds one captured syscall; `lost`: events before it were lost.
    pub fn on_data(
        &mut self,
        hdr: &DataHeader,
        payload: &[u8],
        lost: bool,
        ids: &mut dyn ContextChooser,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) {
        self.last_ts = hdr.ts;
        let ingress = hdr.direction == DIR_INGRESS;
        let side = if ingress == (self.meta.role == Role::Server) {
            Side::Request
        } else {
            Side::Response
        };
        let mut cx = Stitch {
            conn: &self.meta,
            out,
            counters,
        };
        let Some(p) = self.state.protocol() else {
            return;
        };
        if lost {
            // Events of this connection were lost.
            Counters::inc(&counters.seq_gaps);
            p.on_lost(&mut cx);
        }
        let mut first = true;
        let ok = for_each_piece(hdr, payload, |piece: Piece<'_>| {
            let chunk = Chunk {
                side,
                bytes: piece.bytes,
                gap: piece.gap,
                ts: hdr.ts,
                task: TaskId::of(&self.meta, hdr),
                starts_syscall: first || piece.frame_start,
            };
            first = false;
            p.on_chunk(&chunk, ids, &mut cx);
        });
        if !ok {
            Counters::inc(&counters.decode_errors);
        }
        if p.switched() {
            Counters::inc(&counters.protocol_switches);
            self.state = match p.take_upgrade() {
                Some(Upgrade::H2c(mut req)) => {
                    let rest = std::mem::take(&mut req.leftover);
                    let gap = req.leftover_gap;
                    let mut h2 = Box::new(Http2::upgraded(self.trace_names.clone(), req));
                    if !rest.is_empty() || gap > 0 {
                        let chunk = Chunk {
                            side: Side::Response,
                            bytes: &rest,
                            gap,
                            ts: hdr.ts,
                            task: TaskId::of(&self.meta, hdr),
                            starts_syscall: false,
                        };
                        h2.on_chunk(&chunk, ids, &mut cx);
                    }
                    State::Http2(h2)
                }
                None => State::Opaque,
            };
        }
    }

    /// The connection is gone: complete what can be completed.
    pub fn on_close(&mut self, ts: u64, out: &mut Vec<Record>, counters: &Counters) {
        let mut cx = Stitch {
            conn: &self.meta,
            out,
            counters,
        };
        if let Some(p) = self.state.protocol() {
            p.on_close(ts, &mut cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{DIR_EGRESS, EVENT_DATA};

    use super::*;
    use crate::protocols::{test_support::FixedIds, HttpExchange, Message};

    struct Feed {
        session: Session,
        seq: u32,
        next_seq: u32,
        ts: u64,
        counters: Counters,
        out: Vec<Record>,
    }

    impl Feed {
        fn new(role: Role) -> Self {
            Self {
                session: Session::new(
                    ConnMeta::new(1, 10, 3, role, None, None),
                    ProtocolKind::Http1,
                    Arc::from(Vec::<String>::new()),
                ),
                seq: 0,
                next_seq: 0,
                ts: 100,
                counters: Counters::default(),
                out: Vec::new(),
            }
        }

        fn send(&mut self, dir: u8, payload: &[u8], total: u32) {
            self.send_with(dir, payload, total, &mut FixedIds);
        }

        fn send_with(
            &mut self,
            dir: u8,
            payload: &[u8],
            total: u32,
            ids: &mut dyn crate::trace::ContextChooser,
        ) {
            let hdr = self.header(dir, payload, total);
            let lost = self.seq != self.next_seq;
            self.seq += 1;
            self.next_seq = self.seq;
            self.ts += 10;
            self.session
                .on_data(&hdr, payload, lost, ids, &mut self.out, &self.counters);
        }

        fn header(&self, dir: u8, payload: &[u8], total: u32) -> DataHeader {
            DataHeader {
                kind: EVENT_DATA,
                direction: dir,
                tgid: 10,
                tid: 11,
                fd: 3,
                conn_id: 1,
                ts: self.ts,
                total_len: total,
                captured_len: payload.len() as u32,
                seq: self.seq,
                ..Default::default()
            }
        }

        fn http(&self, i: usize) -> &HttpExchange {
            match &self.out[i].message {
                Message::Http(h) => h,
                Message::Grpc(g) => panic!("not HTTP: {g:?}"),
            }
        }
    }

    fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A request whose head the server read in two parts (the client's
    /// send was split where the injector inserted its header): the ids the
    /// kernel chose at the first part are the request's.
    #[test]
    fn kernel_ids_wait_for_a_head_split_across_reads() {
        let counters = Arc::new(Counters::default());
        let mut ids = crate::trace::TraceIds::new(Vec::new(), counters.clone());
        let mut f = Feed::new(Role::Server);
        ids.on_kernel_ctx(&tracer_common::TraceCtxEvent {
            kind: tracer_common::EVENT_SERVER_CTX,
            flags: 1,
            tgid: 10,
            tid: 11,
            seq: 0,
            conn_id: 1,
            trace_id: [3; 16],
            span_id: [4; 8],
            ..Default::default()
        });
        let parts: [&[u8]; 2] = [
            b"GET /a HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
            b"Host: x\r\n\r\n",
        ];
        for p in parts {
            let hdr = f.header(DIR_INGRESS, p, p.len() as u32);
            ids.begin_data(&hdr, None);
            f.send_with(DIR_INGRESS, p, p.len() as u32, &mut ids);
            ids.end_data();
        }
        f.send(
            DIR_EGRESS,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            38,
        );
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].ids.span_id, [4; 8]);
        assert_eq!(load(&counters.kernel_ctx_unmatched), 0);
    }

    #[test]
    fn keep_alive_server_exchanges() {
        let mut f = Feed::new(Role::Server);
        for i in 0..5 {
            let req = format!("GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n");
            f.send(DIR_INGRESS, req.as_bytes(), req.len() as u32);
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            f.send(DIR_EGRESS, resp, resp.len() as u32);
        }
        assert_eq!(f.out.len(), 5);
        for i in 0..5 {
            assert_eq!(f.http(i).target, format!("/item/{i}"));
            assert_eq!(f.http(i).status, 200);
            assert_eq!(f.out[i].end_ts - f.out[i].start_ts, 10);
            assert!(!f.out[i].end_estimated);
            assert_eq!(f.out[i].task, TaskId::thread(10, 11));
        }
    }

    #[test]
    fn pipelined_client_with_head_and_truncated_body() {
        let mut f = Feed::new(Role::Client);
        let reqs = b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        f.send(DIR_EGRESS, reqs, reqs.len() as u32);
        // HEAD response advertises a length but has no body; the GET
        // response's body is mostly not captured (a gap).
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 404 NF\r\nContent-Length: 5000\r\n\r\nab";
        f.send(DIR_INGRESS, resp, resp.len() as u32 + 4998);
        assert_eq!(f.out.len(), 2);
        assert_eq!(f.http(0).method, "HEAD");
        assert_eq!(f.http(1).status, 404);
        assert!(!f.out[1].end_estimated);
    }

    #[test]
    fn lost_chunked_body_ends_at_next_request() {
        let mut f = Feed::new(Role::Server);
        f.send(DIR_INGRESS, b"GET /1 HTTP/1.1\r\n\r\n", 19);
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\nxx";
        f.send(DIR_EGRESS, resp, 9000);
        assert!(f.out.is_empty());
        f.send(DIR_INGRESS, b"GET /2 HTTP/1.1\r\n\r\n", 19);
        assert_eq!(f.out.len(), 1);
        assert!(f.out[0].end_estimated);
        f.send(DIR_EGRESS, b"HTTP/1.1 204 No\r\n\r\n", 19);
        assert_eq!(f.out.len(), 2);
        assert_eq!(f.http(1).target, "/2");
    }

    #[test]
    fn sequence_gap_resyncs() {
        let mut f = Feed::new(Role::Server);
        f.send(DIR_INGRESS, b"GET /1 HTTP/1.1\r\n\r\n", 19);
        f.seq += 3; // three events lost
        f.send(DIR_EGRESS, b"tail of something", 17);
        f.send(DIR_INGRESS, b"GET /2 HTTP/1.1\r\n\r\n", 19);
        f.send(
            DIR_EGRESS,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            38,
        );
        assert_eq!(load(&f.counters.seq_gaps), 1);
        // /1's response may have been lost: it is dropped, never paired
        // with /2's response.
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.http(0).target, "/2");
    }

    #[test]
    fn close_completes_read_until_close_and_counts_unanswered() {
        let mut f = Feed::new(Role::Client);
        f.send(DIR_EGRESS, b"GET /a HTTP/1.0\r\n\r\n", 19);
        f.send(DIR_INGRESS, b"HTTP/1.0 200 OK\r\n\r\nbody", 23);
        f.send(DIR_EGRESS, b"GET /b HTTP/1.0\r\n\r\n", 19);
        assert!(f.out.is_empty());
        f.session.on_close(1000, &mut f.out, &f.counters);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].end_ts, 110);
        assert_eq!(f.http(0).version, "1.0");
        assert_eq!(load(&f.counters.unanswered_requests), 1);
    }

    #[test]
    fn upgrade_switches_the_session_off_http1() {
        let mut f = Feed::new(Role::Server);
        let req = b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        f.send(DIR_INGRESS, req, req.len() as u32);
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        f.send(DIR_EGRESS, resp, resp.len() as u32);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.http(0).status, 101);
        assert_eq!(load(&f.counters.protocol_switches), 1);
        // What follows is not HTTP/1: nothing more is parsed.
        f.send(DIR_INGRESS, b"GET /x HTTP/1.1\r\n\r\n", 19);
        f.send(DIR_EGRESS, b"HTTP/1.1 200 OK\r\n\r\n", 19);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.session.buffered(), 0);
    }

    fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn h2c_upgrade_continues_the_request_as_stream_1() {
        let mut f = Feed::new(Role::Server);
        let req = b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
        f.send(DIR_INGRESS, req, req.len() as u32);
        let resp =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        f.send(DIR_EGRESS, resp, resp.len() as u32);
        // No 101 span: the real response comes on stream 1.
        assert!(f.out.is_empty());
        let mut preface = crate::protocols::http2::frame::PREFACE.to_vec();
        preface.extend(h2_frame(4, 0, 0, &[]));
        f.send(DIR_INGRESS, &preface, preface.len() as u32);
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode([(&b":status"[..], &b"204"[..])]);
        let mut out = h2_frame(4, 0, 0, &[]);
        out.extend(h2_frame(1, 0x4 | 0x1, 1, &block));
        f.send(DIR_EGRESS, &out, out.len() as u32);
        assert_eq!(f.out.len(), 1);
        let h = f.http(0);
        assert_eq!((h.target.as_str(), h.status, h.version), ("/up", 204, "2"));
        assert_eq!(h.host.as_deref(), Some("h"));
        assert_eq!(load(&f.counters.protocol_switches), 1);
    }
}
