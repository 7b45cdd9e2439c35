//! Parent links in Go programs, where a request is served by a goroutine
//! and its outgoing calls are written by other goroutines on whatever
//! threads the scheduler picks. The kernel's probes
//! (`tracer-ebpf/src/probes/goroutines.rs`) name each served request with
//! a context id that follows the goroutines it starts, and say which
//! context each outgoing request on a socket is made for. Here:
//!
//! 1. a SERVER request starts on a Go connection: its ids are kept for
//!    that connection ([`GoLinks::server_started`]);
//! 2. the kernel says net/http serves the request of that connection
//!    under context `ctx_id` ([`GoLinks::serve`]): the context takes those
//!    ids, once (a request whose bytes were lost leaves nothing to take,
//!    so its context links nothing rather than the previous request);
//! 3. the kernel says the next request on client socket (tgid, fd) is for
//!    `ctx_id` ([`GoLinks::client`]), or for none;
//! 4. that request starts: it takes the claim ([`GoLinks::parent_of`]).
//!
//! HTTP/2 (grpc-go) is the same with a stream id next to the connection:
//! grpc-go's server serves each stream on a goroutine of its own, and its
//! client is given a stream id in the caller's goroutine, while grpc's
//! writer goroutine writes the HEADERS, possibly before the kernel's
//! event for the id is sent. So an HTTP/2 CLIENT stream is linked when it
//! ends ([`GoLinks::stream_parent`]), not when its HEADERS are parsed.
//!
//! Every table is bounded (reset and counted when full). A context
//! outlives its SERVER span (a goroutine the handler started may call out
//! after the response), up to the table's bound.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::ids::SpanIds;
use crate::telemetry::Counters;

/// Entries per table; beyond it the table is reset (counted).
const MAX_ENTRIES: usize = 65_536;
/// Streams kept per connection or socket (one HTTP/2 connection carries
/// many at once); beyond it that connection's are reset (counted).
const MAX_STREAMS_PER_SOCKET: usize = 4_096;
/// How long a client claim waits for its request's bytes: longer means
/// the request was never written (an error), and the claim is void.
const CLAIM_TTL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct GoLinks {
    /// The SERVER request just started on each Go connection (conn_id),
    /// by stream id (0 for HTTP/1).
    latest: HashMap<u64, HashMap<u32, SpanIds>>,
    /// Each context's SERVER span, by (tgid, ctx_id).
    contexts: HashMap<(u32, u64), SpanIds>,
    /// The context the next request on a client socket is for, by
    /// (tgid, fd).
    claims: HashMap<(u32, u32), (u64, Instant)>,
    /// The context each HTTP/2 stream of a client socket was opened for,
    /// by (tgid, fd), then stream id.
    streams: HashMap<(u32, u32), HashMap<u32, (u64, Instant)>>,
}

fn bounded<K, V>(m: &mut HashMap<K, V>, c: &Counters) {
    if m.len() >= MAX_ENTRIES {
        m.clear();
        Counters::inc(&c.link_table_resets);
    }
}

impl GoLinks {
    /// Step 1 (`stream` 0 for HTTP/1).
    pub fn server_started(&mut self, conn_id: u64, stream: u32, ids: &SpanIds, c: &Counters) {
        if !self.latest.contains_key(&conn_id) {
            bounded(&mut self.latest, c);
        }
        let per = self.latest.entry(conn_id).or_default();
        // Streams no goroutine serves (another HTTP/2 server in the
        // process) must not pile up on a long-lived connection.
        if per.len() >= MAX_STREAMS_PER_SOCKET {
            per.clear();
            Counters::inc(&c.link_table_resets);
        }
        per.insert(stream, ids.clone());
    }

    /// Step 2: `conn_id` is the connection (tgid, fd) named, if the agent
    /// knows it.
    pub fn serve(
        &mut self,
        tgid: u32,
        ctx_id: u64,
        conn_id: Option<u64>,
        stream: u32,
        c: &Counters,
    ) {
        let ids = conn_id
            .and_then(|id| self.latest.get_mut(&id))
            .and_then(|per| per.remove(&stream));
        match ids {
            Some(ids) => {
                bounded(&mut self.contexts, c);
                self.contexts.insert((tgid, ctx_id), ids);
            }
            None => Counters::inc(&c.go_serve_unmatched),
        }
    }

    /// Step 3 (`ctx_id` 0: the request is for no context).
    pub fn client(&mut self, tgid: u32, fd: u32, ctx_id: u64, now: Instant, c: &Counters) {
        if ctx_id == 0 {
            self.claims.remove(&(tgid, fd));
            return;
        }
        bounded(&mut self.claims, c);
        self.claims.insert((tgid, fd), (ctx_id, now));
    }

    /// Step 3 for HTTP/2: stream `stream` of client socket (tgid, fd) was
    /// opened for `ctx_id`.
    pub fn stream_opened(
        &mut self,
        tgid: u32,
        fd: u32,
        stream: u32,
        ctx_id: u64,
        now: Instant,
        c: &Counters,
    ) {
        if !self.streams.contains_key(&(tgid, fd)) {
            bounded(&mut self.streams, c);
        }
        let per = self.streams.entry((tgid, fd)).or_default();
        if per.len() >= MAX_STREAMS_PER_SOCKET {
            per.clear();
            Counters::inc(&c.link_table_resets);
        }
        per.insert(stream, (ctx_id, now));
    }

    /// Step 4 for HTTP/2, when the CLIENT stream ends: the SERVER span it
    /// was opened for, if the chain holds.
    pub fn stream_parent(
        &mut self,
        tgid: u32,
        fd: u32,
        stream: u32,
        now: Instant,
    ) -> Option<&SpanIds> {
        let per = self.streams.get_mut(&(tgid, fd))?;
        let (ctx_id, at) = per.remove(&stream)?;
        if now.saturating_duration_since(at) > CLAIM_TTL {
            return None;
        }
        self.contexts.get(&(tgid, ctx_id))
    }

    /// Step 4: the SERVER span a CLIENT request on (tgid, fd) was made
    /// for, if the chain holds.
    pub fn parent_of(&mut self, tgid: u32, fd: u32, now: Instant) -> Option<&SpanIds> {
        let (ctx_id, at) = self.claims.remove(&(tgid, fd))?;
        if now.saturating_duration_since(at) > CLAIM_TTL {
            return None;
        }
        self.contexts.get(&(tgid, ctx_id))
    }

    /// A connection closed.
    pub fn forget_conn(&mut self, conn_id: u64) {
        self.latest.remove(&conn_id);
    }

    /// A socket closed: a claim on it is void.
    pub fn forget_socket(&mut self, tgid: u32, fd: u32) {
        self.claims.remove(&(tgid, fd));
        self.streams.remove(&(tgid, fd));
    }

    /// A process exited (the only walk over the tables).
    pub fn forget_process(&mut self, tgid: u32) {
        self.contexts.retain(|(t, _), _| *t != tgid);
        self.claims.retain(|(t, _), _| *t != tgid);
        self.streams.retain(|(t, _), _| *t != tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> SpanIds {
        SpanIds {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        }
    }

    #[test]
    fn a_claim_links_the_next_request_to_its_context_once() {
        let c = Counters::default();
        let mut g = GoLinks::default();
        let t = Instant::now();
        g.server_started(10, 0, &ids(1), &c);
        g.serve(7, 100, Some(10), 0, &c);
        g.client(7, 5, 100, t, &c);
        assert_eq!(g.parent_of(7, 5, t).map(|i| i.span_id), Some([1; 8]));
        // Taken: the next request on the socket has no claim.
        assert!(g.parent_of(7, 5, t).is_none());
        // Another process's socket of the same number has none either.
        g.client(7, 5, 100, t, &c);
        assert!(g.parent_of(8, 5, t).is_none());
    }

    #[test]
    fn a_lost_request_or_a_void_claim_links_nothing() {
        let c = Counters::default();
        let mut g = GoLinks::default();
        let t = Instant::now();
        g.server_started(10, 0, &ids(1), &c);
        g.serve(7, 100, Some(10), 0, &c);
        // The next request on the connection was lost: its context finds
        // no ids (not the previous request's).
        g.serve(7, 101, Some(10), 0, &c);
        assert_eq!(
            c.go_serve_unmatched
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        g.client(7, 5, 101, t, &c);
        assert!(g.parent_of(7, 5, t).is_none());
        // A claim for "no context" voids an earlier one.
        g.client(7, 5, 100, t, &c);
        g.client(7, 5, 0, t, &c);
        assert!(g.parent_of(7, 5, t).is_none());
        // A stale claim is void.
        g.client(7, 5, 100, t, &c);
        assert!(g
            .parent_of(7, 5, t + CLAIM_TTL + Duration::from_secs(1))
            .is_none());
        g.client(7, 5, 100, t, &c);
        g.forget_socket(7, 5);
        assert!(g.parent_of(7, 5, t).is_none());
    }

    #[test]
    fn http2_streams_link_by_stream_id_whatever_the_order() {
        let c = Counters::default();
        let mut g = GoLinks::default();
        let t = Instant::now();
        // Two streams of one server connection, served by two goroutines.
        g.server_started(10, 1, &ids(1), &c);
        g.server_started(10, 3, &ids(3), &c);
        g.serve(7, 200, Some(10), 3, &c);
        g.serve(7, 100, Some(10), 1, &c);
        // Their calls on one client connection, opened in the other order.
        g.stream_opened(7, 5, 9, 100, t, &c);
        g.stream_opened(7, 5, 11, 200, t, &c);
        assert_eq!(
            g.stream_parent(7, 5, 11, t).map(|i| i.span_id),
            Some([3; 8])
        );
        assert_eq!(g.stream_parent(7, 5, 9, t).map(|i| i.span_id), Some([1; 8]));
        // Once each; and no HTTP/1 claim was made by them.
        assert!(g.stream_parent(7, 5, 9, t).is_none());
        assert!(g.parent_of(7, 5, t).is_none());
        // A closed socket's streams are void.
        g.stream_opened(7, 5, 13, 100, t, &c);
        g.forget_socket(7, 5);
        assert!(g.stream_parent(7, 5, 13, t).is_none());
    }
}
