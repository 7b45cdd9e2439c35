//! Command-line flags (each with an environment fallback).

use clap::Parser;

pub use crate::metadata::kubernetes::watch::Mode as KubeMode;
use crate::{
    propagation::Propagator,
    sampling::{tail, Sampler, SamplerError, TailConfig},
};

/// Largest `--record` file by default.
pub const DEFAULT_RECORD_MAX_BYTES: u64 = 1 << 30;

/// Local span output (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One human-readable line per span.
    Text,
    /// One JSON object per line.
    Json,
    /// Each local trace as an indented waterfall, once its root has ended.
    Tree,
    /// No local output (useful once OTLP export is configured).
    None,
}

/// An on/off flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Zero-instrumentation eBPF tracer: HTTP spans from unmodified processes.
///
/// Runs as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH) and prints one line per span on stdout.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, long_about = None)]
pub struct Args {
    /// Trace only these process ids (repeatable). Example: --pid 1234 --pid 5678
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "TRACER_PID",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,

    /// Trace only processes whose executable name or comm matches (repeatable).
    /// Example: --exe nginx --exe python3
    #[arg(
        long = "exe",
        alias = "comm",
        value_name = "NAME",
        env = "TRACER_EXE",
        value_delimiter = ','
    )]
    pub exes: Vec<String>,

    /// Trace only connections whose local or remote port matches (repeatable).
    /// Example: --port 8080
    #[arg(
        long = "port",
        value_name = "PORT",
        env = "TRACER_PORT",
        value_delimiter = ','
    )]
    pub ports: Vec<u16>,

    /// Local span output. Example: --output json
    #[arg(long, value_enum, default_value = "text", env = "TRACER_OUTPUT")]
    pub output: Format,

    /// Payload bytes copied per syscall (max 16384); longer reads and writes
    /// are cut and the rest is skipped as body. Example: --max-capture-bytes 8192
    #[arg(long, default_value_t = tracer_common::DEFAULT_CAPTURE, env = "TRACER_MAX_CAPTURE_BYTES",
          value_parser = clap::value_parser!(u32).range(64..=tracer_common::MAX_CAPTURE as i64))]
    pub max_capture_bytes: u32,

    /// Log level of the agent and of its kernel programs: error, warn, info,
    /// debug or trace. Example: --log-level debug
    #[arg(long, default_value = "info", env = "TRACER_LOG_LEVEL")]
    pub log_level: tracing::Level,

    /// Size of the kernel-to-agent ring buffer in bytes (power of two).
    /// Example: --ring-buffer-bytes 16777216
    #[arg(long, default_value_t = tracer_common::DEFAULT_RING_BYTES, env = "TRACER_RING_BUFFER_BYTES",
          value_parser = ring_size)]
    pub ring_buffer_bytes: u32,

    /// Connections tracked at once, in the kernel and in the agent; the
    /// least recently active is evicted beyond this. Example: --max-connections 65536
    #[arg(long, default_value_t = tracer_common::DEFAULT_MAX_CONNS, env = "TRACER_MAX_CONNECTIONS")]
    pub max_connections: u32,

    /// Spans queued for output before new ones are dropped (and counted).
    /// Example: --span-queue 4096
    #[arg(long, default_value_t = 4096, env = "TRACER_SPAN_QUEUE")]
    pub span_queue: usize,

    /// Service name overrides: NAME=EXE or NAME=pid:PID (repeatable). By
    /// default a process's own OTEL_SERVICE_NAME, else its executable name.
    /// Example: --service-name checkout=pid:4242 --service-name web=nginx
    #[arg(long = "service-name", value_name = "NAME=EXE|NAME=pid:PID")]
    pub service_names: Vec<String>,

    /// Trace-context formats read from requests, in order of precedence:
    /// tracecontext, b3 (single and multi header), jaeger (uber-trace-id),
    /// custom (the --trace-header names). Example: --propagators b3,tracecontext
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tracecontext,b3,jaeger,custom"
    )]
    pub propagators: Vec<String>,

    /// Read HTTPS plaintext through uprobes on the OpenSSL API (SSL_read,
    /// SSL_write and their _ex forms) in every libssl and in executables
    /// that export it. Example: --tls off
    #[arg(long, value_enum, default_value_t = Switch::On, env = "TRACER_TLS")]
    pub tls: Switch,

    /// Insert a W3C `traceparent` (and `tracestate`) into outgoing
    /// plaintext HTTP/1 requests that carry no trace context, so downstream
    /// services continue the trace. Off by default: it changes bytes on the
    /// wire and routes every client TCP socket of the cgroup through a
    /// BPF sockhash. Example: --inject-context on
    #[arg(long, value_enum, default_value_t = Switch::Off, env = "TRACER_INJECT_CONTEXT")]
    pub inject_context: Switch,

    /// cgroup v2 directory whose processes get context injection (the
    /// whole host by default: the cgroup2 mount found in /proc/self/mountinfo).
    /// Example: --cgroup-path /sys/fs/cgroup/kubepods.slice
    #[arg(long, value_name = "DIR", env = "TRACER_CGROUP_PATH")]
    pub cgroup_path: Option<std::path::PathBuf>,

    /// An in-house header holding a hex trace id, optionally followed by
    /// `-`, `:`, `/` or `,` and a hex span id (repeatable); read where
    /// `custom` stands in --propagators. Example: --trace-header JD-Trace-ID
    #[arg(long = "trace-header", value_name = "NAME")]
    pub trace_headers: Vec<String>,

    /// OTLP endpoint; enables OTLP export. Falls back to
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT.
    /// Example: --otlp-endpoint http://127.0.0.1:4317
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc (port 4317) or http/protobuf (port 4318, path
    /// /v1/traces). Falls back to OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL; default grpc.
    /// Example: --otlp-protocol http/protobuf
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra OTLP request header (repeatable); adds to OTEL_EXPORTER_OTLP_[TRACES_]HEADERS.
    /// Example: --otlp-header authorization=Bearer%20token
    #[arg(long = "otlp-header", value_name = "KEY=VALUE")]
    pub otlp_headers: Vec<String>,

    /// Timeout of one OTLP export request. Falls back to
    /// OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT (ms); default 10s. Example: --otlp-timeout 5s
    #[arg(long, value_name = "DURATION")]
    pub otlp_timeout: Option<String>,

    /// OTLP compression: gzip or none. Falls back to
    /// OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION. Example: --otlp-compression gzip
    #[arg(long, value_name = "gzip|none")]
    pub otlp_compression: Option<String>,

    /// PEM CA bundle to verify the collector (gRPC over TLS). Falls back to
    /// OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE. Example: --otlp-ca-file /etc/ssl/collector-ca.pem
    #[arg(long, value_name = "FILE")]
    pub otlp_ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate for mutual TLS (with --otlp-client-key).
    /// Example: --otlp-client-cert /etc/tracer/client.pem
    #[arg(long, value_name = "FILE")]
    pub otlp_client_cert: Option<std::path::PathBuf>,

    /// PEM client key for mutual TLS. Example: --otlp-client-key /etc/tracer/client.key
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<std::path::PathBuf>,

    /// Use plaintext for an endpoint given without a scheme (otherwise
    /// https). Falls back to OTEL_EXPORTER_OTLP_[TRACES_]INSECURE.
    /// Example: --otlp-insecure
    #[arg(long)]
    pub otlp_insecure: bool,

    /// Spans per OTLP export request. Example: --otlp-batch-size 512
    #[arg(long, default_value_t = 512)]
    pub otlp_batch_size: usize,

    /// Longest a span waits before its batch is sent. Example: --otlp-batch-timeout 5s
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub otlp_batch_timeout: String,

    /// Spans queued for OTLP export; beyond this new spans are dropped and
    /// counted (tracing never waits for the collector). Example: --otlp-queue-size 2048
    #[arg(long, default_value_t = 2048)]
    pub otlp_queue_size: usize,

    /// Write every raw kernel event to FILE as it is read, for replaying
    /// the capture through the pipeline without a kernel (tests, bug
    /// reports). It holds request and response bytes as captured: treat it
    /// as sensitive. Example: --record /tmp/capture.trec
    #[arg(long, value_name = "FILE", env = "TRACER_RECORD")]
    pub record: Option<std::path::PathBuf>,

    /// Largest --record file; later events are not recorded (counted as
    /// record_dropped). Example: --record-max-bytes 104857600
    #[arg(long, default_value_t = DEFAULT_RECORD_MAX_BYTES, env = "TRACER_RECORD_MAX_BYTES")]
    pub record_max_bytes: u64,

    /// Kubernetes metadata and selection: auto (on when a service account
    /// or KUBECONFIG is found), on (an error without one), off.
    /// Example: --kubernetes off
    #[arg(long, value_enum, default_value_t = KubeMode::Auto, env = "TRACER_KUBERNETES")]
    pub kubernetes: KubeMode,

    /// This node's name, whose pods are watched; the hostname by default.
    /// The DaemonSet sets NODE_NAME from spec.nodeName. Example: --node-name worker-3
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Trace only pods in these namespaces (repeatable). Filtered in the
    /// kernel: other processes, host ones included, are not traced.
    /// Example: --namespace shop --namespace payments
    #[arg(
        long = "namespace",
        value_name = "NS",
        env = "TRACER_NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Do not trace pods in these namespaces (repeatable; filtered in the
    /// kernel). Default: the agent's own namespace and kube-system; an
    /// empty value excludes none. Example: --exclude-namespace monitoring
    #[arg(
        long = "exclude-namespace",
        value_name = "NS",
        env = "TRACER_EXCLUDE_NAMESPACE",
        value_delimiter = ','
    )]
    pub exclude_namespaces: Option<Vec<String>>,

    /// Trace only containers with these names (repeatable; filtered in the
    /// kernel). Example: --container-name web
    #[arg(
        long = "container-name",
        value_name = "NAME",
        env = "TRACER_CONTAINER_NAME",
        value_delimiter = ','
    )]
    pub container_names: Vec<String>,

    /// Serve /healthz (liveness) and /readyz (readiness) over HTTP on this
    /// address; off by default. Example: --health-listen 0.0.0.0:9464
    #[arg(long, value_name = "ADDR", env = "TRACER_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,

    /// Serve Prometheus metrics at /metrics over HTTP on this address (the
    /// RED histograms of traced services and the agent's tracer_* health),
    /// with /healthz and /readyz beside them; off by default.
    /// Example: --metrics-listen 0.0.0.0:9464
    #[arg(long, value_name = "ADDR", env = "TRACER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Most label sets (series) per RED metric; further ones are folded
    /// into one otel_metric_overflow="true" series and counted.
    #[arg(long, default_value_t = crate::metrics::red::DEFAULT_MAX_SERIES,
          env = "TRACER_METRICS_MAX_SERIES")]
    pub metrics_max_series: usize,

    /// Head sampler, by its OpenTelemetry name: always_on, always_off,
    /// traceidratio, parentbased_always_on, parentbased_always_off,
    /// parentbased_traceidratio. The parent-based ones follow the incoming
    /// request's sampled flag. Example: --sampler parentbased_traceidratio
    #[arg(
        long,
        value_name = "NAME",
        default_value = "parentbased_always_on",
        env = "OTEL_TRACES_SAMPLER"
    )]
    pub sampler: String,

    /// The ratio of the ratio samplers (0..=1; default 1).
    /// Example: --sampler-arg 0.1
    #[arg(long, value_name = "RATIO", env = "OTEL_TRACES_SAMPLER_ARG")]
    pub sampler_arg: Option<String>,

    /// Ratio for the traces that start at a route: ROUTE is a route
    /// template, matched exactly or as a prefix ending at a '/'; the first
    /// matching rule wins over --sampler for traces this node starts.
    /// Repeatable. Example: --sample-route /api/payment=1 --sample-route /api/health=0.01
    #[arg(
        long = "sample-route",
        value_name = "ROUTE=RATIO",
        env = "TRACER_SAMPLE_ROUTE",
        value_delimiter = ','
    )]
    pub sample_routes: Vec<String>,

    /// Export a sampled-out trace anyway when one of its spans failed.
    #[arg(long, value_enum, default_value_t = Switch::On, env = "TRACER_KEEP_ERRORS")]
    pub keep_errors: Switch,

    /// Export a sampled-out trace anyway when one of its spans took longer
    /// than this. Example: --keep-slower-than 500ms
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          env = "TRACER_KEEP_SLOWER_THAN")]
    pub keep_slower_than: Option<std::time::Duration>,

    /// Automatic degradation: back off (sample less, then follow fewer
    /// connections in the kernel) when the agent costs too much.
    #[arg(long, value_enum, default_value_t = Switch::On, env = "TRACER_DEGRADATION")]
    pub degradation: Switch,

    /// Agent CPU, in cores, above which the agent degrades one level
    /// (0: no CPU trigger). Example: --max-cpu 0.5
    #[arg(
        long,
        value_name = "CORES",
        default_value_t = 1.0,
        env = "TRACER_MAX_CPU"
    )]
    pub max_cpu: f64,

    /// Agent resident memory above which it degrades (e.g. 512MiB, 1GiB;
    /// 0: no memory trigger).
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes,
          env = "TRACER_MAX_MEMORY")]
    pub max_memory: u64,

    /// Time without a trigger before the agent recovers one level.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration,
          env = "TRACER_DEGRADE_COOLDOWN")]
    pub degrade_cooldown: std::time::Duration,

    /// Highest degradation level (1: head sampling at 50% only; 2: 10% of
    /// connections followed; 3: 1%).
    #[arg(long, value_name = "LEVEL", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(0..=3), env = "TRACER_MAX_DEGRADATION_LEVEL")]
    pub max_degradation_level: u8,

    /// Seconds between self-metric log lines (at debug level). Example: --stats-interval 5
    #[arg(long, default_value_t = 10, env = "TRACER_STATS_INTERVAL")]
    pub stats_interval: u64,
}

/// The kernel wants a power-of-two multiple of the page size.
fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two >= 4096"));
    }
    Ok(n)
}

impl Args {
    /// The propagators in precedence order (`custom` expands to every
    /// --trace-header name).
    /// The degradation limits, or None when --degradation is off.
    pub fn degradation_limits(&self) -> Option<crate::degradation::Limits> {
        (self.degradation == Switch::On).then(|| crate::degradation::Limits {
            max_cpu: self.max_cpu.max(0.0),
            max_memory: self.max_memory,
            cooldown: self.degrade_cooldown,
            max_level: crate::degradation::Level(self.max_degradation_level),
        })
    }

    /// The head sampler of --sampler, --sampler-arg and --sample-route.
    pub fn head_sampler(&self) -> Result<Sampler, SamplerError> {
        Sampler::parse(&self.sampler, self.sampler_arg.as_deref())?.with_routes(&self.sample_routes)
    }

    /// What becomes of sampled-out traces.
    pub fn tail_config(&self, sampler: &Sampler) -> TailConfig {
        TailConfig {
            keep_all: sampler.keeps_all(),
            keep_errors: self.keep_errors == Switch::On,
            keep_slower_than: self.keep_slower_than,
            hold: tail::DEFAULT_HOLD,
            max_held: tail::DEFAULT_MAX_HELD,
        }
    }

    pub fn propagator_list(&self) -> Result<Vec<Propagator>, String> {
        let mut out = Vec::new();
        for p in &self.propagators {
            if p.trim().eq_ignore_ascii_case("custom") {
                out.extend(
                    self.trace_headers
                        .iter()
                        .map(|h| Propagator::Custom(h.trim().to_ascii_lowercase())),
                );
            } else {
                out.push(Propagator::parse(p)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_defaults() {
        let a = Args::try_parse_from([
            "tracer", "--pid", "1", "--pid", "2", "--comm", "nginx", "--port", "80", "--output",
            "json",
        ])
        .expect("valid flags");
        assert_eq!(a.pids, [1, 2]);
        assert_eq!(a.exes, ["nginx"]);
        assert_eq!(a.ports, [80]);
        assert_eq!(a.output, Format::Json);
        assert_eq!(a.max_capture_bytes, 4096);
        assert!(Args::try_parse_from(["tracer", "--max-capture-bytes", "100000"]).is_err());
        assert!(Args::try_parse_from(["tracer", "--ring-buffer-bytes", "12345"]).is_err());
        assert_eq!(
            a.propagator_list().expect("default propagators"),
            [Propagator::TraceContext, Propagator::B3, Propagator::Jaeger]
        );
        let b = Args::try_parse_from([
            "tracer",
            "--propagators",
            "custom,b3",
            "--trace-header",
            "JD-Trace-ID",
        ])
        .expect("flags");
        assert_eq!(
            b.propagator_list().expect("valid"),
            [Propagator::Custom("jd-trace-id".into()), Propagator::B3]
        );
        let bad = Args::try_parse_from(["tracer", "--propagators", "xray"]).expect("flags");
        assert!(bad.propagator_list().is_err());
    }
}

/// `tracer check FILE...`: whether each trace in span files is whole.
#[derive(Debug, Parser)]
#[command(
    name = "tracer check",
    about = "Check that traces are whole: one line per trace, 200 complete, \
             409 broken chain (a parent not in the trace, two roots), \
             422 time inversion or cycle; then a summary. Exit status 0 when \
             every trace is complete, 1 otherwise, 2 when a file cannot be read."
)]
pub struct CheckArgs {
    /// Span files: `tracer --output json` lines, or OTLP JSON lines (an
    /// OpenTelemetry Collector's file exporter); `-` reads stdin. Spans of
    /// one trace may be spread over files from many nodes.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,

    /// Clock skew allowed between a parent and its child before it counts
    /// as a time inversion (hosts' clocks differ). Example: --tolerance 2ms
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub tolerance: std::time::Duration,

    /// Print only the traces that are not complete, then the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// `1073741824`, `512MiB`, `1GiB` (also `KiB`, `Mi`, `Gi`).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        _ => return Err(format!("{s:?}: unit must be B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `250us`, `2ms`, `1s`, or a bare number of nanoseconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "ns"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 2ms)"))?;
    match unit {
        "ns" => Ok(Duration::from_nanos(n)),
        "us" | "µs" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{s:?}: unit must be ns, us, ms or s")),
    }
}
