//! The CXone HTTP client of one business unit: the access-key token, the
//! skill summary request, paging through `_links.next`, and retries.
//!
//! Tokens come from the OAuth password grant that CXone uses for access
//! keys: `grant_type=password`, the access key id as `username` and its
//! secret as `password`, with the registered application's client id and
//! secret as HTTP Basic credentials. A token is renewed
//! `token_refresh_margin_secs` before it expires, with the refresh token
//! when CXone gave one, and once more when a request gets a 401.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::http_retry::retry_after;
use reqwest::header::ACCEPT;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use url::Url;

use super::poller::{iso_millis, Clock};
use crate::config::Secret;
use crate::scrub::scrub_text;

/// Retry schedule of a request: exponential backoff with jitter after a 5xx
/// or a connection error, and the server's Retry-After after a 429.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Maximum Retry-After that is waited. A longer one is cut to this.
    pub max_retry_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("CXone token request for business unit {business_unit} failed: {reason}")]
    Token { business_unit: String, reason: String },
    #[error("CXone request to {url} for business unit {business_unit} failed: {reason}")]
    Request {
        business_unit: String,
        url: String,
        reason: String,
    },
}

/// The access key and application credentials of one business unit.
#[derive(Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Secret,
    pub access_key_id: String,
    pub access_key_secret: Secret,
}

struct Token {
    access: Secret,
    refresh: Option<Secret>,
    expires_at_ms: i64,
}

/// Token lifetime assumed when the token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME_SECS: i64 = 300;

/// Characters of an error response body kept in an error message.
const ERROR_BODY_CHARS: usize = 300;

pub struct CxoneClient {
    http: reqwest::Client,
    business_unit: String,
    token_url: Url,
    api_base: Url,
    credentials: Credentials,
    retry: RetryPolicy,
    refresh_margin_ms: i64,
    max_pages: u32,
    clock: Arc<dyn Clock>,
    token: Option<Token>,
}

/// The outcome of a request after its retries.
enum Reply {
    Json(Value),
    NoContent,
}

impl CxoneClient {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        business_unit: &str,
        token_url: &str,
        api_base_url: &str,
        credentials: Credentials,
        request_timeout: Duration,
        retry: RetryPolicy,
        refresh_margin: Duration,
        max_pages: u32,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<CxoneClient> {
        let parse = |name: &str, text: &str| {
            Url::parse(text).map_err(|e| anyhow::anyhow!("sources.nice.{name} {text:?} is not a URL ({e}); set the full URL, such as https://host/path"))
        };
        let token_url = parse("token_url", token_url)?;
        // A trailing slash makes `join` append to the path instead of
        // replacing its last segment.
        let api_base = parse("api_base_url", &format!("{}/", api_base_url.trim_end_matches('/')))?;
        let http = reqwest::Client::builder().timeout(request_timeout).build()?;
        Ok(CxoneClient {
            http,
            business_unit: business_unit.to_string(),
            token_url,
            api_base,
            credentials,
            retry,
            refresh_margin_ms: refresh_margin.as_millis() as i64,
            max_pages,
            clock,
            token: None,
        })
    }

    /// Fetches the skill summary of the interval from `start_ms` to `end_ms`
    /// (`GET /skills/summary?startDate=&endDate=`), with every page joined
    /// into one `skillSummaries` array. A 204 gives an empty array.
    pub async fn skill_summary(&mut self, start_ms: i64, end_ms: i64) -> Result<Value, FetchError> {
        let mut url = self.api_base.join("skills/summary").expect("a relative path joins a base URL");
        url.query_pairs_mut()
            .append_pair("startDate", &iso_millis(start_ms))
            .append_pair("endDate", &iso_millis(end_ms));
        self.get_pages(url, "skillSummaries").await
    }

    /// Follows `_links.next` from `first` and joins the `items_key` arrays of
    /// every page. The other fields come from the first page, and `_links`
    /// is left out.
    async fn get_pages(&mut self, first: Url, items_key: &str) -> Result<Value, FetchError> {
        let mut joined: Option<serde_json::Map<String, Value>> = None;
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > self.max_pages {
                return Err(self.request_error(
                    &url,
                    format!(
                        "the response has more than {} pages (sources.nice.max_pages); raise the limit if the data is that large",
                        self.max_pages
                    ),
                ));
            }
            let mut page = match self.get_json(&url).await? {
                Reply::NoContent => serde_json::Map::new(),
                Reply::Json(Value::Object(page)) => page,
                Reply::Json(other) => {
                    return Err(self.request_error(&url, format!("the response is a JSON {}, expected an object", json_kind(&other))))
                }
            };
            next = self.next_link(&url, &page)?;
            page.remove("_links");
            let items = match page.remove(items_key) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(self.request_error(&url, format!("{items_key} is a JSON {}, expected an array", json_kind(&other))))
                }
            };
            let target = joined.get_or_insert(page);
            let array = target.entry(items_key).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(all) = array {
                all.extend(items);
            }
        }
        Ok(Value::Object(joined.unwrap_or_default()))
    }

    /// Reads `_links.next` of a page. A link must point at the API base's
    /// host, because the request carries the access token.
    fn next_link(&self, current: &Url, page: &serde_json::Map<String, Value>) -> Result<Option<Url>, FetchError> {
        let Some(text) = page.get("_links").and_then(|links| links.get("next")).and_then(Value::as_str) else {
            return Ok(None);
        };
        if text.is_empty() {
            return Ok(None);
        }
        let next = current
            .join(text)
            .map_err(|e| self.request_error(current, format!("_links.next {text:?} is not a URL ({e})")))?;
        if next.origin() != self.api_base.origin() {
            return Err(self.request_error(
                current,
                format!(
                    "_links.next points at {}, not at the API base {}; the poller sends its token only to the API base",
                    next.origin().ascii_serialization(),
                    self.api_base.origin().ascii_serialization()
                ),
            ));
        }
        if &next == current {
            return Err(self.request_error(current, "_links.next points at the same page again".to_string()));
        }
        Ok(Some(next))
    }

    /// Sends a GET with the access token. After a 401 it fetches a new token
    /// and tries once more.
    async fn get_json(&mut self, url: &Url) -> Result<Reply, FetchError> {
        let mut renewed = false;
        loop {
            let token = self.access_token().await?;
            let response = self
                .send_with_retries(url, || self.http.get(url.clone()).bearer_auth(token.expose()).header(ACCEPT, "application/json"))
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !renewed {
                tracing::info!(
                    source = "nice",
                    business_unit = %self.business_unit,
                    path = url.path(),
                    "CXone rejected the access token (401); fetching a new one and retrying once."
                );
                self.token = None;
                renewed = true;
                continue;
            }
            if status == StatusCode::NO_CONTENT {
                return Ok(Reply::NoContent);
            }
            if !status.is_success() {
                let body = error_body(response).await;
                let hint = if status == StatusCode::UNAUTHORIZED {
                    "; a new token was rejected too, so check that the access key belongs to this business unit"
                } else {
                    ""
                };
                return Err(self.request_error(url, format!("HTTP {status}: {body}{hint}")));
            }
            return response
                .json::<Value>()
                .await
                .map(Reply::Json)
                .map_err(|e| self.request_error(url, format!("the response is not valid JSON ({e})")));
        }
    }

    /// Returns a token valid for at least the refresh margin, renewing it
    /// with the refresh token or, failing that, the access key.
    async fn access_token(&mut self) -> Result<Secret, FetchError> {
        let now = self.clock.now_ms();
        if let Some(token) = &self.token {
            if now < token.expires_at_ms - self.refresh_margin_ms {
                return Ok(token.access.clone());
            }
        }
        if let Some(refresh) = self.token.take().and_then(|token| token.refresh) {
            let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.expose())];
            match self.request_token(&form).await {
                Ok(token) => return Ok(self.keep(token)),
                Err(error) => tracing::warn!(
                    source = "nice",
                    business_unit = %self.business_unit,
                    error = %error,
                    "CXone token refresh failed; fetching a new token with the access key."
                ),
            }
        }
        let credentials = self.credentials.clone();
        let form = [
            ("grant_type", "password"),
            ("username", credentials.access_key_id.as_str()),
            ("password", credentials.access_key_secret.expose()),
        ];
        let token = self.request_token(&form).await?;
        Ok(self.keep(token))
    }

    fn keep(&mut self, token: Token) -> Secret {
        let access = token.access.clone();
        self.token = Some(token);
        access
    }

    async fn request_token(&self, form: &[(&str, &str)]) -> Result<Token, FetchError> {
        let token_error = |reason: String| FetchError::Token {
            business_unit: self.business_unit.clone(),
            reason,
        };
        let response = self
            .send_with_retries(&self.token_url, || {
                self.http
                    .post(self.token_url.clone())
                    .basic_auth(&self.credentials.client_id, Some(self.credentials.client_secret.expose()))
                    .header(ACCEPT, "application/json")
                    .form(form)
            })
            .await
            .map_err(|error| match error {
                FetchError::Request { reason, .. } | FetchError::Token { reason, .. } => token_error(reason),
            })?;

        let status = response.status();
        if !status.is_success() {
            let body = error_body(response).await;
            return Err(token_error(format!(
                "HTTP {status}: {body}; check the client id and secret and the business unit's access key"
            )));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| token_error(format!("the token response is not valid JSON ({e})")))?;

        let access = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| token_error("the token response has no access_token".to_string()))?;
        // NOTE: without expires_in the lifetime is a guess; a short one only
        // renews the token more often.
        let lifetime_secs = body.get("expires_in").and_then(Value::as_i64).unwrap_or(DEFAULT_TOKEN_LIFETIME_SECS);
        let refresh = body
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .map(Secret::new);

        tracing::info!(
            source = "nice",
            business_unit = %self.business_unit,
            expires_in_secs = lifetime_secs,
            "CXone access token fetched."
        );
        Ok(Token {
            access: Secret::new(access),
            refresh,
            expires_at_ms: self.clock.now_ms() + lifetime_secs * 1000,
        })
    }

    /// Sends the request built by `build`, retrying connection errors,
    /// timeouts and 5xx responses with backoff, and 429 responses after
    /// their Retry-After. Returns any other response, and the last one when
    /// the retries run out on a 429 or 5xx.
    async fn send_with_retries(
        &self,
        url: &Url,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, FetchError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.initial_delay)
            .with_max_delay(self.retry.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.retry.max_retries as usize)
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (reason, retry_after, response) = match build().send().await {
                Err(error) => (describe_send_error(&error), None, None),
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = retry_after(response.headers(), self.clock.now_ms());
                        (format!("HTTP {status}"), wait, Some(response))
                    } else if status.is_server_error() {
                        (format!("HTTP {status}"), None, Some(response))
                    } else {
                        return Ok(response);
                    }
                }
            };
            let Some(backoff_delay) = backoff.next() else {
                return match response {
                    Some(response) => Ok(response),
                    None => Err(self.request_error(
                        url,
                        format!("{reason}, and {} retries failed too", self.retry.max_retries),
                    )),
                };
            };
            let delay = match retry_after {
                Some(wait) => wait.min(self.retry.max_retry_after),
                None => backoff_delay,
            };
            tracing::warn!(
                source = "nice",
                business_unit = %self.business_unit,
                path = url.path(),
                reason = %reason,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "CXone request failed; retrying after a delay."
            );
            self.clock.sleep(delay).await;
        }
    }

    fn request_error(&self, url: &Url, reason: String) -> FetchError {
        FetchError::Request {
            business_unit: self.business_unit.clone(),
            url: url.to_string(),
            reason,
        }
    }
}

fn describe_send_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "the request timed out (sources.nice.request_timeout_secs)".to_string()
    } else if error.is_connect() {
        format!("could not connect ({error})")
    } else {
        format!("the request failed ({error})")
    }
}

/// Returns the start of an error response body, scrubbed of personal data.
async fn error_body(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let start: String = text.chars().take(ERROR_BODY_CHARS).collect();
    if start.is_empty() {
        "empty body".to_string()
    } else {
        scrub_text(&start)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
