//! Tests of the archive stage, the store and the snapshots, on local files
//! and in-memory stores.

use object_store::PutMode;

use super::*;
use crate::model::IncidentEvent;
use crate::transport::{Decoded, Position, Stage};

const SERVICE: &str = "voice_inbound";

fn masked(event_id: &str, service: &str, time_ms: i64) -> MaskedEvent {
    let mut event = crate::model::test_masked_event(service, "call_failed", time_ms);
    event.event_id = event_id.into();
    event
}

fn incident(start_ms: i64, end_ms: Option<i64>) -> IncidentEvent {
    IncidentEvent {
        incident_id: "inc-1".into(),
        change: "gated".into(),
        incident_type: "platform_outage".into(),
        severity: "sev1".into(),
        affected_service: SERVICE.into(),
        platform_source: "genesys_cloud_cx".into(),
        signal_type: "call_failed".into(),
        timestamp_start_ms: start_ms,
        timestamp_end_ms: end_ms,
        last_signal_ms: start_ms,
        failed_contacts: 1,
        total_contacts: 1,
        threshold_count: 1,
        window_ms: 300_000,
        gated: true,
        gate_reason: None,
        recurrences: 0,
        type_reason: None,
        dependencies: Vec::new(),
    }
}

/// Opens hot and cold stores in a temporary folder, with one event of
/// `SERVICE` archived at each of `times_ms` and one of another service.
async fn stores(times_ms: &[i64]) -> (tempfile::TempDir, ArchiveStore, ArchiveStore) {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().join("hot").to_str().unwrap()).unwrap();
    let cold = ArchiveStore::open(dir.path().join("cold").to_str().unwrap()).unwrap();
    for (index, time_ms) in times_ms.iter().enumerate() {
        let bytes = write_container(&[masked(&format!("e{index}"), SERVICE, *time_ms)]).unwrap();
        let name = format!("{}/masked-0-{index}-{index}.avro", hour_folder(SERVICE, *time_ms));
        hot.put(&name, bytes, PutMode::Create, false).await.unwrap();
    }
    let other = write_container(&[masked("other", "chat_inbound", times_ms[0])]).unwrap();
    let name = format!("{}/masked-1-0-0.avro", hour_folder("chat_inbound", times_ms[0]));
    hot.put(&name, other, PutMode::Create, false).await.unwrap();
    (dir, hot, cold)
}

/// 2025-12-12T15:01:53.383Z.
const TIME_MS: i64 = 1_765_551_713_383;

#[tokio::test]
async fn snapshot_reads_existing_hours_only() {
    let times = [TIME_MS, TIME_MS + 3_600_000, TIME_MS + 86_400_000, TIME_MS + 10 * 86_400_000];
    let (_dir, hot, cold) = stores(&times).await;
    let manifest = write_snapshot(&hot, &cold, &incident(TIME_MS, Some(TIME_MS + 86_400_000)), 300_000)
        .await
        .unwrap();
    assert_eq!(manifest.event_count, 3);
    assert_eq!(manifest.from_ms, TIME_MS - 300_000);
    assert_eq!(manifest.to_ms, TIME_MS + 86_400_000 + 300_000);
}

#[tokio::test]
async fn snapshot_of_huge_span_saturates() {
    let (_dir, hot, cold) = stores(&[TIME_MS]).await;
    let started = std::time::Instant::now();
    let manifest = write_snapshot(&hot, &cold, &incident(i64::MIN + 1, Some(i64::MAX - 1)), 300_000)
        .await
        .unwrap();
    assert_eq!(manifest.from_ms, i64::MIN);
    assert_eq!(manifest.to_ms, i64::MAX);
    assert_eq!(manifest.event_count, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn snapshot_of_75_years_is_quick() {
    let (_dir, hot, cold) = stores(&[TIME_MS]).await;
    let start_ms = 946_684_800_000;
    let end_ms = start_ms + 75 * 365 * 86_400_000;
    let started = std::time::Instant::now();
    let manifest = write_snapshot(&hot, &cold, &incident(start_ms, Some(end_ms)), 300_000)
        .await
        .unwrap();
    assert_eq!(manifest.event_count, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn hour_folder_is_utc() {
    assert_eq!(
        hour_folder("voice_inbound", 1_765_551_713_383),
        "date=2025-12-12/hour=15/service=voice_inbound"
    );
}

fn decoded(partition: i32, offset: i64, event: MaskedEvent) -> Decoded {
    Decoded {
        position: Position {
            topic: "masked".into(),
            partition,
            offset,
        },
        record: crate::model::Record::Masked(event),
        timestamp_ms: None,
        replay: false,
    }
}

fn large_limits() -> BatchLimits {
    BatchLimits {
        max_bytes: usize::MAX,
        max_age: std::time::Duration::from_secs(3600),
    }
}

/// Returns the event ids of every archived object under the `date=`
/// folders, and the object names.
async fn archived(hot: &ArchiveStore) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = hot
        .list("")
        .await
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with("date="))
        .collect();
    let ids = hot.read_all("").await.unwrap().into_iter().map(|e| e.event_id).collect();
    (ids, names)
}

#[tokio::test]
async fn stage_writes_one_object_per_hour_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    let mut stage = ArchiveStage::new(hot.clone(), large_limits());
    let batch = vec![
        decoded(0, 0, masked("a", SERVICE, TIME_MS)),
        decoded(0, 1, masked("b", "chat_inbound", TIME_MS)),
        decoded(0, 2, masked("c", SERVICE, TIME_MS + 3_600_000)),
        decoded(0, 3, masked("d", SERVICE, TIME_MS + 1)),
    ];
    stage.process(batch).await.unwrap();
    assert_eq!(stage.commit_floor("masked", 0), Some(0), "nothing is durable before the batch is written");
    assert_eq!(archived(&hot).await.1.len(), 0);

    stage.finish().await.unwrap();
    assert_eq!(stage.commit_floor("masked", 0), None);
    let (ids, names) = archived(&hot).await;
    assert_eq!(
        names,
        vec![
            "date=2025-12-12/hour=15/service=chat_inbound/masked-0-00000000000000000001-00000000000000000001.avro",
            "date=2025-12-12/hour=15/service=voice_inbound/masked-0-00000000000000000000-00000000000000000003.avro",
            "date=2025-12-12/hour=16/service=voice_inbound/masked-0-00000000000000000002-00000000000000000002.avro",
        ]
    );
    assert_eq!(ids, vec!["b", "a", "d", "c"]);
    let plans = hot.list(BATCH_PLAN_FOLDER).await.unwrap();
    assert_eq!(plans, vec!["_batches/masked/0/00000000000000000000.json"]);
}

#[tokio::test]
async fn size_limit_writes_batch_early() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    let limits = BatchLimits {
        max_bytes: 1,
        ..large_limits()
    };
    let mut stage = ArchiveStage::new(hot.clone(), limits);
    stage.process(vec![decoded(3, 7, masked("a", SERVICE, TIME_MS))]).await.unwrap();
    assert_eq!(stage.commit_floor("masked", 3), None, "a full batch is written inside process");
    assert_eq!(archived(&hot).await.0, vec!["a"]);
}

#[tokio::test]
async fn age_limit_writes_batch_on_tick() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    let limits = BatchLimits {
        max_age: std::time::Duration::ZERO,
        ..large_limits()
    };
    let mut stage = ArchiveStage::new(hot.clone(), limits);
    stage.process(vec![decoded(0, 0, masked("a", SERVICE, TIME_MS))]).await.unwrap();
    stage.tick(0).await.unwrap();
    assert_eq!(stage.commit_floor("masked", 0), None);
    assert_eq!(archived(&hot).await.0, vec!["a"]);
}

#[tokio::test]
async fn plan_from_before_restart_sets_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    // A run before the restart planned offsets 0..=2 and wrote nothing else.
    let plan = br#"{"topic":"masked","partition":0,"first_offset":0,"last_offset":2}"#.to_vec();
    hot.put("_batches/masked/0/00000000000000000000.json", plan, PutMode::Create, false)
        .await
        .unwrap();

    let mut stage = ArchiveStage::new(hot.clone(), large_limits());
    let batch = (0..5).map(|offset| decoded(0, offset, masked(&format!("e{offset}"), SERVICE, TIME_MS))).collect();
    stage.process(batch).await.unwrap();
    stage.finish().await.unwrap();

    let (ids, names) = archived(&hot).await;
    assert_eq!(ids, vec!["e0", "e1", "e2", "e3", "e4"]);
    assert!(names[0].ends_with("masked-0-00000000000000000000-00000000000000000002.avro"), "{names:?}");
    assert!(names[1].ends_with("masked-0-00000000000000000003-00000000000000000004.avro"), "{names:?}");
}

#[tokio::test]
async fn longer_plan_holds_batch_open() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    let plan = br#"{"topic":"masked","partition":0,"first_offset":0,"last_offset":3}"#.to_vec();
    hot.put("_batches/masked/0/00000000000000000000.json", plan, PutMode::Create, false)
        .await
        .unwrap();
    let limits = BatchLimits {
        max_bytes: 1,
        ..large_limits()
    };
    let mut stage = ArchiveStage::new(hot.clone(), limits);
    stage.process(vec![decoded(0, 0, masked("e0", SERVICE, TIME_MS))]).await.unwrap();
    assert_eq!(stage.commit_floor("masked", 0), Some(0), "the batch waits for offset 3");
    assert!(stage.finish().await.is_err(), "an input that ends inside a planned batch is reported");
    assert!(archived(&hot).await.1.is_empty());

    let batch = (1..=3).map(|offset| decoded(0, offset, masked(&format!("e{offset}"), SERVICE, TIME_MS))).collect();
    stage.process(batch).await.unwrap();
    assert_eq!(stage.commit_floor("masked", 0), None);
    assert_eq!(archived(&hot).await.0, vec!["e0", "e1", "e2", "e3"]);
}

#[tokio::test]
async fn revoked_partition_drops_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    let mut stage = ArchiveStage::new(hot.clone(), large_limits());
    stage
        .process(vec![decoded(0, 0, masked("a", SERVICE, TIME_MS)), decoded(1, 0, masked("b", SERVICE, TIME_MS))])
        .await
        .unwrap();
    stage.partitions_revoked("masked", &[1]);
    assert_eq!(stage.commit_floor("masked", 1), None);
    stage.finish().await.unwrap();
    assert_eq!(archived(&hot).await.0, vec!["a"]);
}

#[tokio::test]
async fn container_uses_name_marker() {
    let events = vec![masked("a", SERVICE, TIME_MS), masked("b", SERVICE, TIME_MS + 5)];
    let marker = sync_marker("x.avro");
    let bytes = write_container_with_marker(&events, marker).unwrap();
    assert_eq!(&bytes[bytes.len() - 16..], &marker, "each block ends with the sync marker");
    assert_eq!(read_container(&bytes).unwrap(), events);
    assert_ne!(sync_marker("y.avro"), marker);
}

#[tokio::test]
async fn unfinished_local_write_is_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let hot = ArchiveStore::open(dir.path().to_str().unwrap()).unwrap();
    let folder = hour_folder(SERVICE, TIME_MS);
    let bytes = write_container(&[masked("a", SERVICE, TIME_MS)]).unwrap();
    hot.put(&format!("{folder}/masked-0-0-0.avro"), bytes.clone(), PutMode::Create, false)
        .await
        .unwrap();
    // LocalFileSystem stages a write as `<name>#<n>` and renames it into
    // place, so a crash mid-write leaves such a file and no object.
    std::fs::write(dir.path().join(&folder).join("masked-0-1-1.avro#1"), &bytes[..bytes.len() / 2]).unwrap();
    let (ids, names) = archived(&hot).await;
    assert_eq!(ids, vec!["a"]);
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn snapshot_reads_back_with_checksum() {
    let (_dir, hot, cold) = stores(&[TIME_MS, TIME_MS + 60_000]).await;
    let incident = incident(TIME_MS, Some(TIME_MS + 60_000));
    let manifest = write_snapshot(&hot, &cold, &incident, 300_000).await.unwrap();
    let url = snapshot_url(&cold, &incident.incident_id);
    assert!(url.ends_with("/incidents/inc-1/"), "{url}");

    let snapshot = read_snapshot(&url).await.unwrap();
    assert_eq!(snapshot.manifest, manifest);
    assert_eq!(snapshot.events.len(), 2);
    assert_eq!(snapshot.manifest.schema_version, SNAPSHOT_SCHEMA_VERSION);
    assert_eq!(snapshot.manifest.first_event_ms, Some(TIME_MS));
    assert_eq!(snapshot.manifest.last_event_ms, Some(TIME_MS + 60_000));
    assert!(snapshot.manifest.complete);
    assert_eq!(snapshot.manifest.storage_class, None, "local folders have no storage class");
}

#[tokio::test]
async fn open_snapshot_completes_on_close() {
    let (_dir, hot, cold) = stores(&[TIME_MS, TIME_MS + 600_000]).await;
    let mut open = incident(TIME_MS, None);
    open.last_signal_ms = TIME_MS;
    let first = write_snapshot(&hot, &cold, &open, 60_000).await.unwrap();
    assert!(!first.complete);
    assert_eq!(first.event_count, 1);

    let closed = incident(TIME_MS, Some(TIME_MS + 600_000));
    let second = write_snapshot(&hot, &cold, &closed, 60_000).await.unwrap();
    assert!(second.complete);
    assert_eq!(second.event_count, 2);
    let url = snapshot_url(&cold, "inc-1");
    assert_eq!(read_snapshot(&url).await.unwrap().manifest, second);
}

#[tokio::test]
async fn complete_snapshot_is_not_rewritten() {
    let (_dir, hot, cold) = stores(&[TIME_MS]).await;
    let closed = incident(TIME_MS, Some(TIME_MS + 1));
    let written = write_snapshot(&hot, &cold, &closed, 60_000).await.unwrap();
    // An event archived late does not change a complete snapshot.
    let late = write_container(&[masked("late", SERVICE, TIME_MS + 2)]).unwrap();
    hot.put(&format!("{}/masked-0-99-99.avro", hour_folder(SERVICE, TIME_MS)), late, PutMode::Create, false)
        .await
        .unwrap();
    let again = write_snapshot(&hot, &cold, &closed, 60_000).await.unwrap();
    assert_eq!(again, written);
    assert_eq!(read_snapshot(&snapshot_url(&cold, "inc-1")).await.unwrap().events.len(), 1);
}

#[tokio::test]
async fn broken_complete_snapshot_is_rewritten() {
    let (dir, hot, cold) = stores(&[TIME_MS]).await;
    let closed = incident(TIME_MS, Some(TIME_MS + 1));
    let written = write_snapshot(&hot, &cold, &closed, 60_000).await.unwrap();
    let folder = dir.path().join("cold/incidents/inc-1");

    // A deleted events object is written again, and reads back whole.
    std::fs::remove_file(folder.join("events.avro")).unwrap();
    let rewritten = write_snapshot(&hot, &cold, &closed, 60_000).await.unwrap();
    assert_eq!(rewritten.event_count, written.event_count);
    let read = read_snapshot(&snapshot_url(&cold, "inc-1")).await.unwrap();
    assert_eq!(read.manifest, rewritten);
    assert_eq!(read.events.len(), 1);

    // A manifest that is not JSON is replaced instead of failing the write.
    std::fs::write(folder.join("manifest.json"), "garbage").unwrap();
    let replaced = write_snapshot(&hot, &cold, &closed, 60_000).await.unwrap();
    assert_eq!(replaced.event_count, written.event_count);
    assert_eq!(read_snapshot(&snapshot_url(&cold, "inc-1")).await.unwrap().manifest, replaced);
}

#[tokio::test]
async fn verify_reports_each_gap() {
    let (dir, hot, cold) = stores(&[TIME_MS]).await;
    let mut good = incident(TIME_MS, Some(TIME_MS + 1));
    good.incident_id = "good".into();
    write_snapshot(&hot, &cold, &good, 0).await.unwrap();
    let mut corrupt = good.clone();
    corrupt.incident_id = "corrupt".into();
    write_snapshot(&hot, &cold, &corrupt, 0).await.unwrap();
    std::fs::write(dir.path().join("cold/incidents/corrupt/events.avro"), b"not avro").unwrap();
    let mut open = good.clone();
    open.incident_id = "open".into();
    open.timestamp_end_ms = None;
    write_snapshot(&hot, &cold, &open, 0).await.unwrap();
    let mut young = good.clone();
    young.incident_id = "young".into();
    young.timestamp_start_ms = TIME_MS + 100 * 86_400_000;
    write_snapshot(&hot, &cold, &young, 0).await.unwrap();
    std::fs::create_dir_all(dir.path().join("cold/incidents/no-manifest")).unwrap();
    std::fs::write(dir.path().join("cold/incidents/no-manifest/events.avro"), b"x").unwrap();

    let now_ms = TIME_MS + 91 * 86_400_000;
    let checks = verify_snapshots(&cold, 90 * 86_400_000, now_ms).await.unwrap();
    let by_id = |id: &str| checks.iter().find(|c| c.incident_id == id).cloned();
    assert_eq!(by_id("good").unwrap().gap, None);
    assert_eq!(by_id("good").unwrap().event_count, Some(1));
    assert!(by_id("corrupt").unwrap().gap.unwrap().contains("SHA-256"));
    assert!(by_id("open").unwrap().gap.unwrap().contains("incomplete"));
    assert!(by_id("no-manifest").unwrap().gap.unwrap().contains("manifest.json is missing"));
    assert_eq!(by_id("young"), None, "an incident younger than the age is not checked");
    assert_eq!(checks.len(), 4);
}
