//! Cursor stores: where each polling source resumes. The cursors live on
//! the compacted `source-cursors` topic, keyed by `<source>:<key>`, so
//! reading the topic from its beginning to its end and keeping the last
//! record of each key gives every current cursor.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::codec::Codec;
use crate::config::KafkaConfig;
use crate::model::{Record, RecordKind, SourceCursor};
use crate::transport::kafka::{read_topic_to_end, TopicRecord};
use crate::transport::memory::MemoryLog;
use crate::transport::{decode_record, OutRecord, RecordSink, TransportError};

/// Returns the record key of a cursor, such as `nice:318204`.
pub fn cursor_key(source: &str, key: &str) -> String {
    format!("{source}:{key}")
}

/// Reads and writes the cursors of polling sources.
#[async_trait]
pub trait CursorStore: Send + Sync {
    /// Returns the current cursor of every key, by record key.
    async fn read_all(&self) -> Result<BTreeMap<String, SourceCursor>, TransportError>;

    /// Writes one cursor and returns once the broker acknowledged it.
    async fn write(&self, cursor: &SourceCursor) -> Result<(), TransportError>;
}

async fn encode_cursor(codec: &Codec, topic: &str, cursor: &SourceCursor) -> Result<OutRecord, TransportError> {
    let payload = codec
        .encode(topic, &Record::Cursor(cursor.clone()))
        .await
        .map_err(|source| TransportError::Encode { stage: "source", source })?;
    Ok(OutRecord {
        topic: topic.to_string(),
        key: cursor_key(&cursor.source, &cursor.key),
        payload,
        timestamp_ms: Some(cursor.updated_at_ms),
    })
}

/// A cursor record as read: partition, offset and payload (none for a
/// tombstone).
type CursorRecord = TopicRecord;

/// Decodes cursor records in log order into the last cursor of each key. A
/// record that does not decode stops the read: resuming from an older
/// cursor would be silently wrong.
async fn decode_cursors(
    codec: &Codec,
    topic: &str,
    records: impl IntoIterator<Item = CursorRecord>,
) -> Result<BTreeMap<String, SourceCursor>, TransportError> {
    let mut cursors = BTreeMap::new();
    for (partition, offset, payload) in records {
        // A record without a payload is a tombstone: it deletes nothing the
        // poller needs, because keys are never reused for another source.
        let Some(payload) = payload else { continue };
        match decode_record(codec, RecordKind::Cursor, &payload).await {
            Ok(Record::Cursor(cursor)) => {
                cursors.insert(cursor_key(&cursor.source, &cursor.key), cursor);
            }
            Ok(_) => unreachable!("decode_record returns the requested kind"),
            Err(error) => {
                return Err(TransportError::Stage {
                    stage: "source",
                    reason: format!(
                        "cursor record at {topic}/{partition}/{offset} does not decode ({error}); remove it or fix the producer before restarting the poller"
                    ),
                })
            }
        }
    }
    Ok(cursors)
}

/// Cursors on a topic of the in-memory log, for tests and embedded runs.
pub struct MemoryCursorStore {
    log: Arc<MemoryLog>,
    codec: Codec,
    topic: String,
}

impl MemoryCursorStore {
    /// Creates the store on `topic` of `log`, creating the topic with one
    /// partition when it is missing.
    pub fn new(log: Arc<MemoryLog>, codec: Codec, topic: &str) -> MemoryCursorStore {
        log.create_topic(topic, 1);
        MemoryCursorStore {
            log,
            codec,
            topic: topic.to_string(),
        }
    }
}

#[async_trait]
impl CursorStore for MemoryCursorStore {
    async fn read_all(&self) -> Result<BTreeMap<String, SourceCursor>, TransportError> {
        let records = self
            .log
            .records(&self.topic)
            .into_iter()
            .map(|record| (record.partition, record.offset, record.payload));
        decode_cursors(&self.codec, &self.topic, records).await
    }

    async fn write(&self, cursor: &SourceCursor) -> Result<(), TransportError> {
        let record = encode_cursor(&self.codec, &self.topic, cursor).await?;
        self.log.append_at(&self.topic, &record.key, record.payload, record.timestamp_ms)?;
        Ok(())
    }
}

/// Cursors on a compacted Kafka topic. Writes go through the idempotent
/// producer (`acks=all`). Reads assign every partition of the topic from its
/// beginning, commit nothing, and stop at the end offsets taken when the
/// read started.
pub struct KafkaCursorStore {
    kafka: KafkaConfig,
    sink: Arc<dyn RecordSink>,
    codec: Codec,
    topic: String,
}

impl KafkaCursorStore {
    pub fn new(kafka: &KafkaConfig, sink: Arc<dyn RecordSink>, codec: Codec, topic: String) -> KafkaCursorStore {
        KafkaCursorStore {
            kafka: kafka.clone(),
            sink,
            codec,
            topic,
        }
    }
}

#[async_trait]
impl CursorStore for KafkaCursorStore {
    async fn read_all(&self) -> Result<BTreeMap<String, SourceCursor>, TransportError> {
        let kafka = self.kafka.clone();
        let topic = self.topic.clone();
        let records = tokio::task::spawn_blocking(move || read_topic_to_end(&kafka, &topic, "source-cursor"))
            .await
            .map_err(|e| TransportError::Kafka {
                operation: "read cursors",
                reason: e.to_string(),
            })??;
        decode_cursors(&self.codec, &self.topic, records).await
    }

    async fn write(&self, cursor: &SourceCursor) -> Result<(), TransportError> {
        let record = encode_cursor(&self.codec, &self.topic, cursor).await?;
        self.sink.send(vec![record]).await
    }
}
