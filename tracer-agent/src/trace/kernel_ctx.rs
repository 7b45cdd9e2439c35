//! Trace contexts chosen in the kernel (context injection on), held until
//! the data event of their request arrives. The kernel sends each one just
//! before that data event, so at most a few wait at any time; the tables
//! are bounded anyway, and every context that finds no request is counted.

use std::collections::{HashMap, VecDeque};

use tracer_common::{DataHeader, TraceCtxEvent, DIR_INGRESS, EVENT_SERVER_CTX};

use super::ids::KernelIds;
use crate::telemetry::Counters;

/// Contexts waiting in each table before it is reset (counted).
const MAX_WAITING: usize = 4096;
/// Injections waiting per thread (one send carries at most a few requests).
const MAX_PER_THREAD: usize = 16;

#[derive(Default)]
pub struct KernelContexts {
    /// SERVER contexts by connection: (sequence number of the data event,
    /// ids).
    server: HashMap<u64, (u32, KernelIds)>,
    /// Injections by thread, in send order: (ports as the kernel packed
    /// them, ids).
    injected: HashMap<(u32, u32), VecDeque<(u64, KernelIds)>>,
    /// Ids of a request whose head started in one data event and goes on
    /// in the next, by kernel connection.
    held: HashMap<u64, KernelIds>,
}

impl KernelContexts {
    pub fn is_empty(&self) -> bool {
        self.server.is_empty() && self.injected.is_empty() && self.held.is_empty()
    }

    /// Keeps `ids` for the head in progress on `conn_id`: the next data
    /// event of that connection takes them first.
    pub fn hold(&mut self, conn_id: u64, ids: KernelIds, stats: &Counters) {
        if self.held.len() >= MAX_WAITING {
            Self::overflow(stats, self.held.len());
            self.held.clear();
        }
        if self.held.insert(conn_id, ids).is_some() {
            Counters::inc(&stats.kernel_ctx_unmatched);
        }
    }

    pub fn on_event(&mut self, ev: &TraceCtxEvent, stats: &Counters) {
        let ids = KernelIds::from(ev);
        if ev.kind == EVENT_SERVER_CTX {
            if self.server.len() >= MAX_WAITING {
                Self::overflow(stats, self.server.len());
                self.server.clear();
            }
            if let Some((seq, _)) = self.server.insert(ev.conn_id, (ev.seq, ids)) {
                // The previous one's data event never came.
                Counters::inc(&stats.kernel_ctx_unmatched);
                tracing::debug!(conn_id = ev.conn_id, seq, "SERVER context replaced unused");
            }
        } else {
            if self.injected.len() >= MAX_WAITING {
                let n = self.injected.values().map(VecDeque::len).sum();
                Self::overflow(stats, n);
                self.injected.clear();
            }
            let q = self.injected.entry((ev.tgid, ev.tid)).or_default();
            if q.len() >= MAX_PER_THREAD {
                q.pop_front();
                Counters::inc(&stats.kernel_ctx_overflow);
            }
            q.push_back((ev.conn_id, ids));
        }
    }

    fn overflow(stats: &Counters, n: usize) {
        Counters::add(&stats.kernel_ctx_overflow, n as u64);
    }

    /// The contexts of the requests in this data event, in order. `ports`
    /// are the connection's (local, peer) ports where the agent knows them.
    pub fn take_for(
        &mut self,
        hdr: &DataHeader,
        ports: Option<(Option<u16>, Option<u16>)>,
        out: &mut Vec<KernelIds>,
        stats: &Counters,
    ) {
        if let Some(k) = self.held.remove(&hdr.conn_id) {
            out.push(k);
        }
        if hdr.direction == DIR_INGRESS {
            if let Some((seq, ids)) = self.server.remove(&hdr.conn_id) {
                if seq == hdr.seq {
                    out.push(ids);
                } else {
                    Counters::inc(&stats.kernel_ctx_unmatched);
                    tracing::debug!(
                        conn_id = hdr.conn_id,
                        seq,
                        data_seq = hdr.seq,
                        "SERVER context for another data event"
                    );
                }
            }
            return;
        }
        let Some(q) = self.injected.remove(&(hdr.tgid, hdr.tid)) else {
            return;
        };
        let (local, peer) = ports.unwrap_or((None, None));
        for (packed, ids) in q {
            let (l, r) = tracer_common::unpack_inject_ports(packed);
            // An injection into a connection the agent does not follow
            // must not be pinned on this one.
            if local.is_some_and(|p| p != l) || peer.is_some_and(|p| p != r) {
                Counters::inc(&stats.kernel_ctx_unmatched);
                continue;
            }
            out.push(ids);
        }
    }

    /// A connection closed: its SERVER context can no longer match.
    pub fn forget_conn(&mut self, conn_id: u64, stats: &Counters) {
        let unused = usize::from(self.server.remove(&conn_id).is_some())
            + usize::from(self.held.remove(&conn_id).is_some());
        if unused > 0 {
            Counters::add(&stats.kernel_ctx_unmatched, unused as u64);
            tracing::debug!(conn_id, "kernel ids unused at close");
        }
    }

    /// A process exited.
    pub fn forget_process(&mut self, tgid: u32, stats: &Counters) {
        self.injected.retain(|(t, _), q| {
            if *t == tgid {
                Counters::add(&stats.kernel_ctx_unmatched, q.len() as u64);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tracer_common::{DIR_EGRESS, EVENT_INJECTED};

    use super::*;

    fn ev(kind: u8, tid: u32, conn_id: u64, seq: u32, span: u8) -> TraceCtxEvent {
        TraceCtxEvent {
            kind,
            flags: 1,
            tgid: 1,
            tid,
            seq,
            conn_id,
            trace_id: [7; 16],
            span_id: [span; 8],
            ..Default::default()
        }
    }

    fn data(direction: u8, tid: u32, conn_id: u64, seq: u32) -> DataHeader {
        DataHeader {
            direction,
            tgid: 1,
            tid,
            conn_id,
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn server_context_matches_its_data_event_only() {
        let stats = Counters::default();
        let mut k = KernelContexts::default();
        k.on_event(&ev(EVENT_SERVER_CTX, 5, 99, 3, 1), &stats);
        let mut out = Vec::new();
        // Another connection's data does not take it.
        k.take_for(&data(DIR_INGRESS, 5, 98, 3), None, &mut out, &stats);
        assert!(out.is_empty());
        k.take_for(&data(DIR_INGRESS, 5, 99, 3), None, &mut out, &stats);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].span_id, [1; 8]);
        // A stale one (its data event was lost) is dropped, counted.
        out.clear();
        k.on_event(&ev(EVENT_SERVER_CTX, 5, 99, 4, 2), &stats);
        k.take_for(&data(DIR_INGRESS, 5, 99, 6), None, &mut out, &stats);
        assert!(out.is_empty());
        assert_eq!(stats.kernel_ctx_unmatched.load(Ordering::Relaxed), 1);
        assert!(k.is_empty());
    }

    #[test]
    fn injections_go_to_the_next_send_of_their_thread_and_connection() {
        let stats = Counters::default();
        let mut k = KernelContexts::default();
        let ports = tracer_common::pack_inject_ports(40000, 8080);
        k.on_event(&ev(EVENT_INJECTED, 5, ports, 0, 1), &stats);
        k.on_event(&ev(EVENT_INJECTED, 5, ports, 0, 2), &stats);
        let mut out = Vec::new();
        k.take_for(
            &data(DIR_EGRESS, 5, 1, 0),
            Some((Some(40000), Some(8080))),
            &mut out,
            &stats,
        );
        assert_eq!(out.iter().map(|i| i.span_id[0]).collect::<Vec<_>>(), [1, 2]);
        // Ports that do not match: not this connection's.
        out.clear();
        k.on_event(&ev(EVENT_INJECTED, 5, ports, 0, 3), &stats);
        k.take_for(
            &data(DIR_EGRESS, 5, 1, 0),
            Some((Some(40001), Some(8080))),
            &mut out,
            &stats,
        );
        assert!(out.is_empty());
        assert_eq!(stats.kernel_ctx_unmatched.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn tables_are_bounded() {
        let stats = Counters::default();
        let mut k = KernelContexts::default();
        for i in 0..(MAX_WAITING as u64 + 10) {
            k.on_event(&ev(EVENT_SERVER_CTX, 5, i, 0, 1), &stats);
        }
        assert!(k.server.len() <= MAX_WAITING);
        for _ in 0..(MAX_PER_THREAD + 5) {
            k.on_event(&ev(EVENT_INJECTED, 5, 0, 0, 1), &stats);
        }
        assert_eq!(k.injected[&(1, 5)].len(), MAX_PER_THREAD);
        assert!(stats.kernel_ctx_overflow.load(Ordering::Relaxed) > 0);
    }
}
