//! The outbox sink: one JSON file per incident in a folder, written
//! atomically (a temporary file, then a rename). It is the sink of a first
//! run and of review mode.

use std::path::PathBuf;

use async_trait::async_trait;

use super::sink::{SinkError, TicketRef, TicketSink};
use super::TicketPayload;

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
            id: None,
            url: format!("file://{}", absolute.display()),
        }
    }

    /// Creates or replaces the incident's ticket file.
    fn write(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError> {
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

#[async_trait]
impl TicketSink for OutboxSink {
    fn system(&self) -> &'static str {
        "outbox"
    }

    async fn find(&self, incident_id: &str) -> Result<Option<TicketRef>, SinkError> {
        Ok(self.path(incident_id).exists().then(|| self.reference(incident_id)))
    }

    fn sent_payload(&self, ticket: &TicketRef) -> Option<TicketPayload> {
        self.read(&ticket.key)
    }

    async fn create(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError> {
        self.write(payload)
    }

    async fn update(&self, _ticket: &TicketRef, payload: &TicketPayload, _note: &str) -> Result<TicketRef, SinkError> {
        self.write(payload)
    }
}
