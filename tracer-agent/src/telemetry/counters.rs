//! The agent's own counters and gauges. Each one is declared once here,
//! with its name and help text (the doc comment), so the periodic log line,
//! the exit summary and a metrics endpoint read the same numbers and none
//! can be written without being reported.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a value only grows (counter) or goes up and down (gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    Counter,
    Gauge,
}

/// Who keeps a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The agent's pipeline and exporters.
    Agent,
    /// The kernel programs' per-CPU counters (`tracer_common::STAT_*`).
    Kernel,
}

/// One reported value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub group: Group,
    pub name: &'static str,
    pub help: &'static str,
    pub kind: SampleKind,
    pub value: u64,
}

macro_rules! registry {
    (
        $(#[$sdoc:meta])* $vis:vis struct $ty:ident : $kind:ident {
            $($(#[doc = $doc:literal])* $name:ident),* $(,)?
        }
    ) => {
        $(#[$sdoc])*
        #[derive(Debug, Default)]
        $vis struct $ty {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl $ty {
            /// Every value, with its name and help text.
            pub fn samples(&self, out: &mut Vec<Sample>) {
                $(out.push(Sample {
                    group: Group::Agent,
                    name: stringify!($name),
                    help: concat!($($doc),*).trim_ascii(),
                    kind: SampleKind::$kind,
                    value: self.$name.load(Ordering::Relaxed),
                });)*
            }
        }
    };
}

registry! {
    /// Event counts of the agent's pipeline and exporters.
    pub struct Counters: Counter {
        /// Ring-buffer records read.
        events,
        /// Records that failed to decode.
        decode_errors,
        /// Connections opened in the agent's table.
        conns_opened,
        /// Fds joined to a connection already followed on another fd (the
        /// same socket: inetd-style children, dup'ed fds).
        conns_joined,
        /// Connections dropped because the table was full.
        conns_evicted,
        /// Connections vetoed by a filter, because the fd was not a socket,
        /// or because no parser handles their protocol.
        conns_vetoed,
        /// Data for a connection the agent does not track (open event lost).
        data_without_conn,
        /// Per-connection sequence gaps (kernel events lost).
        seq_gaps,
        /// Parser errors (malformed or untrackable messages).
        parse_errors,
        /// Partial headers discarded because all connections together held
        /// more than the agent's buffer budget.
        buffer_budget_drops,
        /// Requests dropped because too many were pending on one connection.
        pending_overflow,
        /// Responses with no request to pair with (joined mid-connection).
        orphan_responses,
        /// Requests that never got a response before the connection closed.
        unanswered_requests,
        /// Spans whose end had to be estimated (response body not followed).
        estimated_ends,
        /// Connections that switched to a protocol the agent does not parse
        /// (an HTTP/1 upgrade, CONNECT tunnel): followed no further.
        protocol_switches,
        /// HTTP/2 streams dropped because too many were open on one
        /// connection.
        h2_streams_evicted,
        /// HTTP/2 streams ended by RST_STREAM.
        h2_streams_reset,
        /// HTTP/2 streams above a GOAWAY's last stream id: never processed,
        /// so no span.
        h2_streams_refused,
        /// Times an HTTP/2 direction lost its framing (bytes outside a DATA
        /// payload were not captured, or events were lost).
        h2_framing_lost,
        /// HTTP/2 header blocks not decoded (too large, cut or malformed):
        /// that direction's HPACK table is forgotten and resynchronises.
        h2_header_blocks_dropped,
        /// HPACK fields whose name was unknown (indexed before the agent
        /// joined the connection): never guessed.
        h2_unknown_header_fields,
        /// HPACK table sizes asked for above the agent's cap (capped).
        h2_table_size_capped,
        /// Spans produced.
        spans,
        /// Span observations folded into a metric's overflow series because
        /// the metric reached --metrics-max-series label sets.
        metrics_series_overflow,
        /// Spans dropped because the output queue was full.
        spans_dropped,
        /// Spans not exported because their local trace was sampled out.
        spans_sampled_out,
        /// Spans of sampled-out traces exported anyway because a span of
        /// the trace failed or was slow (--keep-errors, --keep-slower-than).
        spans_kept_by_rule,
        /// Held spans of sampled-out traces decided before their local root
        /// ended, because the hold table was full.
        sampling_hold_evicted,
        /// Trace-context headers present but invalid (ignored).
        invalid_trace_headers,
        /// CLIENT spans linked to the SERVER span their task was serving.
        links_in_process,
        /// CLIENT spans left as roots because their task was serving several
        /// requests at once (event loop, pool): the cause is unknowable.
        links_ambiguous,
        /// CLIENT spans left as roots because their process's runtime runs
        /// many requests on each OS thread in turn (Go): the thread does
        /// not tell which request caused them.
        links_unfollowable,
        /// CLIENT spans of Go programs linked to the SERVER span whose
        /// goroutine (or a goroutine it started) made the call.
        links_goroutine,
        /// Requests net/http began serving whose bytes the agent had not
        /// seen (lost events): their goroutines link nothing.
        go_serve_unmatched,
        /// Executables whose Go build info could not be read (treated as
        /// Go of an unknown version: never linked by thread).
        go_buildinfo_errors,
        /// Go executables (and processes) using crypto/tls whose TLS could
        /// not be probed: unsupported version, missing functions, or the
        /// kernel's layout table full.
        go_tls_not_visible,
        /// CLIENT spans whose linked SERVER parent was never exported.
        orphan_spans,
        /// Local traces exported whole (verdict 200).
        trace_integrity_complete,
        /// Local traces exported with a broken chain (verdict 409): a
        /// linked child without its parent, or two roots on one thread.
        trace_integrity_broken,
        /// Local traces exported with a child outside its parent's time
        /// (verdict 422).
        trace_integrity_inverted,
        /// Times the active-server table hit its bound and was reset.
        link_table_resets,
        /// Kernel-chosen contexts (server or injected) that matched no request
        /// (their data event was lost, or the parser was out of step).
        kernel_ctx_unmatched,
        /// Kernel contexts dropped because too many waited for their request.
        kernel_ctx_overflow,
        /// SERVER spans whose incoming context came from a header the kernel
        /// does not read (B3, Jaeger, custom, or a traceparent ranked below
        /// them): requests they cause carry a different trace downstream.
        inject_context_mismatch,
        /// CLIENT requests injected by the kernel that also carried an
        /// application header only the agent reads (a --trace-header name).
        inject_conflicts,
        /// Go CLIENT requests whose injected parent and the agent's
        /// goroutine link differ (an evicted kernel context): the ids that
        /// went on the wire win.
        go_inject_disagreed,
        /// Process notices (exec, dlopen, exit) dropped because too many
        /// arrived between two drains.
        notices_dropped,
        /// Times the process cache hit its bound and was cleared.
        process_cache_resets,
        /// Re-scans of a process's libraries dropped because too many were
        /// pending.
        tls_rescans_dropped,
        /// Ring-buffer records not written to the --record file (it reached
        /// its size cap or a write failed).
        record_dropped,
        /// Spans accepted by the OTLP endpoint.
        otlp_exported,
        /// Spans whose export failed (after retries).
        otlp_failed,
        /// Spans dropped because the OTLP queue was full.
        otlp_dropped,
        /// Full lists of this node's pods from the Kubernetes API (the
        /// first, then one after each expired watch, 410 Gone).
        k8s_lists,
        /// Pod watch failures (connection, decode, 410): each is retried
        /// with backoff.
        k8s_watch_errors,
        /// Pods not kept because the node's pod table was full.
        k8s_pods_dropped,
        /// Cgroups the Kubernetes selection could not list in the kernel's
        /// filter (map full, or a write failed).
        k8s_cgroup_filter_failed,
    }
}

registry! {
    /// Current sizes, set by their owners.
    pub struct Gauges: Gauge {
        /// Connections in the agent's table.
        conns,
        /// Processes in the agent's process cache.
        processes,
        /// Spans waiting in the OTLP export queue.
        otlp_queue,
        /// Spans of sampled-out traces held until their local root ends
        /// (for --keep-errors and --keep-slower-than).
        sampling_held,
        /// Files (libraries, executables) carrying TLS uprobes.
        tls_files_probed,
        /// Kernel program attachments: tracepoints, uprobe links (one per
        /// probed function and file), cgroup and sk_msg programs.
        bpf_programs_attached,
        /// This node's pods known from the Kubernetes API.
        k8s_pods,
        /// Cgroups listed in the kernel's Kubernetes selection filter.
        k8s_cgroups_filtered,
        /// The automatic degradation level: 0 (configured sampling) to 3.
        degradation_level,
    }
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Gauges {
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_has_a_name_and_help() {
        let c = Counters::default();
        Counters::add(&c.spans, 3);
        let mut out = Vec::new();
        c.samples(&mut out);
        Gauges::default().samples(&mut out);
        assert!(out.len() > 30);
        for s in &out {
            assert!(!s.help.is_empty(), "{} has no help", s.name);
            assert!(!s.help.starts_with(' '), "{}", s.name);
        }
        let spans = out.iter().find(|s| s.name == "spans").expect("spans");
        assert_eq!((spans.value, spans.kind), (3, SampleKind::Counter));
        assert!(spans.help.starts_with("Spans produced"));
        let names: std::collections::HashSet<_> = out.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), out.len(), "duplicate names");
    }
}
