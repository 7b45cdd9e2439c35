//! Integrity of the local traces the agent exports, counted as they go
//! out (`tracer_trace_integrity_total{result}`), with the verdicts of
//! `tracer check`:
//!
//! - complete (200): a local root whose in-process children all lie
//!   within its time;
//! - broken (409): a linked CLIENT span whose SERVER parent was never
//!   exported (dropped, abandoned), or a CLIENT root made by a thread that
//!   was serving a request (two roots on one thread);
//! - inverted (422): a child that starts before its parent or ends after
//!   it by more than [`TOLERANCE_NS`] (both clocks are this node's).
//!
//! Children end before their parent, so they are summarised per parent
//! (bounded, oldest judged broken when full) until it is exported.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    spans::{LocalLink, Span, SpanKind},
    telemetry::Counters,
};

/// Slack for "ends well after its parent".
pub const TOLERANCE_NS: u64 = 1_000_000;
/// A parent not exported within this long never will be.
const WAIT: Duration = Duration::from_secs(30);
const MAX_PARENTS: usize = 16_384;

struct Children {
    min_start: u64,
    max_end: u64,
}

#[derive(Default)]
pub struct LiveIntegrity {
    waiting: HashMap<[u8; 8], Children>,
    order: VecDeque<([u8; 8], Instant)>,
    counters: Arc<Counters>,
}

impl LiveIntegrity {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            counters,
            ..Self::default()
        }
    }

    /// One exported span.
    pub fn exported(&mut self, span: &Span, now: Instant) {
        let c = &self.counters;
        if span.kind == SpanKind::Client && span.link == LocalLink::Parent {
            if let Some(parent) = span.ids.parent_span_id {
                if self.waiting.len() >= MAX_PARENTS && !self.waiting.contains_key(&parent) {
                    self.judge_oldest();
                }
                let e = self.waiting.entry(parent).or_insert_with(|| {
                    self.order.push_back((parent, now));
                    Children {
                        min_start: u64::MAX,
                        max_end: 0,
                    }
                });
                e.min_start = e.min_start.min(span.start_unix_ns);
                e.max_end = e.max_end.max(span.end_unix_ns);
            }
            return;
        }
        if span.kind == SpanKind::Client {
            if span.link == LocalLink::Ambiguous {
                Counters::inc(&c.trace_integrity_broken);
            } else if span.ids.parent_span_id.is_none() {
                Counters::inc(&c.trace_integrity_complete);
            }
            // A CLIENT under an application's own (remote) parent is
            // part of a trace rooted elsewhere: not judged here.
            return;
        }
        // A SERVER span: the root of its local trace.
        match self.waiting.remove(&span.ids.span_id) {
            Some(k)
                if k.min_start < span.start_unix_ns
                    || k.max_end > span.end_unix_ns.saturating_add(TOLERANCE_NS) =>
            {
                Counters::inc(&c.trace_integrity_inverted);
            }
            _ => Counters::inc(&c.trace_integrity_complete),
        }
    }

    /// Judges the children whose parent did not come within [`WAIT`].
    pub fn expire(&mut self, now: Instant) {
        while let Some((_, since)) = self.order.front() {
            if now.saturating_duration_since(*since) < WAIT {
                break;
            }
            self.judge_oldest();
        }
    }

    fn judge_oldest(&mut self) {
        while let Some((parent, _)) = self.order.pop_front() {
            // Entries whose parent came are gone from `waiting` already.
            if self.waiting.remove(&parent).is_some() {
                Counters::inc(&self.counters.trace_integrity_broken);
                return;
            }
        }
    }

    /// Shutdown: children still waiting lost their parent.
    pub fn flush(&mut self) {
        while !self.order.is_empty() {
            self.judge_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::metrics::red::tests::span;

    fn sp(kind: SpanKind, id: u8, parent: Option<u8>, start: u64, end: u64) -> Span {
        let mut s = span(kind, "GET /", vec![], 0);
        s.ids.span_id = [id; 8];
        s.ids.parent_span_id = parent.map(|p| [p; 8]);
        if kind == SpanKind::Client {
            s.link = if parent.is_some() {
                LocalLink::Parent
            } else {
                LocalLink::Ambiguous
            };
        }
        s.start_unix_ns = start;
        s.end_unix_ns = end;
        s
    }

    #[test]
    fn each_local_trace_gets_one_verdict() {
        let c = Arc::new(Counters::default());
        let mut l = LiveIntegrity::new(c.clone());
        let now = Instant::now();
        let ms = 1_000_000;
        // Whole: a child inside its parent.
        l.exported(&sp(SpanKind::Client, 2, Some(1), 2 * ms, 5 * ms), now);
        l.exported(&sp(SpanKind::Server, 1, None, ms, 10 * ms), now);
        // Inverted: a child ending 5 ms after its parent.
        l.exported(&sp(SpanKind::Client, 4, Some(3), 2 * ms, 15 * ms), now);
        l.exported(&sp(SpanKind::Server, 3, None, ms, 10 * ms), now);
        // Broken: a child whose parent never comes, and a root made by a
        // thread that was serving.
        l.exported(&sp(SpanKind::Client, 6, Some(5), 2 * ms, 5 * ms), now);
        l.exported(&sp(SpanKind::Client, 7, None, 2 * ms, 5 * ms), now);
        l.expire(now + WAIT);
        let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        assert_eq!(get(&c.trace_integrity_complete), 1);
        assert_eq!(get(&c.trace_integrity_inverted), 1);
        assert_eq!(get(&c.trace_integrity_broken), 2);
    }
}
