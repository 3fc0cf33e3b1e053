//! Ingest: reads platform payloads as delivered (JSON Lines, a `.json` file,
//! or a folder of `.json` and `.jsonl` files) and writes each to
//! `raw-events` with its source, delivery path and receive time. It keeps
//! the bytes exactly as delivered, even when they are not valid JSON, and
//! removes only a leading UTF-8 byte order mark. A payload above
//! `ingest.max_payload_bytes` goes to `dead-letter` instead. Every other
//! payload reaches `raw-events`, where the normalize stage judges it.
//!
//! A line may also be a capture record, `{"capture": {...}, "payload": {...}}`,
//! which is how a poller records what it fetched: `capture.delivery`,
//! `capture.received_at` and the polled `capture.interval_start` and
//! `capture.interval_end` (ISO-8601) travel with the payload. The whole
//! `capture` object is also kept as JSON text, for facts a source's
//! normalizer reads, such as the NICE poller's previous interval.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::RawEvent;
use crate::scrub::scrub_text;
use crate::sources::{self, derive_id, parse_time_ms_unchecked, text_field};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The OS error is the `source`, which anyhow's chain prints after this
    /// message.
    #[error("Could not read input {path} (expected a JSON Lines file, a .json file, or a folder of .json and .jsonl files)")]
    Read { path: PathBuf, source: std::io::Error },
}

/// The UTF-8 byte order mark, which some editors write at the start of a
/// file. JSON parsers reject it, so it is removed from the start of a file
/// and of each line.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

fn strip_byte_order_mark(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BYTE_ORDER_MARK).unwrap_or(bytes)
}

/// One delivered payload and where it was read from.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// `file:line` or the file name, for messages.
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// Reads every payload from a JSON Lines file, a `.json` file (one payload,
/// which may span lines), or a folder of `.json` and `.jsonl` files, in name
/// order. Blank lines of JSON Lines are skipped, and so is a folder's other
/// content, with a warning that names it.
pub fn read_input(path: &Path) -> Result<Vec<Delivered>, IngestError> {
    let read_error = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let (files, skipped) = list_input_folder(path)?;
        if !skipped.is_empty() {
            let names: Vec<String> = skipped.iter().map(|p| p.display().to_string()).collect();
            tracing::warn!(
                folder = %path.display(),
                skipped = %names.join(", "),
                count = skipped.len(),
                "Input folder entries skipped: only files ending in lower-case .json or .jsonl are read, and subfolders are not."
            );
        }
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
            bytes: strip_byte_order_mark(&bytes).to_vec(),
        }]);
    }
    Ok(split_lines(&bytes, &path.display().to_string()))
}

/// Returns the input files of a folder in name order, and the entries that
/// are not read: subfolders and files without a lower-case `.json` or
/// `.jsonl` extension.
fn list_input_folder(path: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), IngestError> {
    let read_error = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let entry_path = entry.map_err(read_error)?.path();
        let is_input = entry_path.is_file()
            && entry_path.extension().is_some_and(|ext| ext == "json" || ext == "jsonl");
        if is_input {
            files.push(entry_path);
        } else {
            skipped.push(entry_path);
        }
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// Splits JSON Lines into payloads, skipping blank lines. A byte order mark
/// at the start of a line is removed.
pub fn split_lines(bytes: &[u8], origin: &str) -> Vec<Delivered> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(index, line)| (index, strip_byte_order_mark(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| Delivered {
            origin: format!("{origin}:{}", index + 1),
            bytes: line.strip_suffix(b"\r").unwrap_or(line).to_vec(),
        })
        .collect()
}

/// Checks a delivered payload against the size limit
/// (`ingest.max_payload_bytes`). The error names the origin (`file:line`),
/// the size and the limit.
pub fn check_size(delivered: &Delivered, max_bytes: usize) -> Result<(), String> {
    let size = delivered.bytes.len();
    if size <= max_bytes {
        return Ok(());
    }
    Err(format!(
        "payload at {} is {size} bytes, above the limit of {max_bytes} bytes (ingest.max_payload_bytes); split the payload or raise the limit",
        delivered.origin
    ))
}

/// Builds the raw event of one delivered payload, and its key on
/// `raw-events`.
pub fn to_raw_event(delivered: &Delivered, received_at_ms: i64) -> (String, RawEvent) {
    // A capture record is an object: serde would also read a JSON array of
    // two values as one, and lose the first.
    let is_object = delivered.bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let capture = if is_object {
        serde_json::from_slice::<Capture>(&delivered.bytes).ok()
    } else {
        None
    };
    let (payload, capture) = match capture {
        Some(capture) => (capture.payload.get().as_bytes().to_vec(), Some(capture.capture)),
        None => (delivered.bytes.clone(), None),
    };
    let payload_value: Option<Value> = serde_json::from_slice(&payload).ok();

    let source = payload_value
        .as_ref()
        .map_or(sources::Source::Unknown, sources::recognize);
    // Capture times are not range-checked here, because the NICE source
    // checks the event time it takes from them and rejects it with a reason.
    let capture_time = |field: &str| {
        let value = capture.as_ref()?.get(field)?;
        match parse_time_ms_unchecked(value) {
            Ok(time_ms) => Some(time_ms),
            Err(reason) => {
                tracing::warn!(
                    origin = %delivered.origin,
                    field,
                    reason = %scrub_text(&reason),
                    "Capture time is unusable and is left out of the raw event."
                );
                None
            }
        }
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
        capture_json: capture.as_ref().map(Value::to_string),
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

/// Returns the key that keeps one source's payloads in order on one partition
/// when there is no conversation: the NICE business unit, the Pingdom check, the
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
        let capture: Value = serde_json::from_str(raw.capture_json.as_deref().unwrap()).unwrap();
        assert_eq!(capture["delivery"], "nice_reporting_poll");
    }

    #[test]
    fn two_element_array_is_no_capture() {
        let text = r#"[{"topicName":"a"},{"topicName":"b"}]"#;
        let (_, raw) = to_raw_event(&delivered(text), 7);
        assert_eq!(raw.payload, text.as_bytes());
        assert_eq!(raw.capture_json, None);
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
    fn byte_order_mark_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("one.json");
        std::fs::write(&json, b"\xEF\xBB\xBF{\"n\": 1}\n").unwrap();
        let lines = dir.path().join("two.jsonl");
        std::fs::write(&lines, b"\xEF\xBB\xBF{\"n\":2}\n\xEF\xBB\xBF{\"n\":3}\n\xEF\xBB\xBF\n").unwrap();
        let payloads = read_input(dir.path()).unwrap();
        assert_eq!(payloads.len(), 3);
        for payload in &payloads {
            assert!(serde_json::from_slice::<Value>(&payload.bytes).is_ok(), "{}", payload.origin);
        }
    }

    /// A writer that keeps what a tracing subscriber writes.
    #[derive(Clone, Default)]
    struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for CapturedLog {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn skipped_folder_entries_are_warned_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), "{}").unwrap();
        std::fs::write(dir.path().join("b.JSON"), "{}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::create_dir(dir.path().join("nested.json")).unwrap();

        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let payloads = tracing::subscriber::with_default(subscriber, || read_input(dir.path()).unwrap());
        assert_eq!(payloads.len(), 1);

        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("WARN").count(), 1, "{text}");
        for name in ["b.JSON", "notes.txt", "nested.json"] {
            assert!(text.contains(&dir.path().join(name).display().to_string()), "{name}: {text}");
        }
        assert!(!text.contains("a.json"), "{text}");
    }

    #[test]
    fn read_error_message_leaves_os_error_to_source() {
        let error = read_input(Path::new("/nonexistent/blameless-input.jsonl")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/nonexistent/blameless-input.jsonl"), "{message}");
        assert!(!message.contains("os error"), "{message}");
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    }

    #[test]
    fn check_size_names_origin_size_and_limit() {
        let payload = delivered("{\"n\":12345}");
        assert_eq!(check_size(&payload, 11), Ok(()));
        let error = check_size(&payload, 10).unwrap_err();
        assert_eq!(
            error,
            "payload at test:1 is 11 bytes, above the limit of 10 bytes (ingest.max_payload_bytes); split the payload or raise the limit"
        );
    }

    #[test]
    fn capture_time_range_is_checked_by_normalize() {
        let text = r#"{"capture":{"received_at":"2025-12-12T14:01:02Z","interval_end":1765548060},"payload":{"skillSummaries":[]}}"#;
        let (_, raw) = to_raw_event(&delivered(text), 7);
        assert_eq!(raw.interval_end_ms, Some(1_765_548_060));
        let error = sources::normalize(&raw).unwrap_err();
        assert!(error.contains("interval_end_ms"), "{error}");
        assert!(error.contains("looks like epoch seconds"), "{error}");
    }

    #[test]
    fn blank_lines_are_skipped() {
        let lines = split_lines(b"{}\n\n  \n{}\r\n", "f");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].origin, "f:4");
        assert_eq!(lines[1].bytes, b"{}");
    }
}
