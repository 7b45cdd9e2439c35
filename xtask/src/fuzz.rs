//! `cargo xtask fuzz`: coverage-guided fuzzing of the agent's parsers and
//! pipeline with cargo-fuzz (libFuzzer), one target after another.
//!
//! The targets live in `fuzz/` (its own workspace: it needs nightly and
//! sanitizer flags). Each starts from its committed seeds in
//! `fuzz/corpus/<target>/seed-*` and adds what it finds next to them
//! (ignored by git). A crash or failed assertion fails the command, with
//! the input that triggered it saved under `fuzz/artifacts/<target>/`.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::util::{root, run as sh};

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 7] = [
    "decode",
    "pipeline",
    "http1",
    "http2",
    "propagation",
    "proc_parsers",
    "golang",
];
/// Longest input libFuzzer generates: records and streams longer than
/// this add run time, not coverage.
const MAX_LEN: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Executions per target (libFuzzer's `-runs`).
    #[arg(long, default_value_t = 100_000)]
    runs: u64,
    /// Targets to run (repeatable): decode, pipeline, http1, http2,
    /// propagation, proc_parsers, golang. Default: all.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// `address` (ASan, the default) or `none`. The targets that reach
    /// no `unsafe` code (http1, http2) lose nothing to `none`: panics,
    /// overflow checks and debug assertions still fire, at ~4x the
    /// executions per second, which is what makes 10^7 runs practical.
    #[arg(long, default_value = "address", value_parser = ["address", "none"])]
    sanitizer: String,
}

impl FuzzArgs {
    /// The smoke the test suite runs: every target, briefly.
    pub fn smoke() -> Self {
        Self {
            runs: 20_000,
            targets: Vec::new(),
            sanitizer: "address".to_owned(),
        }
    }
}

/// How one target's run went.
struct Outcome {
    target: String,
    /// Executions from libFuzzer's closing `Done N runs in S second(s)`.
    runs: Option<u64>,
    wall: Duration,
    /// The crashing input libFuzzer saved, if it found one.
    artifact: Option<String>,
    ok: bool,
}

/// The nightly toolchain's cargo, as `cargo +nightly`: the variables a
/// `cargo xtask` run inherits would pin the stable toolchain.
fn nightly_cargo(sanitizer: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .current_dir(root().join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        // Instrumented builds live apart from the workspace's (a target
        // dir inherited from the caller would be rebuilt with the
        // sanitizer flags, and back).
        .env(
            "CARGO_TARGET_DIR",
            root().join(if sanitizer == "none" {
                "fuzz/target-nosan"
            } else {
                "fuzz/target"
            }),
        )
        // tracer-agent's build.rs: no BPF object needed to fuzz userspace.
        .env("AYA_BUILD_SKIP", "1");
    c
}

/// Installs cargo-fuzz into the default cargo bin directory if missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        sh(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// The executions in libFuzzer's closing line, `Done 1000 runs in 3 second(s)`.
fn done_runs(line: &str) -> Option<u64> {
    line.trim()
        .strip_prefix("Done ")?
        .split_once(" runs in ")?
        .0
        .parse()
        .ok()
}

/// The saved input in libFuzzer's `Test unit written to PATH` line.
fn artifact_path(line: &str) -> Option<String> {
    let (_, path) = line.split_once("Test unit written to ")?;
    Some(path.trim().to_owned())
}

fn run_target(target: &str, runs: u64, sanitizer: &str) -> anyhow::Result<Outcome> {
    let mut cmd = nightly_cargo(sanitizer);
    cmd.args(["fuzz", "run", "-s", sanitizer, target, "--"])
        .arg(format!("-runs={runs}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .stderr(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let stderr = child.stderr.take().context("libFuzzer's stderr")?;
    let (mut done, mut artifact) = (None, None);
    // libFuzzer reports on stderr: pass it through, keep what we need.
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        eprint!("{line}");
        done = done_runs(&line).or(done);
        artifact = artifact_path(&line).or(artifact);
    }
    let status = child.wait()?;
    Ok(Outcome {
        target: target.to_owned(),
        runs: done,
        wall: start.elapsed(),
        ok: status.success() && artifact.is_none(),
        artifact,
    })
}

pub fn run(a: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<String> = if a.targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        a.targets.clone()
    };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("unknown fuzz target {t:?} (known: {})", TARGETS.join(", "));
    }
    ensure_cargo_fuzz()?;
    // Build every target first so that the times below are fuzzing only.
    sh(nightly_cargo(&a.sanitizer).args(["fuzz", "build", "-s", &a.sanitizer]))?;
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_target(t, a.runs, &a.sanitizer)?);
    }
    println!(
        "fuzz summary (-runs={} -max_len={MAX_LEN}, sanitizer {}):",
        a.runs, a.sanitizer
    );
    for o in &outcomes {
        let runs = o.runs.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let rate = o
            .runs
            .map(|n| n as f64 / o.wall.as_secs_f64().max(1e-3))
            .map_or_else(String::new, |r| format!(", {r:.0} exec/s"));
        let verdict = match (&o.artifact, o.ok) {
            (Some(p), _) => format!("CRASH, input saved at {p}"),
            (None, true) => "ok".to_owned(),
            (None, false) => "FAILED".to_owned(),
        };
        println!(
            "  {:<13} {runs:>11} runs in {:>8.1} s{rate}: {verdict}",
            o.target,
            o.wall.as_secs_f64()
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_lines() {
        assert_eq!(
            done_runs("Done 10000000 runs in 321 second(s)\n"),
            Some(10_000_000)
        );
        assert_eq!(done_runs("#1048576 pulse  cov: 10 ft: 20"), None);
        assert_eq!(
            artifact_path("Test unit written to ./artifacts/http1/crash-ab12\n").as_deref(),
            Some("./artifacts/http1/crash-ab12")
        );
        assert_eq!(artifact_path("INFO: seed corpus: files: 3"), None);
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let fuzz = root().join("fuzz");
        for t in TARGETS {
            assert!(fuzz.join(format!("fuzz_targets/{t}.rs")).is_file(), "{t}");
            let seeds = std::fs::read_dir(fuzz.join("corpus").join(t))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
                        .count()
                })
                .unwrap_or(0);
            assert!(seeds > 0, "no seeds for {t}");
        }
    }
}
