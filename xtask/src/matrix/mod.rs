//! `cargo xtask matrix`: the agent on the kernels our users run. Each
//! kernel boots under qemu with an initramfs of our own; inside, the real
//! agent traces nginx answering busybox `wget` on loopback, once with the
//! default capture and once with context injection. A kernel passes when
//! every program loads (or is skipped by a feature probe the attach report
//! names) and the spans are right.

mod guest;
mod kernels;

use std::fmt::Write as _;

use anyhow::bail;
use serde_json::Value;

use crate::util::root;

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// Kernels to boot (repeatable): 6.1, 6.12, 5.10. Default: all.
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<String>,
}

impl MatrixArgs {
    /// The slice the test suite runs: 6.1, the kernel most fleets have
    /// (the host's own kernel is covered by the integration tests).
    pub fn suite_slice() -> Self {
        Self {
            kernels: vec!["6.1".to_owned()],
        }
    }
}

/// The verdict on one agent phase in one guest.
struct Verdict {
    ok: bool,
    /// Off by design on this kernel (a missing feature, reported).
    off: bool,
    detail: String,
}

fn is(sp: &Value, kind: &str, exe: &str) -> bool {
    sp["kind"] == kind && sp["resource"]["process.executable.name"] == exe
}

/// busybox `wget`: the executable is busybox, but a process gone before
/// the agent read `/proc/PID/exe` is named by its command.
fn is_wget(sp: &Value) -> bool {
    is(sp, "CLIENT", "busybox") || is(sp, "CLIENT", "wget")
}

/// Why an agent did not start, from its log (the last error line).
fn failure(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("Error") || l.contains("error") || l.contains("ERROR"))
        .unwrap_or("no log")
        .trim()
        .chars()
        .take(300)
        .collect()
}

/// Capture phase: one SERVER span (nginx, busybox httpd, nghttpd) and one
/// CLIENT span (wget, nghttp) per request, with their attach report. The
/// HTTP/2 frame walk must be on where `bpf_loop` is (`h2_walk`), and
/// HTTP/2 is traced either way.
fn judge_capture(p: &guest::Phase, h2_walk: bool) -> Verdict {
    if p.exit != Some(0) {
        return Verdict {
            ok: false,
            off: false,
            detail: format!("agent failed: {}", failure(&p.log)),
        };
    }
    let servers = p.spans.iter().filter(|s| is(s, "SERVER", "nginx")).count();
    // busybox httpd's children: the executable, or the command of one
    // gone before /proc was read.
    let inetd = p
        .spans
        .iter()
        .filter(|s| is(s, "SERVER", "busybox") || is(s, "SERVER", "httpd"))
        .filter(|s| s["attributes"]["url.path"] == "/index.html")
        .count();
    let clients = p
        .spans
        .iter()
        .filter(|s| is_wget(s) && s["attributes"]["url.path"] != "/warm-up")
        .count();
    let attached = p
        .log
        .lines()
        .find_map(|l| l.split_once("attached ").map(|(_, r)| r.to_owned()))
        .unwrap_or_default();
    let off: Vec<&str> = p
        .log
        .lines()
        .filter_map(|l| l.split_once("optional probe ").map(|(_, r)| r))
        .collect();
    let tls = p
        .log
        .lines()
        .find_map(|l| {
            l.split_once("TLS: OpenSSL probes on ")
                .map(|(_, r)| r.trim())
        })
        .unwrap_or("no TLS probes");
    let h2 = |kind: &str, exe: &str| {
        p.spans
            .iter()
            .filter(|s| is(s, kind, exe) && s["attributes"]["network.protocol.version"] == "2")
            .filter(|s| s["attributes"]["http.response.status_code"] == 200)
            .count()
    };
    let (h2_servers, h2_clients) = (h2("SERVER", "nghttpd"), h2("CLIENT", "nghttp"));
    let walk_off = p.log.lines().find_map(|l| {
        l.split_once("HTTP/2 frame walk unavailable").map(|(_, r)| {
            r.rsplit_once("): ")
                .map_or(r, |(_, why)| why)
                .trim()
                .to_owned()
        })
    });
    // Go's crypto/tls: tlsload's own server and clients, every request.
    let go_tls = |kind: &str| {
        p.spans
            .iter()
            .filter(|s| is(s, kind, "tlsload") && s["attributes"]["url.scheme"] == "https")
            .filter(|s| s["attributes"]["http.response.status_code"] == 200)
            .count()
    };
    let (go_servers, go_clients) = (go_tls("SERVER"), go_tls("CLIENT"));
    let ok = servers == guest::REQUESTS
        && go_servers == 2 * guest::REQUESTS
        && go_clients == 2 * guest::REQUESTS
        && inetd == guest::REQUESTS
        && clients == 2 * guest::REQUESTS
        && h2_servers == guest::REQUESTS
        && h2_clients == guest::REQUESTS
        && walk_off.is_none() == h2_walk;
    let walk = match &walk_off {
        None => "HTTP/2 frame walk on".to_owned(),
        Some(why) => format!("HTTP/2 frame walk off ({why})"),
    };
    let mut detail = format!(
        "nginx {servers} + busybox httpd (inetd-style) {inetd} + nghttpd (h2c) {h2_servers} SERVER, \
         {clients} + nghttp {h2_clients} CLIENT spans; Go crypto/tls (tlsload) {go_servers} SERVER + \
         {go_clients} CLIENT spans; {attached}; OpenSSL uprobes on {tls}; {walk}"
    );
    if !off.is_empty() {
        let _ = write!(detail, "; off: {}", off.join("; "));
    }
    Verdict {
        ok,
        off: false,
        detail,
    }
}

/// Injection phase: every nginx SERVER span is the child of the wget
/// CLIENT span whose request carried the injected traceparent. Where the
/// kernel cannot run it, the agent must say so and trace on.
fn judge_inject(p: &guest::Phase, expected: bool) -> Verdict {
    if p.exit != Some(0) {
        return Verdict {
            ok: false,
            off: false,
            detail: format!("agent failed: {}", failure(&p.log)),
        };
    }
    let off = p
        .log
        .lines()
        .find_map(|l| {
            l.split_once("context injection unavailable")
                .map(|(_, r)| r)
        })
        .map(|r| {
            r.trim_start_matches(|c: char| c != ':')
                .trim_start_matches(": ")
        });
    if let Some(why) = off {
        let capture = judge_capture(p, expected);
        return Verdict {
            ok: !expected && capture.ok,
            off: true,
            detail: format!("{why}; capture still: {}", capture.detail),
        };
    }
    let clients: Vec<&Value> = p.spans.iter().filter(|s| is_wget(s)).collect();
    let linked = p
        .spans
        .iter()
        .filter(|s| is(s, "SERVER", "nginx"))
        .filter(|s| {
            clients
                .iter()
                .any(|c| c["span_id"] == s["parent_span_id"] && c["trace_id"] == s["trace_id"])
        })
        .count();
    Verdict {
        ok: linked == guest::REQUESTS,
        off: false,
        detail: format!(
            "{linked}/{} SERVER spans children of the injected CLIENT",
            guest::REQUESTS
        ),
    }
}

/// Runs the matrix with the release agent at `agent`.
pub fn run(args: &MatrixArgs, agent: &std::path::Path) -> anyhow::Result<()> {
    let specs: Vec<&kernels::KernelSpec> = if args.kernels.is_empty() {
        kernels::KERNELS.iter().collect()
    } else {
        let mut v = Vec::new();
        for k in &args.kernels {
            match kernels::KERNELS.iter().find(|s| s.name == k.as_str()) {
                Some(s) => v.push(s),
                None => bail!(
                    "unknown kernel {k} (known: {})",
                    kernels::KERNELS
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        v
    };
    let (_, accel) = guest::accelerator();
    eprintln!("matrix: qemu with {accel}");
    let dir = root().join("target/matrix");
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.gz");
    guest::build_initramfs(agent, &initrd)?;

    let mut report =
        String::from("| kernel | used by | capture | context injection |\n|---|---|---|---|\n");
    let mut failed = Vec::new();
    for spec in specs {
        let (pkg, vmlinuz) = kernels::fetch(spec)?;
        eprintln!("matrix: booting {pkg}");
        let started = std::time::Instant::now();
        let console = dir.join(format!("{}.console", spec.name));
        let out = guest::boot(&vmlinuz, &initrd, &console)?;
        let release = out
            .lines()
            .find_map(|l| l.split_once("=== kernel ").map(|(_, r)| r))
            .unwrap_or("?")
            .to_owned();
        let capture = judge_capture(&guest::phase(&out, "capture"), spec.injection);
        let inject = judge_inject(&guest::phase(&out, "inject"), spec.injection);
        let mark = |v: &Verdict| match (v.ok, v.off) {
            (true, true) => "off",
            (true, false) => "ok",
            (false, _) => "**FAILED**",
        };
        eprintln!(
            "matrix: {release} in {:.0?}: capture {} ({}); injection {} ({})",
            started.elapsed(),
            mark(&capture),
            capture.detail,
            mark(&inject),
            inject.detail
        );
        let _ = writeln!(
            report,
            "| {release} | {} | {}: {} | {}: {} |",
            spec.fleets,
            mark(&capture),
            capture.detail,
            mark(&inject),
            inject.detail
        );
        if !capture.ok || !inject.ok {
            failed.push(release);
        }
    }
    let _ = writeln!(report, "\nqemu ran with {accel}.");
    std::fs::write(dir.join("report.md"), &report)?;
    println!("{report}");
    if !failed.is_empty() {
        bail!(
            "kernel matrix failed on {} (consoles in {})",
            failed.join(", "),
            dir.display()
        );
    }
    Ok(())
}
