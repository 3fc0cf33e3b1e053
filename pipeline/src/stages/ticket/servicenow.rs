//! ServiceNow, through the Table API on the incident table (or another
//! configured table):
//!
//! - create: `POST /api/now/table/{table}`, response `201 {"result": {...}}`;
//! - update: `PATCH /api/now/table/{table}/{sys_id}` (200), with a work note
//!   that describes what changed;
//! - search: `GET /api/now/table/{table}?sysparm_query=correlation_id=<id>`.
//!
//! Every value in the Table API is a string. Authentication is HTTP Basic,
//! or an OAuth bearer token. Errors come back as
//! `{"error": {"message", "detail"}, "status": "failure"}`.

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::http::{json_body, HttpClient, RetryPolicy};
use super::sink::{SinkError, TicketRef, TicketSink};
use super::TicketPayload;
use crate::config::{ServiceNowConfig, TicketConfig};

const SYSTEM: &str = "servicenow";
/// Columns requested in every response: only what the ledger keeps.
const RESPONSE_FIELDS: &str = "sys_id,number,state";
/// Maximum length of the incident table's short_description, in characters.
const SHORT_DESCRIPTION_LIMIT: usize = 160;

pub struct ServiceNowSink {
    http: HttpClient,
    config: ServiceNowConfig,
    base: String,
}

/// Converts a payload value to the Table API's text form.
fn text(value: Value) -> Value {
    match value {
        Value::Null => Value::String(String::new()),
        Value::String(_) => value,
        other => Value::String(other.to_string()),
    }
}

impl ServiceNowSink {
    pub fn new(config: &TicketConfig) -> Result<ServiceNowSink, SinkError> {
        let http = HttpClient::new(
            SYSTEM,
            RetryPolicy::from_config(config),
            "ticket.servicenow.username and BLAMELESS__TICKET__SERVICENOW__PASSWORD, or BLAMELESS__TICKET__SERVICENOW__TOKEN",
        )?;
        Ok(ServiceNowSink {
            http,
            config: config.servicenow.clone(),
            base: config.servicenow.instance_url.trim_end_matches('/').to_string(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .client()
            .request(method, format!("{}/api/now/table/{}{path}", self.base, self.config.table))
            .header(reqwest::header::ACCEPT, "application/json");
        if self.config.token.is_empty() {
            request.basic_auth(&self.config.username, Some(self.config.password.expose()))
        } else {
            request.bearer_auth(self.config.token.expose())
        }
    }

    fn record_url(&self, sys_id: &str) -> String {
        format!("{}/nav_to.do?uri={}.do?sys_id={sys_id}", self.base, self.config.table)
    }

    /// Reads the ticket out of a record of a response.
    fn reference(&self, record: &Value, operation: &str, status: u16) -> Result<TicketRef, SinkError> {
        let (Some(sys_id), Some(number)) = (record["sys_id"].as_str(), record["number"].as_str()) else {
            return Err(SinkError::Rejected {
                system: SYSTEM,
                operation: operation.to_string(),
                status,
                body: format!("the response has no sys_id and number: {record}"),
            });
        };
        Ok(TicketRef {
            key: number.to_string(),
            id: Some(sys_id.to_string()),
            url: self.record_url(sys_id),
        })
    }

    /// Columns that follow the incident: the mapped fields, impact and
    /// urgency.
    fn tracked_columns(&self, payload: &TicketPayload) -> Map<String, Value> {
        let mut columns = Map::new();
        for (name, column) in &self.config.fields {
            columns.insert(column.clone(), text(payload.field(name)));
        }
        if let Some(impact) = self.config.impact.get(&payload.severity) {
            columns.insert("impact".into(), Value::String(impact.clone()));
        }
        if let Some(urgency) = self.config.urgency.get(&payload.severity) {
            columns.insert("urgency".into(), Value::String(urgency.clone()));
        }
        columns
    }

    /// Builds the body of a create: the short description, the description, the
    /// correlation column, the fixed columns and the tracked ones.
    pub fn create_body(&self, payload: &TicketPayload) -> Value {
        let mut columns = Map::new();
        for (column, value) in &self.config.static_fields {
            columns.insert(column.clone(), Value::String(value.clone()));
        }
        let summary: String = payload.summary().chars().take(SHORT_DESCRIPTION_LIMIT).collect();
        columns.insert("short_description".into(), Value::String(summary));
        columns.insert("description".into(), Value::String(payload.description_lines().join("\n")));
        columns.insert(self.config.correlation_field.clone(), Value::String(payload.incident_id.clone()));
        if self.config.correlation_field == "correlation_id" {
            columns.insert("correlation_display".into(), Value::String("Blameless".into()));
        }
        columns.extend(self.tracked_columns(payload));
        Value::Object(columns)
    }

    /// Builds the body of an update: the tracked columns and a work note. The
    /// descriptions that people edited stay theirs.
    pub fn update_body(&self, payload: &TicketPayload, note: &str) -> Value {
        let mut columns = self.tracked_columns(payload);
        columns.insert("work_notes".into(), Value::String(note.to_string()));
        Value::Object(columns)
    }
}

#[async_trait]
impl TicketSink for ServiceNowSink {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    async fn find(&self, incident_id: &str) -> Result<Option<TicketRef>, SinkError> {
        let operation = format!("search for the ticket of incident {incident_id}");
        let query = format!("{}={incident_id}^ORDERBYsys_created_on", self.config.correlation_field);
        let response = self
            .http
            .send(&operation, || {
                self.request(reqwest::Method::GET, "").query(&[
                    ("sysparm_query", query.as_str()),
                    ("sysparm_fields", RESPONSE_FIELDS),
                    ("sysparm_limit", "1"),
                ])
            })
            .await?;
        let body = json_body(SYSTEM, &operation, response).await?;
        match body["result"].as_array().and_then(|records| records.first()) {
            Some(record) => Ok(Some(self.reference(record, &operation, 200)?)),
            None => Ok(None),
        }
    }

    async fn create(&self, payload: &TicketPayload) -> Result<TicketRef, SinkError> {
        let operation = format!("create the ticket of incident {}", payload.incident_id);
        let body = self.create_body(payload);
        let response = self
            .http
            .send_create(&operation, || {
                self.request(reqwest::Method::POST, "")
                    .query(&[("sysparm_fields", RESPONSE_FIELDS), ("sysparm_exclude_reference_link", "true")])
                    .json(&body)
            })
            .await?;
        let status = response.status().as_u16();
        let created = json_body(SYSTEM, &operation, response).await?;
        self.reference(&created["result"], &operation, status)
    }

    async fn update(&self, ticket: &TicketRef, payload: &TicketPayload, note: &str) -> Result<TicketRef, SinkError> {
        let operation = format!("update ticket {} of incident {}", ticket.key, payload.incident_id);
        // A ledger record from before sys_ids were kept names the number
        // only: the search finds the sys_id.
        let sys_id = match &ticket.id {
            Some(id) => id.clone(),
            None => match self.find(&payload.incident_id).await?.and_then(|found| found.id) {
                Some(id) => id,
                None => {
                    return Err(SinkError::Rejected {
                        system: SYSTEM,
                        operation,
                        status: 404,
                        body: format!("no record has {} = {}", self.config.correlation_field, payload.incident_id),
                    })
                }
            },
        };
        let body = self.update_body(payload, note);
        let path = format!("/{sys_id}");
        let response = self
            .http
            .send(&operation, || {
                self.request(reqwest::Method::PATCH, &path)
                    .query(&[("sysparm_fields", RESPONSE_FIELDS), ("sysparm_exclude_reference_link", "true")])
                    .json(&body)
            })
            .await?;
        let status = response.status().as_u16();
        let updated = json_body(SYSTEM, &operation, response).await?;
        self.reference(&updated["result"], &operation, status)
            .or_else(|_| Ok(TicketRef { id: Some(sys_id.clone()), ..ticket.clone() }))
    }
}

