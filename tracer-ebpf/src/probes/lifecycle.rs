//! Connection and process lifecycle: socket close, thread and process
//! exit, and the notices that make the agent look for TLS libraries (exec,
//! `dlopen`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{tracepoint, uretprobe},
    programs::{RetProbeContext, TracePointContext},
};
use aya_log_ebpf::warn;
use tracer_common::{
    conn_key, EVENT_DLOPEN, EVENT_EXEC, EVENT_PROC_EXIT, NO_LINK_PENDING, ORIGIN_ACCEPT,
    PROTO_HTTP1, PROTO_HTTP2, PROTO_UNKNOWN, ROLE_SERVER, STAT_NO_LINK_FULL,
};

use super::{context::server_done, ctx_u64, OFF_ARG0};
use crate::maps::traced;
use crate::{
    emit::{emit_close, emit_proc},
    maps::{bump, config, take_inflight, ClosedConn, CLOSED, CONNS, NO_THREAD_LINK, THREAD_CTX},
};

/// `syscalls:sys_enter_close(fd)`: forget the socket; tell the agent if it
/// was one it parses (so it can finish a read-until-close response).
#[tracepoint]
pub fn tracer_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let fd = ctx_u64(&ctx, OFF_ARG0);
    let key = conn_key(tgid, fd as u32);
    // SAFETY: the fields are copied out before the entry is removed.
    let Some(st) = (unsafe { CONNS.get(key) }) else {
        return 0;
    };
    let (proto, conn_id, role) = (st.proto, st.conn_id, st.role);
    // Accepted and closed unread: perhaps handed to a child, which may
    // dup2 it after this (see fds.rs).
    if st.origin == ORIGIN_ACCEPT && proto == PROTO_UNKNOWN {
        let closed = ClosedConn {
            st: *st,
            // SAFETY: no preconditions.
            ts: unsafe { bpf_ktime_get_ns() },
        };
        let _ = CLOSED.insert(key, closed, 0);
    }
    let _ = CONNS.remove(key);
    if role == ROLE_SERVER && config().inject_context != 0 {
        server_done(pid_tgid, conn_id);
    }
    if proto == PROTO_HTTP1 || proto == PROTO_HTTP2 {
        emit_close(pid_tgid, fd as u32, conn_id);
    }
    0
}

/// `sched:sched_process_exit`, run in the exiting task, for every thread:
/// a thread killed inside a traced syscall never reaches its `sys_exit`, so
/// its saved arguments are dropped here (a stale slot is never reused). When the
/// thread-group leader exits, the agent drops the process's state.
#[tracepoint]
pub fn tracer_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = config();
    let _ = take_inflight(pid_tgid, &cfg);
    if cfg.inject_context != 0 {
        // A reused tid must not inherit this thread's SERVER context.
        let _ = THREAD_CTX.remove(pid_tgid);
    }
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 {
        return 0;
    }
    // The tgid may be reused by a program of another runtime.
    let _ = NO_THREAD_LINK.remove(tgid);
    emit_proc(EVENT_PROC_EXIT, tgid);
    0
}

/// `sched:sched_process_exec`: a new program; the agent looks for TLS
/// libraries in it and classifies its runtime. Until it has, with
/// injection on, the process's threads key no parent link: a Go program
/// could serve its first request before the agent reads its build info.
#[tracepoint]
pub fn tracer_exec(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = config();
    if traced(tgid, &cfg) {
        if cfg.inject_context != 0 {
            if NO_THREAD_LINK.insert(tgid, NO_LINK_PENDING, 0).is_err() {
                bump(STAT_NO_LINK_FULL);
                // Rare and consequential: this program's threads may key
                // injected links until the agent classifies it.
                warn!(
                    &ctx,
                    "thread-link table full: pid {} not marked at exec", tgid
                );
            }
            // The old program's SERVER context is not the new one's.
            let _ = THREAD_CTX.remove(pid_tgid);
        }
        emit_proc(EVENT_EXEC, tgid);
    }
    0
}

/// Return of `dlopen` (libc): the process may have loaded a TLS library.
#[uretprobe]
pub fn tracer_dlopen_ret(ctx: RetProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if ctx.ret::<u64>() != 0 && traced(tgid, &config()) {
        emit_proc(EVENT_DLOPEN, tgid);
    }
    0
}
