//! Request contexts that follow goroutines (Go >= 1.18, amd64), for
//! parent links in Go programs, whose requests are not tied to threads.
//!
//! - `net/http.serverHandler.ServeHTTP(sh, rw, req)` (entry; RAX = sh,
//!   RBX:RCX = rw, RDI = req): net/http starts serving the HTTP/1 request
//!   it just read. The goroutine gets a new context id (in `GO_CTX`), and
//!   the agent learns which connection's request that id names.
//! - `runtime.newproc1(fn, callergp, callerpc, ...) *g` (entry saves
//!   `callergp` = RBX; each RET has the new `g` in RAX): a goroutine is
//!   created; it inherits its creator's context, or loses the one its
//!   reused `g` carried.
//! - `net/http.(*persistConn).roundTrip(pc, req)` (entry; RAX = pc): the
//!   caller's goroutine hands an HTTP/1 request to the connection `pc`,
//!   whose writer goroutine writes it next. The agent learns that the
//!   next request on that socket is made for the caller's context (or for
//!   none: then any earlier claim on the socket is void).
//!
//! Connections are followed to their fd only through known itabs (see
//! `goabi::net_conn_fd`), so an unexpected type is never misread.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use tracer_common::{GoTaskEvent, GoTlsLayout, EVENT_GO_TASK, GO_TASK_CLIENT, GO_TASK_SERVE};

use super::{
    goabi::{net_conn_fd, read_u64, regs, Regs},
    syscalls::traced,
};
use crate::{
    emit::emit_go_task,
    maps::{config, GoKey, GO_CTX, GO_NEWPROC, GO_TLS},
};

/// The process's layout, when it has goroutine links on.
#[inline(always)]
fn layout(tgid: u32) -> Option<GoTlsLayout> {
    if !traced(tgid, &config()) {
        return None;
    }
    // SAFETY: plain value copy.
    let l = (unsafe { GO_TLS.get(tgid) }).copied()?;
    (l.response_header != 0).then_some(l)
}

#[inline(always)]
fn key(tgid: u32, g: u64) -> GoKey {
    GoKey { tgid, _pad: 0, g }
}

/// The socket of the request `ServeHTTP` serves. Only net/http's own
/// HTTP/1 `*response` is followed (HTTP/2 and wrapped writers are not):
/// its itab's first method is `(*response).Header`.
#[inline(always)]
fn serve_fd(r: &Regs, l: &GoTlsLayout) -> Option<u32> {
    if r.rbx == 0 || r.rcx == 0 {
        return None;
    }
    if read_u64(r.rbx.checked_add(u64::from(l.itab_fun0))?)? != l.response_header {
        return None;
    }
    let conn = read_u64(r.rcx.checked_add(u64::from(l.response_conn))?)?;
    net_conn_fd(conn.checked_add(u64::from(l.conn_rwc))?, l)
}

/// Entry of `net/http.serverHandler.ServeHTTP`.
#[uprobe]
pub fn tracer_go_serve(ctx: ProbeContext) -> u32 {
    let _ = on_serve(&ctx);
    0
}

#[inline(always)]
fn on_serve(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let l = layout(tgid)?;
    let r = regs(ctx);
    if r.r14 == 0 {
        return None;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let fd = serve_fd(&r, &l);
    let k = key(tgid, r.r14);
    let Some(fd) = fd else {
        // Serving something not followed: whatever this goroutine carried
        // is not the cause of what it does now.
        let _ = GO_CTX.remove(k);
        return None;
    };
    // Unique within the process: one goroutine starts one request at a
    // time, and the clock moves between two on one CPU.
    let ctx_id = now;
    let _ = GO_CTX.insert(k, ctx_id, 0);
    emit_go_task(&GoTaskEvent {
        kind: EVENT_GO_TASK,
        role: GO_TASK_SERVE,
        _pad: [0; 2],
        tgid,
        fd,
        _pad2: 0,
        ctx_id,
        ts: now,
    });
    Some(())
}

/// Entry of `runtime.newproc1`.
#[uprobe]
pub fn tracer_go_newproc(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if layout((pid_tgid >> 32) as u32).is_some() {
        let _ = GO_NEWPROC.insert(pid_tgid, regs(&ctx).rbx, 0);
    }
    0
}

/// Each RET of `runtime.newproc1`: RAX is the new goroutine.
#[uprobe]
pub fn tracer_go_newproc_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain value copy.
    let Some(parent) = (unsafe { GO_NEWPROC.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = GO_NEWPROC.remove(pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let child = key(tgid, regs(&ctx).rax);
    // SAFETY: plain value copy.
    match (unsafe { GO_CTX.get(key(tgid, parent)) }).copied() {
        Some(ctx_id) => {
            let _ = GO_CTX.insert(child, ctx_id, 0);
        }
        None => {
            // A reused `g` must not keep the context of its last life.
            let _ = GO_CTX.remove(child);
        }
    }
    0
}

/// Entry of `net/http.(*persistConn).roundTrip`.
#[uprobe]
pub fn tracer_go_client(ctx: ProbeContext) -> u32 {
    let _ = on_client(&ctx);
    0
}

#[inline(always)]
fn on_client(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let l = layout(tgid)?;
    let r = regs(ctx);
    if r.rax == 0 {
        return None;
    }
    let fd = net_conn_fd(r.rax.checked_add(u64::from(l.pconn_conn))?, &l)?;
    // 0: no context. Sent too, so that an earlier claim on the socket
    // (its request never written) cannot attach to this request.
    // SAFETY: plain value copy.
    let ctx_id = (unsafe { GO_CTX.get(key(tgid, r.r14)) })
        .copied()
        .unwrap_or(0);
    emit_go_task(&GoTaskEvent {
        kind: EVENT_GO_TASK,
        role: GO_TASK_CLIENT,
        _pad: [0; 2],
        tgid,
        fd,
        _pad2: 0,
        ctx_id,
        // SAFETY: no preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
    });
    Some(())
}
