//! Ticket: reads `windowed-incidents` and makes exactly one postmortem ticket
//! per gated incident, then records it in the `tickets` ledger (compacted,
//! keyed by incident id). An incident that never passes the gate is counted
//! and never ticketed.
//!
//! Before a ticket is created, the incident's events are copied to the cold
//! tier, so its data_snapshot_url exists when the ticket is sent. When a
//! ticketed incident closes, the snapshot is completed and the ticket updated
//! with its end.
//!
//! Exactly once: the sink is searched for the incident id before a create
//! (the outbox sink looks for the incident's file), so a record read again
//! after a restart or replay updates the same ticket instead of making a
//! second.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{DependencyStatus, IncidentEvent, Record, RecordKind, TicketRecord};
use crate::stages::archive::{snapshot_folder, write_snapshot, ArchiveStore};
use crate::topology::TICKETS;
use crate::transport::{now_ms, Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// The ticket as sent to the ticketing system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketPayload {
    pub incident_id: String,
    pub incident_type: String,
    pub timestamp_start: String,
    pub timestamp_end: Option<String>,
    pub severity: String,
    pub affected_service: String,
    pub data_snapshot_url: String,
    pub platform_source: String,
    pub dependency_status: Vec<DependencyState>,
    pub signal_type: String,
    pub failed_contacts: i64,
    pub total_contacts: i64,
    pub gate_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyState {
    pub name: String,
    pub status: String,
    pub checked_at: String,
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl TicketPayload {
    pub fn from_incident(incident: &IncidentEvent, data_snapshot_url: String) -> TicketPayload {
        TicketPayload {
            incident_id: incident.incident_id.clone(),
            incident_type: incident.incident_type.clone(),
            timestamp_start: iso(incident.timestamp_start_ms),
            timestamp_end: incident.timestamp_end_ms.map(iso),
            severity: incident.severity.clone(),
            affected_service: incident.affected_service.clone(),
            data_snapshot_url,
            platform_source: incident.platform_source.clone(),
            dependency_status: incident.dependencies.iter().map(dependency_state).collect(),
            signal_type: incident.signal_type.clone(),
            failed_contacts: incident.failed_contacts,
            total_contacts: incident.total_contacts,
            gate_reason: incident.gate_reason.clone(),
        }
    }
}

fn dependency_state(status: &DependencyStatus) -> DependencyState {
    DependencyState {
        name: status.name.clone(),
        status: status.status.clone(),
        checked_at: iso(status.checked_at_ms),
    }
}

/// A ticket in the ticketing system.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRef {
    pub key: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Could not write the ticket file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The outbox sink: one JSON file per incident in a folder, written
/// atomically (temporary file, then rename).
pub struct OutboxSink {
    dir: PathBuf,
}

impl OutboxSink {
    pub fn new(dir: PathBuf) -> OutboxSink {
        OutboxSink { dir }
    }

    fn path(&self, incident_id: &str) -> PathBuf {
        self.dir.join(format!("{incident_id}.json"))
    }

    /// Returns the ticket of an incident, if one exists.
    pub fn find(&self, incident_id: &str) -> Option<TicketRef> {
        let path = self.path(incident_id);
        path.exists().then(|| self.reference(incident_id))
    }

    fn reference(&self, incident_id: &str) -> TicketRef {
        let path = self.path(incident_id);
        let absolute = std::fs::canonicalize(&path).unwrap_or(path);
        TicketRef {
            key: incident_id.to_string(),
            url: format!("file://{}", absolute.display()),
        }
    }

    /// Creates or replaces the incident's ticket.
    pub fn write(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError> {
        let path = self.path(&payload.incident_id);
        let io_error = |source| SinkError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io_error)?;
        let temporary = self.dir.join(format!(".{}.json.tmp", payload.incident_id));
        let bytes = serde_json::to_vec_pretty(payload).unwrap_or_default();
        std::fs::write(&temporary, bytes).map_err(io_error)?;
        std::fs::rename(&temporary, &path).map_err(io_error)?;
        Ok(self.reference(&payload.incident_id))
    }
}

pub struct TicketStage {
    sink: OutboxSink,
    hot: ArchiveStore,
    cold: ArchiveStore,
    snapshot_margin_ms: i64,
    ledger: HashMap<String, TicketRecord>,
    /// Incidents that closed without passing the gate.
    pub spikes_not_ticketed: u64,
}

impl TicketStage {
    pub fn new(sink: OutboxSink, hot: ArchiveStore, cold: ArchiveStore, snapshot_margin_ms: i64) -> TicketStage {
        TicketStage {
            sink,
            hot,
            cold,
            snapshot_margin_ms,
            ledger: HashMap::new(),
            spikes_not_ticketed: 0,
        }
    }

    /// Tickets a gated incident. A snapshot or ticket that cannot be written
    /// stops the stage before its commit, so the incident is read again on
    /// restart instead of being skipped.
    async fn handle(&mut self, incident: &IncidentEvent) -> Result<Outcome, TransportError> {
        if !incident.gated {
            if incident.change == "closed" {
                self.spikes_not_ticketed += 1;
                tracing::info!(stage = "ticket", incident_id = %incident.incident_id, "Incident closed below the postmortem gate; no ticket.");
            }
            return Ok(Ok(Vec::new()));
        }
        let known = self.ledger.contains_key(&incident.incident_id) || self.sink.find(&incident.incident_id).is_some();
        let closing = incident.change == "closed";
        if known && !closing {
            // Already ticketed: a repeat after a restart or replay.
            return Ok(Ok(Vec::new()));
        }

        let manifest = write_snapshot(&self.hot, &self.cold, incident, self.snapshot_margin_ms)
            .await
            .map_err(|e| TransportError::Stage {
                stage: "ticket",
                reason: format!("snapshot of incident {} failed: {e}", incident.incident_id),
            })?;
        let snapshot_url = self.cold.url_of(&format!("{}/", snapshot_folder(&incident.incident_id)));
        let payload = TicketPayload::from_incident(incident, snapshot_url.clone());
        let ticket = self
            .sink
            .write(&payload)
            .map_err(|e| TransportError::Stage {
                stage: "ticket",
                reason: format!("ticket for incident {} not written: {e}", incident.incident_id),
            })?;
        let status = if known { "updated" } else { "created" };
        tracing::info!(
            stage = "ticket",
            incident_id = %incident.incident_id,
            ticket_key = %ticket.key,
            status,
            snapshot_events = manifest.event_count,
            "Ticket written."
        );
        let record = TicketRecord {
            incident_id: incident.incident_id.clone(),
            system: "outbox".into(),
            ticket_key: ticket.key,
            ticket_url: ticket.url,
            status: status.into(),
            data_snapshot_url: snapshot_url,
            updated_at_ms: now_ms(),
            payload_json: serde_json::to_string(&payload).unwrap_or_default(),
        };
        self.ledger.insert(incident.incident_id.clone(), record.clone());
        Ok(Ok(vec![Emit {
            topic: TICKETS,
            key: incident.incident_id.clone(),
            record: Record::Ticket(record),
        }]))
    }
}

#[async_trait]
impl Stage for TicketStage {
    fn name(&self) -> &'static str {
        "ticket"
    }

    fn input_kind(&self) -> RecordKind {
        RecordKind::Incident
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for decoded in batch {
            let outcome = match &decoded.record {
                Record::Incident(incident) => self.handle(incident).await?,
                _ => Err(Reject::new("ticket reads incident events only")),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}
