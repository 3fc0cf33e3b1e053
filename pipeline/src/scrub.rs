//! Scrubbing of personal data from free text and from payloads that could not
//! be parsed into fields: phone numbers, email addresses and payment card
//! numbers become typed tokens, and values under keys that name a person
//! become `[REDACTED]`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// JSON keys whose values identify a person, in the platforms' spellings.
const PERSONAL_KEYS: [&str; 22] = [
    "ani",
    "dnis",
    "agentId",
    "userId",
    "externalContactId",
    "conversationExternalContactIds",
    "phoneNumber",
    "customerId",
    "stationPhoneNumber",
    "fromAddress",
    "toAddress",
    "userName",
    "firstName",
    "lastName",
    "name",
    "email",
    "emailAddress",
    "address",
    "participantId",
    "sessionId",
    "agent_id",
    "phone_number",
];

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").expect("email pattern"));

/// Digit runs of 7 to 19 digits, allowing up to two spaces, dashes, dots or
/// parentheses between digits, and a leading `+`.
static DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\(?\d(?:[\s\-.()]{0,2}\d){6,18}").expect("digit pattern"));

static PERSONAL_KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    let keys = PERSONAL_KEYS.join("|");
    Regex::new(&format!(r#""({keys})"\s*:\s*"[^"]*""#)).expect("key pattern")
});

/// Replaces emails, card numbers and phone numbers in free text.
pub fn scrub_text(text: &str) -> String {
    let text = EMAIL.replace_all(text, "[EMAIL]");
    DIGITS
        .replace_all(&text, |caps: &regex::Captures<'_>| {
            let digits: String = caps[0].chars().filter(char::is_ascii_digit).collect();
            if (13..=19).contains(&digits.len()) && luhn_valid(&digits) {
                "[CARD]".to_string()
            } else {
                "[PHONE]".to_string()
            }
        })
        .into_owned()
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
            let redacted = PERSONAL_KEY_VALUE.replace_all(text, "\"$1\":\"[REDACTED]\"");
            scrub_text(&redacted).into_bytes()
        }
        Err(_) => Vec::new(),
    }
}

fn scrub_json(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if PERSONAL_KEYS.contains(&key.as_str()) {
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
    fn binary_payload_is_dropped() {
        assert!(scrub_payload(&[0xff, 0xfe, 0x00, 0x9c]).is_empty());
    }
}
