//! E.164 form of phone numbers, so that every written form of one number
//! gets one pseudonym.

use std::panic;

use phonenumber::country::Id as CountryId;
use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, Type};

/// Maximum digits of an E.164 number, country code included (ITU-T E.164).
const MAX_E164_DIGITS: usize = 15;

/// Minimum digits of a phone number. Shorter runs are extensions, counts or
/// codes.
const MIN_PHONE_DIGITS: usize = 7;

/// Returns the E.164 form, such as `+13175550100`, of a phone number written
/// as `+1 (317) 555-0100`, `13175550100`, `tel:+13175550100`,
/// `sip:+13175550100@trunk.example.com;user=phone`, `0044 20 7946 0958` or
/// `011 44 20 7946 0958`, or as a national number of `default_country`
/// (`(317) 555-0100` for the US). Returns `None` for anything else,
/// including a SIP address with a name as its user part.
///
/// A leading `+` or `00` starts an international number. The national
/// prefix (`1` in the US, `0` in the UK) and other national rules come from
/// the libphonenumber metadata of the `phonenumber` crate. Only the form is
/// normalized. A well-formed number that no carrier assigns, such as one in
/// the 555 range, still gets its E.164 form. A number whose length no region
/// of its calling code dials, such as a US number without its area code,
/// has none.
pub fn to_e164(value: &str, default_country: CountryId) -> Option<String> {
    let number = strip_uri(value.trim());
    let (international, digits) = digits_of(number)?;
    if digits.len() < MIN_PHONE_DIGITS {
        return None;
    }

    // The crate reads a number with a default country by that country's
    // national rules even when it starts with `+` (phonenumber 0.3.10), so
    // an international number is parsed without one.
    let parsed = if international {
        parse(None, &format!("+{digits}"))?
    } else if let Some(rest) = digits.strip_prefix("00") {
        parse(None, &format!("+{rest}"))?
    } else {
        parse(Some(default_country), &digits)?
    };
    let e164 = parsed.format().mode(Mode::E164).to_string();
    let length = e164.len() - 1;
    let national_length = length.saturating_sub(parsed.code().value().to_string().len());
    let possible = (MIN_PHONE_DIGITS..=MAX_E164_DIGITS).contains(&length)
        && has_possible_length(parsed.code().value(), national_length);
    possible.then_some(e164)
}

/// Number types whose possible national lengths count. Universal access
/// and voicemail numbers are left out: Canada lists 7-digit UAN numbers
/// (310-xxxx), which would let a US number without its area code through.
const NUMBER_TYPES: [Type; 9] = [
    Type::Unknown,
    Type::FixedLine,
    Type::Mobile,
    Type::TollFree,
    Type::PremiumRate,
    Type::SharedCost,
    Type::PersonalNumber,
    Type::Voip,
    Type::Pager,
];

/// Returns whether a national number of `length` digits can be dialled
/// from abroad under the calling code, by the possible lengths of any
/// region that shares the code. A local number without its area code, such
/// as the US `555-0100`, has no E.164 form and fails here. A code without
/// length data passes.
fn has_possible_length(calling_code: u16, length: usize) -> bool {
    let Some(regions) = DATABASE.by_code(&calling_code) else {
        return false;
    };
    let lengths: Vec<u16> = regions
        .iter()
        .flat_map(|region| NUMBER_TYPES.iter().filter_map(|kind| region.descriptors().get(*kind)))
        .flat_map(|descriptor| descriptor.possible_length().iter().copied())
        .collect();
    lengths.is_empty() || u16::try_from(length).is_ok_and(|length| lengths.contains(&length))
}

/// Parses digits with the `phonenumber` crate. A panic inside the crate,
/// which older releases had on malformed input, counts as "not a number"
/// instead of stopping the stage. Its input is only `+` and ASCII digits.
fn parse(country: Option<CountryId>, digits: &str) -> Option<phonenumber::PhoneNumber> {
    panic::catch_unwind(|| phonenumber::parse(country, digits)).ok()?.ok()
}

/// Removes a `tel:`, `sip:` or `sips:` scheme, and the `@host` part and URI
/// parameters after `;`, leaving the user part.
fn strip_uri(value: &str) -> &str {
    let lower_prefix = |prefix: &str| {
        value
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    let without_scheme = ["tel:", "sip:", "sips:"]
        .into_iter()
        .find(|prefix| lower_prefix(prefix))
        .map_or(value, |prefix| &value[prefix.len()..]);
    let user = without_scheme.split('@').next().unwrap_or(without_scheme);
    user.split(';').next().unwrap_or(user).trim()
}

/// Returns whether the number starts with `+`, and its digits, when it is
/// made only of digits and the separators people write between them
/// (space, `-`, `.`, `(`, `)`), with at most one `+` in front. Returns `None`
/// for anything else, such as a name or an id with letters.
fn digits_of(number: &str) -> Option<(bool, String)> {
    let (international, rest) = match number.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    // An E.164 number has at most 15 digits, and a national form or an
    // international prefix adds a few.
    (digits.len() <= MAX_E164_DIGITS + 3).then_some((international, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(value: &str) -> Option<String> {
        to_e164(value, CountryId::US)
    }

    #[test]
    fn us_number_formats_give_one_e164() {
        let formats = [
            "+1 (317) 555-0100",
            "+13175550100",
            "13175550100",
            "1-317-555-0100",
            "tel:+13175550100",
            "tel:+1-317-555-0100",
            "sip:+13175550100@trunk.example.com",
            "sip:+13175550100@edge.example.com;user=phone",
            "SIP:+13175550100@trunk.example.com",
            "(317) 555-0100",
            "317-555-0100",
            "317.555.0100",
            "3175550100",
            " +1 317 555 0100 ",
            "011 1 317 555 0100",
        ];
        for value in formats {
            assert_eq!(us(value).as_deref(), Some("+13175550100"), "{value}");
        }
    }

    #[test]
    fn international_formats_give_one_e164() {
        let cases = [
            ("+44 20 7946 0958", "+442079460958"),
            ("0044 20 7946 0958", "+442079460958"),
            ("+44 (0)20 7946 0958", "+442079460958"),
            ("tel:+44-20-7946-0958", "+442079460958"),
            ("+49 30 901820", "+4930901820"),
            ("0049 30 901820", "+4930901820"),
            ("+33 1 09 75 83 51", "+33109758351"),
            // A mobile number of China starts with 1, like the US national
            // prefix, which must not be stripped from an international number.
            ("+86 138 0013 8000", "+8613800138000"),
        ];
        for (value, expected) in cases {
            assert_eq!(us(value).as_deref(), Some(expected), "{value}");
        }
    }

    #[test]
    fn national_numbers_use_default_country() {
        assert_eq!(to_e164("020 7946 0958", CountryId::GB).as_deref(), Some("+442079460958"));
        assert_eq!(to_e164("030 901820", CountryId::DE).as_deref(), Some("+4930901820"));
        assert_eq!(to_e164("(317) 555-0100", CountryId::US).as_deref(), Some("+13175550100"));
    }

    #[test]
    fn non_numbers_have_no_e164() {
        let values = [
            "",
            "anonymous",
            "agent-42",
            "sip:dana.whitfield@example.com",
            "b781d507-2b83-57b9-88d1-43565293c1db",
            "555-0100",
            "+1 317 555 0100 ext. 12",
            "12345678901234567890123",
            "+",
            "++13175550100",
            "1+3175550100",
        ];
        for value in values {
            assert_eq!(us(value), None, "{value}");
        }
    }
}
