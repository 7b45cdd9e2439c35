//! Trace context of each request, decided when its head is parsed:
//! - an incoming context (any configured propagator) is continued;
//! - a CLIENT request that already carries one (an instrumented app
//!   propagated it) joins that trace, with no competing trace;
//! - otherwise a CLIENT request made by a thread that is serving exactly one
//!   inbound request becomes that SERVER span's child (thread-per-request
//!   servers);
//! - when the thread serves several at once (event loops, pools) the link is
//!   unknowable from the thread: the CLIENT span stays a root and is counted.
//!   A wrong link is worse than none.

use std::{collections::HashMap, sync::Arc};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::{
    conntrack::{Exchange, Role},
    protocols::{
        http1::RequestHead,
        propagation::{extract, Propagator},
    },
    stats::Stats,
};

/// Active SERVER spans tracked at once; beyond this the table is reset
/// (and counted) rather than grown.
const MAX_ACTIVE: usize = 65_536;

/// Ids chosen for one request's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags, kept from the remote parent (sampled by default).
    pub flags: u8,
    pub tracestate: Option<String>,
}

/// What the linker needs to know about a request whose head was just parsed.
pub struct RequestStart<'a> {
    pub role: Role,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub head: &'a RequestHead,
    /// Position among the requests that started in this syscall's bytes,
    /// when the bytes started at a message boundary.
    pub index_in_chunk: Option<usize>,
}

/// Ids the kernel chose for a request (context injection on): for a
/// SERVER request when it was read, for a CLIENT request when its
/// `traceparent` was injected. These are what went on the wire, so they win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
    /// The CLIENT request was made a child of the thread's SERVER span.
    pub linked: bool,
}

impl From<&tracer_common::TraceCtxEvent> for KernelIds {
    fn from(ev: &tracer_common::TraceCtxEvent) -> Self {
        Self {
            trace_id: ev.trace_id,
            span_id: ev.span_id,
            parent_span_id: (ev.parent_id != [0; 8]).then_some(ev.parent_id),
            flags: ev.flags,
            linked: ev.origin == tracer_common::CTX_LINKED,
        }
    }
}

#[derive(Debug)]
struct Active {
    ids: SpanIds,
    fd: u32,
    /// CLIENT spans linked to this SERVER span so far.
    children: u64,
}

pub struct Linker {
    propagators: Vec<Propagator>,
    rng: SmallRng,
    /// SERVER spans in progress, by serving thread (tgid, tid).
    active: HashMap<(u32, u32), Vec<Active>>,
    len: usize,
    stats: Arc<Stats>,
}

impl Linker {
    pub fn new(propagators: Vec<Propagator>, stats: Arc<Stats>) -> Self {
        Self {
            propagators,
            rng: SmallRng::from_entropy(),
            active: HashMap::new(),
            len: 0,
            stats,
        }
    }

    fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let id: [u8; 16] = self.rng.gen();
            if id != [0; 16] {
                return id;
            }
        }
    }

    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id: [u8; 8] = self.rng.gen();
            if id != [0; 8] {
                return id;
            }
        }
    }

    /// Chooses the ids of a request's span; `kernel` holds the ids the
    /// kernel already chose for it, if any.
    pub fn on_request(&mut self, r: &RequestStart<'_>, kernel: Option<KernelIds>) -> SpanIds {
        let (remote, errors) = extract(&r.head.headers, &self.propagators);
        for e in errors {
            Stats::inc(&self.stats.invalid_trace_headers);
            tracing::debug!("ignoring invalid trace header: {e}");
        }
        let span_id = self.span_id();
        let ids = match (kernel, remote, r.role) {
            (Some(k), remote, Role::Client) => {
                // Injected: the wire carries these ids, whatever the agent
                // would have chosen.
                if remote.is_some() {
                    Stats::inc(&self.stats.inject_conflicts);
                }
                let tracestate = if k.linked {
                    Stats::inc(&self.stats.links_in_process);
                    self.server_tracestate(r.tgid, r.tid, k.parent_span_id)
                } else {
                    None
                };
                SpanIds {
                    trace_id: k.trace_id,
                    span_id: k.span_id,
                    parent_span_id: k.parent_span_id,
                    flags: k.flags,
                    tracestate,
                }
            }
            (Some(k), Some(ctx), Role::Server) => {
                // The caller's context (by --propagators) is continued; the
                // span id is the kernel's, which the requests this one
                // causes were given as their parent.
                if ctx.trace_id != k.trace_id {
                    Stats::inc(&self.stats.inject_context_mismatch);
                }
                SpanIds {
                    trace_id: ctx.trace_id,
                    span_id: k.span_id,
                    parent_span_id: ctx.parent_id,
                    flags: ctx.flags,
                    tracestate: ctx.tracestate,
                }
            }
            (Some(k), None, Role::Server) => {
                if k.parent_span_id.is_some() {
                    // A traceparent the configured propagators ignore.
                    Stats::inc(&self.stats.inject_context_mismatch);
                }
                SpanIds {
                    trace_id: k.trace_id,
                    span_id: k.span_id,
                    parent_span_id: None,
                    flags: k.flags,
                    tracestate: None,
                }
            }
            (None, remote, role) => self.agent_ids(remote, role, r, span_id),
        };
        if r.role == Role::Server {
            if self.len >= MAX_ACTIVE {
                self.active.clear();
                self.len = 0;
                Stats::inc(&self.stats.link_table_resets);
            }
            self.active
                .entry((r.tgid, r.tid))
                .or_default()
                .push(Active {
                    ids: ids.clone(),
                    fd: r.fd,
                    children: 0,
                });
            self.len += 1;
        }
        ids
    }

    /// Ids chosen by the agent alone (no kernel decision for this request).
    fn agent_ids(
        &mut self,
        remote: Option<crate::protocols::propagation::RemoteContext>,
        role: Role,
        r: &RequestStart<'_>,
        span_id: [u8; 8],
    ) -> SpanIds {
        match (remote, role) {
            (Some(ctx), _) => SpanIds {
                trace_id: ctx.trace_id,
                span_id,
                parent_span_id: ctx.parent_id,
                flags: ctx.flags,
                tracestate: ctx.tracestate,
            },
            (None, Role::Server) => SpanIds {
                trace_id: self.trace_id(),
                span_id,
                parent_span_id: None,
                flags: 1,
                tracestate: None,
            },
            (None, Role::Client) => self.client_parent(r.tgid, r.tid, span_id),
        }
    }

    /// `tracestate` of the SERVER span `parent` that thread (tgid, tid) is
    /// serving.
    fn server_tracestate(&self, tgid: u32, tid: u32, parent: Option<[u8; 8]>) -> Option<String> {
        let parent = parent?;
        self.active
            .get(&(tgid, tid))?
            .iter()
            .find(|a| a.ids.span_id == parent)?
            .ids
            .tracestate
            .clone()
    }

    fn client_parent(&mut self, tgid: u32, tid: u32, span_id: [u8; 8]) -> SpanIds {
        let new_root = |this: &mut Self| SpanIds {
            trace_id: this.trace_id(),
            span_id,
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        };
        match self.active.get_mut(&(tgid, tid)).map(Vec::as_mut_slice) {
            Some([only]) => {
                only.children += 1;
                Stats::inc(&self.stats.links_in_process);
                SpanIds {
                    trace_id: only.ids.trace_id,
                    span_id,
                    parent_span_id: Some(only.ids.span_id),
                    flags: only.ids.flags,
                    tracestate: only.ids.tracestate.clone(),
                }
            }
            Some(several) if !several.is_empty() => {
                // One thread, several requests in flight: cannot tell which.
                Stats::inc(&self.stats.links_ambiguous);
                new_root(self)
            }
            _ => new_root(self),
        }
    }

    fn remove_where(&mut self, tgid: u32, keep: impl Fn(u32, &Active) -> bool, completed: bool) {
        let mut removed = 0;
        let mut orphans = 0;
        self.active.retain(|(t, tid), list| {
            if *t != tgid {
                return true;
            }
            list.retain(|a| {
                let k = keep(*tid, a);
                if !k {
                    removed += 1;
                    if !completed {
                        orphans += a.children;
                    }
                }
                k
            });
            !list.is_empty()
        });
        self.len = self.len.saturating_sub(removed);
        if orphans > 0 {
            // These CLIENT spans name a parent that will never be exported.
            self.stats
                .orphan_spans
                .fetch_add(orphans, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A SERVER exchange completed: its thread is free again.
    pub fn on_exchange(&mut self, ex: &Exchange) {
        if ex.role != Role::Server {
            return;
        }
        let span = ex.ids.span_id;
        self.remove_where(ex.tgid, |_, a| a.ids.span_id != span, true);
    }

    /// A connection closed: requests on it that never completed are gone.
    pub fn forget_conn(&mut self, tgid: u32, fd: u32) {
        self.remove_where(tgid, |_, a| a.fd != fd, false);
    }

    /// A process exited.
    pub fn forget_process(&mut self, tgid: u32) {
        self.remove_where(tgid, |_, _| false, false);
    }

    #[cfg(test)]
    fn active_len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::protocols::http1::Headers;

    fn head(trace: Vec<(String, String)>) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: "/".into(),
            version: 1,
            headers: Headers {
                trace,
                ..Default::default()
            },
        }
    }

    fn start<'a>(role: Role, tid: u32, fd: u32, h: &'a RequestHead) -> RequestStart<'a> {
        RequestStart {
            role,
            tgid: 1,
            tid,
            fd,
            head: h,
            index_in_chunk: None,
        }
    }

    fn linker() -> Linker {
        Linker::new(
            vec![Propagator::TraceContext, Propagator::B3],
            Arc::new(Stats::default()),
        )
    }

    #[test]
    fn client_on_serving_thread_is_child_of_server() {
        let mut l = linker();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sh = head(vec![("traceparent".into(), tp.into())]);
        let server = l.on_request(&start(Role::Server, 10, 3, &sh), None);
        let none = head(vec![]);
        let client = l.on_request(&start(Role::Client, 10, 4, &none), None);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        // Another thread's client call is not linked.
        let other = l.on_request(&start(Role::Client, 11, 5, &none), None);
        assert_ne!(other.trace_id, server.trace_id);
        assert_eq!(other.parent_span_id, None);
    }

    #[test]
    fn several_requests_on_one_thread_leave_client_as_counted_root() {
        let mut l = linker();
        let none = head(vec![]);
        let a = l.on_request(&start(Role::Server, 10, 3, &none), None);
        let b = l.on_request(&start(Role::Server, 10, 4, &none), None);
        let c = l.on_request(&start(Role::Client, 10, 5, &none), None);
        assert_eq!(c.parent_span_id, None);
        assert_ne!(c.trace_id, a.trace_id);
        assert_ne!(c.trace_id, b.trace_id);
        assert_eq!(l.stats.links_ambiguous.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn app_propagated_context_wins_over_thread_link() {
        let mut l = linker();
        let none = head(vec![]);
        l.on_request(&start(Role::Server, 10, 3, &none), None);
        let b3 = format!("{}-{}-1", "a".repeat(32), "b".repeat(16));
        let own = head(vec![("b3".into(), b3)]);
        let c = l.on_request(&start(Role::Client, 10, 5, &own), None);
        assert_eq!(c.trace_id, [0xaa; 16]);
        assert_eq!(c.parent_span_id, Some([0xbb; 8]));
    }

    #[test]
    fn completion_and_close_free_the_thread_and_count_orphans() {
        let mut l = linker();
        let none = head(vec![]);
        l.on_request(&start(Role::Server, 10, 3, &none), None);
        l.on_request(&start(Role::Client, 10, 4, &none), None);
        assert_eq!(l.active_len(), 1);
        // The server request never completed: its connection closed.
        l.forget_conn(1, 3);
        assert_eq!(l.active_len(), 0);
        assert_eq!(l.stats.orphan_spans.load(Ordering::Relaxed), 1);
        // The thread is free: a later client call is a root.
        let c = l.on_request(&start(Role::Client, 10, 4, &none), None);
        assert_eq!(c.parent_span_id, None);
        l.on_request(&start(Role::Server, 12, 7, &none), None);
        l.forget_process(1);
        assert_eq!(l.active_len(), 0);
    }

    fn kernel(trace: u8, span: u8, parent: Option<u8>, linked: bool) -> KernelIds {
        KernelIds {
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            flags: 1,
            linked,
        }
    }

    #[test]
    fn kernel_ids_are_what_went_on_the_wire() {
        let mut l = linker();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = head(vec![
            ("traceparent".into(), tp.into()),
            ("tracestate".into(), "k=v".into()),
        ]);
        // SERVER: the caller's trace and parent, the kernel's span id (the
        // one its injected children name as parent).
        let k = KernelIds {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ],
            ..kernel(0, 9, Some(1), false)
        };
        let server = l.on_request(&start(Role::Server, 10, 3, &traced), Some(k));
        assert_eq!(server.span_id, [9; 8]);
        assert_eq!(server.trace_id, k.trace_id);
        assert_eq!(
            server.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(server.tracestate.as_deref(), Some("k=v"));
        assert_eq!(l.stats.inject_context_mismatch.load(Ordering::Relaxed), 0);
        // CLIENT injected as its child: the kernel's ids, the server's
        // tracestate.
        let none = head(vec![]);
        let client = l.on_request(
            &start(Role::Client, 10, 4, &none),
            Some(KernelIds {
                trace_id: k.trace_id,
                ..kernel(0, 5, Some(9), true)
            }),
        );
        assert_eq!(client.span_id, [5; 8]);
        assert_eq!(client.parent_span_id, Some([9; 8]));
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.tracestate.as_deref(), Some("k=v"));
        assert_eq!(l.stats.links_in_process.load(Ordering::Relaxed), 1);
        // An injected root stays a root even if the thread serves a request
        // (the kernel saw it as ambiguous).
        let root = l.on_request(
            &start(Role::Client, 10, 6, &none),
            Some(kernel(7, 6, None, false)),
        );
        assert_eq!(root.parent_span_id, None);
        assert_eq!(root.trace_id, [7; 16]);
    }

    #[test]
    fn kernel_and_agent_disagreeing_is_counted() {
        let mut l = linker();
        // Incoming B3 only: the agent continues it, the kernel (which reads
        // only traceparent) chose a new trace for the requests it causes.
        let b3 = format!("{}-{}-1", "a".repeat(32), "b".repeat(16));
        let h = head(vec![("b3".into(), b3)]);
        let ids = l.on_request(
            &start(Role::Server, 1, 1, &h),
            Some(kernel(3, 4, None, false)),
        );
        assert_eq!(ids.trace_id, [0xaa; 16]);
        assert_eq!(ids.span_id, [4; 8]);
        assert_eq!(l.stats.inject_context_mismatch.load(Ordering::Relaxed), 1);
        // A CLIENT request with an app header the kernel does not know
        // (a custom one) that was injected anyway: counted, wire ids win.
        let own = head(vec![(
            "b3".into(),
            format!("{}-{}", "c".repeat(32), "d".repeat(16)),
        )]);
        let c = l.on_request(
            &start(Role::Client, 2, 2, &own),
            Some(kernel(8, 8, None, false)),
        );
        assert_eq!(c.trace_id, [8; 16]);
        assert_eq!(l.stats.inject_conflicts.load(Ordering::Relaxed), 1);
    }
}
