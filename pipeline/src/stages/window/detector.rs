//! The incident detector: per-service windows, the watermark, lateness,
//! incident opening, gating, recurrence and closing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::WindowRules;
use crate::model::{DependencyStatus, IncidentEvent, MaskedEvent};

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

    pub fn rules(&self) -> &WindowRules {
        &self.rules
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
        // The event's own partition counts even when it was idle. A
        // partition's first record is never late, because the other
        // partitions' clocks do not show how far this one had got.
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
    /// the wall-clock time since the last record, so incidents close at
    /// night.
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

    /// Drops the clocks of `partitions` and the state of every service whose
    /// records come from one of them. Dependency statuses are kept, because
    /// they are shared by every partition.
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partition_clocks.remove(partition);
        }
        self.services.retain(|_, state| {
            let open = state.open.as_ref().map(|o| o.first_origin);
            let closed = state.closed.as_ref().map(|c| c.incident.first_origin);
            let held = state.volume.iter().chain(state.signals.values().flatten()).map(|s| s.origin);
            let mut origins = open.into_iter().chain(closed).chain(held);
            !origins.any(|origin| partitions.contains(&origin.partition))
        });
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
    // An ISO-8601 time, because a bare epoch millisecond count reads as a
    // phone number to the blameless-document check of the ticket stage.
    let at = chrono::DateTime::from_timestamp_millis(event.event_time_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| event.event_time_ms.to_string());
    let failed = format!("dependency {} failed at {at}", check.name);
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
