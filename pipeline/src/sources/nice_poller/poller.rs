//! The poll loop: which intervals are due for each business unit, and the
//! order of effects for each one. An interval's payload is published and
//! acknowledged before its cursor is written and acknowledged, so a restart
//! never skips an interval, and repeats one only after a crash between the
//! two acknowledgements.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::client::{Credentials, CxoneClient, FetchError};
use super::cursor::{cursor_key, CursorStore};
use super::NicePollerConfig;
use crate::model::SourceCursor;
use crate::publish::Publisher;
use crate::sources::nice::{AVAILABILITY_DROP_SHARE, PREVIOUS_AGENTS_AVAILABLE};
use crate::sources::{number_field, text_field};
use crate::stages::ingest::Delivered;
use crate::transport::TransportError;

/// Source name of NICE cursors, the first part of their key.
pub const NICE_SOURCE: &str = "nice";
/// Delivery path written to the capture record.
pub const NICE_DELIVERY: &str = "nice_reporting_poll";

/// The poller's source of time, injected so tests move it without waiting.
#[async_trait]
pub trait Clock: Send + Sync {
    /// Returns the time in UTC milliseconds.
    fn now_ms(&self) -> i64;

    /// Waits for `duration`.
    async fn sleep(&self, duration: Duration);
}

/// The wall clock and tokio's timer.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::transport::now_ms()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A clock for tests. It moves only when set or advanced, and a sleep
/// advances it by the duration at once and records the duration.
pub struct ManualClock {
    now_ms: Mutex<i64>,
    sleeps: Mutex<Vec<Duration>>,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Mutex::new(now_ms),
            sleeps: Mutex::new(Vec::new()),
        }
    }

    pub fn set(&self, now_ms: i64) {
        *self.now_ms.lock().unwrap_or_else(|p| p.into_inner()) = now_ms;
    }

    pub fn advance(&self, duration: Duration) {
        *self.now_ms.lock().unwrap_or_else(|p| p.into_inner()) += duration.as_millis() as i64;
    }

    /// Returns every duration slept so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now_ms.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sleep(&self, duration: Duration) {
        self.sleeps.lock().unwrap_or_else(|p| p.into_inner()).push(duration);
        self.advance(duration);
        // Lets other tasks run, as a real sleep would.
        tokio::task::yield_now().await;
    }
}

/// Returns the start and end (exclusive) of the interval of `interval_ms`
/// that contains `time_ms`. Intervals are aligned to the Unix epoch, so one
/// minute runs from second 0 to second 60.
pub fn interval_containing(time_ms: i64, interval_ms: i64) -> (i64, i64) {
    let start = time_ms.div_euclid(interval_ms) * interval_ms;
    (start, start + interval_ms)
}

/// Formats UTC milliseconds as ISO-8601 with milliseconds and `Z`.
pub(super) fn iso_millis(time_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(time_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| time_ms.to_string())
}

/// One business unit: its client and where it resumes.
struct BusinessUnit {
    id: String,
    client: CxoneClient,
    /// End of the last interval published, from the cursor.
    last_end_ms: Option<i64>,
    /// Available agents per skill id of the interval ending at `last_end_ms`.
    last_counts: Option<BTreeMap<String, f64>>,
}

/// The failure that kept one interval from being published.
enum IntervalError {
    /// CXone failed after the retries: the interval is tried again on the
    /// next poll.
    Fetch(FetchError),
    /// Kafka failed: the poller stops, and a restart resumes at the cursor.
    Transport(TransportError),
}

/// Polls CXone for each business unit and publishes every completed
/// interval once, in order.
pub struct Poller {
    units: Vec<BusinessUnit>,
    interval_ms: i64,
    max_catch_up: i64,
    drop_share: f64,
    publisher: Arc<Publisher>,
    cursors: Arc<dyn CursorStore>,
    clock: Arc<dyn Clock>,
}

impl Poller {
    /// Reads every stored cursor and builds the poller, which resumes each
    /// business unit after its cursor. A business unit without a cursor
    /// starts at the last completed interval.
    pub async fn start(
        settings: &NicePollerConfig,
        publisher: Arc<Publisher>,
        cursors: Arc<dyn CursorStore>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Poller> {
        let stored = cursors.read_all().await?;
        let mut units = Vec::with_capacity(settings.business_units.len());
        for unit in &settings.business_units {
            let credentials = Credentials {
                client_id: settings.client_id.clone(),
                client_secret: settings.client_secret.clone(),
                access_key_id: unit.access_key_id.clone(),
                access_key_secret: unit.access_key_secret.clone(),
            };
            let client = CxoneClient::new(
                &unit.id,
                &settings.token_url,
                &settings.api_base_url,
                credentials,
                Duration::from_secs(settings.request_timeout_secs),
                settings.retry_policy(),
                Duration::from_secs(settings.token_refresh_margin_secs),
                settings.max_pages,
                Arc::clone(&clock),
            )?;
            let cursor = stored.get(&cursor_key(NICE_SOURCE, &unit.id));
            match cursor {
                Some(cursor) => tracing::info!(
                    source = NICE_SOURCE,
                    business_unit = %unit.id,
                    resume_at = %iso_millis(cursor.interval_end_ms),
                    "NICE CXone business unit resumes after its stored cursor."
                ),
                None => tracing::info!(
                    source = NICE_SOURCE,
                    business_unit = %unit.id,
                    "NICE CXone business unit has no stored cursor; it starts at the last completed interval."
                ),
            }
            units.push(BusinessUnit {
                id: unit.id.clone(),
                client,
                last_end_ms: cursor.map(|c| c.interval_end_ms),
                last_counts: cursor.and_then(|c| counts_from_state(&unit.id, c.state_json.as_deref())),
            });
        }
        Ok(Poller {
            units,
            interval_ms: settings.poll_interval_secs as i64 * 1000,
            max_catch_up: i64::from(settings.max_catch_up_intervals),
            drop_share: settings.availability_drop_share,
            publisher,
            cursors,
            clock,
        })
    }

    /// Polls until `shutdown` turns true: every due interval, then a sleep
    /// to the end of the current interval. A stop request is served between
    /// intervals, so an interval under way is finished first.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            self.poll_due_until(Some(&shutdown)).await?;
            if *shutdown.borrow() {
                return Ok(());
            }
            let now = self.clock.now_ms();
            let (_, current_end) = interval_containing(now, self.interval_ms);
            let wait = Duration::from_millis((current_end - now).max(0) as u64);
            tokio::select! {
                _ = self.clock.sleep(wait) => {}
                // An error means the sender is gone, which is a stop too.
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                return Ok(());
            }
        }
    }

    /// Publishes every interval that completed since each business unit's
    /// cursor, oldest first, and returns how many were published. A CXone
    /// failure leaves that business unit's remaining intervals for the next
    /// poll; a Kafka failure is returned.
    pub async fn poll_due(&mut self) -> anyhow::Result<usize> {
        self.poll_due_until(None).await
    }

    async fn poll_due_until(&mut self, shutdown: Option<&watch::Receiver<bool>>) -> anyhow::Result<usize> {
        let now = self.clock.now_ms();
        let (last_completed_end, _) = interval_containing(now, self.interval_ms);
        let mut published = 0;
        for index in 0..self.units.len() {
            let mut start = self.first_due_start(index, last_completed_end);
            while start < last_completed_end {
                if shutdown.is_some_and(|s| *s.borrow()) {
                    return Ok(published);
                }
                let (_, end) = interval_containing(start, self.interval_ms);
                match self.poll_interval(index, start, end).await {
                    Ok(()) => published += 1,
                    Err(IntervalError::Fetch(error)) => {
                        tracing::error!(
                            source = NICE_SOURCE,
                            business_unit = %self.units[index].id,
                            interval_end = %iso_millis(end),
                            error = %error,
                            "NICE CXone interval could not be fetched; it is tried again on the next poll."
                        );
                        break;
                    }
                    Err(IntervalError::Transport(error)) => return Err(error.into()),
                }
                start = end;
            }
        }
        Ok(published)
    }

    /// Returns the start of the first interval a business unit still needs.
    /// More than `max_catch_up` missed intervals are cut to the newest ones,
    /// with a warning that names the skipped gap.
    fn first_due_start(&self, index: usize, last_completed_end: i64) -> i64 {
        let unit = &self.units[index];
        let start = unit.last_end_ms.unwrap_or(last_completed_end - self.interval_ms);
        let oldest_allowed = last_completed_end - self.max_catch_up * self.interval_ms;
        if start >= oldest_allowed {
            return start;
        }
        tracing::warn!(
            source = NICE_SOURCE,
            business_unit = %unit.id,
            gap_start = %iso_millis(start),
            gap_end = %iso_millis(oldest_allowed),
            max_catch_up_intervals = self.max_catch_up,
            "NICE CXone intervals skipped: the gap is longer than sources.nice.max_catch_up_intervals, so only the newest intervals are caught up."
        );
        oldest_allowed
    }

    /// Fetches, publishes and records one interval of one business unit.
    async fn poll_interval(&mut self, index: usize, start: i64, end: i64) -> Result<(), IntervalError> {
        let drop_share = self.drop_share;
        let unit = &mut self.units[index];
        let payload = unit.client.skill_summary(start, end).await.map_err(IntervalError::Fetch)?;
        let received_at = self.clock.now_ms();
        let counts = available_agents(&payload);

        // The previous counts are compared only with the interval right
        // after them, not across a gap.
        let mut capture = json!({
            "delivery": NICE_DELIVERY,
            "received_at": iso_millis(received_at),
            "interval_start": iso_millis(start),
            "interval_end": iso_millis(end),
            "business_unit": unit.id,
            AVAILABILITY_DROP_SHARE: drop_share,
        });
        if let (Some(previous), Some(last_end)) = (&unit.last_counts, unit.last_end_ms) {
            if last_end == start {
                capture[PREVIOUS_AGENTS_AVAILABLE] = json!(previous);
            }
        }
        let record = json!({"capture": capture, "payload": payload});
        let delivered = Delivered {
            origin: format!("nice:{}:{}", unit.id, iso_millis(end)),
            bytes: serde_json::to_vec(&record).expect("a JSON value serializes"),
        };
        let published = self.publisher.publish(&[delivered]).await.map_err(IntervalError::Transport)?;
        for reason in &published.rejected {
            tracing::warn!(
                source = NICE_SOURCE,
                business_unit = %unit.id,
                interval_end = %iso_millis(end),
                reason = %reason,
                "NICE CXone interval went to the dead-letter topic instead of raw-events."
            );
        }

        let cursor = SourceCursor {
            source: NICE_SOURCE.to_string(),
            key: unit.id.clone(),
            interval_end_ms: end,
            updated_at_ms: self.clock.now_ms(),
            state_json: Some(json!({"agents_available": counts}).to_string()),
        };
        self.cursors.write(&cursor).await.map_err(IntervalError::Transport)?;
        tracing::info!(
            source = NICE_SOURCE,
            business_unit = %unit.id,
            interval_start = %iso_millis(start),
            interval_end = %iso_millis(end),
            skills = counts.len(),
            "NICE CXone interval published."
        );
        unit.last_end_ms = Some(end);
        unit.last_counts = Some(counts);
        Ok(())
    }
}

/// Returns `agentsAvailable` per `skillId` of a skill summary. Skills
/// without a usable count are left out.
fn available_agents(payload: &Value) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    let skills = payload.get("skillSummaries").and_then(Value::as_array);
    for skill in skills.into_iter().flatten() {
        let (Some(id), Some(count)) = (text_field(skill, "skillId"), number_field(skill, "agentsAvailable")) else {
            continue;
        };
        if count.is_finite() && count >= 0.0 {
            counts.insert(id, count);
        }
    }
    counts
}

/// Reads the available agents a cursor stored. An unreadable state only
/// loses the comparison for the next interval, so it is logged, not fatal.
fn counts_from_state(business_unit: &str, state_json: Option<&str>) -> Option<BTreeMap<String, f64>> {
    let state: Value = serde_json::from_str(state_json?).ok()?;
    match serde_json::from_value(state.get("agents_available")?.clone()) {
        Ok(counts) => Some(counts),
        Err(error) => {
            tracing::warn!(
                source = NICE_SOURCE,
                business_unit,
                error = %error,
                "NICE CXone cursor state has unreadable agent counts; the next interval is not compared for availability drops."
            );
            None
        }
    }
}
