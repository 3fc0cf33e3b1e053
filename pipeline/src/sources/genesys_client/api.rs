//! The notification REST calls: channel creation and the replacement of a
//! channel's subscription list. A request that receives HTTP 401 is sent
//! once more with a renewed token, and one that receives HTTP 429 is sent
//! again after the delay of its `Retry-After` header.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::http_retry::retry_after;
use serde::{Deserialize, Serialize};

use super::auth::{Token, TokenSource};

/// Times a request that receives HTTP 429 is retried before it fails.
pub(super) const MAX_RATE_LIMITED_RETRIES: u32 = 5;

/// Channels live 24 hours according to the Genesys Cloud notification
/// service documentation. This lifetime applies when a response has no
/// usable `expires`.
const DEFAULT_CHANNEL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A notification channel, as `POST /api/v2/notifications/channels`
/// returns it.
#[derive(Debug, Deserialize)]
pub(super) struct ChannelResponse {
    pub id: String,
    #[serde(rename = "connectUri")]
    pub connect_uri: String,
    #[serde(default)]
    pub expires: Option<String>,
}

/// A created channel.
pub(super) struct Channel {
    pub id: String,
    pub connect_uri: String,
    /// When the service expires the channel.
    pub expires_at: Instant,
}

#[derive(Serialize)]
struct ChannelTopic<'a> {
    id: &'a str,
}

pub(super) struct NotificationsApi {
    http: reqwest::Client,
    api_url: String,
    tokens: Arc<TokenSource>,
    fallback_delay: Duration,
}

impl NotificationsApi {
    pub(super) fn new(http: reqwest::Client, api_url: &str, tokens: Arc<TokenSource>, fallback_delay: Duration) -> NotificationsApi {
        NotificationsApi {
            http,
            api_url: api_url.to_string(),
            tokens,
            fallback_delay,
        }
    }

    /// When the current token must be renewed, for channels tied to it.
    pub(super) async fn token_expiry(&self) -> anyhow::Result<Instant> {
        Ok(self.tokens.current().await?.expires_at)
    }

    /// Creates a notification channel.
    pub(super) async fn create_channel(&self) -> anyhow::Result<Channel> {
        let url = format!("{}/api/v2/notifications/channels", self.api_url);
        let response = self
            .send("create a notification channel", &url, |token| {
                self.http.post(&url).bearer_auth(token.value.expose())
            })
            .await?;
        let channel: ChannelResponse = response
            .json()
            .await
            .with_context(|| format!("the channel returned by {url} is not JSON with id and connectUri"))?;
        let expires_at = match channel.expires.as_deref().map(chrono::DateTime::parse_from_rfc3339) {
            Some(Ok(expires)) => {
                let remaining = expires.with_timezone(&chrono::Utc) - chrono::Utc::now();
                Instant::now() + remaining.to_std().unwrap_or_default()
            }
            Some(Err(error)) => {
                tracing::warn!(channel_id = %channel.id, expires = ?channel.expires, error = %error, "Channel expiry is not an ISO-8601 time; assuming the documented 24 hours.");
                Instant::now() + DEFAULT_CHANNEL_LIFETIME
            }
            None => Instant::now() + DEFAULT_CHANNEL_LIFETIME,
        };
        Ok(Channel {
            id: channel.id,
            connect_uri: channel.connect_uri,
            expires_at,
        })
    }

    /// Replaces the subscription list of `channel_id` with `topics`.
    pub(super) async fn replace_subscriptions(&self, channel_id: &str, topics: &[String]) -> anyhow::Result<()> {
        let mut url = url::Url::parse(&self.api_url).with_context(|| format!("sources.genesys.api_url {:?} is not a URL", self.api_url))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("sources.genesys.api_url {:?} cannot be a base URL", self.api_url))?
            .pop_if_empty()
            .extend(["api", "v2", "notifications", "channels", channel_id, "subscriptions"]);
        let body: Vec<ChannelTopic> = topics.iter().map(|topic| ChannelTopic { id: topic }).collect();
        self.send("replace the channel's subscriptions", url.as_str(), |token| {
            self.http.put(url.clone()).bearer_auth(token.value.expose()).json(&body)
        })
        .await?;
        Ok(())
    }

    /// Sends the request that `build` makes with a token, renewing the token
    /// once on HTTP 401 and waiting out HTTP 429.
    async fn send(
        &self,
        operation: &str,
        url: &str,
        build: impl Fn(&Token) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut token = self.tokens.current().await?;
        let mut renewed = false;
        let mut rate_limited = 0;
        loop {
            let response = build(&token)
                .send()
                .await
                .with_context(|| format!("request to {operation} ({url}) failed"))?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                tracing::warn!(url, "Request rejected with HTTP 401; renewing the OAuth token and retrying once.");
                token = self.tokens.renew(&token).await?;
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && rate_limited < MAX_RATE_LIMITED_RETRIES {
                rate_limited += 1;
                let delay = retry_after(response.headers(), crate::transport::now_ms()).unwrap_or(self.fallback_delay * rate_limited);
                tracing::warn!(url, delay_ms = delay.as_millis() as u64, attempt = rate_limited, "Request rate limited (HTTP 429); retrying after the delay in Retry-After.");
                tokio::time::sleep(delay).await;
                continue;
            }
            if status.is_success() {
                return Ok(response);
            }
            let reason = describe_failure(response).await;
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                anyhow::bail!(
                    "could not {operation} ({url}): {reason}. Give the OAuth client a role with the notification permissions and the permissions each subscribed topic requires"
                );
            }
            anyhow::bail!("could not {operation} ({url}): {reason}");
        }
    }
}

/// Returns the status and the start of the body of a failed response.
pub(super) async fn describe_failure(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    }
}
