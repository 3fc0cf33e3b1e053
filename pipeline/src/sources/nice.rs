//! NICE CXone reporting API responses. A skill summary
//! (`GET /reporting/v1/skills/summary`) becomes one event per skill:
//! `service_level_failure` when the skill's service level is below its goal,
//! `service_level_ok` otherwise, each counting the interval's contacts so the
//! postmortem gate can weigh the failures.
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

pub fn normalize(raw: &RawEvent, payload: &Value) -> Result<Vec<NormalizedEvent>, String> {
    let Some(skills) = payload.get("skillSummaries") else {
        return Err("NICE CXone agentStates responses are not handled; send the reporting skill summary (skillSummaries)".into());
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

    let mut events = Vec::with_capacity(skills.len());
    for (index, skill) in skills.iter().enumerate() {
        events.push(skill_event(raw, skill, index, event_time_ms)?);
    }
    Ok(events)
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
        touchpoint: None,
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
}
