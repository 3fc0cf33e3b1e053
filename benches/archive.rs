//! Throughput of the archive: Avro encoding of masked events alone, and the
//! archive stage writing batches to local files (batch plan, one object per
//! hour and service, fsync on each write).
//!
//! `cargo bench -p blameless --bench archive` measures; `cargo test --bench
//! archive` runs each benchmark once as a smoke test. docs/BENCHMARKS.md has
//! the recorded results.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use blameless::model::{MaskedEvent, Record};
use blameless::stages::archive::{write_container, ArchiveStage, ArchiveStore, BatchLimits};
use blameless::transport::{Decoded, Position, Stage};

/// Events per iteration.
const EVENTS: usize = 10_000;
/// 2025-12-12T14:00:00Z.
const BASE_MS: i64 = 1_765_548_000_000;

/// Builds a masked failed call as the mask stage makes it from a Genesys
/// `customer.end`, with pseudonyms and its usual attributes. The events
/// alternate between two services and fall in two hours.
fn masked_call(index: usize) -> MaskedEvent {
    let attributes: BTreeMap<String, String> = [
        ("genesys_event", "customer.end".to_string()),
        ("media_type", "VOICE".to_string()),
        ("direction", "INBOUND".to_string()),
        ("disconnect_type", "ERROR".to_string()),
        ("provider", "Edge".to_string()),
        ("session_id", format!("da482ecd-cd6b-5e1a-ba67-{index:012}")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    let time_ms = BASE_MS + index as i64 * 700;
    MaskedEvent {
        event_id: format!("9df95214-a22a-54b2-855f-{index:012}"),
        event_type: "call_failed".into(),
        platform_source: "genesys_cloud_cx".into(),
        delivery: "eventbridge".into(),
        event_time_ms: time_ms,
        received_at_ms: time_ms + 600,
        affected_service: if index % 2 == 0 { "voice_inbound" } else { "voice_outbound" }.into(),
        conversation_id: Some(format!("742de705-5d49-54cc-b0fd-{index:012}")),
        touchpoint: Some("sip".into()),
        agent_pseudonym: Some(format!("agent_k1_{:032x}", index % 12)),
        phone_pseudonym: Some(format!("phone_k1_{:032x}", index % 100)),
        customer_pseudonym: Some(format!("customer_k1_{:032x}", index % 100)),
        mask_key_id: "k1".into(),
        failed_contacts: 1,
        total_contacts: 1,
        dependency: None,
        attributes,
        message: None,
        previous_pseudonyms: None,
        dropped_attribute_count: 0,
    }
}

fn decoded(events: &[MaskedEvent]) -> Vec<Decoded> {
    events
        .iter()
        .enumerate()
        .map(|(offset, event)| Decoded {
            position: Position {
                topic: "masked".into(),
                partition: 0,
                offset: offset as i64,
            },
            record: Record::Masked(event.clone()),
            timestamp_ms: None,
            replay: false,
        })
        .collect()
}

fn bench_encoding(c: &mut Criterion) {
    let events: Vec<MaskedEvent> = (0..EVENTS).map(masked_call).collect();
    let mut group = c.benchmark_group("archive_encode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("events", |b| b.iter(|| black_box(write_container(&events).unwrap())));
    group.finish();
}

/// Measures the stage archiving one partition's events into a new folder,
/// in batches of about 1 MiB of encoded events.
fn bench_stage_to_files(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let events: Vec<MaskedEvent> = (0..EVENTS).map(masked_call).collect();
    let limits = BatchLimits {
        max_bytes: 1024 * 1024,
        max_age: Duration::from_secs(3600),
    };
    let mut group = c.benchmark_group("archive_stage");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("local_files", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
                (dir, ArchiveStage::new(hot, limits), decoded(&events))
            },
            |(dir, mut stage, batch)| {
                runtime.block_on(async {
                    stage.process(batch).await.unwrap();
                    stage.finish().await.unwrap();
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
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
    targets = bench_encoding, bench_stage_to_files
}
criterion_main!(benches);
