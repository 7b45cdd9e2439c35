//! SERVER-side trace context, chosen in the kernel when a request is read
//! so that CLIENT requests the same thread writes moments later can carry
//! it (the agent learns of the request milliseconds later: too late).
//!
//! `tracer_server_ctx` is tail-called by the `sys_exit_*` capture hook
//! (see `capture.rs`) when a server connection's read starts a request;
//! the payload is already in this CPU's `SCRATCH` slot (see `data.rs`).
//! `tracer_tls_server_ctx` is its twin for the TLS return probe.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id, generated::bpf_loop},
    macros::{tracepoint, uretprobe},
    maps::ProgramArray,
    programs::{RetProbeContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{
    DataScratch, TraceCtxEvent, CTX_FROM_TRACEPARENT, CTX_NEW_TRACE, EVENT_SERVER_CTX,
    MAX_KERNEL_PROPAGATORS, PROPAGATOR_B3, PROPAGATOR_END, PROPAGATOR_JAEGER,
    PROPAGATOR_TRACECONTEXT, SAMPLE_ALL, SAMPLE_ROOTS, STAT_SERVER_CTX, STAT_THREAD_LINK_OFF,
    STAT_TRACESTATE_TOO_LONG, TAIL_SERVER_CTX, TRACESTATE_MAX,
};

use super::{
    data::{starts_request, DataTarget},
    goroutines::keep_server_ctx,
};
use crate::{
    emit::{output_ctx, output_scratch},
    maps::{
        bump, config, config_ref, thread_link_off, ThreadCtx, CTX_BUILD, SCRATCH, SERVER_SCAN,
        THREAD_CTX,
    },
    scan::{
        head::{get32, parse_traceparent, scan, set32, skip_ows, HeadScan},
        propagation::{parse_b3_multi, parse_b3_single, parse_jaeger, Ids},
    },
};

/// The head sampler's decision for ids the kernel chooses, so that what
/// goes on the wire (the injected `traceparent`) is what the agent
/// exports: the TraceIdRatioBased rule of `Config::sample_*`, the same
/// test as the agent's `sampling::sampler::ratio_keeps`. `from_header`:
/// the flags came with the request (the parent-based samplers follow
/// them).
#[inline(always)]
pub fn head_sampled(trace_id: &[u8; 16], flags: u8, from_header: bool) -> u8 {
    let Some(cfg) = config_ref() else {
        return flags;
    };
    if cfg.sample_mode != SAMPLE_ROOTS && cfg.sample_mode != SAMPLE_ALL && cfg.cap_on == 0 {
        return flags;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let value = u64::from_be_bytes(low) >> 1;
    let bound = (u64::from(cfg.sample_bound_hi) << 32) | u64::from(cfg.sample_bound_lo);
    let cap = (u64::from(cfg.cap_bound_hi) << 32) | u64::from(cfg.cap_bound_lo);
    let capped = cfg.cap_on == 0 || value < cap;
    let keep = match cfg.sample_mode {
        // Parent-based: an incoming flag is followed (under the cap).
        SAMPLE_ROOTS if from_header => flags & 1 == 1 && capped,
        SAMPLE_ROOTS | SAMPLE_ALL => value < bound && capped,
        // No sampler of its own: the flag as found, under the cap.
        _ => flags & 1 == 1 && capped,
    };
    (flags & !1) | u8::from(keep)
}

/// Random non-zero ids (`bpf_get_prandom_u32`).
#[inline(always)]
pub fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    for i in 0..4 {
        let r = unsafe { bpf_get_prandom_u32() }.to_ne_bytes();
        id[4 * i] = r[0];
        id[4 * i + 1] = r[1];
        id[4 * i + 2] = r[2];
        id[4 * i + 3] = r[3];
    }
    id[15] |= 1; // never all zero
    id
}

#[inline(always)]
pub fn random_span_id() -> [u8; 8] {
    let a = unsafe { bpf_get_prandom_u32() }.to_ne_bytes();
    let b = unsafe { bpf_get_prandom_u32() }.to_ne_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3] | 1]
}

#[tracepoint]
pub fn tracer_server_ctx(_ctx: TracePointContext) -> u32 {
    server_ctx_and_output();
    0
}

/// The same for TLS plaintext: tail-called from the TLS return probe,
/// whose program type (kprobe) cannot tail-call a tracepoint program.
#[uretprobe]
pub fn tracer_tls_server_ctx(_ctx: RetProbeContext) -> u32 {
    server_ctx_and_output();
    0
}

#[inline(always)]
fn server_ctx_and_output() {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: this CPU's slot, filled by the capture hook that tail-called
    // us on this CPU; programs do not migrate while running.
    let scratch = unsafe { &mut *scratch };
    choose_server_ctx(scratch);
    // The context event must precede the data event it refers to.
    output_scratch(scratch);
}

#[inline(always)]
fn choose_server_ctx(scratch: &mut DataScratch) {
    let Some(s) = SERVER_SCAN.get_ptr_mut(0) else {
        return;
    };
    let Some(build) = CTX_BUILD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU values, exclusively ours for this run.
    let (s, build) = unsafe { (&mut *s, &mut *build) };
    let hdr = scratch.header;
    scan(&scratch.data, hdr.captured_len as usize, s);
    let n = get32(&s.n) as usize;

    let pid_tgid = (u64::from(hdr.tgid) << 32) | u64::from(hdr.tid);
    let tp_at = get32(&s.traceparent) as usize;
    let ts_at = get32(&s.tracestate) as usize;
    // The ids are decoded straight into the map value (see `decode_hex`),
    // from the first valid header in the agent's propagator order. One
    // `bpf_loop` run per propagator: inline, every parser was verified
    // once per position in the order, and 6.12's verifier ran out of its
    // 1M-instruction budget on the copies.
    set32(&mut s.found, FOUND_NONE);
    build.flags = 1;
    let mut pctx = PropagatorCtx {
        data: &scratch.data,
        s: s as *mut HeadScan,
        build: build as *mut ThreadCtx,
        n: n as u32,
        order: config().propagators,
        traceparent: tp_at as u32,
    };
    // SAFETY: the callback only touches what `pctx` points to, all of it
    // ours for this run (per-CPU values).
    unsafe {
        bpf_loop(
            MAX_KERNEL_PROPAGATORS as u32,
            try_propagator as *mut core::ffi::c_void,
            (&mut pctx as *mut PropagatorCtx).cast(),
            0,
        )
    };
    // SAFETY: as above; the callback is done with them.
    let (s, build) = unsafe { (&mut *pctx.s, &mut *pctx.build) };
    let found = get32(&s.found);
    let from_header = found != FOUND_NONE;
    let from_w3c = found == FOUND_W3C;
    let mut ev = TraceCtxEvent {
        kind: EVENT_SERVER_CTX,
        flags: 1,
        origin: CTX_NEW_TRACE,
        _pad: 0,
        tgid: hdr.tgid,
        tid: hdr.tid,
        seq: hdr.seq,
        conn_id: hdr.conn_id,
        trace_id: [0; 16],
        span_id: random_span_id(),
        parent_id: [0; 8],
    };
    if from_header {
        ev.origin = CTX_FROM_TRACEPARENT;
        ev.trace_id = build.trace_id;
        ev.parent_id = build.parent_id;
        ev.flags = build.flags;
    } else {
        ev.trace_id = random_trace_id();
    }
    ev.flags = head_sampled(&ev.trace_id, ev.flags, from_header);

    // Another request still in progress on this thread (from another
    // connection) makes the thread ambiguous until it answers this one.
    // SAFETY: fields are copied out immediately.
    let ambiguous = match unsafe { THREAD_CTX.get(pid_tgid) } {
        Some(prev) => prev.ambiguous != 0 || prev.conn_id != hdr.conn_id,
        None => false,
    };
    build.conn_id = hdr.conn_id;
    build.trace_id = ev.trace_id;
    build.span_id = ev.span_id;
    build.flags = ev.flags;
    build.ambiguous = u8::from(ambiguous);
    build.tracestate_len = 0;
    // tracestate goes with traceparent only.
    if from_w3c && ts_at != 0 {
        copy_tracestate(&scratch.data, ts_at, s, build);
    }
    // A process whose threads are not tasks (Go), or not yet classified:
    // the SERVER span keeps the kernel's ids, but no CLIENT request is
    // linked to it by thread. A wrong parent is worse than none.
    if thread_link_off(hdr.tgid) {
        bump(STAT_THREAD_LINK_OFF);
        // Go: the context follows goroutines instead.
        keep_server_ctx(hdr.tgid, hdr.fd, build);
        output_ctx(&ev);
        return;
    }
    // By reference: the value is ~300 bytes, more than the stack should hold.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a copy of the value would go on the 512-byte stack"
    )]
    let stored = THREAD_CTX.insert(pid_tgid, &*build, 0).is_ok();
    if stored {
        bump(STAT_SERVER_CTX);
    }
    output_ctx(&ev);
}

/// `HeadScan::found`: which propagator gave the SERVER context.
const FOUND_NONE: u32 = 0;
const FOUND_OTHER: u32 = 1;
/// A W3C `traceparent` (its `tracestate` goes along).
const FOUND_W3C: u32 = 2;

/// What `try_propagator` works on.
#[repr(C)]
struct PropagatorCtx {
    data: *const [u8; 2 * tracer_common::MAX_CAPTURE],
    s: *mut HeadScan,
    build: *mut ThreadCtx,
    /// Bytes scanned.
    n: u32,
    /// `Config::propagators`.
    order: u32,
    /// Value offset of `traceparent` (0: none).
    traceparent: u32,
}

/// `bpf_loop` callback: tries the `i`-th propagator of the order; on a
/// valid header its ids are in `build` and `HeadScan::found` says which,
/// and the loop stops.
#[inline(never)]
extern "C" fn try_propagator(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `PropagatorCtx` `choose_server_ctx` passed.
    let (c, d, s, build) = unsafe {
        let c = &*(ctx as *const PropagatorCtx);
        (c, &*c.data, &mut *c.s, &mut *c.build)
    };
    let i = (i as u32) & (MAX_KERNEL_PROPAGATORS as u32 - 1);
    let code = (c.order >> (4 * i)) & 0xf;
    if code == PROPAGATOR_END {
        return 1;
    }
    let n = c.n as usize;
    let mut ids = Ids {
        trace_id: &mut build.trace_id,
        span_id: &mut build.parent_id,
        flags: core::array::from_mut(&mut build.flags),
    };
    let found = match code {
        PROPAGATOR_TRACECONTEXT => {
            let at = c.traceparent as usize;
            let ok = at != 0 && parse_traceparent(d, at, n, ids.trace_id, ids.span_id, ids.flags);
            if ok {
                FOUND_W3C
            } else {
                FOUND_NONE
            }
        }
        PROPAGATOR_B3 => {
            let single = get32(&s.b3) as usize;
            let ok = if single != 0 {
                parse_b3_single(d, single, n, s, &mut ids)
            } else {
                parse_b3_multi(d, n, s, &mut ids)
            };
            if ok {
                FOUND_OTHER
            } else {
                FOUND_NONE
            }
        }
        PROPAGATOR_JAEGER => {
            let uber = get32(&s.uber) as usize;
            if uber != 0 && parse_jaeger(d, uber, n, s, &mut ids) {
                FOUND_OTHER
            } else {
                FOUND_NONE
            }
        }
        _ => FOUND_NONE,
    };
    if found == FOUND_NONE {
        return 0;
    }
    set32(&mut s.found, found);
    1
}

/// Copies a `tracestate` value (up to its `\r`) into the thread context;
/// one longer than [`TRACESTATE_MAX`] is not carried at all (a cut list
/// could change its meaning).
#[inline(always)]
fn copy_tracestate(
    d: &[u8; 2 * tracer_common::MAX_CAPTURE],
    at: usize,
    s: &HeadScan,
    out: &mut ThreadCtx,
) {
    let v = skip_ows(d, at) & (2 * tracer_common::SCAN_MAX - 1);
    // The length goes through memory, marked with a high bit when the end
    // was found, so the verifier's states after the loop converge.
    const FOUND: u32 = 1 << 31;
    set32(&mut out.tracestate_len, 0);
    for i in 0..TRACESTATE_MAX {
        let at = v + i;
        if at >= get32(&s.n) as usize {
            break;
        }
        let b = d[at];
        if b == b'\r' {
            set32(&mut out.tracestate_len, FOUND | i as u32);
            break;
        }
        out.tracestate[i] = b;
    }
    let len = get32(&out.tracestate_len);
    if len & FOUND == 0 {
        bump(STAT_TRACESTATE_TOO_LONG);
        set32(&mut out.tracestate_len, 0);
        return;
    }
    set32(&mut out.tracestate_len, len & !FOUND);
}

/// With injection on, a SERVER connection's data updates its thread's
/// SERVER context: an answer ends it, a request start chooses it (through
/// the tail call in `tails`, whose program also sends the data event; the
/// caller sends it when the call fails or is not made).
#[inline(always)]
pub fn server_context<C: EbpfContext>(
    ctx: &C,
    tails: &ProgramArray,
    pid_tgid: u64,
    target: &DataTarget,
    scratch: &DataScratch,
) {
    if config().inject_context == 0 || !target.server {
        return;
    }
    if !target.ingress {
        server_done(pid_tgid, target.conn_id);
    } else if starts_request(scratch) {
        // SAFETY: tail call with our own context; returns only on failure.
        unsafe { tails.tail_call(ctx, TAIL_SERVER_CTX) };
    }
}

/// The thread answered (or closed) connection `conn_id`: it is no longer
/// serving that request.
#[inline(always)]
pub fn server_done(pid_tgid: u64, conn_id: u64) {
    // SAFETY: the field is copied out immediately.
    let matches = match unsafe { THREAD_CTX.get(pid_tgid) } {
        Some(c) => c.conn_id == conn_id,
        None => false,
    };
    if matches {
        let _ = THREAD_CTX.remove(pid_tgid);
    }
}
