//! Scanning an HTTP/1 request head in the kernel: where the request line
//! and the head end, which trace headers it carries, and how its body is
//! framed. Written for the verifier: two flat loops with constant bounds
//! (first the line breaks, then one check per line) and all state kept in
//! map memory, so the verifier's states converge instead of multiplying.
use aya_ebpf::helpers::generated::bpf_loop;
use tracer_common::SCAN_MAX;

/// Line breaks remembered per head; a head with more lines is not trusted.
pub const MAX_LINES: usize = 64;
/// Size a buffer handed to [`scan`] must have: offsets are masked with
/// `2 * SCAN_MAX - 1` and up to 64 bytes are read past an offset.
pub const SCAN_BUF: usize = 2 * SCAN_MAX + 64;
const MASK: usize = 2 * SCAN_MAX - 1;

/// No body.
pub const FRAMING_NONE: u32 = 0;
/// `Content-Length` body.
pub const FRAMING_LENGTH: u32 = 1;
/// `Transfer-Encoding: chunked`.
pub const FRAMING_CHUNKED: u32 = 2;
/// Conflicting or unknown framing: the end of the body cannot be found.
pub const FRAMING_UNKNOWN: u32 = 3;

/// What [`scan`] found. Offsets are into the scanned buffer; 0 means "not
/// found" for all of them (no header can start at offset 0).
#[repr(C)]
pub struct HeadScan {
    pub nl: [u32; MAX_LINES],
    pub nl_count: u32,
    /// Bytes scanned. Loop bounds are read from here, not from a register:
    /// comparing a register with the loop counter narrows its range at
    /// every exit, and each narrowed copy would be explored anew.
    pub n: u32,
    /// Just past the request line's `\n` (where a header can be inserted).
    pub line_end: u32,
    /// Just past the blank line that ends the head.
    pub head_end: u32,
    /// Value offsets of the first `traceparent` / `tracestate`.
    pub traceparent: u32,
    pub tracestate: u32,
    /// Value offsets of the first B3 (single and multi) and Jaeger headers.
    pub b3: u32,
    pub x_b3_traceid: u32,
    pub x_b3_spanid: u32,
    pub x_b3_sampled: u32,
    pub x_b3_flags: u32,
    pub uber: u32,
    /// Digits counted by `propagation::decode_var_hex` (in memory, like
    /// the rest).
    pub digits: u32,
    /// Any trace header (W3C, B3 single or multi, Jaeger).
    pub has_context: u32,
    pub framing: u32,
    /// An `Upgrade` header: what follows the response may not be HTTP.
    pub upgrade: u32,
    /// Which propagator gave the SERVER context (set by its reader).
    pub found: u32,
    pub content_length: u64,
}

// Every field of `HeadScan` is read and written through these: LLVM would
// otherwise keep them in registers across the loops, and the verifier
// would then see a different state for every byte position it explores
// (it blew the 1M-instruction limit that way). In memory, its states at
// each loop head are equal and get pruned.
#[inline(always)]
pub fn get32(p: &u32) -> u32 {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(p) }
}

#[inline(always)]
pub fn set32(p: &mut u32, v: u32) {
    // SAFETY: a valid reference.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Eight bytes at `at`, little-endian, read a byte at a time (no branch).
#[inline(always)]
fn word<const N: usize>(d: &[u8; N], at: usize) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < 8 {
        w |= u64::from(d[at + i]) << (8 * i);
        i += 1;
    }
    w
}

/// Case-insensitive match of a header name (with its colon) at `at`;
/// `pat` is lower case, at most 24 bytes. Compared eight bytes at a time
/// with no branch per byte: every data-dependent branch adds verifier
/// paths, and this runs for every line of every head. `b | 0x20 == l`
/// holds exactly for `l` and its upper case when `l` is a letter, and the
/// pattern (a constant) says which bytes are letters.
#[inline(always)]
fn name_is<const N: usize>(d: &[u8; N], at: usize, pat: &[u8]) -> bool {
    let at = at & MASK;
    let mut ok = true;
    let mut chunk = 0;
    while chunk * 8 < pat.len() && chunk < 3 {
        let mut want = 0u64;
        let mut fold = 0u64;
        let mut keep = 0u64;
        let mut i = 0;
        while i < 8 && chunk * 8 + i < pat.len() {
            let p = pat[chunk * 8 + i];
            want |= u64::from(p) << (8 * i);
            if p.is_ascii_lowercase() {
                fold |= 0x20 << (8 * i);
            }
            keep |= 0xff << (8 * i);
            i += 1;
        }
        let w = word(d, at + chunk * 8);
        ok &= ((w & keep) | fold) == want;
        chunk += 1;
    }
    ok
}

/// Offsets into a scanned buffer are masked with this.
pub const OFFSET_MASK: usize = MASK;

/// Skips optional whitespace (at most 8 bytes of it).
#[inline(always)]
pub fn skip_ows<const N: usize>(d: &[u8; N], at: usize) -> usize {
    let mut at = at & MASK;
    let mut i = 0;
    while i < 8 {
        let b = d[at];
        if b != b' ' && b != b'\t' {
            break;
        }
        at = (at + 1) & MASK;
        i += 1;
    }
    at
}

/// `Content-Length` value: digits up to `\r` (trailing whitespace allowed).
#[inline(always)]
fn parse_length<const N: usize>(d: &[u8; N], at: usize) -> Option<u64> {
    let at = skip_ows(d, at);
    let mut v: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < 12 {
        let b = d[(at & MASK) + i];
        if b.is_ascii_digit() {
            v = v * 10 + u64::from(b - b'0');
            digits += 1;
        } else if b == b'\r' || b == b' ' || b == b'\t' {
            break;
        } else {
            return None;
        }
        i += 1;
    }
    if digits == 0 || digits > 11 {
        return None;
    }
    Some(v)
}

/// Scans the first `n` bytes of `d` (at most [`SCAN_MAX`]).
#[inline(always)]
pub fn scan<const N: usize>(d: &[u8; N], n: usize, s: &mut HeadScan) {
    const { assert!(N >= SCAN_BUF) };
    set32(&mut s.nl_count, 0);
    set32(&mut s.line_end, 0);
    set32(&mut s.head_end, 0);
    set32(&mut s.traceparent, 0);
    set32(&mut s.tracestate, 0);
    set32(&mut s.b3, 0);
    set32(&mut s.x_b3_traceid, 0);
    set32(&mut s.x_b3_spanid, 0);
    set32(&mut s.x_b3_sampled, 0);
    set32(&mut s.x_b3_flags, 0);
    set32(&mut s.uber, 0);
    set32(&mut s.has_context, 0);
    set32(&mut s.framing, FRAMING_NONE);
    set32(&mut s.upgrade, 0);
    set_len(s, 0);
    let n = if n > SCAN_MAX { SCAN_MAX } else { n };
    set32(&mut s.n, n as u32);
    // One callback run per byte through `bpf_loop` (kernel >= 5.17): the
    // verifier checks the callback once for any index instead of walking
    // 1024 iterations with every branch in each.
    let mut ctx = NewlineCtx {
        d: d.as_ptr(),
        s: s as *mut HeadScan,
    };
    // SAFETY: the callback only reads `d` below `SCAN_MAX` and writes `s`.
    unsafe {
        bpf_loop(
            SCAN_MAX as u32,
            find_newline as *mut core::ffi::c_void,
            (&mut ctx as *mut NewlineCtx).cast(),
            0,
        )
    };
    let count = get32(&s.nl_count) as usize;
    if count == 0 {
        return;
    }
    let first = get32(&s.nl[0]) as usize & MASK;
    // A request line ends with CRLF.
    if first == 0 || d[opaque(first - 1) & MASK] != b'\r' {
        return;
    }
    set32(&mut s.line_end, first as u32 + 1);
    // One callback run per header line, through `bpf_loop` for the same
    // reason as above: checked once, not once per line.
    let mut ctx = NewlineCtx {
        d: d.as_ptr(),
        s: s as *mut HeadScan,
    };
    // SAFETY: the callback reads `d` within `SCAN_BUF` and writes `s`.
    unsafe {
        bpf_loop(
            MAX_LINES as u32,
            check_line::<N> as *mut core::ffi::c_void,
            (&mut ctx as *mut NewlineCtx).cast(),
            0,
        )
    };
}

/// `bpf_loop` callback: header line `k` (1-based; line 0 is the request
/// line). Returns 1 at the blank line that ends the head, or past the last
/// line found.
#[inline(never)]
extern "C" fn check_line<const N: usize>(k: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `NewlineCtx` that `scan` passed; its buffer is a
    // `[u8; N]`.
    let (d, s) = unsafe {
        let c = &*(ctx as *const NewlineCtx);
        (&*(c.d as *const [u8; N]), &mut *c.s)
    };
    let k = (k as usize) & (MAX_LINES - 1);
    if k == 0 {
        return 0;
    }
    if k >= get32(&s.nl_count) as usize {
        return 1;
    }
    let start = (get32(&s.nl[opaque(k - 1) & (MAX_LINES - 1)]) as usize + 1) & MASK;
    let end = get32(&s.nl[k]) as usize & MASK;
    if end == start + 1 && d[start] == b'\r' {
        set32(&mut s.head_end, end as u32 + 1);
        return 1;
    }
    check_header(d, start, s);
    0
}

/// `v` as a value LLVM knows nothing about, so a mask applied to it stays
/// in the program. Without it, LLVM folds `nl[(k - 1) & 63]` (knowing
/// `k != 0`) into a load at offset -4 from `nl[k]`, which only verifiers
/// that narrow a range from `k != 0` accept (6.1's rejects it: "R4 min
/// value is outside of the allowed memory range").
#[inline(always)]
fn opaque(v: usize) -> usize {
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&v) }
}

/// What `find_newline` works on.
#[repr(C)]
struct NewlineCtx {
    d: *const u8,
    s: *mut HeadScan,
}

/// `bpf_loop` callback: records the offset of byte `i` if it is a line
/// feed. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn find_newline(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `NewlineCtx` that `scan` passed, whose buffer
    // holds at least `SCAN_BUF` bytes and `i` is masked below `SCAN_MAX`.
    let (d, s) = unsafe {
        let c = &*(ctx as *const NewlineCtx);
        (c.d, &mut *c.s)
    };
    let i = (i as usize) & (SCAN_MAX - 1);
    if i >= get32(&s.n) as usize {
        return 1;
    }
    // SAFETY: see above.
    if unsafe { *d.add(i) } != b'\n' {
        return 0;
    }
    let c = get32(&s.nl_count) as usize;
    if c >= MAX_LINES {
        return 1;
    }
    set32(&mut s.nl[c & (MAX_LINES - 1)], i as u32);
    set32(&mut s.nl_count, c as u32 + 1);
    0
}

/// Records the offset of a header's value unless one was recorded (the
/// agent also reads the first of repeated headers).
#[inline(always)]
fn first(field: &mut u32, at: usize) {
    if get32(field) == 0 {
        set32(field, at as u32);
    }
}

#[inline(always)]
fn set_len(s: &mut HeadScan, v: u64) {
    // SAFETY: a valid reference (see `get32`).
    unsafe { core::ptr::write_volatile(&mut s.content_length, v) }
}

#[inline(always)]
pub fn content_length(s: &HeadScan) -> u64 {
    // SAFETY: a valid reference (see `get32`).
    unsafe { core::ptr::read_volatile(&s.content_length) }
}

#[inline(always)]
fn check_header<const N: usize>(d: &[u8; N], start: usize, s: &mut HeadScan) {
    // `| 0x20` folds upper-case first letters onto the arms below.
    match d[start & MASK] | 0x20 {
        b't' => {
            if name_is(d, start, b"traceparent:") {
                set32(&mut s.has_context, 1);
                if get32(&s.traceparent) == 0 {
                    set32(&mut s.traceparent, (start + 12) as u32);
                }
            } else if name_is(d, start, b"tracestate:") {
                if get32(&s.tracestate) == 0 {
                    set32(&mut s.tracestate, (start + 11) as u32);
                }
            } else if name_is(d, start, b"transfer-encoding:") {
                let v = skip_ows(d, start + 18);
                let chunked = name_is(d, v, b"chunked") && {
                    let after = d[(v & MASK) + 7];
                    after == b'\r' || after == b' ' || after == b'\t'
                };
                let framing = if chunked && get32(&s.framing) == FRAMING_NONE {
                    FRAMING_CHUNKED
                } else {
                    FRAMING_UNKNOWN
                };
                set32(&mut s.framing, framing);
            }
        }
        b'c' => {
            if name_is(d, start, b"content-length:") {
                let framing = get32(&s.framing);
                match parse_length(d, start + 15) {
                    Some(len)
                        if framing == FRAMING_NONE
                            || (framing == FRAMING_LENGTH && content_length(s) == len) =>
                    {
                        set32(&mut s.framing, FRAMING_LENGTH);
                        set_len(s, len);
                    }
                    _ => set32(&mut s.framing, FRAMING_UNKNOWN),
                }
            }
        }
        b'b' => {
            if name_is(d, start, b"b3:") {
                set32(&mut s.has_context, 1);
                first(&mut s.b3, start + 3);
            }
        }
        b'x' => {
            if name_is(d, start, b"x-b3-traceid:") {
                set32(&mut s.has_context, 1);
                first(&mut s.x_b3_traceid, start + 13);
            } else if name_is(d, start, b"x-b3-spanid:") {
                first(&mut s.x_b3_spanid, start + 12);
            } else if name_is(d, start, b"x-b3-sampled:") {
                first(&mut s.x_b3_sampled, start + 13);
            } else if name_is(d, start, b"x-b3-flags:") {
                first(&mut s.x_b3_flags, start + 11);
            }
        }
        b'u' => {
            if name_is(d, start, b"uber-trace-id:") {
                set32(&mut s.has_context, 1);
                first(&mut s.uber, start + 14);
            } else if name_is(d, start, b"upgrade:") {
                set32(&mut s.upgrade, 1);
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes `out.len()` bytes of lowercase hex at `at` straight into `out`
/// (map memory, written volatile): the verifier does not track map
/// contents, so the two ways a nibble can decode do not multiply its paths
/// (on the stack or in a register they would, per nibble). Returns whether
/// any byte is non-zero, or `None` for a non-hex digit.
#[inline(always)]
fn decode_hex<const N: usize>(d: &[u8; N], at: usize, out: &mut [u8]) -> Option<bool> {
    let mut i = 0;
    while i < out.len() && i < 16 {
        let hi = hex_val(d[at + 2 * i])?;
        let lo = hex_val(d[at + 2 * i + 1])?;
        // SAFETY: `i` is in bounds.
        unsafe { core::ptr::write_volatile(out.as_mut_ptr().add(i), hi << 4 | lo) };
        i += 1;
    }
    // Read back from memory: a running OR in a register would differ per
    // path, too.
    let mut any = 0u8;
    let mut j = 0;
    while j < out.len() && j < 16 {
        // SAFETY: `j` is in bounds.
        any |= unsafe { core::ptr::read_volatile(out.as_ptr().add(j)) };
        j += 1;
    }
    Some(any != 0)
}

/// Parses a W3C `traceparent` value into `trace_id`, `span_id` and
/// `flags` (all in map memory), as strictly as the agent does: lowercase
/// hex, version `ff` forbidden, version 00 exactly 55 bytes, non-zero ids.
/// `n` is how many bytes of `d` are valid. Returns whether it was valid
/// (the outputs are garbage otherwise).
#[inline(always)]
pub fn parse_traceparent<const N: usize>(
    d: &[u8; N],
    at: usize,
    n: usize,
    trace_id: &mut [u8; 16],
    span_id: &mut [u8; 8],
    flags: &mut [u8; 1],
) -> bool {
    let v = skip_ows(d, at) & MASK;
    if v + 56 > n {
        return false;
    }
    if d[v + 2] != b'-' || d[v + 35] != b'-' || d[v + 52] != b'-' {
        return false;
    }
    let (Some(h), Some(l)) = (hex_val(d[v]), hex_val(d[v + 1])) else {
        return false;
    };
    let version_ff = h == 0xf && l == 0xf;
    let version_00 = h == 0 && l == 0;
    if version_ff {
        return false;
    }
    let after = d[v + 55];
    let ends = after == b'\r' || after == b' ' || after == b'\t';
    if !(ends || (!version_00 && after == b'-')) {
        return false;
    }
    matches!(decode_hex(d, v + 3, trace_id), Some(true))
        && matches!(decode_hex(d, v + 36, span_id), Some(true))
        && decode_hex(d, v + 53, flags).is_some()
}
