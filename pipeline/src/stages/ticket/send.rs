//! `blameless ticket send`: pushes incident records from a JSON Lines file
//! through the configured sink, the way the ticket stage would, so a team
//! can check its field mapping against a sandbox project before an outage.
//!
//! A ledger file (JSON Lines of `tickets` records) plays the part of the
//! `tickets` topic: it is read at start and each new record is appended.
//! With it, and the search before each create, a second run creates nothing.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::TicketStage;
use crate::model::{IncidentEvent, Record, TicketRecord};

/// Outcome of each line of the input.
#[derive(Debug, Default)]
pub struct SendReport {
    /// `created KEY URL`, `updated KEY URL` or `unchanged KEY URL`, per incident.
    pub lines: Vec<String>,
    /// Incidents that reached the ticket system's step: sent, or found
    /// up to date.
    pub sent: usize,
    /// Lines that could not be sent, each with its reason.
    pub failures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("Could not read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("Could not append to the ledger file {path}; check that its folder exists and is writable")]
    Ledger { path: PathBuf, source: std::io::Error },
    #[error("{path} is a JSON array or a JSON document over several lines; write one incident record per line (JSON Lines)")]
    NotJsonLines { path: PathBuf },
    #[error("Line {line} of the ledger file {path} is not a ticket record ({reason}); fix or remove the line.")]
    LedgerLine { path: PathBuf, line: usize, reason: String },
    #[error("The ticket stage stopped: {0}")]
    Stage(String),
}

/// Reads a ledger file, if it exists.
fn read_ledger(path: &Path) -> Result<Vec<Record>, SendError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SendError::Read { path: path.to_path_buf(), source }),
    };
    let mut records = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| SendError::Read { path: path.to_path_buf(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let record: TicketRecord = serde_json::from_str(&line).map_err(|e| SendError::LedgerLine {
            path: path.to_path_buf(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        records.push(Record::Ticket(record));
    }
    Ok(records)
}

/// Sends every incident of `input` through `stage`, keeping the ledger in
/// `ledger`. A line that is not an incident record, or that the ticket
/// system rejects, is reported and the rest are still sent.
pub async fn send_file(stage: &mut TicketStage, input: &Path, ledger: &Path) -> Result<SendReport, SendError> {
    use crate::transport::Stage;
    stage.restore(read_ledger(ledger)?);
    let text = std::fs::read_to_string(input).map_err(|source| SendError::Read {
        path: input.to_path_buf(),
        source,
    })?;
    let first = text.trim_start();
    if first.starts_with('[') || (first.starts_with('{') && text.lines().next().is_some_and(|line| line.trim() == "{")) {
        return Err(SendError::NotJsonLines { path: input.to_path_buf() });
    }
    let mut report = SendReport::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = format!("{}:{}", input.display(), index + 1);
        let incident: IncidentEvent = match serde_json::from_str(line) {
            Ok(incident) => incident,
            Err(error) => {
                report.failures.push(format!(
                    "{place}: not an incident record ({error}); each line must be one windowed-incidents record as JSON"
                ));
                continue;
            }
        };
        if !incident.gated {
            report.lines.push(format!("below the gate  {}  (no ticket)", incident.incident_id));
            continue;
        }
        report.sent += 1;
        let outcome = stage.handle(&incident).await.map_err(|e| SendError::Stage(e.to_string()))?;
        match outcome {
            Ok(emits) if emits.is_empty() => {
                let entry = stage.ledger_entry(&incident.incident_id);
                report.lines.push(match entry {
                    Some(entry) => format!("unchanged  {}  {}", entry.ticket_key, entry.ticket_url),
                    None => format!("unchanged  {}", incident.incident_id),
                });
            }
            Ok(emits) => {
                for emit in emits {
                    if let Record::Ticket(record) = emit.record {
                        append_ledger(ledger, &record)?;
                        report
                            .lines
                            .push(format!("{}  {}  {}", record.status, record.ticket_key, record.ticket_url));
                    }
                }
            }
            Err(reject) => report.failures.push(format!("{place}: {}", reject.reason)),
        }
    }
    Ok(report)
}

fn append_ledger(path: &Path, record: &TicketRecord) -> Result<(), SendError> {
    let error = |source| SendError::Ledger {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(error)?;
    let line = serde_json::to_string(record).unwrap_or_default();
    writeln!(file, "{line}").map_err(error)?;
    file.sync_data().map_err(error)
}
