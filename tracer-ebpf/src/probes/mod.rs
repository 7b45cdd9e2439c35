//! The kernel programs, one file per family (see the crate docs), and the
//! data path they share ([`data`]).
pub mod capture;
pub mod context;
pub mod data;
pub mod fds;
pub mod goabi;
pub mod goroutines;
pub mod h2;
pub mod inject;
pub mod lifecycle;
pub mod syscalls;
pub mod tls;

/// Layout of the `syscalls:sys_enter_*` / `sys_exit_*` tracepoint records
/// (see `/sys/kernel/tracing/events/syscalls/*/format`): an 8-byte common
/// header, `int __syscall_nr` at 8, then each argument (or `long ret`) in an
/// 8-byte slot from offset 16.
pub const OFF_NR: usize = 8;
pub const OFF_ARG0: usize = 16;
pub const OFF_ARG1: usize = 24;
pub const OFF_ARG2: usize = 32;
pub const OFF_RET: usize = 16;

/// `PendingCall::kind` values that are not data syscalls (those reuse the
/// `SRC_*` constants of the data event).
pub const CALL_ACCEPT: u8 = 100;
pub const CALL_CONNECT: u8 = 101;

/// Reads an 8-byte slot of the tracepoint record directly. Tracepoint
/// programs may load from their context within the record (the verifier
/// checks the offset), which is much cheaper than `bpf_probe_read_kernel`.
#[inline(always)]
pub fn ctx_u64(ctx: &aya_ebpf::programs::TracePointContext, off: usize) -> u64 {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: `off` is one of the constant offsets above, inside every
    // syscall tracepoint record.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<u64>()) }
}

/// `__syscall_nr` of the record.
#[inline(always)]
pub fn ctx_nr(ctx: &aya_ebpf::programs::TracePointContext) -> u32 {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: constant offset inside every syscall tracepoint record.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(OFF_NR).cast::<u32>()) }
}
