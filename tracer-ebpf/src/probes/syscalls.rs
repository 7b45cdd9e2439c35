//! `sys_enter_*` hooks: save the arguments the exit hook needs.
//!
//! Tracepoints used: `syscalls:sys_enter_{read,recvfrom,write,sendto,readv,
//! writev,recvmsg,sendmsg,sendfile64,accept,accept4,connect}`. Buffers are
//! only read at exit, when the byte count is known (and, for reads, filled).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    SRC_READ, SRC_READV, SRC_RECVFROM, SRC_RECVMSG, SRC_SENDFILE, SRC_SENDMSG, SRC_SENDTO,
    SRC_WRITE, SRC_WRITEV, STAT_INFLIGHT_COLLISIONS,
};

use super::{
    ctx_nr, ctx_u64, goroutines::arm_injection, CALL_ACCEPT, CALL_CONNECT, OFF_ARG0, OFF_ARG1,
    OFF_ARG2,
};
use crate::maps::{bump, config, inflight_slot, traced};

#[inline(always)]
fn save(ctx: &TracePointContext, kind: u8, fd: u64, ptr: u64, len: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = config();
    if !traced((pid_tgid >> 32) as u32, &cfg) {
        return;
    }
    // No socket lookup here: saving the arguments is cheaper than a hash
    // lookup, and the exit hook looks the socket up anyway.
    let Some(slot) = inflight_slot(pid_tgid, &cfg) else {
        return;
    };
    // Injection only: one hash lookup per write, for Go's goroutine links.
    let armed = cfg.inject_context != 0
        && matches!(
            kind,
            SRC_WRITE | SRC_SENDTO | SRC_WRITEV | SRC_SENDMSG | SRC_SENDFILE
        )
        && arm_injection(pid_tgid, fd as u32);
    // SAFETY: valid map value pointer. The owner is cleared first and
    // written last, so a concurrent reader never takes a half-written slot.
    unsafe {
        let owner = core::ptr::read_volatile(&(*slot).pid_tgid);
        if owner != 0 && owner != pid_tgid {
            bump(STAT_INFLIGHT_COLLISIONS);
        }
        core::ptr::write_volatile(&mut (*slot).pid_tgid, 0);
        (*slot).ts = bpf_ktime_get_ns();
        (*slot).ptr = ptr;
        (*slot).len = len;
        (*slot).fd = fd as u32;
        (*slot).nr = ctx_nr(ctx);
        (*slot).kind = kind;
        (*slot).armed = u8::from(armed);
        core::ptr::write_volatile(&mut (*slot).pid_tgid, pid_tgid);
    }
}

/// The three leading syscall arguments.
#[inline(always)]
fn args3(ctx: &TracePointContext) -> (u64, u64, u64) {
    (
        ctx_u64(ctx, OFF_ARG0),
        ctx_u64(ctx, OFF_ARG1),
        ctx_u64(ctx, OFF_ARG2),
    )
}

macro_rules! enter_probe {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let (fd, ptr, len) = args3(&ctx);
            save(&ctx, $kind, fd, ptr, len);
            0
        }
    };
}

enter_probe!(
    /// `sys_enter_read(fd, buf, count)`.
    tracer_enter_read,
    SRC_READ
);
enter_probe!(
    /// `sys_enter_recvfrom(fd, ubuf, size, flags, addr, addr_len)`.
    tracer_enter_recvfrom,
    SRC_RECVFROM
);
enter_probe!(
    /// `sys_enter_write(fd, buf, count)`.
    tracer_enter_write,
    SRC_WRITE
);
enter_probe!(
    /// `sys_enter_sendto(fd, buff, len, flags, addr, addr_len)`.
    tracer_enter_sendto,
    SRC_SENDTO
);
enter_probe!(
    /// `sys_enter_readv(fd, vec, vlen)`.
    tracer_enter_readv,
    SRC_READV
);
enter_probe!(
    /// `sys_enter_writev(fd, vec, vlen)`.
    tracer_enter_writev,
    SRC_WRITEV
);
enter_probe!(
    /// `sys_enter_recvmsg(fd, msg, flags)`: `ptr` is the user `msghdr`.
    tracer_enter_recvmsg,
    SRC_RECVMSG
);
enter_probe!(
    /// `sys_enter_sendmsg(fd, msg, flags)`: `ptr` is the user `msghdr`.
    tracer_enter_sendmsg,
    SRC_SENDMSG
);
enter_probe!(
    /// `sys_enter_accept(fd, upeer_sockaddr, upeer_addrlen)` and
    /// `sys_enter_accept4` (same leading arguments): the peer address is
    /// read from `upeer_sockaddr` at exit.
    tracer_enter_accept,
    CALL_ACCEPT
);
enter_probe!(
    /// `sys_enter_connect(fd, uservaddr, addrlen)`.
    tracer_enter_connect,
    CALL_CONNECT
);

/// `sys_enter_sendfile64(out_fd, in_fd, offset, count)`: the payload comes
/// from a file, so only its length is reported (a gap for the parser, which
/// is how nginx sends static bodies).
#[tracepoint]
pub fn tracer_enter_sendfile(ctx: TracePointContext) -> u32 {
    let (out_fd, _in_fd, _off) = args3(&ctx);
    save(&ctx, SRC_SENDFILE, out_fd, 0, 0);
    0
}
