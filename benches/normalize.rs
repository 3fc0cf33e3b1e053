//! Normalize throughput on a generated day of contact-center traffic.
//!
//! The day has 10,000 Genesys Cloud voice and chat conversations spread over
//! 24 hours. Each is delivered as its detail events: customer start, flow
//! outcome, ACD start and end, agent start and end, after-call work and
//! customer end. 3% of calls end in a transport failure. Every minute adds a NICE
//! CXone skill summary for 4 skills and a Pingdom check. 1% of the Genesys
//! events are delivered twice, as EventBridge retries do.
//!
//! One element is one raw event through `Normalizer::normalize` and the
//! dedupe, as the normalize stage runs them, without a transport or Avro.
//! `cargo bench --bench normalize` measures; docs/BENCHMARKS.md has the
//! results.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use blameless::config::NormalizeConfig;
use blameless::model::RawEvent;
use blameless::stages::normalize::{Dedupe, Normalizer};

/// Start of the generated day: 2025-12-12T00:00:00Z.
const DAY_START_MS: i64 = 1_765_497_600_000;
const DAY_MS: i64 = 86_400_000;
const CONVERSATIONS: u64 = 10_000;

/// A small linear congruential generator, so the day is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn raw(source: &str, delivery: &str, received_at_ms: i64, payload: String) -> RawEvent {
    RawEvent {
        event_id: format!("{source}-{received_at_ms}"),
        source: source.into(),
        delivery: delivery.into(),
        received_at_ms,
        interval_start_ms: None,
        interval_end_ms: Some(received_at_ms),
        capture_json: None,
        payload: payload.into_bytes(),
    }
}

fn genesys(conversation: u64, event: &str, time_ms: i64, media: &str, extra: &str) -> RawEvent {
    let id = format!("{conversation:08x}-5d49-54cc-b0fd-1964c9db694c");
    let payload = format!(
        r#"{{"version":"0","id":"{id}-{event}","detail-type":"v2.detail.events.conversation.{{id}}.{event}","source":"aws.partner/genesys.com/cloud/org/acme","account":"123456789012","time":"2025-12-12T15:01:53Z","region":"us-east-1","resources":[],"detail":{{"topicName":"v2.detail.events.conversation.{id}.{event}","version":"2","eventBody":{{"eventTime":{time_ms},"conversationId":"{id}","participantId":"p-{conversation}","sessionId":"s-{conversation}","mediaType":"{media}","provider":"Edge","direction":"INBOUND","ani":"tel:+1317555{:04}","dnis":"tel:+13175550000","externalContactId":"ec-{conversation}","userId":"u-{}"{extra}}},"metadata":{{"CorrelationId":"{id}-{event}"}}}}}}"#,
        conversation % 10_000,
        conversation % 250,
    );
    raw("genesys", "eventbridge", time_ms + 150, payload)
}

fn generate_day() -> Vec<RawEvent> {
    let mut rng = Lcg(42);
    let mut events = Vec::new();
    for conversation in 0..CONVERSATIONS {
        let start = DAY_START_MS + rng.below(DAY_MS as u64 - 3_600_000) as i64;
        let media = if rng.below(5) == 0 { "CHAT" } else { "VOICE" };
        let failed = rng.below(100) < 3;
        let disconnect = if failed { "TRANSPORT_FAILURE" } else { "ENDPOINT" };
        let talk = 60_000 + rng.below(600_000) as i64;
        let timeline = [
            ("customer.start", start, String::new()),
            ("flow.outcome", start + 20_000, r#","flowId":"f-1","flowOutcomeId":"o-1","flowOutcomeValue":"SUCCESS""#.to_string()),
            ("acd.start", start + 25_000, r#","queueId":"q-1""#.to_string()),
            ("acd.end", start + 40_000, r#","queueId":"q-1","acdOutcome":"ANSWERED""#.to_string()),
            ("user.start", start + 40_000, String::new()),
            ("user.end", start + 40_000 + talk, r#","disconnectType":"PEER""#.to_string()),
            ("acw", start + 70_000 + talk, r#","wrapupCode":"w-1""#.to_string()),
            ("customer.end", start + 40_000 + talk, format!(r#","disconnectType":"{disconnect}""#)),
        ];
        for (event, time_ms, extra) in timeline {
            let record = genesys(conversation, event, time_ms, media, &extra);
            if rng.below(100) == 0 {
                events.push(record.clone());
            }
            events.push(record);
        }
    }
    for minute in 0..(DAY_MS / 60_000) {
        let time_ms = DAY_START_MS + minute * 60_000;
        let skills: Vec<String> = (0..4)
            .map(|skill| {
                let level = 70 + (minute + skill) % 30;
                format!(
                    r#"{{"businessUnitId":"4600001","skillId":"{skill}","skillName":"Skill {skill}","serviceLevel":"{level}","serviceLevelGoal":"80","serviceLevelThreshold":"30","contactsOffered":"12","contactsOutOfSLA":"2","agentsAvailable":"5"}}"#
                )
            })
            .collect();
        let nice = format!(r#"{{"skillSummaries":[{}]}}"#, skills.join(","));
        events.push(raw("nice", "nice_reporting_poll", time_ms, nice));
        let state = if minute % 300 < 3 { "DOWN" } else { "UP" };
        let pingdom = format!(
            r#"{{"check_id":4242,"check_name":"CRM login","check_type":"HTTP","previous_state":"UP","current_state":"{state}","state_changed_timestamp":{},"description":"check","first_probe":{{"location":"Frankfurt"}}}}"#,
            time_ms / 1000
        );
        events.push(raw("pingdom", "webhook", time_ms, pingdom));
    }
    events.sort_by_key(|event| event.received_at_ms);
    events
}

/// Normalizes and dedupes every raw event, and returns the number of unique
/// events.
fn normalize_day(normalizer: &Normalizer, day: &[RawEvent]) -> usize {
    let mut dedupe = Dedupe::new(3_600_000);
    let mut unique = 0;
    for (offset, raw) in day.iter().enumerate() {
        if let Ok(events) = normalizer.normalize(raw) {
            for event in events {
                if dedupe.first_sighting(&event.event_id, 0, offset as i64, raw.received_at_ms) {
                    unique += 1;
                }
            }
        }
    }
    unique
}

fn bench_normalize_day(c: &mut Criterion) {
    let day = generate_day();
    let normalizer = Normalizer::new(&NormalizeConfig::default());
    let rejected = day.iter().filter(|raw| normalizer.normalize(raw).is_err()).count();
    assert_eq!(rejected, 0, "the generated day should normalize without a rejection");
    eprintln!(
        "generated day: {} raw events, {} unique normalized events",
        day.len(),
        normalize_day(&normalizer, &day)
    );
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(day.len() as u64));
    group.bench_function("generated_day", |b| b.iter(|| black_box(normalize_day(&normalizer, black_box(&day)))));
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_normalize_day
}
criterion_main!(benches);
