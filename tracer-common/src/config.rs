//! Runtime configuration the agent writes into the `CONFIG` array map, and
//! the wire codes of the trace-context formats both sides read.

/// Trace-context format codes in [`Config::propagators`] (four bits each).
/// The agent's `--propagators` order is packed with them; the kernel's
/// SERVER-context reader walks them in that order.
pub const PROPAGATOR_END: u32 = 0;
/// W3C `traceparent` / `tracestate`.
pub const PROPAGATOR_TRACECONTEXT: u32 = 1;
/// B3, single `b3` header or multi `X-B3-*` headers.
pub const PROPAGATOR_B3: u32 = 2;
/// Jaeger `uber-trace-id`.
pub const PROPAGATOR_JAEGER: u32 = 3;
/// Formats the kernel reads at most (the four-bit slots it walks).
pub const MAX_KERNEL_PROPAGATORS: usize = 4;

/// Packs propagator codes in order, first in the low bits; codes past
/// [`MAX_KERNEL_PROPAGATORS`] are dropped.
pub fn pack_propagators(codes: impl IntoIterator<Item = u32>) -> u32 {
    codes
        .into_iter()
        .take(MAX_KERNEL_PROPAGATORS)
        .enumerate()
        .fold(0, |acc, (i, code)| acc | ((code & 0xf) << (4 * i)))
}

/// Knobs the kernel programs read on every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bytes of payload copied per syscall, clamped to [`crate::MAX_CAPTURE`].
    pub max_capture: u32,
    /// The agent's own tgid: never traced, so exporting spans cannot feed back
    /// into more spans.
    pub self_tgid: u32,
    /// Non-zero: only tgids present in [`MAP_PID_FILTER`] are traced.
    pub filter_pids: u32,
    /// Size of [`MAP_INFLIGHT`] minus one (a power of two minus one).
    pub inflight_mask: u32,
    /// Non-zero: choose trace ids in the kernel and inject `traceparent`
    /// into outgoing HTTP/1 requests (`--inject-context on`).
    pub inject_context: u32,
    /// Trace-context formats the kernel reads for SERVER contexts, in the
    /// agent's `--propagators` order: four bits each, first in the low
    /// bits (`PROPAGATOR_*` codes, [`PROPAGATOR_END`] ends the list).
    pub propagators: u32,
    /// Non-zero when the TLS probes are loaded (`--tls on`): only then
    /// does the syscall exit hook look for TLS calls in progress.
    pub tls: u32,
    /// Offset of `child_pid` in the `sched:sched_process_fork` record, as
    /// its tracefs `format` gives it (it moved between kernel versions);
    /// 0: unknown, forks are not followed.
    pub fork_child_pid_offset: u32,
    /// How [`crate::MAP_CGROUP_FILTER`] is read: [`CGROUP_FILTER_OFF`],
    /// [`CGROUP_FILTER_ALLOW`] (only listed cgroups are traced) or
    /// [`CGROUP_FILTER_DENY`] (listed cgroups are not traced).
    pub filter_cgroups: u32,
    /// How the kernel decides the sampled flag of the ids it chooses
    /// (`SAMPLE_*`): the agent's head sampler, reduced to what the kernel
    /// can apply before a request leaves.
    pub sample_mode: u32,
    /// The TraceIdRatioBased bound (`ratio * 2^63`), high and low halves:
    /// a trace is sampled when its id's last 8 bytes, big-endian, shifted
    /// right by one, are below it.
    pub sample_bound_hi: u32,
    pub sample_bound_lo: u32,
    /// The degradation level's ceiling on every trace's ratio (same rule
    /// and halves as `sample_bound_*`); applied when non-zero in
    /// `cap_on`. Incoming sampled flags are capped too.
    pub cap_on: u32,
    pub cap_bound_hi: u32,
    pub cap_bound_lo: u32,
    /// Degradation: connections whose mixed id falls below this are not
    /// copied at all (0: every connection is followed), so a share of
    /// the traffic costs the kernel and the agent nothing.
    pub shed_bound: u32,
}

/// The kernel leaves the sampled flag as it finds it (new traces: 1).
pub const SAMPLE_OFF: u32 = 0;
/// New traces (no incoming context) take the ratio test; an incoming
/// sampled flag is followed (the parent-based samplers).
pub const SAMPLE_ROOTS: u32 = 1;
/// Every trace takes the ratio test, incoming flag or not.
pub const SAMPLE_ALL: u32 = 2;

/// No cgroup selection.
pub const CGROUP_FILTER_OFF: u32 = 0;
/// Only the cgroups listed are traced (`--namespace`, `--container-name`).
pub const CGROUP_FILTER_ALLOW: u32 = 1;
/// The cgroups listed are not traced (`--exclude-namespace` alone).
pub const CGROUP_FILTER_DENY: u32 = 2;

const _: () = assert!(core::mem::size_of::<Config>() == 64);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Config` is `repr(C)`, has no padding and only integer fields.
    unsafe impl aya::Pod for super::Config {}
}
