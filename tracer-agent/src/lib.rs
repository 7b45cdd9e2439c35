//! `tracer-agent`: the userspace side of the tracer, as a library of
//! stages that follow the data (the `tracer` binary parses flags and calls
//! [`agent::run`]):
//!
//! - [`bpf`]: load and attach the kernel programs, drain the ring, decode
//!   and record its records, the maps the agent writes;
//! - [`uprobes`]: uprobes per file (OpenSSL), found through `/proc` and
//!   exec/dlopen notices;
//! - [`pipeline`]: dispatch of each record, filters, notices, replay;
//! - [`conn`]: connection table, metadata and per-connection session;
//! - [`protocols`]: the `Protocol` trait, neutral records, HTTP/1;
//! - [`propagation`]: trace-context headers (W3C, B3, Jaeger, custom);
//! - [`trace`]: span ids, parent links keyed by task, kernel-chosen ids;
//! - [`spans`]: the span model and semantic-convention mapping;
//! - [`metadata`]: processes, their runtimes, containers, sockets;
//! - [`golang`]: Go binaries (build info);
//! - [`telemetry`]: the counter registry and its reports;
//! - [`export`]: sinks, stdout, OTLP;
//! - [`integrity`]: `tracer check`, the whole-trace verdicts.
pub mod agent;
pub mod bpf;
pub mod cli;
pub mod conn;
pub mod degradation;
pub mod export;
pub mod golang;
pub mod integrity;
pub mod metadata;
pub mod metrics;
pub mod pipeline;
pub mod propagation;
pub mod protocols;
pub mod sampling;
pub mod spans;
pub mod telemetry;
pub mod trace;
pub mod uprobes;
