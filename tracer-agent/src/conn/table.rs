//! All tracked connections, with the bounds that keep the agent's memory
//! fixed: a cap on connections (least recently active evicted, counted)
//! and a global budget for bytes held in partial messages.
//!
//! The kernel names a connection by (process, fd). A socket can be held
//! on several fds at once (an inetd-style child reads fd 0 and writes
//! fd 1; `dup2`, inheritance), so sessions are keyed by the socket itself
//! and each (process, fd) the kernel reports is an alias of one, with its
//! own event sequence. The socket is known by its kernel `conn_id` (the
//! kernel gives an fd `dup2`ed from a connection, in the process or its
//! child, the same one; see `tracer-ebpf/src/probes/fds.rs`) or by its
//! inode when the agent could read it.

use std::{collections::HashMap, sync::Arc};

use tracer_common::DataHeader;

use super::session::Session;
use crate::{
    metadata::conn::ConnMeta,
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
/// Fds one socket is followed on (stdin, stdout and a few dups); more are
/// not joined to it.
const MAX_ALIASES: usize = 8;

type SessionId = u64;
/// A kernel connection: (tgid, fd).
type FdKey = (u32, u32);

/// One (process, fd) the kernel reports for a session.
#[derive(Debug, Clone, Copy)]
struct Alias {
    conn_id: u64,
    session: SessionId,
    next_seq: u32,
}

#[derive(Debug)]
struct Entry {
    session: Session,
    aliases: Vec<FdKey>,
}

pub struct ConnTable {
    sessions: HashMap<SessionId, Entry>,
    aliases: HashMap<FdKey, Alias>,
    by_socket: HashMap<u64, SessionId>,
    by_conn_id: HashMap<u64, SessionId>,
    next_id: SessionId,
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
            sessions: HashMap::new(),
            aliases: HashMap::new(),
            by_socket: HashMap::new(),
            by_conn_id: HashMap::new(),
            next_id: 0,
            trace_names,
            max_conns: max_conns.max(1),
            buffered: 0,
            budget,
        }
    }

    /// Removes a session and its aliases; returns it to be closed.
    fn remove_session(&mut self, id: SessionId) -> Option<Session> {
        let e = self.sessions.remove(&id)?;
        for k in &e.aliases {
            self.aliases.remove(k);
        }
        if let Some(ino) = e.session.meta().socket {
            if self.by_socket.get(&ino) == Some(&id) {
                self.by_socket.remove(&ino);
            }
        }
        let conn_id = e.session.meta().conn_id;
        if self.by_conn_id.get(&conn_id) == Some(&id) {
            self.by_conn_id.remove(&conn_id);
        }
        self.buffered = self.buffered.saturating_sub(e.session.buffered());
        Some(e.session)
    }

    /// Drops alias `key`; a session left with none ends (closed into
    /// `out`), and its kernel conn_id is returned.
    fn remove_alias(
        &mut self,
        key: FdKey,
        ts: Option<u64>,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) -> Option<u64> {
        let a = self.aliases.remove(&key)?;
        let e = self.sessions.get_mut(&a.session)?;
        e.aliases.retain(|k| *k != key);
        if !e.aliases.is_empty() {
            return None;
        }
        let mut s = self.remove_session(a.session)?;
        let conn_id = s.meta().conn_id;
        s.on_close(ts.unwrap_or_else(|| s.last_ts()), out, counters);
        Some(conn_id)
    }

    /// Evicts the least recently active sessions (a fraction of the
    /// table, found with a partial sort).
    fn evict(&mut self, counters: &Counters) {
        let n = (self.sessions.len() / EVICT_FRACTION).max(1);
        let mut ages: Vec<(u64, SessionId)> = self
            .sessions
            .iter()
            .map(|(k, e)| (e.session.last_ts(), *k))
            .collect();
        if n < ages.len() {
            ages.select_nth_unstable(n);
        }
        for (_, k) in ages.into_iter().take(n) {
            self.remove_session(k);
            Counters::inc(&counters.conns_evicted);
        }
    }

    /// Sessions (connections) tracked.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The metadata of the connection behind (tgid, fd).
    pub fn meta(&self, tgid: u32, fd: u32) -> Option<&ConnMeta> {
        let a = self.aliases.get(&(tgid, fd))?;
        self.sessions.get(&a.session).map(|e| e.session.meta())
    }

    /// Starts following (tgid, fd); what the kernel had on that fd before
    /// is over. An fd of a socket already followed joins its session.
    pub fn open(
        &mut self,
        meta: ConnMeta,
        kind: ProtocolKind,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) {
        let key = (meta.tgid, meta.fd);
        self.remove_alias(key, None, out, counters);
        Counters::inc(&counters.conns_opened);
        let joined = self
            .by_conn_id
            .get(&meta.conn_id)
            .copied()
            .or_else(|| {
                meta.socket
                    .and_then(|ino| self.by_socket.get(&ino).copied())
            })
            .filter(|id| {
                self.sessions.get(id).is_some_and(|e| {
                    e.session.meta().role == meta.role && e.aliases.len() < MAX_ALIASES
                })
            });
        let id = match joined {
            Some(id) => {
                Counters::inc(&counters.conns_joined);
                id
            }
            None => {
                if self.sessions.len() >= self.max_conns {
                    self.evict(counters);
                }
                let id = self.next_id;
                self.next_id += 1;
                if let Some(ino) = meta.socket {
                    self.by_socket.insert(ino, id);
                }
                self.by_conn_id.insert(meta.conn_id, id);
                self.sessions.insert(
                    id,
                    Entry {
                        session: Session::new(meta.clone(), kind, self.trace_names.clone()),
                        aliases: Vec::new(),
                    },
                );
                id
            }
        };
        if let Some(e) = self.sessions.get_mut(&id) {
            e.aliases.push(key);
        }
        self.aliases.insert(
            key,
            Alias {
                conn_id: meta.conn_id,
                session: id,
                next_seq: 0,
            },
        );
    }

    pub fn on_data(
        &mut self,
        hdr: &DataHeader,
        payload: &[u8],
        ids: &mut dyn ContextChooser,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) {
        let Some(a) = self
            .aliases
            .get_mut(&(hdr.tgid, hdr.fd))
            .filter(|a| a.conn_id == hdr.conn_id)
        else {
            Counters::inc(&counters.data_without_conn);
            return;
        };
        let lost = hdr.seq != a.next_seq;
        a.next_seq = hdr.seq.wrapping_add(1);
        let Some(e) = self.sessions.get_mut(&a.session) else {
            Counters::inc(&counters.data_without_conn);
            return;
        };
        let c = &mut e.session;
        let before = c.buffered();
        c.on_data(hdr, payload, lost, ids, out, counters);
        let after = c.buffered();
        self.buffered = (self.buffered + after).saturating_sub(before);
        if self.buffered > self.budget && after > 0 {
            // Over budget: this connection's partial headers go.
            c.shed();
            self.buffered = self.buffered.saturating_sub(after);
            Counters::inc(&counters.buffer_budget_drops);
        }
    }

    /// The kernel closed (tgid, fd) of connection `conn_id`. Returns the
    /// session's conn_id when that was the socket's last fd followed.
    pub fn close(
        &mut self,
        tgid: u32,
        fd: u32,
        conn_id: u64,
        ts: u64,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) -> Option<u64> {
        let key = (tgid, fd);
        if self.aliases.get(&key).is_some_and(|a| a.conn_id == conn_id) {
            self.remove_alias(key, Some(ts), out, counters)
        } else {
            None
        }
    }

    /// Drops every fd of a process; returns them, and the conn_ids of the
    /// sessions that ended.
    pub fn close_process(
        &mut self,
        tgid: u32,
        ts: u64,
        out: &mut Vec<Record>,
        counters: &Counters,
    ) -> (Vec<u32>, Vec<u64>) {
        let keys: Vec<FdKey> = self
            .aliases
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        let mut ended = Vec::new();
        for k in &keys {
            ended.extend(self.remove_alias(*k, Some(ts), out, counters));
        }
        (keys.into_iter().map(|(_, fd)| fd).collect(), ended)
    }

    /// Closes everything (agent shutdown).
    pub fn drain(&mut self, out: &mut Vec<Record>, counters: &Counters) {
        self.aliases.clear();
        self.by_socket.clear();
        self.by_conn_id.clear();
        for (_, mut e) in self.sessions.drain() {
            let ts = e.session.last_ts();
            e.session.on_close(ts, out, counters);
        }
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{DIR_EGRESS, DIR_INGRESS, EVENT_DATA};

    use super::*;
    use crate::{metadata::conn::Role, protocols::test_support::FixedIds};

    fn meta(fd: u32) -> ConnMeta {
        ConnMeta::new(u64::from(fd), 1, fd, Role::Server, None, None)
    }

    fn data(tgid: u32, fd: u32, conn_id: u64, seq: u32, dir: u8, payload: &[u8]) -> DataHeader {
        DataHeader {
            kind: EVENT_DATA,
            direction: dir,
            tgid,
            tid: tgid,
            fd,
            conn_id,
            seq,
            ts: 100 + u64::from(seq),
            total_len: payload.len() as u32,
            captured_len: payload.len() as u32,
            ..Default::default()
        }
    }

    #[test]
    fn fds_of_one_socket_are_one_connection() {
        // An inetd-style child: the request is read on fd 0, the response
        // written on fd 1, each a connection of its own to the kernel.
        let counters = Counters::default();
        let mut out = Vec::new();
        let mut t = ConnTable::new(16, Arc::from(Vec::<String>::new()));
        let mut m0 = ConnMeta::new(10, 7, 0, Role::Server, None, None);
        m0.socket = Some(4242);
        let mut m1 = ConnMeta::new(11, 7, 1, Role::Server, None, None);
        m1.socket = Some(4242);
        t.open(m0, ProtocolKind::Http1, &mut out, &counters);
        t.open(m1, ProtocolKind::Http1, &mut out, &counters);
        assert_eq!(t.len(), 1);
        let req = b"GET /x HTTP/1.0\r\n\r\n";
        let resp = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        t.on_data(
            &data(7, 0, 10, 0, DIR_INGRESS, req),
            req,
            &mut FixedIds,
            &mut out,
            &counters,
        );
        t.on_data(
            &data(7, 1, 11, 0, DIR_EGRESS, resp),
            resp,
            &mut FixedIds,
            &mut out,
            &counters,
        );
        assert_eq!(out.len(), 1, "one exchange across the two fds");
        assert_eq!(
            counters.seq_gaps.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(
            counters
                .conns_joined
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Closing one fd keeps the connection; the last one ends it.
        assert_eq!(t.close(7, 0, 10, 200, &mut out, &counters), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.close(7, 1, 11, 201, &mut out, &counters), Some(10));
        assert!(t.is_empty());
        // The kernel's conn_id alone (a dup2'ed fd) joins too.
        let m2 = ConnMeta::new(20, 8, 0, Role::Server, None, None);
        let m3 = ConnMeta::new(20, 8, 1, Role::Server, None, None);
        t.open(m2, ProtocolKind::Http1, &mut out, &counters);
        t.open(m3, ProtocolKind::Http1, &mut out, &counters);
        assert_eq!(t.len(), 1);
        t.close_process(8, 300, &mut out, &counters);
        assert!(t.is_empty());
        // Without a socket identity (replay, fd not readable) fds stay
        // apart.
        t.open(meta(0), ProtocolKind::Http1, &mut out, &counters);
        t.open(meta(1), ProtocolKind::Http1, &mut out, &counters);
        assert_eq!(t.len(), 2);
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
