//! The poller against a CXone double served by wiremock on 127.0.0.1, with
//! the in-memory log as Kafka and a manual clock.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};
use wiremock::matchers::{bearer_token, body_string_contains, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::*;
use crate::codec::Codec;
use crate::model::{RawEvent, RecordKind};
use crate::publish::Publisher;
use crate::transport::memory::{MemoryLog, MemorySink};
use crate::transport::{decode_record, TopicNames};

/// 2025-12-12T14:00:30Z: half a minute into the 14:00 interval.
const START_MS: i64 = 1_765_548_030_000;
const MINUTE: Duration = Duration::from_secs(60);
const UNIT: &str = "318204";
const API_PATH: &str = "/incontactapi/services/v31.0/skills/summary";

fn settings(server: &MockServer) -> NicePollerConfig {
    NicePollerConfig {
        token_url: format!("{}/auth/token", server.uri()),
        api_base_url: format!("{}/incontactapi/services/v31.0", server.uri()),
        client_id: "blameless-app".into(),
        client_secret: Secret::new("app-secret"),
        business_units: vec![BusinessUnitConfig {
            id: UNIT.into(),
            access_key_id: "access-key-id".into(),
            access_key_secret: Secret::new("access-key-secret"),
            access_key_secret_file: None,
        }],
        max_retries: 3,
        retry_initial_delay_ms: 5,
        retry_max_delay_ms: 20,
        request_timeout_secs: 5,
        ..NicePollerConfig::default()
    }
}

fn token_body(token: &str, expires_in: i64) -> Value {
    json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in, "refresh_token": format!("refresh-{token}")})
}

async fn mount_token(server: &MockServer, token: &str) {
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .and(body_string_contains("grant_type=password"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body(token, 3600)))
        .mount(server)
        .await;
}

/// A skill summary whose one skill has `agents(minute of the interval
/// start)` agents available, so each interval's payload is recognizable.
struct SummaryResponder {
    agents: fn(i64) -> i64,
}

impl Respond for SummaryResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let start = request
            .url
            .query_pairs()
            .find(|(name, _)| name == "startDate")
            .map(|(_, value)| chrono::DateTime::parse_from_rfc3339(&value).unwrap().timestamp_millis())
            .expect("the poller sends startDate");
        let minute = start / 60_000;
        ResponseTemplate::new(200).set_body_json(summary(&[("44", (self.agents)(minute))], Some(start)))
    }
}

fn summary(skills: &[(&str, i64)], start_ms: Option<i64>) -> Value {
    let entries: Vec<Value> = skills
        .iter()
        .map(|(id, agents)| {
            json!({
                "businessUnitId": UNIT,
                "skillId": id,
                "skillName": format!("Skill {id}"),
                "serviceLevel": "90",
                "serviceLevelGoal": "80",
                "contactsOffered": "10",
                "agentsAvailable": agents.to_string(),
                "requestedStart": start_ms.map(|ms| ms.to_string()),
            })
        })
        .collect();
    json!({"businessUnitId": UNIT, "skillSummaries": entries})
}

async fn mount_summary(server: &MockServer, agents: fn(i64) -> i64) {
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(SummaryResponder { agents })
        .mount(server)
        .await;
}

/// The in-memory log, the publisher and cursor store on it, and the clock.
struct Harness {
    log: Arc<MemoryLog>,
    codec: Codec,
    publisher: Arc<Publisher>,
    cursors: Arc<MemoryCursorStore>,
    clock: Arc<ManualClock>,
}

impl Harness {
    fn new() -> Harness {
        let log = MemoryLog::new();
        for topic in &crate::topology::Topology::load_default().topics {
            log.create_topic(&topic.name, topic.partitions as usize);
        }
        let codec = Codec::single_object().unwrap();
        let sink = Arc::new(MemorySink { log: Arc::clone(&log) });
        let metrics = crate::metrics::Metrics::new();
        let publisher = Arc::new(Publisher::new(
            sink,
            codec.clone(),
            TopicNames::default(),
            metrics.stage("ingest"),
            crate::config::DEFAULT_MAX_PAYLOAD_BYTES,
        ));
        let cursors = Arc::new(MemoryCursorStore::new(Arc::clone(&log), codec.clone(), topology::SOURCE_CURSORS));
        Harness {
            log,
            codec,
            publisher,
            cursors,
            clock: Arc::new(ManualClock::new(START_MS)),
        }
    }

    async fn poller(&self, settings: &NicePollerConfig) -> Poller {
        let cursors: Arc<dyn CursorStore> = self.cursors.clone();
        let clock: Arc<dyn Clock> = self.clock.clone();
        Poller::start(settings, Arc::clone(&self.publisher), cursors, clock).await.unwrap()
    }

    async fn raw_events(&self) -> Vec<RawEvent> {
        let mut events = Vec::new();
        for record in self.log.records(topology::RAW_EVENTS) {
            let decoded = decode_record(&self.codec, RecordKind::Raw, record.payload.as_deref().unwrap()).await.unwrap();
            let crate::model::Record::Raw(raw) = decoded else { panic!("raw-events holds a raw event") };
            events.push(raw);
        }
        events
    }

    async fn interval_ends(&self) -> Vec<i64> {
        self.raw_events().await.iter().map(|raw| raw.interval_end_ms.unwrap()).collect()
    }
}

fn capture(raw: &RawEvent) -> Value {
    serde_json::from_str(raw.capture_json.as_deref().unwrap()).unwrap()
}

fn payload(raw: &RawEvent) -> Value {
    serde_json::from_slice(&raw.payload).unwrap()
}

/// Lists `count` interval ends from `first` on, one minute apart.
fn consecutive_minutes(first: i64, count: i64) -> Vec<i64> {
    (0..count).map(|i| first + i * 60_000).collect()
}

/// The end of the interval before the one `START_MS` falls in.
const FIRST_END_MS: i64 = START_MS - 30_000;

#[tokio::test]
async fn each_minute_once_across_restart() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    mount_summary(&server, |minute| minute % 7).await;
    let harness = Harness::new();
    let settings = settings(&server);

    let mut poller = harness.poller(&settings).await;
    for _ in 0..4 {
        assert_eq!(poller.poll_due().await.unwrap(), 1);
        harness.clock.advance(MINUTE);
    }
    // A second poll within the same minute publishes nothing.
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    assert_eq!(poller.poll_due().await.unwrap(), 0);
    drop(poller);

    // Three minutes pass while the poller is down.
    harness.clock.advance(3 * MINUTE);
    let mut restarted = harness.poller(&settings).await;
    assert_eq!(restarted.poll_due().await.unwrap(), 3);
    harness.clock.advance(MINUTE);
    assert_eq!(restarted.poll_due().await.unwrap(), 1);

    let ends = harness.interval_ends().await;
    assert_eq!(ends, consecutive_minutes(FIRST_END_MS, 9));

    let events = harness.raw_events().await;
    for raw in &events {
        let end = raw.interval_end_ms.unwrap();
        assert_eq!(raw.interval_start_ms, Some(end - 60_000));
        assert_eq!(raw.delivery, "nice_reporting_poll");
        assert_eq!(raw.source, "nice");
        let requested = payload(raw)["skillSummaries"][0]["requestedStart"].as_str().unwrap().to_string();
        assert_eq!(requested, (end - 60_000).to_string(), "each payload is the one of its interval");
    }
    // The first interval after the restart compares with the counts the
    // cursor stored, so no drop goes unseen across a restart.
    let after_restart = capture(&events[5]);
    let previous_minute = (events[4].interval_start_ms.unwrap() / 60_000) % 7;
    assert_eq!(after_restart["previous_agents_available"]["44"], json!(previous_minute as f64));
    assert!(capture(&events[0]).get("previous_agents_available").is_none());

    let stored = harness.cursors.read_all().await.unwrap();
    assert_eq!(stored["nice:318204"].interval_end_ms, *ends.last().unwrap());
}

#[tokio::test]
async fn long_gap_is_cut_to_max_catch_up() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    mount_summary(&server, |_| 5).await;
    let harness = Harness::new();
    let mut settings = settings(&server);
    settings.max_catch_up_intervals = 3;

    let mut poller = harness.poller(&settings).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    drop(poller);
    harness.clock.advance(10 * MINUTE);
    let mut restarted = harness.poller(&settings).await;
    assert_eq!(restarted.poll_due().await.unwrap(), 3);

    let ends = harness.interval_ends().await;
    let last_completed_end = FIRST_END_MS + 10 * 60_000;
    assert_eq!(ends, vec![FIRST_END_MS, last_completed_end - 120_000, last_completed_end - 60_000, last_completed_end]);
    // The first interval after the gap is not compared with the one before it.
    let events = harness.raw_events().await;
    assert!(capture(&events[1]).get("previous_agents_available").is_none());
    assert!(capture(&events[2]).get("previous_agents_available").is_some());
}

#[tokio::test]
async fn pages_are_joined() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    let mut first = summary(&[("44", 3), ("45", 4)], None);
    first["_links"] = json!({
        "self": format!("{}{API_PATH}", server.uri()),
        "next": format!("{}{API_PATH}?page=2", server.uri()),
    });
    let mut second = summary(&[("46", 5)], None);
    second["_links"] = json!({"next": ""});
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .and(query_param_is_missing("page"))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(second))
        .expect(1)
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);

    let raw = harness.raw_events().await.remove(0);
    let joined = payload(&raw);
    let ids: Vec<&str> = joined["skillSummaries"].as_array().unwrap().iter().map(|s| s["skillId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["44", "45", "46"]);
    assert!(joined.get("_links").is_none(), "{joined}");
    assert_eq!(joined["businessUnitId"], UNIT);
    let events = crate::sources::normalize(&raw).unwrap();
    assert_eq!(events.len(), 3);
}

#[tokio::test]
async fn next_link_to_other_host_is_rejected() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    let mut first = summary(&[("44", 3)], None);
    first["_links"] = json!({"next": "http://other-host.invalid/skills/summary?page=2"});
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 0);
    assert!(harness.raw_events().await.is_empty());
    assert!(harness.cursors.read_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn unauthorized_fetches_new_token_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("expired", 3600)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_token(&server, "fresh").await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .and(bearer_token("expired"))
        .respond_with(ResponseTemplate::new(401).set_body_string("{\"error\":\"invalid_token\"}"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .and(bearer_token("fresh"))
        .respond_with(ResponseTemplate::new(200).set_body_json(summary(&[("44", 3)], None)))
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);

    let requests = server.received_requests().await.unwrap();
    let token_requests: Vec<String> = requests
        .iter()
        .filter(|r| r.url.path() == "/auth/token")
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    assert_eq!(token_requests.len(), 2);
    for body in &token_requests {
        assert!(body.contains("grant_type=password"), "{body}");
        assert!(body.contains("username=access-key-id"), "{body}");
    }
    let basic = requests[0].headers.get("authorization").unwrap().to_str().unwrap();
    assert!(basic.starts_with("Basic "), "{basic}");
    assert_eq!(harness.interval_ends().await.len(), 1);
}

#[tokio::test]
async fn repeated_unauthorized_is_an_error() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 0);
    let api_requests = server.received_requests().await.unwrap().iter().filter(|r| r.url.path() == API_PATH).count();
    assert_eq!(api_requests, 2, "one retry with a new token, then the interval waits for the next poll");
    assert!(harness.raw_events().await.is_empty());
}

#[tokio::test]
async fn token_is_refreshed_before_expiry() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .and(body_string_contains("grant_type=password"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("first", 120)))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=refresh-first"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token_body("second", 3600)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(summary(&[("44", 3)], None)))
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    // 60 s later the token has 60 s left, which is the default margin.
    harness.clock.advance(MINUTE);
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    harness.clock.advance(MINUTE);
    assert_eq!(poller.poll_due().await.unwrap(), 1);

    let bearers: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == API_PATH)
        .map(|r| r.headers.get("authorization").unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(bearers, ["Bearer first", "Bearer second", "Bearer second"]);
}

#[tokio::test]
async fn too_many_requests_waits_retry_after() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    let retry_date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(START_MS as u64 + 30_000));
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", retry_date.as_str()))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(summary(&[("44", 3)], None)))
        .with_priority(3)
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    // Seven seconds, then the HTTP date 30 s after the start less the 7 s
    // already waited.
    assert_eq!(harness.clock.sleeps(), [Duration::from_secs(7), Duration::from_secs(23)]);
}

#[tokio::test]
async fn retry_after_is_capped() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "3600"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(summary(&[("44", 3)], None)))
        .with_priority(2)
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut settings = settings(&server);
    settings.max_retry_after_secs = 2;
    let mut poller = harness.poller(&settings).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    assert_eq!(harness.clock.sleeps(), [Duration::from_secs(2)]);
}

#[tokio::test]
async fn server_error_retried_with_backoff() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(summary(&[("44", 3)], None)))
        .with_priority(2)
        .mount(&server)
        .await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 1);

    // Delays of 5 ms, then 10 ms, each with jitter of up to the delay.
    let sleeps = harness.clock.sleeps();
    assert_eq!(sleeps.len(), 2, "{sleeps:?}");
    assert!((Duration::from_millis(5)..=Duration::from_millis(10)).contains(&sleeps[0]), "{sleeps:?}");
    assert!((Duration::from_millis(10)..=Duration::from_millis(20)).contains(&sleeps[1]), "{sleeps:?}");
    assert_eq!(harness.interval_ends().await, [FIRST_END_MS]);
}

#[tokio::test]
async fn exhausted_retries_leave_interval_for_next_poll() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    Mock::given(method("GET"))
        .and(path(API_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(4)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_summary(&server, |_| 2).await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    assert_eq!(poller.poll_due().await.unwrap(), 0);
    assert_eq!(harness.clock.sleeps().len(), 3, "max_retries is 3");
    assert!(harness.raw_events().await.is_empty());
    assert!(harness.cursors.read_all().await.unwrap().is_empty());

    // The clock moved by the retry delays only, so the same interval is
    // still the one due, and it is published on the next poll.
    assert_eq!(poller.poll_due().await.unwrap(), 1);
    assert_eq!(harness.interval_ends().await, [FIRST_END_MS]);
}

#[tokio::test]
async fn connection_error_is_retried() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let mut settings = NicePollerConfig {
        token_url: format!("http://{address}/auth/token"),
        api_base_url: format!("http://{address}/api"),
        ..settings(&MockServer::start().await)
    };
    settings.max_retries = 2;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings).await;
    assert_eq!(poller.poll_due().await.unwrap(), 0);
    assert_eq!(harness.clock.sleeps().len(), 2);
    assert!(harness.raw_events().await.is_empty());
}

#[tokio::test]
async fn availability_drop_reaches_normalizer() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    // 10 agents in even minutes, 4 in odd ones: every odd minute is a drop
    // of 60 %, above the default share of 50 %.
    mount_summary(&server, |minute| if minute % 2 == 0 { 10 } else { 4 }).await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    for _ in 0..4 {
        poller.poll_due().await.unwrap();
        harness.clock.advance(MINUTE);
    }
    let events = harness.raw_events().await;
    assert_eq!(events.len(), 4);
    for raw in &events {
        let normalized = crate::sources::normalize(raw).unwrap();
        let drops: Vec<_> = normalized.iter().filter(|e| e.event_type == "agent_availability_drop").collect();
        let minute = raw.interval_start_ms.unwrap() / 60_000;
        let has_previous = capture(raw).get("previous_agents_available").is_some();
        let expected = usize::from(has_previous && minute % 2 == 1);
        assert_eq!(drops.len(), expected, "interval starting at minute {minute}");
        assert_eq!(capture(raw)["availability_drop_share"], json!(0.5));
    }
}

#[tokio::test]
async fn run_stops_on_shutdown() {
    let server = MockServer::start().await;
    mount_token(&server, "t1").await;
    mount_summary(&server, |_| 1).await;
    let harness = Harness::new();
    let mut poller = harness.poller(&settings(&server)).await;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    stop.send(true).unwrap();
    poller.run(shutdown).await.unwrap();
    assert!(harness.raw_events().await.is_empty(), "a stop requested before the first poll publishes nothing");

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    drop(stop);
    poller.run(shutdown).await.unwrap();
    assert_eq!(harness.interval_ends().await, [FIRST_END_MS]);
}

#[test]
fn default_settings_are_valid() {
    let mut problems = Vec::new();
    NicePollerConfig::default().validate(&mut problems);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn invalid_settings_are_named() {
    let config = NicePollerConfig {
        poll_interval_secs: 0,
        availability_drop_share: 1.0,
        token_url: "cxone.example/auth".into(),
        business_units: vec![
            BusinessUnitConfig {
                id: "12a".into(),
                ..BusinessUnitConfig::default()
            },
            BusinessUnitConfig {
                id: "7".into(),
                ..BusinessUnitConfig::default()
            },
            BusinessUnitConfig {
                id: "7".into(),
                ..BusinessUnitConfig::default()
            },
        ],
        ..NicePollerConfig::default()
    };
    let mut problems = Vec::new();
    config.validate(&mut problems);
    let text = problems.join("\n");
    assert!(text.contains("sources.nice.poll_interval_secs is 0"), "{text}");
    assert!(text.contains("sources.nice.availability_drop_share is 1"), "{text}");
    assert!(text.contains("sources.nice.token_url is \"cxone.example/auth\""), "{text}");
    assert!(text.contains("business_units[0].id is \"12a\""), "{text}");
    assert!(text.contains("business_units[2].id 7 is listed twice"), "{text}");
    assert_eq!(problems.len(), 5, "{text}");
}

#[test]
fn missing_settings_are_listed() {
    let error = NicePollerConfig::default().check_required().unwrap_err().to_string();
    for setting in ["sources.nice.token_url", "sources.nice.api_base_url", "sources.nice.client_id", "client_secret_file", "business_units"] {
        assert!(error.contains(setting), "{setting}: {error}");
    }
}

#[test]
fn secret_files_replace_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let client_file = dir.path().join("client");
    let key_file = dir.path().join("key");
    std::fs::write(&client_file, "client-from-file\n").unwrap();
    std::fs::write(&key_file, "key-from-file\n").unwrap();
    let mut config = NicePollerConfig {
        client_secret_file: Some(client_file),
        business_units: vec![BusinessUnitConfig {
            id: "1".into(),
            access_key_secret_file: Some(key_file),
            ..BusinessUnitConfig::default()
        }],
        ..NicePollerConfig::default()
    };
    config.resolve_secret_files().unwrap();
    assert_eq!(config.client_secret.expose(), "client-from-file");
    assert_eq!(config.business_units[0].access_key_secret.expose(), "key-from-file");

    config.client_secret_file = Some(dir.path().join("missing"));
    let error = format!("{:#}", config.resolve_secret_files().unwrap_err());
    assert!(error.contains("sources.nice.client_secret_file"), "{error}");
    assert!(error.contains("missing"), "{error}");
}

#[test]
fn intervals_align_to_epoch() {
    assert_eq!(interval_containing(START_MS, 60_000), (START_MS - 30_000, START_MS + 30_000));
    assert_eq!(interval_containing(FIRST_END_MS, 60_000), (FIRST_END_MS, FIRST_END_MS + 60_000));
    assert_eq!(interval_containing(-1, 60_000), (-60_000, 0));
}
