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

use super::{derive_id, id_field, parse_time_ms, scrubbed_text_field, slug, text_field};
use crate::model::{NormalizedEvent, RawEvent};
use crate::scrub::scrub_text;

pub const PLATFORM: &str = "genesys_cloud_cx";

/// Disconnect types that mean the call failed, in Genesys' spelling with
/// dots or underscores and any case.
const FAILED_DISCONNECT_TYPES: [&str; 2] = ["error", "transport_failure"];

/// Ids of an event body that name no person and are kept as attributes.
const KEPT_IDS: [(&str, &str); 6] = [
    ("queueId", "queue_id"),
    ("flowId", "flow_id"),
    ("divisionId", "division_id"),
    ("flowOutcomeId", "flow_outcome_id"),
    ("outboundCampaignId", "outbound_campaign_id"),
    ("sessionId", "session_id"),
];

/// Free-text fields of an event body that are kept as attributes after
/// scrubbing, because a crafted or misconfigured value could hold personal
/// data.
const KEPT_TEXT: [(&str, &str); 7] = [
    ("disconnectType", "disconnect_type"),
    ("provider", "provider"),
    ("flowType", "flow_type"),
    ("flowOutcomeValue", "flow_outcome_value"),
    ("exitReason", "exit_reason"),
    ("acdOutcome", "acd_outcome"),
    ("transferType", "transfer_type"),
];

/// Topic events of `v2.detail.events.conversation.{id}.*` that are mapped.
const DETAIL_EVENTS: [&str; 12] = [
    "customer.start",
    "customer.end",
    "user.start",
    "user.end",
    "acw",
    "acd.start",
    "acd.end",
    "outbound",
    "flow.start",
    "flow.end",
    "flow.outcome",
    "(and v2.operations.events.{orgId}, v2.conversations.{id}, v2.routing.queues.{id}.conversations)",
];

/// Flow exit reasons that mean the flow failed, upper-case.
const FLOW_ERROR_EXITS: [&str; 2] = ["FLOW_ERROR_DISCONNECT", "FLOW_ERROR_EXIT"];

const OPERATIONS_TOPIC_PREFIX: &str = "v2.operations.events.";

/// Genesys Cloud media types, upper-case. `CALL` is accepted as a spelling
/// of `VOICE`.
const MEDIA_TYPES: [&str; 8] = ["VOICE", "CHAT", "MESSAGE", "EMAIL", "CALLBACK", "SCREENSHARE", "COBROWSE", "VIDEO"];

const DIRECTIONS: [&str; 2] = ["INBOUND", "OUTBOUND"];

/// Normalizes a Genesys Cloud message from either envelope, by its topic:
/// conversation detail events, operational events, or conversation
/// snapshots from the conversation and queue topics.
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
    if topic.starts_with(OPERATIONS_TOPIC_PREFIX) {
        return operational_event(raw, topic, body);
    }
    if is_conversation_topic(topic) {
        return conversation_snapshot(raw, body, topic);
    }
    detail_event(raw, topic, body)
}

/// Normalizes a conversation as the Conversations API returns it
/// (`GET /api/v2/conversations/calls/{id}` and its siblings).
pub fn normalize_conversation(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    conversation_snapshot(raw, payload, "the Conversations API")
}

fn detail_event(raw: &RawEvent, topic: &str, body: &Value) -> Result<Vec<NormalizedEvent>, String> {
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

    let exit_reason = text_field(body, "exitReason").map(|reason| reason.to_ascii_uppercase());
    let (event_type, failed, total) = match event {
        "customer.end" if disconnect.as_deref().is_some_and(is_failed_disconnect) => ("call_failed", 1, 1),
        "customer.end" => ("call_completed", 0, 1),
        "customer.start" => ("call_started", 0, 0),
        "user.start" => ("agent_leg_started", 0, 0),
        "user.end" => ("agent_leg_ended", 0, 0),
        "acw" => ("after_call_work", 0, 0),
        "acd.start" => ("queue_entered", 0, 0),
        "acd.end" => ("queue_left", 0, 0),
        "outbound" => ("outbound_attempt", 0, 0),
        "flow.start" => ("flow_started", 0, 0),
        // An IVR error fails the contact; its volume is counted once, at the
        // customer end.
        "flow.end" if exit_reason.as_deref().is_some_and(|reason| FLOW_ERROR_EXITS.contains(&reason)) => {
            ("ivr_error", 1, 0)
        }
        "flow.end" => ("flow_ended", 0, 0),
        "flow.outcome" if text_field(body, "flowOutcomeValue").as_deref() == Some("FAILURE") => ("ivr_error", 1, 0),
        "flow.outcome" => ("flow_outcome", 0, 0),
        other => {
            return Err(format!(
                "Genesys topic {topic} (event {other}) is not handled; supported: {}",
                DETAIL_EVENTS.join(", ")
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

    if let Some(step) = body
        .get("flowMilestones")
        .and_then(Value::as_array)
        .and_then(|milestones| milestones.last())
        .and_then(|milestone| id_field(milestone, "milestoneId"))
    {
        attributes.insert("flow_step".to_string(), step);
    }

    let touchpoint = if event.starts_with("flow.") {
        "ivr"
    } else {
        touchpoint_for_media(media)
    };
    // The customer's number is the caller (ani) inbound and the called party
    // (dnis) outbound. Inbound, the called party is the contact center's own
    // line, kept for the service rules.
    let phone_field = if direction == "OUTBOUND" { "dnis" } else { "ani" };
    let phone_number = text_field(body, phone_field);
    if direction == "INBOUND" {
        if let Some(line) = text_field(body, "dnis").as_deref().and_then(line_number) {
            attributes.insert("dnis".to_string(), line);
        }
    }

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

/// Returns whether a topic carries whole conversations: `v2.conversations.{id}`
/// and the queue and user conversation topics such as
/// `v2.routing.queues.{id}.conversations` or
/// `v2.users.{id}.conversations.calls`.
fn is_conversation_topic(topic: &str) -> bool {
    let parts: Vec<&str> = topic.split('.').collect();
    match parts.as_slice() {
        ["v2", "conversations", _, ..] => true,
        ["v2", "routing", "queues", _, "conversations", ..] => true,
        ["v2", "users", _, "conversations", ..] => true,
        _ => false,
    }
}

/// Maps an operational event (`v2.operations.events.{orgId}`). An event about
/// a data action or an integration is an `api_connection_error` on the
/// service `integration_<name>`. Any other is an `operational_event` on
/// `platform_operations`, which is no signal.
fn operational_event(raw: &RawEvent, topic: &str, body: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let event_time_ms = match body.get("timestamp") {
        Some(value) => parse_time_ms(value)
            .map_err(|e| format!("Genesys operational event on {topic} has an unusable eventBody.timestamp: {e}"))?,
        None => {
            return Err(format!(
                "Genesys operational event on {topic} has no eventBody.timestamp; event time must come from the payload"
            ))
        }
    };
    let definition = body.get("eventEntity").cloned().unwrap_or(Value::Null);
    let described = [
        text_field(body, "entityType"),
        text_field(&definition, "id"),
        text_field(&definition, "name"),
    ];
    let is_integration = described.iter().flatten().any(|text| {
        let lower = text.to_ascii_lowercase().replace(['_', '-'], " ");
        lower.contains("action") || lower.contains("integration")
    });

    let mut attributes = BTreeMap::new();
    attributes.insert("genesys_event".to_string(), "operational".to_string());
    for (field, name) in [("entityId", "integration_id"), ("errorCode", "error_code"), ("entityType", "entity_type")] {
        if let Some(value) = id_field(body, field) {
            attributes.insert(name.to_string(), value);
        }
    }
    if let Some(value) = id_field(&definition, "id") {
        attributes.insert("operational_event_id".to_string(), value);
    }
    for (object, field, name) in [(body, "entityName", "entity_name"), (&definition, "name", "operational_event_name")] {
        if let Some(value) = scrubbed_text_field(object, field) {
            attributes.insert(name.to_string(), value);
        }
    }

    let (event_type, failed, service) = if is_integration {
        let name = text_field(body, "entityName")
            .or_else(|| text_field(body, "entityId"))
            .map(|name| slug(&scrub_text(&name)))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        ("api_connection_error", 1, format!("integration_{name}"))
    } else {
        ("operational_event", 0, "platform_operations".to_string())
    };
    let conversation_id = text_field(body, "conversationId");
    let event_id = derive_id(&[
        PLATFORM,
        "operational",
        text_field(body, "entityId").as_deref().unwrap_or(&raw.event_id),
        text_field(&definition, "id").as_deref().unwrap_or(""),
        &event_time_ms.to_string(),
    ]);
    Ok(vec![NormalizedEvent {
        event_id,
        event_type: event_type.to_string(),
        platform_source: PLATFORM.to_string(),
        delivery: raw.delivery.clone(),
        event_time_ms,
        received_at_ms: raw.received_at_ms,
        affected_service: service,
        conversation_id,
        touchpoint: Some("api".to_string()),
        agent_id: None,
        phone_number: None,
        customer_id: None,
        failed_contacts: failed,
        total_contacts: 0,
        dependency: None,
        attributes,
        // Free text stays as sent: the mask stage scrubs it with the key.
        message: text_field(body, "errorMessage"),
    }])
}

/// Media arrays of a conversation participant, with the media type each
/// holds.
const MEDIA_ARRAYS: [(&str, &str); 6] = [
    ("calls", "VOICE"),
    ("callbacks", "CALLBACK"),
    ("chats", "CHAT"),
    ("messages", "MESSAGE"),
    ("emails", "EMAIL"),
    ("videos", "VIDEO"),
];

/// Maps a whole conversation, from the Conversations API or a conversation
/// topic, to its outcome once the customer's leg has ended: `call_failed`
/// when that leg ended in error or carries `errorInfo`, `call_completed`
/// otherwise. Errors on other legs are listed in `leg_error_codes`. A
/// conversation still in progress gives no event.
fn conversation_snapshot(raw: &RawEvent, body: &Value, origin: &str) -> Result<Vec<NormalizedEvent>, String> {
    let conversation_id = text_field(body, "id")
        .or_else(|| text_field(body, "conversationId"))
        .ok_or_else(|| format!("Genesys conversation from {origin} has no id"))?;
    let participants = body
        .get("participants")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("Genesys conversation from {origin} has no participants array"))?;
    let is_customer = |p: &&Value| {
        matches!(text_field(p, "purpose").as_deref(), Some("customer" | "external"))
    };
    let Some(customer) = participants.iter().find(is_customer) else {
        return Err(format!(
            "Genesys conversation from {origin} has no participant with purpose customer or external"
        ));
    };
    // The leg's fields sit on the participant (Conversations API) or on its
    // first media session (conversation topics).
    let (leg, media_from_array) = MEDIA_ARRAYS
        .iter()
        .find_map(|(field, media)| {
            customer.get(*field).and_then(Value::as_array).and_then(|legs| legs.last()).map(|leg| (leg, Some(*media)))
        })
        .unwrap_or((customer, None));
    let Some(end) = leg.get("endTime").or_else(|| leg.get("disconnectedTime")).or_else(|| customer.get("endTime")) else {
        return Ok(Vec::new());
    };
    let event_time_ms = parse_time_ms(end)
        .map_err(|e| format!("Genesys conversation from {origin} has an unusable customer endTime: {e}"))?;

    let media = match text_field(customer, "mediaType").or_else(|| text_field(body, "mediaType")) {
        Some(value) => media_type(&value).map_err(|e| format!("Genesys conversation from {origin}: {e}"))?,
        None => media_from_array.unwrap_or("VOICE"),
    };
    let direction = match text_field(leg, "direction").or_else(|| text_field(customer, "direction")) {
        Some(value) => direction_of(&value).map_err(|e| format!("Genesys conversation from {origin}: {e}"))?,
        None => "INBOUND",
    };
    let disconnect = text_field(leg, "disconnectType").or_else(|| text_field(customer, "disconnectType"));
    let customer_error = leg.get("errorInfo").or_else(|| customer.get("errorInfo")).filter(|e| e.is_object());
    let failed = disconnect.as_deref().is_some_and(is_failed_disconnect) || customer_error.is_some();

    let mut attributes = BTreeMap::new();
    attributes.insert("genesys_event".to_string(), "conversation".to_string());
    attributes.insert("media_type".to_string(), media.to_string());
    attributes.insert("direction".to_string(), direction.to_string());
    if let Some(disconnect) = &disconnect {
        attributes.insert("disconnect_type".to_string(), scrub_text(disconnect));
    }
    if let Some(provider) = scrubbed_text_field(leg, "provider").or_else(|| scrubbed_text_field(customer, "provider")) {
        attributes.insert("provider".to_string(), provider);
    }
    if let Some(queue) = participants.iter().find_map(|p| id_field(p, "queueId")) {
        attributes.insert("queue_id".to_string(), queue);
    }
    let error_codes: Vec<String> = participants
        .iter()
        .flat_map(|p| {
            let nested = MEDIA_ARRAYS
                .iter()
                .filter_map(|(field, _)| p.get(*field).and_then(Value::as_array))
                .flatten();
            std::iter::once(p).chain(nested)
        })
        .filter_map(|leg| leg.get("errorInfo").and_then(|info| id_field_dotted(info, "code")))
        .collect();
    if !error_codes.is_empty() {
        attributes.insert("leg_error_codes".to_string(), error_codes.join(","));
    }

    let phone_field = if direction == "OUTBOUND" { "dnis" } else { "ani" };
    let phone_number = text_field(leg, phone_field).or_else(|| text_field(customer, phone_field));
    if direction == "INBOUND" {
        let dnis = text_field(leg, "dnis").or_else(|| text_field(customer, "dnis"));
        if let Some(line) = dnis.as_deref().and_then(line_number) {
            attributes.insert("dnis".to_string(), line);
        }
    }
    let participant_id = text_field(customer, "id").or_else(|| text_field(customer, "participantId"));
    // The same scheme as a detail event's customer end, so a conversation
    // delivered both ways can meet in the dedupe.
    let event_id = derive_id(&[
        PLATFORM,
        &conversation_id,
        "customer.end",
        participant_id.as_deref().unwrap_or(""),
        &event_time_ms.to_string(),
    ]);
    Ok(vec![NormalizedEvent {
        event_id,
        event_type: if failed { "call_failed" } else { "call_completed" }.to_string(),
        platform_source: PLATFORM.to_string(),
        delivery: raw.delivery.clone(),
        event_time_ms,
        received_at_ms: raw.received_at_ms,
        affected_service: service_for(media, direction),
        conversation_id: Some(conversation_id),
        touchpoint: Some(touchpoint_for_media(media).to_string()),
        agent_id: None,
        phone_number,
        customer_id: text_field(customer, "externalContactId"),
        failed_contacts: i64::from(failed),
        total_contacts: 1,
        dependency: None,
        attributes,
        // The customer leg's error text stays as sent: the mask stage scrubs
        // it with the key.
        message: customer_error.and_then(|error| text_field(error, "message")),
    }])
}

/// Reads an error code such as `error.ininedgecontrol.session.inactive`: ASCII
/// letters, digits and `.`, `-`, `_` kept, anything else scrubbed.
fn id_field_dotted(object: &Value, name: &str) -> Option<String> {
    let text = text_field(object, name)?;
    if text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
        Some(text)
    } else {
        Some(scrub_text(&text))
    }
}

/// Returns the phone number of a contact-center line from a DNIS such as
/// `tel:+13175550100` or `sip:+13175550100@edge;user=phone`, or `None` when
/// it is no phone number (an internal SIP address).
fn line_number(dnis: &str) -> Option<String> {
    let trimmed = dnis.trim();
    let number = if let Some(rest) = trimmed.strip_prefix("tel:") {
        rest
    } else if let Some(rest) = trimmed.strip_prefix("sip:") {
        rest.split(['@', ';']).next().unwrap_or("")
    } else {
        trimmed
    };
    let digits = number.strip_prefix('+').unwrap_or(number);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| number.to_string())
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

    #[test]
    fn chat_end_without_disconnect_is_completed() {
        let event = normalize_fixture(&format!("{FIXTURES}eventbridge-detail-customer-end-chat-blueprint-fixture.json"));
        assert_eq!(event.event_type, "call_completed");
        assert_eq!(event.total_contacts, 1);
        assert_eq!(event.affected_service, "chat_inbound");
        assert_eq!(event.touchpoint.as_deref(), Some("webchat"));
        assert_eq!(event.conversation_id.as_deref(), Some("ce700481-96e2-5407-a91b-12246842f515"));
        assert_eq!(event.customer_id.as_deref(), Some("7afc4434-9dfb-5032-9062-38c4cf2379cb"));
        assert_eq!(event.event_time_ms, 1_649_237_504_949);
        assert_eq!(event.attributes["provider"], "PureCloud Webchat v2");
        assert_eq!(event.phone_number, None);
    }

    #[test]
    fn notification_api_message_matches_eventbridge() {
        let text = std::fs::read_to_string(format!("{FIXTURES}notification-api-detail-customer-end-voice.json")).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(super::super::recognize(&value), super::super::Source::GenesysNotification);
        let from_notification = normalize(&raw(&text), &value).unwrap().remove(0);
        let from_eventbridge = normalize_fixture(&format!("{FIXTURES}eventbridge-detail-customer-end-voice.json"));
        assert_eq!(from_notification.event_type, "call_completed");
        assert_eq!(from_notification.attributes["dnis"], "+15555550000");
        // One event delivered both ways gets one id, so the dedupe keeps one.
        assert_eq!(from_notification.event_id, from_eventbridge.event_id);
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
    fn notification(topic: &str, body: &str) -> Result<Vec<NormalizedEvent>, String> {
        let text = format!(r#"{{"topicName":"{topic}","eventBody":{body}}}"#);
        let value: Value = serde_json::from_str(&text).unwrap();
        normalize(&raw(&text), &value)
    }

    #[test]
    fn conversation_api_fixture_is_completed_call() {
        let text = std::fs::read_to_string(format!("{FIXTURES}conversations-call-get-agent-errorinfo-session-inactive-2022.json")).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(super::super::recognize(&value), super::super::Source::GenesysConversation);
        let event = normalize_conversation(&raw(&text), &value).unwrap().remove(0);
        assert_eq!(event.event_type, "call_completed");
        assert_eq!(event.total_contacts, 1);
        assert_eq!(event.failed_contacts, 0);
        assert_eq!(event.event_time_ms, 1_670_937_287_084);
        assert_eq!(event.affected_service, "voice_inbound");
        assert_eq!(event.touchpoint.as_deref(), Some("sip"));
        assert_eq!(event.phone_number.as_deref(), Some("tel:+18125550147"));
        assert_eq!(event.attributes["dnis"], "+13125550163");
        assert_eq!(event.attributes["leg_error_codes"], "error.ininedgecontrol.session.inactive");
        assert_eq!(event.attributes["disconnect_type"], "endpoint");
    }

    #[test]
    fn queue_conversation_with_customer_error_is_failed_call() {
        let body = r#"{"id":"c9","participants":[
            {"id":"p1","purpose":"customer","calls":[{"state":"terminated","direction":"inbound","disconnectType":"system","disconnectedTime":"2025-12-12T15:01:53.761Z","errorInfo":{"code":"error.trunk.unreachable"},"ani":"tel:+13175550100","dnis":"tel:+13175550199"}]},
            {"id":"p2","purpose":"acd","queueId":"q-1"}]}"#;
        let event = notification("v2.routing.queues.q-1.conversations", body).unwrap().remove(0);
        assert_eq!(event.event_type, "call_failed");
        assert_eq!(event.failed_contacts, 1);
        assert_eq!(event.event_time_ms, 1_765_551_713_761);
        assert_eq!(event.attributes["queue_id"], "q-1");
        assert_eq!(event.attributes["leg_error_codes"], "error.trunk.unreachable");
        assert_eq!(event.attributes["dnis"], "+13175550199");
        assert_eq!(event.message, None);
    }

    #[test]
    fn conversation_in_progress_gives_no_event() {
        let body = r#"{"id":"c9","participants":[{"id":"p1","purpose":"customer","calls":[{"state":"connected"}]}]}"#;
        assert_eq!(notification("v2.conversations.c9", body).unwrap(), Vec::new());
    }

    #[test]
    fn conversation_without_customer_is_rejected() {
        let body = r#"{"id":"c9","participants":[{"id":"p2","purpose":"agent"}]}"#;
        let error = notification("v2.conversations.c9", body).unwrap_err();
        assert!(error.contains("no participant with purpose customer"), "{error}");
    }

    #[test]
    fn flow_end_exit_reasons() {
        let cases = [
            ("FLOW_ERROR_DISCONNECT", "ivr_error", 1),
            ("flow_error_exit", "ivr_error", 1),
            ("FLOW_DISCONNECT", "flow_ended", 0),
            ("TRANSFER", "flow_ended", 0),
            ("RECOGNITION_FAILURE_EXIT", "flow_ended", 0),
        ];
        for (reason, event_type, failed) in cases {
            let body = format!(r#"{{"eventTime":1765551713383,"conversationId":"c1","flowId":"f-1","exitReason":"{reason}"}}"#);
            let event = notification("v2.detail.events.conversation.c1.flow.end", &body).unwrap().remove(0);
            assert_eq!(event.event_type, event_type, "{reason}");
            assert_eq!(event.failed_contacts, failed, "{reason}");
            assert_eq!(event.total_contacts, 0, "{reason}");
            assert_eq!(event.touchpoint.as_deref(), Some("ivr"), "{reason}");
            assert_eq!(event.attributes["flow_id"], "f-1", "{reason}");
        }
    }

    #[test]
    fn flow_outcome_failure_names_flow_and_step() {
        let text = std::fs::read_to_string(format!("{FIXTURES}eventbridge-detail-flow-outcome-voice.json"))
            .unwrap()
            .replace("\"SUCCESS\"", "\"FAILURE\"");
        let value: Value = serde_json::from_str(&text).unwrap();
        let event = normalize(&raw(&text), &value).unwrap().remove(0);
        assert_eq!(event.event_type, "ivr_error");
        assert_eq!(event.attributes["flow_id"], "3ea8a5cd-c499-5a64-a1bc-1afb62f13d5b");
        assert_eq!(event.attributes["flow_outcome_id"], "fa1fa289-df3e-5034-9ce3-86212f5e8bfe");
        assert_eq!(event.attributes["flow_step"], "9b47d8f8-8cc2-5e08-8484-d273ec359e40");
    }

    #[test]
    fn acd_end_carries_queue_and_outcome() {
        let body = r#"{"eventTime":1765551713383,"conversationId":"c1","queueId":"q-7","acdOutcome":"ABANDON","mediaType":"VOICE"}"#;
        let event = notification("v2.detail.events.conversation.c1.acd.end", body).unwrap().remove(0);
        assert_eq!(event.event_type, "queue_left");
        assert_eq!(event.attributes["queue_id"], "q-7");
        assert_eq!(event.attributes["acd_outcome"], "ABANDON");
    }

    #[test]
    fn operational_events_by_entity() {
        let action = r#"{"eventEntity":{"id":"INTEGRATIONS-DATA-ACTION-FAILED","name":"Data action failed"},"entityId":"act-42","entityName":"CRM Lookup","errorCode":"HTTP_504","entityType":"DATA_ACTION","conversationId":"c1","timestamp":1765551713383}"#;
        let event = notification("v2.operations.events.org-1", action).unwrap().remove(0);
        assert_eq!(event.event_type, "api_connection_error");
        assert_eq!(event.affected_service, "integration_crm_lookup");
        assert_eq!(event.failed_contacts, 1);
        assert_eq!(event.touchpoint.as_deref(), Some("api"));
        assert_eq!(event.attributes["integration_id"], "act-42");
        assert_eq!(event.attributes["error_code"], "HTTP_504");
        assert_eq!(event.conversation_id.as_deref(), Some("c1"));

        let other = r#"{"eventEntity":{"id":"ARCHITECT-FLOW-PUBLISHED","name":"Flow published"},"entityId":"f-1","timestamp":1765551713383}"#;
        let event = notification("v2.operations.events.org-1", other).unwrap().remove(0);
        assert_eq!(event.event_type, "operational_event");
        assert_eq!(event.affected_service, "platform_operations");
        assert_eq!(event.failed_contacts, 0);
    }

    #[test]
    fn unknown_detail_event_lists_supported() {
        let error = notification("v2.detail.events.conversation.c1.attributes", r#"{"eventTime":1765551713383}"#).unwrap_err();
        assert!(error.contains("is not handled"), "{error}");
        assert!(error.contains("flow.end"), "{error}");
    }

    #[test]
    fn line_numbers_from_dnis() {
        assert_eq!(line_number("tel:+13175550100").as_deref(), Some("+13175550100"));
        assert_eq!(line_number("sip:+13175550100@edge.example;user=phone").as_deref(), Some("+13175550100"));
        assert_eq!(line_number("sip:3d3a900a-8915@127.0.0.1;user=ivr"), None);
        assert_eq!(line_number("13175550100").as_deref(), Some("13175550100"));
    }
}
