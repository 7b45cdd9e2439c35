//! The OTLP exporter task: a bounded queue between span assembly and
//! export, batches closed on size or time, one request per process (each
//! with its own Resource), retries with backoff by opentelemetry-otlp, and
//! a bounded flush at shutdown.
//!
//! Spans keep the ids and timestamps the agent gave them: they are mapped
//! onto `SpanData` directly, never re-created through a tracer API.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{
    tonic_types::transport::{Certificate, ClientTlsConfig, Identity},
    Compression, RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use thiserror::Error;
use tokio::sync::mpsc;

use super::{
    config::{OtlpConfig, Protocol},
    resource::resource_for,
};
use crate::{
    metadata::resource::Resource as SpanResource,
    spans::{hex, AttrValue, Span, SpanKind as OurKind, StatusCode},
    telemetry::Counters,
};

/// Distinct export failure messages remembered for log rate-limiting.
const MAX_REMEMBERED_ERRORS: usize = 64;
/// A failure already logged is logged again at most this often.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Resources cached (one per process); cleared when exceeded.
const MAX_RESOURCES: usize = 8192;

#[derive(Debug, Error)]
pub enum ExportSetupError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the OTLP exporter")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ExportSetupError> {
    std::fs::read(path).map_err(|source| ExportSetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn build_exporter(
    cfg: &OtlpConfig,
) -> Result<opentelemetry_otlp::SpanExporter, ExportSetupError> {
    // Retries with exponential backoff and jitter on retryable failures
    // (gRPC UNAVAILABLE/RESOURCE_EXHAUSTED..., HTTP 429/502/503/504),
    // honouring server throttling hints (Retry-After, RetryInfo). Bounded:
    // about 13 s of waiting at most before a batch counts as failed.
    let retry = RetryPolicy::recommended()
        .with_max_retries(5)
        .with_initial_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5));
    let compression = cfg.gzip.then_some(Compression::Gzip);
    let built = match cfg.protocol {
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(cfg.endpoint.clone())
                .with_timeout(cfg.timeout)
                .with_retry_policy(retry);
            if let Some(c) = compression {
                b = b.with_compression(c);
            }
            if !cfg.headers.is_empty() {
                let mut md = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    match (
                        k.to_ascii_lowercase().parse::<tonic_key::Key>(),
                        v.parse::<tonic_key::Value>(),
                    ) {
                        (Ok(k), Ok(v)) => {
                            md.insert(k, v);
                        }
                        _ => {
                            tracing::warn!("OTLP header {k:?} is not valid gRPC metadata; skipped")
                        }
                    }
                }
                b = b.with_metadata(md);
            }
            if cfg.endpoint.starts_with("https://") || cfg.ca_file.is_some() {
                let mut tls = ClientTlsConfig::new().with_enabled_roots();
                if let Some(ca) = &cfg.ca_file {
                    tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
                }
                if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                b = b.with_tls_config(tls);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(cfg.endpoint.clone())
                .with_timeout(cfg.timeout)
                .with_retry_policy(retry)
                .with_headers(cfg.headers.iter().cloned().collect());
            if let Some(c) = compression {
                b = b.with_compression(c);
            }
            b.build()
        }
    };
    built.map_err(ExportSetupError::Build)
}

/// gRPC metadata key/value types, through the exporter's own tonic.
mod tonic_key {
    pub type Key = tonic::metadata::MetadataKey<tonic::metadata::Ascii>;
    pub type Value = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;
}

fn attr_kv(key: &'static str, v: &AttrValue) -> KeyValue {
    match v {
        AttrValue::Int(i) => KeyValue::new(key, *i),
        other => KeyValue::new(key, other.as_str().unwrap_or_default().to_owned()),
    }
}

fn unix(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Maps a span onto the exporter's data model, ids and times unchanged.
pub fn to_span_data(s: &Span, scope: &InstrumentationScope) -> SpanData {
    let state = s
        .ids
        .tracestate
        .as_deref()
        .and_then(|t| t.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.ids.trace_id),
            SpanId::from_bytes(s.ids.span_id),
            TraceFlags::new(s.ids.flags),
            false,
            state,
        ),
        parent_span_id: s
            .ids
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        // A SERVER span's parent came over the wire; a CLIENT span's parent
        // (from the app's own traceparent) lives in the same process.
        parent_span_is_remote: s.ids.parent_span_id.is_some() && s.kind == OurKind::Server,
        span_kind: match s.kind {
            OurKind::Server => SpanKind::Server,
            OurKind::Client => SpanKind::Client,
        },
        name: s.name.clone().into(),
        start_time: unix(s.start_unix_ns),
        end_time: unix(s.end_unix_ns),
        attributes: s.attributes.iter().map(|(k, v)| attr_kv(k, v)).collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.status {
            StatusCode::Error => Status::error(""),
            StatusCode::Unset => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Logs each distinct failure once, then at most once a minute with a count.
#[derive(Default)]
struct ErrorLog {
    seen: HashMap<String, (Instant, u64)>,
}

impl ErrorLog {
    fn report(&mut self, msg: String) {
        let now = Instant::now();
        if self.seen.len() >= MAX_REMEMBERED_ERRORS && !self.seen.contains_key(&msg) {
            self.seen.clear();
        }
        match self.seen.get_mut(&msg) {
            None => {
                tracing::warn!("OTLP export failed: {msg}");
                self.seen.insert(msg, (now, 0));
            }
            Some((last, count)) => {
                *count += 1;
                if now.duration_since(*last) >= REPEAT_LOG_INTERVAL {
                    tracing::warn!("OTLP export failed {} more times: {msg}", *count);
                    *last = now;
                    *count = 0;
                } else {
                    tracing::debug!("OTLP export failed: {msg}");
                }
            }
        }
    }
}

pub struct Exporter {
    exporter: opentelemetry_otlp::SpanExporter,
    cfg: OtlpConfig,
    queued: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    scope: InstrumentationScope,
    /// Each process's converted Resource, with the composed one it was
    /// made from (rebuilt when the pod view gives the process a new one).
    resources: HashMap<u32, (Arc<SpanResource>, Resource)>,
    errors: ErrorLog,
}

impl Exporter {
    pub fn new(
        cfg: OtlpConfig,
        queued: Arc<AtomicUsize>,
        counters: Arc<Counters>,
    ) -> Result<Self, ExportSetupError> {
        Ok(Self {
            exporter: build_exporter(&cfg)?,
            cfg,
            queued,
            counters,
            scope: InstrumentationScope::builder("tracer")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            resources: HashMap::new(),
            errors: ErrorLog::default(),
        })
    }

    /// Exports `spans`, one request per process and resource.
    async fn export(&mut self, spans: Vec<Span>) {
        let n = spans.len();
        // Keyed by the composed resource too: a pod update in the middle of
        // a batch gives the same process a new one.
        let mut by_process: BTreeMap<(u32, usize), Vec<Span>> = BTreeMap::new();
        for s in spans {
            let key = (s.process.pid, Arc::as_ptr(&s.resource) as usize);
            by_process.entry(key).or_default().push(s);
        }
        for ((pid, _), group) in by_process {
            if self.resources.len() >= MAX_RESOURCES && !self.resources.contains_key(&pid) {
                self.resources.clear();
            }
            let composed = &group[0].resource;
            let entry = self
                .resources
                .entry(pid)
                .or_insert_with(|| (composed.clone(), resource_for(composed)));
            if !Arc::ptr_eq(&entry.0, composed) {
                *entry = (composed.clone(), resource_for(composed));
            }
            self.exporter.set_resource(&entry.1);
            let count = group.len() as u64;
            let data: Vec<SpanData> = group.iter().map(|s| to_span_data(s, &self.scope)).collect();
            let result = self.exporter.export(data).await;
            if tracing::enabled!(tracing::Level::TRACE) {
                let phase = if result.is_ok() { "exported" } else { "failed" };
                for s in group.iter() {
                    tracing::trace!(
                        phase,
                        sink = "otlp",
                        trace_id = %hex(&s.ids.trace_id),
                        span_id = %hex(&s.ids.span_id),
                        "span export"
                    );
                }
            }
            match result {
                Ok(()) => {
                    Counters::add(&self.counters.otlp_exported, count);
                }
                Err(e) => {
                    Counters::add(&self.counters.otlp_failed, count);
                    self.errors.report(e.to_string());
                }
            }
        }
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Forgets a process's Resource (it exited).
    fn drop_resources_of_gone(&mut self) {
        self.resources
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// Runs until the channel closes, then flushes within `shutdown_timeout`.
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Arc<Vec<Span>>>,
        shutdown_timeout: Duration,
    ) {
        let mut pending: Vec<Span> = Vec::new();
        let mut deadline = tokio::time::Instant::now() + self.cfg.batch_timeout;
        let mut last_cleanup = Instant::now();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(batch) => {
                        pending.extend(batch.iter().cloned());
                        while pending.len() >= self.cfg.batch_size {
                            let rest = pending.split_off(self.cfg.batch_size);
                            let full = std::mem::replace(&mut pending, rest);
                            self.export(full).await;
                            deadline = tokio::time::Instant::now() + self.cfg.batch_timeout;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if !pending.is_empty() {
                        let batch = std::mem::take(&mut pending);
                        self.export(batch).await;
                    }
                    deadline = tokio::time::Instant::now() + self.cfg.batch_timeout;
                    if last_cleanup.elapsed() > Duration::from_secs(60) {
                        self.drop_resources_of_gone();
                        last_cleanup = Instant::now();
                    }
                }
            }
        }
        // Shutdown: what is queued goes out, within a bound.
        let flush = async {
            while let Ok(batch) = rx.try_recv() {
                pending.extend(batch.iter().cloned());
            }
            while !pending.is_empty() {
                let rest = pending.split_off(pending.len().min(self.cfg.batch_size));
                let batch = std::mem::replace(&mut pending, rest);
                self.export(batch).await;
            }
        };
        if tokio::time::timeout(shutdown_timeout, flush).await.is_err() {
            tracing::warn!(
                "OTLP flush did not finish within {shutdown_timeout:?}; remaining spans dropped"
            );
        }
        let _ = self.exporter.shutdown_with_timeout(Duration::from_secs(1));
    }
}

/// Spans held by the exporter, for the periodic self-metrics line.
pub fn queue_depth(queued: &AtomicUsize) -> usize {
    queued.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metadata::{process::Process, resource::Resource as SpanResource},
        trace::ids::SpanIds,
    };

    #[test]
    fn span_data_keeps_ids_times_and_parent() {
        let span = Span {
            ids: SpanIds {
                trace_id: [7; 16],
                span_id: [8; 8],
                parent_span_id: Some([9; 8]),
                flags: 1,
                tracestate: Some("k=v".into()),
            },
            kind: OurKind::Server,
            name: "GET /x".into(),
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_500_000,
            status: StatusCode::Error,
            attributes: vec![("http.response.status_code", AttrValue::Int(500))],
            process: Arc::new(Process::read(u32::MAX - 1, "svc")),
            resource: Arc::new(SpanResource::of(
                &Process::read(u32::MAX - 1, "svc"),
                "h",
                None,
            )),
            tid: 1,
            link: crate::spans::LocalLink::None,
        };
        let scope = InstrumentationScope::builder("tracer").build();
        let d = to_span_data(&span, &scope);
        assert_eq!(d.span_context.trace_id(), TraceId::from_bytes([7; 16]));
        assert_eq!(d.span_context.span_id(), SpanId::from_bytes([8; 8]));
        assert_eq!(d.parent_span_id, SpanId::from_bytes([9; 8]));
        assert!(d.parent_span_is_remote);
        assert!(d.span_context.is_sampled());
        assert_eq!(d.span_context.trace_state().header(), "k=v");
        assert_eq!(d.span_kind, SpanKind::Server);
        assert_eq!(
            d.end_time.duration_since(d.start_time).expect("ordered"),
            Duration::from_micros(500)
        );
        assert_eq!(
            d.attributes[0],
            KeyValue::new("http.response.status_code", 500i64)
        );
        assert!(matches!(d.status, Status::Error { .. }));
    }
}
