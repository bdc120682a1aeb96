//! Placeholder replaced by the data plane.
pub fn run(_file: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
