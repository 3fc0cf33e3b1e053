//! Scrubbing of personal data from free text and from payloads that could not
//! be parsed into fields: phone numbers, email addresses, payment card
//! numbers, US social security numbers and IBANs become typed tokens, and
//! values under keys that name a person become `[REDACTED]`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::stages::mask::Masker;

/// JSON keys whose values identify a person, in lower case without `_` or
/// `-`, so that `agentId`, `agent_id` and `AGENT-ID` all match one entry.
const PERSONAL_KEYS: [&str; 32] = [
    "ani",
    "addressto",
    "addressfrom",
    "callbacknumbers",
    "callbackusername",
    "externalorganizationid",
    "conversationexternalorganizationids",
    "answereduserid",
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

/// An ISO-8601 date, with an optional time and zone, such as `2025-12-12`,
/// `2025-12-12 14:00` or `2000-01-01T00:00:00.000Z`. Dates name no person,
/// and messages about event times need them, so they are kept.
static ISO_DATE_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b",
    )
    .expect("date pattern")
});

/// A `tel:`, `sip:` or `sips:` URI whose user part is a number. The number
/// is group 1. The host after `@` names a trunk or an edge, not a person.
static PHONE_URI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:sips?|tel):(\+?\d[\d\-.()]*\d)").expect("phone URI pattern"));

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").expect("email pattern"));

/// An IBAN candidate: a country code, two check digits and 11 to 30 letters
/// or digits, in the electronic form or in groups of four separated by
/// spaces. [`iban_valid`] decides.
static IBAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b").expect("IBAN pattern"));

/// A US social security number in its usual `AAA-GG-SSSS` form.
/// [`ssn_valid`] excludes the numbers that are never issued.
static SSN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(\d{3})-(\d{2})-(\d{4})\b").expect("SSN pattern"));

/// A payment card candidate: 13 to 19 digits, with single spaces or dashes
/// between them. The Luhn check decides.
static CARD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("card pattern"));

/// Digit runs of 7 to 34 digits, allowing up to two spaces, dashes, dots or
/// parentheses between digits, and a leading `+`: phone numbers in national
/// and international formats, and any other long number.
static DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\(?\d(?:[\s\-.()]{0,2}\d){6,33}").expect("digit pattern"));

/// A JSON key and its string value in text that may not parse as JSON. The
/// value may be cut off by the end of the text, with or without a trailing
/// backslash, as in a truncated payload.
static KEY_STRING_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""((?:[^"\\]|\\.){1,128})"\s*:\s*"(?:[^"\\]|\\.)*(?:"|\\?\z)"#).expect("key pattern")
});

/// A JSON key and an array of strings after it, in text that may not parse
/// as JSON. The array may be cut off by the end of the text, as in a
/// truncated payload, such as Genesys' `conversationExternalContactIds`
/// that ends a `customer.end` body.
static KEY_STRING_ARRAY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""((?:[^"\\]|\\.){1,128})"\s*:\s*\[(?:\s*"(?:[^"\\]|\\.)*(?:"|\\?\z)\s*,?)*\s*(?:\]|\z)"#)
        .expect("key array pattern")
});

/// Replaces phone numbers, emails, card numbers, SSNs and IBANs in free
/// text with typed tokens, without a key: `[PHONE]`, `[EMAIL]`, `[CARD]`,
/// `[SSN]` and `[IBAN]`. Dates such as `2025-12-12` and ISO-8601 times are
/// kept. Any other run of 7 or more digits, epoch milliseconds included,
/// becomes `[PHONE]`, or `[CARD]` when it passes the card checks.
pub fn scrub_text(text: &str) -> String {
    Scrubber::keyless().scrub(text)
}

/// Scrubs a dead-letter reason, which can quote payload text such as a topic
/// name with a phone number in it. Numbers of 7 or more digits, event times
/// in epoch milliseconds included, become `[PHONE]` or `[CARD]`.
pub fn scrub_reason(text: &str) -> String {
    scrub_text(text)
}

/// Free-text scrubber. Without a key it writes `[PHONE]` and `[EMAIL]`, as
/// dead letters and the normalize stage need. With the mask stage's
/// [`Masker`] it writes `[PHONE:<pseudonym>]` for the E.164 form of a number
/// and `[EMAIL:<pseudonym>]` for an address in lower case, so a reader sees
/// that two messages name the same caller. `[CARD]`, `[SSN]` and `[IBAN]`
/// never carry a pseudonym.
#[derive(Clone, Copy)]
pub struct Scrubber<'a> {
    masker: Option<&'a Masker>,
}

impl<'a> Scrubber<'a> {
    pub fn keyless() -> Scrubber<'static> {
        Scrubber { masker: None }
    }

    pub fn keyed(masker: &'a Masker) -> Scrubber<'a> {
        Scrubber { masker: Some(masker) }
    }

    /// Returns `text` with every match replaced by its token. The rules run
    /// in a fixed order: dates, phone URIs, emails, IBANs, SSNs, cards, then
    /// any remaining digit run. Each rule matches only text that no earlier
    /// rule matched.
    pub fn scrub(&self, text: &str) -> String {
        let mut matches = Matches::new(text);
        matches.apply(&ISO_DATE_TIME, |_, found| {
            iso_date_valid(found.as_str()).then(|| (found.range(), Token::Keep))
        });
        matches.apply_captures(&PHONE_URI, |caps| {
            let number = caps.get(1)?;
            Some((number.range(), self.phone_token(number.as_str())))
        });
        matches.apply(&EMAIL, |_, found| Some((found.range(), self.email_token(found.as_str()))));
        matches.apply(&IBAN, |_, found| {
            let end = longest_valid_prefix(found.as_str(), iban_valid)?;
            Some((found.start()..found.start() + end, Token::Text("[IBAN]".into())))
        });
        matches.apply_captures(&SSN, |caps| {
            let whole = caps.get(0)?;
            ssn_valid(&caps[1], &caps[2], &caps[3]).then(|| (whole.range(), Token::Text("[SSN]".into())))
        });
        matches.apply(&CARD, |work, found| {
            // A `+` in front makes it an international phone number.
            if work[..found.start()].ends_with('+') {
                return None;
            }
            let end = longest_valid_prefix(found.as_str(), card_valid)?;
            Some((found.start()..found.start() + end, Token::Text("[CARD]".into())))
        });
        matches.apply(&DIGITS, |_, found| Some((found.range(), self.phone_token(found.as_str()))));
        matches.finish()
    }

    fn phone_token(&self, number: &str) -> Token {
        let Some(masker) = self.masker else {
            return Token::Text("[PHONE]".into());
        };
        match masker.e164(number) {
            Some(e164) => Token::Text(format!("[PHONE:{}]", masker.pseudonym("phone", &e164))),
            None => Token::Text("[PHONE]".into()),
        }
    }

    fn email_token(&self, address: &str) -> Token {
        match self.masker {
            Some(masker) => Token::Text(format!(
                "[EMAIL:{}]",
                masker.pseudonym("email", &address.to_lowercase())
            )),
            None => Token::Text("[EMAIL]".into()),
        }
    }
}

/// Replacement of a match.
enum Token {
    /// The match stays as it is, and later rules do not see it.
    Keep,
    Text(String),
}

/// The matches of a scrub so far. `work` is the text with every matched
/// byte set to NUL, so a later rule cannot match across or inside an earlier
/// match, and byte offsets stay those of the original text.
struct Matches<'t> {
    original: &'t str,
    work: String,
    found: Vec<(std::ops::Range<usize>, Token)>,
}

impl<'t> Matches<'t> {
    fn new(original: &'t str) -> Matches<'t> {
        Matches {
            original,
            work: original.to_string(),
            found: Vec::new(),
        }
    }

    /// Runs `pattern` over the unmatched text. `decide` receives the work
    /// text and a match, and returns the range to replace (within the
    /// match) and its token, or `None` to leave the match to later rules.
    fn apply(
        &mut self,
        pattern: &Regex,
        decide: impl Fn(&str, regex::Match<'_>) -> Option<(std::ops::Range<usize>, Token)>,
    ) {
        let new: Vec<_> = pattern
            .find_iter(&self.work)
            .filter_map(|found| decide(&self.work, found))
            .collect();
        self.claim(new);
    }

    fn apply_captures(
        &mut self,
        pattern: &Regex,
        decide: impl Fn(&regex::Captures<'_>) -> Option<(std::ops::Range<usize>, Token)>,
    ) {
        let new: Vec<_> = pattern.captures_iter(&self.work).filter_map(|caps| decide(&caps)).collect();
        self.claim(new);
    }

    fn claim(&mut self, new: Vec<(std::ops::Range<usize>, Token)>) {
        for (range, _) in &new {
            // Every pattern matches ASCII only, so the range lies on
            // character boundaries and NUL bytes keep the text valid UTF-8.
            let blank = "\0".repeat(range.len());
            self.work.replace_range(range.clone(), &blank);
        }
        self.found.extend(new);
    }

    fn finish(mut self) -> String {
        self.found.sort_by_key(|(range, _)| range.start);
        let mut output = String::with_capacity(self.original.len());
        let mut position = 0;
        for (range, token) in &self.found {
            output.push_str(&self.original[position..range.start]);
            match token {
                Token::Keep => output.push_str(&self.original[range.clone()]),
                Token::Text(text) => output.push_str(text),
            }
            position = range.end;
        }
        output.push_str(&self.original[position..]);
        output
    }
}

/// Returns the length of the longest prefix of `candidate` that passes
/// `valid`, trying the whole candidate and then each shorter prefix that
/// ends before a space or dash. A number followed by another group of
/// digits, such as a card number and its security code, is still found.
fn longest_valid_prefix(candidate: &str, valid: fn(&str) -> bool) -> Option<usize> {
    let ends = candidate
        .char_indices()
        .filter(|(_, c)| *c == ' ' || *c == '-')
        .map(|(index, _)| index)
        .rev();
    std::iter::once(candidate.len())
        .chain(ends)
        .find(|end| valid(&candidate[..*end]))
}

fn iso_date_valid(text: &str) -> bool {
    let month: u32 = text[5..7].parse().unwrap_or(0);
    let day: u32 = text[8..10].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// Checks an IBAN (ISO 13616) with or without spaces: 15 to 34 characters,
/// and the mod-97 check of ISO 7064 gives 1.
fn iban_valid(text: &str) -> bool {
    let compact: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // The country code and check digits move to the end, and each letter
    // becomes two digits (A = 10 ... Z = 35).
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value < 10 {
            (remainder * 10 + value) % 97
        } else {
            (remainder * 100 + value) % 97
        };
    }
    remainder == 1
}

/// Checks the parts of an SSN against the numbers the US Social Security
/// Administration never issues: area 000, 666 or 900 to 999, group 00, and
/// serial 0000.
fn ssn_valid(area: &str, group: &str, serial: &str) -> bool {
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// Checks a card number candidate: 13 to 19 digits with spaces or dashes,
/// a first digit from 1 to 9 (0 is no card issuer's industry), and the
/// Luhn check.
fn card_valid(text: &str) -> bool {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && !digits.starts_with('0') && luhn_valid(&digits)
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
            let redacted = KEY_STRING_ARRAY.replace_all(text, |caps: &regex::Captures<'_>| {
                if is_personal_key(&caps[1]) {
                    format!("\"{}\":[\"[REDACTED]\"]", &caps[1])
                } else {
                    caps[0].to_string()
                }
            });
            let redacted = KEY_STRING_VALUE.replace_all(&redacted, |caps: &regex::Captures<'_>| {
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

    use crate::config::Secret;

    fn masker() -> Masker {
        Masker::new(Secret::new("scrub-test-key-0123456789"), "k1")
    }

    #[test]
    fn free_text_formats_become_tokens() {
        let cases = [
            ("call +1 (317) 555-0100 now", "call [PHONE] now"),
            ("from 13175550100", "from [PHONE]"),
            ("tel:+13175550100", "tel:[PHONE]"),
            ("sip:+13175550100@trunk.example.com", "sip:[PHONE]@trunk.example.com"),
            ("mail dana.whitfield@example.com", "mail [EMAIL]"),
            ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
            ("card 4111-1111-1111-1111", "card [CARD]"),
            ("ssn 123-45-6789", "ssn [SSN]"),
            ("iban DE89 3704 0044 0532 0130 00", "iban [IBAN]"),
            ("no digits here", "no digits here"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub_text(input), expected, "{input}");
        }
    }

    /// One case per format. Each expects the exact output, so removing or
    /// reordering the rule that handles it makes the case fail.
    #[test]
    fn keyed_formats_become_typed_tokens() {
        let m = masker();
        let phone = |e164: &str| format!("[PHONE:{}]", m.pseudonym("phone", e164));
        let email = |address: &str| format!("[EMAIL:{}]", m.pseudonym("email", address));
        let us = phone("+13175550100");
        let london = phone("+442079460958");
        let berlin = phone("+4930901820");
        let cases: Vec<(&str, &str, String)> = vec![
            // International phone formats.
            ("plus, spaces", "call +44 20 7946 0958", format!("call {london}")),
            ("00 prefix", "call 0044 20 7946 0958", format!("call {london}")),
            ("plus, short German number", "+49 30 901820 failed", format!("{berlin} failed")),
            ("00 prefix, German", "0049 30 901820", berlin.clone()),
            ("plus, dashes", "+1-317-555-0100", us.clone()),
            ("plus, parentheses", "+1 (317) 555-0100", us.clone()),
            // National US formats, read in the default country.
            ("national, parentheses", "(317) 555-0100", us.clone()),
            ("national, dashes", "317-555-0100", us.clone()),
            ("national, dots", "317.555.0100", us.clone()),
            ("national prefix 1", "1-317-555-0100", us.clone()),
            ("digits only", "13175550100", us.clone()),
            // Phone URIs keep their scheme and host.
            ("tel URI", "tel:+13175550100", format!("tel:{us}")),
            ("sip URI", "sip:+13175550100@trunk.example.com", format!("sip:{us}@trunk.example.com")),
            // Emails, in lower case before hashing.
            ("email", "dana.whitfield@example.com", email("dana.whitfield@example.com")),
            ("email, plus tag", "dana+billing@example.com", email("dana+billing@example.com")),
            ("email, subdomain", "Dana@Mail.Example.CO.UK", email("dana@mail.example.co.uk")),
            ("sip URI with a name", "sip:dana@example.com", format!("sip:{}", email("dana@example.com"))),
            // Payment cards that pass the Luhn check.
            ("Visa, spaces", "card 4111 1111 1111 1111", "card [CARD]".into()),
            ("Visa, dashes", "4111-1111-1111-1111", "[CARD]".into()),
            ("Visa, no separator", "4111111111111111", "[CARD]".into()),
            ("Amex", "3782 822463 10005", "[CARD]".into()),
            ("19 digits", "6011 0000 0000 0000 001", "[CARD]".into()),
            ("card and security code", "4111 1111 1111 1111 123", "[CARD] 123".into()),
            // US social security numbers.
            ("SSN", "SSN 123-45-6789.", "SSN [SSN].".into()),
            // IBANs with a valid mod-97 check.
            ("IBAN DE, spaces", "DE89 3704 0044 0532 0130 00", "[IBAN]".into()),
            ("IBAN DE, compact", "DE89370400440532013000", "[IBAN]".into()),
            ("IBAN GB, spaces", "to GB82 WEST 1234 5698 7654 32 today", "to [IBAN] today".into()),
            ("IBAN GB, compact", "GB82WEST12345698765432", "[IBAN]".into()),
            ("IBAN, lower case", "gb82 west 1234 5698 7654 32", "[IBAN]".into()),
            // Dates and times survive.
            ("date", "on 2025-12-12", "on 2025-12-12".into()),
            ("ISO time", "at 2025-12-12T14:00:00.123Z", "at 2025-12-12T14:00:00.123Z".into()),
            ("date and time", "(2025-12-12 14:00)", "(2025-12-12 14:00)".into()),
            ("two dates", "2025-12-12 2025-12-13", "2025-12-12 2025-12-13".into()),
        ];
        for (rule, input, expected) in cases {
            assert_eq!(Scrubber::keyed(&m).scrub(input), expected, "{rule}: {input}");
        }
    }

    /// Text that looks like a format but fails its check does not get that
    /// format's token. The digits are still scrubbed as a number.
    #[test]
    fn failed_checks_give_no_typed_token() {
        let m = masker();
        let keyed = Scrubber::keyed(&m);
        let cases = [
            ("card failing Luhn", "4111 1111 1111 1112", "[CARD]", "4111"),
            ("card starting with 0", "0044 2079 4609 5800 5", "[CARD]", "2079"),
            ("SSN area 000", "000-12-3456", "[SSN]", "3456"),
            ("SSN area 666", "666-12-3456", "[SSN]", "3456"),
            ("SSN area 9xx", "912-34-5678", "[SSN]", "5678"),
            ("SSN group 00", "123-00-4567", "[SSN]", "4567"),
            ("SSN serial 0000", "123-45-0000", "[SSN]", "123-45"),
            ("IBAN bad check digits", "DE00 3704 0044 0532 0130 00", "[IBAN]", "3704"),
            ("IBAN one letter changed", "GB82 WEST 1234 5698 7654 33", "[IBAN]", "5698"),
        ];
        for (case, input, token, digits) in cases {
            for output in [scrub_text(input), keyed.scrub(input)] {
                assert!(!output.contains(token), "{case}: {output}");
                assert!(!output.contains(digits), "{case}: {output}");
                assert!(output.contains("[PHONE"), "{case}: {output}");
            }
        }
        // Without its check digits the GB IBAN's bank code passes, as any
        // word does.
        assert!(scrub_text("GB00 WEST 1234 5698 7654 32").starts_with("GB00 WEST "));
    }

    #[test]
    fn keyed_phone_tokens_match_across_formats() {
        let m = masker();
        let keyed = Scrubber::keyed(&m);
        let first = keyed.scrub("Caller 317-555-0100 dropped");
        let second = keyed.scrub("Caller tel:+13175550100 called back");
        let token = format!("[PHONE:{}]", m.phone_pseudonym("+1 317 555 0100"));
        assert!(first.contains(&token), "{first}");
        assert!(second.contains(&token), "{second}");
    }

    #[test]
    fn keyed_number_without_e164_is_phone_token() {
        let keyed = masker();
        let output = Scrubber::keyed(&keyed).scrub("order 12345678901234567890 failed");
        assert_eq!(output, "order [PHONE] failed");
    }

    #[test]
    fn epoch_milliseconds_are_scrubbed() {
        let output = Scrubber::keyed(&masker()).scrub("event time 1733011200000 rejected");
        assert!(!output.contains("1733011200000"), "{output}");
        assert!(output.starts_with("event time [PHONE"), "{output}");
    }

    #[test]
    fn keyless_tokens_survive_keyed_scrub() {
        let text = "Callback line [PHONE] owner [EMAIL] paid [CARD] [SSN] [IBAN]";
        assert_eq!(scrub_text(text), text);
        assert_eq!(Scrubber::keyed(&masker()).scrub(text), text);
    }

    #[test]
    fn later_rules_skip_earlier_tokens() {
        // An address whose pseudonym has 7 decimal digits in a row, which
        // the digit rule would match if it saw the email token.
        let m = masker();
        let digit_run = Regex::new(r"\d{7}").unwrap();
        let address = (0..1000)
            .map(|i| format!("user{i}@example.com"))
            .find(|address| digit_run.is_match(&m.pseudonym("email", address)))
            .expect("an email pseudonym with 7 digits in a row");
        let output = Scrubber::keyed(&m).scrub(&address);
        assert_eq!(output, format!("[EMAIL:{}]", m.pseudonym("email", &address)));
    }

    #[test]
    fn multibyte_text_is_kept() {
        let output = Scrubber::keyed(&masker()).scrub("Anrufer Müller – 030 901820 – café");
        assert!(output.starts_with("Anrufer Müller – [PHONE"), "{output}");
        assert!(output.ends_with("] – café"), "{output}");
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
    fn truncated_id_array_is_redacted() {
        let cases = [
            r#"{"eventTime":1,"conversationExternalContactIds":["c0571000-0039-4bad-8bad-c0ffee000039","c0571000-0040"#,
            r#"{"eventTime":1,"conversationExternalContactIds":["c0571000-0039-4bad-8bad-c0ffee000039"],"x":"#,
            r#"{"callbackNumbers": [ "+13175550123" , "+13175550124" ], "cut"#,
        ];
        for text in cases {
            let scrubbed = String::from_utf8(scrub_payload(text.as_bytes())).unwrap();
            assert!(!scrubbed.contains("c0ffee"), "{scrubbed}");
            assert!(!scrubbed.contains("4bad"), "{scrubbed}");
            assert!(!scrubbed.contains("0040"), "{scrubbed}");
            assert!(!scrubbed.contains("555"), "{scrubbed}");
            assert!(scrubbed.contains(r#":["[REDACTED]"]"#), "{scrubbed}");
        }
        // An array under a key that names no person keeps its values.
        let kept = String::from_utf8(scrub_payload(br#"{"queueIds":["q-1","q-2"],"cut"#)).unwrap();
        assert!(kept.contains(r#""q-1","q-2""#), "{kept}");
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
