//! `rolemint check`. (Being written.)

use crate::config::Config;

pub async fn run(_config: &Config) -> anyhow::Result<()> {
    Ok(())
}
