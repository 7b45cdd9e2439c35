//! RED histograms (rate, errors, duration) of every span, named as the
//! OpenTelemetry semantic conventions and OBI users know them:
//! `http_server_request_duration_seconds`, `http_client_request_duration_seconds`,
//! `rpc_server_duration_seconds`, `rpc_client_duration_seconds`.
//!
//! They are observed for every span the pipeline builds, before sampling
//! and before the output queues, so a sampled-out or dropped span still
//! counts. The labels are low-cardinality by construction (the route
//! template, not the path), and a per-metric cap on series folds what
//! exceeds it into one `otel_metric_overflow="true"` series, counted in
//! `tracer_metrics_series_overflow_total`.
//!
//! The pipeline owns the [`RedRecorder`] (no lock on its index: one task
//! observes); the histogram families are shared with the scrape endpoint.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use prometheus_client::metrics::{family::Family, histogram::Histogram};

use crate::{
    metadata::resource::ResValue,
    spans::{AttrValue, Span, SpanKind},
    telemetry::Counters,
};

/// Bucket bounds of the semantic conventions' HTTP and RPC duration
/// histograms, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Default cap on series per metric.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// The label set of one series: label names are fixed strings, values
/// are owned. Labels whose value is unknown are left out, never empty.
pub type Labels = Vec<(&'static str, String)>;
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The four metrics, in [`Red::index`] order: (name without unit, help).
pub const METRICS: [(&str, &str); 4] = [
    (
        "http_server_request_duration",
        "Duration of HTTP server requests (SERVER spans), in seconds.",
    ),
    (
        "http_client_request_duration",
        "Duration of HTTP client requests (CLIENT spans), in seconds.",
    ),
    (
        "rpc_server_duration",
        "Duration of gRPC calls served (SERVER spans), in seconds.",
    ),
    (
        "rpc_client_duration",
        "Duration of gRPC calls made (CLIENT spans), in seconds.",
    ),
];

/// Resource attributes carried as labels (dots become underscores).
const K8S_LABELS: [(&str, &str); 8] = [
    ("k8s.namespace.name", "k8s_namespace_name"),
    ("k8s.pod.name", "k8s_pod_name"),
    ("k8s.container.name", "k8s_container_name"),
    ("k8s.deployment.name", "k8s_deployment_name"),
    ("k8s.statefulset.name", "k8s_statefulset_name"),
    ("k8s.daemonset.name", "k8s_daemonset_name"),
    ("k8s.job.name", "k8s_job_name"),
    ("k8s.cronjob.name", "k8s_cronjob_name"),
];

/// Most labels a series can have.
const MAX_LABELS: usize = 16;

/// The histogram families, shared by the recorder and the exposition.
#[derive(Debug, Clone)]
pub struct Red {
    pub families: Arc<[HistogramFamily; 4]>,
}

impl Default for Red {
    fn default() -> Self {
        Self::new()
    }
}

impl Red {
    pub fn new() -> Self {
        let f = || HistogramFamily::new_with_constructor(new_histogram as fn() -> Histogram);
        Self {
            families: Arc::new([f(), f(), f(), f()]),
        }
    }

    /// Which metric a span feeds.
    fn index(span: &Span) -> usize {
        let rpc = matches!(span.attr("rpc.system"), Some(v) if v.as_str() == Some("grpc"));
        match (rpc, span.kind) {
            (false, SpanKind::Server) => 0,
            (false, SpanKind::Client) => 1,
            (true, SpanKind::Server) => 2,
            (true, SpanKind::Client) => 3,
        }
    }
}

/// The series of one metric this agent has created, found by the hash of
/// their label values so that a hit allocates nothing.
#[derive(Default)]
struct SeriesIndex {
    by_hash: HashMap<u64, Vec<usize>>,
    series: Vec<(Labels, Histogram)>,
    overflow: Option<Histogram>,
    warned: bool,
}

/// Observes spans into the families, under the series cap.
pub struct RedRecorder {
    red: Red,
    index: [SeriesIndex; 4],
    max_series: usize,
    counters: Arc<Counters>,
}

/// The label pairs of one span, on the stack.
struct LabelBuf<'a> {
    items: [(&'static str, &'a str); MAX_LABELS],
    len: usize,
}

impl Default for LabelBuf<'_> {
    fn default() -> Self {
        Self {
            items: [("", ""); MAX_LABELS],
            len: 0,
        }
    }
}

impl<'a> LabelBuf<'a> {
    /// Adds a label; unknown (empty) values are left out.
    fn push(&mut self, key: &'static str, value: &'a str) {
        if !value.is_empty() && self.len < MAX_LABELS {
            self.items[self.len] = (key, value);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[(&'static str, &'a str)] {
        &self.items[..self.len]
    }
}

/// Formats an integer label value without allocating.
struct IntText {
    buf: [u8; 20],
    len: usize,
}

impl IntText {
    fn new(v: i64) -> Self {
        let mut buf = [0u8; 20];
        let mut len = 0;
        let neg = v < 0;
        let mut n = v.unsigned_abs();
        loop {
            buf[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 || len == buf.len() - 1 {
                break;
            }
        }
        if neg {
            buf[len] = b'-';
            len += 1;
        }
        buf[..len].reverse();
        Self { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl RedRecorder {
    pub fn new(red: Red, max_series: usize, counters: Arc<Counters>) -> Self {
        Self {
            red,
            index: Default::default(),
            max_series: max_series.max(1),
            counters,
        }
    }

    /// Counts one span in its metric.
    pub fn observe(&mut self, span: &Span) {
        let status = span
            .attr("http.response.status_code")
            .and_then(int)
            .map(IntText::new);
        let grpc = span
            .attr("rpc.grpc.status_code")
            .and_then(int)
            .map(IntText::new);
        let mut labels = LabelBuf::default();
        let res = &span.resource;
        labels.push("service_name", &res.service_name);
        for (key, value) in &res.attrs {
            if *key == "service.namespace" {
                if let ResValue::Str(v) = value {
                    labels.push("service_namespace", v);
                }
            }
        }
        for (attr, label) in K8S_LABELS {
            if let Some((_, ResValue::Str(v))) = res.attrs.iter().find(|(k, _)| *k == attr) {
                labels.push(label, v);
            }
        }
        let which = Red::index(span);
        if which < 2 {
            if let Some(m) = span.attr("http.request.method").and_then(AttrValue::as_str) {
                labels.push("http_request_method", m);
            }
            if let Some(s) = &status {
                labels.push("http_response_status_code", s.as_str());
            }
            // The span name is "METHOD /route/{id}": its template part.
            if let Some((_, route)) = span.name.split_once(' ') {
                labels.push("http_route", route);
            }
        } else {
            for (attr, label) in [("rpc.service", "rpc_service"), ("rpc.method", "rpc_method")] {
                if let Some(v) = span.attr(attr).and_then(AttrValue::as_str) {
                    labels.push(label, v);
                }
            }
            if let Some(s) = &grpc {
                labels.push("rpc_grpc_status_code", s.as_str());
            }
        }
        let labels = labels.as_slice();
        let seconds = span.duration_ns() as f64 / 1e9;
        self.series(which, labels).observe(seconds);
    }

    /// The histogram of a label set: found, created under the cap, or the
    /// overflow series.
    fn series(&mut self, which: usize, labels: &[(&'static str, &str)]) -> Histogram {
        let mut h = DefaultHasher::new();
        labels.hash(&mut h);
        let hash = h.finish();
        let idx = &mut self.index[which];
        if let Some(ids) = idx.by_hash.get(&hash) {
            for &i in ids {
                let (owned, hist) = &idx.series[i];
                if owned.len() == labels.len()
                    && owned
                        .iter()
                        .zip(labels)
                        .all(|((ka, va), (kb, vb))| ka == kb && va == vb)
                {
                    return hist.clone();
                }
            }
        }
        let family = &self.red.families[which];
        if idx.series.len() >= self.max_series {
            Counters::inc(&self.counters.metrics_series_overflow);
            if !idx.warned {
                idx.warned = true;
                tracing::warn!(
                    metric = METRICS[which].0,
                    max = self.max_series,
                    "metric series cap reached: further label sets are folded into \
                     otel_metric_overflow=\"true\" (raise --metrics-max-series)"
                );
            }
            return idx
                .overflow
                .get_or_insert_with(|| {
                    family
                        .get_or_create(&vec![("otel_metric_overflow", "true".to_owned())])
                        .clone()
                })
                .clone();
        }
        let owned: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let hist = family.get_or_create(&owned).clone();
        idx.by_hash.entry(hash).or_default().push(idx.series.len());
        idx.series.push((owned, hist.clone()));
        hist
    }
}

fn int(v: &AttrValue) -> Option<i64> {
    match v {
        AttrValue::Int(i) => Some(*i),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::{
        metadata::{process::Process, resource::Resource},
        spans::StatusCode,
        trace::ids::SpanIds,
    };

    pub(crate) fn span(
        kind: SpanKind,
        name: &str,
        attrs: Vec<(&'static str, AttrValue)>,
        ms: u64,
    ) -> Span {
        let p = Process::read(u32::MAX - 1, "svc");
        Span {
            ids: SpanIds {
                trace_id: [7; 16],
                span_id: [8; 8],
                parent_span_id: None,
                flags: 1,
                tracestate: None,
            },
            kind,
            name: name.into(),
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_000 + ms * 1_000_000,
            status: StatusCode::Unset,
            attributes: attrs,
            resource: Arc::new(Resource::of(&p, "h", None)),
            process: Arc::new(p),
            tid: 1,
            link: crate::spans::LocalLink::None,
        }
    }

    /// (count, sum) of one series, read from the encoded text (the
    /// histogram's own getter is private); None when it does not exist.
    fn get(red: &Red, which: usize, labels: &[(&'static str, &str)]) -> Option<(u64, f64)> {
        let mut r = prometheus_client::registry::Registry::default();
        r.register("m", "h", red.families[which].clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        let set = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",");
        let value = |suffix: &str| {
            let head = format!("m_{suffix}{{{set}}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(head.as_str()))
                .map(str::to_owned)
        };
        let count = value("count")?.parse().ok()?;
        let sum = value("sum")?.parse().ok()?;
        Some((count, sum))
    }

    #[test]
    fn spans_feed_their_metric_with_route_status_and_service() {
        let red = Red::new();
        let mut rec = RedRecorder::new(red.clone(), 10, Arc::new(Counters::default()));
        let http = |status| {
            vec![
                ("http.request.method", AttrValue::Static("GET")),
                ("http.response.status_code", AttrValue::Int(status)),
            ]
        };
        rec.observe(&span(SpanKind::Server, "GET /users/{id}", http(200), 20));
        rec.observe(&span(SpanKind::Server, "GET /users/{id}", http(200), 30));
        rec.observe(&span(SpanKind::Server, "GET /users/{id}", http(503), 1));
        rec.observe(&span(SpanKind::Client, "GET", http(404), 1));
        let grpc = vec![
            ("rpc.system", AttrValue::Static("grpc")),
            ("rpc.service", AttrValue::Str("helloworld.Greeter".into())),
            ("rpc.method", AttrValue::Str("SayHello".into())),
            ("rpc.grpc.status_code", AttrValue::Int(0)),
        ];
        rec.observe(&span(
            SpanKind::Client,
            "helloworld.Greeter/SayHello",
            grpc,
            2,
        ));

        let svc = ("service_name", "svc");
        let ok = [
            svc,
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", "/users/{id}"),
        ];
        let (count, sum) = get(&red, 0, &ok).expect("200 series");
        assert_eq!(count, 2);
        assert!((sum - 0.05).abs() < 1e-9, "{sum}");
        let err = [ok[0], ok[1], ("http_response_status_code", "503"), ok[3]];
        assert_eq!(get(&red, 0, &err).map(|v| v.0), Some(1));
        // A name without a route has no http_route label at all.
        let client = [
            svc,
            ("http_request_method", "GET"),
            ("http_response_status_code", "404"),
        ];
        assert_eq!(get(&red, 1, &client).map(|v| v.0), Some(1));
        let rpc = [
            svc,
            ("rpc_service", "helloworld.Greeter"),
            ("rpc_method", "SayHello"),
            ("rpc_grpc_status_code", "0"),
        ];
        assert_eq!(get(&red, 3, &rpc).map(|v| v.0), Some(1));
        assert!(get(&red, 2, &rpc).is_none());
    }

    #[test]
    fn series_past_the_cap_fold_into_one_overflow_series() {
        let red = Red::new();
        let counters = Arc::new(Counters::default());
        let mut rec = RedRecorder::new(red.clone(), 3, counters.clone());
        for i in 0..10 {
            let name = format!("GET /r{i}");
            rec.observe(&span(SpanKind::Server, &name, vec![], 1));
            rec.observe(&span(SpanKind::Server, &name, vec![], 1));
        }
        for i in 0..3 {
            let route = format!("/r{i}");
            let labels = [("service_name", "svc"), ("http_route", route.as_str())];
            assert_eq!(get(&red, 0, &labels).map(|v| v.0), Some(2), "{route}");
        }
        assert!(get(&red, 0, &[("service_name", "svc"), ("http_route", "/r3")]).is_none());
        let over = get(&red, 0, &[("otel_metric_overflow", "true")]).expect("overflow");
        assert_eq!(over.0, 14);
        assert_eq!(counters.metrics_series_overflow.load(Ordering::Relaxed), 14);
    }

    #[test]
    fn integers_format_like_display() {
        for v in [0, 7, 200, 503, -1, i64::MAX, i64::MIN + 1] {
            assert_eq!(IntText::new(v).as_str(), v.to_string());
        }
    }
}
