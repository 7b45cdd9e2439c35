//! The event pipeline, one stage after another on one task:
//! ring record → [`decode`] → [`dispatch`] (filters) → connection session →
//! protocol → trace ids → span → sinks. Nothing here blocks on the output
//! (spans are offered to bounded sinks and counted when dropped), and
//! nothing here touches the kernel directly: writes back go through
//! [`filter::KernelControl`], so the whole pipeline runs in a unit test.
pub mod decode;
pub mod dispatch;
pub mod filter;
pub mod notices;
pub mod replay;

use std::{sync::Arc, time::Instant};

use self::{
    filter::{Filters, KernelControl},
    notices::{Notice, Notices},
};
use crate::{
    conn::table::ConnTable,
    export::sink::Sink,
    integrity::live::LiveIntegrity,
    metadata::conn::Role,
    metadata::{
        kubernetes::Pods,
        process::{ProcessCache, ServiceNames},
        resource::{host_name, Resources},
        HostView,
    },
    metrics::RedRecorder,
    propagation::{header_names, Propagator},
    protocols::Record,
    sampling::{LocalTraces, Sampler, TailConfig},
    spans::{clock::Clock, hex, LocalLink, Span, SpanBuilder},
    telemetry::{Counters, Gauges},
    trace::TraceIds,
};

/// How a pipeline is set up.
pub struct PipelineConfig {
    pub max_conns: usize,
    pub filters: Filters,
    pub service_names: ServiceNames,
    pub propagators: Vec<Propagator>,
    /// Whether /proc and borrowed fds may be consulted.
    pub host: HostView,
    /// Context injection is on: each exec'd program is classified for the
    /// kernel's thread-keyed links.
    pub inject_context: bool,
    /// This node's pods, when the agent runs on Kubernetes.
    pub pods: Option<Arc<Pods>>,
    /// `host.name` of every span; the host's name when `None`. In a pod
    /// the UTS name is the pod's, so the agent passes the node's.
    pub host_name: Option<String>,
    /// RED metrics of every span built (before sampling and the queues),
    /// when `--metrics-listen` is on.
    pub red: Option<RedRecorder>,
    /// The head sampler, applied where ids are chosen.
    pub sampler: Sampler,
    /// What happens to the spans of sampled-out traces.
    pub tail: TailConfig,
}

pub struct Pipeline {
    conns: ConnTable,
    trace: TraceIds,
    notices: Notices,
    procs: ProcessCache,
    resources: Resources,
    filters: Filters,
    host: HostView,
    inject_context: bool,
    kernel: Box<dyn KernelControl + Send>,
    builder: SpanBuilder,
    red: Option<RedRecorder>,
    tail: LocalTraces,
    /// The configured sampler keeps every trace (before degradation).
    keeps_all: bool,
    integrity: LiveIntegrity,
    clock: Clock,
    counters: Arc<Counters>,
    gauges: Arc<Gauges>,
    sinks: Vec<Sink>,
    /// Spans built since the last flush, sent to the sinks as one batch.
    batch: Vec<Span>,
    /// Reused buffer of records completed by the current event.
    done: Vec<Record>,
    warned_decode: bool,
    warned_queue: bool,
}

impl Pipeline {
    pub fn new(
        cfg: PipelineConfig,
        kernel: Box<dyn KernelControl + Send>,
        counters: Arc<Counters>,
        gauges: Arc<Gauges>,
        sinks: Vec<Sink>,
    ) -> Self {
        let trace_names: Arc<[String]> = Arc::from(header_names(&cfg.propagators));
        Self {
            conns: ConnTable::new(cfg.max_conns, trace_names),
            keeps_all: cfg.sampler.keeps_all(),
            trace: TraceIds::new(cfg.propagators, counters.clone()).with_sampler(cfg.sampler),
            tail: LocalTraces::new(cfg.tail, counters.clone()),
            integrity: LiveIntegrity::new(counters.clone()),
            notices: Notices::default(),
            procs: ProcessCache::new(cfg.service_names, cfg.host),
            // Offline (replay) spans name no host: the recording's is unknown.
            resources: Resources::new(
                match cfg.host {
                    HostView::Live => cfg.host_name.unwrap_or_else(host_name),
                    HostView::Offline => String::new(),
                },
                cfg.pods,
            ),
            filters: cfg.filters,
            host: cfg.host,
            inject_context: cfg.inject_context,
            kernel,
            builder: SpanBuilder,
            red: cfg.red,
            clock: Clock::new(),
            counters,
            gauges,
            sinks,
            batch: Vec::new(),
            done: Vec::new(),
            warned_decode: false,
            warned_queue: false,
        }
    }

    /// Takes the queued process notices.
    pub fn take_notices(&mut self, out: &mut Vec<Notice>) {
        self.notices.take(out);
    }

    /// Turns the completed records into spans for the next batch.
    fn emit_done(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let now = Instant::now();
        for mut r in std::mem::take(&mut self.done) {
            if let Some(stream) = r.stream {
                self.trace.settle_go_stream(&r.conn, stream, &mut r.ids);
            }
            // Read before the SERVER side forgets what the task served.
            let link = match r.conn.role {
                Role::Client => match self.trace.client_link(r.task, r.ids.parent_span_id) {
                    (true, _) => LocalLink::Parent,
                    (false, true) => LocalLink::Ambiguous,
                    (false, false) => LocalLink::None,
                },
                Role::Server => LocalLink::None,
            };
            self.trace.on_completed(r.conn.role, r.task, r.ids.span_id);
            let process = self.procs.get_or_read(r.conn.tgid, "", &self.counters);
            let n = self.batch.len();
            let full = self.sinks.iter().all(|s| s.room() <= n);
            if full && self.red.is_none() {
                // Nobody could take it: don't even build it.
                self.count_dropped();
                continue;
            }
            let resource = self.resources.get(&process);
            let mut span = self
                .builder
                .build(r, (process, resource), &self.clock, &self.counters);
            span.link = link;
            if tracing::enabled!(tracing::Level::TRACE) {
                tracing::trace!(
                    phase = "response",
                    trace_id = %hex(&span.ids.trace_id),
                    span_id = %hex(&span.ids.span_id),
                    kind = span.kind.as_str(),
                    name = %span.name,
                    duration_ns = span.duration_ns(),
                    "response seen, span built"
                );
            }
            // Metrics count every request, whatever becomes of its span.
            if let Some(red) = self.red.as_mut() {
                red.observe(&span);
            }
            if full {
                self.count_dropped();
                continue;
            }
            self.tail.offer(span, now, &mut self.batch);
        }
    }

    /// One span no sink had room for.
    fn count_dropped(&self) {
        for sink in &self.sinks {
            sink.dropped.count(&self.counters, 1);
        }
    }

    /// The degradation level's ceiling on every trace's head ratio (1: the
    /// configured sampling).
    pub fn set_sampling_cap(&mut self, cap: f64) {
        self.trace.set_sampling_cap(cap);
        self.tail.set_keep_all(self.keeps_all && cap >= 1.0);
    }

    /// Spans built and not yet handed to the sinks.
    pub fn pending_spans(&self) -> usize {
        self.batch.len()
    }

    /// Hands the spans built so far to every sink (one wakeup per batch).
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let now = Instant::now();
        for s in &self.batch {
            self.integrity.exported(s, now);
        }
        let batch = Arc::new(std::mem::take(&mut self.batch));
        for sink in &self.sinks {
            if sink.offer(&batch, &self.counters) > 0 && !self.warned_queue {
                self.warned_queue = true;
                tracing::warn!("span queue full: dropping spans (counted)");
            }
        }
    }

    /// Periodic upkeep: clock drift, gauges.
    pub fn tick(&mut self) {
        self.clock.resync();
        self.tail.expire(Instant::now(), &mut self.batch);
        self.integrity.expire(Instant::now());
        Gauges::set(&self.gauges.sampling_held, self.tail.held() as u64);
        Gauges::set(&self.gauges.conns, self.conns.len() as u64);
        Gauges::set(&self.gauges.processes, self.procs.len() as u64);
    }

    /// Agent shutdown: completes what can be completed.
    pub fn drain(&mut self) {
        self.conns.drain(&mut self.done, &self.counters);
        self.emit_done();
        self.tail.flush(&mut self.batch);
        self.flush();
        self.integrity.flush();
    }
}
