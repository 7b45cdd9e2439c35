//! build, run, test and lint.
use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{
    setup::{self, path_with_tools},
    util::{is_root, root, run as sh, which},
};

/// A cargo command in the workspace with bpf-linker on PATH.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root()).env("PATH", path_with_tools());
    c
}

/// Release build of the agent; returns the binary's path.
pub fn build() -> anyhow::Result<PathBuf> {
    setup::toolchain()?;
    sh(cargo().args(["build", "--release", "-p", "tracer-agent"]))?;
    Ok(root().join("target/release/tracer"))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let bin = build()?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let sudo = which("sudo").context("the tracer needs root; run this as root")?;
        let mut c = Command::new(sudo);
        c.arg(&bin);
        c
    };
    cmd.args(args);
    eprintln!("+ {cmd:?}");
    // Replace this process so Ctrl-C and SIGTERM reach the tracer directly.
    Err(cmd.exec()).context("starting the tracer")
}

pub fn lint() -> anyhow::Result<()> {
    setup::toolchain()?;
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Userspace crates: the BPF object is not needed to type-check them
    // (AYA_BUILD_SKIP writes a stub), which keeps clippy fast.
    sh(cargo()
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1"))?;
    // The kernel crate on its own, for its real target: feature
    // unification with userspace crates must not hide its warnings.
    let mut nightly = Command::new("rustup");
    nightly
        .current_dir(root())
        .env("PATH", path_with_tools())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    sh(nightly
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "tracer-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", root().join("target/ebpf-clippy")))?;
    Ok(())
}

pub fn test(filter: Option<&str>) -> anyhow::Result<()> {
    setup::all()?;
    lint()?;
    sh(cargo().args([
        "test",
        "-p",
        "tracer-common",
        "-p",
        "tracer-agent",
        "-p",
        "xtask",
    ]))?;
    let bin = build()?;
    // The slow, non-cargo-test parts run before the integration tests, so
    // the suite closes on cargo test's own summary. Skipped for a
    // --filter run.
    if filter.is_none() {
        // A short run of every fuzz target: the long runs are `cargo
        // xtask fuzz --runs N`.
        crate::fuzz::run(&crate::fuzz::FuzzArgs::smoke())?;
    }
    if !is_root() {
        println!(
            "SKIP: the kernel matrix and the integration tests load BPF programs and need root \
             (run as root to include them)"
        );
        return Ok(());
    }
    if filter.is_none() {
        // Every BPF program on another kernel than the host's: the whole
        // matrix is `cargo xtask matrix`.
        crate::matrix::run(&crate::matrix::MatrixArgs::suite_slice(), &bin)?;
    }
    let mut c = cargo();
    c.args(["test", "--release", "-p", "tracer-tests", "--"])
        .arg("--test-threads=1");
    if let Some(f) = filter {
        c.arg(f);
    }
    c.env("TRACER_BIN", &bin);
    // The image test imports this into a dockerd of its own.
    let tar = crate::image::default_tar();
    crate::image::tarball(&bin, &tar)?;
    c.env("TRACER_IMAGE_TAR", &tar);
    let before = peer_processes();
    let res = sh(&mut c);
    // A test must leave no process behind (an orphaned server holds its
    // port and its memory, and makes later runs lie).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stray: Vec<String> = peer_processes()
        .into_iter()
        .filter(|(pid, _)| !before.iter().any(|(p, _)| p == pid))
        .map(|(pid, comm)| format!("{comm}[{pid}]"))
        .collect();
    res?;
    anyhow::ensure!(
        stray.is_empty(),
        "the integration tests left processes behind: {}",
        stray.join(", ")
    );
    Ok(())
}

/// Runs the ignored fixture recorder of the integration tests.
pub fn record_fixtures() -> anyhow::Result<()> {
    setup::all()?;
    let bin = build()?;
    anyhow::ensure!(
        is_root(),
        "recording needs root (it loads the BPF programs)"
    );
    sh(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "tracer-tests",
            "--test",
            "fixtures",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TRACER_BIN", &bin))
}

/// Processes of the programs the tests and the bench start: (pid, comm).
fn peer_processes() -> Vec<(u32, String)> {
    const PEERS: &[&str] = &[
        "nginx",
        "python3",
        "node",
        "busybox",
        "httpd",
        "wrk",
        "curl",
        "tracer",
        "hey",
        "h2load",
        "openssl",
        "nghttp",
        "etcd",
        "dockerd",
        "containerd",
        "kubectl",
    ];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim().to_owned();
            PEERS
                .iter()
                .any(|p| comm.starts_with(p))
                .then_some((pid, comm))
        })
        .collect()
}
