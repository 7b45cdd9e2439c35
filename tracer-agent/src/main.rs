//! `tracer`: parses the flags, sets up logging and runs the agent.

use anyhow::Context as _;
use clap::Parser as _;
use tracer_agent::{
    agent,
    cli::{Args, CheckArgs},
    integrity,
};

fn init_logging(level: tracing::Level) -> anyhow::Result<()> {
    // aya's loader logs every relocation at debug: keep it at info unless
    // RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy()
        .add_directive("aya=info".parse().context("log directive")?)
        .add_directive("aya_obj=info".parse().context("log directive")?);
    // Colours only on a terminal: logs that go to a file or journald must
    // not carry escape codes.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `tracer check FILE...` reads files; everything else runs the agent.
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == "check") {
        let args = CheckArgs::parse_from(std::iter::once("tracer check".into()).chain(argv));
        std::process::exit(check(&args));
    }
    run_agent()
}

/// Exit status of `tracer check` (see `CheckArgs`).
fn check(args: &CheckArgs) -> i32 {
    let tolerance = u64::try_from(args.tolerance.as_nanos()).unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    match integrity::check(&args.files, tolerance, args.quiet, &mut out) {
        Ok(sum) if sum.all_complete() => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("tracer check: {e}");
            2
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_level)?;
    agent::run(args).await.map_err(anyhow::Error::from)
}
