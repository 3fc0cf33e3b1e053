//! The ticket stage against doubles of the Jira Cloud REST API v3, the
//! ServiceNow Table API and a webhook receiver, all served by wiremock on
//! 127.0.0.1.
//!
//! The Jira and ServiceNow doubles keep state: a create makes a ticket that
//! a later search finds, and an update needs an existing ticket. Their
//! responses follow the vendors' documented shapes, with bodies taken from the
//! fixtures under `tests/fixtures/jira` and `tests/fixtures/servicenow`.
//! Failures (401, 429, 503, slow responses, outages) are injected per route.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Map, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

mod common;

use blameless::config::{JiraConfig, JiraFieldMapping, Secret, ServiceNowConfig, TicketConfig, WebhookConfig};
use blameless::metrics::Metrics;
use blameless::model::{DependencyStatus, IncidentEvent, Record, TicketRecord};
use blameless::stages::archive::ArchiveStore;
use blameless::stages::ticket::webhook::signature;
use blameless::stages::ticket::{build_sink, TicketStage};
use blameless::transport::{Outcome, Reject, Stage};

const JIRA_EMAIL: &str = "postmortems@example.com";
const JIRA_TOKEN: &str = "jira-token-7f3a9c1e5d";
const JIRA_PROJECT: &str = "OPS";
const SERVICENOW_USER: &str = "blameless.integration";
const SERVICENOW_PASSWORD: &str = "servicenow-password-4b8d2f";
const WEBHOOK_SECRET: &str = "webhook-secret-2c6e0a";

/// Custom fields on the Jira double's create and edit screens. Any other
/// `customfield_*` gets Jira's response: 400 with the field's error.
const SCREEN_FIELDS: [&str; 4] = ["customfield_10050", "customfield_10051", "customfield_10052", "customfield_10053"];

/// Start and end of the test incidents: 2025-12-12T14:20:00Z and 14:38:20Z.
const START_MS: i64 = 1_765_549_200_000;
const END_MS: i64 = 1_765_550_300_000;

fn fixture(relative: &str) -> String {
    let path = format!("{}/../tests/fixtures/{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn fixture_json(relative: &str) -> Value {
    serde_json::from_str(&fixture(relative)).unwrap()
}

fn basic_auth(user: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    format!("Basic {encoded}")
}

fn query_value(request: &Request, name: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn header_value(request: &Request, name: &str) -> Option<String> {
    request.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

// ---------------------------------------------------------------------------
// The doubles
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Jira,
    ServiceNow,
}

impl Kind {
    fn system(self) -> &'static str {
        match self {
            Kind::Jira => "jira",
            Kind::ServiceNow => "servicenow",
        }
    }
}

/// A failure that a double serves in place of its normal response.
enum Fault {
    /// Responds with this response and leaves the double's tickets unchanged.
    Answer(ResponseTemplate),
    /// Carries the request out, then responds after this delay, as a
    /// server does that is slow but not down.
    Slow(Duration),
    /// Carries the request out, then responds with this response instead,
    /// as a server does that fails after the work was done.
    DoneThenAnswer(ResponseTemplate),
}

#[derive(Default)]
struct Faults {
    /// Response to every request while set: a system that is down.
    outage: Option<ResponseTemplate>,
    /// Faults for the next requests, whatever their route, in order.
    next_any: VecDeque<Fault>,
    /// Faults for the next requests of one route, in order.
    next_on_route: HashMap<&'static str, VecDeque<Fault>>,
}

impl Faults {
    fn take(&mut self, route: &'static str) -> Option<Fault> {
        if let Some(answer) = &self.outage {
            return Some(Fault::Answer(answer.clone()));
        }
        if let Some(fault) = self.next_any.pop_front() {
            return Some(fault);
        }
        self.next_on_route.get_mut(route).and_then(VecDeque::pop_front)
    }
}

/// A ticket held by a double: a Jira issue or a ServiceNow incident record.
struct Ticket {
    key: String,
    id: String,
    labels: Vec<String>,
    fields: Map<String, Value>,
    /// Jira comments or ServiceNow work notes, as plain text.
    notes: Vec<String>,
}

struct DoubleState {
    kind: Kind,
    base: String,
    faults: Faults,
    /// Route of every request received, failed and timed-out ones included.
    routes: Vec<&'static str>,
    tickets: Vec<Ticket>,
}

/// A stateful double of Jira or ServiceNow, mounted on every path of its
/// server.
#[derive(Clone)]
struct Double(Arc<Mutex<DoubleState>>);

impl Double {
    async fn start(kind: Kind) -> (MockServer, Double) {
        let server = MockServer::start().await;
        let double = Double(Arc::new(Mutex::new(DoubleState {
            kind,
            base: server.uri(),
            faults: Faults::default(),
            routes: Vec::new(),
            tickets: Vec::new(),
        })));
        Mock::given(wiremock::matchers::any())
            .respond_with(double.clone())
            .mount(&server)
            .await;
        (server, double)
    }

    fn state(&self) -> MutexGuard<'_, DoubleState> {
        self.0.lock().unwrap()
    }

    /// Requests received on `route`: search, create, update or comment.
    fn count(&self, route: &str) -> usize {
        self.state().routes.iter().filter(|seen| **seen == route).count()
    }

    fn requests(&self) -> usize {
        self.state().routes.len()
    }

    fn ticket_count(&self) -> usize {
        self.state().tickets.len()
    }

    fn notes_of(&self, key: &str) -> Vec<String> {
        let state = self.state();
        state.tickets.iter().find(|t| t.key == key).map(|t| t.notes.clone()).unwrap_or_default()
    }

    fn fail_next(&self, route: &'static str, fault: Fault) {
        self.state().faults.next_on_route.entry(route).or_default().push_back(fault);
    }

    fn fail_next_any(&self, fault: Fault) {
        self.state().faults.next_any.push_back(fault);
    }

    fn set_outage(&self, answer: Option<ResponseTemplate>) {
        self.state().faults.outage = answer;
    }

    /// Adds the ticket of `incident_id` as if an earlier run had made it,
    /// and returns its key and id.
    fn seed(&self, incident_id: &str) -> (String, String) {
        let mut state = self.state();
        let ticket = match state.kind {
            Kind::Jira => state.new_jira_issue(vec!["blameless".into(), format!("blameless-{incident_id}")], Map::new()),
            Kind::ServiceNow => {
                let mut columns = Map::new();
                columns.insert("correlation_id".into(), json!(incident_id));
                state.new_servicenow_record(columns)
            }
        };
        (ticket.key.clone(), ticket.id.clone())
    }

    fn unauthorized(kind: Kind) -> ResponseTemplate {
        match kind {
            // Jira's error collection shape; the message text is made up.
            Kind::Jira => ResponseTemplate::new(401)
                .set_body_json(json!({"errorMessages": ["The request has no valid credentials."], "errors": {}})),
            Kind::ServiceNow => ResponseTemplate::new(401)
                .set_body_raw(fixture("servicenow/table-error-401-user-not-authenticated.json"), "application/json"),
        }
    }
}

impl Respond for Double {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.state();
        let (route, target) = route_of(state.kind, request);
        state.routes.push(route);
        let mut delay = None;
        let mut replacement = None;
        match state.faults.take(route) {
            Some(Fault::Answer(answer)) => return answer,
            Some(Fault::Slow(wait)) => delay = Some(wait),
            Some(Fault::DoneThenAnswer(answer)) => replacement = Some(answer),
            None => {}
        }
        let answer = if !state.authorized(request) {
            Double::unauthorized(state.kind)
        } else {
            match state.kind {
                Kind::Jira => state.serve_jira(route, target, request),
                Kind::ServiceNow => state.serve_servicenow(route, target, request),
            }
        };
        match (replacement, delay) {
            (Some(replacement), _) => replacement,
            (None, Some(delay)) => answer.set_delay(delay),
            (None, None) => answer,
        }
    }
}

/// Names the route of a request, with the key or sys_id in its path.
fn route_of(kind: Kind, request: &Request) -> (&'static str, Option<String>) {
    let method = request.method.as_str();
    let path = request.url.path();
    match kind {
        Kind::Jira => {
            let Some(rest) = path.strip_prefix("/rest/api/3/") else { return ("unknown", None) };
            match (method, rest.strip_prefix("issue/")) {
                ("GET", _) if rest == "search/jql" => ("search", None),
                ("POST", _) if rest == "issue" => ("create", None),
                ("PUT", Some(key)) if !key.contains('/') => ("update", Some(key.to_string())),
                ("POST", Some(rest)) => match rest.strip_suffix("/comment") {
                    Some(key) => ("comment", Some(key.to_string())),
                    None => ("unknown", None),
                },
                _ => ("unknown", None),
            }
        }
        Kind::ServiceNow => match (method, path.strip_prefix("/api/now/table/incident")) {
            ("GET", Some("")) => ("search", None),
            ("POST", Some("")) => ("create", None),
            ("PATCH", Some(rest)) if rest.len() > 1 => ("update", Some(rest[1..].to_string())),
            _ => ("unknown", None),
        },
    }
}

/// Joins the text nodes of an Atlassian Document Format document.
fn adf_text(document: &Value) -> String {
    let mut lines = Vec::new();
    for block in document["content"].as_array().into_iter().flatten() {
        let line: String = block["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| node["text"].as_str())
            .collect();
        lines.push(line);
    }
    lines.join("\n")
}

impl DoubleState {
    fn authorized(&self, request: &Request) -> bool {
        let expected = match self.kind {
            Kind::Jira => basic_auth(JIRA_EMAIL, JIRA_TOKEN),
            Kind::ServiceNow => basic_auth(SERVICENOW_USER, SERVICENOW_PASSWORD),
        };
        header_value(request, "authorization").as_deref() == Some(expected.as_str())
    }

    fn new_jira_issue(&mut self, labels: Vec<String>, fields: Map<String, Value>) -> &Ticket {
        let number = self.tickets.len() + 1;
        self.tickets.push(Ticket {
            key: format!("{JIRA_PROJECT}-{number}"),
            id: (10_000 + number).to_string(),
            labels,
            fields,
            notes: Vec::new(),
        });
        self.tickets.last().unwrap()
    }

    /// Inserts a record like the Table API does: the documented full
    /// incident record, with the request's columns and a new sys_id and
    /// number.
    fn new_servicenow_record(&mut self, columns: Map<String, Value>) -> &Ticket {
        let number = self.tickets.len() + 1;
        let mut record = fixture_json("servicenow/table-incident-create-201-response-doc-example.json")["result"]
            .as_object()
            .unwrap()
            .clone();
        let sys_id = uuid::Uuid::new_v4().simple().to_string();
        let key = format!("INC{:07}", 10_004 + number);
        record.extend(columns);
        record.insert("sys_id".into(), json!(sys_id));
        record.insert("number".into(), json!(key));
        record.insert("state".into(), json!("1"));
        self.tickets.push(Ticket {
            key,
            id: sys_id,
            labels: Vec::new(),
            fields: record,
            notes: Vec::new(),
        });
        self.tickets.last().unwrap()
    }

    fn serve_jira(&mut self, route: &str, target: Option<String>, request: &Request) -> ResponseTemplate {
        let body: Value = request.body_json().unwrap_or(Value::Null);
        match route {
            "search" => {
                let jql = query_value(request, "jql").unwrap_or_default();
                let in_project = jql.contains(&format!("project = \"{JIRA_PROJECT}\""));
                let label = jql
                    .split_once("labels = \"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(label, _)| label.to_string());
                let issues: Vec<Value> = self
                    .tickets
                    .iter()
                    .filter(|ticket| in_project && label.as_ref().is_some_and(|label| ticket.labels.contains(label)))
                    .map(|ticket| json!({"id": ticket.id, "key": ticket.key, "fields": {"status": {"name": "To Do"}}}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"issues": issues, "isLast": true}))
            }
            "create" => {
                let Some(fields) = body["fields"].as_object() else {
                    return jira_error(400, json!({}), "The request body has no fields object.");
                };
                if let Some(rejection) = unknown_custom_field(fields) {
                    return rejection;
                }
                if fields["project"]["key"] != JIRA_PROJECT {
                    return jira_error(400, json!({"project": "The project does not exist."}), "");
                }
                let labels = fields["labels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|label| label.as_str().map(str::to_string))
                    .collect();
                let base = self.base.clone();
                let issue = self.new_jira_issue(labels, fields.clone());
                let mut answer = fixture_json("jira/cloud-v3-create-issue-201-response-doc-example.json");
                answer["id"] = json!(issue.id);
                answer["key"] = json!(issue.key);
                answer["self"] = json!(format!("{base}/rest/api/3/issue/{}", issue.id));
                ResponseTemplate::new(201).set_body_json(answer)
            }
            "update" | "comment" => {
                let key = target.unwrap_or_default();
                let Some(issue) = self.tickets.iter_mut().find(|ticket| ticket.key == key || ticket.id == key) else {
                    return jira_error(404, json!({}), "The issue was not found.");
                };
                if route == "comment" {
                    issue.notes.push(adf_text(&body["body"]));
                    let answer = json!({"id": (20_000 + issue.notes.len()).to_string(), "body": body["body"]});
                    return ResponseTemplate::new(201).set_body_json(answer);
                }
                let Some(fields) = body["fields"].as_object() else {
                    return jira_error(400, json!({}), "The request body has no fields object.");
                };
                if let Some(rejection) = unknown_custom_field(fields) {
                    return rejection;
                }
                issue.fields.extend(fields.clone());
                ResponseTemplate::new(204)
            }
            _ => jira_error(404, json!({}), "No such resource."),
        }
    }

    fn serve_servicenow(&mut self, route: &str, target: Option<String>, request: &Request) -> ResponseTemplate {
        let body: Value = request.body_json().unwrap_or(Value::Null);
        match route {
            "search" => {
                let query = query_value(request, "sysparm_query").unwrap_or_default();
                let clause = query.split('^').next().unwrap_or_default();
                let Some((column, value)) = clause.split_once('=') else {
                    return ResponseTemplate::new(200).set_body_json(json!({"result": []}));
                };
                let limit = query_value(request, "sysparm_limit")
                    .and_then(|limit| limit.parse().ok())
                    .unwrap_or(usize::MAX);
                let records: Vec<Value> = self
                    .tickets
                    .iter()
                    .filter(|ticket| ticket.fields.get(column).and_then(Value::as_str) == Some(value))
                    .take(limit)
                    .map(|ticket| selected_columns(&ticket.fields, request))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"result": records}))
            }
            "create" => {
                let Some(columns) = body.as_object() else {
                    return servicenow_error(400, "Exception while reading request", "The body is not a JSON object.");
                };
                let record = self.new_servicenow_record(columns.clone());
                let answer = json!({"result": selected_columns(&record.fields, request)});
                ResponseTemplate::new(201).set_body_json(answer)
            }
            "update" => {
                let sys_id = target.unwrap_or_default();
                let Some(record) = self.tickets.iter_mut().find(|ticket| ticket.id == sys_id) else {
                    return servicenow_error(404, "No Record found", "No incident record has this sys_id.");
                };
                let Some(columns) = body.as_object() else {
                    return servicenow_error(400, "Exception while reading request", "The body is not a JSON object.");
                };
                for (column, value) in columns {
                    if column == "work_notes" {
                        record.notes.push(value.as_str().unwrap_or_default().to_string());
                    } else {
                        record.fields.insert(column.clone(), value.clone());
                    }
                }
                let answer = json!({"result": selected_columns(&record.fields, request)});
                ResponseTemplate::new(200).set_body_json(answer)
            }
            _ => servicenow_error(400, "Requested URI does not represent any resource", "No such table or route."),
        }
    }
}

/// Builds Jira's error collection: `errorMessages` and `errors` keyed by field.
fn jira_error(status: u16, errors: Value, message: &str) -> ResponseTemplate {
    let messages: Vec<&str> = [message].into_iter().filter(|m| !m.is_empty()).collect();
    ResponseTemplate::new(status).set_body_json(json!({"errorMessages": messages, "errors": errors}))
}

/// Builds the ServiceNow error shape: `{"error": {"message", "detail"}, "status": "failure"}`.
fn servicenow_error(status: u16, message: &str, detail: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": {"message": message, "detail": detail}, "status": "failure"}))
}

/// Jira's response to a custom field that is not on the screen: the captured
/// 400, with the field id of the request in place of the captured one.
fn unknown_custom_field(fields: &Map<String, Value>) -> Option<ResponseTemplate> {
    let unknown = fields
        .keys()
        .find(|name| name.starts_with("customfield_") && !SCREEN_FIELDS.contains(&name.as_str()))?;
    let body = fixture("jira/create-issue-400-unknown-customfield-captured.json").replace("customfield_10001", unknown);
    Some(ResponseTemplate::new(400).set_body_raw(body, "application/json"))
}

/// Selects the columns that `sysparm_fields` names, or the whole record.
fn selected_columns(record: &Map<String, Value>, request: &Request) -> Value {
    match query_value(request, "sysparm_fields") {
        Some(wanted) => {
            let names: Vec<&str> = wanted.split(',').collect();
            let selected: Map<String, Value> = record
                .iter()
                .filter(|(name, _)| names.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            Value::Object(selected)
        }
        None => Value::Object(record.clone()),
    }
}

// ---------------------------------------------------------------------------
// Settings, stages and incidents
// ---------------------------------------------------------------------------

/// Retry settings small enough that a test waits milliseconds, not seconds.
fn small_retries() -> TicketConfig {
    TicketConfig {
        request_timeout_secs: 1,
        max_attempts: 3,
        backoff_initial_ms: 10,
        backoff_max_ms: 50,
        max_retry_after_secs: 2,
        ..TicketConfig::default()
    }
}

fn jira_fields() -> std::collections::BTreeMap<String, JiraFieldMapping> {
    let typed = |field: &str, kind: &str| JiraFieldMapping::Typed {
        field: field.into(),
        kind: kind.into(),
    };
    [
        ("data_snapshot_url", JiraFieldMapping::Id("customfield_10050".into())),
        ("severity", typed("customfield_10051", "option")),
        ("timestamp_start", typed("customfield_10052", "datetime")),
        ("failed_contacts", typed("customfield_10053", "number")),
    ]
    .into_iter()
    .map(|(name, mapping)| (name.to_string(), mapping))
    .collect()
}

fn ticket_config(kind: Kind, base: &str) -> TicketConfig {
    let mut config = small_retries();
    match kind {
        Kind::Jira => {
            config.sink = "jira".into();
            config.jira = JiraConfig {
                base_url: base.into(),
                email: JIRA_EMAIL.into(),
                api_token: Secret::new(JIRA_TOKEN),
                project_key: JIRA_PROJECT.into(),
                issue_type: "Postmortem".into(),
                fields: jira_fields(),
                priorities: [("sev1".to_string(), "Highest".to_string())].into_iter().collect(),
                ..JiraConfig::default()
            };
        }
        Kind::ServiceNow => {
            config.sink = "servicenow".into();
            config.servicenow = ServiceNowConfig {
                instance_url: base.into(),
                username: SERVICENOW_USER.into(),
                password: Secret::new(SERVICENOW_PASSWORD),
                fields: [
                    ("data_snapshot_url", "u_data_snapshot_url"),
                    ("platform_source", "u_platform_source"),
                    ("failed_contacts", "u_failed_contacts"),
                ]
                .into_iter()
                .map(|(name, column)| (name.to_string(), column.to_string()))
                .collect(),
                static_fields: [("category".to_string(), "software".to_string())].into_iter().collect(),
                ..ServiceNowConfig::default()
            };
        }
    }
    config
}

fn stage_for(config: &TicketConfig, dir: &Path) -> TicketStage {
    TicketStage::new(
        build_sink(config).unwrap(),
        ArchiveStore::open(dir.join("hot").to_str().unwrap()).unwrap(),
        ArchiveStore::open(dir.join("cold").to_str().unwrap()).unwrap(),
        300_000,
    )
    .with_circuit_wait(Duration::from_millis(50))
}

/// Builds a gated platform outage with a fresh incident id.
fn gated_incident() -> IncidentEvent {
    common::gated_incident(&uuid::Uuid::new_v4().to_string(), START_MS)
}

/// Builds a gated incident caused by a failing CRM while the platform is healthy.
fn dependency_incident() -> IncidentEvent {
    IncidentEvent {
        incident_type: "downstream_dependency".into(),
        affected_service: "crm_lookup".into(),
        type_reason: Some("dependency crm_salesforce failing; platform healthy".into()),
        dependencies: vec![DependencyStatus {
            name: "crm_salesforce".into(),
            status: "failing".into(),
            checked_at_ms: START_MS + 60_000,
        }],
        ..gated_incident()
    }
}

fn closed(incident: &IncidentEvent) -> IncidentEvent {
    IncidentEvent {
        change: "closed".into(),
        timestamp_end_ms: Some(END_MS),
        ..incident.clone()
    }
}

fn ledger_records(outcome: Outcome) -> Vec<TicketRecord> {
    let emits = match outcome {
        Ok(emits) => emits,
        Err(reject) => panic!("expected ledger records, got a rejection: {}", reject.reason),
    };
    emits
        .into_iter()
        .map(|emit| match emit.record {
            Record::Ticket(record) => {
                assert_eq!(emit.key, record.incident_id);
                record
            }
            other => panic!("expected a ticket record, got {other:?}"),
        })
        .collect()
}

fn rejection(outcome: Outcome) -> Reject {
    match outcome {
        Ok(emits) => panic!("expected a rejection, got {} ledger records", emits.len()),
        Err(reject) => reject,
    }
}

/// Sends one incident through the stage and returns its one ledger record.
async fn ticket_of(stage: &mut TicketStage, incident: &IncidentEvent) -> TicketRecord {
    let mut records = ledger_records(stage.handle(incident).await.unwrap());
    assert_eq!(records.len(), 1, "{records:?}");
    records.remove(0)
}

async fn received(server: &MockServer, verb: &str, request_path: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|request| request.method.as_str() == verb && request.url.path() == request_path)
        .collect()
}

/// Polls `condition` every 10 ms and fails the test after 10 s.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "still waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Log lines written while the guard lives, on the test's thread.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn start() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn secrets_of(kind: Kind) -> [String; 2] {
    match kind {
        Kind::Jira => [JIRA_TOKEN.to_string(), basic_auth(JIRA_EMAIL, JIRA_TOKEN)],
        Kind::ServiceNow => [SERVICENOW_PASSWORD.to_string(), basic_auth(SERVICENOW_USER, SERVICENOW_PASSWORD)],
    }
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

#[tokio::test]
async fn jira_gated_incident_creates_issue() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(Kind::Jira, &server.uri()), dir.path());
    let incident = gated_incident();
    let id = &incident.incident_id;

    let record = ticket_of(&mut stage, &incident).await;

    assert_eq!(record.status, "created");
    assert_eq!(record.system, "jira");
    assert_eq!(record.ticket_key, "OPS-1");
    assert_eq!(record.ticket_id.as_deref(), Some("10001"));
    assert_eq!(record.ticket_url, format!("{}/browse/OPS-1", server.uri()));
    assert!(record.data_snapshot_url.ends_with(&format!("/incidents/{id}/")), "{}", record.data_snapshot_url);
    assert_eq!(stage.ledger_entry(id), Some(&record));
    assert_eq!(double.count("search"), 1);
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.ticket_count(), 1);

    let searches = received(&server, "GET", "/rest/api/3/search/jql").await;
    let jql = query_value(&searches[0], "jql").unwrap();
    assert!(jql.contains(&format!("labels = \"blameless-{id}\"")), "{jql}");
    assert!(jql.contains("project = \"OPS\""), "{jql}");

    let creates = received(&server, "POST", "/rest/api/3/issue").await;
    let create = &creates[0];
    assert_eq!(header_value(create, "authorization"), Some(basic_auth(JIRA_EMAIL, JIRA_TOKEN)));
    let body: Value = create.body_json().unwrap();
    let fields = &body["fields"];
    assert_eq!(fields["project"], json!({"key": "OPS"}));
    assert_eq!(fields["issuetype"], json!({"name": "Postmortem"}));
    assert_eq!(fields["summary"], "[sev1] platform_outage on voice_inbound since 2025-12-12T14:20:00.000Z");
    assert_eq!(fields["description"]["type"], "doc");
    assert_eq!(fields["description"]["version"], 1);
    let description = adf_text(&fields["description"]);
    assert!(description.contains(&format!("Incident id: {id}")), "{description}");
    assert!(description.contains("120 of 300 contacts failed"), "{description}");
    assert_eq!(fields["labels"], json!(["blameless", format!("blameless-{id}")]));
    assert_eq!(fields["customfield_10050"], json!(record.data_snapshot_url));
    assert_eq!(fields["customfield_10051"], json!({"value": "sev1"}));
    assert_eq!(fields["customfield_10052"], "2025-12-12T14:20:00.000+0000");
    assert_eq!(fields["customfield_10053"].as_f64(), Some(120.0));
    assert_eq!(fields["priority"], json!({"name": "Highest"}));

    let payload: Value = serde_json::from_str(&record.payload_json).unwrap();
    assert_eq!(payload["incident_id"], json!(id));
}

#[tokio::test]
async fn servicenow_gated_incident_creates_record() {
    let (server, double) = Double::start(Kind::ServiceNow).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(Kind::ServiceNow, &server.uri()), dir.path());
    let incident = gated_incident();
    let id = &incident.incident_id;

    let record = ticket_of(&mut stage, &incident).await;

    let sys_id = double.state().tickets[0].id.clone();
    assert_eq!(record.status, "created");
    assert_eq!(record.system, "servicenow");
    assert_eq!(record.ticket_key, "INC0010005");
    assert_eq!(record.ticket_id.as_deref(), Some(sys_id.as_str()));
    assert_eq!(
        record.ticket_url,
        format!("{}/nav_to.do?uri=incident.do?sys_id={sys_id}", server.uri())
    );
    assert_eq!(stage.ledger_entry(id), Some(&record));
    assert_eq!(double.count("search"), 1);
    assert_eq!(double.count("create"), 1);

    let searches = received(&server, "GET", "/api/now/table/incident").await;
    let query = query_value(&searches[0], "sysparm_query").unwrap();
    assert!(query.starts_with(&format!("correlation_id={id}^")), "{query}");

    let creates = received(&server, "POST", "/api/now/table/incident").await;
    let create = &creates[0];
    assert_eq!(
        header_value(create, "authorization"),
        Some(basic_auth(SERVICENOW_USER, SERVICENOW_PASSWORD))
    );
    assert_eq!(query_value(create, "sysparm_fields").as_deref(), Some("sys_id,number,state"));
    let body: Value = create.body_json().unwrap();
    let columns = body.as_object().unwrap();
    for (column, value) in columns {
        assert!(value.is_string(), "the Table API takes strings, but {column} is {value}");
    }
    assert_eq!(
        body["short_description"],
        "[sev1] platform_outage on voice_inbound since 2025-12-12T14:20:00.000Z"
    );
    assert!(body["description"].as_str().unwrap().contains(&format!("Incident id: {id}")));
    assert_eq!(body["correlation_id"], json!(id));
    assert_eq!(body["correlation_display"], "Blameless");
    assert_eq!(body["category"], "software");
    assert_eq!(body["impact"], "1");
    assert_eq!(body["urgency"], "1");
    assert_eq!(body["u_data_snapshot_url"], json!(record.data_snapshot_url));
    assert_eq!(body["u_platform_source"], "genesys_cloud_cx");
    assert_eq!(body["u_failed_contacts"], "120");
}

// ---------------------------------------------------------------------------
// Update
// ---------------------------------------------------------------------------

#[tokio::test]
async fn jira_close_updates_same_issue() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(Kind::Jira, &server.uri()), dir.path());
    let incident = gated_incident();
    ticket_of(&mut stage, &incident).await;

    let record = ticket_of(&mut stage, &closed(&incident)).await;

    assert_eq!(record.status, "updated");
    assert_eq!(record.ticket_key, "OPS-1");
    assert_eq!(record.ticket_url, format!("{}/browse/OPS-1", server.uri()));
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.count("update"), 1);
    assert_eq!(double.count("comment"), 1);
    assert_eq!(double.count("search"), 1, "the ledger knows the ticket, so no second search");
    assert_eq!(double.ticket_count(), 1);

    let edits = received(&server, "PUT", "/rest/api/3/issue/OPS-1").await;
    let edit: Value = edits[0].body_json().unwrap();
    assert_eq!(edit["fields"]["customfield_10051"], json!({"value": "sev1"}));
    assert!(edit["fields"].get("summary").is_none(), "an update keeps the summary people edited: {edit}");
    let notes = double.notes_of("OPS-1");
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("closed at 2025-12-12T14:38:20.000Z"), "{}", notes[0]);
    assert!(notes[0].contains(&incident.incident_id), "{}", notes[0]);

    // The same record again changes nothing the ticket shows.
    let before = double.requests();
    let repeat = stage.handle(&closed(&incident)).await.unwrap();
    assert!(ledger_records(repeat).is_empty());
    assert_eq!(double.requests(), before);
}

#[tokio::test]
async fn servicenow_close_patches_work_notes() {
    let (server, double) = Double::start(Kind::ServiceNow).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(Kind::ServiceNow, &server.uri()), dir.path());
    let incident = gated_incident();
    let created = ticket_of(&mut stage, &incident).await;
    let sys_id = created.ticket_id.clone().unwrap();

    let record = ticket_of(&mut stage, &closed(&incident)).await;

    assert_eq!(record.status, "updated");
    assert_eq!(record.ticket_key, created.ticket_key);
    assert_eq!(record.ticket_id, created.ticket_id);
    assert_eq!(record.ticket_url, created.ticket_url);
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.count("update"), 1);
    assert_eq!(double.count("search"), 1);
    assert_eq!(double.ticket_count(), 1);

    let patches = received(&server, "PATCH", &format!("/api/now/table/incident/{sys_id}")).await;
    assert_eq!(patches.len(), 1);
    let patch: Value = patches[0].body_json().unwrap();
    let note = patch["work_notes"].as_str().unwrap();
    assert!(note.contains("closed at 2025-12-12T14:38:20.000Z"), "{note}");
    assert!(patch.get("short_description").is_none(), "an update keeps the text people edited: {patch}");
    assert_eq!(double.notes_of(&created.ticket_key), [note.to_string()]);

    let before = double.requests();
    let repeat = stage.handle(&closed(&incident)).await.unwrap();
    assert!(ledger_records(repeat).is_empty());
    assert_eq!(double.requests(), before);
}

#[tokio::test]
async fn jira_restored_ledger_skips_search() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ticket_config(Kind::Jira, &server.uri());
    let incident = gated_incident();
    let created = ticket_of(&mut stage_for(&config, dir.path()), &incident).await;

    // A restarted stage reads the tickets topic before its first record.
    let mut restarted = stage_for(&config, dir.path());
    restarted.restore(vec![Record::Ticket(created.clone())]);
    let repeat = restarted.handle(&incident).await.unwrap();
    assert!(ledger_records(repeat).is_empty());
    assert_eq!(double.count("search"), 1);

    let record = ticket_of(&mut restarted, &closed(&incident)).await;
    assert_eq!(record.status, "updated");
    assert_eq!(record.ticket_key, created.ticket_key);
    assert_eq!(double.count("search"), 1);
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.count("update"), 1);
}

// ---------------------------------------------------------------------------
// Search before create
// ---------------------------------------------------------------------------

async fn search_finds_existing_ticket(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ticket_config(kind, &server.uri());
    let incident = gated_incident();
    let (key, id) = double.seed(&incident.incident_id);

    // A stage with an empty ledger: the ticket was made, but its ledger
    // record never reached the tickets topic.
    let mut stage = stage_for(&config, dir.path());
    let record = ticket_of(&mut stage, &incident).await;

    assert_eq!(record.status, "created");
    assert_eq!(record.ticket_key, key);
    assert_eq!(record.ticket_id.as_deref(), Some(id.as_str()));
    assert_eq!(double.count("search"), 1);
    assert_eq!(double.count("create"), 0);
    assert_eq!(double.ticket_count(), 1);

    // The close that arrives first after such a stop updates the found ticket.
    let mut other_stage = stage_for(&config, dir.path());
    let update = ticket_of(&mut other_stage, &closed(&incident)).await;
    assert_eq!(update.status, "updated");
    assert_eq!(update.ticket_key, key);
    assert_eq!(double.count("create"), 0);
    assert_eq!(double.count("update"), 1);
}

#[tokio::test]
async fn jira_search_finds_existing_issue() {
    search_finds_existing_ticket(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_search_finds_existing_record() {
    search_finds_existing_ticket(Kind::ServiceNow).await;
}

async fn search_miss_creates_ticket(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    // The ticket of another incident must not match.
    let (other_key, _) = double.seed(&gated_incident().incident_id);
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path());

    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_ne!(record.ticket_key, other_key);
    assert_eq!(double.count("search"), 1);
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.ticket_count(), 2);
}

#[tokio::test]
async fn jira_search_miss_creates_issue() {
    search_miss_creates_ticket(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_search_miss_creates_record() {
    search_miss_creates_ticket(Kind::ServiceNow).await;
}

// ---------------------------------------------------------------------------
// Answers that retrying cannot fix
// ---------------------------------------------------------------------------

#[tokio::test]
async fn jira_unknown_custom_field_rejected() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ticket_config(Kind::Jira, &server.uri());
    // Not on the double's screens. Only dependency incidents have a
    // type_reason, so only they send the field.
    config
        .jira
        .fields
        .insert("type_reason".into(), JiraFieldMapping::Id("customfield_10001".into()));
    let metrics = Metrics::new();
    let mut stage = stage_for(&config, dir.path()).with_metrics(metrics.ticket());
    let refused = dependency_incident();

    let reject = rejection(stage.handle(&refused).await.unwrap());

    assert!(
        reject
            .reason
            .contains("Field 'customfield_10001' cannot be set. It is not on the appropriate screen, or unknown."),
        "{}",
        reject.reason
    );
    assert!(reject.reason.contains(&refused.incident_id), "{}", reject.reason);
    assert!(reject.reason.contains("HTTP 400"), "{}", reject.reason);
    assert_eq!(double.count("create"), 1, "a 400 is not retried");
    assert_eq!(stage.ledger_entry(&refused.incident_id), None);
    assert_eq!(metrics.ticket().rejected.with_label_values(&["jira"]).get(), 1);

    // The stage goes on: the next incident sends no type_reason.
    let record = ticket_of(&mut stage, &gated_incident()).await;
    assert_eq!(record.status, "created");
    assert_eq!(double.count("create"), 2);
    assert_eq!(double.ticket_count(), 1);
}

#[tokio::test]
async fn jira_invalid_option_on_update_rejected() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(Kind::Jira, &server.uri()), dir.path());
    let incident = gated_incident();
    ticket_of(&mut stage, &incident).await;
    let captured = fixture("jira/edit-issue-400-invalid-select-option-captured.json");
    double.fail_next(
        "update",
        Fault::Answer(ResponseTemplate::new(400).set_body_raw(captured, "application/json")),
    );

    let reject = rejection(stage.handle(&closed(&incident)).await.unwrap());

    assert!(reject.reason.contains("Invalid value 'customfield_13901' passed"), "{}", reject.reason);
    assert!(reject.reason.contains(&incident.incident_id), "{}", reject.reason);
    assert_eq!(double.count("update"), 1);
    assert_eq!(double.count("comment"), 0);
    assert_eq!(stage.ledger_entry(&incident.incident_id).unwrap().status, "created");
}

#[tokio::test]
async fn servicenow_forbidden_create_rejected() {
    let (server, double) = Double::start(Kind::ServiceNow).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut stage = stage_for(&ticket_config(Kind::ServiceNow, &server.uri()), dir.path()).with_metrics(metrics.ticket());
    // The Table API's error shape; the message text is made up.
    double.fail_next(
        "create",
        Fault::Answer(servicenow_error(403, "Operation Failed", "The account may not insert into incident.")),
    );
    let refused = gated_incident();

    let reject = rejection(stage.handle(&refused).await.unwrap());

    assert!(reject.reason.contains("The account may not insert into incident."), "{}", reject.reason);
    assert!(reject.reason.contains("HTTP 403"), "{}", reject.reason);
    assert!(reject.reason.contains(&refused.incident_id), "{}", reject.reason);
    assert_eq!(double.count("create"), 1);
    assert_eq!(metrics.ticket().rejected.with_label_values(&["servicenow"]).get(), 1);

    let record = ticket_of(&mut stage, &gated_incident()).await;
    assert_eq!(record.status, "created");
    assert_eq!(double.ticket_count(), 1);
}

// ---------------------------------------------------------------------------
// Credentials refused
// ---------------------------------------------------------------------------

async fn unauthorized_waits_then_creates(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ticket_config(kind, &server.uri());
    let (logs, _guard) = LogCapture::start();

    // The sink's own error names the settings and the response, not the secret.
    double.fail_next_any(Fault::Answer(Double::unauthorized(kind)));
    let sink = build_sink(&config).unwrap();
    let error = sink.find("probe").await.unwrap_err().to_string();
    assert!(error.contains("the credentials were rejected (HTTP 401"), "{error}");
    if kind == Kind::ServiceNow {
        assert!(error.contains("User Not Authenticated"), "{error}");
    }
    for secret in secrets_of(kind) {
        assert!(!error.contains(&secret), "{error}");
    }

    // The stage waits and probes again until the credentials work.
    for _ in 0..3 {
        double.fail_next_any(Fault::Answer(Double::unauthorized(kind)));
    }
    let mut stage = stage_for(&config, dir.path());
    let incident = gated_incident();
    let outcome = stage.handle(&incident).await.unwrap();
    let records = ledger_records(outcome);

    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, "created");
    assert_eq!(double.count("search"), 1 + 3 + 1, "the probe, three refusals, then the search that works");
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.ticket_count(), 1);
    let text = logs.text();
    assert!(text.contains("credentials were rejected"), "{text}");
    for secret in secrets_of(kind) {
        assert!(!text.contains(&secret), "{text}");
    }
}

#[tokio::test]
async fn jira_unauthorized_waits_then_creates() {
    unauthorized_waits_then_creates(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_unauthorized_waits_then_creates() {
    unauthorized_waits_then_creates(Kind::ServiceNow).await;
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

async fn rate_limit_honours_retry_after(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path());
    let limited = match kind {
        Kind::Jira => jira_error(429, json!({}), "Rate limit exceeded."),
        Kind::ServiceNow => servicenow_error(429, "Too many requests", "Rate limit of the user exceeded."),
    };
    double.fail_next("create", Fault::Answer(limited.insert_header("Retry-After", "1")));

    let started = Instant::now();
    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_eq!(double.count("create"), 2);
    assert_eq!(double.ticket_count(), 1);
    // The backoff settings (10 ms to 50 ms, with jitter) alone would retry
    // far sooner, so a wait this long shows that Retry-After: 1 was honoured.
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn jira_rate_limit_honours_retry_after() {
    rate_limit_honours_retry_after(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_rate_limit_honours_retry_after() {
    rate_limit_honours_retry_after(Kind::ServiceNow).await;
}

async fn unavailable_twice_then_created(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path()).with_metrics(metrics.ticket());
    for _ in 0..2 {
        double.fail_next("create", Fault::Answer(ResponseTemplate::new(503).set_body_string("upstream unavailable")));
    }

    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_eq!(double.count("create"), 3);
    assert_eq!(double.ticket_count(), 1);
    let circuit = metrics.ticket().circuit_open.with_label_values(&[kind.system()]).get();
    assert_eq!(circuit, 0, "three attempts are within max_attempts, so the circuit stays closed");
}

#[tokio::test]
async fn jira_503_twice_then_created() {
    unavailable_twice_then_created(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_503_twice_then_created() {
    unavailable_twice_then_created(Kind::ServiceNow).await;
}

/// Checks that a search with no response within request_timeout_secs is retried.
async fn slow_search_is_retried(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path());
    double.fail_next("search", Fault::Slow(Duration::from_millis(1500)));

    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_eq!(double.count("search"), 2);
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.ticket_count(), 1);
}

#[tokio::test]
async fn jira_slow_search_is_retried() {
    slow_search_is_retried(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_slow_search_is_retried() {
    slow_search_is_retried(Kind::ServiceNow).await;
}

/// Checks a create that the system carries out but answers after the
/// request timeout. The double has made the ticket when the client gives
/// up, as a real server may, so the stage must search before sending the
/// create again, and find it.
async fn slow_create_makes_one_ticket(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path());
    double.fail_next("create", Fault::Slow(Duration::from_millis(1500)));

    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_eq!(double.count("create"), 1, "the timed-out create was sent again");
    assert_eq!(double.count("search"), 2, "a search before the create and one after its timeout");
    assert_eq!(double.ticket_count(), 1);
    let first_key = double.state().tickets[0].key.clone();
    assert_eq!(record.ticket_key, first_key);
}

#[tokio::test]
async fn jira_slow_create_makes_one_issue() {
    slow_create_makes_one_ticket(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_slow_create_makes_one_record() {
    slow_create_makes_one_ticket(Kind::ServiceNow).await;
}

/// Checks a create that timed out before the system carried it out: the
/// search finds nothing, so the create is sent again.
async fn lost_create_is_sent_again(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path());
    let late = ResponseTemplate::new(502).set_delay(Duration::from_millis(1500));
    double.fail_next("create", Fault::Answer(late));

    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_eq!(double.count("search"), 2);
    assert_eq!(double.count("create"), 2);
    assert_eq!(double.ticket_count(), 1);
}

#[tokio::test]
async fn jira_lost_create_is_sent_again() {
    lost_create_is_sent_again(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_lost_create_is_sent_again() {
    lost_create_is_sent_again(Kind::ServiceNow).await;
}

/// Checks a 500 that comes after the ticket was made: the stage searches
/// before it sends the create again, and finds the ticket.
async fn server_error_after_create_finds_ticket(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path());
    let failed = ResponseTemplate::new(500).set_body_string("internal error while indexing");
    double.fail_next("create", Fault::DoneThenAnswer(failed));

    let record = ticket_of(&mut stage, &gated_incident()).await;

    assert_eq!(record.status, "created");
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.count("search"), 2);
    assert_eq!(double.ticket_count(), 1);
    let made = double.state().tickets[0].key.clone();
    assert_eq!(record.ticket_key, made);
}

#[tokio::test]
async fn jira_500_after_create_finds_issue() {
    server_error_after_create_finds_ticket(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_500_after_create_finds_record() {
    server_error_after_create_finds_ticket(Kind::ServiceNow).await;
}

// ---------------------------------------------------------------------------
// Circuit
// ---------------------------------------------------------------------------

async fn outage_keeps_waiting(kind: Kind) {
    let (server, double) = Double::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut stage = stage_for(&ticket_config(kind, &server.uri()), dir.path()).with_metrics(metrics.ticket());
    let gauge = metrics.ticket().circuit_open.with_label_values(&[kind.system()]);
    double.set_outage(Some(ResponseTemplate::new(503).set_body_string("maintenance")));
    let incident = gated_incident();

    let task = tokio::spawn(async move {
        let outcome = stage.handle(&incident).await;
        (stage, incident, outcome)
    });

    // Three attempts, then single probes while the circuit is open.
    wait_until("the stage probes after its three attempts", || double.requests() >= 6).await;
    let probed = double.requests();
    wait_until("the stage probes again", || double.requests() >= probed + 2).await;
    assert!(!task.is_finished(), "the stage gave up on a system that is down");
    assert_eq!(gauge.get(), 1);
    assert_eq!(double.count("create"), 0, "no create before the search has an answer");

    double.set_outage(None);
    let (stage, incident, outcome) = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    let records = ledger_records(outcome.unwrap());

    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, "created");
    assert_eq!(double.count("create"), 1);
    assert_eq!(double.ticket_count(), 1);
    assert_eq!(gauge.get(), 0);
    assert_eq!(metrics.ticket().rejected.with_label_values(&[kind.system()]).get(), 0);
    assert_eq!(stage.ledger_entry(&incident.incident_id), Some(&records[0]));
}

/// `blameless ticket send` builds the stage without waiting: an outage is
/// reported as that incident's failure after the attempts run out.
#[tokio::test]
async fn outage_without_waiting_fails_fast() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&ticket_config(Kind::Jira, &server.uri()), dir.path()).without_waiting();
    double.set_outage(Some(ResponseTemplate::new(503).set_body_string("maintenance")));
    let incident = gated_incident();

    let outcome = tokio::time::timeout(Duration::from_secs(10), stage.handle(&incident))
        .await
        .expect("the stage waited for a system that is down")
        .unwrap();

    let reject = outcome.unwrap_err();
    assert!(reject.reason.contains("HTTP 503: maintenance"), "{}", reject.reason);
    assert!(reject.reason.contains(&incident.incident_id), "{}", reject.reason);
    assert_eq!(double.count("create"), 0);
    assert!(stage.ledger_entry(&incident.incident_id).is_none());
}

#[tokio::test]
async fn jira_outage_keeps_waiting() {
    outage_keeps_waiting(Kind::Jira).await;
}

#[tokio::test]
async fn servicenow_outage_keeps_waiting() {
    outage_keeps_waiting(Kind::ServiceNow).await;
}

// ---------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------

fn webhook_config(base: &str) -> TicketConfig {
    TicketConfig {
        sink: "webhook".into(),
        webhook: WebhookConfig {
            url: format!("{base}/hooks/blameless"),
            secret: Secret::new(WEBHOOK_SECRET),
            ..WebhookConfig::default()
        },
        ..small_retries()
    }
}

#[tokio::test]
async fn webhook_delivery_is_signed() {
    let server = MockServer::start().await;
    let answer = json!({"key": "PM-7", "url": format!("{}/postmortems/PM-7", server.uri())});
    Mock::given(method("POST"))
        .and(path("/hooks/blameless"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&webhook_config(&server.uri()), dir.path());
    let incident = dependency_incident();
    let id = &incident.incident_id;

    let created = ticket_of(&mut stage, &incident).await;
    let updated = ticket_of(&mut stage, &closed(&incident)).await;

    assert_eq!(created.status, "created");
    assert_eq!(created.system, "webhook");
    assert_eq!(created.ticket_key, "PM-7");
    assert_eq!(created.ticket_url, format!("{}/postmortems/PM-7", server.uri()));
    assert_eq!(updated.status, "updated");
    assert_eq!(updated.ticket_key, "PM-7");

    let deliveries = received(&server, "POST", "/hooks/blameless").await;
    assert_eq!(deliveries.len(), 2);
    let mut idempotency_keys = Vec::new();
    for (delivery, event) in deliveries.iter().zip(["ticket.created", "ticket.updated"]) {
        let signed = header_value(delivery, "x-blameless-signature").unwrap();
        assert_eq!(signed, signature(WEBHOOK_SECRET.as_bytes(), &delivery.body));
        assert_ne!(signed, signature(b"another-secret", &delivery.body));
        assert_eq!(header_value(delivery, "x-blameless-event").as_deref(), Some(event));
        assert_eq!(header_value(delivery, "content-type").as_deref(), Some("application/json"));
        let key = header_value(delivery, "idempotency-key").unwrap();
        assert!(key.starts_with(&format!("{id}:")), "{key}");
        idempotency_keys.push(key);

        let body: Value = delivery.body_json().unwrap();
        assert_eq!(body["event"], event);
        assert_eq!(body["incident_id"], json!(id));
        assert_eq!(body["incident_type"], "downstream_dependency");
        assert_eq!(body["timestamp_start"], "2025-12-12T14:20:00.000Z");
        assert_eq!(body["severity"], "sev1");
        assert_eq!(body["affected_service"], "crm_lookup");
        assert_eq!(body["platform_source"], "genesys_cloud_cx");
        assert_eq!(body["data_snapshot_url"], json!(created.data_snapshot_url));
        assert_eq!(body["dependency_status"][0]["name"], "crm_salesforce");
        assert_eq!(body["dependency_status"][0]["status"], "failing");
        assert_eq!(body["dependency_status"][0]["checked_at"], "2025-12-12T14:21:00.000Z");
    }
    assert_ne!(idempotency_keys[0], idempotency_keys[1]);

    let first: Value = deliveries[0].body_json().unwrap();
    let second: Value = deliveries[1].body_json().unwrap();
    assert_eq!(first["timestamp_end"], Value::Null);
    assert_eq!(second["timestamp_end"], "2025-12-12T14:38:20.000Z");
    assert!(second["note"].as_str().unwrap().contains("closed at"), "{second}");
}

#[tokio::test]
async fn webhook_retry_keeps_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/blameless"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/hooks/blameless"))
        .respond_with(ResponseTemplate::new(202))
        .with_priority(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&webhook_config(&server.uri()), dir.path());
    let incident = gated_incident();

    let record = ticket_of(&mut stage, &incident).await;

    // A receiver that answers without a body: the incident id is the key.
    assert_eq!(record.ticket_key, incident.incident_id);
    assert_eq!(record.ticket_url, format!("{}/hooks/blameless", server.uri()));
    let deliveries = received(&server, "POST", "/hooks/blameless").await;
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].body, deliveries[1].body);
    assert_eq!(
        header_value(&deliveries[0], "idempotency-key"),
        header_value(&deliveries[1], "idempotency-key")
    );
    assert_eq!(
        header_value(&deliveries[1], "x-blameless-signature"),
        Some(signature(WEBHOOK_SECRET.as_bytes(), &deliveries[1].body))
    );
}

#[tokio::test]
async fn webhook_400_is_rejected_with_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/blameless"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "affected_service crm_lookup is not registered"})))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut stage = stage_for(&webhook_config(&server.uri()), dir.path());
    let incident = dependency_incident();

    let reject = rejection(stage.handle(&incident).await.unwrap());

    assert!(reject.reason.contains("affected_service crm_lookup is not registered"), "{}", reject.reason);
    assert!(reject.reason.contains("HTTP 400"), "{}", reject.reason);
    assert!(reject.reason.contains(&incident.incident_id), "{}", reject.reason);
    assert_eq!(received(&server, "POST", "/hooks/blameless").await.len(), 1);
    assert_eq!(stage.ledger_entry(&incident.incident_id), None);
}

// ---------------------------------------------------------------------------
// Review mode and the command line
// ---------------------------------------------------------------------------

#[tokio::test]
async fn review_mode_writes_outbox_only() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ticket_config(Kind::Jira, &server.uri());
    config.review = true;
    config.outbox_dir = dir.path().join("outbox");

    assert_eq!(build_sink(&config).unwrap().system(), "outbox");
    let mut stage = stage_for(&config, dir.path());
    let incident = gated_incident();
    let record = ticket_of(&mut stage, &incident).await;
    let update = ticket_of(&mut stage, &closed(&incident)).await;

    assert_eq!(record.system, "outbox");
    assert_eq!(update.status, "updated");
    let file = dir.path().join("outbox").join(format!("{}.json", incident.incident_id));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written["incident_id"], json!(incident.incident_id));
    assert_eq!(written["timestamp_end"], "2025-12-12T14:38:20.000Z");
    assert_eq!(double.requests(), 0);
    assert!(server.received_requests().await.unwrap().is_empty());
}

fn ticket_send(config: &Path, input: &Path, ledger: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blameless"))
        .args(["ticket", "send", "--config"])
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--ledger")
        .arg(ledger)
        .env_remove("BLAMELESS_CONFIG")
        .env_remove("BLAMELESS__MASK__KEY")
        .env("BLAMELESS__TICKET__JIRA__API_TOKEN", JIRA_TOKEN)
        .env("BLAMELESS_LOG", "debug")
        .output()
        .unwrap()
}

#[tokio::test]
async fn ticket_send_is_idempotent() {
    let (server, double) = Double::start(Kind::Jira).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display();
    let config = dir.path().join("blameless.toml");
    std::fs::write(
        &config,
        format!(
            r#"[archive]
url = "{root}/archive/hot"
cold_url = "{root}/archive/cold"

[ticket]
sink = "jira"
outbox_dir = "{root}/outbox"
request_timeout_secs = 1
max_attempts = 3
backoff_initial_ms = 10
backoff_max_ms = 50
max_retry_after_secs = 2
circuit_open_secs = 1

[ticket.jira]
base_url = "{base}"
email = "{JIRA_EMAIL}"
project_key = "{JIRA_PROJECT}"
issue_type = "Postmortem"
"#,
            base = server.uri()
        ),
    )
    .unwrap();
    let first = gated_incident();
    let second = dependency_incident();
    let below_gate = IncidentEvent {
        change: "closed".into(),
        gated: false,
        gate_reason: None,
        timestamp_end_ms: Some(START_MS + 120_000),
        ..gated_incident()
    };
    let input = dir.path().join("INCIDENTS.jsonl");
    let lines: Vec<String> = [&first, &below_gate, &second]
        .iter()
        .map(|incident| serde_json::to_string(incident).unwrap())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let ledger = dir.path().join("ledger.jsonl");

    let run = ticket_send(&config, &input, &ledger);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let base = server.uri();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("created  OPS-1  {base}/browse/OPS-1"),
            format!("below the gate  {}  (no ticket)", below_gate.incident_id),
            format!("created  OPS-2  {base}/browse/OPS-2"),
        ]
    );
    assert_eq!(double.count("create"), 2);
    assert_eq!(std::fs::read_to_string(&ledger).unwrap().lines().count(), 2);

    let again = ticket_send(&config, &input, &ledger);
    let stdout_again = String::from_utf8_lossy(&again.stdout).into_owned();
    let stderr_again = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(again.status.success(), "{stdout_again}\n{stderr_again}");
    assert_eq!(
        stdout_again.lines().collect::<Vec<_>>(),
        [
            format!("unchanged  OPS-1  {base}/browse/OPS-1"),
            format!("below the gate  {}  (no ticket)", below_gate.incident_id),
            format!("unchanged  OPS-2  {base}/browse/OPS-2"),
        ]
    );
    assert_eq!(double.count("create"), 2);
    assert_eq!(double.count("search"), 2, "the second run finds both in its ledger file");

    // Without the ledger file, the search finds both tickets.
    std::fs::remove_file(&ledger).unwrap();
    let rebuilt = ticket_send(&config, &input, &ledger);
    let stdout_rebuilt = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    let stderr_rebuilt = String::from_utf8_lossy(&rebuilt.stderr).into_owned();
    assert!(rebuilt.status.success(), "{stdout_rebuilt}\n{stderr_rebuilt}");
    assert_eq!(double.count("create"), 2);
    assert_eq!(double.count("search"), 4);
    assert_eq!(double.ticket_count(), 2);
    assert!(stdout_rebuilt.contains("created  OPS-1"), "{stdout_rebuilt}");

    for text in [&stdout, &stderr, &stdout_again, &stderr_again, &stdout_rebuilt, &stderr_rebuilt] {
        for secret in secrets_of(Kind::Jira) {
            assert!(!text.contains(&secret), "{text}");
        }
    }
}
