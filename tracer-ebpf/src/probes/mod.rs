pub mod capture;
pub mod lifecycle;
pub mod syscalls;

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
