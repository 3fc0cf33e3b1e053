//! Jira Cloud and Jira Service Management, through the Jira platform REST
//! API version 3:
//!
//! - create: `POST /rest/api/3/issue`, response `201 {"id","key","self"}`;
//! - update: `PUT /rest/api/3/issue/{key}` (204), then a comment through
//!   `POST /rest/api/3/issue/{key}/comment` (201);
//! - search: `GET /rest/api/3/search/jql` for the label
//!   `blameless-<incident id>` that every ticket carries.
//!
//! Authentication is HTTP Basic with the account email and an API token.
//! Errors come back as `{"errorMessages": [...], "errors": {field: message}}`.

use async_trait::async_trait;
use chrono::DateTime;
use serde_json::{json, Map, Value};

use super::http::{json_body, HttpClient, RetryPolicy};
use super::sink::{SinkError, TicketRef, TicketSink};
use super::TicketPayload;
use crate::config::{JiraConfig, TicketConfig};

const SYSTEM: &str = "jira";
/// Maximum length of a Jira summary, in characters.
const SUMMARY_LIMIT: usize = 255;

pub struct JiraSink {
    http: HttpClient,
    config: JiraConfig,
    base: String,
}

/// Returns the label that marks the ticket of an incident, which the
/// search before a create looks for.
pub fn incident_label(incident_id: &str) -> String {
    format!("blameless-{incident_id}")
}

/// Wraps lines of text as an Atlassian Document Format document, one
/// paragraph per line.
pub fn adf(lines: &[String]) -> Value {
    let paragraphs: Vec<Value> = lines
        .iter()
        .map(|line| json!({"type": "paragraph", "content": [{"type": "text", "text": line}]}))
        .collect();
    json!({"type": "doc", "version": 1, "content": paragraphs})
}

/// Jira's datetime format, such as `2025-12-12T15:01:53.383+0000`.
fn jira_datetime(iso: &str) -> Value {
    match DateTime::parse_from_rfc3339(iso) {
        Ok(time) => Value::String(time.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()),
        Err(_) => Value::Null,
    }
}

/// Shapes a payload value for a Jira field of `kind`.
fn shaped(value: Value, kind: &str) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    let text = match &value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match kind {
        "adf" => adf(&[text]),
        "number" => value.as_f64().map_or(Value::Null, |n| json!(n)),
        "option" => json!({ "value": text }),
        "datetime" => jira_datetime(&text),
        "labels" => json!([text.split_whitespace().collect::<Vec<_>>().join("_")]),
        _ => Value::String(text),
    }
}

fn truncate(text: String, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text,
    }
}

impl JiraSink {
    pub fn new(config: &TicketConfig) -> Result<JiraSink, SinkError> {
        let http = HttpClient::new(
            SYSTEM,
            RetryPolicy::from_config(config),
            "ticket.jira.email and BLAMELESS__TICKET__JIRA__API_TOKEN (or ticket.jira.api_token_file)",
        )?;
        Ok(JiraSink {
            http,
            config: config.jira.clone(),
            base: config.jira.base_url.trim_end_matches('/').to_string(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .client()
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.config.email, Some(self.config.api_token.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    fn browse_url(&self, key: &str) -> String {
        format!("{}/browse/{key}", self.base)
    }

    /// Builds the mapped custom fields and the priority, which both a
    /// create and an update send.
    fn mapped_fields(&self, payload: &TicketPayload) -> Map<String, Value> {
        let mut fields = Map::new();
        for (name, mapping) in &self.config.fields {
            let value = shaped(payload.field(name), mapping.kind());
            fields.insert(mapping.field().to_string(), value);
        }
        if let Some(priority) = self.config.priorities.get(&payload.severity) {
            fields.insert("priority".into(), json!({ "name": priority }));
        }
        fields
    }

    /// Builds the body of a create: project, issue type, summary, description,
    /// labels and the mapped fields. A field without a value is left out,
    /// so a create never fails on an empty optional field.
    pub fn create_body(&self, payload: &TicketPayload) -> Value {
        let mut labels = self.config.labels.clone();
        labels.push(incident_label(&payload.incident_id));
        let mut fields = Map::new();
        fields.insert("project".into(), json!({ "key": self.config.project_key }));
        fields.insert("issuetype".into(), json!({ "name": self.config.issue_type }));
        fields.insert("summary".into(), Value::String(truncate(payload.summary(), SUMMARY_LIMIT)));
        fields.insert("description".into(), adf(&payload.description_lines()));
        fields.insert("labels".into(), json!(labels));
        fields.extend(self.mapped_fields(payload).into_iter().filter(|(_, value)| !value.is_null()));
        json!({ "fields": fields })
    }

    /// Builds the body of an update: the mapped fields and the priority only, so
    /// the summary and description that people edited stay theirs. A field
    /// without a value is cleared.
    pub fn update_body(&self, payload: &TicketPayload) -> Value {
        json!({ "fields": self.mapped_fields(payload) })
    }
}

#[async_trait]
impl TicketSink for JiraSink {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    async fn find(&self, incident_id: &str) -> Result<Option<TicketRef>, SinkError> {
        let operation = format!("search for the ticket of incident {incident_id}");
        let jql = format!(
            "project = \"{}\" AND labels = \"{}\" ORDER BY created ASC",
            self.config.project_key,
            incident_label(incident_id)
        );
        let response = self
            .http
            .send(&operation, || {
                self.request(reqwest::Method::GET, "/rest/api/3/search/jql").query(&[
                    ("jql", jql.as_str()),
                    ("fields", "status"),
                    ("maxResults", "1"),
                ])
            })
            .await?;
        let body = json_body(SYSTEM, &operation, response).await?;
        let found = body["issues"].as_array().and_then(|issues| issues.first());
        Ok(found.and_then(|issue| {
            let key = issue["key"].as_str()?;
            Some(TicketRef {
                key: key.to_string(),
                id: issue["id"].as_str().map(str::to_string),
                url: self.browse_url(key),
            })
        }))
    }

    async fn create(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError> {
        let operation = format!("create the ticket of incident {}", payload.incident_id);
        let body = self.create_body(payload);
        let response = self
            .http
            .send_create(&operation, || self.request(reqwest::Method::POST, "/rest/api/3/issue").json(&body))
            .await?;
        let created = json_body(SYSTEM, &operation, response).await?;
        let Some(key) = created["key"].as_str() else {
            return Err(SinkError::Rejected {
                system: SYSTEM,
                operation,
                status: 201,
                body: format!("the response has no issue key: {created}"),
            });
        };
        Ok(TicketRef {
            key: key.to_string(),
            id: created["id"].as_str().map(str::to_string),
            url: self.browse_url(key),
        })
    }

    async fn update(&self, ticket: &TicketRef, payload: &TicketPayload, note: &str) -> Result<TicketRef, SinkError> {
        let operation = format!("update ticket {} of incident {}", ticket.key, payload.incident_id);
        let body = self.update_body(payload);
        let path = format!("/rest/api/3/issue/{}", ticket.key);
        if body["fields"].as_object().is_some_and(|fields| !fields.is_empty()) {
            self.http
                .send(&operation, || self.request(reqwest::Method::PUT, &path).json(&body))
                .await?;
        }
        if self.config.comment_on_update {
            let operation = format!("comment on ticket {} of incident {}", ticket.key, payload.incident_id);
            let comment = json!({ "body": adf(&[note.to_string()]) });
            let path = format!("/rest/api/3/issue/{}/comment", ticket.key);
            self.http
                .send(&operation, || self.request(reqwest::Method::POST, &path).json(&comment))
                .await?;
        }
        Ok(TicketRef {
            key: ticket.key.clone(),
            id: ticket.id.clone(),
            url: self.browse_url(&ticket.key),
        })
    }
}
