//! Mask: reads `normalized`, writes `masked`, keyed by affected service.
//! agentId, phoneNumber and customerId become HMAC-SHA-256 pseudonyms under
//! the configured key, so one person keeps one pseudonym under one key but
//! cannot be recovered. Free text and attribute values are scrubbed. The
//! masked schema has no field for a raw personal value. At-least-once:
//! offsets are committed after the outputs are acknowledged.

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;
use crate::model::{MaskedEvent, NormalizedEvent, Record, RecordKind};
use crate::scrub::scrub_text;
use crate::topology::MASKED;
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// Makes keyed pseudonyms.
#[derive(Clone)]
pub struct Masker {
    key: Secret,
    key_id: String,
}

impl Masker {
    pub fn new(key: Secret, key_id: impl Into<String>) -> Masker {
        Masker {
            key,
            key_id: key_id.into(),
        }
    }

    /// Returns the pseudonym of `value` of the given kind (`agent`, `phone`,
    /// `customer`): `<kind>_<key id>_<first 16 bytes of the HMAC in hex>`.
    /// The kind is part of the MAC input, so an agent id and a customer id
    /// with the same text get different pseudonyms.
    pub fn pseudonym(&self, kind: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("{kind}_{}_{}", self.key_id, hex::encode(&digest[..16]))
    }

    pub fn mask(&self, event: NormalizedEvent) -> MaskedEvent {
        let phone = event.phone_number.as_deref().map(canonical_phone);
        MaskedEvent {
            agent_pseudonym: event.agent_id.as_deref().map(|v| self.pseudonym("agent", v.trim())),
            phone_pseudonym: phone.as_deref().map(|v| self.pseudonym("phone", v)),
            customer_pseudonym: event
                .customer_id
                .as_deref()
                .map(|v| self.pseudonym("customer", v.trim())),
            mask_key_id: self.key_id.clone(),
            attributes: event
                .attributes
                .into_iter()
                .map(|(name, value)| (name, scrub_text(&value)))
                .collect(),
            message: event.message.as_deref().map(scrub_text),
            event_id: event.event_id,
            event_type: event.event_type,
            platform_source: event.platform_source,
            delivery: event.delivery,
            event_time_ms: event.event_time_ms,
            received_at_ms: event.received_at_ms,
            affected_service: event.affected_service,
            conversation_id: event.conversation_id,
            touchpoint: event.touchpoint,
            failed_contacts: event.failed_contacts,
            total_contacts: event.total_contacts,
            dependency: event.dependency,
        }
    }
}

/// Reduces a phone number to `+` and digits, without `tel:` or `sip:`
/// wrappers or the SIP host, so the formats of one number give one pseudonym.
pub fn canonical_phone(value: &str) -> String {
    let trimmed = value.trim();
    let without_scheme = trimmed
        .strip_prefix("tel:")
        .or_else(|| trimmed.strip_prefix("sip:"))
        .unwrap_or(trimmed);
    let number = without_scheme.split('@').next().unwrap_or(without_scheme);
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    format!("+{digits}")
}

pub struct MaskStage {
    masker: Masker,
}

impl MaskStage {
    pub fn new(masker: Masker) -> MaskStage {
        MaskStage { masker }
    }
}

#[async_trait]
impl Stage for MaskStage {
    fn name(&self) -> &'static str {
        "mask"
    }

    fn input_kind(&self) -> RecordKind {
        RecordKind::Normalized
    }

    fn input_has_personal_data(&self) -> bool {
        true
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        Ok(batch
            .into_iter()
            .map(|decoded| match decoded.record {
                Record::Normalized(event) => {
                    let masked = self.masker.mask(event);
                    Ok(vec![Emit {
                        topic: MASKED,
                        key: masked.affected_service.clone(),
                        record: Record::Masked(masked),
                    }])
                }
                _ => Err(Reject::new("mask reads normalized events only")),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> Masker {
        Masker::new(Secret::new("test-key-0123456789"), "k1")
    }

    #[test]
    fn phone_formats_share_one_pseudonym() {
        let m = masker();
        let a = m.pseudonym("phone", &canonical_phone("tel:+13175550100"));
        let b = m.pseudonym("phone", &canonical_phone("sip:+13175550100@trunk.example.com"));
        let c = m.pseudonym("phone", &canonical_phone("+1 (317) 555-0100"));
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn pseudonym_depends_on_key() {
        let other = Masker::new(Secret::new("another-key-987654"), "k2");
        assert_ne!(masker().pseudonym("agent", "a1"), other.pseudonym("agent", "a1"));
    }

    #[test]
    fn pseudonym_depends_on_kind() {
        let m = masker();
        assert_ne!(m.pseudonym("agent", "x"), m.pseudonym("customer", "x"));
    }

    #[test]
    fn masked_event_holds_no_raw_value() {
        let event = NormalizedEvent {
            event_id: "e".into(),
            event_type: "call_failed".into(),
            platform_source: "genesys_cloud_cx".into(),
            delivery: "eventbridge".into(),
            event_time_ms: 1,
            received_at_ms: 1,
            affected_service: "voice_inbound".into(),
            conversation_id: Some("c".into()),
            touchpoint: Some("sip".into()),
            agent_id: Some("b781d507-2b83-57b9-88d1-43565293c1db".into()),
            phone_number: Some("tel:+15555550898".into()),
            customer_id: Some("f56a0a91-1f94-5ede-8bcd-31ed6078f0b7".into()),
            failed_contacts: 1,
            total_contacts: 1,
            dependency: None,
            attributes: [("note".to_string(), "callback 317-555-0100".to_string())].into(),
            message: Some("caller dana@example.com".into()),
        };
        let masked = masker().mask(event);
        let text = format!("{masked:?}");
        assert!(!text.contains("b781d507"), "{text}");
        assert!(!text.contains("5555550898"), "{text}");
        assert!(!text.contains("f56a0a91"), "{text}");
        assert!(!text.contains("555-0100"), "{text}");
        assert!(!text.contains("dana@example.com"), "{text}");
        assert!(masked.agent_pseudonym.unwrap().starts_with("agent_k1_"));
    }
}
