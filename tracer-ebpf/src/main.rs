//! Kernel side of the tracer.
//!
//! The capture path runs on stable tracepoints only (`syscalls:*`,
//! `sched:*`), so it loads on kernels built without kprobes or fentry; the
//! TLS probes (`--tls`) and the context injector (`--inject-context`) are
//! optional and loaded only when enabled. Program families:
//! - [`probes::syscalls`]: `sys_enter_*` tracepoints that save syscall
//!   arguments;
//! - [`probes::capture`]: the shared `sys_exit_*` tracepoint that tracks
//!   sockets and hands payload to the data path ([`probes::data`]), which
//!   classifies the protocol and copies payload into the ring buffer;
//! - [`probes::context`]: the SERVER-context reader, tail-called by the
//!   capture path: a tracepoint program and its kprobe-type (`uretprobe`)
//!   twin for the TLS return probe;
//! - [`probes::tls`]: uprobes on OpenSSL's `SSL_read`/`SSL_write` (and
//!   `_ex`) and one uretprobe on all four, for TLS plaintext;
//! - [`probes::inject`]: cgroup `sock_ops` and `sk_msg` programs that
//!   insert `traceparent` into outgoing HTTP/1 requests;
//! - [`probes::lifecycle`]: `close`, process exit and exec tracepoints, and
//!   a uretprobe on `dlopen`.
//!
//! Shared by all of them: [`maps`] (every map), [`emit`] (everything written
//! to the ring buffer), [`classify`] and [`scan`] (reading HTTP heads).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod scan;

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
