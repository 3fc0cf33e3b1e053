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
//!
//! Time: each partition's clock is its highest event time. The stage's
//! watermark is the lowest clock of the partitions that had records within
//! the idle timeout, minus the allowed out-of-orderness. When every partition
//! is idle, the wall-clock tick moves the watermark on, so incidents close at
//! night.
//!
//! Delivery: the state lives in memory. Offsets are committed only up to the
//! oldest record the state still keeps (see `commit_floor`), so a restart
//! rebuilds the state by reading those records again. Incident records may
//! then repeat with the same ids, which the ticket stage absorbs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::WindowConfig;
use crate::model::{DependencyStatus, IncidentEvent, MaskedEvent, Record, RecordKind};
use crate::topology::WINDOWED_INCIDENTS;
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// The incident rules, in milliseconds.
#[derive(Debug, Clone)]
pub struct WindowRules {
    pub window_ms: i64,
    pub thresholds: BTreeMap<String, u64>,
    pub gate_min_duration_ms: i64,
    pub gate_min_failure_share: f64,
    pub quiet_ms: i64,
    pub out_of_orderness_ms: i64,
    pub idle_timeout_ms: i64,
    /// How far behind the newest record timestamp a record is held before
    /// the detector observes it (see `REORDER_MS`).
    pub reorder_ms: i64,
}

impl From<&WindowConfig> for WindowRules {
    fn from(config: &WindowConfig) -> WindowRules {
        let mut thresholds = config.thresholds.clone();
        thresholds.entry("dependency_check".into()).or_insert(1);
        WindowRules {
            window_ms: config.window_secs as i64 * 1000,
            thresholds,
            gate_min_duration_ms: config.gate_min_duration_secs as i64 * 1000,
            gate_min_failure_share: config.gate_min_failure_share,
            quiet_ms: config.quiet_secs as i64 * 1000,
            out_of_orderness_ms: config.out_of_orderness_secs as i64 * 1000,
            idle_timeout_ms: 60_000,
            reorder_ms: REORDER_MS,
        }
    }
}

/// Position of a record in the input, for the commit floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    partition: i32,
    offset: i64,
}

#[derive(Debug, Clone)]
struct Sample {
    time_ms: i64,
    event_type: Arc<str>,
    failed: i64,
    total: i64,
    origin: Origin,
}

#[derive(Debug, Clone)]
struct OpenIncident {
    id: String,
    signal_type: String,
    platform_source: String,
    start_ms: i64,
    last_signal_ms: i64,
    failed: i64,
    total: i64,
    threshold: u64,
    gated: bool,
    gate_reason: Option<String>,
    first_origin: Origin,
}

#[derive(Debug, Default)]
struct ServiceState {
    /// Signal times by signal type, within the window.
    signals: BTreeMap<String, VecDeque<Sample>>,
    /// Every event carrying contacts, within the window.
    volume: VecDeque<Sample>,
    clock_ms: i64,
    open: Option<OpenIncident>,
}

/// The incident detector: plain logic over masked events.
pub struct Detector {
    rules: WindowRules,
    services: HashMap<String, ServiceState>,
    partition_clocks: BTreeMap<i32, (i64, Instant)>,
    dependencies: DependencyHistory,
    last_record: Option<(i64, Instant)>,
}

impl Detector {
    pub fn new(rules: WindowRules) -> Detector {
        Detector {
            rules,
            services: HashMap::new(),
            partition_clocks: BTreeMap::new(),
            dependencies: DependencyHistory::default(),
            last_record: None,
        }
    }

    /// Adds one event; returns the incident changes it causes.
    pub fn observe(&mut self, event: &MaskedEvent, partition: i32, offset: i64) -> Vec<IncidentEvent> {
        let origin = Origin { partition, offset };
        let time = event.event_time_ms;
        let now = Instant::now();
        let clock = self.partition_clocks.entry(partition).or_insert((time, now));
        *clock = (clock.0.max(time), now);
        let latest = self.last_record.map_or(time, |(t, _)| t.max(time));
        self.last_record = Some((latest, now));

        if let Some(check) = &event.dependency {
            let status = DependencyStatus {
                name: check.name.clone(),
                status: if check.ok { "ok" } else { "failed" }.to_string(),
                checked_at_ms: time,
            };
            self.dependencies.record(status);
        }

        let rules = &self.rules;
        let dependencies = &self.dependencies;
        let state = self.services.entry(event.affected_service.clone()).or_default();
        state.clock_ms = state.clock_ms.max(time);
        let sample = Sample {
            time_ms: time,
            event_type: Arc::from(event.event_type.as_str()),
            failed: event.failed_contacts,
            total: event.total_contacts,
            origin,
        };
        if event.total_contacts > 0 || event.failed_contacts > 0 {
            state.volume.push_back(sample.clone());
        }
        let is_signal = event.failed_contacts > 0 && rules.thresholds.contains_key(&event.event_type);
        if is_signal {
            state
                .signals
                .entry(event.event_type.clone())
                .or_default()
                .push_back(sample.clone());
        }
        evict(state, rules);

        let mut changes = Vec::new();
        // A signal after the quiet period ends the open incident first, even
        // when the watermark has not passed it yet.
        let quiet_over = state
            .open
            .as_ref()
            .is_some_and(|open| is_signal && time > open.last_signal_ms + rules.quiet_ms);
        if quiet_over {
            let open = state.open.take().expect("checked above");
            let end = Some(open.last_signal_ms);
            changes.push(incident_event(&event.affected_service, &open, "closed", end, rules, dependencies));
        }
        let ServiceState { volume, open: open_slot, signals, .. } = state;
        if let Some(open) = open_slot.as_mut() {
            if is_signal && event.event_type == open.signal_type {
                open.last_signal_ms = open.last_signal_ms.max(time);
            }
            (open.failed, open.total) = contacts_between(volume, &open.signal_type, open.start_ms, open.last_signal_ms);
            if !open.gated && gate(open, rules) {
                changes.push(incident_event(&event.affected_service, open, "gated", None, rules, dependencies));
            }
            // A synthetic check reports state changes only, so a dependency
            // incident ends when its check recovers, not after a quiet period.
            let recovered = open.signal_type == "dependency_check" && event.dependency.as_ref().is_some_and(|d| d.ok);
            if recovered && time >= open.last_signal_ms {
                open.last_signal_ms = time;
                changes.push(incident_event(&event.affected_service, open, "closed", Some(time), rules, dependencies));
                *open_slot = None;
            }
        } else if let Some(signals) = signals.get(&event.event_type).filter(|_| is_signal) {
            // A late signal may already be outside the window, and then it
            // has been evicted with its entry.
            let threshold = rules.thresholds[&event.event_type];
            if signals.len() as u64 >= threshold {
                let first = signals.iter().min_by_key(|s| s.time_ms).expect("signals reached a threshold of 1 or more");
                let start_ms = first.time_ms;
                let last_signal_ms = signals.iter().map(|s| s.time_ms).max().unwrap_or(time);
                let (failed, total) = contacts_between(volume, &event.event_type, start_ms, last_signal_ms);
                let first_origin = volume
                    .iter()
                    .filter(|s| s.time_ms >= start_ms)
                    .map(|s| s.origin)
                    .min_by_key(|o| o.offset)
                    .unwrap_or(first.origin);
                let mut open = OpenIncident {
                    id: incident_id(&event.affected_service, start_ms),
                    signal_type: event.event_type.clone(),
                    platform_source: event.platform_source.clone(),
                    start_ms,
                    last_signal_ms,
                    failed,
                    total,
                    threshold,
                    gated: false,
                    gate_reason: None,
                    first_origin,
                };
                changes.push(incident_event(&event.affected_service, &open, "opened", None, rules, dependencies));
                if gate(&mut open, rules) {
                    changes.push(incident_event(&event.affected_service, &open, "gated", None, rules, dependencies));
                }
                *open_slot = Some(open);
            }
        }
        changes.extend(self.close_quiet(self.watermark()));
        changes
    }

    /// Returns the stage's event-time watermark, or `None` before any record.
    pub fn watermark(&self) -> Option<i64> {
        let (latest, last_seen) = self.last_record?;
        let idle_ms = self.rules.idle_timeout_ms as u128;
        let active: Vec<i64> = self
            .partition_clocks
            .values()
            .filter(|(_, seen)| seen.elapsed().as_millis() < idle_ms)
            .map(|(clock, _)| *clock)
            .collect();
        match active.iter().min() {
            Some(min) => Some(min - self.rules.out_of_orderness_ms),
            // Every partition is idle: move on with the wall clock.
            None => Some(latest + last_seen.elapsed().as_millis() as i64),
        }
    }

    /// Closes every open incident whose last signal is older than the quiet
    /// period at `watermark`.
    pub fn close_quiet(&mut self, watermark: Option<i64>) -> Vec<IncidentEvent> {
        let Some(watermark) = watermark else {
            return Vec::new();
        };
        let quiet = self.rules.quiet_ms;
        self.close_where(|open| watermark > open.last_signal_ms + quiet)
    }

    /// Closes every open incident at its last signal: the end of a finite
    /// input.
    pub fn close_all(&mut self) -> Vec<IncidentEvent> {
        self.close_where(|_| true)
    }

    fn close_where(&mut self, should_close: impl Fn(&OpenIncident) -> bool) -> Vec<IncidentEvent> {
        let mut closed = Vec::new();
        for (service, state) in &mut self.services {
            if state.open.as_ref().is_some_and(&should_close) {
                let open = state.open.take().expect("checked above");
                let end = Some(open.last_signal_ms);
                closed.push(incident_event(service, &open, "closed", end, &self.rules, &self.dependencies));
            }
        }
        closed.sort_by(|a, b| a.incident_id.cmp(&b.incident_id));
        closed
    }

    /// Drops the clocks of `partitions` and the state of every service whose
    /// records come from one of them. Dependency statuses are kept, because
    /// they are shared by every partition.
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partition_clocks.remove(partition);
        }
        self.services.retain(|_, state| {
            let open = state.open.as_ref().map(|o| o.first_origin);
            let held = state.volume.iter().chain(state.signals.values().flatten()).map(|s| s.origin);
            let mut origins = open.into_iter().chain(held);
            !origins.any(|origin| partitions.contains(&origin.partition))
        });
    }

    /// Returns the lowest offset of `partition` that the state still keeps.
    pub fn floor(&self, partition: i32) -> Option<i64> {
        self.services
            .values()
            .flat_map(|state| {
                let open = state.open.as_ref().map(|o| o.first_origin);
                let held = state.volume.iter().chain(state.signals.values().flatten()).map(|s| s.origin);
                open.into_iter().chain(held)
            })
            .filter(|origin| origin.partition == partition)
            .map(|origin| origin.offset)
            .min()
    }
}

/// Status changes of each dependency, oldest first.
#[derive(Debug, Default)]
struct DependencyHistory(BTreeMap<String, VecDeque<DependencyStatus>>);

/// Status changes kept per dependency.
const DEPENDENCY_HISTORY: usize = 64;

impl DependencyHistory {
    fn record(&mut self, status: DependencyStatus) {
        let changes = self.0.entry(status.name.clone()).or_default();
        let at = changes.partition_point(|known| known.checked_at_ms <= status.checked_at_ms);
        changes.insert(at, status);
        if changes.len() > DEPENDENCY_HISTORY {
            changes.pop_front();
        }
    }

    /// Returns each dependency's last known status at `time_ms`, leaving out
    /// dependencies first checked after it.
    fn at(&self, time_ms: i64) -> Vec<DependencyStatus> {
        self.0
            .values()
            .filter_map(|changes| changes.iter().rev().find(|c| c.checked_at_ms <= time_ms).cloned())
            .collect()
    }
}

fn evict(state: &mut ServiceState, rules: &WindowRules) {
    let horizon = state.clock_ms - rules.window_ms;
    // An open incident keeps every sample from its start on, its first
    // signal included.
    match state.open.as_ref() {
        Some(open) => state.volume.retain(|s| s.time_ms >= open.start_ms.min(horizon + 1)),
        None => state.volume.retain(|s| s.time_ms > horizon),
    }
    for samples in state.signals.values_mut() {
        samples.retain(|s| s.time_ms > horizon);
    }
    state.signals.retain(|_, samples| !samples.is_empty());
}

/// Checks the postmortem gate; records the reason when it passes.
fn gate(open: &mut OpenIncident, rules: &WindowRules) -> bool {
    if open.gated {
        return true;
    }
    let duration = open.last_signal_ms - open.start_ms;
    let share = share(open.failed, open.total);
    let reason = if duration > rules.gate_min_duration_ms {
        Some(format!("lasted {} s, longer than {} s", duration / 1000, rules.gate_min_duration_ms / 1000))
    } else if share > rules.gate_min_failure_share {
        Some(format!(
            "{:.1}% of contacts failed, more than {:.1}%",
            share * 100.0,
            rules.gate_min_failure_share * 100.0
        ))
    } else {
        None
    };
    open.gated = reason.is_some();
    open.gate_reason = reason;
    open.gated
}

/// Counts the failed contacts of `signal_type` and every contact from
/// `start_ms` to `end_ms`. That is the incident's interval, so contacts after
/// its last signal do not dilute the share however late the close comes, and
/// a contact that failed in two ways (an IVR error, then a failed call)
/// counts once.
fn contacts_between(volume: &VecDeque<Sample>, signal_type: &str, start_ms: i64, end_ms: i64) -> (i64, i64) {
    volume
        .iter()
        .filter(|s| s.time_ms >= start_ms && s.time_ms <= end_ms)
        .fold((0, 0), |(failed, total), s| {
            let failed_here = if &*s.event_type == signal_type { s.failed } else { 0 };
            (failed + failed_here, total + s.total)
        })
}

fn share(failed: i64, total: i64) -> f64 {
    if total <= 0 {
        if failed > 0 { 1.0 } else { 0.0 }
    } else {
        failed as f64 / total as f64
    }
}

/// sev1 when half or more of the contacts failed, sev2 from a fifth, sev3
/// from the gate's share, sev4 below.
pub fn severity(failed: i64, total: i64, gate_share: f64) -> &'static str {
    let share = share(failed, total);
    if share >= 0.5 {
        "sev1"
    } else if share >= 0.2 {
        "sev2"
    } else if share >= gate_share {
        "sev3"
    } else {
        "sev4"
    }
}

/// Derives the incident id: a UUID (version 5) of the service and the start.
pub fn incident_id(service: &str, start_ms: i64) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("blameless:incident:{service}:{start_ms}").as_bytes()).to_string()
}

fn incident_event(
    service: &str,
    open: &OpenIncident,
    change: &str,
    end_ms: Option<i64>,
    rules: &WindowRules,
    dependencies: &DependencyHistory,
) -> IncidentEvent {
    let incident_type = if open.signal_type == "dependency_check" {
        "downstream_dependency"
    } else {
        "platform_outage"
    };
    IncidentEvent {
        incident_id: open.id.clone(),
        change: change.to_string(),
        incident_type: incident_type.to_string(),
        severity: severity(open.failed, open.total, rules.gate_min_failure_share).to_string(),
        affected_service: service.to_string(),
        platform_source: open.platform_source.clone(),
        signal_type: open.signal_type.clone(),
        timestamp_start_ms: open.start_ms,
        timestamp_end_ms: end_ms,
        last_signal_ms: open.last_signal_ms,
        failed_contacts: open.failed,
        total_contacts: open.total,
        threshold_count: open.threshold as i64,
        window_ms: rules.window_ms,
        gated: open.gated,
        gate_reason: open.gate_reason.clone(),
        dependencies: dependencies.at(end_ms.unwrap_or(open.last_signal_ms)),
    }
}

/// How far behind the newest record timestamp a record is held before the
/// detector observes it, in milliseconds. Records reach `masked` through
/// partitions read at different paces, so a record accepted earlier can come
/// after a later one. Holding puts them back in the order the ingest stage
/// accepted them.
const REORDER_MS: i64 = 5_000;

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
    /// Changes released by a batch that had no accepted record to carry them.
    pending: Vec<IncidentEvent>,
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

    /// Feeds the detector every held record accepted before `until_ms`, in
    /// the order they were accepted.
    fn release(&mut self, until_ms: i64) -> Vec<IncidentEvent> {
        let mut changes = Vec::new();
        while let Some(entry) = self.held_records.first_entry() {
            let (timestamp, partition, offset) = *entry.key();
            if timestamp > until_ms {
                break;
            }
            let (event, replay) = entry.remove();
            let observed = self.detector.observe(&event, partition, offset);
            // A replayed record rebuilds state; its changes were sent before
            // the restart.
            if !replay {
                changes.extend(observed);
            }
        }
        changes
    }

    fn emits(changes: Vec<IncidentEvent>) -> Vec<Emit> {
        changes
            .into_iter()
            .map(|incident| {
                tracing::info!(
                    stage = "window",
                    incident_id = %incident.incident_id,
                    change = %incident.change,
                    affected_service = %incident.affected_service,
                    "Incident changed."
                );
                Emit {
                    topic: WINDOWED_INCIDENTS,
                    key: incident.incident_id.clone(),
                    record: Record::Incident(incident),
                }
            })
            .collect()
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
        let changes = self.release(self.newest_timestamp_ms.saturating_sub(self.detector.rules.reorder_ms));
        let carrier = outcomes
            .iter_mut()
            .zip(&replays)
            .rev()
            .find(|(outcome, replay)| outcome.is_ok() && !**replay);
        match carrier {
            Some((Ok(emits), _)) => emits.extend(Self::emits(changes)),
            // Every record of the batch was rejected or replayed: the next
            // tick sends them.
            _ => self.pending.extend(changes),
        }
        Ok(outcomes)
    }

    async fn tick(&mut self, _now_ms: i64) -> Result<Vec<Emit>, TransportError> {
        let mut changes = std::mem::take(&mut self.pending);
        if self.last_input.is_some_and(|at| at.elapsed() >= REORDER_IDLE) {
            changes.extend(self.release(i64::MAX));
        }
        let watermark = self.detector.watermark();
        changes.extend(self.detector.close_quiet(watermark));
        Ok(Self::emits(changes))
    }

    async fn finish(&mut self) -> Result<Vec<Emit>, TransportError> {
        let mut changes = std::mem::take(&mut self.pending);
        changes.extend(self.release(i64::MAX));
        changes.extend(self.detector.close_all());
        Ok(Self::emits(changes))
    }

    fn commit_floor(&self, _topic: &str, partition: i32) -> Option<i64> {
        let oldest_held = self
            .held_records
            .keys()
            .filter(|(_, held_partition, _)| *held_partition == partition)
            .map(|(_, _, offset)| *offset)
            .min();
        [oldest_held, self.detector.floor(partition)].into_iter().flatten().min()
    }

    fn partitions_revoked(&mut self, _topic: &str, partitions: &[i32]) {
        // The done mark already covers the held records, so the new owner
        // reads them as replayed and sends none of their changes: the next
        // tick sends them from here.
        let revoked: Vec<(i64, i32, i64)> = self
            .held_records
            .keys()
            .filter(|(_, partition, _)| partitions.contains(partition))
            .copied()
            .collect();
        for key in revoked {
            let (timestamp, partition, offset) = key;
            let Some((event, replay)) = self.held_records.remove(&key) else { continue };
            let observed = self.detector.observe(&event, partition, offset);
            tracing::debug!(stage = "window", partition, offset, timestamp, "Held record of a revoked partition released.");
            if !replay {
                self.pending.extend(observed);
            }
        }
        self.detector.forget_partitions(partitions);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn rules() -> WindowRules {
        WindowRules::from(&WindowConfig::default())
    }

    fn event(service: &str, event_type: &str, time_ms: i64) -> MaskedEvent {
        crate::model::test_masked_event(service, event_type, time_ms)
    }

    fn feed(detector: &mut Detector, events: &[MaskedEvent]) -> Vec<IncidentEvent> {
        events
            .iter()
            .enumerate()
            .flat_map(|(i, e)| detector.observe(e, 0, i as i64))
            .collect()
    }

    /// `failures` failed calls one second apart, plus `completed` completed
    /// calls in the same span.
    fn burst(failures: i64, completed: i64) -> Vec<MaskedEvent> {
        let mut events: Vec<MaskedEvent> = (0..failures).map(|i| event("voice_inbound", "call_failed", i * 1000)).collect();
        events.extend((0..completed).map(|i| event("voice_inbound", "call_completed", i * 10)));
        events.sort_by_key(|e| e.event_time_ms);
        events
    }

    #[test]
    fn forty_nine_failures_open_nothing() {
        let mut detector = Detector::new(rules());
        assert!(feed(&mut detector, &burst(49, 0)).is_empty());
    }

    #[test]
    fn fifty_failures_open_an_incident() {
        let mut detector = Detector::new(rules());
        let changes = feed(&mut detector, &burst(50, 0));
        assert_eq!(changes[0].change, "opened");
        assert_eq!(changes[0].timestamp_start_ms, 0);
        assert_eq!(changes[0].incident_id, incident_id("voice_inbound", 0));
    }

    #[test]
    fn failures_spread_beyond_window_open_nothing() {
        let mut detector = Detector::new(rules());
        let events: Vec<_> = (0..60).map(|i| event("voice_inbound", "call_failed", i * 7_000)).collect();
        assert!(feed(&mut detector, &events).is_empty());
    }

    #[test]
    fn share_over_five_percent_gates_at_once() {
        let mut detector = Detector::new(rules());
        // 50 failed out of 50 + 900 calls: 5.3%.
        let changes = feed(&mut detector, &burst(50, 900));
        let kinds: Vec<&str> = changes.iter().map(|c| c.change.as_str()).collect();
        assert_eq!(kinds, ["opened", "gated"]);
    }

    #[test]
    fn share_at_five_percent_does_not_gate() {
        let mut detector = Detector::new(rules());
        // 50 failed out of 50 + 950 calls: exactly 5.0%.
        let changes = feed(&mut detector, &burst(50, 950));
        let kinds: Vec<&str> = changes.iter().map(|c| c.change.as_str()).collect();
        assert_eq!(kinds, ["opened"]);
    }

    #[test]
    fn long_incident_gates_after_ten_minutes() {
        let mut detector = Detector::new(rules());
        // A low-share outage: 50 failures open it, then one failure every
        // 30 s among many completed calls keeps it open past 10 minutes.
        let mut events = burst(50, 2000);
        for i in 0..25 {
            events.push(event("voice_inbound", "call_failed", 50_000 + i * 30_000));
        }
        let changes = feed(&mut detector, &events);
        let gated = changes.iter().find(|c| c.change == "gated").expect("gated");
        assert!(gated.gate_reason.as_deref().unwrap().starts_with("lasted"));
        assert!(gated.last_signal_ms - gated.timestamp_start_ms > 600_000);
    }

    #[test]
    fn quiet_period_closes_incident() {
        let mut detector = Detector::new(rules());
        feed(&mut detector, &burst(50, 0));
        let closed = detector.close_quiet(Some(49_000 + 300_001));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].change, "closed");
        assert_eq!(closed[0].timestamp_end_ms, Some(49_000));
    }

    #[test]
    fn calls_after_last_signal_do_not_dilute_share() {
        let mut detector = Detector::new(rules());
        let mut events = burst(50, 0);
        events.extend((0..500).map(|i| event("voice_inbound", "call_completed", 60_000 + i * 100)));
        feed(&mut detector, &events);
        let closed = detector.close_all();
        assert_eq!(closed[0].failed_contacts, 50);
        assert_eq!(closed[0].total_contacts, 50);
        assert_eq!(closed[0].severity, "sev1");
    }

    fn check(name: &str, ok: bool, time_ms: i64) -> MaskedEvent {
        let mut event = event(&format!("dependency_{name}"), "dependency_check", time_ms);
        event.failed_contacts = i64::from(!ok);
        event.dependency = Some(crate::model::DependencyCheck {
            name: name.into(),
            ok,
            http_status: None,
            location: None,
        });
        event
    }

    #[test]
    fn ivr_errors_open_their_own_incident() {
        let mut detector = Detector::new(rules());
        let events: Vec<_> = (0..50).map(|i| event("voice_inbound", "ivr_error", i * 1000)).collect();
        let changes = feed(&mut detector, &events);
        assert_eq!(changes[0].change, "opened");
        assert_eq!(changes[0].signal_type, "ivr_error");
    }

    #[test]
    fn other_failure_types_do_not_add_to_share() {
        let mut detector = Detector::new(rules());
        let mut events = burst(50, 0);
        events.extend((0..30).map(|i| event("voice_inbound", "ivr_error", i * 1000 + 500)));
        events.sort_by_key(|e| e.event_time_ms);
        feed(&mut detector, &events);
        let closed = detector.close_all();
        assert_eq!(closed[0].signal_type, "call_failed");
        assert_eq!(closed[0].failed_contacts, 50);
    }

    #[test]
    fn dependency_incident_ends_at_recovery() {
        let mut detector = Detector::new(rules());
        let mut changes = feed(&mut detector, &[check("crm", false, 0)]);
        changes.extend(detector.observe(&check("crm", true, 300_000), 0, 1));
        let kinds: Vec<&str> = changes.iter().map(|c| c.change.as_str()).collect();
        assert_eq!(kinds, ["opened", "gated", "closed"]);
        assert_eq!(changes[2].incident_type, "downstream_dependency");
        assert_eq!(changes[2].timestamp_end_ms, Some(300_000));
    }

    #[test]
    fn incident_carries_dependency_status_of_its_time() {
        let mut detector = Detector::new(rules());
        detector.observe(&check("crm", false, 1_000), 1, 0);
        detector.observe(&check("crm", true, 900_000), 1, 1);
        feed(&mut detector, &burst(50, 0));
        let closed = detector.close_all();
        let voice = closed.iter().find(|c| c.affected_service == "voice_inbound").unwrap();
        assert_eq!(voice.dependencies.len(), 1);
        assert_eq!(voice.dependencies[0].status, "failed");
        assert_eq!(voice.dependencies[0].checked_at_ms, 1_000);
    }

    fn decoded(event: MaskedEvent, partition: i32, offset: i64, timestamp_ms: i64) -> Decoded {
        Decoded {
            position: crate::transport::Position {
                topic: "masked".into(),
                partition,
                offset,
            },
            record: Record::Masked(event),
            timestamp_ms: Some(timestamp_ms),
            replay: false,
        }
    }

    #[tokio::test]
    async fn stage_restores_accept_order() {
        let mut stage = WindowStage::new(rules());
        // Two outages 400 s apart reach one partition of `masked` second
        // first, as when normalize read one `raw-events` partition ahead of
        // another. Seen in that order, the first outage would fall outside
        // the window and be lost.
        let first: Vec<_> = (0..50).map(|i| event("voice_inbound", "call_failed", i * 1000)).collect();
        let second: Vec<_> = (0..50).map(|i| event("voice_inbound", "call_failed", 400_000 + i * 1000)).collect();
        let accepted_at = |e: &MaskedEvent| e.event_time_ms / 1000;
        let arrival = second.iter().chain(&first);
        let batch: Vec<Decoded> = arrival.enumerate().map(|(i, e)| decoded(e.clone(), 0, i as i64, accepted_at(e))).collect();

        let outcomes = stage.process(batch).await.unwrap();
        assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)), "held records emit nothing yet");
        assert_eq!(stage.commit_floor("masked", 0), Some(0));

        let emits = stage.finish().await.unwrap();
        let starts: BTreeSet<i64> = emits
            .iter()
            .filter_map(|emit| match &emit.record {
                Record::Incident(incident) if incident.change == "opened" => Some(incident.timestamp_start_ms),
                _ => None,
            })
            .collect();
        assert_eq!(starts, BTreeSet::from([0, 400_000]));
    }

    #[tokio::test]
    async fn revoked_partition_sends_held_changes() {
        let mut stage = WindowStage::new(rules());
        // Record timestamps 50 ms apart stay within the reorder hold, so the
        // stage holds every record of the outage.
        let batch: Vec<Decoded> = (0..50)
            .map(|i| decoded(event("voice_inbound", "call_failed", i * 1000), 1, i, 1_000 + i * 50))
            .collect();
        let outcomes = stage.process(batch).await.unwrap();
        assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)), "held records emit nothing yet");

        stage.partitions_revoked("masked", &[1]);

        assert_eq!(stage.commit_floor("masked", 1), None);
        let emits = stage.tick(0).await.unwrap();
        let changes: Vec<&str> = emits
            .iter()
            .filter_map(|emit| match &emit.record {
                Record::Incident(incident) => Some(incident.change.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(changes, ["opened", "gated"]);
    }

    #[test]
    fn forget_partitions_drops_their_services() {
        let mut detector = Detector::new(rules());
        for (i, e) in burst(50, 0).iter().enumerate() {
            detector.observe(e, 1, i as i64);
        }
        detector.observe(&event("chat", "call_completed", 1_000), 2, 0);

        detector.forget_partitions(&[1]);

        assert_eq!(detector.floor(1), None);
        assert_eq!(detector.floor(2), Some(0));
        let closed = detector.close_all();
        assert!(closed.is_empty(), "the incident of a forgotten partition closed: {closed:?}");
    }

    #[test]
    fn floor_holds_offsets_of_window() {
        let mut detector = Detector::new(rules());
        feed(&mut detector, &burst(10, 0));
        assert_eq!(detector.floor(0), Some(0));
        assert_eq!(detector.floor(1), None);
    }
}
