//! Builds the kernel programs (`tracer-ebpf`) with aya-build and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`.
//!
//! `AYA_BUILD_SKIP=1` skips the BPF build (no nightly or bpf-linker needed),
//! for `cargo check`/`clippy` of userspace code: an empty stub object is
//! written instead, and an agent built that way refuses to start.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        fs::write(out_dir.join("tracer"), []).context("writing stub BPF object")?;
        return Ok(());
    }
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("workspace root"))?
        .join("tracer-ebpf");
    // The kernel programs also compile the shared wire types.
    let common_dir = ebpf_dir.with_file_name("tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
