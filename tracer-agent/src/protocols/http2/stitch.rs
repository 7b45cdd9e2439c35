//! One HTTP/2 connection: a frame reader and an HPACK decoder per
//! direction, and its streams, each paired by stream id into a record
//! when the response side ends it (END_STREAM, or RST_STREAM).

use std::{collections::HashMap, sync::Arc};

use super::{
    frame::{self, FrameHeader, FrameReader, Item},
    headers::Fields,
    hpack::{BlockReport, Decoder},
};
use crate::{
    protocols::{
        Chunk, ContextChooser, GrpcCall, HttpExchange, Message, Protocol, Record, RequestStart,
        Side, Stitch, UpgradedRequest,
    },
    telemetry::Counters,
    trace::{ids::SpanIds, task::TaskId},
};

/// Streams followed at once on one connection; the oldest is dropped
/// (and counted) beyond this.
pub const MAX_STREAMS: usize = 1024;
/// Largest header block (HEADERS plus CONTINUATIONs) assembled.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Most bytes an HPACK dynamic table holds here, whatever the peer asks.
pub const MAX_HPACK_TABLE: usize = 64 * 1024;

#[derive(Debug)]
struct Stream {
    start_ts: u64,
    task: TaskId,
    ids: SpanIds,
    request: Fields,
    /// Response headers and trailers, merged.
    response: Fields,
    response_started: bool,
    /// A request header block was not decoded (too large, cut).
    request_lost: bool,
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug)]
struct Block {
    head: BlockHead,
    buf: Vec<u8>,
}

/// Whose header block it is.
#[derive(Debug, Clone, Copy)]
struct BlockHead {
    stream: u32,
    /// A PUSH_PROMISE's block: decoded for the table, then dropped.
    push: bool,
    end_stream: bool,
}

/// The connection's state besides the two readers (so a reader can feed
/// it while borrowed).
#[derive(Debug)]
struct State {
    hpack: [Decoder; 2],
    blocks: [Option<Block>; 2],
    streams: HashMap<u32, Stream>,
    trace_names: Arc<[String]>,
}

#[derive(Debug)]
pub struct Http2 {
    readers: [FrameReader; 2],
    state: State,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Request => 0,
        Side::Response => 1,
    }
}

impl Http2 {
    /// `joined`: the connection was already running (its HPACK tables
    /// are unknown until a preface or a resynchronisation).
    pub fn new(trace_names: Arc<[String]>, joined: bool) -> Self {
        let at_start = !joined;
        let hpack = || Decoder::new(MAX_HPACK_TABLE, joined);
        Self {
            readers: [FrameReader::new(at_start), FrameReader::new(at_start)],
            state: State {
                hpack: [hpack(), hpack()],
                blocks: [None, None],
                streams: HashMap::new(),
                trace_names,
            },
        }
    }

    /// A connection upgraded from HTTP/1 (`Upgrade: h2c`): the request
    /// that asked is stream 1, already sent (RFC 7540 §3.2); both
    /// directions start at their first HTTP/2 byte.
    pub fn upgraded(trace_names: Arc<[String]>, req: UpgradedRequest) -> Self {
        let mut h2 = Self::new(trace_names, false);
        let request = Fields {
            method: Some(req.method),
            path: Some(req.target),
            authority: req.host,
            user_agent: req.user_agent,
            ..Fields::default()
        };
        h2.state.streams.insert(
            1,
            Stream {
                start_ts: req.start_ts,
                task: req.task,
                ids: req.ids,
                request,
                response: Fields::default(),
                response_started: false,
                request_lost: false,
            },
        );
        h2
    }

    /// Streams followed now.
    pub fn streams(&self) -> usize {
        self.state.streams.len()
    }
}

/// A HEADERS frame's header block fragment, without padding and priority
/// (RFC 9113 §6.2); `None` if the lengths do not fit.
fn headers_fragment(h: FrameHeader, p: &[u8]) -> Option<&[u8]> {
    let mut p = p;
    let mut pad = 0usize;
    if h.flags & frame::FLAG_PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if h.flags & frame::FLAG_PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// A PUSH_PROMISE's fragment (§6.6).
fn push_fragment(h: FrameHeader, p: &[u8]) -> Option<&[u8]> {
    let mut p = p;
    let mut pad = 0usize;
    if h.flags & frame::FLAG_PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    let p = p.get(4..)?;
    p.get(..p.len().checked_sub(pad)?)
}

impl State {
    fn on_item(
        &mut self,
        side: Side,
        item: Item<'_>,
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        let d = side_index(side);
        match item {
            Item::Data(h) => {
                if h.flags & frame::FLAG_END_STREAM != 0 && side == Side::Response {
                    self.complete(h.stream, chunk.ts, None, cx);
                }
            }
            Item::Frame(h, payload) => self.on_frame(side, h, payload, chunk, ids, cx),
            Item::Dropped(h) => {
                if matches!(
                    h.kind,
                    frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE
                ) {
                    // A CONTINUATION's block, or one this frame cuts.
                    self.pending_lost(side, chunk, ids, cx);
                    self.block_lost(d, cx);
                    if h.kind == frame::HEADERS {
                        let end_stream = h.flags & frame::FLAG_END_STREAM != 0;
                        self.headers_lost(side, h.stream, end_stream, chunk, ids, cx);
                    }
                }
            }
            Item::Lost => {
                Counters::inc(&cx.counters.h2_framing_lost);
                self.pending_lost(side, chunk, ids, cx);
                self.block_lost(d, cx);
            }
            Item::Preface => {
                // A connection starts here: both tables are empty.
                self.hpack = [
                    Decoder::new(MAX_HPACK_TABLE, false),
                    Decoder::new(MAX_HPACK_TABLE, false),
                ];
                self.blocks = [None, None];
            }
        }
    }

    /// A header block of direction `d` was missed: its table is in doubt.
    fn block_lost(&mut self, d: usize, cx: &mut Stitch<'_>) {
        Counters::inc(&cx.counters.h2_header_blocks_dropped);
        self.hpack[d].forget();
        self.blocks[d] = None;
    }

    /// The header block waiting for CONTINUATIONs on `side` will never be
    /// whole: its stream is treated as if its headers were not decoded.
    fn pending_lost(
        &mut self,
        side: Side,
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        if let Some(b) = self.blocks[side_index(side)].take() {
            if !b.head.push {
                self.headers_lost(side, b.head.stream, b.head.end_stream, chunk, ids, cx);
            }
        }
    }

    /// A header block was not decoded. A request's stream still gets a
    /// span (named `*`, marked) rather than none; a response's stream is
    /// marked, and still ends if the frame said END_STREAM (the flag is
    /// in the frame header, whatever became of the block).
    fn headers_lost(
        &mut self,
        side: Side,
        stream: u32,
        end_stream: bool,
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        match side {
            Side::Request => {
                if !self.streams.contains_key(&stream) {
                    let fields = Fields {
                        unknown: 1,
                        ..Fields::default()
                    };
                    self.start_stream(stream, fields, chunk, ids, cx);
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.request_lost = true;
                    }
                }
            }
            Side::Response => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.response.unknown = s.response.unknown.saturating_add(1);
                }
                if end_stream {
                    self.complete(stream, chunk.ts, None, cx);
                }
            }
        }
    }

    fn on_frame(
        &mut self,
        side: Side,
        h: FrameHeader,
        payload: &[u8],
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        let d = side_index(side);
        if self.blocks[d].is_some() && h.kind != frame::CONTINUATION {
            // §6.10: nothing may interleave a header block.
            self.pending_lost(side, chunk, ids, cx);
            self.block_lost(d, cx);
        }
        match h.kind {
            frame::HEADERS => {
                let Some(fragment) = headers_fragment(h, payload) else {
                    Counters::inc(&cx.counters.parse_errors);
                    self.block_lost(d, cx);
                    let end_stream = h.flags & frame::FLAG_END_STREAM != 0;
                    self.headers_lost(side, h.stream, end_stream, chunk, ids, cx);
                    return;
                };
                let head = BlockHead {
                    stream: h.stream,
                    push: false,
                    end_stream: h.flags & frame::FLAG_END_STREAM != 0,
                };
                self.block_start(side, head, fragment, h.flags, chunk, ids, cx);
            }
            frame::PUSH_PROMISE => {
                let Some(fragment) = push_fragment(h, payload) else {
                    Counters::inc(&cx.counters.parse_errors);
                    self.block_lost(d, cx);
                    return;
                };
                let head = BlockHead {
                    stream: h.stream,
                    push: true,
                    end_stream: false,
                };
                self.block_start(side, head, fragment, h.flags, chunk, ids, cx);
            }
            frame::CONTINUATION => {
                let Some(mut block) = self.blocks[d].take() else {
                    // Its HEADERS was not seen: the table is in doubt.
                    self.block_lost(d, cx);
                    return;
                };
                let head = block.head;
                if head.stream != h.stream || block.buf.len() + payload.len() > MAX_HEADER_BLOCK {
                    self.block_lost(d, cx);
                    if !head.push {
                        self.headers_lost(side, head.stream, head.end_stream, chunk, ids, cx);
                    }
                    return;
                }
                // Exactly: amortised growth could hold twice the cap.
                block.buf.reserve_exact(payload.len());
                block.buf.extend_from_slice(payload);
                if h.flags & frame::FLAG_END_HEADERS == 0 {
                    self.blocks[d] = Some(block);
                } else {
                    self.decode_block(side, head, &block.buf, chunk, ids, cx);
                }
            }
            frame::RST_STREAM => {
                let code = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                Counters::inc(&cx.counters.h2_streams_reset);
                self.complete(h.stream, chunk.ts, Some(code.unwrap_or(u32::MAX)), cx);
            }
            frame::SETTINGS if h.flags & frame::FLAG_ACK == 0 => {
                for s in payload.chunks_exact(6) {
                    if u16::from_be_bytes([s[0], s[1]]) == 1 {
                        // SETTINGS_HEADER_TABLE_SIZE: how large the
                        // sender's decoder lets the other side's encoder
                        // make its table (it must then say so in a size
                        // update, which the decoder follows).
                        let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]) as usize;
                        if v > MAX_HPACK_TABLE {
                            Counters::inc(&cx.counters.h2_table_size_capped);
                        }
                    }
                }
            }
            // A client's GOAWAY names the last stream the server opened
            // (push; usually 0): the client's own streams go on (§6.8).
            frame::GOAWAY if side == Side::Response => {
                if let Some(b) = payload.get(..4) {
                    // Streams above the last one the server processed
                    // never will be: they get no span.
                    let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                    let before = self.streams.len();
                    self.streams.retain(|id, _| *id <= last);
                    Counters::add(
                        &cx.counters.h2_streams_refused,
                        (before - self.streams.len()) as u64,
                    );
                }
            }
            _ => {}
        }
    }

    /// A HEADERS or PUSH_PROMISE frame's fragment: decoded in place when
    /// it is the whole block (the usual case: no copy), else held for its
    /// CONTINUATION frames.
    #[allow(clippy::too_many_arguments)]
    fn block_start(
        &mut self,
        side: Side,
        head: BlockHead,
        fragment: &[u8],
        flags: u8,
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        if flags & frame::FLAG_END_HEADERS == 0 {
            self.blocks[side_index(side)] = Some(Block {
                head,
                buf: fragment.to_vec(),
            });
        } else {
            self.decode_block(side, head, fragment, chunk, ids, cx);
        }
    }

    /// Decodes a whole header block and applies it to its stream.
    fn decode_block(
        &mut self,
        side: Side,
        block: BlockHead,
        buf: &[u8],
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        let d = side_index(side);
        let mut fields = Fields::default();
        let names = &self.trace_names;
        let want = |n: &[u8]| Fields::wanted(n, names);
        let r = self.hpack[d].decode_wanted(buf, &want, |f| fields.take(f, names));
        match r {
            Ok(BlockReport {
                unknown, capped, ..
            }) => {
                Counters::add(&cx.counters.h2_unknown_header_fields, u64::from(unknown));
                if capped {
                    Counters::inc(&cx.counters.h2_table_size_capped);
                }
            }
            Err(e) => {
                Counters::inc(&cx.counters.parse_errors);
                Counters::inc(&cx.counters.h2_header_blocks_dropped);
                tracing::debug!("HTTP/2 header block not decoded: {e}");
                if !block.push {
                    self.headers_lost(side, block.stream, block.end_stream, chunk, ids, cx);
                }
                return;
            }
        }
        if block.push {
            return;
        }
        match side {
            Side::Request => {
                if !self.streams.contains_key(&block.stream) {
                    self.start_stream(block.stream, fields, chunk, ids, cx);
                }
                // Else request trailers: nothing in them is needed.
            }
            Side::Response => {
                let Some(s) = self.streams.get_mut(&block.stream) else {
                    if !block.end_stream {
                        Counters::inc(&cx.counters.orphan_responses);
                    }
                    return;
                };
                if !s.response_started && fields.status.is_some_and(|st| st < 200) {
                    // 1xx informational: the real response follows.
                    return;
                }
                s.response_started = true;
                merge(&mut s.response, fields);
                if block.end_stream {
                    self.complete(block.stream, chunk.ts, None, cx);
                }
            }
        }
    }

    fn start_stream(
        &mut self,
        id: u32,
        fields: Fields,
        chunk: &Chunk<'_>,
        ids: &mut dyn ContextChooser,
        cx: &mut Stitch<'_>,
    ) {
        if self.streams.len() >= MAX_STREAMS {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.start_ts)
                .map(|(id, _)| *id);
            if let Some(o) = oldest {
                self.streams.remove(&o);
                Counters::inc(&cx.counters.h2_streams_evicted);
            }
        }
        let chosen = ids.on_request(&RequestStart {
            conn: cx.conn,
            task: chunk.task,
            headers: &fields,
            target: fields.path.as_deref().unwrap_or(""),
            // The kernel chooses ids for HTTP/1 requests only.
            index_in_chunk: None,
            stream: Some(id),
        });
        self.streams.insert(
            id,
            Stream {
                start_ts: chunk.ts,
                task: chunk.task,
                ids: chosen,
                request: fields,
                response: Fields::default(),
                response_started: false,
                request_lost: false,
            },
        );
    }

    /// The stream ended on the response side (or was reset): its record.
    fn complete(&mut self, id: u32, end_ts: u64, reset: Option<u32>, cx: &mut Stitch<'_>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let unknown = s.request.unknown > 0 || s.response.unknown > 0 || s.request_lost;
        // gRPC by its content-type, or by its trailers; after a join the
        // content-type may be an unknown table entry, and then a POST to a
        // `/package.Service/Method` path is gRPC too (no other protocol
        // over HTTP/2 uses that shape with unknown fields).
        let grpc_shaped = unknown
            && s.request.method.as_deref() == Some("POST")
            && s.request.path.as_deref().is_some_and(looks_like_grpc_path);
        let grpc = s.request.is_grpc() || s.response.grpc_status.is_some() || grpc_shaped;
        let message = if grpc {
            Message::Grpc(GrpcCall {
                path: s.request.path,
                authority: s.request.authority,
                user_agent: s.request.user_agent,
                http_status: s.response.status,
                status: s.response.grpc_status,
                reset,
                headers_unknown: unknown,
            })
        } else {
            Message::Http(HttpExchange {
                method: s.request.method.unwrap_or_default(),
                target: s.request.path.unwrap_or_default(),
                version: "2",
                host: s.request.authority,
                user_agent: s.request.user_agent,
                status: s.response.status.unwrap_or(0),
                reset,
                headers_unknown: unknown,
            })
        };
        cx.out.push(Record {
            conn: cx.conn.clone(),
            task: s.task,
            start_ts: s.start_ts,
            end_ts: end_ts.max(s.start_ts),
            end_estimated: false,
            ids: s.ids,
            stream: Some(id),
            message,
        });
    }
}

/// `/package.Service/Method`: two non-empty parts, a dot in the first.
fn looks_like_grpc_path(p: &str) -> bool {
    p.strip_prefix('/')
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(svc, m)| svc.contains('.') && !m.is_empty() && !m.contains('/'))
}

/// Trailers add to the response headers.
fn merge(into: &mut Fields, f: Fields) {
    into.status = into.status.or(f.status);
    into.content_type = into.content_type.take().or(f.content_type);
    into.grpc_status = f.grpc_status.or(into.grpc_status);
    // A peer may send header blocks on a stream without end.
    into.unknown = into.unknown.saturating_add(f.unknown);
}

impl Protocol for Http2 {
    fn on_chunk(&mut self, chunk: &Chunk<'_>, ids: &mut dyn ContextChooser, cx: &mut Stitch<'_>) {
        let d = side_index(chunk.side);
        let state = &mut self.state;
        self.readers[d].feed(chunk.bytes, chunk.gap, chunk.starts_syscall, &mut |item| {
            state.on_item(chunk.side, item, chunk, ids, cx)
        });
    }

    fn on_lost(&mut self, cx: &mut Stitch<'_>) {
        for d in 0..2 {
            self.readers[d].lose();
            self.state.hpack[d].forget();
            self.state.blocks[d] = None;
        }
        Counters::inc(&cx.counters.h2_framing_lost);
    }

    fn on_close(&mut self, _ts: u64, cx: &mut Stitch<'_>) {
        Counters::add(
            &cx.counters.unanswered_requests,
            self.state.streams.len() as u64,
        );
        self.state.streams.clear();
    }

    fn buffered(&self) -> usize {
        self.readers
            .iter()
            .map(FrameReader::buffered)
            .sum::<usize>()
            + self
                .state
                .blocks
                .iter()
                .flatten()
                .map(|b| b.buf.capacity())
                .sum::<usize>()
            + self
                .state
                .hpack
                .iter()
                .map(|h| h.table().size())
                .sum::<usize>()
    }

    fn shed(&mut self) {
        // Partial frames, blocks and tables all go: each direction finds
        // its framing again and its table resynchronises.
        for d in 0..2 {
            self.readers[d].lose();
            self.state.hpack[d].forget();
            self.state.blocks[d] = None;
        }
    }

    fn switched(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use loona_hpack::Encoder;

    use super::*;
    use crate::{
        metadata::conn::{ConnMeta, Role},
        protocols::{
            http2::frame::{tests::frame, *},
            test_support::FixedIds,
        },
    };

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";
    /// The server thread that reads requests, and the one that answers.
    const READER: TaskId = TaskId::Thread { tgid: 10, tid: 11 };
    const WRITER: TaskId = TaskId::Thread { tgid: 10, tid: 12 };

    fn names() -> Arc<[String]> {
        Arc::from(vec!["traceparent".to_owned(), "tracestate".to_owned()])
    }

    /// Records the traceparent each request was started with.
    #[derive(Default)]
    struct Recorder {
        traceparents: Vec<Option<String>>,
    }

    impl ContextChooser for Recorder {
        fn on_request(&mut self, r: &RequestStart<'_>) -> SpanIds {
            self.traceparents
                .push(r.headers.get("traceparent").map(str::to_owned));
            FixedIds.on_request(r)
        }
    }

    /// One server-side connection driven through the `Protocol` trait.
    struct Conn {
        h2: Http2,
        meta: Arc<ConnMeta>,
        counters: Counters,
        out: Vec<Record>,
        ids: Recorder,
    }

    impl Conn {
        fn new(joined: bool) -> Self {
            Self {
                h2: Http2::new(names(), joined),
                meta: Arc::new(ConnMeta::new(1, 10, 3, Role::Server, None, None)),
                counters: Counters::default(),
                out: Vec::new(),
                ids: Recorder::default(),
            }
        }

        fn piece(&mut self, side: Side, bytes: &[u8], gap: u64, ts: u64, starts_syscall: bool) {
            let chunk = Chunk {
                side,
                bytes,
                gap,
                ts,
                task: match side {
                    Side::Request => READER,
                    Side::Response => WRITER,
                },
                starts_syscall,
            };
            let mut cx = Stitch {
                conn: &self.meta,
                out: &mut self.out,
                counters: &self.counters,
            };
            self.h2.on_chunk(&chunk, &mut self.ids, &mut cx);
        }

        /// One whole syscall.
        fn send(&mut self, side: Side, bytes: &[u8], ts: u64) {
            self.piece(side, bytes, 0, ts, true);
        }

        fn lost(&mut self) {
            let mut cx = Stitch {
                conn: &self.meta,
                out: &mut self.out,
                counters: &self.counters,
            };
            self.h2.on_lost(&mut cx);
        }

        fn close(&mut self, ts: u64) {
            let mut cx = Stitch {
                conn: &self.meta,
                out: &mut self.out,
                counters: &self.counters,
            };
            self.h2.on_close(ts, &mut cx);
        }

        fn grpc(&self, i: usize) -> &GrpcCall {
            match &self.out[i].message {
                Message::Grpc(g) => g,
                m => panic!("record {i} is not gRPC: {m:?}"),
            }
        }

        fn http(&self, i: usize) -> &HttpExchange {
            match &self.out[i].message {
                Message::Http(h) => h,
                m => panic!("record {i} is not HTTP: {m:?}"),
            }
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn block(enc: &mut Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
        enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// A length-prefixed gRPC message.
    fn grpc_message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn grpc_request(enc: &mut Encoder<'_>, path: &str, traceparent: &str) -> Vec<u8> {
        block(
            enc,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost:50051"),
                ("content-type", "application/grpc"),
                ("user-agent", "grpc-go/1.64.0"),
                ("te", "trailers"),
                ("traceparent", traceparent),
            ],
        )
    }

    fn client_start() -> Vec<u8> {
        let mut w = PREFACE.to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_HEADER_TABLE_SIZE 4096.
        w.extend(frame(
            SETTINGS,
            0,
            0,
            &[0, 4, 0, 0x40, 0, 0, 0, 1, 0, 0, 0x10, 0],
        ));
        w
    }

    /// A unary call's two directions on stream 1, each as
    /// `(bytes before a DATA payload, payload, bytes after)`.
    fn unary_parts() -> ([Vec<u8>; 3], [Vec<u8>; 3]) {
        let (mut req_enc, mut resp_enc) = (Encoder::new(), Encoder::new());
        let mut req = client_start();
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpc_request(&mut req_enc, SAY_HELLO, TP),
        ));
        let body = grpc_message(b"\n\x05world");
        let data = frame(DATA, FLAG_END_STREAM, 1, &body);
        req.extend_from_slice(&data[..HEADER_LEN]);
        // The client acknowledges the server's SETTINGS after its data.
        let req_after = frame(SETTINGS, FLAG_ACK, 0, &[]);

        let mut resp = frame(SETTINGS, 0, 0, &[]);
        resp.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
        let h = block(
            &mut resp_enc,
            &[(":status", "200"), ("content-type", "application/grpc")],
        );
        resp.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &h));
        let reply = grpc_message(b"\n\x0bHello world");
        let data = frame(DATA, 0, 1, &reply);
        resp.extend_from_slice(&data[..HEADER_LEN]);
        let t = block(&mut resp_enc, &[("grpc-status", "0"), ("grpc-message", "")]);
        let resp_after = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &t);
        ([req, body, req_after], [resp, reply, resp_after])
    }

    fn unary_wire() -> (Vec<u8>, Vec<u8>) {
        let (req, resp) = unary_parts();
        (req.concat(), resp.concat())
    }

    fn assert_unary(c: &Conn, start_ts: u64, end_ts: u64) {
        assert_eq!(c.out.len(), 1);
        let r = &c.out[0];
        assert_eq!(r.task, READER);
        assert_eq!((r.start_ts, r.end_ts), (start_ts, end_ts));
        assert!(!r.end_estimated);
        assert_eq!(
            *c.grpc(0),
            GrpcCall {
                path: Some(SAY_HELLO.into()),
                authority: Some("localhost:50051".into()),
                user_agent: Some("grpc-go/1.64.0".into()),
                http_status: Some(200),
                status: Some(0),
                reset: None,
                headers_unknown: false,
            }
        );
        assert_eq!(c.ids.traceparents, vec![Some(TP.to_owned())]);
        assert_eq!(c.h2.streams(), 0);
        assert_eq!(get(&c.counters.h2_unknown_header_fields), 0);
        assert_eq!(get(&c.counters.h2_header_blocks_dropped), 0);
        assert_eq!(get(&c.counters.h2_framing_lost), 0);
        assert_eq!(get(&c.counters.parse_errors), 0);
    }

    #[test]
    fn grpc_unary_as_a_server() {
        let (req, resp) = unary_wire();
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        assert!(c.out.is_empty());
        assert_eq!(c.h2.streams(), 1);
        c.send(Side::Response, &resp, 250);
        assert_unary(&c, 100, 250);
        c.close(300);
        assert_eq!(get(&c.counters.unanswered_requests), 0);
    }

    #[test]
    fn grpc_unary_with_data_payloads_as_gaps() {
        let (req, resp) = unary_parts();
        let mut c = Conn::new(false);
        // What the kernel sends: DATA payloads as length-only gaps, in
        // the middle of the syscall that wrote them.
        c.piece(Side::Request, &req[0], 0, 100, true);
        c.piece(Side::Request, &[], req[1].len() as u64, 100, false);
        c.piece(Side::Request, &req[2], 0, 100, false);
        c.piece(Side::Response, &resp[0], resp[1].len() as u64, 250, true);
        c.piece(Side::Response, &resp[2], 0, 250, false);
        assert_unary(&c, 100, 250);
        // No frame is partial: what is held is the HPACK tables (te,
        // traceparent; grpc-message) and small frames' capacity.
        assert!(c.h2.buffered() < 1024, "{}", c.h2.buffered());
    }

    #[test]
    fn grpc_unary_split_at_every_offset() {
        let (req, resp) = unary_wire();
        for cut in 0..=req.len().max(resp.len()) {
            let (rc, pc) = (cut.min(req.len()), cut.min(resp.len()));
            let mut c = Conn::new(false);
            c.send(Side::Request, &req[..rc], 100);
            c.send(Side::Request, &req[rc..], 110);
            c.send(Side::Response, &resp[..pc], 240);
            c.send(Side::Response, &resp[pc..], 250);
            // The request starts when its HEADERS frame is whole.
            let headers_end = client_start().len() + HEADER_LEN + {
                let mut e = Encoder::new();
                grpc_request(&mut e, SAY_HELLO, TP).len()
            };
            let start = if rc >= headers_end { 100 } else { 110 };
            // The response ends with its last byte.
            let end = if pc == resp.len() { 240 } else { 250 };
            assert_unary(&c, start, end);
        }
    }

    #[test]
    fn grpc_trailers_only_error() {
        let (mut req_enc, mut resp_enc) = (Encoder::new(), Encoder::new());
        let mut req = client_start();
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpc_request(&mut req_enc, SAY_HELLO, TP),
        ));
        req.extend(frame(DATA, FLAG_END_STREAM, 1, &grpc_message(b"")));
        let t = block(
            &mut resp_enc,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
                ("grpc-message", "no such greeting"),
            ],
        );
        let resp = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &t);
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        c.send(Side::Response, &resp, 180);
        assert_eq!(c.out.len(), 1);
        let g = c.grpc(0);
        assert_eq!(g.path.as_deref(), Some(SAY_HELLO));
        assert_eq!(
            (g.http_status, g.status, g.reset),
            (Some(200), Some(5), None)
        );
        assert!(!g.headers_unknown);
        assert_eq!((c.out[0].start_ts, c.out[0].end_ts), (100, 180));
    }

    #[test]
    fn grpc_server_streaming_is_one_record() {
        let (mut req_enc, mut resp_enc) = (Encoder::new(), Encoder::new());
        let mut req = client_start();
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpc_request(&mut req_enc, "/route.Guide/ListFeatures", TP),
        ));
        req.extend(frame(DATA, FLAG_END_STREAM, 1, &grpc_message(b"rect")));
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        let h = block(
            &mut resp_enc,
            &[
                (":status", "200"),
                ("content-type", "application/grpc+proto"),
            ],
        );
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS, 1, &h),
            110,
        );
        for i in 0..50u64 {
            let msg = grpc_message(format!("feature {i}").as_bytes());
            c.send(Side::Response, &frame(DATA, 0, 1, &msg), 120 + i);
            c.send(Side::Response, &frame(PING, 0, 0, &[0; 8]), 120 + i);
        }
        assert!(c.out.is_empty());
        let t = block(&mut resp_enc, &[("grpc-status", "0")]);
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &t),
            900,
        );
        assert_eq!(c.out.len(), 1);
        let g = c.grpc(0);
        assert_eq!(g.path.as_deref(), Some("/route.Guide/ListFeatures"));
        assert_eq!((g.http_status, g.status), (Some(200), Some(0)));
        assert_eq!((c.out[0].start_ts, c.out[0].end_ts), (100, 900));
    }

    #[test]
    fn reset_before_the_response() {
        let mut enc = Encoder::new();
        let mut req = client_start();
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpc_request(&mut enc, SAY_HELLO, TP),
        ));
        req.extend(frame(DATA, FLAG_END_STREAM, 1, &grpc_message(b"x")));
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        // The client cancels (CANCEL = 8).
        c.send(Side::Request, &frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]), 170);
        assert_eq!(c.out.len(), 1);
        let g = c.grpc(0);
        assert_eq!(g.path.as_deref(), Some(SAY_HELLO));
        assert_eq!((g.http_status, g.status, g.reset), (None, None, Some(8)));
        assert_eq!((c.out[0].start_ts, c.out[0].end_ts), (100, 170));
        assert_eq!(get(&c.counters.h2_streams_reset), 1);
        // The server's late answer on the reset stream pairs with nothing.
        let mut resp_enc = Encoder::new();
        let h = block(&mut resp_enc, &[(":status", "200")]);
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS, 1, &h),
            180,
        );
        assert_eq!(c.out.len(), 1);
        assert_eq!(get(&c.counters.orphan_responses), 1);

        // A plain HTTP request reset by the server (REFUSED_STREAM = 7).
        let get_block = block(
            &mut enc,
            &[(":method", "GET"), (":scheme", "http"), (":path", "/slow")],
        );
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &get_block),
            200,
        );
        c.send(Side::Response, &frame(RST_STREAM, 0, 3, &[0, 0, 0, 7]), 210);
        assert_eq!(c.out.len(), 2);
        let h = c.http(1);
        assert_eq!(
            (h.target.as_str(), h.status, h.reset),
            ("/slow", 0, Some(7))
        );
        assert_eq!(get(&c.counters.h2_streams_reset), 2);
    }

    #[test]
    fn continuation_and_padded_priority_headers() {
        let mut enc = Encoder::new();
        let b = grpc_request(&mut enc, SAY_HELLO, TP);
        let (a, rest) = b.split_at(7);
        let (m, z) = rest.split_at(rest.len() / 2);
        let mut req = client_start();
        req.extend(frame(HEADERS, 0, 1, a));
        req.extend(frame(CONTINUATION, 0, 1, m));
        req.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, z));
        // Stream 3: padded, with a priority, the block in one frame.
        let b3 = grpc_request(&mut enc, "/helloworld.Greeter/SayBye", TP);
        let mut p = vec![4u8]; // pad length
        p.extend_from_slice(&[0x80, 0, 0, 1, 15]); // exclusive on 1, weight
        p.extend_from_slice(&b3);
        p.extend_from_slice(&[0; 4]);
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &p,
        ));
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        assert_eq!(c.h2.streams(), 2);
        let mut resp_enc = Encoder::new();
        for (id, ts) in [(3u32, 150u64), (1, 160)] {
            let h = block(&mut resp_enc, &[(":status", "200"), ("grpc-status", "0")]);
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, id, &h),
                ts,
            );
        }
        assert_eq!(c.out.len(), 2);
        assert_eq!(
            c.grpc(0).path.as_deref(),
            Some("/helloworld.Greeter/SayBye")
        );
        assert_eq!(c.grpc(1).path.as_deref(), Some(SAY_HELLO));
        assert!(!c.grpc(0).headers_unknown && !c.grpc(1).headers_unknown);
        assert_eq!(c.ids.traceparents, vec![Some(TP.to_owned()); 2]);
        assert_eq!(get(&c.counters.parse_errors), 0);

        // Padding longer than the frame: the block is not decoded, the
        // stream still gets a record.
        let mut bad = vec![200u8];
        bad.extend_from_slice(&[0x82, 0x84]);
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 5, &bad),
            300,
        );
        assert_eq!(get(&c.counters.parse_errors), 1);
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 5, &[0x88]),
            310,
        );
        assert_eq!(c.out.len(), 3);
        let h = c.http(2);
        assert!(h.headers_unknown);
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.status),
            ("", "", 200)
        );
    }

    #[test]
    fn a_block_cut_by_a_loss_still_gives_a_record() {
        let mut enc = Encoder::new();
        let b = grpc_request(&mut enc, SAY_HELLO, TP);
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 90);
        // HEADERS without END_HEADERS, then its CONTINUATION not captured.
        let cont = frame(CONTINUATION, FLAG_END_HEADERS, 1, &b[10..]);
        c.piece(Side::Request, &frame(HEADERS, 0, 1, &b[..10]), 0, 100, true);
        c.piece(Side::Request, &[], cont.len() as u64, 100, false);
        assert_eq!(get(&c.counters.h2_framing_lost), 1);
        assert_eq!(c.h2.streams(), 1);
        // Stream 3's HEADERS is interrupted by a PING (§6.10): both marked.
        c.send(Side::Request, &frame(HEADERS, 0, 3, &[0x83]), 110);
        c.send(Side::Request, &frame(PING, 0, 0, &[0; 8]), 111);
        assert_eq!(c.h2.streams(), 2);
        for id in [1, 3] {
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, id, &[0x88]),
                200,
            );
        }
        assert_eq!(c.out.len(), 2);
        for i in 0..2 {
            let h = c.http(i);
            assert!(h.headers_unknown);
            assert_eq!((h.target.as_str(), h.status), ("", 200));
        }
        assert_eq!(get(&c.counters.orphan_responses), 0);
    }

    #[test]
    fn an_undecodable_response_block_still_ends_its_stream() {
        let mut enc = Encoder::new();
        let mut req = client_start();
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &grpc_request(&mut enc, SAY_HELLO, TP),
        ));
        req.extend(frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &grpc_request(&mut enc, SAY_HELLO, TP),
        ));
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        // Trailers-only response whose block ends inside a literal.
        c.send(
            Side::Response,
            &frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                1,
                &[0x88, 0x40, 0x0a, b'g'],
            ),
            150,
        );
        assert_eq!(get(&c.counters.parse_errors), 1);
        // Trailers-only response too large to hold.
        let mut big = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &[]);
        let len = MAX_FRAME_HELD as u32 + 10;
        big[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        c.piece(Side::Response, &big, u64::from(len), 160, true);
        assert_eq!(c.out.len(), 2);
        for (i, ts) in [(0, 150), (1, 160)] {
            let g = c.grpc(i);
            assert_eq!(g.path.as_deref(), Some(SAY_HELLO));
            assert!(g.headers_unknown);
            assert_eq!(g.status, None);
            assert_eq!(c.out[i].end_ts, ts);
        }
        assert_eq!(c.h2.streams(), 0);
    }

    #[test]
    fn hundred_interleaved_streams_pair_by_id() {
        let (mut req_enc, mut resp_enc) = (Encoder::new(), Encoder::new());
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 1);
        let ids: Vec<u32> = (0..100).map(|i| 2 * i + 1).collect();
        for (i, id) in ids.iter().enumerate() {
            let path = format!("/svc.Echo/Method{i}");
            let tp = format!("00-{:032x}-{:016x}-01", i + 1, i + 1);
            let b = grpc_request(&mut req_enc, &path, &tp);
            c.send(
                Side::Request,
                &frame(HEADERS, FLAG_END_HEADERS, *id, &b),
                1000 + i as u64,
            );
        }
        // Their DATA, interleaved in another order.
        let mut data = Vec::new();
        for id in ids.iter().rev() {
            data.extend(frame(DATA, FLAG_END_STREAM, *id, &grpc_message(b"q")));
        }
        c.send(Side::Request, &data, 1500);
        assert_eq!(c.h2.streams(), 100);
        // Response headers in reverse order, then trailers in reverse.
        for id in ids.iter().rev() {
            let h = block(
                &mut resp_enc,
                &[(":status", "200"), ("content-type", "application/grpc")],
            );
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS, *id, &h),
                2000,
            );
        }
        for (i, id) in ids.iter().enumerate().rev() {
            let t = block(&mut resp_enc, &[("grpc-status", &(i % 17).to_string())]);
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, *id, &t),
                5000 + i as u64,
            );
        }
        assert_eq!(c.out.len(), 100);
        assert_eq!(c.h2.streams(), 0);
        for (n, r) in c.out.iter().enumerate() {
            // Records come in the order the responses ended.
            let i = 99 - n;
            let Message::Grpc(g) = &r.message else {
                panic!("not gRPC: {:?}", r.message);
            };
            assert_eq!(
                g.path.as_deref(),
                Some(format!("/svc.Echo/Method{i}").as_str())
            );
            assert_eq!(g.status, Some((i % 17) as u32));
            assert_eq!((r.start_ts, r.end_ts), (1000 + i as u64, 5000 + i as u64));
            assert!(!g.headers_unknown);
        }
        let want: Vec<_> = (0..100)
            .map(|i| Some(format!("00-{:032x}-{:016x}-01", i + 1, i + 1)))
            .collect();
        assert_eq!(c.ids.traceparents, want);
    }

    #[test]
    fn plain_http2_get() {
        let (mut req_enc, mut resp_enc) = (Encoder::new(), Encoder::new());
        let mut req = client_start();
        let b = block(
            &mut req_enc,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html?q=1"),
                (":authority", "example.com"),
                ("user-agent", "curl/8.5.0"),
                ("accept", "*/*"),
                ("traceparent", TP),
            ],
        );
        req.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &b));
        let h = block(&mut resp_enc, &[(":status", "100")]);
        let mut resp = frame(HEADERS, FLAG_END_HEADERS, 1, &h);
        let h = block(
            &mut resp_enc,
            &[(":status", "404"), ("content-type", "text/html")],
        );
        resp.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &h));
        resp.extend(frame(DATA, FLAG_END_STREAM, 1, b"<h1>not found</h1>"));
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        c.send(Side::Response, &resp, 140);
        assert_eq!(c.out.len(), 1);
        assert_eq!(
            *c.http(0),
            HttpExchange {
                method: "GET".into(),
                target: "/index.html?q=1".into(),
                version: "2",
                host: Some("example.com".into()),
                user_agent: Some("curl/8.5.0".into()),
                status: 404,
                reset: None,
                headers_unknown: false,
            }
        );
        assert_eq!((c.out[0].start_ts, c.out[0].end_ts), (100, 140));
        assert_eq!(c.ids.traceparents, vec![Some(TP.to_owned())]);
    }

    /// HPACK literal (no Huffman) of `s`.
    fn lit(s: &str) -> Vec<u8> {
        assert!(s.len() < 127);
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn joined_mid_connection_never_names_wrongly() {
        // Before the join the client's encoder inserted
        // (":method", "PURGE") then (":path", "/secret"): its table is
        // 62 = :path /secret, 63 = :method PURGE. The agent saw neither.
        let mut c = Conn::new(true);
        // The middle of an earlier DATA payload: not frames, ignored.
        c.send(
            Side::Request,
            b"\x00\x00\x00\x00\x05hello, trailing bytes",
            50,
        );
        assert_eq!(c.h2.streams(), 0);

        // Stream 5: :method from 63, :path from 62 (both unknown), then
        // :authority inserted (now 62; the older ones 63 and 64).
        let mut b5 = vec![0xbf, 0xbe, 0x86, 0x41];
        b5.extend(lit("example.com"));
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 5, &b5),
            100,
        );
        // Stream 7 indexes the shifted entries: :method PURGE = 64,
        // :path /secret = 63, :authority = 62.
        c.send(
            Side::Request,
            &frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                7,
                &[0xc0, 0xbf, 0xbe],
            ),
            110,
        );
        // Stream 9: a literal :path inserted (62), :authority now 63.
        let mut b9 = vec![0x82, 0x44];
        b9.extend(lit("/new1"));
        b9.extend_from_slice(&[0x86, 0xbf]);
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 9, &b9),
            120,
        );
        // Stream 11: a literal with a pre-join name (index 65 = :path
        // /secret's name): the value is known, the name is not.
        let mut b11 = vec![0x82, 0x7f, 65 - 63];
        b11.extend(lit("/maybe-a-path"));
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 11, &b11),
            130,
        );
        // Stream 13: a size update to 0 empties the encoder's table, then
        // back to 4096; what follows is exact.
        let mut b13 = vec![0x20, 0x3f, 0xe1, 0x1f, 0x83, 0x44];
        b13.extend(lit("/fin"));
        b13.push(0x41);
        b13.extend(lit("svc.local"));
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 13, &b13),
            140,
        );
        // Stream 15: all from the table, exact.
        c.send(
            Side::Request,
            &frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                15,
                &[0x82, 0xbf, 0xbe],
            ),
            150,
        );
        assert_eq!(c.h2.streams(), 6);

        // The server's side, also joined: its first syscall starts with
        // frames. Index 62 here is the server's (unknown) entry.
        for (i, id) in [5u32, 7, 9, 11, 13, 15].into_iter().enumerate() {
            let b = if id == 7 { vec![0xbe] } else { vec![0x88] };
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, id, &b),
                200 + i as u64,
            );
        }
        assert_eq!(c.out.len(), 6);
        let want: [(&str, &str, Option<&str>, u16, bool); 6] = [
            ("", "", Some("example.com"), 200, true),
            ("", "", Some("example.com"), 0, true),
            ("GET", "/new1", Some("example.com"), 200, false),
            ("GET", "", None, 200, true),
            ("POST", "/fin", Some("svc.local"), 200, false),
            ("GET", "/fin", Some("svc.local"), 200, false),
        ];
        for (i, (method, target, host, status, unknown)) in want.into_iter().enumerate() {
            let h = c.http(i);
            assert_eq!(
                (
                    h.method.as_str(),
                    h.target.as_str(),
                    h.host.as_deref(),
                    h.status
                ),
                (method, target, host, status),
                "record {i}"
            );
            assert_eq!(h.headers_unknown, unknown, "record {i}");
            assert_ne!(h.target, "/secret");
            assert_ne!(h.method, "PURGE");
        }
        // 2 (stream 5) + 2 (7) + 1 (11) on requests, 1 on a response.
        assert_eq!(get(&c.counters.h2_unknown_header_fields), 6);
    }

    #[test]
    fn goaway_drops_streams_above_the_last_id() {
        let mut enc = Encoder::new();
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 1);
        for id in [1u32, 3, 5, 7] {
            let b = grpc_request(&mut enc, SAY_HELLO, TP);
            c.send(Side::Request, &frame(HEADERS, FLAG_END_HEADERS, id, &b), 10);
        }
        // A client going away names the last server-initiated stream
        // (none: 0); its own streams go on.
        c.send(Side::Request, &frame(GOAWAY, 0, 0, &[0; 8]), 20);
        assert_eq!(c.h2.streams(), 4);
        assert_eq!(get(&c.counters.h2_streams_refused), 0);
        // The server: streams above 3 will never be processed.
        c.send(
            Side::Response,
            &frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
            30,
        );
        assert_eq!(c.h2.streams(), 2);
        assert_eq!(get(&c.counters.h2_streams_refused), 2);
        for id in [1u32, 3, 5] {
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS, id, &[0x88]),
                40,
            );
        }
        assert_eq!(get(&c.counters.orphan_responses), 1);
        let mut trailers = vec![0x40];
        trailers.extend(lit("grpc-status"));
        trailers.extend(lit("0"));
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &trailers),
            50,
        );
        assert_eq!(c.out.len(), 1);
        assert_eq!(c.grpc(0).status, Some(0));
        c.close(60);
        assert_eq!(get(&c.counters.unanswered_requests), 1);
    }

    #[test]
    fn streams_beyond_the_cap_evict_the_oldest() {
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 1);
        for i in 0..=MAX_STREAMS as u32 {
            c.send(
                Side::Request,
                &frame(
                    HEADERS,
                    FLAG_END_HEADERS | FLAG_END_STREAM,
                    2 * i + 1,
                    &[0x82, 0x84],
                ),
                100 + u64::from(i),
            );
        }
        assert_eq!(c.h2.streams(), MAX_STREAMS);
        assert_eq!(get(&c.counters.h2_streams_evicted), 1);
        // Stream 1, the oldest, went; stream 3 is still followed.
        for id in [1, 3] {
            c.send(
                Side::Response,
                &frame(HEADERS, FLAG_END_HEADERS, id, &[0x88]),
                5000,
            );
            c.send(
                Side::Response,
                &frame(DATA, FLAG_END_STREAM, id, b"ok"),
                5001,
            );
        }
        assert_eq!(get(&c.counters.orphan_responses), 1);
        assert_eq!(c.out.len(), 1);
        assert_eq!(c.out[0].start_ts, 101);
        assert_eq!(c.http(0).status, 200);
        c.close(6000);
        assert_eq!(get(&c.counters.unanswered_requests), MAX_STREAMS as u64 - 1);
        assert_eq!(c.h2.streams(), 0);
    }

    #[test]
    fn lost_events_resync_at_a_frame() {
        let (req, resp) = unary_wire();
        let mut c = Conn::new(false);
        c.send(Side::Request, &req, 100);
        c.lost();
        assert_eq!(get(&c.counters.h2_framing_lost), 1);
        // The rest of a frame from before the loss: ignored.
        c.send(Side::Response, &resp[5..], 200);
        assert!(c.out.is_empty());
        let mut enc = Encoder::new();
        let b = block(&mut enc, &[(":status", "200"), ("grpc-status", "0")]);
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &b),
            300,
        );
        assert_eq!(c.out.len(), 1);
        assert_eq!(c.grpc(0).status, Some(0));
        assert_eq!(c.grpc(0).path.as_deref(), Some(SAY_HELLO));
    }

    /// Deterministic xorshift64* (no new crates).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The most a connection may hold: per direction a held frame, a
    /// header block and a table.
    const BOUND: usize = 2 * (MAX_FRAME_HELD + MAX_HEADER_BLOCK + MAX_HPACK_TABLE);

    #[test]
    fn random_frames_neither_panic_nor_grow() {
        let kinds = [
            DATA,
            HEADERS,
            PRIORITY,
            RST_STREAM,
            SETTINGS,
            PUSH_PROMISE,
            PING,
            GOAWAY,
            WINDOW_UPDATE,
            CONTINUATION,
            0x0a,
        ];
        let mut most = 0;
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut c = Conn::new(seed % 2 == 0);
            let mut enc = Encoder::new();
            let mut ts = 0;
            for _ in 0..400 {
                ts += 1;
                let side = if rng.below(2) == 0 {
                    Side::Request
                } else {
                    Side::Response
                };
                let mut wire = Vec::new();
                if rng.below(50) == 0 {
                    wire.extend_from_slice(PREFACE);
                }
                for _ in 0..=rng.below(4) {
                    let kind = kinds[rng.below(kinds.len() as u64) as usize];
                    let flags = rng.next() as u8;
                    let stream = match rng.below(4) {
                        0 => 0,
                        1 => rng.below(8) as u32,
                        2 => rng.next() as u32,
                        _ => 2 * rng.below(50) as u32 + 1,
                    };
                    let payload: Vec<u8> = match rng.below(5) {
                        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                        1 => {
                            let path = format!("/s/{}", rng.below(1000));
                            grpc_request(&mut enc, &path, TP)
                        }
                        2 => vec![0x88, 0x40, 0x0b, b'g', b'r', b'p', b'c', b'-'],
                        3 => (0..rng.below(2000)).map(|_| rng.next() as u8).collect(),
                        _ => Vec::new(),
                    };
                    let mut f = frame(kind, flags, stream, &payload);
                    if rng.below(8) == 0 {
                        // A length that disagrees with the payload, near
                        // the limits.
                        let len: u32 = match rng.below(4) {
                            0 => MAX_FRAME_HELD as u32,
                            1 => MAX_FRAME_HELD as u32 + 1,
                            2 => (1 << 24) - 1,
                            _ => rng.below(1 << 24) as u32,
                        };
                        f[..3].copy_from_slice(&len.to_be_bytes()[1..]);
                    }
                    wire.extend(f);
                }
                // Pieces with gaps between them.
                let mut pos = 0;
                let mut first = true;
                while pos < wire.len() {
                    let n = (1 + rng.below(wire.len() as u64) as usize).min(wire.len() - pos);
                    let gap = match rng.below(6) {
                        0 => rng.below(100),
                        1 => rng.below(1 << 24),
                        _ => 0,
                    };
                    c.piece(side, &wire[pos..pos + n], gap, ts, first);
                    first = false;
                    pos += n;
                    most = most.max(c.h2.buffered());
                    assert!(c.h2.buffered() <= BOUND, "{} bytes held", c.h2.buffered());
                }
                match rng.below(100) {
                    0 => c.lost(),
                    1 => c.h2.shed(),
                    _ => {}
                }
                assert!(c.h2.streams() <= MAX_STREAMS);
            }
            c.close(ts + 1);
            assert_eq!(c.h2.streams(), 0);
            for r in &c.out {
                assert!(r.end_ts >= r.start_ts);
            }
        }
        assert!(most < 300 * 1024, "{most} bytes held at most");
    }

    #[test]
    fn a_one_mib_header_block_is_not_held() {
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 1);
        // 1 MiB of literal fields, in 16 KiB frames.
        let mut field = vec![0x00, 0x7f, 0x80, 0x7f];
        field.extend(std::iter::repeat_n(b'a', 127 + 0x3f80));
        field.extend_from_slice(&[0x7f, 0x80, 0x7f]);
        field.extend(std::iter::repeat_n(b'b', 127 + 0x3f80));
        let mut big = vec![0x82, 0x87, 0x84];
        while big.len() < 1 << 20 {
            big.extend_from_slice(&field);
        }
        let mut pieces = big.chunks(16 * 1024).peekable();
        let first = pieces.next().expect("non-empty");
        c.send(Side::Request, &frame(HEADERS, 0, 1, first), 10);
        let mut most = 0;
        while let Some(p) = pieces.next() {
            let flags = if pieces.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            c.send(Side::Request, &frame(CONTINUATION, flags, 1, p), 10);
            most = most.max(c.h2.buffered());
        }
        assert!(
            most <= MAX_HEADER_BLOCK + 16 * 1024 + 64,
            "{most} bytes held"
        );
        assert!(get(&c.counters.h2_header_blocks_dropped) >= 1);
        // The stream still gets its record, marked.
        assert_eq!(c.h2.streams(), 1);
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[0x88]),
            20,
        );
        assert_eq!(c.out.len(), 1);
        assert!(c.http(0).headers_unknown);
        // And the connection goes on.
        c.send(
            Side::Request,
            &frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                3,
                &[0x82, 0x87, 0x85],
            ),
            30,
        );
        c.send(
            Side::Response,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &[0x88]),
            40,
        );
        assert_eq!(c.out.len(), 2);
        assert_eq!(c.http(1).target, "/index.html");
        assert!(!c.http(1).headers_unknown);
        // Only the frame readers' kept capacity (16 KiB frames).
        assert!(c.h2.buffered() <= 16 * 1024 + 64, "{}", c.h2.buffered());
    }

    #[test]
    fn a_block_near_the_cap_holds_no_more_than_the_cap() {
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 1);
        // 40000 + 25000 bytes: amortised growth would reserve 80000.
        c.send(Side::Request, &frame(HEADERS, 0, 1, &[0x82; 40_000]), 2);
        c.send(
            Side::Request,
            &frame(CONTINUATION, 0, 1, &[0x84; 25_000]),
            3,
        );
        // The block, and the readers' small frames (large ones are not kept).
        assert!(c.h2.buffered() <= 65_000 + 64, "{}", c.h2.buffered());
        c.send(
            Side::Request,
            &frame(CONTINUATION, FLAG_END_HEADERS, 1, &[0x86]),
            4,
        );
        assert_eq!(c.h2.streams(), 1);
        assert_eq!(get(&c.counters.h2_header_blocks_dropped), 0);
    }

    /// HPACK integer with an `n`-bit prefix (§5.1), first byte `mask`.
    fn integer(v: u64, n: u8, mask: u8) -> Vec<u8> {
        let max = (1u64 << n) - 1;
        if v < max {
            return vec![mask | v as u8];
        }
        let mut out = vec![mask | max as u8];
        let mut v = v - max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
        out
    }

    #[test]
    fn table_size_updates_are_capped() {
        let mut c = Conn::new(false);
        c.send(Side::Request, &client_start(), 1);
        // SETTINGS_HEADER_TABLE_SIZE of 4 GiB - 1 from the server.
        c.send(
            Side::Response,
            &frame(SETTINGS, 0, 0, &[0, 1, 0xff, 0xff, 0xff, 0xff]),
            2,
        );
        assert_eq!(get(&c.counters.h2_table_size_capped), 1);
        // The client's encoder takes it: a size update to 4 GiB - 1.
        let mut b = integer(u64::from(u32::MAX), 5, 0x20);
        b.extend_from_slice(&[0x82, 0x87, 0x84]);
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &b),
            3,
        );
        assert_eq!(get(&c.counters.h2_table_size_capped), 2);
        // Then fills it: 200 blocks of one 4000-byte field each.
        for i in 0..200u32 {
            let mut b = vec![0x82, 0x87, 0x84, 0x40, 0x01, b'x'];
            b.extend(integer(4000, 7, 0));
            b.extend(std::iter::repeat_n(b'0' + (i % 10) as u8, 4000));
            c.send(
                Side::Request,
                &frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3 + 2 * i, &b),
                4,
            );
            assert!(
                c.h2.buffered() <= MAX_HPACK_TABLE + 16 * 1024,
                "{}",
                c.h2.buffered()
            );
        }
        assert_eq!(c.h2.streams(), 201);
        // A size update to 4 GiB does not fit in 32 bits: the block is
        // not decoded, the table is forgotten, the stream still counted.
        let mut b = integer(1 << 32, 5, 0x20);
        b.push(0x82);
        c.send(
            Side::Request,
            &frame(HEADERS, FLAG_END_HEADERS, 1001, &b),
            5,
        );
        assert_eq!(get(&c.counters.parse_errors), 1);
        assert_eq!(c.h2.streams(), 202);
        // The table is gone; the frame reader keeps its small capacity.
        assert!(c.h2.buffered() <= 16 * 1024, "{}", c.h2.buffered());
    }
}
