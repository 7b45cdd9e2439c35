//! Per-connection reassembly: routes each captured syscall to the request or
//! response reader of its connection and pairs requests with responses
//! (in order, which is what HTTP/1.1 pipelining guarantees) into
//! [`Exchange`]s.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use tracer_common::{DataHeader, DIR_INGRESS, ROLE_SERVER};

use crate::{
    linker::{RequestStart, SpanIds},
    protocols::http1::{Event, Kind, MessageReader, RequestHead, ResponseContext, ResponseHead},
    stats::Stats,
};

/// Chooses the span ids of a request when its head is parsed.
pub type LinkFn<'a> = dyn FnMut(&RequestStart<'_>) -> SpanIds + 'a;

/// Requests waiting for a response on one connection (pipelining depth).
pub const MAX_PENDING: usize = 64;
/// Bytes of partial headers held across all connections. Each reader may
/// hold up to 16 KiB; without a global cap, many connections sending slow
/// partial headers could make the agent grow without bound.
pub const BUFFER_BUDGET: usize = 64 << 20;
/// Share of the table evicted at once when it is full, so a flood of new
/// connections costs an amortised O(1) each, not a full scan each.
const EVICT_FRACTION: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A completed request/response pair.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub role: Role,
    pub tgid: u32,
    /// Thread that read (server) or wrote (client) the request.
    pub tid: u32,
    pub request: RequestHead,
    pub response: ResponseHead,
    /// Kernel monotonic ns of the request's first byte.
    pub start_ts: u64,
    /// Kernel monotonic ns of the response's last byte.
    pub end_ts: u64,
    /// The end could not be followed exactly (e.g. uncaptured chunked body).
    pub end_estimated: bool,
    /// Trace context chosen when the request started.
    pub ids: SpanIds,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// `peer`'s IP as text, formatted once per connection.
    pub peer_ip: Option<Arc<str>>,
    /// Plaintext from a TLS library (HTTPS).
    pub tls: bool,
}

#[derive(Debug)]
struct Pending {
    request: RequestHead,
    start_ts: u64,
    tid: u32,
    ids: SpanIds,
    response: Option<ResponseHead>,
    /// The response reader lost track inside this response's body.
    end_lost: bool,
}

/// Static facts about a connection, from the open event and /proc.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub conn_id: u64,
    pub tgid: u32,
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub peer_ip: Option<Arc<str>>,
    pub tls: bool,
}

impl ConnMeta {
    pub fn new(
        conn_id: u64,
        tgid: u32,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> Self {
        Self {
            conn_id,
            tgid,
            role,
            local,
            peer,
            peer_ip: peer.map(|p| Arc::from(p.ip().to_string())),
            tls: false,
        }
    }
}

#[derive(Debug)]
pub struct Conn {
    meta: ConnMeta,
    fd: u32,
    requests: MessageReader,
    responses: MessageReader,
    pending: VecDeque<Pending>,
    next_seq: u32,
    last_ts: u64,
}

impl Conn {
    pub fn new(meta: ConnMeta, fd: u32, trace_names: Arc<[String]>) -> Self {
        Self {
            meta,
            fd,
            requests: MessageReader::with_trace_headers(Kind::Request, trace_names.clone()),
            responses: MessageReader::with_trace_headers(Kind::Response, trace_names),
            pending: VecDeque::new(),
            next_seq: 0,
            last_ts: 0,
        }
    }

    fn response_context(&self) -> ResponseContext {
        match self.pending.iter().find(|p| p.response.is_none()) {
            Some(p) => ResponseContext {
                head_request: p.request.method == "HEAD",
                connect_request: p.request.method == "CONNECT",
            },
            None => ResponseContext::default(),
        }
    }

    fn finish_front(&mut self, end_ts: u64, estimated: bool, out: &mut Vec<Exchange>) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        let Some(response) = p.response else {
            // Cannot happen through the callers (they check), but never
            // invent a response.
            return;
        };
        out.push(Exchange {
            role: self.meta.role,
            tgid: self.meta.tgid,
            tid: p.tid,
            request: p.request,
            response,
            start_ts: p.start_ts,
            end_ts: end_ts.max(p.start_ts),
            end_estimated: estimated,
            ids: p.ids,
            local: self.meta.local,
            peer: self.meta.peer,
            peer_ip: self.meta.peer_ip.clone(),
            tls: self.meta.tls,
        });
    }

    /// Finishes the front exchange if its response body could not be
    /// followed: a later message on the connection proves it has ended.
    fn finish_lost(&mut self, stats: &Stats, out: &mut Vec<Exchange>) {
        if self.pending.front().is_some_and(|p| p.end_lost) {
            Stats::inc(&stats.estimated_ends);
            let end = self.responses.last_ts();
            self.finish_front(end, true, out);
        }
    }

    fn on_request_event(
        &mut self,
        ev: Event,
        tid: u32,
        index_in_chunk: Option<usize>,
        stats: &Stats,
        out: &mut Vec<Exchange>,
        link: &mut LinkFn<'_>,
    ) {
        match ev {
            Event::Request { head, start_ts } => {
                self.finish_lost(stats, out);
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    Stats::inc(&stats.pending_overflow);
                }
                let ids = link(&RequestStart {
                    role: self.meta.role,
                    tgid: self.meta.tgid,
                    tid,
                    fd: self.fd,
                    head: &head,
                    index_in_chunk,
                });
                self.pending.push_back(Pending {
                    request: head,
                    start_ts,
                    tid,
                    ids,
                    response: None,
                    end_lost: false,
                });
            }
            Event::Lost(e) => {
                Stats::inc(&stats.parse_errors);
                tracing::debug!(tgid = self.meta.tgid, "request stream lost: {e}");
            }
            Event::End { .. } | Event::Response { .. } => {}
        }
    }

    fn on_response_event(&mut self, ev: Event, ts: u64, stats: &Stats, out: &mut Vec<Exchange>) {
        match ev {
            Event::Response { head, .. } => {
                if (100..200).contains(&head.status) && head.status != 101 {
                    return; // interim response; the final one follows
                }
                self.finish_lost(stats, out);
                let Some(p) = self.pending.iter_mut().find(|p| p.response.is_none()) else {
                    Stats::inc(&stats.orphan_responses);
                    return;
                };
                let upgrade = head.status == 101;
                p.response = Some(head);
                if upgrade || self.responses.is_tunnel() {
                    self.requests.enter_tunnel();
                    self.responses.enter_tunnel();
                }
                if self.responses.at_message_boundary() && self.front_answered() {
                    self.finish_front(ts, false, out);
                }
            }
            Event::End { end_ts } => {
                if self.front_answered() {
                    self.finish_front(end_ts, false, out);
                }
            }
            Event::Lost(e) => {
                Stats::inc(&stats.parse_errors);
                tracing::debug!(tgid = self.meta.tgid, "response stream lost: {e}");
                if let Some(p) = self.pending.front_mut() {
                    if p.response.is_some() {
                        p.end_lost = true;
                    }
                }
            }
            Event::Request { .. } => {}
        }
    }

    fn buffered(&self) -> usize {
        self.requests.buffered() + self.responses.buffered()
    }

    fn front_answered(&self) -> bool {
        self.pending.front().is_some_and(|p| p.response.is_some())
    }

    /// Feeds one captured syscall.
    pub fn on_data(
        &mut self,
        hdr: &DataHeader,
        payload: &[u8],
        stats: &Stats,
        out: &mut Vec<Exchange>,
        link: &mut LinkFn<'_>,
    ) {
        if hdr.seq != self.next_seq {
            // Events of this connection were lost: neither stream can be
            // trusted until it restarts at a message boundary.
            Stats::inc(&stats.seq_gaps);
            self.requests.lose_sync();
            self.responses.lose_sync();
            // A request still waiting may have had its response in the lost
            // events: pairing it with the next response would be a wrong
            // span, so drop it (counted).
            let before = self.pending.len();
            self.pending.retain(|p| p.response.is_some());
            for _ in self.pending.len()..before {
                Stats::inc(&stats.unanswered_requests);
            }
            for p in self.pending.iter_mut() {
                p.end_lost = true;
            }
        }
        self.next_seq = hdr.seq.wrapping_add(1);
        self.last_ts = hdr.ts;
        let ingress = hdr.direction == DIR_INGRESS;
        let is_request = ingress == (self.meta.role == Role::Server);
        let ts = hdr.ts;
        let gap = u64::from(hdr.total_len.saturating_sub(hdr.captured_len));
        if is_request {
            // Requests that start in this chunk are numbered only when the
            // chunk starts at a message boundary (nothing held over): those
            // are the ones the kernel may have chosen ids for.
            let mut index = self.requests.starts_fresh().then_some(0usize);
            self.requests.begin_chunk(payload, ts);
            let mut input = payload;
            while let Some(ev) = self
                .requests
                .step(&mut input, ts, ResponseContext::default())
            {
                let is_head = matches!(ev, Event::Request { .. });
                self.on_request_event(ev, hdr.tid, index, stats, out, link);
                if is_head {
                    index = index.map(|i| i + 1);
                }
            }
            if let Some(ev) = self.requests.gap(gap, ts) {
                self.on_request_event(ev, hdr.tid, None, stats, out, link);
            }
        } else {
            self.responses.begin_chunk(payload, ts);
            let mut input = payload;
            loop {
                let ctx = self.response_context();
                let Some(ev) = self.responses.step(&mut input, ts, ctx) else {
                    break;
                };
                self.on_response_event(ev, ts, stats, out);
            }
            if let Some(ev) = self.responses.gap(gap, ts) {
                self.on_response_event(ev, ts, stats, out);
            }
        }
    }

    /// The connection is gone: complete what can be completed.
    pub fn on_close(&mut self, ts: u64, stats: &Stats, out: &mut Vec<Exchange>) {
        if let Some(ev) = self.responses.close(ts) {
            self.on_response_event(ev, ts, stats, out);
        }
        while let Some(p) = self.pending.front() {
            if p.response.is_some() {
                Stats::inc(&stats.estimated_ends);
                let end = self.responses.last_ts();
                self.finish_front(end, true, out);
            } else {
                Stats::inc(&stats.unanswered_requests);
                self.pending.pop_front();
            }
        }
    }
}

/// All tracked connections, keyed by (tgid, fd).
pub struct ConnTable {
    conns: HashMap<(u32, u32), Conn>,
    trace_names: Arc<[String]>,
    max_conns: usize,
    /// Sum of `Conn::buffered` over the table.
    buffered: usize,
    budget: usize,
}

impl ConnTable {
    pub fn new(max_conns: usize, trace_names: Arc<[String]>) -> Self {
        Self::with_budget(max_conns, BUFFER_BUDGET, trace_names)
    }

    pub fn with_budget(max_conns: usize, budget: usize, trace_names: Arc<[String]>) -> Self {
        Self {
            conns: HashMap::new(),
            trace_names,
            max_conns: max_conns.max(1),
            buffered: 0,
            budget,
        }
    }

    fn remove(&mut self, key: &(u32, u32)) -> Option<Conn> {
        let c = self.conns.remove(key)?;
        self.buffered = self.buffered.saturating_sub(c.buffered());
        Some(c)
    }

    /// Evicts the least recently active connections (a fraction of the
    /// table, found with a partial sort).
    fn evict(&mut self, stats: &Stats) {
        let n = (self.conns.len() / EVICT_FRACTION).max(1);
        let mut ages: Vec<(u64, (u32, u32))> =
            self.conns.iter().map(|(k, c)| (c.last_ts, *k)).collect();
        if n < ages.len() {
            ages.select_nth_unstable(n);
        }
        for (_, k) in ages.into_iter().take(n) {
            self.remove(&k);
            Stats::inc(&stats.conns_evicted);
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Local and peer ports of a tracked connection, where known.
    pub fn ports(&self, tgid: u32, fd: u32) -> Option<(Option<u16>, Option<u16>)> {
        self.conns.get(&(tgid, fd)).map(|c| {
            (
                c.meta.local.map(|a| a.port()),
                c.meta.peer.map(|a| a.port()),
            )
        })
    }

    /// Starts tracking; a previous connection on the same fd is closed first.
    pub fn open(&mut self, fd: u32, meta: ConnMeta, stats: &Stats, out: &mut Vec<Exchange>) {
        let key = (meta.tgid, fd);
        if let Some(mut old) = self.remove(&key) {
            old.on_close(old.last_ts, stats, out);
        }
        if self.conns.len() >= self.max_conns {
            self.evict(stats);
        }
        Stats::inc(&stats.conns_opened);
        self.conns
            .insert(key, Conn::new(meta, fd, self.trace_names.clone()));
    }

    pub fn on_data(
        &mut self,
        hdr: &DataHeader,
        payload: &[u8],
        stats: &Stats,
        out: &mut Vec<Exchange>,
        link: &mut LinkFn<'_>,
    ) {
        match self.conns.get_mut(&(hdr.tgid, hdr.fd)) {
            Some(c) if c.meta.conn_id == hdr.conn_id => {
                let before = c.buffered();
                c.on_data(hdr, payload, stats, out, link);
                let after = c.buffered();
                self.buffered = (self.buffered + after).saturating_sub(before);
                if self.buffered > self.budget && after > 0 {
                    // Over budget: this connection's partial headers go.
                    c.requests.lose_sync();
                    c.responses.lose_sync();
                    self.buffered = self.buffered.saturating_sub(after);
                    Stats::inc(&stats.buffer_budget_drops);
                }
            }
            _ => Stats::inc(&stats.data_without_conn),
        }
    }

    pub fn close(
        &mut self,
        tgid: u32,
        fd: u32,
        conn_id: u64,
        ts: u64,
        stats: &Stats,
        out: &mut Vec<Exchange>,
    ) {
        let key = (tgid, fd);
        if self
            .conns
            .get(&key)
            .is_some_and(|c| c.meta.conn_id == conn_id)
        {
            if let Some(mut c) = self.conns.remove(&key) {
                c.on_close(ts, stats, out);
            }
        }
    }

    /// Closes every connection of a process; returns their fds.
    pub fn close_process(
        &mut self,
        tgid: u32,
        ts: u64,
        stats: &Stats,
        out: &mut Vec<Exchange>,
    ) -> Vec<u32> {
        let keys: Vec<(u32, u32)> = self
            .conns
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        for k in &keys {
            if let Some(mut c) = self.remove(k) {
                c.on_close(ts, stats, out);
            }
        }
        keys.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Closes everything (agent shutdown).
    pub fn drain(&mut self, stats: &Stats, out: &mut Vec<Exchange>) {
        for (_, mut c) in self.conns.drain() {
            let ts = c.last_ts;
            c.on_close(ts, stats, out);
        }
        self.buffered = 0;
    }
}

/// The role encoded in the kernel's wire types.
pub fn role_from_wire(role: u8) -> Role {
    if role == ROLE_SERVER {
        Role::Server
    } else {
        Role::Client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{DIR_EGRESS, EVENT_DATA};

    fn test_ids(_: &RequestStart<'_>) -> SpanIds {
        SpanIds {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        }
    }

    struct Feed {
        conn: Conn,
        seq: u32,
        ts: u64,
        stats: Stats,
        out: Vec<Exchange>,
    }

    impl Feed {
        fn new(role: Role) -> Self {
            Self {
                conn: Conn::new(
                    ConnMeta::new(1, 10, role, None, None),
                    3,
                    Arc::from(Vec::<String>::new()),
                ),
                seq: 0,
                ts: 100,
                stats: Stats::default(),
                out: Vec::new(),
            }
        }

        fn send(&mut self, dir: u8, payload: &[u8], total: u32) {
            let hdr = DataHeader {
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
            };
            self.seq += 1;
            self.ts += 10;
            self.conn
                .on_data(&hdr, payload, &self.stats, &mut self.out, &mut test_ids);
        }
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
        for (i, e) in f.out.iter().enumerate() {
            assert_eq!(e.request.target, format!("/item/{i}"));
            assert_eq!(e.response.status, 200);
            assert_eq!(e.end_ts - e.start_ts, 10);
            assert!(!e.end_estimated);
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
        assert_eq!(f.out[0].request.method, "HEAD");
        assert_eq!(f.out[1].response.status, 404);
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
        assert_eq!(f.out[1].request.target, "/2");
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
        assert_eq!(
            f.stats.seq_gaps.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // /1's response may have been lost: it is dropped, never paired
        // with /2's response.
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].request.target, "/2");
    }

    #[test]
    fn close_completes_read_until_close_and_counts_unanswered() {
        let mut f = Feed::new(Role::Client);
        f.send(DIR_EGRESS, b"GET /a HTTP/1.0\r\n\r\n", 19);
        f.send(DIR_INGRESS, b"HTTP/1.0 200 OK\r\n\r\nbody", 23);
        f.send(DIR_EGRESS, b"GET /b HTTP/1.0\r\n\r\n", 19);
        assert!(f.out.is_empty());
        let (stats, out) = (&f.stats, &mut f.out);
        f.conn.on_close(1000, stats, out);
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].end_ts, 110);
        assert_eq!(
            f.stats
                .unanswered_requests
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn table_is_bounded() {
        let stats = Stats::default();
        let mut out = Vec::new();
        let mut t = ConnTable::new(4, Arc::from(Vec::<String>::new()));
        for fd in 0..10 {
            let meta = ConnMeta::new(fd as u64, 1, Role::Server, None, None);
            t.open(fd, meta, &stats, &mut out);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(
            stats
                .conns_evicted
                .load(std::sync::atomic::Ordering::Relaxed),
            6
        );
    }

    #[test]
    fn partial_headers_are_bounded_across_connections() {
        let stats = Stats::default();
        let mut out = Vec::new();
        let mut t = ConnTable::with_budget(100, 4096, Arc::from(Vec::<String>::new()));
        for fd in 0..10u32 {
            let meta = ConnMeta::new(u64::from(fd), 1, Role::Server, None, None);
            t.open(fd, meta, &stats, &mut out);
            // A request head that never ends.
            let payload = [b"GET / HTTP/1.1\r\nX-Slow: ".as_slice(), &[b'a'; 900]].concat();
            let hdr = DataHeader {
                kind: EVENT_DATA,
                direction: DIR_INGRESS,
                tgid: 1,
                fd,
                conn_id: u64::from(fd),
                total_len: payload.len() as u32,
                captured_len: payload.len() as u32,
                ..Default::default()
            };
            t.on_data(&hdr, &payload, &stats, &mut out, &mut test_ids);
            assert!(t.buffered <= 4096, "buffered {}", t.buffered);
        }
        assert!(
            stats
                .buffer_budget_drops
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }
}
