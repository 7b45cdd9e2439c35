//! Local span output: one line per span on stdout, human-readable or JSON
//! lines. This is the zero-setup way to see the tracer work.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::tree::Waterfalls;
pub use crate::cli::Format;
use crate::{
    metadata::resource::{ResValue, Resource},
    spans::{hex, AttrValue, Span, StatusCode},
};

fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Int(i) => Value::from(*i),
        other => Value::String(other.as_str().unwrap_or_default().to_owned()),
    }
}

/// The resource as one JSON object: the same keys and values as the OTLP
/// Resource.
fn resource_json(r: &Resource) -> Value {
    let mut m = Map::new();
    for (k, v) in &r.attrs {
        let v = match v {
            ResValue::Str(s) => Value::String(s.clone()),
            ResValue::Int(i) => Value::from(*i),
        };
        m.insert((*k).to_owned(), v);
    }
    Value::Object(m)
}

pub fn to_json(s: &Span) -> Value {
    let mut attrs = Map::new();
    for (k, v) in &s.attributes {
        attrs.insert((*k).to_owned(), attr_json(v));
    }
    json!({
        "trace_id": hex(&s.ids.trace_id),
        "span_id": hex(&s.ids.span_id),
        "parent_span_id": s.ids.parent_span_id.map(|p| hex(&p)),
        "trace_flags": s.ids.flags,
        "tracestate": s.ids.tracestate,
        "kind": s.kind.as_str(),
        "name": s.name,
        "start_time_unix_nano": s.start_unix_ns,
        "end_time_unix_nano": s.end_unix_ns,
        "duration_ns": s.duration_ns(),
        "status": match s.status { StatusCode::Unset => "UNSET", StatusCode::Error => "ERROR" },
        "attributes": attrs,
        "resource": resource_json(&s.resource),
        "thread.id": s.tid,
    })
}

fn format_time(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let millis = (unix_ns / 1_000_000) % 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem / 60) % 60, rem % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

fn format_duration(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}µs", ns as f64 / 1e3)
    }
}

/// Writes one human-readable line.
pub fn write_text(out: &mut impl Write, s: &Span) -> std::io::Result<()> {
    let status = match s.attr("http.response.status_code") {
        Some(AttrValue::Int(c)) => *c,
        _ => 0,
    };
    writeln!(
        out,
        "{} {}[{}] {:<6} {} {} {}{} trace={} span={} parent={}",
        format_time(s.start_unix_ns),
        s.resource.service_name,
        s.process.pid,
        s.kind.as_str(),
        s.name,
        status,
        format_duration(s.duration_ns()),
        if s.status == StatusCode::Error {
            " ERROR"
        } else {
            ""
        },
        hex(&s.ids.trace_id),
        hex(&s.ids.span_id),
        s.ids.parent_span_id.map_or_else(|| "-".into(), |p| hex(&p)),
    )
}

/// Writes batches of spans until the channel closes, flushing after each
/// batch so lines appear promptly without a syscall per span.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Arc<Vec<Span>>>,
    queued: Arc<AtomicUsize>,
    format: Format,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let mut broken = false;
    let mut trees = Waterfalls::default();
    // Waterfalls are printed when due, batch or not.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let batch = tokio::select! {
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
            _ = tick.tick(), if format == Format::Tree => {
                if !broken {
                    broken = trees.due(Instant::now(), &mut out).and_then(|()| out.flush()).is_err();
                }
                continue;
            }
        };
        let n = batch.len();
        if !broken && format != Format::None {
            let now = Instant::now();
            for s in batch.iter() {
                let r = match format {
                    Format::Text => write_text(&mut out, s),
                    Format::Json => writeln!(out, "{}", to_json(s)),
                    Format::Tree => trees.offer(s.clone(), now, &mut out),
                    Format::None => Ok(()),
                };
                if r.is_err() {
                    // stdout closed (e.g. piped into `head`): keep tracing.
                    broken = true;
                    break;
                }
                if tracing::enabled!(tracing::Level::TRACE) {
                    tracing::trace!(
                        phase = "exported",
                        sink = "stdout",
                        trace_id = %hex(&s.ids.trace_id),
                        span_id = %hex(&s.ids.span_id),
                        "span written"
                    );
                }
            }
            let _ = out.flush();
        }
        queued.fetch_sub(n, Ordering::Relaxed);
    }
    if !broken {
        let _ = trees.flush(&mut out);
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time(1_795_000_000_123_000_000),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(format_duration(1_500), "1.5µs");
        assert_eq!(format_duration(2_500_000), "2.50ms");
    }
}
