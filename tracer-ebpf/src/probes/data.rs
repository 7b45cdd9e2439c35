//! The data path shared by the `sys_exit_*` hook (`capture.rs`) and the TLS
//! probes (`tls/`: OpenSSL, Go crypto/tls): connection tracking and classification
//! of a call that moved payload, and assembly of its data event in this
//! CPU's `SCRATCH` slot.
use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
    generated::bpf_probe_read_user as probe_read_user_raw,
};
use tracer_common::{
    conn_key, ConnState, DataHeader, DataScratch, DATA_FLAG_GAP, DATA_FLAG_TRUNCATED, DIR_EGRESS,
    DIR_INGRESS, EVENT_DATA, MAX_CAPTURE, MAX_CLASSIFY_ATTEMPTS, MAX_IOV_SEGMENTS, ORIGIN_INFERRED,
    PROTO_HTTP1, PROTO_HTTP2, PROTO_IGNORED, PROTO_UNKNOWN, ROLE_CLIENT, ROLE_SERVER, SRC_READ,
    SRC_READV, SRC_RECVFROM, SRC_RECVMSG, SRC_SENDFILE, SRC_SENDMSG, SRC_SENDTO, SRC_SSL_READ,
    SRC_SSL_WRITE, SRC_WRITE, SRC_WRITEV, STAT_CONNS_HTTP, STAT_CONNS_IGNORED, STAT_CONNS_INFERRED,
    STAT_CONN_INSERT_FAILED, STAT_READ_FAILED, STAT_SHED, STAT_TRUNCATED, TLS_PLAINTEXT,
};

use crate::{
    classify::{classify, Class, PEEK},
    emit::{emit_open, emit_tls_seen},
    maps::{bump, config, config_ref, PendingCall, CONNS, SCRATCH},
};

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

/// Where a data event goes.
pub struct DataTarget {
    /// `CONNS` key of the connection.
    pub key: u64,
    /// The connection's `PROTO_*`.
    pub proto: u8,
    pub conn_id: u64,
    pub seq: u32,
    pub server: bool,
    pub ingress: bool,
}

/// The iovec array and count of a `recvmsg`/`sendmsg` call.
#[inline(always)]
pub fn msg_iov(call: &PendingCall) -> Option<(u64, u64)> {
    // SAFETY: bpf_probe_read_user checks the user pointer.
    let msg = unsafe { bpf_probe_read_user(call.ptr as *const MsgHdr) }.ok()?;
    Some((msg.iov, msg.iovlen))
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

/// The call reads (payload comes in) rather than writes.
#[inline(always)]
pub fn is_ingress(kind: u8) -> bool {
    matches!(
        kind,
        SRC_READ | SRC_RECVFROM | SRC_READV | SRC_RECVMSG | SRC_SSL_READ
    )
}

/// The first [`PEEK`] payload bytes, or the first 8 when fewer came
/// (fewer cannot be told apart reliably); zero where not read, which
/// classifies as nothing. (Not an `Option`: LLVM then leaves the bytes
/// unset on the failure path, which the verifier refuses.) Also returns
/// how many bytes the classifier may trust.
#[inline(always)]
fn peek(call: &PendingCall, ret: u64) -> ([u8; PEEK], u64) {
    let mut b = [0u8; PEEK];
    let Some((ptr, len)) = first_segment(call) else {
        return (b, 0);
    };
    let n = if len < ret { len } else { ret };
    if n < 8 {
        return (b, 0);
    }
    let n = if n > PEEK as u64 { PEEK as u64 } else { n };
    // The clamp again, on a value the compiler must reload: LLVM may
    // spill `n` before the clamp above (around the zeroing of `b`) and
    // pass the spilled copy, and verifiers before 6.7 (no scalar ids on
    // spill) do not carry the clamp's bounds to that copy: "R2 unbounded
    // memory access" at bpf_probe_read_user on 6.1. A volatile read cannot
    // be known bounded, so the check below stays, next to the call.
    // SAFETY: a read of a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    if n > PEEK as u64 {
        return (b, 0);
    }
    // SAFETY: `n` is at most PEEK, the size of `b`; the helper checks `ptr`.
    let rc = unsafe {
        probe_read_user_raw(
            b.as_mut_ptr().cast(),
            n as u32,
            ptr as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return ([0; PEEK], 0);
    }
    (b, n)
}

/// Reads the first payload bytes and classifies them.
#[inline(always)]
fn peek_class(call: &PendingCall, ret: u64, tracked: bool) -> Option<Class> {
    let (head, n) = peek(call, ret);
    classify(&head, n, tracked)
}

/// A TLS record header carrying a handshake (`0x16 0x03 0x0?`).
#[inline(always)]
fn is_tls_handshake(head: &[u8; PEEK]) -> bool {
    head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04
}

/// Tracks and classifies the connection of a captured call; returns where
/// its data event goes, or `None` when nothing is to be sent. Shared by the
/// syscall exit hook and the TLS probes.
#[inline(always)]
pub fn on_data(pid_tgid: u64, call: &PendingCall, ret: u64) -> Option<DataTarget> {
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
            let class = peek_class(call, ret, false)?;
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
        let (head, n) = peek(call, ret);
        match classify(&head, n, true) {
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
                        emit_tls_seen(tgid);
                    }
                }
                return None;
            }
        }
    }
    // Degradation: a share of connections, chosen by their id, is not
    // copied. The skipped sequence number tells the agent that bytes are
    // missing, so a connection that is followed again resynchronises.
    let shed = config_ref().map_or(0, |c| c.shed_bound);
    if shed != 0 && (st.conn_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) < u64::from(shed) {
        st.seq = st.seq.wrapping_add(1);
        bump(STAT_SHED);
        return None;
    }
    let seq = st.seq;
    st.seq = seq.wrapping_add(1);
    Some(DataTarget {
        key,
        proto: st.proto,
        conn_id: st.conn_id,
        seq,
        server: st.role == ROLE_SERVER,
        ingress,
    })
}

/// Copies `len` user bytes to `scratch.data[off..]`, within the verifier's
/// view of the buffer: `off < MAX_CAPTURE` and `len <= MAX_CAPTURE`, and the
/// buffer holds `2 * MAX_CAPTURE`.
#[inline(always)]
pub fn copy_user(scratch: &mut DataScratch, off: usize, len: usize, src: u64) -> bool {
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
    let mut head = [0u8; PEEK];
    head[..8].copy_from_slice(&scratch.data[..8]);
    matches!(classify(&head, 8, true), Some(c) if c.is_request && c.proto == PROTO_HTTP1)
}

/// Switches an HTTP/1 connection to HTTP/2 (its next calls are walked).
#[inline(always)]
pub fn upgrade_to_h2(key: u64) {
    if let Some(st) = CONNS.get_ptr_mut(key) {
        // SAFETY: a map value pointer from a successful lookup.
        unsafe { (*st).proto = PROTO_HTTP2 };
    }
}

/// The captured bytes start with the HTTP/2 client preface: an HTTP/1
/// connection upgraded to h2c (RFC 7540 §3.2) speaks HTTP/2 from here.
#[inline(always)]
pub fn starts_h2_preface(scratch: &DataScratch) -> bool {
    scratch.header.captured_len >= 8 && scratch.data[..8] == *b"PRI * HT"
}
