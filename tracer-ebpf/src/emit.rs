//! Everything the kernel programs write to the `EVENTS` ring buffer. A
//! full ring drops the event and counts it (`STAT_RINGBUF_DROPS`).
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_ktime_get_ns};
use tracer_common::{
    ConnCloseEvent, ConnOpenEvent, ConnState, DataHeader, DataScratch, GoTaskEvent, ProcEvent,
    TlsSeenEvent, TraceCtxEvent, EVENT_CONN_CLOSE, EVENT_CONN_OPEN, EVENT_DLOPEN, EVENT_EXEC,
    EVENT_TLS_SEEN, MAX_CAPTURE, STAT_RINGBUF_DROPS,
};

use crate::maps::{bump, EVENTS};

/// Ring-buffer flags for every event: never wake the agent. It drains the
/// ring on a short timer instead; a wakeup per event cost more than the
/// rest of the probe, and querying the fill level is another helper call.
const RB_FLAGS: u64 = aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64;

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

/// A goroutine context met a connection (see `probes::goroutines`).
#[inline(always)]
pub fn emit_go_task(ev: &GoTaskEvent) {
    if EVENTS.output::<GoTaskEvent>(ev, RB_FLAGS).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
}

/// A connection was classified as one the agent parses.
#[inline(always)]
pub fn emit_open(pid_tgid: u64, fd: u32, st: &ConnState) {
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

/// A parsed connection was closed (the agent can finish a
/// read-until-close response).
#[inline(always)]
pub fn emit_close(pid_tgid: u64, fd: u32, conn_id: u64) {
    let ev = ConnCloseEvent {
        kind: EVENT_CONN_CLOSE,
        _pad: [0; 3],
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        conn_id,
        ts: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<ConnCloseEvent>(&ev, RB_FLAGS).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
}

/// A socket of this process carried a TLS handshake that no TLS library
/// probe accounted for.
#[inline(always)]
pub fn emit_tls_seen(tgid: u32) {
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

/// A trace context chosen in the kernel (SERVER context or injection).
#[inline(always)]
pub fn output_ctx(ev: &TraceCtxEvent) {
    if EVENTS.output::<TraceCtxEvent>(ev, RB_FLAGS).is_err() {
        bump(STAT_RINGBUF_DROPS);
    }
}
