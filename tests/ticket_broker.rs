//! Exactly one ticket on a real Apache Kafka broker. A `blameless stage
//! ticket` process sends gated incidents to a Jira double and is killed at
//! two exact steps, through the crash points of the `failpoints` build:
//!
//! - after Jira responded to the create and before the ledger record is sent
//!   (`ticket-after-reply`): on restart the ledger has no record, so the
//!   stage finds the ticket by its label and records it;
//! - after the ledger record is acknowledged and before the input offset
//!   is committed (`after-send-before-commit`): on restart the ledger read
//!   at start has the record, so Jira is not asked at all.
//!
//! In both the double counts exactly one create per incident, and the
//! `tickets` topic maps the incident id to the system, key, URL and status.
//!
//! These tests need the broker that `scripts/test.sh` starts, and a build
//! with `--features failpoints`, which `scripts/test.sh` passes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blameless::codec::Codec;
use blameless::model::{IncidentEvent, Record, RecordKind, TicketRecord};
use blameless::topology;
use blameless::transport::kafka::KafkaSink;
use blameless::transport::{decode_record, OutRecord, RecordSink};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

mod common;

use common::kafka::{stop, wait_until, StageProcess, TestCluster};

const API_TOKEN: &str = "jira-token-for-the-broker-test";

/// The Jira double's issues: key and labels, in creation order.
#[derive(Default)]
struct JiraState {
    issues: Mutex<Vec<(String, Vec<String>)>>,
}

impl JiraState {
    fn creates(&self) -> usize {
        self.issues.lock().unwrap().len()
    }
}

struct CreateIssue(Arc<JiraState>);

impl Respond for CreateIssue {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let labels: Vec<String> = serde_json::from_value(body["fields"]["labels"].clone()).unwrap_or_default();
        let mut issues = self.0.issues.lock().unwrap();
        let id = 10_000 + issues.len();
        let key = format!("OPS-{}", issues.len() + 1);
        issues.push((key.clone(), labels));
        ResponseTemplate::new(201).set_body_json(json!({
            "id": id.to_string(),
            "key": key,
            "self": format!("https://your-domain.atlassian.net/rest/api/3/issue/{id}")
        }))
    }
}

/// Responds to `GET /rest/api/3/search/jql` with the issues whose labels
/// contain the label named in the JQL.
struct SearchIssues(Arc<JiraState>);

impl Respond for SearchIssues {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let jql = request
            .url
            .query_pairs()
            .find(|(name, _)| name == "jql")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let issues: Vec<Value> = self
            .0
            .issues
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, (_, labels))| labels.iter().any(|label| jql.contains(&format!("\"{label}\""))))
            .filter(|(_, (_, labels))| labels.iter().any(|label| label.starts_with("blameless-")))
            .map(|(index, (key, _))| json!({"id": (10_000 + index).to_string(), "key": key, "fields": {"status": {"name": "To Do"}}}))
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({"issues": issues, "isLast": true}))
    }
}

async fn jira_double() -> (MockServer, Arc<JiraState>) {
    let server = MockServer::start().await;
    let state = Arc::new(JiraState::default());
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue"))
        .respond_with(CreateIssue(Arc::clone(&state)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/search/jql"))
        .respond_with(SearchIssues(Arc::clone(&state)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path_regex(r"^/rest/api/3/issue/[^/]+/comment$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "1"})))
        .mount(&server)
        .await;
    (server, state)
}

fn gated_incident(index: i64) -> IncidentEvent {
    common::gated_incident(&format!("b7e15c1a-0000-4000-8000-00000000000{index}"), 1_765_549_200_000 + index * 3_600_000)
}

async fn cluster(name: &str, jira: &MockServer) -> TestCluster {
    let mut cluster = TestCluster::new(name).await;
    cluster.env = vec![
        ("BLAMELESS__MASK__KEY".into(), "ticket-broker-test-key-0123".into()),
        ("BLAMELESS__TICKET__SINK".into(), "jira".into()),
        ("BLAMELESS__TICKET__JIRA__BASE_URL".into(), jira.uri()),
        ("BLAMELESS__TICKET__JIRA__EMAIL".into(), "sre@example.com".into()),
        ("BLAMELESS__TICKET__JIRA__API_TOKEN".into(), API_TOKEN.into()),
        ("BLAMELESS__TICKET__JIRA__PROJECT_KEY".into(), "OPS".into()),
        ("BLAMELESS_LOG".into(), "debug,rdkafka=info".into()),
    ];
    cluster
}

async fn write_incidents(cluster: &TestCluster, incidents: &[IncidentEvent]) {
    let codec = Codec::single_object().unwrap();
    let topic = cluster.topic(topology::WINDOWED_INCIDENTS);
    let mut records = Vec::new();
    for incident in incidents {
        records.push(OutRecord {
            topic: topic.clone(),
            key: incident.incident_id.clone(),
            payload: codec.encode(&topic, &Record::Incident(incident.clone())).await.unwrap(),
            // The time of writing, not the incident's: records older than the
            // topic's retention would be deleted before the restart reads
            // them.
            timestamp_ms: Some(blameless::transport::now_ms()),
        });
    }
    KafkaSink::new(&cluster.kafka).unwrap().send(records).await.unwrap();
}

async fn ledger(cluster: &TestCluster) -> Vec<TicketRecord> {
    let codec = Codec::single_object().unwrap();
    let mut records = Vec::new();
    for stored in cluster.read_topic(topology::TICKETS) {
        match decode_record(&codec, RecordKind::Ticket, &stored.payload).await.unwrap() {
            Record::Ticket(record) => {
                assert_eq!(stored.key.as_deref(), Some(record.incident_id.as_bytes()));
                records.push(record);
            }
            other => panic!("tickets contains {other:?}"),
        }
    }
    records
}

/// Starts the ticket stage; with a crash point, the process aborts when it
/// reaches that step.
fn start_ticket(cluster: &mut TestCluster, log_name: &str, failpoint: Option<&str>) -> StageProcess {
    cluster.env.retain(|(name, _)| name != "FAILPOINTS");
    if let Some(failpoint) = failpoint {
        cluster.env.push(("FAILPOINTS".into(), format!("{failpoint}=return")));
    }
    cluster.start_stage("ticket", log_name)
}

/// Waits for a stage process to end by itself and returns whether it
/// succeeded. Fails with the stage's log after `limit`.
async fn wait_for_exit(cluster: &TestCluster, stage: &mut StageProcess, log_name: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = stage.0.try_wait().unwrap() {
            return status.success();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stage did not reach its crash point; stage log:\n{}",
            log_text(cluster, log_name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the `tickets` topic contains `count` records, and fails with
/// the stage's log otherwise.
async fn wait_for_ledger(cluster: &TestCluster, count: usize, log_name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while cluster.read_topic(topology::TICKETS).len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger did not reach {count} records; stage log:\n{}",
            log_text(cluster, log_name)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn log_text(cluster: &TestCluster, log_name: &str) -> String {
    std::fs::read_to_string(cluster.log_dir().join(format!("{log_name}.log"))).unwrap_or_default()
}

/// Checks the ledger maps each incident to one Jira ticket, with the
/// double's key and the browse URL.
fn assert_ledger(records: &[TicketRecord], incidents: &[IncidentEvent], jira: &MockServer) {
    for incident in incidents {
        let mine: Vec<&TicketRecord> = records.iter().filter(|r| r.incident_id == incident.incident_id).collect();
        assert!(!mine.is_empty(), "no ledger record for {}", incident.incident_id);
        let keys: std::collections::BTreeSet<&str> = mine.iter().map(|r| r.ticket_key.as_str()).collect();
        assert_eq!(keys.len(), 1, "{} has several tickets: {keys:?}", incident.incident_id);
        let last = mine.last().unwrap();
        assert_eq!(last.system, "jira");
        assert_eq!(last.status, "created");
        assert!(last.ticket_key.starts_with("OPS-"), "{}", last.ticket_key);
        assert_eq!(last.ticket_url, format!("{}/browse/{}", jira.uri(), last.ticket_key));
        assert!(last.data_snapshot_url.contains(&incident.incident_id), "{}", last.data_snapshot_url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Kafka broker of scripts/test.sh"]
async fn crash_after_reply_makes_one_ticket() {
    let (jira, state) = jira_double().await;
    let mut cluster = cluster("ticket-after-reply", &jira).await;
    let incidents = [gated_incident(0), gated_incident(1)];
    write_incidents(&cluster, &incidents).await;

    let mut crashed = start_ticket(&mut cluster, "ticket-crash", Some("ticket-after-reply"));
    assert!(!wait_for_exit(&cluster, &mut crashed, "ticket-crash", Duration::from_secs(90)).await, "the stage should abort at its crash point");
    assert_eq!(state.creates(), 1, "the crash came right after the first create");
    assert!(ledger(&cluster).await.is_empty(), "the ledger record was never sent");

    let restarted = start_ticket(&mut cluster, "ticket-restart", None);
    wait_for_ledger(&cluster, 2, "ticket-restart").await;
    stop(restarted);

    assert_eq!(state.creates(), 2, "one create per incident, none repeated");
    assert_ledger(&ledger(&cluster).await, &incidents, &jira);
    let restart_log = log_text(&cluster, "ticket-restart");
    assert!(restart_log.contains("found in the ticket system but not in the ledger"), "{restart_log}");
    for log in [log_text(&cluster, "ticket-crash"), restart_log] {
        assert!(!log.contains(API_TOKEN), "a stage log contains the API token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Kafka broker of scripts/test.sh"]
async fn crash_before_commit_skips_jira() {
    let (jira, state) = jira_double().await;
    let mut cluster = cluster("ticket-before-commit", &jira).await;
    let incidents = [gated_incident(0)];
    write_incidents(&cluster, &incidents).await;

    let mut crashed = start_ticket(&mut cluster, "ticket-crash", Some("after-send-before-commit"));
    assert!(!wait_for_exit(&cluster, &mut crashed, "ticket-crash", Duration::from_secs(90)).await, "the stage should abort at its crash point");
    assert_eq!(state.creates(), 1);
    assert_eq!(ledger(&cluster).await.len(), 1, "the ledger record was acknowledged before the crash");
    let requests_before = jira.received_requests().await.unwrap().len();

    // The offset was not committed, so the restarted stage reads the
    // incident again; the ledger read at start already has it.
    let restarted = start_ticket(&mut cluster, "ticket-restart", None);
    wait_until("the restarted stage loaded the ledger", Duration::from_secs(60), || {
        log_text(&cluster, "ticket-restart").contains("Ticket ledger loaded")
    })
    .await;
    // A second incident proves the restarted stage is past the first.
    let second = [gated_incident(1)];
    write_incidents(&cluster, &second).await;
    wait_for_ledger(&cluster, 2, "ticket-restart").await;
    stop(restarted);

    assert_eq!(state.creates(), 2, "one create per incident");
    let requests = jira.received_requests().await.unwrap();
    let searches_for_first = requests[requests_before..]
        .iter()
        .filter(|r| r.url.as_str().contains(&incidents[0].incident_id))
        .count();
    assert_eq!(searches_for_first, 0, "the first incident was in the ledger, so Jira was not searched for it");
    let all: Vec<IncidentEvent> = incidents.iter().chain(second.iter()).cloned().collect();
    assert_ledger(&ledger(&cluster).await, &all, &jira);
}
