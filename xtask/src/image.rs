//! `cargo xtask image`: a container image of the agent with no registry:
//! the release binary and the shared libraries it links (as `ldd` lists
//! them) on an empty root, imported into docker as an image whose
//! entrypoint is the agent. The Dockerfile's builder stage runs the same
//! assembly (`--rootfs`), so both images hold the same files.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::util::{copy_under, root, run, shared_libraries};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Image name and tag.
    #[arg(long, default_value = "tracer:dev")]
    pub tag: String,
    /// Only assemble the image's root file system into DIR (no docker).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// The docker daemon to import into (docker's -H). Default: docker's own.
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
}

/// Where the default rootfs tarball goes.
pub fn default_tar() -> PathBuf {
    root().join("target/image/tracer-rootfs.tar")
}

/// The image's files: /bin/tracer, its libraries, the CA bundle (OTLP over
/// TLS), and the empty directories the runtime mounts over.
pub fn assemble(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("bin"))?;
    fs::copy(bin, dir.join("bin/tracer")).context("copying the agent")?;
    for lib in shared_libraries(bin)? {
        copy_under(dir, &lib)?;
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.exists() {
        copy_under(dir, ca)?;
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "var/run/secrets"] {
        fs::create_dir_all(dir.join(d))?;
    }
    Ok(())
}

/// The rootfs as a tarball, for `docker import`.
pub fn tarball(bin: &Path, tar: &Path) -> anyhow::Result<()> {
    if let Some(parent) = tar.parent() {
        fs::create_dir_all(parent)?;
    }
    let dir = tar.with_extension("d");
    assemble(bin, &dir)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&dir)
        .arg("-cf")
        .arg(tar)
        .arg("."))?;
    Ok(())
}

/// The `docker import` changes that make the tarball a runnable image.
pub const IMPORT_CHANGES: &[&str] = &[
    r#"ENTRYPOINT ["/bin/tracer"]"#,
    "ENV PATH=/bin",
    r#"LABEL org.opencontainers.image.title="tracer""#,
];

/// `cargo xtask image` for the agent binary `bin`.
pub fn run_image(args: &ImageArgs, bin: &Path) -> anyhow::Result<()> {
    if let Some(dir) = &args.rootfs {
        assemble(bin, dir)?;
        println!("image root file system in {}", dir.display());
        return Ok(());
    }
    let tar = default_tar();
    tarball(bin, &tar)?;
    let mut docker = Command::new("docker");
    if let Some(h) = &args.docker_host {
        docker.args(["-H", h]);
    }
    docker.arg("import");
    for c in IMPORT_CHANGES {
        docker.args(["--change", c]);
    }
    docker.arg(&tar).arg(&args.tag);
    run(&mut docker).context(
        "docker import (is a docker daemon running? --docker-host picks one; \
         the tarball is kept for importing elsewhere)",
    )?;
    println!(
        "image {} ({}); on a containerd node: docker save {} | ctr -n k8s.io images import -",
        args.tag,
        tar.display(),
        args.tag
    );
    Ok(())
}
