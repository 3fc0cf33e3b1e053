//! The blameless-document check: finds personal data and per-person figures
//! in postmortem text and ticket payloads, so that reviews see aggregate
//! metrics only. The ticket stage runs it on every payload before writing
//! the ticket, and `blameless check` runs it on a reviewer's draft.
//!
//! A finding names its rule and where it is (a JSON path or a line number),
//! and shows the offending value only in scrubbed form, so a report of
//! findings can be logged and kept.
//!
//! Rules:
//!
//! - `phone_number`, `email`, `card_number`: text that [`scrub_text`]
//!   changes. UUIDs and ISO-8601 timestamps are taken out first, because
//!   incident, event and conversation ids and event times identify no person
//!   and are documented as kept.
//! - `pseudonym`: a mask pseudonym, `agent_<key id>_<hex>`, `phone_...` or
//!   `customer_...`. A pseudonym is stable per person, so a review that
//!   quotes one points at a person.
//! - `per_person_figure`: phrases such as "per agent", "by agent" or "agent
//!   ... handled 12", and JSON keys such as `agent_id`, `per_agent`,
//!   `agent_scores` or `calls_by_agent`.
//! - `person_field`: a JSON key that names a person or a personal value
//!   (`firstName`, `userName`, `assignee`, `ani`, `userId` and the other keys
//!   that [`is_personal_key`] lists). A bare `name` counts only inside an
//!   object whose key names a person (`user`, `agent`, `assignee`...), so
//!   the name of a dependency check passes.
//!
//! NOTE: a person's name in free text, such as "Dana called twice", is not
//! detected, because no pattern separates it from other capitalized words.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::scrub::{is_personal_key, scrub_text};
use crate::stages::ticket::TicketPayload;

/// The rule that a finding broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    PhoneNumber,
    Email,
    CardNumber,
    SocialSecurityNumber,
    Iban,
    Pseudonym,
    PerPersonFigure,
    PersonField,
}

impl Rule {
    /// Returns the rule's name as reports and dead-letter reasons show it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::PhoneNumber => "phone_number",
            Rule::Email => "email",
            Rule::CardNumber => "card_number",
            Rule::SocialSecurityNumber => "social_security_number",
            Rule::Iban => "iban",
            Rule::Pseudonym => "pseudonym",
            Rule::PerPersonFigure => "per_person_figure",
            Rule::PersonField => "person_field",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// A JSON path such as `$.dependency_status[0].name`, or `line 12` in
    /// text.
    pub path: String,
    /// The offending value, scrubbed: personal values are replaced by tokens
    /// such as `[PHONE]` or `[PSEUDONYM]`, and a person field's value is
    /// `[REDACTED]`. At most [`EXCERPT_MAX_CHARS`] characters.
    pub excerpt: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}: {}", self.rule, self.path, self.excerpt)
    }
}

/// Maximum length of a finding's excerpt, in characters.
pub const EXCERPT_MAX_CHARS: usize = 120;

/// A mask pseudonym (`stages::mask::Masker::pseudonym`): the kind, the key
/// id and 32 hex digits.
static PSEUDONYM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:agent|phone|customer)_\w+?_[0-9a-f]{32}\b").expect("pseudonym pattern"));

/// A UUID in its hyphenated form, as incident, event and conversation ids
/// are written.
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b").expect("uuid pattern")
});

/// An ISO-8601 date-time, such as `2025-12-12T14:20:01.488Z`.
static ISO_TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?").expect("timestamp pattern")
});

/// Phrases that break a figure down by person: "per agent", "by agents",
/// "per-customer". "By" is left out for callers, customers and users, as in
/// "reported by customers", which breaks nothing down.
static PER_PERSON_PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:(?:per|by)[\s_-]+(?:agent|employee|representative)|per[\s_-]+(?:caller|customer|user))s?\b")
        .expect("per-person pattern")
});

/// An agent with a count of their own: "agent 7 handled 12 calls", "Agent
/// [PSEUDONYM] dropped 3". At most 60 characters may sit between the word
/// `agent` and the verb, within one sentence.
static AGENT_FIGURE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\bagent\b[^.\n]{0,60}?\b(?:handled|answered|dropped|missed|abandoned|transferred|closed|scored|averaged)\s+\d",
    )
    .expect("agent figure pattern")
});

/// JSON keys, lower case without `_` and `-`, that hold a figure or an id
/// per person.
const PER_PERSON_KEYS: [&str; 12] = [
    "agentid",
    "agentids",
    "agentpseudonym",
    "phonepseudonym",
    "customerpseudonym",
    "agentscore",
    "agentscores",
    "agentname",
    "agentnames",
    "agentuserid",
    "agentstats",
    "agentmetrics",
];

/// Key fragments, lower case without `_` and `-`, that break a figure down
/// by person wherever they occur in a key: `per_agent`, `calls_by_agent`.
const PER_PERSON_KEY_PARTS: [&str; 6] = ["peragent", "byagent", "percaller", "bycaller", "percustomer", "bycustomer"];

/// JSON keys, lower case without `_` and `-`, that name a person beyond
/// those of [`is_personal_key`].
const PERSON_KEYS: [&str; 14] = [
    "assignee",
    "reporter",
    "author",
    "owner",
    "callername",
    "customername",
    "contactname",
    "employeename",
    "personname",
    "surname",
    "givenname",
    "familyname",
    "nickname",
    "middlename",
];

/// Keys of objects that describe a person, so that their `name` is a
/// person's name.
const PERSON_OBJECT_KEYS: [&str; 14] = [
    "user",
    "users",
    "agent",
    "agents",
    "customer",
    "customers",
    "caller",
    "contact",
    "externalcontact",
    "participant",
    "participants",
    "assignee",
    "reporter",
    "person",
];

fn canonical_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Checks postmortem text line by line.
pub fn check_text(text: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (index, line) in text.lines().enumerate() {
        check_string(line, &format!("line {}", index + 1), &mut findings);
    }
    findings
}

/// Checks a JSON document: every key and every string value. Numbers and
/// booleans are not checked, because in a review document they are
/// aggregate figures, and a per-person figure shows in its key.
pub fn check_json(value: &Value) -> Vec<Finding> {
    let mut findings = Vec::new();
    walk(value, "$", None, &mut findings);
    findings
}

/// Checks a ticket payload as the ticket stage sends it.
///
/// Of `data_snapshot_url` only the part from `incidents/` on is checked: the
/// part before it is the configured cold-tier location, not event data, and
/// a bucket name or folder with a long number in it would otherwise reject
/// every ticket.
pub fn check_ticket(payload: &TicketPayload) -> Vec<Finding> {
    let mut value = serde_json::to_value(payload).expect("a ticket payload serializes to JSON");
    if let Some(Value::String(url)) = value.get_mut("data_snapshot_url") {
        if let Some(start) = url.rfind("incidents/") {
            *url = url[start..].to_string();
        }
    }
    check_json(&value)
}

/// Checks a document that is either JSON or text: text that parses as JSON
/// is checked as JSON, anything else line by line.
pub fn check_document(text: &str) -> Vec<Finding> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => check_json(&value),
        Err(_) => check_text(text),
    }
}

/// Returns a one-line summary of findings for a dead-letter reason or a log
/// line: the rules and paths, with no value.
pub fn summarize(findings: &[Finding]) -> String {
    let parts: Vec<String> = findings.iter().map(|f| format!("{} at {}", f.rule, f.path)).collect();
    parts.join(", ")
}

/// Returns a copy of a JSON document with every value that has a finding
/// replaced by its excerpt, so it can be kept where personal data must not
/// go, such as a dead letter.
pub fn redact_json(value: &Value) -> Value {
    let mut copy = value.clone();
    redact_in_place(&mut copy, None);
    copy
}

fn redact_in_place(value: &mut Value, parent_key: Option<&str>) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = map.get_mut(&key).expect("key was just listed");
                if key_rule(&key, parent_key).is_some() && !child.is_null() {
                    *child = Value::String("[REDACTED]".into());
                } else {
                    redact_in_place(child, Some(&key));
                }
            }
            // Keys can carry values too, such as pseudonyms as map keys.
            let renamed: Vec<(String, String)> = map
                .keys()
                .filter_map(|key| {
                    let clean = scrub_string(key);
                    (clean != *key).then(|| (key.clone(), clean))
                })
                .collect();
            for (old, new) in renamed {
                if let Some(child) = map.remove(&old) {
                    map.insert(new, child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| redact_in_place(item, parent_key)),
        Value::String(text) => {
            let mut findings = Vec::new();
            check_string(text, "", &mut findings);
            if !findings.is_empty() {
                *text = scrub_string(text);
            }
        }
        _ => {}
    }
}

fn walk(value: &Value, path: &str, parent_key: Option<&str>, findings: &mut Vec<Finding>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                let rule = key_rule(key, parent_key);
                if rule.is_none() {
                    // A key can itself be a personal value, such as a
                    // pseudonym or a phone number used as a map key.
                    check_string(key, &format!("{child_path} (key)"), findings);
                }
                match rule {
                    Some(rule) if !child.is_null() => findings.push(Finding {
                        rule,
                        path: child_path,
                        excerpt: "[REDACTED]".into(),
                    }),
                    _ => walk(child, &child_path, Some(key), findings),
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{index}]"), parent_key, findings);
            }
        }
        Value::String(text) => check_string(text, path, findings),
        _ => {}
    }
}

/// Returns the rule that a key breaks by its name alone, given the key of
/// the object it is in.
fn key_rule(key: &str, parent_key: Option<&str>) -> Option<Rule> {
    let canonical = canonical_key(key);
    if PER_PERSON_KEYS.contains(&canonical.as_str()) || PER_PERSON_KEY_PARTS.iter().any(|part| canonical.contains(part)) {
        return Some(Rule::PerPersonFigure);
    }
    if canonical == "name" {
        let in_person = parent_key.is_some_and(|parent| PERSON_OBJECT_KEYS.contains(&canonical_key(parent).as_str()));
        return in_person.then_some(Rule::PersonField);
    }
    if is_personal_key(key) || PERSON_KEYS.contains(&canonical.as_str()) {
        return Some(Rule::PersonField);
    }
    None
}

/// Adds the findings of one string: at most one per rule.
fn check_string(text: &str, path: &str, findings: &mut Vec<Finding>) {
    let mut rules = Vec::new();
    if PSEUDONYM.is_match(text) {
        rules.push(Rule::Pseudonym);
    }
    let without_safe = remove_safe_tokens(&PSEUDONYM.replace_all(text, "[PSEUDONYM]"));
    let scrubbed = scrub_text(&without_safe);
    let tokens = [
        ("[PHONE]", Rule::PhoneNumber),
        ("[EMAIL]", Rule::Email),
        ("[CARD]", Rule::CardNumber),
        ("[SSN]", Rule::SocialSecurityNumber),
        ("[IBAN]", Rule::Iban),
    ];
    for (token, rule) in tokens {
        if scrubbed.matches(token).count() > without_safe.matches(token).count() {
            rules.push(rule);
        }
    }
    if PER_PERSON_PHRASE.is_match(text) || AGENT_FIGURE.is_match(&scrubbed) {
        rules.push(Rule::PerPersonFigure);
    }
    if rules.is_empty() {
        return;
    }
    let excerpt = excerpt(&scrub_string(text));
    for rule in rules {
        findings.push(Finding {
            rule,
            path: path.to_string(),
            excerpt: excerpt.clone(),
        });
    }
}

/// Replaces UUIDs and ISO-8601 timestamps with digit-free placeholders, so
/// that the phone and card patterns do not see their digits.
fn remove_safe_tokens(text: &str) -> String {
    let text = UUID.replace_all(text, "[UUID]");
    ISO_TIMESTAMP.replace_all(&text, "[TIME]").into_owned()
}

/// Scrubs a string for display: pseudonyms become `[PSEUDONYM]`, and phone
/// numbers, emails and card numbers their tokens. UUIDs and timestamps are
/// kept.
fn scrub_string(text: &str) -> String {
    let text = PSEUDONYM.replace_all(text, "[PSEUDONYM]");
    // Scrub the pieces between safe tokens, so the tokens survive.
    let mut safe: Vec<(usize, usize)> = UUID
        .find_iter(&text)
        .chain(ISO_TIMESTAMP.find_iter(&text))
        .map(|m| (m.start(), m.end()))
        .collect();
    safe.sort();
    let mut out = String::with_capacity(text.len());
    let mut position = 0;
    for (start, end) in safe {
        if start < position {
            continue;
        }
        out.push_str(&scrub_text(&text[position..start]));
        out.push_str(&text[start..end]);
        position = end;
    }
    out.push_str(&scrub_text(&text[position..]));
    out
}

fn excerpt(text: &str) -> String {
    if text.chars().count() <= EXCERPT_MAX_CHARS {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(EXCERPT_MAX_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(findings: &[Finding]) -> Vec<Rule> {
        let mut rules: Vec<Rule> = findings.iter().map(|f| f.rule).collect();
        rules.sort();
        rules.dedup();
        rules
    }

    /// Returns a ticket payload as the pipeline wrote it for the example
    /// outage.
    fn real_ticket() -> Value {
        json!({
            "incident_id": "2897e5dd-8b97-5c79-847f-5cce90e4d6bc",
            "incident_type": "platform_outage",
            "timestamp_start": "2025-12-12T14:23:00.000Z",
            "timestamp_end": "2025-12-12T14:38:00.000Z",
            "severity": "sev2",
            "affected_service": "nice_billing_voice",
            "data_snapshot_url": "file:///tmp/gov-emb/archive/cold/incidents/2897e5dd-8b97-5c79-847f-5cce90e4d6bc/",
            "platform_source": "nice_cxone",
            "dependency_status": [
                {"name": "CRM Dynamics API", "status": "failed", "checked_at": "2025-12-12T14:36:30.000Z"},
                {"name": "CRM Salesforce login", "status": "failed", "checked_at": "2025-12-12T14:36:00.000Z"}
            ],
            "signal_type": "service_level_failure",
            "failed_contacts": 233,
            "total_contacts": 543,
            "gate_reason": "42.0% of contacts failed, more than 5.0%"
        })
    }

    #[test]
    fn real_ticket_passes() {
        let findings = check_json(&real_ticket());
        assert!(findings.is_empty(), "{findings:#?}");
        let payload: TicketPayload = serde_json::from_value(real_ticket()).unwrap();
        assert!(check_ticket(&payload).is_empty());
    }

    #[test]
    fn ids_and_times_are_safe() {
        let text = "Incident 12345678-1234-5234-9234-123456789012 began 2025-12-12T14:20:01.488Z, \
                    conversation 00000000-1111-5222-8333-444455556666 ended 2025-12-12 14:33:56+01:00.";
        assert!(check_text(text).is_empty(), "{:#?}", check_text(text));
    }

    #[test]
    fn snapshot_folder_prefix_is_not_checked() {
        let mut payload: TicketPayload = serde_json::from_value(real_ticket()).unwrap();
        payload.data_snapshot_url =
            "s3://archive-123456789012/cold/incidents/2897e5dd-8b97-5c79-847f-5cce90e4d6bc/".into();
        assert!(check_ticket(&payload).is_empty());
        // The same number anywhere else is a finding.
        payload.gate_reason = Some("see archive-123456789012".into());
        assert_eq!(rules(&check_ticket(&payload)), [Rule::PhoneNumber]);
    }

    #[test]
    fn each_text_rule_fires() {
        let cases = [
            ("Caller at (317) 555-0142 was dropped.", Rule::PhoneNumber),
            ("Caller tel:+13175550142 was dropped.", Rule::PhoneNumber),
            // A SIP address with a number in it is a phone number.
            ("The trunk sent sip:+13175550142@trunk.example.com.", Rule::PhoneNumber),
            ("Escalated by dana.whitfield@example.com.", Rule::Email),
            ("Card 4111 1111 1111 1111 was read out.", Rule::CardNumber),
            ("The caller gave SSN 123-45-6789.", Rule::SocialSecurityNumber),
            ("Refund to DE89 3704 0044 0532 0130 00 failed.", Rule::Iban),
            ("Calls of agent_k1_0123456789abcdef0123456789abcdef failed.", Rule::Pseudonym),
            ("Caller phone_rot2_fedcba9876543210fedcba9876543210 retried.", Rule::Pseudonym),
            ("Failed calls per agent are in the appendix.", Rule::PerPersonFigure),
            ("Abandons by agents rose.", Rule::PerPersonFigure),
            ("Agent 7 handled 12 calls during the outage.", Rule::PerPersonFigure),
            ("The agent on the night shift dropped 3 calls.", Rule::PerPersonFigure),
        ];
        for (text, rule) in cases {
            assert_eq!(rules(&check_text(text)), [rule], "{text}");
        }
    }

    #[test]
    fn aggregate_text_passes() {
        let text = "440 of 660 calls failed between 14:20 and 14:33 UTC.\n\
                    12 agents were logged in; 5 were available.\n\
                    The agents' desktops showed no error. Service level fell to 42.0%.";
        assert!(check_text(text).is_empty(), "{:#?}", check_text(text));
    }

    #[test]
    fn each_key_rule_fires() {
        let cases = [
            (json!({"agent_id": "a1"}), "$.agent_id", Rule::PerPersonFigure),
            (json!({"agent_pseudonym": "x"}), "$.agent_pseudonym", Rule::PerPersonFigure),
            (json!({"per_agent": {"a": 3}}), "$.per_agent", Rule::PerPersonFigure),
            (json!({"agent_scores": [1, 2]}), "$.agent_scores", Rule::PerPersonFigure),
            (json!({"calls_by_agent": {"a": 1}}), "$.calls_by_agent", Rule::PerPersonFigure),
            (json!({"firstName": "Dana"}), "$.firstName", Rule::PersonField),
            (json!({"userName": "dwhitfield"}), "$.userName", Rule::PersonField),
            (json!({"fields": {"assignee": {"id": "5b10"}}}), "$.fields.assignee", Rule::PersonField),
            (json!({"ani": "tel:+13175550142"}), "$.ani", Rule::PersonField),
            (json!({"user": {"name": "Dana Whitfield"}}), "$.user.name", Rule::PersonField),
            (json!({"participants": [{"name": "Dana"}]}), "$.participants[0].name", Rule::PersonField),
        ];
        for (value, path, rule) in cases {
            let findings = check_json(&value);
            assert_eq!(findings.len(), 1, "{value}: {findings:#?}");
            assert_eq!(findings[0].rule, rule, "{value}");
            assert_eq!(findings[0].path, path, "{value}");
            assert_eq!(findings[0].excerpt, "[REDACTED]", "{value}");
        }
    }

    #[test]
    fn dependency_name_is_no_person() {
        let value = json!({"dependency_status": [{"name": "CRM login", "status": "ok"}], "agents_available": 5});
        assert!(check_json(&value).is_empty());
    }

    #[test]
    fn pseudonym_as_key_is_found() {
        let value = json!({"failures": {"agent_k1_0123456789abcdef0123456789abcdef": 4}});
        let findings = check_json(&value);
        assert_eq!(rules(&findings), [Rule::Pseudonym]);
        assert!(findings[0].path.ends_with("(key)"), "{findings:#?}");
    }

    #[test]
    fn excerpt_never_shows_the_value() {
        let value = json!({"gate_reason": "caller tel:+13175550142 and ops.lead@example.com, agent_k1_0123456789abcdef0123456789abcdef"});
        let findings = check_json(&value);
        assert_eq!(rules(&findings), [Rule::PhoneNumber, Rule::Email, Rule::Pseudonym]);
        for finding in &findings {
            assert_eq!(finding.path, "$.gate_reason");
            assert!(!finding.excerpt.contains("5550142"), "{finding}");
            assert!(!finding.excerpt.contains("ops.lead"), "{finding}");
            assert!(!finding.excerpt.contains("0123456789abcdef"), "{finding}");
        }
        assert_eq!(findings[0].excerpt, "caller tel:[PHONE] and [EMAIL], [PSEUDONYM]");
        let summary = summarize(&findings);
        assert!(!summary.contains("5550142"), "{summary}");
        assert!(summary.contains("phone_number at $.gate_reason"), "{summary}");
    }

    #[test]
    fn long_excerpt_is_cut() {
        let text = format!("{} call 317-555-0142", "x".repeat(400));
        let findings = check_text(&text);
        assert_eq!(findings[0].excerpt.chars().count(), EXCERPT_MAX_CHARS);
    }

    #[test]
    fn redacted_copy_passes() {
        let value = json!({
            "gate_reason": "caller (317) 555-0142",
            "user": {"name": "Dana Whitfield"},
            "calls_by_agent": {"agent_k1_0123456789abcdef0123456789abcdef": 3},
            "incident_id": "2897e5dd-8b97-5c79-847f-5cce90e4d6bc"
        });
        let redacted = redact_json(&value);
        assert!(check_json(&redacted).iter().all(|f| f.excerpt == "[REDACTED]"), "{redacted}");
        let text = redacted.to_string();
        assert!(!text.contains("555-0142"), "{text}");
        assert!(!text.contains("Dana"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert_eq!(redacted["incident_id"], "2897e5dd-8b97-5c79-847f-5cce90e4d6bc");
    }

    #[test]
    fn document_detects_json_or_text() {
        assert_eq!(rules(&check_document(r#"{"firstName": "Dana"}"#)), [Rule::PersonField]);
        let findings = check_document("Summary\nCall back 317-555-0142.");
        assert_eq!(findings[0].path, "line 2");
    }
}
