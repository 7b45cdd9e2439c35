//! Runtime configuration the agent writes into the `CONFIG` array map, and
//! the names and default sizes of every map the kernel programs declare.

/// Single-entry array map holding a [`Config`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-connection state, keyed by [`crate::conn_key`]. LRU so that leaked
/// entries (a process killed mid-connection) age out instead of filling it.
pub const MAP_CONNS: &str = "CONNS";
/// Syscall arguments saved at `sys_enter_*`, consumed at `sys_exit_*`: an
/// array indexed by `tid & inflight_mask` (one store per syscall instead
/// of a hash update, which cost more than the rest of the probe).
pub const MAP_INFLIGHT: &str = "INFLIGHT";
/// Event ring buffer (kernel -> agent).
pub const MAP_EVENTS: &str = "EVENTS";
/// Scratch space for building data events, one slot per CPU (the BPF stack
/// is 512 B).
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Per-CPU counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";
/// Set of tgids to trace when `--pid` is given.
pub const MAP_PID_FILTER: &str = "PID_FILTER";
/// TLS library calls in progress, indexed like [`MAP_INFLIGHT`].
pub const MAP_TLS_CALLS: &str = "TLS_CALLS";
/// Each thread's last read outside TLS calls, indexed like [`MAP_INFLIGHT`].
pub const MAP_LAST_READ: &str = "LAST_READ";
/// Socket fd of each `SSL*` seen, keyed by (tgid, `SSL*`).
pub const MAP_SSL_FDS: &str = "SSL_FDS";
/// Size of [`MAP_SSL_FDS`].
pub const MAX_SSL_FDS: u32 = 65_536;

/// Default size of [`MAP_CONNS`]; the agent can change it at load time.
pub const DEFAULT_MAX_CONNS: u32 = 65_536;
/// Compiled-in size of [`MAP_INFLIGHT`]; the agent sizes it to the next
/// power of two of `kernel.pid_max` (capped by [`MAX_INFLIGHT_SLOTS`]) so
/// that, below the cap, no two threads share a slot.
pub const DEFAULT_MAX_INFLIGHT: u32 = 32_768;
/// Upper bound of [`MAP_INFLIGHT`] (48 B a slot: 12 MiB).
pub const MAX_INFLIGHT_SLOTS: u32 = 1 << 18;
/// Default ring buffer size in bytes (power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// Compiled-in size of [`MAP_SCRATCH`]; the agent resizes it to the number
/// of possible CPUs.
pub const DEFAULT_SCRATCH_SLOTS: u32 = 256;
/// Size of [`MAP_PID_FILTER`].
pub const MAX_PID_FILTER: u32 = 1024;

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
    /// bits (1 tracecontext, 2 b3, 3 jaeger, 0 end).
    pub propagators: u32,
    /// Non-zero when the TLS probes are loaded (`--tls on`): only then
    /// does the syscall exit hook look for TLS calls in progress.
    pub tls: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Config` is `repr(C)`, has no padding and only integer fields.
    unsafe impl aya::Pod for super::Config {}
}
