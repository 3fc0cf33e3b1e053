//! The NICE CXone poller. Placeholder: the interface other code calls.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Settings of the NICE CXone poller.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NicePollerConfig {}

impl NicePollerConfig {
    /// Adds a sentence per invalid setting to `problems`.
    pub fn validate(&self, _problems: &mut Vec<String>) {}
}

/// Runs the NICE CXone poller until Ctrl-C or SIGTERM.
pub async fn run(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("the NICE CXone poller is not built yet")
}
