//! The whole pipeline (decode, connection table, sessions, HTTP/1 parser,
//! trace ids, span building) on hostile ring records.
//!
//! The input is a little program: each operation byte picks a record to
//! append. Raw records (a length byte, then that many bytes, the kind byte
//! forced into the real kinds half the time) exercise decoding; the other
//! operations synthesise valid opens, data events (payloads spliced from
//! HTTP fragments and raw bytes, with gaps and lost sequence numbers),
//! closes, process exits and kernel trace contexts on a few connection
//! slots, so that data reaches the parser and spans get built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_agent::pipeline::replay::{default_propagators, replay};
use tracer_common::{
    pack_inject_ports, ConnCloseEvent, ConnOpenEvent, DataHeader, ProcEvent, TraceCtxEvent,
    DATA_FLAG_GAP, DATA_FLAG_TRUNCATED, EVENT_CONN_CLOSE, EVENT_CONN_OPEN, EVENT_DATA,
    EVENT_INJECTED, EVENT_PROC_EXIT, EVENT_SERVER_CTX, EVENT_TLS_SEEN, FAMILY_INET, FAMILY_INET6,
    ORIGIN_ACCEPT, PROTO_HTTP1, ROLE_CLIENT, ROLE_SERVER, SRC_READ, SRC_SSL_READ, SRC_SSL_WRITE,
    SRC_WRITE,
};
use tracer_fuzz::{bytes_of, payload, Input};

/// Connection slots; two per process so that a process exit closes more
/// than one connection.
const SLOTS: usize = 4;
/// Records per input: enough for every state of a few connections; longer
/// inputs cost run time (10^7 runs on one core), not coverage.
const MAX_RECORDS: usize = 64;

#[derive(Default, Clone, Copy)]
struct Slot {
    conn_id: u64,
    seq: u32,
}

fn tgid(slot: usize) -> u32 {
    100 + (slot / 2) as u32
}

fn fd(slot: usize) -> u32 {
    3 + slot as u32
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut slots = [Slot::default(); SLOTS];
    let mut next_conn_id = 1u64;
    let mut ts = 1_000u64;
    let mut records: Vec<Vec<u8>> = Vec::new();
    while !input.is_empty() && records.len() < MAX_RECORDS {
        let op = input.u8();
        ts += 1 + u64::from(op & 0x0f);
        let rec = match op % 8 {
            0 => {
                let len = usize::from(input.u8());
                let mut rec = input.take(len).to_vec();
                if op & 0x80 != 0 {
                    if let Some(k) = rec.first_mut() {
                        *k = 1 + *k % 9; // EVENT_CONN_OPEN..=EVENT_TLS_SEEN
                    }
                }
                rec
            }
            1 => {
                let b = input.u8();
                let slot = usize::from(b) % SLOTS;
                slots[slot] = Slot {
                    conn_id: next_conn_id,
                    seq: 0,
                };
                next_conn_id += 1;
                let v6 = b & 0x10 != 0;
                let ev = ConnOpenEvent {
                    kind: EVENT_CONN_OPEN,
                    role: if b & 4 != 0 { ROLE_SERVER } else { ROLE_CLIENT },
                    origin: if b & 0x20 != 0 {
                        input.u8() % 4
                    } else {
                        ORIGIN_ACCEPT
                    },
                    family: if v6 { FAMILY_INET6 } else { FAMILY_INET },
                    tgid: tgid(slot),
                    tid: tgid(slot) + u32::from(b >> 6),
                    fd: fd(slot),
                    conn_id: slots[slot].conn_id,
                    open_ts: ts,
                    raddr: if v6 {
                        input.array()
                    } else {
                        [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                    },
                    rport: input.u16(),
                    proto: if b & 8 != 0 { input.u8() } else { PROTO_HTTP1 },
                    tls: b & 0x80,
                    comm: *b"fuzzed-server\0\0\0",
                    ..Default::default()
                };
                bytes_of(&ev)
            }
            2..=4 => {
                let b = input.u8();
                let slot = usize::from(b) % SLOTS;
                let mut body = Vec::new();
                payload(&mut input, &mut body);
                let g = input.u8();
                let gap: u32 = match g % 4 {
                    0 => 0,
                    1 => u32::from(g),
                    2 => u32::from(g) * 1024,
                    _ => u32::MAX - body.len() as u32,
                };
                let mut flags = 0;
                if gap > 0 {
                    flags |= DATA_FLAG_TRUNCATED;
                }
                if b & 0x80 != 0 && body.is_empty() {
                    flags |= DATA_FLAG_GAP;
                }
                // Lost events: a sequence number skipped now and then.
                let seq = slots[slot]
                    .seq
                    .wrapping_add(u32::from(b & 0x40 != 0 && g & 0x80 != 0));
                slots[slot].seq = seq.wrapping_add(1);
                let egress = b & 4 != 0;
                let hdr = DataHeader {
                    kind: EVENT_DATA,
                    direction: u8::from(egress),
                    source: match (b & 0x20 != 0, egress) {
                        (false, false) => SRC_READ,
                        (false, true) => SRC_WRITE,
                        (true, false) => SRC_SSL_READ,
                        (true, true) => SRC_SSL_WRITE,
                    },
                    flags,
                    tgid: tgid(slot),
                    tid: tgid(slot) + u32::from((b >> 3) & 3),
                    fd: fd(slot),
                    conn_id: slots[slot].conn_id,
                    ts,
                    total_len: body.len() as u32 + gap,
                    captured_len: body.len() as u32,
                    seq,
                    _pad: 0,
                };
                let mut rec = bytes_of(&hdr);
                rec.extend_from_slice(&body);
                rec
            }
            5 => {
                let b = input.u8();
                let slot = usize::from(b) % SLOTS;
                let ev = ConnCloseEvent {
                    kind: EVENT_CONN_CLOSE,
                    tgid: tgid(slot),
                    tid: tgid(slot),
                    fd: fd(slot),
                    // Now and then a stale id (the fd was reused).
                    conn_id: slots[slot].conn_id.wrapping_sub(u64::from(b & 0x80 != 0)),
                    ts,
                    ..Default::default()
                };
                bytes_of(&ev)
            }
            6 => {
                let b = input.u8();
                let kind = [EVENT_PROC_EXIT, 7, 8, EVENT_TLS_SEEN][usize::from(b >> 6)];
                let slot = usize::from(b) % SLOTS;
                let ev = ProcEvent {
                    kind,
                    tgid: tgid(slot),
                    ts,
                    ..Default::default()
                };
                let mut rec = bytes_of(&ev);
                if kind == EVENT_TLS_SEEN {
                    // TlsSeenEvent: kind, pad, tgid, then the command name.
                    rec.truncate(8);
                    rec.extend_from_slice(&input.array::<16>());
                }
                rec
            }
            _ => {
                let b = input.u8();
                let slot = usize::from(b) % SLOTS;
                let server = b & 4 == 0;
                let ev = TraceCtxEvent {
                    kind: if server {
                        EVENT_SERVER_CTX
                    } else {
                        EVENT_INJECTED
                    },
                    flags: input.u8() & 3,
                    origin: 1 + input.u8() % 4,
                    tgid: tgid(slot),
                    tid: tgid(slot) + u32::from((b >> 3) & 3),
                    seq: slots[slot].seq,
                    conn_id: if server {
                        slots[slot].conn_id
                    } else {
                        pack_inject_ports(input.u16(), input.u16())
                    },
                    trace_id: input.array(),
                    span_id: input.array(),
                    parent_id: input.array(),
                    ..Default::default()
                };
                bytes_of(&ev)
            }
        };
        records.push(rec);
    }
    let total_bytes: usize = records.iter().map(Vec::len).sum();
    let out = replay(records.iter().map(Vec::as_slice), default_propagators());
    let events = out
        .counters
        .events
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(events, records.len() as u64);
    // A span needs a request and a response head, each well over 8 bytes:
    // more spans than that would mean the pipeline invents them.
    assert!(
        out.spans.len() * 16 <= total_bytes,
        "{} spans from {total_bytes} bytes",
        out.spans.len()
    );
    for s in &out.spans {
        assert!(s.end_unix_ns >= s.start_unix_ns);
        assert!(s.attributes.len() < 64);
    }
});
