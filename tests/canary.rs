//! The canary test: known personal values planted in every personal field
//! and in free text of real-shaped Genesys Cloud CX, NICE CXone and
//! synthetic-check payloads go through the whole pipeline on a real Apache
//! Kafka broker. Every place that must be clean is then scanned for every
//! canary in every spelling: the masked, windowed-incidents, tickets and
//! dead-letter topics, the hot and cold archive tiers, the ticket outbox and
//! the logs of every stage. `raw-events` and `normalized` carry personal
//! data by design (`personal_data = true` in topology/topology.toml) and are
//! only scanned to prove that the scan finds the canaries where they are.
//!
//! The broker test is ignored by a plain `cargo test`: `scripts/test.sh`
//! starts Kafka and sets BLAMELESS_TEST_BROKERS. The two tests of the
//! blameless-document check at the end need no broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blameless::codec::Codec;
use blameless::config::Secret;
use blameless::governance;
use blameless::model::{Record, RecordKind};
use blameless::stages::mask::Masker;
use blameless::stages::ticket::TicketPayload;
use blameless::topology;
use blameless::transport::decode_record;
use serde_json::{json, Value};

mod common;

use common::kafka::{stop, wait_until, StoredRecord, TestCluster};

const MASK_KEY: &str = "canary-test-key-0123456789";
const MASK_KEY_ID: &str = "k1";

/// 2025-12-12T10:00:00Z, the start of the planted traffic, in epoch
/// milliseconds.
const START_MS: i64 = 1_765_533_600_000;
const MINUTE_MS: i64 = 60_000;
/// Minutes of traffic. Calls fail in minutes 4 to 6, and the calls of the
/// minutes after that move event time on until the incident closes.
const MINUTES: i64 = 16;

/// The contact center's own line: not personal, and outside the canary
/// numbers.
const LINE: &str = "tel:+18005550100";
const GENESYS_SOURCE: &str = "aws.partner/genesys.com/cloud/b459992c-bfd5-5a47-9a1c-f0a9bde55e3c/genesys_acme";
const ORG_ID: &str = "b459992c-bfd5-5a47-9a1c-f0a9bde55e3c";

/// Every text canary contains this word, so one search finds them all in
/// any spelling that keeps letters.
const TEXT_MARKER: &str = "canary";
/// A person's first name planted in name fields.
const FIRST_NAME: &str = "Zebediah";
/// Every id canary ends with this hex run before its number.
const ID_MARKER: &str = "4bad-8bad-c0ffee";

/// Canary phone numbers are +1 317 555 0NNN: this returns the 10 national
/// digits of number `n`.
fn national_digits(n: u32) -> String {
    format!("3175550{n:03}")
}

fn e164(n: u32) -> String {
    format!("+1{}", national_digits(n))
}

/// `(317) 555-0NNN`, as people write a number.
fn national(n: u32) -> String {
    let digits = national_digits(n);
    format!("({}) {}-{}", &digits[..3], &digits[3..6], &digits[6..])
}

fn agent_id(n: u32) -> String {
    format!("a9e17000-{n:04x}-{ID_MARKER}{n:06x}")
}

fn customer_id(n: u32) -> String {
    format!("c0571000-{n:04x}-{ID_MARKER}{n:06x}")
}

fn participant_id(n: u32) -> String {
    format!("9a271000-{n:04x}-{ID_MARKER}{n:06x}")
}

fn caller_email(n: u32) -> String {
    format!("caller.{TEXT_MARKER}.{n}@example.net")
}

/// Returns a conversation id. The pipeline keeps conversation ids, so they
/// are no canaries.
fn conversation_id(n: u32) -> String {
    format!("7c0e0000-0000-4000-8000-{n:012}")
}

fn iso_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn iso_seconds(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Numbers of callers, agents and contacts drawn from by the traffic.
const CALLERS: u32 = 40;
const AGENTS: u32 = 6;

/// What the masked topic must show for one planted event: the pseudonyms
/// of the values that were in its fields.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    conversation_id: String,
    event_type: String,
    agent: Option<String>,
    phone: Option<String>,
    customer: Option<String>,
}

/// The planted input: one payload per line in delivery order, and the
/// pseudonyms the masked topic must show.
struct Canaries {
    lines: Vec<(i64, Value)>,
    /// Lines that are not JSON or are cut off, as text.
    broken_lines: Vec<String>,
    expected: Vec<Expected>,
    masker: Masker,
}

impl Canaries {
    fn expect(&mut self, conversation: &str, event_type: &str, agent: Option<&str>, phone: Option<&str>, customer: Option<&str>) {
        self.expected.push(Expected {
            conversation_id: conversation.to_string(),
            event_type: event_type.to_string(),
            agent: agent.map(|v| self.masker.pseudonym("agent", v.trim())),
            phone: phone.map(|v| self.masker.phone_pseudonym(v)),
            customer: customer.map(|v| self.masker.pseudonym("customer", v.trim())),
        });
    }
}

/// Wraps a Genesys detail event in the Amazon EventBridge envelope, as in
/// tests/fixtures/genesys/eventbridge-detail-*.json.
fn eventbridge(event: &str, conversation: &str, body: Value, time_ms: i64) -> Value {
    json!({
        "version": "0",
        "id": format!("e0e0e0e0-0000-4000-8000-{:012}", time_ms % 1_000_000_000_000),
        "detail-type": format!("v2.detail.events.conversation.{{id}}.{event}"),
        "source": GENESYS_SOURCE,
        "account": "123456789012",
        "time": iso_seconds(time_ms),
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "topicName": format!("v2.detail.events.conversation.{conversation}.{event}"),
            "version": "2",
            "eventBody": body,
            "metadata": {"CorrelationId": "cd4fda5e-2a49-5ba1-a4e3-f1a55c5c4ba3"},
            "timestamp": iso_millis(time_ms + 300),
        }
    })
}

/// Wraps a Genesys detail event as one Notification API message, as in
/// tests/fixtures/genesys/notification-api-detail-customer-end-voice.json.
fn notification(event: &str, conversation: &str, body: Value) -> Value {
    json!({
        "topicName": format!("v2.detail.events.conversation.{conversation}.{event}"),
        "version": "2",
        "eventBody": body,
        "metadata": {"CorrelationId": "cd4fda5e-2a49-5ba1-a4e3-f1a55c5c4ba3"},
    })
}

/// Builds the eventBody of a voice `customer.end`.
fn customer_end_body(conversation: &str, caller: u32, ani: &str, disconnect: &str, time_ms: i64) -> Value {
    json!({
        "eventTime": time_ms,
        "conversationId": conversation,
        "participantId": participant_id(caller),
        "sessionId": "da482ecd-cd6b-5e1a-ba67-973ff5475546",
        "disconnectType": disconnect,
        "mediaType": "VOICE",
        "externalContactId": customer_id(caller),
        "provider": "Edge",
        "direction": "INBOUND",
        "ani": ani,
        "dnis": LINE,
        "interactingDurationMs": 369_505,
        "conversationExternalContactIds": [customer_id(caller)],
    })
}

/// Builds a call from the Conversations API (`GET /api/v2/conversations/calls/{id}`)
/// whose customer leg ended in an error, with names on the legs and the
/// error message quoting the caller's number and email.
fn conversation_call(conversation: &str, caller: u32, agent: u32, end_ms: i64) -> Value {
    let start = iso_millis(end_ms - 45_000);
    let end = iso_millis(end_ms);
    json!({
        "id": conversation,
        "participants": [
            {
                "id": participant_id(caller),
                "name": format!("{FIRST_NAME} Canarywood"),
                "address": format!("tel:{}", e164(caller)),
                "startTime": start,
                "connectedTime": start,
                "endTime": end,
                "purpose": "customer",
                "state": "terminated",
                "direction": "inbound",
                "disconnectType": "error",
                "held": false,
                "wrapupRequired": false,
                "attributes": {"callbackNumber": national(caller), "customerEmail": caller_email(caller)},
                "provider": "Edge",
                "externalContact": {
                    "id": customer_id(caller),
                    "selfUri": format!("/api/v2/externalcontacts/contacts/{}", customer_id(caller)),
                },
                "errorInfo": {
                    "message": format!("Call to caller {} failed; callback requested by {}", national(caller), caller_email(caller)),
                    "code": "error.ininedgecontrol.session.inactive",
                    "messageWithParams": "Call to caller {phone} failed; callback requested by {email}",
                    "messageParams": {"phone": national(caller), "email": caller_email(caller)},
                    "details": [],
                    "errors": [],
                },
                "ani": format!("tel:{}", e164(caller)),
                "dnis": LINE,
            },
            {
                "id": "397bd838-4bfa-50bc-a83c-42abc79f591d",
                "name": format!("Dana Canaryfield {agent}"),
                "address": format!("sip:{}@trunk.example.com", e164(caller)),
                "startTime": start,
                "endTime": end,
                "purpose": "agent",
                "state": "terminated",
                "direction": "inbound",
                "disconnectType": "peer",
                "user": {"id": agent_id(agent), "selfUri": format!("/api/v2/users/{}", agent_id(agent))},
                "provider": "Edge",
                "ani": format!("sip:{}@10.20.30.40;user=phone", e164(caller)),
                "dnis": LINE,
            }
        ],
        "otherMediaUris": [],
        "recordingState": "none",
        "selfUri": format!("/api/v2/conversations/calls/{conversation}"),
    })
}

/// Builds a NICE CXone skill summary poll in its capture record, with a skill name
/// that quotes a phone number and an email.
fn nice_poll(interval_end_ms: i64, failing: bool) -> Value {
    let (level, out_of_sla) = if failing { ("41", "30") } else { ("96", "0") };
    json!({
        "capture": {
            "delivery": "nice_reporting_poll",
            "interval_start": iso_seconds(interval_end_ms - MINUTE_MS),
            "interval_end": iso_seconds(interval_end_ms),
        },
        "payload": {"skillSummaries": [{
            "businessUnitId": "318204",
            "businessUnitName": "BUSSINESSNAME",
            "agentsAvailable": "5",
            "agentsLoggedIn": "24",
            "campaignName": format!("Callbacks for {}", caller_email(900)),
            "contactsHandled": "48",
            "contactsOffered": "50",
            "contactsOutOfSLA": out_of_sla,
            "contactsWithinSLA": "20",
            "mediaTypeName": "Phone Call",
            "serviceLevel": level,
            "skillName": format!("Callback desk {} desk.lead.{TEXT_MARKER}@example.net", national(901)),
            "skillId": "8530116",
            "serviceLevelGoal": "80",
            "serviceLevelThreshold": "30",
        }]},
    })
}

/// NICE's per-agent states response, as in
/// tests/fixtures/nice/realtime-agents-states-doc-example-pii-filled.json:
/// the normalize stage rejects it.
fn nice_agent_states() -> Value {
    json!({"agentStates": [{
        "agentId": 4417,
        "agentStateId": 1,
        "agentStateName": "Available",
        "businessUnitId": 318204,
        "contactId": 0,
        "isActive": true,
        "isAcw": false,
        "isOutbound": false,
        "firstName": FIRST_NAME,
        "fromAddress": national_digits(902),
        "lastName": "Canaryfield",
        "lastPollTime": "2025-12-12T10:05:00.000Z",
        "lastUpdateTime": "2025-12-12T10:04:00.000Z",
        "mediaName": "Phone Call",
        "mediaType": 4,
        "openContacts": 0,
        "outStateDescription": "",
        "outStateId": 0,
        "skillId": 8530116,
        "skillName": "Callback desk",
        "startDate": "2025-12-12T10:04:00.000Z",
        "stationId": 0,
        "stationPhoneNumber": national_digits(903),
        "teamId": 0,
        "teamName": "",
        "toAddress": national_digits(904),
        "userName": format!("zebediah.{TEXT_MARKER}field@example.net"),
    }]})
}

fn pingdom(state: &str, previous: &str, time_ms: i64) -> Value {
    json!({
        "check_id": 1_827_179,
        "check_name": format!("IVR callback {} owner pat.{TEXT_MARKER}@example.net", e164(905)),
        "check_type": "HTTP",
        "check_params": {
            "basic_auth": false,
            "encryption": true,
            "full_url": format!("https://www.example.com/callback?phone={}", national_digits(906)),
            "hostname": "www.example.com",
            "port": 443,
            "url": "/callback",
        },
        "tags": ["callback"],
        "previous_state": previous,
        "current_state": state,
        "importance_level": "HIGH",
        "state_changed_timestamp": time_ms / 1000,
        "state_changed_utc_time": iso_seconds(time_ms).trim_end_matches('Z'),
        "long_description": format!("Caller {} could not be reached", national(907)),
        "description": format!("Callback to {} failed for lee.{TEXT_MARKER}@example.net", national(908)),
        "first_probe": {"ip": "123.4.5.6", "ipv6": "2001:4800:1020:209::5", "location": "Stockholm, Sweden"},
    })
}

fn datadog(transition: &str, time_ms: i64) -> Value {
    json!({
        "id": format!("85434047417244412{}", if transition == "Triggered" { "01" } else { "02" }),
        "last_updated": time_ms.to_string(),
        "event_type": "synthetics_alert",
        "title": format!("[P2] [{transition}] [Synthetics] Callback line {} owner ops.{TEXT_MARKER}@example.net", national(909)),
        "date": time_ms.to_string(),
        "org": {"id": "1200457", "name": "rs-1100042"},
        "body": format!("%%%\nAn alert for caller {} reported by dana.{TEXT_MARKER}@example.net\n%%%", national_digits(910)),
        "alert": {"alert_id": "166187407", "alert_metric": "", "alert_query": "", "alert_status": "", "alert_scope": "", "alert_transition": transition, "alert_type": "error", "alert_metric_namespace": ""},
        "incident": {"incident_public_id": "null", "incident_severity": "null", "incident_status": "null", "incident_url": "null", "incident_uuid": "null", "incident_title": "", "incident_message": "%%%\nAn alert has been received\n%%%", "incident_integrations": null, "incident_fields": null},
        "event": {"aggreg_key": "73e071f5c67d33400f240ec415c2d48e", "event_id": "ID", "event_url": "https://app.datadoghq.com/event/event?id=8543404741724441201"},
    })
}

/// Builds a Genesys operational event about a failing data action, whose entity
/// name and error message quote a caller.
fn operational_event(time_ms: i64) -> Value {
    json!({
        "topicName": format!("v2.operations.events.{ORG_ID}"),
        "version": "2",
        "eventBody": {
            "eventEntity": {"id": "DATA_ACTION", "name": "Data Action Failed"},
            "entityId": "act-42",
            "entityName": format!("Caller lookup {} for ops.{TEXT_MARKER}@example.net", national(911)),
            "entityType": "DATA_ACTION",
            "errorCode": "bad.request",
            "errorMessage": format!("Lookup of {} for {} timed out", e164(912), caller_email(912)),
            "timestamp": time_ms,
            "conversationId": conversation_id(9_999),
        },
    })
}

/// Builds the planted traffic. Callers' numbers rotate through three
/// formats: `tel:+1...`, `sip:+1...@trunk.example.com` and `(317) 555-0NNN`.
fn canaries() -> Canaries {
    let masker = Masker::new(Secret::new(MASK_KEY), MASK_KEY_ID);
    let mut c = Canaries {
        lines: Vec::new(),
        broken_lines: Vec::new(),
        expected: Vec::new(),
        masker,
    };
    let mut conversation = 0_u32;
    for minute in 0..MINUTES {
        let minute_start = START_MS + minute * MINUTE_MS;
        let outage = (4..7).contains(&minute);

        // Calls that complete: EventBridge customer.end.
        for i in 0..8_u32 {
            conversation += 1;
            let caller = conversation % CALLERS;
            let time = minute_start + i as i64 * 7_000 + 500;
            let id = conversation_id(conversation);
            let ani = format!("tel:{}", e164(caller));
            let body = customer_end_body(&id, caller, &ani, "ENDPOINT", time);
            c.lines.push((time, eventbridge("customer.end", &id, body, time)));
            c.expect(&id, "call_completed", None, Some(&ani), Some(&customer_id(caller)));

            // The agent leg of every other call: user.end with the agent.
            if i % 2 == 0 {
                let agent = conversation % AGENTS;
                let mut body = customer_end_body(&id, caller, &ani, "PEER", time - 2_000);
                body["userId"] = json!(agent_id(agent));
                body["participantId"] = json!(participant_id(500 + conversation));
                body["queueId"] = json!("8048f626-77f2-5950-9f7f-37a15c30c029");
                c.lines.push((time - 2_000, eventbridge("user.end", &id, body, time - 2_000)));
                c.expect(&id, "agent_leg_ended", Some(&agent_id(agent)), Some(&ani), Some(&customer_id(caller)));
            }
        }

        // One outbound call a minute: the customer is the called party.
        conversation += 1;
        let caller = conversation % CALLERS;
        let id = conversation_id(conversation);
        let time = minute_start + 30_000;
        let dnis = format!("tel:{}", e164(caller));
        let mut body = customer_end_body(&id, caller, LINE, "CLIENT", time);
        body["direction"] = json!("OUTBOUND");
        body["dnis"] = json!(dnis);
        c.lines.push((time, eventbridge("customer.end", &id, body, time)));
        c.expect(&id, "call_completed", None, Some(&dnis), Some(&customer_id(caller)));

        if outage {
            // 25 failed calls a minute in three delivery shapes.
            for i in 0..25_u32 {
                conversation += 1;
                let caller = conversation % CALLERS;
                let id = conversation_id(conversation);
                let time = minute_start + i as i64 * 2_300 + 900;
                match i % 3 {
                    0 => {
                        let ani = format!("tel:{}", e164(caller));
                        let body = customer_end_body(&id, caller, &ani, "ERROR", time);
                        c.lines.push((time, eventbridge("customer.end", &id, body, time)));
                        c.expect(&id, "call_failed", None, Some(&ani), Some(&customer_id(caller)));
                    }
                    1 => {
                        let ani = format!("sip:{}@trunk.example.com", e164(caller));
                        let body = customer_end_body(&id, caller, &ani, "TRANSPORT_FAILURE", time);
                        c.lines.push((time, notification("customer.end", &id, body)));
                        c.expect(&id, "call_failed", None, Some(&ani), Some(&customer_id(caller)));
                    }
                    _ => {
                        let agent = conversation % AGENTS;
                        c.lines.push((time, conversation_call(&id, caller, agent, time)));
                        // The Conversations API names the contact in
                        // externalContact.id, which the normalizer does not
                        // read, so the event has a phone and no customer.
                        c.expect(&id, "call_failed", None, Some(&format!("tel:{}", e164(caller))), None);
                    }
                }
            }
            // The IVR reports a failed outcome, with the caller's number
            // written the national way.
            conversation += 1;
            let caller = conversation % CALLERS;
            let id = conversation_id(conversation);
            let time = minute_start + 45_000;
            let body = json!({
                "eventTime": time,
                "conversationId": id,
                "participantId": participant_id(700 + conversation),
                "sessionId": "e9b98af0-67c4-508d-aa63-cb2402ffc3ac",
                "mediaType": "VOICE",
                "provider": "Edge",
                "direction": "INBOUND",
                "ani": national(caller),
                "dnis": LINE,
                "flowType": "INBOUNDCALL",
                "flowId": "3ea8a5cd-c499-5a64-a1bc-1afb62f13d5b",
                "divisionId": "a08ce931-020f-5b5d-acce-59620ff926ff",
                "flowVersion": "7.0",
                "flowOutcomeId": "fa1fa289-df3e-5034-9ce3-86212f5e8bfe",
                "flowOutcomeStartTime": time - 4_000,
                "flowOutcomeEndTime": time,
                "flowOutcomeValue": "FAILURE",
                "flowMilestones": [{"milestoneId": "2b2ea8fc-f7d3-536a-b6c4-3a92bee37be2", "milestoneTime": time - 4_000}],
                "conversationExternalContactIds": [customer_id(caller)],
            });
            c.lines.push((time, eventbridge("flow.outcome", &id, body, time)));
            c.expect(&id, "ivr_error", None, Some(&national(caller)), None);
        }

        // NICE polls every minute; the skill misses its goal from minute 4
        // to 8.
        c.lines.push((minute_start + MINUTE_MS + 2_000, nice_poll(minute_start + MINUTE_MS, (4..9).contains(&minute))));
    }

    c.lines.push((START_MS + 5 * MINUTE_MS + 10_000, operational_event(START_MS + 5 * MINUTE_MS + 10_000)));
    c.lines.push((START_MS + 5 * MINUTE_MS, pingdom("DOWN", "UP", START_MS + 5 * MINUTE_MS)));
    c.lines.push((START_MS + 9 * MINUTE_MS, pingdom("UP", "DOWN", START_MS + 9 * MINUTE_MS)));
    c.lines.push((START_MS + 5 * MINUTE_MS + 30_000, datadog("Triggered", START_MS + 5 * MINUTE_MS + 30_000)));
    c.lines.push((START_MS + 9 * MINUTE_MS + 30_000, datadog("Recovered", START_MS + 9 * MINUTE_MS + 30_000)));
    c.lines.push((START_MS + 5 * MINUTE_MS + 20_000, nice_agent_states()));
    malformed(&mut c);
    c.lines.sort_by_key(|(time, _)| *time);
    c
}

/// Payloads that the normalize stage must reject, each carrying canaries.
fn malformed(c: &mut Canaries) {
    let time = START_MS + 5 * MINUTE_MS + 40_000;
    // A customer.end without eventTime.
    let mut body = customer_end_body(&conversation_id(9_001), 921, &format!("tel:{}", e164(921)), "ERROR", time);
    body.as_object_mut().unwrap().remove("eventTime");
    body["userId"] = json!(agent_id(921));
    c.lines.push((time, eventbridge("customer.end", &conversation_id(9_001), body, time)));

    // A customer.end whose eventTime is not a time.
    let mut body = customer_end_body(&conversation_id(9_002), 922, &format!("sip:{}@trunk.example.com", e164(922)), "ERROR", time);
    body["eventTime"] = json!("yesterday");
    c.lines.push((time + 1, notification("customer.end", &conversation_id(9_002), body)));

    // A batch of three messages as one JSON array, which the normalize stage
    // rejects: one payload per line or request.
    let first = notification(
        "customer.end",
        &conversation_id(9_003),
        customer_end_body(&conversation_id(9_003), 923, &format!("tel:{}", e164(923)), "ERROR", time),
    );
    let second = notification(
        "customer.end",
        &conversation_id(9_004),
        customer_end_body(&conversation_id(9_004), 924, &national(924), "ERROR", time),
    );
    let third = notification(
        "customer.end",
        &conversation_id(9_006),
        customer_end_body(&conversation_id(9_006), 928, &format!("tel:{}", e164(928)), "ERROR", time),
    );
    c.lines.push((time + 2, json!([first, second, third])));

    // An object of unknown shape: a telephony webhook sent to the wrong
    // receiver.
    c.lines.push((
        time + 3,
        json!({"CallSid": "CA0001", "From": e164(925), "To": LINE, "CallerEmail": caller_email(925), "Note": format!("call back on {}", national(925))}),
    ));

    // A payload cut off after the agent's id, and text that is not JSON.
    let mut body = customer_end_body(&conversation_id(9_005), 926, &format!("tel:{}", e164(926)), "ERROR", time);
    body["userId"] = json!(agent_id(926));
    let whole = eventbridge("customer.end", &conversation_id(9_005), body, time).to_string();
    // The cut keeps `conversationExternalContactIds`, an array under a
    // personal key, which the dead letter's copy must redact whole.
    let cut = whole.find("\"interactingDurationMs\"").unwrap();
    c.broken_lines.push(whole[..cut].to_string());
    c.broken_lines.push(format!("caller {} ({}) wrote from {}", national(927), e164(927), caller_email(927)));
}

/// The normalize stage's rejects: the malformed payloads. NICE's agent
/// states are counted per skill, not rejected.
const EXPECTED_REJECTS: usize = 6;

/// Returns every canary value, in the spellings the scan looks for. Each phone
/// number appears as `tel:+1...`, `+1...`, `1...`, the 10 national digits
/// and `(317) 555-0NNN`.
fn verbatim_canaries(c: &Canaries) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut text = String::new();
    for (_, line) in &c.lines {
        text.push_str(&line.to_string());
    }
    for line in &c.broken_lines {
        text.push_str(line);
    }
    // Callers are numbers 0 to CALLERS - 1, and the numbers quoted in free
    // text and the other fields are 901 to 912 and 921 to 928.
    for n in (0..CALLERS).chain(901..=912).chain(921..=928) {
        let digits = national_digits(n);
        let digits = digits.as_str();
        assert!(text.contains(digits) || text.contains(&national(n)), "number {n} is not planted");
        all.insert(format!("tel:+1{digits}"));
        all.insert(format!("+1{digits}"));
        all.insert(format!("1{digits}"));
        all.insert(digits.to_string());
        all.insert(format!("({}) {}-{}", &digits[..3], &digits[3..6], &digits[6..]));
        all.insert(format!("{}-{}-{}", &digits[..3], &digits[3..6], &digits[6..]));
    }
    let id = regex::Regex::new(&format!(r"[0-9a-f]{{8}}-[0-9a-f]{{4}}-{ID_MARKER}[0-9a-f]{{6}}")).unwrap();
    for found in id.find_iter(&text) {
        all.insert(found.as_str().to_string());
        all.insert(found.as_str().to_uppercase());
    }
    let email = regex::Regex::new(&format!(r"[a-z0-9.]*{TEXT_MARKER}[a-z0-9.]*@example\.net")).unwrap();
    for found in email.find_iter(&text) {
        all.insert(found.as_str().to_string());
    }
    all.insert(FIRST_NAME.to_string());
    all.insert(FIRST_NAME.to_lowercase());
    all
}

/// Returns the squeezed forms the scan looks for in text with every character but
/// letters and digits removed and letters in lower case: the national
/// digits of each number, each id without hyphens, and the markers.
fn squeezed_canaries(verbatim: &BTreeSet<String>) -> BTreeSet<String> {
    let mut all: BTreeSet<String> = verbatim
        .iter()
        .filter(|v| v.len() == 10 && v.chars().all(|c| c.is_ascii_digit()))
        .cloned()
        .collect();
    for value in verbatim {
        if value.contains(ID_MARKER) {
            all.insert(squeeze(value));
        }
    }
    all.insert(TEXT_MARKER.to_string());
    all.insert(FIRST_NAME.to_lowercase());
    all.insert(squeeze(ID_MARKER));
    all
}

fn squeeze(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// One place to scan: its name, its text as stored, and its text decoded
/// for the squeezed search. The decoded text is JSON, not Debug output, so
/// bytes are never printed as lists of numbers that squeezing would join.
struct Haystack {
    place: String,
    stored: String,
    decoded: String,
}

/// A canary found where it must not be.
#[derive(Debug)]
struct Hit {
    place: String,
    canary: String,
    context: String,
}

fn find_hits(haystacks: &[Haystack], verbatim: &BTreeSet<String>, squeezed: &BTreeSet<String>) -> Vec<Hit> {
    let mut hits = Vec::new();
    for haystack in haystacks {
        for text in [&haystack.stored, &haystack.decoded] {
            for canary in verbatim {
                if let Some(at) = text.find(canary.as_str()) {
                    hits.push(Hit {
                        place: haystack.place.clone(),
                        canary: canary.clone(),
                        context: context(text, at, canary.len()),
                    });
                }
            }
        }
        let flat = squeeze(&haystack.decoded);
        for canary in squeezed {
            if let Some(at) = flat.find(canary.as_str()) {
                hits.push(Hit {
                    place: format!("{} (squeezed)", haystack.place),
                    canary: canary.clone(),
                    context: context(&flat, at, canary.len()),
                });
            }
        }
    }
    hits
}

fn context(text: &str, at: usize, len: usize) -> String {
    let start = text[..at].char_indices().rev().nth(60).map_or(0, |(i, _)| i);
    let end = text[at + len..].char_indices().nth(60).map_or(text.len(), |(i, _)| at + len + i);
    text[start..end].replace('\n', " ")
}

async fn decoded_json(codec: &Codec, kind: RecordKind, bytes: &[u8]) -> String {
    let record = match decode_record(codec, kind, bytes).await {
        Ok(record) => record,
        Err(error) => return format!("undecodable record: {error}"),
    };
    match record {
        Record::Normalized(r) => serde_json::to_string(&r).unwrap(),
        Record::Masked(r) => serde_json::to_string(&r).unwrap(),
        Record::Incident(r) => serde_json::to_string(&r).unwrap(),
        Record::Ticket(r) => serde_json::to_string(&r).unwrap(),
        Record::DeadLetter(r) => {
            // The payload as text, next to the other fields.
            let payload = String::from_utf8_lossy(&r.payload).into_owned();
            let mut value = serde_json::to_value(&r).unwrap();
            value["payload"] = json!(payload);
            value.to_string()
        }
        other => format!("{other:?}"),
    }
}

async fn topic_haystacks(cluster: &TestCluster, codec: &Codec, name: &str, kind: RecordKind) -> Vec<Haystack> {
    let mut haystacks = Vec::new();
    for StoredRecord { partition, offset, key, payload } in cluster.read_topic(name) {
        let key = String::from_utf8_lossy(key.as_deref().unwrap_or_default()).into_owned();
        haystacks.push(Haystack {
            place: format!("{name}/{partition}/{offset} key"),
            stored: key.clone(),
            decoded: key,
        });
        haystacks.push(Haystack {
            place: format!("{name}/{partition}/{offset}"),
            stored: String::from_utf8_lossy(&payload).into_owned(),
            decoded: decoded_json(codec, kind, &payload).await,
        });
    }
    haystacks
}

/// Returns every file under `root`, Avro container files decoded, and
/// every path.
fn file_haystacks(root: &Path) -> Vec<Haystack> {
    let mut haystacks = Vec::new();
    for (path, bytes) in common::files_under(root) {
        let decoded = if path.ends_with(".avro") {
            let events = blameless::stages::archive::read_container(&bytes).unwrap();
            serde_json::to_string(&events).unwrap()
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let relative = path.strip_prefix(&root.display().to_string()).unwrap_or(&path).to_string();
        haystacks.push(Haystack {
            place: format!("{relative} (its path)"),
            stored: relative.clone(),
            decoded: relative.clone(),
        });
        haystacks.push(Haystack {
            place: relative,
            stored: String::from_utf8_lossy(&bytes).into_owned(),
            decoded,
        });
    }
    haystacks
}

fn tickets(out: &Path) -> Vec<TicketPayload> {
    let Ok(entries) = std::fs::read_dir(out.join("tickets")) else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            serde_json::from_slice(&std::fs::read(path).ok()?).ok()
        })
        .collect()
}

fn write_input(c: &Canaries, dir: &Path) -> Vec<PathBuf> {
    // Chunks of about a minute of traffic, each ingested by its own
    // `blameless stage ingest` process, so the stages see traffic arrive
    // over time.
    let mut files = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut broken = c.broken_lines.iter();
    for (index, (_, line)) in c.lines.iter().enumerate() {
        lines.push(line.to_string());
        if index % 20 == 10 {
            if let Some(text) = broken.next() {
                lines.push(text.clone());
            }
        }
        if lines.len() >= 40 || index + 1 == c.lines.len() {
            let path = dir.join(format!("input-{:03}.jsonl", files.len()));
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            files.push(path);
            lines.clear();
        }
    }
    assert!(broken.next().is_none(), "every broken line is in the input");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: run scripts/test.sh"]
async fn canaries_never_leave_the_mask_stage() {
    let mut cluster = TestCluster::new("gov").await;
    cluster.env = vec![
        ("BLAMELESS__MASK__KEY".into(), MASK_KEY.into()),
        ("BLAMELESS__MASK__KEY_ID".into(), MASK_KEY_ID.into()),
        ("BLAMELESS_LOG".into(), "debug".into()),
    ];
    let codec = Codec::single_object().unwrap();
    let planted = canaries();
    let input_dir = tempfile::tempdir().unwrap();
    let files = write_input(&planted, input_dir.path());

    let stages: Vec<_> = ["normalize", "mask", "archive", "window", "ticket"]
        .iter()
        .map(|stage| cluster.start_stage(stage, stage))
        .collect();
    for (index, file) in files.iter().enumerate() {
        cluster.ingest_file(file, &format!("ingest-{index:03}"));
    }

    let out = cluster.out.path().to_path_buf();
    wait_until("the voice ticket carries its end", Duration::from_secs(240), || {
        tickets(&out)
            .iter()
            .any(|t| t.affected_service == "voice_inbound" && t.timestamp_end.is_some())
    })
    .await;
    // Let the other stages finish what they have.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for stage in stages {
        stop(stage);
    }

    // The pipeline did its work: tickets with snapshots, and dead letters.
    let written = tickets(&out);
    let services: BTreeSet<&str> = written.iter().map(|t| t.affected_service.as_str()).collect();
    assert!(services.contains("voice_inbound"), "{services:?}");
    assert!(services.contains("nice_callback_desk_phone_email"), "{services:?}");
    for ticket in &written {
        let findings = governance::check_ticket(ticket);
        assert!(findings.is_empty(), "ticket of {} fails the check: {findings:?}", ticket.affected_service);
        let snapshot = ticket.data_snapshot_url.strip_prefix("file://").unwrap();
        assert!(Path::new(snapshot).join("events.avro").exists(), "{snapshot}");
    }
    let mut rejects: Vec<(String, String)> = Vec::new();
    for record in cluster.read_topic(topology::DEAD_LETTER) {
        let Record::DeadLetter(letter) = decode_record(&codec, RecordKind::DeadLetter, &record.payload).await.unwrap() else {
            panic!("a dead-letter record is no dead letter");
        };
        assert!(letter.payload_scrubbed || letter.stage != "normalize", "{letter:?}");
        rejects.push((letter.stage, letter.reason));
    }
    assert!(rejects.iter().all(|(stage, _)| stage == "normalize"), "{rejects:#?}");
    assert_eq!(rejects.len(), EXPECTED_REJECTS, "{rejects:#?}");

    // The scan can see the canaries: the normalized topic carries them.
    let verbatim = verbatim_canaries(&planted);
    let squeezed = squeezed_canaries(&verbatim);
    let normalized = topic_haystacks(&cluster, &codec, topology::NORMALIZED, RecordKind::Normalized).await;
    let seen: BTreeSet<String> = find_hits(&normalized, &verbatim, &squeezed).into_iter().map(|h| h.canary).collect();
    for expected in [e164(1), agent_id(1), customer_id(1)] {
        assert!(seen.contains(&expected), "the scan did not find {expected} on the normalized topic");
    }

    // No canary where personal data must not go.
    let mut haystacks = Vec::new();
    for (name, kind) in [
        (topology::MASKED, RecordKind::Masked),
        (topology::WINDOWED_INCIDENTS, RecordKind::Incident),
        (topology::TICKETS, RecordKind::Ticket),
        (topology::DEAD_LETTER, RecordKind::DeadLetter),
    ] {
        let found = topic_haystacks(&cluster, &codec, name, kind).await;
        assert!(!found.is_empty(), "{name} is empty, so scanning it proves nothing");
        haystacks.extend(found);
    }
    let files = file_haystacks(&out);
    for folder in ["hot/", "cold/", "tickets/", "logs/normalize.log", "logs/mask.log", "logs/ingest-000.log"] {
        assert!(files.iter().any(|h| h.place.trim_start_matches('/').starts_with(folder)), "nothing under {folder} to scan");
    }
    haystacks.extend(files);
    let hits = find_hits(&haystacks, &verbatim, &squeezed);
    assert!(
        hits.is_empty(),
        "{} canary hits; the first 40:\n{}",
        hits.len(),
        hits.iter().take(40).map(|h| format!("{}: {:?} in …{}…", h.place, h.canary, h.context)).collect::<Vec<_>>().join("\n")
    );

    // The canaries' pseudonyms are where their fields were.
    let mut masked: BTreeMap<(String, String), Vec<Expected>> = BTreeMap::new();
    for record in cluster.read_topic(topology::MASKED) {
        let Record::Masked(event) = decode_record(&codec, RecordKind::Masked, &record.payload).await.unwrap() else {
            panic!("a masked record is no masked event");
        };
        let Some(conversation) = event.conversation_id.clone() else { continue };
        masked.entry((conversation.clone(), event.event_type.clone())).or_default().push(Expected {
            conversation_id: conversation,
            event_type: event.event_type,
            agent: event.agent_pseudonym,
            phone: event.phone_pseudonym,
            customer: event.customer_pseudonym,
        });
    }
    assert!(planted.expected.len() > 200, "{} planted events", planted.expected.len());
    for expected in &planted.expected {
        let key = (expected.conversation_id.clone(), expected.event_type.clone());
        let found = masked.get(&key).unwrap_or_else(|| panic!("no masked {key:?}"));
        assert!(found.contains(expected), "masked {key:?} is {found:?}, expected {expected:?}");
    }
}

/// Runs the embedded pipeline on the example input: every ticket it writes
/// passes the blameless-document check, in the library and through
/// `blameless check`.
#[tokio::test]
async fn example_tickets_pass_check() {
    let out = tempfile::tempdir().unwrap();
    let mut config = blameless::config::Config::default();
    config.mask.key = Secret::new(MASK_KEY);
    config.archive.url = out.path().join("hot").display().to_string();
    config.archive.cold_url = out.path().join("cold").display().to_string();
    config.ticket.outbox_dir = out.path().join("tickets");
    let example = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/outage.jsonl"));
    let report = blameless::app::run_embedded(&config, &example).await.unwrap();
    assert!(report.dead_letters.iter().all(|d| d.stage != "ticket"), "{:?}", report.dead_letters);

    let written = tickets(out.path());
    assert_eq!(written.len(), 4);
    for ticket in &written {
        assert!(governance::check_ticket(ticket).is_empty(), "{ticket:#?}");
        let path = out.path().join("tickets").join(format!("{}.json", ticket.incident_id));
        let output = Command::new(env!("CARGO_BIN_EXE_blameless"))
            .args(["check", "--input", path.to_str().unwrap()])
            .env_remove("BLAMELESS__MASK__KEY")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        assert!(output.stdout.is_empty());
    }
}

/// `blameless check` on a postmortem draft prints each finding with its
/// rule and line, never the value, and exits with status 1.
#[test]
fn check_flags_postmortem_draft() {
    let dir = tempfile::tempdir().unwrap();
    let draft = dir.path().join("postmortem.md");
    std::fs::write(
        &draft,
        "# Trunk outage\n\
         440 of 660 calls failed from 14:20 to 14:33 UTC.\n\
         Agent agent_k1_0123456789abcdef0123456789abcdef handled 12 calls.\n\
         The caller at (317) 555-0142 wrote from dana.canary@example.net.\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_blameless"))
        .args(["check", "--input", draft.to_str().unwrap()])
        .env_remove("BLAMELESS__MASK__KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for expected in ["pseudonym at line 3", "per_person_figure at line 3", "phone_number at line 4", "email at line 4"] {
        assert!(stdout.contains(expected), "{expected} missing from:\n{stdout}");
    }
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    for value in ["0123456789abcdef", "555-0142", "dana.canary"] {
        assert!(!stdout.contains(value), "{value} printed:\n{stdout}");
    }
}
