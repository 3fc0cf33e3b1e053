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
//! second. A ticket found in the sink but not in this process's ledger gets
//! its `created` ledger record sent again, so a stop between writing the
//! ticket and acknowledging the ledger record loses no ledger entry.
//!
//! Every new or updated payload first passes the blameless-document check
//! (`governance.rs`). A payload with personal data or per-person figures is
//! not sent: the incident goes to the dead-letter topic with the check's
//! findings as the reason, no snapshot or ticket is written, and the stage
//! goes on with the next record.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::governance;
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
    /// Why a dependency incident has its type: the dependency, its status
    /// and the failing services, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_reason: Option<String>,
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
            type_reason: incident.type_reason.clone(),
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

    /// Reads the ticket of an incident back, if it exists and parses.
    pub fn read(&self, incident_id: &str) -> Option<TicketPayload> {
        let bytes = std::fs::read(self.path(incident_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
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
        let in_ledger = self.ledger.contains_key(&incident.incident_id);
        let in_sink = if in_ledger { None } else { self.sink.find(&incident.incident_id) };
        let known = in_ledger || in_sink.is_some();
        let closing = incident.change == "closed";
        if let (Some(ticket), false) = (in_sink, closing) {
            return Ok(Ok(vec![self.resend_ledger_record(incident, ticket)]));
        }
        if known && !closing {
            // Already ticketed and recorded: a repeat after a replay.
            return Ok(Ok(Vec::new()));
        }

        let snapshot_url = self.cold.url_of(&format!("{}/", snapshot_folder(&incident.incident_id)));
        let payload = TicketPayload::from_incident(incident, snapshot_url);
        if let Err(reject) = review(&payload) {
            return Ok(Err(reject));
        }

        let manifest = write_snapshot(&self.hot, &self.cold, incident, self.snapshot_margin_ms)
            .await
            .map_err(|e| TransportError::Stage {
                stage: "ticket",
                reason: format!("snapshot of incident {} failed: {e}", incident.incident_id),
            })?;
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
        Ok(Ok(vec![self.ledger_record(ticket, status, &payload)]))
    }

    /// Sends the `created` ledger record again for a ticket that the sink
    /// has but this process has not recorded. That happens when the stage
    /// stopped after writing the ticket and before the ledger record was
    /// acknowledged, and also on every replay after a restart. The `tickets`
    /// topic is compacted by incident id, so a repeat is harmless. No second
    /// ticket is written.
    fn resend_ledger_record(&mut self, incident: &IncidentEvent, ticket: TicketRef) -> Emit {
        let payload = self.sink.read(&incident.incident_id).unwrap_or_else(|| {
            let snapshot_url = self.cold.url_of(&format!("{}/", snapshot_folder(&incident.incident_id)));
            TicketPayload::from_incident(incident, snapshot_url)
        });
        tracing::info!(
            stage = "ticket",
            incident_id = %incident.incident_id,
            ticket_key = %ticket.key,
            "Ticket already in the outbox; ledger record sent again."
        );
        self.ledger_record(ticket, "created", &payload)
    }

    /// Builds the ledger record of a ticket, keeps it in the in-memory
    /// ledger and returns it addressed to the `tickets` topic.
    fn ledger_record(&mut self, ticket: TicketRef, status: &str, payload: &TicketPayload) -> Emit {
        let record = TicketRecord {
            incident_id: payload.incident_id.clone(),
            system: "outbox".into(),
            ticket_key: ticket.key,
            ticket_url: ticket.url,
            status: status.into(),
            data_snapshot_url: payload.data_snapshot_url.clone(),
            updated_at_ms: now_ms(),
            payload_json: serde_json::to_string(payload).unwrap_or_default(),
        };
        self.ledger.insert(payload.incident_id.clone(), record.clone());
        Emit {
            topic: TICKETS,
            key: payload.incident_id.clone(),
            record: Record::Ticket(record),
        }
    }
}

/// Runs the blameless-document check on a payload before it is sent. A
/// payload with findings becomes a rejection: its reason lists the rules and
/// JSON paths, and its dead letter keeps the payload with the flagged values
/// redacted, so no personal value reaches the dead-letter topic.
fn review(payload: &TicketPayload) -> Result<(), Reject> {
    let findings = governance::check_ticket(payload);
    if findings.is_empty() {
        return Ok(());
    }
    let summary = governance::summarize(&findings);
    tracing::warn!(
        stage = "ticket",
        incident_id = %payload.incident_id,
        findings = findings.len(),
        rules = %summary,
        "Ticket not written: the payload failed the blameless-document check."
    );
    let value = serde_json::to_value(payload).expect("a ticket payload serializes to JSON");
    let redacted = serde_json::to_vec(&governance::redact_json(&value)).unwrap_or_default();
    Err(Reject::with_payload(
        format!(
            "ticket payload of incident {} failed the blameless-document check: {summary}",
            payload.incident_id
        ),
        redacted,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gated_incident() -> IncidentEvent {
        IncidentEvent {
            incident_id: "inc-restart".into(),
            change: "gated".into(),
            incident_type: "platform_outage".into(),
            severity: "sev1".into(),
            affected_service: "voice_inbound".into(),
            platform_source: "genesys_cloud_cx".into(),
            signal_type: "call_failed".into(),
            timestamp_start_ms: 1_765_549_200_000,
            timestamp_end_ms: None,
            last_signal_ms: 1_765_550_000_000,
            failed_contacts: 120,
            total_contacts: 300,
            threshold_count: 50,
            window_ms: 300_000,
            gated: true,
            gate_reason: Some("lasted longer than 600 s".into()),
            recurrences: 0,
            type_reason: None,
            dependencies: Vec::new(),
        }
    }

    fn stage(dir: &std::path::Path) -> TicketStage {
        TicketStage::new(
            OutboxSink::new(dir.join("tickets")),
            ArchiveStore::open(dir.join("hot").to_str().unwrap()).unwrap(),
            ArchiveStore::open(dir.join("cold").to_str().unwrap()).unwrap(),
            300_000,
        )
    }

    fn ledger_statuses(outcome: Outcome) -> Vec<String> {
        outcome
            .unwrap()
            .into_iter()
            .map(|emit| match emit.record {
                Record::Ticket(record) => {
                    assert_eq!(emit.topic, TICKETS);
                    assert_eq!(emit.key, record.incident_id);
                    record.status
                }
                other => panic!("expected a ticket record, got {other:?}"),
            })
            .collect()
    }

    fn outbox_files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("tickets"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn existing_ticket_resends_created_record() {
        let dir = tempfile::tempdir().unwrap();
        let incident = gated_incident();

        // The run that stopped: its ticket file exists, but its ledger record
        // never reached the tickets topic.
        let written = stage(dir.path()).handle(&incident).await.unwrap();
        assert_eq!(ledger_statuses(written), ["created"]);
        let path = dir.path().join("tickets/inc-restart.json");
        let before = std::fs::read(&path).unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();

        let mut restarted = stage(dir.path());
        let outcome = restarted.handle(&incident).await.unwrap();
        let emits = outcome.clone().unwrap();
        assert_eq!(ledger_statuses(outcome), ["created"]);
        let Record::Ticket(record) = &emits[0].record else { unreachable!() };
        assert_eq!(record.ticket_key, "inc-restart");
        assert!(record.ticket_url.ends_with("/tickets/inc-restart.json"), "{}", record.ticket_url);
        assert!(record.data_snapshot_url.ends_with("/incidents/inc-restart/"), "{}", record.data_snapshot_url);
        let payload: TicketPayload = serde_json::from_str(&record.payload_json).unwrap();
        assert_eq!(payload.incident_id, "inc-restart");

        assert_eq!(outbox_files(dir.path()), ["inc-restart.json"]);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), modified);

        // The ledger now contains it, so the same record again emits nothing.
        let again = restarted.handle(&incident).await.unwrap();
        assert!(again.unwrap().is_empty());
    }

    #[tokio::test]
    async fn personal_payload_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut incident = gated_incident();
        incident.affected_service = "dependency_callback_3175550142".into();
        incident.gate_reason = Some("calls per agent: agent_k1_0123456789abcdef0123456789abcdef".into());
        let mut stage = stage(dir.path());

        let reject = stage.handle(&incident).await.unwrap().unwrap_err();
        assert!(reject.reason.contains("phone_number at $.affected_service"), "{}", reject.reason);
        assert!(reject.reason.contains("pseudonym at $.gate_reason"), "{}", reject.reason);
        assert!(reject.reason.contains("per_person_figure at $.gate_reason"), "{}", reject.reason);
        assert!(reject.reason.contains("inc-restart"), "{}", reject.reason);
        let kept = String::from_utf8(reject.payload.clone().unwrap()).unwrap();
        for text in [&reject.reason, &kept] {
            assert!(!text.contains("3175550142"), "{text}");
            assert!(!text.contains("0123456789abcdef"), "{text}");
        }
        let kept: TicketPayload = serde_json::from_str(&kept).unwrap();
        assert_eq!(kept.incident_id, "inc-restart");
        assert_eq!(kept.affected_service, "dependency_callback_[PHONE]");

        // Nothing was written, and the incident's close is rejected too.
        assert!(!dir.path().join("tickets").exists());
        assert!(!dir.path().join("cold").join("incidents").exists());
        incident.change = "closed".into();
        incident.timestamp_end_ms = Some(1_765_550_300_000);
        assert!(stage.handle(&incident).await.unwrap().is_err());
        assert!(!dir.path().join("tickets").exists());
    }

    #[tokio::test]
    async fn closing_known_ticket_is_updated() {
        let dir = tempfile::tempdir().unwrap();
        let mut incident = gated_incident();
        stage(dir.path()).handle(&incident).await.unwrap().unwrap();

        incident.change = "closed".into();
        incident.timestamp_end_ms = Some(1_765_550_300_000);
        let outcome = stage(dir.path()).handle(&incident).await.unwrap();
        assert_eq!(ledger_statuses(outcome), ["updated"]);
        assert_eq!(outbox_files(dir.path()), ["inc-restart.json"]);
    }
}
