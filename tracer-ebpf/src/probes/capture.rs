//! The shared `sys_exit_*` hook: socket tracking, classification and
//! payload capture.
//!
//! Attached to `syscalls:sys_exit_{read,recvfrom,write,sendto,readv,writev,
//! recvmsg,sendmsg,sendfile64,accept,accept4,connect}`; every one of them has
//! `long ret` at the same offset, and the saved `PendingCall` says what the
//! syscall was.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_user, generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use tracer_common::{
    conn_key, ConnOpenEvent, ConnState, DataHeader, DataScratch, ProcEvent, TlsSeenEvent,
    DATA_FLAG_GAP, DATA_FLAG_TRUNCATED, DIR_EGRESS, DIR_INGRESS, EVENT_CONN_OPEN, EVENT_DATA,
    EVENT_DLOPEN, EVENT_EXEC, EVENT_TLS_SEEN, FAMILY_INET, FAMILY_INET6, MAX_CAPTURE,
    MAX_CLASSIFY_ATTEMPTS, MAX_IOV_SEGMENTS, ORIGIN_ACCEPT, ORIGIN_CONNECT, ORIGIN_INFERRED,
    PROTO_HTTP1, PROTO_IGNORED, PROTO_UNKNOWN, ROLE_CLIENT, ROLE_SERVER, SRC_READ, SRC_READV,
    SRC_RECVFROM, SRC_RECVMSG, SRC_SENDFILE, SRC_SENDMSG, SRC_SENDTO, SRC_SSL_READ, SRC_SSL_WRITE,
    SRC_WRITE, SRC_WRITEV, STAT_CONNS_HTTP, STAT_CONNS_IGNORED, STAT_CONNS_INFERRED,
    STAT_CONN_INSERT_FAILED, STAT_READ_FAILED, STAT_RINGBUF_DROPS, STAT_TRUNCATED, TLS_PLAINTEXT,
};

use super::{
    context::server_context,
    ctx_nr, ctx_u64,
    tls::{inside_tls_call, note_read},
    CALL_ACCEPT, CALL_CONNECT, OFF_RET, RB_FLAGS,
};
use crate::{
    classify::classify,
    maps::{bump, config, take_inflight, PendingCall, CONNS, EVENTS, SCRATCH, TAIL_PROGS},
};

/// `-EINPROGRESS`: a non-blocking connect that is under way.
const EINPROGRESS: i64 = -115;

/// User-space `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// The part of user-space `struct msghdr` we need: `msg_iov` at offset 16 and
/// `msg_iovlen` at 24 (x86_64/aarch64 LP64 layout).
#[repr(C)]
#[derive(Clone, Copy)]
struct MsgHdr {
    name: u64,
    namelen: u64,
    iov: u64,
    iovlen: u64,
}

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
            let Some(target) = on_data(ctx, pid_tgid, &call, ret as u64) else {
                return Ok(());
            };
            let Some(scratch) = fill_scratch(pid_tgid, &call, ret as u64, &target) else {
                return Ok(());
            };
            server_context(ctx, &TAIL_PROGS, pid_tgid, &target, scratch);
            output_scratch(scratch);
        }
    }
    Ok(())
}

/// Where a data event goes.
pub struct DataTarget {
    pub conn_id: u64,
    pub seq: u32,
    pub server: bool,
    pub ingress: bool,
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

/// First segment of the payload: pointer and length.
#[inline(always)]
fn first_segment(call: &PendingCall) -> Option<(u64, u64)> {
    match call.kind {
        SRC_READ | SRC_WRITE | SRC_RECVFROM | SRC_SENDTO | SRC_SSL_READ | SRC_SSL_WRITE => {
            Some((call.ptr, call.len))
        }
        SRC_READV | SRC_WRITEV => {
            if call.len == 0 {
                return None;
            }
            // SAFETY: bpf_probe_read_user checks the user pointer.
            let iov = unsafe { bpf_probe_read_user(call.ptr as *const Iovec) }.ok()?;
            Some((iov.base, iov.len))
        }
        SRC_RECVMSG | SRC_SENDMSG => {
            let msg = unsafe { bpf_probe_read_user(call.ptr as *const MsgHdr) }.ok()?;
            if msg.iovlen == 0 {
                return None;
            }
            let iov = unsafe { bpf_probe_read_user(msg.iov as *const Iovec) }.ok()?;
            Some((iov.base, iov.len))
        }
        _ => None,
    }
}

#[inline(always)]
fn is_ingress(kind: u8) -> bool {
    matches!(
        kind,
        SRC_READ | SRC_RECVFROM | SRC_READV | SRC_RECVMSG | SRC_SSL_READ
    )
}

/// The first 8 payload bytes (fewer cannot be told apart reliably); all
/// zero when they cannot be read, which classifies as nothing. (Not an
/// `Option`: LLVM then leaves the bytes unset on the failure path, which
/// the verifier refuses.)
#[inline(always)]
fn peek(call: &PendingCall, ret: u64) -> [u8; 8] {
    let Some((ptr, len)) = first_segment(call) else {
        return [0; 8];
    };
    if len < 8 || ret < 8 {
        return [0; 8];
    }
    // SAFETY: bpf_probe_read_user checks the user pointer.
    unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }.unwrap_or([0; 8])
}

/// Reads the first 8 payload bytes and classifies them.
#[inline(always)]
fn peek_class(call: &PendingCall, ret: u64) -> Option<crate::classify::Class> {
    classify(&peek(call, ret))
}

/// A TLS record header carrying a handshake (`0x16 0x03 0x0?`).
#[inline(always)]
fn is_tls_handshake(head: &[u8; 8]) -> bool {
    head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04
}

/// Tracks and classifies the connection of a captured call; returns where
/// its data event goes, or `None` when nothing is to be sent. Shared by the
/// syscall exit hook and the TLS return probe (`C` is either context).
pub fn on_data<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    call: &PendingCall,
    ret: u64,
) -> Option<DataTarget> {
    let tgid = (pid_tgid >> 32) as u32;
    let key = conn_key(tgid, call.fd);
    let ingress = is_ingress(call.kind);
    let tls = matches!(call.kind, SRC_SSL_READ | SRC_SSL_WRITE);
    let st_ptr = match CONNS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            // Not seen at accept/connect: a connection that predates the
            // agent, or an fd that is not a socket at all. Only bytes that
            // look like HTTP start tracking; the agent then checks the fd
            // really is a socket and vetoes it otherwise.
            let class = peek_class(call, ret)?;
            let now = unsafe { bpf_ktime_get_ns() };
            let role = if class.is_request == ingress {
                ROLE_SERVER
            } else {
                ROLE_CLIENT
            };
            let st = ConnState {
                conn_id: now,
                open_ts: now,
                role,
                origin: ORIGIN_INFERRED,
                proto: class.proto,
                tls: if tls { TLS_PLAINTEXT } else { 0 },
                ..ConnState::default()
            };
            if CONNS.insert(key, st, 0).is_err() {
                bump(STAT_CONN_INSERT_FAILED);
                return None;
            }
            bump(STAT_CONNS_INFERRED);
            bump(STAT_CONNS_HTTP);
            debug!(ctx, "inferred HTTP connection tgid={} fd={}", tgid, call.fd);
            emit_open(pid_tgid, call.fd, &st);
            CONNS.get_ptr_mut(key)?
        }
    };
    // SAFETY: the pointer comes from a successful map lookup; concurrent
    // updates from another thread on the same socket only race on counters.
    let st = unsafe { &mut *st_ptr };
    if tls && st.tls != TLS_PLAINTEXT {
        // First plaintext from a TLS library on this socket: whatever the
        // ciphertext was classified as, the plaintext decides now.
        st.tls = TLS_PLAINTEXT;
        st.proto = PROTO_UNKNOWN;
        st.attempts = 0;
    } else if !tls && st.tls != 0 {
        // Ciphertext of a TLS connection: never parsed.
        return None;
    }
    if st.proto == PROTO_IGNORED {
        return None;
    }
    if st.proto == PROTO_UNKNOWN {
        if call.kind == SRC_SENDFILE {
            return None;
        }
        let head = peek(call, ret);
        match classify(&head) {
            Some(class) => {
                st.proto = class.proto;
                bump(STAT_CONNS_HTTP);
                emit_open(pid_tgid, call.fd, st);
            }
            None => {
                st.attempts += 1;
                if st.attempts >= MAX_CLASSIFY_ATTEMPTS || ret >= 8 {
                    // A full-sized first payload that is not HTTP (TLS,
                    // database protocols, DNS...): stop looking at it.
                    st.proto = PROTO_IGNORED;
                    bump(STAT_CONNS_IGNORED);
                    if !tls && is_tls_handshake(&head) {
                        // The agent checks the process's TLS library is
                        // probed (and says so once if it is not).
                        let ev = TlsSeenEvent {
                            kind: EVENT_TLS_SEEN,
                            _pad: [0; 3],
                            tgid,
                            comm: bpf_get_current_comm().unwrap_or([0; 16]),
                        };
                        if EVENTS.output::<TlsSeenEvent>(&ev, RB_FLAGS).is_err() {
                            bump(STAT_RINGBUF_DROPS);
                        }
                    }
                }
                return None;
            }
        }
    }
    let seq = st.seq;
    st.seq = seq.wrapping_add(1);
    Some(DataTarget {
        conn_id: st.conn_id,
        seq,
        server: st.role == ROLE_SERVER,
        ingress,
    })
}

/// Sends a process-level notice. Exec and dlopen notices wake the agent
/// (unlike data): it probes new TLS libraries before their first use.
#[inline(always)]
pub fn emit_proc(kind: u8, tgid: u32) {
    let ev = ProcEvent {
        kind,
        _pad: [0; 3],
        tgid,
        ts: unsafe { bpf_ktime_get_ns() },
    };
    let flags = if kind == EVENT_EXEC || kind == EVENT_DLOPEN {
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64
    } else {
        RB_FLAGS
    };
    if EVENTS.output::<ProcEvent>(&ev, flags).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
}

#[inline(always)]
fn emit_open(pid_tgid: u64, fd: u32, st: &ConnState) {
    let ev = ConnOpenEvent {
        kind: EVENT_CONN_OPEN,
        role: st.role,
        origin: st.origin,
        family: st.family,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        conn_id: st.conn_id,
        open_ts: st.open_ts,
        raddr: st.raddr,
        rport: st.rport,
        proto: st.proto,
        tls: st.tls,
        _pad: [0; 4],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<ConnOpenEvent>(&ev, RB_FLAGS).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
}

/// Copies `len` user bytes to `scratch.data[off..]`, within the verifier's
/// view of the buffer: `off < MAX_CAPTURE` and `len <= MAX_CAPTURE`, and the
/// buffer holds `2 * MAX_CAPTURE`.
#[inline(always)]
fn copy_user(scratch: &mut DataScratch, off: usize, len: usize, src: u64) -> bool {
    // black_box keeps LLVM from dropping the mask and the clamp because it
    // "knows" the bounds from the caller; the verifier does not, and it
    // tracks the caller's arithmetic as possibly negative.
    let off = core::hint::black_box(off) & (MAX_CAPTURE - 1);
    let len = core::hint::black_box(len);
    let len = if len > MAX_CAPTURE { MAX_CAPTURE } else { len };
    // SAFETY: bounds established above; the helper validates `src`.
    let rc = unsafe {
        probe_read_user_raw(
            scratch.data.as_mut_ptr().add(off).cast(),
            len as u32,
            src as *const core::ffi::c_void,
        )
    };
    rc == 0
}

/// Copies up to `cap` of the `ret` bytes the syscall moved; returns the
/// number of bytes captured.
#[inline(always)]
fn capture(scratch: &mut DataScratch, call: &PendingCall, ret: u64, cap: usize) -> usize {
    let total = if ret > cap as u64 { cap } else { ret as usize };
    let (iov_ptr, iov_cnt) = match call.kind {
        SRC_READ | SRC_WRITE | SRC_RECVFROM | SRC_SENDTO | SRC_SSL_READ | SRC_SSL_WRITE => {
            return if copy_user(scratch, 0, total, call.ptr) {
                total
            } else {
                bump(STAT_READ_FAILED);
                0
            };
        }
        SRC_READV | SRC_WRITEV => (call.ptr, call.len),
        SRC_RECVMSG | SRC_SENDMSG => {
            let Ok(msg) = (unsafe { bpf_probe_read_user(call.ptr as *const MsgHdr) }) else {
                bump(STAT_READ_FAILED);
                return 0;
            };
            (msg.iov, msg.iovlen)
        }
        _ => return 0,
    };
    let mut off: usize = 0;
    for i in 0..MAX_IOV_SEGMENTS as u64 {
        if i >= iov_cnt || off >= total {
            break;
        }
        let iov_addr = iov_ptr + i * core::mem::size_of::<Iovec>() as u64;
        let Ok(iov) = (unsafe { bpf_probe_read_user(iov_addr as *const Iovec) }) else {
            bump(STAT_READ_FAILED);
            break;
        };
        let room = total - off;
        let n = if iov.len > room as u64 {
            room
        } else {
            iov.len as usize
        };
        if n > 0 && !copy_user(scratch, off, n, iov.base) {
            bump(STAT_READ_FAILED);
            break;
        }
        off += n;
    }
    off
}

/// Assembles the data event in this CPU's scratch slot (header and
/// payload); the caller sends it.
#[inline(always)]
pub fn fill_scratch(
    pid_tgid: u64,
    call: &PendingCall,
    ret: u64,
    target: &DataTarget,
) -> Option<&'static mut DataScratch> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let scratch = SCRATCH.get_ptr_mut(cpu)?;
    // SAFETY: this CPU's slot; programs do not migrate while running.
    let scratch = unsafe { &mut *scratch };
    let cfg = config();
    let cap = if cfg.max_capture as usize > MAX_CAPTURE {
        MAX_CAPTURE
    } else {
        cfg.max_capture as usize
    };
    let captured = if call.kind == SRC_SENDFILE {
        0
    } else {
        capture(scratch, call, ret, cap)
    };
    let mut flags = 0;
    if call.kind == SRC_SENDFILE {
        flags |= DATA_FLAG_GAP;
    } else if (captured as u64) < ret {
        flags |= DATA_FLAG_TRUNCATED;
        bump(STAT_TRUNCATED);
    }
    scratch.header = DataHeader {
        kind: EVENT_DATA,
        direction: if target.ingress {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        },
        source: call.kind,
        flags,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: call.fd,
        conn_id: target.conn_id,
        // Reads complete at exit; a write's first byte leaves at entry.
        ts: if target.ingress {
            unsafe { bpf_ktime_get_ns() }
        } else {
            call.ts
        },
        total_len: if ret > u32::MAX as u64 {
            u32::MAX
        } else {
            ret as u32
        },
        captured_len: captured as u32,
        seq: target.seq,
        _pad: 0,
    };
    Some(scratch)
}

/// The captured bytes start an HTTP/1 request (method and space).
#[inline(always)]
pub fn starts_request(scratch: &DataScratch) -> bool {
    if scratch.header.captured_len < 16 {
        return false;
    }
    let mut head = [0u8; 8];
    head.copy_from_slice(&scratch.data[..8]);
    matches!(classify(&head), Some(c) if c.is_request && c.proto == PROTO_HTTP1)
}

/// Sends the data event assembled in `scratch` (header + payload).
#[inline(always)]
pub fn output_scratch(scratch: &DataScratch) {
    let captured = scratch.header.captured_len as usize;
    let captured = if captured > MAX_CAPTURE {
        MAX_CAPTURE
    } else {
        captured
    };
    let size = core::mem::size_of::<DataHeader>() + captured;
    // SAFETY: `size` is at most the header plus MAX_CAPTURE, inside the
    // scratch value.
    let bytes =
        unsafe { core::slice::from_raw_parts((scratch as *const DataScratch).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, RB_FLAGS).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
}
