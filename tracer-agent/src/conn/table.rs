//! All tracked connections, keyed by (tgid, fd), with the bounds that keep
//! the agent's memory fixed: a cap on connections (least recently active
//! evicted, counted) and a global budget for bytes held in partial messages.

use std::{collections::HashMap, sync::Arc};

use tracer_common::DataHeader;

use super::session::Session;
use crate::metadata::conn::ConnMeta;
use crate::{
    protocols::{ContextChooser, ProtocolKind, Record},
    telemetry::Counters,
};

/// Bytes of partial headers held across all connections. Each reader may
/// hold up to 16 KiB; without a global cap, many connections sending slow
/// partial headers could make the agent grow without bound.
pub const BUFFER_BUDGET: usize = 64 << 20;
/// Share of the table evicted at once when it is full, so a flood of new
/// connections costs an amortised O(1) each, not a full scan each.
const EVICT_FRACTION: usize = 64;

pub struct ConnTable {
    conns: HashMap<(u32, u32), Session>,
    trace_names: Arc<[String]>,
    max_conns: usize,
    /// Sum of `Session::buffered` over the table.
    buffered: usize,
    budget: usize,
}

impl ConnTable {
    /// `trace_names`: the trace-context headers parsers keep.
    pub fn new(max_conns: usize, trace_names: Arc<[String]>) -> Self {
        Self::with_budget(max_conns, BUFFER_BUDGET, trace_names)
    }

    pub fn with_budget(max_conns: usize, budget: usize, trace_names: Arc<[String]>) -> Self {
        Self {
            conns: HashMap::new(),
            trace_names,
            max_conns: max_conns.max(1),
            buffered: 0,
            budget,
        }
    }

    fn remove(&mut self, key: &(u32, u32)) -> Option<Session> {
        let c = self.conns.remove(key)?;
        self.buffered = self.buffered.saturating_sub(c.buffered());
        Some(c)
    }

    /// Evicts the least recently active connections (a fraction of the
    /// table, found with a partial sort).
    fn evict(&mut self, counters: &Counters) {
        let n = (self.conns.len() / EVICT_FRACTION).max(1);
        let mut ages: Vec<(u64, (u32, u32))> =
            self.conns.iter().map(|(k, c)| (c.last_ts(), *k)).collect();
        if n < ages.len() {
            ages.select_nth_unstable(n);
        }
        for (_, k) in ages.into_iter().take(n) {
            self.remove(&k);
            Counters::inc(&counters.conns_evicted);
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A tracked connection's metadata.
    pub fn meta(&self, tgid: u32, fd: u32) -> Option<&ConnMeta> {
        self.conns.get(&(tgid, fd)).map(Session::meta)
    }

    /// Starts tracking; a previous connection on the same fd is closed first.
    pub fn open(
        &mut self,
        meta: ConnMeta,
        kind: ProtocolKind,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) {
        let key = (meta.tgid, meta.fd);
        if let Some(mut old) = self.remove(&key) {
            old.on_close(old.last_ts(), out, counters);
        }
        if self.conns.len() >= self.max_conns {
            self.evict(counters);
        }
        Counters::inc(&counters.conns_opened);
        self.conns
            .insert(key, Session::new(meta, kind, self.trace_names.clone()));
    }

    pub fn on_data(
        &mut self,
        hdr: &DataHeader,
        payload: &[u8],
        ids: &mut dyn ContextChooser,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) {
        match self.conns.get_mut(&(hdr.tgid, hdr.fd)) {
            Some(c) if c.meta().conn_id == hdr.conn_id => {
                let before = c.buffered();
                c.on_data(hdr, payload, ids, out, counters);
                let after = c.buffered();
                self.buffered = (self.buffered + after).saturating_sub(before);
                if self.buffered > self.budget && after > 0 {
                    // Over budget: this connection's partial headers go.
                    c.shed();
                    self.buffered = self.buffered.saturating_sub(after);
                    Counters::inc(&counters.buffer_budget_drops);
                }
            }
            _ => Counters::inc(&counters.data_without_conn),
        }
    }

    pub fn close(
        &mut self,
        tgid: u32,
        fd: u32,
        conn_id: u64,
        ts: u64,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) {
        let key = (tgid, fd);
        if self
            .conns
            .get(&key)
            .is_some_and(|c| c.meta().conn_id == conn_id)
        {
            if let Some(mut c) = self.remove(&key) {
                c.on_close(ts, out, counters);
            }
        }
    }

    /// Closes every connection of a process; returns their fds.
    pub fn close_process(
        &mut self,
        tgid: u32,
        ts: u64,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) -> Vec<u32> {
        let keys: Vec<(u32, u32)> = self
            .conns
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        for k in &keys {
            if let Some(mut c) = self.remove(k) {
                c.on_close(ts, out, counters);
            }
        }
        keys.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Closes everything (agent shutdown).
    pub fn drain(&mut self, out: &mut Vec<Record>, counters: &Counters) {
        for (_, mut c) in self.conns.drain() {
            let ts = c.last_ts();
            c.on_close(ts, out, counters);
        }
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{DIR_INGRESS, EVENT_DATA};

    use super::*;
    use crate::{metadata::conn::Role, protocols::test_support::FixedIds};

    fn meta(fd: u32) -> ConnMeta {
        ConnMeta::new(u64::from(fd), 1, fd, Role::Server, None, None)
    }

    #[test]
    fn table_is_bounded() {
        let counters = Counters::default();
        let mut out = Vec::new();
        let mut t = ConnTable::new(4, Arc::from(Vec::<String>::new()));
        for fd in 0..10 {
            t.open(meta(fd), ProtocolKind::Http1, &mut out, &counters);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(
            counters
                .conns_evicted
                .load(std::sync::atomic::Ordering::Relaxed),
            6
        );
    }

    #[test]
    fn partial_headers_are_bounded_across_connections() {
        let counters = Counters::default();
        let mut out = Vec::new();
        let mut t = ConnTable::with_budget(100, 4096, Arc::from(Vec::<String>::new()));
        for fd in 0..10u32 {
            t.open(meta(fd), ProtocolKind::Http1, &mut out, &counters);
            // A request head that never ends.
            let payload = [b"GET / HTTP/1.1\r\nX-Slow: ".as_slice(), &[b'a'; 900]].concat();
            let hdr = DataHeader {
                kind: EVENT_DATA,
                direction: DIR_INGRESS,
                tgid: 1,
                fd,
                conn_id: u64::from(fd),
                total_len: payload.len() as u32,
                captured_len: payload.len() as u32,
                ..Default::default()
            };
            t.on_data(&hdr, &payload, &mut FixedIds, &mut out, &counters);
            assert!(t.buffered <= 4096, "buffered {}", t.buffered);
        }
        assert!(
            counters
                .buffer_budget_drops
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }
}
