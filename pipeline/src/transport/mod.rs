//! The stage contract, and the two transports that drive it.
//!
//! A stage is record logic behind the [`Stage`] trait. [`run_stage`] is the
//! loop every stage shares: poll a batch from the input topic, decode it, run
//! the stage, encode and send every output and dead letter, wait until each is
//! acknowledged, and only then commit the input offsets. A crash anywhere in
//! the loop therefore loses nothing: the uncommitted batch is read again on
//! restart (at-least-once delivery; later stages are idempotent).
//!
//! [`memory`] is the in-memory partitioned log of the embedded mode and the
//! unit tests; [`kafka`] drives the same loop against Apache Kafka.

pub mod kafka;
pub mod memory;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::codec::{Codec, CodecError};
use crate::metrics::StageMetrics;
use crate::model::{DeadLetter, Record, RecordKind};
use crate::scrub;

/// A record read from a topic.
#[derive(Debug, Clone)]
pub struct InRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The record timestamp, in epoch milliseconds: the order in which the
    /// ingest stage accepted the payload, carried along by every stage.
    pub timestamp_ms: Option<i64>,
    /// Whether the group already processed this record and sent its outputs
    /// before a restart. A commit floor makes the stage read such records
    /// again to rebuild its state, and their outputs are not sent twice.
    pub replay: bool,
}

/// Commit metadata that records the offset after the last record whose
/// outputs were acknowledged: `done=<offset>`. The committed offset may be
/// lower, held back by a commit floor.
pub fn done_metadata(done_until: i64) -> String {
    format!("done={done_until}")
}

/// Reads [`done_metadata`]. Any other text, such as another client's
/// metadata, gives `None`.
pub fn parse_done_metadata(metadata: &str) -> Option<i64> {
    metadata.strip_prefix("done=")?.parse().ok()
}

/// A record to write, already encoded.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// The record timestamp in epoch milliseconds; the transport's clock when
    /// absent.
    pub timestamp_ms: Option<i64>,
}

/// Source position of a decoded input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A decoded input record.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub position: Position,
    pub record: Record,
    /// The input record's timestamp, in epoch milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Whether the record is read again after a restart (see
    /// [`InRecord::replay`]): its outputs are not sent.
    pub replay: bool,
}

/// An output of a stage, addressed by the topology's topic name.
#[derive(Debug, Clone)]
pub struct Emit {
    pub topic: &'static str,
    pub key: String,
    pub record: Record,
}

/// Reason a stage rejected a record. It goes to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Reject {
    pub reason: String,
    /// The bytes to keep with the dead letter when they are more useful than
    /// the encoded input record, such as the platform payload inside a raw
    /// event.
    pub payload: Option<Vec<u8>>,
}

impl Reject {
    pub fn new(reason: impl Into<String>) -> Reject {
        Reject {
            reason: reason.into(),
            payload: None,
        }
    }

    pub fn with_payload(reason: impl Into<String>, payload: Vec<u8>) -> Reject {
        Reject {
            reason: reason.into(),
            payload: Some(payload),
        }
    }
}

pub type Outcome = Result<Vec<Emit>, Reject>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("Kafka {operation} failed: {reason}")]
    Kafka { operation: &'static str, reason: String },
    #[error("Could not encode an output of the {stage} stage: {source}")]
    Encode { stage: &'static str, source: CodecError },
    #[error("The {stage} stage failed: {reason}")]
    Stage { stage: &'static str, reason: String },
}

/// Record logic of one stage. It does not depend on Kafka.
#[async_trait]
pub trait Stage: Send {
    /// Returns the stage name: ingest, normalize, mask, window, ticket or archive.
    fn name(&self) -> &'static str;

    /// Returns the schema of the input topic.
    fn input_kind(&self) -> RecordKind;

    /// Whether the input carries personal data, so dead letters must keep a
    /// scrubbed copy of the payload instead of the original.
    fn input_has_personal_data(&self) -> bool {
        false
    }

    /// Handles a batch in offset order; one outcome per input, same order.
    /// An error stops the stage without committing the batch; use it only for
    /// a failing external system, never for a bad record.
    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError>;

    /// Called on the wall-clock tick so time can move without records.
    async fn tick(&mut self, _now_ms: i64) -> Result<Vec<Emit>, TransportError> {
        Ok(Vec::new())
    }

    /// Called once when a finite input is exhausted (embedded mode).
    async fn finish(&mut self) -> Result<Vec<Emit>, TransportError> {
        Ok(Vec::new())
    }

    /// Returns the lowest offset of `partition` the stage still needs after a
    /// restart: commits never pass it. `None` when every processed record is
    /// done with.
    fn commit_floor(&self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    /// Tells the stage that another group member now owns `partitions` of
    /// `topic`, so it can send what it still holds for them and drop their
    /// state. The new owner rebuilds that state from the commit floor.
    /// Returns the lowest offset of `partition` whose outputs the stage has
    /// not sent yet, such as a record it holds back: the done mark of a
    /// commit stays below it, so a restart processes that record as new.
    /// `None` when every processed record's outputs are sent.
    fn done_floor(&self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    fn partitions_revoked(&mut self, _topic: &str, _partitions: &[i32]) {}

    /// Returns the maximum time one `process` call may take, for a stage
    /// that waits out an external system. The Kafka consumer stays in its
    /// group that long. `None` keeps the consumer's default of five minutes.
    fn max_processing_time(&self) -> Option<Duration> {
        None
    }

    /// Returns a compacted topic, and the kind of its records, that the stage reads
    /// to its end before its first batch, such as the ticket ledger.
    fn restore_topic(&self) -> Option<(&'static str, RecordKind)> {
        None
    }

    /// Receives the records of [`Stage::restore_topic`] in log order.
    fn restore(&mut self, _records: Vec<Record>) {}
}

/// The input side of a transport.
#[async_trait]
pub trait RecordSource: Send {
    /// Waits up to `wait` for records; returns at most `max`.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InRecord>, TransportError>;

    /// Commits the next offset to read for each (topic, partition).
    async fn commit(&mut self, positions: &[(String, i32, i64)]) -> Result<(), TransportError>;

    /// Keeps the done mark of the next commit of `partition` at or below
    /// `cap` (see [`Stage::done_floor`]). `None` lifts the cap.
    fn cap_done(&mut self, _topic: &str, _partition: i32, _cap: Option<i64>) {}

    /// Returns whether every record that exists now was read (a finite input is done).
    fn caught_up(&self) -> bool;

    /// Records behind the end of `partition` after `offset`.
    fn lag(&self, topic: &str, partition: i32, offset: i64) -> Option<i64>;

    /// Returns the partitions revoked from this member since the last call,
    /// by topic.
    fn take_revoked(&mut self) -> Vec<(String, i32)> {
        Vec::new()
    }
}

/// The output side of a transport.
#[async_trait]
pub trait RecordSink: Send + Sync {
    /// Writes the records and returns once every one is acknowledged.
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), TransportError>;
}

/// Maps the topology's topic names to the names on the cluster.
#[derive(Debug, Clone, Default)]
pub struct TopicNames {
    pub prefix: String,
}

impl TopicNames {
    pub fn physical(&self, topic: &str) -> String {
        format!("{}{}", self.prefix, topic)
    }
}

/// Settings and services of a stage run, besides its transport.
pub struct StageRuntime {
    pub codec: Codec,
    pub topics: TopicNames,
    pub metrics: StageMetrics,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
    pub tick: Duration,
}

/// End condition of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunUntil {
    /// Until the input is caught up, then call `finish` (embedded mode).
    Drained,
    /// Until the shutdown signal fires.
    Shutdown,
}

/// Counts of one stage run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub records_in: u64,
    pub records_out: u64,
    pub dead_letters: u64,
    pub reasons: Vec<String>,
}

/// Runs a stage over a transport: the loop of the stage contract.
pub async fn run_stage(
    stage: &mut dyn Stage,
    source: &mut dyn RecordSource,
    sink: &dyn RecordSink,
    runtime: &StageRuntime,
    until: RunUntil,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<RunReport, TransportError> {
    let mut report = RunReport::default();
    let mut last_tick = Instant::now();
    loop {
        if *shutdown.borrow() {
            tracing::info!(stage = stage.name(), "Stage stopping on shutdown.");
            break;
        }
        let batch = tokio::select! {
            polled = source.poll(runtime.batch_max_records, runtime.batch_max_wait) => polled?,
            _ = shutdown.changed() => continue,
        };
        let revoked = source.take_revoked();
        if !revoked.is_empty() {
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in revoked {
                by_topic.entry(topic).or_default().push(partition);
            }
            for (topic, partitions) in by_topic {
                tracing::info!(stage = stage.name(), topic = %topic, partitions = ?partitions, "Partitions revoked; passing them to the stage.");
                stage.partitions_revoked(&topic, &partitions);
            }
        }
        if last_tick.elapsed() >= runtime.tick {
            last_tick = Instant::now();
            let emits = stage.tick(now_ms()).await?;
            report.records_out += send_emits(stage, sink, runtime, emits).await?;
        }
        if batch.is_empty() {
            if until == RunUntil::Drained && source.caught_up() {
                let emits = stage.finish().await?;
                report.records_out += send_emits(stage, sink, runtime, emits).await?;
                break;
            }
            continue;
        }
        // A stage that waits out an external system must still stop on a
        // signal. Nothing of an unfinished batch is committed, so it is
        // read again on restart.
        tokio::select! {
            processed = process_batch(stage, source, sink, runtime, batch, &mut report) => processed?,
            _ = shutdown.changed() => {
                tracing::info!(stage = stage.name(), "Stage stopping on shutdown; the unfinished batch is read again on restart.");
                break;
            }
        }
    }
    Ok(report)
}

async fn process_batch(
    stage: &mut dyn Stage,
    source: &mut dyn RecordSource,
    sink: &dyn RecordSink,
    runtime: &StageRuntime,
    batch: Vec<InRecord>,
    report: &mut RunReport,
) -> Result<(), TransportError> {
    let started = Instant::now();
    let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut out = Vec::new();
    let mut decoded = Vec::with_capacity(batch.len());
    let mut originals = Vec::with_capacity(batch.len());
    let mut timestamps = Vec::with_capacity(batch.len());
    let mut replays = Vec::with_capacity(batch.len());

    for record in &batch {
        next_offsets.insert((record.topic.clone(), record.partition), record.offset + 1);
        let position = Position {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        let payload = record.payload.as_deref().unwrap_or_default();
        match decode_record(&runtime.codec, stage.input_kind(), payload).await {
            Ok(input) => {
                decoded.push(Decoded {
                    position,
                    record: input,
                    timestamp_ms: record.timestamp_ms,
                    replay: record.replay,
                });
                originals.push(payload.to_vec());
                timestamps.push(record.timestamp_ms);
                replays.push(record.replay);
            }
            // A replayed record that does not decode was dead-lettered before.
            Err(_) if record.replay => {}
            Err(error) => {
                let reject = Reject::new(error.to_string());
                let mut letter = dead_letter(stage, runtime, &position, payload, reject).await?;
                letter.timestamp_ms = record.timestamp_ms;
                out.push(letter);
                report.dead_letters += 1;
            }
        }
    }
    runtime.metrics.records_in.inc_by(batch.len() as u64);
    report.records_in += batch.len() as u64;

    let positions: Vec<Position> = decoded.iter().map(|d| d.position.clone()).collect();
    let outcomes = stage.process(decoded).await?;
    let inputs = positions.into_iter().zip(originals).zip(timestamps).zip(replays);
    let mut replayed = 0u64;
    for (outcome, (((position, original), timestamp_ms), replay)) in outcomes.into_iter().zip(inputs) {
        if replay {
            // Its outputs and dead letters were acknowledged before the
            // restart: the stage read it only to rebuild its state.
            replayed += 1;
            continue;
        }
        match outcome {
            Ok(emits) => {
                for emit in emits {
                    let mut record = encode_emit(stage, runtime, emit).await?;
                    record.timestamp_ms = timestamp_ms;
                    out.push(record);
                    report.records_out += 1;
                }
            }
            Err(reject) => {
                let reason = if stage.input_has_personal_data() {
                    scrub::scrub_text(&reject.reason)
                } else {
                    reject.reason.clone()
                };
                tracing::warn!(
                    stage = stage.name(),
                    topic = %position.topic,
                    partition = position.partition,
                    offset = position.offset,
                    reason = %reason,
                    "Record rejected to the dead-letter topic."
                );
                report.reasons.push(reason);
                let mut letter = dead_letter(stage, runtime, &position, &original, reject).await?;
                letter.timestamp_ms = timestamp_ms;
                out.push(letter);
                report.dead_letters += 1;
            }
        }
    }

    let dead_letters = out
        .iter()
        .filter(|r| r.topic == runtime.topics.physical(crate::topology::DEAD_LETTER))
        .count();
    let produced = out.len();
    sink.send(out).await?;
    // Outputs acknowledged, input offsets not yet committed.
    #[cfg(feature = "failpoints")]
    fail::fail_point!("after-send-before-commit", |_| std::process::abort());
    runtime.metrics.records_out.inc_by((produced - dead_letters) as u64);
    runtime.metrics.dead_letters.inc_by(dead_letters as u64);

    let commits: Vec<(String, i32, i64)> = next_offsets
        .into_iter()
        .map(|((topic, partition), next)| {
            let floor = stage.commit_floor(&topic, partition);
            let next = floor.map_or(next, |floor| next.min(floor));
            (topic, partition, next)
        })
        .collect();
    for (topic, partition, next) in &commits {
        if let Some(lag) = source.lag(topic, *partition, next - 1) {
            runtime
                .metrics
                .consumer_lag
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(lag);
        }
    }
    for (topic, partition, _) in &commits {
        source.cap_done(topic, *partition, stage.done_floor(topic, *partition));
    }
    source.commit(&commits).await?;
    tracing::debug!(stage = stage.name(), records = batch.len(), replayed, produced, "Batch committed.");
    runtime
        .metrics
        .processing_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}

async fn send_emits(
    stage: &dyn Stage,
    sink: &dyn RecordSink,
    runtime: &StageRuntime,
    emits: Vec<Emit>,
) -> Result<u64, TransportError> {
    if emits.is_empty() {
        return Ok(0);
    }
    let mut out = Vec::with_capacity(emits.len());
    for emit in emits {
        out.push(encode_emit(stage, runtime, emit).await?);
    }
    let count = out.len() as u64;
    sink.send(out).await?;
    runtime.metrics.records_out.inc_by(count);
    Ok(count)
}

async fn encode_emit(
    stage: &dyn Stage,
    runtime: &StageRuntime,
    emit: Emit,
) -> Result<OutRecord, TransportError> {
    let topic = runtime.topics.physical(emit.topic);
    let payload = runtime
        .codec
        .encode(&topic, &emit.record)
        .await
        .map_err(|source| TransportError::Encode {
            stage: stage.name(),
            source,
        })?;
    Ok(OutRecord {
        topic,
        key: emit.key,
        payload,
        timestamp_ms: None,
    })
}

async fn dead_letter(
    stage: &dyn Stage,
    runtime: &StageRuntime,
    position: &Position,
    original: &[u8],
    reject: Reject,
) -> Result<OutRecord, TransportError> {
    let bytes = reject.payload.as_deref().unwrap_or(original);
    let scrubbed = stage.input_has_personal_data();
    // A reason may quote the payload, such as a topic name or the first
    // bytes of a record that does not decode.
    let (payload, reason) = if scrubbed {
        (scrub::scrub_payload(bytes), scrub::scrub_text(&reject.reason))
    } else {
        (bytes.to_vec(), reject.reason)
    };
    let record = Record::DeadLetter(DeadLetter {
        stage: stage.name().to_string(),
        source_topic: position.topic.clone(),
        source_partition: position.partition,
        source_offset: position.offset,
        reason,
        failed_at_ms: now_ms(),
        payload,
        payload_scrubbed: scrubbed,
    });
    let emit = Emit {
        topic: crate::topology::DEAD_LETTER,
        key: format!("{}/{}/{}", position.topic, position.partition, position.offset),
        record,
    };
    encode_emit(stage, runtime, emit).await
}

/// Decodes bytes of an input topic into a record of `kind`.
pub async fn decode_record(
    codec: &Codec,
    kind: RecordKind,
    bytes: &[u8],
) -> Result<Record, CodecError> {
    Ok(match kind {
        RecordKind::Raw => Record::Raw(codec.decode(kind, bytes).await?),
        RecordKind::Normalized => Record::Normalized(codec.decode(kind, bytes).await?),
        RecordKind::Masked => Record::Masked(codec.decode(kind, bytes).await?),
        RecordKind::Incident => Record::Incident(codec.decode(kind, bytes).await?),
        RecordKind::Ticket => Record::Ticket(codec.decode(kind, bytes).await?),
        RecordKind::DeadLetter => Record::DeadLetter(codec.decode(kind, bytes).await?),
        RecordKind::Cursor => Record::Cursor(codec.decode(kind, bytes).await?),
    })
}

/// Wall-clock time in UTC milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
