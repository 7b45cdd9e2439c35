//! Indices of the per-CPU counters in [`crate::MAP_STATS`].

/// A data or control event could not be written: the ring buffer was full.
pub const STAT_RINGBUF_DROPS: u32 = 0;
/// A thread's saved syscall arguments were overwritten by another thread
/// sharing its in-flight slot (only when pid_max exceeds the slot count).
pub const STAT_INFLIGHT_COLLISIONS: u32 = 1;
/// A new connection could not be stored (map update failed).
pub const STAT_CONN_INSERT_FAILED: u32 = 2;
/// Data events not copied because their connection is shed by the
/// degradation level (`Config::shed_bound`).
pub const STAT_SHED: u32 = 3;
/// Syscalls whose payload was longer than the capture cap.
pub const STAT_TRUNCATED: u32 = 4;
/// Connections classified as HTTP/1 or HTTP/2.
pub const STAT_CONNS_HTTP: u32 = 5;
/// Connections classified as something else and no longer copied.
pub const STAT_CONNS_IGNORED: u32 = 6;
/// Pre-existing connections picked up from their first bytes.
pub const STAT_CONNS_INFERRED: u32 = 7;
/// Reading the user buffer failed (page not present, bad pointer).
pub const STAT_READ_FAILED: u32 = 8;

/// SERVER contexts chosen in the kernel (an inbound request was read).
pub const STAT_SERVER_CTX: u32 = 9;
/// `traceparent` headers injected into outgoing requests.
pub const STAT_INJECTED: u32 = 10;
/// Injections that made the request a child of the SERVER span being served.
pub const STAT_INJECT_LINKED: u32 = 11;
/// Not injected: the request already carried trace context.
pub const STAT_INJECT_SKIP_HAS_CONTEXT: u32 = 12;
/// Not injected: the framing was not certain (head longer than the scan
/// window or split across writes, unknown transfer coding, ...).
pub const STAT_INJECT_SKIP_UNSURE: u32 = 13;
/// Not injected: the kernel could not make room in the message.
pub const STAT_INJECT_FAILED: u32 = 14;
/// Inbound `tracestate` longer than the kernel carries (not propagated).
pub const STAT_TRACESTATE_TOO_LONG: u32 = 15;

/// TLS plaintext dropped: the socket behind the `SSL*` was never seen.
pub const STAT_TLS_NO_FD: u32 = 16;
/// TLS library calls captured (plaintext events).
pub const STAT_TLS_CALLS: u32 = 17;

/// HTTP/2 frame walks that lost the framing (step or iovec budget, a
/// failed read): the rest of that syscall was not copied.
pub const STAT_H2_WALK_LOST: u32 = 18;
/// HTTP/2 frame bytes (headers, non-DATA frames) not copied because the
/// event was full.
pub const STAT_H2_BYTES_NOT_COPIED: u32 = 19;
/// HTTP/2 DATA payload bytes skipped (sent as gaps).
pub const STAT_H2_DATA_SKIPPED: u32 = 20;

/// Programs exec'd while injection is on that could not be marked as not
/// yet classified ([`crate::MAP_NO_THREAD_LINK`] full).
pub const STAT_NO_LINK_FULL: u32 = 21;
/// SERVER contexts not kept per thread (so no injection links to them)
/// because the process's threads are not tasks (Go) or not yet known.
pub const STAT_THREAD_LINK_OFF: u32 = 22;

/// Go `crypto/tls` calls whose `net.Conn` is not a `*net.TCPConn`, or
/// whose fd could not be read: their plaintext is not captured.
pub const STAT_GO_TLS_NO_CONN: u32 = 23;
/// Go `crypto/tls` calls in a process the agent has not described yet
/// (probes are per file, the layout per process).
pub const STAT_GO_TLS_NO_LAYOUT: u32 = 24;
/// Returns of Go `crypto/tls.(*Conn).Read` with no saved entry (the
/// in-progress table evicted it, or the probe went on mid-call), or with
/// a count beyond the buffer (not believed).
pub const STAT_GO_TLS_READ_LOST: u32 = 25;

/// Go CLIENT requests (injection on) whose write was armed with the
/// SERVER context of the goroutine that made them: the injector makes
/// them its children.
pub const STAT_GO_INJECT_ARMED: u32 = 26;
/// Go requests (injection on) that net/http began serving with no SERVER
/// context chosen in the kernel for their connection (their bytes were
/// not seen, or the context was evicted): their calls are injected as
/// roots.
pub const STAT_GO_SERVER_CTX_MISSING: u32 = 27;
/// Events of processes not traced because their cgroup is filtered out
/// (`--namespace`, `--exclude-namespace`, `--container-name`).
pub const STAT_CGROUP_FILTERED: u32 = 28;

/// Number of counters (size of the map).
pub const STAT_COUNT: u32 = 29;

/// Human names, indexed like the counters (reported with a `kernel_`
/// prefix by the agent's counter registry).
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "ringbuf_drops",
    "inflight_collisions",
    "conn_insert_failed",
    "shed_events",
    "truncated_syscalls",
    "conns_http",
    "conns_ignored",
    "conns_inferred",
    "user_read_failed",
    "server_ctx",
    "injected",
    "inject_linked",
    "inject_skip_has_context",
    "inject_skip_unsure",
    "inject_failed",
    "tracestate_too_long",
    "tls_no_fd",
    "tls_calls",
    "h2_walk_lost",
    "h2_bytes_not_copied",
    "h2_data_skipped",
    "no_link_full",
    "thread_link_off",
    "go_tls_no_conn",
    "go_tls_no_layout",
    "go_tls_read_lost",
    "go_inject_armed",
    "go_server_ctx_missing",
    "cgroup_filtered",
];

/// Help text of each counter, indexed like [`STAT_NAMES`].
pub const STAT_HELP: [&str; STAT_COUNT as usize] = [
    "Events not written because the ring buffer was full",
    "Saved syscall arguments overwritten by a thread sharing the in-flight slot",
    "New connections that could not be stored in the connection map",
    "Data events not copied because the degradation level sheds their connection",
    "Syscalls whose payload was longer than the capture cap",
    "Connections classified as HTTP/1 or HTTP/2",
    "Connections classified as something else and no longer copied",
    "Pre-existing connections picked up from their first bytes",
    "Reads of a user buffer that failed",
    "SERVER contexts chosen in the kernel",
    "traceparent headers injected into outgoing requests",
    "Injections that made the request a child of the SERVER span being served",
    "Requests not injected because they already carried trace context",
    "Requests not injected because their framing was not certain",
    "Requests not injected because the kernel could not make room",
    "Inbound tracestate values too long to carry",
    "TLS plaintext dropped because the socket behind the SSL* was never seen",
    "TLS library calls captured",
    "HTTP/2 frame walks that lost the framing (budget or failed read); the rest of the syscall was a gap",
    "HTTP/2 frame-header and non-DATA bytes not copied because the event was full",
    "HTTP/2 DATA payload bytes sent as gaps instead of copied",
    "Programs exec'd that could not be marked unclassified for thread linking (map full)",
    "SERVER contexts not kept per thread (no injection links to them) because the process's threads are not tasks (Go) or not yet classified",
    "Go crypto/tls calls not captured because their net.Conn is not a *net.TCPConn or its fd was unreadable",
    "Go crypto/tls calls not captured because the agent had not yet described the process",
    "Go crypto/tls Read returns with no saved entry (evicted, or probed mid-call) or a count beyond the buffer",
    "Go CLIENT requests whose write was armed with the SERVER context of the goroutine that made them",
    "Go requests served with no kernel SERVER context for their connection (their calls are injected as roots)",
    "Probe hits skipped because the process's cgroup is filtered out (Kubernetes namespace or container selection)",
];
