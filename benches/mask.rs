//! Throughput of `Masker::mask` alone, on normalized events shaped like the
//! pipeline's. One benchmark masks failed calls without free text. The other
//! masks the same calls, each with a long transcript in `message` and a
//! shorter note in an attribute, which carry phone numbers, emails and a card
//! number to scrub.
//!
//! `cargo bench -p blameless --bench mask` measures; `cargo test --bench
//! mask` runs each benchmark once as a smoke test. docs/BENCHMARKS.md has
//! the recorded results.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use blameless::config::Secret;
use blameless::model::NormalizedEvent;
use blameless::stages::mask::Masker;

/// Events per iteration without free text.
const PLAIN_BATCH: usize = 1_000;

/// Events per iteration with transcripts, fewer because each carries about
/// 8 KiB of text.
const TRANSCRIPT_BATCH: usize = 100;

/// Target length of a transcript, in bytes.
const TRANSCRIPT_BYTES: usize = 8 * 1024;

fn masker() -> Masker {
    Masker::new(Secret::new("benchmark-key-0123456789"), "k1")
}

/// Builds a failed inbound call as the normalize stage makes it from a Genesys
/// `customer.end`, with its usual attributes and no message.
fn failed_call(index: usize) -> NormalizedEvent {
    let attributes: BTreeMap<String, String> = [
        ("genesys_event", "customer.end".to_string()),
        ("media_type", "VOICE".to_string()),
        ("direction", "INBOUND".to_string()),
        ("disconnect_type", "ERROR".to_string()),
        ("provider", "Edge".to_string()),
        ("dnis", "+13175550000".to_string()),
        ("session_id", format!("da482ecd-cd6b-5e1a-ba67-{index:012}")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    NormalizedEvent {
        event_id: format!("9df95214-a22a-54b2-855f-{index:012}"),
        event_type: "call_failed".into(),
        platform_source: "genesys_cloud_cx".into(),
        delivery: "eventbridge".into(),
        event_time_ms: 1_765_551_713_383 + index as i64,
        received_at_ms: 1_765_551_714_000 + index as i64,
        affected_service: "voice_inbound".into(),
        conversation_id: Some(format!("742de705-5d49-54cc-b0fd-{index:012}")),
        touchpoint: Some("sip".into()),
        agent_id: Some(format!("b781d507-2b83-57b9-88d1-{:012}", index % 12)),
        phone_number: Some(format!("tel:+131755501{:02}", index % 100)),
        customer_id: Some(format!("f56a0a91-1f94-5ede-8bcd-{:012}", index % 100)),
        failed_contacts: 1,
        total_contacts: 1,
        dependency: None,
        attributes,
        message: None,
    }
}

/// Builds a call transcript of about [`TRANSCRIPT_BYTES`] bytes. Most lines
/// are plain talk. Every 16 lines, three carry a phone number (in one of
/// three formats), one an email address and one a card number that passes
/// the Luhn check.
fn transcript(index: usize) -> String {
    const PLAIN: [&str; 4] = [
        "Agent: Thank you for calling, how can I help you today?",
        "Customer: My order did not arrive and the tracking page shows no update since Monday.",
        "Agent: I am sorry to hear that. Let me look at the shipment and the delivery notes.",
        "Customer: I have been waiting on hold for a long time and the line dropped twice.",
    ];
    let mut text = String::with_capacity(TRANSCRIPT_BYTES + 200);
    let mut line = 0;
    while text.len() < TRANSCRIPT_BYTES {
        let sentence = match line % 16 {
            3 => format!("Customer: You can call me back on (317) 555-{:04}.", index % 10_000),
            7 => format!("Customer: My email is caller.{index}@example.com if that helps."),
            11 => "Customer: The card I paid with is 4111 1111 1111 1111.".to_string(),
            13 => format!("Agent: I have +1 317 555 {:04} on file, is that still right?", (index + 7) % 10_000),
            15 => format!("Agent: The system shows tel:+1317555{:04} as the callback number.", (index + 3) % 10_000),
            other => PLAIN[other % PLAIN.len()].to_string(),
        };
        text.push_str(&sentence);
        text.push('\n');
        line += 1;
    }
    text
}

fn call_with_transcript(index: usize) -> NormalizedEvent {
    let mut event = failed_call(index);
    event.message = Some(transcript(index));
    event.attributes.insert(
        "agent_note".into(),
        format!("Caller asked for a callback at 317-555-{:04}; confirmation sent to caller.{index}@example.com.", index % 10_000),
    );
    event
}

/// Measures masking `events`, one element per event. The copies that
/// `mask` consumes are made outside the measured time.
fn bench_events(c: &mut Criterion, group_name: &str, events: Vec<NormalizedEvent>) {
    let masker = masker();
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("events", |b| {
        b.iter_batched(
            || events.clone(),
            |batch| {
                for event in batch {
                    black_box(masker.mask(event));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn bench_without_free_text(c: &mut Criterion) {
    bench_events(c, "mask_without_free_text", (0..PLAIN_BATCH).map(failed_call).collect());
}

fn bench_with_transcripts(c: &mut Criterion) {
    let events: Vec<NormalizedEvent> = (0..TRANSCRIPT_BATCH).map(call_with_transcript).collect();
    // The input must give the scrubber work: every kind of token appears.
    let masked = masker().mask(events[1].clone()).message.unwrap();
    // Phone numbers and emails become pseudonymized tokens such as
    // `[PHONE:phone_k1_...]`.
    for token in ["[PHONE:", "[EMAIL:", "[CARD]"] {
        assert!(masked.contains(token), "the transcript has no {token} to scrub");
    }
    assert!(!masked.contains("555"), "a phone number survived masking");
    bench_events(c, "mask_with_transcripts", events);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_without_free_text, bench_with_transcripts
}
criterion_main!(benches);
