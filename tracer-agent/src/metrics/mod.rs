//! Metrics for Prometheus (`--metrics-listen`): the RED histograms of the
//! traced services ([`red`]) and the agent's own health
//! ([`self_metrics`]), encoded in the OpenMetrics text format by
//! prometheus-client at each scrape.
pub mod red;
pub mod self_metrics;

use prometheus_client::registry::{Registry as PromRegistry, Unit};

pub use red::{Red, RedRecorder};
use self_metrics::SelfMetrics;

use crate::telemetry::Registry;

/// What `/metrics` serves.
#[derive(Debug)]
pub struct Exposition {
    registry: PromRegistry,
}

/// The Content-Type of OpenMetrics text ([`Exposition::render`]).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of the classic Prometheus text format
/// ([`Exposition::render_classic`]).
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    pub fn new(red: &Red, registry: Registry) -> Self {
        let mut r = PromRegistry::default();
        for (family, (name, help)) in red.families.iter().zip(red::METRICS) {
            r.register_with_unit(name, help, Unit::Seconds, family.clone());
        }
        r.register_collector(Box::new(SelfMetrics { registry }));
        Self { registry: r }
    }

    /// The OpenMetrics text of every metric now.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics failed: {e}");
        }
        out
    }

    /// The same metrics in the classic Prometheus text format (0.0.4),
    /// for scrapers that do not ask for OpenMetrics (promtool, curl,
    /// older agents).
    pub fn render_classic(&self) -> String {
        to_classic(&self.render())
    }
}

/// OpenMetrics text to the classic format. They differ in what concerns
/// us only in this: an OpenMetrics counter family `x` has samples
/// `x_total`, while a classic one is named `x_total` itself; and classic
/// text has no `# UNIT` and no `# EOF` lines.
fn to_classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line.starts_with("# HELP ") {
            if let Some(h) = help.take() {
                out.push_str(h);
                out.push('\n');
            }
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter" && !name.ends_with("_total");
            if let Some(h) = help.take() {
                match (
                    counter,
                    h.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')),
                ) {
                    (true, Some((n, text))) => {
                        out.push_str(&format!("# HELP {n}_total {text}\n"));
                    }
                    _ => {
                        out.push_str(h);
                        out.push('\n');
                    }
                }
            }
            if counter {
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        spans::{AttrValue, SpanKind},
        telemetry::Counters,
    };
    use std::sync::{atomic::Ordering, Arc};

    #[test]
    fn exposition_carries_red_histograms_and_self_metrics() {
        let registry = Registry::new();
        registry.counters.spans.store(5, Ordering::Relaxed);
        let red = Red::new();
        let mut rec = RedRecorder::new(red.clone(), 10, Arc::new(Counters::default()));
        let attrs = vec![("http.response.status_code", AttrValue::Int(200))];
        rec.observe(&red::tests::span(SpanKind::Server, "GET /a", attrs, 20));
        let text = Exposition::new(&red, registry).render();
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "http_server_request_duration_seconds_bucket{le=\"0.025\",service_name=\"svc\",\
             http_response_status_code=\"200\",http_route=\"/a\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("tracer_spans_total 5"), "{text}");
        assert!(
            text.contains("# HELP tracer_spans Spans produced."),
            "{text}"
        );
        assert!(
            text.contains("tracer_agent_resident_memory_bytes "),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let open = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n\
                    # HELP d Seconds.\n# TYPE d histogram\n# UNIT d seconds\nd_count 1\n# EOF\n";
        assert_eq!(
            to_classic(open),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n\
             # HELP d Seconds.\n# TYPE d histogram\nd_count 1\n"
        );
    }
}
