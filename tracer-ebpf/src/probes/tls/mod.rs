//! TLS plaintext from uprobes on TLS libraries, one file per library:
//! [`openssl`] (the OpenSSL API) and [`golang`] (Go's `crypto/tls`).
//!
//! What every library's probes share: the call in progress of each thread
//! (`TLS_CALLS`), whose socket is named by a read/write-family syscall the
//! same thread makes inside the call (`inside_tls_call`, from the
//! `sys_exit_*` hook; the socket's ciphertext is then never copied), or by
//! the thread's read just before the call (`note_read`) for libraries that
//! do their socket I/O outside it.
use aya_ebpf::{helpers::bpf_ktime_get_ns, EbpfContext};
use tracer_common::{conn_key, Config, PROTO_HTTP2, STAT_TLS_CALLS, TLS_SOCKET};

use crate::{
    emit::output_scratch,
    maps::{bump, config, PendingCall, TlsCall, CONNS, LAST_READ, TLS_CALLS, TLS_TAIL_PROGS},
    probes::{
        context::server_context,
        data::{fill_scratch, on_data},
        h2::walk_tail,
    },
};

pub mod golang;
pub mod openssl;

/// Plaintext of a TLS call whose socket is known, from any library: the
/// same connection tracking, classification, HTTP/2 walk, SERVER context
/// and data event as socket payload.
#[inline(always)]
fn emit_plaintext<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    pending: PendingCall,
    bytes: u64,
) -> Option<()> {
    bump(STAT_TLS_CALLS);
    let target = on_data(pid_tgid, &pending, bytes)?;
    if target.proto == PROTO_HTTP2 {
        // Returns only if the frame walker is not loaded.
        walk_tail(ctx, &TLS_TAIL_PROGS, pid_tgid, &pending, bytes, &target);
    }
    let scratch = fill_scratch(pid_tgid, &pending, bytes, &target)?;
    server_context(ctx, &TLS_TAIL_PROGS, pid_tgid, &target, scratch);
    output_scratch(scratch);
    Some(())
}

/// `TlsCall::fd` before a socket is seen inside the call.
const NO_FD: u32 = u32::MAX;

/// How recent a thread's last read (`LAST_READ`) must be to name the
/// socket of a TLS call (event loops feed the TLS library right after the
/// read, in the same callback).
const LAST_READ_MAX_AGE_NS: u64 = 5_000_000;

/// Called from the `sys_exit_*` hook for reads that moved bytes outside a
/// TLS call.
#[inline(always)]
pub fn note_read(pid_tgid: u64, fd: u32, cfg: &Config) {
    if let Some(r) = LAST_READ.get_ptr_mut((pid_tgid as u32) & cfg.inflight_mask) {
        // SAFETY: valid map value pointer; a racing thread sharing the slot
        // can only make the owner check below fail.
        unsafe {
            (*r).pid_tgid = pid_tgid;
            (*r).ts = bpf_ktime_get_ns();
            (*r).fd = fd;
        }
    }
}

/// The socket of an `SSL_read` that made no syscall: the thread's read
/// just before the call, if it is recent.
#[inline(always)]
fn recent_read_fd(pid_tgid: u64, call_ts: u64) -> Option<u32> {
    let r = LAST_READ.get_ptr((pid_tgid as u32) & config().inflight_mask)?;
    // SAFETY: valid map value pointer; fields copied out.
    let r = unsafe { *r };
    (r.pid_tgid == pid_tgid && r.ts <= call_ts && call_ts - r.ts < LAST_READ_MAX_AGE_NS)
        .then_some(r.fd)
}

/// This thread's `TLS_CALLS` slot.
#[inline(always)]
fn slot(pid_tgid: u64, cfg: &Config) -> Option<*mut TlsCall> {
    TLS_CALLS.get_ptr_mut((pid_tgid as u32) & cfg.inflight_mask)
}

/// Called from the `sys_exit_*` hook for every read/write-family syscall
/// that moved bytes: inside a TLS call of the same thread, the fd is that
/// call's socket and the bytes are ciphertext (not to be captured).
#[inline(always)]
pub fn inside_tls_call(pid_tgid: u64, fd: u32, cfg: &Config) -> bool {
    let Some(slot) = slot(pid_tgid, cfg) else {
        return false;
    };
    // SAFETY: valid map value pointer; racing writers only replace the fd.
    unsafe {
        if core::ptr::read_volatile(&(*slot).pid_tgid) != pid_tgid {
            return false;
        }
        if (*slot).fd == NO_FD {
            (*slot).fd = fd;
            // Later ciphertext outside TLS calls (e.g. written by an event
            // loop after the call) is skipped too.
            let key = conn_key((pid_tgid >> 32) as u32, fd);
            if let Some(st) = CONNS.get_ptr_mut(key) {
                if (*st).tls == 0 {
                    (*st).tls = TLS_SOCKET;
                }
            }
        }
    }
    true
}
