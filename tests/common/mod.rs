//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod kafka;

use std::collections::BTreeSet;
use std::path::Path;

use blameless::model::IncidentEvent;

/// Builds a gated, still open `platform_outage` on `voice_inbound` that
/// started at `start_ms`: 120 of 300 calls failed.
pub fn gated_incident(incident_id: &str, start_ms: i64) -> IncidentEvent {
    IncidentEvent {
        incident_id: incident_id.into(),
        change: "gated".into(),
        incident_type: "platform_outage".into(),
        severity: "sev1".into(),
        affected_service: "voice_inbound".into(),
        platform_source: "genesys_cloud_cx".into(),
        signal_type: "call_failed".into(),
        timestamp_start_ms: start_ms,
        timestamp_end_ms: None,
        last_signal_ms: start_ms + 800_000,
        failed_contacts: 120,
        total_contacts: 300,
        threshold_count: 50,
        window_ms: 300_000,
        gated: true,
        gate_reason: Some("lasted longer than 600 s".into()),
        recurrences: 0,
        type_reason: None,
        dependencies: Vec::new(),
    }
}

/// Personal values in raw platform payloads: phone numbers (with and without
/// their `tel:` wrapper), agent user ids, external contact ids, names and
/// email addresses.
pub fn personal_values(input: &[u8]) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for line in input.split(|b| *b == b'\n') {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        collect(&value, &mut values);
    }
    values
}

fn collect(value: &serde_json::Value, out: &mut BTreeSet<String>) {
    const KEYS: [&str; 8] = ["ani", "dnis", "userId", "externalContactId", "stationPhoneNumber", "userName", "firstName", "lastName"];
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if KEYS.contains(&key.as_str()) {
                    if let Some(text) = child.as_str().filter(|t| t.len() >= 6) {
                        out.insert(text.to_string());
                        if let Some(number) = text.strip_prefix("tel:") {
                            out.insert(number.to_string());
                            out.insert(number.trim_start_matches('+').to_string());
                        }
                    }
                } else {
                    collect(child, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        _ => {}
    }
}

/// Reads every file under `root`, with its path.
pub fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

/// Fails naming the first place where a personal value appears. Avro object
/// container files are deflate-compressed, so they are checked decoded.
pub fn assert_no_canary(canaries: &BTreeSet<String>, haystacks: &[(String, Vec<u8>)]) {
    for (place, bytes) in haystacks {
        let text = if place.ends_with(".avro") {
            let events = blameless::stages::archive::read_container(bytes).unwrap();
            format!("{events:?}")
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        };
        for canary in canaries {
            assert!(!text.contains(canary.as_str()), "personal value {canary:?} found in {place}");
        }
    }
}
