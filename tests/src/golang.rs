//! Go services for the tests, built here from `tests/go/<name>/main.go`
//! (stdlib only) with the toolchains `cargo xtask setup` unpacks, offline.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{h2::tools_dir, wait_port, Proc};

/// The oldest and the newest Go release supported (as in xtask's setup).
pub const OLDEST: &str = "1.21.13";
pub const NEWEST: &str = "1.27.3";

/// `go` of toolchain `version`; panics when setup has not installed it.
pub fn go_bin(version: &str) -> PathBuf {
    let go = tools_dir().join("go").join(version).join("go/bin/go");
    assert!(
        go.exists(),
        "{} missing: run `cargo xtask setup` (Go toolchains)",
        go.display()
    );
    go
}

fn source(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("go")
        .join(name)
        .join("main.go")
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    match (m(a), m(b)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

/// Builds `tests/go/<name>` with Go `version` (once; again when the source
/// changes) and returns the binary. `strip` also builds it with `-s -w`
/// (no symbol table, no DWARF), as distributions ship Go programs.
pub fn build(name: &str, version: &str, strip: bool) -> PathBuf {
    if strip {
        build_with(name, version, "stripped", "-s -w")
    } else {
        build_with(name, version, "", "")
    }
}

/// Debian's Go sources (`golang-google-grpc-dev` and its dependencies),
/// for programs that use more than the standard library.
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// [`build`] of a program that imports grpc-go: in GOPATH mode against
/// [`DEBIAN_GOPATH`] (so its build info names no module versions).
pub fn build_grpc(name: &str, version: &str) -> PathBuf {
    assert!(
        Path::new(DEBIAN_GOPATH)
            .join("src/google.golang.org/grpc")
            .exists(),
        "grpc-go sources missing: apt-get install golang-google-grpc-dev"
    );
    build_with(name, version, "gopath", "")
}

/// A stripped build that states Go version `stamp` in its build info (a
/// release the agent does not know, for the "not visible" path).
pub fn build_stamped(name: &str, version: &str, stamp: &str) -> PathBuf {
    build_with(
        name,
        version,
        &format!("as-{stamp}"),
        &format!("-s -w -X runtime.buildVersion={stamp}"),
    )
}

/// [`build`] with linker flags `ldflags`, into a file named with `tag`.
fn build_with(name: &str, version: &str, tag: &str, ldflags: &str) -> PathBuf {
    let src = source(name);
    let suffix = if tag.is_empty() {
        String::new()
    } else {
        format!("-{tag}")
    };
    let out = tools_dir()
        .join("go-build")
        .join(format!("{name}-{version}{suffix}"));
    if out.exists() && !newer(&src, &out) {
        return out;
    }
    std::fs::create_dir_all(out.parent().expect("parent")).expect("go-build dir");
    let mut cmd = Command::new(go_bin(version));
    cmd.arg("build").arg("-o").arg(&out);
    if !ldflags.is_empty() {
        cmd.args(["-ldflags", ldflags]);
    }
    if tag == "gopath" {
        cmd.env("GO111MODULE", "off").env("GOPATH", DEBIAN_GOPATH);
    }
    let st = cmd
        .arg(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        // Static, and no C toolchain needed.
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", tools_dir().join("go-cache"))
        .stdin(Stdio::null())
        .status()
        .expect("go build");
    assert!(st.success(), "go build of {name} with Go {version} failed");
    out
}

/// `go version -m BINARY` of toolchain `version`: Go's own reading of the
/// build info, to compare ours with.
pub fn go_version_m(version: &str, binary: &Path) -> String {
    let out = Command::new(go_bin(version))
        .args(["version", "-m"])
        .arg(binary)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go version -m");
    assert!(out.status.success(), "go version -m {}", binary.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fan-out service (`tests/go/fanout`) on 127.0.0.1:`port`, calling
/// `down` (a base URL); HTTPS when `tls` gives a certificate and key.
pub fn fanout(bin: &Path, port: u16, down: &str, tls: Option<&(PathBuf, PathBuf)>) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.arg("-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-down")
        .arg(down);
    if let Some((cert, key)) = tls {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let p = Proc::spawn(
        "go fanout",
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit()),
    );
    wait_port(port);
    p
}

/// The gRPC service (`tests/go/grpcfan`): net/http on 127.0.0.1:`http`,
/// grpc-go on 127.0.0.1:`grpc`, calling the gRPC server at `target`;
/// gRPC over TLS when `tls` gives a certificate and key.
pub fn grpcfan(
    bin: &Path,
    http: u16,
    grpc: u16,
    target: u16,
    tls: Option<&(PathBuf, PathBuf)>,
) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.arg("-http")
        .arg(format!("127.0.0.1:{http}"))
        .arg("-grpc")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("-target")
        .arg(format!("127.0.0.1:{target}"));
    if let Some((cert, key)) = tls {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let p = Proc::spawn(
        "go grpcfan",
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit()),
    );
    wait_port(http);
    wait_port(grpc);
    p
}
