//! The agent's self-observation: one registry of every counter and gauge
//! (agent and kernel), read by the periodic log line, the exit summary and,
//! later, a metrics endpoint.
pub mod counters;
pub mod health;
pub mod report;
pub mod usage;

use std::sync::Arc;

pub use counters::{Counters, Gauges, Group, Sample, SampleKind};
use tracer_common::{STAT_COUNT, STAT_HELP, STAT_NAMES};

/// Reads the kernel programs' counters (summed over CPUs).
pub trait KernelCounters: Send + Sync {
    fn read(&self) -> [u64; STAT_COUNT as usize];
}

/// Every value the agent reports, by name.
#[derive(Clone, Default)]
pub struct Registry {
    pub counters: Arc<Counters>,
    pub gauges: Arc<Gauges>,
    kernel: Option<Arc<dyn KernelCounters>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the kernel's counters to what the registry reports.
    pub fn with_kernel(mut self, kernel: Arc<dyn KernelCounters>) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Every counter and gauge now.
    pub fn snapshot(&self) -> Vec<Sample> {
        let mut out = Vec::with_capacity(64);
        self.counters.samples(&mut out);
        self.gauges.samples(&mut out);
        if let Some(k) = &self.kernel {
            let values = k.read();
            for (i, value) in values.into_iter().enumerate() {
                out.push(Sample {
                    group: Group::Kernel,
                    name: STAT_NAMES[i],
                    help: STAT_HELP[i],
                    kind: SampleKind::Counter,
                    value,
                });
            }
        }
        out
    }

    /// One kernel counter by index (`tracer_common::STAT_*`).
    pub fn kernel_value(&self, index: u32) -> u64 {
        self.kernel
            .as_ref()
            .and_then(|k| k.read().get(index as usize).copied())
            .unwrap_or(0)
    }
}
