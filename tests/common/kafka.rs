//! Helpers for tests that run `blameless stage` processes on a real Apache
//! Kafka broker: topics and consumer groups unique to one test, stage
//! processes with their logs in files, and a reader that returns every
//! record of a topic with its key and bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blameless::config::KafkaConfig;
use blameless::topology::Topology;
use blameless::transport::kafka::apply_topology;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Returns the broker list of BLAMELESS_TEST_BROKERS, which scripts/test.sh
/// sets after starting Kafka.
pub fn brokers() -> String {
    std::env::var("BLAMELESS_TEST_BROKERS")
        .expect("BLAMELESS_TEST_BROKERS is not set: run the broker tests through scripts/test.sh, which starts Kafka")
}

/// One record of a topic, as stored: its key and value bytes.
pub struct StoredRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Topics and consumer groups unique to one test, its output folder, and
/// the environment its stage processes get.
pub struct TestCluster {
    pub prefix: String,
    pub kafka: KafkaConfig,
    pub out: tempfile::TempDir,
    /// Extra `BLAMELESS*` variables for every stage process, such as the
    /// mask key and the log filter.
    pub env: Vec<(String, String)>,
}

impl TestCluster {
    /// Creates the topology's topics under a prefix made of `name` and the
    /// current time, so tests never share a topic or a group.
    pub async fn new(name: &str) -> TestCluster {
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
            env: Vec::new(),
        }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Folder of the stage logs, inside the output folder.
    pub fn log_dir(&self) -> PathBuf {
        self.out.path().join("logs")
    }

    fn command(&self, args: &[&str], log_name: &str) -> Command {
        std::fs::create_dir_all(self.log_dir()).unwrap();
        let log = std::fs::File::create(self.log_dir().join(format!("{log_name}.log"))).unwrap();
        let out = self.out.path();
        let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
        command
            .args(args)
            .env("BLAMELESS__KAFKA__BROKERS", &self.kafka.brokers)
            .env("BLAMELESS__KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("BLAMELESS__KAFKA__GROUP_PREFIX", &self.kafka.group_prefix)
            .env("BLAMELESS__ARCHIVE__URL", out.join("hot"))
            .env("BLAMELESS__ARCHIVE__COLD_URL", out.join("cold"))
            .env("BLAMELESS__TICKET__OUTBOX_DIR", out.join("tickets"))
            .env("BLAMELESS__METRICS__ADDRESS", "")
            .env("BLAMELESS__STAGE__BATCH_MAX_WAIT_MS", "100")
            // The archive writes every polled batch at once, so the ticket
            // stage's snapshots find the events the test just sent.
            .env("BLAMELESS__ARCHIVE__BATCH_MAX_BYTES", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    /// Starts `blameless stage NAME`, with its stdout and stderr in
    /// `logs/<log_name>.log`.
    pub fn start_stage(&self, stage: &str, log_name: &str) -> StageProcess {
        StageProcess(self.command(&["stage", stage], log_name).spawn().unwrap())
    }

    /// Runs `blameless stage ingest --input FILE` to its end, with its
    /// output in `logs/<log_name>.log`, and fails the test if it fails.
    pub fn ingest_file(&self, input: &Path, log_name: &str) {
        let status = self
            .command(&["stage", "ingest", "--input", input.to_str().unwrap()], log_name)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "ingest of {} failed: see {log_name}.log", input.display());
    }

    /// Reads every record of a topic, from the beginning to the end it had
    /// when the call started.
    pub fn read_topic(&self, name: &str) -> Vec<StoredRecord> {
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
        let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while next.iter().any(|(p, offset)| *offset < ends[p]) {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = message.unwrap();
            next.insert(message.partition(), message.offset() + 1);
            records.push(StoredRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
        }
        records
    }
}

/// A running `blameless stage` process, killed when dropped, so a failing
/// test leaves no stage behind.
pub struct StageProcess(pub Child);

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a stage with SIGTERM, so it stops between batches, and kills it
/// after 15 seconds.
pub fn stop(mut stage: StageProcess) {
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

/// Waits until `check` holds, polling every 500 ms, or fails after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
