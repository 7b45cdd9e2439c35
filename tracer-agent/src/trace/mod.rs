//! Trace context: one object, [`TraceIds`], decides every request's ids.
//! It owns the in-process parent links ([`parent`]) and the ids the kernel
//! chose ([`kernel_ctx`]), and the protocol layer reaches it only through
//! the narrow [`ContextChooser`] trait.
//!
//! Rules, in order:
//! - ids the kernel chose (context injection on) are what went on the
//!   wire, so they win;
//! - an incoming context (any configured propagator) is continued;
//! - a CLIENT request that already carries one (an instrumented app
//!   propagated it) joins that trace, with no competing trace;
//! - otherwise a CLIENT request made by a task that is serving exactly one
//!   inbound request becomes that SERVER span's child;
//! - when the task serves several at once the link is unknowable: the
//!   CLIENT span stays a root and is counted;
//! - a CLIENT request of a process whose threads are not tasks (Go:
//!   [`task::TaskId::Shared`]) is linked by goroutine instead
//!   ([`goroutine`]): the SERVER span whose goroutine, or a goroutine it
//!   started, handed the request to the connection; else it stays a root
//!   and is counted.
pub mod goroutine;
pub mod ids;
pub mod kernel_ctx;
pub mod parent;
pub mod task;

use std::sync::Arc;

use tracer_common::{DataHeader, TraceCtxEvent};

use self::{
    ids::{IdGenerator, KernelIds, SpanIds},
    kernel_ctx::KernelContexts,
    parent::{Parents, Serving},
    task::TaskId,
};
use crate::{
    metadata::conn::{ConnMeta, Role},
    propagation::{extract, HeaderLookup, Propagator, RemoteContext},
    sampling::Sampler,
    telemetry::Counters,
};

/// A request whose head was just parsed: what choosing its ids needs.
pub struct RequestStart<'a> {
    pub conn: &'a ConnMeta,
    pub task: TaskId,
    /// The request's trace-context headers.
    pub headers: &'a dyn HeaderLookup,
    /// The request target (path and query; empty when unknown): the head
    /// sampler's route rules match its route template.
    pub target: &'a str,
    /// Position among the requests that started in this syscall's bytes,
    /// when the bytes started at a message boundary (the kernel chose ids
    /// for exactly those).
    pub index_in_chunk: Option<usize>,
    /// The HTTP/2 stream id (None for HTTP/1).
    pub stream: Option<u32>,
}

/// Chooses a request's ids when its head is parsed (implemented by
/// [`TraceIds`]). The protocol layer knows nothing of how.
pub trait ContextChooser {
    fn on_request(&mut self, r: &RequestStart<'_>) -> SpanIds;

    /// The data event's next request head goes on in a later data event of
    /// the same connection: the ids the kernel chose for it wait there.
    fn hold_for_head(&mut self) {}
}

pub struct TraceIds {
    propagators: Vec<Propagator>,
    gen: IdGenerator,
    parents: Parents,
    kernel: KernelContexts,
    /// Kernel ids for the requests of the data event being parsed, in
    /// request order, and how many of them were used.
    event_ids: Vec<KernelIds>,
    event_used: usize,
    /// The kernel connection of the data event being parsed.
    event_conn: u64,
    /// Parent links that follow goroutines (Go programs).
    go: goroutine::GoLinks,
    /// The head sampler; not consulted while it keeps every trace.
    sampler: Sampler,
    counters: Arc<Counters>,
}

impl TraceIds {
    pub fn new(propagators: Vec<Propagator>, counters: Arc<Counters>) -> Self {
        Self {
            propagators,
            gen: IdGenerator::default(),
            parents: Parents::default(),
            kernel: KernelContexts::default(),
            event_ids: Vec::new(),
            event_used: 0,
            event_conn: 0,
            go: goroutine::GoLinks::default(),
            sampler: Sampler::parse("always_on", None).unwrap_or_default(),
            counters,
        }
    }

    /// Decides each local trace this node starts or continues with
    /// `sampler` (written into the sampled flag). A sampler that keeps
    /// everything is not consulted at all.
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// The degradation level's ceiling on every trace's ratio (1: none).
    pub fn set_sampling_cap(&mut self, cap: f64) {
        self.sampler.cap = cap;
    }

    /// The head decision of a local root (a SERVER request, or a CLIENT
    /// request with no parent) whose ids the agent chose. Ids the kernel
    /// chose already went on the wire with their flags: those stand.
    fn head_sample(&self, ids: &mut SpanIds, role: Role, remote: Option<bool>, target: &str) {
        let s = &self.sampler;
        if s.keeps_all() || role != Role::Server && ids.parent_span_id.is_some() {
            return;
        }
        let route = if s.has_routes() && !target.is_empty() {
            crate::spans::route::route_of(crate::spans::route::path_of(target))
        } else {
            String::new()
        };
        let keep = s.sample(&ids.trace_id, remote, &route);
        ids.flags = (ids.flags & !1) | u8::from(keep);
    }

    /// A Go goroutine context met a connection; `conn_id` is the
    /// agent's connection on (tgid, fd), if it has one.
    pub fn on_go_task(&mut self, ev: &tracer_common::GoTaskEvent, conn_id: Option<u64>) {
        match ev.role {
            tracer_common::GO_TASK_SERVE => {
                self.go
                    .serve(ev.tgid, ev.ctx_id, conn_id, ev.stream, &self.counters);
            }
            tracer_common::GO_TASK_CLIENT if ev.stream != 0 => self.go.stream_opened(
                ev.tgid,
                ev.fd,
                ev.stream,
                ev.ctx_id,
                std::time::Instant::now(),
                &self.counters,
            ),
            tracer_common::GO_TASK_CLIENT => self.go.client(
                ev.tgid,
                ev.fd,
                ev.ctx_id,
                std::time::Instant::now(),
                &self.counters,
            ),
            // A kernel object the agent does not match: counted, dropped.
            _ => Counters::inc(&self.counters.decode_errors),
        }
    }

    /// A Go HTTP/2 CLIENT stream ended: with no parent yet, it takes the
    /// SERVER span its stream was opened for (see [`goroutine`]). The span
    /// is not out yet, so its trace can still change.
    pub fn settle_go_stream(&mut self, conn: &ConnMeta, stream: u32, ids: &mut SpanIds) {
        if conn.role != Role::Client || conn.thread_tasks {
            return;
        }
        let parent = self
            .go
            .stream_parent(conn.tgid, conn.fd, stream, std::time::Instant::now());
        match parent {
            Some(p) if ids.parent_span_id.is_none() => {
                Counters::inc(&self.counters.links_goroutine);
                ids.trace_id = p.trace_id;
                ids.parent_span_id = Some(p.span_id);
                ids.flags = p.flags;
                ids.tracestate = p.tracestate.clone();
            }
            // The application's own context won.
            Some(_) => {}
            None if ids.parent_span_id.is_none() => {
                Counters::inc(&self.counters.links_unfollowable);
            }
            None => {}
        }
    }

    /// A socket of the kernel's closed.
    pub fn forget_socket(&mut self, tgid: u32, fd: u32) {
        self.go.forget_socket(tgid, fd);
    }

    /// Ids the kernel chose, ahead of the data event they belong to.
    pub fn on_kernel_ctx(&mut self, ev: &TraceCtxEvent) {
        self.kernel.on_event(ev, &self.counters);
    }

    /// Whether any kernel-chosen ids wait for their data event.
    pub fn kernel_ids_waiting(&self) -> bool {
        !self.kernel.is_empty()
    }

    /// A data event is about to be parsed: takes the kernel's ids for it.
    /// `ports` are the connection's (local, peer) ports where known.
    pub fn begin_data(&mut self, hdr: &DataHeader, ports: Option<(Option<u16>, Option<u16>)>) {
        self.event_ids.clear();
        self.event_used = 0;
        self.event_conn = hdr.conn_id;
        if self.kernel_ids_waiting() {
            self.kernel
                .take_for(hdr, ports, &mut self.event_ids, &self.counters);
        }
    }

    /// The data event was parsed: kernel ids no request took are counted.
    pub fn end_data(&mut self) {
        let unused = self.event_ids.len().saturating_sub(self.event_used);
        if unused > 0 {
            Counters::add(&self.counters.kernel_ctx_unmatched, unused as u64);
            tracing::debug!(unused, "kernel ids no request of the data event took");
        }
        self.event_ids.clear();
    }

    /// A request/response pair completed: a SERVER span frees its task.
    /// How a completed CLIENT request relates to what its task serves:
    /// (its parent is a SERVER span the task is serving, the task serves
    /// something and the request is a root anyway).
    pub fn client_link(&self, task: TaskId, parent: Option<[u8; 8]>) -> (bool, bool) {
        match parent {
            Some(p) => (self.parents.serves(task, p), false),
            None => (false, self.parents.serving(task) > 0),
        }
    }

    pub fn on_completed(&mut self, role: Role, task: TaskId, span_id: [u8; 8]) {
        if role == Role::Server {
            self.parents.server_done(task, span_id);
        }
    }

    /// A connection (the session, `ConnMeta::conn_id`) ended: its
    /// unfinished SERVER spans are gone.
    pub fn forget_conn(&mut self, conn_id: u64) {
        self.parents.forget_conn(conn_id, &self.counters);
        self.go.forget_conn(conn_id);
    }

    /// The kernel closed one of its connections (one fd): SERVER contexts
    /// waiting for its data can no longer match.
    pub fn forget_kernel_conn(&mut self, conn_id: u64) {
        self.kernel.forget_conn(conn_id, &self.counters);
    }

    /// A process exited.
    pub fn forget_process(&mut self, tgid: u32) {
        self.parents.forget_process(tgid, &self.counters);
        self.go.forget_process(tgid);
        self.kernel.forget_process(tgid, &self.counters);
    }

    /// SERVER spans being served right now.
    pub fn active_servers(&self) -> usize {
        self.parents.len()
    }

    fn kernel_ids(&mut self, index: Option<usize>) -> Option<KernelIds> {
        let k = index.and_then(|i| self.event_ids.get(i)).copied();
        self.event_used += usize::from(k.is_some());
        k
    }

    /// Ids of a request the kernel chose ids for.
    fn kernel_chosen(
        &mut self,
        k: KernelIds,
        remote: Option<RemoteContext>,
        role: Role,
        task: TaskId,
        go_parent: Option<SpanIds>,
    ) -> SpanIds {
        match (remote, role) {
            (remote, Role::Client) => {
                // Injected: the wire carries these ids, whatever the agent
                // would have chosen.
                if remote.is_some() {
                    Counters::inc(&self.counters.inject_conflicts);
                }
                let tracestate = match (k.linked, k.parent_span_id, go_parent) {
                    // Go: the kernel followed the same goroutine chain as
                    // the agent, so both name the same SERVER span.
                    (true, Some(parent), Some(go)) => {
                        if go.span_id == parent {
                            Counters::inc(&self.counters.links_goroutine);
                            go.tracestate
                        } else {
                            Counters::inc(&self.counters.go_inject_disagreed);
                            None
                        }
                    }
                    (true, Some(parent), None) => {
                        Counters::inc(&self.counters.links_in_process);
                        self.parents.tracestate(task, parent)
                    }
                    (true, None, _) => {
                        Counters::inc(&self.counters.links_in_process);
                        None
                    }
                    (false, _, Some(_)) => {
                        // The agent had a link the kernel lost (an
                        // evicted context): the wire's root wins.
                        Counters::inc(&self.counters.go_inject_disagreed);
                        None
                    }
                    (false, _, None) => None,
                };
                SpanIds {
                    trace_id: k.trace_id,
                    span_id: k.span_id,
                    parent_span_id: k.parent_span_id,
                    flags: k.flags,
                    tracestate,
                }
            }
            (Some(ctx), Role::Server) => {
                // The caller's context (by --propagators) is continued; the
                // span id is the kernel's, which the requests this one
                // causes were given as their parent.
                if ctx.trace_id != k.trace_id {
                    Counters::inc(&self.counters.inject_context_mismatch);
                }
                SpanIds {
                    trace_id: ctx.trace_id,
                    span_id: k.span_id,
                    parent_span_id: ctx.parent_id,
                    flags: ctx.flags,
                    tracestate: ctx.tracestate,
                }
            }
            (None, Role::Server) => {
                if k.parent_span_id.is_some() {
                    // A traceparent the configured propagators ignore.
                    Counters::inc(&self.counters.inject_context_mismatch);
                }
                SpanIds {
                    trace_id: k.trace_id,
                    span_id: k.span_id,
                    parent_span_id: None,
                    flags: k.flags,
                    tracestate: None,
                }
            }
        }
    }

    /// Ids chosen by the agent alone. `go_parent`: the SERVER span a Go
    /// CLIENT request was made for, by goroutine links.
    fn agent_chosen(
        &mut self,
        remote: Option<RemoteContext>,
        role: Role,
        task: TaskId,
        go_parent: Option<SpanIds>,
        settles_later: bool,
    ) -> SpanIds {
        let span_id = self.gen.span_id();
        match (remote, role) {
            (Some(ctx), _) => SpanIds {
                trace_id: ctx.trace_id,
                span_id,
                parent_span_id: ctx.parent_id,
                flags: ctx.flags,
                tracestate: ctx.tracestate,
            },
            (None, Role::Server) => self.gen.root(span_id),
            (None, Role::Client) => match self.parents.adopt(task) {
                Serving::One(parent) => {
                    let ids = SpanIds {
                        trace_id: parent.trace_id,
                        span_id,
                        parent_span_id: Some(parent.span_id),
                        flags: parent.flags,
                        tracestate: parent.tracestate.clone(),
                    };
                    Counters::inc(&self.counters.links_in_process);
                    ids
                }
                Serving::Several => {
                    // One task, several requests in flight: cannot tell
                    // which.
                    Counters::inc(&self.counters.links_ambiguous);
                    self.gen.root(span_id)
                }
                // A Go HTTP/2 stream: linked when it ends (settle_go_stream).
                Serving::Unfollowable if settles_later => self.gen.root(span_id),
                Serving::Unfollowable => match go_parent {
                    Some(parent) => {
                        Counters::inc(&self.counters.links_goroutine);
                        SpanIds {
                            trace_id: parent.trace_id,
                            span_id,
                            parent_span_id: Some(parent.span_id),
                            flags: parent.flags,
                            tracestate: parent.tracestate,
                        }
                    }
                    None => {
                        Counters::inc(&self.counters.links_unfollowable);
                        self.gen.root(span_id)
                    }
                },
                Serving::Nothing => self.gen.root(span_id),
            },
        }
    }
}

impl ContextChooser for TraceIds {
    fn hold_for_head(&mut self) {
        if let Some(k) = self.event_ids.get(self.event_used).copied() {
            self.event_used += 1;
            self.kernel.hold(self.event_conn, k, &self.counters);
        }
    }

    fn on_request(&mut self, r: &RequestStart<'_>) -> SpanIds {
        let (remote, errors) = extract(r.headers, &self.propagators);
        for e in errors {
            Counters::inc(&self.counters.invalid_trace_headers);
            tracing::debug!("ignoring invalid trace header: {e}");
        }
        let role = r.conn.role;
        // A Go CLIENT request takes the claim on its socket whatever else
        // decides its ids, so the claim cannot pass to a later request.
        let go_parent = (role == Role::Client && !r.conn.thread_tasks && r.stream.is_none())
            .then(|| {
                self.go
                    .parent_of(r.conn.tgid, r.conn.fd, std::time::Instant::now())
                    .cloned()
            })
            .flatten();
        let remote_sampled = remote.as_ref().map(|c| c.flags & 1 == 1);
        let kernel = self.kernel_ids(r.index_in_chunk);
        let by_kernel = kernel.is_some();
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(
                phase = "request",
                conn = r.conn.conn_id,
                pid = r.conn.tgid,
                role = ?role,
                target = %crate::spans::route::path_of(r.target),
                remote_sampled = ?remote_sampled,
                "request seen"
            );
        }
        let ids = match kernel {
            Some(k) => self.kernel_chosen(k, remote, role, r.task, go_parent),
            None => {
                let settles_later =
                    role == Role::Client && !r.conn.thread_tasks && r.stream.is_some();
                let mut ids = self.agent_chosen(remote, role, r.task, go_parent, settles_later);
                self.head_sample(&mut ids, role, remote_sampled, r.target);
                ids
            }
        };
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(
                phase = "ids",
                conn = r.conn.conn_id,
                trace_id = %crate::spans::hex(&ids.trace_id),
                span_id = %crate::spans::hex(&ids.span_id),
                parent = %ids.parent_span_id.map_or_else(|| "-".to_owned(), |p| crate::spans::hex(&p)),
                sampled = ids.flags & 1 == 1,
                chosen_by = if by_kernel { "kernel" } else { "agent" },
                "ids chosen"
            );
        }
        if role == Role::Server {
            self.parents
                .start_server(r.task, r.conn.conn_id, &ids, &self.counters);
            if !r.conn.thread_tasks {
                self.go
                    .server_started(r.conn.conn_id, r.stream.unwrap_or(0), &ids, &self.counters);
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tracer_common::{DataHeader, TraceCtxEvent, CTX_LINKED, DIR_EGRESS, DIR_INGRESS};

    use super::*;

    struct H(Vec<(&'static str, String)>);
    impl HeaderLookup for H {
        fn get(&self, n: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        }
    }

    fn conn(role: Role, conn_id: u64) -> ConnMeta {
        ConnMeta::new(conn_id, 1, conn_id as u32, role, None, None)
    }

    fn ids() -> TraceIds {
        TraceIds::new(
            vec![Propagator::TraceContext, Propagator::B3],
            Arc::new(Counters::default()),
        )
    }

    /// A request on connection `conn_id` by thread `tid` of process 1.
    fn req(t: &mut TraceIds, role: Role, tid: u32, conn_id: u64, h: &H) -> SpanIds {
        req_at(t, role, tid, conn_id, h, None)
    }

    fn req_at(
        t: &mut TraceIds,
        role: Role,
        tid: u32,
        conn_id: u64,
        h: &H,
        index: Option<usize>,
    ) -> SpanIds {
        let c = conn(role, conn_id);
        t.on_request(&RequestStart {
            conn: &c,
            task: TaskId::thread(1, tid),
            headers: h,
            target: "/",
            index_in_chunk: index,
            stream: None,
        })
    }

    fn none() -> H {
        H(vec![])
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn client_on_serving_thread_is_child_of_server() {
        let mut t = ids();
        let server = req(
            &mut t,
            Role::Server,
            10,
            3,
            &H(vec![("traceparent", TP.into())]),
        );
        let client = req(&mut t, Role::Client, 10, 4, &none());
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        // Another thread's client call is not linked.
        let other = req(&mut t, Role::Client, 11, 5, &none());
        assert_ne!(other.trace_id, server.trace_id);
        assert_eq!(other.parent_span_id, None);
    }

    #[test]
    fn several_requests_on_one_thread_leave_client_as_counted_root() {
        let mut t = ids();
        let a = req(&mut t, Role::Server, 10, 3, &none());
        let b = req(&mut t, Role::Server, 10, 4, &none());
        let c = req(&mut t, Role::Client, 10, 5, &none());
        assert_eq!(c.parent_span_id, None);
        assert_ne!(c.trace_id, a.trace_id);
        assert_ne!(c.trace_id, b.trace_id);
        assert_eq!(t.counters.links_ambiguous.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn shared_threads_never_link() {
        let mut t = ids();
        let mut server = conn(Role::Server, 3);
        server.thread_tasks = false;
        let task = TaskId::Shared { tgid: 1, tid: 10 };
        t.on_request(&RequestStart {
            conn: &server,
            task,
            headers: &none(),
            target: "/",
            index_in_chunk: None,
            stream: None,
        });
        // Nothing is keyed by a shared thread ...
        assert_eq!(t.active_servers(), 0);
        let mut client = conn(Role::Client, 4);
        client.thread_tasks = false;
        let c = t.on_request(&RequestStart {
            conn: &client,
            task,
            headers: &none(),
            target: "/",
            index_in_chunk: None,
            stream: None,
        });
        // ... so the call the same thread writes is a counted root.
        assert_eq!(c.parent_span_id, None);
        assert_eq!(t.counters.links_unfollowable.load(Ordering::Relaxed), 1);
        assert_eq!(t.counters.links_in_process.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn app_propagated_context_wins_over_thread_link() {
        let mut t = ids();
        req(&mut t, Role::Server, 10, 3, &none());
        let b3 = format!("{}-{}-1", "a".repeat(32), "b".repeat(16));
        let c = req(&mut t, Role::Client, 10, 5, &H(vec![("b3", b3)]));
        assert_eq!(c.trace_id, [0xaa; 16]);
        assert_eq!(c.parent_span_id, Some([0xbb; 8]));
    }

    #[test]
    fn completion_and_close_free_the_task_and_count_orphans() {
        let mut t = ids();
        req(&mut t, Role::Server, 10, 3, &none());
        req(&mut t, Role::Client, 10, 4, &none());
        assert_eq!(t.active_servers(), 1);
        // The server request never completed: its connection closed.
        t.forget_conn(3);
        assert_eq!(t.active_servers(), 0);
        assert_eq!(t.counters.orphan_spans.load(Ordering::Relaxed), 1);
        // The thread is free: a later client call is a root.
        let c = req(&mut t, Role::Client, 10, 4, &none());
        assert_eq!(c.parent_span_id, None);
        // A completed SERVER exchange frees its task by key.
        let s = req(&mut t, Role::Server, 12, 7, &none());
        t.on_completed(Role::Server, TaskId::thread(1, 12), s.span_id);
        assert_eq!(t.active_servers(), 0);
        assert_eq!(t.counters.orphan_spans.load(Ordering::Relaxed), 1);
        req(&mut t, Role::Server, 13, 8, &none());
        t.forget_process(1);
        assert_eq!(t.active_servers(), 0);
    }

    fn kernel_ev(kind: u8, trace: u8, span: u8, parent: Option<u8>, linked: bool) -> TraceCtxEvent {
        TraceCtxEvent {
            kind,
            flags: 1,
            origin: if linked { CTX_LINKED } else { 0 },
            tgid: 1,
            tid: 10,
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent_id: parent.map_or([0; 8], |p| [p; 8]),
            ..Default::default()
        }
    }

    fn data(direction: u8, conn_id: u64, seq: u32) -> DataHeader {
        DataHeader {
            direction,
            tgid: 1,
            tid: 10,
            conn_id,
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn kernel_ids_are_what_went_on_the_wire() {
        let mut t = ids();
        let traced = H(vec![
            ("traceparent", TP.into()),
            ("tracestate", "k=v".into()),
        ]);
        // SERVER: the caller's trace and parent, the kernel's span id (the
        // one its injected children name as parent).
        let mut sev = kernel_ev(tracer_common::EVENT_SERVER_CTX, 0, 9, Some(1), false);
        sev.trace_id = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        sev.conn_id = 3;
        t.on_kernel_ctx(&sev);
        t.begin_data(&data(DIR_INGRESS, 3, 0), None);
        let server = req_at(&mut t, Role::Server, 10, 3, &traced, Some(0));
        t.end_data();
        assert_eq!(server.span_id, [9; 8]);
        assert_eq!(server.trace_id, sev.trace_id);
        assert_eq!(
            server.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(server.tracestate.as_deref(), Some("k=v"));
        assert_eq!(
            t.counters.inject_context_mismatch.load(Ordering::Relaxed),
            0
        );
        // CLIENT injected as its child: the kernel's ids, the server's
        // tracestate.
        let mut cev = kernel_ev(tracer_common::EVENT_INJECTED, 0, 5, Some(9), true);
        cev.trace_id = sev.trace_id;
        t.on_kernel_ctx(&cev);
        // An injected root follows in the same send (the kernel saw it as
        // ambiguous): it stays a root.
        t.on_kernel_ctx(&kernel_ev(tracer_common::EVENT_INJECTED, 7, 6, None, false));
        t.begin_data(&data(DIR_EGRESS, 4, 0), None);
        let client = req_at(&mut t, Role::Client, 10, 4, &none(), Some(0));
        let root = req_at(&mut t, Role::Client, 10, 4, &none(), Some(1));
        t.end_data();
        assert_eq!(client.span_id, [5; 8]);
        assert_eq!(client.parent_span_id, Some([9; 8]));
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.tracestate.as_deref(), Some("k=v"));
        assert_eq!(t.counters.links_in_process.load(Ordering::Relaxed), 1);
        assert_eq!(root.parent_span_id, None);
        assert_eq!(root.trace_id, [7; 16]);
        assert_eq!(t.counters.kernel_ctx_unmatched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn kernel_and_agent_disagreeing_is_counted() {
        let mut t = ids();
        // Incoming B3 only: the agent continues it, the kernel (reading
        // only traceparent here) chose a new trace for the requests it
        // causes.
        let b3 = format!("{}-{}-1", "a".repeat(32), "b".repeat(16));
        let mut sev = kernel_ev(tracer_common::EVENT_SERVER_CTX, 3, 4, None, false);
        sev.conn_id = 1;
        t.on_kernel_ctx(&sev);
        t.begin_data(&data(DIR_INGRESS, 1, 0), None);
        let s = req_at(&mut t, Role::Server, 10, 1, &H(vec![("b3", b3)]), Some(0));
        t.end_data();
        assert_eq!(s.trace_id, [0xaa; 16]);
        assert_eq!(s.span_id, [4; 8]);
        assert_eq!(
            t.counters.inject_context_mismatch.load(Ordering::Relaxed),
            1
        );
        // A CLIENT request with an app header that was injected anyway:
        // counted, wire ids win.
        let own = H(vec![(
            "b3",
            format!("{}-{}", "c".repeat(32), "d".repeat(16)),
        )]);
        t.on_kernel_ctx(&kernel_ev(tracer_common::EVENT_INJECTED, 8, 8, None, false));
        t.begin_data(&data(DIR_EGRESS, 2, 0), None);
        let c = req_at(&mut t, Role::Client, 10, 2, &own, Some(0));
        // The request was parsed but the kernel's second id (none here)
        // and any left over are counted at the end.
        t.end_data();
        assert_eq!(c.trace_id, [8; 16]);
        assert_eq!(t.counters.inject_conflicts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn kernel_ids_no_request_took_are_counted() {
        let mut t = ids();
        t.on_kernel_ctx(&kernel_ev(tracer_common::EVENT_INJECTED, 8, 8, None, false));
        t.on_kernel_ctx(&kernel_ev(tracer_common::EVENT_INJECTED, 9, 9, None, false));
        t.begin_data(&data(DIR_EGRESS, 2, 0), None);
        req_at(&mut t, Role::Client, 10, 2, &none(), Some(0));
        t.end_data();
        assert_eq!(t.counters.kernel_ctx_unmatched.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_head_decision_is_taken_once_and_children_inherit_it() {
        let sampler = Sampler::parse("parentbased_always_on", None)
            .and_then(|s| s.with_routes(&["/health=0".into()]))
            .expect("sampler");
        let mut t = ids().with_sampler(sampler);
        // An incoming sampled=0 parent is followed ...
        let h = H(vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
        )]);
        let server = req(&mut t, Role::Server, 10, 3, &h);
        assert_eq!(server.flags & 1, 0);
        // ... and the CLIENT call it causes carries the same decision.
        let client = req(&mut t, Role::Client, 10, 4, &none());
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_eq!(client.flags & 1, 0);
        t.on_completed(Role::Server, TaskId::thread(1, 10), server.span_id);
        // A root at a 0-ratio route is dropped; elsewhere kept.
        let c = conn(Role::Server, 5);
        let mut at = |target: &str, tid| {
            t.on_request(&RequestStart {
                conn: &c,
                task: TaskId::thread(1, tid),
                headers: &none(),
                target,
                index_in_chunk: None,
                stream: None,
            })
        };
        assert_eq!(at("/health/live?x=1", 20).flags & 1, 0);
        assert_eq!(at("/orders/42", 21).flags & 1, 1);
    }
}
