//! The Genesys Cloud Notification API client (`blameless source genesys`),
//! for organizations without the Amazon EventBridge integration.
//!
//! It fetches an OAuth token with the client credentials grant, creates a
//! notification channel, subscribes it to the configured topics, reads the
//! channel's WebSocket and publishes every notification, exactly as
//! received, to `raw-events` inside a capture record
//! (`capture.delivery = "notification_api"`). Heartbeats and the
//! `v2.system.socket_closing` warning steer the connection and are not
//! published. Before a channel expires, or when its heartbeats stop or the
//! service announces a socket closing, a new channel is created, subscribed
//! and connected before the old socket is closed, so the two overlap and no
//! notification is lost. The overlap can deliver a notification twice,
//! which is fine because the pipeline dedupes by event id.

mod api;
mod auth;
mod publish_queue;
mod session;
mod socket;
mod topics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::app;
use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::transport::kafka::KafkaSink;
use crate::transport::TopicNames;

/// The delivery path written into every capture record of this client.
pub const DELIVERY: &str = "notification_api";

/// Maximum number of topics one channel may subscribe to, a limit of the
/// Genesys Cloud notification service.
pub const MAX_TOPICS_PER_CHANNEL: usize = 1000;

/// Conversation detail events subscribed per followed conversation by
/// default. `customer.end` is left out because the queue conversation
/// notifications already count each call, as `call_completed` or
/// `call_failed`, and the two could count one call twice.
pub const DEFAULT_DETAIL_EVENTS: [&str; 7] = [
    "customer.start",
    "user.start",
    "user.end",
    "acw",
    "acd.end",
    "flow.end",
    "flow.outcome",
];

/// Settings of the Genesys Notification API client, `[sources.genesys]`.
/// Durations are in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenesysClientConfig {
    /// API base URL of the organization's region, such as
    /// `https://api.mypurecloud.com`. Default empty: `run` requires it.
    pub api_url: String,
    /// Login base URL of the same region, such as
    /// `https://login.mypurecloud.com`. Default empty: `run` requires it.
    pub login_url: String,
    /// OAuth client id of a client credentials grant.
    pub client_id: String,
    /// OAuth client secret. Set it through
    /// `BLAMELESS__SOURCES__GENESYS__CLIENT_SECRET` or `client_secret_file`.
    pub client_secret: Secret,
    /// A file holding the client secret (trailing whitespace is ignored). It
    /// replaces `client_secret` when set.
    pub client_secret_file: Option<PathBuf>,
    /// Queues whose conversations are subscribed, as
    /// `v2.routing.queues.{id}.conversations`.
    pub queue_ids: Vec<String>,
    /// Further topics subscribed as given, such as `v2.users.{id}.conversations`.
    pub extra_topics: Vec<String>,
    /// Subscribes the detail event topics of every conversation that a
    /// conversation notification names. Default true.
    pub follow_conversations: bool,
    /// Detail events subscribed per followed conversation, as
    /// `v2.detail.events.conversation.{id}.{event}`.
    pub detail_events: Vec<String>,
    /// Maximum number of topics per channel. Default and upper limit 1000.
    pub max_topics_per_channel: usize,
    /// A followed conversation is unsubscribed after this long without a
    /// notification. Default 900000 (15 minutes).
    pub conversation_idle_ms: u64,
    /// Wait before the subscription list is replaced after followed
    /// conversations changed, so that one request covers several. Default 500.
    pub subscription_update_delay_ms: u64,
    /// A socket without a heartbeat for this long is replaced. The service
    /// sends one about every 30 seconds. Default 75000.
    pub heartbeat_timeout_ms: u64,
    /// A channel is replaced this long before it expires. Default 3600000
    /// (1 hour).
    pub rotation_margin_ms: u64,
    /// The OAuth token is renewed this long before it expires. Default 300000.
    pub token_refresh_margin_ms: u64,
    /// Timeout of one HTTP request or WebSocket handshake. Default 30000.
    pub request_timeout_ms: u64,
    /// First delay before a failed connection attempt is retried. The delay
    /// doubles per failure, with random jitter. Default 1000.
    pub reconnect_min_delay_ms: u64,
    /// Maximum delay between connection attempts. Default 60000.
    pub reconnect_max_delay_ms: u64,
    /// First delay before a failed publish is retried. Default 200.
    pub publish_retry_min_delay_ms: u64,
    /// Maximum delay between publish attempts. Default 30000.
    pub publish_retry_max_delay_ms: u64,
    /// An error naming the number of held notifications is logged once
    /// publishing has failed for this long, and again at this interval.
    /// Default 60000.
    pub publish_alarm_after_ms: u64,
    /// Maximum number of notifications kept in memory while publishing fails. When full,
    /// the client stops reading its sockets. Default 10000.
    pub max_held_messages: usize,
    /// How long a stop waits for held notifications to be published.
    /// Default 30000.
    pub shutdown_grace_ms: u64,
}

impl Default for GenesysClientConfig {
    fn default() -> GenesysClientConfig {
        GenesysClientConfig {
            api_url: String::new(),
            login_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            queue_ids: Vec::new(),
            extra_topics: Vec::new(),
            follow_conversations: true,
            detail_events: DEFAULT_DETAIL_EVENTS.iter().map(|event| event.to_string()).collect(),
            max_topics_per_channel: MAX_TOPICS_PER_CHANNEL,
            conversation_idle_ms: 900_000,
            subscription_update_delay_ms: 500,
            heartbeat_timeout_ms: 75_000,
            rotation_margin_ms: 3_600_000,
            token_refresh_margin_ms: 300_000,
            request_timeout_ms: 30_000,
            reconnect_min_delay_ms: 1_000,
            reconnect_max_delay_ms: 60_000,
            publish_retry_min_delay_ms: 200,
            publish_retry_max_delay_ms: 30_000,
            publish_alarm_after_ms: 60_000,
            max_held_messages: 10_000,
            shutdown_grace_ms: 30_000,
        }
    }
}

impl GenesysClientConfig {
    /// Adds a sentence per invalid setting to `problems`. Empty URLs, client
    /// id and secret are valid here, because this runs for every command;
    /// [`run`] requires them.
    pub fn validate(&self, problems: &mut Vec<String>) {
        for (name, value, example) in [
            ("api_url", &self.api_url, "https://api.mypurecloud.com"),
            ("login_url", &self.login_url, "https://login.mypurecloud.com"),
        ] {
            if !value.is_empty() {
                if let Err(reason) = check_base_url(value) {
                    problems.push(format!(
                        "sources.genesys.{name} is {value:?}, which {reason}; set the base URL of your region such as {example}"
                    ));
                }
            }
        }
        for id in &self.queue_ids {
            if !topics::is_topic_id(id) {
                problems.push(format!(
                    "sources.genesys.queue_ids contains {id:?}, which is not a queue id; use the queue's id (letters, digits and dashes, such as a UUID)"
                ));
            }
        }
        for topic in &self.extra_topics {
            if !topics::is_topic_name(topic) {
                problems.push(format!(
                    "sources.genesys.extra_topics contains {topic:?}, which is not a notification topic; write it as v2.<entity>.<id>.<event> with no spaces, such as v2.users.<user id>.conversations"
                ));
            }
        }
        for event in &self.detail_events {
            if !topics::is_detail_event(event) {
                problems.push(format!(
                    "sources.genesys.detail_events contains {event:?}, which is not a detail event name; use lower-case names such as customer.end or flow.outcome"
                ));
            }
        }
        if self.follow_conversations && self.detail_events.is_empty() {
            problems.push(
                "sources.genesys.detail_events is empty while follow_conversations is true; list detail events such as customer.end, or set follow_conversations = false".to_string(),
            );
        }
        if self.max_topics_per_channel == 0 || self.max_topics_per_channel > MAX_TOPICS_PER_CHANNEL {
            problems.push(format!(
                "sources.genesys.max_topics_per_channel is {}; set 1 to {MAX_TOPICS_PER_CHANNEL}, the notification service's limit per channel",
                self.max_topics_per_channel
            ));
        }
        let base_topics = topics::base_topics(self).len();
        if base_topics > self.max_topics_per_channel {
            problems.push(format!(
                "sources.genesys.queue_ids and extra_topics name {base_topics} topics, above max_topics_per_channel ({}); subscribe fewer queues or topics",
                self.max_topics_per_channel
            ));
        }
        for (name, value) in [
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("reconnect_min_delay_ms", self.reconnect_min_delay_ms),
            ("reconnect_max_delay_ms", self.reconnect_max_delay_ms),
            ("publish_retry_min_delay_ms", self.publish_retry_min_delay_ms),
            ("publish_retry_max_delay_ms", self.publish_retry_max_delay_ms),
            ("publish_alarm_after_ms", self.publish_alarm_after_ms),
            ("conversation_idle_ms", self.conversation_idle_ms),
        ] {
            if value == 0 {
                problems.push(format!("sources.genesys.{name} is 0; set a duration in milliseconds above 0"));
            }
        }
        if self.reconnect_min_delay_ms > self.reconnect_max_delay_ms {
            problems.push(format!(
                "sources.genesys.reconnect_min_delay_ms ({}) is above reconnect_max_delay_ms ({}); set the minimum at or below the maximum",
                self.reconnect_min_delay_ms, self.reconnect_max_delay_ms
            ));
        }
        if self.publish_retry_min_delay_ms > self.publish_retry_max_delay_ms {
            problems.push(format!(
                "sources.genesys.publish_retry_min_delay_ms ({}) is above publish_retry_max_delay_ms ({}); set the minimum at or below the maximum",
                self.publish_retry_min_delay_ms, self.publish_retry_max_delay_ms
            ));
        }
        if self.max_held_messages == 0 {
            problems.push("sources.genesys.max_held_messages is 0; set how many notifications may wait in memory, such as 10000".to_string());
        }
    }

    /// Returns a sentence per setting that `blameless source genesys` needs
    /// but that is empty.
    fn missing_settings(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.api_url.is_empty() {
            missing.push(
                "sources.genesys.api_url is empty; set the API base URL of your region such as https://api.mypurecloud.com (or BLAMELESS__SOURCES__GENESYS__API_URL)".to_string(),
            );
        }
        if self.login_url.is_empty() {
            missing.push(
                "sources.genesys.login_url is empty; set the login base URL of your region such as https://login.mypurecloud.com (or BLAMELESS__SOURCES__GENESYS__LOGIN_URL)".to_string(),
            );
        }
        if self.client_id.is_empty() {
            missing.push(
                "sources.genesys.client_id is empty; set the id of an OAuth client with the client credentials grant (or BLAMELESS__SOURCES__GENESYS__CLIENT_ID)".to_string(),
            );
        }
        if self.client_secret.is_empty() && self.client_secret_file.is_none() {
            missing.push(
                "sources.genesys.client_secret is empty; set BLAMELESS__SOURCES__GENESYS__CLIENT_SECRET or point client_secret_file at a file holding the secret".to_string(),
            );
        }
        if topics::base_topics(self).is_empty() {
            missing.push(
                "sources.genesys.queue_ids and extra_topics are both empty, so there is nothing to subscribe; list at least one queue id or topic".to_string(),
            );
        }
        missing
    }

    /// Returns the client secret, read from `client_secret_file` when set.
    fn resolve_client_secret(&self) -> anyhow::Result<Secret> {
        let Some(path) = &self.client_secret_file else {
            return Ok(self.client_secret.clone());
        };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "Could not read sources.genesys.client_secret_file {}; point it at a readable file holding the OAuth client secret",
                path.display()
            )
        })?;
        let secret = text.trim_end();
        if secret.is_empty() {
            anyhow::bail!(
                "sources.genesys.client_secret_file {} is empty; write the OAuth client secret into it",
                path.display()
            );
        }
        Ok(Secret::new(secret))
    }
}

/// Checks that `value` is an http or https URL with a host and nothing
/// after the path, and returns the reason otherwise.
fn check_base_url(value: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(value).map_err(|_| "is not a URL")?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("does not start with https:// or http://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("has a query or fragment");
    }
    Ok(())
}

/// The settings of one client run, checked and resolved.
#[derive(Clone)]
pub(crate) struct Settings {
    pub api_url: String,
    pub login_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub follow_conversations: bool,
    pub heartbeat_timeout: Duration,
    pub rotation_margin: Duration,
    pub token_refresh_margin: Duration,
    pub request_timeout: Duration,
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    pub publish_retry_min_delay: Duration,
    pub publish_retry_max_delay: Duration,
    pub publish_alarm_after: Duration,
    pub subscription_update_delay: Duration,
    pub max_held_messages: usize,
    pub shutdown_grace: Duration,
}

impl Settings {
    fn new(config: &GenesysClientConfig, client_secret: Secret) -> Settings {
        let ms = Duration::from_millis;
        Settings {
            api_url: config.api_url.trim_end_matches('/').to_string(),
            login_url: config.login_url.trim_end_matches('/').to_string(),
            client_id: config.client_id.clone(),
            client_secret,
            follow_conversations: config.follow_conversations,
            heartbeat_timeout: ms(config.heartbeat_timeout_ms),
            rotation_margin: ms(config.rotation_margin_ms),
            token_refresh_margin: ms(config.token_refresh_margin_ms),
            request_timeout: ms(config.request_timeout_ms),
            reconnect_min_delay: ms(config.reconnect_min_delay_ms),
            reconnect_max_delay: ms(config.reconnect_max_delay_ms),
            publish_retry_min_delay: ms(config.publish_retry_min_delay_ms),
            publish_retry_max_delay: ms(config.publish_retry_max_delay_ms),
            publish_alarm_after: ms(config.publish_alarm_after_ms),
            subscription_update_delay: ms(config.subscription_update_delay_ms),
            max_held_messages: config.max_held_messages,
            shutdown_grace: ms(config.shutdown_grace_ms),
        }
    }
}

/// Runs the Genesys Notification API client until Ctrl-C or SIGTERM,
/// publishing to `raw-events` on Kafka.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let settings = &config.sources.genesys;
    let missing = settings.missing_settings();
    if !missing.is_empty() {
        anyhow::bail!("`blameless source genesys` cannot start: {}", missing.join("; "));
    }
    let client_secret = settings.resolve_client_secret()?;

    let codec = app::codec_for(config)?;
    let topics = TopicNames {
        prefix: config.kafka.topic_prefix.clone(),
    };
    let metrics = Metrics::new();
    if !config.metrics.address.is_empty() {
        // Bound before the client starts, so a bad address or a port in use
        // stops it instead of leaving it without /metrics.
        let listener = crate::metrics::bind(&config.metrics.address).await?;
        let served = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve_on(listener, served).await {
                tracing::error!(error = %error, "Metrics server stopped.");
            }
        });
    }
    let sink = Arc::new(KafkaSink::new(&config.kafka)?);
    let publisher = Arc::new(app::publisher(config, sink, codec, topics, &metrics));

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        app::wait_for_signal().await;
        let _ = stop.send(true);
    });
    run_with(settings, client_secret, publisher, shutdown).await
}

/// Runs the client with `publisher` until `shutdown` turns true, then
/// publishes what it still holds, waiting up to `shutdown_grace_ms`.
/// `client_secret` replaces the configured secret. The settings must have
/// passed [`GenesysClientConfig::validate`].
pub async fn run_with(
    config: &GenesysClientConfig,
    client_secret: Secret,
    publisher: Arc<Publisher>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = GenesysClientConfig {
        client_secret: client_secret.clone(),
        client_secret_file: None,
        ..config.clone()
    };
    let mut problems = Vec::new();
    config.validate(&mut problems);
    problems.extend(config.missing_settings());
    if !problems.is_empty() {
        anyhow::bail!("`blameless source genesys` cannot start: {}", problems.join("; "));
    }
    let settings = Settings::new(&config, client_secret);
    let plan = topics::TopicPlan::new(&config);
    session::Supervisor::new(settings, plan, publisher)?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(config: &GenesysClientConfig) -> Vec<String> {
        let mut problems = Vec::new();
        config.validate(&mut problems);
        problems
    }

    #[test]
    fn defaults_are_valid() {
        assert!(problems_of(&GenesysClientConfig::default()).is_empty());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn defaults_name_no_host() {
        let config = GenesysClientConfig::default();
        assert!(config.api_url.is_empty());
        assert!(config.login_url.is_empty());
    }

    #[test]
    fn missing_settings_name_setting_and_example() {
        let missing = GenesysClientConfig::default().missing_settings().join("\n");
        assert!(missing.contains("sources.genesys.api_url is empty"), "{missing}");
        assert!(missing.contains("https://api.mypurecloud.com"), "{missing}");
        assert!(missing.contains("sources.genesys.login_url is empty"), "{missing}");
        assert!(missing.contains("sources.genesys.client_id is empty"), "{missing}");
        assert!(missing.contains("sources.genesys.client_secret is empty"), "{missing}");
        assert!(missing.contains("queue_ids and extra_topics are both empty"), "{missing}");
    }

    #[tokio::test]
    async fn run_rejects_empty_api_url() {
        let mut config = Config::default();
        config.sources.genesys.login_url = "http://127.0.0.1:9".into();
        config.sources.genesys.client_id = "client".into();
        config.sources.genesys.client_secret = Secret::new("secret");
        config.sources.genesys.queue_ids = vec!["queue-1".into()];
        let error = run(&config).await.unwrap_err().to_string();
        assert!(error.contains("sources.genesys.api_url is empty"), "{error}");
        assert!(error.contains("https://api.mypurecloud.com"), "{error}");
        assert!(!error.contains("login_url"), "{error}");
    }

    #[test]
    fn invalid_values_are_named() {
        let config = GenesysClientConfig {
            api_url: "api.mypurecloud.com".into(),
            login_url: "ftp://127.0.0.1".into(),
            queue_ids: vec!["queue one".into()],
            extra_topics: vec!["users presence".into()],
            detail_events: vec!["Customer End".into()],
            heartbeat_timeout_ms: 0,
            reconnect_min_delay_ms: 5,
            reconnect_max_delay_ms: 1,
            max_topics_per_channel: 1001,
            ..GenesysClientConfig::default()
        };
        let problems = problems_of(&config).join("\n");
        for expected in [
            "sources.genesys.api_url is \"api.mypurecloud.com\", which is not a URL",
            "sources.genesys.login_url is \"ftp://127.0.0.1\", which does not start with https:// or http://",
            "sources.genesys.queue_ids contains \"queue one\"",
            "sources.genesys.extra_topics contains \"users presence\"",
            "sources.genesys.detail_events contains \"Customer End\"",
            "sources.genesys.heartbeat_timeout_ms is 0",
            "reconnect_min_delay_ms (5) is above reconnect_max_delay_ms (1)",
            "sources.genesys.max_topics_per_channel is 1001",
        ] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn too_many_base_topics_are_rejected() {
        let config = GenesysClientConfig {
            queue_ids: (0..3).map(|i| format!("queue-{i}")).collect(),
            max_topics_per_channel: 2,
            ..GenesysClientConfig::default()
        };
        let problems = problems_of(&config).join("\n");
        assert!(problems.contains("name 3 topics, above max_topics_per_channel (2)"), "{problems}");
    }

    #[test]
    fn section_loads_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("genesys.secret");
        std::fs::write(&secret_file, "file-secret\n").unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(
            &path,
            format!(
                "[sources.genesys]\napi_url = \"http://127.0.0.1:8080\"\nqueue_ids = [\"q1\"]\nheartbeat_timeout_ms = 500\nclient_secret_file = {:?}\n",
                secret_file.display().to_string()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        let genesys = &config.sources.genesys;
        assert_eq!(genesys.api_url, "http://127.0.0.1:8080");
        assert_eq!(genesys.queue_ids, ["q1"]);
        assert_eq!(genesys.heartbeat_timeout_ms, 500);
        assert_eq!(genesys.resolve_client_secret().unwrap().expose(), "file-secret");

        std::fs::write(&path, "[sources.genesys]\nheartbeat_timeout = 500\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("heartbeat_timeout"), "{error}");
    }

    #[test]
    fn secret_never_prints() {
        let config = GenesysClientConfig {
            client_secret: Secret::new("very-secret-value"),
            ..GenesysClientConfig::default()
        };
        assert!(!format!("{config:?}").contains("very-secret-value"));
    }
}
