//! Recognizes each platform's payload shape and turns it into normalized
//! events. Each platform has a module, and this one dispatches to them and
//! contains the helpers they share.

pub mod genesys;
pub mod genesys_client;
pub mod nice;
pub mod nice_poller;
pub mod receiver;
pub mod synthetics;

use chrono::{DateTime, NaiveDateTime, SecondsFormat};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{NormalizedEvent, RawEvent};
use crate::scrub::scrub_text;

/// The platform a payload comes from, recognized by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Genesys Cloud CX, through the Amazon EventBridge integration.
    GenesysEventBridge,
    /// Genesys Cloud CX, as a Notification API message.
    GenesysNotification,
    /// Genesys Cloud CX, a conversation as the Conversations API returns it.
    GenesysConversation,
    /// NICE CXone reporting API response.
    Nice,
    /// Datadog Synthetics webhook.
    Datadog,
    /// Pingdom check webhook.
    Pingdom,
    Unknown,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::GenesysEventBridge | Source::GenesysNotification | Source::GenesysConversation => "genesys",
            Source::Nice => "nice",
            Source::Datadog => "datadog",
            Source::Pingdom => "pingdom",
            Source::Unknown => "unknown",
        }
    }

    pub fn delivery(self) -> &'static str {
        match self {
            Source::GenesysEventBridge => "eventbridge",
            Source::GenesysNotification => "notification_api",
            Source::GenesysConversation => "conversation_api",
            Source::Nice => "nice_reporting_poll",
            Source::Datadog | Source::Pingdom => "webhook",
            Source::Unknown => "unknown",
        }
    }
}

/// Tells the platform from the payload's shape.
pub fn recognize(payload: &Value) -> Source {
    let Some(object) = payload.as_object() else {
        return Source::Unknown;
    };
    if object.contains_key("detail-type") && object.get("detail").is_some_and(|d| d.get("eventBody").is_some()) {
        Source::GenesysEventBridge
    } else if object.contains_key("topicName") && object.contains_key("eventBody") {
        Source::GenesysNotification
    } else if object.contains_key("id") && object.get("participants").is_some_and(Value::is_array) {
        Source::GenesysConversation
    } else if object.contains_key("skillSummaries") || object.contains_key("agentStates") {
        Source::Nice
    } else if object.contains_key("event_type") && object.contains_key("alert") {
        Source::Datadog
    } else if object.contains_key("check_id") && object.contains_key("current_state") {
        Source::Pingdom
    } else {
        Source::Unknown
    }
}

/// Turns one raw event into zero or more normalized events, or explains why
/// it cannot.
pub fn normalize(raw: &RawEvent) -> Result<Vec<NormalizedEvent>, String> {
    let payload: Value = serde_json::from_slice(&raw.payload).map_err(|e| {
        format!(
            "payload is not valid JSON ({e}); the platform sent a truncated or non-JSON body, or the input file mixes formats"
        )
    })?;
    match recognize(&payload) {
        Source::GenesysEventBridge | Source::GenesysNotification => genesys::normalize(raw, &payload),
        Source::GenesysConversation => genesys::normalize_conversation(raw, &payload),
        Source::Nice => nice::normalize(raw, &payload),
        Source::Datadog => synthetics::normalize_datadog(raw, &payload),
        Source::Pingdom => synthetics::normalize_pingdom(raw, &payload),
        Source::Unknown => Err(unknown_shape(&payload)),
    }
}

fn unknown_shape(payload: &Value) -> String {
    let shape = match payload {
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().take(6).map(String::as_str).collect();
            format!("an object with keys [{}]", keys.join(", "))
        }
        Value::Array(_) => "a JSON array".to_string(),
        other => format!("a JSON {}", json_type(other)),
    };
    format!(
        "payload shape is not recognized: {shape}. Expected a Genesys Cloud CX EventBridge envelope, Notification API message or conversation, a NICE CXone reporting response, or a Datadog or Pingdom webhook body"
    )
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Start of the accepted event times, 2000-01-01T00:00:00Z, in epoch
/// milliseconds.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;
/// End of the accepted event times, 2100-01-01T00:00:00Z, in epoch
/// milliseconds. The end itself is out of range.
pub const MAX_EVENT_TIME_MS: i64 = 4_102_444_800_000;

/// Parses a platform timestamp into UTC milliseconds: epoch milliseconds as a
/// number or a numeric string, or ISO-8601 with `Z` or an offset. An
/// ISO-8601 time without a zone is read as UTC. A time outside
/// [`MIN_EVENT_TIME_MS`]..[`MAX_EVENT_TIME_MS`] is an error naming the value.
pub fn parse_time_ms(value: &Value) -> Result<i64, String> {
    let time_ms = parse_time_ms_unchecked(value)?;
    check_event_time(time_ms, &display_value(value))
}

/// Parses a timestamp like [`parse_time_ms`] but accepts any time that fits
/// an `i64` of milliseconds, for callers that check the range later. A
/// number beyond `i64` is an error instead of a saturated value.
pub fn parse_time_ms_unchecked(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(number) => number_time_ms(number),
        Value::String(text) => parse_time_text(text),
        other => Err(format!(
            "timestamp is a JSON {}, expected epoch milliseconds or an ISO-8601 string",
            json_type(other)
        )),
    }
}

/// Converts a JSON number of epoch milliseconds. A fraction of a millisecond
/// is dropped.
fn number_time_ms(number: &serde_json::Number) -> Result<i64, String> {
    if let Some(millis) = number.as_i64() {
        return Ok(millis);
    }
    // `as_f64` is exact for the integers of the accepted range, and the
    // bounds check keeps the cast below from saturating.
    match number.as_f64() {
        Some(millis) if millis.is_finite() && millis >= i64::MIN as f64 && millis < i64::MAX as f64 => {
            Ok(millis.trunc() as i64)
        }
        _ => Err(out_of_range_message(&number.to_string(), None)),
    }
}

fn parse_time_text(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    if let Ok(millis) = trimmed.parse::<i64>() {
        return Ok(millis);
    }
    let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(out_of_range_message(&format!("{trimmed:?}"), None));
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(time.timestamp_millis());
    }
    if let Ok(time) = DateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Ok(time.timestamp_millis());
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(time.and_utc().timestamp_millis());
    }
    Err(format!(
        "timestamp {trimmed:?} is neither epoch milliseconds nor ISO-8601 such as 2025-12-12T15:01:53.761Z"
    ))
}

/// Returns `time_ms` when it is in the accepted range, or an error naming
/// `value_text`, the value as the payload gave it. A value that would be in
/// range as epoch seconds gets a hint saying so.
pub fn check_event_time(time_ms: i64, value_text: &str) -> Result<i64, String> {
    if (MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(&time_ms) {
        return Ok(time_ms);
    }
    let as_seconds = time_ms
        .checked_mul(1000)
        .filter(|ms| (MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(ms));
    let hint = as_seconds.map(|ms| {
        format!(
            "It looks like epoch seconds ({} when read as seconds); send epoch milliseconds instead",
            iso_utc(ms)
        )
    });
    Err(out_of_range_message(value_text, hint))
}

/// Converts a JSON number of whole epoch seconds, as Pingdom sends them, to
/// checked epoch milliseconds. A value that would be in range as
/// milliseconds gets a hint saying so.
pub fn epoch_seconds_to_ms(number: &serde_json::Number) -> Result<i64, String> {
    let value_text = number.to_string();
    let Some(seconds) = number.as_i64() else {
        return Err(format!("{value_text} is not whole epoch seconds"));
    };
    let in_range = |ms: i64| (MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(&ms);
    match seconds.checked_mul(1000) {
        Some(ms) if in_range(ms) => Ok(ms),
        _ if in_range(seconds) => Err(out_of_range_message(
            &value_text,
            Some(format!(
                "It looks like epoch milliseconds ({}), but this field is in epoch seconds",
                iso_utc(seconds)
            )),
        )),
        _ => Err(out_of_range_message(&value_text, None)),
    }
}

fn out_of_range_message(value_text: &str, hint: Option<String>) -> String {
    let mut message = format!(
        "event time {value_text} is out of range: accepted event times are from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"
    );
    if let Some(hint) = hint {
        message.push_str(". ");
        message.push_str(&hint);
    }
    message
}

/// Returns a timestamp value as a message quotes it: strings in quotes,
/// numbers as JSON prints them.
fn display_value(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{:?}", text.trim()),
        other => other.to_string(),
    }
}

fn iso_utc(time_ms: i64) -> String {
    DateTime::from_timestamp_millis(time_ms)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{time_ms} ms"))
}

/// Reads a field like [`text_field`] and scrubs personal data from it. It is
/// for free text that a payload gives as a name, such as a check title or a
/// skill name, which becomes a service name, a dependency name, an attribute
/// or a message.
pub fn scrubbed_text_field(object: &Value, name: &str) -> Option<String> {
    text_field(object, name).map(|text| scrub_text(&text))
}

/// Reads a string field that may arrive as a JSON string or number.
pub fn text_field(object: &Value, name: &str) -> Option<String> {
    match object.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads an id field such as a queue or business unit id. A value made only
/// of ASCII letters, digits, `-` and `_` is kept as it is, so UUIDs and
/// numeric ids survive, and any other text is scrubbed like a name.
pub fn id_field(object: &Value, name: &str) -> Option<String> {
    let text = text_field(object, name)?;
    if text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Some(text)
    } else {
        Some(scrub_text(&text))
    }
}

/// Reads a number field that may arrive as a JSON number or a numeric string
/// (NICE sends every value as a string).
pub fn number_field(object: &Value, name: &str) -> Option<f64> {
    match object.get(name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Derives a stable id from parts, for events whose source gives none.
pub fn derive_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Lower-case words joined by underscores: "Billing Voice" -> "billing_voice".
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_normalize_to_utc_millis() {
        let cases = [
            (json!(1765551713383_i64), 1_765_551_713_383),
            (json!("1765551713383"), 1_765_551_713_383),
            (json!("2025-12-12T15:01:53.761Z"), 1_765_551_713_761),
            (json!("2025-12-12T15:01:53Z"), 1_765_551_713_000),
            (json!("2025-12-12T17:01:53.761+02:00"), 1_765_551_713_761),
            (json!("2025-12-12T22:01:53.761+0700"), 1_765_551_713_761),
            (json!("2025-12-12T15:01:53"), 1_765_551_713_000),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_time_ms(&input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn unparseable_timestamp_names_the_value() {
        let error = parse_time_ms(&json!("yesterday")).unwrap_err();
        assert!(error.contains("\"yesterday\""), "{error}");
    }

    #[test]
    fn out_of_range_times_are_rejected() {
        let cases = [
            // serde_json reads an integer beyond u64 as a float.
            ("99999999999999999999999", "1e+23"),
            ("1e300", "1e+300"),
            ("-1e300", "-1e+300"),
            ("8640000000000000", "8640000000000000"),
            ("1765548000", "1765548000"),
            ("946684799999", "946684799999"),
            ("4102444800000", "4102444800000"),
            (r#""99999999999999999999999""#, r#""99999999999999999999999""#),
            (r#""2150-01-01T00:00:00Z""#, r#""2150-01-01T00:00:00Z""#),
            (r#""1999-12-31T23:59:59Z""#, r#""1999-12-31T23:59:59Z""#),
        ];
        for (input, value_text) in cases {
            let value: Value = serde_json::from_str(input).unwrap();
            let error = parse_time_ms(&value).unwrap_err();
            assert!(error.contains(&format!("event time {value_text} is out of range")), "{input}: {error}");
            assert!(error.contains("2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"), "{input}: {error}");
        }
    }

    #[test]
    fn epoch_seconds_get_a_hint() {
        let error = parse_time_ms(&json!(1765548000)).unwrap_err();
        assert!(error.contains("looks like epoch seconds (2025-12-12T14:00:00Z"), "{error}");
        let error = parse_time_ms(&json!("1765548000")).unwrap_err();
        assert!(error.contains("looks like epoch seconds"), "{error}");
        let error = parse_time_ms(&json!(8_640_000_000_000_000_i64)).unwrap_err();
        assert!(!error.contains("epoch seconds"), "{error}");
    }

    #[test]
    fn range_bounds_and_floats() {
        assert_eq!(parse_time_ms(&json!(946_684_800_000_i64)), Ok(946_684_800_000));
        assert_eq!(parse_time_ms(&json!(4_102_444_799_999_i64)), Ok(4_102_444_799_999));
        assert_eq!(parse_time_ms(&json!(1_765_551_713_383.7)), Ok(1_765_551_713_383));
        assert_eq!(parse_time_ms_unchecked(&json!(1765548000)), Ok(1_765_548_000));
        assert!(parse_time_ms_unchecked(&json!(1e300)).is_err());
    }

    #[test]
    fn epoch_seconds_convert_with_checks() {
        let number = |n: i64| serde_json::Number::from(n);
        assert_eq!(epoch_seconds_to_ms(&number(1_451_610_061)), Ok(1_451_610_061_000));
        let error = epoch_seconds_to_ms(&number(1_451_610_061_000)).unwrap_err();
        assert!(error.contains("looks like epoch milliseconds (2016-01-01T01:01:01Z)"), "{error}");
        let error = epoch_seconds_to_ms(&number(i64::MAX)).unwrap_err();
        assert!(error.contains("event time 9223372036854775807 is out of range"), "{error}");
        let fraction = serde_json::Number::from_f64(1_451_610_061.5).unwrap();
        assert!(epoch_seconds_to_ms(&fraction).unwrap_err().contains("not whole epoch seconds"));
    }

    #[test]
    fn slug_joins_words() {
        assert_eq!(slug("Sales Operations Email"), "sales_operations_email");
        assert_eq!(slug("  CRM - Login!"), "crm_login");
    }

    mod never_panics {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        use crate::model::RawEvent;

        fn raw(payload: Vec<u8>) -> RawEvent {
            RawEvent {
                event_id: "e1".into(),
                source: "unknown".into(),
                delivery: "test".into(),
                received_at_ms: 1_765_551_713_383,
                interval_start_ms: None,
                interval_end_ms: None,
                capture_json: None,
                payload,
            }
        }

        /// Any JSON value, nested a few levels.
        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|n| json!(n)),
                ".{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,12}", inner, 0..8)
                        .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }

        /// Field names the platforms use, so generated objects reach deep
        /// into each mapping instead of stopping at shape recognition.
        const KNOWN_KEYS: [&str; 24] = [
            "detail-type", "detail", "topicName", "eventBody", "eventTime", "conversationId", "mediaType",
            "direction", "disconnectType", "flowOutcomeValue", "exitReason", "participants", "id", "purpose",
            "calls", "endTime", "skillSummaries", "serviceLevel", "serviceLevelGoal", "event_type", "alert",
            "check_id", "current_state", "timestamp",
        ];

        /// JSON objects built from the platforms' field names and any
        /// values.
        fn platform_like() -> impl Strategy<Value = Value> {
            let value = prop_oneof![
                any_json(),
                Just(json!("v2.detail.events.conversation.c1.customer.end")),
                Just(json!("v2.operations.events.org")),
                Just(json!("v2.routing.queues.q.conversations")),
                Just(json!(1_765_551_713_383_i64)),
                Just(json!("customer")),
            ];
            let object = prop::collection::btree_map(prop::sample::select(KNOWN_KEYS.to_vec()), value, 0..10)
                .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
            object.prop_recursive(3, 48, 6, |inner| {
                prop::collection::btree_map(prop::sample::select(KNOWN_KEYS.to_vec()), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = super::super::normalize(&raw(bytes));
            }

            #[test]
            fn arbitrary_json(value in any_json()) {
                let _ = super::super::normalize(&raw(serde_json::to_vec(&value).unwrap()));
            }

            #[test]
            fn platform_like_json(value in platform_like()) {
                let _ = super::super::normalize(&raw(serde_json::to_vec(&value).unwrap()));
            }
        }
    }
}
