//! The records that travel on Blameless topics, one Rust type per Avro schema
//! in `schemas/`. Field names match the schemas; serde carries them to Avro.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A platform payload exactly as delivered. Topic: `raw-events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    pub event_id: String,
    pub source: String,
    pub delivery: String,
    pub received_at_ms: i64,
    pub interval_start_ms: Option<i64>,
    pub interval_end_ms: Option<i64>,
    #[serde(with = "apache_avro::serde::bytes")]
    pub payload: Vec<u8>,
    /// The capture record's `capture` object as JSON text, when the payload
    /// came in one.
    pub capture_json: Option<String>,
}

/// Status of a synthetic check of a dependency behind the contact center.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyCheck {
    pub name: String,
    pub ok: bool,
    pub http_status: Option<i32>,
    pub location: Option<String>,
}

/// One meaningful event in the unified schema, still carrying personal data.
/// Topic: `normalized`, keyed by affected service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedEvent {
    pub event_id: String,
    pub event_type: String,
    pub platform_source: String,
    pub delivery: String,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    pub affected_service: String,
    pub conversation_id: Option<String>,
    pub touchpoint: Option<String>,
    pub agent_id: Option<String>,
    pub phone_number: Option<String>,
    pub customer_id: Option<String>,
    pub failed_contacts: i64,
    pub total_contacts: i64,
    pub dependency: Option<DependencyCheck>,
    pub attributes: BTreeMap<String, String>,
    pub message: Option<String>,
}

/// A normalized event after the mask stage. Topic: `masked`, keyed by
/// affected service. It has no field that can hold a raw personal value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedEvent {
    pub event_id: String,
    pub event_type: String,
    pub platform_source: String,
    pub delivery: String,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    pub affected_service: String,
    pub conversation_id: Option<String>,
    pub touchpoint: Option<String>,
    pub agent_pseudonym: Option<String>,
    pub phone_pseudonym: Option<String>,
    pub customer_pseudonym: Option<String>,
    pub mask_key_id: String,
    pub failed_contacts: i64,
    pub total_contacts: i64,
    pub dependency: Option<DependencyCheck>,
    pub attributes: BTreeMap<String, String>,
    pub message: Option<String>,
    /// The pseudonyms under the previous mask key, while a key rotation is
    /// in progress, so events can be joined across the rotation. `None`
    /// when no previous key is configured, and in records written before
    /// the field existed.
    #[serde(default)]
    pub previous_pseudonyms: Option<PreviousPseudonyms>,
    /// Attributes of the normalized event that the mask stage dropped
    /// because they are not on its allow-list.
    #[serde(default)]
    pub dropped_attribute_count: i64,
}

/// The pseudonyms of a masked event under the previous mask key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousPseudonyms {
    pub key_id: String,
    pub agent_pseudonym: Option<String>,
    pub phone_pseudonym: Option<String>,
    pub customer_pseudonym: Option<String>,
}

/// Last known status of one dependency, as carried by an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyStatus {
    pub name: String,
    pub status: String,
    pub checked_at_ms: i64,
}

/// A state change of an incident. Topic: `windowed-incidents`, keyed by
/// incident id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub incident_id: String,
    pub change: String,
    pub incident_type: String,
    pub severity: String,
    pub affected_service: String,
    pub platform_source: String,
    pub signal_type: String,
    pub timestamp_start_ms: i64,
    pub timestamp_end_ms: Option<i64>,
    pub last_signal_ms: i64,
    pub failed_contacts: i64,
    pub total_contacts: i64,
    pub threshold_count: i64,
    pub window_ms: i64,
    pub gated: bool,
    pub gate_reason: Option<String>,
    /// Times the incident breached again within its cooldown after closing
    /// and was reopened. 0 in records written before the field existed.
    #[serde(default)]
    pub recurrences: i32,
    /// Why the incident has its type: for an incident opened by a failed
    /// dependency check, the dependency, its status and the platform's
    /// health at the time. `None` for incidents of platform signals.
    #[serde(default)]
    pub type_reason: Option<String>,
    pub dependencies: Vec<DependencyStatus>,
}

/// The ticket ledger entry of an incident. Topic: `tickets`, keyed by
/// incident id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRecord {
    pub incident_id: String,
    pub system: String,
    pub ticket_key: String,
    /// The id the system's API updates the ticket by, when it differs from
    /// the key (a ServiceNow sys_id). `None` in records written before the
    /// field existed.
    #[serde(default)]
    pub ticket_id: Option<String>,
    pub ticket_url: String,
    pub status: String,
    pub data_snapshot_url: String,
    pub updated_at_ms: i64,
    pub payload_json: String,
}

/// A record a stage could not process. Topic: `dead-letter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub reason: String,
    pub failed_at_ms: i64,
    #[serde(with = "apache_avro::serde::bytes")]
    pub payload: Vec<u8>,
    pub payload_scrubbed: bool,
}

/// How far a polling source got. Topic: `source-cursors` (compacted),
/// keyed by `<source>:<key>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceCursor {
    pub source: String,
    pub key: String,
    /// End (exclusive) of the last interval published to `raw-events`.
    pub interval_end_ms: i64,
    pub updated_at_ms: i64,
    /// State the source resumes with, as a JSON object.
    pub state_json: Option<String>,
}

/// Every record type, for code that handles any topic's records.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Raw(RawEvent),
    Normalized(NormalizedEvent),
    Masked(MaskedEvent),
    Incident(IncidentEvent),
    Ticket(TicketRecord),
    DeadLetter(DeadLetter),
    Cursor(SourceCursor),
}

/// The schema a record is written with, one per `.avsc` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Raw,
    Normalized,
    Masked,
    Incident,
    Ticket,
    DeadLetter,
    Cursor,
}

impl RecordKind {
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Raw,
        RecordKind::Normalized,
        RecordKind::Masked,
        RecordKind::Incident,
        RecordKind::Ticket,
        RecordKind::DeadLetter,
        RecordKind::Cursor,
    ];

    /// Returns the Avro schema text from `schemas/`.
    pub fn schema_text(self) -> &'static str {
        match self {
            RecordKind::Raw => include_str!("../../schemas/raw_event.avsc"),
            RecordKind::Normalized => include_str!("../../schemas/normalized_event.avsc"),
            RecordKind::Masked => include_str!("../../schemas/masked_event.avsc"),
            RecordKind::Incident => include_str!("../../schemas/incident_event.avsc"),
            RecordKind::Ticket => include_str!("../../schemas/ticket_record.avsc"),
            RecordKind::DeadLetter => include_str!("../../schemas/dead_letter.avsc"),
            RecordKind::Cursor => include_str!("../../schemas/source_cursor.avsc"),
        }
    }

    /// Returns the schema file name, as topology/ refers to it.
    pub fn schema_file(self) -> &'static str {
        match self {
            RecordKind::Raw => "raw_event.avsc",
            RecordKind::Normalized => "normalized_event.avsc",
            RecordKind::Masked => "masked_event.avsc",
            RecordKind::Incident => "incident_event.avsc",
            RecordKind::Ticket => "ticket_record.avsc",
            RecordKind::DeadLetter => "dead_letter.avsc",
            RecordKind::Cursor => "source_cursor.avsc",
        }
    }

    pub fn from_schema_file(file: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|kind| kind.schema_file() == file)
    }
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Raw(_) => RecordKind::Raw,
            Record::Normalized(_) => RecordKind::Normalized,
            Record::Masked(_) => RecordKind::Masked,
            Record::Incident(_) => RecordKind::Incident,
            Record::Ticket(_) => RecordKind::Ticket,
            Record::DeadLetter(_) => RecordKind::DeadLetter,
            Record::Cursor(_) => RecordKind::Cursor,
        }
    }
}

/// Builds a masked event for tests: one contact of `service` at `time_ms`,
/// failed for `call_failed` and `ivr_error`, and counted as volume unless it
/// is an `ivr_error`.
#[cfg(test)]
pub(crate) fn test_masked_event(service: &str, event_type: &str, time_ms: i64) -> MaskedEvent {
    MaskedEvent {
        event_id: format!("{service}-{time_ms}"),
        event_type: event_type.into(),
        platform_source: "genesys_cloud_cx".into(),
        delivery: "eventbridge".into(),
        event_time_ms: time_ms,
        received_at_ms: time_ms,
        affected_service: service.into(),
        conversation_id: None,
        touchpoint: None,
        agent_pseudonym: None,
        phone_pseudonym: None,
        customer_pseudonym: None,
        mask_key_id: "k1".into(),
        failed_contacts: i64::from(event_type == "call_failed" || event_type == "ivr_error"),
        total_contacts: i64::from(event_type != "ivr_error"),
        dependency: None,
        attributes: BTreeMap::new(),
        message: None,
        previous_pseudonyms: None,
        dropped_attribute_count: 0,
    }
}
