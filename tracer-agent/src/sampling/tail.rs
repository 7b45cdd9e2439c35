//! Keep-errors and keep-slow: a local trace that the head sampler dropped
//! is still exported when one of its spans failed or was slow. A local
//! trace ends with its local root (a SERVER span, or a CLIENT span with no
//! parent); CLIENT spans complete before the SERVER span that caused them,
//! so a dropped trace's CLIENT spans wait here for their parent, for at
//! most [`TailConfig::hold`] and within [`TailConfig::max_held`] spans
//! (the oldest is decided alone when the table is full, and counted).
//!
//! Spans the head sampler kept pass straight through: only dropped traces
//! are held.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    spans::{hex, AttrValue, Span, StatusCode},
    telemetry::Counters,
};

/// Default time a dropped trace's CLIENT span waits for its parent.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);
/// Default bound on spans waiting.
pub const DEFAULT_MAX_HELD: usize = 16_384;

#[derive(Debug, Clone)]
pub struct TailConfig {
    /// The head sampler keeps every trace whatever its flags say
    /// (`always_on`): nothing is dropped here.
    pub keep_all: bool,
    pub keep_errors: bool,
    pub keep_slower_than: Option<Duration>,
    pub hold: Duration,
    pub max_held: usize,
}

impl TailConfig {
    /// Everything is exported (replays, `always_on`).
    pub fn keep_all() -> Self {
        Self {
            keep_all: true,
            keep_errors: false,
            keep_slower_than: None,
            hold: DEFAULT_HOLD,
            max_held: DEFAULT_MAX_HELD,
        }
    }

    /// Whether any tail rule is on (else dropped spans are dropped at once).
    pub fn active(&self) -> bool {
        self.keep_errors || self.keep_slower_than.is_some()
    }
}

/// The spans of dropped local traces, waiting for their local root.
pub struct LocalTraces {
    cfg: TailConfig,
    /// By parent span id.
    held: HashMap<[u8; 8], Vec<Span>>,
    /// Parent ids in arrival order (may name parents already released).
    order: VecDeque<([u8; 8], Instant)>,
    count: usize,
    counters: Arc<Counters>,
}

/// Why a dropped trace was kept.
fn reason(cfg: &TailConfig, span: &Span) -> Option<&'static str> {
    if cfg.keep_errors && span.status == StatusCode::Error {
        return Some("error");
    }
    match cfg.keep_slower_than {
        Some(t) if span.duration_ns() > t.as_nanos() as u64 => Some("slow"),
        _ => None,
    }
}

/// The `--log-level trace` line of a span's sampling decision.
fn lifecycle(span: &Span, phase: &'static str, by: &'static str) {
    if tracing::enabled!(tracing::Level::TRACE) {
        tracing::trace!(
            phase,
            by,
            trace_id = %hex(&span.ids.trace_id),
            span_id = %hex(&span.ids.span_id),
            "sampling decision"
        );
    }
}

impl LocalTraces {
    pub fn new(cfg: TailConfig, counters: Arc<Counters>) -> Self {
        Self {
            cfg,
            held: HashMap::new(),
            order: VecDeque::new(),
            count: 0,
            counters,
        }
    }

    /// Whether every span passes whatever its flags (the head sampler
    /// keeps all, and no degradation caps it).
    pub fn set_keep_all(&mut self, keep_all: bool) {
        self.cfg.keep_all = keep_all;
    }

    /// Spans waiting now.
    pub fn held(&self) -> usize {
        self.count
    }

    /// Takes one completed span; what is to be exported goes to `out`.
    pub fn offer(&mut self, span: Span, now: Instant, out: &mut Vec<Span>) {
        if self.cfg.keep_all || span.ids.flags & 1 == 1 {
            lifecycle(&span, "sampled", "head");
            out.push(span);
            return;
        }
        if !self.cfg.active() {
            lifecycle(&span, "dropped", "head");
            Counters::inc(&self.counters.spans_sampled_out);
            return;
        }
        let is_local_root =
            span.kind == crate::spans::SpanKind::Server || span.ids.parent_span_id.is_none();
        match span.ids.parent_span_id {
            Some(parent) if !is_local_root => {
                if self.count >= self.cfg.max_held {
                    Counters::inc(&self.counters.sampling_hold_evicted);
                    self.expire_oldest(out);
                }
                self.held.entry(parent).or_default().push(span);
                self.order.push_back((parent, now));
                self.count += 1;
            }
            _ => {
                let children = self.held.remove(&span.ids.span_id).unwrap_or_default();
                self.count -= children.len();
                let why = reason(&self.cfg, &span)
                    .or_else(|| children.iter().find_map(|c| reason(&self.cfg, c)));
                self.decide(std::iter::once(span).chain(children), why, out);
            }
        }
    }

    /// Decides the spans whose parent did not end within the hold time
    /// (their root is elsewhere, or was lost): each set on its own.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Span>) {
        while let Some((_, since)) = self.order.front() {
            if now.saturating_duration_since(*since) < self.cfg.hold {
                break;
            }
            self.expire_oldest(out);
        }
    }

    /// Decides everything still held (shutdown).
    pub fn flush(&mut self, out: &mut Vec<Span>) {
        while !self.order.is_empty() {
            self.expire_oldest(out);
        }
    }

    fn expire_oldest(&mut self, out: &mut Vec<Span>) {
        let Some((parent, _)) = self.order.pop_front() else {
            return;
        };
        // The entry may have been released by its root already.
        let Some(group) = self.held.remove(&parent) else {
            return;
        };
        // Later arrivals of the same parent are decided with this group;
        // their order entries find nothing.
        self.count -= group.len();
        let why = group.iter().find_map(|s| reason(&self.cfg, s));
        self.decide(group.into_iter(), why, out);
    }

    fn decide(
        &mut self,
        spans: impl Iterator<Item = Span>,
        why: Option<&'static str>,
        out: &mut Vec<Span>,
    ) {
        match why {
            Some(why) => {
                for mut s in spans {
                    lifecycle(&s, "sampled", why);
                    Counters::inc(&self.counters.spans_kept_by_rule);
                    s.attributes
                        .push(("tracer.sampling.kept_by", AttrValue::Static(why)));
                    out.push(s);
                }
            }
            None => {
                let mut n = 0;
                for s in spans {
                    lifecycle(&s, "dropped", "head");
                    n += 1;
                }
                Counters::add(&self.counters.spans_sampled_out, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::{metrics::red::tests::span, spans::SpanKind};

    fn cfg() -> TailConfig {
        TailConfig {
            keep_all: false,
            keep_errors: true,
            keep_slower_than: Some(Duration::from_millis(100)),
            hold: Duration::from_secs(10),
            max_held: 3,
        }
    }

    fn s(kind: SpanKind, id: u8, parent: Option<u8>, ms: u64, error: bool, sampled: bool) -> Span {
        let mut sp = span(kind, "GET /x", vec![], ms);
        sp.ids.span_id = [id; 8];
        sp.ids.parent_span_id = parent.map(|p| [p; 8]);
        sp.ids.flags = u8::from(sampled);
        if error {
            sp.status = StatusCode::Error;
        }
        sp
    }

    #[test]
    fn a_dropped_trace_is_kept_whole_when_a_child_failed() {
        let c = Arc::new(Counters::default());
        let mut t = LocalTraces::new(cfg(), c.clone());
        let now = Instant::now();
        let mut out = Vec::new();
        t.offer(
            s(SpanKind::Client, 2, Some(1), 1, true, false),
            now,
            &mut out,
        );
        t.offer(
            s(SpanKind::Client, 3, Some(1), 1, false, false),
            now,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(t.held(), 2);
        t.offer(
            s(SpanKind::Server, 1, Some(9), 5, false, false),
            now,
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|s| s.attr("tracer.sampling.kept_by") == Some(&AttrValue::Static("error"))));
        assert_eq!(t.held(), 0);
        // A plain dropped trace is dropped whole, and counted.
        out.clear();
        t.offer(
            s(SpanKind::Client, 5, Some(4), 1, false, false),
            now,
            &mut out,
        );
        t.offer(
            s(SpanKind::Server, 4, None, 150, false, false),
            now,
            &mut out,
        );
        assert_eq!(out.len(), 2, "slow root keeps it");
        out.clear();
        t.offer(
            s(SpanKind::Client, 7, Some(6), 1, false, false),
            now,
            &mut out,
        );
        t.offer(s(SpanKind::Server, 6, None, 1, false, false), now, &mut out);
        assert!(out.is_empty());
        assert_eq!(c.spans_sampled_out.load(Ordering::Relaxed), 2);
        // Sampled spans are not held.
        t.offer(
            s(SpanKind::Client, 8, Some(6), 1, false, true),
            now,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn holds_are_bounded_in_time_and_size() {
        let c = Arc::new(Counters::default());
        let mut t = LocalTraces::new(cfg(), c.clone());
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..5u8 {
            t.offer(
                s(SpanKind::Client, 10 + i, Some(i), 1, i == 0, false),
                now,
                &mut out,
            );
        }
        assert_eq!(t.held(), 3);
        assert_eq!(c.sampling_hold_evicted.load(Ordering::Relaxed), 2);
        // The evicted error span was still decided on its own: kept.
        assert_eq!(out.len(), 1);
        t.expire(now + Duration::from_secs(11), &mut out);
        assert_eq!(t.held(), 0);
        assert_eq!(c.spans_sampled_out.load(Ordering::Relaxed), 4);
    }
}
