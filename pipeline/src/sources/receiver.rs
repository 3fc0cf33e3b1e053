//! The HTTP receiver. Placeholder: the interface other code calls.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Settings of the HTTP receiver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {}

impl ReceiverConfig {
    /// Adds a sentence per invalid setting to `problems`.
    pub fn validate(&self, _problems: &mut Vec<String>) {}
}

/// Runs the HTTP receiver until Ctrl-C or SIGTERM.
pub async fn run(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("the HTTP receiver is not built yet")
}
