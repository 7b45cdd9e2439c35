//! Applies the degradation level where it saves cost: the kernel's
//! sampling and connection shedding (`Config::cap_*`, `shed_bound`), and
//! the agent's head sampler, so both keep deciding alike.

use std::time::Instant;

use aya::Ebpf;
use tracer_common::{Config, STAT_RINGBUF_DROPS};

use super::{Controller, Level, Limits, Reading};
use crate::{
    bpf::loader,
    pipeline::Pipeline,
    sampling::Sampler,
    telemetry::{usage, Gauges, Registry},
};

pub struct Degrader {
    controller: Controller,
    sampler: Sampler,
    base: Config,
    last: Instant,
    cpu: f64,
    ring_drops: u64,
    exported: u64,
    failed: u64,
}

impl Degrader {
    pub fn new(limits: Limits, sampler: Sampler, base: Config, registry: &Registry) -> Self {
        let c = &registry.counters;
        Self {
            controller: Controller::new(limits),
            sampler,
            base,
            last: Instant::now(),
            cpu: usage::cpu_seconds().unwrap_or(0.0),
            ring_drops: registry.kernel_value(STAT_RINGBUF_DROPS),
            exported: c.otlp_exported.load(std::sync::atomic::Ordering::Relaxed),
            failed: c.otlp_failed.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The kernel configuration of `level`.
    pub fn kernel_config(&self, level: Level) -> Config {
        let sampler = Sampler {
            cap: level.head_cap(),
            ..self.sampler.clone()
        };
        let k = sampler.kernel_config();
        Config {
            sample_mode: k.sample_mode,
            sample_bound_hi: k.sample_bound_hi,
            sample_bound_lo: k.sample_bound_lo,
            cap_on: k.cap_on,
            cap_bound_hi: k.cap_bound_hi,
            cap_bound_lo: k.cap_bound_lo,
            shed_bound: level.shed_bound(),
            ..self.base
        }
    }

    /// One interval: reads the agent's cost, and moves a level when due.
    pub fn step(&mut self, registry: &Registry, pipeline: &mut Pipeline, ebpf: &mut Ebpf) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        // A reading over a sliver of time is noise (the interval's first,
        // immediate tick; a late wakeup after a stall reads long instead).
        if secs < 0.5 {
            return;
        }
        self.last = now;
        let cpu = usage::cpu_seconds().unwrap_or(self.cpu);
        let drops = registry.kernel_value(STAT_RINGBUF_DROPS);
        let c = &registry.counters;
        let (exported, failed) = (c.otlp_exported.load(Relaxed), c.otlp_failed.load(Relaxed));
        let reading = Reading {
            cpu: (cpu - self.cpu).max(0.0) / secs,
            rss: usage::rss_bytes().unwrap_or(0),
            ring_drops: drops.saturating_sub(self.ring_drops),
            exported: exported.saturating_sub(self.exported),
            failed: failed.saturating_sub(self.failed),
        };
        (self.cpu, self.ring_drops, self.exported, self.failed) = (cpu, drops, exported, failed);
        let Some(t) = self.controller.step(reading, now) else {
            return;
        };
        tracing::warn!(
            from = %t.from,
            to = %t.to,
            head_ratio_cap = t.to.head_cap(),
            connections_followed = t.to.follow(),
            "degradation {} -> {}: {}",
            t.from,
            t.to,
            t.cause
        );
        Gauges::set(&registry.gauges.degradation_level, u64::from(t.to.0));
        pipeline.set_sampling_cap(t.to.head_cap());
        if let Err(e) = loader::write_config(ebpf, self.kernel_config(t.to)) {
            tracing::warn!("degradation level not applied in the kernel: {e}");
        }
    }
}
