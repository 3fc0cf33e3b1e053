//! Cursor stores: where each polling source resumes. The cursors live on
//! the compacted `source-cursors` topic, keyed by `<source>:<key>`, so
//! reading the topic from its beginning to its end and keeping the last
//! record of each key gives every current cursor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::Codec;
use crate::config::KafkaConfig;
use crate::model::{Record, RecordKind, SourceCursor};
use crate::transport::kafka::client_config;
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
type CursorRecord = (i32, i64, Option<Vec<u8>>);

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

/// How long reading the cursor topic to its end may take.
const KAFKA_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
        let records = tokio::task::spawn_blocking(move || read_topic_to_end(&kafka, &topic))
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

fn kafka_error(operation: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> TransportError {
    move |e| TransportError::Kafka {
        operation,
        reason: e.to_string(),
    }
}

/// Returns the end offset of each partition of `topic` that has records.
fn end_offsets(consumer: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, i64>, TransportError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka_error("cursor topic metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TransportError::Kafka {
            operation: "read cursors",
            reason: format!("topic {topic} does not exist; create it with `blameless topology apply`"),
        });
    }
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(kafka_error("cursor topic watermarks"))?;
        if high > low {
            ends.insert(partition, high);
        }
    }
    Ok(ends)
}

/// Reads every record of `topic` from the beginning to the end offsets
/// found at the start, as (partition, offset, payload) in partition order.
fn read_topic_to_end(kafka: &KafkaConfig, topic: &str) -> Result<Vec<CursorRecord>, TransportError> {
    // The group id is required by librdkafka but unused: partitions are
    // assigned, not subscribed, and nothing is committed.
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", format!("{}-source-cursor-reader", kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka_error("cursor consumer create"))?;
    // A topic created moments ago may have no partition leader yet, so the
    // end offsets are retried until the deadline.
    let deadline = Instant::now() + KAFKA_READ_TIMEOUT;
    let mut ends = loop {
        match end_offsets(&consumer, topic) {
            Ok(ends) => break ends,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(topic, error = %error, "Cursor topic end offsets not available yet; retrying.");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error),
        }
    };
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(kafka_error("cursor topic assign"))?;
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(kafka_error("cursor topic assign"))?;

    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(TransportError::Kafka {
                operation: "read cursors",
                reason: format!(
                    "topic {topic} was not read to its end within {} s; check that the brokers are reachable",
                    KAFKA_READ_TIMEOUT.as_secs()
                ),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(result) => {
                let message = result.map_err(kafka_error("cursor topic poll"))?;
                let (partition, offset) = (message.partition(), message.offset());
                records.push((partition, offset, message.payload().map(<[u8]>::to_vec)));
                if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
                    ends.remove(&partition);
                }
            }
            // The end offset can lie past the last record a consumer receives,
            // after a transaction marker, so an idle partition whose
            // position reached the end is done too.
            None => {
                let positions = consumer.position().map_err(kafka_error("cursor topic position"))?;
                for element in positions.elements() {
                    if let (Offset::Offset(position), Some(end)) = (element.offset(), ends.get(&element.partition())) {
                        if position >= *end {
                            ends.remove(&element.partition());
                        }
                    }
                }
            }
        }
    }
    Ok(records)
}
