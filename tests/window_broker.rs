//! The window stage on a real Apache Kafka broker, killed or joined by a
//! second member while incidents are open. `scripts/test.sh` starts the
//! broker and sets BLAMELESS_TEST_BROKERS; these tests are ignored by a
//! plain `cargo test`.
//!
//! Each test writes masked events straight to its own prefixed `masked`
//! topic, keyed by affected service with increasing record timestamps, as
//! the mask stage does. A reference run of one window member over the same
//! events, on topics of its own, gives the incident changes that the
//! disturbed run must reproduce. Each member is a child
//! process that runs the stage as `blameless stage window` does, so a member
//! can be killed with SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blameless::codec::Codec;
use blameless::config::{Config, KafkaConfig, WindowConfig};
use blameless::model::{MaskedEvent, Record, RecordKind};
use blameless::stages::window::{Detector, WindowRules};
use blameless::topology::{self, Topology};
use blameless::transport::kafka::{apply_topology, client_config, KafkaSink};
use blameless::transport::memory::partition_for_key;
use blameless::transport::{decode_record, OutRecord, RecordSink};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn brokers() -> String {
    std::env::var("BLAMELESS_TEST_BROKERS")
        .expect("BLAMELESS_TEST_BROKERS is not set: run the broker tests through scripts/test.sh, which starts Kafka")
}

/// Partitions of `masked` in the default topology.
const PARTITIONS: usize = 6;
/// Services with healthy traffic: one completed call every 10 s each.
const SERVICES: usize = 24;
/// Event time covered by the generated traffic, in seconds.
const SPAN_SECS: i64 = 900;
/// The first part of the traffic ends here: the early incidents are open,
/// because their last failure is at 159 s and the quiet period is 300 s.
const SPLIT_SECS: i64 = 200;

/// The generated traffic: which services fail when.
struct Traffic {
    /// Epoch milliseconds of second 0. An hour ago, so the records are well
    /// within the retention of `masked`.
    base_ms: i64,
    /// One service per partition, failing 60 calls from 100 s to 159 s.
    early: Vec<String>,
    /// One service failing 60 calls from 400 s to 459 s.
    late: String,
    /// One service failing 30 calls from 100 s, below the threshold of 50.
    below_threshold: String,
}

fn service_name(index: usize) -> String {
    format!("svc-{index:02}")
}

impl Traffic {
    fn new() -> Traffic {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let base_ms = (now_ms - 3_600_000) / 1000 * 1000;
        let mut early = Vec::new();
        for partition in 0..PARTITIONS {
            let service = (0..SERVICES)
                .map(service_name)
                .find(|name| partition_for_key(name, PARTITIONS) == partition)
                .unwrap_or_else(|| panic!("no service of the first {SERVICES} lands in partition {partition}"));
            early.push(service);
        }
        let mut others = (0..SERVICES).map(service_name).filter(|name| !early.contains(name));
        let late = others.next().expect("a service for the late incident");
        let below_threshold = others.next().expect("a service below the threshold");
        Traffic {
            base_ms,
            early,
            late,
            below_threshold,
        }
    }

    /// Events with event time in `[from_secs, to_secs)`, in record timestamp
    /// order. The record timestamp is the event time, which is distinct for
    /// every event.
    fn events(&self, from_secs: i64, to_secs: i64) -> Vec<(i64, MaskedEvent)> {
        let mut events = Vec::new();
        for second in from_secs..to_secs {
            for index in 0..SERVICES {
                let service = service_name(index);
                if (second + index as i64) % 10 == 0 {
                    events.push(self.event(&service, "call_completed", second, index));
                }
                let failing = (self.early.contains(&service) && (100..160).contains(&second))
                    || (service == self.late && (400..460).contains(&second))
                    || (service == self.below_threshold && (100..130).contains(&second));
                if failing {
                    events.push(self.event(&service, "call_failed", second, SERVICES + index));
                }
            }
        }
        events.sort_by_key(|(timestamp, _)| *timestamp);
        events
    }

    /// Builds an event at `second`, shifted by `slot` milliseconds so no two
    /// events share a timestamp.
    fn event(&self, service: &str, event_type: &str, second: i64, slot: usize) -> (i64, MaskedEvent) {
        let time_ms = self.base_ms + second * 1000 + slot as i64;
        let event = MaskedEvent {
            event_id: format!("{service}-{event_type}-{second}"),
            event_type: event_type.into(),
            platform_source: "genesys_cloud_cx".into(),
            delivery: "eventbridge".into(),
            event_time_ms: time_ms,
            received_at_ms: time_ms,
            affected_service: service.into(),
            conversation_id: Some(format!("conversation-{service}-{second}")),
            touchpoint: Some("sip".into()),
            agent_pseudonym: None,
            phone_pseudonym: None,
            customer_pseudonym: None,
            mask_key_id: "k1".into(),
            failed_contacts: i64::from(event_type == "call_failed"),
            total_contacts: 1,
            dependency: None,
            attributes: BTreeMap::new(),
            message: None,
            previous_pseudonyms: None,
            dropped_attribute_count: 0,
        };
        (time_ms, event)
    }

    /// Incidents the traffic opens: the early ones and the late one.
    fn incident_count(&self) -> usize {
        self.early.len() + 1
    }
}

/// Returns the incident changes of one detector fed every event and closed
/// at the end.
fn detector_changes(events: &[(i64, MaskedEvent)]) -> BTreeSet<(String, String)> {
    let mut detector = Detector::new(WindowRules::from(&WindowConfig::default()));
    let mut offsets = [0i64; PARTITIONS];
    let mut changes = Vec::new();
    for (_, event) in events {
        let partition = partition_for_key(&event.affected_service, PARTITIONS);
        changes.extend(detector.observe(event, partition as i32, offsets[partition]));
        offsets[partition] += 1;
    }
    changes.extend(detector.close_all());
    changes.into_iter().map(|c| (c.incident_id, c.change)).collect()
}

/// Topics and consumer groups unique to one run, and its log folder.
struct TestCluster {
    prefix: String,
    kafka: KafkaConfig,
    logs: tempfile::TempDir,
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
            logs: tempfile::tempdir().unwrap(),
            codec: Codec::single_object().unwrap(),
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn log_path(&self, member: &str) -> PathBuf {
        self.logs.path().join(format!("window-{member}.log"))
    }

    /// Starts a window member of the cluster's group: this test binary
    /// running `window_member`, which runs the stage as `blameless stage
    /// window` does.
    fn start_window(&self, member: &str) -> StageProcess {
        let log = std::fs::File::create(self.log_path(member)).unwrap();
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "window_member", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(MEMBER_VARIABLE, member)
            .env("BLAMELESS__KAFKA__BROKERS", &self.kafka.brokers)
            .env("BLAMELESS__KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("BLAMELESS__KAFKA__GROUP_PREFIX", &self.kafka.group_prefix)
            .env("BLAMELESS__METRICS__ADDRESS", "")
            .env("BLAMELESS__STAGE__BATCH_MAX_WAIT_MS", "100")
            .env("BLAMELESS_LOG", "debug,rdkafka=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(StageProcess)
            .unwrap()
    }

    /// Writes events to `masked`, keyed by affected service, with their
    /// timestamps, in order.
    async fn write_masked(&self, events: &[(i64, MaskedEvent)]) {
        let sink = KafkaSink::new(&self.kafka).unwrap();
        let topic = self.topic(topology::MASKED);
        let mut records = Vec::with_capacity(events.len());
        for (timestamp_ms, event) in events {
            let payload = self.codec.encode(&topic, &Record::Masked(event.clone())).await.unwrap();
            records.push(OutRecord {
                topic: topic.clone(),
                key: event.affected_service.clone(),
                payload,
                timestamp_ms: Some(*timestamp_ms),
            });
        }
        sink.send(records).await.unwrap();
    }

    /// Reads every record of `windowed-incidents`: (incident id, change) in
    /// the order of each partition.
    async fn incident_changes(&self) -> Vec<(String, String)> {
        let topic = self.topic(topology::WINDOWED_INCIDENTS);
        let consumer: BaseConsumer = client_config(&self.kafka)
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
        let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
        let mut payloads = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while next.iter().any(|(p, offset)| *offset < ends[p]) {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = message.unwrap();
            next.insert(message.partition(), message.offset() + 1);
            payloads.push(message.payload().unwrap_or_default().to_vec());
        }
        let mut changes = Vec::with_capacity(payloads.len());
        for bytes in payloads {
            match decode_record(&self.codec, RecordKind::Incident, &bytes).await.unwrap() {
                Record::Incident(incident) => changes.push((incident.incident_id, incident.change)),
                other => panic!("windowed-incidents holds a record that is not an incident: {other:?}"),
            }
        }
        changes
    }

    /// Waits until `windowed-incidents` contains `count` changes named
    /// `change`, or fails after `limit` with the member logs' tails.
    async fn wait_for_changes(&self, change: &str, count: usize, limit: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let changes = self.incident_changes().await;
            let distinct: BTreeSet<&String> = changes.iter().filter(|(_, c)| c == change).map(|(id, _)| id).collect();
            if distinct.len() >= count {
                return changes;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} incidents {change}: {} so far\n{}",
                distinct.len(),
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Returns the last lines of every member's log, for failure messages.
    fn log_tails(&self) -> String {
        let mut tails = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            tails.push_str(&format!("--- {}\n{tail}\n", path.display()));
        }
        tails
    }

    /// Counts the committed batches of `member` that had replayed records.
    fn replaying_batches(&self, member: &str) -> usize {
        let log = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains("Batch committed.") && !line.contains("replayed=0"))
            .count()
    }

    /// Counts the log lines of `member` that contain `text`.
    fn log_count(&self, member: &str, text: &str) -> usize {
        let log = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
        log.lines().filter(|line| line.contains(text)).count()
    }
}

/// Set in the environment of a child process that runs `window_member`.
const MEMBER_VARIABLE: &str = "BLAMELESS_TEST_WINDOW_MEMBER";

/// Runs the window stage on Kafka until the process is killed, when
/// `MEMBER_VARIABLE` is set, and does nothing otherwise. The tests start it
/// from their own binary rather than `CARGO_BIN_EXE_blameless`, because a
/// target directory shared by several worktrees may hold another build of
/// that binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a window member that the other tests start as a child process"]
async fn window_member() {
    let Ok(member) = std::env::var(MEMBER_VARIABLE) else { return };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(std::env::var("BLAMELESS_LOG").unwrap_or_default()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    tracing::info!(member = %member, "Window member starting.");
    let config = Config::load(None).expect("the member's BLAMELESS__ variables are valid");
    blameless::app::run_kafka_stage("window", &config, None).await.unwrap();
}

/// A running window member, killed when dropped, so a failing test leaves
/// no stage behind.
struct StageProcess(Child);

impl StageProcess {
    /// Kills the process with SIGKILL: no batch is finished, no commit is
    /// flushed.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns the (incident id, change) pairs that occur more than once.
fn repeated(changes: &[(String, String)]) -> Vec<(String, String)> {
    let mut counts: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for change in changes {
        *counts.entry(change).or_default() += 1;
    }
    counts.into_iter().filter(|(_, n)| *n > 1).map(|(c, _)| c.clone()).collect()
}

/// Runs one window member over all of the traffic and returns its changes,
/// once every incident is closed. Checks them against a detector run in
/// this process.
async fn reference(traffic: &Traffic) -> BTreeSet<(String, String)> {
    let all = traffic.events(0, SPAN_SECS);
    let cluster = TestCluster::new("window-reference").await;
    cluster.write_masked(&all).await;
    let member = cluster.start_window("reference");
    cluster.wait_for_changes("closed", traffic.incident_count(), Duration::from_secs(60)).await;
    // Changes that would come late, or twice, have time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changes = cluster.incident_changes().await;
    member.kill();

    assert_eq!(repeated(&changes), Vec::new(), "the reference run sent changes twice");
    let reference: BTreeSet<(String, String)> = changes.into_iter().collect();
    assert_eq!(reference, detector_changes(&all), "the reference run differs from the detector");
    for change in ["opened", "gated", "closed"] {
        let count = reference.iter().filter(|(_, c)| c == change).count();
        assert_eq!(count, traffic.incident_count(), "incidents {change} in the reference run: {reference:?}");
    }
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn window_restart_mid_incident() {
    let traffic = Traffic::new();
    let reference = reference(&traffic).await;

    let cluster = TestCluster::new("window-restart").await;
    cluster.write_masked(&traffic.events(0, SPLIT_SECS)).await;
    let first = cluster.start_window("first");
    let before = cluster.wait_for_changes("opened", traffic.early.len(), Duration::from_secs(60)).await;
    // The batch that opened them was committed right after its outputs were
    // acknowledged. The wait lets that asynchronous commit reach the broker,
    // and the reorder hold (10 s without input) release the last records.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before_kill = cluster.incident_changes().await;
    assert!(
        before_kill.iter().all(|(_, change)| change != "closed"),
        "an incident closed before the kill: {before_kill:?}"
    );
    first.kill();
    assert!(before.len() <= before_kill.len());

    cluster.write_masked(&traffic.events(SPLIT_SECS, SPAN_SECS)).await;
    let second = cluster.start_window("second");
    cluster.wait_for_changes("closed", traffic.incident_count(), Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changes = cluster.incident_changes().await;
    second.kill();

    let observed: BTreeSet<(String, String)> = changes.iter().cloned().collect();
    assert_eq!(observed, reference, "the restarted run differs from the reference\n{}", cluster.log_tails());
    // The restart reads the open incidents' records again to rebuild them,
    // and the done marks keep their changes from being sent again.
    assert_eq!(repeated(&changes), Vec::new(), "changes sent twice across the restart");
    assert!(cluster.replaying_batches("second") > 0, "the restarted member replayed no record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn window_rebalance_mid_incident() {
    let traffic = Traffic::new();
    let reference = reference(&traffic).await;

    let cluster = TestCluster::new("window-rebalance").await;
    cluster.write_masked(&traffic.events(0, SPLIT_SECS)).await;
    let first = cluster.start_window("first");
    cluster.wait_for_changes("opened", traffic.early.len(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A second member joins while an incident is open on every partition,
    // and takes some of the partitions over.
    let second = cluster.start_window("second");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.log_count("second", "Partitions assigned.") == 0 {
        assert!(Instant::now() < deadline, "the second member got no partition\n{}", cluster.log_tails());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(cluster.log_count("first", "Partitions revoked.") > 0, "the first member gave up no partition");
    tokio::time::sleep(Duration::from_secs(3)).await;

    cluster.write_masked(&traffic.events(SPLIT_SECS, SPAN_SECS)).await;
    cluster.wait_for_changes("closed", traffic.incident_count(), Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let changes = cluster.incident_changes().await;
    first.kill();
    second.kill();

    let observed: BTreeSet<(String, String)> = changes.iter().cloned().collect();
    assert_eq!(observed, reference, "two members differ from one\n{}", cluster.log_tails());
    assert_eq!(repeated(&changes), Vec::new(), "changes sent twice across the rebalance\n{}", cluster.log_tails());
}
