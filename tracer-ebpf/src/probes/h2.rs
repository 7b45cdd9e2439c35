//! The HTTP/2 frame walker: a syscall's (or TLS call's) bytes on an
//! HTTP/2 connection are sent as segments, every frame header and every
//! non-DATA frame whole, and DATA payloads as gaps. A large DATA frame
//! then costs nine bytes, and the trailers written behind it in the same
//! call (where gRPC puts `grpc-status`) still fit the event.
//!
//! The capture hook (`capture.rs`, or the TLS return probe) saves the
//! call in `H2_ARGS` and tail-calls `tracer_h2_walk` (or its kprobe-type
//! twin `tracer_tls_h2_walk`). The walk is a `bpf_loop` (5.17) of small
//! steps, each verified once: a frame header, a piece of a frame inside
//! one iovec entry, or the move to the next iovec entry. Where a frame
//! ends is remembered per connection and direction in `H2_STATE`, since
//! frames run across calls. When the walker is not loaded (older
//! kernels) the tail call fails and the hook copies the bytes as for
//! HTTP/1.
use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_loop,
    },
    macros::{tracepoint, uretprobe},
    maps::ProgramArray,
    programs::{RetProbeContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{
    DataHeader, DataScratch, SegmentHeader, DATA_FLAG_SEGMENTS, DIR_EGRESS, DIR_INGRESS,
    EVENT_DATA, H2_WALK_IOV, H2_WALK_STEPS, MAX_CAPTURE, SEG_FRAME_START, SRC_READ, SRC_READV,
    SRC_RECVFROM, SRC_SENDTO, SRC_SSL_READ, SRC_SSL_WRITE, SRC_WRITE, SRC_WRITEV,
    STAT_H2_BYTES_NOT_COPIED, STAT_H2_DATA_SKIPPED, STAT_H2_WALK_LOST, TAIL_H2_WALK,
};

use super::data::{copy_user, msg_iov, DataTarget};
use crate::{
    emit::output_scratch,
    maps::{
        bump, bump_by, config, H2Args, H2Dir, H2State, PendingCall, Walk, H2_ARGS, H2_STATE,
        H2_WALK, SCRATCH,
    },
};

const HDR: u32 = 9;
const SEG: usize = core::mem::size_of::<SegmentHeader>();
/// No segment is open.
const NO_SEG: u32 = u32::MAX;
/// Length of the client connection preface.
const PREFACE_LEN: u32 = 24;

/// Hands an HTTP/2 call to the walker; returns only if the walker is not
/// there (the caller then copies the bytes plainly).
#[inline(always)]
pub fn walk_tail<C: EbpfContext>(
    ctx: &C,
    tails: &ProgramArray,
    pid_tgid: u64,
    call: &PendingCall,
    ret: u64,
    target: &DataTarget,
) {
    let Some(args) = H2_ARGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the tail-called program runs on this CPU
    // right after us.
    unsafe {
        *args = H2Args {
            call: *call,
            ret,
            pid_tgid,
            key: target.key,
            conn_id: target.conn_id,
            seq: target.seq,
            ingress: target.ingress as u8,
            _pad: [0; 3],
        };
        tails.tail_call(ctx, TAIL_H2_WALK);
    }
}

#[tracepoint]
pub fn tracer_h2_walk(_ctx: TracePointContext) -> u32 {
    walk_and_output();
    0
}

/// The same for TLS plaintext (the return probe is kprobe-type).
#[uretprobe]
pub fn tracer_tls_h2_walk(_ctx: RetProbeContext) -> u32 {
    walk_and_output();
    0
}

/// What the `bpf_loop` callback is given: pointers only. The walk's
/// state itself is a per-CPU map value, not the caller's stack: the
/// verifier tracks stack values exactly, so a stack state made it walk
/// the callback once per value and give up; map values are plain scalars
/// to it.
#[repr(C)]
struct WalkCtx {
    w: *mut Walk,
    scratch: *mut DataScratch,
    dir: *mut H2Dir,
}

#[inline(always)]
fn walk_and_output() {
    let Some(args) = H2_ARGS.get_ptr(0) else {
        return;
    };
    // SAFETY: filled by `walk_tail` on this CPU just before the tail call.
    let a = unsafe { *args };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    let d = if a.ingress != 0 { 0 } else { 1 };
    let state = match H2_STATE.get_ptr_mut(a.key) {
        // A state of an earlier connection on the same fd is not ours.
        Some(s) if unsafe { (*s).conn_id } == a.conn_id => s,
        _ => {
            let fresh = H2State {
                conn_id: a.conn_id,
                dirs: [H2Dir::default(); 2],
            };
            let _ = H2_STATE.insert(a.key, fresh, 0);
            match H2_STATE.get_ptr_mut(a.key) {
                Some(s) => s,
                None => return,
            }
        }
    };
    // SAFETY: a map value of ours; two threads on one socket and
    // direction at once only confuse the framing, which the agent checks.
    let dir = unsafe { &mut (*state).dirs[d & 1] };
    let scratch_ref = unsafe { &mut *scratch };
    let cfg = config();
    let cap = if cfg.max_capture as usize > MAX_CAPTURE {
        MAX_CAPTURE as u32
    } else {
        cfg.max_capture
    };
    let call = &a.call;
    let (single, iov_ptr, iov_cnt) = match call.kind {
        SRC_READ | SRC_WRITE | SRC_RECVFROM | SRC_SENDTO | SRC_SSL_READ | SRC_SSL_WRITE => {
            (1, call.ptr, 0)
        }
        SRC_READV | SRC_WRITEV => (0, call.ptr, call.len),
        _ => match msg_iov(call) {
            Some((p, n)) => (0, p, n),
            None => return,
        },
    };
    let Some(wp) = H2_WALK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, ours for this run.
    let w = unsafe { &mut *wp };
    *w = Walk {
        single,
        iov_ptr,
        iov_cnt,
        iov_next: 0,
        cur_base: if single != 0 { call.ptr } else { 0 },
        cur_len: if single != 0 { a.ret } else { 0 },
        cur_start: 0,
        pos: 0,
        total: a.ret,
        out: 0,
        cap,
        seg_at: NO_SEG,
        seg_end: 0,
        skipped: 0,
        not_copied: 0,
    };
    // The first bytes of the call decide where a walk may start.
    let head = if single != 0 {
        read_head(call.ptr, a.ret)
    } else if first_iov(w) {
        read_head(w.cur_base, w.cur_len)
    } else {
        None
    };
    if dir.started == 0 {
        dir.started = 1;
        match head {
            // The client preface (RFC 9113 §3.4) is copied through the
            // payload path, as if it were a 24-byte frame.
            Some(h) if h[..8] == *b"PRI * HT" => {
                dir.rem = PREFACE_LEN;
                dir.skip = 0;
            }
            Some(h) if plausible(&h) => {}
            // Not at a frame boundary (joined late, or the state was
            // evicted): wait for one.
            _ => dir.lost = 1,
        }
    } else if dir.lost != 0 && head.is_some_and(|h| plausible(&h)) {
        // Framing lost earlier: a call that starts with a plausible frame
        // header finds it again.
        dir.lost = 0;
        dir.rem = 0;
        dir.have = 0;
    }
    if dir.lost == 0 {
        // SAFETY: the callback only touches what `w` points to, ours for
        // this run (per-CPU scratch, our connection's map value).
        let mut cx = WalkCtx {
            w: wp,
            scratch,
            dir: dir as *mut H2Dir,
        };
        unsafe {
            bpf_loop(
                H2_WALK_STEPS,
                step as *mut core::ffi::c_void,
                (&mut cx as *mut WalkCtx).cast(),
                0,
            )
        };
        if w.pos < w.total {
            // Budget spent, iovec limit, or a failed read: where the
            // next frame starts is unknown now.
            dir.lost = 1;
            bump(STAT_H2_WALK_LOST);
        }
    }
    if w.skipped > 0 {
        bump_by(STAT_H2_DATA_SKIPPED, w.skipped);
    }
    if w.not_copied > 0 {
        bump_by(STAT_H2_BYTES_NOT_COPIED, w.not_copied);
    }
    scratch_ref.header = DataHeader {
        kind: EVENT_DATA,
        direction: if a.ingress != 0 {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        },
        source: call.kind,
        flags: DATA_FLAG_SEGMENTS,
        tgid: (a.pid_tgid >> 32) as u32,
        tid: a.pid_tgid as u32,
        fd: call.fd,
        conn_id: a.conn_id,
        // Reads complete at exit; a write's first byte leaves at entry.
        ts: if a.ingress != 0 {
            unsafe { bpf_ktime_get_ns() }
        } else {
            call.ts
        },
        total_len: if a.ret > u32::MAX as u64 {
            u32::MAX
        } else {
            a.ret as u32
        },
        captured_len: w.out,
        seq: a.seq,
        _pad: 0,
    };
    output_scratch(scratch_ref);
}

/// Loads the first iovec entry (for the resync check).
#[inline(always)]
fn first_iov(w: &mut Walk) -> bool {
    if w.iov_cnt == 0 {
        return false;
    }
    // SAFETY: bpf_probe_read_user checks the user pointer.
    let Ok(iov) = (unsafe { bpf_probe_read_user(w.iov_ptr as *const [u64; 2]) }) else {
        return false;
    };
    w.cur_base = iov[0];
    w.cur_len = iov[1];
    w.iov_next = 1;
    true
}

/// The first frame header's worth of bytes at `ptr`.
#[inline(always)]
fn read_head(ptr: u64, len: u64) -> Option<[u8; 9]> {
    if len < HDR as u64 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the user pointer.
    unsafe { bpf_probe_read_user(ptr as *const [u8; 9]) }.ok()
}

/// Is this a frame header the agent would accept too (known type, its
/// flags, its stream rule, a sane length)?
#[inline(always)]
fn plausible(h: &[u8; 9]) -> bool {
    let flen = (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2]);
    let stream = (u32::from(h[5] & 0x7f) << 24)
        | (u32::from(h[6]) << 16)
        | (u32::from(h[7]) << 8)
        | u32::from(h[8]);
    match h[3] {
        0 => stream != 0 && h[4] & !0x09 == 0 && flen <= 16_384,
        1 => stream != 0 && h[4] & !0x2d == 0 && flen > 0 && flen <= 16_384,
        3 => stream != 0 && flen == 4,
        4 => stream == 0 && flen % 6 == 0 && h[4] & !1 == 0,
        6 => stream == 0 && flen == 8,
        7 => stream == 0 && flen >= 8,
        8 => flen == 4,
        _ => false,
    }
}

/// Appends `n` bytes from user `src` (at call position `w.pos`) to the
/// event, in the open segment if it is contiguous, else a new one.
#[inline(always)]
fn emit(w: &mut Walk, scratch: &mut DataScratch, src: u64, n: u32, frame_start: bool) {
    let contiguous = w.seg_at != NO_SEG && w.seg_end == w.pos && !frame_start;
    let need_hdr = if contiguous { 0 } else { SEG as u32 };
    if w.out + need_hdr >= w.cap {
        w.not_copied += u64::from(n);
        return;
    }
    let room = w.cap - w.out - need_hdr;
    let n_copy = if n > room { room } else { n };
    if n_copy < n {
        w.not_copied += u64::from(n - n_copy);
    }
    if n_copy == 0 {
        return;
    }
    if !contiguous {
        let at = (w.out as usize) & (MAX_CAPTURE - 1);
        let hdr = SegmentHeader {
            offset: w.pos as u32,
            len: 0,
            flags: if frame_start { SEG_FRAME_START } else { 0 },
        };
        // SAFETY: `at + 8` is inside the 2 * MAX_CAPTURE buffer.
        unsafe {
            core::ptr::write_unaligned(
                scratch.data.as_mut_ptr().add(at).cast::<SegmentHeader>(),
                hdr,
            )
        };
        w.seg_at = w.out;
        w.out += SEG as u32;
    }
    if !copy_user(scratch, w.out as usize, n_copy as usize, src) {
        w.not_copied += u64::from(n_copy);
        return;
    }
    let len = n_copy as usize;
    w.out += n_copy;
    let seg_len_at = (w.seg_at as usize + 4) & (MAX_CAPTURE - 1);
    // SAFETY: inside the buffer, as above.
    unsafe {
        let p = scratch.data.as_mut_ptr().add(seg_len_at).cast::<u16>();
        let old = core::ptr::read_unaligned(p);
        core::ptr::write_unaligned(p, old.wrapping_add(len as u16));
    }
    w.seg_end = w.pos + u64::from(n_copy);
}

/// `bpf_loop` callback: one step of the walk; 1 stops the loop.
#[inline(never)]
extern "C" fn step(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `WalkCtx` `walk_and_output` passed; what it
    // points to is ours for this run.
    let (w, scratch, d) = unsafe {
        let c = &*(ctx as *const WalkCtx);
        (&mut *c.w, &mut *c.scratch, &mut *c.dir)
    };
    if w.pos >= w.total {
        return 1;
    }
    if w.pos >= w.cur_start + w.cur_len {
        // Next iovec entry.
        if w.single != 0 || w.iov_next >= w.iov_cnt || w.iov_next >= H2_WALK_IOV {
            return 1;
        }
        let at = w.iov_ptr + w.iov_next * 16;
        // SAFETY: bpf_probe_read_user checks the user pointer.
        let Ok(iov) = (unsafe { bpf_probe_read_user(at as *const [u64; 2]) }) else {
            return 1;
        };
        w.cur_start += w.cur_len;
        w.cur_base = iov[0];
        w.cur_len = iov[1];
        w.iov_next += 1;
        return 0;
    }
    let in_cur = w.cur_start + w.cur_len - w.pos;
    let left = w.total - w.pos;
    let avail = if in_cur < left { in_cur } else { left };
    let src = w.cur_base + (w.pos - w.cur_start);
    if d.rem > 0 {
        let n = if u64::from(d.rem) < avail {
            d.rem
        } else {
            avail as u32
        };
        if d.skip != 0 {
            w.skipped += u64::from(n);
        } else {
            emit(w, scratch, src, n, false);
        }
        w.pos += u64::from(n);
        d.rem -= n;
        return 0;
    }
    // At a frame header (or inside one cut by the end of a call).
    let have = u32::from(d.have);
    if have == 0 && avail >= u64::from(HDR) {
        // SAFETY: bpf_probe_read_user checks the user pointer.
        let Ok(h) = (unsafe { bpf_probe_read_user(src as *const [u8; 9]) }) else {
            return 1;
        };
        d.hdr[..9].copy_from_slice(&h);
        emit(w, scratch, src, HDR, true);
        w.pos += u64::from(HDR);
        d.have = HDR as u8;
    } else {
        let Ok(b) = (unsafe { bpf_probe_read_user(src as *const u8) }) else {
            return 1;
        };
        d.hdr[(have as usize) & 15] = b;
        emit(w, scratch, src, 1, have == 0);
        w.pos += 1;
        d.have = d.have.wrapping_add(1);
    }
    if u32::from(d.have) >= HDR {
        d.have = 0;
        d.rem = (u32::from(d.hdr[0]) << 16) | (u32::from(d.hdr[1]) << 8) | u32::from(d.hdr[2]);
        // DATA payloads are gaps; everything else is copied.
        d.skip = (d.hdr[3] == 0) as u8;
    }
    0
}
