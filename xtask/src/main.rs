//! Project automation: `cargo xtask <command>`.
//!
//! - `setup`: idempotent machine setup (nightly rust-src, bpf-linker built
//!   against the nightly's own libLLVM, test peers from apt, tracefs/bpffs).
//! - `build`: setup + release build of the agent (with its BPF object).
//! - `run`: build + run the tracer (as root), printing spans on stdout.
//! - `test`: the whole suite: lint, unit tests, root integration tests.
//! - `lint`: rustfmt check and clippy (userspace and the kernel crate).
//! - `bench`: tracer off vs on against nginx, same run, ratios reported.
//! - `record-fixtures`: re-record the captures the replay tests pin.
//! - `matrix`: boot the kernels users run under qemu and trace inside.
//! - `fuzz`: coverage-guided fuzzing of the parsers and pipeline (nightly).
mod bench;
mod fuzz;
mod image;
mod matrix;
mod setup;
mod tasks;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent, fast when done).
    Setup,
    /// Build the agent in release mode, including its BPF programs.
    Build,
    /// Build and run the tracer; arguments after `--` go to the tracer.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite (lint, unit tests, root integration tests).
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// rustfmt check and clippy with warnings denied.
    Lint,
    /// Benchmark: nginx under load with the tracer off, then on.
    Bench(bench::BenchArgs),
    /// Re-record the real-program captures in tracer-agent/tests/data
    /// (root): the replay tests pin the spans they produce.
    RecordFixtures,
    /// Boot Debian kernels under qemu and check that every program loads
    /// and traces inside (root).
    #[command(alias = "kernels")]
    Matrix(matrix::MatrixArgs),
    /// Build a container image with no registry: the release binary and
    /// its shared libraries on an empty root, imported into docker.
    Image(image::ImageArgs),
    /// Fuzz the agent's parsers and pipeline with cargo-fuzz (nightly);
    /// a crash fails the command and its input is kept in fuzz/artifacts.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::all(),
        Cmd::Build => tasks::build().map(|_| ()),
        Cmd::Run { args } => tasks::run(&args),
        Cmd::Test { filter } => tasks::test(filter.as_deref()),
        Cmd::Lint => tasks::lint(),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::RecordFixtures => tasks::record_fixtures(),
        Cmd::Matrix(a) => matrix::run(&a, &tasks::build()?),
        Cmd::Fuzz(a) => fuzz::run(&a),
        Cmd::Image(a) => image::run_image(&a, &tasks::build()?),
    }
}
