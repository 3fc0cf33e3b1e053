//! The Kafka transport: a consumer-group member with manual commits and an
//! idempotent producer that waits for every acknowledgement.
//!
//! The consumer merges its partitions by record timestamp, which the ingest
//! stage sets in the order it accepted the payloads and every stage carries
//! along. A record is released only once every assigned partition has a
//! record buffered, is at its end, or has stayed empty for `MERGE_MAX_IDLE`.
//! A backlog spread over partitions is so read in the order it arrived, not
//! partition by partition.
//!
//! Offsets are committed by `run_stage` after the batch's outputs are
//! acknowledged (`enable.auto.commit=false`). A rebalance is served only
//! inside `poll`, between batches, so no work is in flight for a revoked
//! partition and no offset of a partition the member no longer owns is
//! stored. A commit that fails (for example right after a rebalance) is
//! logged and not fatal: the records are delivered again, at least once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{InRecord, OutRecord, RecordSink, RecordSource, TransportError};
use crate::config::KafkaConfig;

/// Builds the client settings that every Blameless client shares.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (name, value) in &kafka.client_properties {
        config.set(name, value.expose());
    }
    let names: Vec<&String> = kafka.client_properties.keys().collect();
    if !names.is_empty() {
        tracing::debug!(properties = ?names, "Extra Kafka client properties set.");
    }
    config
}

fn kafka_error(operation: &'static str) -> impl Fn(KafkaError) -> TransportError {
    move |e| TransportError::Kafka {
        operation,
        reason: e.to_string(),
    }
}

/// Logs partition assignment changes of a stage's consumer, and collects
/// the revoked partitions for the stage.
pub struct StageContext {
    stage: &'static str,
    /// Partitions revoked since `KafkaSource::take_revoked` last took them.
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for StageContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news for the merge, not an error.
        if matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::trace!(stage = self.stage, reason, "Partition end reached.");
        } else {
            tracing::warn!(stage = self.stage, error = %error, reason, "Kafka client error.");
        }
    }
}

impl ConsumerContext for StageContext {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(
                stage = self.stage,
                partitions = offsets.count(),
                error = %error,
                "Offset commit failed; the records will be delivered again."
            );
        }
    }

    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(stage = self.stage, partitions = partitions.count(), "Partitions assigned.");
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(stage = self.stage, partitions = partitions.count(), "Partitions revoked.");
                let elements = partitions.elements();
                let revoked = elements.iter().map(|e| (e.topic().to_string(), e.partition()));
                // No code panics while it holds the lock, so a poisoned list
                // is still whole.
                self.revoked.lock().unwrap_or_else(|e| e.into_inner()).extend(revoked);
            }
            Rebalance::Error(error) => {
                tracing::warn!(stage = self.stage, error = %error, "Rebalance failed.");
            }
        }
    }
}

/// A member of the stage's consumer group on its input topic.
pub struct KafkaSource {
    consumer: StreamConsumer<StageContext>,
    topic: String,
    /// Records received but not yet released, by partition, in offset order.
    buffers: BTreeMap<i32, VecDeque<InRecord>>,
    /// Partitions whose last fetch reached their end, with the wall-clock time
    /// of that fetch in epoch milliseconds.
    at_end: BTreeMap<i32, i64>,
    /// Since when the merge has waited for an empty partition.
    waiting_since: Option<Instant>,
    /// High watermarks by partition, refreshed at most every
    /// `WATERMARK_REFRESH`, for the lag gauge.
    high_watermarks: Mutex<HashMap<(String, i32), (i64, Instant)>>,
    /// Done marks by partition (see `done_metadata`), read from the group's
    /// committed metadata when the partition's first record arrives.
    done_marks: HashMap<i32, i64>,
    /// Offset after the last record released, by partition.
    released: HashMap<i32, i64>,
    /// Caps of the next done marks, by partition (see `cap_done`).
    done_caps: HashMap<i32, i64>,
}

const WATERMARK_REFRESH: Duration = Duration::from_secs(10);

/// Maximum time the merge waits for a record of an empty partition before it
/// releases the other partitions' records anyway.
const MERGE_MAX_IDLE: Duration = Duration::from_secs(3);

/// How long after a record's timestamp an end-of-partition report must come
/// to show that the partition holds no earlier record: an allowance for the
/// producer's batching and the clocks of the hosts.
const END_MARGIN_MS: i64 = 1000;

impl KafkaSource {
    /// `max_processing_time` is the longest one batch may take (see
    /// `Stage::max_processing_time`); the consumer stays in its group that
    /// long without polling.
    pub fn new(
        kafka: &KafkaConfig,
        stage: &'static str,
        group: &str,
        topic: &str,
        max_processing_time: Option<Duration>,
    ) -> Result<KafkaSource, TransportError> {
        let mut config = client_config(kafka);
        if let Some(limit) = max_processing_time {
            config.set("max.poll.interval.ms", limit.as_millis().min(i32::MAX as u128).to_string());
        }
        let consumer: StreamConsumer<StageContext> = config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // End-of-partition events tell the merge that an empty partition
            // has nothing to wait for.
            .set("enable.partition.eof", "true")
            // Small fetches per partition keep partitions interleaved.
            .set("max.partition.fetch.bytes", "65536")
            .create_with_context(StageContext {
                stage,
                revoked: Mutex::new(Vec::new()),
            })
            .map_err(kafka_error("consumer create"))?;
        consumer.subscribe(&[topic]).map_err(kafka_error("subscribe"))?;
        Ok(KafkaSource {
            consumer,
            topic: topic.to_string(),
            buffers: BTreeMap::new(),
            at_end: BTreeMap::new(),
            waiting_since: None,
            high_watermarks: Mutex::new(HashMap::new()),
            done_marks: HashMap::new(),
            released: HashMap::new(),
            done_caps: HashMap::new(),
        })
    }
}

fn to_in_record(message: &rdkafka::message::BorrowedMessage<'_>) -> InRecord {
    InRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis(),
        replay: false,
    }
}

impl KafkaSource {
    fn assigned_partitions(&self) -> BTreeSet<i32> {
        self.consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .filter(|element| element.topic() == self.topic)
                    .map(|element| element.partition())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn buffer(&mut self, record: InRecord) {
        self.at_end.remove(&record.partition);
        let buffer = self.buffers.entry(record.partition).or_default();
        // A partition revoked and assigned again starts over from its
        // committed offset: the records buffered from there on come again.
        if buffer.back().is_some_and(|last| last.offset >= record.offset) {
            buffer.retain(|buffered| buffered.offset < record.offset);
            self.done_marks.remove(&record.partition);
        }
        let partition = record.partition;
        buffer.push_back(record);
        if !self.done_marks.contains_key(&partition) {
            let mark = self.committed_done_mark(partition);
            self.done_marks.insert(partition, mark);
        }
    }

    /// Reads the done mark that the group committed for `partition`, or 0
    /// when there is none (a new group, or a commit from an older version).
    fn committed_done_mark(&self, partition: i32) -> i64 {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        match self.consumer.committed_offsets(list, Duration::from_secs(10)) {
            Ok(committed) => committed
                .find_partition(&self.topic, partition)
                .and_then(|element| super::parse_done_metadata(element.metadata()))
                .unwrap_or(0),
            Err(error) => {
                // Without the mark, records are processed as new: at least
                // once, as before marks existed.
                tracing::warn!(topic = %self.topic, partition, error = %error, "Failed to read the committed done mark, so records read again will be sent again.");
                0
            }
        }
    }

    /// Moves buffered records to `batch` in timestamp order, as long as no
    /// assigned partition may still deliver an earlier one. An empty
    /// partition may, unless it reported its end after the record's time.
    fn release(&mut self, batch: &mut Vec<InRecord>, max: usize, assigned: &BTreeSet<i32>) {
        self.buffers.retain(|partition, _| assigned.contains(partition));
        while batch.len() < max {
            let next = self
                .buffers
                .iter()
                .filter_map(|(partition, buffer)| buffer.front().map(|r| (r.timestamp_ms.unwrap_or(i64::MIN), *partition)))
                .min();
            let Some((timestamp, partition)) = next else { return };
            let waiting = assigned.iter().any(|other| {
                let empty = self.buffers.get(other).is_none_or(VecDeque::is_empty);
                let ended_after = self
                    .at_end
                    .get(other)
                    .is_some_and(|end_ms| *end_ms >= timestamp.saturating_add(END_MARGIN_MS));
                empty && !ended_after
            });
            if waiting {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() < MERGE_MAX_IDLE {
                    return;
                }
            } else {
                self.waiting_since = None;
            }
            if let Some(mut record) = self.buffers.get_mut(&partition).and_then(VecDeque::pop_front) {
                record.replay = record.offset < self.done_marks.get(&partition).copied().unwrap_or(0);
                self.released.insert(partition, record.offset + 1);
                batch.push(record);
            }
        }
    }
}

#[async_trait]
impl RecordSource for KafkaSource {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InRecord>, TransportError> {
        let mut batch = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let assigned = self.assigned_partitions();
            self.release(&mut batch, max, &assigned);
            if batch.len() >= max {
                break;
            }
            // Cancel safe: a message that `recv` has not returned stays in
            // the consumer's queue.
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    let record = to_in_record(&message);
                    self.buffer(record);
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    self.at_end.insert(partition, super::now_ms());
                }
                Ok(Err(error)) => {
                    tracing::warn!(topic = %self.topic, error = %error, "Kafka consumer error.");
                    break;
                }
                Err(_) => break,
            }
        }
        // A rebalance inside `recv` may have revoked partitions whose records
        // were already released: their new owner reads them again from the
        // committed offset, so this member neither processes nor commits them.
        let assigned = self.assigned_partitions();
        batch.retain(|record| assigned.contains(&record.partition));
        self.done_marks.retain(|partition, _| assigned.contains(partition));
        self.released.retain(|partition, _| assigned.contains(partition));
        self.done_caps.retain(|partition, _| assigned.contains(partition));
        Ok(batch)
    }

    async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), TransportError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition, next) in positions {
            // Every released record was processed and its outputs
            // acknowledged, because `run_stage` commits after each batch.
            let released = self.released.get(partition).copied().unwrap_or(*next);
            let reached = self.done_caps.get(partition).map_or(released, |cap| released.min(*cap));
            let done = self.done_marks.get(partition).copied().unwrap_or(0).max(reached);
            self.done_marks.insert(*partition, done);
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(kafka_error("commit"))?;
            if let Some(mut element) = list.find_partition(topic, *partition) {
                element.set_metadata(super::done_metadata(done));
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(topic = %self.topic, error = %error, "Commit failed; the records will be delivered again.");
        }
        Ok(())
    }

    fn caught_up(&self) -> bool {
        let Ok(assignment) = self.consumer.assignment() else {
            return false;
        };
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        assignment.elements().iter().all(|element| {
            let high = self
                .consumer
                .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(5))
                .map(|(_, high)| high)
                .unwrap_or(i64::MAX);
            let position = positions
                .find_partition(element.topic(), element.partition())
                .and_then(|p| p.offset().to_raw())
                .unwrap_or(0);
            position >= high || high == 0
        })
    }

    fn lag(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let mut cache = self.high_watermarks.lock().ok()?;
        let key = (topic.to_string(), partition);
        let fresh = cache.get(&key).filter(|(_, at)| at.elapsed() < WATERMARK_REFRESH).map(|(high, _)| *high);
        let high = match fresh {
            Some(high) => high,
            None => {
                let (_, high) = self.consumer.fetch_watermarks(topic, partition, Duration::from_secs(1)).ok()?;
                cache.insert(key, (high, Instant::now()));
                high
            }
        };
        Some((high - offset - 1).max(0))
    }

    fn cap_done(&mut self, _topic: &str, partition: i32, cap: Option<i64>) {
        match cap {
            Some(cap) => self.done_caps.insert(partition, cap),
            None => self.done_caps.remove(&partition),
        };
    }

    fn take_revoked(&mut self) -> Vec<(String, i32)> {
        let mut revoked = self.consumer.context().revoked.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *revoked)
    }
}

/// An idempotent producer (`acks=all`).
pub struct KafkaSink {
    producer: FutureProducer,
}

impl KafkaSink {
    pub fn new(kafka: &KafkaConfig) -> Result<KafkaSink, TransportError> {
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // Small batches keep a backlog finely interleaved across
            // partitions, since a fetch returns whole batches.
            .set("batch.size", "65536")
            .set("message.timeout.ms", "120000")
            // murmur2 matches the Java client's partitioner and the
            // in-memory log, so a key lands in the same partition everywhere.
            .set("partitioner", "murmur2_random")
            .create()
            .map_err(kafka_error("producer create"))?;
        Ok(KafkaSink { producer })
    }
}

#[async_trait]
impl RecordSink for KafkaSink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), TransportError> {
        let deliveries = records.iter().map(|record| {
            let mut message = FutureRecord::to(&record.topic)
                .key(record.key.as_bytes())
                .payload(&record.payload);
            if let Some(timestamp) = record.timestamp_ms {
                message = message.timestamp(timestamp);
            }
            self.producer.send(message, Timeout::Never)
        });
        for result in join_all(deliveries).await {
            if let Err((error, _)) = result {
                return Err(TransportError::Kafka {
                    operation: "produce",
                    reason: error.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// State of one topic as `topology apply` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Created,
    Matches,
    Drifted(Vec<String>),
}

/// Creates the missing topics of the topology and reports how existing ones
/// differ from it. Idempotent.
pub async fn apply_topology(
    kafka: &KafkaConfig,
    topology: &crate::topology::Topology,
    prefix: &str,
) -> Result<Vec<(String, TopicState)>, TransportError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .map_err(kafka_error("admin create"))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(kafka_error("metadata"))?;

    let mut report = Vec::new();
    let mut missing = Vec::new();
    for spec in &topology.topics {
        let name = format!("{prefix}{}", spec.name);
        match metadata.topics().iter().find(|t| t.name() == name) {
            Some(existing) => {
                let mut drift = Vec::new();
                if existing.partitions().len() as i32 != spec.partitions {
                    drift.push(format!("partitions: cluster has {}, topology says {}", existing.partitions().len(), spec.partitions));
                }
                drift.extend(config_drift(&admin, &name, spec).await?);
                let state = if drift.is_empty() { TopicState::Matches } else { TopicState::Drifted(drift) };
                report.push((name, state));
            }
            None => missing.push((name, spec)),
        }
    }

    if !missing.is_empty() {
        let configs: Vec<Vec<(&str, String)>> = missing.iter().map(|(_, spec)| spec.configs()).collect();
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .zip(&configs)
            .map(|((name, spec), configs)| {
                let mut topic = NewTopic::new(name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
                for (key, value) in configs {
                    topic = topic.set(key, value);
                }
                topic
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics(&new_topics, &options).await.map_err(kafka_error("create topics"))?;
        for result in results {
            match result {
                Ok(name) => report.push((name, TopicState::Created)),
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => report.push((name, TopicState::Matches)),
                Err((name, code)) => {
                    return Err(TransportError::Kafka {
                        operation: "create topics",
                        reason: format!("topic {name}: {code}"),
                    })
                }
            }
        }
    }
    report.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(report)
}

async fn config_drift(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    spec: &crate::topology::TopicSpec,
) -> Result<Vec<String>, TransportError> {
    let resource = rdkafka::admin::ResourceSpecifier::Topic(name);
    let results = admin
        .describe_configs([&resource], &AdminOptions::new())
        .await
        .map_err(kafka_error("describe configs"))?;
    let mut drift = Vec::new();
    for result in results {
        let Ok(resource) = result else { continue };
        for (key, wanted) in spec.configs() {
            let actual = resource.get(key).and_then(|entry| entry.value.clone()).unwrap_or_default();
            if actual != wanted {
                drift.push(format!("{key}: cluster has {actual:?}, topology says {wanted:?}"));
            }
        }
    }
    Ok(drift)
}

/// A record of a state topic as read: partition, offset and payload (none
/// for a tombstone).
pub type TopicRecord = (i32, i64, Option<Vec<u8>>);

/// How long reading a state topic to its end may take.
const KAFKA_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the end offset of each partition of `topic` that has records.
fn topic_end_offsets(consumer: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, i64>, TransportError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka_error("topic metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TransportError::Kafka {
            operation: "read topic",
            reason: format!("topic {topic} does not exist; create it with `blameless topology apply`"),
        });
    }
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(kafka_error("topic watermarks"))?;
        if high > low {
            ends.insert(partition, high);
        }
    }
    Ok(ends)
}

/// Reads every record of `topic` from the beginning to the end offsets
/// found at the start, as (partition, offset, payload) in partition order:
/// the state kept on a compacted topic, such as source cursors or the
/// ticket ledger. `reader` names the reader in its unused group id. It
/// commits nothing.
pub fn read_topic_to_end(kafka: &KafkaConfig, topic: &str, reader: &str) -> Result<Vec<TopicRecord>, TransportError> {
    // The group id is required by librdkafka but unused: partitions are
    // assigned, not subscribed, and nothing is committed.
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", format!("{}-{reader}-reader", kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka_error("reader create"))?;
    // A topic created moments ago may have no partition leader yet, so the
    // end offsets are retried until the deadline.
    let deadline = Instant::now() + KAFKA_READ_TIMEOUT;
    let mut ends = loop {
        match topic_end_offsets(&consumer, topic) {
            Ok(ends) => break ends,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(topic, error = %error, "Topic end offsets not available yet; retrying.");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error),
        }
    };
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(kafka_error("topic assign"))?;
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(kafka_error("topic assign"))?;

    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(TransportError::Kafka {
                operation: "read topic",
                reason: format!(
                    "topic {topic} was not read to its end within {} s; check that the brokers are reachable",
                    KAFKA_READ_TIMEOUT.as_secs()
                ),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(result) => {
                let message = result.map_err(kafka_error("topic poll"))?;
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
                let positions = consumer.position().map_err(kafka_error("topic position"))?;
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
