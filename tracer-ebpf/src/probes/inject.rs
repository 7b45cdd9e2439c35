//! Trace-context injection into outgoing HTTP/1 requests, without
//! `bpf_probe_write_user` (blocked under lockdown):
//! - `tracer_sock_ops` (cgroup `sock_ops`, `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`)
//!   puts every client TCP socket of the cgroup into the `SOCKS` sockhash;
//! - `tracer_inject` (`sk_msg` on that sockhash, run by `tcp_bpf_sendmsg`
//!   for each send) inserts `traceparent:` (and `tracestate:`) right after
//!   the request line with `bpf_msg_push_data`.
//!
//! Byte-exactness: a header is only ever inserted at the request line of a
//! message that starts at a request boundary and holds the whole head. The
//! body is stepped over with `bpf_msg_apply_bytes` (the verdict covers the
//! head and `Content-Length` bytes, even across later sends, so the program
//! only runs again where the next request starts). Chunked bodies are
//! followed until a send ends with the last chunk. Anything uncertain turns
//! the socket off for good (counted); the verdict is always `SK_PASS`.
use aya_ebpf::{
    bindings::{
        sk_action, BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_msg_apply_bytes, bpf_msg_pull_data, bpf_probe_read_kernel},
    },
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use tracer_common::{
    pack_inject_ports, SockKey, TraceCtxEvent, CTX_LINKED, CTX_ROOT, EVENT_INJECTED, PROTO_HTTP1,
    SAMPLE_ALL, SAMPLE_ROOTS, SCAN_MAX, STAT_INJECTED, STAT_INJECT_FAILED, STAT_INJECT_LINKED,
    STAT_INJECT_SKIP_HAS_CONTEXT, STAT_INJECT_SKIP_UNSURE, TRACESTATE_MAX,
};

use super::context::{random_span_id, random_trace_id};
use crate::{
    classify::{classify, PEEK},
    emit::output_ctx,
    maps::{
        bump, config, SockState, INJECT_LINE_MAX, INJECT_SCRATCH, PID_FILTER, SOCKS, SOCK_STATE,
        THREAD_CTX,
    },
    scan::head::{
        content_length, get32, scan, set32, FRAMING_CHUNKED, FRAMING_LENGTH, FRAMING_NONE,
    },
};

/// At a request boundary: the next send starts a request.
pub const MODE_IDLE: u32 = 0;
/// Inside a chunked request body, until a send ends with the last chunk.
pub const MODE_CHUNKED: u32 = 1;
/// Not HTTP/1, a tunnel, or framing lost: never inspected again.
pub const MODE_OFF: u32 = 2;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `TCP_CLOSE` in `include/net/tcp_states.h`.
const TCP_CLOSE: u32 = 7;
/// `traceparent: 00-` + 32 + `-` + 16 + `-` + 2 + CRLF.
const TRACEPARENT_LINE: usize = 70;

/// Reads one field of a context (`sk_msg_md` through `ctx.msg`,
/// `bpf_sock_ops` through `ctx.ops`). Volatile, one field at a time: the
/// verifier only allows loads at a constant offset from the context
/// pointer itself, not through a pointer LLVM derived from it.
macro_rules! field {
    ($ptr:expr, $($field:tt)+) => {
        // SAFETY: a load of a field of this program's context.
        unsafe { core::ptr::read_volatile(&(*$ptr).$($field)+) }
    };
}

/// The [`SockKey`] of a socket from either context: `bpf_sock_ops` and
/// `sk_msg_md` name and encode these fields the same way.
macro_rules! sock_key {
    ($ptr:expr) => {{
        let family = field!($ptr, family);
        let mut key = SockKey {
            family,
            local_port: field!($ptr, local_port),
            remote_port: field!($ptr, remote_port),
            ..SockKey::default()
        };
        if family == AF_INET {
            key.local_ip[0] = field!($ptr, local_ip4);
            key.remote_ip[0] = field!($ptr, remote_ip4);
            Some(key)
        } else if family == AF_INET6 {
            for i in 0..4 {
                key.local_ip[i] = field!($ptr, local_ip6[i]);
                key.remote_ip[i] = field!($ptr, remote_ip6[i]);
            }
            Some(key)
        } else {
            None
        }
    }};
}

#[sock_ops]
pub fn tracer_sock_ops(ctx: SockOpsContext) -> u32 {
    on_sock_ops(&ctx);
    1
}

#[inline(always)]
fn on_sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if config().inject_context == 0 {
            return;
        }
        let Some(mut key) = ops_key(ctx) else {
            return;
        };
        // A new socket starts at a request boundary (and a reused 4-tuple
        // must not inherit the old socket's state).
        if SOCK_STATE.insert(key, SockState::default(), 0).is_err() {
            return;
        }
        // SAFETY: `ops` is this program's context, as the helper requires.
        let ops = unsafe { &mut *ctx.ops };
        if SOCKS.update(&mut key, ops, BPF_ANY as u64).is_ok() {
            // Ask for state changes so the state entry goes with the socket.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == TCP_CLOSE {
        if let Some(key) = ops_key(ctx) {
            let _ = SOCK_STATE.remove(key);
        }
    }
}

#[inline(always)]
fn ops_key(ctx: &SockOpsContext) -> Option<SockKey> {
    sock_key!(ctx.ops)
}

#[inline(always)]
fn msg_key(ctx: &SkMsgContext) -> Option<SockKey> {
    sock_key!(ctx.msg)
}

#[sk_msg]
pub fn tracer_inject(ctx: SkMsgContext) -> u32 {
    on_send(&ctx);
    // Never drop or redirect application data.
    sk_action::SK_PASS
}

#[inline(always)]
fn on_send(ctx: &SkMsgContext) {
    let cfg = config();
    if cfg.inject_context == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == cfg.self_tgid {
        return;
    }
    // SAFETY: presence check only.
    if cfg.filter_pids != 0 && unsafe { PID_FILTER.get(tgid) }.is_none() {
        return;
    }
    let Some(key) = msg_key(ctx) else {
        return;
    };
    let Some(state) = SOCK_STATE.get_ptr_mut(key) else {
        // State evicted: where requests start is no longer known.
        bump(STAT_INJECT_SKIP_UNSURE);
        return;
    };
    // SAFETY: map value; only this socket's sends (serialised by the
    // socket lock) touch it.
    let state = unsafe { &mut *state };
    match state.mode {
        MODE_IDLE => {}
        MODE_CHUNKED => {
            if ends_with_last_chunk(ctx) {
                state.mode = MODE_IDLE;
            }
            return;
        }
        _ => return,
    }
    // The head sampler's bound for the traces this sender starts (the
    // TraceIdRatioBased rule, as `context::head_sampled`), from the
    // configuration already on the stack: 6.1's verifier refused the
    // sk_msg program with a second configuration lookup in it.
    let mut root_bound = u64::MAX;
    if cfg.sample_mode == SAMPLE_ROOTS || cfg.sample_mode == SAMPLE_ALL {
        root_bound = (u64::from(cfg.sample_bound_hi) << 32) | u64::from(cfg.sample_bound_lo);
    }
    let cap = (u64::from(cfg.cap_bound_hi) << 32) | u64::from(cfg.cap_bound_lo);
    if cfg.cap_on != 0 && cap < root_bound {
        root_bound = cap;
    }
    if let Err(mode) = on_request_boundary(ctx, pid_tgid, root_bound) {
        state.mode = mode;
    } else {
        state.mode = MODE_IDLE;
    }
}

/// A send that should start a request. `Err(mode)` switches the socket to
/// `mode`; `Ok` keeps it at request boundaries.
#[inline(always)]
fn on_request_boundary(ctx: &SkMsgContext, pid_tgid: u64, root_bound: u64) -> Result<(), u32> {
    let size = ctx.size() as usize;
    let Some(sc) = INJECT_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: per-CPU value; sk_msg programs run with migration disabled.
    let sc = unsafe { &mut *sc };
    let n = if size > SCAN_MAX { SCAN_MAX } else { size };
    if n < 16 {
        // Too short to be a request head (or a head written piecemeal).
        return Err(MODE_OFF);
    }
    // SAFETY: the helper checks the range against the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, n as u32, 0) } != 0 {
        bump(STAT_INJECT_SKIP_UNSURE);
        return Err(MODE_OFF);
    }
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + n > data_end {
        bump(STAT_INJECT_SKIP_UNSURE);
        return Err(MODE_OFF);
    }
    let n = n & (2 * SCAN_MAX - 1);
    // SAFETY: `n` bytes of linear message data, copied into our scratch.
    let rc = unsafe {
        bpf_probe_read_kernel(
            sc.data.as_mut_ptr().cast(),
            n as u32,
            data as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return Err(MODE_OFF);
    }
    let mut head = [0u8; PEEK];
    head[..8].copy_from_slice(&sc.data[..8]);
    // Eight bytes tell an HTTP/1 request; the HTTP/2 checks need more.
    match classify(&head, 8, true) {
        Some(c) if c.is_request && c.proto == PROTO_HTTP1 => {}
        // Not HTTP/1 (TLS, HTTP/2, a database...): leave it alone.
        _ => return Err(MODE_OFF),
    }
    scan(&sc.data, n, &mut sc.scan);
    let s = &sc.scan;
    let line_end = get32(&s.line_end) as usize;
    let head_end = get32(&s.head_end) as usize;
    if line_end < 16 || head_end == 0 || !http1_version(&sc.data, line_end) {
        // The head does not fit the window or is split across sends.
        bump(STAT_INJECT_SKIP_UNSURE);
        return Err(MODE_OFF);
    }
    let tunnel = get32(&s.upgrade) != 0 || sc.data[..8].starts_with(b"CONNECT ");
    let framing = get32(&s.framing);
    let body = content_length(s);

    let pushed = if get32(&s.has_context) != 0 {
        // The application propagates context itself: no second header.
        bump(STAT_INJECT_SKIP_HAS_CONTEXT);
        0
    } else {
        inject(ctx, sc, pid_tgid, line_end, root_bound)
    };

    if tunnel {
        return Err(MODE_OFF);
    }
    match framing {
        FRAMING_NONE | FRAMING_LENGTH => {
            let total =
                head_end as u64 + pushed as u64 + if framing == FRAMING_LENGTH { body } else { 0 };
            if total > u32::MAX as u64 {
                return Err(MODE_OFF);
            }
            // The verdict covers this request (also its body in later
            // sends); the program runs again where the next one starts.
            // SAFETY: plain helper on our context.
            unsafe { bpf_msg_apply_bytes(ctx.msg, total as u32) };
            Ok(())
        }
        FRAMING_CHUNKED => {
            if ends_with_last_chunk(ctx) {
                Ok(())
            } else {
                Err(MODE_CHUNKED)
            }
        }
        _ => {
            bump(STAT_INJECT_SKIP_UNSURE);
            Err(MODE_OFF)
        }
    }
}

/// The request line (ending just before `line_end`) ends in ` HTTP/1.x\r\n`.
#[inline(always)]
fn http1_version(d: &[u8; crate::scan::head::SCAN_BUF], line_end: usize) -> bool {
    let at = (line_end - 11) & (2 * SCAN_MAX - 1);
    let v = &d[at..at + 11];
    v[0] == b' '
        && v[1..8] == *b"HTTP/1."
        && (v[8] == b'1' || v[8] == b'0')
        && v[9] == b'\r'
        && v[10] == b'\n'
}

/// Inserts the header lines after the request line; returns how many
/// bytes were inserted (0 when nothing was).
#[inline(always)]
fn inject(
    ctx: &SkMsgContext,
    sc: &mut crate::maps::InjectScratch,
    pid_tgid: u64,
    at: usize,
    root_bound: u64,
) -> usize {
    let mut ev = TraceCtxEvent {
        kind: EVENT_INJECTED,
        flags: 1,
        origin: CTX_ROOT,
        _pad: 0,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        seq: 0,
        conn_id: ports(ctx),
        trace_id: [0; 16],
        span_id: random_span_id(),
        parent_id: [0; 8],
    };
    let mut len = TRACEPARENT_LINE;
    match THREAD_CTX.get_ptr(pid_tgid) {
        // SAFETY: map value pointer from a successful lookup.
        Some(t) if unsafe { (*t).ambiguous } == 0 => {
            // SAFETY: as above; fields copied out.
            let t = unsafe { &*t };
            ev.origin = CTX_LINKED;
            ev.trace_id = t.trace_id;
            ev.parent_id = t.span_id;
            ev.flags = t.flags;
            let ts = t.tracestate_len as usize;
            if ts > 0 && ts <= TRACESTATE_MAX {
                sc.line[TRACEPARENT_LINE..TRACEPARENT_LINE + 12].copy_from_slice(b"tracestate: ");
                // One helper call rather than a loop whose every exit the
                // verifier would follow separately.
                // 1..=TRACESTATE_MAX in a form the verifier can follow
                // (LLVM would otherwise drop the bound it already "knows").
                let n = (core::hint::black_box(ts - 1) & (TRACESTATE_MAX - 1)) + 1;
                // SAFETY: `n` bytes fit both the source and the destination.
                let rc = unsafe {
                    bpf_probe_read_kernel(
                        sc.line.as_mut_ptr().add(TRACEPARENT_LINE + 12).cast(),
                        n as u32,
                        t.tracestate.as_ptr().cast(),
                    )
                };
                if rc == 0 {
                    // Masks kept through black_box, as above.
                    let end = core::hint::black_box(TRACEPARENT_LINE + 12 + n);
                    sc.line[end & (INJECT_LINE_MAX - 1)] = b'\r';
                    let end = core::hint::black_box(end + 1);
                    sc.line[end & (INJECT_LINE_MAX - 1)] = b'\n';
                    len = TRACEPARENT_LINE + 12 + n + 2;
                }
            }
        }
        // A request no SERVER span caused starts a trace: the head
        // sampler decides it here, before it leaves.
        _ => {
            ev.trace_id = random_trace_id();
            let mut low = [0u8; 8];
            low.copy_from_slice(&ev.trace_id[8..]);
            ev.flags = u8::from(u64::from_be_bytes(low) >> 1 < root_bound);
        }
    }
    write_traceparent(&mut sc.line, &ev);

    if ctx.push_data(at as u32, len as u32, 0).is_err() {
        bump(STAT_INJECT_FAILED);
        return 0;
    }
    set32(&mut sc.line_len, len as u32);
    if !write_pushed(ctx, sc, at) {
        // Never leave the room we made unfilled: take it out again.
        let _ = ctx.pop_data(at as u32, len as u32, 0);
        bump(STAT_INJECT_FAILED);
        return 0;
    }
    bump(STAT_INJECTED);
    if ev.origin == CTX_LINKED {
        bump(STAT_INJECT_LINKED);
    }
    output_ctx(&ev);
    len
}

/// The socket's ports (host order) packed as the agent unpacks them
/// ([`pack_inject_ports`]), so the agent can tell which connection an
/// injection belongs to.
#[inline(always)]
fn ports(ctx: &SkMsgContext) -> u64 {
    // `remote_port` is the big-endian port in the upper half (see
    // `sk_msg_convert_ctx_access`); `local_port` is in host order.
    let remote = u16::from_be((field!(ctx.msg, remote_port) >> 16) as u16);
    pack_inject_ports(field!(ctx.msg, local_port) as u16, remote)
}

#[inline(always)]
fn hex_digit(n: u8) -> u8 {
    if n < 10 {
        b'0' + n
    } else {
        b'a' + n - 10
    }
}

#[inline(always)]
fn write_hex(out: &mut [u8; INJECT_LINE_MAX], at: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() && i < 16 {
        out[at + 2 * i] = hex_digit(bytes[i] >> 4);
        out[at + 2 * i + 1] = hex_digit(bytes[i] & 0xf);
        i += 1;
    }
}

/// `traceparent: 00-<trace>-<span>-<flags>\r\n` into `out[..70]`.
#[inline(always)]
fn write_traceparent(out: &mut [u8; INJECT_LINE_MAX], ev: &TraceCtxEvent) {
    out[..16].copy_from_slice(b"traceparent: 00-");
    write_hex(out, 16, &ev.trace_id);
    out[48] = b'-';
    write_hex(out, 49, &ev.span_id);
    out[65] = b'-';
    write_hex(out, 66, &[ev.flags]);
    out[68] = b'\r';
    out[69] = b'\n';
}

/// Fills the `sc.line_len` bytes just pushed at `at` with `sc.line`. The
/// length and the outcome go through memory so the verifier's paths out
/// of the loop converge.
#[inline(always)]
fn write_pushed(ctx: &SkMsgContext, sc: &mut crate::maps::InjectScratch, at: usize) -> bool {
    let len = get32(&sc.line_len) as usize;
    // SAFETY: the helper checks the range against the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, at as u32, (at + len) as u32, 0) } != 0 {
        return false;
    }
    set32(&mut sc.write_failed, 0);
    let data = ctx.data();
    let data_end = ctx.data_end();
    for i in 0..INJECT_LINE_MAX {
        if i >= get32(&sc.line_len) as usize {
            break;
        }
        let p = data + i;
        if p + 1 > data_end {
            set32(&mut sc.write_failed, 1);
            break;
        }
        // SAFETY: `p` is inside the message data, checked just above.
        unsafe { *(p as *mut u8) = sc.line[i] };
    }
    get32(&sc.write_failed) == 0
}

/// The send ends with the last chunk of a chunked body (`0\r\n\r\n`, alone
/// or after the previous chunk's CRLF). A last chunk with extensions or
/// trailers is not recognised: the socket then stays off (safe).
#[inline(always)]
fn ends_with_last_chunk(ctx: &SkMsgContext) -> bool {
    let size = ctx.size();
    let (want, len): (&[u8; 7], u32) = if size == 5 {
        (b"..0\r\n\r\n", 5)
    } else if size >= 7 {
        (b"\r\n0\r\n\r\n", 7)
    } else {
        return false;
    };
    // SAFETY: the helper checks the range against the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, size - len, size, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + 7 > ctx.data_end() && len == 7 {
        return false;
    }
    if data + 5 > ctx.data_end() {
        return false;
    }
    let skip = (7 - len) as usize;
    for (i, want) in want.iter().enumerate().skip(skip) {
        let p = data + i - skip;
        if p + 1 > ctx.data_end() {
            return false;
        }
        // SAFETY: inside the message data, checked just above.
        if unsafe { *(p as *const u8) } != *want {
            return false;
        }
    }
    true
}
