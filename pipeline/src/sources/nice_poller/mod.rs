//! The NICE CXone poller (`blameless source nice`). Every interval (one
//! minute by default) it fetches, for each configured business unit, the
//! skill summary of the last completed interval from the CXone reporting API,
//! wraps it in a capture record and publishes it to `raw-events`. Only once
//! the broker acknowledged the payload does it write the business unit's
//! cursor to the compacted `source-cursors` topic, so a restart resumes
//! after the last published interval. docs/sources-nice.md describes the
//! endpoints, settings and failure handling.

mod client;
mod cursor;
mod poller;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use client::{CxoneClient, FetchError, RetryPolicy};
pub use cursor::{cursor_key, CursorStore, KafkaCursorStore, MemoryCursorStore};
pub use poller::{interval_containing, Clock, ManualClock, Poller, SystemClock, NICE_DELIVERY, NICE_SOURCE};

use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::topology;
use crate::transport::kafka::KafkaSink;
use crate::transport::TopicNames;

/// Settings of the NICE CXone poller. Empty defaults pass `validate`, so
/// other commands run without them; `run` checks the required ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NicePollerConfig {
    /// CXone token endpoint, such as `https://cxone.niceincontact.com/auth/token`.
    /// Default empty; required by `blameless source nice`.
    pub token_url: String,
    /// CXone API base including the version, such as
    /// `https://api-c53.nice-incontact.com/incontactapi/services/v31.0`.
    /// Default empty; required by `blameless source nice`.
    pub api_base_url: String,
    /// Client id of the application registered with CXone.
    pub client_id: String,
    /// Client secret of the registered application.
    pub client_secret: Secret,
    /// A file holding the client secret; replaces `client_secret`.
    pub client_secret_file: Option<PathBuf>,
    /// The business units to poll, each with its own access key.
    pub business_units: Vec<BusinessUnitConfig>,
    /// Length of a polled interval and time between polls, in seconds.
    /// Default 60.
    pub poll_interval_secs: u64,
    /// Maximum number of missed intervals a business unit catches up after
    /// a pause. Older ones are skipped with a warning. Default 60.
    pub max_catch_up_intervals: u32,
    /// Share of a skill's available agents whose loss against the previous
    /// interval is an `agent_availability_drop`, from 0.0 up to but not
    /// including 1.0. Default 0.5.
    pub availability_drop_share: f64,
    /// Timeout of one HTTP request, in seconds. Default 10.
    pub request_timeout_secs: u64,
    /// Retries of a request after a 429, a 5xx or a connection error.
    /// Default 5.
    pub max_retries: u32,
    /// First retry delay, doubled on each retry up to `retry_max_delay_ms`,
    /// plus random jitter of up to the delay itself. Default 500.
    pub retry_initial_delay_ms: u64,
    /// Largest retry delay before jitter, in milliseconds. Default 30000.
    pub retry_max_delay_ms: u64,
    /// Maximum Retry-After of a 429 that is waited, in seconds. A longer
    /// one is cut to this. Default 120.
    pub max_retry_after_secs: u64,
    /// A token is renewed this many seconds before it expires. Default 60.
    pub token_refresh_margin_secs: u64,
    /// Maximum number of pages followed through `_links.next` for one
    /// response.
    /// Default 100.
    pub max_pages: u32,
}

/// One CXone business unit and the access key the poller uses for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusinessUnitConfig {
    /// The business unit id (digits), which also keys its cursor.
    pub id: String,
    /// Access key id of a CXone user of this business unit.
    pub access_key_id: String,
    /// The access key secret.
    pub access_key_secret: Secret,
    /// A file holding the access key secret; replaces `access_key_secret`.
    pub access_key_secret_file: Option<PathBuf>,
}

impl Default for NicePollerConfig {
    fn default() -> NicePollerConfig {
        NicePollerConfig {
            token_url: String::new(),
            api_base_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            business_units: Vec::new(),
            poll_interval_secs: 60,
            max_catch_up_intervals: 60,
            availability_drop_share: 0.5,
            request_timeout_secs: 10,
            max_retries: 5,
            retry_initial_delay_ms: 500,
            retry_max_delay_ms: 30_000,
            max_retry_after_secs: 120,
            token_refresh_margin_secs: 60,
            max_pages: 100,
        }
    }
}

/// Longest accepted `poll_interval_secs`: one hour.
const MAX_POLL_INTERVAL_SECS: u64 = 3600;

impl NicePollerConfig {
    /// Adds a sentence per invalid setting to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.poll_interval_secs == 0 || self.poll_interval_secs > MAX_POLL_INTERVAL_SECS {
            problems.push(format!(
                "sources.nice.poll_interval_secs is {}; set a number of seconds from 1 to {MAX_POLL_INTERVAL_SECS}, such as 60",
                self.poll_interval_secs
            ));
        }
        let share = self.availability_drop_share;
        if !(0.0..1.0).contains(&share) {
            problems.push(format!(
                "sources.nice.availability_drop_share is {share}; set a share from 0.0 up to but not including 1.0, such as 0.5"
            ));
        }
        if self.max_catch_up_intervals == 0 {
            problems.push("sources.nice.max_catch_up_intervals is 0; set 1 or more, such as 60".to_string());
        }
        if self.request_timeout_secs == 0 {
            problems.push("sources.nice.request_timeout_secs is 0; set a timeout in seconds such as 10".to_string());
        }
        if self.retry_initial_delay_ms == 0 || self.retry_initial_delay_ms > self.retry_max_delay_ms {
            problems.push(format!(
                "sources.nice.retry_initial_delay_ms is {} and retry_max_delay_ms is {}; set an initial delay of 1 ms or more that is not above the maximum",
                self.retry_initial_delay_ms, self.retry_max_delay_ms
            ));
        }
        if self.max_pages == 0 {
            problems.push("sources.nice.max_pages is 0; set 1 or more, such as 100".to_string());
        }
        for (name, url) in [("token_url", &self.token_url), ("api_base_url", &self.api_base_url)] {
            if !url.is_empty() && !is_http_url(url) {
                problems.push(format!(
                    "sources.nice.{name} is {url:?}, which is not an http or https URL; set the full URL, such as https://host/path"
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, unit) in self.business_units.iter().enumerate() {
            if unit.id.is_empty() || !unit.id.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!(
                    "sources.nice.business_units[{index}].id is {:?}; set the CXone business unit id, which is made of digits",
                    unit.id
                ));
            } else if !seen.insert(unit.id.as_str()) {
                problems.push(format!(
                    "sources.nice.business_units[{index}].id {} is listed twice; list each business unit once",
                    unit.id
                ));
            }
        }
    }

    /// Checks the settings `blameless source nice` cannot run without.
    fn check_required(&self) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        for (name, value) in [
            ("token_url", &self.token_url),
            ("api_base_url", &self.api_base_url),
            ("client_id", &self.client_id),
        ] {
            if value.is_empty() {
                missing.push(format!("sources.nice.{name}"));
            }
        }
        if self.client_secret.is_empty() {
            missing.push("sources.nice.client_secret (or client_secret_file)".to_string());
        }
        if self.business_units.is_empty() {
            missing.push("sources.nice.business_units (one entry per business unit)".to_string());
        }
        for (index, unit) in self.business_units.iter().enumerate() {
            if unit.access_key_id.is_empty() {
                missing.push(format!("sources.nice.business_units[{index}].access_key_id"));
            }
            if unit.access_key_secret.is_empty() {
                missing.push(format!(
                    "sources.nice.business_units[{index}].access_key_secret (or access_key_secret_file)"
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            anyhow::bail!(
                "the NICE CXone poller is missing settings: {}. Set them in the [sources.nice] section or as BLAMELESS__SOURCES__NICE__ variables",
                missing.join(", ")
            )
        }
    }

    /// Replaces each secret that has a `*_file` setting with the file's
    /// content, without trailing whitespace.
    pub fn resolve_secret_files(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.client_secret_file {
            self.client_secret = read_secret_file(path, "sources.nice.client_secret_file")?;
        }
        for (index, unit) in self.business_units.iter_mut().enumerate() {
            if let Some(path) = &unit.access_key_secret_file {
                let setting = format!("sources.nice.business_units[{index}].access_key_secret_file");
                unit.access_key_secret = read_secret_file(path, &setting)?;
            }
        }
        Ok(())
    }

    /// Returns the retry schedule of HTTP requests.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            initial_delay: Duration::from_millis(self.retry_initial_delay_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms),
            max_retry_after: Duration::from_secs(self.max_retry_after_secs),
        }
    }
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
}

fn read_secret_file(path: &std::path::Path, setting: &str) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Could not read {setting} {}; check the path and its permissions", path.display()))?;
    Ok(Secret::new(text.trim_end()))
}

/// Runs the NICE CXone poller until Ctrl-C or SIGTERM.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut settings = config.sources.nice.clone();
    settings.resolve_secret_files()?;
    settings.check_required()?;

    let codec = crate::app::codec_for(config)?;
    let topics = TopicNames {
        prefix: config.kafka.topic_prefix.clone(),
    };
    let metrics = Metrics::new();
    if !config.metrics.address.is_empty() {
        let listener = crate::metrics::bind(&config.metrics.address).await?;
        let served = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve_on(listener, served).await {
                tracing::error!(error = %error, "Metrics server stopped.");
            }
        });
    }
    let sink = Arc::new(KafkaSink::new(&config.kafka)?);
    let publisher = Arc::new(crate::app::publisher(config, sink.clone(), codec.clone(), topics.clone(), &metrics));
    let cursor_topic = topics.physical(topology::SOURCE_CURSORS);
    let cursors = Arc::new(KafkaCursorStore::new(&config.kafka, sink, codec, cursor_topic));

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut poller = Poller::start(&settings, publisher, cursors, clock).await?;

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::app::wait_for_signal().await;
        let _ = stop.send(true);
    });
    tracing::info!(
        source = NICE_SOURCE,
        business_units = settings.business_units.len(),
        poll_interval_secs = settings.poll_interval_secs,
        "NICE CXone poller started."
    );
    poller.run(shutdown).await?;
    tracing::info!(source = NICE_SOURCE, "NICE CXone poller stopped.");
    Ok(())
}

#[cfg(test)]
mod tests;
