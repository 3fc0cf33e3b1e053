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

use super::{derive_id, parse_time_ms, text_field};
use crate::model::{NormalizedEvent, RawEvent};

pub const PLATFORM: &str = "genesys_cloud_cx";

/// Disconnect types that mean the call failed, in Genesys' spelling with
/// dots or underscores and any case.
const FAILED_DISCONNECT_TYPES: [&str; 2] = ["error", "transport_failure"];

/// Fields of an event body that carry no personal data and are kept.
const KEPT_ATTRIBUTES: [(&str, &str); 9] = [
    ("disconnectType", "disconnect_type"),
    ("mediaType", "media_type"),
    ("direction", "direction"),
    ("provider", "provider"),
    ("queueId", "queue_id"),
    ("flowId", "flow_id"),
    ("flowType", "flow_type"),
    ("flowOutcomeValue", "flow_outcome_value"),
    ("divisionId", "division_id"),
];

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
    let media = text_field(body, "mediaType").unwrap_or_else(|| "VOICE".into());
    let direction = text_field(body, "direction").unwrap_or_else(|| "INBOUND".into());
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
    for (field, name) in KEPT_ATTRIBUTES {
        if let Some(value) = text_field(body, field) {
            attributes.insert(name.to_string(), value);
        }
    }

    let touchpoint = if event == "flow.outcome" {
        "ivr"
    } else {
        touchpoint_for_media(&media)
    };
    // The customer's number is the caller (ani) inbound and the called party
    // (dnis) outbound.
    let phone_field = if direction.eq_ignore_ascii_case("OUTBOUND") { "dnis" } else { "ani" };
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
        affected_service: service_for(&media, &direction),
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

fn touchpoint_for_media(media: &str) -> &'static str {
    match media.to_ascii_uppercase().as_str() {
        "CHAT" => "webchat",
        "MESSAGE" => "message",
        "CALLBACK" => "callback",
        "EMAIL" => "email",
        _ => "sip",
    }
}

/// Names the service by the default rule, media type and direction, such as
/// `voice_inbound`.
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

    #[test]
    fn missing_event_time_is_rejected() {
        let text = r#"{"topicName":"v2.detail.events.conversation.c1.customer.end","eventBody":{"conversationId":"c1"}}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let error = normalize(&raw(text), &value).unwrap_err();
        assert!(error.contains("eventTime"), "{error}");
    }
}
