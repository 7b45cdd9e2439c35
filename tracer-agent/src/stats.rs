//! The agent's own counters, kept in one place so the periodic log line, the
//! shutdown summary and (later) a metrics endpoint read the same numbers.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// (name, value) of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Ring-buffer records read.
    events,
    /// Records that failed to decode.
    decode_errors,
    /// Connections opened in the agent's table.
    conns_opened,
    /// Connections dropped because the table was full.
    conns_evicted,
    /// Connections vetoed by a filter or because the fd was not a socket.
    conns_vetoed,
    /// Data for a connection the agent does not track (open event lost).
    data_without_conn,
    /// Per-connection sequence gaps (kernel events lost).
    seq_gaps,
    /// Parser errors (malformed or untrackable HTTP).
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
    /// Spans produced.
    spans,
    /// Spans dropped because the output queue was full.
    spans_dropped,
    /// Trace-context headers present but invalid (ignored).
    invalid_trace_headers,
    /// CLIENT spans linked to the SERVER span their thread was serving.
    links_in_process,
    /// CLIENT spans left as roots because their thread was serving several
    /// requests at once (event loop, pool): the cause is unknowable.
    links_ambiguous,
    /// CLIENT spans whose linked SERVER parent was never exported.
    orphan_spans,
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
    /// Process notices (exec, dlopen, exit) dropped because too many
    /// arrived between two drains.
    notices_dropped,
    /// CLIENT requests injected by the kernel that also carried an
    /// application header only the agent reads (a --trace-header name).
    inject_conflicts,
    /// Spans accepted by the OTLP endpoint.
    otlp_exported,
    /// Spans whose export failed (after retries).
    otlp_failed,
    /// Spans dropped because the OTLP queue was full.
    otlp_dropped,
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
