//! `tracer`: parses the flags, sets up logging and runs the agent.

use anyhow::Context as _;
use clap::Parser as _;
use tracer_agent::{agent, cli::Args};

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_level)?;
    agent::run(args).await.map_err(anyhow::Error::from)
}
