//! The Genesys Notification API client. Placeholder: the interface other code calls.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Settings of the Genesys Notification API client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenesysClientConfig {}

impl GenesysClientConfig {
    /// Adds a sentence per invalid setting to `problems`.
    pub fn validate(&self, _problems: &mut Vec<String>) {}
}

/// Runs the Genesys Notification API client until Ctrl-C or SIGTERM.
pub async fn run(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("the Genesys Notification API client is not built yet")
}
