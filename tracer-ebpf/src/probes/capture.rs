//! The shared `sys_exit_*` hook: socket tracking at accept/connect, and
//! dispatch of calls that moved payload to the data path (`data.rs`).
//!
//! Attached to `syscalls:sys_exit_{read,recvfrom,write,sendto,readv,writev,
//! recvmsg,sendmsg,sendfile64,accept,accept4,connect}`; every one of them has
//! `long ret` at the same offset, and the saved `PendingCall` says what the
//! syscall was.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    conn_key, ConnState, FAMILY_INET, FAMILY_INET6, ORIGIN_ACCEPT, ORIGIN_CONNECT, PROTO_HTTP1,
    PROTO_HTTP2, PROTO_UNKNOWN, ROLE_CLIENT, ROLE_SERVER, SRC_SENDFILE, STAT_CONN_INSERT_FAILED,
};

use super::{
    context::server_context,
    ctx_nr, ctx_u64,
    data::{fill_scratch, is_ingress, on_data, starts_h2_preface, upgrade_to_h2},
    goroutines::disarm,
    h2::walk_tail,
    tls::{inside_tls_call, note_read},
    CALL_ACCEPT, CALL_CONNECT, OFF_RET,
};
use crate::{
    emit::output_scratch,
    maps::{bump, config, take_inflight, CONNS, TAIL_PROGS},
};

/// `-EINPROGRESS`: a non-blocking connect that is under way.
const EINPROGRESS: i64 = -115;

#[tracepoint]
pub fn tracer_sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cfg = config();
    let Some(call) = take_inflight(pid_tgid, &cfg) else {
        return Ok(());
    };
    if call.armed != 0 {
        disarm(pid_tgid);
    }
    if ctx_nr(ctx) != call.nr {
        return Ok(());
    }
    let ret = ctx_u64(ctx, OFF_RET) as i64;
    let tgid = (pid_tgid >> 32) as u32;
    match call.kind {
        CALL_ACCEPT => {
            if ret >= 0 {
                track_socket(tgid, ret as u32, call.ptr, ROLE_SERVER, ORIGIN_ACCEPT);
            }
        }
        CALL_CONNECT => {
            if ret == 0 || ret == EINPROGRESS {
                track_socket(tgid, call.fd, call.ptr, ROLE_CLIENT, ORIGIN_CONNECT);
            }
        }
        _ => {
            if ret <= 0 {
                return Ok(());
            }
            if cfg.tls != 0 {
                // Ciphertext of a TLS call in progress is not captured.
                if inside_tls_call(pid_tgid, call.fd, &cfg) {
                    return Ok(());
                }
                if is_ingress(call.kind) {
                    note_read(pid_tgid, call.fd, &cfg);
                }
            }
            let Some(target) = on_data(pid_tgid, &call, ret as u64) else {
                return Ok(());
            };
            if target.proto == PROTO_HTTP2 && call.kind != SRC_SENDFILE {
                // Returns only if the frame walker is not loaded.
                walk_tail(ctx, &TAIL_PROGS, pid_tgid, &call, ret as u64, &target);
            }
            let Some(scratch) = fill_scratch(pid_tgid, &call, ret as u64, &target) else {
                return Ok(());
            };
            if target.proto == PROTO_HTTP1 && starts_h2_preface(scratch) {
                upgrade_to_h2(target.key);
            }
            server_context(ctx, &TAIL_PROGS, pid_tgid, &target, scratch);
            output_scratch(scratch);
        }
    }
    Ok(())
}

/// Starts tracking a socket seen at accept/connect. The remote address comes
/// from the user `sockaddr` (written by the kernel for accept, given by the
/// caller for connect); non-IP sockets (AF_UNIX, netlink) are not tracked.
/// No event is sent yet: only a socket classified as HTTP is reported.
#[inline(always)]
fn track_socket(tgid: u32, fd: u32, sockaddr: u64, role: u8, origin: u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut st = ConnState {
        conn_id: now,
        open_ts: now,
        role,
        origin,
        proto: PROTO_UNKNOWN,
        ..ConnState::default()
    };
    if sockaddr != 0 {
        // sockaddr_in: family u16 @0, port be16 @2, addr @4.
        // sockaddr_in6: family u16 @0, port be16 @2, flowinfo @4, addr @8.
        // SAFETY: bpf_probe_read_user checks the user pointer.
        let raw = unsafe { bpf_probe_read_user(sockaddr as *const [u8; 24]) };
        let Ok(raw) = raw else { return };
        let family = u16::from_ne_bytes([raw[0], raw[1]]);
        st.rport = u16::from_be_bytes([raw[2], raw[3]]);
        if family == FAMILY_INET as u16 {
            st.family = FAMILY_INET;
            st.raddr[0] = raw[4];
            st.raddr[1] = raw[5];
            st.raddr[2] = raw[6];
            st.raddr[3] = raw[7];
        } else if family == FAMILY_INET6 as u16 {
            st.family = FAMILY_INET6;
            let mut i = 0;
            while i < 16 {
                st.raddr[i] = raw[8 + i];
                i += 1;
            }
        } else {
            return;
        }
    }
    if CONNS.insert(conn_key(tgid, fd), st, 0).is_err() {
        bump(STAT_CONN_INSERT_FAILED);
    }
}
