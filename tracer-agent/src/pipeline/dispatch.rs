//! The first stage: each ring record is decoded (length-checked) and sent
//! where it belongs: connection opens through the filters into the table,
//! data into its session, kernel-chosen ids to the trace stage, process
//! events to the notices.

use tracer_common::{ConnOpenEvent, DataHeader, ORIGIN_INFERRED};

use super::{
    decode::{decode, Event},
    notices::Notice,
    Pipeline,
};
use crate::{
    metadata::conn::{ConnMeta, Role},
    metadata::{process::comm_str, sockets, HostView},
    protocols::ProtocolKind,
    telemetry::Counters,
};

impl Pipeline {
    /// Handles one ring-buffer record.
    pub fn handle(&mut self, raw: &[u8]) {
        Counters::inc(&self.counters.events);
        match decode(raw) {
            Ok(Event::Open(ev)) => self.on_open(&ev),
            Ok(Event::Data(hdr, payload)) => {
                if hdr.flags & tracer_common::DATA_FLAG_GAP == 0 || hdr.total_len > 0 {
                    self.on_data(&hdr, payload);
                }
            }
            Ok(Event::Context(ev)) => self.trace.on_kernel_ctx(&ev),
            Ok(Event::Proc(ev)) => {
                if ev.kind == tracer_common::EVENT_EXEC {
                    self.on_exec(ev.tgid);
                }
                if let Some(n) = Notice::from_process_event(ev.kind, ev.tgid) {
                    self.notices.push(n, &self.counters);
                }
            }
            Ok(Event::TlsSeen(ev)) => self.notices.push(
                Notice::TlsHandshake {
                    tgid: ev.tgid,
                    comm: comm_str(&ev.comm),
                },
                &self.counters,
            ),
            Ok(Event::GoTask(ev)) => {
                let conn_id = self.conns.meta(ev.tgid, ev.fd).map(|m| m.conn_id);
                self.trace.on_go_task(&ev, conn_id);
            }
            Ok(Event::Close(ev)) => {
                self.trace.forget_socket(ev.tgid, ev.fd);
                let ended = self.conns.close(
                    ev.tgid,
                    ev.fd,
                    ev.conn_id,
                    ev.ts,
                    &mut self.done,
                    &self.counters,
                );
                // Completed exchanges free their task first, so only
                // requests that never completed count their children as
                // orphans.
                self.emit_done();
                self.trace.forget_kernel_conn(ev.conn_id);
                if let Some(conn_id) = ended {
                    self.trace.forget_conn(conn_id);
                }
            }
            Ok(Event::Exit(ev)) => {
                let (fds, _ended) =
                    self.conns
                        .close_process(ev.tgid, ev.ts, &mut self.done, &self.counters);
                // Flush spans before the process info goes.
                self.emit_done();
                self.trace.forget_process(ev.tgid);
                for fd in fds {
                    self.kernel.forget_conn(ev.tgid, fd);
                }
                self.procs.remove(ev.tgid);
                self.resources.remove(ev.tgid);
                self.notices.push(Notice::Exit(ev.tgid), &self.counters);
            }
            Err(e) => {
                Counters::inc(&self.counters.decode_errors);
                if !self.warned_decode {
                    self.warned_decode = true;
                    tracing::warn!("undecodable kernel event (further ones only counted): {e}");
                }
            }
        }
        self.emit_done();
    }

    fn on_data(&mut self, hdr: &DataHeader, payload: &[u8]) {
        if matches!(
            hdr.source,
            tracer_common::SRC_SSL_READ | tracer_common::SRC_SSL_WRITE
        ) {
            self.notices.tls_plaintext(hdr.tgid, &self.counters);
        }
        // Ports only matter to match kernel-chosen ids (injection on):
        // no lookup for them otherwise.
        let ports = if self.trace.kernel_ids_waiting() {
            self.conns
                .meta(hdr.tgid, hdr.fd)
                .map(|m| (m.local.map(|a| a.port()), m.peer.map(|a| a.port())))
        } else {
            None
        };
        self.trace.begin_data(hdr, ports);
        self.conns.on_data(
            hdr,
            payload,
            &mut self.trace,
            &mut self.done,
            &self.counters,
        );
        self.trace.end_data();
    }

    fn on_open(&mut self, ev: &ConnOpenEvent) {
        let comm = comm_str(&ev.comm);
        let process = self.procs.get_or_read(ev.tgid, &comm, &self.counters);
        if !self
            .filters
            .exe_matches(&[&process.exe_name, &comm, &process.comm])
        {
            self.veto(ev);
            return;
        }
        let Some(kind) = ProtocolKind::from_kernel(ev.proto) else {
            // Classified in the kernel, but no parser for it yet.
            self.veto(ev);
            return;
        };
        let kernel_peer = sockets::wire_addr(ev.family, &ev.raddr, ev.rport);
        let (mut local, mut peer, mut socket) = (None, kernel_peer, None);
        let inspected = match self.host {
            HostView::Live => sockets::inspect(ev.tgid, ev.fd).ok(),
            HostView::Offline => None,
        };
        match inspected {
            Some(info) if info.is_socket => {
                // Only trust the borrowed fd if it is the same connection
                // (the fd may already have been closed and reused).
                if kernel_peer.is_none() || info.peer == kernel_peer {
                    local = info.local;
                    peer = peer.or(info.peer);
                    socket = info.inode;
                }
            }
            Some(_) if ev.origin == ORIGIN_INFERRED => {
                // HTTP-looking bytes on a file or pipe: not ours.
                self.veto(ev);
                return;
            }
            Some(_) | None => {}
        }
        if !self.filters.port_matches(local, peer) {
            self.veto(ev);
            return;
        }
        let mut meta = ConnMeta::new(
            ev.conn_id,
            ev.tgid,
            ev.fd,
            Role::from_wire(ev.role),
            local,
            peer,
        );
        meta.tls = ev.tls != 0;
        meta.socket = socket;
        meta.joined = ev.origin == ORIGIN_INFERRED;
        meta.thread_tasks = process.runtime.threads_are_tasks();
        self.conns.open(meta, kind, &mut self.done, &self.counters);
    }

    /// A process runs a new program: what was read of the old one is stale,
    /// and with injection on the kernel waits (`NO_LINK_PENDING`) for its
    /// runtime before linking by thread.
    fn on_exec(&mut self, tgid: u32) {
        self.procs.remove(tgid);
        self.resources.remove(tgid);
        if self.inject_context && self.host == HostView::Live {
            let runtime = self.procs.runtimes().of_pid(tgid, &self.counters);
            self.kernel
                .thread_linking(tgid, runtime.threads_are_tasks());
        }
    }

    /// Tells the kernel to stop copying this connection.
    fn veto(&mut self, ev: &ConnOpenEvent) {
        Counters::inc(&self.counters.conns_vetoed);
        self.kernel.ignore_conn(ev.tgid, ev.fd, ev.conn_id);
    }
}
