//! Ingest: reads platform payloads as delivered (JSON Lines, or a folder of
//! `.json` files) and writes each to `raw-events` with its source, delivery
//! path and receive time. It keeps the bytes exactly as delivered, even when
//! they are not valid JSON: the normalize stage judges them, so nothing is
//! lost here.
//!
//! A line may also be a capture record, `{"capture": {...}, "payload": {...}}`,
//! which is how a poller records what it fetched: `capture.delivery`,
//! `capture.received_at` and the polled `capture.interval_start` and
//! `capture.interval_end` (ISO-8601) travel with the payload.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::RawEvent;
use crate::sources::{self, derive_id, parse_time_ms, text_field};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Could not read input {path}: {source}. Pass a JSON Lines file or a folder of .json files.")]
    Read { path: PathBuf, source: std::io::Error },
}

/// One delivered payload and where it was read from.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// `file:line` or the file name, for messages.
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// Reads every payload from a JSON Lines file, a `.json` file (one payload,
/// which may span lines), or a folder of both, in name order. Blank lines of
/// JSON Lines are skipped.
pub fn read_input(path: &Path) -> Result<Vec<Delivered>, IngestError> {
    let read_error = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "json" || ext == "jsonl"))
            .collect();
        files.sort();
        let mut all = Vec::new();
        for file in files {
            all.extend(read_input(&file)?);
        }
        return Ok(all);
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    if path.extension().is_some_and(|ext| ext == "json") {
        return Ok(vec![Delivered {
            origin: path.display().to_string(),
            bytes,
        }]);
    }
    Ok(split_lines(&bytes, &path.display().to_string()))
}

/// Splits JSON Lines into payloads, skipping blank lines.
pub fn split_lines(bytes: &[u8], origin: &str) -> Vec<Delivered> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| Delivered {
            origin: format!("{origin}:{}", index + 1),
            bytes: line.strip_suffix(b"\r").unwrap_or(line).to_vec(),
        })
        .collect()
}

/// Builds the raw event of one delivered payload, and its key on
/// `raw-events`.
pub fn to_raw_event(delivered: &Delivered, received_at_ms: i64) -> (String, RawEvent) {
    let (payload, capture) = match serde_json::from_slice::<Capture>(&delivered.bytes) {
        Ok(capture) => (capture.payload.get().as_bytes().to_vec(), Some(capture.capture)),
        Err(_) => (delivered.bytes.clone(), None),
    };
    let payload_value: Option<Value> = serde_json::from_slice(&payload).ok();

    let source = payload_value
        .as_ref()
        .map_or(sources::Source::Unknown, sources::recognize);
    let capture_time = |field: &str| {
        capture
            .as_ref()
            .and_then(|c| c.get(field))
            .and_then(|v| parse_time_ms(v).ok())
    };
    let delivery = capture
        .as_ref()
        .and_then(|c| text_field(c, "delivery"))
        .unwrap_or_else(|| source.delivery().to_string());

    let source_id = payload_value.as_ref().and_then(|v| {
        text_field(v, "id").or_else(|| v.get("metadata").and_then(|m| text_field(m, "CorrelationId")))
    });
    let event_id = source_id.unwrap_or_else(|| derive_id(&[&String::from_utf8_lossy(&payload)]));
    let conversation_id = payload_value.as_ref().and_then(|v| {
        v.get("detail")
            .unwrap_or(v)
            .get("eventBody")
            .and_then(|body| text_field(body, "conversationId"))
    });
    let key = conversation_id
        .or_else(|| payload_value.as_ref().and_then(|v| ordering_key(source, v)))
        .unwrap_or_else(|| event_id.clone());

    let raw = RawEvent {
        event_id,
        source: source.name().to_string(),
        delivery,
        received_at_ms: capture_time("received_at").unwrap_or(received_at_ms),
        interval_start_ms: capture_time("interval_start"),
        interval_end_ms: capture_time("interval_end"),
        payload,
    };
    (key, raw)
}

/// A capture record: a payload with what the poller or receiver recorded
/// about its delivery. The payload keeps its bytes exactly.
#[derive(serde::Deserialize)]
struct Capture {
    capture: Value,
    payload: Box<serde_json::value::RawValue>,
}

/// The key that keeps one source's payloads in order on one partition when
/// there is no conversation: the NICE business unit, the Pingdom check, the
/// Datadog monitor.
fn ordering_key(source: sources::Source, payload: &Value) -> Option<String> {
    match source {
        sources::Source::Nice => {
            let first = payload.get("skillSummaries").and_then(|s| s.get(0));
            let unit = first.and_then(|s| text_field(s, "businessUnitId")).unwrap_or_default();
            Some(format!("nice:{unit}"))
        }
        sources::Source::Pingdom => text_field(payload, "check_id").map(|id| format!("pingdom:{id}")),
        sources::Source::Datadog => payload
            .get("alert")
            .and_then(|alert| text_field(alert, "alert_id"))
            .map(|id| format!("datadog:{id}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(text: &str) -> Delivered {
        Delivered {
            origin: "test:1".into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn eventbridge_is_keyed_by_conversation() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/genesys/eventbridge-detail-customer-end-voice.json"
        ))
        .unwrap();
        let (key, raw) = to_raw_event(&delivered(&text), 7);
        assert_eq!(key, "742de705-5d49-54cc-b0fd-1964c9db694c");
        assert_eq!(raw.source, "genesys");
        assert_eq!(raw.delivery, "eventbridge");
        assert_eq!(raw.payload, text.as_bytes());
        assert_eq!(raw.received_at_ms, 7);
    }

    #[test]
    fn capture_record_carries_interval() {
        let text = r#"{"capture":{"delivery":"nice_reporting_poll","received_at":"2025-12-12T14:01:02Z","interval_start":"2025-12-12T14:00:00Z","interval_end":"2025-12-12T14:01:00Z"},"payload":{"skillSummaries":[]}}"#;
        let (_, raw) = to_raw_event(&delivered(text), 7);
        assert_eq!(raw.source, "nice");
        assert_eq!(raw.interval_end_ms, Some(1_765_548_060_000));
        assert_eq!(raw.received_at_ms, 1_765_548_062_000);
        assert_eq!(raw.payload, br#"{"skillSummaries":[]}"#);
    }

    #[test]
    fn capture_payload_keeps_its_bytes() {
        let text = r#"{"capture":{"delivery":"nice_reporting_poll"},"payload":{"skillSummaries": [{"skillId":"1", "businessUnitId":"318204"}]}}"#;
        let (key, raw) = to_raw_event(&delivered(text), 7);
        assert_eq!(raw.payload, br#"{"skillSummaries": [{"skillId":"1", "businessUnitId":"318204"}]}"#);
        assert_eq!(key, "nice:318204");
    }

    #[test]
    fn pingdom_is_keyed_by_check() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/synthetics/pingdom-webhook-doc-example-http-up-to-down.json"
        ))
        .unwrap();
        let (key, _) = to_raw_event(&delivered(&text), 7);
        assert_eq!(key, "pingdom:1827179");
    }

    #[test]
    fn invalid_json_is_kept_as_delivered() {
        let (_, raw) = to_raw_event(&delivered("{\"detail\": {"), 7);
        assert_eq!(raw.source, "unknown");
        assert_eq!(raw.payload, b"{\"detail\": {");
    }

    #[test]
    fn json_file_is_one_payload() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/genesys/eventbridge-detail-user-end-voice.json");
        let payloads = read_input(Path::new(path)).unwrap();
        assert_eq!(payloads.len(), 1);
        let (_, raw) = to_raw_event(&payloads[0], 0);
        assert_eq!(raw.source, "genesys");
    }

    #[test]
    fn folder_reads_json_and_jsonl_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "{\"n\":2}\n{\"n\":3}\n").unwrap();
        std::fs::write(dir.path().join("a.json"), "{\n  \"n\": 1\n}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let payloads = read_input(dir.path()).unwrap();
        let texts: Vec<String> = payloads.iter().map(|p| String::from_utf8_lossy(&p.bytes).replace(char::is_whitespace, "")).collect();
        assert_eq!(texts, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
    }

    #[test]
    fn blank_lines_are_skipped() {
        let lines = split_lines(b"{}\n\n  \n{}\r\n", "f");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].origin, "f:4");
        assert_eq!(lines[1].bytes, b"{}");
    }
}
