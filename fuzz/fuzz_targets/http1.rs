//! The HTTP/1 layer on hostile streams, split into syscall-sized chunks
//! and uncaptured gaps: each direction's `MessageReader` on its own (both
//! kinds, every response context), then a whole connection `Session`.
//!
//! Checked: no panic; each chunk is consumed and yields at most one event
//! per byte; a reader ends no more messages than it started and holds at
//! most `MAX_HEAD_BYTES`; a session never completes more exchanges than
//! requests started and never buffers more than its two readers' caps.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tracer_agent::{
    conn::session::Session,
    metadata::conn::{ConnMeta, Role},
    propagation::{extract, header_names, Propagator},
    protocols::{
        http1::reader::{Event, Kind, MessageReader, ResponseContext, MAX_HEAD_BYTES},
        ContextChooser, ProtocolKind, RequestStart,
    },
    telemetry::Counters,
    trace::ids::SpanIds,
};
use tracer_common::{DataHeader, DIR_EGRESS, DIR_INGRESS, EVENT_DATA, MAX_CAPTURE};
use tracer_fuzz::{payload, Input};

/// Operations per input: longer streams cost run time, not coverage.
const MAX_OPS: usize = 64;
/// Filler bytes per input: enough to overflow both readers' caps a few
/// times, without making one input cost milliseconds.
const MAX_FILL: usize = 4 * MAX_HEAD_BYTES;

enum Op {
    Chunk {
        bytes: Vec<u8>,
        /// Bytes that moved after `bytes` without being captured.
        gap: u64,
        egress: bool,
        /// Events were lost before this one (sequence gap).
        lost: bool,
        ctx: ResponseContext,
    },
    Close,
}

fn ops(input: &mut Input<'_>) -> Vec<Op> {
    let mut out = Vec::new();
    let mut fill_left = MAX_FILL;
    while !input.is_empty() && out.len() < MAX_OPS {
        let op = input.u8();
        let mut bytes = Vec::new();
        match op & 7 {
            0..=3 => payload(input, &mut bytes),
            4 => {
                // Long runs: heads that outgrow the reader's cap.
                let len = (usize::from(input.u8()) * 128).min(fill_left);
                fill_left -= len;
                let fill = input.u8();
                bytes.resize(len, fill);
            }
            5 => {
                let len = usize::from(input.u8());
                bytes.extend_from_slice(input.take(len));
            }
            6 => {} // a gap alone
            _ => {
                out.push(Op::Close);
                continue;
            }
        }
        let gap = if op & 0x08 != 0 || bytes.is_empty() {
            let g = input.u8();
            match g >> 6 {
                0 => u64::from(g),
                1 => u64::from(g) << 10,
                2 => u64::from(g) << 20,
                _ => u64::MAX >> (g & 0x3f),
            }
        } else {
            0
        };
        out.push(Op::Chunk {
            bytes,
            gap,
            egress: op & 0x10 != 0,
            lost: op & 0x20 != 0 && gap & 1 != 0,
            ctx: ResponseContext {
                head_request: op & 0x40 != 0,
                connect_request: op & 0x80 != 0,
            },
        });
    }
    out
}

fn drive_reader(kind: Kind, names: &Arc<[String]>, ops: &[Op]) {
    let mut r = MessageReader::with_trace_headers(kind, names.clone());
    let (mut heads, mut ends) = (0usize, 0usize);
    let mut ts = 0u64;
    let count = |ev: &Event, heads: &mut usize, ends: &mut usize| match ev {
        Event::Request { .. } => {
            assert_eq!(kind, Kind::Request);
            *heads += 1;
        }
        Event::Response { .. } => {
            assert_eq!(kind, Kind::Response);
            *heads += 1;
        }
        Event::End { .. } => *ends += 1,
        Event::Lost(_) => {}
    };
    for op in ops {
        ts += 1;
        match op {
            Op::Chunk {
                bytes,
                gap,
                lost,
                ctx,
                ..
            } => {
                if *lost {
                    r.lose_sync();
                }
                r.begin_chunk(bytes, ts);
                let mut input: &[u8] = bytes;
                let mut events = 0usize;
                while let Some(ev) = r.step(&mut input, ts, *ctx) {
                    count(&ev, &mut heads, &mut ends);
                    events += 1;
                    assert!(events <= bytes.len(), "more events than bytes");
                }
                assert!(input.is_empty(), "chunk not consumed");
                if let Some(ev) = r.gap(*gap, ts) {
                    count(&ev, &mut heads, &mut ends);
                }
            }
            Op::Close => {
                if let Some(ev) = r.close(ts) {
                    count(&ev, &mut heads, &mut ends);
                }
            }
        }
        assert!(ends <= heads, "{ends} ends for {heads} heads");
        assert!(
            r.buffered() <= MAX_HEAD_BYTES,
            "reader holds {} bytes",
            r.buffered()
        );
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
        let (remote, errors) = extract(r.headers, &self.propagators);
        assert!(errors.len() <= self.propagators.len());
        SpanIds {
            trace_id: remote.as_ref().map_or([1; 16], |c| c.trace_id),
            span_id: [2; 8],
            parent_span_id: remote.as_ref().and_then(|c| c.parent_id),
            flags: remote.as_ref().map_or(1, |c| c.flags),
            tracestate: remote.and_then(|c| c.tracestate),
        }
    }
}

fn drive_session(role: Role, names: &Arc<[String]>, propagators: &[Propagator], ops: &[Op]) {
    let mut s = Session::new(
        ConnMeta::new(1, 10, 3, role, None, None),
        ProtocolKind::Http1,
        names.clone(),
    );
    let mut ids = Chooser {
        started: 0,
        propagators: propagators.to_vec(),
    };
    let counters = Counters::default();
    let mut out = Vec::new();
    let (mut seq, mut ts) = (0u32, 100u64);
    for op in ops {
        ts += 10;
        match op {
            Op::Chunk {
                bytes,
                gap,
                egress,
                lost,
                ..
            } => {
                // The kernel never captures more than MAX_CAPTURE per syscall.
                let captured = &bytes[..bytes.len().min(MAX_CAPTURE)];
                // The table finds lost events by sequence; the session is told.
                seq = seq.wrapping_add(u32::from(*lost));
                let hdr = DataHeader {
                    kind: EVENT_DATA,
                    direction: if *egress { DIR_EGRESS } else { DIR_INGRESS },
                    tgid: 10,
                    tid: 11,
                    fd: 3,
                    conn_id: 1,
                    ts,
                    total_len: (captured.len() as u64)
                        .saturating_add(*gap)
                        .min(u64::from(u32::MAX)) as u32,
                    captured_len: captured.len() as u32,
                    seq,
                    ..Default::default()
                };
                seq = seq.wrapping_add(1);
                s.on_data(&hdr, captured, *lost, &mut ids, &mut out, &counters);
            }
            Op::Close => {
                // A close ends the session: complete it, then go on with a
                // fresh one as a reused fd would.
                s.on_close(ts, &mut out, &counters);
                assert!(out.len() <= ids.started);
                s = Session::new(
                    ConnMeta::new(1, 10, 3, role, None, None),
                    ProtocolKind::Http1,
                    names.clone(),
                );
                seq = 0;
            }
        }
        assert!(
            out.len() <= ids.started,
            "{} records for {} requests",
            out.len(),
            ids.started
        );
        assert!(
            s.buffered() <= 2 * MAX_HEAD_BYTES,
            "session holds {} bytes",
            s.buffered()
        );
    }
    s.on_close(ts + 1, &mut out, &counters);
    assert!(out.len() <= ids.started);
    for r in &out {
        assert!(r.end_ts >= r.start_ts);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let role = if input.u8() & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let ops = ops(&mut input);
    let propagators = vec![
        Propagator::TraceContext,
        Propagator::B3,
        Propagator::Jaeger,
        Propagator::Custom("x-custom".into()),
    ];
    let names: Arc<[String]> = Arc::from(header_names(&propagators));
    drive_reader(Kind::Request, &names, &ops);
    drive_reader(Kind::Response, &names, &ops);
    drive_session(role, &names, &propagators, &ops);
});
