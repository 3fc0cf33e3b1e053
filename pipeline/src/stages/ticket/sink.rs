//! The interface of a ticket system for the ticket stage: a search for the
//! ticket of an incident, a create and an update.

use std::path::PathBuf;

use async_trait::async_trait;

use super::TicketPayload;
use crate::config::TicketConfig;

/// A ticket in a ticket system.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRef {
    /// The key people use, such as `OPS-42` or `INC0010001`.
    pub key: String,
    /// The id the system's API needs to update it, when that differs from
    /// the key, such as a ServiceNow sys_id.
    pub id: Option<String>,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The system responded, and sending the same request again cannot
    /// help: an unknown custom field, a missing permission, an invalid
    /// project. The incident goes to the dead-letter topic.
    #[error("{system} rejected the request to {operation} (HTTP {status}): {body}")]
    Rejected {
        system: &'static str,
        operation: String,
        status: u16,
        body: String,
    },
    /// The system could not be reached, kept failing, or rejected the
    /// credentials. The stage waits and tries again, keeping its place.
    #[error("{system} could not {operation}: {reason}")]
    Unavailable {
        system: &'static str,
        operation: String,
        reason: String,
    },
    /// A create got no clear response (a timeout, or a 5xx that may come
    /// after the work was done): the ticket may exist. The stage searches
    /// for it before trying again.
    #[error("{system} gave no clear response to {operation}: {reason}")]
    Uncertain {
        system: &'static str,
        operation: String,
        reason: String,
    },
    #[error("could not write the ticket file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A ticket system.
#[async_trait]
pub trait TicketSink: Send + Sync {
    /// Name of the system, as written in the `tickets` ledger.
    fn system(&self) -> &'static str;

    /// Looks for the ticket of an incident in the system: the search
    /// before a create, for when the ledger has no record of it.
    async fn find(&self, incident_id: &str) -> Result<Option<TicketRef>, SinkError>;

    /// Returns the payload a found ticket was last written with, when the
    /// system keeps it whole (the outbox does).
    fn sent_payload(&self, _ticket: &TicketRef) -> Option<TicketPayload> {
        None
    }

    /// Creates the ticket of an incident.
    async fn create(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError>;

    /// Brings an existing ticket up to date with `payload`. `note` describes what
    /// changed, for systems that keep a comment or work note.
    async fn update(&self, ticket: &TicketRef, payload: &TicketPayload, note: &str) -> Result<TicketRef, SinkError>;
}

/// Builds the sink that the settings choose. Review mode always gets the
/// outbox, so a replay never reaches a live ticket system.
pub fn build_sink(config: &TicketConfig) -> Result<Box<dyn TicketSink>, SinkError> {
    Ok(match config.effective_sink() {
        "webhook" => Box::new(super::webhook::WebhookSink::new(config)?),
        "jira" => Box::new(super::jira::JiraSink::new(config)?),
        "servicenow" => Box::new(super::servicenow::ServiceNowSink::new(config)?),
        _ => Box::new(super::outbox::OutboxSink::new(config.outbox_dir.clone())),
    })
}
