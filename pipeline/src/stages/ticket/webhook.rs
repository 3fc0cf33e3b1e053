//! The generic webhook: the ticket payload POSTed as JSON, with an
//! `event` field (`ticket.created` or `ticket.updated`) and, when a secret
//! is set, `sha256=<hex HMAC-SHA-256 of the body>` in the signature header.
//!
//! A webhook has no search, so the `tickets` ledger alone keeps a
//! restart from sending a create twice. Each request carries an
//! `Idempotency-Key` header (the incident id and a hash of the body), so a
//! receiver can drop the rare repeat after a crash between its response and
//! the ledger record.

use async_trait::async_trait;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::http::{HttpClient, RetryPolicy};
use super::sink::{SinkError, TicketRef, TicketSink};
use super::TicketPayload;
use crate::config::{TicketConfig, WebhookConfig};

const SYSTEM: &str = "webhook";

pub struct WebhookSink {
    http: HttpClient,
    config: WebhookConfig,
}

/// Returns `sha256=<hex>`, the HMAC-SHA-256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    pub fn new(config: &TicketConfig) -> Result<WebhookSink, SinkError> {
        let http = HttpClient::new(
            SYSTEM,
            RetryPolicy::from_config(config),
            "the receiver's authentication and BLAMELESS__TICKET__WEBHOOK__SECRET",
        )?;
        Ok(WebhookSink {
            http,
            config: config.webhook.clone(),
        })
    }

    /// Builds the body of a delivery: the payload's fields, `event`, and for an
    /// update the note that describes what changed.
    pub fn body(payload: &TicketPayload, event: &str, note: Option<&str>) -> Vec<u8> {
        let mut object = serde_json::to_value(payload).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut object {
            fields.insert("event".into(), Value::String(event.into()));
            if let Some(note) = note {
                fields.insert("note".into(), Value::String(note.into()));
            }
        }
        serde_json::to_vec(&object).unwrap_or_default()
    }

    async fn deliver(&self, payload: &TicketPayload, event: &str, note: Option<&str>) -> Result<TicketRef, SinkError> {
        let operation = format!("deliver {event} for incident {}", payload.incident_id);
        let body = WebhookSink::body(payload, event, note);
        let idempotency_key = format!("{}:{}", payload.incident_id, &hex::encode(Sha256::digest(&body))[..16]);
        let signed = (!self.config.secret.is_empty()).then(|| signature(self.config.secret.expose().as_bytes(), &body));
        let response = self
            .http
            .send(&operation, || {
                let mut request = self
                    .http
                    .client()
                    .post(&self.config.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("X-Blameless-Event", event)
                    .header("Idempotency-Key", &idempotency_key)
                    .body(body.clone());
                if let Some(signed) = &signed {
                    request = request.header(self.config.signature_header.as_str(), signed);
                }
                request
            })
            .await?;
        // A receiver may respond with the ticket it made; otherwise the
        // incident id is the key.
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        Ok(TicketRef {
            key: reply["key"].as_str().unwrap_or(&payload.incident_id).to_string(),
            id: reply["id"].as_str().map(str::to_string),
            url: reply["url"].as_str().unwrap_or(&self.config.url).to_string(),
        })
    }
}

#[async_trait]
impl TicketSink for WebhookSink {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    async fn find(&self, _incident_id: &str) -> Result<Option<TicketRef>, SinkError> {
        Ok(None)
    }

    async fn create(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError> {
        self.deliver(payload, "ticket.created", None).await
    }

    async fn update(&self, ticket: &TicketRef, payload: &TicketPayload, note: &str) -> Result<TicketRef, SinkError> {
        let mut updated = self.deliver(payload, "ticket.updated", Some(note)).await?;
        if updated.key == payload.incident_id {
            updated.key = ticket.key.clone();
        }
        Ok(updated)
    }
}
