//! The ticket payload, and the texts and field values that the ticket
//! systems are filled with.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{DependencyStatus, IncidentEvent};

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
    /// Times the incident came back within its cooldown after closing.
    #[serde(default)]
    pub recurrences: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyState {
    pub name: String,
    pub status: String,
    pub checked_at: String,
}

pub fn iso(ms: i64) -> String {
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
            recurrences: incident.recurrences,
        }
    }

    /// Returns one line for a ticket title, such as
    /// `[sev1] platform_outage on voice_inbound since 2025-12-12T15:00:00.000Z`.
    pub fn summary(&self) -> String {
        format!(
            "[{}] {} on {} since {}",
            self.severity, self.incident_type, self.affected_service, self.timestamp_start
        )
    }

    /// Returns the ticket's description as lines of plain text.
    pub fn description_lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "Blameless detected {} on {} ({}).",
                self.incident_type, self.affected_service, self.platform_source
            ),
            format!("Severity: {}", self.severity),
            format!("Start: {}", self.timestamp_start),
            format!("End: {}", self.timestamp_end.as_deref().unwrap_or("still open")),
            format!(
                "Signal: {}, {} of {} contacts failed",
                self.signal_type, self.failed_contacts, self.total_contacts
            ),
        ];
        if let Some(reason) = &self.gate_reason {
            lines.push(format!("Ticketed because: {reason}"));
        }
        if let Some(reason) = &self.type_reason {
            lines.push(format!("Type reason: {reason}"));
        }
        if self.recurrences > 0 {
            lines.push(format!("Recurrences: {}", self.recurrences));
        }
        if !self.dependency_status.is_empty() {
            lines.push(format!("Dependencies: {}", self.dependency_text()));
        }
        lines.push(format!("Data snapshot: {}", self.data_snapshot_url));
        lines.push(format!("Incident id: {}", self.incident_id));
        lines
    }

    fn dependency_text(&self) -> String {
        self.dependency_status
            .iter()
            .map(|d| format!("{} {} at {}", d.name, d.status, d.checked_at))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Returns the value of a payload field that a field mapping names
    /// (see `config::ticket::MAPPABLE_FIELDS`): JSON null for a field
    /// without a value.
    pub fn field(&self, name: &str) -> Value {
        match name {
            "summary" => Value::String(self.summary()),
            "payload" => Value::String(serde_json::to_string(self).unwrap_or_default()),
            "dependency_status" if self.dependency_status.is_empty() => Value::Null,
            "dependency_status" => Value::String(self.dependency_text()),
            _ => serde_json::to_value(self)
                .ok()
                .and_then(|object| object.get(name).cloned())
                .unwrap_or(Value::Null),
        }
    }

    /// Returns whether a ticket written from `self` needs updating to show `next`:
    /// only the fields people act on count, not the running counts.
    pub fn differs_for_ticket(&self, next: &TicketPayload) -> bool {
        self.timestamp_end != next.timestamp_end
            || self.severity != next.severity
            || self.incident_type != next.incident_type
            || self.recurrences != next.recurrences
            || self.type_reason != next.type_reason
    }

    /// Returns whether this state of the incident comes before `previous`, the
    /// state the ticket shows: a record read again from further back. A
    /// reopen always raises `recurrences`, so an open state with the same
    /// count as a closed one is older.
    pub fn is_older_than(&self, previous: &TicketPayload) -> bool {
        self.recurrences < previous.recurrences
            || (self.recurrences == previous.recurrences && self.timestamp_end.is_none() && previous.timestamp_end.is_some())
    }

    /// Describes what changed from `previous`, for a comment or work note.
    pub fn change_note(&self, previous: Option<&TicketPayload>) -> String {
        let mut changes = Vec::new();
        if let Some(previous) = previous {
            if previous.severity != self.severity {
                changes.push(format!("severity {} -> {}", previous.severity, self.severity));
            }
            if previous.incident_type != self.incident_type {
                changes.push(format!("type {} -> {}", previous.incident_type, self.incident_type));
            }
            if previous.recurrences != self.recurrences {
                changes.push(format!("came back (recurrence {})", self.recurrences));
            }
        }
        match &self.timestamp_end {
            Some(end) if previous.is_none_or(|p| p.timestamp_end.as_ref() != Some(end)) => {
                changes.push(format!("closed at {end}"))
            }
            None if previous.is_some_and(|p| p.timestamp_end.is_some()) => changes.push("open again".into()),
            _ => {}
        }
        if changes.is_empty() {
            changes.push("details updated".into());
        }
        format!(
            "Blameless: incident {} {}. {} of {} contacts failed. Data snapshot: {}",
            self.incident_id,
            changes.join(", "),
            self.failed_contacts,
            self.total_contacts,
            self.data_snapshot_url
        )
    }
}

fn dependency_state(status: &DependencyStatus) -> DependencyState {
    DependencyState {
        name: status.name.clone(),
        status: status.status.clone(),
        checked_at: iso(status.checked_at_ms),
    }
}
