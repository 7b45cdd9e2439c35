//! Loading the kernel object and attaching the capture programs, driven by
//! a declarative probe table. Only stable tracepoints are used here, so the
//! baseline works on kernels without kprobes or fentry (uprobes and the
//! cgroup programs are attached by `uprobes/` and [`super::injection`]).

use std::path::Path;

use aya::{
    maps::{Array, HashMap},
    programs::{trace_point::TracePointLinkId, TracePoint},
    Ebpf, EbpfLoader,
};
use tracer_common::{
    Config, MAP_CONFIG, MAP_CONNS, MAP_EVENTS, MAP_INFLIGHT, MAP_PID_FILTER, MAP_SCRATCH,
};

use super::{object_patch, program, BpfError};

/// The compiled kernel object, built by build.rs through aya-build.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// One hook: which program goes on which tracepoint, and whether the agent
/// can run without it.
pub struct ProbeSpec {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub required: bool,
}

const fn tp(program: &'static str, tracepoint: &'static str, required: bool) -> ProbeSpec {
    ProbeSpec {
        program,
        category: "syscalls",
        tracepoint,
        required,
    }
}

/// Every hook the agent installs. Required ones carry the core HTTP path;
/// the others widen coverage (vectored I/O, sendfile bodies).
pub const PROBES: &[ProbeSpec] = &[
    tp("tracer_enter_accept", "sys_enter_accept", false),
    tp("tracer_enter_accept", "sys_enter_accept4", true),
    tp("tracer_enter_connect", "sys_enter_connect", true),
    tp("tracer_enter_read", "sys_enter_read", true),
    tp("tracer_enter_write", "sys_enter_write", true),
    tp("tracer_enter_recvfrom", "sys_enter_recvfrom", true),
    tp("tracer_enter_sendto", "sys_enter_sendto", true),
    tp("tracer_enter_readv", "sys_enter_readv", false),
    tp("tracer_enter_writev", "sys_enter_writev", false),
    tp("tracer_enter_recvmsg", "sys_enter_recvmsg", false),
    tp("tracer_enter_sendmsg", "sys_enter_sendmsg", false),
    tp("tracer_enter_sendfile", "sys_enter_sendfile64", false),
    tp("tracer_enter_close", "sys_enter_close", true),
    // Sockets moved to other fds (inetd-style children): see probes/fds.rs.
    tp("tracer_enter_dup2", "sys_enter_dup2", false),
    tp("tracer_enter_dup2", "sys_enter_dup3", false),
    tp("tracer_sys_exit", "sys_exit_accept", false),
    tp("tracer_sys_exit", "sys_exit_accept4", true),
    tp("tracer_sys_exit", "sys_exit_connect", true),
    tp("tracer_sys_exit", "sys_exit_read", true),
    tp("tracer_sys_exit", "sys_exit_write", true),
    tp("tracer_sys_exit", "sys_exit_recvfrom", true),
    tp("tracer_sys_exit", "sys_exit_sendto", true),
    tp("tracer_sys_exit", "sys_exit_readv", false),
    tp("tracer_sys_exit", "sys_exit_writev", false),
    tp("tracer_sys_exit", "sys_exit_recvmsg", false),
    tp("tracer_sys_exit", "sys_exit_sendmsg", false),
    tp("tracer_sys_exit", "sys_exit_sendfile64", false),
    ProbeSpec {
        program: "tracer_process_exit",
        category: "sched",
        tracepoint: "sched_process_exit",
        required: true,
    },
    ProbeSpec {
        program: "tracer_fork",
        category: "sched",
        tracepoint: "sched_process_fork",
        required: false,
    },
    // New programs may bring TLS libraries (see uprobes/).
    ProbeSpec {
        program: "tracer_exec",
        category: "sched",
        tracepoint: "sched_process_exec",
        required: false,
    },
];

pub struct LoadOptions {
    pub ring_bytes: u32,
    pub max_conns: u32,
    pub config: Config,
    pub pids: Vec<u32>,
    /// aya-log level for kernel diagnostics (0 = off .. 5 = trace).
    pub kernel_log_level: u8,
}

/// Slots of the in-flight syscall map: the next power of two of
/// `kernel.pid_max` (so threads never share one), within bounds.
pub fn inflight_slots() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(tracer_common::MAX_INFLIGHT_SLOTS);
    pid_max
        .clamp(1024, tracer_common::MAX_INFLIGHT_SLOTS)
        .next_power_of_two()
}

/// What happened to each probe.
pub struct AttachReport {
    pub attached: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// The links, so shutdown can close them concurrently.
    pub links: Vec<(&'static str, TracePointLinkId)>,
}

/// Closes links from several threads at once: each detach waits for the
/// kernel to quiesce (tens to hundreds of ms), which one after another
/// made shutdown take seconds.
pub fn drop_concurrently<L: Send>(mut links: Vec<L>) {
    let per_thread = links.len().div_ceil(16).max(1);
    std::thread::scope(|s| {
        while !links.is_empty() {
            let part: Vec<L> = links.drain(..per_thread.min(links.len())).collect();
            s.spawn(move || drop(part));
        }
    });
}

/// Takes the tracepoint links out of their programs and closes them
/// concurrently.
pub fn detach_tracepoints(ebpf: &mut Ebpf, links: Vec<(&'static str, TracePointLinkId)>) {
    let mut owned = Vec::new();
    for (name, id) in links {
        let prog: Option<&mut TracePoint> = ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        if let Some(link) = prog.and_then(|p| p.take_link(id).ok()) {
            owned.push(link);
        }
    }
    drop_concurrently(owned);
}

/// tracefs must be mounted for tracepoints; mount it if it is missing.
pub fn ensure_tracefs() {
    let candidates = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    if candidates
        .iter()
        .any(|p| Path::new(p).join("events").exists())
    {
        return;
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: static C strings; mount(2) with no data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted tracefs at /sys/kernel/tracing");
    } else {
        tracing::warn!(
            "tracefs is not mounted and mounting it failed ({}); tracepoints will not attach",
            std::io::Error::last_os_error()
        );
    }
}

/// Offset of `child_pid` in `sched:sched_process_fork` records, from the
/// tracepoint's `format` (0 when it cannot be read: forks are then not
/// followed).
pub fn fork_child_pid_offset() -> u32 {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/sched/sched_process_fork/format")).ok()
        })
        .and_then(|f| field_offset(&f, "child_pid"))
        .unwrap_or(0)
}

/// `offset:N` of field `name` in a tracefs `format` text.
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|l| {
        let decl = l.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        if decl.split_whitespace().last()? != name {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
            .filter(|o| *o < 256)
    })
}

/// Writes the configuration the kernel programs read on every event.
pub fn write_config(ebpf: &mut Ebpf, config: Config) -> Result<(), BpfError> {
    let map = ebpf
        .map_mut(MAP_CONFIG)
        .ok_or(BpfError::MissingMap(MAP_CONFIG))?;
    let mut cfg: Array<_, Config> = Array::try_from(map).map_err(BpfError::map(MAP_CONFIG))?;
    cfg.set(0, config, 0).map_err(BpfError::map(MAP_CONFIG))
}

/// Loads the object, writes the configuration, and attaches every probe.
pub fn load(opts: &LoadOptions) -> Result<(Ebpf, AttachReport), BpfError> {
    if BPF_OBJECT.is_empty() {
        return Err(BpfError::NoObject);
    }
    let level = opts.kernel_log_level;
    let possible_cpus = aya::util::nr_cpus()
        .map(|n| n as u32)
        .unwrap_or(tracer_common::DEFAULT_SCRATCH_SLOTS);
    // The Go injection maps hold ~300-byte contexts: one entry each when
    // injection is off.
    let go_inject = if opts.config.inject_context != 0 {
        tracer_common::MAX_GO_INJECT
    } else {
        1
    };
    // Without injection the sockhash is never used: a plain hash in its
    // place lets the agent run without CAP_NET_ADMIN (see object_patch).
    let patched = if opts.config.inject_context == 0 {
        let p = object_patch::sockhash_as_hash(BPF_OBJECT, tracer_common::MAP_SOCKS);
        if p.is_none() {
            tracing::warn!(
                "could not find the {} sockhash in the BPF object: loading needs CAP_NET_ADMIN",
                tracer_common::MAP_SOCKS
            );
        }
        p
    } else {
        None
    };
    let object = patched.as_ref().map_or(BPF_OBJECT, |p| p.bytes());
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(tracer_common::MAP_GO_SERVER_CTX, go_inject)
        .map_max_entries(tracer_common::MAP_GO_TRACE, go_inject)
        .map_max_entries(tracer_common::MAP_GO_PENDING, go_inject)
        .map_max_entries(MAP_EVENTS, opts.ring_bytes)
        .map_max_entries(MAP_CONNS, opts.max_conns)
        .map_max_entries(MAP_SCRATCH, possible_cpus)
        .map_max_entries(MAP_INFLIGHT, opts.config.inflight_mask + 1)
        .map_max_entries(tracer_common::MAP_TLS_CALLS, opts.config.inflight_mask + 1)
        .map_max_entries(tracer_common::MAP_LAST_READ, opts.config.inflight_mask + 1)
        .override_global("AYA_LOG_LEVEL", &level, true)
        .load(object)
        .map_err(BpfError::Load)?;

    write_config(&mut ebpf, opts.config)?;
    if !opts.pids.is_empty() {
        let map = ebpf
            .map_mut(MAP_PID_FILTER)
            .ok_or(BpfError::MissingMap(MAP_PID_FILTER))?;
        let mut pids: HashMap<_, u32, u8> =
            HashMap::try_from(map).map_err(BpfError::map(MAP_PID_FILTER))?;
        for pid in &opts.pids {
            pids.insert(pid, 1, 0)
                .map_err(BpfError::map(MAP_PID_FILTER))?;
        }
    }

    let mut report = AttachReport {
        attached: Vec::new(),
        failed: Vec::new(),
        links: Vec::new(),
    };
    let mut loaded: Vec<&'static str> = Vec::new();
    for spec in PROBES {
        let name = format!("{}:{}", spec.category, spec.tracepoint);
        let prog: &mut TracePoint = program(&mut ebpf, spec.program)?;
        if !loaded.contains(&spec.program) {
            prog.load().map_err(BpfError::program(spec.program))?;
            loaded.push(spec.program);
        }
        match prog.attach(spec.category, spec.tracepoint) {
            Ok(id) => {
                report.attached.push(name);
                report.links.push((spec.program, id));
            }
            Err(source) if spec.required => {
                return Err(BpfError::RequiredAttach {
                    category: spec.category,
                    tracepoint: spec.tracepoint,
                    source,
                })
            }
            Err(e) => report.failed.push((name, e.to_string())),
        }
    }
    Ok((ebpf, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_object_takes_the_sockhash_patch() {
        if BPF_OBJECT.is_empty() {
            eprintln!("not checked: this build has no kernel object (AYA_BUILD_SKIP)");
            return;
        }
        let patched = object_patch::sockhash_as_hash(BPF_OBJECT, tracer_common::MAP_SOCKS)
            .expect("SOCKS is a legacy sockhash definition");
        assert_eq!(patched.bytes().len(), BPF_OBJECT.len());
        assert_ne!(patched.bytes(), BPF_OBJECT);
    }

    #[test]
    fn fork_record_offsets_of_both_layouts() {
        let new = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                   \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(old, "child_pid"), Some(44));
        assert_eq!(field_offset(old, "nope"), None);
        assert_eq!(field_offset("garbage", "child_pid"), None);
    }
}
