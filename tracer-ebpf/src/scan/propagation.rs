//! B3 (single and multi header) and Jaeger `uber-trace-id` in the kernel,
//! with the agent's rules (`tracer-agent/src/propagation/`):
//! ids are 1..=32 (trace) or 1..=16 (span) hex digits of either case,
//! right-aligned, never all zero; a B3 span id is exactly 16 digits. The
//! SERVER context follows the same `--propagators` order as the agent, so
//! injected requests continue the trace the SERVER span continues.
//!
//! Outputs go to map memory and lengths through `HeadScan::digits`, as in
//! `head.rs`, so the verifier's paths converge.
use aya_ebpf::helpers::generated::bpf_loop;

use super::head::{get32, set32, skip_ows, HeadScan, OFFSET_MASK};

#[inline(always)]
fn hex_any(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[inline(always)]
fn write(out: &mut [u8], i: usize, v: u8) {
    if i < out.len() {
        // SAFETY: in bounds (checked).
        unsafe { core::ptr::write_volatile(out.as_mut_ptr().add(i), v) };
    }
}

#[inline(always)]
fn read(out: &[u8], i: usize) -> u8 {
    if i < out.len() {
        // SAFETY: in bounds (checked).
        unsafe { core::ptr::read_volatile(out.as_ptr().add(i)) }
    } else {
        0
    }
}

/// Decodes the hex digits at `at` (at most `2 * out.len()`, at most 32)
/// right-aligned into `out`. Returns how many digits there were, or `None`
/// for none, too many, or an all-zero id.
#[inline(always)]
pub fn decode_var_hex<const B: usize>(
    d: &[u8; B],
    at: usize,
    out: &mut [u8],
    s: &mut HeadScan,
) -> Option<usize> {
    let at = at & OFFSET_MASK;
    let max = 2 * out.len();
    // Count the digits with `bpf_loop`: its callback is verified once,
    // where an inline loop with an exit per digit multiplied the paths of
    // everything after it.
    let mut ctx = DigitCtx {
        d: d.as_ptr(),
        at: at as u32,
        max: max as u32,
        s: s as *mut HeadScan,
    };
    set32(&mut s.digits, 0);
    // SAFETY: the callback reads `d` below `at + 33` (within `SCAN_BUF`)
    // and writes `s.digits`.
    unsafe {
        bpf_loop(
            33,
            count_digit as *mut core::ffi::c_void,
            (&mut ctx as *mut DigitCtx).cast(),
            0,
        )
    };
    let n = get32(&s.digits) as usize & 63;
    if n == 0 || n > max {
        return None;
    }
    // The padding goes through memory too: comparing it with the loop
    // counter in a register would narrow it differently on every path.
    set32(&mut s.digits, (max - n) as u32);
    // One callback run per output digit. As an inline loop, the verifier
    // walked all 32 iterations with both sides of every branch, at each of
    // the places this is inlined into: 6.12's verifier gave up at its
    // 1M-instruction limit. A callback is checked on its own, for any
    // index.
    let mut ctx = NibbleCtx {
        d: d.as_ptr(),
        at: at as u32,
        max: max as u32,
        out: out.as_mut_ptr(),
        out_len: out.len() as u32,
        s: s as *mut HeadScan,
    };
    // SAFETY: the callback reads `d` below `at + 32` (within `SCAN_BUF`),
    // writes `out` within `out_len` and reads `s.digits`.
    unsafe {
        bpf_loop(
            32,
            place_nibble as *mut core::ffi::c_void,
            (&mut ctx as *mut NibbleCtx).cast(),
            0,
        )
    };
    let mut any = 0u8;
    for k in 0..16 {
        any |= read(out, k);
    }
    (any != 0).then_some(max - (get32(&s.digits) as usize & 31))
}

/// What `count_digit` works on.
#[repr(C)]
struct DigitCtx {
    d: *const u8,
    at: u32,
    max: u32,
    s: *mut HeadScan,
}

/// `bpf_loop` callback: stops at the first byte that is not a hex digit
/// and records how many came before it (`TOO_MANY` past `max`).
#[inline(never)]
extern "C" fn count_digit(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `DigitCtx` `decode_var_hex` passed; its buffer
    // holds `SCAN_BUF` bytes and `at + i` stays below `2 * SCAN_MAX + 64`.
    let (d, at, max, s) = unsafe {
        let c = &*(ctx as *const DigitCtx);
        (c.d, c.at as usize & OFFSET_MASK, c.max as usize, &mut *c.s)
    };
    let i = (i as usize) & 63;
    // SAFETY: see above.
    let c = unsafe { *d.add(at + i) };
    if hex_any(c).is_none() {
        set32(&mut s.digits, i as u32);
        return 1;
    }
    if i >= max {
        set32(&mut s.digits, TOO_MANY);
        return 1;
    }
    0
}

/// What `place_nibble` works on.
#[repr(C)]
struct NibbleCtx {
    d: *const u8,
    at: u32,
    max: u32,
    out: *mut u8,
    out_len: u32,
    s: *mut HeadScan,
}

/// `bpf_loop` callback: output digit `j` of `max` (right-aligned: the
/// first `HeadScan::digits` of them are zero padding) goes into its
/// nibble of `out`. Returns 1 past the last digit.
#[inline(never)]
extern "C" fn place_nibble(j: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `NibbleCtx` `decode_var_hex` passed; see there.
    let (d, at, max, s) = unsafe {
        let c = &*(ctx as *const NibbleCtx);
        (c.d, c.at as usize & OFFSET_MASK, c.max as usize, &*c.s)
    };
    // SAFETY: as above; `out` is `out_len` bytes long.
    let out = unsafe {
        let c = &*(ctx as *const NibbleCtx);
        core::slice::from_raw_parts_mut(c.out, (c.out_len as usize) & 31)
    };
    let j = (j as usize) & 31;
    if j >= max {
        return 1;
    }
    let pad = get32(&s.digits) as usize & 31;
    let nibble = if j < pad {
        0
    } else {
        // black_box: LLVM would fold `at - pad` into the base pointer,
        // which the verifier sees as possibly below the buffer.
        let idx = core::hint::black_box(j.wrapping_sub(pad)) & 31;
        // SAFETY: `at + idx` is below `OFFSET_MASK + 32`, within the
        // buffer (see `DigitCtx`).
        hex_any(unsafe { *d.add(at + idx) }).unwrap_or(0)
    };
    if j.is_multiple_of(2) {
        write(out, j / 2, nibble << 4);
    } else {
        write(out, j / 2, read(out, j / 2) | nibble);
    }
    0
}

/// `HeadScan::digits` when an id has more digits than it may.
const TOO_MANY: u32 = 0xff;

/// Ids read from one format.
pub struct Ids<'a> {
    pub trace_id: &'a mut [u8; 16],
    pub span_id: &'a mut [u8; 8],
    pub flags: &'a mut [u8; 1],
}

/// `{trace}{sep}{span}` (after optional whitespace), the start of both
/// the B3 single header and `uber-trace-id`: returns the offset just past
/// the span id and its digit count.
#[inline(always)]
fn trace_then_span<const B: usize>(
    d: &[u8; B],
    at: usize,
    sep: u8,
    s: &mut HeadScan,
    ids: &mut Ids<'_>,
) -> Option<(usize, usize)> {
    let at = skip_ows(d, at) & OFFSET_MASK;
    let t = decode_var_hex(d, at, &mut ids.trace_id[..], s)?;
    let at = (at + t) & OFFSET_MASK;
    if d[at] != sep {
        return None;
    }
    let sp = decode_var_hex(d, at + 1, &mut ids.span_id[..], s)?;
    Some(((at + 1 + sp) & OFFSET_MASK, sp))
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`; `n` bytes of `d` are valid.
#[inline(always)]
pub fn parse_b3_single<const B: usize>(
    d: &[u8; B],
    at: usize,
    n: usize,
    s: &mut HeadScan,
    ids: &mut Ids<'_>,
) -> bool {
    let Some((at, sp)) = trace_then_span(d, at, b'-', s, ids) else {
        return false;
    };
    if sp != 16 {
        return false;
    }
    let flags = match d[at] {
        // Deferred: follow the caller, which propagated ids.
        b'\r' | b' ' | b'\t' => 1,
        b'-' => {
            let end = d[at + 2];
            if !(end == b'\r' || end == b'-' || end == b' ' || end == b'\t') {
                return false;
            }
            match d[at + 1] {
                b'1' | b'd' => 1,
                b'0' => 0,
                _ => return false,
            }
        }
        _ => return false,
    };
    write(&mut ids.flags[..], 0, flags);
    at < n
}

/// `X-B3-TraceId`, `X-B3-SpanId` (16 digits), `X-B3-Sampled`, `X-B3-Flags`.
#[inline(always)]
pub fn parse_b3_multi<const B: usize>(
    d: &[u8; B],
    n: usize,
    s: &mut HeadScan,
    ids: &mut Ids<'_>,
) -> bool {
    let trace = get32(&s.x_b3_traceid) as usize;
    let span = get32(&s.x_b3_spanid) as usize;
    if trace == 0 || span == 0 {
        return false;
    }
    let trace = skip_ows(d, trace);
    if decode_var_hex(d, trace, &mut ids.trace_id[..], s).is_none() {
        return false;
    }
    let span = skip_ows(d, span);
    if decode_var_hex(d, span, &mut ids.span_id[..], s) != Some(16) {
        return false;
    }
    let debug = match get32(&s.x_b3_flags) as usize {
        0 => false,
        f => d[skip_ows(d, f) & OFFSET_MASK] == b'1',
    };
    let sampled = match get32(&s.x_b3_sampled) as usize {
        0 => 1,
        v => {
            let v = skip_ows(d, v) & OFFSET_MASK;
            match d[v] {
                b'1' => 1,
                b'0' => 0,
                b't' if d[v + 1..v + 4] == *b"rue" => 1,
                b'f' if d[v + 1..v + 5] == *b"alse" => 0,
                _ => return false,
            }
        }
    };
    write(&mut ids.flags[..], 0, u8::from(debug) | sampled);
    trace < n && span + 16 <= n
}

/// `uber-trace-id: {trace}:{span}:{parent}:{flags}` (flags in hex; bit 0
/// is "sampled").
#[inline(always)]
pub fn parse_jaeger<const B: usize>(
    d: &[u8; B],
    at: usize,
    n: usize,
    s: &mut HeadScan,
    ids: &mut Ids<'_>,
) -> bool {
    let Some((at, _)) = trace_then_span(d, at, b':', s, ids) else {
        return false;
    };
    if d[at] != b':' {
        return false;
    }
    // The parent span id: hex digits up to the next colon.
    let mut at = (at + 1) & OFFSET_MASK;
    set32(&mut s.digits, 0);
    for i in 0..17 {
        let c = d[at + i];
        if c == b':' {
            set32(&mut s.digits, i as u32 + 1);
            break;
        }
        if hex_any(c).is_none() {
            return false;
        }
    }
    let skip = get32(&s.digits) as usize & 31;
    if skip == 0 {
        return false;
    }
    at = (at + skip) & OFFSET_MASK;
    // Flags: one or two hex digits.
    let Some(hi) = hex_any(d[at]) else {
        return false;
    };
    let flags = match hex_any(d[at + 1]) {
        Some(lo) => (hi << 4) | lo,
        None => hi,
    };
    write(&mut ids.flags[..], 0, flags & 1);
    at < n
}
