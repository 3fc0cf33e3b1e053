//! Genesys Cloud CX conversation detail events, from the EventBridge
//! integration envelope (`detail-type`, `detail.topicName`,
//! `detail.eventBody`) or a Notification API message (`topicName`,
//! `eventBody`).
//!
//! Topics handled: `v2.detail.events.conversation.{id}.customer.start`,
//! `.customer.end`, `.user.start`, `.user.end`, `.acw` and `.flow.outcome`.
//! A customer end is a call: failed when its disconnect type is an error class
//! (`error`, `transport.failure`), completed otherwise, so the postmortem gate
//! can compare failures with every call.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{derive_id, id_field, parse_time_ms, scrubbed_text_field, text_field};
use crate::model::{NormalizedEvent, RawEvent};
use crate::scrub::scrub_text;

pub const PLATFORM: &str = "genesys_cloud_cx";

/// Disconnect types that mean the call failed, in Genesys' spelling with
/// dots or underscores and any case.
const FAILED_DISCONNECT_TYPES: [&str; 2] = ["error", "transport_failure"];

/// Ids of an event body that name no person and are kept as attributes.
const KEPT_IDS: [(&str, &str); 3] = [("queueId", "queue_id"), ("flowId", "flow_id"), ("divisionId", "division_id")];

/// Free-text fields of an event body that are kept as attributes after
/// scrubbing, because a crafted or misconfigured value could hold personal
/// data.
const KEPT_TEXT: [(&str, &str); 4] = [
    ("disconnectType", "disconnect_type"),
    ("provider", "provider"),
    ("flowType", "flow_type"),
    ("flowOutcomeValue", "flow_outcome_value"),
];

/// Genesys Cloud media types, upper-case. `CALL` is accepted as a spelling
/// of `VOICE`.
const MEDIA_TYPES: [&str; 8] = ["VOICE", "CHAT", "MESSAGE", "EMAIL", "CALLBACK", "SCREENSHARE", "COBROWSE", "VIDEO"];

const DIRECTIONS: [&str; 2] = ["INBOUND", "OUTBOUND"];

pub fn normalize(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let (topic, body) = match payload.get("detail") {
        Some(detail) => (detail.get("topicName"), detail.get("eventBody")),
        None => (payload.get("topicName"), payload.get("eventBody")),
    };
    let topic = topic
        .and_then(Value::as_str)
        .ok_or("Genesys event has no topicName; expected v2.detail.events.conversation.{id}.<participant>.<event>")?;
    let body = body
        .filter(|b| b.is_object())
        .ok_or_else(|| format!("Genesys event on {topic} has no eventBody object"))?;
    let event = topic_event(topic)?;

    let event_time_ms = match body.get("eventTime") {
        Some(value) => parse_time_ms(value)
            .map_err(|e| format!("Genesys event on {topic} has an unusable eventBody.eventTime: {e}"))?,
        None => {
            return Err(format!(
                "Genesys event on {topic} has no eventBody.eventTime; event time must come from the payload"
            ))
        }
    };

    let conversation_id = text_field(body, "conversationId");
    let media = match text_field(body, "mediaType") {
        Some(value) => media_type(&value).map_err(|e| format!("Genesys event on {topic}: {e}"))?,
        None => "VOICE",
    };
    let direction = match text_field(body, "direction") {
        Some(value) => direction_of(&value).map_err(|e| format!("Genesys event on {topic}: {e}"))?,
        None => "INBOUND",
    };
    let disconnect = text_field(body, "disconnectType");

    let (event_type, failed, total) = match event {
        "customer.end" if disconnect.as_deref().is_some_and(is_failed_disconnect) => ("call_failed", 1, 1),
        "customer.end" => ("call_completed", 0, 1),
        "customer.start" => ("call_started", 0, 0),
        "user.start" => ("agent_leg_started", 0, 0),
        "user.end" => ("agent_leg_ended", 0, 0),
        "acw" => ("after_call_work", 0, 0),
        // An IVR error fails the contact; its volume is counted once, at the
        // customer end.
        "flow.outcome" if text_field(body, "flowOutcomeValue").as_deref() == Some("FAILURE") => ("ivr_error", 1, 0),
        "flow.outcome" => ("flow_outcome", 0, 0),
        other => {
            return Err(format!(
                "Genesys topic {topic} (event {other}) is not handled; supported: customer.start, customer.end, user.start, user.end, acw, flow.outcome"
            ))
        }
    };

    let mut attributes = BTreeMap::new();
    attributes.insert("genesys_event".to_string(), event.to_string());
    attributes.insert("media_type".to_string(), media.to_string());
    attributes.insert("direction".to_string(), direction.to_string());
    for (field, name) in KEPT_IDS {
        if let Some(value) = id_field(body, field) {
            attributes.insert(name.to_string(), value);
        }
    }
    for (field, name) in KEPT_TEXT {
        if let Some(value) = scrubbed_text_field(body, field) {
            attributes.insert(name.to_string(), value);
        }
    }

    let touchpoint = if event == "flow.outcome" {
        "ivr"
    } else {
        touchpoint_for_media(media)
    };
    // The customer's number is the caller (ani) inbound and the called party
    // (dnis) outbound.
    let phone_field = if direction == "OUTBOUND" { "dnis" } else { "ani" };
    let phone_number = text_field(body, phone_field);

    let event_id = derive_id(&[
        PLATFORM,
        conversation_id.as_deref().unwrap_or(&raw.event_id),
        event,
        text_field(body, "participantId").as_deref().unwrap_or(""),
        &event_time_ms.to_string(),
    ]);

    Ok(vec![NormalizedEvent {
        event_id,
        event_type: event_type.to_string(),
        platform_source: PLATFORM.to_string(),
        delivery: raw.delivery.clone(),
        event_time_ms,
        received_at_ms: raw.received_at_ms,
        affected_service: service_for(media, direction),
        conversation_id,
        touchpoint: Some(touchpoint.to_string()),
        agent_id: text_field(body, "userId"),
        phone_number,
        customer_id: text_field(body, "externalContactId"),
        failed_contacts: failed,
        total_contacts: total,
        dependency: None,
        attributes,
        message: None,
    }])
}

/// Returns the participant and event of a detail-event topic, such as
/// `customer.end`.
fn topic_event(topic: &str) -> Result<&str, String> {
    let rest = topic
        .strip_prefix("v2.detail.events.conversation.")
        .ok_or_else(|| format!("Genesys topic {topic} is not a conversation detail-event topic (v2.detail.events.conversation.{{id}}.*)"))?;
    let (_, event) = rest
        .split_once('.')
        .ok_or_else(|| format!("Genesys topic {topic} names no participant event after the conversation id"))?;
    Ok(event)
}

fn is_failed_disconnect(disconnect: &str) -> bool {
    let canonical = disconnect.to_ascii_lowercase().replace('.', "_");
    FAILED_DISCONNECT_TYPES.contains(&canonical.as_str())
}

/// Returns the canonical spelling of a known `mediaType`, or an error naming
/// the scrubbed value and the known types.
fn media_type(value: &str) -> Result<&'static str, String> {
    let upper = value.trim().to_ascii_uppercase();
    let canonical = if upper == "CALL" { "VOICE" } else { upper.as_str() };
    MEDIA_TYPES.into_iter().find(|known| *known == canonical).ok_or_else(|| {
        format!(
            "eventBody.mediaType {:?} is not a Genesys Cloud media type; expected one of VOICE (or CALL), {}",
            scrub_text(value),
            MEDIA_TYPES[1..].join(", ")
        )
    })
}

/// Returns the canonical spelling of a known `direction`, or an error naming
/// the scrubbed value.
fn direction_of(value: &str) -> Result<&'static str, String> {
    let upper = value.trim().to_ascii_uppercase();
    DIRECTIONS.into_iter().find(|known| *known == upper).ok_or_else(|| {
        format!(
            "eventBody.direction {:?} is not a Genesys Cloud direction; expected INBOUND or OUTBOUND",
            scrub_text(value)
        )
    })
}

fn touchpoint_for_media(media: &str) -> &'static str {
    match media {
        "CHAT" => "webchat",
        "MESSAGE" => "message",
        "CALLBACK" => "callback",
        "EMAIL" => "email",
        _ => "sip",
    }
}

/// Names the service by the default rule, media type and direction, such as
/// `voice_inbound`. Callers pass checked values from `MEDIA_TYPES` and
/// `DIRECTIONS`, never payload text.
pub fn service_for(media: &str, direction: &str) -> String {
    format!("{}_{}", media.to_ascii_lowercase(), direction.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(payload: &str) -> RawEvent {
        RawEvent {
            event_id: "e1".into(),
            source: "genesys".into(),
            delivery: "eventbridge".into(),
            received_at_ms: 0,
            interval_start_ms: None,
            interval_end_ms: None,
            payload: payload.as_bytes().to_vec(),
            capture_json: None,
        }
    }

    fn normalize_fixture(path: &str) -> NormalizedEvent {
        let text = std::fs::read_to_string(path).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        normalize(&raw(&text), &value).unwrap().remove(0)
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/genesys/");

    #[test]
    fn customer_end_endpoint_is_completed_call() {
        let event = normalize_fixture(&format!("{FIXTURES}eventbridge-detail-customer-end-voice.json"));
        assert_eq!(event.event_type, "call_completed");
        assert_eq!(event.event_time_ms, 1_765_551_713_383);
        assert_eq!(event.affected_service, "voice_inbound");
        assert_eq!(event.touchpoint.as_deref(), Some("sip"));
        assert_eq!(event.phone_number.as_deref(), Some("tel:+15555550898"));
        assert_eq!(event.customer_id.as_deref(), Some("f56a0a91-1f94-5ede-8bcd-31ed6078f0b7"));
        assert_eq!(event.total_contacts, 1);
        assert_eq!(event.failed_contacts, 0);
    }

    #[test]
    fn error_disconnect_is_failed_call() {
        let text = std::fs::read_to_string(format!("{FIXTURES}eventbridge-detail-customer-end-voice.json"))
            .unwrap()
            .replace("\"ENDPOINT\"", "\"TRANSPORT_FAILURE\"");
        let value: Value = serde_json::from_str(&text).unwrap();
        let event = normalize(&raw(&text), &value).unwrap().remove(0);
        assert_eq!(event.event_type, "call_failed");
        assert_eq!(event.failed_contacts, 1);
    }

    #[test]
    fn user_end_carries_agent_id() {
        let event = normalize_fixture(&format!("{FIXTURES}eventbridge-detail-user-end-voice.json"));
        assert_eq!(event.event_type, "agent_leg_ended");
        assert_eq!(event.agent_id.as_deref(), Some("b781d507-2b83-57b9-88d1-43565293c1db"));
    }

    #[test]
    fn chat_start_is_webchat_touchpoint() {
        let event = normalize_fixture(&format!("{FIXTURES}eventbridge-detail-customer-start-chat-blueprint-fixture.json"));
        assert_eq!(event.touchpoint.as_deref(), Some("webchat"));
        assert_eq!(event.affected_service, "chat_inbound");
    }

    const CRAFTED_NAME: &str = "Callback line +1 317 999 0001 owner leakme.person@example.org";

    fn body_event(body: &str) -> Result<Vec<NormalizedEvent>, String> {
        let text = format!(r#"{{"topicName":"v2.detail.events.conversation.c1.customer.end","eventBody":{body}}}"#);
        let value: Value = serde_json::from_str(&text).unwrap();
        normalize(&raw(&text), &value)
    }

    fn assert_no_leak(text: &str) {
        assert!(!text.contains("leakme"), "{text}");
        assert!(!text.contains("999 0001"), "{text}");
    }

    #[test]
    fn crafted_media_type_is_rejected() {
        let error = body_event(&format!(r#"{{"eventTime":1765551713383,"mediaType":"{CRAFTED_NAME}"}}"#)).unwrap_err();
        assert!(error.contains("is not a Genesys Cloud media type"), "{error}");
        assert!(error.contains("[PHONE]"), "{error}");
        assert!(error.contains("[EMAIL]"), "{error}");
        assert_no_leak(&error);
    }

    #[test]
    fn crafted_direction_is_rejected() {
        let error = body_event(&format!(r#"{{"eventTime":1765551713383,"direction":"{CRAFTED_NAME}"}}"#)).unwrap_err();
        assert!(error.contains("expected INBOUND or OUTBOUND"), "{error}");
        assert_no_leak(&error);
    }

    #[test]
    fn crafted_provider_is_scrubbed() {
        let event = body_event(&format!(r#"{{"eventTime":1765551713383,"provider":"{CRAFTED_NAME}"}}"#))
            .unwrap()
            .remove(0);
        assert_eq!(event.attributes["provider"], "Callback line [PHONE] owner [EMAIL]");
        assert_no_leak(&format!("{event:?}"));
    }

    #[test]
    fn media_type_spellings_are_canonical() {
        let cases = [("CALL", "INBOUND", "voice_inbound"), ("chat", "outbound", "chat_outbound"), ("Video", "Inbound", "video_inbound")];
        for (media, direction, service) in cases {
            let body = format!(r#"{{"eventTime":1765551713383,"mediaType":"{media}","direction":"{direction}"}}"#);
            let event = body_event(&body).unwrap().remove(0);
            assert_eq!(event.affected_service, service, "{media} {direction}");
            assert_eq!(event.attributes["media_type"], service.split('_').next().unwrap().to_ascii_uppercase());
        }
    }

    #[test]
    fn epoch_seconds_event_time_is_rejected() {
        let error = body_event(r#"{"eventTime":1765548000}"#).unwrap_err();
        assert!(error.contains("unusable eventBody.eventTime"), "{error}");
        assert!(error.contains("event time 1765548000 is out of range"), "{error}");
        assert!(error.contains("looks like epoch seconds"), "{error}");
    }

    #[test]
    fn missing_event_time_is_rejected() {
        let text = r#"{"topicName":"v2.detail.events.conversation.c1.customer.end","eventBody":{"conversationId":"c1"}}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let error = normalize(&raw(text), &value).unwrap_err();
        assert!(error.contains("eventTime"), "{error}");
    }
}
