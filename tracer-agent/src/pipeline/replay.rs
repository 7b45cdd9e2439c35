//! Replaying recorded ring records through the whole pipeline, with no
//! kernel and no host lookups: the same decode → session → protocol →
//! trace → span path as live tracing. Used by tests that pin the spans
//! real captures produce, and to reproduce a user's recording.

use std::sync::Arc;

use super::{filter::NoKernel, Pipeline, PipelineConfig};
use crate::{
    export::sink::{DropCounter, Sink},
    metadata::{process::ServiceNames, HostView},
    propagation::Propagator,
    sampling::{Sampler, TailConfig},
    spans::Span,
    telemetry::{Counters, Gauges},
};

/// What a replay produced.
pub struct Replayed {
    pub spans: Vec<Span>,
    pub counters: Arc<Counters>,
}

/// The default propagators, as the agent's `--propagators` default.
pub fn default_propagators() -> Vec<Propagator> {
    vec![Propagator::TraceContext, Propagator::B3, Propagator::Jaeger]
}

/// Feeds `records` (raw ring records, in order) through a pipeline and
/// returns every span, including those completed at the end (as at agent
/// shutdown).
pub fn replay<'a>(
    records: impl IntoIterator<Item = &'a [u8]>,
    propagators: Vec<Propagator>,
) -> Replayed {
    let counters = Arc::new(Counters::default());
    let (sink, mut rx, _queued) = Sink::channel(usize::MAX / 2, DropCounter::Output);
    let mut p = Pipeline::new(
        PipelineConfig {
            max_conns: 65_536,
            filters: Default::default(),
            service_names: ServiceNames::default(),
            propagators,
            host: HostView::Offline,
            inject_context: false,
            pods: None,
            host_name: None,
            red: None,
            // A replay shows every span the recording holds.
            sampler: Sampler::parse("always_on", None).unwrap_or_default(),
            tail: TailConfig::keep_all(),
        },
        Box::new(NoKernel::default()),
        counters.clone(),
        Arc::new(Gauges::default()),
        vec![sink],
    );
    for r in records {
        p.handle(r);
        p.flush();
    }
    p.drain();
    drop(p);
    let mut spans = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        spans.extend(batch.iter().cloned());
    }
    Replayed { spans, counters }
}
