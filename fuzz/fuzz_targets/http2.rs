//! The HTTP/2 layer (framing across pieces and gaps, HPACK with mid-
//! connection joins, stream stitching) on hostile connections: frames
//! built from the input (any type, flags, stream id and length, payloads
//! spliced from HPACK and frame fragments), raw bytes, prefaces, large
//! fills that reach the caps, pieces of a syscall with uncaptured gaps,
//! lost events, sheds and closes, on both sides of a connection that is
//! followed from its start or joined.
//!
//! Checked: no panic; `buffered()` never exceeds per direction one held
//! frame, one header block and one HPACK table; at most `MAX_STREAMS`
//! streams are followed; never more records than requests started, each
//! ending no earlier than it started; a close leaves no stream.
//!
//! Input: one byte (bit 0: joined), then operations, each an op byte
//! (low 3 bits: what; 0x08: response side; 0x10: starts a syscall; 0x20:
//! a gap follows; 0x40: frames' length fields are overridden; 0x80: the
//! bytes are split in two pieces of the syscall) and its operands.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tracer_agent::{
    metadata::conn::{ConnMeta, Role},
    propagation::{extract, header_names, Propagator},
    protocols::{
        http2::{
            frame::{MAX_FRAME_HELD, PREFACE},
            stitch::{MAX_HEADER_BLOCK, MAX_HPACK_TABLE, MAX_STREAMS},
            Http2,
        },
        Chunk, ContextChooser, Protocol, Record, RequestStart, Side, Stitch,
    },
    telemetry::Counters,
    trace::{ids::SpanIds, task::TaskId},
};
use tracer_fuzz::Input;

/// Operations per input: longer streams cost run time, not coverage.
const MAX_OPS: usize = 96;
/// Filler bytes per input: enough to fill a held frame, a header block
/// and a table on each side, without making one input cost milliseconds.
const MAX_FILL: usize = 6 * MAX_FRAME_HELD;
/// The most one connection may hold.
const BOUND: usize = 2 * (MAX_FRAME_HELD + MAX_HEADER_BLOCK + MAX_HPACK_TABLE);

const TP: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Pieces of header blocks and frame payloads that payloads are spliced
/// from, so that the decoder gets past its first byte often.
fn fragments() -> Vec<Vec<u8>> {
    fn lit(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s);
        v
    }
    let cat = |parts: &[&[u8]]| parts.concat();
    vec![
        // 0: a gRPC request block, every field a literal (indexed).
        cat(&[
            &[0x83, 0x86, 0x44],
            &lit(b"/helloworld.Greeter/SayHello"),
            &[0x41],
            &lit(b"localhost:50051"),
            &[0x5f],
            &lit(b"application/grpc"),
            &[0x40],
            &lit(b"te"),
            &lit(b"trailers"),
            &[0x40],
            &lit(b"traceparent"),
            &lit(TP),
        ]),
        // 1: the same request from the table (after 0 on a synced side).
        vec![0x83, 0x86, 0xc2, 0xc1, 0xc0, 0xbf, 0xbe],
        // 2, 3: :status 200, 500.
        vec![0x88],
        vec![0x8e],
        // 4, 5: grpc-status 0 and 5 (literal with indexing).
        cat(&[&[0x40], &lit(b"grpc-status"), &lit(b"0")]),
        cat(&[&[0x40], &lit(b"grpc-status"), &lit(b"5")]),
        // 6: content-type application/grpc, not indexed.
        cat(&[&[0x0f, 0x10], &lit(b"application/grpc")]),
        // 7..=10: size updates: 0, 4096, 4 GiB - 1, beyond 32 bits.
        vec![0x20],
        vec![0x3f, 0xe1, 0x1f],
        vec![0x3f, 0xe0, 0xff, 0xff, 0xff, 0x0f],
        vec![0x3f, 0xff, 0xff, 0xff, 0xff, 0x7f],
        // 11..=14: dynamic indexes, one far past any table.
        vec![0xbe],
        vec![0xbf],
        vec![0xc0],
        vec![0xff, 0x80, 0x01],
        // 15: RFC 7541 C.4.1, Huffman strings.
        vec![
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ],
        // 16: invalid Huffman padding.
        vec![0x40, 0x81, 0x00, 0x00],
        // 17: a literal whose name is a dynamic index.
        cat(&[&[0x7f, 0x03], &lit(b"abc")]),
        // 18: never indexed.
        cat(&[&[0x10], &lit(b"password"), &lit(b"secret")]),
        // 19: a literal ending early.
        vec![0x40, 0x0a, b'c'],
        // 20: :method GET, :path /, :scheme https, :authority literal.
        cat(&[&[0x82, 0x84, 0x87, 0x41], &lit(b"example.com")]),
        // 21..: frame payloads: padding length, PRIORITY, RST_STREAM
        // CANCEL, GOAWAY last 3, SETTINGS table size 4 GiB - 1 and 0,
        // PING, WINDOW_UPDATE, a promised stream id, a gRPC message.
        vec![4],
        vec![0x80, 0, 0, 1, 15],
        vec![0, 0, 0, 8],
        vec![0, 0, 0, 3, 0, 0, 0, 0],
        vec![0, 1, 0xff, 0xff, 0xff, 0xff],
        vec![0, 1, 0, 0, 0, 0],
        vec![0; 8],
        vec![0, 0, 0x10, 0],
        vec![0, 0, 0, 2],
        vec![0, 0, 0, 0, 2, 0x0a, 0],
    ]
}

fn payload(input: &mut Input<'_>, frags: &[Vec<u8>], out: &mut Vec<u8>) {
    let pieces = (input.u8() & 3) + 1;
    for _ in 0..pieces {
        let sel = input.u8();
        if sel & 0x80 != 0 {
            out.extend_from_slice(&frags[usize::from(sel & 0x7f) % frags.len()]);
        } else {
            out.extend_from_slice(input.take(usize::from(sel)));
        }
    }
}

fn stream_id(input: &mut Input<'_>) -> u32 {
    let s = input.u8();
    if s & 0x80 != 0 {
        input.u32()
    } else {
        u32::from(s)
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = len.min((1 << 24) - 1) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A length field other than the payload's: near the limits, or any.
fn override_len(input: &mut Input<'_>, real: usize) -> usize {
    let v = input.u8();
    match v >> 6 {
        0 => real + usize::from(v & 0x3f),
        1 => (MAX_FRAME_HELD + usize::from(v & 0x3f)).saturating_sub(32),
        2 => (1 << 24) - 1 - usize::from(v & 0x3f),
        _ => usize::from(input.u16()),
    }
}

fn gap(input: &mut Input<'_>) -> u64 {
    let g = input.u8();
    match g >> 6 {
        0 => u64::from(g),
        1 => u64::from(g & 0x3f) << 10,
        2 => u64::from(g & 0x3f) << 20,
        _ => u64::MAX >> (g & 0x3f),
    }
}

/// Counts the requests whose ids were chosen and reads their trace
/// headers as the real chooser would.
struct Chooser {
    started: usize,
    propagators: Vec<Propagator>,
}

impl ContextChooser for Chooser {
    fn on_request(&mut self, r: &RequestStart<'_>) -> SpanIds {
        self.started += 1;
        let (remote, _) = extract(r.headers, &self.propagators);
        SpanIds {
            trace_id: remote.as_ref().map_or([1; 16], |c| c.trace_id),
            span_id: [2; 8],
            parent_span_id: remote.as_ref().and_then(|c| c.parent_id),
            flags: remote.as_ref().map_or(1, |c| c.flags),
            tracestate: remote.and_then(|c| c.tracestate),
        }
    }
}

struct Conn {
    h2: Http2,
    meta: Arc<ConnMeta>,
    counters: Counters,
    out: Vec<Record>,
    ids: Chooser,
    names: Arc<[String]>,
    joined: bool,
}

impl Conn {
    fn cx(&mut self) -> (&mut Http2, &mut Chooser, Stitch<'_>) {
        (
            &mut self.h2,
            &mut self.ids,
            Stitch {
                conn: &self.meta,
                out: &mut self.out,
                counters: &self.counters,
            },
        )
    }

    fn piece(&mut self, side: Side, bytes: &[u8], gap: u64, ts: u64, starts_syscall: bool) {
        let chunk = Chunk {
            side,
            bytes,
            gap,
            ts,
            task: TaskId::thread(10, if side == Side::Request { 11 } else { 12 }),
            starts_syscall,
        };
        let (h2, ids, mut cx) = self.cx();
        h2.on_chunk(&chunk, ids, &mut cx);
        self.check();
    }

    fn check(&self) {
        assert!(
            self.h2.buffered() <= BOUND,
            "connection holds {} bytes",
            self.h2.buffered()
        );
        assert!(self.h2.streams() <= MAX_STREAMS);
        assert!(
            self.out.len() <= self.ids.started,
            "{} records for {} requests",
            self.out.len(),
            self.ids.started
        );
    }

    fn close(&mut self, ts: u64) {
        let (h2, _, mut cx) = self.cx();
        h2.on_close(ts, &mut cx);
        assert_eq!(self.h2.streams(), 0);
        self.check();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let frags = fragments();
    let joined = input.u8() & 1 != 0;
    let propagators = vec![Propagator::TraceContext, Propagator::B3];
    let names: Arc<[String]> = Arc::from(header_names(&propagators));
    let mut c = Conn {
        h2: Http2::new(names.clone(), joined),
        meta: Arc::new(ConnMeta::new(1, 10, 3, Role::Server, None, None)),
        counters: Counters::default(),
        out: Vec::new(),
        ids: Chooser {
            started: 0,
            propagators,
        },
        names,
        joined,
    };
    let mut fill_left = MAX_FILL;
    let mut ts = 100u64;
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        ts += 10;
        let op = input.u8();
        let side = if op & 0x08 != 0 {
            Side::Response
        } else {
            Side::Request
        };
        let mut bytes = Vec::new();
        match op & 7 {
            0..=2 => {
                for _ in 0..=(input.u8() & 3) {
                    let kind = input.u8() & 0x0f;
                    let flags = input.u8();
                    let stream = stream_id(&mut input);
                    let mut p = Vec::new();
                    payload(&mut input, &frags, &mut p);
                    let len = if op & 0x40 != 0 {
                        override_len(&mut input, p.len())
                    } else {
                        p.len()
                    };
                    frame_header(len, kind, flags, stream, &mut bytes);
                    bytes.extend_from_slice(&p);
                }
            }
            3 => {
                let n = usize::from(input.u8());
                bytes.extend_from_slice(input.take(n));
            }
            4 => bytes.extend_from_slice(PREFACE),
            5 => {
                // One large frame: a held frame, a header block or table
                // entries at their caps (or just past them).
                let kind = input.u8() & 0x0f;
                let flags = input.u8();
                let stream = stream_id(&mut input);
                let len = (usize::from(input.u8()) * 320).min(fill_left);
                fill_left -= len;
                let fill = input.u8();
                frame_header(len, kind, flags, stream, &mut bytes);
                let at = bytes.len();
                bytes.resize(at + len, fill);
                if fill & 1 != 0 && len > 8 {
                    // Literal fields with indexing: `4x` name `len` value.
                    for f in bytes[at..].chunks_mut(4096) {
                        if f.len() > 6 {
                            let n = (f.len() - 5).min(126) as u8;
                            f[..3].copy_from_slice(&[0x40, 1, b'k']);
                            f[3] = n;
                        }
                    }
                }
            }
            6 => {
                match input.u8() % 3 {
                    0 => {
                        let (h2, _, mut cx) = c.cx();
                        h2.on_lost(&mut cx);
                    }
                    1 => c.h2.shed(),
                    _ => {
                        // A close ends the connection: complete it, then go
                        // on with a fresh one as a reused fd would.
                        c.close(ts);
                        c.h2 = Http2::new(c.names.clone(), c.joined);
                    }
                }
                c.check();
                continue;
            }
            _ => {} // a gap alone
        }
        let g = if op & 0x20 != 0 || bytes.is_empty() {
            gap(&mut input)
        } else {
            0
        };
        let starts = op & 0x10 != 0;
        if op & 0x80 != 0 && !bytes.is_empty() {
            let at = usize::from(input.u16()) % (bytes.len() + 1);
            c.piece(side, &bytes[..at], 0, ts, starts);
            c.piece(side, &bytes[at..], g, ts, false);
        } else {
            c.piece(side, &bytes, g, ts, starts);
        }
    }
    c.close(ts + 1);
    for r in &c.out {
        assert!(r.end_ts >= r.start_ts);
    }
});
