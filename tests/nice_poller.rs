//! The NICE CXone poller's Kafka cursor store on a real Apache Kafka
//! broker, with a CXone double served by wiremock on 127.0.0.1. These tests
//! are ignored by a plain `cargo test`; run them with
//! `BLAMELESS_TEST_BROKERS=127.0.0.1:19092 cargo test -p blameless --test nice_poller -- --include-ignored`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blameless::codec::Codec;
use blameless::config::{KafkaConfig, Secret};
use blameless::metrics::Metrics;
use blameless::model::{Record, RecordKind, SourceCursor};
use blameless::publish::Publisher;
use blameless::sources::nice_poller::{
    BusinessUnitConfig, Clock, CursorStore, KafkaCursorStore, ManualClock, NicePollerConfig, Poller,
};
use blameless::topology::{self, Topology};
use blameless::transport::kafka::{apply_topology, client_config, KafkaSink};
use blameless::transport::{decode_record, RecordSink, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// 2025-12-12T14:00:30Z.
const START_MS: i64 = 1_765_548_030_000;
/// End of the last completed interval at `START_MS`.
const FIRST_END_MS: i64 = START_MS - 30_000;

fn brokers() -> String {
    std::env::var("BLAMELESS_TEST_BROKERS")
        .expect("BLAMELESS_TEST_BROKERS is not set: set it to a Kafka bootstrap address such as 127.0.0.1:19092")
}

/// Topics under a prefix unique to one test.
struct TestTopics {
    kafka: KafkaConfig,
    codec: Codec,
}

impl TestTopics {
    async fn new(name: &str) -> TestTopics {
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
        TestTopics {
            kafka,
            codec: Codec::single_object().unwrap(),
        }
    }

    fn names(&self) -> TopicNames {
        TopicNames {
            prefix: self.kafka.topic_prefix.clone(),
        }
    }

    /// Builds a cursor store as a freshly started poller process would.
    fn cursor_store(&self) -> Arc<KafkaCursorStore> {
        let sink: Arc<dyn RecordSink> = Arc::new(KafkaSink::new(&self.kafka).unwrap());
        Arc::new(KafkaCursorStore::new(
            &self.kafka,
            sink,
            self.codec.clone(),
            self.names().physical(topology::SOURCE_CURSORS),
        ))
    }

    fn publisher(&self) -> Arc<Publisher> {
        let sink: Arc<dyn RecordSink> = Arc::new(KafkaSink::new(&self.kafka).unwrap());
        Arc::new(Publisher::new(
            sink,
            self.codec.clone(),
            self.names(),
            Metrics::new().stage("ingest"),
            blameless::config::DEFAULT_MAX_PAYLOAD_BYTES,
        ))
    }

    /// Reads every record of a topic from the beginning to its current end.
    async fn read_topic(&self, name: &str, kind: RecordKind) -> Vec<Record> {
        let topic = self.names().physical(name);
        let consumer: BaseConsumer = client_config(&self.kafka)
            .set("group.id", format!("{}reader", self.kafka.topic_prefix))
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
        let mut records = Vec::with_capacity(payloads.len());
        for bytes in payloads {
            records.push(decode_record(&self.codec, kind, &bytes).await.unwrap());
        }
        records
    }
}

fn cursor(unit: &str, interval_end_ms: i64) -> SourceCursor {
    SourceCursor {
        source: "nice".into(),
        key: unit.into(),
        interval_end_ms,
        updated_at_ms: interval_end_ms + 1_000,
        state_json: Some(json!({"agents_available": {"44": 3.0}}).to_string()),
    }
}

#[tokio::test]
#[ignore = "needs a Kafka broker: set BLAMELESS_TEST_BROKERS"]
async fn kafka_cursor_store_keeps_last_cursor_per_key() {
    let topics = TestTopics::new("nice-cursor-store").await;
    let store = topics.cursor_store();
    assert!(store.read_all().await.unwrap().is_empty(), "a new topic holds no cursor");

    for end in [60_000, 120_000, 180_000] {
        store.write(&cursor("318204", FIRST_END_MS + end)).await.unwrap();
    }
    store.write(&cursor("900001", FIRST_END_MS)).await.unwrap();
    drop(store);

    // A new store, as after a restart, reads the topic to its end.
    let restarted = topics.cursor_store();
    let stored = restarted.read_all().await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored["nice:318204"], cursor("318204", FIRST_END_MS + 180_000));
    assert_eq!(stored["nice:900001"], cursor("900001", FIRST_END_MS));
}

#[tokio::test]
#[ignore = "needs a Kafka broker: set BLAMELESS_TEST_BROKERS"]
async fn poller_resumes_from_kafka_cursor() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"access_token": "t1", "expires_in": 3600})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/skills/summary"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"skillSummaries": [{
            "businessUnitId": "318204", "skillId": "44", "skillName": "Billing Voice",
            "serviceLevel": "90", "serviceLevelGoal": "80", "agentsAvailable": "6"
        }]})))
        .mount(&server)
        .await;
    let settings = NicePollerConfig {
        token_url: format!("{}/auth/token", server.uri()),
        api_base_url: format!("{}/api", server.uri()),
        client_id: "blameless-app".into(),
        client_secret: Secret::new("app-secret"),
        business_units: vec![BusinessUnitConfig {
            id: "318204".into(),
            access_key_id: "access-key-id".into(),
            access_key_secret: Secret::new("access-key-secret"),
            access_key_secret_file: None,
        }],
        ..NicePollerConfig::default()
    };
    let topics = TestTopics::new("nice-poller-resume").await;
    let clock = Arc::new(ManualClock::new(START_MS));

    let start = |clock: &Arc<ManualClock>| {
        let cursors: Arc<dyn CursorStore> = topics.cursor_store();
        let clock: Arc<dyn Clock> = clock.clone();
        Poller::start(&settings, topics.publisher(), cursors, clock)
    };
    let mut poller = start(&clock).await.unwrap();
    for _ in 0..3 {
        assert_eq!(poller.poll_due().await.unwrap(), 1);
        clock.advance(Duration::from_secs(60));
    }
    drop(poller);

    // Two minutes pass while the poller is down; the restarted one reads
    // its cursor from Kafka and catches them up.
    clock.advance(Duration::from_secs(120));
    let mut restarted = start(&clock).await.unwrap();
    assert_eq!(restarted.poll_due().await.unwrap(), 3);

    let ends: Vec<i64> = topics
        .read_topic(topology::RAW_EVENTS, RecordKind::Raw)
        .await
        .into_iter()
        .map(|record| match record {
            Record::Raw(raw) => raw.interval_end_ms.unwrap(),
            other => panic!("raw-events holds {other:?}"),
        })
        .collect();
    let expected: Vec<i64> = (0..6).map(|i| FIRST_END_MS + i * 60_000).collect();
    assert_eq!(ends, expected);

    let stored = topics.cursor_store().read_all().await.unwrap();
    assert_eq!(stored["nice:318204"].interval_end_ms, FIRST_END_MS + 5 * 60_000);
}
