use std::collections::BTreeSet;

use super::*;
use crate::config::WindowConfig;

fn rules() -> WindowRules {
    WindowRules::from(&WindowConfig::default())
}

fn event(service: &str, event_type: &str, time_ms: i64) -> MaskedEvent {
    crate::model::test_masked_event(service, event_type, time_ms)
}

fn feed(detector: &mut Detector, events: &[MaskedEvent]) -> Vec<IncidentEvent> {
    events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| detector.observe(e, 0, i as i64))
        .collect()
}

/// `failures` failed calls one second apart, plus `completed` completed
/// calls in the same span.
fn burst(failures: i64, completed: i64) -> Vec<MaskedEvent> {
    let mut events: Vec<MaskedEvent> = (0..failures).map(|i| event("voice_inbound", "call_failed", i * 1000)).collect();
    events.extend((0..completed).map(|i| event("voice_inbound", "call_completed", i * 10)));
    events.sort_by_key(|e| e.event_time_ms);
    events
}

#[test]
fn forty_nine_failures_open_nothing() {
    let mut detector = Detector::new(rules());
    assert!(feed(&mut detector, &burst(49, 0)).is_empty());
}

#[test]
fn fifty_failures_open_an_incident() {
    let mut detector = Detector::new(rules());
    let changes = feed(&mut detector, &burst(50, 0));
    assert_eq!(changes[0].change, "opened");
    assert_eq!(changes[0].timestamp_start_ms, 0);
    assert_eq!(changes[0].incident_id, incident_id("voice_inbound", 0));
}

#[test]
fn failures_spread_beyond_window_open_nothing() {
    let mut detector = Detector::new(rules());
    let events: Vec<_> = (0..60).map(|i| event("voice_inbound", "call_failed", i * 7_000)).collect();
    assert!(feed(&mut detector, &events).is_empty());
}

#[test]
fn share_over_five_percent_gates_at_once() {
    let mut detector = Detector::new(rules());
    // 50 failed out of 50 + 900 calls: 5.3%.
    let changes = feed(&mut detector, &burst(50, 900));
    let kinds: Vec<&str> = changes.iter().map(|c| c.change.as_str()).collect();
    assert_eq!(kinds, ["opened", "gated"]);
}

#[test]
fn share_at_five_percent_does_not_gate() {
    let mut detector = Detector::new(rules());
    // 50 failed out of 50 + 950 calls: exactly 5.0%.
    let changes = feed(&mut detector, &burst(50, 950));
    let kinds: Vec<&str> = changes.iter().map(|c| c.change.as_str()).collect();
    assert_eq!(kinds, ["opened"]);
}

#[test]
fn long_incident_gates_after_ten_minutes() {
    let mut detector = Detector::new(rules());
    // A low-share outage: 50 failures open it, then one failure every
    // 30 s among many completed calls keeps it open past 10 minutes.
    let mut events = burst(50, 2000);
    for i in 0..25 {
        events.push(event("voice_inbound", "call_failed", 50_000 + i * 30_000));
    }
    let changes = feed(&mut detector, &events);
    let gated = changes.iter().find(|c| c.change == "gated").expect("gated");
    assert!(gated.gate_reason.as_deref().unwrap().starts_with("lasted"));
    assert!(gated.last_signal_ms - gated.timestamp_start_ms > 600_000);
}

#[test]
fn quiet_period_closes_incident() {
    let mut detector = Detector::new(rules());
    feed(&mut detector, &burst(50, 0));
    let closed = detector.close_quiet(Some(49_000 + 300_001));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].change, "closed");
    assert_eq!(closed[0].timestamp_end_ms, Some(49_000));
}

#[test]
fn calls_after_last_signal_do_not_dilute_share() {
    let mut detector = Detector::new(rules());
    let mut events = burst(50, 0);
    events.extend((0..500).map(|i| event("voice_inbound", "call_completed", 60_000 + i * 100)));
    feed(&mut detector, &events);
    let closed = detector.close_all();
    assert_eq!(closed[0].failed_contacts, 50);
    assert_eq!(closed[0].total_contacts, 50);
    assert_eq!(closed[0].severity, "sev1");
}

fn check(name: &str, ok: bool, time_ms: i64) -> MaskedEvent {
    let mut event = event(&format!("dependency_{name}"), "dependency_check", time_ms);
    event.failed_contacts = i64::from(!ok);
    event.dependency = Some(crate::model::DependencyCheck {
        name: name.into(),
        ok,
        http_status: None,
        location: None,
    });
    event
}

#[test]
fn ivr_errors_open_their_own_incident() {
    let mut detector = Detector::new(rules());
    let events: Vec<_> = (0..50).map(|i| event("voice_inbound", "ivr_error", i * 1000)).collect();
    let changes = feed(&mut detector, &events);
    assert_eq!(changes[0].change, "opened");
    assert_eq!(changes[0].signal_type, "ivr_error");
}

#[test]
fn other_failure_types_do_not_add_to_share() {
    let mut detector = Detector::new(rules());
    let mut events = burst(50, 0);
    events.extend((0..30).map(|i| event("voice_inbound", "ivr_error", i * 1000 + 500)));
    events.sort_by_key(|e| e.event_time_ms);
    feed(&mut detector, &events);
    let closed = detector.close_all();
    assert_eq!(closed[0].signal_type, "call_failed");
    assert_eq!(closed[0].failed_contacts, 50);
}

#[test]
fn dependency_incident_ends_at_recovery() {
    let mut detector = Detector::new(rules());
    let mut changes = feed(&mut detector, &[check("crm", false, 0)]);
    changes.extend(detector.observe(&check("crm", true, 300_000), 0, 1));
    let kinds: Vec<&str> = changes.iter().map(|c| c.change.as_str()).collect();
    assert_eq!(kinds, ["opened", "gated", "closed"]);
    assert_eq!(changes[2].incident_type, "downstream_dependency");
    assert_eq!(changes[2].timestamp_end_ms, Some(300_000));
}

#[test]
fn incident_carries_dependency_status_of_its_time() {
    let mut detector = Detector::new(rules());
    detector.observe(&check("crm", false, 1_000), 1, 0);
    detector.observe(&check("crm", true, 900_000), 1, 1);
    feed(&mut detector, &burst(50, 0));
    let closed = detector.close_all();
    let voice = closed.iter().find(|c| c.affected_service == "voice_inbound").unwrap();
    assert_eq!(voice.dependencies.len(), 1);
    assert_eq!(voice.dependencies[0].status, "failed");
    assert_eq!(voice.dependencies[0].checked_at_ms, 1_000);
}

fn decoded(event: MaskedEvent, partition: i32, offset: i64, timestamp_ms: i64) -> Decoded {
    Decoded {
        position: crate::transport::Position {
            topic: "masked".into(),
            partition,
            offset,
        },
        record: Record::Masked(event),
        timestamp_ms: Some(timestamp_ms),
        replay: false,
    }
}

#[tokio::test]
async fn stage_restores_accept_order() {
    let mut stage = WindowStage::new(rules());
    // Two outages 400 s apart reach one partition of `masked` second
    // first, as when normalize read one `raw-events` partition ahead of
    // another. Seen in that order, the first outage would fall outside
    // the window and be lost.
    let first: Vec<_> = (0..50).map(|i| event("voice_inbound", "call_failed", i * 1000)).collect();
    let second: Vec<_> = (0..50).map(|i| event("voice_inbound", "call_failed", 400_000 + i * 1000)).collect();
    let accepted_at = |e: &MaskedEvent| e.event_time_ms / 1000;
    let arrival = second.iter().chain(&first);
    let batch: Vec<Decoded> = arrival.enumerate().map(|(i, e)| decoded(e.clone(), 0, i as i64, accepted_at(e))).collect();

    let outcomes = stage.process(batch).await.unwrap();
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)), "held records emit nothing yet");
    assert_eq!(stage.commit_floor("masked", 0), Some(0));

    let emits = stage.finish().await.unwrap();
    // The second outage comes within the cooldown, so it reopens the
    // first incident.
    let changes: BTreeSet<(&str, i64, i32)> = emits
        .iter()
        .filter_map(|emit| match &emit.record {
            Record::Incident(incident) if incident.change != "gated" => {
                Some((incident.change.as_str(), incident.last_signal_ms, incident.recurrences))
            }
            _ => None,
        })
        .collect();
    let expected = [("opened", 49_000, 0), ("closed", 49_000, 0), ("reopened", 449_000, 1), ("closed", 449_000, 1)];
    assert_eq!(changes, BTreeSet::from(expected));
}

fn kinds(changes: &[IncidentEvent]) -> Vec<&str> {
    changes.iter().map(|c| c.change.as_str()).collect()
}

#[test]
fn threshold_boundary_table() {
    // (failed calls within 49 s, expected changes)
    let cases: [(i64, &[&str]); 3] = [(49, &[]), (50, &["opened", "gated"]), (51, &["opened", "gated"])];
    for (failures, expected) in cases {
        let mut detector = Detector::new(rules());
        let changes = feed(&mut detector, &burst(failures, 0));
        assert_eq!(kinds(&changes), expected, "{failures} failures");
    }
}

#[test]
fn duration_gate_boundary_table() {
    // (last signal after the start in ms, whether the duration gate passes)
    let cases = [(600_000, false), (601_000, true)];
    for (last_signal_ms, gated) in cases {
        let mut detector = Detector::new(rules());
        // 50 failures among 2000 completed calls stay below the share.
        let mut events = burst(50, 2000);
        let mut time = 60_000;
        while time < last_signal_ms {
            events.push(event("voice_inbound", "call_failed", time));
            time += 60_000;
        }
        events.push(event("voice_inbound", "call_failed", last_signal_ms));
        let changes = feed(&mut detector, &events);
        let gate = changes.iter().find(|c| c.change == "gated");
        assert_eq!(gate.is_some(), gated, "last signal at {last_signal_ms} ms: {:?}", kinds(&changes));
        if let Some(gate) = gate {
            assert_eq!(gate.gate_reason.as_deref(), Some("lasted 601 s, longer than 600 s"));
        }
    }
}

#[test]
fn share_gate_boundary_table() {
    // (completed calls beside 50 failed ones, expected changes)
    let cases: [(i64, &[&str]); 2] = [(950, &["opened"]), (930, &["opened", "gated"])];
    for (completed, expected) in cases {
        let mut detector = Detector::new(rules());
        let changes = feed(&mut detector, &burst(50, completed));
        assert_eq!(kinds(&changes), expected, "50 failed of {}", 50 + completed);
    }
}

#[test]
fn idle_partition_stops_holding_watermark() {
    let mut detector = Detector::new(rules());
    let start = Instant::now();
    detector.observe_at(&event("voice_inbound", "call_completed", 10_000), 1, 0, start);
    let later = start + Duration::from_secs(45);
    detector.observe_at(&event("voice_inbound", "call_completed", 100_000), 0, 0, later);
    // Partition 1 had a record 45 s ago, so the watermark still waits
    // for it.
    assert_eq!(detector.watermark_at(later), Some(10_000 - 30_000));
    // Past the 60 s idle timeout, only partition 0 counts.
    let idle = start + Duration::from_secs(61);
    assert_eq!(detector.watermark_at(idle), Some(100_000 - 30_000));
}

#[test]
fn wall_clock_closes_incident_without_traffic() {
    let mut detector = Detector::new(rules());
    let start = Instant::now();
    for (i, e) in burst(50, 0).iter().enumerate() {
        detector.observe_at(e, 0, i as i64, start);
    }
    // No record arrives after the last signal at 49 s of event time.
    let night = |detector: &Detector, secs| detector.watermark_at(start + Duration::from_secs(secs));
    assert_eq!(night(&detector, 200), Some(49_000 + 200_000));
    let at_quiet = night(&detector, 300);
    assert!(detector.close_quiet(at_quiet).is_empty(), "closed at the quiet period");
    let after_quiet = night(&detector, 301);
    let closed = detector.close_quiet(after_quiet);
    assert_eq!(kinds(&closed), ["closed"]);
    assert_eq!(closed[0].timestamp_end_ms, Some(49_000));
}

#[test]
fn count_hovering_at_threshold_opens_once() {
    let mut detector = Detector::new(rules());
    // One failure every 6 s keeps 49 or 50 signals in the 300 s window
    // for half an hour.
    let events: Vec<_> = (0..300).map(|i| event("voice_inbound", "call_failed", i * 6_000)).collect();
    let changes = feed(&mut detector, &events);
    assert_eq!(kinds(&changes), ["opened", "gated"]);
    let closed = detector.close_all();
    assert_eq!(kinds(&closed), ["closed"]);
    assert_eq!(closed[0].incident_id, changes[0].incident_id);
}

#[test]
fn lateness_boundary_table() {
    // The watermark is 200 s - 30 s of out-of-orderness, and 60 s of
    // lateness are allowed on top: 110 s is the oldest time that counts.
    let cases = [(110_000, false), (109_999, true)];
    for (time_ms, late) in cases {
        let mut detector = Detector::new(rules());
        let now = Instant::now();
        detector.observe_at(&event("voice_inbound", "call_completed", 200_000), 0, 0, now);
        assert_eq!(detector.event_watermark_at(now), Some(170_000));
        detector.observe_at(&event("voice_inbound", "call_failed", time_ms), 0, 1, now);
        let set_aside = detector.take_late();
        assert_eq!(set_aside.len(), usize::from(late), "event at {time_ms} ms");
        assert_eq!(detector.late_count(), u64::from(late), "event at {time_ms} ms");
        if let Some(late_event) = set_aside.first() {
            assert_eq!((late_event.partition, late_event.offset, late_event.watermark_ms), (0, 1, 170_000));
        }
    }
}

#[test]
fn late_failures_open_nothing() {
    let mut detector = Detector::new(rules());
    let now = Instant::now();
    detector.observe_at(&event("voice_inbound", "call_completed", 1_000_000), 0, 0, now);
    let late: Vec<_> = (0..60).map(|i| event("voice_inbound", "call_failed", i * 1000)).collect();
    let changes: Vec<_> = late.iter().flat_map(|e| detector.observe_at(e, 0, 1, now)).collect();
    assert!(changes.is_empty(), "{:?}", kinds(&changes));
    assert_eq!(detector.late_count(), 60);
    assert_eq!(detector.floor(0), Some(0), "late events hold no offset");
}

#[test]
fn quiet_night_makes_no_event_late() {
    let mut detector = Detector::new(rules());
    let start = Instant::now();
    detector.observe_at(&event("voice_inbound", "call_completed", 100_000), 0, 0, start);
    // Eight hours later, the wall clock has moved the closing watermark,
    // but an event from the last minute is not late.
    let morning = start + Duration::from_secs(8 * 3600);
    assert!(detector.watermark_at(morning).unwrap() > 8 * 3_600_000);
    detector.observe_at(&event("voice_inbound", "call_completed", 95_000), 0, 1, morning);
    assert_eq!(detector.late_count(), 0);
}

#[tokio::test]
async fn stage_sends_late_events_aside() {
    let mut rules = rules();
    rules.reorder_ms = 0;
    let mut stage = WindowStage::new(rules);
    let mut late = event("voice_inbound", "call_failed", 1_000);
    late.event_id = "late-one".into();
    let batch = vec![
        decoded(event("voice_inbound", "call_completed", 500_000), 2, 10, 1),
        decoded(late.clone(), 2, 11, 2),
    ];
    let outcomes = stage.process(batch).await.unwrap();
    let emits: Vec<&Emit> = outcomes.iter().flat_map(|o| o.as_ref().unwrap()).collect();
    assert_eq!(emits.len(), 1);
    assert_eq!(emits[0].topic, LATE_EVENTS);
    assert_eq!(emits[0].key, "masked/2/11");
    let Record::Masked(sent) = &emits[0].record else {
        panic!("late event is not a masked record: {:?}", emits[0].record);
    };
    assert_eq!(sent.event_id, "late-one");
    assert_eq!(sent.attributes.get("late.watermark_ms").map(String::as_str), Some("470000"));
    assert_eq!(sent.attributes.get("late.allowed_lateness_ms").map(String::as_str), Some("60000"));

    // A replay of a late record sends nothing again.
    let mut replayed = decoded(late, 2, 11, 3);
    replayed.replay = true;
    let outcomes = stage.process(vec![replayed]).await.unwrap();
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)));
    assert!(stage.tick(0).await.unwrap().is_empty());
}

/// 50 failed calls of `voice_inbound`, one a second from `start_ms`.
fn outage(start_ms: i64) -> Vec<MaskedEvent> {
    (0..50).map(|i| event("voice_inbound", "call_failed", start_ms + i * 1000)).collect()
}

#[test]
fn recurrence_within_cooldown_reopens_table() {
    // Each outage lasts 49 s and closes at its last signal. The cooldown
    // doubles from 600 s to 1200 s and 2400 s, and then stops at the
    // 3600 s maximum. Each case is (gap from the previous close to the
    // next breach in s, expected change, recurrences).
    let cases: [(i64, &str, i32); 6] = [
        (0, "opened", 0),
        (600, "reopened", 1),
        (1200, "reopened", 2),
        (2400, "reopened", 3),
        (3600, "reopened", 4),
        (3601, "opened", 0),
    ];
    let mut detector = Detector::new(rules());
    let mut offset = 0;
    let mut close_ms = 1_000_000;
    let mut first_id = None;
    for (gap_s, change, recurrences) in cases {
        let breach_ms = close_ms + gap_s * 1000;
        // The 50th signal breaches, so the outage starts 49 s earlier.
        let mut changes = Vec::new();
        for e in outage(breach_ms - 49_000) {
            changes.extend(detector.observe(&e, 0, offset));
            offset += 1;
        }
        let change_at = changes.iter().find(|c| c.change == change).unwrap_or_else(|| panic!("gap {gap_s} s: {:?}", kinds(&changes)));
        assert_eq!(change_at.recurrences, recurrences, "gap {gap_s} s");
        let id = first_id.get_or_insert_with(|| change_at.incident_id.clone());
        assert_eq!(*id == change_at.incident_id, change == "reopened" || gap_s == 0, "gap {gap_s} s");
        close_ms = breach_ms;
        let closed = detector.close_quiet(Some(close_ms + 300_001));
        assert_eq!(kinds(&closed), ["closed"], "gap {gap_s} s");
    }
}

#[test]
fn calm_period_resets_cooldown() {
    let mut detector = Detector::new(rules());
    let mut offset = 0;
    let mut run = |detector: &mut Detector, start_ms: i64| {
        let changes: Vec<_> = outage(start_ms)
            .iter()
            .flat_map(|e| {
                offset += 1;
                detector.observe(e, 0, offset)
            })
            .collect();
        detector.close_quiet(Some(start_ms + 49_000 + 300_001));
        changes
    };
    run(&mut detector, 0);
    let second = run(&mut detector, 49_000 + 500_000);
    assert_eq!(second[0].change, "reopened");
    // More than the 3600 s calm period after the second close.
    let third = run(&mut detector, 549_000 + 49_000 + 3_601_000);
    assert_eq!(third[0].change, "opened");
    // The cooldown is back at 600 s, so a breach 700 s after the close
    // is a new incident, where the doubled 1200 s would have reopened it.
    let third_close = 549_000 + 49_000 + 3_601_000 + 49_000;
    let fourth = run(&mut detector, third_close + 700_000 - 49_000);
    assert_eq!(fourth[0].change, "opened");
    assert_ne!(fourth[0].incident_id, third[0].incident_id);
}

#[test]
fn reopened_incident_adds_up_contacts() {
    let mut detector = Detector::new(rules());
    let mut events = outage(0);
    events.extend(outage(400_000));
    let changes = feed(&mut detector, &events);
    assert_eq!(kinds(&changes), ["opened", "gated", "closed", "reopened"]);
    assert_eq!(changes[3].failed_contacts, 100);
    assert_eq!(changes[3].total_contacts, 100);
    assert_eq!(changes[3].timestamp_start_ms, 0);
    let closed = detector.close_all();
    assert_eq!(closed[0].recurrences, 1);
    assert_eq!(closed[0].incident_id, changes[0].incident_id);
}

#[test]
fn ungated_spike_is_counted_not_gated() {
    let mut detector = Detector::new(rules());
    // 50 failed of 2000 calls: 2.5%, closed within 49 s.
    feed(&mut detector, &burst(50, 1950));
    let closed = detector.close_all();
    assert_eq!(kinds(&closed), ["closed"]);
    assert!(!closed[0].gated);
    assert_eq!(detector.spike_count(), 1);
}

#[test]
fn dependency_classification_table() {
    // (platform events before the CRM check fails, expected type, reason)
    let healthy: Vec<MaskedEvent> = (0..200).map(|i| event("voice_inbound", "call_completed", i * 100)).collect();
    let mut failing = outage(0);
    failing.extend(healthy.iter().cloned());
    failing.sort_by_key(|e| e.event_time_ms);
    let cases = [
        (
            healthy,
            "downstream_dependency",
            "dependency crm failed at 1970-01-01T00:01:00.000Z while the platform signals of every service were healthy",
        ),
        (
            failing,
            "platform_outage",
            "dependency crm failed at 1970-01-01T00:01:00.000Z while platform signals also failed on voice_inbound (call_failed)",
        ),
    ];
    for (platform, incident_type, reason) in cases {
        let mut detector = Detector::new(rules());
        feed(&mut detector, &platform);
        let changes = detector.observe(&check("crm", false, 60_000), 1, 0);
        assert_eq!(kinds(&changes), ["opened", "gated"], "{incident_type}");
        assert_eq!(changes[0].affected_service, "dependency_crm");
        assert_eq!(changes[0].incident_type, incident_type);
        assert_eq!(changes[0].type_reason.as_deref(), Some(reason));
        assert_eq!(changes[0].dependencies[0].name, "crm");
        assert_eq!(changes[0].dependencies[0].status, "failed");
    }
}

#[test]
fn platform_incident_has_no_type_reason() {
    let mut detector = Detector::new(rules());
    detector.observe(&check("crm", false, 0), 1, 0);
    let changes = feed(&mut detector, &outage(1_000));
    let voice = changes.iter().find(|c| c.affected_service == "voice_inbound").expect("voice incident");
    assert_eq!(voice.incident_type, "platform_outage");
    assert_eq!(voice.type_reason, None);
}

#[test]
fn service_threshold_overrides_default() {
    let mut config = WindowConfig::default();
    let chat = config.services.entry("chat".into()).or_default();
    chat.thresholds.insert("call_failed".into(), 10);
    let rules = WindowRules::from(&config);
    assert_eq!(rules.threshold("chat", "call_failed"), Some(10));
    assert_eq!(rules.threshold("chat", "ivr_error"), Some(50), "other types keep the default");
    assert_eq!(rules.threshold("voice_inbound", "call_failed"), Some(50));

    // (service, failed calls, expected changes)
    let cases: [(&str, i64, &[&str]); 3] =
        [("chat", 9, &[]), ("chat", 10, &["opened", "gated"]), ("voice_inbound", 10, &[])];
    for (service, failures, expected) in cases {
        let mut detector = Detector::new(rules.clone());
        let events: Vec<_> = (0..failures).map(|i| event(service, "call_failed", i * 1000)).collect();
        let changes = feed(&mut detector, &events);
        assert_eq!(kinds(&changes), expected, "{service} with {failures} failures");
        if let Some(opened) = changes.first() {
            assert_eq!(opened.threshold_count, 10);
        }
    }
}

#[test]
fn floor_holds_offsets_of_window() {
    let mut detector = Detector::new(rules());
    feed(&mut detector, &burst(10, 0));
    assert_eq!(detector.floor(0), Some(0));
    assert_eq!(detector.floor(1), None);
}

/// Encodes `record` with `writer` and decodes it with `reader`, as a
/// consumer with a schema registry does when the two differ.
fn resolve_incident(
    record: apache_avro::types::Value,
    writer: &apache_avro::Schema,
    reader: &apache_avro::Schema,
) -> IncidentEvent {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    let value = record.resolve(writer).unwrap();
    let bytes = GenericDatumWriter::builder(writer).build().unwrap().write_value_to_vec(value).unwrap();
    let read = GenericDatumReader::builder(writer)
        .maybe_reader_schema(Some(reader))
        .build()
        .unwrap()
        .read_value(&mut &bytes[..])
        .unwrap();
    apache_avro::from_value(&read).unwrap()
}

#[tokio::test]
async fn incident_schema_resolves_across_versions() {
    const NEW_FIELDS: [&str; 2] = ["recurrences", "type_reason"];
    let new_schema = apache_avro::Schema::parse_str(RecordKind::Incident.schema_text()).unwrap();
    let mut old_json: serde_json::Value = serde_json::from_str(RecordKind::Incident.schema_text()).unwrap();
    old_json["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|field| !NEW_FIELDS.contains(&field["name"].as_str().unwrap_or_default()));
    let old_schema = apache_avro::Schema::parse_str(&old_json.to_string()).unwrap();

    let mut detector = Detector::new(rules());
    detector.observe(&check("crm", false, 0), 0, 0);
    let mut incident = detector.close_all().remove(0);
    incident.recurrences = 2;
    assert!(incident.type_reason.is_some());

    let codec = crate::codec::Codec::single_object().unwrap();
    let bytes = codec.encode(WINDOWED_INCIDENTS, &Record::Incident(incident.clone())).await.unwrap();
    let decoded: IncidentEvent = codec.decode(RecordKind::Incident, &bytes).await.unwrap();
    assert_eq!(decoded, incident);

    // A record of the old schema reads with the defaults.
    let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(&incident).unwrap() else {
        panic!("an incident serializes to an Avro record");
    };
    fields.retain(|(name, _)| !NEW_FIELDS.contains(&name.as_str()));
    let read = resolve_incident(apache_avro::types::Value::Record(fields), &old_schema, &new_schema);
    assert_eq!(read.recurrences, 0);
    assert_eq!(read.type_reason, None);
    assert_eq!(read.incident_id, incident.incident_id);

    // A reader with the old schema skips the new fields.
    let read = resolve_incident(apache_avro::to_value(&incident).unwrap(), &new_schema, &old_schema);
    assert_eq!(read.recurrences, 0);
    assert_eq!(read.incident_id, incident.incident_id);
}

#[tokio::test]
async fn tick_releases_held_records_after_idle() {
    let mut stage = WindowStage::new(rules());
    let batch: Vec<Decoded> = outage(0).into_iter().enumerate().map(|(i, e)| decoded(e, 0, i as i64, i as i64)).collect();
    let outcomes = stage.process(batch).await.unwrap();
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)), "records within the reorder delay are held");
    assert!(stage.tick(0).await.unwrap().is_empty(), "released before the idle time");

    // No input for longer than REORDER_IDLE: the tick releases every held
    // record, and the incident they open is sent.
    stage.last_input = Instant::now().checked_sub(REORDER_IDLE + Duration::from_secs(1));
    let emits = stage.tick(0).await.unwrap();
    let changes: Vec<&str> = emits
        .iter()
        .filter_map(|emit| match &emit.record {
            Record::Incident(incident) => Some(incident.change.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(changes, ["opened", "gated"]);
    assert_eq!(stage.commit_floor("masked", 0), Some(0), "the open incident keeps its first record");
}

#[tokio::test]
async fn revoked_partition_drops_held_records() {
    let mut stage = WindowStage::new(rules());
    // Record timestamps 50 ms apart stay within the reorder delay, so the
    // stage keeps every record of the outage back.
    let batch: Vec<Decoded> = (0..50)
        .map(|i| decoded(event("voice_inbound", "call_failed", i * 1000), 1, i, 1_000 + i * 50))
        .collect();
    let outcomes = stage.process(batch).await.unwrap();
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty)), "held records emit nothing yet");
    assert_eq!(stage.done_floor("masked", 1), Some(0));

    stage.partitions_revoked("masked", &[1]);

    // The new owner processes the held records as new, so this member
    // sends none of their changes.
    assert_eq!(stage.commit_floor("masked", 1), None);
    assert_eq!(stage.done_floor("masked", 1), None);
    assert!(stage.finish().await.unwrap().is_empty());
}

#[test]
fn forget_partitions_drops_their_services() {
    let mut detector = Detector::new(rules());
    for (i, e) in burst(50, 0).iter().enumerate() {
        detector.observe(e, 1, i as i64);
    }
    detector.observe(&event("chat", "call_completed", 1_000), 2, 0);

    detector.forget_partitions(&[1]);

    assert_eq!(detector.floor(1), None);
    assert_eq!(detector.floor(2), Some(0));
    let closed = detector.close_all();
    assert!(closed.is_empty(), "the incident of a forgotten partition closed: {closed:?}");
}
