//! HTTP/1 request/response pairing: requests wait in order, each response
//! answers the oldest unanswered one (RFC 9112 §9.3.2: pipelined responses
//! come back in request order).

use std::{collections::VecDeque, sync::Arc};

use super::reader::{Event, Kind, MessageReader, RequestHead, ResponseContext, ResponseHead};
use crate::{
    protocols::{
        Chunk, ContextChooser, HttpExchange, Message, Protocol, Record, RequestStart, Side, Stitch,
        Upgrade, UpgradedRequest,
    },
    telemetry::Counters,
    trace::{ids::SpanIds, task::TaskId},
};

/// HTTP/2 bytes after a `101` to h2c, in the same write, handed over.
const MAX_UPGRADE_LEFTOVER: usize = 64 * 1024;

/// Requests waiting for a response on one connection (pipelining depth).
pub const MAX_PENDING: usize = 64;

#[derive(Debug)]
struct Pending {
    request: RequestHead,
    start_ts: u64,
    task: TaskId,
    ids: SpanIds,
    response: Option<ResponseHead>,
    /// The response reader lost track inside this response's body.
    end_lost: bool,
}

/// One HTTP/1 connection: a reader per direction and the requests waiting
/// for their responses.
#[derive(Debug)]
pub struct Http1 {
    requests: MessageReader,
    responses: MessageReader,
    pending: VecDeque<Pending>,
    /// The request a `101 Switching Protocols` to h2c answered: it goes
    /// on as HTTP/2 stream 1, so it is handed over, not recorded.
    upgraded: Option<Upgrade>,
    /// The request head in progress started at a chunk boundary, and the
    /// ids the kernel chose for it are held (`ContextChooser::hold_for_head`).
    head_held: bool,
}

fn exchange(req: RequestHead, resp: ResponseHead) -> HttpExchange {
    HttpExchange {
        version: if req.version == 0 { "1.0" } else { "1.1" },
        method: req.method,
        target: req.target,
        host: req.headers.host,
        user_agent: req.headers.user_agent,
        status: resp.status,
        reset: None,
        headers_unknown: false,
    }
}

impl Http1 {
    /// `trace_names`: the trace-context headers to keep (lower case).
    pub fn new(trace_names: Arc<[String]>) -> Self {
        Self {
            requests: MessageReader::with_trace_headers(Kind::Request, trace_names.clone()),
            responses: MessageReader::with_trace_headers(Kind::Response, trace_names),
            pending: VecDeque::new(),
            upgraded: None,
            head_held: false,
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

    fn finish_front(&mut self, end_ts: u64, estimated: bool, cx: &mut Stitch<'_>) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        let Some(response) = p.response else {
            // Cannot happen through the callers (they check), but never
            // invent a response.
            return;
        };
        cx.out.push(Record {
            conn: cx.conn.clone(),
            task: p.task,
            start_ts: p.start_ts,
            end_ts: end_ts.max(p.start_ts),
            end_estimated: estimated,
            ids: p.ids,
            stream: None,
            message: Message::Http(exchange(p.request, response)),
        });
    }

    /// Finishes the front exchange if its response body could not be
    /// followed: a later message on the connection proves it has ended.
    fn finish_lost(&mut self, cx: &mut Stitch<'_>) {
        if self.pending.front().is_some_and(|p| p.end_lost) {
            Counters::inc(&cx.counters.estimated_ends);
            let end = self.responses.last_ts();
            self.finish_front(end, true, cx);
        }
    }

    fn front_answered(&self) -> bool {
        self.pending.front().is_some_and(|p| p.response.is_some())
    }

    fn on_request_event(
        &mut self,
        ev: Event,
        task: TaskId,
        index_in_chunk: Option<usize>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        match ev {
            Event::Request { head, start_ts } => {
                self.finish_lost(cx);
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    Counters::inc(&cx.counters.pending_overflow);
                }
                let chosen = ids.on_request(&RequestStart {
                    conn: cx.conn,
                    task,
                    headers: &head.headers,
                    target: &head.target,
                    index_in_chunk,
                    stream: None,
                });
                self.pending.push_back(Pending {
                    request: head,
                    start_ts,
                    task,
                    ids: chosen,
                    response: None,
                    end_lost: false,
                });
            }
            Event::Lost(e) => {
                Counters::inc(&cx.counters.parse_errors);
                tracing::debug!(tgid = cx.conn.tgid, "request stream lost: {e}");
            }
            Event::End { .. } | Event::Response { .. } => {}
        }
    }

    fn on_response_event(&mut self, ev: Event, ts: u64, cx: &mut Stitch<'_>) {
        match ev {
            Event::Response { head, .. } => {
                if (100..200).contains(&head.status) && head.status != 101 {
                    return; // interim response; the final one follows
                }
                self.finish_lost(cx);
                let Some(p) = self.pending.iter_mut().find(|p| p.response.is_none()) else {
                    Counters::inc(&cx.counters.orphan_responses);
                    return;
                };
                let upgrade = head.status == 101;
                let h2c = upgrade && head.headers.upgrade_h2c && p.request.headers.upgrade_h2c;
                p.response = Some(head);
                if upgrade || self.responses.is_tunnel() {
                    self.requests.enter_tunnel();
                    self.responses.enter_tunnel();
                }
                if h2c {
                    // The response to this request comes as HTTP/2 stream 1.
                    if let Some(p) = self.pending.pop_front() {
                        self.upgraded = Some(Upgrade::H2c(UpgradedRequest {
                            method: p.request.method,
                            target: p.request.target,
                            host: p.request.headers.host,
                            user_agent: p.request.headers.user_agent,
                            start_ts: p.start_ts,
                            task: p.task,
                            ids: p.ids,
                            leftover: Vec::new(),
                            leftover_gap: 0,
                        }));
                    }
                    return;
                }
                if self.responses.at_message_boundary() && self.front_answered() {
                    self.finish_front(ts, false, cx);
                }
            }
            Event::End { end_ts } => {
                if self.front_answered() {
                    self.finish_front(end_ts, false, cx);
                }
            }
            Event::Lost(e) => {
                Counters::inc(&cx.counters.parse_errors);
                tracing::debug!(tgid = cx.conn.tgid, "response stream lost: {e}");
                if let Some(p) = self.pending.front_mut() {
                    if p.response.is_some() {
                        p.end_lost = true;
                    }
                }
            }
            Event::Request { .. } => {}
        }
    }
}

impl Protocol for Http1 {
    fn on_chunk(&mut self, chunk: &Chunk<'_>, ids: &mut dyn ContextChooser, cx: &mut Stitch<'_>) {
        let ts = chunk.ts;
        match chunk.side {
            Side::Request => {
                // Requests that start in this chunk are numbered only when
                // the chunk starts at a message boundary (nothing held
                // over): those are the ones the kernel may have chosen ids
                // for.
                // A head the previous chunk started at a boundary and left
                // incomplete (a peer's send split by an injected header,
                // say) is request 0 here: its ids were held over.
                let mut index = (self.requests.starts_fresh() || self.head_held).then_some(0usize);
                self.head_held = false;
                self.requests.begin_chunk(chunk.bytes, ts);
                let mut input = chunk.bytes;
                while let Some(ev) = self
                    .requests
                    .step(&mut input, ts, ResponseContext::default())
                {
                    let is_head = matches!(ev, Event::Request { .. });
                    self.on_request_event(ev, chunk.task, index, ids, cx);
                    if is_head {
                        index = index.map(|i| i + 1);
                    }
                }
                if let Some(ev) = self.requests.gap(chunk.gap, ts) {
                    self.on_request_event(ev, chunk.task, None, ids, cx);
                } else if index.is_some() && self.requests.in_head() {
                    // The next request's head goes on in a later chunk:
                    // the kernel's ids for it (if any) wait for it.
                    ids.hold_for_head();
                    self.head_held = true;
                }
            }
            Side::Response => {
                self.responses.begin_chunk(chunk.bytes, ts);
                let mut input = chunk.bytes;
                loop {
                    let ctx = self.response_context();
                    let Some(ev) = self.responses.step(&mut input, ts, ctx) else {
                        break;
                    };
                    self.on_response_event(ev, ts, cx);
                    if let Some(Upgrade::H2c(up)) = &mut self.upgraded {
                        // HTTP/2 may follow the 101 in the same write: it
                        // goes to the HTTP/2 parser, not the tunnel.
                        let n = input.len().min(MAX_UPGRADE_LEFTOVER);
                        let cut = (input.len() - n) as u64;
                        up.leftover = input[..n].to_vec();
                        up.leftover_gap = chunk.gap + cut;
                        return;
                    }
                }
                if let Some(ev) = self.responses.gap(chunk.gap, ts) {
                    self.on_response_event(ev, ts, cx);
                }
            }
        }
    }

    fn on_lost(&mut self, cx: &mut Stitch<'_>) {
        self.requests.lose_sync();
        self.responses.lose_sync();
        // A request still waiting may have had its response in the lost
        // events: pairing it with the next response would be a wrong span,
        // so drop it (counted).
        let before = self.pending.len();
        self.pending.retain(|p| p.response.is_some());
        Counters::add(
            &cx.counters.unanswered_requests,
            (before - self.pending.len()) as u64,
        );
        for p in self.pending.iter_mut() {
            p.end_lost = true;
        }
    }

    fn on_close(&mut self, ts: u64, cx: &mut Stitch<'_>) {
        if let Some(ev) = self.responses.close(ts) {
            self.on_response_event(ev, ts, cx);
        }
        while let Some(p) = self.pending.front() {
            if p.response.is_some() {
                Counters::inc(&cx.counters.estimated_ends);
                let end = self.responses.last_ts();
                self.finish_front(end, true, cx);
            } else {
                Counters::inc(&cx.counters.unanswered_requests);
                self.pending.pop_front();
            }
        }
    }

    fn buffered(&self) -> usize {
        self.requests.buffered() + self.responses.buffered()
    }

    fn shed(&mut self) {
        self.requests.lose_sync();
        self.responses.lose_sync();
    }

    fn switched(&self) -> bool {
        // After a 101 or a CONNECT tunnel both readers stop parsing; the
        // last exchange (the upgrade itself) is already recorded, or
        // handed over.
        self.requests.is_tunnel() && self.pending.is_empty()
    }

    fn take_upgrade(&mut self) -> Option<Upgrade> {
        self.upgraded.take()
    }
}
