//! The `[ticket]` section: which ticket system gets the postmortem tickets,
//! how its fields are filled, and how failing requests are retried.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret};

/// Ticket payload fields that a field mapping may name, besides
/// `payload` (the whole payload as JSON text) and `summary`.
pub const MAPPABLE_FIELDS: [&str; 17] = [
    "incident_id",
    "incident_type",
    "timestamp_start",
    "timestamp_end",
    "severity",
    "affected_service",
    "data_snapshot_url",
    "platform_source",
    "dependency_status",
    "signal_type",
    "failed_contacts",
    "total_contacts",
    "gate_reason",
    "type_reason",
    "recurrences",
    "summary",
    "payload",
];

pub const SINKS: [&str; 4] = ["outbox", "webhook", "jira", "servicenow"];

/// The severities that the window stage gives incidents.
pub const SEVERITIES: [&str; 4] = ["sev1", "sev2", "sev3", "sev4"];

fn check_severity_keys<'a>(setting: &str, keys: impl Iterator<Item = &'a String>, problems: &mut Vec<String>) {
    for key in keys {
        if !SEVERITIES.contains(&key.as_str()) {
            problems.push(format!(
                "{setting} has the severity {key:?}, which incidents never have; use {}",
                SEVERITIES.join(", ")
            ));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketConfig {
    /// Destination of the tickets: `outbox` (one JSON file per ticket in
    /// `outbox_dir`), `webhook`, `jira` or `servicenow`. Default `outbox`.
    pub sink: String,
    /// Folder of the outbox sink, and of review mode. Default `out/tickets`.
    pub outbox_dir: PathBuf,
    /// Review mode: tickets go to the outbox folder whatever `sink` is,
    /// so a replay never touches a live ticket system. Default false.
    pub review: bool,
    /// Timeout of one request to the ticket system, in seconds. Default 10.
    pub request_timeout_secs: u64,
    /// Attempts of one request before the circuit opens. Default 5.
    pub max_attempts: u32,
    /// First backoff delay after a 5xx or a connection error, in
    /// milliseconds; it doubles with each attempt, with jitter. Default 500.
    pub backoff_initial_ms: u64,
    /// Maximum backoff delay, in milliseconds. Default 30000.
    pub backoff_max_ms: u64,
    /// Longest Retry-After that is honoured, in seconds; a longer one is cut
    /// to this. Default 300.
    pub max_retry_after_secs: u64,
    /// While the ticket system is down, the stage waits this long between
    /// single probe requests, keeping its place in the stream. Default 30.
    pub circuit_open_secs: u64,
    pub webhook: WebhookConfig,
    pub jira: JiraConfig,
    pub servicenow: ServiceNowConfig,
}

impl Default for TicketConfig {
    fn default() -> TicketConfig {
        TicketConfig {
            sink: "outbox".into(),
            outbox_dir: PathBuf::from("out/tickets"),
            review: false,
            request_timeout_secs: 10,
            max_attempts: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            max_retry_after_secs: 300,
            circuit_open_secs: 30,
            webhook: WebhookConfig::default(),
            jira: JiraConfig::default(),
            servicenow: ServiceNowConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Address the payload is POSTed to.
    pub url: String,
    /// HMAC-SHA-256 key of the signature header. Set it through
    /// `BLAMELESS__TICKET__WEBHOOK__SECRET` or `secret_file`. When empty, no
    /// signature is sent.
    pub secret: Secret,
    pub secret_file: Option<PathBuf>,
    /// Header that carries `sha256=<hex HMAC of the body>`. Default
    /// `X-Blameless-Signature`.
    pub signature_header: String,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            url: String::new(),
            secret: Secret::default(),
            secret_file: None,
            signature_header: "X-Blameless-Signature".into(),
        }
    }
}

/// Mapping of a payload field onto a Jira field: the field id, and the
/// shape of its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JiraFieldMapping {
    /// Just the field id, such as `customfield_10050`: a text value.
    Id(String),
    Typed {
        field: String,
        /// `text` (default), `adf` (rich text), `number`, `option` (a
        /// select list), `datetime` or `labels`.
        #[serde(default = "default_jira_kind")]
        kind: String,
    },
}

fn default_jira_kind() -> String {
    "text".into()
}

/// Jira fields that the sink fills itself: a mapping onto one would
/// overwrite them, and without the label the search before a create
/// finds nothing.
pub const JIRA_RESERVED_FIELDS: [&str; 6] = ["summary", "description", "labels", "project", "issuetype", "priority"];

pub const JIRA_FIELD_KINDS: [&str; 6] = ["text", "adf", "number", "option", "datetime", "labels"];

impl JiraFieldMapping {
    pub fn field(&self) -> &str {
        match self {
            JiraFieldMapping::Id(field) | JiraFieldMapping::Typed { field, .. } => field,
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            JiraFieldMapping::Id(_) => "text",
            JiraFieldMapping::Typed { kind, .. } => kind,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JiraConfig {
    /// Site address, such as `https://your-team.atlassian.net`.
    pub base_url: String,
    /// Account email of the API token.
    pub email: String,
    /// API token. Set it through `BLAMELESS__TICKET__JIRA__API_TOKEN` or
    /// `api_token_file`.
    pub api_token: Secret,
    pub api_token_file: Option<PathBuf>,
    /// Project key, such as `OPS`.
    pub project_key: String,
    /// Issue type name, such as `Postmortem` or `[System] Post-incident review`.
    pub issue_type: String,
    /// Labels added to every ticket, besides `blameless-<incident id>`,
    /// which the search before a create looks for.
    pub labels: Vec<String>,
    /// Payload field to Jira field, such as
    /// `data_snapshot_url = "customfield_10050"` or
    /// `severity = { field = "customfield_10051", kind = "option" }`.
    pub fields: BTreeMap<String, JiraFieldMapping>,
    /// Severity to priority name, such as `sev1 = "Highest"`. Empty: the
    /// priority is left to Jira's default.
    pub priorities: BTreeMap<String, String>,
    /// Whether a change of an incident also adds a comment. Default true.
    pub comment_on_update: bool,
}

impl Default for JiraConfig {
    fn default() -> JiraConfig {
        JiraConfig {
            base_url: String::new(),
            email: String::new(),
            api_token: Secret::default(),
            api_token_file: None,
            project_key: String::new(),
            issue_type: "Task".into(),
            labels: vec!["blameless".into()],
            fields: BTreeMap::new(),
            priorities: BTreeMap::new(),
            comment_on_update: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceNowConfig {
    /// Instance address, such as `https://your-instance.service-now.com`.
    pub instance_url: String,
    /// Table of the records. Default `incident`.
    pub table: String,
    /// Basic-auth user and password. Set the password through
    /// `BLAMELESS__TICKET__SERVICENOW__PASSWORD` or `password_file`.
    pub username: String,
    pub password: Secret,
    pub password_file: Option<PathBuf>,
    /// OAuth bearer token, instead of a user and password. Set it through
    /// `BLAMELESS__TICKET__SERVICENOW__TOKEN` or `token_file`.
    pub token: Secret,
    pub token_file: Option<PathBuf>,
    /// Column that contains the incident id, which the search before a create
    /// looks for. Default `correlation_id`.
    pub correlation_field: String,
    /// Payload field to column, such as `data_snapshot_url = "u_data_snapshot_url"`.
    pub fields: BTreeMap<String, String>,
    /// Columns set to a fixed value on create, such as
    /// `assignment_group = "<sys_id>"` or `category = "software"`.
    pub static_fields: BTreeMap<String, String>,
    /// Severity to impact and urgency (1 high, 2 medium, 3 low). Default:
    /// sev1 1, sev2 2, others 3.
    pub impact: BTreeMap<String, String>,
    pub urgency: BTreeMap<String, String>,
}

impl Default for ServiceNowConfig {
    fn default() -> ServiceNowConfig {
        let levels: BTreeMap<String, String> = [("sev1", "1"), ("sev2", "2"), ("sev3", "3"), ("sev4", "3")]
            .into_iter()
            .map(|(severity, level)| (severity.to_string(), level.to_string()))
            .collect();
        ServiceNowConfig {
            instance_url: String::new(),
            table: "incident".into(),
            username: String::new(),
            password: Secret::default(),
            password_file: None,
            token: Secret::default(),
            token_file: None,
            correlation_field: "correlation_id".into(),
            fields: BTreeMap::new(),
            static_fields: BTreeMap::new(),
            impact: levels.clone(),
            urgency: levels,
        }
    }
}

/// Replaces `secret` with the contents of `file`, without surrounding
/// whitespace, when a file is set.
pub(super) fn read_secret_file(setting: &'static str, file: &Option<PathBuf>, secret: &mut Secret) -> Result<(), ConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::SecretFile {
            setting,
            path: path.clone(),
            error,
        })?;
        if text.trim().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{setting} names {}, which is empty; put the secret in that file",
                path.display()
            )));
        }
        *secret = Secret::new(text.trim());
    }
    Ok(())
}

fn check_url(setting: &str, value: &str, example: &str, problems: &mut Vec<String>) {
    if value.is_empty() {
        problems.push(format!("{setting} is empty; set it to the system's address, such as {example}"));
        return;
    }
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        _ => problems.push(format!(
            "{setting} is {value:?}, which is not an http or https URL; set it to an address such as {example}"
        )),
    }
}

fn check_field_names<'a>(section: &str, names: impl Iterator<Item = &'a String>, problems: &mut Vec<String>) {
    for name in names {
        if !MAPPABLE_FIELDS.contains(&name.as_str()) {
            problems.push(format!(
                "{section} names the payload field {name:?}, which does not exist; use one of {}",
                MAPPABLE_FIELDS.join(", ")
            ));
        }
    }
}

impl TicketConfig {
    pub(super) fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret_file("ticket.webhook.secret_file", &self.webhook.secret_file, &mut self.webhook.secret)?;
        read_secret_file("ticket.jira.api_token_file", &self.jira.api_token_file, &mut self.jira.api_token)?;
        read_secret_file(
            "ticket.servicenow.password_file",
            &self.servicenow.password_file,
            &mut self.servicenow.password,
        )?;
        read_secret_file("ticket.servicenow.token_file", &self.servicenow.token_file, &mut self.servicenow.token)?;
        Ok(())
    }

    /// Returns the sink that review mode or the settings choose.
    pub fn effective_sink(&self) -> &str {
        if self.review {
            "outbox"
        } else {
            &self.sink
        }
    }

    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if !SINKS.contains(&self.sink.as_str()) {
            problems.push(format!(
                "ticket.sink is {:?}; set it to one of {}",
                self.sink,
                SINKS.join(", ")
            ));
        }
        if self.request_timeout_secs == 0 {
            problems.push("ticket.request_timeout_secs is 0; set a number of seconds such as 10".into());
        }
        if self.max_attempts == 0 {
            problems.push("ticket.max_attempts is 0; set 1 or more, such as 5".into());
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            problems.push(format!(
                "ticket.backoff_max_ms is {}, below ticket.backoff_initial_ms ({}); set it to {} or more",
                self.backoff_max_ms, self.backoff_initial_ms, self.backoff_initial_ms
            ));
        }
        if self.circuit_open_secs == 0 {
            problems.push("ticket.circuit_open_secs is 0; set a number of seconds such as 30".into());
        }
        match self.effective_sink() {
            "webhook" => self.webhook.validate(problems),
            "jira" => self.jira.validate(problems),
            "servicenow" => self.servicenow.validate(problems),
            _ => {}
        }
    }
}

impl WebhookConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        check_url("ticket.webhook.url", &self.url, "https://hooks.example.com/blameless", problems);
        if self.signature_header.is_empty() || reqwest::header::HeaderName::from_bytes(self.signature_header.as_bytes()).is_err() {
            problems.push(format!(
                "ticket.webhook.signature_header is {:?}, which is not a valid header name; use letters, digits and dashes, such as X-Blameless-Signature",
                self.signature_header
            ));
        }
    }
}

impl JiraConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        check_url("ticket.jira.base_url", &self.base_url, "https://your-team.atlassian.net", problems);
        if self.email.is_empty() {
            problems.push("ticket.jira.email is empty; set it to the account email of the API token".into());
        }
        if self.api_token.is_empty() {
            problems.push(
                "ticket.jira.api_token is empty; set BLAMELESS__TICKET__JIRA__API_TOKEN or ticket.jira.api_token_file to an API token of that account"
                    .into(),
            );
        }

        if self.project_key.is_empty() {
            problems.push("ticket.jira.project_key is empty; set it to the key of the project, such as OPS".into());
        } else if !self.project_key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!(
                "ticket.jira.project_key is {:?}; a Jira project key has only letters, digits and '_', such as OPS",
                self.project_key
            ));
        }
        if self.issue_type.is_empty() {
            problems.push("ticket.jira.issue_type is empty; set it to an issue type name of the project, such as Task".into());
        }
        for label in &self.labels {
            if label.is_empty() || label.chars().any(char::is_whitespace) {
                problems.push(format!("ticket.jira.labels has {label:?}; Jira labels cannot be empty or contain spaces"));
            }
        }
        check_severity_keys("ticket.jira.priorities", self.priorities.keys(), problems);

        check_field_names("ticket.jira.fields", self.fields.keys(), problems);
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, mapping) in &self.fields {
            self.validate_mapping(name, mapping, problems);
            if let Some(other) = targets.insert(mapping.field(), name) {
                problems.push(format!(
                    "ticket.jira.fields.{other} and ticket.jira.fields.{name} both map to {:?}; give each its own field",
                    mapping.field()
                ));
            }
        }
    }

    /// Checks one field mapping: a field id that Blameless does not fill
    /// itself, and a kind that the payload field can fill.
    fn validate_mapping(&self, name: &str, mapping: &JiraFieldMapping, problems: &mut Vec<String>) {
        if mapping.field().is_empty() {
            problems.push(format!("ticket.jira.fields.{name} has an empty field id; set it such as \"customfield_10050\""));
        }
        if JIRA_RESERVED_FIELDS.contains(&mapping.field()) {
            problems.push(format!(
                "ticket.jira.fields.{name} maps to {:?}, which Blameless fills itself; map it to a custom field such as \"customfield_10050\"",
                mapping.field()
            ));
        }

        if !JIRA_FIELD_KINDS.contains(&mapping.kind()) {
            problems.push(format!(
                "ticket.jira.fields.{name} has kind {:?}; use one of {}",
                mapping.kind(),
                JIRA_FIELD_KINDS.join(", ")
            ));
            return;
        }
        let fitting = match mapping.kind() {
            "number" => ["failed_contacts", "total_contacts", "recurrences"].as_slice(),
            "datetime" => ["timestamp_start", "timestamp_end"].as_slice(),
            _ => return,
        };
        if !fitting.contains(&name) {
            problems.push(format!(
                "ticket.jira.fields.{name} has kind {:?}, which the payload field {name} cannot fill; use text, or map a field that fits ({})",
                mapping.kind(),
                fitting.join(", ")
            ));
        }
    }
}

impl ServiceNowConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        check_url(
            "ticket.servicenow.instance_url",
            &self.instance_url,
            "https://your-instance.service-now.com",
            problems,
        );
        if self.table.is_empty() || !self.table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!(
                "ticket.servicenow.table is {:?}; set it to a table name such as incident",
                self.table
            ));
        }
        if self.token.is_empty() && (self.username.is_empty() || self.password.is_empty()) {
            problems.push(
                "ticket.servicenow has no credentials; set ticket.servicenow.username and BLAMELESS__TICKET__SERVICENOW__PASSWORD (or password_file), or BLAMELESS__TICKET__SERVICENOW__TOKEN (or token_file)"
                    .into(),
            );
        }
        if self.correlation_field.is_empty() {
            problems.push("ticket.servicenow.correlation_field is empty; set it to a column such as correlation_id".into());
        }
        check_severity_keys("ticket.servicenow.impact", self.impact.keys(), problems);
        check_severity_keys("ticket.servicenow.urgency", self.urgency.keys(), problems);
        check_field_names("ticket.servicenow.fields", self.fields.keys(), problems);
        let reserved = [
            "short_description",
            "description",
            "work_notes",
            "impact",
            "urgency",
            "correlation_display",
            self.correlation_field.as_str(),
        ];
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, column) in self.fields.iter().chain(self.static_fields.iter()) {
            if reserved.contains(&column.as_str()) {
                problems.push(format!(
                    "ticket.servicenow maps {name} to the column {column:?}, which Blameless fills itself; map it to another column such as \"u_{name}\""
                ));
            }
            if let Some(other) = targets.insert(column, name) {
                problems.push(format!(
                    "ticket.servicenow maps both {other} and {name} to the column {column:?}; give each its own column"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn load(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path)).map_err(|e| e.to_string())
    }

    /// Builds a Jira sink's settings with `project_key` (a TOML string)
    /// and the lines of its `[ticket.jira.fields]`.
    fn jira_settings(project_key: &str, fields: &str) -> String {
        format!(
            "[ticket]\nsink = \"jira\"\n[ticket.jira]\nbase_url = \"https://your-team.atlassian.net\"\nemail = \"sre@example.com\"\napi_token = \"token-from-a-test\"\nproject_key = {project_key}\n[ticket.jira.fields]\n{fields}\n"
        )
    }

    #[test]
    fn shipped_configuration_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/blameless.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.ticket.sink, "outbox");
    }

    #[test]
    fn jira_mapping_reads_both_forms() {
        let config = load(&jira_settings(
            "\"OPS\"",
            "data_snapshot_url = \"customfield_10050\"\nseverity = { field = \"customfield_10051\", kind = \"option\" }",
        ))
        .unwrap();
        let fields = &config.ticket.jira.fields;
        assert_eq!((fields["data_snapshot_url"].field(), fields["data_snapshot_url"].kind()), ("customfield_10050", "text"));
        assert_eq!((fields["severity"].field(), fields["severity"].kind()), ("customfield_10051", "option"));
    }

    #[test]
    fn jira_without_settings_names_each_fix() {
        let error = load("[ticket]\nsink = \"jira\"\n[ticket.jira.fields]\nseverity_level = \"customfield_1\"\n").unwrap_err();
        for expected in [
            "ticket.jira.base_url is empty",
            "ticket.jira.email is empty",
            "BLAMELESS__TICKET__JIRA__API_TOKEN",
            "ticket.jira.project_key is empty",
            "\"severity_level\", which does not exist",
        ] {
            assert!(error.contains(expected), "missing {expected:?} in {error}");
        }
    }

    #[test]
    fn review_mode_needs_no_credentials() {
        let config = load("[ticket]\nsink = \"servicenow\"\nreview = true\n").unwrap();
        assert_eq!(config.ticket.effective_sink(), "outbox");
        let error = load("[ticket]\nsink = \"servicenow\"\n").unwrap_err();
        assert!(error.contains("ticket.servicenow has no credentials"), "{error}");
    }

    #[test]
    fn unknown_sink_lists_the_sinks() {
        let error = load("[ticket]\nsink = \"zendesk\"\n").unwrap_err();
        assert!(error.contains("\"zendesk\""), "{error}");
        assert!(error.contains("outbox, webhook, jira, servicenow"), "{error}");
    }

    #[test]
    fn secret_file_replaces_the_token_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "token-from-a-file\n").unwrap();
        let config = load(&format!(
            "[ticket]\nsink = \"servicenow\"\n[ticket.servicenow]\ninstance_url = \"https://your-instance.service-now.com\"\ntoken_file = {:?}\n",
            token.display().to_string()
        ))
        .unwrap();
        assert_eq!(config.ticket.servicenow.token.expose(), "token-from-a-file");
        assert!(!format!("{config:?}").contains("token-from-a-file"));
    }

    #[test]
    fn mapping_onto_builtin_fields_is_rejected() {
        let error = load(&jira_settings(
            "'OPS\" OR project = \"X'",
            "incident_id = \"labels\"\nseverity = \"customfield_1\"\naffected_service = \"customfield_1\"\n[ticket.jira.priorities]\ncritical = \"Highest\"",
        ))
        .unwrap_err();
        for expected in [
            "ticket.jira.fields.incident_id maps to \"labels\", which Blameless fills itself",
            "both map to \"customfield_1\"",
            "a Jira project key has only letters",
            "ticket.jira.priorities has the severity \"critical\"",
        ] {
            assert!(error.contains(expected), "missing {expected:?} in {error}");
        }
    }
}
