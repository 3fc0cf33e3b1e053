//! The one way payloads enter `raw-events`: the ingest command, the HTTP
//! receiver, the Genesys Notification API client and the NICE poller all
//! hand their payloads to a [`Publisher`]. It checks the size limit, builds
//! the raw event and stamps it with an accept time. It returns only once the
//! broker acknowledged every record, so a caller may then acknowledge its own
//! sender (an HTTP 2xx, a cursor commit).

use std::sync::{Arc, Mutex};

use crate::codec::Codec;
use crate::metrics::StageMetrics;
use crate::model::{DeadLetter, Record};
use crate::stages::ingest::{self, Delivered};
use crate::topology;
use crate::transport::{now_ms, OutRecord, RecordSink, TopicNames, TransportError};

/// Records per send: large inputs go out in chunks of this size.
const CHUNK: usize = 500;

/// Outcome of a published batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Payloads written to `raw-events`.
    pub accepted: u64,
    /// Reasons of the payloads sent to `dead-letter` instead (oversized).
    pub rejected: Vec<String>,
}

/// Writes delivered payloads to `raw-events`. Cheap to share behind an `Arc`
/// between concurrent receivers.
pub struct Publisher {
    sink: Arc<dyn RecordSink>,
    codec: Codec,
    topics: TopicNames,
    metrics: StageMetrics,
    max_payload_bytes: usize,
    clock: Mutex<AcceptClock>,
}

impl Publisher {
    pub fn new(
        sink: Arc<dyn RecordSink>,
        codec: Codec,
        topics: TopicNames,
        metrics: StageMetrics,
        max_payload_bytes: usize,
    ) -> Publisher {
        Publisher {
            sink,
            codec,
            topics,
            metrics,
            max_payload_bytes,
            clock: Mutex::new(AcceptClock::default()),
        }
    }

    /// Returns the size limit of one payload, `ingest.max_payload_bytes`.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Writes each payload to `raw-events`, or to `dead-letter` (without its
    /// bytes, with a reason naming its origin) when it is above the size
    /// limit, and returns once the broker acknowledged every record.
    pub async fn publish(&self, delivered: &[Delivered]) -> Result<Published, TransportError> {
        let topic = self.topics.physical(topology::RAW_EVENTS);
        let dead_letter_topic = self.topics.physical(topology::DEAD_LETTER);
        let received_at = now_ms();
        let mut published = Published::default();
        for chunk in delivered.chunks(CHUNK) {
            let mut out = Vec::with_capacity(chunk.len());
            let mut rejected = Vec::new();
            for item in chunk {
                let (topic, key, record) = match ingest::check_size(item, self.max_payload_bytes) {
                    Err(reason) => {
                        tracing::warn!(stage = "ingest", origin = %item.origin, reason = %reason, "Payload rejected to the dead-letter topic.");
                        let letter = Record::DeadLetter(DeadLetter {
                            stage: "ingest".into(),
                            source_topic: item.origin.clone(),
                            source_partition: -1,
                            source_offset: -1,
                            reason: reason.clone(),
                            failed_at_ms: now_ms(),
                            payload: Vec::new(),
                            payload_scrubbed: true,
                        });
                        rejected.push(reason);
                        (&dead_letter_topic, item.origin.clone(), letter)
                    }
                    Ok(()) => {
                        let (key, raw) = ingest::to_raw_event(item, received_at);
                        (&topic, key, Record::Raw(raw))
                    }
                };
                let payload = self.codec.encode(topic, &record).await.map_err(|source| TransportError::Encode {
                    stage: "ingest",
                    source,
                })?;
                out.push(OutRecord {
                    topic: topic.clone(),
                    key,
                    payload,
                    timestamp_ms: None,
                });
            }
            // Stamped together, so payloads of one batch keep their order
            // whatever other receivers publish meanwhile.
            {
                let mut clock = self.clock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                for record in &mut out {
                    record.timestamp_ms = Some(clock.next_timestamp());
                }
            }
            self.metrics.records_in.inc_by(chunk.len() as u64);
            self.sink.send(out).await?;
            self.metrics.records_out.inc_by((chunk.len() - rejected.len()) as u64);
            self.metrics.dead_letters.inc_by(rejected.len() as u64);
            published.accepted += (chunk.len() - rejected.len()) as u64;
            published.rejected.extend(rejected);
        }
        Ok(published)
    }
}

/// Record timestamps of accepted payloads: the wall clock, but strictly
/// increasing, so payloads read from a file in one millisecond keep their
/// order. Stages read their input partitions merged by these timestamps.
#[derive(Default)]
pub struct AcceptClock {
    last_ms: i64,
}

impl AcceptClock {
    /// Returns the next timestamp, later than every one before.
    pub fn next_timestamp(&mut self) -> i64 {
        self.last_ms = now_ms().max(self.last_ms + 1);
        self.last_ms
    }
}
