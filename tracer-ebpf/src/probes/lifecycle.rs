//! Connection and process teardown.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    conn_key, ConnCloseEvent, ProcEvent, EVENT_CONN_CLOSE, EVENT_PROC_EXIT, PROTO_HTTP1,
    PROTO_HTTP2, ROLE_SERVER, STAT_RINGBUF_DROPS,
};

use super::{context::server_done, ctx_u64, OFF_ARG0, RB_FLAGS};
use crate::maps::{bump, config, take_inflight, CONNS, EVENTS};

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
    let _ = CONNS.remove(key);
    if role == ROLE_SERVER && config().inject_context != 0 {
        server_done(pid_tgid, conn_id);
    }
    if proto == PROTO_HTTP1 || proto == PROTO_HTTP2 {
        let ev = ConnCloseEvent {
            kind: EVENT_CONN_CLOSE,
            _pad: [0; 3],
            tgid,
            tid: pid_tgid as u32,
            fd: fd as u32,
            conn_id,
            ts: unsafe { bpf_ktime_get_ns() },
        };
        if EVENTS.output::<ConnCloseEvent>(&ev, RB_FLAGS).is_err() {
            bump(STAT_RINGBUF_DROPS);
        }
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
    let _ = take_inflight(pid_tgid, &config());
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 {
        return 0;
    }
    let ev = ProcEvent {
        kind: EVENT_PROC_EXIT,
        _pad: [0; 3],
        tgid,
        ts: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<ProcEvent>(&ev, RB_FLAGS).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
    0
}
