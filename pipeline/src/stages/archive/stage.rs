//! The archive stage: batches of masked events per input partition, bounded
//! by size and age, written to the hot tier as immutable objects.
//!
//! A batch covers a range of offsets of one partition. Before its objects
//! are written, the range is recorded in a batch plan at
//! `_batches/<topic>/<partition>/<first offset>.json`, created only if
//! absent. After a crash the stage reads the partition again from the
//! committed offset, which is the first offset of the unfinished batch,
//! finds the plan and ends the batch at the same offset. Its objects then
//! get the same keys and the same events, and a put that finds the key taken
//! means the object is already durable. So every event lands in exactly one
//! object, however the batches would otherwise have been cut.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use object_store::PutMode;
use serde::{Deserialize, Serialize};

use super::store::{ArchiveStore, PutOutcome};
use super::{hour_folder, sync_marker, write_container_with_marker, ArchiveError};
use crate::model::{MaskedEvent, Record, RecordKind};
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// Folder of the hot tier that contains the batch plans. Readers of the
/// `date=` folders never see it, and Hive-style readers skip folders
/// whose names start with `_`.
pub const BATCH_PLAN_FOLDER: &str = "_batches";

/// When a partition's batch is written.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Estimated encoded size of the batch's events, in bytes.
    pub max_bytes: usize,
    /// Time since the batch's first record arrived.
    pub max_age: Duration,
}

/// The offset range of a batch, written before its objects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct BatchPlan {
    topic: String,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
}

/// The unwritten events of one partition.
struct PartitionBatch {
    events: Vec<(i64, MaskedEvent)>,
    estimated_bytes: usize,
    started: Instant,
    /// Last offset of the batch, from a plan written before a restart.
    planned_last: Option<i64>,
}

impl PartitionBatch {
    fn new() -> PartitionBatch {
        PartitionBatch {
            events: Vec::new(),
            estimated_bytes: 0,
            started: Instant::now(),
            planned_last: None,
        }
    }

    fn first_offset(&self) -> Option<i64> {
        self.events.first().map(|(offset, _)| *offset)
    }
}

pub struct ArchiveStage {
    hot: ArchiveStore,
    limits: BatchLimits,
    batches: BTreeMap<(String, i32), PartitionBatch>,
    objects_written: Option<prometheus::IntCounter>,
    /// Names the log in object and plan names, for a log whose offsets
    /// start again at 0 (an embedded run): `<label>.<topic>`.
    log_label: Option<String>,
}

impl ArchiveStage {
    pub fn new(hot: ArchiveStore, limits: BatchLimits) -> ArchiveStage {
        ArchiveStage {
            hot,
            limits,
            batches: BTreeMap::new(),
            objects_written: None,
            log_label: None,
        }
    }

    /// Puts `label` before the topic in object and plan names, so that
    /// logs whose offsets restart at 0, such as the in-memory log of two
    /// embedded runs over different inputs, never share a name.
    pub fn with_log_label(mut self, label: String) -> ArchiveStage {
        self.log_label = Some(label);
        self
    }

    fn log_name(&self, topic: &str) -> String {
        match &self.log_label {
            Some(label) => format!("{label}.{topic}"),
            None => topic.to_string(),
        }
    }

    /// Counts the objects the stage creates in `counter`.
    pub fn with_object_counter(mut self, counter: prometheus::IntCounter) -> ArchiveStage {
        self.objects_written = Some(counter);
        self
    }

    /// Adds an event to its partition's batch, writing the batch first when
    /// a plan ends it before this offset.
    async fn buffer(&mut self, topic: &str, partition: i32, offset: i64, event: &MaskedEvent) -> Result<(), ArchiveError> {
        let key = (topic.to_string(), partition);
        let ends_before = self
            .batches
            .get(&key)
            .and_then(|batch| batch.planned_last)
            .is_some_and(|last| offset > last);
        if ends_before {
            self.flush(topic, partition).await?;
        }
        let batch = self.batches.entry(key.clone()).or_insert_with(PartitionBatch::new);
        if batch.events.is_empty() {
            batch.started = Instant::now();
        }
        batch.estimated_bytes += estimated_size(event);
        batch.events.push((offset, event.clone()));
        if batch.planned_last == Some(offset) {
            self.flush(topic, partition).await?;
        }
        Ok(())
    }

    /// Writes the batches that reached a limit, or every batch with `all`.
    async fn flush_due(&mut self, all: bool) -> Result<(), ArchiveError> {
        let due: Vec<(String, i32)> = self
            .batches
            .iter()
            .filter(|(_, batch)| {
                let full = batch.estimated_bytes >= self.limits.max_bytes || batch.started.elapsed() >= self.limits.max_age;
                !batch.events.is_empty() && batch.planned_last.is_none() && (all || full)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for (topic, partition) in due {
            self.flush(&topic, partition).await?;
        }
        Ok(())
    }

    /// Writes the batch of a partition: its plan, then one object per hour
    /// and service. When a plan from before a restart ends the batch
    /// earlier, the rest becomes the next batch. When it ends later, the
    /// batch waits for the records up to that end.
    async fn flush(&mut self, topic: &str, partition: i32) -> Result<(), ArchiveError> {
        let key = (topic.to_string(), partition);
        loop {
            let Some(batch) = self.batches.get_mut(&key) else { return Ok(()) };
            let (Some(first), Some(last)) = (batch.first_offset(), batch.events.last().map(|(offset, _)| *offset)) else {
                return Ok(());
            };
            let plan = BatchPlan {
                topic: topic.to_string(),
                partition,
                first_offset: first,
                last_offset: last,
            };
            let planned_last = self.record_plan(&plan).await?;
            let batch = self.batches.get_mut(&key).expect("the batch was found above");
            if planned_last > last {
                tracing::info!(topic, partition, first_offset = first, planned_last, "Batch plan from before a restart found; the batch waits for its last offset.");
                batch.planned_last = Some(planned_last);
                return Ok(());
            }
            let split = batch.events.partition_point(|(offset, _)| *offset <= planned_last);
            let rest = batch.events.split_off(split);
            let events = std::mem::take(&mut batch.events);
            batch.estimated_bytes = rest.iter().map(|(_, event)| estimated_size(event)).sum();
            batch.events = rest;
            batch.planned_last = None;
            batch.started = Instant::now();
            let remaining = !batch.events.is_empty();
            self.write_objects(topic, partition, &events).await?;
            if !remaining {
                self.batches.remove(&key);
                return Ok(());
            }
        }
    }

    /// Creates the plan of a batch unless one exists for its first offset,
    /// and returns the last offset of the plan in force.
    async fn record_plan(&self, plan: &BatchPlan) -> Result<i64, ArchiveError> {
        let name = plan_name(&self.log_name(&plan.topic), plan.partition, plan.first_offset);
        let bytes = serde_json::to_vec(plan).expect("a batch plan serializes");
        if self.hot.put(&name, bytes, PutMode::Create, false).await? == PutOutcome::Created {
            return Ok(plan.last_offset);
        }
        let stored = self.hot.get(&name).await?.ok_or_else(|| ArchiveError::Plan {
            location: self.hot.url_of(&name),
            reason: "it exists for a create but not for a read".into(),
        })?;
        let found: BatchPlan = serde_json::from_slice(&stored).map_err(|e| ArchiveError::Plan {
            location: self.hot.url_of(&name),
            reason: e.to_string(),
        })?;
        if found.first_offset != plan.first_offset || found.last_offset < found.first_offset {
            return Err(ArchiveError::Plan {
                location: self.hot.url_of(&name),
                reason: format!("offsets {}..={} do not start at {}", found.first_offset, found.last_offset, plan.first_offset),
            });
        }
        Ok(found.last_offset)
    }

    async fn write_objects(&self, topic: &str, partition: i32, events: &[(i64, MaskedEvent)]) -> Result<(), ArchiveError> {
        let mut groups: BTreeMap<String, Vec<(i64, &MaskedEvent)>> = BTreeMap::new();
        for (offset, event) in events {
            groups
                .entry(hour_folder(&event.affected_service, event.event_time_ms))
                .or_default()
                .push((*offset, event));
        }
        for (folder, members) in groups {
            let first = members[0].0;
            let last = members[members.len() - 1].0;
            let log = self.log_name(topic);
            let name = format!("{folder}/{log}-{partition}-{first:020}-{last:020}.avro");
            let owned: Vec<MaskedEvent> = members.iter().map(|(_, event)| (*event).clone()).collect();
            let bytes = write_container_with_marker(&owned, sync_marker(&name)).map_err(|reason| ArchiveError::Format {
                location: self.hot.url_of(&name),
                reason,
            })?;
            let outcome = self.hot.put(&name, bytes, PutMode::Create, false).await?;
            match outcome {
                PutOutcome::Created => {
                    if let Some(counter) = &self.objects_written {
                        counter.inc();
                    }
                }
                PutOutcome::AlreadyExists => {
                    tracing::info!(object = %self.hot.url_of(&name), "Archive object already written before a restart; kept as it is.");
                }
            }
        }
        tracing::debug!(topic, partition, first_offset = events[0].0, records = events.len(), "Archive batch durable.");
        Ok(())
    }
}

/// Name of the batch plan that starts at `first_offset`.
fn plan_name(topic: &str, partition: i32, first_offset: i64) -> String {
    format!("{BATCH_PLAN_FOLDER}/{topic}/{partition}/{first_offset:020}.json")
}

/// Estimates the Avro-encoded size of an event before compression: its
/// text plus a few bytes for each number and field.
fn estimated_size(event: &MaskedEvent) -> usize {
    let optional = [
        &event.conversation_id,
        &event.touchpoint,
        &event.agent_pseudonym,
        &event.phone_pseudonym,
        &event.customer_pseudonym,
        &event.message,
    ];
    let attributes: usize = event.attributes.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    event.event_id.len()
        + event.event_type.len()
        + event.platform_source.len()
        + event.delivery.len()
        + event.affected_service.len()
        + event.mask_key_id.len()
        + optional.iter().map(|field| field.as_ref().map_or(0, String::len)).sum::<usize>()
        + attributes
        + 64
}

fn stage_error(error: ArchiveError) -> TransportError {
    TransportError::Stage {
        stage: "archive",
        reason: error.to_string(),
    }
}

#[async_trait]
impl Stage for ArchiveStage {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn input_kind(&self) -> RecordKind {
        RecordKind::Masked
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for decoded in &batch {
            // Replayed records are archived too: a record stays uncommitted
            // until its object is durable, so a replay was not archived.
            match &decoded.record {
                Record::Masked(event) => {
                    let position = &decoded.position;
                    self.buffer(&position.topic, position.partition, position.offset, event)
                        .await
                        .map_err(stage_error)?;
                    outcomes.push(Ok(Vec::new()));
                }
                _ => outcomes.push(Err(Reject::new("archive reads masked events only"))),
            }
        }
        self.flush_due(false).await.map_err(stage_error)?;
        Ok(outcomes)
    }

    async fn tick(&mut self, _now_ms: i64) -> Result<Vec<Emit>, TransportError> {
        self.flush_due(false).await.map_err(stage_error)?;
        Ok(Vec::new())
    }

    async fn finish(&mut self) -> Result<Vec<Emit>, TransportError> {
        self.flush_due(true).await.map_err(stage_error)?;
        if let Some(((topic, partition), batch)) = self.batches.iter().find(|(_, batch)| !batch.events.is_empty()) {
            return Err(TransportError::Stage {
                stage: "archive",
                reason: format!(
                    "the input of {topic}/{partition} ended at offset {:?}, before the end of the batch plan written before a restart ({:?}); the batch stays uncommitted until those records are read",
                    batch.events.last().map(|(offset, _)| *offset),
                    batch.planned_last
                ),
            });
        }
        Ok(Vec::new())
    }

    fn commit_floor(&self, topic: &str, partition: i32) -> Option<i64> {
        self.batches
            .get(&(topic.to_string(), partition))
            .and_then(PartitionBatch::first_offset)
    }

    fn done_floor(&self, topic: &str, partition: i32) -> Option<i64> {
        self.commit_floor(topic, partition)
    }

    fn partitions_revoked(&mut self, topic: &str, partitions: &[i32]) {
        // The new owner reads the unwritten records again from the committed
        // offset, below every one of them.
        self.batches
            .retain(|(batch_topic, partition), _| batch_topic != topic || !partitions.contains(partition));
    }
}
