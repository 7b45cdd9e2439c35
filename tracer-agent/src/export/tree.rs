//! `--output tree`: each local trace as an indented waterfall in the
//! terminal, printed when its root has ended and a short grace has passed
//! with no new span (CLIENT spans end before the SERVER span that caused
//! them, and a downstream service on this node may end just after).
//!
//! Bounded: at most [`MAX_TRACES`] traces wait (the oldest is printed
//! early when full), at most [`MAX_SPANS`] spans each (the rest counted
//! in the header), and none waits longer than [`MAX_WAIT`].

use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    time::{Duration, Instant},
};

use crate::spans::{hex, AttrValue, Span, SpanKind, StatusCode};

pub const GRACE: Duration = Duration::from_millis(300);
pub const MAX_WAIT: Duration = Duration::from_secs(5);
pub const MAX_TRACES: usize = 4096;
pub const MAX_SPANS: usize = 256;
/// Width of the bar column.
const BAR: usize = 40;

struct Pending {
    spans: Vec<Span>,
    more: usize,
    first: Instant,
    last: Instant,
    /// A local root (a SERVER span, or a span with no parent) has ended.
    root_ended: bool,
}

#[derive(Default)]
pub struct Waterfalls {
    traces: HashMap<[u8; 16], Pending>,
    order: VecDeque<[u8; 16]>,
}

impl Waterfalls {
    pub fn offer(&mut self, span: Span, now: Instant, out: &mut impl Write) -> std::io::Result<()> {
        let id = span.ids.trace_id;
        if !self.traces.contains_key(&id) && self.traces.len() >= MAX_TRACES {
            // The oldest still waiting (`order` may name printed ones).
            while let Some(oldest) = self.order.pop_front() {
                if self.traces.contains_key(&oldest) {
                    self.print(oldest, out)?;
                    break;
                }
            }
        }
        let root = span.kind == SpanKind::Server || span.ids.parent_span_id.is_none();
        let p = self.traces.entry(id).or_insert_with(|| {
            self.order.push_back(id);
            Pending {
                spans: Vec::new(),
                more: 0,
                first: now,
                last: now,
                root_ended: false,
            }
        });
        p.last = now;
        p.root_ended |= root;
        if p.spans.len() < MAX_SPANS {
            p.spans.push(span);
        } else {
            p.more += 1;
        }
        Ok(())
    }

    /// Prints the traces that are due.
    pub fn due(&mut self, now: Instant, out: &mut impl Write) -> std::io::Result<()> {
        // In arrival order, so traces print in the order they began.
        let ready: Vec<[u8; 16]> = self
            .order
            .iter()
            .filter(|id| {
                self.traces.get(*id).is_some_and(|p| {
                    (p.root_ended && now.saturating_duration_since(p.last) >= GRACE)
                        || now.saturating_duration_since(p.first) >= MAX_WAIT
                })
            })
            .copied()
            .collect();
        let printed = !ready.is_empty();
        for id in ready {
            self.print(id, out)?;
        }
        if printed {
            let traces = &self.traces;
            self.order.retain(|id| traces.contains_key(id));
        }
        Ok(())
    }

    /// Prints everything (shutdown).
    pub fn flush(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        while let Some(id) = self.order.pop_front() {
            self.print(id, out)?;
        }
        Ok(())
    }

    fn print(&mut self, id: [u8; 16], out: &mut impl Write) -> std::io::Result<()> {
        // `order` is cleaned by the caller (one pass, not one per trace).
        let Some(p) = self.traces.remove(&id) else {
            return Ok(());
        };
        render(&id, &p.spans, p.more, out)
    }
}

fn duration(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else {
        format!("{:.3}ms", ns as f64 / 1e6)
    }
}

/// One trace as a waterfall: parents before children, siblings by start.
pub fn render(
    trace: &[u8; 16],
    spans: &[Span],
    more: usize,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let t0 = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let t1 = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(t0);
    let total = t1.saturating_sub(t0).max(1);
    let mut services: Vec<&str> = spans
        .iter()
        .map(|s| s.resource.service_name.as_str())
        .collect();
    services.sort_unstable();
    services.dedup();
    let extra = if more > 0 {
        format!(" (+{more} not shown)")
    } else {
        String::new()
    };
    writeln!(
        out,
        "trace {} · {} spans{extra} · {} · {}",
        hex(trace),
        spans.len() + more,
        services.join(", "),
        duration(total)
    )?;
    let ids: HashMap<[u8; 8], usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.ids.span_id, i))
        .collect();
    let mut children: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s
            .ids
            .parent_span_id
            .filter(|p| ids.contains_key(p) && *p != s.ids.span_id)
        {
            Some(p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].start_unix_ns, i));
    by_start(&mut roots);
    for v in children.values_mut() {
        by_start(v);
    }
    // Depth-first, iteratively; `seen` guards against parent loops, whose
    // spans (no root reaches them) are printed as roots after the rest.
    let mut seen = vec![false; spans.len()];
    for start in roots.into_iter().chain(0..spans.len()) {
        let mut stack = vec![(start, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            line(&spans[i], depth, t0, total, out)?;
            if let Some(kids) = children.get(&spans[i].ids.span_id) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
    }
    writeln!(out)
}

fn line(s: &Span, depth: usize, t0: u64, total: u64, out: &mut impl Write) -> std::io::Result<()> {
    let status = match (
        s.attr("http.response.status_code"),
        s.attr("rpc.grpc.status_code"),
    ) {
        (_, Some(AttrValue::Int(g))) => format!("grpc={g}"),
        (Some(AttrValue::Int(c)), _) => c.to_string(),
        _ => "-".to_owned(),
    };
    let err = if s.status == StatusCode::Error {
        " ERROR"
    } else {
        ""
    };
    let offset = s.start_unix_ns.saturating_sub(t0);
    let from = (offset as u128 * BAR as u128 / total as u128) as usize;
    let len = ((s.duration_ns() as u128 * BAR as u128 / total as u128) as usize).max(1);
    let from = from.min(BAR - 1);
    let len = len.min(BAR - from);
    let bar: String = (0..BAR)
        .map(|c| {
            if c >= from && c < from + len {
                '█'
            } else {
                ' '
            }
        })
        .collect();
    let label = format!(
        "{}{} {} {}",
        "  ".repeat(depth.min(16)),
        s.resource.service_name,
        s.kind.as_str(),
        s.name
    );
    writeln!(
        out,
        "  {label:<56} {status:>8}{err:<6} +{:>10} {:>10} |{bar}|",
        duration(offset),
        duration(s.duration_ns())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::red::tests::span;

    fn sp(kind: SpanKind, name: &str, id: u8, parent: Option<u8>, start_ms: u64, ms: u64) -> Span {
        let mut s = span(
            kind,
            name,
            vec![("http.response.status_code", AttrValue::Int(200))],
            ms,
        );
        s.ids.span_id = [id; 8];
        s.ids.parent_span_id = parent.map(|p| [p; 8]);
        s.start_unix_ns += start_ms * 1_000_000;
        s.end_unix_ns += start_ms * 1_000_000;
        s
    }

    #[test]
    fn a_trace_prints_as_an_indented_waterfall_after_its_root_and_grace() {
        let mut w = Waterfalls::default();
        let mut out = Vec::new();
        let t = Instant::now();
        w.offer(
            sp(SpanKind::Client, "GET /db", 2, Some(1), 2, 5),
            t,
            &mut out,
        )
        .expect("offer");
        w.due(t + GRACE * 2, &mut out).expect("due");
        assert!(out.is_empty(), "no root yet");
        w.offer(
            sp(SpanKind::Server, "GET /users/{id}", 1, None, 0, 10),
            t,
            &mut out,
        )
        .expect("offer");
        w.due(t + GRACE / 2, &mut out).expect("due");
        assert!(out.is_empty(), "within the grace");
        w.due(t + GRACE, &mut out).expect("due");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("trace 0707"), "{text}");
        assert!(lines[0].contains("2 spans · svc · 10.000ms"), "{text}");
        assert!(
            lines[1].starts_with("  svc SERVER GET /users/{id}"),
            "{text}"
        );
        assert!(lines[2].starts_with("    svc CLIENT GET /db"), "{text}");
        // The child's bar starts a fifth of the way in and is half as long.
        let bar = lines[2].split('|').nth(1).expect("bar");
        assert_eq!(bar.chars().position(|c| c == '█'), Some(8), "{text}");
        assert_eq!(bar.chars().filter(|c| *c == '█').count(), 20, "{text}");
        assert!(lines[2].contains("+   2.000ms"), "{text}");
    }

    #[test]
    fn waiting_is_bounded() {
        let mut w = Waterfalls::default();
        let mut out = Vec::new();
        let t = Instant::now();
        w.offer(
            sp(SpanKind::Client, "GET /x", 2, Some(1), 0, 1),
            t,
            &mut out,
        )
        .expect("offer");
        w.due(t + MAX_WAIT, &mut out).expect("due");
        assert!(String::from_utf8_lossy(&out).contains("CLIENT GET /x"));
        // A parent loop prints each span once.
        let mut out = Vec::new();
        let a = sp(SpanKind::Server, "a", 1, Some(2), 0, 1);
        let b = sp(SpanKind::Server, "b", 2, Some(1), 0, 1);
        render(&[1; 16], &[a, b], 0, &mut out).expect("render");
        let text = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(
            text.lines().filter(|l| l.contains("SERVER")).count(),
            2,
            "{text}"
        );
    }
}
