//! OAuth client credentials grant against the region's login host:
//! `POST {login_url}/oauth/token` with HTTP basic authentication of the
//! client id and secret and `grant_type=client_credentials`. The response
//! carries `access_token` and `expires_in` (seconds). The token is cached
//! and renewed `token_refresh_margin_ms` before it expires.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;

use super::api::{describe_failure, MAX_RATE_LIMITED_RETRIES};
use crate::http_retry::retry_after;
use crate::config::Secret;

/// An access token and when it expires.
#[derive(Clone)]
pub(super) struct Token {
    pub value: Secret,
    pub expires_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// Fetches and caches the access token.
pub(super) struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    refresh_margin: Duration,
    fallback_delay: Duration,
    cached: tokio::sync::Mutex<Option<Token>>,
}

impl TokenSource {
    pub(super) fn new(
        http: reqwest::Client,
        login_url: &str,
        client_id: &str,
        client_secret: Secret,
        refresh_margin: Duration,
        fallback_delay: Duration,
    ) -> TokenSource {
        TokenSource {
            http,
            token_url: format!("{login_url}/oauth/token"),
            client_id: client_id.to_string(),
            client_secret,
            refresh_margin,
            fallback_delay,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Returns the cached token, or a new one when none is cached or the
    /// cached one is within the refresh margin of its expiry.
    pub(super) async fn current(&self) -> anyhow::Result<Token> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.expires_at {
                return Ok(token.clone());
            }
        }
        let token = self.fetch().await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Replaces `rejected`, which the API rejected with HTTP 401, by a new
    /// token. When another request already replaced it, returns that one.
    pub(super) async fn renew(&self, rejected: &Token) -> anyhow::Result<Token> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref() {
            if token.value != rejected.value && Instant::now() < token.expires_at {
                return Ok(token.clone());
            }
        }
        let token = self.fetch().await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self) -> anyhow::Result<Token> {
        let mut rate_limited = 0;
        loop {
            let response = self
                .http
                .post(&self.token_url)
                .basic_auth(&self.client_id, Some(self.client_secret.expose()))
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials")
                .send()
                .await
                .with_context(|| format!("OAuth token request to {} failed", self.token_url))?;
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && rate_limited < MAX_RATE_LIMITED_RETRIES {
                rate_limited += 1;
                let delay = retry_after(response.headers(), crate::transport::now_ms()).unwrap_or(self.fallback_delay);
                tracing::warn!(url = %self.token_url, delay_ms = delay.as_millis() as u64, attempt = rate_limited, "OAuth token request rate limited (HTTP 429); retrying after the delay in Retry-After.");
                tokio::time::sleep(delay).await;
                continue;
            }
            if !status.is_success() {
                let reason = describe_failure(response).await;
                anyhow::bail!(
                    "OAuth token request to {} failed: {reason}. Check sources.genesys.login_url, client_id and the client secret, and that the OAuth client uses the client credentials grant",
                    self.token_url
                );
            }
            let body: TokenResponse = response
                .json()
                .await
                .with_context(|| format!("OAuth token response of {} is not the expected JSON with access_token and expires_in", self.token_url))?;
            let lifetime = Duration::from_secs(body.expires_in);
            // A margin above half the lifetime would renew on every request.
            let margin = self.refresh_margin.min(lifetime / 2);
            tracing::info!(expires_in_secs = body.expires_in, "OAuth token fetched.");
            return Ok(Token {
                value: Secret::new(body.access_token),
                expires_at: Instant::now() + lifetime - margin,
            });
        }
    }
}
