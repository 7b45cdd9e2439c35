//! Sockets that change fds: one connection held on several fds or handed
//! to another process is still one connection. An inetd-style server
//! (inetd, busybox httpd, systemd `Accept=yes`) accepts in the parent,
//! forks, and the child `dup2`s the socket onto fds 0 and 1: the child's
//! fds get the parent's connection entry, with its `conn_id`, so the
//! agent joins them into one connection (each fd keeps its own event
//! sequence).
//!
//! The parent usually closes its fd, and may accept the next connection
//! on the same number, before the child runs: the child's fd is the
//! connection that was open on it *at the fork*, so an entry counts only
//! if it was opened before the fork and (when closed) closed after it.
//! When that cannot be told, the fds stay apart (never a wrong join).
//!
//! Tracepoints: `sched:sched_process_fork` (who is whose parent),
//! `syscalls:sys_enter_dup2` and `sys_enter_dup3` (`oldfd`, `newfd`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{conn_key, ConnState, PROTO_HTTP1, PROTO_HTTP2};

use super::{ctx_u64, OFF_ARG0, OFF_ARG1};
use crate::maps::traced;
use crate::{
    emit::emit_open,
    maps::{config, ForkedFrom, CLOSED, CONNS, PARENTS},
};

/// `sched:sched_process_fork`: runs in the parent; remembers the child's
/// parent and the time (threads too: harmless, keys are looked up by
/// tgid). The child's pid is read from the record at the offset the agent
/// found in the tracepoint's `format` (`Config::fork_child_pid_offset`):
/// it moved when the comm fields became `__data_loc` (6.x).
#[tracepoint]
pub fn tracer_fork(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(parent, &cfg) || cfg.fork_child_pid_offset == 0 {
        return 0;
    }
    // SAFETY: the offset comes from the record's format, which the
    // verifier bounds-checks: an invalid read just fails.
    let Ok(child) = (unsafe { ctx.read_at::<u32>((cfg.fork_child_pid_offset & 0xff) as usize) })
    else {
        return 0;
    };
    let fork = ForkedFrom {
        parent,
        _pad: 0,
        // SAFETY: no preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
    };
    let _ = PARENTS.insert(child, fork, 0);
    0
}

/// The connection a forked child's `fd` was at its fork, from the
/// parent's open or recently closed entries.
#[inline(always)]
fn inherited(tgid: u32, fd: u32) -> Option<ConnState> {
    // SAFETY: values are copied out at once.
    let fork = unsafe { PARENTS.get(tgid) }.copied()?;
    let key = conn_key(fork.parent, fd);
    if let Some(st) = unsafe { CONNS.get(key) }.copied() {
        if st.open_ts < fork.ts {
            return Some(st);
        }
    }
    let closed = unsafe { CLOSED.get(key) }.copied()?;
    (closed.st.open_ts < fork.ts && closed.ts > fork.ts).then_some(closed.st)
}

/// `syscalls:sys_enter_dup2(oldfd, newfd)` and `sys_enter_dup3(oldfd,
/// newfd, flags)`: `newfd` becomes the connection `oldfd` is, whether this
/// process or its parent (an inherited fd) had it. Done at entry: the call
/// fails only for a bad `oldfd`, which has no entry.
#[tracepoint]
pub fn tracer_enter_dup2(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !traced(tgid, &config()) {
        return 0;
    }
    let old = ctx_u64(&ctx, OFF_ARG0) as u32;
    let new = ctx_u64(&ctx, OFF_ARG1) as u32;
    if old == new {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let own = unsafe { CONNS.get(conn_key(tgid, old)) }.copied();
    let st = own.or_else(|| inherited(tgid, old));
    match st {
        Some(mut st) => {
            // Each fd has its own event sequence (the agent checks it per
            // fd). One already classified is announced now: its first
            // bytes on the new fd may be mid-message, too late to tell.
            st.seq = 0;
            let _ = CONNS.insert(conn_key(tgid, new), st, 0);
            if st.proto == PROTO_HTTP1 || st.proto == PROTO_HTTP2 {
                emit_open(pid_tgid, new, &st);
            }
        }
        // `newfd` is closed by the call: whatever it was is over.
        None => {
            let _ = CONNS.remove(conn_key(tgid, new));
        }
    }
    0
}
