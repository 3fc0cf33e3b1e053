//! The HTTP client of a ticket system. Every request has a timeout. A
//! connection error, a timeout or a 5xx is retried with exponential backoff
//! and jitter, and a 429 or 503 after the server's Retry-After. Once a
//! system has failed a whole run of attempts, the circuit opens.
//!
//! While the circuit is open, each request gets one attempt only: it is the
//! probe that closes the circuit again. The ticket stage waits
//! `ticket.circuit_open_secs` between probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::sink::SinkError;
use crate::config::TicketConfig;
use crate::http_retry::retry_after;
use crate::transport::now_ms;

/// Most characters of a response body kept in an error.
const BODY_LIMIT: usize = 2000;

/// Retry settings of one ticket system.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &TicketConfig) -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_secs(config.request_timeout_secs),
            max_attempts: config.max_attempts.max(1),
            initial_delay: Duration::from_millis(config.backoff_initial_ms),
            max_delay: Duration::from_millis(config.backoff_max_ms),
            max_retry_after: Duration::from_secs(config.max_retry_after_secs),
        }
    }
}

pub struct HttpClient {
    client: reqwest::Client,
    system: &'static str,
    policy: RetryPolicy,
    /// Settings to check when the system responds with 401, named in the error.
    credential_settings: &'static str,
    circuit_open: AtomicBool,
}

impl HttpClient {
    pub fn new(system: &'static str, policy: RetryPolicy, credential_settings: &'static str) -> Result<HttpClient, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("blameless/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::Unavailable {
                system,
                operation: "build the HTTP client".into(),
                reason: e.to_string(),
            })?;
        Ok(HttpClient {
            client,
            system,
            policy,
            credential_settings,
            circuit_open: AtomicBool::new(false),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Returns whether the last request ran out of attempts.
    pub fn circuit_is_open(&self) -> bool {
        self.circuit_open.load(Ordering::Relaxed)
    }

    /// Sends the request that `build` makes and returns its 2xx response.
    /// `operation` describes the request, for logs and errors, such as
    /// "search for the ticket of incident 0b6f…". Only for requests that
    /// are safe to repeat: searches and updates.
    pub async fn send(&self, operation: &str, build: impl Fn() -> RequestBuilder) -> Result<Response, SinkError> {
        self.send_with(operation, false, build).await
    }

    /// Sends a request that makes a ticket. It is repeated only after
    /// responses that mean it was not carried out (a refused connection, 408,
    /// 429, 503). After a timeout or another 5xx the ticket may exist, so
    /// it returns [`SinkError::Uncertain`]: the stage searches before it
    /// tries again.
    pub async fn send_create(&self, operation: &str, build: impl Fn() -> RequestBuilder) -> Result<Response, SinkError> {
        self.send_with(operation, true, build).await
    }

    async fn send_with(&self, operation: &str, creates: bool, build: impl Fn() -> RequestBuilder) -> Result<Response, SinkError> {
        let attempts = if self.circuit_is_open() { 1 } else { self.policy.max_attempts };
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.policy.initial_delay)
            .with_max_delay(self.policy.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(attempts.saturating_sub(1) as usize)
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (reason, server_delay) = match build().send().await {
                Err(error) if creates && !error.is_connect() => {
                    return Err(SinkError::Uncertain {
                        system: self.system,
                        operation: operation.to_string(),
                        reason: self.describe_send_error(&error),
                    })
                }
                Err(error) => (self.describe_send_error(&error), None),
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        self.circuit_open.store(false, Ordering::Relaxed);
                        return Ok(response);
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        // Other attempts with the same credentials cannot
                        // succeed: the stage waits, as for a system that is
                        // down, until the credentials are fixed.
                        self.circuit_open.store(true, Ordering::Relaxed);
                        let body = body_text(response).await;
                        return Err(SinkError::Unavailable {
                            system: self.system,
                            operation: operation.to_string(),
                            reason: format!(
                                "the credentials were rejected (HTTP 401: {body}); check {}",
                                self.credential_settings
                            ),
                        });
                    }
                    if !retryable(status) {
                        self.circuit_open.store(false, Ordering::Relaxed);
                        return Err(SinkError::Rejected {
                            system: self.system,
                            operation: operation.to_string(),
                            status: status.as_u16(),
                            body: body_text(response).await,
                        });
                    }
                    let server_delay = retry_after(response.headers(), now_ms());
                    let body = body_text(response).await;
                    if creates && !surely_not_carried_out(status) {
                        return Err(SinkError::Uncertain {
                            system: self.system,
                            operation: operation.to_string(),
                            reason: format!("HTTP {}: {body}", status.as_u16()),
                        });
                    }
                    (format!("HTTP {}: {body}", status.as_u16()), server_delay)
                }
            };
            let Some(backoff) = delays.next() else {
                self.circuit_open.store(true, Ordering::Relaxed);
                return Err(SinkError::Unavailable {
                    system: self.system,
                    operation: operation.to_string(),
                    reason: format!("{reason} (after {attempt} attempts)"),
                });
            };
            let delay = server_delay.map_or(backoff, |wait| wait.min(self.policy.max_retry_after));
            tracing::warn!(
                stage = "ticket",
                system = self.system,
                operation,
                attempt,
                reason = %reason,
                delay_ms = delay.as_millis() as u64,
                "Ticket system request failed; retrying after a delay."
            );
            tokio::time::sleep(delay).await;
        }
    }

    fn describe_send_error(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            format!(
                "timed out after {} s (ticket.request_timeout_secs)",
                self.policy.timeout.as_secs_f64()
            )
        } else if error.is_connect() {
            format!("could not connect ({error})")
        } else {
            format!("the request failed ({error})")
        }
    }
}

/// Returns whether sending the same request again may succeed: a timeout, a
/// rate limit, or a server error.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Returns whether a retryable response means the server did not carry the request
/// out, so a create can be sent again without a search.
fn surely_not_carried_out(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::SERVICE_UNAVAILABLE
}

/// Returns the start of a response body, on one line.
pub async fn body_text(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "empty body".into();
    }
    match text.char_indices().nth(BODY_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Reads a JSON response body. A 2xx response that is not JSON means the
/// address points at something other than the ticket system's API.
pub async fn json_body(system: &'static str, operation: &str, response: Response) -> Result<serde_json::Value, SinkError> {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str(&text).map_err(|_| SinkError::Rejected {
        system,
        operation: operation.to_string(),
        status,
        body: format!(
            "the response is not JSON, so the address may not be the {system} API: {}",
            text.chars().take(300).collect::<String>()
        ),
    })
}
