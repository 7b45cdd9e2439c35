//! Every map the kernel programs use. Names and default sizes live in
//! `tracer-common` so the agent can find and resize them at load time.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Config, ConnState, DataScratch, DEFAULT_MAX_CONNS, DEFAULT_MAX_INFLIGHT, DEFAULT_RING_BYTES,
    DEFAULT_SCRATCH_SLOTS, MAX_PID_FILTER, STAT_COUNT,
};

/// Arguments of a traced syscall, saved at entry and consumed at exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// Owner of the slot; 0 when free. Written last at entry, checked
    /// before and after the copy at exit, so a thread sharing the slot can
    /// never hand its arguments to another.
    pub pid_tgid: u64,
    /// Kernel monotonic ns at syscall entry.
    pub ts: u64,
    /// Buffer, iovec array, msghdr or sockaddr pointer (by `kind`).
    pub ptr: u64,
    /// Buffer length or iovec count.
    pub len: u64,
    pub fd: u32,
    /// `__syscall_nr` at entry: the exit must match it, so a stale entry (a
    /// missed exit) can never be paired with another syscall's return value.
    pub nr: u32,
    pub kind: u8,
    pub _pad: [u8; 7],
}

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Indexed by `tid & Config::inflight_mask`. Array lookups are inlined by
/// the verifier, so saving arguments is a few stores.
#[map]
pub static INFLIGHT: Array<PendingCall> = Array::with_max_entries(DEFAULT_MAX_INFLIGHT, 0);

/// The in-flight slot of a thread.
#[inline(always)]
pub fn inflight_slot(pid_tgid: u64, cfg: &Config) -> Option<*mut PendingCall> {
    INFLIGHT.get_ptr_mut((pid_tgid as u32) & cfg.inflight_mask)
}

/// Takes this thread's saved arguments out of its slot.
#[inline(always)]
pub fn take_inflight(pid_tgid: u64, cfg: &Config) -> Option<PendingCall> {
    let slot = inflight_slot(pid_tgid, cfg)?;
    // SAFETY: valid map value pointer; volatile so the owner check really
    // brackets the copy.
    unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) != pid_tgid {
            return None;
        }
        let call = core::ptr::read_volatile(slot);
        core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        if call.pid_tgid != pid_tgid {
            return None;
        }
        Some(call)
    }
}

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// One scratch slot per CPU, indexed by `bpf_get_smp_processor_id()`. A
/// plain array rather than a per-CPU one because per-CPU values are capped
/// at 32 KiB, less than a header plus two capture caps. Safe because
/// tracepoint programs run with migration disabled. The agent sizes it to
/// the number of possible CPUs at load time.
#[map]
pub static SCRATCH: Array<DataScratch> = Array::with_max_entries(DEFAULT_SCRATCH_SLOTS, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PID_FILTER, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn bump(stat: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU value, and programs do not migrate while running.
        unsafe { *counter += 1 };
    }
}

/// The agent's configuration, or the defaults if it has not been written yet.
#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}
