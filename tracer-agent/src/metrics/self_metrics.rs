//! The agent's own health as `tracer_*` metrics, read from the counter
//! registry at each scrape: agent counters as `tracer_<name>_total`,
//! kernel counters as `tracer_kernel_<name>_total`, gauges as
//! `tracer_<name>`, plus the agent's CPU time and resident memory.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::telemetry::{usage, Group, Registry, SampleKind};

#[derive(Clone)]
pub struct SelfMetrics {
    pub registry: Registry,
}

impl std::fmt::Debug for SelfMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfMetrics")
    }
}

impl Collector for SelfMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut integrity = Vec::with_capacity(3);
        for s in self.registry.snapshot() {
            // One family with a `result` label, below.
            if let Some(result) = s.name.strip_prefix("trace_integrity_") {
                integrity.push((result, s.value));
                continue;
            }
            let name = match s.group {
                Group::Agent => format!("tracer_{}", s.name),
                Group::Kernel => format!("tracer_kernel_{}", s.name),
            };
            match s.kind {
                SampleKind::Counter => {
                    let c = ConstCounter::new(s.value);
                    c.encode(encoder.encode_descriptor(&name, s.help, None, c.metric_type())?)?;
                }
                SampleKind::Gauge => {
                    let g = ConstGauge::new(i64::try_from(s.value).unwrap_or(i64::MAX));
                    g.encode(encoder.encode_descriptor(&name, s.help, None, g.metric_type())?)?;
                }
            }
        }
        // The family's encoder borrows `encoder` until the block ends.
        {
            let mut family = encoder.encode_descriptor(
                "tracer_trace_integrity",
                "Local traces exported, by verdict: complete (200: whole), broken (409: \
                 a linked child without its exported parent, or two roots on one thread), \
                 inverted (422: a child outside its parent's time).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (result, value) in integrity {
                let c = ConstCounter::new(value);
                c.encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        if let Some(cpu) = usage::cpu_seconds() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "tracer_agent_cpu_seconds",
                "CPU time (user and system) the agent has used, in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Some(rss) = usage::rss_bytes() {
            let g = ConstGauge::new(i64::try_from(rss).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(
                "tracer_agent_resident_memory_bytes",
                "Resident memory of the agent, in bytes.",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
