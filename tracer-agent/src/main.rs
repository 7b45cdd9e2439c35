//! `tracer`: the agent. Loads the kernel programs, reads their events and
//! turns HTTP traffic of unmodified processes into spans.

mod cli;
mod clock;
mod conntrack;
mod events;
mod export;
mod injection;
mod kernel_ctx;
mod linker;
mod output;
mod pipeline;
mod probes;
mod procinfo;
mod protocols;
mod route;
mod sockets;
mod spans;
mod stats;
mod tls;

use std::{
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf};
use clap::Parser as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracer_common::{
    Config, MAP_CONNS, MAP_EVENTS, MAP_STATS, STAT_COUNT, STAT_NAMES, STAT_RINGBUF_DROPS,
};

use crate::{
    cli::Args,
    pipeline::{Notice, Pipeline},
    stats::Stats,
};

fn init_logging(level: tracing::Level) {
    // aya's loader logs every relocation at debug: keep it at info unless
    // RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy()
        .add_directive("aya=info".parse().expect("static directive"))
        .add_directive("aya_obj=info".parse().expect("static directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

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

/// The propagator order as the kernel reads it (`Config::propagators`):
/// four bits per format, first in the low bits; custom headers are the
/// agent's alone.
fn kernel_propagators(order: &[protocols::propagation::Propagator]) -> u32 {
    use protocols::propagation::Propagator;
    order
        .iter()
        .filter_map(|p| match p {
            Propagator::TraceContext => Some(1u32),
            Propagator::B3 => Some(2),
            Propagator::Jaeger => Some(3),
            Propagator::Custom(_) => None,
        })
        .take(4)
        .enumerate()
        .fold(0, |acc, (i, code)| acc | (code << (4 * i)))
}

/// The TLS prober's counters for the log lines (empty when TLS is off).
fn tls_counters(tls: Option<&tls::TlsProbes>) -> String {
    match tls {
        Some(t) => format!(
            " | tls: {}",
            format_counters(&[
                ("tls_files_probed", t.counters.libraries as u64),
                ("tls_rescans_dropped", t.counters.rescans_dropped),
            ])
        ),
        None => String::new(),
    }
}

/// Sums the kernel's per-CPU counters.
fn kernel_stats(map: &PerCpuArray<aya::maps::MapData, u64>) -> Vec<(&'static str, u64)> {
    (0..STAT_COUNT)
        .map(|i| {
            let v = map
                .get(&i, 0)
                .map(|vals| vals.iter().sum::<u64>())
                .unwrap_or(0);
            (STAT_NAMES[i as usize], v)
        })
        .collect()
}

fn format_counters(c: &[(&str, u64)]) -> String {
    c.iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Longest the agent waits at shutdown for queued spans to be written and
/// exported.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// How often the ring buffer is drained while events flow (the kernel side
/// never wakes the agent).
const DRAIN_BUSY: Duration = Duration::from_millis(2);
/// Longest pause between drains once the ring has been found empty: an idle
/// node costs ~20 wakeups a second instead of 500.
const DRAIN_IDLE: Duration = Duration::from_millis(50);

/// Reads every queued record; returns how many there were.
fn drain_ring(ring: &mut RingBuf<aya::maps::MapData>, pipeline: &mut Pipeline) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        pipeline.handle(&item);
        n += 1;
    }
    pipeline.flush();
    n
}

/// The next drain delay: back to the busy rate as soon as anything was
/// read, otherwise doubling towards the idle rate.
fn next_drain_delay(current: Duration, read: usize) -> Duration {
    if read > 0 {
        DRAIN_BUSY
    } else {
        (current * 2).min(DRAIN_IDLE)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_level);
    // Configuration errors are reported before anything is loaded.
    let otlp_cfg =
        export::config::resolve(&args, |k| std::env::var(k).ok()).context("OTLP configuration")?;
    let service_names =
        procinfo::ServiceNames::parse(&args.service_names).map_err(|e| anyhow::anyhow!(e))?;
    let propagators = args.propagator_list().map_err(|e| anyhow::anyhow!(e))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::warn!("not running as root: loading BPF programs will likely fail");
    }
    probes::ensure_tracefs();

    let opts = probes::LoadOptions {
        ring_bytes: args.ring_buffer_bytes,
        max_conns: args.max_connections,
        config: Config {
            max_capture: args.max_capture_bytes,
            self_tgid: std::process::id(),
            filter_pids: u32::from(!args.pids.is_empty()),
            inflight_mask: probes::inflight_slots() - 1,
            inject_context: u32::from(args.inject_context == cli::Switch::On),
            propagators: kernel_propagators(&propagators),
            tls: u32::from(args.tls == cli::Switch::On),
            _pad: 0,
        },
        pids: args.pids.clone(),
        kernel_log_level: kernel_log_level(args.log_level),
    };
    let (mut ebpf, mut report) = probes::load(&opts).context("starting the kernel side")?;
    for (name, why) in &report.failed {
        tracing::warn!("optional probe {name} not attached: {why}");
    }
    tracing::info!(
        "attached {}/{} tracepoints",
        report.attached.len(),
        probes::PROBES.len()
    );
    tracing::debug!("attached: {}", report.attached.join(", "));
    if args.inject_context == cli::Switch::On {
        let dir = injection::cgroup_dir(args.cgroup_path.as_deref())
            .context("context injection (--inject-context on)")?;
        injection::attach(&mut ebpf, &dir)
            .with_context(|| format!("context injection on cgroup {}", dir.display()))?;
        tracing::info!(
            cgroup = %dir.display(),
            "context injection on: outgoing HTTP/1 requests get a traceparent"
        );
    }

    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring-buffer fd and keeps it open
            // for as long as the AsyncFd lives.
            let mut logger =
                unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                    .map_err(|e| anyhow::anyhow!("polling kernel logs: {e}"))?;
            tokio::spawn(async move {
                while let Ok(mut guard) = logger.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::warn!("kernel-side logs unavailable: {e}"),
    }

    let mut tls = if args.tls == cli::Switch::On {
        match tls::TlsProbes::load(&mut ebpf) {
            Ok(mut t) => {
                t.scan_all(&mut ebpf);
                Some(t)
            }
            Err(e) => {
                tracing::warn!("TLS capture unavailable: {e:#}");
                None
            }
        }
    } else {
        tracing::info!("TLS capture off (--tls off): HTTPS traffic is not traced");
        None
    };

    let mut ring = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).context("map EVENTS missing")?)
        .context("map EVENTS")?;
    let kernel_conns = BpfHashMap::try_from(ebpf.take_map(MAP_CONNS).context("map CONNS missing")?)
        .context("map CONNS")?;
    let kstats = PerCpuArray::try_from(ebpf.take_map(MAP_STATS).context("map STATS missing")?)
        .context("map STATS")?;

    let stats = Arc::new(Stats::default());
    let mut sinks = Vec::new();
    let writer = if args.output == output::Format::None {
        None
    } else {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        sinks.push(pipeline::Sink {
            tx,
            queued: queued.clone(),
            capacity: args.span_queue.max(1),
            dropped: pipeline::DropCounter::Output,
        });
        Some(tokio::spawn(output::run(rx, queued, args.output)))
    };
    let otlp_queued = Arc::new(AtomicUsize::new(0));
    let exporter = match otlp_cfg {
        Some(cfg) => {
            tracing::info!(
                endpoint = %cfg.endpoint,
                protocol = ?cfg.protocol,
                "exporting spans over OTLP"
            );
            let (tx, rx) = mpsc::unbounded_channel();
            sinks.push(pipeline::Sink {
                tx,
                queued: otlp_queued.clone(),
                capacity: cfg.queue_size,
                dropped: pipeline::DropCounter::Otlp,
            });
            let exp = export::otlp::Exporter::new(cfg, otlp_queued.clone(), stats.clone())
                .context("setting up OTLP export")?;
            Some(tokio::spawn(exp.run(rx, SHUTDOWN_FLUSH)))
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(
        args.max_connections as usize,
        pipeline::Filters {
            exes: args.exes.clone(),
            ports: args.ports.clone(),
        },
        kernel_conns,
        stats.clone(),
        sinks,
        procinfo::ProcessCache::new(service_names),
        propagators,
    );

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(args.stats_interval.max(1)));
    // The kernel side never wakes us (a wakeup per event would cost more
    // than the probe itself): drain on a timer instead, every 2 ms while
    // events flow (the default 8 MiB ring absorbs ~4 GB/s at that rate),
    // backing off to 50 ms when idle. The first event after idleness waits
    // at most 50 ms, well within the ring's capacity.
    let mut drain_delay = DRAIN_BUSY;
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
            .context("duplicating the ring buffer fd")?;
        // SAFETY: `fd` is an owned duplicate that lives as long as the
        // AsyncFd (it owns it).
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?
    };
    let mut last_drops = 0u64;
    tracing::info!(pid = std::process::id(), "tracer ready");

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
                let read = drain_ring(&mut ring, &mut pipeline);
                drain_delay = next_drain_delay(drain_delay, read);
                pipeline.take_notices(&mut notices);
                if let Some(t) = tls.as_mut() {
                    let now = std::time::Instant::now();
                    // A process that dlopens in a loop is scanned once per drain.
                    let mut scanned = std::collections::HashSet::new();
                    for notice in notices.drain(..) {
                        match notice {
                            Notice::Process(tracer_common::EVENT_EXEC, tgid) => {
                                t.on_exec(tgid, now)
                            }
                            Notice::Process(tracer_common::EVENT_DLOPEN, tgid)
                                if scanned.insert(tgid) =>
                            {
                                t.scan_pid(&mut ebpf, tgid)
                            }
                            Notice::Process(tracer_common::EVENT_PROC_EXIT, tgid) => {
                                t.on_exit(&mut ebpf, tgid)
                            }
                            Notice::TlsHandshake(tgid, comm) => t.on_tls_seen(tgid, comm, now),
                            Notice::TlsPlaintext(tgid) => t.on_plaintext(tgid),
                            Notice::Process(..) => {}
                        }
                    }
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
                let kernel = kernel_stats(&kstats);
                tracing::debug!(
                    conns = pipeline.conn_count(),
                    processes = pipeline.process_count(),
                    otlp_queue = export::otlp::queue_depth(&otlp_queued),
                    "agent: {} | kernel: {}{}",
                    format_counters(&stats.snapshot()),
                    format_counters(&kernel),
                    tls_counters(tls.as_ref()),
                );
                // Lost data is worth a warning (once per interval at most).
                let drops = kernel.get(STAT_RINGBUF_DROPS as usize).map_or(0, |(_, v)| *v);
                if drops > last_drops {
                    tracing::warn!(
                        "kernel ring buffer full: {} events dropped in the last {}s \
                         (raise --ring-buffer-bytes or lower --max-capture-bytes)",
                        drops - last_drops,
                        args.stats_interval
                    );
                    last_drops = drops;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    tracing::info!("shutting down: detaching probes");
    // Read what is already queued, then detach before the final flush.
    let _ = drain_ring(&mut ring, &mut pipeline);
    pipeline.drain();
    let kernel_summary = format_counters(&kernel_stats(&kstats));
    drop(pipeline);
    if let Some(t) = tls.as_mut() {
        t.detach_all(&mut ebpf);
    }
    probes::detach_tracepoints(&mut ebpf, std::mem::take(&mut report.links));
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
    tracing::info!(
        "summary: agent: {} | kernel: {}{}",
        format_counters(&stats.snapshot()),
        kernel_summary,
        tls_counters(tls.as_ref())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_backs_off_when_idle_and_snaps_back_under_load() {
        let mut d = DRAIN_BUSY;
        for _ in 0..10 {
            d = next_drain_delay(d, 0);
        }
        assert_eq!(d, DRAIN_IDLE);
        assert_eq!(next_drain_delay(d, 1), DRAIN_BUSY);
        assert_eq!(next_drain_delay(DRAIN_BUSY, 0), DRAIN_BUSY * 2);
    }

    #[test]
    fn propagator_order_for_the_kernel() {
        use protocols::propagation::Propagator as P;
        assert_eq!(
            kernel_propagators(&[P::TraceContext, P::B3, P::Jaeger]),
            0x321
        );
        assert_eq!(
            kernel_propagators(&[P::Custom("x".into()), P::B3, P::TraceContext]),
            0x12
        );
        assert_eq!(kernel_propagators(&[]), 0);
    }
}
