//! Indices of the per-CPU counters in [`crate::MAP_STATS`].

/// A data or control event could not be written: the ring buffer was full.
pub const STAT_RINGBUF_DROPS: u32 = 0;
/// A thread's saved syscall arguments were overwritten by another thread
/// sharing its in-flight slot (only when pid_max exceeds the slot count).
pub const STAT_INFLIGHT_COLLISIONS: u32 = 1;
/// A new connection could not be stored (map update failed).
pub const STAT_CONN_INSERT_FAILED: u32 = 2;
/// Unused slot (kept so indices stay stable; the agent counts events).
pub const STAT_RESERVED: u32 = 3;
/// Syscalls whose payload was longer than the capture cap.
pub const STAT_TRUNCATED: u32 = 4;
/// Connections classified as HTTP/1 or HTTP/2.
pub const STAT_CONNS_HTTP: u32 = 5;
/// Connections classified as something else and no longer copied.
pub const STAT_CONNS_IGNORED: u32 = 6;
/// Pre-existing connections picked up from their first bytes.
pub const STAT_CONNS_INFERRED: u32 = 7;
/// Reading the user buffer failed (page not present, bad pointer).
pub const STAT_READ_FAILED: u32 = 8;

/// Number of counters (size of the map).
pub const STAT_COUNT: u32 = 9;

/// Human names, indexed like the counters.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "ringbuf_drops",
    "inflight_collisions",
    "conn_insert_failed",
    "reserved",
    "truncated_syscalls",
    "conns_http",
    "conns_ignored",
    "conns_inferred",
    "user_read_failed",
];
