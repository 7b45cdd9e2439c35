//! The event pipeline: ring-buffer records -> connection table -> span
//! assembly -> output queue. Runs on one task; nothing here blocks on the
//! output (spans are `try_send`-ed and counted when dropped).

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tokio::sync::mpsc;
use tracer_common::{
    conn_key, ConnOpenEvent, ConnState, ORIGIN_INFERRED, PROTO_HTTP1, PROTO_IGNORED,
};

use crate::{
    clock::Clock,
    conntrack::{role_from_wire, ConnMeta, ConnTable, Exchange},
    events::{decode, Event},
    kernel_ctx::KernelContexts,
    linker::Linker,
    procinfo::{comm_str, ProcessCache},
    protocols::propagation::{header_names, Propagator},
    sockets,
    spans::{Span, SpanBuilder},
    stats::Stats,
};

/// A bounded hand-off to one consumer (local output, OTLP export):
/// batches travel over an unbounded channel, but the number of spans in
/// flight is capped by `capacity` through `queued` (the consumer decrements
/// it when done with a span), so memory is bounded and the event path
/// never waits. Spans beyond the cap are dropped and counted.
pub struct Sink {
    pub tx: mpsc::UnboundedSender<Arc<Vec<Span>>>,
    pub queued: Arc<AtomicUsize>,
    pub capacity: usize,
    pub dropped: DropCounter,
}

/// What the TLS prober needs to hear about processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `EVENT_EXEC`, `EVENT_DLOPEN` or `EVENT_PROC_EXIT` of a tgid.
    Process(u8, u32),
    /// A TLS handshake from this tgid (and its command name).
    TlsHandshake(u32, String),
    /// This tgid's TLS library produced plaintext: its TLS is visible.
    TlsPlaintext(u32),
}

/// Processes remembered as producing TLS plaintext before the set resets.
const MAX_TLS_PROCESSES: usize = 65_536;

/// Process notices held between two drains of the ring.
const MAX_NOTICES: usize = 8192;

/// Which counter a sink's drops go to.
#[derive(Debug, Clone, Copy)]
pub enum DropCounter {
    Output,
    Otlp,
}

impl Sink {
    fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.queued.load(Ordering::Relaxed))
    }
}

/// Which connections the user asked for (empty = all).
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub exes: Vec<String>,
    pub ports: Vec<u16>,
}

pub struct Pipeline {
    conns: ConnTable,
    linker: Linker,
    /// Ids the kernel chose, waiting for their requests.
    kernel_ctx: KernelContexts,
    /// Reused buffer of the kernel ids for one data event.
    kernel_ids: Vec<crate::linker::KernelIds>,
    /// Process notices for the TLS prober (bounded by `MAX_NOTICES`).
    notices: Vec<Notice>,
    /// Processes already reported as producing TLS plaintext (bounded).
    tls_plaintext: HashSet<u32>,
    procs: ProcessCache,
    filters: Filters,
    kernel_conns: BpfHashMap<MapData, u64, ConnState>,
    builder: SpanBuilder,
    clock: Clock,
    stats: Arc<Stats>,
    sinks: Vec<Sink>,
    /// Spans built since the last flush, sent to the sinks as one batch.
    batch: Vec<Span>,
    /// Reused buffer of exchanges completed by the current record.
    done: Vec<Exchange>,
    warned_decode: bool,
    warned_queue: bool,
}

impl Pipeline {
    pub fn new(
        max_conns: usize,
        filters: Filters,
        kernel_conns: BpfHashMap<MapData, u64, ConnState>,
        stats: Arc<Stats>,
        sinks: Vec<Sink>,
        procs: ProcessCache,
        propagators: Vec<Propagator>,
    ) -> Self {
        let trace_names: Arc<[String]> = Arc::from(header_names(&propagators));
        Self {
            conns: ConnTable::new(max_conns, trace_names),
            linker: Linker::new(propagators, stats.clone()),
            kernel_ctx: KernelContexts::default(),
            kernel_ids: Vec::new(),
            notices: Vec::new(),
            tls_plaintext: HashSet::new(),
            procs,
            filters,
            kernel_conns,
            builder: SpanBuilder,
            clock: Clock::new(),
            stats,
            sinks,
            batch: Vec::new(),
            done: Vec::new(),
            warned_decode: false,
            warned_queue: false,
        }
    }

    /// Handles one ring-buffer record.
    pub fn handle(&mut self, raw: &[u8]) {
        Stats::inc(&self.stats.events);
        match decode(raw) {
            Ok(Event::Open(ev)) => self.on_open(&ev),
            Ok(Event::Data(hdr, payload)) => {
                if hdr.flags & tracer_common::DATA_FLAG_GAP == 0 || hdr.total_len > 0 {
                    self.on_data(&hdr, payload);
                }
            }
            Ok(Event::Context(ev)) => self.kernel_ctx.on_event(&ev, &self.stats),
            Ok(Event::Proc(ev)) => self.notice(Notice::Process(ev.kind, ev.tgid)),
            Ok(Event::TlsSeen(ev)) => {
                self.notice(Notice::TlsHandshake(ev.tgid, comm_str(&ev.comm)))
            }
            Ok(Event::Close(ev)) => {
                self.conns.close(
                    ev.tgid,
                    ev.fd,
                    ev.conn_id,
                    ev.ts,
                    &self.stats,
                    &mut self.done,
                );
                // Completed exchanges free their thread first, so only
                // requests that never completed count their children as
                // orphans.
                self.emit_done();
                self.linker.forget_conn(ev.tgid, ev.fd);
                self.kernel_ctx.forget_conn(ev.conn_id, &self.stats);
            }
            Ok(Event::Exit(ev)) => {
                let fds = self
                    .conns
                    .close_process(ev.tgid, ev.ts, &self.stats, &mut self.done);
                // Flush spans before the process info goes.
                self.emit_done();
                self.linker.forget_process(ev.tgid);
                self.kernel_ctx.forget_process(ev.tgid, &self.stats);
                for fd in fds {
                    let _ = self.kernel_conns.remove(&conn_key(ev.tgid, fd));
                }
                self.procs.remove(ev.tgid);
                self.notice(Notice::Process(tracer_common::EVENT_PROC_EXIT, ev.tgid));
            }
            Err(e) => {
                Stats::inc(&self.stats.decode_errors);
                if !self.warned_decode {
                    self.warned_decode = true;
                    tracing::warn!("undecodable kernel event (further ones only counted): {e}");
                }
            }
        }
        self.emit_done();
    }

    /// Queues a process notice (exec, dlopen, TLS handshake, exit) for the
    /// TLS prober, which needs the loaded object and runs outside the
    /// pipeline.
    fn notice(&mut self, n: Notice) {
        if self.notices.len() >= MAX_NOTICES {
            Stats::inc(&self.stats.notices_dropped);
            return;
        }
        self.notices.push(n);
    }

    /// Takes the queued process notices.
    pub fn take_notices(&mut self, out: &mut Vec<Notice>) {
        out.append(&mut self.notices);
    }

    fn on_data(&mut self, hdr: &tracer_common::DataHeader, payload: &[u8]) {
        if matches!(
            hdr.source,
            tracer_common::SRC_SSL_READ | tracer_common::SRC_SSL_WRITE
        ) && !self.tls_plaintext.contains(&hdr.tgid)
        {
            if self.tls_plaintext.len() >= MAX_TLS_PROCESSES {
                self.tls_plaintext.clear();
            }
            self.tls_plaintext.insert(hdr.tgid);
            self.notice(Notice::TlsPlaintext(hdr.tgid));
        }
        let mut kernel = std::mem::take(&mut self.kernel_ids);
        kernel.clear();
        if !self.kernel_ctx.is_empty() {
            let ports = self.conns.ports(hdr.tgid, hdr.fd);
            self.kernel_ctx
                .take_for(hdr, ports, &mut kernel, &self.stats);
        }
        let mut used = 0usize;
        let linker = &mut self.linker;
        self.conns
            .on_data(hdr, payload, &self.stats, &mut self.done, &mut |r| {
                let k = r.index_in_chunk.and_then(|i| kernel.get(i)).copied();
                used += usize::from(k.is_some());
                linker.on_request(r, k)
            });
        if kernel.len() > used {
            self.stats
                .kernel_ctx_unmatched
                .fetch_add((kernel.len() - used) as u64, Ordering::Relaxed);
        }
        self.kernel_ids = kernel;
    }

    fn on_open(&mut self, ev: &ConnOpenEvent) {
        let comm = comm_str(&ev.comm);
        let process = self.procs.get_or_read(ev.tgid, &comm);
        if !self.filters.exes.is_empty()
            && !self
                .filters
                .exes
                .iter()
                .any(|e| *e == process.exe_name || *e == comm || *e == process.comm)
        {
            self.veto(ev);
            return;
        }
        if ev.proto != PROTO_HTTP1 {
            // HTTP/2 is classified in the kernel but not parsed yet.
            self.veto(ev);
            return;
        }
        let kernel_peer = sockets::wire_addr(ev.family, &ev.raddr, ev.rport);
        let (mut local, mut peer) = (None, kernel_peer);
        match sockets::inspect(ev.tgid, ev.fd) {
            Ok(info) if info.is_socket => {
                // Only trust the borrowed fd if it is the same connection
                // (the fd may already have been closed and reused).
                if kernel_peer.is_none() || info.peer == kernel_peer {
                    local = info.local;
                    peer = peer.or(info.peer);
                }
            }
            Ok(_) if ev.origin == ORIGIN_INFERRED => {
                // HTTP-looking bytes on a file or pipe: not ours.
                self.veto(ev);
                return;
            }
            Ok(_) | Err(_) => {}
        }
        if !self.filters.ports.is_empty() && !self.port_matches(local, peer) {
            self.veto(ev);
            return;
        }
        let mut meta = ConnMeta::new(ev.conn_id, ev.tgid, role_from_wire(ev.role), local, peer);
        meta.tls = ev.tls != 0;
        self.conns.open(ev.fd, meta, &self.stats, &mut self.done);
    }

    fn port_matches(&self, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> bool {
        [local, peer]
            .iter()
            .flatten()
            .any(|a| self.filters.ports.contains(&a.port()))
    }

    /// Tells the kernel to stop copying this connection.
    fn veto(&mut self, ev: &ConnOpenEvent) {
        Stats::inc(&self.stats.conns_vetoed);
        let key = conn_key(ev.tgid, ev.fd);
        if let Ok(mut st) = self.kernel_conns.get(&key, 0) {
            if st.conn_id == ev.conn_id {
                st.proto = PROTO_IGNORED;
                let _ = self.kernel_conns.insert(key, st, 0);
            }
        }
    }

    fn emit_done(&mut self) {
        if self.done.is_empty() {
            return;
        }
        for ex in std::mem::take(&mut self.done) {
            self.linker.on_exchange(&ex);
            let process = self.procs.get_or_read(ex.tgid, "");
            let n = self.batch.len();
            if self.sinks.iter().all(|s| s.room() <= n) {
                // Nobody could take it: don't even build it.
                for sink in &self.sinks {
                    self.count_drops(sink.dropped, 1);
                }
                continue;
            }
            let span = self.builder.build(ex, process, &self.clock, &self.stats);
            self.batch.push(span);
        }
    }

    fn count_drops(&self, which: DropCounter, n: u64) {
        let c = match which {
            DropCounter::Output => &self.stats.spans_dropped,
            DropCounter::Otlp => &self.stats.otlp_dropped,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Hands the spans built so far to every sink (one wakeup per batch).
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = Arc::new(std::mem::take(&mut self.batch));
        let n = batch.len();
        for i in 0..self.sinks.len() {
            let room = self.sinks[i].room();
            let part = if room >= n {
                batch.clone()
            } else {
                self.count_drops(self.sinks[i].dropped, (n - room) as u64);
                if !self.warned_queue {
                    self.warned_queue = true;
                    tracing::warn!("span queue full: dropping spans (counted)");
                }
                if room == 0 {
                    continue;
                }
                Arc::new(batch[..room].to_vec())
            };
            let sink = &self.sinks[i];
            sink.queued.fetch_add(part.len(), Ordering::Relaxed);
            if let Err(e) = sink.tx.send(part) {
                // The consumer is gone (shutdown): nothing to deliver to.
                sink.queued.fetch_sub(e.0.len(), Ordering::Relaxed);
            }
        }
    }

    /// Periodic upkeep.
    pub fn tick(&mut self) {
        self.clock.resync();
    }

    /// Agent shutdown: completes what can be completed.
    pub fn drain(&mut self) {
        self.conns.drain(&self.stats, &mut self.done);
        self.emit_done();
        self.flush();
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub fn process_count(&self) -> usize {
        self.procs.len()
    }
}
