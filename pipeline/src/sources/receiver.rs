//! The HTTP receiver, `blameless source http`: an endpoint for webhooks and
//! forwarded events (Genesys Cloud data actions, Amazon EventBridge API
//! destinations, Datadog and Pingdom webhooks) that publishes each body to
//! `raw-events`.
//!
//! A request is authenticated by an HMAC-SHA-256 signature of its exact body
//! or by a static token. The receiver responds 202 only after the broker
//! acknowledged every record of the request, so a sender that gets a 2xx may
//! drop its copy of the events. Each JSON event is wrapped in a capture record with
//! `capture.delivery` = `http_webhook` and `capture.received_at`, which keeps
//! the event's bytes. docs/sources-http.md is the guide for senders.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app;
use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::stages::ingest::{self, Delivered};
use crate::transport::kafka::KafkaSink;
use crate::transport::TopicNames;

/// Path that receives events.
pub const EVENTS_PATH: &str = "/v1/events";
/// `capture.delivery` of every event the receiver publishes.
pub const DELIVERY: &str = "http_webhook";
/// Default of `sources.http.address`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8088";
/// Default of `sources.http.signature_header`.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Blameless-Signature";
/// Default of `sources.http.token_header`.
pub const DEFAULT_TOKEN_HEADER: &str = "X-Blameless-Token";
/// Default of `sources.http.request_timeout_secs`.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Largest accepted `sources.http.request_timeout_secs`.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Minimum length of a signing secret or token, in characters.
pub const MIN_SECRET_CHARS: usize = 16;
/// Seconds a sender should wait (`Retry-After`) before it repeats a request
/// that got a 503 response.
pub const RETRY_AFTER_SECS: u64 = 30;

/// Maximum number of characters of request text that an error message
/// repeats.
const ECHO_CHARS: usize = 40;
/// The UTF-8 byte order mark, which JSON parsers reject.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// Settings of the HTTP receiver, `[sources.http]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Socket address the receiver listens on. Default `127.0.0.1:8088`.
    pub address: String,
    /// Header with the HMAC-SHA-256 signature of the request body, as
    /// `sha256=<hex>` or bare hex. Default `X-Blameless-Signature`.
    pub signature_header: String,
    /// Signing secrets. A signature made with any of them is accepted, so a
    /// secret can be rotated while senders switch over.
    pub secrets: Vec<Secret>,
    /// Files that each contain one signing secret (trailing whitespace is
    /// ignored), added to `secrets`.
    pub secret_files: Vec<PathBuf>,
    /// Header with a static token, for senders that cannot sign. Default
    /// `X-Blameless-Token`.
    pub token_header: String,
    /// Static tokens. A request whose token header equals any of them is
    /// accepted.
    pub tokens: Vec<Secret>,
    /// Files that each contain one token (trailing whitespace is ignored),
    /// added to `tokens`.
    pub token_files: Vec<PathBuf>,
    /// Query parameter that may carry a token instead of the header, for
    /// senders that can only be given a URL. Default empty, which turns it
    /// off.
    pub token_query_parameter: String,
    /// Accepts requests without a signature or token. Only for a receiver
    /// behind a proxy that authenticates the senders. Default false.
    pub allow_unauthenticated: bool,
    /// Largest request body, in bytes. Default: `ingest.max_payload_bytes`.
    pub max_body_bytes: Option<usize>,
    /// Time limit of a request from its headers to the response, in seconds.
    /// Default 30.
    pub request_timeout_secs: u64,
}

impl Default for ReceiverConfig {
    fn default() -> ReceiverConfig {
        ReceiverConfig {
            address: DEFAULT_ADDRESS.into(),
            signature_header: DEFAULT_SIGNATURE_HEADER.into(),
            secrets: Vec::new(),
            secret_files: Vec::new(),
            token_header: DEFAULT_TOKEN_HEADER.into(),
            tokens: Vec::new(),
            token_files: Vec::new(),
            token_query_parameter: String::new(),
            allow_unauthenticated: false,
            max_body_bytes: None,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
        }
    }
}

impl ReceiverConfig {
    /// Adds a sentence per invalid setting to `problems`. Whether any
    /// credential is configured is checked by [`ReceiverConfig::credentials`]
    /// when the receiver starts, because every other command loads this
    /// section with its defaults too.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.address.trim().is_empty() {
            problems.push(format!("sources.http.address is empty; set a host:port such as {DEFAULT_ADDRESS}"));
        }
        for (setting, name) in [("signature_header", &self.signature_header), ("token_header", &self.token_header)] {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(format!(
                    "sources.http.{setting} {name:?} is not a valid HTTP header name; use letters, digits and hyphens such as {DEFAULT_SIGNATURE_HEADER}"
                ));
            }
        }
        if self.signature_header.eq_ignore_ascii_case(&self.token_header) {
            problems.push(format!(
                "sources.http.signature_header and sources.http.token_header are both {:?}; give them different names",
                self.signature_header
            ));
        }
        for (setting, values) in [("secrets", &self.secrets), ("tokens", &self.tokens)] {
            for (index, value) in values.iter().enumerate() {
                if let Err(reason) = check_secret_length(value) {
                    problems.push(format!("sources.http.{setting}[{index}] {reason}"));
                }
            }
        }
        for (setting, files) in [("secret_files", &self.secret_files), ("token_files", &self.token_files)] {
            for (index, file) in files.iter().enumerate() {
                if file.as_os_str().is_empty() {
                    problems.push(format!("sources.http.{setting}[{index}] is an empty path; name a file that contains the value"));
                }
            }
        }
        if self.allow_unauthenticated && self.has_credentials() {
            problems.push(
                "sources.http.allow_unauthenticated is true while secrets or tokens are set; remove allow_unauthenticated to require them, or remove the secrets and tokens"
                    .to_string(),
            );
        }
        if !self.token_query_parameter.is_empty() && self.tokens.is_empty() && self.token_files.is_empty() {
            problems.push(format!(
                "sources.http.token_query_parameter is {:?} but no token is set; set sources.http.tokens or token_files, or leave token_query_parameter empty",
                self.token_query_parameter
            ));
        }
        if self.max_body_bytes == Some(0) {
            problems.push("sources.http.max_body_bytes is 0; set a size in bytes, or leave it out to use ingest.max_payload_bytes".to_string());
        }
        if self.request_timeout_secs == 0 || self.request_timeout_secs > MAX_REQUEST_TIMEOUT_SECS {
            problems.push(format!(
                "sources.http.request_timeout_secs is {}; set a number of seconds from 1 to {MAX_REQUEST_TIMEOUT_SECS}, such as {DEFAULT_REQUEST_TIMEOUT_SECS}",
                self.request_timeout_secs
            ));
        }
    }

    fn has_credentials(&self) -> bool {
        !(self.secrets.is_empty() && self.secret_files.is_empty() && self.tokens.is_empty() && self.token_files.is_empty())
    }

    /// Reads the secret and token files and returns every credential. Fails
    /// when a file cannot be read, a value is too short, or nothing is
    /// configured while `allow_unauthenticated` is false.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let secrets = collect_secrets("secret_files", &self.secrets, &self.secret_files)?;
        let tokens = collect_secrets("token_files", &self.tokens, &self.token_files)?;
        if secrets.is_empty() && tokens.is_empty() && !self.allow_unauthenticated {
            anyhow::bail!(
                "the HTTP receiver has no credentials: set sources.http.secrets (or secret_files) to accept signed requests, \
                 or sources.http.tokens (or token_files) to accept a static token header. \
                 To accept every request, for example behind a proxy that authenticates, set sources.http.allow_unauthenticated = true"
            );
        }
        let signing_keys = secrets
            .iter()
            .map(|secret| Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts keys of any length"))
            .collect();
        let token_digests = tokens.iter().map(|token| Sha256::digest(token.expose().as_bytes()).to_vec()).collect();
        Ok(Credentials {
            signing_keys,
            token_digests,
        })
    }
}

fn check_secret_length(value: &Secret) -> Result<(), String> {
    let length = value.expose().chars().count();
    if length == 0 {
        Err("is empty; use a random value of at least 16 characters".to_string())
    } else if length < MIN_SECRET_CHARS {
        Err(format!(
            "is {length} characters long, shorter than {MIN_SECRET_CHARS}; use a random value of at least {MIN_SECRET_CHARS} characters"
        ))
    } else {
        Ok(())
    }
}

/// Returns `inline` followed by the value of each file of `files`.
fn collect_secrets(setting: &str, inline: &[Secret], files: &[PathBuf]) -> anyhow::Result<Vec<Secret>> {
    let mut all = inline.to_vec();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("could not read {} of sources.http.{setting}", file.display()))?;
        let value = Secret::new(text.trim_end());
        check_secret_length(&value)
            .map_err(|reason| anyhow::anyhow!("the value in {} (sources.http.{setting}) {reason}", file.display()))?;
        all.push(value);
    }
    Ok(all)
}

/// The signing keys and token digests a request is checked against. It has
/// no `Debug`, so it cannot end up in a log line.
pub struct Credentials {
    signing_keys: Vec<Hmac<Sha256>>,
    /// SHA-256 of each token. Comparing digests takes the same time whatever
    /// the length of the presented token.
    token_digests: Vec<Vec<u8>>,
}

impl Credentials {
    /// Returns whether `tag` is the HMAC-SHA-256 of `body` under any signing
    /// key. Every key is tried, and each comparison takes constant time.
    fn signature_matches(&self, body: &[u8], tag: &[u8]) -> bool {
        let mut matched = false;
        for key in &self.signing_keys {
            let mut mac = key.clone();
            mac.update(body);
            matched |= mac.verify_slice(tag).is_ok();
        }
        matched
    }

    /// Returns whether `token` equals any configured token, in constant time.
    fn token_matches(&self, token: &[u8]) -> bool {
        let presented = Sha256::digest(token);
        let mut matched = subtle::Choice::from(0);
        for digest in &self.token_digests {
            matched |= digest.as_slice().ct_eq(presented.as_slice());
        }
        matched.into()
    }
}

/// Outcome label of a request in `blameless_http_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Unauthenticated,
    TooLarge,
    /// Publishing to `raw-events` failed.
    Failed,
    TimedOut,
    /// Wrong method, path or content type, or a body without events.
    Invalid,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::TooLarge => "too_large",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Invalid => "invalid",
        }
    }
}

/// An error response: the status, a machine-readable code and a message for
/// the sender's operator. No message contains a secret or token.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    outcome: Outcome,
    code: &'static str,
    message: String,
}

impl Rejection {
    fn new(status: StatusCode, outcome: Outcome, code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            outcome,
            code,
            message: message.into(),
        }
    }

    fn unauthenticated(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection::new(StatusCode::UNAUTHORIZED, Outcome::Unauthenticated, code, message)
    }

    fn invalid(status: StatusCode, code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection::new(status, Outcome::Invalid, code, message)
    }

    fn too_large(message: impl Into<String>) -> Rejection {
        Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, Outcome::TooLarge, "payload_too_large", message)
    }

    /// Builds a 503 rejection, which carries `Retry-After` so the sender
    /// repeats the request.
    fn retry_later(outcome: Outcome, code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection::new(StatusCode::SERVICE_UNAVAILABLE, outcome, code, message)
    }

    fn into_response(self, request_id: &str) -> Response {
        let body = serde_json::json!({
            "error": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// Id of one request, in its response body and log lines, so a sender's
/// record of a response can be matched with the receiver's log.
#[derive(Debug, Clone)]
struct RequestId(String);

/// Result of the credential check made before the body is read.
enum Verification {
    /// `allow_unauthenticated` is set.
    Open,
    /// A configured token matched.
    Token,
    /// The decoded HMAC-SHA-256 tag, checked against the body later.
    Signature(Vec<u8>),
}

/// Layout of a request body, which decides how it is split into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    /// One JSON value, or a JSON array of events.
    Json,
    /// JSON Lines (`application/x-ndjson`): one event per line.
    JsonLines,
}

/// One event of a request body.
struct Event {
    bytes: Vec<u8>,
    /// False for bytes that are not valid JSON. They are published as they
    /// are, without a capture record, and the normalize stage rejects them.
    is_json: bool,
}

/// A header name as HTTP matches it, and as the configuration spells it,
/// for messages.
struct ConfiguredHeader {
    name: HeaderName,
    spelling: String,
}

impl std::fmt::Display for ConfiguredHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spelling)
    }
}

/// The receiver's state, shared by every request.
pub struct Receiver {
    publisher: Publisher,
    credentials: Credentials,
    allow_unauthenticated: bool,
    signature_header: ConfiguredHeader,
    token_header: ConfiguredHeader,
    token_query_parameter: Option<String>,
    body_limit: usize,
    body_limit_is_default: bool,
    request_timeout: Duration,
    metrics: Metrics,
}

impl Receiver {
    /// Builds the receiver. `publisher` writes to `raw-events`; the body
    /// limit defaults to its payload limit.
    pub fn new(
        settings: &ReceiverConfig,
        credentials: Credentials,
        publisher: Publisher,
        metrics: &Metrics,
    ) -> anyhow::Result<Receiver> {
        let header = |setting: &str, spelling: &str| {
            let name = HeaderName::from_bytes(spelling.as_bytes())
                .with_context(|| format!("sources.http.{setting} {spelling:?} is not a valid HTTP header name"))?;
            anyhow::Ok(ConfiguredHeader {
                name,
                spelling: spelling.to_string(),
            })
        };
        Ok(Receiver {
            body_limit: settings.max_body_bytes.unwrap_or(publisher.max_payload_bytes()),
            body_limit_is_default: settings.max_body_bytes.is_none(),
            publisher,
            credentials,
            allow_unauthenticated: settings.allow_unauthenticated,
            signature_header: header("signature_header", &settings.signature_header)?,
            token_header: header("token_header", &settings.token_header)?,
            token_query_parameter: Some(settings.token_query_parameter.clone()).filter(|name| !name.is_empty()),
            request_timeout: Duration::from_secs(settings.request_timeout_secs),
            metrics: metrics.clone(),
        })
    }

    /// Returns the routes: `POST /v1/events` and `GET /health`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(EVENTS_PATH, any(receive_events))
            .route("/health", get(|| async { "ok\n" }))
            .fallback(unknown_path)
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(middleware::from_fn_with_state(Arc::clone(&self), limit_time))
            .with_state(self)
    }

    fn count(&self, outcome: Outcome) {
        self.metrics.http_requests(outcome.label()).inc();
    }

    /// Checks, reads, splits and publishes one request, and returns the 202
    /// response once the broker acknowledged every event.
    async fn handle(
        &self,
        request_id: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Response, Rejection> {
        if method != Method::POST {
            return Err(Rejection::invalid(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not accepted on {EVENTS_PATH}; send events with POST"),
            ));
        }
        let verification = self.authenticate(headers, uri)?;
        let format = body_format(headers)?;
        let body = body.map_err(|rejection| self.body_rejection(rejection, headers))?;
        if let Verification::Signature(tag) = &verification {
            if !self.credentials.signature_matches(&body, tag) {
                return Err(Rejection::unauthenticated(
                    "signature_mismatch",
                    format!(
                        "the {} header does not match the HMAC-SHA-256 of the request body under any configured secret; sign the exact bytes sent, with the shared secret",
                        self.signature_header
                    ),
                ));
            }
        }

        let events = split_body(&body, format)?;
        let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let delivered: Vec<Delivered> = events
            .iter()
            .enumerate()
            .map(|(index, event)| Delivered {
                origin: format!("{EVENTS_PATH} request {request_id} event {}", index + 1),
                bytes: if event.is_json {
                    capture_record(&event.bytes, &received_at)
                } else {
                    event.bytes.clone()
                },
            })
            .collect();
        // The publisher's own size check, run first: an event that failed it
        // inside `publish` would go to dead-letter while the sender got a 202.
        for item in &delivered {
            ingest::check_size(item, self.publisher.max_payload_bytes()).map_err(Rejection::too_large)?;
        }

        let published = self.publisher.publish(&delivered).await.map_err(|error| {
            tracing::warn!(request_id, events = delivered.len(), error = %error, "Publishing to raw-events failed; responding 503 so the sender retries.");
            Rejection::retry_later(
                Outcome::Failed,
                "publish_failed",
                format!("the events could not be stored ({error}); nothing was acknowledged, send the request again"),
            )
        })?;
        let not_json = events.iter().filter(|event| !event.is_json).count();
        tracing::debug!(request_id, events = published.accepted, not_json, "Request accepted.");
        let mut body = serde_json::json!({ "accepted": published.accepted, "request_id": request_id });
        if not_json > 0 {
            body["not_json"] = not_json.into();
            body["warning"] = format!(
                "{not_json} event(s) are not valid JSON; they were stored as delivered and the normalize stage will reject them to the dead-letter topic"
            )
            .into();
        }
        Ok((StatusCode::ACCEPTED, Json(body)).into_response())
    }

    /// Checks the credential headers, before the body is read.
    fn authenticate(&self, headers: &HeaderMap, uri: &Uri) -> Result<Verification, Rejection> {
        if self.allow_unauthenticated {
            return Ok(Verification::Open);
        }
        if !self.credentials.signing_keys.is_empty() {
            if let Some(value) = headers.get(&self.signature_header.name) {
                return parse_signature(value, &self.signature_header)
                    .map(Verification::Signature)
                    .map_err(|message| Rejection::unauthenticated("malformed_signature", message));
            }
        }
        if !self.credentials.token_digests.is_empty() {
            let presented = match headers.get(&self.token_header.name) {
                Some(value) => Some(value.as_bytes().to_vec()),
                None => self.query_token(uri),
            };
            if let Some(token) = presented {
                if self.credentials.token_matches(&token) {
                    return Ok(Verification::Token);
                }
                return Err(Rejection::unauthenticated(
                    "token_mismatch",
                    format!("the token in the {} header does not match any configured token", self.token_header),
                ));
            }
        }
        Err(Rejection::unauthenticated("missing_credentials", self.describe_missing_credentials()))
    }

    fn query_token(&self, uri: &Uri) -> Option<Vec<u8>> {
        let name = self.token_query_parameter.as_deref()?;
        url::form_urlencoded::parse(uri.query()?.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_bytes().to_vec())
    }

    fn describe_missing_credentials(&self) -> String {
        let mut accepted = Vec::new();
        if !self.credentials.signing_keys.is_empty() {
            accepted.push(format!("the {} header (sha256=<hex HMAC-SHA-256 of the body>)", self.signature_header));
        }
        if !self.credentials.token_digests.is_empty() {
            accepted.push(format!("the {} header with the shared token", self.token_header));
            if let Some(name) = &self.token_query_parameter {
                accepted.push(format!("the {name} query parameter with the shared token"));
            }
        }
        format!("the request carries no credential; send {}", accepted.join(" or "))
    }

    fn body_rejection(&self, rejection: BytesRejection, headers: &HeaderMap) -> Rejection {
        match rejection {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                let size = headers
                    .get(CONTENT_LENGTH)
                    .and_then(|value| value.to_str().ok())
                    .map(|length| format!(" ({length} bytes)"))
                    .unwrap_or_default();
                let setting = if self.body_limit_is_default {
                    "sources.http.max_body_bytes, which defaults to ingest.max_payload_bytes"
                } else {
                    "sources.http.max_body_bytes"
                };
                Rejection::too_large(format!(
                    "the request body{size} is larger than the limit of {} bytes ({setting}); send fewer events per request or raise the limit",
                    self.body_limit
                ))
            }
            other => Rejection::invalid(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("the request body could not be read: {other}"),
            ),
        }
    }
}

/// Returns the decoded HMAC-SHA-256 tag of a signature header,
/// `sha256=<64 hex digits>` or the bare digits, or a message naming what is
/// wrong with it.
fn parse_signature(value: &HeaderValue, header: &ConfiguredHeader) -> Result<Vec<u8>, String> {
    let text = value
        .to_str()
        .map_err(|_| format!("the {header} header is not ASCII text; send sha256=<64 hex digits>"))?
        .trim();
    let digits = match text.split_once('=') {
        Some((scheme, digits)) if scheme.trim().eq_ignore_ascii_case("sha256") => digits.trim(),
        Some((scheme, _)) => {
            let scheme: String = scheme.chars().take(ECHO_CHARS).collect();
            return Err(format!(
                "the {header} header uses the scheme {scheme:?}; the receiver accepts only sha256=<64 hex digits>, the HMAC-SHA-256 of the body"
            ));
        }
        None => text,
    };
    if digits.len() != 64 {
        return Err(format!(
            "the {header} header has {} characters where an HMAC-SHA-256 signature has 64 hex digits; send sha256=<64 hex digits>",
            digits.len()
        ));
    }
    hex::decode(digits).map_err(|_| format!("the {header} header contains characters that are not hex digits; send sha256=<64 hex digits>"))
}

/// Returns how to split the body, from its `Content-Type`. A request without
/// one is read as JSON, because some webhook senders set none.
fn body_format(headers: &HeaderMap) -> Result<BodyFormat, Rejection> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media_type = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let is_json = media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"));
    if is_json {
        Ok(BodyFormat::Json)
    } else if media_type == "application/x-ndjson" {
        Ok(BodyFormat::JsonLines)
    } else {
        let excerpt: String = text.chars().take(ECHO_CHARS).collect();
        Err(Rejection::invalid(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {excerpt:?} is not accepted; send application/json (one event, or an array of events) or application/x-ndjson (one event per line)"
            ),
        ))
    }
}

/// Splits a body into events: a JSON array into its elements, JSON Lines
/// into lines, any other body into one event. Each JSON event keeps its
/// bytes, without the whitespace around it. A body that is not valid JSON is
/// one event with every byte as delivered.
fn split_body(body: &[u8], format: BodyFormat) -> Result<Vec<Event>, Rejection> {
    let text = body.strip_prefix(BYTE_ORDER_MARK).unwrap_or(body);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::invalid(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body has no event; send one JSON event, a JSON array of events, or JSON Lines",
        ));
    }
    if format == BodyFormat::JsonLines {
        return Ok(ingest::split_lines(text, EVENTS_PATH)
            .into_iter()
            .map(|line| match serde_json::from_slice::<&RawValue>(&line.bytes) {
                Ok(value) => Event {
                    bytes: value.get().as_bytes().to_vec(),
                    is_json: true,
                },
                Err(_) => Event {
                    bytes: line.bytes,
                    is_json: false,
                },
            })
            .collect());
    }
    let Ok(value) = serde_json::from_slice::<&RawValue>(text) else {
        return Ok(vec![Event {
            bytes: body.to_vec(),
            is_json: false,
        }]);
    };
    if !value.get().starts_with('[') {
        return Ok(vec![Event {
            bytes: value.get().as_bytes().to_vec(),
            is_json: true,
        }]);
    }
    let items: Vec<&RawValue> = serde_json::from_str(value.get()).expect("a valid JSON array parses as a list of values");
    if items.is_empty() {
        return Err(Rejection::invalid(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body is an empty JSON array; send at least one event",
        ));
    }
    Ok(items
        .into_iter()
        .map(|item| Event {
            bytes: item.get().as_bytes().to_vec(),
            is_json: true,
        })
        .collect())
}

/// Wraps one JSON event in a capture record. The event's bytes follow
/// `"payload":` unchanged, so the raw event contains them as delivered.
fn capture_record(event: &[u8], received_at: &str) -> Vec<u8> {
    let capture = serde_json::json!({ "delivery": DELIVERY, "received_at": received_at }).to_string();
    let mut record = Vec::with_capacity(event.len() + capture.len() + 24);
    record.extend_from_slice(b"{\"capture\":");
    record.extend_from_slice(capture.as_bytes());
    record.extend_from_slice(b",\"payload\":");
    record.extend_from_slice(event);
    record.push(b'}');
    record
}

async fn receive_events(
    State(receiver): State<Arc<Receiver>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match receiver.handle(&request_id, &method, &uri, &headers, body).await {
        Ok(response) => {
            receiver.count(Outcome::Accepted);
            response
        }
        Err(rejection) => {
            receiver.count(rejection.outcome);
            if rejection.outcome != Outcome::Failed {
                tracing::info!(
                    request_id,
                    status = rejection.status.as_u16(),
                    error = rejection.code,
                    reason = %rejection.message,
                    "Request rejected."
                );
            }
            rejection.into_response(&request_id)
        }
    }
}

async fn unknown_path(State(receiver): State<Arc<Receiver>>, Extension(RequestId(request_id)): Extension<RequestId>, uri: Uri) -> Response {
    receiver.count(Outcome::Invalid);
    let path: String = uri.path().chars().take(ECHO_CHARS).collect();
    Rejection::invalid(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {path:?}; send events to POST {EVENTS_PATH}"),
    )
    .into_response(&request_id)
}

/// Gives each request its id, and responds 503 when the request does not
/// finish within `sources.http.request_timeout_secs`.
async fn limit_time(State(receiver): State<Arc<Receiver>>, mut request: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    request.extensions_mut().insert(RequestId(request_id.clone()));
    match tokio::time::timeout(receiver.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            receiver.count(Outcome::TimedOut);
            let seconds = receiver.request_timeout.as_secs();
            tracing::warn!(request_id, timeout_secs = seconds, "Request timed out; responding 503 so the sender retries.");
            // NOTE: records handed to the producer before the timeout may
            // still reach raw-events, so the retry can store them twice.
            Rejection::retry_later(
                Outcome::TimedOut,
                "timed_out",
                format!(
                    "the request did not finish within {seconds} seconds (sources.http.request_timeout_secs); its events may not be stored, send the request again"
                ),
            )
            .into_response(&request_id)
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish and get their response before it returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Runs the HTTP receiver until Ctrl-C or SIGTERM, publishing to
/// `raw-events` on Kafka and serving metrics on `metrics.address`.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let settings = &config.sources.http;
    let credentials = settings.credentials()?;
    let codec = app::codec_for(config)?;
    let metrics = Metrics::new();

    // Both listeners are bound before anything else starts, so a port in
    // use stops the receiver at once.
    let listener = tokio::net::TcpListener::bind(&settings.address).await.map_err(|error| {
        anyhow::anyhow!(
            "could not listen on sources.http.address {:?}: {error}. Choose a free host:port such as {DEFAULT_ADDRESS}",
            settings.address
        )
    })?;
    if !config.metrics.address.is_empty() {
        let metrics_listener = crate::metrics::bind(&config.metrics.address).await?;
        let served = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve_on(metrics_listener, served).await {
                tracing::error!(error = %error, "Metrics server stopped.");
            }
        });
    }

    let topics = TopicNames {
        prefix: config.kafka.topic_prefix.clone(),
    };
    let sink = Arc::new(KafkaSink::new(&config.kafka)?);
    let publisher = app::publisher(config, sink, codec, topics, &metrics);
    let receiver = Arc::new(Receiver::new(settings, credentials, publisher, &metrics)?);

    if settings.allow_unauthenticated {
        tracing::warn!(
            address = %settings.address,
            "The HTTP receiver accepts requests without a signature or token (sources.http.allow_unauthenticated); anyone who reaches the address can write to raw-events."
        );
    }
    tracing::info!(
        address = %listener.local_addr()?,
        path = EVENTS_PATH,
        signing_secrets = receiver.credentials.signing_keys.len(),
        tokens = receiver.credentials.token_digests.len(),
        body_limit_bytes = receiver.body_limit,
        "HTTP receiver started."
    );

    serve(listener, receiver.router(), app::wait_for_signal())
        .await
        .context("the HTTP receiver stopped with an error")?;
    tracing::info!("HTTP receiver stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use async_trait::async_trait;
    use axum::body::Body;
    use serde_json::Value;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use crate::codec::Codec;
    use crate::model::{RawEvent, Record, RecordKind};
    use crate::topology::{self, Topology};
    use crate::transport::memory::{MemoryLog, MemorySink};
    use crate::transport::{decode_record, OutRecord, RecordSink, TransportError};

    const SECRET: &str = "test-signing-secret-0123456789";
    const NEXT_SECRET: &str = "rotated-signing-secret-9876543210";
    const TOKEN: &str = "test-static-token-0123456789";

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn signing(secrets: &[&str]) -> ReceiverConfig {
        ReceiverConfig {
            secrets: secrets.iter().map(|secret| Secret::new(*secret)).collect(),
            ..ReceiverConfig::default()
        }
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn new_log() -> Arc<MemoryLog> {
        let log = MemoryLog::new();
        for topic in &Topology::load_default().topics {
            log.create_topic(&topic.name, topic.partitions as usize);
        }
        log
    }

    /// A receiver over the in-memory log or another sink.
    struct Harness {
        router: Router,
        log: Arc<MemoryLog>,
        metrics: Metrics,
    }

    fn harness(settings: ReceiverConfig) -> Harness {
        let log = new_log();
        let sink = Arc::new(MemorySink { log: Arc::clone(&log) });
        harness_with(settings, sink, log, &Config::default())
    }

    fn harness_with(settings: ReceiverConfig, sink: Arc<dyn RecordSink>, log: Arc<MemoryLog>, config: &Config) -> Harness {
        let metrics = Metrics::new();
        let codec = Codec::single_object().unwrap();
        let publisher = app::publisher(config, sink, codec, TopicNames::default(), &metrics);
        let credentials = settings.credentials().unwrap();
        let receiver = Arc::new(Receiver::new(&settings, credentials, publisher, &metrics).unwrap());
        Harness {
            router: receiver.router(),
            log,
            metrics,
        }
    }

    fn post(body: &[u8], headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(EVENTS_PATH)
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::from(body.to_vec())).unwrap()
    }

    fn signed(secret: &str, body: &[u8]) -> Request {
        post(body, &[(DEFAULT_SIGNATURE_HEADER, &sign(secret, body))])
    }

    struct ResponseParts {
        status: StatusCode,
        headers: HeaderMap,
        body: Value,
    }

    async fn read_response(response: Response) -> ResponseParts {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        ResponseParts { status, headers, body }
    }

    async fn call(router: &Router, request: Request) -> ResponseParts {
        read_response(router.clone().oneshot(request).await.unwrap()).await
    }

    async fn raw_events(log: &MemoryLog) -> Vec<RawEvent> {
        let codec = Codec::single_object().unwrap();
        let mut events = Vec::new();
        for record in log.records(topology::RAW_EVENTS) {
            match decode_record(&codec, RecordKind::Raw, record.payload.as_deref().unwrap()).await.unwrap() {
                Record::Raw(raw) => events.push(raw),
                other => panic!("raw-events contains an unexpected record: {other:?}"),
            }
        }
        events
    }

    fn requests_counted(metrics: &Metrics, outcome: &str) -> u64 {
        metrics.http_requests(outcome).get()
    }

    #[tokio::test]
    async fn signed_event_is_stored_exactly() {
        let harness = harness(signing(&[SECRET]));
        let body = fixture("genesys/eventbridge-detail-customer-end-voice.json");

        let reply = call(&harness.router, signed(SECRET, &body)).await;

        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["accepted"], 1);
        assert!(reply.body["request_id"].is_string());
        let events = raw_events(&harness.log).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].payload, body.trim_ascii());
        assert_eq!(events[0].delivery, DELIVERY);
        assert_eq!(events[0].source, "genesys");
        assert_eq!(requests_counted(&harness.metrics, "accepted"), 1);
    }

    #[tokio::test]
    async fn fixtures_normalize_after_receipt() {
        let mut paths = vec!["genesys/eventbridge-detail-customer-end-voice.json".to_string()];
        let synthetics = format!("{}/../tests/fixtures/synthetics", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(synthetics).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            paths.push(format!("synthetics/{name}"));
        }
        assert!(paths.len() >= 3, "{paths:?}");

        for path in &paths {
            let harness = harness(signing(&[SECRET]));
            let body = fixture(path);
            let reply = call(&harness.router, signed(SECRET, &body)).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{path}: {}", reply.body);

            let events = raw_events(&harness.log).await;
            assert_eq!(events.len(), 1, "{path}");
            assert_eq!(events[0].payload, body.trim_ascii(), "{path}");
            let normalized = crate::sources::normalize(&events[0]).unwrap_or_else(|reason| panic!("{path}: {reason}"));
            assert!(!normalized.is_empty(), "{path}");
            assert!(normalized.iter().all(|event| event.delivery == DELIVERY), "{path}");
        }
    }

    #[tokio::test]
    async fn received_at_is_recorded() {
        let harness = harness(signing(&[SECRET]));
        let before = chrono::Utc::now().timestamp_millis();
        let reply = call(&harness.router, signed(SECRET, br#"{"check_id":1,"current_state":"DOWN"}"#)).await;
        let after = chrono::Utc::now().timestamp_millis();

        assert_eq!(reply.status, StatusCode::ACCEPTED);
        let received_at = raw_events(&harness.log).await[0].received_at_ms;
        assert!(received_at >= before - 1, "{received_at} is before {before}");
        assert!(received_at <= after, "{received_at} is after {after}");
    }

    #[tokio::test]
    async fn bad_signature_is_unauthorized() {
        let harness = harness(signing(&[SECRET]));
        let body = br#"{"check_id":1,"current_state":"DOWN"}"#;
        let request = post(body, &[(DEFAULT_SIGNATURE_HEADER, &sign("another-secret-0123456789", body))]);

        let reply = call(&harness.router, request).await;

        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body["error"], "signature_mismatch");
        assert!(!reply.body.to_string().contains(SECRET), "{}", reply.body);
        assert!(raw_events(&harness.log).await.is_empty());
        assert_eq!(requests_counted(&harness.metrics, "unauthenticated"), 1);
        assert_eq!(requests_counted(&harness.metrics, "accepted"), 0);
    }

    #[tokio::test]
    async fn signature_of_other_bytes_is_unauthorized() {
        let harness = harness(signing(&[SECRET]));
        let signature = sign(SECRET, br#"{"check_id":1,"current_state":"UP"}"#);
        let request = post(br#"{"check_id":1,"current_state":"DOWN"}"#, &[(DEFAULT_SIGNATURE_HEADER, &signature)]);

        let reply = call(&harness.router, request).await;

        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body["error"], "signature_mismatch");
    }

    #[tokio::test]
    async fn missing_signature_is_unauthorized() {
        let harness = harness(signing(&[SECRET]));

        let reply = call(&harness.router, post(b"{}", &[])).await;

        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body["error"], "missing_credentials");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(DEFAULT_SIGNATURE_HEADER), "{message}");
        assert!(raw_events(&harness.log).await.is_empty());
    }

    #[tokio::test]
    async fn malformed_signatures_are_named() {
        let harness = harness(signing(&[SECRET]));
        let body = b"{}";
        let valid_hex = sign(SECRET, body);
        let cases = [
            ("sha1=0123456789abcdef0123456789abcdef01234567", "scheme \"sha1\""),
            ("sha256=abc", "64 hex digits"),
            ("sha256=zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "not hex digits"),
            (&valid_hex[..40], "64 hex digits"),
        ];
        for (value, expected) in cases {
            let reply = call(&harness.router, post(body, &[(DEFAULT_SIGNATURE_HEADER, value)])).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{value}");
            assert_eq!(reply.body["error"], "malformed_signature", "{value}");
            let message = reply.body["message"].as_str().unwrap();
            assert!(message.contains(expected), "{value}: {message}");
        }
    }

    #[tokio::test]
    async fn bare_and_uppercase_hex_are_accepted() {
        let harness = harness(signing(&[SECRET]));
        let body = br#"{"check_id":1,"current_state":"DOWN"}"#;
        let bare = sign(SECRET, body).trim_start_matches("sha256=").to_string();
        for value in [bare.clone(), bare.to_uppercase(), format!("SHA256={bare}")] {
            let reply = call(&harness.router, post(body, &[(DEFAULT_SIGNATURE_HEADER, &value)])).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{value}: {}", reply.body);
        }
        assert_eq!(raw_events(&harness.log).await.len(), 3);
    }

    #[tokio::test]
    async fn rotated_secrets_are_both_accepted() {
        let harness = harness(signing(&[SECRET, NEXT_SECRET]));
        let body = br#"{"check_id":1,"current_state":"DOWN"}"#;

        for secret in [SECRET, NEXT_SECRET] {
            let reply = call(&harness.router, signed(secret, body)).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        }
        let retired = call(&harness.router, signed("retired-signing-secret-000000", body)).await;

        assert_eq!(retired.status, StatusCode::UNAUTHORIZED);
        assert_eq!(raw_events(&harness.log).await.len(), 2);
    }

    #[tokio::test]
    async fn custom_signature_header_is_used() {
        let settings = ReceiverConfig {
            signature_header: "X-Hub-Signature-256".into(),
            ..signing(&[SECRET])
        };
        let harness = harness(settings);
        let body = b"{\"n\":1}";

        let custom = call(&harness.router, post(body, &[("x-hub-signature-256", &sign(SECRET, body))])).await;
        let default = call(&harness.router, signed(SECRET, body)).await;

        assert_eq!(custom.status, StatusCode::ACCEPTED, "{}", custom.body);
        assert_eq!(default.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn static_token_is_checked() {
        let settings = ReceiverConfig {
            tokens: vec![Secret::new(TOKEN)],
            ..ReceiverConfig::default()
        };
        let harness = harness(settings);
        let body = b"{\"n\":1}";

        let good = call(&harness.router, post(body, &[(DEFAULT_TOKEN_HEADER, TOKEN)])).await;
        let wrong = call(&harness.router, post(body, &[(DEFAULT_TOKEN_HEADER, "test-static-token-0000000000")])).await;
        let short = call(&harness.router, post(body, &[(DEFAULT_TOKEN_HEADER, "x")])).await;
        let missing = call(&harness.router, post(body, &[])).await;

        assert_eq!(good.status, StatusCode::ACCEPTED, "{}", good.body);
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.body["error"], "token_mismatch");
        assert!(!wrong.body.to_string().contains(TOKEN));
        assert_eq!(short.body["error"], "token_mismatch");
        assert_eq!(missing.body["error"], "missing_credentials");
        assert!(missing.body["message"].as_str().unwrap().contains(DEFAULT_TOKEN_HEADER));
        assert_eq!(raw_events(&harness.log).await.len(), 1);
    }

    #[tokio::test]
    async fn query_token_only_when_enabled() {
        let body = b"{\"n\":1}";
        let uri = format!("{EVENTS_PATH}?token={TOKEN}");
        let request = || {
            Request::builder()
                .method(Method::POST)
                .uri(&uri)
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_vec()))
                .unwrap()
        };
        let tokens = vec![Secret::new(TOKEN)];

        let off = harness(ReceiverConfig {
            tokens: tokens.clone(),
            ..ReceiverConfig::default()
        });
        let on = harness(ReceiverConfig {
            tokens,
            token_query_parameter: "token".into(),
            ..ReceiverConfig::default()
        });

        assert_eq!(call(&off.router, request()).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&on.router, request()).await.status, StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn unauthenticated_mode_accepts_any_request() {
        let harness = harness(ReceiverConfig {
            allow_unauthenticated: true,
            ..ReceiverConfig::default()
        });

        let reply = call(&harness.router, post(b"{\"n\":1}", &[])).await;

        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(raw_events(&harness.log).await.len(), 1);
    }

    #[tokio::test]
    async fn oversized_body_is_rejected() {
        let harness = harness(ReceiverConfig {
            max_body_bytes: Some(64),
            ..signing(&[SECRET])
        });
        let body = format!("{{\"padding\":\"{}\"}}", "x".repeat(100));

        let reply = call(&harness.router, signed(SECRET, body.as_bytes())).await;

        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.body["error"], "payload_too_large");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains("64 bytes"), "{message}");
        assert!(message.contains("sources.http.max_body_bytes"), "{message}");
        assert!(raw_events(&harness.log).await.is_empty());
        assert!(harness.log.records(topology::DEAD_LETTER).is_empty());
        assert_eq!(requests_counted(&harness.metrics, "too_large"), 1);
    }

    #[tokio::test]
    async fn event_above_payload_limit_is_rejected() {
        let mut config = Config::default();
        config.ingest.max_payload_bytes = 200;
        let log = new_log();
        let sink = Arc::new(MemorySink { log: Arc::clone(&log) });
        let harness = harness_with(
            ReceiverConfig {
                max_body_bytes: Some(10_000),
                ..signing(&[SECRET])
            },
            sink,
            log,
            &config,
        );
        let body = format!("[{{\"n\":1}},{{\"padding\":\"{}\"}}]", "x".repeat(300));

        let reply = call(&harness.router, signed(SECRET, body.as_bytes())).await;

        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains("ingest.max_payload_bytes"), "{message}");
        assert!(message.contains("event 2"), "{message}");
        assert!(raw_events(&harness.log).await.is_empty());
        assert!(harness.log.records(topology::DEAD_LETTER).is_empty());
    }

    #[tokio::test]
    async fn default_body_limit_is_payload_limit() {
        let mut config = Config::default();
        config.ingest.max_payload_bytes = 100;
        let log = new_log();
        let sink = Arc::new(MemorySink { log: Arc::clone(&log) });
        let harness = harness_with(signing(&[SECRET]), sink, log, &config);
        let body = format!("{{\"padding\":\"{}\"}}", "x".repeat(200));

        let reply = call(&harness.router, signed(SECRET, body.as_bytes())).await;

        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains("limit of 100 bytes"), "{message}");
        assert!(message.contains("defaults to ingest.max_payload_bytes"), "{message}");
    }

    #[tokio::test]
    async fn other_methods_are_not_allowed() {
        let harness = harness(signing(&[SECRET]));
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let request = Request::builder().method(method.clone()).uri(EVENTS_PATH).body(Body::empty()).unwrap();
            let reply = call(&harness.router, request).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(reply.headers[ALLOW], "POST", "{method}");
            assert_eq!(reply.body["error"], "method_not_allowed", "{method}");
        }
    }

    #[tokio::test]
    async fn wrong_content_type_is_unsupported() {
        let harness = harness(signing(&[SECRET]));
        let body = b"check_id=1&current_state=DOWN";
        for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
            let request = Request::builder()
                .method(Method::POST)
                .uri(EVENTS_PATH)
                .header(CONTENT_TYPE, content_type)
                .header(DEFAULT_SIGNATURE_HEADER, sign(SECRET, body))
                .body(Body::from(body.to_vec()))
                .unwrap();
            let reply = call(&harness.router, request).await;
            assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
            assert!(reply.body["message"].as_str().unwrap().contains(content_type), "{}", reply.body);
        }
        assert!(raw_events(&harness.log).await.is_empty());
    }

    #[tokio::test]
    async fn json_content_types_are_accepted() {
        let harness = harness(signing(&[SECRET]));
        let body = b"{\"n\":1}";
        for content_type in [Some("application/json; charset=utf-8"), Some("application/cloudevents+json"), None] {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri(EVENTS_PATH)
                .header(DEFAULT_SIGNATURE_HEADER, sign(SECRET, body));
            if let Some(content_type) = content_type {
                builder = builder.header(CONTENT_TYPE, content_type);
            }
            let reply = call(&harness.router, builder.body(Body::from(body.to_vec())).unwrap()).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{content_type:?}: {}", reply.body);
        }
    }

    #[tokio::test]
    async fn json_array_is_a_batch() {
        let harness = harness(signing(&[SECRET]));
        let body = b"[ {\"check_id\": 1, \"current_state\":\"DOWN\"},\n{\"check_id\":2,\"current_state\":\"UP\"} ]";

        let reply = call(&harness.router, signed(SECRET, body)).await;

        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["accepted"], 2);
        let mut payloads: Vec<Vec<u8>> = raw_events(&harness.log).await.into_iter().map(|raw| raw.payload).collect();
        payloads.sort();
        assert_eq!(
            payloads,
            [
                b"{\"check_id\": 1, \"current_state\":\"DOWN\"}".to_vec(),
                b"{\"check_id\":2,\"current_state\":\"UP\"}".to_vec(),
            ]
        );
    }

    #[tokio::test]
    async fn json_lines_are_a_batch() {
        let harness = harness(signing(&[SECRET]));
        let body = b"{\"check_id\":1,\"current_state\":\"DOWN\"}\r\n\n{\"check_id\":2,\"current_state\":\"UP\"}\n";
        let request = Request::builder()
            .method(Method::POST)
            .uri(EVENTS_PATH)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(DEFAULT_SIGNATURE_HEADER, sign(SECRET, body))
            .body(Body::from(body.to_vec()))
            .unwrap();

        let reply = call(&harness.router, request).await;

        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["accepted"], 2);
        assert_eq!(raw_events(&harness.log).await.len(), 2);
    }

    #[tokio::test]
    async fn non_json_body_is_kept_for_normalize() {
        let harness = harness(signing(&[SECRET]));
        let body = b"{\"check_id\": 1, \"current_st";

        let reply = call(&harness.router, signed(SECRET, body)).await;

        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["not_json"], 1);
        assert!(reply.body["warning"].as_str().unwrap().contains("dead-letter"));
        let events = raw_events(&harness.log).await;
        assert_eq!(events[0].payload, body);
        let reason = crate::sources::normalize(&events[0]).unwrap_err();
        assert!(reason.contains("not valid JSON"), "{reason}");
    }

    #[tokio::test]
    async fn empty_bodies_are_bad_requests() {
        let harness = harness(signing(&[SECRET]));
        for body in [&b""[..], b"  \n", b"[]"] {
            let reply = call(&harness.router, signed(SECRET, body)).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
            assert_eq!(reply.body["error"], "empty_body", "{body:?}");
        }
        assert!(raw_events(&harness.log).await.is_empty());
    }

    #[tokio::test]
    async fn unknown_path_is_not_found() {
        let harness = harness(signing(&[SECRET]));
        let request = Request::builder().method(Method::POST).uri("/v2/events").body(Body::from("{}")).unwrap();

        let reply = call(&harness.router, request).await;

        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert!(reply.body["message"].as_str().unwrap().contains(EVENTS_PATH));
    }

    #[tokio::test]
    async fn health_returns_ok() {
        let harness = harness(signing(&[SECRET]));
        let request = Request::builder().uri("/health").body(Body::empty()).unwrap();

        let reply = call(&harness.router, request).await;

        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, Value::String("ok\n".into()));
    }

    /// A sink whose sends always fail, as with an unreachable broker.
    struct FailingSink;

    #[async_trait]
    impl RecordSink for FailingSink {
        async fn send(&self, _records: Vec<OutRecord>) -> Result<(), TransportError> {
            Err(TransportError::Kafka {
                operation: "produce",
                reason: "broker 127.0.0.1:9 is unreachable".into(),
            })
        }
    }

    #[tokio::test]
    async fn publish_failure_requests_retry() {
        let log = new_log();
        let harness = harness_with(signing(&[SECRET]), Arc::new(FailingSink), log, &Config::default());

        let reply = call(&harness.router, signed(SECRET, b"{\"n\":1}")).await;

        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers[RETRY_AFTER], RETRY_AFTER_SECS.to_string());
        assert_eq!(reply.body["error"], "publish_failed");
        assert!(reply.body.get("accepted").is_none(), "{}", reply.body);
        assert_eq!(requests_counted(&harness.metrics, "failed"), 1);
        assert_eq!(requests_counted(&harness.metrics, "accepted"), 0);
        let rendered = harness.metrics.render();
        assert!(rendered.contains("blameless_http_requests_total{outcome=\"failed\"} 1"), "{rendered}");
        assert!(rendered.contains("blameless_records_out_total{stage=\"ingest\"} 0"), "{rendered}");
    }

    /// A sink that keeps each send waiting until the test releases it, and
    /// reports when a send has started.
    struct GatedSink {
        inner: MemorySink,
        started: Mutex<Option<oneshot::Sender<()>>>,
        release: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
    }

    impl GatedSink {
        /// Returns the sink, the receiver of its start signal and the sender
        /// that releases it.
        fn new(log: Arc<MemoryLog>) -> (Arc<GatedSink>, oneshot::Receiver<()>, oneshot::Sender<()>) {
            let (started_sender, started) = oneshot::channel();
            let (release, release_receiver) = oneshot::channel();
            let sink = GatedSink {
                inner: MemorySink { log },
                started: Mutex::new(Some(started_sender)),
                release: tokio::sync::Mutex::new(Some(release_receiver)),
            };
            (Arc::new(sink), started, release)
        }
    }

    #[async_trait]
    impl RecordSink for GatedSink {
        async fn send(&self, records: Vec<OutRecord>) -> Result<(), TransportError> {
            if let Some(started) = self.started.lock().unwrap().take() {
                let _ = started.send(());
            }
            if let Some(release) = self.release.lock().await.take() {
                let _ = release.await;
            }
            self.inner.send(records).await
        }
    }

    #[tokio::test]
    async fn response_waits_for_acknowledgement() {
        let log = new_log();
        let (sink, mut started, release) = GatedSink::new(Arc::clone(&log));
        let harness = harness_with(signing(&[SECRET]), sink, log, &Config::default());
        let mut response = Box::pin(harness.router.clone().oneshot(signed(SECRET, b"{\"n\":1}")));

        // Drive the request until its records reach the sink.
        tokio::select! {
            biased;
            _ = &mut started => {}
            early = &mut response => panic!("responded {} before the sink was called", early.unwrap().status()),
        }
        // The sink keeps the records unacknowledged, so the request must still
        // be waiting, with nothing stored.
        assert!(futures::poll!(&mut response).is_pending());
        assert!(raw_events(&harness.log).await.is_empty());
        assert_eq!(requests_counted(&harness.metrics, "accepted"), 0);

        release.send(()).unwrap();
        let reply = read_response(response.await.unwrap()).await;

        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(raw_events(&harness.log).await.len(), 1);
        assert_eq!(requests_counted(&harness.metrics, "accepted"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_broker_times_out_with_retry() {
        let log = new_log();
        let (sink, _started, _release) = GatedSink::new(Arc::clone(&log));
        let settings = ReceiverConfig {
            request_timeout_secs: 2,
            ..signing(&[SECRET])
        };
        let harness = harness_with(settings, sink, log, &Config::default());

        let reply = call(&harness.router, signed(SECRET, b"{\"n\":1}")).await;

        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers[RETRY_AFTER], RETRY_AFTER_SECS.to_string());
        assert_eq!(reply.body["error"], "timed_out");
        assert!(reply.body["message"].as_str().unwrap().contains("sources.http.request_timeout_secs"));
        assert!(raw_events(&harness.log).await.is_empty());
        assert_eq!(requests_counted(&harness.metrics, "timed_out"), 1);
        assert_eq!(requests_counted(&harness.metrics, "accepted"), 0);
    }

    #[tokio::test]
    async fn shutdown_lets_request_finish() {
        let log = new_log();
        let (sink, started, release) = GatedSink::new(Arc::clone(&log));
        let harness = harness_with(signing(&[SECRET]), sink, log, &Config::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, harness.router.clone(), async {
            let _ = stopped.await;
        }));

        let body = b"{\"n\":1}".to_vec();
        let signature = sign(SECRET, &body);
        let client = tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("http://{address}{EVENTS_PATH}"))
                .header(CONTENT_TYPE, "application/json")
                .header(DEFAULT_SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await
        });
        started.await.unwrap();
        stop.send(()).unwrap();
        release.send(()).unwrap();

        let response = client.await.unwrap().unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        server.await.unwrap().unwrap();
        assert_eq!(raw_events(&harness.log).await.len(), 1);
    }

    #[test]
    fn default_config_is_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn section_loads_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("next.secret");
        std::fs::write(&secret_file, format!("{NEXT_SECRET}\n")).unwrap();
        let path = dir.path().join("blameless.toml");
        let text = format!(
            "[sources.http]\naddress = \"127.0.0.1:18088\"\nsecrets = [\"{SECRET}\"]\nsecret_files = [{:?}]\nmax_body_bytes = 4096\nrequest_timeout_secs = 4\n",
            secret_file.display().to_string()
        );
        std::fs::write(&path, text).unwrap();

        let config = Config::load(Some(&path)).unwrap();
        let http = &config.sources.http;

        assert_eq!(http.address, "127.0.0.1:18088");
        assert_eq!(http.max_body_bytes, Some(4096));
        assert_eq!(http.request_timeout_secs, 4);
        assert_eq!(http.signature_header, DEFAULT_SIGNATURE_HEADER);
        let credentials = http.credentials().unwrap();
        assert_eq!(credentials.signing_keys.len(), 2);
        assert!(credentials.signature_matches(b"{}", &hex::decode(&sign(NEXT_SECRET, b"{}")[7..]).unwrap()));
    }

    #[test]
    fn invalid_settings_are_named() {
        let settings = ReceiverConfig {
            address: String::new(),
            signature_header: "X Signature".into(),
            secrets: vec![Secret::new("short"), Secret::new("")],
            tokens: vec![Secret::new(TOKEN)],
            allow_unauthenticated: true,
            max_body_bytes: Some(0),
            request_timeout_secs: 0,
            ..ReceiverConfig::default()
        };
        let mut problems = Vec::new();
        settings.validate(&mut problems);
        let text = problems.join("\n");

        for expected in [
            "sources.http.address is empty",
            "sources.http.signature_header \"X Signature\" is not a valid HTTP header name",
            "sources.http.secrets[0] is 5 characters long",
            "sources.http.secrets[1] is empty",
            "sources.http.allow_unauthenticated is true while secrets or tokens are set",
            "sources.http.max_body_bytes is 0",
            "sources.http.request_timeout_secs is 0",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert!(!text.contains(SECRET));
        assert_eq!(problems.len(), 7, "{text}");
    }

    #[test]
    fn no_credentials_rejected_at_start() {
        let error = ReceiverConfig::default().credentials().err().unwrap().to_string();
        assert!(error.contains("sources.http.secrets"), "{error}");
        assert!(error.contains("allow_unauthenticated = true"), "{error}");

        let open = ReceiverConfig {
            allow_unauthenticated: true,
            ..ReceiverConfig::default()
        };
        assert!(open.credentials().is_ok());
    }

    #[test]
    fn secret_file_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.secret");
        let short = dir.path().join("short.secret");
        std::fs::write(&short, "abc\n").unwrap();

        for (file, expected) in [(&missing, "could not read"), (&short, "3 characters long")] {
            let settings = ReceiverConfig {
                token_files: vec![file.clone()],
                ..ReceiverConfig::default()
            };
            let error = format!("{:#}", settings.credentials().err().unwrap());
            assert!(error.contains(&file.display().to_string()), "{error}");
            assert!(error.contains("sources.http.token_files"), "{error}");
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn capture_record_keeps_event_bytes() {
        let event = br#"{"a": 1,  "b":"x"}"#;
        let record = capture_record(event, "2025-12-12T14:01:02.000Z");
        let delivered = Delivered {
            origin: "test".into(),
            bytes: record,
        };

        let (_, raw) = ingest::to_raw_event(&delivered, 7);

        assert_eq!(raw.payload, event);
        assert_eq!(raw.delivery, DELIVERY);
        assert_eq!(raw.received_at_ms, 1_765_548_062_000);
    }
}
