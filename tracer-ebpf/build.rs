//! Building this crate links with `bpf-linker`, an undeclared binary
//! dependency: rebuild when the linker on PATH changes (e.g. after `cargo
//! xtask setup` rebuilt it for a new nightly).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // Host-side checks (clippy of the workspace) don't link; only warn.
        Err(err) => println!("cargo:warning=bpf-linker not found on PATH: {err}"),
    }
}
