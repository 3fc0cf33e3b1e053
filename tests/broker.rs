//! The stages as separate `blameless stage` processes on a real Apache Kafka
//! broker. `scripts/test.sh` starts the broker and sets
//! BLAMELESS_TEST_BROKERS; these tests are ignored by a plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blameless::app;
use blameless::codec::Codec;
use blameless::config::KafkaConfig;
use blameless::metrics::Metrics;
use blameless::model::{Record, RecordKind};
use blameless::publish::Publisher;
use blameless::stages::ingest::{read_input, Delivered};
use blameless::stages::ticket::TicketPayload;
use blameless::topology::{self, Topology};
use blameless::transport::kafka::{apply_topology, KafkaSink};
use blameless::transport::{decode_record, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

mod common;

const MASK_KEY: &str = "broker-test-key-0123456789";

fn brokers() -> String {
    std::env::var("BLAMELESS_TEST_BROKERS")
        .expect("BLAMELESS_TEST_BROKERS is not set: run the broker tests through scripts/test.sh, which starts Kafka")
}

fn example() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/outage.jsonl"))
}

/// Topics and consumer groups unique to one test, and its output folder.
struct TestCluster {
    prefix: String,
    kafka: KafkaConfig,
    out: tempfile::TempDir,
    codec: Codec,
}

impl TestCluster {
    async fn new(name: &str) -> TestCluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("{name}-{nanos}.");
        let kafka = KafkaConfig {
            brokers: brokers(),
            topic_prefix: prefix.clone(),
            group_prefix: format!("{prefix}blameless"),
            ..KafkaConfig::default()
        };
        apply_topology(&kafka, &Topology::load_default(), &prefix).await.unwrap();
        TestCluster {
            prefix,
            kafka,
            out: tempfile::tempdir().unwrap(),
            codec: Codec::single_object().unwrap(),
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn log_path(&self, stage: &str, run: usize) -> PathBuf {
        self.out.path().join(format!("{stage}-{run}.log"))
    }

    /// Starts `blameless stage NAME` with its log in the output folder.
    fn start_stage(&self, stage: &str, run: usize, metrics_address: &str) -> StageProcess {
        let log = std::fs::File::create(self.log_path(stage, run)).unwrap();
        let out = self.out.path();
        Command::new(env!("CARGO_BIN_EXE_blameless"))
            .args(["stage", stage])
            .env("BLAMELESS__KAFKA__BROKERS", &self.kafka.brokers)
            .env("BLAMELESS__KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("BLAMELESS__KAFKA__GROUP_PREFIX", &self.kafka.group_prefix)
            .env("BLAMELESS__MASK__KEY", MASK_KEY)
            .env("BLAMELESS__ARCHIVE__URL", out.join("hot"))
            .env("BLAMELESS__ARCHIVE__COLD_URL", out.join("cold"))
            .env("BLAMELESS__TICKET__OUTBOX_DIR", out.join("tickets"))
            .env("BLAMELESS__METRICS__ADDRESS", metrics_address)
            .env("BLAMELESS__STAGE__BATCH_MAX_WAIT_MS", "100")
            // The archive writes every polled batch at once, so the ticket
            // stage's snapshots find the events the test just sent.
            .env("BLAMELESS__ARCHIVE__BATCH_MAX_BYTES", "1")
            .env("BLAMELESS_LOG", "debug,rdkafka=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(StageProcess)
            .unwrap()
    }

    /// Writes payloads to raw-events in time-ordered chunks, as live traffic
    /// arrives.
    async fn ingest_paced(&self, delivered: &[Delivered], chunk: usize, pause: Duration) {
        let sink = Arc::new(KafkaSink::new(&self.kafka).unwrap());
        let topics = TopicNames {
            prefix: self.prefix.clone(),
        };
        let publisher = Publisher::new(sink, self.codec.clone(), topics, Metrics::new().stage("ingest"), 900_000);
        for part in delivered.chunks(chunk) {
            publisher.publish(part).await.unwrap();
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads and decodes every record of a topic.
    async fn read_topic(&self, name: &str, kind: RecordKind) -> Vec<(i32, i64, Record)> {
        let topic = self.topic(name);
        let consumer: BaseConsumer = blameless::transport::kafka::client_config(&self.kafka)
            .set("group.id", format!("{}reader", self.prefix))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut list = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for partition in 0..partitions {
            list.add_partition_offset(&topic, partition, Offset::Beginning).unwrap();
            let (_, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)).unwrap();
            ends.insert(partition, high);
        }
        consumer.assign(&list).unwrap();
        let mut seen: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.iter().any(|(p, next)| *next < ends[p]) {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = message.unwrap();
            let bytes = message.payload().unwrap_or_default().to_vec();
            let (partition, offset) = (message.partition(), message.offset());
            seen.insert(partition, offset + 1);
            records.push((partition, offset, bytes));
        }
        let mut decoded = Vec::with_capacity(records.len());
        for (partition, offset, bytes) in records {
            decoded.push((partition, offset, decode_record(&self.codec, kind, &bytes).await.unwrap()));
        }
        decoded
    }
}

/// Waits until `check` holds, polling every 500 ms, or fails after `limit`.
async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Returns a loopback address with a port that was free a moment ago.
fn free_loopback_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A running `blameless stage` process, killed when dropped, so a failing
/// test leaves no stage behind.
struct StageProcess(Child);

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a stage with SIGTERM, so it stops between batches, and kills it
/// after 15 seconds.
fn stop(mut stage: StageProcess) {
    let child = &mut stage.0;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn voice_ticket(out: &Path) -> Option<TicketPayload> {
    let dir = out.join("tickets");
    std::fs::read_dir(&dir).ok()?.find_map(|entry| {
        let path = entry.ok()?.path();
        let ticket: TicketPayload = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (ticket.affected_service == "voice_inbound").then_some(ticket)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn five_stages_ticket_the_outage_on_kafka() {
    let cluster = TestCluster::new("e2e").await;
    let stages = ["normalize", "mask", "archive", "window", "ticket"];
    let metrics_address = free_loopback_address();
    let metrics_address = metrics_address.as_str();
    let children: Vec<StageProcess> = stages
        .iter()
        .map(|stage| cluster.start_stage(stage, 0, if *stage == "normalize" { metrics_address } else { "" }))
        .collect();

    // Paced like live traffic. NOTE: the same file written all at once while
    // the stages start can still split the voice incident on Kafka.
    let delivered = read_input(&example()).unwrap();
    cluster.ingest_paced(&delivered, 40, Duration::from_millis(25)).await;

    let out = cluster.out.path().to_path_buf();
    wait_until("the voice ticket carries its end", Duration::from_secs(180), || {
        voice_ticket(&out).is_some_and(|t| t.timestamp_end.is_some())
    })
    .await;
    // Let the other stages finish what they have.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let metrics = reqwest::get(format!("http://{metrics_address}/metrics")).await.unwrap().text().await.unwrap();
    for stage in children {
        stop(stage);
    }

    // The ticket payload, field by field.
    let ticket = voice_ticket(&out).unwrap();
    assert_eq!(ticket.incident_type, "platform_outage");
    assert_eq!(ticket.affected_service, "voice_inbound");
    assert_eq!(ticket.platform_source, "genesys_cloud_cx");
    assert_eq!(ticket.severity, "sev1", "{ticket:#?}");
    assert!(ticket.timestamp_start.starts_with("2025-12-12T14:20:"), "{}", ticket.timestamp_start);
    assert!(ticket.timestamp_end.as_deref().unwrap().starts_with("2025-12-12T14:33:"), "{:?}", ticket.timestamp_end);
    assert_eq!(ticket.failed_contacts, 440, "{ticket:#?}");
    assert!(ticket.gate_reason.as_deref().unwrap().contains("of contacts failed"));
    let snapshot = ticket.data_snapshot_url.strip_prefix("file://").unwrap();
    let events = blameless::stages::archive::read_container(&std::fs::read(Path::new(snapshot).join("events.avro")).unwrap()).unwrap();
    assert_eq!(events.iter().filter(|e| e.event_type == "call_failed").count(), 440);

    // The ledger on the tickets topic.
    let ledger = cluster.read_topic(topology::TICKETS, RecordKind::Ticket).await;
    let voice: Vec<_> = ledger
        .iter()
        .filter_map(|(_, _, r)| match r {
            Record::Ticket(t) if t.incident_id == ticket.incident_id => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(voice.iter().filter(|t| t.status == "created").count(), 1);
    assert!(voice.iter().all(|t| t.data_snapshot_url == ticket.data_snapshot_url));

    // NICE reached the end too.
    let nice_tickets = std::fs::read_dir(out.join("tickets"))
        .unwrap()
        .filter_map(|e| serde_json::from_slice::<TicketPayload>(&std::fs::read(e.unwrap().path()).unwrap()).ok())
        .filter(|t| t.platform_source == "nice_cxone")
        .count();
    assert_eq!(nice_tickets, 1);

    // The same incidents, with the same ids, as the embedded run.
    let embedded_out = tempfile::tempdir().unwrap();
    let mut config = blameless::config::Config::default();
    config.mask.key = blameless::config::Secret::new(MASK_KEY);
    config.archive.url = embedded_out.path().join("hot").display().to_string();
    config.archive.cold_url = embedded_out.path().join("cold").display().to_string();
    config.ticket.outbox_dir = embedded_out.path().join("tickets");
    app::run_embedded(&config, &example()).await.unwrap();
    let tickets = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir.join("tickets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(tickets(&out), tickets(embedded_out.path()));

    // Malformed payloads are on the dead-letter topic with reasons.
    let dead = cluster.read_topic(topology::DEAD_LETTER, RecordKind::DeadLetter).await;
    let reasons: BTreeSet<String> = dead
        .iter()
        .filter_map(|(_, _, r)| match r {
            Record::DeadLetter(d) => Some(format!("{}/{}/{} {}", d.source_topic, d.source_partition, d.source_offset, d.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:#?}");

    // Metrics of the normalize stage.
    assert!(metrics.contains("blameless_records_in_total{stage=\"normalize\"}"), "{metrics}");
    assert!(metrics.contains("blameless_dead_letters_total{stage=\"normalize\"} 5"), "{metrics}");

    // No personal value after raw-events: topics, archive, tickets, logs.
    let canaries = common::personal_values(&std::fs::read(example()).unwrap());
    let mut haystacks = Vec::new();
    for (name, kind) in [
        (topology::MASKED, RecordKind::Masked),
        (topology::WINDOWED_INCIDENTS, RecordKind::Incident),
        (topology::TICKETS, RecordKind::Ticket),
        (topology::DEAD_LETTER, RecordKind::DeadLetter),
    ] {
        for (partition, offset, record) in cluster.read_topic(name, kind).await {
            haystacks.push((format!("{name}/{partition}/{offset}"), format!("{record:?}").into_bytes()));
        }
    }
    haystacks.extend(common::files_under(&out));
    common::assert_no_canary(&canaries, &haystacks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn killed_normalize_stage_loses_no_record() {
    let cluster = TestCluster::new("kill").await;
    let delivered = read_input(&example()).unwrap();
    cluster.ingest_paced(&delivered, 500, Duration::ZERO).await;

    // What a run that never crashes would produce.
    let mut expected = BTreeSet::new();
    for item in &delivered {
        let (_, raw) = blameless::stages::ingest::to_raw_event(item, 0);
        if let Ok(events) = blameless::sources::normalize(&raw) {
            expected.extend(events.into_iter().map(|e| e.event_id));
        }
    }

    let first = cluster.start_stage("normalize", 0, "");
    let log = cluster.log_path("normalize", 0);
    // Kill it once it has committed part of the input and is mid-stream.
    wait_until("normalize has processed a batch", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Batch committed."))
    })
    .await;
    // Dropping the process kills it with SIGKILL.
    drop(first);
    let normalized_at_kill = cluster.read_topic(topology::NORMALIZED, RecordKind::Normalized).await.len();
    assert!(normalized_at_kill < expected.len(), "the kill came after the whole input was done");

    let second = cluster.start_stage("normalize", 1, "");
    let mut observed = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !expected.is_subset(&observed) {
        assert!(Instant::now() < deadline, "records lost: {} of {} normalized events missing", expected.difference(&observed).count(), expected.len());
        tokio::time::sleep(Duration::from_secs(1)).await;
        observed = cluster
            .read_topic(topology::NORMALIZED, RecordKind::Normalized).await
            .into_iter()
            .filter_map(|(_, _, r)| match r {
                Record::Normalized(e) => Some(e.event_id),
                _ => None,
            })
            .collect();
    }
    stop(second);

    let dead: BTreeSet<(i32, i64)> = cluster
        .read_topic(topology::DEAD_LETTER, RecordKind::DeadLetter).await
        .into_iter()
        .filter_map(|(_, _, r)| match r {
            Record::DeadLetter(d) => Some((d.source_partition, d.source_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 5);
}

fn customer_end(conversation: usize, event_time_ms: i64) -> Delivered {
    let text = format!(
        r#"{{"topicName":"v2.detail.events.conversation.conv-{conversation}.customer.end","eventBody":{{"eventTime":{event_time_ms},"conversationId":"conv-{conversation}","participantId":"p-{conversation}","mediaType":"VOICE","direction":"INBOUND","disconnectType":"ENDPOINT"}}}}"#
    );
    Delivered {
        origin: format!("conv-{conversation}"),
        bytes: text.into_bytes(),
    }
}

/// Returns the normalized events by conversation id, with their event times.
async fn normalized_by_conversation(cluster: &TestCluster) -> Vec<(String, i64)> {
    let mut events: Vec<(String, i64)> = cluster
        .read_topic(topology::NORMALIZED, RecordKind::Normalized)
        .await
        .into_iter()
        .filter_map(|(_, _, record)| match record {
            Record::Normalized(event) => Some((event.conversation_id?, event.event_time_ms)),
            _ => None,
        })
        .collect();
    events.sort();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn duplicates_and_reordering_survive_a_restart() {
    let cluster = TestCluster::new("dedupe").await;
    // Event times run backwards through each delivery, as a platform that
    // retries late delivers them.
    let time_of = |conversation: usize| 1_765_551_713_000 - conversation as i64 * 1000;
    let first: Vec<Delivered> = (0..30).rev().map(|c| customer_end(c, time_of(c))).collect();
    let mut first_with_copies = first.clone();
    first_with_copies.extend((0..10).map(|c| customer_end(c, time_of(c))));
    cluster.ingest_paced(&first_with_copies, 50, Duration::ZERO).await;

    let stage = cluster.start_stage("normalize", 0, "");
    let deadline = Instant::now() + Duration::from_secs(90);
    while normalized_by_conversation(&cluster).await.len() < 30 {
        assert!(Instant::now() < deadline, "the normalize stage did not normalize the first delivery");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop(stage);

    // After the restart, copies of events from before it arrive with new
    // ones.
    let mut second: Vec<Delivered> = (20..40).map(|c| customer_end(c, time_of(c))).collect();
    second.push(customer_end(3, time_of(3)));
    cluster.ingest_paced(&second, 50, Duration::ZERO).await;
    let stage = cluster.start_stage("normalize", 1, "");
    let deadline = Instant::now() + Duration::from_secs(90);
    while normalized_by_conversation(&cluster).await.len() < 40 {
        assert!(Instant::now() < deadline, "the normalize stage did not normalize the second delivery");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Give a copy that slipped through time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(stage);

    let events = normalized_by_conversation(&cluster).await;
    let expected: Vec<(String, i64)> = {
        let mut all: Vec<(String, i64)> = (0..40).map(|c| (format!("conv-{c}"), time_of(c))).collect();
        all.sort();
        all
    };
    assert_eq!(events, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn topology_apply_is_idempotent_and_reports_drift() {
    use blameless::transport::kafka::TopicState;
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    // TestCluster::new applied the topology once; a second apply changes nothing.
    let cluster = TestCluster::new("apply").await;
    let topology = Topology::load_default();
    let again = apply_topology(&cluster.kafka, &topology, &cluster.prefix).await.unwrap();
    assert_eq!(again.len(), topology.topics.len());
    assert!(again.iter().all(|(_, state)| *state == TopicState::Matches), "{again:?}");

    // Someone shortens the retention of `masked` by hand.
    let admin: AdminClient<DefaultClientContext> = blameless::transport::kafka::client_config(&cluster.kafka).create().unwrap();
    let masked = cluster.topic(topology::MASKED);
    let change = AlterConfig::new(ResourceSpecifier::Topic(&masked)).set("retention.ms", "3600000");
    admin.alter_configs([&change], &AdminOptions::new()).await.unwrap();

    let report = apply_topology(&cluster.kafka, &topology, &cluster.prefix).await.unwrap();
    let (_, state) = report.iter().find(|(name, _)| *name == masked).unwrap();
    match state {
        TopicState::Drifted(differences) => {
            assert_eq!(differences.len(), 1, "{differences:?}");
            assert!(differences[0].contains("retention.ms"), "{differences:?}");
            assert!(differences[0].contains("3600000"), "{differences:?}");
        }
        other => panic!("expected drift on {masked}, got {other:?}"),
    }
}
