//! The agent's wiring: configuration into the kernel programs, the sinks,
//! the pipeline; the run loop (ring drains, process notices, the periodic
//! report); and an orderly shutdown (drain, detach, flush).

use std::{
    sync::{atomic::AtomicUsize, Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use thiserror::Error;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{
    Config, ThreadCtx, CGROUP_FILTER_OFF, MAP_CGROUP_FILTER, MAP_CONNS, MAP_EVENTS,
    MAP_NO_THREAD_LINK, MAP_STATS, MAP_THREAD_CTX, NO_LINK_RUNTIME, STAT_RINGBUF_DROPS,
};

use crate::{
    bpf::{
        h2walk, injection,
        kernel::{KernelMaps, StatsMap},
        loader,
        recording::Recorder,
        ring, BpfError,
    },
    cli::{Args, Switch},
    degradation::Degrader,
    export::{
        otlp::{self, config::ConfigError, exporter::ExportSetupError},
        sink::{DropCounter, Sink},
        stdout,
    },
    metadata::{
        kubernetes::{
            select::{FilterSync, Selection},
            watch::{self as kube_watch, KubeError},
            Pods,
        },
        process::ServiceNames,
        resource::host_name,
        runtime::{running_multiplexed, RuntimeCache},
        HostView,
    },
    metrics::{Exposition, Red, RedRecorder},
    pipeline::{filter::Filters, Pipeline, PipelineConfig},
    propagation::kernel_order,
    telemetry::{health, report, Gauges, Registry},
    uprobes::TlsProbes,
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("OTLP configuration")]
    OtlpConfig(#[source] ConfigError),
    #[error("setting up OTLP export")]
    OtlpSetup(#[source] ExportSetupError),
    #[error("{0}")]
    Flags(String),
    #[error("starting the kernel side")]
    Kernel(#[source] BpfError),
    #[error("Kubernetes (--kubernetes on)")]
    Kube(#[source] KubeError),
    #[error("the Kubernetes selection (--namespace, --exclude-namespace, --container-name)")]
    Selection(#[source] BpfError),
    #[error("context injection (--inject-context on)")]
    Injection(#[source] BpfError),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> AgentError {
    move |source| AgentError::Io { what, source }
}

/// Longest the agent waits at shutdown for queued spans to be written and
/// exported.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// aya-log levels: 1 error .. 5 trace.
fn kernel_log_level(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

/// An error and its causes, one line each (a verifier log is cut to its
/// first line; the whole of it is logged at debug level).
fn short_reason(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        parts.push(
            err.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
        cur = err.source();
    }
    parts.join(": ")
}

/// Takes map `name` out of the object.
/// Before the injector links anything: every running process whose
/// runtime is not thread-per-request (Go) is marked in the kernel, so its
/// threads never key a parent link. Programs exec'd from now on are
/// marked pending by the exec hook until the pipeline classifies them.
fn mark_multiplexed_processes(ebpf: &mut Ebpf) -> Result<BpfHashMap<MapData, u32, u8>, AgentError> {
    let mut map: BpfHashMap<MapData, u32, u8> =
        BpfHashMap::try_from(take_map(ebpf, MAP_NO_THREAD_LINK)?)
            .map_err(|e| AgentError::Kernel(BpfError::map(MAP_NO_THREAD_LINK)(e)))?;
    let counters = crate::telemetry::Counters::default();
    let found = running_multiplexed(&mut RuntimeCache::default(), &counters);
    for (pid, runtime) in &found {
        if let Err(e) = map.insert(pid, NO_LINK_RUNTIME, 0) {
            tracing::warn!(
                pid,
                "cannot mark a Go process as not linkable by thread: {e}"
            );
        }
        tracing::debug!(
            pid,
            version = runtime.go_version(),
            "Go process: no thread-keyed links"
        );
    }
    // SERVER contexts the capture hooks kept for them before the mark
    // (they are attached already) go too: the injector is not attached
    // yet, so none has been used.
    let gone: std::collections::HashSet<u32> = found.iter().map(|(pid, _)| *pid).collect();
    if let Some(m) = ebpf.map_mut(MAP_THREAD_CTX) {
        match BpfHashMap::<_, u64, ThreadCtx>::try_from(m) {
            Ok(mut threads) => {
                let stale: Vec<u64> = threads
                    .keys()
                    .flatten()
                    .filter(|k| gone.contains(&((k >> 32) as u32)))
                    .collect();
                for k in stale {
                    let _ = threads.remove(&k);
                }
            }
            Err(e) => tracing::warn!("reading {MAP_THREAD_CTX}: {e}"),
        }
    }
    if !found.is_empty() {
        tracing::info!(
            "{} running Go processes: their CLIENT calls are not linked by thread",
            found.len()
        );
    }
    Ok(map)
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, AgentError> {
    ebpf.take_map(name)
        .ok_or(AgentError::Kernel(BpfError::MissingMap(name)))
}

/// Forwards the kernel programs' aya-log records to the agent's log.
fn forward_kernel_logs(ebpf: &mut Ebpf) -> Result<(), AgentError> {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring-buffer fd and keeps it open
            // for as long as the AsyncFd lives.
            let mut logger =
                unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                    .map_err(|e| io("polling kernel logs")(std::io::Error::other(e.to_string())))?;
            tokio::spawn(async move {
                while let Ok(mut guard) = logger.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::warn!("kernel-side logs unavailable: {e}"),
    }
    Ok(())
}

/// Whether a selection flag was given (not only the default exclusions).
fn explicit_selection(args: &Args) -> bool {
    !args.namespaces.is_empty()
        || args.exclude_namespaces.is_some()
        || !args.container_names.is_empty()
}

/// `--namespace`, `--exclude-namespace` and `--container-name`, checked
/// against whether the Kubernetes API is in use: without it a pod
/// selection cannot be honoured, which is an error rather than a silent
/// trace-everything.
fn selection(args: &Args, on_kubernetes: bool) -> Result<Selection, AgentError> {
    let clean = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let sel = Selection {
        namespaces: clean(&args.namespaces),
        exclude_namespaces: match &args.exclude_namespaces {
            Some(given) => clean(given),
            None if on_kubernetes => kube_watch::own_namespace()
                .into_iter()
                .chain(["kube-system".to_owned()])
                .collect(),
            None => Vec::new(),
        },
        containers: clean(&args.container_names),
    };
    if !on_kubernetes && sel != Selection::default() {
        return Err(AgentError::Flags(
            "--namespace, --exclude-namespace and --container-name need the Kubernetes API \
             (a service account or KUBECONFIG; see --kubernetes)"
                .into(),
        ));
    }
    Ok(sel)
}

/// Before 5.11 BPF maps and programs are charged to RLIMIT_MEMLOCK
/// (64 KiB by default before 5.16: not one ring buffer). Unlimited when
/// allowed (CAP_SYS_RESOURCE), else the soft limit up to the hard one.
/// Later kernels charge the memory cgroup instead and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit/getrlimit with valid pointers to rlimit values.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 && cur.rlim_cur < cur.rlim_max {
            cur.rlim_cur = cur.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
        }
    }
}

/// `CAP_NET_ADMIN` (uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether capability `cap` is in this process's effective set
/// (`CapEff` of /proc/self/status). Unknown counts as present: the
/// kernel then gives the real answer.
fn has_effective_cap(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_none_or(|mask| mask & (1u64 << cap) != 0)
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), AgentError> {
    // Configuration errors are reported before anything is loaded.
    let otlp_cfg =
        otlp::config::resolve(&args, |k| std::env::var(k).ok()).map_err(AgentError::OtlpConfig)?;
    let service_names = ServiceNames::parse(&args.service_names).map_err(AgentError::Flags)?;
    let propagators = args.propagator_list().map_err(AgentError::Flags)?;
    let sampler = args
        .head_sampler()
        .map_err(|e| AgentError::Flags(e.to_string()))?;
    let tail = args.tail_config(&sampler);

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::warn!("not running as root: loading BPF programs will likely fail");
    }
    loader::ensure_tracefs();
    raise_memlock_limit();
    // The API is found before anything is loaded: the kernel's cgroup
    // filter mode depends on it. Finding it reads files only.
    let kube = kube_watch::client(args.kubernetes)
        .await
        .map_err(AgentError::Kube)?;
    let sel = selection(&args, kube.is_some())?;
    // Kernel-side selection names cgroup v2 ids. On a node without the
    // unified hierarchy an explicit selection cannot be honoured (an
    // error: tracing more than asked is not a fallback), while the default
    // exclusions are dropped with a warning so the DaemonSet still runs.
    let cgroup_root = match sel.kernel_mode() {
        _ if kube.is_none() => None,
        CGROUP_FILTER_OFF => None,
        _ => match injection::cgroup_dir(None) {
            Ok(root) => Some(root),
            Err(e) if !explicit_selection(&args) => {
                tracing::warn!(
                    "no cgroup v2 hierarchy: the default exclusions ({}) are not applied, \
                     every process is traced: {e}",
                    sel.exclude_namespaces.join(", ")
                );
                None
            }
            Err(e) => return Err(AgentError::Selection(e)),
        },
    };
    let filter_cgroups = if cgroup_root.is_some() {
        sel.kernel_mode()
    } else {
        CGROUP_FILTER_OFF
    };
    // A port that cannot be bound is a configuration error, reported now.
    let health_listener = match args.health_listen {
        Some(addr) => Some(
            health::bind(addr)
                .await
                .map_err(io("binding --health-listen"))?,
        ),
        None => None,
    };
    // With both flags on one address, one server answers for both.
    let metrics_listener = match args.metrics_listen {
        Some(addr) if args.health_listen != Some(addr) => Some(
            health::bind(addr)
                .await
                .map_err(io("binding --metrics-listen"))?,
        ),
        _ => None,
    };

    // Injection's sockhash and cgroup programs need CAP_NET_ADMIN: without
    // it the agent traces, as on a kernel too old for injection, and says so
    // (a DaemonSet missing the capability must not crash-loop).
    let mut inject = args.inject_context == Switch::On;
    if inject && !has_effective_cap(CAP_NET_ADMIN) {
        tracing::warn!(
            "context injection unavailable, tracing continues without it: it needs \
             CAP_NET_ADMIN, which this process does not have"
        );
        inject = false;
    }
    let opts = loader::LoadOptions {
        ring_bytes: args.ring_buffer_bytes,
        max_conns: args.max_connections,
        config: Config {
            max_capture: args.max_capture_bytes,
            self_tgid: std::process::id(),
            filter_pids: u32::from(!args.pids.is_empty()),
            inflight_mask: loader::inflight_slots() - 1,
            inject_context: u32::from(inject),
            propagators: kernel_order(&propagators),
            tls: u32::from(args.tls == Switch::On),
            fork_child_pid_offset: loader::fork_child_pid_offset(),
            filter_cgroups,
            ..sampler.kernel_config()
        },
        pids: args.pids.clone(),
        kernel_log_level: kernel_log_level(args.log_level),
    };
    let (mut ebpf, mut report) = loader::load(&opts).map_err(AgentError::Kernel)?;
    for (name, why) in &report.failed {
        tracing::warn!("optional probe {name} not attached: {why}");
    }
    tracing::info!(
        "attached {}/{} tracepoints",
        report.attached.len(),
        loader::PROBES.len()
    );
    tracing::debug!("attached: {}", report.attached.join(", "));
    let mut attached_programs = report.attached.len();
    match h2walk::attach(&mut ebpf) {
        Ok(()) => {
            attached_programs += 2;
            tracing::info!("HTTP/2 frame walk on: DATA payloads skipped, every other frame copied");
        }
        Err(e) => {
            tracing::warn!(
                "HTTP/2 frame walk unavailable, HTTP/2 is copied up to --max-capture-bytes \
                 per call (trailers behind large DATA frames may be lost): {}",
                short_reason(&e)
            );
            tracing::debug!("HTTP/2 frame walk: {e:?}");
        }
    }
    let no_thread_link = if inject {
        Some(mark_multiplexed_processes(&mut ebpf)?)
    } else {
        None
    };
    if inject {
        // Where is configuration (an error); whether this kernel can run
        // it is not: without it the agent still traces, and says why.
        let dir =
            injection::cgroup_dir(args.cgroup_path.as_deref()).map_err(AgentError::Injection)?;
        match injection::attach(&mut ebpf, &dir) {
            Ok(()) => {
                attached_programs += 2;
                tracing::info!(
                    cgroup = %dir.display(),
                    "context injection on: outgoing HTTP/1 requests get a traceparent"
                );
            }
            Err(e) => {
                tracing::warn!(
                    "context injection unavailable on this kernel, tracing continues without it: {}",
                    short_reason(&e)
                );
                tracing::debug!("context injection: {e:?}");
                let cfg = Config {
                    inject_context: 0,
                    ..opts.config
                };
                loader::write_config(&mut ebpf, cfg).map_err(AgentError::Kernel)?;
                inject = false;
            }
        }
    }
    forward_kernel_logs(&mut ebpf)?;
    // What the kernel runs with now; degradation rewrites its sampling part.
    let base_kernel_cfg = Config {
        inject_context: u32::from(inject),
        ..opts.config
    };

    let ring_map = take_map(&mut ebpf, MAP_EVENTS)?;
    let mut ring = RingBuf::try_from(ring_map)
        .map_err(|e| AgentError::Kernel(BpfError::map(MAP_EVENTS)(e)))?;
    let conns: BpfHashMap<MapData, u64, tracer_common::ConnState> =
        BpfHashMap::try_from(take_map(&mut ebpf, MAP_CONNS)?)
            .map_err(|e| AgentError::Kernel(BpfError::map(MAP_CONNS)(e)))?;
    let kstats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(take_map(&mut ebpf, MAP_STATS)?)
        .map_err(|e| AgentError::Kernel(BpfError::map(MAP_STATS)(e)))?;
    let registry = Registry::new().with_kernel(Arc::new(StatsMap(Mutex::new(kstats))));
    let (counters, gauges) = (registry.counters.clone(), registry.gauges.clone());

    let health = health::Health::new();
    let red = args.metrics_listen.map(|_| Red::new());
    let exposition = red
        .as_ref()
        .map(|red| Arc::new(Exposition::new(red, registry.clone())));
    let servers: Vec<_> = [health_listener, metrics_listener]
        .into_iter()
        .flatten()
        .map(|l| tokio::spawn(health::serve(l, health.clone(), exposition.clone())))
        .collect();
    if let Some(addr) = args.metrics_listen {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let pods = kube.as_ref().map(|_| Pods::new());
    let filter_sync = if let Some(root) = cgroup_root {
        let map = BpfHashMap::try_from(take_map(&mut ebpf, MAP_CGROUP_FILTER)?)
            .map_err(|e| AgentError::Kernel(BpfError::map(MAP_CGROUP_FILTER)(e)))?;
        tracing::info!(
            namespaces = ?sel.namespaces,
            exclude_namespaces = ?sel.exclude_namespaces,
            containers = ?sel.containers,
            cgroups = %root.display(),
            "Kubernetes selection filtered in the kernel"
        );
        let sync = FilterSync::start(
            map,
            root,
            sel,
            pods.clone().unwrap_or_default(),
            counters.clone(),
            gauges.clone(),
        )
        .map_err(io("starting the cgroup filter thread"))?;
        Some(sync)
    } else {
        None
    };
    // The node's name is the spans' host.name on Kubernetes (a pod's own
    // host name is the pod's) and whenever --node-name is given.
    let node = (kube.is_some() || args.node_name.is_some())
        .then(|| kube_watch::node_name(args.node_name.as_deref(), &host_name()));
    let watch = match (kube, &pods, &node) {
        (Some(client), Some(pods), Some(node)) => Some(tokio::spawn(kube_watch::run(
            client,
            node.clone(),
            pods.clone(),
            counters.clone(),
            gauges.clone(),
        ))),
        _ => None,
    };

    let mut tls = if args.tls == Switch::On {
        match TlsProbes::load(&mut ebpf, counters.clone(), gauges.clone()) {
            Ok(mut t) => {
                t.scan_all(&mut ebpf);
                Some(t)
            }
            Err(e) => {
                tracing::warn!("TLS capture unavailable: {:#}", anyhow::Error::new(e));
                None
            }
        }
    } else {
        tracing::info!("TLS capture off (--tls off): HTTPS traffic is not traced");
        None
    };

    let mut sinks = Vec::new();
    let writer = if args.output == stdout::Format::None {
        None
    } else {
        let (sink, rx, queued) = Sink::channel(args.span_queue, DropCounter::Output);
        sinks.push(sink);
        Some(tokio::spawn(stdout::run(rx, queued, args.output)))
    };
    let mut otlp_queued = Arc::new(AtomicUsize::new(0));
    let exporter = match otlp_cfg {
        Some(cfg) => {
            tracing::info!(
                endpoint = %cfg.endpoint,
                protocol = ?cfg.protocol,
                "exporting spans over OTLP"
            );
            let (sink, rx, queued) = Sink::channel(cfg.queue_size, DropCounter::Otlp);
            sinks.push(sink);
            otlp_queued = queued.clone();
            let exp = otlp::exporter::Exporter::new(cfg, queued, counters.clone())
                .map_err(AgentError::OtlpSetup)?;
            Some(tokio::spawn(exp.run(rx, SHUTDOWN_FLUSH)))
        }
        None => None,
    };
    let mut recorder = match &args.record {
        Some(path) => {
            let r = Recorder::create(path, args.record_max_bytes, counters.clone())
                .map_err(io("creating the --record file"))?;
            tracing::info!(file = %path.display(), "recording kernel events");
            Some(r)
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(
        PipelineConfig {
            max_conns: args.max_connections as usize,
            filters: Filters {
                exes: args.exes.clone(),
                ports: args.ports.clone(),
            },
            service_names,
            propagators,
            host: HostView::Live,
            inject_context: inject,
            pods,
            host_name: node,
            red: red.map(|r| RedRecorder::new(r, args.metrics_max_series, counters.clone())),
            sampler: sampler.clone(),
            tail: tail.clone(),
        },
        Box::new(KernelMaps {
            conns,
            no_thread_link,
        }),
        counters.clone(),
        gauges.clone(),
        sinks,
    );

    let mut sigint = signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?;
    let mut tick = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    // The first event after idleness waits at most DRAIN_IDLE, well within
    // the ring's capacity.
    let mut drain_delay = ring::DRAIN_BUSY;
    let mut notices = Vec::new();
    // Process notices (exec, dlopen) are sent with a wakeup, unlike data:
    // a library loaded by dlopen should be probed before the program's
    // first TLS call, not up to 50 ms later. A duplicate of the ring's fd
    // is polled (edge-triggered: only those wakeups make it ready).
    let wake = {
        use std::os::fd::AsFd as _;
        let fd = ring
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicating the ring buffer fd"))?;
        // SAFETY: `fd` is an owned duplicate that lives as long as the
        // AsyncFd (it owns it).
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io("polling the ring buffer")(std::io::Error::other(e.to_string())))?
    };
    let mut drops = report::DropWatch::default();
    let mut degrade = args
        .degradation_limits()
        .map(|limits| Degrader::new(limits, sampler.clone(), base_kernel_cfg, &registry));
    // The first reading comes a second after start: loading and attaching
    // the probes is not the agent's running cost.
    let mut degrade_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tracing::info!(%sampler, keep_errors = tail.keep_errors,
        keep_slower_than = ?tail.keep_slower_than, "head sampler");
    if inject && sampler.has_routes() {
        tracing::warn!(
            "--sample-route rules do not apply to the HTTP/1 requests whose ids the kernel \
             chooses (--inject-context on): those follow --sampler alone"
        );
    }
    tracing::info!(pid = std::process::id(), "tracer ready");
    health.set_ready(true);

    loop {
        tokio::select! {
            woke = wake.readable() => {
                if let Ok(mut guard) = woke {
                    guard.clear_ready();
                }
                // Drain now (the branch below runs at once).
                drain_delay = Duration::ZERO;
            }
            _ = tokio::time::sleep(drain_delay) => {
                let read = ring::drain(&mut ring, &mut pipeline, recorder.as_mut());
                drain_delay = ring::next_delay(drain_delay, read);
                health.beat();
                pipeline.take_notices(&mut notices);
                if let Some(t) = tls.as_mut() {
                    let now = Instant::now();
                    t.on_notices(&mut ebpf, &mut notices, now);
                    t.run_due(&mut ebpf, now);
                    // Exec re-scans are due within milliseconds.
                    if let Some(due) = t.next_due() {
                        drain_delay = drain_delay.min(due.saturating_duration_since(now));
                    }
                } else {
                    notices.clear();
                }
            }
            _ = tick.tick() => {
                pipeline.tick();
                Gauges::set(
                    &gauges.otlp_queue,
                    otlp::exporter::queue_depth(&otlp_queued) as u64,
                );
                let uprobes = tls.as_ref().map_or(0, TlsProbes::links);
                Gauges::set(
                    &gauges.bpf_programs_attached,
                    (attached_programs + uprobes) as u64,
                );
                tracing::debug!("{}", report::line(&registry.snapshot(), true));
                // Lost data is worth a warning (once per interval at most).
                if let Some(n) = drops.new_drops(registry.kernel_value(STAT_RINGBUF_DROPS)) {
                    tracing::warn!(
                        "kernel ring buffer full: {n} events dropped in the last {}s \
                         (raise --ring-buffer-bytes or lower --max-capture-bytes)",
                        args.stats_interval
                    );
                }
            }
            _ = degrade_tick.tick(), if degrade.is_some() => {
                if let Some(d) = degrade.as_mut() {
                    d.step(&registry, &mut pipeline, &mut ebpf);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    tracing::info!("shutting down: detaching probes");
    health.set_ready(false);
    for task in watch.into_iter().chain(servers) {
        task.abort();
    }
    drop(filter_sync);
    // Read what is already queued, then detach before the final flush.
    while ring::drain(&mut ring, &mut pipeline, recorder.as_mut()) >= ring::DRAIN_BUDGET {}
    pipeline.drain();
    drop(pipeline);
    drop(recorder);
    if let Some(t) = tls.as_mut() {
        t.detach_all(&mut ebpf);
    }
    loader::detach_tracepoints(&mut ebpf, std::mem::take(&mut report.links));
    drop(ebpf);
    // Both consumers end once their channel is drained; the exporter
    // bounds its own flush by SHUTDOWN_FLUSH.
    for task in [writer, exporter].into_iter().flatten() {
        if tokio::time::timeout(SHUTDOWN_FLUSH + Duration::from_secs(1), task)
            .await
            .is_err()
        {
            tracing::warn!("span output did not finish in time");
        }
    }
    // The kernel's counters outlive its programs (the agent holds the
    // map), and the exporters have counted their last batch by now.
    tracing::info!("summary: {}", report::line(&registry.snapshot(), false));
    Ok(())
}
