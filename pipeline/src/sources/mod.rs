//! Recognizes each platform's payload shape and turns it into normalized
//! events. Each platform has a module, and this one dispatches to them and
//! contains the helpers they share.

pub mod genesys;
pub mod nice;
pub mod synthetics;

use chrono::{DateTime, NaiveDateTime};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{NormalizedEvent, RawEvent};

/// The platform a payload comes from, recognized by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Genesys Cloud CX, through the Amazon EventBridge integration.
    GenesysEventBridge,
    /// Genesys Cloud CX, as a Notification API message.
    GenesysNotification,
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
            Source::GenesysEventBridge | Source::GenesysNotification => "genesys",
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
        "payload shape is not recognized: {shape}. Expected a Genesys Cloud CX EventBridge envelope or Notification API message, a NICE CXone reporting response, or a Datadog or Pingdom webhook body"
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

/// Parses a platform timestamp into UTC milliseconds: epoch milliseconds as a
/// number or a numeric string, or ISO-8601 with `Z` or an offset. An
/// ISO-8601 time without a zone is read as UTC.
pub fn parse_time_ms(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|f| f as i64))
            .ok_or_else(|| format!("timestamp {number} is not an integer of epoch milliseconds")),
        Value::String(text) => parse_time_text(text),
        other => Err(format!(
            "timestamp is a JSON {}, expected epoch milliseconds or an ISO-8601 string",
            json_type(other)
        )),
    }
}

fn parse_time_text(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    if let Ok(millis) = trimmed.parse::<i64>() {
        return Ok(millis);
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

/// Reads a string field that may arrive as a JSON string or number.
pub fn text_field(object: &Value, name: &str) -> Option<String> {
    match object.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
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
    fn slug_joins_words() {
        assert_eq!(slug("Sales Operations Email"), "sales_operations_email");
        assert_eq!(slug("  CRM - Login!"), "crm_login");
    }
}
