//! Normalize: reads `raw-events`, writes one `normalized` record per
//! meaningful event, keyed by affected service. A payload it cannot
//! understand goes to `dead-letter` with the reason and a scrubbed copy; the
//! original stays on `raw-events`. At-least-once: offsets are committed after
//! the outputs are acknowledged.

use async_trait::async_trait;

use crate::model::{Record, RecordKind};
use crate::sources;
use crate::topology::NORMALIZED;
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

#[derive(Default)]
pub struct NormalizeStage;

impl NormalizeStage {
    pub fn normalize_record(record: &Record) -> Outcome {
        let Record::Raw(raw) = record else {
            return Err(Reject::new("normalize reads raw events only"));
        };
        match sources::normalize(raw) {
            Ok(events) => Ok(events
                .into_iter()
                .map(|event| Emit {
                    topic: NORMALIZED,
                    key: event.affected_service.clone(),
                    record: Record::Normalized(event),
                })
                .collect()),
            Err(reason) => Err(Reject::with_payload(
                format!("{} payload rejected: {reason}", raw.source),
                raw.payload.clone(),
            )),
        }
    }
}

#[async_trait]
impl Stage for NormalizeStage {
    fn name(&self) -> &'static str {
        "normalize"
    }

    fn input_kind(&self) -> RecordKind {
        RecordKind::Raw
    }

    fn input_has_personal_data(&self) -> bool {
        true
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        Ok(batch.iter().map(|d| Self::normalize_record(&d.record)).collect())
    }
}
