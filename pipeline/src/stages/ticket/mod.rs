//! Ticket: reads `windowed-incidents` and makes exactly one postmortem ticket
//! per gated incident in the configured ticket system: the outbox folder, a
//! webhook, Jira or ServiceNow. Each ticket is recorded in the compacted
//! `tickets` ledger, keyed by incident id, with its system, key, URL and
//! status. An incident that never passes the gate is counted and never
//! ticketed.
//!
//! Before a ticket is created, the incident's events are copied to the cold
//! tier, so its data_snapshot_url exists when the ticket is sent. Later
//! changes that people act on (the end, a recurrence, the severity or the
//! type) update the same ticket, and the snapshot is written again at the
//! same location.
//!
//! Exactly one ticket:
//! - at start the stage reads the `tickets` ledger to its end, so it has
//!   every ticket already made;
//! - an incident missing from the ledger is searched for in the ticket
//!   system (by a label or a correlation column) before a create, which
//!   covers a stop between the system's response and the ledger record;
//! - records read again below a commit's done mark (a replay after a
//!   restart) touch no ticket system at all;
//! - the ledger record is acknowledged before the input offset is
//!   committed.
//!
//! Failures: a request is retried with backoff and the server's
//! Retry-After; a system that stays down opens the circuit, and the stage
//! waits and probes it every `ticket.circuit_open_secs`, keeping its place
//! in the stream. A response that retrying cannot fix (an unknown custom
//! field, a missing permission) sends the incident to the dead-letter topic
//! with the system's response body, and the stage goes on.
//!
//! Every new or updated payload first passes the blameless-document check
//! (`governance.rs`). A payload with personal data or per-person figures is
//! not sent: the incident goes to the dead-letter topic with the check's
//! findings as the reason.

mod http;
pub mod jira;
pub mod outbox;
mod payload;
pub mod send;
pub mod servicenow;
pub mod sink;
pub mod webhook;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::governance;
use crate::metrics::TicketMetrics;
use crate::model::{IncidentEvent, Record, RecordKind, TicketRecord};
use crate::stages::archive::{snapshot_url, write_snapshot, ArchiveStore};
use crate::topology::TICKETS;
use crate::transport::{now_ms, Decoded, Emit, Outcome, Reject, Stage, TransportError};

pub use outbox::OutboxSink;
pub use payload::{DependencyState, TicketPayload};
pub use sink::{build_sink, SinkError, TicketRef, TicketSink};

/// How long a Kafka consumer of this stage may go without polling: the
/// stage waits out a ticket system that is down inside one batch.
const MAX_PROCESSING_TIME: Duration = Duration::from_secs(24 * 3600);

/// Wait before searching for a ticket whose create got no clear response,
/// so that the system's search can see it.
const UNCERTAIN_WAIT: Duration = Duration::from_secs(5);

/// A call to the ticket system that the stage retries while the circuit
/// is open.
enum Call<'a> {
    Find(&'a str),
    Create(&'a TicketPayload),
    Update(&'a TicketRef, &'a TicketPayload, &'a str),
}

pub struct TicketStage {
    sink: Box<dyn TicketSink>,
    hot: ArchiveStore,
    cold: ArchiveStore,
    snapshot_margin_ms: i64,
    circuit_wait: Duration,
    /// Whether an unavailable system is waited out (the stage) or reported
    /// at once (`blameless ticket send`).
    wait_out_outages: bool,
    ledger: HashMap<String, TicketRecord>,
    metrics: Option<TicketMetrics>,
    /// Incidents that closed without passing the gate.
    pub spikes_not_ticketed: u64,
}

impl TicketStage {
    pub fn new(sink: Box<dyn TicketSink>, hot: ArchiveStore, cold: ArchiveStore, snapshot_margin_ms: i64) -> TicketStage {
        TicketStage {
            sink,
            hot,
            cold,
            snapshot_margin_ms,
            circuit_wait: Duration::from_secs(30),
            wait_out_outages: true,
            ledger: HashMap::new(),
            metrics: None,
            spikes_not_ticketed: 0,
        }
    }

    /// Sets the wait between probes of a ticket system that is down.
    pub fn with_circuit_wait(mut self, wait: Duration) -> TicketStage {
        self.circuit_wait = wait;
        self
    }

    /// Reports an unavailable system, or a create without a clear response,
    /// as a failure of that incident instead of waiting: for a command that
    /// a person runs and watches.
    pub fn without_waiting(mut self) -> TicketStage {
        self.wait_out_outages = false;
        self
    }

    pub fn with_metrics(mut self, metrics: TicketMetrics) -> TicketStage {
        self.metrics = Some(metrics);
        self
    }

    /// Returns the ledger record of an incident, if the stage has one.
    pub fn ledger_entry(&self, incident_id: &str) -> Option<&TicketRecord> {
        self.ledger.get(incident_id)
    }

    /// Makes one call, waiting out a system that is unavailable: each wait
    /// is `circuit_wait`, then one probe. A create that got no clear response
    /// is searched for before it is sent again. Returns the response, or the
    /// rejection that retrying cannot fix.
    async fn call(&self, call: Call<'_>) -> Result<Option<TicketRef>, SinkError> {
        let mut tries = 0u32;
        loop {
            let result = match &call {
                Call::Find(incident_id) => self.sink.find(incident_id).await,
                Call::Create(payload) if tries > 0 => match self.sink.find(&payload.incident_id).await {
                    Ok(Some(found)) => {
                        tracing::info!(
                            stage = "ticket",
                            incident_id = %payload.incident_id,
                            ticket_key = %found.key,
                            "The earlier create was made after all; using that ticket."
                        );
                        Ok(Some(found))
                    }
                    Ok(None) => self.sink.create(payload).await.map(Some),
                    Err(error) => Err(error),
                },
                Call::Create(payload) => self.sink.create(payload).await.map(Some),
                Call::Update(ticket, payload, note) => self.sink.update(ticket, payload, note).await.map(Some),
            };
            tries += 1;
            match result {
                Err(error @ (SinkError::Unavailable { .. } | SinkError::Uncertain { .. })) if !self.wait_out_outages => {
                    return Err(error);
                }
                Err(SinkError::Unavailable { system, operation, reason }) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.circuit_open.with_label_values(&[system]).set(1);
                    }
                    tracing::error!(
                        stage = "ticket",
                        system,
                        operation = %operation,
                        reason = %reason,
                        wait_secs = self.circuit_wait.as_secs_f64(),
                        "Ticket system unavailable; the stage keeps its place and probes it again after the wait."
                    );
                    tokio::time::sleep(self.circuit_wait).await;
                }
                Err(SinkError::Uncertain { system, operation, reason }) => {
                    let wait = self.circuit_wait.min(UNCERTAIN_WAIT);
                    tracing::warn!(
                        stage = "ticket",
                        system,
                        operation = %operation,
                        reason = %reason,
                        wait_secs = wait.as_secs_f64(),
                        "Create got no clear response; searching for the ticket before sending it again."
                    );
                    tokio::time::sleep(wait).await;
                }
                other => {
                    if let Some(metrics) = &self.metrics {
                        metrics.circuit_open.with_label_values(&[self.sink.system()]).set(0);
                    }
                    return other;
                }
            }
        }
    }

    /// Tickets a gated incident, or updates its ticket. A snapshot that
    /// cannot be written stops the stage before its commit, so the
    /// incident is read again on restart instead of being skipped.
    pub async fn handle(&mut self, incident: &IncidentEvent) -> Result<Outcome, TransportError> {
        if !incident.gated {
            if incident.change == "closed" {
                self.spikes_not_ticketed += 1;
                tracing::info!(stage = "ticket", incident_id = %incident.incident_id, "Incident closed below the postmortem gate; no ticket.");
            }
            return Ok(Ok(Vec::new()));
        }
        if let Err(reason) = check_incident_id(&incident.incident_id) {
            tracing::warn!(stage = "ticket", reason = %reason, "Incident rejected: its id cannot name a ticket or a snapshot.");
            return Ok(Err(Reject::new(reason)));
        }
        let payload = TicketPayload::from_incident(incident, snapshot_url(&self.cold, &incident.incident_id));
        if let Err(reject) = review(&payload) {
            return Ok(Err(reject));
        }

        let known = match self.ledger.get(&incident.incident_id) {
            Some(record) => Some((
                TicketRef {
                    key: record.ticket_key.clone(),
                    id: record.ticket_id.clone(),
                    url: record.ticket_url.clone(),
                },
                serde_json::from_str::<TicketPayload>(&record.payload_json).ok(),
            )),
            None => match self.call(Call::Find(&incident.incident_id)).await {
                Ok(Some(found)) => {
                    tracing::info!(
                        stage = "ticket",
                        incident_id = %incident.incident_id,
                        system = self.sink.system(),
                        ticket_key = %found.key,
                        "Ticket found in the ticket system but not in the ledger; recording it instead of making a second."
                    );
                    // Without the payload the ticket was written with, only
                    // a `gated` record is known to need no update.
                    let sent = self.sink.sent_payload(&found);
                    let up_to_date = match &sent {
                        Some(sent) => !sent.differs_for_ticket(&payload) || payload.is_older_than(sent),
                        None => incident.change == "gated",
                    };
                    if up_to_date {
                        let recorded = sent.unwrap_or_else(|| payload.clone());
                        return Ok(Ok(vec![self.ledger_record(found, "created", &recorded)]));
                    }
                    Some((found, sent))
                }
                Ok(None) => None,
                Err(error) => return Ok(Err(self.rejected(&incident.incident_id, error))),
            },
        };
        if let Some((_, Some(previous))) = &known {
            if !previous.differs_for_ticket(&payload) || payload.is_older_than(previous) {
                // A repeat, a change that the ticket does not show, or an
                // earlier state read again.
                return Ok(Ok(Vec::new()));
            }
        }

        let manifest = write_snapshot(&self.hot, &self.cold, incident, self.snapshot_margin_ms)
            .await
            .map_err(|e| TransportError::Stage {
                stage: "ticket",
                reason: format!("snapshot of incident {} failed: {e}", incident.incident_id),
            })?;
        let (call, status, note) = match &known {
            Some((ticket, previous)) => {
                let note = payload.change_note(previous.as_ref());
                (Some(ticket.clone()), "updated", note)
            }
            None => (None, "created", String::new()),
        };
        let response = match &call {
            Some(ticket) => self.call(Call::Update(ticket, &payload, &note)).await,
            None => self.call(Call::Create(&payload)).await,
        };
        let ticket = match response {
            Ok(Some(ticket)) => ticket,
            Ok(None) => unreachable!("a create or an update returns a ticket"),
            Err(error) => return Ok(Err(self.rejected(&incident.incident_id, error))),
        };
        #[cfg(feature = "failpoints")]
        fail::fail_point!("ticket-after-reply", |_| std::process::abort());
        tracing::info!(
            stage = "ticket",
            incident_id = %incident.incident_id,
            system = self.sink.system(),
            ticket_key = %ticket.key,
            status,
            snapshot_events = manifest.event_count,
            "Ticket written."
        );
        Ok(Ok(vec![self.ledger_record(ticket, status, &payload)]))
    }

    /// Turns a response that retrying cannot fix (or, without waiting, an
    /// outage) into a rejection with the system's response body in the
    /// reason: a dead letter in the stage, a failed line in `ticket send`.
    fn rejected(&self, incident_id: &str, error: SinkError) -> Reject {
        if let Some(metrics) = &self.metrics {
            metrics.rejected.with_label_values(&[self.sink.system()]).inc();
        }
        tracing::error!(
            stage = "ticket",
            incident_id,
            system = self.sink.system(),
            error = %error,
            "Ticket not written: the incident is rejected with the ticket system's response. Fix the cause and send it again from the dead-letter topic or with `blameless ticket send`."
        );
        Reject::new(format!("ticket for incident {incident_id} not written: {error}"))
    }

    /// Builds the ledger record of a ticket, keeps it in the in-memory
    /// ledger and returns it addressed to the `tickets` topic.
    fn ledger_record(&mut self, ticket: TicketRef, status: &str, payload: &TicketPayload) -> Emit {
        let record = TicketRecord {
            incident_id: payload.incident_id.clone(),
            system: self.sink.system().into(),
            ticket_key: ticket.key,
            ticket_id: ticket.id,
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

/// Checks that an incident id can name a ticket file, a label and a
/// snapshot folder: 1 to 128 letters, digits, `-` and `_`, as the UUIDs
/// that the window stage derives.
fn check_incident_id(incident_id: &str) -> Result<(), String> {
    let valid = !incident_id.is_empty()
        && incident_id.len() <= 128
        && incident_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        let shown: String = incident_id.chars().take(80).collect();
        Err(format!(
            "incident id {shown:?} is invalid; an id has 1 to 128 letters, digits, '-' or '_', such as the UUIDs the window stage writes"
        ))
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

    fn max_processing_time(&self) -> Option<Duration> {
        Some(MAX_PROCESSING_TIME)
    }

    fn restore_topic(&self) -> Option<(&'static str, RecordKind)> {
        Some((TICKETS, RecordKind::Ticket))
    }

    /// Loads the ledger: the last record of each incident on `tickets`.
    fn restore(&mut self, records: Vec<Record>) {
        for record in records {
            if let Record::Ticket(ticket) = record {
                self.ledger.insert(ticket.incident_id.clone(), ticket);
            }
        }
        tracing::info!(stage = "ticket", tickets = self.ledger.len(), "Ticket ledger loaded.");
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for decoded in batch {
            let outcome = match &decoded.record {
                // Below the done mark: its ticket and ledger record were
                // made before the restart, so no ticket system is asked.
                Record::Incident(_) if decoded.replay => Ok(Vec::new()),
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
            Box::new(OutboxSink::new(dir.join("tickets"))),
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

    fn closed(mut incident: IncidentEvent) -> IncidentEvent {
        incident.change = "closed".into();
        incident.timestamp_end_ms = Some(1_765_550_300_000);
        incident
    }

    #[tokio::test]
    async fn earlier_states_read_again_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let gated = gated_incident();
        let mut first = stage(dir.path());
        assert_eq!(ledger_statuses(first.handle(&gated).await.unwrap()), ["created"]);
        assert_eq!(ledger_statuses(first.handle(&closed(gated.clone())).await.unwrap()), ["updated"]);
        let written = std::fs::read(dir.path().join("tickets/inc-restart.json")).unwrap();

        // The same stage reads both again, as after a seek back.
        assert!(first.handle(&gated).await.unwrap().unwrap().is_empty());
        assert!(first.handle(&closed(gated.clone())).await.unwrap().unwrap().is_empty());

        // A new run finds the closed ticket in the outbox and records it once.
        let mut second = stage(dir.path());
        assert_eq!(ledger_statuses(second.handle(&gated).await.unwrap()), ["created"]);
        assert!(second.handle(&closed(gated.clone())).await.unwrap().unwrap().is_empty());
        let recorded = second.ledger_entry("inc-restart").unwrap();
        assert!(recorded.payload_json.contains("\"timestamp_end\":\"2025-12-12T"), "{}", recorded.payload_json);
        assert_eq!(std::fs::read(dir.path().join("tickets/inc-restart.json")).unwrap(), written);
    }

    #[tokio::test]
    async fn recurrence_updates_closed_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path());
        let gated = gated_incident();
        stage.handle(&gated).await.unwrap().unwrap();
        stage.handle(&closed(gated.clone())).await.unwrap().unwrap();
        let mut reopened = gated.clone();
        reopened.change = "reopened".into();
        reopened.recurrences = 1;
        assert_eq!(ledger_statuses(stage.handle(&reopened).await.unwrap()), ["updated"]);
    }

    #[tokio::test]
    async fn path_like_incident_id_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage(dir.path());
        for id in ["/../escape", "../escape", "", "a b", "inc.json"] {
            let mut incident = gated_incident();
            incident.incident_id = id.into();
            let reject = stage.handle(&incident).await.unwrap().unwrap_err();
            assert!(reject.reason.contains("is invalid"), "{id:?}: {}", reject.reason);
        }
        assert!(!dir.path().join("tickets").exists());
        assert!(!dir.path().join("escape.json").exists());
        assert!(!dir.path().join("cold").join("incidents").exists());
    }
}
