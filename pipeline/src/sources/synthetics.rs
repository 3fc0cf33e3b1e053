//! Synthetic end-to-end checks of the systems behind the contact center
//! (Datadog Synthetics and Pingdom webhooks) become `dependency_check` events
//! under the checked dependency's name. Names and locations are scrubbed of
//! personal data here, because they become service names and dependency
//! fields. The check's description stays as sent on `normalized`, and the
//! mask stage scrubs it with the key, so a number in it becomes a
//! pseudonymized token.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{derive_id, epoch_seconds_to_ms, id_field, parse_time_ms, scrubbed_text_field, slug, text_field};
use crate::model::{DependencyCheck, NormalizedEvent, RawEvent};
use crate::scrub::scrub_text;

pub fn normalize_datadog(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let title = text_field(payload, "title").unwrap_or_default();
    let name = scrub_text(&strip_title_tags(&title));
    if name.is_empty() {
        return Err("Datadog webhook has no title naming the checked dependency".into());
    }
    let transition = payload
        .get("alert")
        .and_then(|alert| text_field(alert, "alert_transition"))
        .ok_or("Datadog webhook has no alert.alert_transition (Triggered, Recovered, ...)")?;
    let ok = matches!(transition.as_str(), "Recovered" | "Resolved");
    let time = payload
        .get("date")
        .or_else(|| payload.get("last_updated"))
        .ok_or("Datadog webhook has neither date nor last_updated")?;
    let event_time_ms = parse_time_ms(time).map_err(|e| format!("Datadog webhook date: {e}"))?;
    let id = text_field(payload, "id").unwrap_or_else(|| raw.event_id.clone());

    let mut attributes = BTreeMap::new();
    attributes.insert("alert_transition".to_string(), scrub_text(&transition));
    if let Some(event_type) = scrubbed_text_field(payload, "event_type") {
        attributes.insert("datadog_event_type".to_string(), event_type);
    }
    Ok(vec![dependency_event(
        raw,
        "datadog_synthetics",
        &id,
        &name,
        ok,
        None,
        event_time_ms,
        attributes,
    )])
}

pub fn normalize_pingdom(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let check_id = id_field(payload, "check_id").unwrap_or_default();
    let name = scrubbed_text_field(payload, "check_name")
        .or_else(|| (!check_id.is_empty()).then(|| format!("check {check_id}")))
        .ok_or("Pingdom webhook has neither check_name nor check_id")?;
    let state = text_field(payload, "current_state").ok_or("Pingdom webhook has no current_state")?;
    let event_time_ms = match payload.get("state_changed_timestamp") {
        // Pingdom sends epoch seconds here.
        Some(Value::Number(seconds)) => {
            epoch_seconds_to_ms(seconds).map_err(|e| format!("Pingdom state_changed_timestamp: {e}"))?
        }
        _ => {
            let utc = payload.get("state_changed_utc_time").ok_or(
                "Pingdom webhook has neither state_changed_timestamp nor state_changed_utc_time",
            )?;
            parse_time_ms(utc).map_err(|e| format!("Pingdom state_changed_utc_time: {e}"))?
        }
    };
    let location = payload
        .get("first_probe")
        .and_then(|probe| scrubbed_text_field(probe, "location"));

    let mut attributes = BTreeMap::new();
    attributes.insert("check_state".to_string(), scrub_text(&state));
    if let Some(previous) = scrubbed_text_field(payload, "previous_state") {
        attributes.insert("previous_state".to_string(), previous);
    }
    if let Some(check_type) = scrubbed_text_field(payload, "check_type") {
        attributes.insert("check_type".to_string(), check_type);
    }
    let mut event = dependency_event(
        raw,
        "pingdom",
        &format!("{check_id}:{event_time_ms}"),
        &name,
        state.eq_ignore_ascii_case("UP"),
        location,
        event_time_ms,
        attributes,
    );
    event.message = text_field(payload, "description");
    Ok(vec![event])
}

/// Builds a `dependency_check` event. `name` and `location` must already be
/// scrubbed, because they become the service name and dependency fields,
/// which the mask stage passes through.
#[allow(clippy::too_many_arguments)]
fn dependency_event(
    raw: &RawEvent,
    platform: &str,
    source_id: &str,
    name: &str,
    ok: bool,
    location: Option<String>,
    event_time_ms: i64,
    attributes: BTreeMap<String, String>,
) -> NormalizedEvent {
    NormalizedEvent {
        event_id: derive_id(&[platform, source_id, &event_time_ms.to_string()]),
        event_type: "dependency_check".to_string(),
        platform_source: platform.to_string(),
        delivery: raw.delivery.clone(),
        event_time_ms,
        received_at_ms: raw.received_at_ms,
        affected_service: format!("dependency_{}", slug(name)),
        conversation_id: None,
        touchpoint: Some("api".to_string()),
        agent_id: None,
        phone_number: None,
        customer_id: None,
        failed_contacts: i64::from(!ok),
        total_contacts: 1,
        dependency: Some(DependencyCheck {
            name: name.to_string(),
            ok,
            http_status: None,
            location: location.clone(),
        }),
        attributes,
        message: None,
    }
}

/// "[P3] [Triggered] [Synthetics] CRM login" -> "CRM login".
fn strip_title_tags(title: &str) -> String {
    let mut rest = title.trim();
    while rest.starts_with('[') {
        match rest.find(']') {
            Some(end) => rest = rest[end + 1..].trim_start(),
            None => break,
        }
    }
    rest.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/synthetics/");

    fn raw() -> RawEvent {
        RawEvent {
            event_id: "s1".into(),
            source: "pingdom".into(),
            delivery: "webhook".into(),
            received_at_ms: 0,
            interval_start_ms: None,
            interval_end_ms: None,
            payload: Vec::new(),
            capture_json: None,
        }
    }

    #[test]
    fn pingdom_down_is_failed_check() {
        let text = std::fs::read_to_string(format!("{FIXTURES}pingdom-webhook-doc-example-http-up-to-down.json")).unwrap();
        let event = normalize_pingdom(&raw(), &serde_json::from_str(&text).unwrap()).unwrap().remove(0);
        let dependency = event.dependency.unwrap();
        assert!(!dependency.ok);
        assert_eq!(dependency.location.as_deref(), Some("Stockholm, Sweden"));
        assert_eq!(event.event_time_ms, 1_451_610_061_000);
        assert_eq!(event.affected_service, "dependency_name_of_http_check");
    }

    const CRAFTED_NAME: &str = "Callback line +1 317 999 0001 owner leakme.person@example.org";

    fn assert_no_leak(event: &NormalizedEvent) {
        let text = format!("{event:?}");
        assert!(!text.contains("leakme"), "{text}");
        assert!(!text.contains("999 0001"), "{text}");
    }

    #[test]
    fn pingdom_crafted_name_is_scrubbed() {
        let payload = serde_json::json!({
            "check_id": 1827179,
            "check_name": CRAFTED_NAME,
            "current_state": "DOWN",
            "previous_state": CRAFTED_NAME,
            "check_type": CRAFTED_NAME,
            "description": CRAFTED_NAME,
            "state_changed_timestamp": 1_451_610_061,
            "first_probe": {"location": CRAFTED_NAME},
        });
        let event = normalize_pingdom(&raw(), &payload).unwrap().remove(0);
        assert_eq!(event.affected_service, "dependency_callback_line_phone_owner_email");
        let dependency = event.dependency.clone().unwrap();
        assert_eq!(dependency.name, "Callback line [PHONE] owner [EMAIL]");
        assert_eq!(dependency.location.as_deref(), Some("Callback line [PHONE] owner [EMAIL]"));
        // The description is free text: the mask stage scrubs it with the key.
        assert_eq!(event.message.as_deref(), Some(CRAFTED_NAME));
        let masked = crate::stages::mask::Masker::new(crate::config::Secret::new("test-key-0123456789"), "k1")
            .mask(event.clone());
        let message = masked.message.unwrap();
        assert!(message.contains("[PHONE:phone_k1_"), "{message}");
        assert!(message.contains("[EMAIL:"), "{message}");
        assert!(!message.contains("leakme"), "{message}");
        assert!(!message.contains("999 0001"), "{message}");
        let mut without_message = event;
        without_message.message = None;
        assert_no_leak(&without_message);
    }

    #[test]
    fn pingdom_without_name_uses_check_id() {
        let payload = serde_json::json!({"check_id": 1827179, "current_state": "UP", "state_changed_timestamp": 1_451_610_061});
        let event = normalize_pingdom(&raw(), &payload).unwrap().remove(0);
        assert_eq!(event.affected_service, "dependency_check_1827179");
    }

    #[test]
    fn pingdom_milliseconds_are_rejected() {
        let payload = serde_json::json!({"check_id": 1, "current_state": "UP", "state_changed_timestamp": 1_451_610_061_000_i64});
        let error = normalize_pingdom(&raw(), &payload).unwrap_err();
        assert!(error.contains("state_changed_timestamp"), "{error}");
        assert!(error.contains("looks like epoch milliseconds"), "{error}");
        let payload = serde_json::json!({"check_id": 1, "current_state": "UP", "state_changed_timestamp": i64::MAX});
        assert!(normalize_pingdom(&raw(), &payload).unwrap_err().contains("out of range"));
    }

    #[test]
    fn datadog_crafted_title_is_scrubbed() {
        let payload = serde_json::json!({
            "title": format!("[P2] [Triggered] [Synthetics] {CRAFTED_NAME}"),
            "event_type": "synthetics_alert",
            "date": "1773489470000",
            "alert": {"alert_transition": "Triggered"},
        });
        let event = normalize_datadog(&raw(), &payload).unwrap().remove(0);
        assert_eq!(event.affected_service, "dependency_callback_line_phone_owner_email");
        assert_eq!(event.dependency.clone().unwrap().name, "Callback line [PHONE] owner [EMAIL]");
        assert_no_leak(&event);
    }

    #[test]
    fn datadog_out_of_range_date_is_rejected() {
        for date in [serde_json::json!(1e300), serde_json::json!("8640000000000000"), serde_json::json!(1_773_489_470)] {
            let payload = serde_json::json!({"title": "CRM", "date": date, "alert": {"alert_transition": "Triggered"}});
            let error = normalize_datadog(&raw(), &payload).unwrap_err();
            assert!(error.contains("Datadog webhook date: event time"), "{error}");
            assert!(error.contains("is out of range"), "{error}");
        }
    }

    #[test]
    fn datadog_triggered_is_failed_check() {
        let text = std::fs::read_to_string(format!("{FIXTURES}datadog-webhook-synthetics-alert-triggered-null-incident.json")).unwrap();
        let event = normalize_datadog(&raw(), &serde_json::from_str(&text).unwrap()).unwrap().remove(0);
        let dependency = event.dependency.unwrap();
        assert_eq!(dependency.name, "RMC - A monitor that always fails");
        assert!(!dependency.ok);
        assert_eq!(event.event_time_ms, 1_773_489_470_000);
    }
}
