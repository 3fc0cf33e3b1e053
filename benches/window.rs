//! Window-stage throughput and state size with 10,000 affected services.
//!
//! The generated stream covers 6 minutes of event time. Each of 10,000
//! services completes one call about every 30 s (12 `call_completed` events
//! each). 10 of them also fail 60 calls within one minute, which opens an
//! incident (the default threshold is 50 `call_failed` within 5 minutes),
//! and 10 others fail 20 calls, which opens nothing. Events are in event-time
//! order. Each gets the partition of its service on a 6-partition `masked`
//! topic and the next offset of that partition.
//!
//! - **window_10k/detector**: the stream through `Detector::observe` on a new
//!   detector with the default rules, then `close_all`.
//! - **window_10k/stage**: the stream through `WindowStage::process` in
//!   batches of 500, with `commit_floor` asked for each partition of the
//!   batch after it, as `run_stage` does, then `finish`.
//!
//! Before the benchmarks run, the binary feeds the stream to one detector and
//! prints the bytes its state keeps allocated, counted by a global allocator
//! that wraps the system allocator, and the growth of VmRSS.
//!
//! `cargo bench --bench window` measures; docs/BENCHMARKS.md has the results.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};

use blameless::config::WindowConfig;
use blameless::model::{MaskedEvent, Record};
use blameless::stages::window::{Detector, WindowRules, WindowStage};
use blameless::transport::{Decoded, Position, Stage};

/// Bytes currently allocated through the global allocator.
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes that are allocated at any time.
struct CountingAllocator;

// SAFETY: every call is passed to `System` unchanged, and the only other
// effect is an update of the counter.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Start of the generated stream: 2025-12-12T00:00:00Z.
const START_MS: i64 = 1_765_497_600_000;
const SPAN_MS: i64 = 360_000;
const SERVICES: u64 = 10_000;
const CALL_INTERVAL_MS: i64 = 30_000;
const BREACHING_SERVICES: u64 = 10;
const BREACH_FAILURES: i64 = 60;
const BELOW_THRESHOLD_SERVICES: u64 = 10;
const BELOW_THRESHOLD_FAILURES: i64 = 20;
const PARTITIONS: u64 = 6;
const BATCH: usize = 500;

/// A small linear congruential generator, so the stream is the same on every
/// run.
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

fn service_name(index: u64) -> String {
    format!("service-{index:05}")
}

fn masked(service: &str, event_type: &str, time_ms: i64, sequence: usize) -> MaskedEvent {
    let failed = event_type == "call_failed";
    MaskedEvent {
        event_id: format!("{service}-{sequence}"),
        event_type: event_type.into(),
        platform_source: "genesys_cloud_cx".into(),
        delivery: "eventbridge".into(),
        event_time_ms: time_ms,
        received_at_ms: time_ms + 150,
        affected_service: service.into(),
        conversation_id: Some(format!("conversation-{sequence:08x}")),
        touchpoint: Some("sip".into()),
        agent_pseudonym: Some(format!("agent-{:016x}", sequence % 250)),
        phone_pseudonym: Some(format!("phone-{sequence:016x}")),
        customer_pseudonym: None,
        mask_key_id: "k1".into(),
        failed_contacts: i64::from(failed),
        total_contacts: 1,
        dependency: None,
        attributes: BTreeMap::new(),
        message: None,
        previous_pseudonyms: None,
        dropped_attribute_count: 0,
    }
}

/// One event of the stream with its place on the `masked` topic.
struct Placed {
    event: MaskedEvent,
    partition: i32,
    offset: i64,
}

fn generate_stream() -> Vec<Placed> {
    let mut rng = Lcg(7);
    let mut timed: Vec<(i64, u64, &str)> = Vec::new();
    for service in 0..SERVICES {
        let phase = rng.below(CALL_INTERVAL_MS as u64) as i64;
        for call in 0..(SPAN_MS / CALL_INTERVAL_MS) {
            timed.push((START_MS + phase + call * CALL_INTERVAL_MS, service, "call_completed"));
        }
    }
    // Services spread over the index range, each failing within one minute.
    let failing = (0..BREACHING_SERVICES)
        .map(|i| (i * 997, BREACH_FAILURES))
        .chain((0..BELOW_THRESHOLD_SERVICES).map(|i| (i * 997 + 500, BELOW_THRESHOLD_FAILURES)));
    for (service, failures) in failing {
        let from = START_MS + 60_000 + rng.below(120_000) as i64;
        for _ in 0..failures {
            timed.push((from + rng.below(60_000) as i64, service, "call_failed"));
        }
    }
    timed.sort_by_key(|(time_ms, service, _)| (*time_ms, *service));

    let mut next_offsets = [0i64; PARTITIONS as usize];
    timed
        .into_iter()
        .enumerate()
        .map(|(sequence, (time_ms, service, event_type))| {
            let partition = (service % PARTITIONS) as usize;
            let offset = next_offsets[partition];
            next_offsets[partition] += 1;
            Placed {
                event: masked(&service_name(service), event_type, time_ms, sequence),
                partition: partition as i32,
                offset,
            }
        })
        .collect()
}

fn rules() -> WindowRules {
    WindowRules::from(&WindowConfig::default())
}

/// Feeds the stream to a new detector; returns it with the number of
/// incidents opened.
fn detect(stream: &[Placed]) -> (Detector, usize) {
    let mut detector = Detector::new(rules());
    let mut opened = 0;
    for placed in stream {
        let changes = detector.observe(&placed.event, placed.partition, placed.offset);
        opened += changes.iter().filter(|c| c.change == "opened").count();
    }
    (detector, opened)
}

fn decoded_batches(stream: &[Placed]) -> Vec<Vec<Decoded>> {
    stream
        .chunks(BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|placed| Decoded {
                    position: Position {
                        topic: "masked".into(),
                        partition: placed.partition,
                        offset: placed.offset,
                    },
                    record: Record::Masked(placed.event.clone()),
                    timestamp_ms: Some(placed.event.received_at_ms),
                    replay: false,
                })
                .collect()
        })
        .collect()
}

/// Runs the batches through a new window stage; returns the number of
/// incident changes it emitted.
fn run_stage_batches(batches: Vec<Vec<Decoded>>) -> usize {
    futures::executor::block_on(async {
        let mut stage = WindowStage::new(rules());
        let mut emitted = 0;
        for batch in batches {
            let mut partitions: Vec<i32> = batch.iter().map(|d| d.position.partition).collect();
            partitions.sort_unstable();
            partitions.dedup();
            let outcomes = stage.process(batch).await.expect("the window stage does not fail");
            emitted += outcomes.iter().map(|o| o.as_ref().map_or(0, Vec::len)).sum::<usize>();
            for partition in partitions {
                black_box(stage.commit_floor("masked", partition));
            }
        }
        emitted + stage.finish().await.expect("the window stage does not fail").len()
    })
}

/// Reads VmRSS from /proc/self/status, in kB; `None` off Linux.
fn resident_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Prints the bytes the detector's state keeps allocated after the whole
/// stream, and the growth of the resident set while it was built.
fn report_state_size(stream: &[Placed]) {
    let rss_before = resident_kb();
    let bytes_before = ALLOCATED.load(Ordering::Relaxed);
    let (detector, opened) = detect(stream);
    let bytes_after = ALLOCATED.load(Ordering::Relaxed);
    let rss_after = resident_kb();
    assert_eq!(opened as u64, BREACHING_SERVICES, "each breaching service should open one incident");

    let state_bytes = bytes_after.saturating_sub(bytes_before);
    eprintln!(
        "window state: {} services, {} events, {} bytes allocated ({:.1} MiB, {} bytes per service), VmRSS growth {} kB",
        SERVICES,
        stream.len(),
        state_bytes,
        state_bytes as f64 / 1_048_576.0,
        state_bytes as u64 / SERVICES,
        match (rss_before, rss_after) {
            (Some(before), Some(after)) => after.saturating_sub(before).to_string(),
            _ => "unknown".to_string(),
        },
    );
    drop(detector);
}

fn bench_window(c: &mut Criterion) {
    let stream = generate_stream();
    report_state_size(&stream);

    let mut group = c.benchmark_group("window_10k");
    // One iteration takes seconds, so each sample is one iteration.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(stream.len() as u64));
    group.bench_function("detector", |b| {
        b.iter(|| {
            let (mut detector, opened) = detect(black_box(&stream));
            black_box((opened, detector.close_all()))
        })
    });
    group.bench_function("stage", |b| {
        b.iter_batched(|| decoded_batches(&stream), |batches| black_box(run_stage_batches(batches)), BatchSize::PerIteration)
    });
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
    targets = bench_window
}
criterion_main!(benches);
