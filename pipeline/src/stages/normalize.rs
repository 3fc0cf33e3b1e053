//! Normalize: reads `raw-events`, writes one `normalized` record per
//! meaningful event, keyed by affected service. A payload it cannot
//! understand goes to `dead-letter` with the reason and a scrubbed copy; the
//! original stays on `raw-events`. At-least-once: offsets are committed after
//! the outputs are acknowledged.
//!
//! Two steps follow the platform mapping of `sources`:
//! - the service rules of `[normalize]` may rename the affected service, and
//! - an event whose id was already seen within the dedupe horizon is dropped.
//!   Copies of one platform event share a `raw-events` key (the conversation
//!   id, or the source's own id), so they meet in one partition. The stage
//!   keeps its commits back to the oldest record inside the horizon, so a
//!   restarted stage reads that span again and rebuilds what it had seen.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;

use crate::config::{NormalizeConfig, ServiceRule};
use crate::model::{NormalizedEvent, RawEvent, Record, RecordKind};
use crate::sources;
use crate::topology::NORMALIZED;
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// Maps raw events to normalized events and applies the service rules.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    rules: Vec<ServiceRule>,
}

impl Normalizer {
    pub fn new(config: &NormalizeConfig) -> Normalizer {
        Normalizer {
            rules: config.service_rules.clone(),
        }
    }

    /// Returns the normalized events of a raw event, with the service rules
    /// applied, or the reason it cannot be mapped.
    pub fn normalize(&self, raw: &RawEvent) -> Result<Vec<NormalizedEvent>, String> {
        let mut events = sources::normalize(raw)?;
        for event in &mut events {
            if let Some(rule) = self.rules.iter().find(|rule| rule.matches(event)) {
                event.attributes.insert("default_service".into(), event.affected_service.clone());
                event.affected_service = rule.service.clone();
            }
        }
        Ok(events)
    }
}

/// Event ids seen within the dedupe horizon, by input partition.
#[derive(Debug, Default)]
pub struct Dedupe {
    horizon_ms: i64,
    /// Partition and offset of the record that first carried each id.
    seen: HashMap<String, (i32, i64)>,
    /// Ids by partition in offset order, with their record time.
    by_partition: BTreeMap<i32, VecDeque<(i64, i64, String)>>,
    /// Latest record time seen, in epoch milliseconds.
    latest_ms: i64,
    dropped: u64,
}

impl Dedupe {
    pub fn new(horizon_ms: i64) -> Dedupe {
        Dedupe {
            horizon_ms,
            ..Dedupe::default()
        }
    }

    /// Records `event_id` as carried by the record at `partition`/`offset`
    /// with record time `time_ms`, and returns whether it is new. A horizon
    /// of 0 turns deduplication off.
    pub fn first_sighting(&mut self, event_id: &str, partition: i32, offset: i64, time_ms: i64) -> bool {
        if self.horizon_ms == 0 {
            return true;
        }
        self.latest_ms = self.latest_ms.max(time_ms);
        self.evict();
        if let Some(first) = self.seen.get(event_id) {
            // The same record read again (a replay) is not a copy of itself.
            if *first == (partition, offset) {
                return true;
            }
            self.dropped += 1;
            return false;
        }
        self.seen.insert(event_id.to_string(), (partition, offset));
        self.by_partition
            .entry(partition)
            .or_default()
            .push_back((time_ms, offset, event_id.to_string()));
        true
    }

    fn evict(&mut self) {
        let oldest_kept = self.latest_ms.saturating_sub(self.horizon_ms);
        for (partition, entries) in &mut self.by_partition {
            while entries.front().is_some_and(|(time_ms, _, _)| *time_ms < oldest_kept) {
                if let Some((_, offset, id)) = entries.pop_front() {
                    if self.seen.get(&id) == Some(&(*partition, offset)) {
                        self.seen.remove(&id);
                    }
                }
            }
        }
    }

    /// Returns the offset of the oldest record of `partition` inside the
    /// horizon.
    pub fn floor(&self, partition: i32) -> Option<i64> {
        self.by_partition.get(&partition)?.front().map(|(_, offset, _)| *offset)
    }

    /// Returns the number of copies dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Returns the number of ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The normalize stage: the normalizer, then the dedupe.
pub struct NormalizeStage {
    normalizer: Normalizer,
    dedupe: Dedupe,
}

impl NormalizeStage {
    pub fn new(config: &NormalizeConfig) -> NormalizeStage {
        NormalizeStage {
            normalizer: Normalizer::new(config),
            dedupe: Dedupe::new(config.dedupe_horizon_secs as i64 * 1000),
        }
    }

    fn process_one(&mut self, decoded: &Decoded) -> Outcome {
        let Record::Raw(raw) = &decoded.record else {
            return Err(Reject::new("normalize reads raw events only"));
        };
        let events = self.normalizer.normalize(raw).map_err(|reason| {
            Reject::with_payload(format!("{} payload rejected: {reason}", raw.source), raw.payload.clone())
        })?;
        let position = &decoded.position;
        let time_ms = decoded.timestamp_ms.unwrap_or(raw.received_at_ms);
        let mut emits = Vec::with_capacity(events.len());
        for event in events {
            if !self.dedupe.first_sighting(&event.event_id, position.partition, position.offset, time_ms) {
                tracing::debug!(
                    stage = "normalize",
                    event_id = %event.event_id,
                    partition = position.partition,
                    offset = position.offset,
                    "Duplicate event dropped."
                );
                continue;
            }
            emits.push(Emit {
                topic: NORMALIZED,
                key: event.affected_service.clone(),
                record: Record::Normalized(event),
            });
        }
        Ok(emits)
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
        Ok(batch.iter().map(|decoded| self.process_one(decoded)).collect())
    }

    fn commit_floor(&self, _topic: &str, partition: i32) -> Option<i64> {
        self.dedupe.floor(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer_end(dnis: &str) -> RawEvent {
        let payload = format!(
            r#"{{"topicName":"v2.detail.events.conversation.c1.customer.end","eventBody":{{"eventTime":1765551713383,"conversationId":"c1","dnis":"{dnis}"}}}}"#
        );
        RawEvent {
            event_id: "e1".into(),
            source: "genesys".into(),
            delivery: "notification_api".into(),
            received_at_ms: 0,
            interval_start_ms: None,
            interval_end_ms: None,
            capture_json: None,
            payload: payload.into_bytes(),
        }
    }

    #[test]
    fn service_rules_first_match_wins() {
        let rule = |service: &str, dnis: Option<&str>, media: Option<&str>| ServiceRule {
            service: service.into(),
            dnis: dnis.map(Into::into),
            media_type: media.map(Into::into),
            ..ServiceRule::default()
        };
        let config = NormalizeConfig {
            service_rules: vec![
                rule("billing_voice", Some("+13175550100"), Some("voice")),
                rule("any_voice", None, Some("VOICE")),
            ],
            ..NormalizeConfig::default()
        };
        let normalizer = Normalizer::new(&config);
        let billing = normalizer.normalize(&customer_end("tel:+13175550100")).unwrap().remove(0);
        assert_eq!(billing.affected_service, "billing_voice");
        assert_eq!(billing.attributes["default_service"], "voice_inbound");
        let other = normalizer.normalize(&customer_end("tel:+13175550111")).unwrap().remove(0);
        assert_eq!(other.affected_service, "any_voice");
        let unruled = Normalizer::default().normalize(&customer_end("tel:+13175550100")).unwrap().remove(0);
        assert_eq!(unruled.affected_service, "voice_inbound");
    }

    #[test]
    fn dedupe_drops_copy_within_horizon() {
        let mut dedupe = Dedupe::new(60_000);
        assert!(dedupe.first_sighting("a", 0, 0, 1_000));
        assert!(!dedupe.first_sighting("a", 0, 1, 2_000));
        assert!(dedupe.first_sighting("b", 0, 2, 3_000));
        assert_eq!(dedupe.dropped(), 1);
    }

    #[test]
    fn dedupe_forgets_after_horizon() {
        let mut dedupe = Dedupe::new(60_000);
        assert!(dedupe.first_sighting("a", 0, 0, 1_000));
        assert!(dedupe.first_sighting("b", 0, 1, 61_000));
        assert!(!dedupe.first_sighting("a", 0, 2, 61_000));
        assert!(dedupe.first_sighting("c", 0, 3, 61_001));
        // "a" at 1000 is now older than 61001 - 60000.
        assert!(dedupe.first_sighting("a", 0, 4, 61_002));
    }

    #[test]
    fn dedupe_floor_is_oldest_kept_offset() {
        let mut dedupe = Dedupe::new(60_000);
        dedupe.first_sighting("a", 0, 10, 1_000);
        dedupe.first_sighting("b", 1, 20, 2_000);
        dedupe.first_sighting("c", 0, 11, 30_000);
        assert_eq!(dedupe.floor(0), Some(10));
        assert_eq!(dedupe.floor(1), Some(20));
        dedupe.first_sighting("d", 0, 12, 62_500);
        assert_eq!(dedupe.floor(0), Some(11));
        assert_eq!(dedupe.floor(1), None);
        assert_eq!(dedupe.floor(2), None);
    }

    #[test]
    fn dedupe_replay_of_same_record_passes() {
        let mut dedupe = Dedupe::new(60_000);
        assert!(dedupe.first_sighting("a", 3, 7, 1_000));
        assert!(dedupe.first_sighting("a", 3, 7, 1_000));
        assert_eq!(dedupe.dropped(), 0);
    }

    #[test]
    fn dedupe_horizon_zero_keeps_everything() {
        let mut dedupe = Dedupe::new(0);
        assert!(dedupe.first_sighting("a", 0, 0, 1_000));
        assert!(dedupe.first_sighting("a", 0, 1, 1_000));
        assert!(dedupe.is_empty());
        assert_eq!(dedupe.floor(0), None);
    }
}
