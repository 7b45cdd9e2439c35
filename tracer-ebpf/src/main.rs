//! Kernel side of the tracer.
//!
//! Everything here runs on stable tracepoints only (`syscalls:*`, `sched:*`),
//! so it loads on kernels built without kprobes or fentry. Program families:
//! - [`probes::syscalls`]: `sys_enter_*` hooks that save syscall arguments;
//! - [`probes::capture`]: the shared `sys_exit_*` hook that tracks sockets,
//!   classifies their protocol and copies payload into the ring buffer;
//! - [`probes::lifecycle`]: `close` and process exit.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod head;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod propagation;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path
    // (it would be an unbounded loop), so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Host builds (clippy of the whole workspace) get an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
