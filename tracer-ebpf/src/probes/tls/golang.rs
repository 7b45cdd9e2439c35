//! TLS plaintext from Go's `crypto/tls` (Go >= 1.17, amd64 register ABI:
//! arguments in RAX, RBX, RCX, ..., results in RAX, RBX, ..., the current
//! goroutine's `g` in R14). The agent places the probes by file offset,
//! from `.gopclntab` (Go binaries are usually stripped).
//!
//! - `func (c *Conn) Write(b []byte) (int, error)`: the plaintext is in
//!   `b` at entry (RAX = c, RBX = b.ptr, RCX = b.len), so one entry probe
//!   captures it.
//! - `func (c *Conn) Read(b []byte) (int, error)`: the entry probe saves
//!   `b.ptr` and the socket, keyed by goroutine (a Read that parks in the
//!   netpoller resumes on whatever thread the scheduler picks); a uprobe
//!   on each of its RET instructions (uretprobes crash Go: the runtime
//!   copies stacks and trips over the foreign return address) captures
//!   `n` = RAX bytes.
//!
//! The socket comes from the `*tls.Conn` itself (see
//! `tracer_common::GoTlsLayout`), read at entry: the ciphertext syscalls
//! the call makes are then skipped by the connection's TLS state, as for
//! OpenSSL.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext as _,
};
use tracer_common::{
    SRC_SSL_READ, SRC_SSL_WRITE, STAT_GO_TLS_NO_CONN, STAT_GO_TLS_NO_LAYOUT, STAT_GO_TLS_READ_LOST,
};

use super::emit_plaintext;
use crate::{
    maps::{bump, config, traced, GoKey, GoRead, PendingCall, GO_TLS, GO_TLS_READS},
    probes::goabi::{regs, tls_conn_fd},
};

/// `GoRead::fd` of a Read whose socket could not be followed.
const NO_SOCKET: u32 = u32::MAX;

/// The context the shared data path is instantiated with (the OpenSSL
/// return probe's): a second instantiation for `ProbeContext` would emit
/// out-of-line copies of its helpers whose BTF kernels before 6.18 reject
/// (and, with it, the object's BTF that `bpf_loop` callbacks need).
#[inline(always)]
fn shared_ctx(ctx: &ProbeContext) -> RetProbeContext {
    RetProbeContext::new(ctx.as_ptr())
}

/// The traced process's layout and the call's socket, or `None` (counted).
#[inline(always)]
fn socket(tgid: u32, c: u64) -> Option<u32> {
    // SAFETY: plain value copy.
    let Some(layout) = (unsafe { GO_TLS.get(tgid) }).copied() else {
        bump(STAT_GO_TLS_NO_LAYOUT);
        return None;
    };
    let fd = tls_conn_fd(c, &layout);
    if fd.is_none() {
        bump(STAT_GO_TLS_NO_CONN);
    }
    fd
}

/// Entry of `crypto/tls.(*Conn).Write`.
#[uprobe]
pub fn tracer_go_tls_write(ctx: ProbeContext) -> u32 {
    let _ = on_write(&ctx);
    0
}

#[inline(always)]
fn on_write(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !traced(tgid, &config()) {
        return None;
    }
    let r = regs(ctx);
    if r.rcx == 0 || r.rcx > i64::MAX as u64 {
        return None;
    }
    let fd = socket(tgid, r.rax)?;
    emit_plaintext(
        &shared_ctx(ctx),
        pid_tgid,
        PendingCall {
            pid_tgid,
            // SAFETY: no preconditions.
            ts: unsafe { bpf_ktime_get_ns() },
            ptr: r.rbx,
            len: r.rcx,
            fd,
            nr: 0,
            kind: SRC_SSL_WRITE,
            armed: 0,
            _pad: [0; 6],
        },
        r.rcx,
    )
}

/// Entry of `crypto/tls.(*Conn).Read`.
#[uprobe]
pub fn tracer_go_tls_read(ctx: ProbeContext) -> u32 {
    let _ = on_read(&ctx);
    0
}

#[inline(always)]
fn on_read(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !traced(tgid, &config()) {
        return None;
    }
    let r = regs(ctx);
    if r.r14 == 0 || r.rcx == 0 {
        return None;
    }
    // Saved even without a socket (`NO_SOCKET`), so that its returns are
    // not counted as lost.
    let fd = socket(tgid, r.rax).unwrap_or(NO_SOCKET);
    let key = GoKey {
        tgid,
        _pad: 0,
        g: r.r14,
    };
    let call = GoRead {
        buf: r.rbx,
        len: r.rcx,
        // SAFETY: no preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
        fd,
        _pad: 0,
    };
    GO_TLS_READS.insert(key, call, 0).ok()
}

/// Each RET of `crypto/tls.(*Conn).Read`: RAX is the byte count.
#[uprobe]
pub fn tracer_go_tls_read_ret(ctx: ProbeContext) -> u32 {
    let _ = on_read_ret(&ctx);
    0
}

#[inline(always)]
fn on_read_ret(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let r = regs(ctx);
    let key = GoKey {
        tgid,
        _pad: 0,
        g: r.r14,
    };
    // SAFETY: plain value copy.
    let Some(call) = (unsafe { GO_TLS_READS.get(key) }).copied() else {
        // A process not traced (or not described) saved nothing: only a
        // described one counts as lost.
        // SAFETY: presence check only.
        if traced(tgid, &config()) && unsafe { GO_TLS.get(tgid) }.is_some() {
            bump(STAT_GO_TLS_READ_LOST);
        }
        return None;
    };
    let _ = GO_TLS_READS.remove(key);
    let n = r.rax as i64;
    if n as u64 > call.len && n > 0 {
        // Not what Read returns: not believed (and never read past b).
        bump(STAT_GO_TLS_READ_LOST);
        return None;
    }
    if n <= 0 || call.fd == NO_SOCKET {
        return None;
    }
    emit_plaintext(
        &shared_ctx(ctx),
        pid_tgid,
        PendingCall {
            pid_tgid,
            ts: call.ts,
            ptr: call.buf,
            len: n as u64,
            fd: call.fd,
            nr: 0,
            kind: SRC_SSL_READ,
            armed: 0,
            _pad: [0; 6],
        },
        n as u64,
    )
}
