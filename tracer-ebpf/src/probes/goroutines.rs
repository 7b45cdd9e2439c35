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
//! - grpc-go's `(*Server).handleStream(s, t, stream, trInfo)` (entry; RBX:RCX
//!   = t, a `transport.ServerTransport`; RDI = stream): grpc-go starts
//!   serving HTTP/2 stream `stream.id` of t's connection, on a goroutine of
//!   its own. Only an `*http2Server` transport is followed (by its itab).
//! - grpc-go's `transport.(*http2Client).NewStream` (each RET; RAX = the
//!   new `*Stream`, nil on error): the caller's goroutine has been given
//!   stream `id` on `Stream.ct`'s connection (the id is assigned in the
//!   caller's goroutine before NewStream returns; grpc's loopy writer
//!   goroutine writes the HEADERS, maybe before this RET is reached, so
//!   the agent settles the link when the stream ends, not when it starts).
//! - `net/http.(*persistConn).roundTrip(pc, req)` (entry; RAX = pc): the
//!   caller's goroutine hands an HTTP/1 request to the connection `pc`,
//!   whose writer goroutine writes it next. The agent learns that the
//!   next request on that socket is made for the caller's context (or for
//!   none: then any earlier claim on the socket is void).
//!
//! Connections are followed to their fd only through known itabs (see
//! `goabi::net_conn_fd`), so an unexpected type is never misread.
//!
//! An entry probe fires twice when the function's prologue grows the
//! goroutine's stack (`runtime.morestack` re-enters it): a serving site
//! seen again for the same connection state and stream is the same
//! request (`GO_SERVED`), not a new one.
//!
//! With context injection on, the same chain carries the kernel's SERVER
//! context to the bytes the injector rewrites:
//! 1. the SERVER context chosen when a request is read is kept for its
//!    connection ([`keep_server_ctx`], `GO_SERVER_CTX`);
//! 2. `ServeHTTP` gives it to the goroutine's context id (`GO_TRACE`);
//! 3. `roundTrip` arms the client socket with the caller's (`GO_PENDING`);
//! 4. the entry of the write syscall on that socket puts it in the
//!    thread's slot of `THREAD_CTX` for the length of that syscall, where
//!    the `sk_msg` injector (which runs inside it) reads it
//!    ([`arm_injection`]); the exit takes it out again.
//!
//! A syscall cannot change goroutines, so the thread is the goroutine for
//! that long; every write-family entry of a Go thread clears or re-arms
//! the slot, so nothing armed outlives its syscall.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "contexts go map to map by reference: a copy would put ~300 bytes on the 512-byte stack"
)]
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use tracer_common::{
    conn_key, GoTaskEvent, GoTlsLayout, ThreadCtx, EVENT_GO_TASK, GO_TASK_CLIENT, GO_TASK_SERVE,
    STAT_GO_INJECT_ARMED, STAT_GO_SERVER_CTX_MISSING,
};

use super::goabi::{net_conn_fd, read_u32, read_u64, regs, Regs};
use crate::{
    emit::emit_go_task,
    maps::{
        bump, config, thread_link_off, traced, GoKey, GoServed, CONNS, GO_CTX, GO_NEWPROC,
        GO_PENDING, GO_SERVED, GO_SERVER_CTX, GO_TLS, GO_TRACE, THREAD_CTX,
    },
};

/// The process's layout, when it has goroutine links on.
#[inline(always)]
fn layout(tgid: u32) -> Option<GoTlsLayout> {
    if !traced(tgid, &config()) {
        return None;
    }
    // SAFETY: plain value copy.
    let l = (unsafe { GO_TLS.get(tgid) }).copied()?;
    (l.links != 0).then_some(l)
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
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let l = layout(tgid)?;
    let r = regs(ctx);
    if r.r14 == 0 {
        return None;
    }
    match serve_fd(&r, &l) {
        Some(fd) => start_serving(tgid, r.r14, fd, 0),
        None => {
            // Serving something not followed: whatever this goroutine
            // carried is not the cause of what it does now.
            let _ = GO_CTX.remove(key(tgid, r.r14));
        }
    }
    Some(())
}

/// Entry of grpc-go's `(*Server).handleStream`.
#[uprobe]
pub fn tracer_go_grpc_serve(ctx: ProbeContext) -> u32 {
    let _ = on_grpc_serve(&ctx);
    0
}

#[inline(always)]
fn on_grpc_serve(ctx: &ProbeContext) -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let l = layout(tgid)?;
    let r = regs(ctx);
    if r.r14 == 0 || l.grpc_server_close == 0 {
        return None;
    }
    match grpc_serve_target(&r, &l) {
        Some((fd, stream)) => start_serving(tgid, r.r14, fd, stream),
        None => {
            let _ = GO_CTX.remove(key(tgid, r.r14));
        }
    }
    Some(())
}

/// The socket and stream id `handleStream` serves, when its transport is
/// grpc-go's own `*http2Server` over a followed `net.Conn`.
#[inline(always)]
fn grpc_serve_target(r: &Regs, l: &GoTlsLayout) -> Option<(u32, u32)> {
    if r.rbx == 0 || r.rcx == 0 || r.rdi == 0 {
        return None;
    }
    if read_u64(r.rbx.checked_add(u64::from(l.itab_fun0))?)? != l.grpc_server_close {
        return None;
    }
    let fd = net_conn_fd(r.rcx.checked_add(u64::from(l.grpc_server_conn))?, l)?;
    let stream = read_u32(r.rdi.checked_add(u64::from(l.grpc_stream_id))?)?;
    (stream != 0).then_some((fd, stream))
}

/// Goroutine `g` starts serving the request of (tgid, fd) (HTTP/1) or
/// its stream `stream` (HTTP/2): it gets a new context id, unless this is
/// the same serving site entered again (see the module notes).
#[inline(always)]
fn start_serving(tgid: u32, g: u64, fd: u32, stream: u32) {
    let k = key(tgid, g);
    // SAFETY: fields copied out.
    let (conn_id, seq) = match unsafe { CONNS.get(conn_key(tgid, fd)) } {
        Some(c) => (c.conn_id, c.seq),
        None => (0, 0),
    };
    // HTTP/1: a connection's next request needs another read, which moves
    // its event count. HTTP/2: the stream id tells (other streams' reads
    // move the count meanwhile).
    let seq = if stream == 0 { seq } else { 0 };
    // SAFETY: plain value copy.
    if let Some(prev) = (unsafe { GO_SERVED.get(k) }).copied() {
        if conn_id != 0 && prev.conn_id == conn_id && prev.seq == seq && prev.stream == stream {
            let _ = GO_CTX.insert(k, prev.ctx_id, 0);
            return;
        }
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Unique within the process: one goroutine starts one request at a
    // time, and the clock moves between two on one CPU.
    let ctx_id = now;
    let _ = GO_CTX.insert(k, ctx_id, 0);
    let served = GoServed {
        conn_id,
        seq,
        stream,
        ctx_id,
    };
    let _ = GO_SERVED.insert(k, served, 0);
    if stream == 0 && config().inject_context != 0 {
        take_server_ctx(tgid, fd, conn_id, ctx_id);
    }
    emit_go_task(&GoTaskEvent {
        kind: EVENT_GO_TASK,
        role: GO_TASK_SERVE,
        _pad: [0; 2],
        tgid,
        fd,
        stream,
        ctx_id,
        ts: now,
    });
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
    if config().inject_context != 0 {
        pend(tgid, fd, ctx_id);
    }
    emit_client(tgid, fd, 0, ctx_id);
    Some(())
}

/// The next request on (tgid, fd) (HTTP/1, `stream` 0), or its stream
/// `stream`, is made for `ctx_id`.
#[inline(always)]
fn emit_client(tgid: u32, fd: u32, stream: u32, ctx_id: u64) {
    emit_go_task(&GoTaskEvent {
        kind: EVENT_GO_TASK,
        role: GO_TASK_CLIENT,
        _pad: [0; 2],
        tgid,
        fd,
        stream,
        ctx_id,
        // SAFETY: no preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
    });
}

/// Each RET of grpc-go's `transport.(*http2Client).NewStream`.
#[uprobe]
pub fn tracer_go_grpc_client(ctx: ProbeContext) -> u32 {
    let _ = on_grpc_client(&ctx);
    0
}

#[inline(always)]
fn on_grpc_client(ctx: &ProbeContext) -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let l = layout(tgid)?;
    let r = regs(ctx);
    // RAX: the new stream (nil when NewStream failed).
    if r.rax == 0 {
        return None;
    }
    let stream = read_u32(r.rax.checked_add(u64::from(l.grpc_stream_id))?)?;
    if stream == 0 {
        return None;
    }
    let ct = read_u64(r.rax.checked_add(u64::from(l.grpc_stream_ct))?)?;
    if ct == 0 {
        return None;
    }
    let fd = net_conn_fd(ct.checked_add(u64::from(l.grpc_client_conn))?, &l)?;
    // SAFETY: plain value copy.
    let ctx_id = (unsafe { GO_CTX.get(key(tgid, r.r14)) })
        .copied()
        .unwrap_or(0);
    if ctx_id == 0 {
        // A stream id is used once: nothing to void.
        return None;
    }
    emit_client(tgid, fd, stream, ctx_id);
    Some(())
}

/// Step 1 (injection on): a SERVER context chosen for a request read on
/// (tgid, fd), in a process with goroutine links, is kept for its
/// connection until net/http serves that request.
#[inline(always)]
pub fn keep_server_ctx(tgid: u32, fd: u32, ctx: &mut ThreadCtx) {
    // SAFETY: plain value copy.
    let links =
        (unsafe { GO_TLS.get(tgid) }).is_some_and(|l| l.response_header != 0 && l.links != 0);
    if !links {
        return;
    }
    // One request, one goroutine: never ambiguous.
    ctx.ambiguous = 0;
    let _ = GO_SERVER_CTX.insert(conn_key(tgid, fd), &*ctx, 0);
}

/// Step 2: the goroutine serving (tgid, fd) takes that connection's SERVER
/// context, once, if it is still that connection's (`conn_id`, 0 when
/// the kernel does not follow the connection).
#[inline(always)]
fn take_server_ctx(tgid: u32, fd: u32, conn_id: u64, ctx_id: u64) {
    let ck = conn_key(tgid, fd);
    match GO_SERVER_CTX.get_ptr(ck) {
        // SAFETY: map value from a successful lookup, read before removal.
        Some(p) if conn_id != 0 && conn_id == unsafe { (*p).conn_id } => {
            // SAFETY: as above; copied map to map (too big for the stack).
            let _ = GO_TRACE.insert(key(tgid, ctx_id), unsafe { &*p }, 0);
        }
        _ => bump(STAT_GO_SERVER_CTX_MISSING),
    }
    let _ = GO_SERVER_CTX.remove(ck);
}

/// Step 3: the next request on client socket (tgid, fd) is for `ctx_id`
/// (0: for none, and any earlier arming is void).
#[inline(always)]
fn pend(tgid: u32, fd: u32, ctx_id: u64) {
    let ck = conn_key(tgid, fd);
    let trace = if ctx_id == 0 {
        None
    } else {
        GO_TRACE.get_ptr(key(tgid, ctx_id))
    };
    match trace {
        // SAFETY: map value from a successful lookup; copied map to map.
        Some(p) => {
            let _ = GO_PENDING.insert(ck, unsafe { &*p }, 0);
        }
        None => {
            let _ = GO_PENDING.remove(ck);
        }
    }
}

/// Step 4, at the entry of a write-family syscall on `fd` (injection on):
/// in a process whose threads key no links, the thread's `THREAD_CTX`
/// slot holds exactly the context armed for this socket, or nothing.
/// Returns whether it was armed (the exit then disarms it).
#[inline(always)]
pub fn arm_injection(pid_tgid: u64, fd: u32) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    if !thread_link_off(tgid) {
        return false;
    }
    let ck = conn_key(tgid, fd);
    let armed = match GO_PENDING.get_ptr(ck) {
        // SAFETY: map value from a successful lookup; copied map to map.
        Some(p) => THREAD_CTX.insert(pid_tgid, unsafe { &*p }, 0).is_ok(),
        None => false,
    };
    if armed {
        let _ = GO_PENDING.remove(ck);
        bump(STAT_GO_INJECT_ARMED);
    } else {
        let _ = THREAD_CTX.remove(pid_tgid);
    }
    armed
}

/// The exit of an armed syscall.
#[inline(always)]
pub fn disarm(pid_tgid: u64) {
    let _ = THREAD_CTX.remove(pid_tgid);
}
