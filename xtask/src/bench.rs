//! Placeholder replaced below.
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_a: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
