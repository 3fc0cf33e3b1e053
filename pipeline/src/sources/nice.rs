//! NICE CXone reporting API responses. A skill summary
//! (`GET /skills/summary`) becomes one event per skill:
//! `service_level_failure` when the skill's service level is below its goal,
//! `service_level_ok` otherwise, each counting the interval's contacts so the
//! postmortem gate can weigh the failures.
//!
//! A skill also gets an `agent_availability_drop` event when its available
//! agents fell by more than a share against the previous interval. The
//! normalizer keeps no state, so the poller writes the previous interval's
//! counts and the share into the capture record
//! (`capture.previous_agents_available` and
//! `capture.availability_drop_share`), and without both no drop is derived.
//!
//! The response carries no time of its own: event time is the end of the
//! polled interval that the poller recorded on the raw event, or its receive
//! time when there is none. Either must lie in the accepted event-time
//! range. CXone sends every value as a string.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{check_event_time, derive_id, id_field, number_field, scrubbed_text_field, slug, text_field};
use crate::model::{NormalizedEvent, RawEvent};
use crate::scrub::scrub_text;

pub const PLATFORM: &str = "nice_cxone";

/// Capture field with the previous interval's available agents per skill id.
pub const PREVIOUS_AGENTS_AVAILABLE: &str = "previous_agents_available";
/// Capture field with the share of available agents whose loss is a drop.
pub const AVAILABILITY_DROP_SHARE: &str = "availability_drop_share";

pub fn normalize(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let Some(skills) = payload.get("skillSummaries") else {
        return agent_states(raw, payload);
    };
    let skills = skills
        .as_array()
        .ok_or("NICE CXone skillSummaries is not an array")?;
    let (time_field, time_ms) = match raw.interval_end_ms {
        Some(end) => ("interval_end_ms", end),
        None => ("received_at_ms", raw.received_at_ms),
    };
    let event_time_ms = check_event_time(time_ms, &time_ms.to_string())
        .map_err(|e| format!("NICE CXone raw event {time_field} is unusable as the event time: {e}"))?;
    let drop_rule = AvailabilityDropRule::from_capture(raw.capture_json.as_deref())?;

    let mut events = Vec::with_capacity(skills.len());
    for (index, skill) in skills.iter().enumerate() {
        let event = skill_event(raw, skill, index, event_time_ms)?;
        let drop = match &drop_rule {
            Some(rule) => rule.drop_event(&event, skill)?,
            None => None,
        };
        events.push(event);
        events.extend(drop);
    }
    Ok(events)
}

/// The comparison the poller recorded for available agents: the previous
/// interval's counts per skill id, and the share of agents whose loss is a
/// drop.
#[derive(Debug, Clone, PartialEq)]
struct AvailabilityDropRule {
    previous: BTreeMap<String, f64>,
    share: f64,
}

impl AvailabilityDropRule {
    /// Reads the rule from the capture record. Returns `None` when the
    /// capture record lacks either field, as for a payload ingested from a
    /// file, and an error when a field is present but invalid.
    fn from_capture(capture_json: Option<&str>) -> Result<Option<AvailabilityDropRule>, String> {
        let Some(text) = capture_json else {
            return Ok(None);
        };
        let capture: Value = serde_json::from_str(text)
            .map_err(|e| format!("NICE CXone capture record is not valid JSON ({e})"))?;
        let (Some(previous), Some(share)) = (capture.get(PREVIOUS_AGENTS_AVAILABLE), capture.get(AVAILABILITY_DROP_SHARE)) else {
            return Ok(None);
        };
        let share = share
            .as_f64()
            .filter(|share| (0.0..1.0).contains(share))
            .ok_or_else(|| {
                format!(
                    "NICE CXone capture.{AVAILABILITY_DROP_SHARE} is {}, expected a number from 0.0 up to but not including 1.0 \
                     (sources.nice.availability_drop_share)",
                    scrub_text(&share.to_string())
                )
            })?;
        let previous = previous.as_object().ok_or_else(|| {
            format!("NICE CXone capture.{PREVIOUS_AGENTS_AVAILABLE} is not an object of skill ids to available agents")
        })?;
        let mut counts = BTreeMap::new();
        for (skill_id, count) in previous {
            let count = agent_count(count).ok_or_else(|| {
                format!(
                    "NICE CXone capture.{PREVIOUS_AGENTS_AVAILABLE} of skill {} is {}, expected a count of 0 or more",
                    scrub_text(skill_id),
                    scrub_text(&count.to_string())
                )
            })?;
            counts.insert(skill_id.clone(), count);
        }
        Ok(Some(AvailabilityDropRule { previous: counts, share }))
    }

    /// Builds the `agent_availability_drop` event of a skill whose available
    /// agents fell by more than the share of the previous count. A skill
    /// without a previous count, or without `agentsAvailable` now, gets none.
    fn drop_event(&self, skill_event: &NormalizedEvent, skill: &Value) -> Result<Option<NormalizedEvent>, String> {
        let skill_id = &skill_event.attributes["skill_id"];
        let Some(&previous) = self.previous.get(skill_id) else {
            return Ok(None);
        };
        let Some(current) = skill.get("agentsAvailable") else {
            return Ok(None);
        };
        let current = agent_count(current).ok_or_else(|| {
            format!("NICE CXone skill {skill_id} agentsAvailable is not a count of 0 or more")
        })?;
        // Strictly more than the share: a drop of exactly the share is not one.
        let lost = previous - current;
        if previous <= 0.0 || lost <= self.share * previous {
            return Ok(None);
        }

        let mut attributes = skill_event.attributes.clone();
        attributes.insert("previous_agents_available".to_string(), previous.to_string());
        attributes.insert("agents_available".to_string(), current.to_string());
        attributes.insert("availability_drop_share".to_string(), format!("{:.4}", lost / previous));
        attributes.insert("availability_drop_threshold".to_string(), self.share.to_string());
        let event_time = skill_event.event_time_ms.to_string();
        Ok(Some(NormalizedEvent {
            event_id: derive_id(&[PLATFORM, "agent_availability_drop", skill_id, &event_time]),
            event_type: "agent_availability_drop".to_string(),
            // One signal per skill and interval. It adds no contacts, because
            // the skill's service-level event already counts them.
            failed_contacts: 1,
            total_contacts: 0,
            attributes,
            ..skill_event.clone()
        }))
    }
}

/// Reads an agent count: a JSON number or numeric string, finite and not
/// negative.
fn agent_count(value: &Value) -> Option<f64> {
    let count = match value {
        Value::Number(number) => number.as_f64()?,
        Value::String(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    (count.is_finite() && count >= 0.0).then_some(count)
}

/// Counts agents of an `agentStates` response (`GET /agents/states`) per
/// skill: one `agent_states` event per skill with the number of agents in
/// each state, and no value of any single agent. The response lists agents
/// one by one with names and phone numbers, which stop here.
fn agent_states(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let agents = payload
        .get("agentStates")
        .and_then(Value::as_array)
        .ok_or("NICE CXone payload has neither skillSummaries nor an agentStates array")?;
    let (time_field, time_ms) = match raw.interval_end_ms {
        Some(end) => ("interval_end_ms", end),
        None => ("received_at_ms", raw.received_at_ms),
    };
    let event_time_ms = check_event_time(time_ms, &time_ms.to_string())
        .map_err(|e| format!("NICE CXone raw event {time_field} is unusable as the event time: {e}"))?;

    #[derive(Default)]
    struct SkillCounts {
        name: Option<String>,
        unit: Option<String>,
        total: u64,
        available: u64,
        acw: u64,
        outbound: u64,
        by_state: BTreeMap<String, u64>,
    }
    let mut skills: BTreeMap<String, SkillCounts> = BTreeMap::new();
    for (index, agent) in agents.iter().enumerate() {
        let skill_id = text_field(agent, "skillId").unwrap_or_else(|| "0".to_string());
        if !skill_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "NICE CXone agentStates[{index}].skillId {:?} is not a skill id; CXone skill ids are integers",
                scrub_text(&skill_id)
            ));
        }
        let counts = skills.entry(skill_id).or_default();
        if counts.name.is_none() {
            counts.name = scrubbed_text_field(agent, "skillName");
        }
        if counts.unit.is_none() {
            counts.unit = id_field(agent, "businessUnitId");
        }
        let flag = |field: &str| match agent.get(field) {
            Some(Value::Bool(value)) => *value,
            Some(Value::String(text)) => text.eq_ignore_ascii_case("true"),
            _ => false,
        };
        // The single-agent form of the same API spells the flag isACW.
        let in_acw = flag("isAcw") || flag("isACW");
        let state = scrubbed_text_field(agent, "agentStateName").unwrap_or_else(|| "unknown".to_string());
        counts.total += 1;
        counts.acw += u64::from(in_acw);
        counts.outbound += u64::from(flag("isOutbound"));
        counts.available += u64::from(state.eq_ignore_ascii_case("available") && !in_acw);
        *counts.by_state.entry(slug(&state)).or_default() += 1;
    }

    let mut events = Vec::with_capacity(skills.len());
    for (skill_id, counts) in skills {
        let skill_name = counts.name.clone().unwrap_or_else(|| skill_id.clone());
        let mut attributes = BTreeMap::new();
        attributes.insert("skill_id".to_string(), skill_id.clone());
        attributes.insert("skill_name".to_string(), skill_name.clone());
        attributes.insert("agents_total".to_string(), counts.total.to_string());
        attributes.insert("agents_available".to_string(), counts.available.to_string());
        attributes.insert("agents_acw".to_string(), counts.acw.to_string());
        attributes.insert("agents_outbound".to_string(), counts.outbound.to_string());
        let states: Vec<String> = counts.by_state.iter().map(|(state, count)| format!("{state}={count}")).collect();
        attributes.insert("agent_states".to_string(), states.join(","));
        if let Some(unit) = counts.unit {
            attributes.insert("business_unit_id".to_string(), unit);
        }
        events.push(NormalizedEvent {
            event_id: derive_id(&[PLATFORM, "agent_states", &skill_id, &event_time_ms.to_string()]),
            event_type: "agent_states".to_string(),
            platform_source: PLATFORM.to_string(),
            delivery: raw.delivery.clone(),
            event_time_ms,
            received_at_ms: raw.received_at_ms,
            affected_service: format!("nice_{}", slug(&skill_name)),
            conversation_id: None,
            touchpoint: None,
            agent_id: None,
            phone_number: None,
            customer_id: None,
            failed_contacts: 0,
            total_contacts: 0,
            dependency: None,
            attributes,
            message: None,
        });
    }
    Ok(events)
}

/// Returns the touchpoint of a skill from its `mediaTypeName`, such as
/// "Phone Call" (`sip`) or "Chat" (`webchat`), or `None` for a media type
/// with no touchpoint, such as a work item.
fn touchpoint_for_media(skill: &Value) -> Option<String> {
    // "E-Mail" and "Email" both occur, so only letters are compared.
    let media: String = text_field(skill, "mediaTypeName")?
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let touchpoint = if media.contains("phone") || media.contains("voice") || media.contains("call") {
        "sip"
    } else if media.contains("chat") {
        "webchat"
    } else if media.contains("email") {
        "email"
    } else if media.contains("sms") || media.contains("digital") || media.contains("message") {
        "message"
    } else {
        return None;
    };
    Some(touchpoint.to_string())
}

fn skill_event(raw: &RawEvent, skill: &Value, index: usize, event_time_ms: i64) -> Result<NormalizedEvent, String> {
    let skill_id = text_field(skill, "skillId")
        .ok_or_else(|| format!("NICE CXone skillSummaries[{index}] has no skillId"))?;
    if !skill_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "NICE CXone skillSummaries[{index}].skillId {:?} is not a skill id; CXone skill ids are integers",
            scrub_text(&skill_id)
        ));
    }
    // The skill name becomes the service name, so it is scrubbed first: a
    // phone number in it becomes the word "phone" in the service name.
    let skill_name = scrubbed_text_field(skill, "skillName").unwrap_or_else(|| skill_id.clone());
    let required = |field: &str| {
        number_field(skill, field).ok_or_else(|| {
            format!("NICE CXone skill {skill_id} has no numeric {field}; the reporting response must carry it")
        })
    };
    let service_level = required("serviceLevel")?;
    let goal = required("serviceLevelGoal")?;
    let offered = number_field(skill, "contactsOffered").unwrap_or(0.0) as i64;
    let out_of_sla = number_field(skill, "contactsOutOfSLA").unwrap_or(0.0) as i64;

    let failing = service_level < goal;
    let event_type = if failing { "service_level_failure" } else { "service_level_ok" };

    let mut attributes = BTreeMap::new();
    attributes.insert("skill_id".to_string(), skill_id.clone());
    attributes.insert("skill_name".to_string(), skill_name.clone());
    // Numbers are written back from their parsed value, so text in a numeric
    // field never becomes an attribute.
    for (field, name) in [
        ("serviceLevel", "service_level"),
        ("serviceLevelGoal", "service_level_goal"),
        ("serviceLevelThreshold", "service_level_threshold_secs"),
        ("contactsOffered", "contacts_offered"),
        ("contactsOutOfSLA", "contacts_out_of_sla"),
        ("agentsAvailable", "agents_available"),
    ] {
        if let Some(value) = number_field(skill, field) {
            attributes.insert(name.to_string(), value.to_string());
        }
    }
    if let Some(media) = scrubbed_text_field(skill, "mediaTypeName") {
        attributes.insert("media_type".to_string(), media);
    }
    if let Some(unit) = id_field(skill, "businessUnitId") {
        attributes.insert("business_unit_id".to_string(), unit);
    }

    Ok(NormalizedEvent {
        event_id: derive_id(&[PLATFORM, &skill_id, &event_time_ms.to_string()]),
        event_type: event_type.to_string(),
        platform_source: PLATFORM.to_string(),
        delivery: raw.delivery.clone(),
        event_time_ms,
        received_at_ms: raw.received_at_ms,
        affected_service: format!("nice_{}", slug(&skill_name)),
        conversation_id: None,
        touchpoint: touchpoint_for_media(skill),
        agent_id: None,
        phone_number: None,
        customer_id: None,
        // A failing interval counts at least one failed contact, so it is a signal
        // even when CXone reports no contact out of SLA yet.
        failed_contacts: if failing { out_of_sla.max(1) } else { 0 },
        total_contacts: offered,
        dependency: None,
        attributes,
        message: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-12-12T14:01:02Z.
    const RECEIVED_AT_MS: i64 = 1_765_548_062_000;

    fn raw(payload: &str, interval_end_ms: Option<i64>) -> RawEvent {
        RawEvent {
            event_id: "n1".into(),
            source: "nice".into(),
            delivery: "nice_reporting_poll".into(),
            received_at_ms: RECEIVED_AT_MS,
            interval_start_ms: None,
            interval_end_ms,
            payload: payload.as_bytes().to_vec(),
            capture_json: None,
        }
    }

    #[test]
    fn string_typed_summary_gives_one_event_per_skill() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/nice/reporting-skills-summary-string-typed.json"
        ))
        .unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let events = normalize(&raw(&text, Some(1_765_548_060_000)), &value).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type, "service_level_ok");
        assert_eq!(events[0].affected_service, "nice_concierges_ob");
        assert_eq!(events[1].total_contacts, 1036);
        assert_eq!(events[1].event_time_ms, 1_765_548_060_000);
    }

    #[test]
    fn service_level_below_goal_is_failure() {
        let text = r#"{"skillSummaries":[{"skillId":"44","skillName":"Billing Voice","serviceLevel":"41","serviceLevelGoal":"80","contactsOffered":"120","contactsOutOfSLA":"70"}]}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let event = normalize(&raw(text, None), &value).unwrap().remove(0);
        assert_eq!(event.event_type, "service_level_failure");
        assert_eq!(event.failed_contacts, 70);
        assert_eq!(event.event_time_ms, RECEIVED_AT_MS);
        assert_eq!(event.attributes["service_level"], "41");
    }

    fn skill(fields: &str) -> Result<Vec<NormalizedEvent>, String> {
        let text = format!(r#"{{"skillSummaries":[{{"serviceLevel":"41","serviceLevelGoal":"80",{fields}}}]}}"#);
        let value: Value = serde_json::from_str(&text).unwrap();
        normalize(&raw(&text, None), &value)
    }

    #[test]
    fn crafted_skill_name_is_scrubbed() {
        let crafted = "Callback line +1 317 999 0001 owner leakme.person@example.org";
        let event = skill(&format!(r#""skillId":"44","skillName":"{crafted}","mediaTypeName":"{crafted}""#))
            .unwrap()
            .remove(0);
        assert_eq!(event.affected_service, "nice_callback_line_phone_owner_email");
        assert_eq!(event.attributes["skill_name"], "Callback line [PHONE] owner [EMAIL]");
        assert_eq!(event.attributes["media_type"], "Callback line [PHONE] owner [EMAIL]");
        let text = format!("{event:?}");
        assert!(!text.contains("leakme"), "{text}");
        assert!(!text.contains("999 0001"), "{text}");
    }

    #[test]
    fn non_numeric_skill_id_is_rejected() {
        let error = skill(r#""skillId":"leakme.person@example.org""#).unwrap_err();
        assert!(error.contains("skillId \"[EMAIL]\" is not a skill id"), "{error}");
        assert!(!error.contains("leakme"), "{error}");
    }

    #[test]
    fn text_in_numeric_attribute_is_dropped() {
        let event = skill(r#""skillId":"44","contactsOffered":"call +1 317 999 0001""#).unwrap().remove(0);
        assert!(!event.attributes.contains_key("contacts_offered"), "{:?}", event.attributes);
    }

    #[test]
    fn interval_end_out_of_range_is_rejected() {
        let text = r#"{"skillSummaries":[]}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let error = normalize(&raw(text, Some(1_765_548_060)), &value).unwrap_err();
        assert!(error.contains("interval_end_ms"), "{error}");
        assert!(error.contains("event time 1765548060 is out of range"), "{error}");
        assert!(error.contains("looks like epoch seconds"), "{error}");

        let mut received_late = raw(text, None);
        received_late.received_at_ms = i64::MAX;
        let error = normalize(&received_late, &value).unwrap_err();
        assert!(error.contains("received_at_ms"), "{error}");
    }
    fn polled(payload: &str, capture: &str) -> Result<Vec<NormalizedEvent>, String> {
        let mut event = raw(payload, Some(1_765_548_060_000));
        event.capture_json = Some(capture.to_string());
        let value: Value = serde_json::from_str(payload).unwrap();
        normalize(&event, &value)
    }

    fn drops(events: &[NormalizedEvent]) -> Vec<&NormalizedEvent> {
        events.iter().filter(|e| e.event_type == "agent_availability_drop").collect()
    }

    #[test]
    fn availability_drop_boundary_table() {
        // (previous, current, share, drop expected)
        let cases: [(f64, &str, f64, bool); 12] = [
            (10.0, "4", 0.5, true),
            (10.0, "5", 0.5, false),
            (10.0, "6", 0.5, false),
            (10.0, "7", 0.3, false),
            (10.0, "6", 0.3, true),
            (4.0, "3", 0.25, false),
            (4.0, "2", 0.25, true),
            (1.0, "0", 0.0, true),
            (3.0, "3", 0.0, false),
            (0.0, "0", 0.0, false),
            (2.0, "5", 0.5, false),
            (8.0, "0", 0.99, true),
        ];
        for (previous, current, share, expected) in cases {
            let payload = format!(
                r#"{{"skillSummaries":[{{"skillId":"44","skillName":"Billing Voice","serviceLevel":"90","serviceLevelGoal":"80","agentsAvailable":"{current}"}}]}}"#
            );
            let capture = format!(
                r#"{{"delivery":"nice_reporting_poll","previous_agents_available":{{"44":{previous}}},"availability_drop_share":{share}}}"#
            );
            let events = polled(&payload, &capture).unwrap();
            let found = drops(&events);
            assert_eq!(!found.is_empty(), expected, "previous {previous}, current {current}, share {share}");
        }
    }

    #[test]
    fn availability_drop_event_fields() {
        let payload = r#"{"skillSummaries":[{"skillId":"44","skillName":"Billing Voice","serviceLevel":"90","serviceLevelGoal":"80","contactsOffered":"12","agentsAvailable":"2","businessUnitId":"318204"}]}"#;
        let capture = r#"{"previous_agents_available":{"44":"8"},"availability_drop_share":0.5}"#;
        let events = polled(payload, capture).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type, "service_level_ok");
        let drop = &events[1];
        assert_eq!(drop.event_type, "agent_availability_drop");
        assert_eq!(drop.affected_service, "nice_billing_voice");
        assert_eq!(drop.event_time_ms, 1_765_548_060_000);
        assert_eq!(drop.failed_contacts, 1);
        assert_eq!(drop.total_contacts, 0);
        assert_eq!(drop.attributes["previous_agents_available"], "8");
        assert_eq!(drop.attributes["agents_available"], "2");
        assert_eq!(drop.attributes["availability_drop_share"], "0.7500");
        assert_eq!(drop.attributes["availability_drop_threshold"], "0.5");
        assert_eq!(drop.attributes["business_unit_id"], "318204");
        assert_ne!(drop.event_id, events[0].event_id);

        // The same skill and interval give the same id, so a repeated poll
        // is recognizable downstream.
        let again = polled(payload, capture).unwrap();
        assert_eq!(again[1].event_id, drop.event_id);
    }

    #[test]
    fn availability_drop_needs_previous_and_share() {
        let payload = r#"{"skillSummaries":[{"skillId":"44","serviceLevel":"90","serviceLevelGoal":"80","agentsAvailable":"0"}]}"#;
        for capture in [
            r#"{"delivery":"nice_reporting_poll"}"#,
            r#"{"previous_agents_available":{"44":9}}"#,
            r#"{"availability_drop_share":0.5}"#,
            r#"{"previous_agents_available":{"45":9},"availability_drop_share":0.5}"#,
        ] {
            let events = polled(payload, capture).unwrap();
            assert!(drops(&events).is_empty(), "{capture}");
        }
        let without_count = r#"{"skillSummaries":[{"skillId":"44","serviceLevel":"90","serviceLevelGoal":"80"}]}"#;
        let events = polled(without_count, r#"{"previous_agents_available":{"44":9},"availability_drop_share":0.5}"#).unwrap();
        assert!(drops(&events).is_empty());
    }

    #[test]
    fn invalid_drop_capture_is_rejected() {
        let payload = r#"{"skillSummaries":[{"skillId":"44","serviceLevel":"90","serviceLevelGoal":"80","agentsAvailable":"3"}]}"#;
        let error = polled(payload, r#"{"previous_agents_available":{"44":9},"availability_drop_share":1.5}"#).unwrap_err();
        assert!(error.contains("availability_drop_share is 1.5"), "{error}");
        let error = polled(payload, r#"{"previous_agents_available":[9],"availability_drop_share":0.5}"#).unwrap_err();
        assert!(error.contains("previous_agents_available is not an object"), "{error}");
        let error = polled(payload, r#"{"previous_agents_available":{"44":-1},"availability_drop_share":0.5}"#).unwrap_err();
        assert!(error.contains("of skill 44 is -1"), "{error}");
        let bad_count = r#"{"skillSummaries":[{"skillId":"44","serviceLevel":"90","serviceLevelGoal":"80","agentsAvailable":"NaN"}]}"#;
        let error = polled(bad_count, r#"{"previous_agents_available":{"44":9},"availability_drop_share":0.5}"#).unwrap_err();
        assert!(error.contains("skill 44 agentsAvailable is not a count"), "{error}");
    }

    #[test]
    fn agent_states_count_without_agents() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/nice/realtime-agents-states-doc-example-pii-filled.json"
        ))
        .unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let events = normalize(&raw(&text, None), &value).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.event_type, "agent_states");
        assert_eq!(event.affected_service, "nice_0");
        assert_eq!(event.attributes["agents_total"], "1");
        assert_eq!(event.attributes["agents_acw"], "1");
        assert_eq!(event.attributes["agents_outbound"], "1");
        assert_eq!(event.attributes["agents_available"], "0");
        assert_eq!(event.attributes["business_unit_id"], "0");
        assert_eq!(event.failed_contacts, 0);
        let printed = format!("{event:?}");
        for personal in ["Dana", "Whitfield", "8015550134", "8015550177", "8015550199", "dana.whitfield"] {
            assert!(!printed.contains(personal), "{personal} in {printed}");
        }
    }

    #[test]
    fn agent_states_group_by_skill() {
        let text = r#"{"agentStates":[
            {"agentId":1,"skillId":"11","skillName":"Billing Voice","agentStateName":"Available","isAcw":false},
            {"agentId":2,"skillId":"11","skillName":"Billing Voice","agentStateName":"Available","isACW":true},
            {"agentId":3,"skillId":"11","skillName":"Billing Voice","agentStateName":"Unavailable","isAcw":false},
            {"agentId":4,"skillId":"12","skillName":"Sales","agentStateName":"Available","isAcw":"False"}]}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let events = normalize(&raw(text, None), &value).unwrap();
        let billing = events.iter().find(|e| e.affected_service == "nice_billing_voice").unwrap();
        assert_eq!(billing.attributes["agents_total"], "3");
        assert_eq!(billing.attributes["agents_available"], "1");
        assert_eq!(billing.attributes["agents_acw"], "1");
        assert_eq!(billing.attributes["agent_states"], "available=2,unavailable=1");
        let sales = events.iter().find(|e| e.affected_service == "nice_sales").unwrap();
        assert_eq!(sales.attributes["agents_available"], "1");
    }

    #[test]
    fn skill_touchpoint_from_media_type() {
        let cases = [
            ("Phone Call", Some("sip")),
            ("Voice Mail", Some("sip")),
            ("Chat", Some("webchat")),
            ("Email", Some("email")),
            ("E-Mail", Some("email")),
            ("SMS", Some("message")),
            ("Digital", Some("message")),
            ("Work Item", None),
        ];
        for (media, touchpoint) in cases {
            let skill = serde_json::json!({ "mediaTypeName": media });
            assert_eq!(touchpoint_for_media(&skill).as_deref(), touchpoint, "{media}");
        }
        assert_eq!(touchpoint_for_media(&serde_json::json!({})), None);
    }
}
