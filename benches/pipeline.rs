//! Throughput of the record logic on the example input, without a transport
//! or the Avro codec: normalize and mask over every line of
//! `examples/outage.jsonl`, and the window stage's incident detector over the
//! masked events those lines produce.
//!
//! `cargo bench --bench pipeline` measures; `cargo test --bench pipeline`
//! runs each benchmark once as a smoke test. docs/BENCHMARKS.md has the
//! recorded results.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use blameless::config::{Secret, WindowConfig};
use blameless::model::MaskedEvent;
use blameless::sources::normalize;
use blameless::stages::ingest::{split_lines, to_raw_event, Delivered};
use blameless::stages::mask::Masker;
use blameless::stages::window::{Detector, WindowRules};
use blameless::transport::memory::partition_for_key;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/outage.jsonl");

/// Partitions of `masked` in topology/topology.toml.
const MASKED_PARTITIONS: usize = 6;

/// Receive time given to every raw event: 2025-12-12T15:00:00Z, after the
/// example's last event.
const RECEIVED_AT_MS: i64 = 1_765_551_600_000;

fn example_lines() -> Vec<Delivered> {
    let bytes = std::fs::read(EXAMPLE).unwrap_or_else(|e| panic!("failed to read {EXAMPLE}: {e}"));
    split_lines(&bytes, EXAMPLE)
}

fn masker() -> Masker {
    Masker::new(Secret::new("benchmark-key-0123456789"), "k1")
}

/// Runs ingest, normalize and mask on every line and returns the masked
/// events. Lines that normalize rejects (five in the example) produce none.
fn normalize_and_mask(lines: &[Delivered], masker: &Masker) -> Vec<MaskedEvent> {
    let mut masked = Vec::with_capacity(lines.len() + lines.len() / 10);
    for line in lines {
        let (_key, raw) = to_raw_event(line, RECEIVED_AT_MS);
        if let Ok(events) = normalize(&raw) {
            masked.extend(events.into_iter().map(|event| masker.mask(event)));
        }
    }
    masked
}

/// Pairs each masked event with the partition and offset it gets on `masked`,
/// which is keyed by affected service.
fn positioned(events: Vec<MaskedEvent>) -> Vec<(MaskedEvent, i32, i64)> {
    let mut next_offsets = [0_i64; MASKED_PARTITIONS];
    events
        .into_iter()
        .map(|event| {
            let partition = partition_for_key(&event.affected_service, MASKED_PARTITIONS);
            let offset = next_offsets[partition];
            next_offsets[partition] += 1;
            (event, partition as i32, offset)
        })
        .collect()
}

fn bench_normalize_mask(c: &mut Criterion) {
    let lines = example_lines();
    let masker = masker();
    let mut group = c.benchmark_group("normalize_mask");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("example_lines", |b| {
        b.iter(|| black_box(normalize_and_mask(black_box(&lines), &masker)))
    });
    group.finish();
}

fn bench_window_detector(c: &mut Criterion) {
    let events = positioned(normalize_and_mask(&example_lines(), &masker()));
    let rules = WindowRules::from(&WindowConfig::default());
    let mut group = c.benchmark_group("window_detector");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("example_masked_events", |b| {
        b.iter_batched(
            || Detector::new(rules.clone()),
            |mut detector| {
                let mut changes = 0;
                for (event, partition, offset) in &events {
                    changes += detector.observe(event, *partition, *offset).len();
                }
                changes += detector.close_all().len();
                black_box(changes)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_normalize_mask, bench_window_detector
}
criterion_main!(benches);
