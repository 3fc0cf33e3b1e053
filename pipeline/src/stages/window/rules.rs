//! The window stage's settings in milliseconds, from `[window]`.

use std::collections::BTreeMap;

use super::REORDER_MS;
use crate::config::WindowConfig;

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
