//! Window: reads `masked`, writes incident state changes to
//! `windowed-incidents`, keyed by incident id.
//!
//! Per affected service it keeps the signals (failure events whose type has
//! a threshold) and the contact volume of a sliding event-time window. When
//! one signal type reaches its threshold within the window, an incident
//! opens. It starts at the first signal of the breaching window, and its id
//! is derived from the service and that start, so a replay yields the same
//! id. The postmortem gate passes when the incident lasts longer than the
//! minimum duration or its failed contacts exceed the minimum share of the
//! service's contacts since the start. It closes once event time passes the
//! last signal by the quiet period.
//! A breach within the cooldown after the close reopens it with the same id
//! and one more recurrence, and the cooldown doubles with each recurrence
//! until a calm period resets it.
//!
//! Time: each partition's clock is its highest event time. The stage's
//! watermark is the lowest clock of the partitions that had records within
//! the idle timeout, minus the allowed out-of-orderness. Events further
//! behind it than the allowed lateness are not counted and go to
//! `late-events`. When every partition is idle, the wall-clock tick moves the
//! watermark on, so incidents close at night.
//!
//! Delivery: the state lives in memory. Offsets are committed only up to the
//! oldest record the state still keeps (see `commit_floor`), so a restart
//! rebuilds the state by reading those records again. Incident records may
//! then repeat with the same ids, which the ticket stage absorbs.

mod detector;
mod rules;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub use self::detector::{incident_id, severity, Detector, LateEvent};
pub use self::rules::WindowRules;
use crate::model::{IncidentEvent, MaskedEvent, Record, RecordKind};
use crate::topology::{LATE_EVENTS, MASKED, WINDOWED_INCIDENTS};
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// How far behind the newest record timestamp a record is held before the
/// detector observes it, in milliseconds. Records reach `masked` through
/// partitions read at different paces, so a record accepted earlier can come
/// after a later one. Holding puts them back in the order the ingest stage
/// accepted them.
pub(crate) const REORDER_MS: i64 = 5_000;

/// Wall-clock time without input after which every held record is released.
/// It is longer than the stalls of the stages upstream, whose merge of
/// partitions waits up to three seconds for a partition.
const REORDER_IDLE: Duration = Duration::from_secs(10);

pub struct WindowStage {
    detector: Detector,
    /// Records waiting for release, by (timestamp, partition, offset).
    /// Records held for reordering, with whether each is a replay.
    held_records: BTreeMap<(i64, i32, i64), (MaskedEvent, bool)>,
    newest_timestamp_ms: i64,
    last_input: Option<Instant>,
    /// Outputs released by a batch that had no accepted record to carry them.
    pending: Vec<Emit>,
}

impl WindowStage {
    pub fn new(rules: WindowRules) -> WindowStage {
        WindowStage {
            detector: Detector::new(rules),
            held_records: BTreeMap::new(),
            newest_timestamp_ms: i64::MIN,
            last_input: None,
            pending: Vec::new(),
        }
    }

    /// Returns the offset of the oldest record of `partition` held for
    /// reordering.
    fn oldest_held(&self, partition: i32) -> Option<i64> {
        self.held_records
            .keys()
            .filter(|(_, held_partition, _)| *held_partition == partition)
            .map(|(_, _, offset)| *offset)
            .min()
    }

    /// Feeds the detector every held record accepted before `until_ms`, in
    /// the order they were accepted, and returns the outputs it causes.
    fn release(&mut self, until_ms: i64) -> Vec<Emit> {
        let mut emits = Vec::new();
        while let Some(entry) = self.held_records.first_entry() {
            let (timestamp, partition, offset) = *entry.key();
            if timestamp > until_ms {
                break;
            }
            let (event, replay) = entry.remove();
            let observed = self.detector.observe(&event, partition, offset);
            let late = self.detector.take_late();
            // A replayed record rebuilds state; its outputs were sent before
            // the restart.
            if !replay {
                emits.extend(self.incident_emits(observed));
                emits.extend(late.into_iter().map(|late| self.late_emit(late)));
            }
        }
        emits
    }

    fn incident_emits(&self, changes: Vec<IncidentEvent>) -> Vec<Emit> {
        changes
            .into_iter()
            .map(|incident| {
                tracing::info!(
                    stage = "window",
                    incident_id = %incident.incident_id,
                    change = %incident.change,
                    affected_service = %incident.affected_service,
                    gated = incident.gated,
                    recurrences = incident.recurrences,
                    "Incident changed."
                );
                if incident.change == "closed" && !incident.gated {
                    tracing::info!(
                        stage = "window",
                        incident_id = %incident.incident_id,
                        affected_service = %incident.affected_service,
                        spike_count = self.detector.spike_count(),
                        "Incident closed below the postmortem gate: a spike, not ticketed."
                    );
                }
                Emit {
                    topic: WINDOWED_INCIDENTS,
                    key: incident.incident_id.clone(),
                    record: Record::Incident(incident),
                }
            })
            .collect()
    }

    /// Addresses a late event to `late-events`, with the watermark it missed
    /// in its attributes.
    fn late_emit(&self, late: LateEvent) -> Emit {
        let LateEvent { mut event, partition, offset, watermark_ms } = late;
        let late_count = self.detector.late_count();
        // Logged on the 1st, 2nd, 4th, 8th... late event, so a late source
        // cannot flood the log.
        if late_count.is_power_of_two() {
            tracing::warn!(
                stage = "window",
                partition,
                offset,
                event_time_ms = event.event_time_ms,
                watermark_ms,
                allowed_lateness_ms = self.detector.rules().allowed_lateness_ms,
                late_count,
                "Event arrived after the allowed lateness; sent to late-events and not counted."
            );
        }
        event.attributes.insert("late.watermark_ms".into(), watermark_ms.to_string());
        event
            .attributes
            .insert("late.allowed_lateness_ms".into(), self.detector.rules().allowed_lateness_ms.to_string());
        Emit {
            topic: LATE_EVENTS,
            key: format!("{MASKED}/{partition}/{offset}"),
            record: Record::Masked(event),
        }
    }
}

#[async_trait]
impl Stage for WindowStage {
    fn name(&self) -> &'static str {
        "window"
    }

    fn input_kind(&self) -> RecordKind {
        RecordKind::Masked
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut replays = Vec::with_capacity(batch.len());
        for decoded in batch {
            replays.push(decoded.replay);
            match decoded.record {
                Record::Masked(event) => {
                    // A record without a timestamp keeps its place in the
                    // order of arrival.
                    let timestamp = decoded.timestamp_ms.unwrap_or(self.newest_timestamp_ms);
                    self.newest_timestamp_ms = self.newest_timestamp_ms.max(timestamp);
                    let key = (timestamp, decoded.position.partition, decoded.position.offset);
                    self.held_records.insert(key, (event, decoded.replay));
                    outcomes.push(Ok(Vec::new()));
                }
                _ => outcomes.push(Err(Reject::new("window reads masked events only"))),
            }
        }
        self.last_input = Some(Instant::now());
        // The changes released now come from earlier records: the last
        // outcome that is sent carries them, and the commit floor covers
        // what is held.
        let released = self.release(self.newest_timestamp_ms.saturating_sub(self.detector.rules().reorder_ms));
        let carrier = outcomes
            .iter_mut()
            .zip(&replays)
            .rev()
            .find(|(outcome, replay)| outcome.is_ok() && !**replay);
        match carrier {
            Some((Ok(emits), _)) => emits.extend(released),
            // Every record of the batch was rejected or replayed: the next
            // tick sends them.
            _ => self.pending.extend(released),
        }
        Ok(outcomes)
    }

    async fn tick(&mut self, _now_ms: i64) -> Result<Vec<Emit>, TransportError> {
        let mut emits = std::mem::take(&mut self.pending);
        if self.last_input.is_some_and(|at| at.elapsed() >= REORDER_IDLE) {
            emits.extend(self.release(i64::MAX));
        }
        let watermark = self.detector.watermark();
        let closed = self.detector.close_quiet(watermark);
        emits.extend(self.incident_emits(closed));
        Ok(emits)
    }

    async fn finish(&mut self) -> Result<Vec<Emit>, TransportError> {
        let mut emits = std::mem::take(&mut self.pending);
        emits.extend(self.release(i64::MAX));
        let closed = self.detector.close_all();
        emits.extend(self.incident_emits(closed));
        Ok(emits)
    }

    fn commit_floor(&self, _topic: &str, partition: i32) -> Option<i64> {
        [self.oldest_held(partition), self.detector.floor(partition)].into_iter().flatten().min()
    }

    fn done_floor(&self, _topic: &str, partition: i32) -> Option<i64> {
        // A held record has not been fed to the detector yet, so its
        // changes are not sent: the done mark must stay below it.
        self.oldest_held(partition)
    }

    fn partitions_revoked(&mut self, _topic: &str, partitions: &[i32]) {
        // The done mark stays below every held record, so the new owner
        // processes them as new and sends their changes: here they are
        // dropped with the state of the revoked partitions.
        self.held_records.retain(|(_, partition, _), _| !partitions.contains(partition));
        self.detector.forget_partitions(partitions);
        tracing::info!(stage = "window", partitions = ?partitions, "State of revoked partitions dropped.");
    }
}


#[cfg(test)]
mod tests;
