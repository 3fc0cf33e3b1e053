//! The archive against local files and against a real S3 API: moto's server
//! on 127.0.0.1, which scripts/test.sh starts and names in
//! BLAMELESS_TEST_S3_ENDPOINT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

use blameless::app::run_embedded;
use blameless::codec::Codec;
use blameless::config::{Config, Secret};
use blameless::metrics::Metrics;
use blameless::model::{MaskedEvent, Record};
use blameless::stages::archive::{
    read_snapshot, verify_snapshots, write_snapshot, ArchiveStage, ArchiveStore, BatchLimits, StoreRetry,
};
use blameless::stages::ticket::TicketPayload;
use blameless::transport::memory::{MemoryLog, MemorySink};
use blameless::transport::{run_stage, RunUntil, StageRuntime, TopicNames};

const GROUP: &str = "blameless-archive";
const TOPIC: &str = "masked";
/// 2025-12-12T14:00:00Z.
const BASE_MS: i64 = 1_765_548_000_000;

/// Points object_store's S3 client at moto with dummy credentials, creates
/// `bucket` and returns the endpoint.
async fn moto_bucket(bucket: &str) -> String {
    let endpoint = std::env::var("BLAMELESS_TEST_S3_ENDPOINT")
        .expect("BLAMELESS_TEST_S3_ENDPOINT is not set: run the S3 tests through scripts/test.sh, which starts moto");
    // Every test sets the same values, so tests running at once agree.
    std::env::set_var("AWS_ENDPOINT", &endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", "blameless-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "blameless-test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("moto answers on its endpoint");
    assert!(response.status().is_success(), "creating bucket {bucket} failed: {}", response.status());
    endpoint
}

/// Returns `s3://<bucket>/<name>-<random>`: moto keeps objects until it
/// stops, so each test run writes under a new prefix.
fn fresh_url(bucket: &str, name: &str) -> String {
    format!("s3://{bucket}/{name}-{}", uuid::Uuid::new_v4().simple())
}

fn event(index: usize) -> MaskedEvent {
    let service = if index % 2 == 0 { "chat_inbound" } else { "voice_inbound" };
    // Each service's events alternate between three hours, so every batch
    // writes three objects and a crash can fall between them.
    let time_ms = BASE_MS + (index as i64 / 2 % 3) * 3_600_000 + index as i64 * 1_000;
    MaskedEvent {
        event_id: format!("event-{index:04}"),
        event_type: "call_failed".into(),
        platform_source: "genesys_cloud_cx".into(),
        delivery: "eventbridge".into(),
        event_time_ms: time_ms,
        received_at_ms: time_ms,
        affected_service: service.into(),
        conversation_id: Some(format!("conversation-{index}")),
        touchpoint: None,
        agent_pseudonym: None,
        phone_pseudonym: None,
        customer_pseudonym: None,
        mask_key_id: "k1".into(),
        failed_contacts: 1,
        total_contacts: 1,
        dependency: None,
        attributes: BTreeMap::new(),
        message: None,
        previous_pseudonyms: None,
        dropped_attribute_count: 0,
    }
}

/// A store that passes requests on, and can fail them: every put once
/// `crash_after_objects` Avro objects are written, as a process that dies
/// would, and every put with a retryable error while `down` is set.
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    crash_after_objects: Option<usize>,
    objects: AtomicUsize,
    down: AtomicBool,
}

impl FaultyStore {
    fn new(inner: Arc<dyn ObjectStore>, crash_after_objects: Option<usize>) -> FaultyStore {
        FaultyStore {
            inner,
            crash_after_objects,
            objects: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &StorePath, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        if self.down.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: "HTTP 503 Service Unavailable (test outage)".into(),
            });
        }
        if location.as_ref().ends_with(".avro") {
            let written = self.objects.load(Ordering::SeqCst);
            if self.crash_after_objects.is_some_and(|limit| written >= limit) {
                return Err(object_store::Error::NotImplemented {
                    operation: "put after the simulated crash".into(),
                    implementer: "FaultyStore".into(),
                });
            }
            self.objects.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &StorePath, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &StorePath, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&StorePath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &StorePath, to: &StorePath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Appends `count` masked events to a two-partition `masked` topic.
async fn masked_log(count: usize) -> (Arc<MemoryLog>, Codec) {
    let log = MemoryLog::new();
    log.create_topic(TOPIC, 2);
    let codec = Codec::single_object().unwrap();
    for index in 0..count {
        let event = event(index);
        let payload = codec.encode(TOPIC, &Record::Masked(event.clone())).await.unwrap();
        log.append(TOPIC, &event.affected_service, payload).unwrap();
    }
    (log, codec)
}

fn runtime(codec: &Codec, batch_max_records: usize) -> StageRuntime {
    StageRuntime {
        codec: codec.clone(),
        topics: TopicNames::default(),
        metrics: Metrics::new().stage("archive"),
        batch_max_records,
        batch_max_wait: Duration::from_millis(10),
        tick: Duration::from_secs(3600),
    }
}

/// Runs the archive stage over the log until it is drained or fails.
async fn run_archive(log: &Arc<MemoryLog>, codec: &Codec, hot: ArchiveStore, limits: BatchLimits, batch_max_records: usize) -> bool {
    let mut stage = ArchiveStage::new(hot, limits);
    let mut source = log.consumer(GROUP, TOPIC);
    let sink = MemorySink { log: Arc::clone(log) };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let runtime = runtime(codec, batch_max_records);
    run_stage(&mut stage, &mut source, &sink, &runtime, RunUntil::Drained, shutdown)
        .await
        .is_ok()
}

/// Lists every object of the store, and counts the archived events by id.
async fn archived_events(store: &Arc<dyn ObjectStore>) -> (Vec<String>, BTreeMap<String, usize>) {
    use futures::TryStreamExt;
    let metas: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
    let mut names: Vec<String> = metas.iter().map(|meta| meta.location.to_string()).collect();
    names.sort();
    let mut counts = BTreeMap::new();
    for name in names.iter().filter(|name| name.ends_with(".avro")) {
        let bytes = object_store::ObjectStoreExt::get(store.as_ref(), &StorePath::from(name.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        for event in blameless::stages::archive::read_container(&bytes).unwrap() {
            *counts.entry(event.event_id).or_insert(0) += 1;
        }
    }
    (names, counts)
}

/// Crashes the archive stage after four objects of a run, inside its
/// second batch, restarts it with
/// other batch limits and poll sizes, and checks that every event is in
/// exactly one object.
async fn crash_and_restart(store: Arc<dyn ObjectStore>, url: &str) {
    const EVENTS: usize = 120;
    let (log, codec) = masked_log(EVENTS).await;
    let small = BatchLimits {
        max_bytes: 2_500,
        max_age: Duration::from_secs(3600),
    };
    let faulty = Arc::new(FaultyStore::new(Arc::clone(&store), Some(4)));
    let crashed = ArchiveStore::from_store(faulty.clone(), url);
    assert!(!run_archive(&log, &codec, crashed, small, 25).await, "the first run stops at the simulated crash");
    assert_eq!(faulty.objects.load(Ordering::SeqCst), 4);
    let committed: i64 = (0..2).map(|partition| log.committed(GROUP, TOPIC, partition)).sum();
    assert!(committed < EVENTS as i64, "the crashed batch is not committed: {committed} of {EVENTS}");

    let large = BatchLimits {
        max_bytes: 1_000_000,
        max_age: Duration::from_secs(3600),
    };
    let restarted = ArchiveStore::from_store(Arc::clone(&store), url);
    assert!(run_archive(&log, &codec, restarted, large, 7).await, "the restarted run drains the input");

    let (names, counts) = archived_events(&store).await;
    assert_eq!(counts.len(), EVENTS, "every event is archived: {names:#?}");
    let repeated: Vec<(&String, &usize)> = counts.iter().filter(|(_, count)| **count != 1).collect();
    assert!(repeated.is_empty(), "events in more than one object: {repeated:?}");
    for name in &names {
        assert!(name.contains("date=") || name.contains("_batches/"), "unexpected object {name}");
    }
}

#[tokio::test]
async fn crash_restart_archives_once_files() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    crash_and_restart(store, &format!("file://{}", dir.path().display())).await;
}

#[tokio::test]
#[ignore = "needs moto's S3 server: run scripts/test.sh"]
async fn crash_restart_archives_once_s3() {
    moto_bucket("crash-test").await;
    let url = fresh_url("crash-test", "hot");
    let (store, prefix, _) = blameless::stages::archive::open_location(&url).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::prefix::PrefixStore::new(store, prefix));
    crash_and_restart(store, &url).await;
}

#[tokio::test]
async fn store_outage_pauses_then_resumes() {
    let metrics = Metrics::new();
    let health = metrics.store_health("hot");
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = Arc::new(FaultyStore::new(Arc::clone(&memory), None));
    faulty.down.store(true, Ordering::SeqCst);
    let retry = StoreRetry {
        max_attempts: None,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let hot = ArchiveStore::from_store(faulty.clone(), "memory://hot")
        .with_retry(retry)
        .with_health(health.clone());
    let (log, codec) = masked_log(10).await;
    let limits = BatchLimits {
        max_bytes: 1,
        max_age: Duration::from_secs(3600),
    };
    let finished = AtomicBool::new(false);
    let writer = async {
        let drained = run_archive(&log, &codec, hot, limits, 100).await;
        finished.store(true, Ordering::SeqCst);
        drained
    };
    let outage = async {
        // Waits, boundedly, until the stage has retried a few times.
        for _ in 0..1_000 {
            if health.retries.get() >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(health.retries.get() >= 5, "retries: {}", health.retries.get());
        assert_eq!(health.paused.get(), 1, "the outage shows in the gauge");
        assert!(!finished.load(Ordering::SeqCst), "the stage waits instead of failing");
        let committed = log.committed(GROUP, TOPIC, 0) + log.committed(GROUP, TOPIC, 1);
        assert_eq!(committed, 0, "nothing is committed during the outage");
        faulty.down.store(false, Ordering::SeqCst);
    };
    let (drained, ()) = tokio::join!(writer, outage);
    assert!(drained, "the stage resumes and drains its input");
    assert_eq!(health.paused.get(), 0);
    let (_, counts) = archived_events(&memory).await;
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|count| *count == 1));
}

fn example() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/outage.jsonl"))
}

fn embedded_config(hot: &str, cold: &str, outbox: &Path) -> Config {
    let mut config = Config::default();
    config.mask.key = Secret::new("archive-test-key-0123456789");
    config.archive.url = hot.to_string();
    config.archive.cold_url = cold.to_string();
    config.ticket.outbox_dir = outbox.to_path_buf();
    config
}

fn voice_ticket(outbox: &Path) -> TicketPayload {
    for entry in std::fs::read_dir(outbox).unwrap() {
        let ticket: TicketPayload = serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        if ticket.affected_service == "voice_inbound" {
            return ticket;
        }
    }
    panic!("no voice_inbound ticket in {}", outbox.display());
}

/// Runs the example through the whole pipeline, then reads the voice
/// incident's snapshot back through the ticket's data_snapshot_url.
async fn ticketed_snapshot_reads_back(config: &Config, outbox: &Path) {
    run_embedded(config, &example()).await.unwrap();
    let ticket = voice_ticket(outbox);
    let cold = config.archive.cold_url.trim_start_matches("file://");
    assert!(ticket.data_snapshot_url.contains(cold), "{}", ticket.data_snapshot_url);
    let folder = format!("/incidents/{}/", ticket.incident_id);
    assert!(ticket.data_snapshot_url.ends_with(&folder), "{}", ticket.data_snapshot_url);

    let snapshot = read_snapshot(&ticket.data_snapshot_url).await.unwrap();
    assert_eq!(snapshot.manifest.incident_id, ticket.incident_id);
    assert!(snapshot.manifest.complete, "the incident closed in the example");
    let failed = snapshot.events.iter().filter(|e| e.event_type == "call_failed").count();
    assert_eq!(failed, 440);
    assert!(snapshot.events.iter().all(|e| e.affected_service == "voice_inbound"));
    assert!(snapshot.events.iter().all(|e| e.event_time_ms >= snapshot.manifest.from_ms && e.event_time_ms <= snapshot.manifest.to_ms));
}

#[tokio::test]
async fn ticketed_snapshot_reads_back_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let hot = dir.path().join("hot").display().to_string();
    let cold = dir.path().join("cold").display().to_string();
    let outbox = dir.path().join("tickets");
    ticketed_snapshot_reads_back(&embedded_config(&hot, &cold, &outbox), &outbox).await;
}

#[tokio::test]
#[ignore = "needs moto's S3 server: run scripts/test.sh"]
async fn ticketed_snapshot_reads_back_from_s3() {
    moto_bucket("tickets-test").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("tickets");
    let hot = fresh_url("tickets-test", "hot");
    let cold = fresh_url("tickets-test", "cold");
    let mut config = embedded_config(&hot, &cold, &outbox);
    // Glacier Instant Retrieval reads back at once, unlike GLACIER.
    config.archive.cold_storage_class = "GLACIER_IR".into();
    ticketed_snapshot_reads_back(&config, &outbox).await;
}

#[tokio::test]
#[ignore = "needs moto's S3 server: run scripts/test.sh"]
async fn glacier_snapshot_needs_restore_to_verify() {
    moto_bucket("glacier-test").await;
    let cold_url = fresh_url("glacier-test", "cold");
    let hot = ArchiveStore::open(&fresh_url("glacier-test", "hot")).unwrap();
    let cold = ArchiveStore::open(&cold_url).unwrap().with_storage_class("GLACIER");
    let (log, codec) = masked_log(30).await;
    let limits = BatchLimits {
        max_bytes: 1_000_000,
        max_age: Duration::from_secs(3600),
    };
    assert!(run_archive(&log, &codec, hot.clone(), limits, 100).await);

    let incident = blameless::model::IncidentEvent {
        incident_id: "glacier-incident".into(),
        change: "closed".into(),
        incident_type: "platform_outage".into(),
        severity: "sev1".into(),
        affected_service: "voice_inbound".into(),
        platform_source: "genesys_cloud_cx".into(),
        signal_type: "call_failed".into(),
        timestamp_start_ms: BASE_MS,
        timestamp_end_ms: Some(BASE_MS + 3 * 3_600_000),
        last_signal_ms: BASE_MS + 3 * 3_600_000,
        failed_contacts: 15,
        total_contacts: 15,
        threshold_count: 10,
        window_ms: 300_000,
        gated: true,
        gate_reason: None,
        recurrences: 0,
        type_reason: None,
        dependencies: Vec::new(),
    };
    let manifest = write_snapshot(&hot, &cold, &incident, 0).await.unwrap();
    assert_eq!(manifest.event_count, 15, "the voice_inbound half of the events");
    assert_eq!(manifest.storage_class.as_deref(), Some("GLACIER"));

    // S3 refuses to read an object in GLACIER until it is restored, which
    // shows that the storage class reached the store.
    let url = format!("{cold_url}/incidents/glacier-incident/");
    let error = read_snapshot(&url).await.unwrap_err().to_string();
    assert!(error.contains("InvalidObjectState"), "{error}");
    let now_ms = BASE_MS + 91 * 86_400_000;
    let checks = verify_snapshots(&cold, 90 * 86_400_000, now_ms).await.unwrap();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].gap.as_deref().unwrap().contains("restore it"), "{:?}", checks[0]);
}
