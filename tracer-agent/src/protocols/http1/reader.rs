//! HTTP/1.x message framing and head parsing (RFC 9112), one direction.
//!
//! A [`MessageReader`] follows one direction of one connection. It is fed the
//! payload of each captured syscall in order, plus "gaps" for bytes that
//! moved but were not captured (capture cap, `sendfile`, lost events). It
//! emits an event for every message head and message end, skipping bodies
//! without storing them. Anything it cannot follow puts it into a desync
//! state, from which it recovers only at a syscall boundary that starts with
//! a plausible message; it never guesses a message boundary inside a chunk.

use std::sync::Arc;

use thiserror::Error;
use tracer_common::{HTTP1_METHOD_PREFIXES, HTTP1_RESPONSE_PREFIX};

/// Largest header section kept while waiting for its end.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers parsed per message; more is treated as malformed.
pub const MAX_HEADERS: usize = 96;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Longest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Longest header value kept (user agent, trace headers, host).
const MAX_VALUE_LEN: usize = 1024;
/// Trace-context headers kept per message.
pub const MAX_TRACE_HEADERS: usize = 16;
/// Longest request target kept.
const MAX_TARGET_LEN: usize = 4096;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("header section exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed message head: {0}")]
    Malformed(String),
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("invalid chunked encoding")]
    BadChunk,
    #[error("bytes were not captured inside a message")]
    Gap,
}

impl crate::propagation::HeaderLookup for Headers {
    fn get(&self, lower_name: &str) -> Option<&str> {
        self.trace
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which kind of message a reader expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// Headers the tracer uses, extracted once while the head is parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub host: Option<String>,
    pub user_agent: Option<String>,
    /// Trace-context headers (lower-case name, value), only the names the
    /// configured propagators read, at most [`MAX_TRACE_HEADERS`].
    pub trace: Vec<(String, String)>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    /// `Upgrade: h2c` (RFC 7540 §3.2): after a 101 the connection speaks
    /// HTTP/2.
    pub upgrade_h2c: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: u8,
    pub headers: Headers,
}

/// What a reader reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request head; `start_ts` is the timestamp of its first byte.
    Request { head: RequestHead, start_ts: u64 },
    /// A response head.
    Response { head: ResponseHead, start_ts: u64 },
    /// The message whose head was reported last is complete; `end_ts` is the
    /// timestamp of its last byte.
    End { end_ts: u64 },
    /// The reader lost track of the stream.
    Lost(ParseError),
}

/// Facts about the request a response answers, which change its framing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseContext {
    /// The request was HEAD: no body whatever the headers say.
    pub head_request: bool,
    /// The request was CONNECT: a 2xx response turns into a tunnel.
    pub connect_request: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    Size { line: Vec<u8> },
    Data { remaining: u64 },
    DataEnd { remaining: u8 },
    Trailer { line_len: usize, total: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Inside a header section, accumulating in `head_buf`.
    Head,
    Body {
        remaining: u64,
    },
    Chunked(Chunk),
    /// A response delimited by the connection closing.
    UntilClose,
    /// After an upgrade or CONNECT: not HTTP/1 any more.
    Tunnel,
    /// Lost track; waiting for a syscall that starts a message.
    Desync,
}

/// Follows one direction of one HTTP/1 connection.
#[derive(Debug, Clone)]
pub struct MessageReader {
    kind: Kind,
    state: State,
    head_buf: Vec<u8>,
    msg_start_ts: u64,
    last_ts: u64,
    /// Lower-case names of the trace-context headers to keep.
    trace_names: Arc<[String]>,
}

impl MessageReader {
    /// A reader keeping the W3C Trace Context headers.
    #[cfg(test)]
    pub fn new(kind: Kind) -> Self {
        Self::with_trace_headers(
            kind,
            Arc::from(vec!["traceparent".into(), "tracestate".into()]),
        )
    }

    pub fn with_trace_headers(kind: Kind, trace_names: Arc<[String]>) -> Self {
        Self {
            kind,
            state: State::Idle,
            head_buf: Vec::new(),
            msg_start_ts: 0,
            last_ts: 0,
            trace_names,
        }
    }

    pub fn is_tunnel(&self) -> bool {
        self.state == State::Tunnel
    }

    /// Stops parsing: the connection switched protocols.
    pub fn enter_tunnel(&mut self) {
        self.state = State::Tunnel;
        self.head_buf = Vec::new();
    }

    /// Marks the stream as lost (e.g. an event went missing).
    pub fn lose_sync(&mut self) {
        if self.state != State::Tunnel {
            self.state = State::Desync;
            self.head_buf = Vec::new();
        }
    }

    /// Bytes held while waiting for the end of a header section.
    pub fn buffered(&self) -> usize {
        self.head_buf.capacity()
    }

    /// Timestamp of the last byte seen.
    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }

    /// Call at the start of every syscall's payload, before [`Self::step`]:
    /// a desynced reader resumes here if the payload starts a message.
    pub fn begin_chunk(&mut self, data: &[u8], ts: u64) {
        self.last_ts = ts;
        if self.state == State::Desync && looks_like_start(self.kind, data) {
            self.state = State::Idle;
        }
    }

    /// Consumes bytes from `input` until one event is produced or the input
    /// is used up. Call repeatedly while it returns `Some`.
    pub fn step(&mut self, input: &mut &[u8], ts: u64, ctx: ResponseContext) -> Option<Event> {
        loop {
            if input.is_empty() {
                return None;
            }
            match &mut self.state {
                State::Desync | State::Tunnel => {
                    *input = &[];
                    return None;
                }
                State::Idle => {
                    // Stray CRLFs between messages are allowed (RFC 9112 §2.2).
                    let skip = input
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    *input = &input[skip..];
                    if input.is_empty() {
                        return None;
                    }
                    self.state = State::Head;
                    self.msg_start_ts = ts;
                    self.head_buf.clear();
                }
                State::Head => return self.step_head(input, ctx),
                State::Body { remaining } => {
                    let n = (*remaining).min(input.len() as u64);
                    *remaining -= n;
                    *input = &input[n as usize..];
                    if *remaining == 0 {
                        self.state = State::Idle;
                        return Some(Event::End { end_ts: ts });
                    }
                }
                State::UntilClose => {
                    *input = &[];
                    return None;
                }
                State::Chunked(chunk) => match step_chunk(chunk, input) {
                    Ok(true) => {
                        self.state = State::Idle;
                        return Some(Event::End { end_ts: ts });
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.state = State::Desync;
                        return Some(Event::Lost(e));
                    }
                },
            }
        }
    }

    fn step_head(&mut self, input: &mut &[u8], ctx: ResponseContext) -> Option<Event> {
        let old_len = self.head_buf.len();
        // Fast path: the whole head is in this syscall's payload.
        let parsed = if old_len == 0 {
            parse_head(self.kind, input, &self.trace_names)
        } else {
            let room = MAX_HEAD_BYTES.saturating_sub(old_len);
            let take = input.len().min(room);
            // Grow by doubling, but never past the cap: `extend_from_slice`
            // alone doubles the capacity, so a partial head just over half
            // the cap held up to twice MAX_HEAD_BYTES (found by fuzzing;
            // `buffered` and the table's budget count capacity).
            let want = (self.head_buf.capacity() * 2)
                .min(MAX_HEAD_BYTES)
                .max(old_len + take);
            self.head_buf.reserve_exact(want - old_len);
            self.head_buf.extend_from_slice(&input[..take]);
            parse_head(self.kind, &self.head_buf, &self.trace_names)
        };
        match parsed {
            Ok(Some((head, len))) => {
                let used = len - old_len;
                *input = &input[used..];
                self.head_buf = Vec::new();
                Some(self.finish_head(head, ctx))
            }
            Ok(None) => {
                if old_len == 0 {
                    if input.len() > MAX_HEAD_BYTES {
                        return Some(self.lost(ParseError::HeadTooLarge));
                    }
                    self.head_buf.extend_from_slice(input);
                } else if self.head_buf.len() >= MAX_HEAD_BYTES {
                    return Some(self.lost(ParseError::HeadTooLarge));
                }
                *input = &[];
                None
            }
            Err(e) => {
                *input = &[];
                Some(self.lost(e))
            }
        }
    }

    fn lost(&mut self, e: ParseError) -> Event {
        self.state = State::Desync;
        self.head_buf = Vec::new();
        Event::Lost(e)
    }

    fn finish_head(&mut self, head: Head, ctx: ResponseContext) -> Event {
        let start_ts = self.msg_start_ts;
        match head {
            Head::Request(req) => {
                // body_state never picks read-until-close for a request: one
                // without a length has no body (RFC 9112 §6.3).
                self.state = body_state(&req.headers, false);
                Event::Request {
                    head: req,
                    start_ts,
                }
            }
            Head::Response(resp) => {
                let s = resp.status;
                self.state = if (100..200).contains(&s) {
                    if s == 101 {
                        State::Tunnel
                    } else {
                        State::Idle
                    }
                } else if ctx.connect_request && (200..300).contains(&s) {
                    State::Tunnel
                } else if ctx.head_request || s == 204 || s == 304 {
                    State::Idle
                } else {
                    body_state(&resp.headers, true)
                };
                Event::Response {
                    head: resp,
                    start_ts,
                }
            }
        }
    }

    /// Whether the message whose head was just reported is already complete
    /// (no body). Callers use it to emit the end right after the head.
    pub fn at_message_boundary(&self) -> bool {
        matches!(self.state, State::Idle | State::Tunnel)
    }

    /// The next chunk, if it starts with a message, is parsed from its
    /// first byte (nothing is held over from earlier chunks).
    pub fn starts_fresh(&self) -> bool {
        matches!(self.state, State::Idle | State::Desync)
    }

    /// Inside a header section that has not ended yet.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// `n` bytes moved without being captured.
    pub fn gap(&mut self, n: u64, ts: u64) -> Option<Event> {
        if n == 0 {
            return None;
        }
        self.last_ts = ts;
        match &mut self.state {
            State::Body { remaining } if n <= *remaining => {
                *remaining -= n;
                if *remaining == 0 {
                    self.state = State::Idle;
                    return Some(Event::End { end_ts: ts });
                }
                None
            }
            State::Chunked(Chunk::Data { remaining }) if n <= *remaining => {
                *remaining -= n;
                if *remaining == 0 {
                    self.state = State::Chunked(Chunk::DataEnd { remaining: 2 });
                }
                None
            }
            State::UntilClose | State::Tunnel | State::Desync => None,
            _ => Some(self.lost(ParseError::Gap)),
        }
    }

    /// The connection closed: completes a read-until-close response.
    /// The end is the last byte seen, not the close itself (`_ts`): a client
    /// may hold the socket open long after the response arrived.
    pub fn close(&mut self, _ts: u64) -> Option<Event> {
        match self.state {
            State::UntilClose => {
                self.state = State::Idle;
                Some(Event::End {
                    end_ts: self.last_ts,
                })
            }
            _ => None,
        }
    }
}

enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

fn body_state(h: &Headers, response: bool) -> State {
    if h.chunked {
        State::Chunked(Chunk::Size { line: Vec::new() })
    } else if let Some(n) = h.content_length {
        if n == 0 {
            State::Idle
        } else {
            State::Body { remaining: n }
        }
    } else if response {
        State::UntilClose
    } else {
        State::Idle
    }
}

/// Advances the chunked decoder; `Ok(true)` when the message ended.
fn step_chunk(chunk: &mut Chunk, input: &mut &[u8]) -> Result<bool, ParseError> {
    while !input.is_empty() {
        match chunk {
            Chunk::Size { line } => {
                let nl = input.iter().position(|b| *b == b'\n');
                let take = nl.map_or(input.len(), |i| i + 1);
                if line.len() + take > MAX_CHUNK_LINE {
                    return Err(ParseError::BadChunk);
                }
                line.extend_from_slice(&input[..take]);
                *input = &input[take..];
                if nl.is_none() {
                    return Ok(false);
                }
                let size = match httparse::parse_chunk_size(line) {
                    Ok(httparse::Status::Complete((_, size))) => size,
                    _ => return Err(ParseError::BadChunk),
                };
                *chunk = if size == 0 {
                    Chunk::Trailer {
                        line_len: 0,
                        total: 0,
                    }
                } else {
                    Chunk::Data { remaining: size }
                };
            }
            Chunk::Data { remaining } => {
                let n = (*remaining).min(input.len() as u64);
                *remaining -= n;
                *input = &input[n as usize..];
                if *remaining == 0 {
                    *chunk = Chunk::DataEnd { remaining: 2 };
                }
            }
            Chunk::DataEnd { remaining } => {
                let expect: &[u8] = if *remaining == 2 { b"\r\n" } else { b"\n" };
                let n = (*remaining as usize).min(input.len());
                if input[..n] != expect[..n] {
                    return Err(ParseError::BadChunk);
                }
                *remaining -= n as u8;
                *input = &input[n..];
                if *remaining == 0 {
                    *chunk = Chunk::Size { line: Vec::new() };
                }
            }
            Chunk::Trailer { line_len, total } => {
                let b = input[0];
                *input = &input[1..];
                *total += 1;
                if *total > MAX_TRAILER_BYTES {
                    return Err(ParseError::BadChunk);
                }
                match b {
                    b'\n' => {
                        if *line_len == 0 {
                            return Ok(true);
                        }
                        *line_len = 0;
                    }
                    b'\r' => {}
                    _ => *line_len += 1,
                }
            }
        }
    }
    Ok(false)
}

/// Whether `data` plausibly starts a message of `kind`.
pub fn looks_like_start(kind: Kind, data: &[u8]) -> bool {
    match kind {
        Kind::Request => HTTP1_METHOD_PREFIXES.iter().any(|m| data.starts_with(m)),
        Kind::Response => data.starts_with(HTTP1_RESPONSE_PREFIX),
    }
}

fn clip(v: &[u8], max: usize) -> String {
    let v = &v[..v.len().min(max)];
    String::from_utf8_lossy(v).into_owned()
}

fn extract_headers(
    raw: &[httparse::Header<'_>],
    trace_names: &[String],
) -> Result<Headers, ParseError> {
    let mut h = Headers::default();
    for hd in raw {
        let name = hd.name;
        if name.eq_ignore_ascii_case("content-length") {
            let s = std::str::from_utf8(hd.value).map_err(|_| ParseError::BadContentLength)?;
            let n: u64 = s.trim().parse().map_err(|_| ParseError::BadContentLength)?;
            // Differing duplicates make the framing ambiguous (RFC 9112 §6.3).
            if h.content_length.is_some_and(|old| old != n) {
                return Err(ParseError::BadContentLength);
            }
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only counts as the final coding.
            let last = hd
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(|v| v.trim_ascii())
                .unwrap_or_default();
            h.chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("upgrade") {
            h.upgrade_h2c = hd
                .value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"h2c"));
        } else if name.eq_ignore_ascii_case("connection") {
            h.connection_close = hd
                .value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case("host") {
            h.host = Some(clip(hd.value, MAX_VALUE_LEN));
        } else if name.eq_ignore_ascii_case("user-agent") {
            h.user_agent = Some(clip(hd.value, MAX_VALUE_LEN));
        } else if h.trace.len() < MAX_TRACE_HEADERS {
            if let Some(n) = trace_names.iter().find(|n| name.eq_ignore_ascii_case(n)) {
                h.trace.push((n.clone(), clip(hd.value, MAX_VALUE_LEN)));
            }
        }
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3 item 3).
    if h.chunked {
        h.content_length = None;
    }
    Ok(h)
}

/// Parses a complete head at the start of `buf`: `Ok(None)` when more bytes
/// are needed, otherwise the head and its length in bytes.
fn parse_head(
    kind: Kind,
    buf: &[u8],
    trace_names: &[String],
) -> Result<Option<(Head, usize)>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let malformed = |e: httparse::Error| ParseError::Malformed(e.to_string());
    match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf).map_err(malformed)? {
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(len) => {
                    let head = RequestHead {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: clip(req.path.unwrap_or_default().as_bytes(), MAX_TARGET_LEN),
                        version: req.version.unwrap_or(1),
                        headers: extract_headers(req.headers, trace_names)?,
                    };
                    Ok(Some((Head::Request(head), len)))
                }
            }
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf).map_err(malformed)? {
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(len) => {
                    let head = ResponseHead {
                        status: resp.code.unwrap_or_default(),
                        version: resp.version.unwrap_or(1),
                        headers: extract_headers(resp.headers, trace_names)?,
                    };
                    Ok(Some((Head::Response(head), len)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::HeaderLookup as _;

    /// Feeds `chunks` (each one syscall) and collects every event.
    fn run(kind: Kind, chunks: &[&[u8]], ctx: ResponseContext) -> Vec<Event> {
        let mut r = MessageReader::new(kind);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let ts = i as u64 + 1;
            r.begin_chunk(c, ts);
            let mut input: &[u8] = c;
            while let Some(ev) = r.step(&mut input, ts, ctx) {
                out.push(ev);
            }
        }
        out
    }

    fn methods(evs: &[Event]) -> Vec<String> {
        evs.iter()
            .filter_map(|e| match e {
                Event::Request { head, .. } => Some(format!("{} {}", head.method, head.target)),
                _ => None,
            })
            .collect()
    }

    fn count_ends(evs: &[Event]) -> usize {
        evs.iter()
            .filter(|e| matches!(e, Event::End { .. }))
            .count()
    }

    const PIPELINED: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
DELETE /d/1 HTTP/1.1\r\n\r\n";

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let evs = run(Kind::Request, &[PIPELINED], ResponseContext::default());
        assert_eq!(
            methods(&evs),
            ["GET /a", "POST /b", "PUT /c", "DELETE /d/1"]
        );
        // Only messages with a body report an end (POST and the chunked PUT).
        assert_eq!(count_ends(&evs), 2);
        assert!(!evs.iter().any(|e| matches!(e, Event::Lost(_))));
    }

    #[test]
    fn split_at_every_offset_gives_same_messages() {
        let whole = run(Kind::Request, &[PIPELINED], ResponseContext::default());
        for cut in 1..PIPELINED.len() {
            let (a, b) = PIPELINED.split_at(cut);
            let evs = run(Kind::Request, &[a, b], ResponseContext::default());
            assert_eq!(methods(&evs), methods(&whole), "cut at {cut}");
            assert_eq!(count_ends(&evs), 2, "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let chunks: Vec<&[u8]> = PIPELINED.chunks(1).collect();
        let evs = run(Kind::Request, &chunks, ResponseContext::default());
        assert_eq!(methods(&evs).len(), 4);
    }

    #[test]
    fn response_framing_content_length_chunked_and_no_body() {
        let data: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n\
HTTP/1.1 304 Not Modified\r\n\r\n\
HTTP/1.1 500 Err\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        let evs = run(Kind::Response, &[data], ResponseContext::default());
        let statuses: Vec<u16> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Response { head, .. } => Some(head.status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [100, 200, 204, 304, 500]);
        assert_eq!(count_ends(&evs), 2);
        assert!(!evs.iter().any(|e| matches!(e, Event::Lost(_))));
    }

    #[test]
    fn head_response_has_no_body() {
        let data: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let ctx = ResponseContext {
            head_request: true,
            ..Default::default()
        };
        let evs = run(Kind::Response, &[data], ctx);
        let n = evs
            .iter()
            .filter(|e| matches!(e, Event::Response { .. }))
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn response_until_close() {
        let mut r = MessageReader::new(Kind::Response);
        let mut input: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nbody bytes";
        r.begin_chunk(input, 5);
        let ev = r.step(&mut input, 5, ResponseContext::default());
        assert!(matches!(ev, Some(Event::Response { .. })));
        assert_eq!(r.step(&mut input, 5, ResponseContext::default()), None);
        r.begin_chunk(b"more", 7);
        assert_eq!(r.close(9), Some(Event::End { end_ts: 7 }));
    }

    #[test]
    fn gap_inside_body_keeps_sync() {
        let mut r = MessageReader::new(Kind::Response);
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n0123456789";
        r.begin_chunk(input, 1);
        assert!(matches!(
            r.step(&mut input, 1, ResponseContext::default()),
            Some(Event::Response { .. })
        ));
        assert_eq!(r.step(&mut input, 1, ResponseContext::default()), None);
        assert_eq!(r.gap(9990, 2), Some(Event::End { end_ts: 2 }));
        // Next message parses normally.
        let mut next: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        r.begin_chunk(next, 3);
        assert!(matches!(
            r.step(&mut next, 3, ResponseContext::default()),
            Some(Event::Response { head, .. }) if head.status == 404
        ));
    }

    #[test]
    fn gap_in_head_desyncs_then_resyncs_at_message_start() {
        let mut r = MessageReader::new(Kind::Request);
        let mut input: &[u8] = b"GET /x HTTP/1.1\r\nHo";
        r.begin_chunk(input, 1);
        assert_eq!(r.step(&mut input, 1, ResponseContext::default()), None);
        assert_eq!(r.gap(10, 2), Some(Event::Lost(ParseError::Gap)));
        // Garbage and mid-message bytes are ignored...
        let mut junk: &[u8] = b"st: a\r\n\r\n";
        r.begin_chunk(junk, 3);
        assert_eq!(r.step(&mut junk, 3, ResponseContext::default()), None);
        // ...until a syscall starts with a request.
        let mut good: &[u8] = b"GET /y HTTP/1.1\r\n\r\n";
        r.begin_chunk(good, 4);
        assert!(matches!(
            r.step(&mut good, 4, ResponseContext::default()),
            Some(Event::Request { head, start_ts: 4 }) if head.target == "/y"
        ));
    }

    #[test]
    fn garbage_is_reported_not_panicked() {
        let inputs: [&[u8]; 6] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"\0\0\0\0\0\0\0\0\0\0\0\0\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"\xff\xfe\xfd",
        ];
        for i in inputs {
            let evs = run(Kind::Request, &[i], ResponseContext::default());
            assert!(
                matches!(evs.last(), Some(Event::Lost(_))),
                "{:?} gave {evs:?}",
                String::from_utf8_lossy(i)
            );
        }
        let evs = run(
            Kind::Response,
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            ResponseContext::default(),
        );
        assert!(matches!(
            evs.last(),
            Some(Event::Lost(ParseError::BadChunk))
        ));
    }

    #[test]
    fn truncated_head_waits_then_overflows() {
        let mut r = MessageReader::new(Kind::Request);
        let mut first: &[u8] = b"GET / HTTP/1.1\r\n";
        r.begin_chunk(first, 1);
        assert_eq!(r.step(&mut first, 1, ResponseContext::default()), None);
        let filler = vec![b'a'; MAX_HEAD_BYTES];
        let mut f: &[u8] = &filler;
        r.begin_chunk(f, 2);
        assert_eq!(
            r.step(&mut f, 2, ResponseContext::default()),
            Some(Event::Lost(ParseError::HeadTooLarge))
        );
    }

    /// Fuzz regression (http1 target): a partial head of 10752 bytes, then
    /// five more bytes, doubled the held buffer to 21504 bytes, over
    /// `MAX_HEAD_BYTES`.
    #[test]
    fn partial_head_buffer_never_outgrows_the_cap() {
        let mut r = MessageReader::new(Kind::Request);
        let first = vec![b'H'; 10752];
        for (ts, chunk) in [&first[..], b"hello", &first[..]].into_iter().enumerate() {
            let ts = ts as u64 + 1;
            r.begin_chunk(chunk, ts);
            let mut input = chunk;
            while r.step(&mut input, ts, ResponseContext::default()).is_some() {}
            assert!(
                r.buffered() <= MAX_HEAD_BYTES,
                "holds {} bytes after chunk {ts}",
                r.buffered()
            );
        }
    }

    #[test]
    fn headers_extracted() {
        let evs = run(
            Kind::Request,
            &[
                b"GET /p?q=1 HTTP/1.1\r\nHOST: example:8080\r\nUser-Agent: curl/8\r\n\
traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
tracestate: a=b\r\nConnection: keep-alive, close\r\n\r\n",
            ],
            ResponseContext::default(),
        );
        let Some(Event::Request { head, .. }) = evs.first() else {
            panic!("no request: {evs:?}")
        };
        assert_eq!(head.target, "/p?q=1");
        assert_eq!(head.headers.host.as_deref(), Some("example:8080"));
        assert_eq!(head.headers.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(head.headers.get("tracestate"), Some("a=b"));
        assert!(head.headers.get("traceparent").is_some());
        assert!(head.headers.connection_close);
    }

    /// Hostile input: random mixes of valid messages, garbage, random
    /// syscall boundaries and gaps must never panic, and the reader's
    /// buffer stays bounded.
    #[test]
    fn randomized_streams_never_panic() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let pieces: [&[u8]; 8] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"\x00\xff\r\n\r\n\x16\x03",
            b"Content-Length: 99999999999999999999\r\n",
            b"\r\n",
            b"PUT /c HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
        ];
        let mut rng = SmallRng::seed_from_u64(0x7ace);
        for kind in [Kind::Request, Kind::Response] {
            for _ in 0..300 {
                let mut stream = Vec::new();
                for _ in 0..rng.gen_range(1..12) {
                    stream.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
                    if rng.gen_bool(0.2) {
                        let n = rng.gen_range(0..64);
                        stream.extend((0..n).map(|_| rng.gen::<u8>()));
                    }
                }
                let mut r = MessageReader::new(kind);
                let mut rest: &[u8] = &stream;
                let mut ts = 0;
                while !rest.is_empty() {
                    let cut = rng.gen_range(1..=rest.len());
                    let (chunk, tail) = rest.split_at(cut);
                    rest = tail;
                    ts += 1;
                    r.begin_chunk(chunk, ts);
                    let mut input = chunk;
                    let ctx = ResponseContext {
                        head_request: rng.gen_bool(0.1),
                        connect_request: rng.gen_bool(0.05),
                    };
                    let mut guard = 0;
                    while r.step(&mut input, ts, ctx).is_some() {
                        guard += 1;
                        assert!(guard < 10_000, "reader does not make progress");
                    }
                    assert!(input.is_empty() || r.is_tunnel());
                    if rng.gen_bool(0.1) {
                        let _ = r.gap(rng.gen_range(0..100_000), ts);
                    }
                    assert!(r.buffered() <= 2 * MAX_HEAD_BYTES);
                }
                let _ = r.close(ts + 1);
            }
        }
    }
}
