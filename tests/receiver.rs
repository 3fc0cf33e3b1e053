//! `blameless source http` as a process on a real Apache Kafka broker: a
//! signed webhook gets a 202 response and its bytes are on `raw-events`.
//! `scripts/test.sh` starts the broker and sets BLAMELESS_TEST_BROKERS; that
//! test is ignored by a plain `cargo test`, and the start checks are not.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blameless::codec::Codec;
use blameless::config::KafkaConfig;
use blameless::model::{RawEvent, Record, RecordKind};
use blameless::topology::{self, Topology};
use blameless::transport::decode_record;
use blameless::transport::kafka::{apply_topology, client_config};
use hmac::{Hmac, KeyInit, Mac};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sha2::Sha256;

const SECRET: &str = "receiver-broker-test-secret-0123";

fn brokers() -> String {
    std::env::var("BLAMELESS_TEST_BROKERS")
        .expect("BLAMELESS_TEST_BROKERS is not set: run the broker tests through scripts/test.sh, which starts Kafka")
}

/// Returns a loopback address with a port that was free a moment ago.
fn free_loopback_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A running `blameless source http` process, killed when dropped, so a
/// failing test leaves no receiver behind.
struct ReceiverProcess(Child);

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns the end offset of a partition. Right after the topic was created,
/// a partition can still be without a leader for a moment, so a failed
/// request is repeated for up to 30 seconds.
fn end_offset(consumer: &BaseConsumer, topic: &str, partition: i32) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => return high,
            Err(error) if Instant::now() < deadline => {
                eprintln!("end offset of {topic}/{partition} not available yet: {error}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("could not read the end offset of {topic}/{partition}: {error}"),
        }
    }
}

/// Reads every record of `topic` and decodes the raw events.
async fn read_raw_events(kafka: &KafkaConfig, topic: &str, group: &str) -> Vec<RawEvent> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = TopicPartitionList::new();
    let mut remaining = 0;
    let mut ends = Vec::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        let high = end_offset(&consumer, topic, partition);
        remaining += high;
        ends.push(high);
    }
    consumer.assign(&list).unwrap();
    let codec = Codec::single_object().unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        if message.offset() >= ends[message.partition() as usize] {
            continue;
        }
        remaining -= 1;
        match decode_record(&codec, RecordKind::Raw, message.payload().unwrap_or_default()).await.unwrap() {
            Record::Raw(raw) => events.push(raw),
            other => panic!("{topic} contains an unexpected record: {other:?}"),
        }
    }
    events
}

/// Runs `blameless source http` with the given environment, which must make
/// it fail before it reaches Kafka, and returns its standard error.
fn failed_start(variables: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
    command.args(["source", "http"]).env_remove("BLAMELESS_CONFIG");
    for (name, _) in std::env::vars() {
        if name.starts_with("BLAMELESS__") {
            command.env_remove(name);
        }
    }
    let output = command
        .envs(variables.iter().copied())
        .env("BLAMELESS__KAFKA__BROKERS", "127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

#[test]
fn start_without_credentials_fails() {
    let stderr = failed_start(&[]);

    assert!(stderr.contains("the HTTP receiver has no credentials"), "{stderr}");
    assert!(stderr.contains("sources.http.secrets"), "{stderr}");
    assert!(stderr.contains("allow_unauthenticated = true"), "{stderr}");
}

#[test]
fn start_with_short_secret_fails() {
    let stderr = failed_start(&[("BLAMELESS__SOURCES__HTTP__SECRETS", "[\"short-secret\"]")]);

    assert!(stderr.contains("sources.http.secrets[0] is 12 characters long"), "{stderr}");
    assert!(!stderr.contains("short-secret"), "{stderr}");
}

#[test]
fn start_on_port_in_use_fails() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupied.local_addr().unwrap().to_string();
    let secrets = format!("[\"{SECRET}\"]");

    let stderr = failed_start(&[
        ("BLAMELESS__SOURCES__HTTP__ADDRESS", &address),
        ("BLAMELESS__SOURCES__HTTP__SECRETS", &secrets),
    ]);

    assert!(stderr.contains(&format!("could not listen on sources.http.address \"{address}\"")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn signed_webhook_reaches_raw_events() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("receiver-{nanos}.");
    let kafka = KafkaConfig {
        brokers: brokers(),
        topic_prefix: prefix.clone(),
        ..KafkaConfig::default()
    };
    apply_topology(&kafka, &Topology::load_default(), &prefix).await.unwrap();

    let address = free_loopback_address();
    let metrics_address = free_loopback_address();
    let log = tempfile::NamedTempFile::new().unwrap();
    let receiver = Command::new(env!("CARGO_BIN_EXE_blameless"))
        .args(["source", "http"])
        .env("BLAMELESS__KAFKA__BROKERS", &kafka.brokers)
        .env("BLAMELESS__KAFKA__TOPIC_PREFIX", &prefix)
        .env("BLAMELESS__SOURCES__HTTP__ADDRESS", &address)
        .env("BLAMELESS__SOURCES__HTTP__SECRETS", format!("[\"{SECRET}\"]"))
        .env("BLAMELESS__METRICS__ADDRESS", &metrics_address)
        .env("BLAMELESS_LOG", "debug,rdkafka=info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .map(ReceiverProcess)
        .unwrap();
    let receiver_log = || std::fs::read_to_string(log.path()).unwrap_or_default();

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = client.get(format!("http://{address}/health")).send().await;
        if health.is_ok_and(|response| response.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the receiver did not start:\n{}", receiver_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/genesys/eventbridge-detail-customer-end-voice.json"
    ))
    .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let response = client
        .post(format!("http://{address}/v1/events"))
        .header("Content-Type", "application/json")
        .header("X-Blameless-Signature", signature)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}\n{}", receiver_log());
    assert_eq!(answer["accepted"], 1);

    let unsigned = client
        .post(format!("http://{address}/v1/events"))
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The 202 came after the broker's acknowledgement, so the record is on
    // the topic now.
    let topic = format!("{prefix}{}", topology::RAW_EVENTS);
    let events = read_raw_events(&kafka, &topic, &format!("{prefix}reader")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].payload, body.trim_ascii());
    assert_eq!(events[0].delivery, "http_webhook");
    assert_eq!(events[0].source, "genesys");

    let metrics = client.get(format!("http://{metrics_address}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("blameless_http_requests_total{outcome=\"accepted\"} 1"), "{metrics}");
    assert!(metrics.contains("blameless_http_requests_total{outcome=\"unauthenticated\"} 1"), "{metrics}");

    // SIGTERM stops the receiver cleanly.
    let mut receiver = receiver;
    let child = &mut receiver.0;
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the receiver did not stop on SIGTERM:\n{}", receiver_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit}:\n{}", receiver_log());
    assert!(receiver_log().contains("HTTP receiver stopped."), "{}", receiver_log());
}
