//! Scrubbing of personal data from free text and from payloads that could not
//! be parsed into fields: phone numbers, email addresses and payment card
//! numbers become typed tokens, and values under keys that name a person
//! become `[REDACTED]`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// JSON keys whose values identify a person, in lower case without `_` or
/// `-`, so that `agentId`, `agent_id` and `AGENT-ID` all match one entry.
const PERSONAL_KEYS: [&str; 25] = [
    "ani",
    "dnis",
    "agentid",
    "userid",
    "externalcontactid",
    "conversationexternalcontactids",
    "phone",
    "phonenumber",
    "customerid",
    "stationphonenumber",
    "fromaddress",
    "toaddress",
    "username",
    "displayname",
    "fullname",
    "firstname",
    "lastname",
    "name",
    "email",
    "emailaddress",
    "address",
    "participantid",
    "sessionid",
    "mobile",
    "mobilenumber",
];

/// Returns whether a JSON key names a personal value, in any case and with
/// or without `_` and `-` between words.
pub fn is_personal_key(key: &str) -> bool {
    let canonical: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    PERSONAL_KEYS.contains(&canonical.as_str())
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").expect("email pattern"));

/// Digit runs of 7 to 19 digits, allowing up to two spaces, dashes, dots or
/// parentheses between digits, and a leading `+`.
static DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\(?\d(?:[\s\-.()]{0,2}\d){6,18}").expect("digit pattern"));

/// A calendar date such as `2025-12-12`, optionally after an opening
/// bracket and with the hour of an ISO-8601 time after it. DIGITS matches it, but a date names no person,
/// and messages about event times need it.
static ISO_DATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\(?\d{4}-\d{2}-\d{2}(?:[T ]\d{2})?$").expect("date pattern"));

/// A JSON key and its string value in text that may not parse as JSON. The
/// value may be cut off by the end of the text, with or without a trailing
/// backslash, as in a truncated payload.
static KEY_STRING_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""((?:[^"\\]|\\.){1,128})"\s*:\s*"(?:[^"\\]|\\.)*(?:"|\\?\z)"#).expect("key pattern")
});

/// Replaces emails, card numbers and phone numbers in free text. Dates such
/// as `2025-12-12` are kept.
pub fn scrub_text(text: &str) -> String {
    let text = EMAIL.replace_all(text, "[EMAIL]");
    DIGITS
        .replace_all(&text, |caps: &regex::Captures<'_>| {
            let matched = &caps[0];
            let digits: String = matched.chars().filter(char::is_ascii_digit).collect();
            if ISO_DATE.is_match(matched) {
                matched.to_string()
            } else if (13..=19).contains(&digits.len()) && luhn_valid(&digits) {
                "[CARD]".to_string()
            } else {
                "[PHONE]".to_string()
            }
        })
        .into_owned()
}

/// Scrubs a dead-letter reason, which can quote payload text such as a topic
/// name with a phone number in it. Numbers of 7 or more digits, event times
/// in epoch milliseconds included, become `[PHONE]` or `[CARD]`.
pub fn scrub_reason(text: &str) -> String {
    scrub_text(text)
}

fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let mut d = c.to_digit(10).unwrap_or(0);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// Returns a copy of a payload that is safe to keep in a dead letter. JSON
/// has its personal keys redacted and every string scrubbed, and other text
/// is scrubbed by pattern. Binary data is dropped, because it cannot be
/// checked.
pub fn scrub_payload(bytes: &[u8]) -> Vec<u8> {
    if let Ok(mut value) = serde_json::from_slice::<Value>(bytes) {
        scrub_json(&mut value);
        return serde_json::to_vec(&value).unwrap_or_default();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let redacted = KEY_STRING_VALUE.replace_all(text, |caps: &regex::Captures<'_>| {
                if is_personal_key(&caps[1]) {
                    format!("\"{}\":\"[REDACTED]\"", &caps[1])
                } else {
                    caps[0].to_string()
                }
            });
            scrub_text(&redacted).into_bytes()
        }
        Err(_) => Vec::new(),
    }
}

fn scrub_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if is_personal_key(key) {
                    *child = Value::String("[REDACTED]".into());
                } else {
                    scrub_json(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_json),
        Value::String(text) => *text = scrub_text(text),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_formats_become_tokens() {
        let cases = [
            ("call +1 (317) 555-0100 now", "call [PHONE] now"),
            ("from 13175550100", "from [PHONE]"),
            ("tel:+13175550100", "tel:[PHONE]"),
            ("mail dana.whitfield@example.com", "mail [EMAIL]"),
            ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
            ("card 4111-1111-1111-1111", "card [CARD]"),
            ("no digits here", "no digits here"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub_text(input), expected, "{input}");
        }
    }

    #[test]
    fn json_personal_keys_are_redacted() {
        let payload = br#"{"eventBody":{"ani":"tel:+15555550898","userId":"b781","mediaType":"VOICE"}}"#;
        let scrubbed = String::from_utf8(scrub_payload(payload)).unwrap();
        assert!(!scrubbed.contains("15555550898"), "{scrubbed}");
        assert!(!scrubbed.contains("b781"), "{scrubbed}");
        assert!(scrubbed.contains("VOICE"), "{scrubbed}");
    }

    #[test]
    fn truncated_json_is_scrubbed_by_pattern() {
        let payload = br#"{"detail":{"eventBody":{"ani":"tel:+15555550898","userId":"b781d507-2b83"#;
        let scrubbed = String::from_utf8(scrub_payload(payload)).unwrap();
        assert!(!scrubbed.contains("5555550898"), "{scrubbed}");
    }

    #[test]
    fn truncated_value_at_end_is_redacted() {
        let cases: [&[u8]; 4] = [
            br#"{"detail":{"eventBody":{"mediaType":"VOICE","userId":"agent-LEAKME-7d1e"#,
            br#"{"eventBody":{"userId": "agent-LEAKME-7d1e"#,
            br#"{"eventBody":{"agent_id":"agent-LEAKME-7d1e","mediaType":"VOI"#,
            br#"{"eventBody":{"mediaType":"VOICE","Participant-Id":"agent-LEAKME-7d1e"#,
        ];
        for payload in cases {
            let scrubbed = String::from_utf8(scrub_payload(payload)).unwrap();
            assert!(!scrubbed.contains("LEAKME"), "{scrubbed}");
            assert!(scrubbed.contains("[REDACTED]"), "{scrubbed}");
        }
    }

    #[test]
    fn truncated_json_keeps_other_values() {
        let payload = br#"{"eventBody":{"mediaType":"VOICE","userId":"b781"#;
        let scrubbed = String::from_utf8(scrub_payload(payload)).unwrap();
        assert_eq!(scrubbed, r#"{"eventBody":{"mediaType":"VOICE","userId":"[REDACTED]""#);
    }

    #[test]
    fn personal_key_spellings_match() {
        let keys = [
            "customer_id",
            "agent_id",
            "user_id",
            "phone_number",
            "external_contact_id",
            "participant_id",
            "CustomerId",
            "USERID",
            "Email",
            "EMAIL_ADDRESS",
            "first_name",
            "ANI",
            "dnis",
        ];
        for key in keys {
            assert!(is_personal_key(key), "{key}");
            let payload = format!(r#"{{"{key}":"leakme-0001","kept":"yes"}}"#);
            let scrubbed = String::from_utf8(scrub_payload(payload.as_bytes())).unwrap();
            assert!(!scrubbed.contains("leakme"), "{key}: {scrubbed}");
            assert!(scrubbed.contains("yes"), "{key}: {scrubbed}");
        }
        for key in ["mediaType", "check_name", "queueId", "skillName"] {
            assert!(!is_personal_key(key), "{key}");
        }
    }

    #[test]
    fn reason_phone_and_email_are_scrubbed() {
        let reason = "Genesys topic v2.detail.events.conversation.+13179990001.customer.end is not handled";
        assert_eq!(
            scrub_reason(reason),
            "Genesys topic v2.detail.events.conversation.[PHONE].customer.end is not handled"
        );
        let reason = "payload from leakme.person@example.org rejected";
        assert_eq!(scrub_reason(reason), "payload from [EMAIL] rejected");
    }

    #[test]
    fn dates_survive_scrubbing() {
        let reason = "accepted event times are from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z (2025-12-12 14:00)";
        assert_eq!(scrub_reason(reason), reason);
    }

    #[test]
    fn binary_payload_is_dropped() {
        assert!(scrub_payload(&[0xff, 0xfe, 0x00, 0x9c]).is_empty());
    }
}
