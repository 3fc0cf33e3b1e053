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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::WindowConfig;
use crate::model::{DependencyStatus, IncidentEvent, MaskedEvent, Record, RecordKind};
use crate::topology::{LATE_EVENTS, MASKED, WINDOWED_INCIDENTS};
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// The incident rules, in milliseconds.
#[derive(Debug, Clone)]
pub struct WindowRules {
    pub window_ms: i64,
    pub thresholds: BTreeMap<String, u64>,
    /// Thresholds of single services, by service and event type, which
    /// replace the entries of `thresholds`.
    pub service_thresholds: BTreeMap<String, BTreeMap<String, u64>>,
    pub gate_min_duration_ms: i64,
    pub gate_min_failure_share: f64,
    pub quiet_ms: i64,
    pub out_of_orderness_ms: i64,
    /// How far behind the event-time watermark an event still counts.
    pub allowed_lateness_ms: i64,
    /// A breach this soon after the service's last incident closed reopens
    /// it. Doubles with each recurrence, up to `cooldown_max_ms`.
    pub cooldown_ms: i64,
    pub cooldown_max_ms: i64,
    /// Time after a close without a breach that resets the cooldown.
    pub calm_ms: i64,
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
            service_thresholds: config
                .services
                .iter()
                .filter(|(_, settings)| !settings.thresholds.is_empty())
                .map(|(service, settings)| (service.clone(), settings.thresholds.clone()))
                .collect(),
            gate_min_duration_ms: config.gate_min_duration_secs as i64 * 1000,
            gate_min_failure_share: config.gate_min_failure_share,
            quiet_ms: config.quiet_secs as i64 * 1000,
            out_of_orderness_ms: config.out_of_orderness_secs as i64 * 1000,
            allowed_lateness_ms: config.allowed_lateness_secs as i64 * 1000,
            cooldown_ms: config.cooldown_secs as i64 * 1000,
            cooldown_max_ms: config.cooldown_max_secs as i64 * 1000,
            calm_ms: config.calm_secs as i64 * 1000,
            idle_timeout_ms: config.idle_timeout_secs as i64 * 1000,
            reorder_ms: REORDER_MS,
        }
    }
}

impl WindowRules {
    /// Returns the threshold of `event_type` for `service`, or `None` when
    /// the type is not a signal.
    pub fn threshold(&self, service: &str, event_type: &str) -> Option<u64> {
        self.service_thresholds
            .get(service)
            .and_then(|thresholds| thresholds.get(event_type))
            .or_else(|| self.thresholds.get(event_type))
            .copied()
    }

    /// Returns the cooldown after `recurrences` recurrences since the last
    /// calm period: the base doubled that many times, at most the maximum.
    pub fn cooldown_ms(&self, recurrences: u32) -> i64 {
        let mut cooldown = self.cooldown_ms;
        for _ in 0..recurrences {
            if cooldown >= self.cooldown_max_ms {
                break;
            }
            cooldown = cooldown.saturating_mul(2);
        }
        cooldown.min(self.cooldown_max_ms)
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
    /// Start of the current breach: the start, or the first signal after a
    /// recurrence reopened the incident.
    segment_start_ms: i64,
    last_signal_ms: i64,
    failed: i64,
    total: i64,
    /// Contacts of the breaches before the current one.
    prior_failed: i64,
    prior_total: i64,
    threshold: u64,
    gated: bool,
    gate_reason: Option<String>,
    recurrences: u32,
    /// `platform_outage` or `downstream_dependency`, decided when the
    /// incident opens or reopens.
    incident_type: &'static str,
    type_reason: Option<String>,
    first_origin: Origin,
}

impl OpenIncident {
    /// Recounts the contacts: those of earlier breaches plus those of the
    /// current one up to its last signal.
    fn refresh_contacts(&mut self, volume: &VecDeque<Sample>) {
        let (failed, total) = contacts_between(volume, &self.signal_type, self.segment_start_ms, self.last_signal_ms);
        self.failed = self.prior_failed + failed;
        self.total = self.prior_total + total;
    }
}

/// The last incident of a service after it closed, kept until the calm
/// period passes so a recurrence can reopen it.
#[derive(Debug, Clone)]
struct ClosedIncident {
    incident: OpenIncident,
    end_ms: i64,
}

#[derive(Debug, Default)]
struct ServiceState {
    /// Signal times by signal type, within the window.
    signals: BTreeMap<String, VecDeque<Sample>>,
    /// Every event carrying contacts, within the window.
    volume: VecDeque<Sample>,
    clock_ms: i64,
    open: Option<OpenIncident>,
    closed: Option<ClosedIncident>,
    /// Recurrences since the last calm period: the cooldown is
    /// `cooldown_ms` doubled this many times, up to `cooldown_max_ms`.
    backoff: u32,
}

/// An event that came after the allowed lateness and was not counted.
#[derive(Debug, Clone)]
pub struct LateEvent {
    pub event: MaskedEvent,
    pub partition: i32,
    pub offset: i64,
    /// The event-time watermark when the event arrived.
    pub watermark_ms: i64,
}

/// The incident detector: plain logic over masked events.
pub struct Detector {
    rules: WindowRules,
    services: HashMap<String, ServiceState>,
    partition_clocks: BTreeMap<i32, (i64, Instant)>,
    dependencies: DependencyHistory,
    last_record: Option<(i64, Instant)>,
    /// Late events not yet taken by `take_late`.
    late: Vec<LateEvent>,
    late_count: u64,
    spike_count: u64,
}

impl Detector {
    pub fn new(rules: WindowRules) -> Detector {
        Detector {
            rules,
            services: HashMap::new(),
            partition_clocks: BTreeMap::new(),
            dependencies: DependencyHistory::default(),
            last_record: None,
            late: Vec::new(),
            late_count: 0,
            spike_count: 0,
        }
    }

    /// Returns how many incidents closed without passing the postmortem
    /// gate. A reopened incident that closes below the gate again counts
    /// again.
    pub fn spike_count(&self) -> u64 {
        self.spike_count
    }

    fn count_spikes(&mut self, changes: &[IncidentEvent]) {
        self.spike_count += changes.iter().filter(|c| c.change == "closed" && !c.gated).count() as u64;
    }

    /// Takes the late events observed since the last call.
    pub fn take_late(&mut self) -> Vec<LateEvent> {
        std::mem::take(&mut self.late)
    }

    /// Returns how many late events the detector has set aside.
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// Adds one event; returns the incident changes it causes.
    pub fn observe(&mut self, event: &MaskedEvent, partition: i32, offset: i64) -> Vec<IncidentEvent> {
        self.observe_at(event, partition, offset, Instant::now())
    }

    /// Adds one event that arrived at the wall-clock instant `now`.
    pub fn observe_at(&mut self, event: &MaskedEvent, partition: i32, offset: i64, now: Instant) -> Vec<IncidentEvent> {
        let origin = Origin { partition, offset };
        let time = event.event_time_ms;
        // The event's own partition counts even when it was idle, and a
        // partition's first record is never late: the other partitions'
        // clocks alone say nothing about how far this one had got.
        let own_clock = self.partition_clocks.get(&partition).map(|(clock, _)| *clock);
        if let (Some(own_clock), Some(stage_watermark)) = (own_clock, self.event_watermark_at(now)) {
            let watermark_ms = stage_watermark.min(own_clock - self.rules.out_of_orderness_ms);
            if time < watermark_ms - self.rules.allowed_lateness_ms {
                self.late_count += 1;
                self.late.push(LateEvent {
                    event: event.clone(),
                    partition,
                    offset,
                    watermark_ms,
                });
                return Vec::new();
            }
        }
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

        // Only a failed check can open a dependency incident, which is the
        // only kind whose type depends on the platform's health.
        let platform_failures = match &event.dependency {
            Some(check) if !check.ok => self.platform_failures(),
            _ => Vec::new(),
        };
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
        let is_signal = event.failed_contacts > 0 && rules.threshold(&event.affected_service, &event.event_type).is_some();
        if is_signal {
            state
                .signals
                .entry(event.event_type.clone())
                .or_default()
                .push_back(sample.clone());
        }
        evict(state, rules);

        let mut changes = Vec::new();
        let service = event.affected_service.as_str();
        // A signal after the quiet period ends the open incident first, even
        // when the watermark has not passed it yet.
        let quiet_over = state
            .open
            .as_ref()
            .is_some_and(|open| is_signal && time > open.last_signal_ms + rules.quiet_ms);
        if quiet_over {
            let end_ms = state.open.as_ref().expect("checked above").last_signal_ms;
            changes.extend(close_open(service, state, end_ms, rules, dependencies));
        }
        if let Some(open) = state.open.as_mut() {
            if is_signal && event.event_type == open.signal_type {
                open.last_signal_ms = open.last_signal_ms.max(time);
            }
            open.refresh_contacts(&state.volume);
            if !open.gated && gate(open, rules) {
                changes.push(incident_event(service, open, "gated", None, rules, dependencies));
            }
            // A synthetic check reports state changes only, so a dependency
            // incident ends when its check recovers, not after a quiet period.
            let recovered = open.signal_type == "dependency_check" && event.dependency.as_ref().is_some_and(|d| d.ok);
            if recovered && time >= open.last_signal_ms {
                open.last_signal_ms = time;
                changes.extend(close_open(service, state, time, rules, dependencies));
            }
        } else if is_signal {
            changes.extend(open_on_breach(event, state, &platform_failures, rules, dependencies));
        }
        self.count_spikes(&changes);
        changes.extend(self.close_quiet(self.watermark_at(now)));
        changes
    }

    /// Returns the stage's event-time watermark, or `None` before any record.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark_at(Instant::now())
    }

    /// Returns the watermark that closes incidents at the wall-clock instant
    /// `now`. It is the event-time watermark while a partition is active.
    /// When every partition is idle, it is the highest event time seen plus
    /// the wall-clock time since the last record, so incidents close and
    /// gates fire at night.
    pub fn watermark_at(&self, now: Instant) -> Option<i64> {
        let (latest, last_seen) = self.last_record?;
        match self.active_partition_floor(now) {
            Some(min) => Some(min - self.rules.out_of_orderness_ms),
            None => Some(latest + now.saturating_duration_since(last_seen).as_millis() as i64),
        }
    }

    /// Returns each service with an open incident of a platform signal type,
    /// with that type, sorted by service.
    fn platform_failures(&self) -> Vec<(String, String)> {
        let mut failures: Vec<(String, String)> = self
            .services
            .iter()
            .filter_map(|(service, state)| {
                let open = state.open.as_ref()?;
                PLATFORM_SIGNAL_TYPES
                    .contains(&open.signal_type.as_str())
                    .then(|| (service.clone(), open.signal_type.clone()))
            })
            .collect();
        failures.sort();
        failures
    }

    /// Returns the event-time watermark that lateness is measured against:
    /// the lowest clock of the active partitions, or the highest event time
    /// when every partition is idle, minus the out-of-orderness. It never
    /// moves with the wall clock, so an event that arrives after a quiet
    /// night is not late for that reason alone.
    pub fn event_watermark_at(&self, now: Instant) -> Option<i64> {
        let (latest, _) = self.last_record?;
        let floor = self.active_partition_floor(now).unwrap_or(latest);
        Some(floor - self.rules.out_of_orderness_ms)
    }

    /// Returns the lowest clock of the partitions that had a record within
    /// the idle timeout before `now`.
    fn active_partition_floor(&self, now: Instant) -> Option<i64> {
        let idle_ms = self.rules.idle_timeout_ms as u128;
        self.partition_clocks
            .values()
            .filter(|(_, seen)| now.saturating_duration_since(*seen).as_millis() < idle_ms)
            .map(|(clock, _)| *clock)
            .min()
    }

    /// Closes every open incident whose last signal is older than the quiet
    /// period at `watermark`.
    pub fn close_quiet(&mut self, watermark: Option<i64>) -> Vec<IncidentEvent> {
        let Some(watermark) = watermark else {
            return Vec::new();
        };
        let quiet = self.rules.quiet_ms;
        let closed = self.close_where(|open| watermark > open.last_signal_ms + quiet);
        // After a calm period, a breach opens a new incident and the
        // cooldown is back to its base.
        let calm = self.rules.calm_ms;
        for state in self.services.values_mut() {
            if state.closed.as_ref().is_some_and(|c| watermark > c.end_ms + calm) {
                state.closed = None;
                state.backoff = 0;
            }
        }
        closed
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
                let end_ms = state.open.as_ref().expect("checked above").last_signal_ms;
                closed.extend(close_open(service, state, end_ms, &self.rules, &self.dependencies));
            }
        }
        closed.sort_by(|a, b| a.incident_id.cmp(&b.incident_id));
        self.count_spikes(&closed);
        closed
    }

    /// Returns the lowest offset of `partition` that the state still keeps.
    pub fn floor(&self, partition: i32) -> Option<i64> {
        self.services
            .values()
            .flat_map(|state| {
                // A closed incident that a recurrence could still reopen
                // is rebuilt from its first record after a restart too.
                let open = state.open.as_ref().map(|o| o.first_origin);
                let closed = state.closed.as_ref().map(|c| c.incident.first_origin);
                let held = state.volume.iter().chain(state.signals.values().flatten()).map(|s| s.origin);
                open.into_iter().chain(closed).chain(held)
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

/// Closes the open incident of `state` at `end_ms` and keeps it as the
/// service's last closed incident.
fn close_open(
    service: &str,
    state: &mut ServiceState,
    end_ms: i64,
    rules: &WindowRules,
    dependencies: &DependencyHistory,
) -> Option<IncidentEvent> {
    let incident = state.open.take()?;
    let closed = incident_event(service, &incident, "closed", Some(end_ms), rules, dependencies);
    state.closed = Some(ClosedIncident { incident, end_ms });
    Some(closed)
}

/// Opens an incident when the signals of the event's type within the
/// window reach their threshold. A breach within the cooldown after the
/// service's last incident closed reopens that incident instead.
fn open_on_breach(
    event: &MaskedEvent,
    state: &mut ServiceState,
    platform_failures: &[(String, String)],
    rules: &WindowRules,
    dependencies: &DependencyHistory,
) -> Vec<IncidentEvent> {
    let service = event.affected_service.as_str();
    let Some(threshold) = rules.threshold(service, &event.event_type) else {
        return Vec::new();
    };
    // A late signal may already be outside the window, and then it has been
    // evicted with its entry.
    let Some(signals) = state.signals.get(&event.event_type) else {
        return Vec::new();
    };
    if (signals.len() as u64) < threshold {
        return Vec::new();
    }
    let first = signals.iter().min_by_key(|s| s.time_ms).expect("signals reached a threshold of 1 or more");
    let (first_signal_ms, first_signal_origin) = (first.time_ms, first.origin);
    let last_signal_ms = signals.iter().map(|s| s.time_ms).max().unwrap_or(event.event_time_ms);

    let (incident_type, type_reason) = classify(event, platform_failures);
    let mut changes = Vec::new();
    if let Some(closed) = state.closed.take() {
        let gap_ms = event.event_time_ms - closed.end_ms;
        if gap_ms > rules.calm_ms {
            state.backoff = 0;
        } else if gap_ms <= rules.cooldown_ms(state.backoff) && closed.incident.signal_type == event.event_type {
            let mut open = closed.incident;
            open.prior_failed = open.failed;
            open.prior_total = open.total;
            open.segment_start_ms = first_signal_ms.max(open.last_signal_ms + 1);
            open.last_signal_ms = open.last_signal_ms.max(last_signal_ms);
            open.recurrences += 1;
            open.incident_type = incident_type;
            open.type_reason = type_reason;
            open.refresh_contacts(&state.volume);
            state.backoff = state.backoff.saturating_add(1);
            changes.push(incident_event(service, &open, "reopened", None, rules, dependencies));
            if !open.gated && gate(&mut open, rules) {
                changes.push(incident_event(service, &open, "gated", None, rules, dependencies));
            }
            state.open = Some(open);
            return changes;
        }
    }

    let first_origin = state
        .volume
        .iter()
        .filter(|s| s.time_ms >= first_signal_ms)
        .map(|s| s.origin)
        .min_by_key(|o| o.offset)
        .unwrap_or(first_signal_origin);
    let mut open = OpenIncident {
        id: incident_id(service, first_signal_ms),
        signal_type: event.event_type.clone(),
        platform_source: event.platform_source.clone(),
        start_ms: first_signal_ms,
        segment_start_ms: first_signal_ms,
        last_signal_ms,
        failed: 0,
        total: 0,
        prior_failed: 0,
        prior_total: 0,
        threshold,
        gated: false,
        gate_reason: None,
        recurrences: 0,
        incident_type,
        type_reason,
        first_origin,
    };
    open.refresh_contacts(&state.volume);
    changes.push(incident_event(service, &open, "opened", None, rules, dependencies));
    if gate(&mut open, rules) {
        changes.push(incident_event(service, &open, "gated", None, rules, dependencies));
    }
    state.open = Some(open);
    changes
}

/// Event types that are the platform's own failure signals. While none of
/// them has an open incident, the platform counts as healthy.
const PLATFORM_SIGNAL_TYPES: [&str; 4] = ["call_failed", "ivr_error", "service_level_failure", "api_connection_error"];

/// Decides the type of an incident that `event` opens or reopens. A failed
/// dependency check is a `downstream_dependency` incident while the platform
/// is healthy, and a `platform_outage` while any service has an open
/// incident of a platform signal type. Every other signal is a
/// `platform_outage`.
fn classify(event: &MaskedEvent, platform_failures: &[(String, String)]) -> (&'static str, Option<String>) {
    let Some(check) = event.dependency.as_ref().filter(|_| event.event_type == "dependency_check") else {
        return ("platform_outage", None);
    };
    let failed = format!("dependency {} failed at {}", check.name, event.event_time_ms);
    if platform_failures.is_empty() {
        let reason = format!("{failed} while the platform signals of every service were healthy");
        return ("downstream_dependency", Some(reason));
    }
    let failing: Vec<String> = platform_failures
        .iter()
        .map(|(service, signal_type)| format!("{service} ({signal_type})"))
        .collect();
    let reason = format!("{failed} while platform signals also failed on {}", failing.join(", "));
    ("platform_outage", Some(reason))
}

fn evict(state: &mut ServiceState, rules: &WindowRules) {
    let horizon = state.clock_ms - rules.window_ms;
    // An open incident keeps every sample from the start of its current
    // breach on, its first signal included.
    match state.open.as_ref() {
        Some(open) => state.volume.retain(|s| s.time_ms >= open.segment_start_ms.min(horizon + 1)),
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
    IncidentEvent {
        incident_id: open.id.clone(),
        change: change.to_string(),
        incident_type: open.incident_type.to_string(),
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
        recurrences: open.recurrences as i32,
        type_reason: open.type_reason.clone(),
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
                emits.extend(Self::incident_emits(observed));
                emits.extend(late.into_iter().map(|late| self.late_emit(late)));
            }
        }
        emits
    }

    fn incident_emits(changes: Vec<IncidentEvent>) -> Vec<Emit> {
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
                allowed_lateness_ms = self.detector.rules.allowed_lateness_ms,
                late_count,
                "Event arrived after the allowed lateness; sent to late-events and not counted."
            );
        }
        event.attributes.insert("late.watermark_ms".into(), watermark_ms.to_string());
        event
            .attributes
            .insert("late.allowed_lateness_ms".into(), self.detector.rules.allowed_lateness_ms.to_string());
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
        let released = self.release(self.newest_timestamp_ms.saturating_sub(self.detector.rules.reorder_ms));
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
        emits.extend(Self::incident_emits(self.detector.close_quiet(watermark)));
        Ok(emits)
    }

    async fn finish(&mut self) -> Result<Vec<Emit>, TransportError> {
        let mut emits = std::mem::take(&mut self.pending);
        emits.extend(self.release(i64::MAX));
        emits.extend(Self::incident_emits(self.detector.close_all()));
        Ok(emits)
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
        // The second outage comes within the cooldown, so it reopens the
        // first incident.
        let changes: BTreeSet<(&str, i64, i32)> = emits
            .iter()
            .filter_map(|emit| match &emit.record {
                Record::Incident(incident) if incident.change != "gated" => {
                    Some((incident.change.as_str(), incident.last_signal_ms, incident.recurrences))
                }
                _ => None,
            })
            .collect();
        let expected = [("opened", 49_000, 0), ("closed", 49_000, 0), ("reopened", 449_000, 1), ("closed", 449_000, 1)];
        assert_eq!(changes, BTreeSet::from(expected));
    }

    fn kinds(changes: &[IncidentEvent]) -> Vec<&str> {
        changes.iter().map(|c| c.change.as_str()).collect()
    }

    #[test]
    fn threshold_boundary_table() {
        // (failed calls within 49 s, expected changes)
        let cases: [(i64, &[&str]); 3] = [(49, &[]), (50, &["opened", "gated"]), (51, &["opened", "gated"])];
        for (failures, expected) in cases {
            let mut detector = Detector::new(rules());
            let changes = feed(&mut detector, &burst(failures, 0));
            assert_eq!(kinds(&changes), expected, "{failures} failures");
        }
    }

    #[test]
    fn duration_gate_boundary_table() {
        // (last signal after the start in ms, whether the duration gate passes)
        let cases = [(600_000, false), (601_000, true)];
        for (last_signal_ms, gated) in cases {
            let mut detector = Detector::new(rules());
            // 50 failures among 2000 completed calls stay below the share.
            let mut events = burst(50, 2000);
            let mut time = 60_000;
            while time < last_signal_ms {
                events.push(event("voice_inbound", "call_failed", time));
                time += 60_000;
            }
            events.push(event("voice_inbound", "call_failed", last_signal_ms));
            let changes = feed(&mut detector, &events);
            let gate = changes.iter().find(|c| c.change == "gated");
            assert_eq!(gate.is_some(), gated, "last signal at {last_signal_ms} ms: {:?}", kinds(&changes));
            if let Some(gate) = gate {
                assert_eq!(gate.gate_reason.as_deref(), Some("lasted 601 s, longer than 600 s"));
            }
        }
    }

    #[test]
    fn share_gate_boundary_table() {
        // (completed calls beside 50 failed ones, expected changes)
        let cases: [(i64, &[&str]); 2] = [(950, &["opened"]), (930, &["opened", "gated"])];
        for (completed, expected) in cases {
            let mut detector = Detector::new(rules());
            let changes = feed(&mut detector, &burst(50, completed));
            assert_eq!(kinds(&changes), expected, "50 failed of {}", 50 + completed);
        }
    }

    #[test]
    fn idle_partition_stops_holding_watermark() {
        let mut detector = Detector::new(rules());
        let start = Instant::now();
        detector.observe_at(&event("voice_inbound", "call_completed", 10_000), 1, 0, start);
        let later = start + Duration::from_secs(45);
        detector.observe_at(&event("voice_inbound", "call_completed", 100_000), 0, 0, later);
        // Partition 1 had a record 45 s ago, so it still holds the watermark.
        assert_eq!(detector.watermark_at(later), Some(10_000 - 30_000));
        // Past the 60 s idle timeout, only partition 0 counts.
        let idle = start + Duration::from_secs(61);
        assert_eq!(detector.watermark_at(idle), Some(100_000 - 30_000));
    }

    #[test]
    fn wall_clock_closes_incident_without_traffic() {
        let mut detector = Detector::new(rules());
        let start = Instant::now();
        for (i, e) in burst(50, 0).iter().enumerate() {
            detector.observe_at(e, 0, i as i64, start);
        }
        // No record arrives after the last signal at 49 s of event time.
        let night = |detector: &Detector, secs| detector.watermark_at(start + Duration::from_secs(secs));
        assert_eq!(night(&detector, 200), Some(49_000 + 200_000));
        let at_quiet = night(&detector, 300);
        assert!(detector.close_quiet(at_quiet).is_empty(), "closed at the quiet period");
        let after_quiet = night(&detector, 301);
        let closed = detector.close_quiet(after_quiet);
        assert_eq!(kinds(&closed), ["closed"]);
        assert_eq!(closed[0].timestamp_end_ms, Some(49_000));
    }

    #[test]
    fn count_hovering_at_threshold_opens_once() {
        let mut detector = Detector::new(rules());
        // One failure every 6 s keeps 49 or 50 signals in the 300 s window
        // for half an hour.
        let events: Vec<_> = (0..300).map(|i| event("voice_inbound", "call_failed", i * 6_000)).collect();
        let changes = feed(&mut detector, &events);
        assert_eq!(kinds(&changes), ["opened", "gated"]);
        let closed = detector.close_all();
        assert_eq!(kinds(&closed), ["closed"]);
        assert_eq!(closed[0].incident_id, changes[0].incident_id);
    }

    #[test]
    fn lateness_boundary_table() {
        // The watermark is 200 s - 30 s of out-of-orderness, and 60 s of
        // lateness are allowed on top: 110 s is the oldest time that counts.
        let cases = [(110_000, false), (109_999, true)];
        for (time_ms, late) in cases {
            let mut detector = Detector::new(rules());
            let now = Instant::now();
            detector.observe_at(&event("voice_inbound", "call_completed", 200_000), 0, 0, now);
            assert_eq!(detector.event_watermark_at(now), Some(170_000));
            detector.observe_at(&event("voice_inbound", "call_failed", time_ms), 0, 1, now);
            let taken = detector.take_late();
            assert_eq!(taken.len(), usize::from(late), "event at {time_ms} ms");
            assert_eq!(detector.late_count(), u64::from(late), "event at {time_ms} ms");
            if let Some(taken) = taken.first() {
                assert_eq!((taken.partition, taken.offset, taken.watermark_ms), (0, 1, 170_000));
            }
        }
    }

    #[test]
    fn late_failures_open_nothing() {
        let mut detector = Detector::new(rules());
        let now = Instant::now();
        detector.observe_at(&event("voice_inbound", "call_completed", 1_000_000), 0, 0, now);
        let late: Vec<_> = (0..60).map(|i| event("voice_inbound", "call_failed", i * 1000)).collect();
        let changes: Vec<_> = late.iter().flat_map(|e| detector.observe_at(e, 0, 1, now)).collect();
        assert!(changes.is_empty(), "{:?}", kinds(&changes));
        assert_eq!(detector.late_count(), 60);
        assert_eq!(detector.floor(0), Some(0), "late events hold no offset");
    }

    #[test]
    fn quiet_night_makes_no_event_late() {
        let mut detector = Detector::new(rules());
        let start = Instant::now();
        detector.observe_at(&event("voice_inbound", "call_completed", 100_000), 0, 0, start);
        // Eight hours later, the wall clock has moved the closing watermark,
        // but an event from the last minute is not late.
        let morning = start + Duration::from_secs(8 * 3600);
        assert!(detector.watermark_at(morning).unwrap() > 8 * 3_600_000);
        detector.observe_at(&event("voice_inbound", "call_completed", 95_000), 0, 1, morning);
        assert_eq!(detector.late_count(), 0);
    }

    #[tokio::test]
    async fn stage_sends_late_events_aside() {
        let mut rules = rules();
        rules.reorder_ms = 0;
        let mut stage = WindowStage::new(rules);
        let mut late = event("voice_inbound", "call_failed", 1_000);
        late.event_id = "late-one".into();
        let batch = vec![
            decoded(event("voice_inbound", "call_completed", 500_000), 2, 10, 1),
            decoded(late.clone(), 2, 11, 2),
        ];
        let outcomes = stage.process(batch).await.unwrap();
        let emits: Vec<&Emit> = outcomes.iter().flat_map(|o| o.as_ref().unwrap()).collect();
        assert_eq!(emits.len(), 1);
        assert_eq!(emits[0].topic, LATE_EVENTS);
        assert_eq!(emits[0].key, "masked/2/11");
        let Record::Masked(sent) = &emits[0].record else {
            panic!("late event is not a masked record: {:?}", emits[0].record);
        };
        assert_eq!(sent.event_id, "late-one");
        assert_eq!(sent.attributes.get("late.watermark_ms").map(String::as_str), Some("470000"));
        assert_eq!(sent.attributes.get("late.allowed_lateness_ms").map(String::as_str), Some("60000"));

        // A replay of a late record sends nothing again.
        let mut replayed = decoded(late, 2, 11, 3);
        replayed.replay = true;
        let outcomes = stage.process(vec![replayed]).await.unwrap();
        assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)));
        assert!(stage.tick(0).await.unwrap().is_empty());
    }

    /// 50 failed calls of `voice_inbound`, one a second from `start_ms`.
    fn outage(start_ms: i64) -> Vec<MaskedEvent> {
        (0..50).map(|i| event("voice_inbound", "call_failed", start_ms + i * 1000)).collect()
    }

    #[test]
    fn recurrence_within_cooldown_reopens_table() {
        // Each outage lasts 49 s and closes at its last signal. (gap from the
        // previous close to the next breach in s, expected change,
        // recurrences). The cooldown doubles from 600 s to 1200 s and 2400 s,
        // and then stops at the 3600 s maximum.
        let cases: [(i64, &str, i32); 6] = [
            (0, "opened", 0),
            (600, "reopened", 1),
            (1200, "reopened", 2),
            (2400, "reopened", 3),
            (3600, "reopened", 4),
            (3601, "opened", 0),
        ];
        let mut detector = Detector::new(rules());
        let mut offset = 0;
        let mut close_ms = 1_000_000;
        let mut first_id = None;
        for (gap_s, change, recurrences) in cases {
            let breach_ms = close_ms + gap_s * 1000;
            // The 50th signal breaches, so the outage starts 49 s earlier.
            let mut changes = Vec::new();
            for e in outage(breach_ms - 49_000) {
                changes.extend(detector.observe(&e, 0, offset));
                offset += 1;
            }
            let change_at = changes.iter().find(|c| c.change == change).unwrap_or_else(|| panic!("gap {gap_s} s: {:?}", kinds(&changes)));
            assert_eq!(change_at.recurrences, recurrences, "gap {gap_s} s");
            let id = first_id.get_or_insert_with(|| change_at.incident_id.clone());
            assert_eq!(*id == change_at.incident_id, change == "reopened" || gap_s == 0, "gap {gap_s} s");
            close_ms = breach_ms;
            let closed = detector.close_quiet(Some(close_ms + 300_001));
            assert_eq!(kinds(&closed), ["closed"], "gap {gap_s} s");
        }
    }

    #[test]
    fn calm_period_resets_cooldown() {
        let mut detector = Detector::new(rules());
        let mut offset = 0;
        let mut run = |detector: &mut Detector, start_ms: i64| {
            let changes: Vec<_> = outage(start_ms)
                .iter()
                .flat_map(|e| {
                    offset += 1;
                    detector.observe(e, 0, offset)
                })
                .collect();
            detector.close_quiet(Some(start_ms + 49_000 + 300_001));
            changes
        };
        run(&mut detector, 0);
        let second = run(&mut detector, 49_000 + 500_000);
        assert_eq!(second[0].change, "reopened");
        // More than the 3600 s calm period after the second close.
        let third = run(&mut detector, 549_000 + 49_000 + 3_601_000);
        assert_eq!(third[0].change, "opened");
        // The cooldown is back at 600 s, so a breach 700 s after the close
        // is a new incident, where the doubled 1200 s would have reopened it.
        let third_close = 549_000 + 49_000 + 3_601_000 + 49_000;
        let fourth = run(&mut detector, third_close + 700_000 - 49_000);
        assert_eq!(fourth[0].change, "opened");
        assert_ne!(fourth[0].incident_id, third[0].incident_id);
    }

    #[test]
    fn reopened_incident_adds_up_contacts() {
        let mut detector = Detector::new(rules());
        let mut events = outage(0);
        events.extend(outage(400_000));
        let changes = feed(&mut detector, &events);
        assert_eq!(kinds(&changes), ["opened", "gated", "closed", "reopened"]);
        assert_eq!(changes[3].failed_contacts, 100);
        assert_eq!(changes[3].total_contacts, 100);
        assert_eq!(changes[3].timestamp_start_ms, 0);
        let closed = detector.close_all();
        assert_eq!(closed[0].recurrences, 1);
        assert_eq!(closed[0].incident_id, changes[0].incident_id);
    }

    #[test]
    fn ungated_spike_is_counted_not_gated() {
        let mut detector = Detector::new(rules());
        // 50 failed of 2000 calls: 2.5%, closed within 49 s.
        feed(&mut detector, &burst(50, 1950));
        let closed = detector.close_all();
        assert_eq!(kinds(&closed), ["closed"]);
        assert!(!closed[0].gated);
        assert_eq!(detector.spike_count(), 1);
    }

    #[test]
    fn dependency_classification_table() {
        // (platform events before the CRM check fails, expected type, reason)
        let healthy: Vec<MaskedEvent> = (0..200).map(|i| event("voice_inbound", "call_completed", i * 100)).collect();
        let mut failing = outage(0);
        failing.extend(healthy.iter().cloned());
        failing.sort_by_key(|e| e.event_time_ms);
        let cases = [
            (
                healthy,
                "downstream_dependency",
                "dependency crm failed at 60000 while the platform signals of every service were healthy",
            ),
            (
                failing,
                "platform_outage",
                "dependency crm failed at 60000 while platform signals also failed on voice_inbound (call_failed)",
            ),
        ];
        for (platform, incident_type, reason) in cases {
            let mut detector = Detector::new(rules());
            feed(&mut detector, &platform);
            let changes = detector.observe(&check("crm", false, 60_000), 1, 0);
            assert_eq!(kinds(&changes), ["opened", "gated"], "{incident_type}");
            assert_eq!(changes[0].affected_service, "dependency_crm");
            assert_eq!(changes[0].incident_type, incident_type);
            assert_eq!(changes[0].type_reason.as_deref(), Some(reason));
            assert_eq!(changes[0].dependencies[0].name, "crm");
            assert_eq!(changes[0].dependencies[0].status, "failed");
        }
    }

    #[test]
    fn platform_incident_has_no_type_reason() {
        let mut detector = Detector::new(rules());
        detector.observe(&check("crm", false, 0), 1, 0);
        let changes = feed(&mut detector, &outage(1_000));
        let voice = changes.iter().find(|c| c.affected_service == "voice_inbound").expect("voice incident");
        assert_eq!(voice.incident_type, "platform_outage");
        assert_eq!(voice.type_reason, None);
    }

    #[test]
    fn service_threshold_overrides_default() {
        let mut config = WindowConfig::default();
        let chat = config.services.entry("chat".into()).or_default();
        chat.thresholds.insert("call_failed".into(), 10);
        let rules = WindowRules::from(&config);
        assert_eq!(rules.threshold("chat", "call_failed"), Some(10));
        assert_eq!(rules.threshold("chat", "ivr_error"), Some(50), "other types keep the default");
        assert_eq!(rules.threshold("voice_inbound", "call_failed"), Some(50));

        // (service, failed calls, expected changes)
        let cases: [(&str, i64, &[&str]); 3] =
            [("chat", 9, &[]), ("chat", 10, &["opened", "gated"]), ("voice_inbound", 10, &[])];
        for (service, failures, expected) in cases {
            let mut detector = Detector::new(rules.clone());
            let events: Vec<_> = (0..failures).map(|i| event(service, "call_failed", i * 1000)).collect();
            let changes = feed(&mut detector, &events);
            assert_eq!(kinds(&changes), expected, "{service} with {failures} failures");
            if let Some(opened) = changes.first() {
                assert_eq!(opened.threshold_count, 10);
            }
        }
    }

    #[test]
    fn floor_holds_offsets_of_window() {
        let mut detector = Detector::new(rules());
        feed(&mut detector, &burst(10, 0));
        assert_eq!(detector.floor(0), Some(0));
        assert_eq!(detector.floor(1), None);
    }
}
