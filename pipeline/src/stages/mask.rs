//! Mask: reads `normalized`, writes `masked`, keyed by affected service.
//! This stage is the gate before storage, so it fails closed:
//!
//! - agentId, phoneNumber and customerId become HMAC-SHA-256 pseudonyms
//!   under the configured key, so one person keeps one pseudonym under one
//!   key but cannot be recovered. Phone numbers are brought to E.164 first.
//!   While a previous key is configured, the pseudonyms under it travel too.
//! - Attributes pass only when they are on the allow-list
//!   ([`allow_list::ALLOWED_ATTRIBUTES`]). Others are dropped and counted.
//! - Free text (the message, allowed attribute values, dependency names)
//!   is scrubbed with [`Scrubber::keyed`].
//!
//! The masked schema has no field for a raw personal value. At-least-once:
//! offsets are committed after the outputs are acknowledged.

mod allow_list;
mod phone;

use std::collections::BTreeMap;

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use phonenumber::country::Id as CountryId;
use sha2::Sha256;

pub use allow_list::{treatment, Treatment, ALLOWED_ATTRIBUTES};
pub use phone::to_e164;

use crate::config::{Config, ConfigError, Secret};
use crate::model::{DependencyCheck, MaskedEvent, NormalizedEvent, PreviousPseudonyms, Record, RecordKind};
use crate::scrub::{scrub_text, Scrubber};
use crate::topology::MASKED;
use crate::transport::{Decoded, Emit, Outcome, Reject, Stage, TransportError};

/// One HMAC key and the id written next to its pseudonyms.
#[derive(Clone)]
struct PseudonymKey {
    key: Secret,
    key_id: String,
}

impl PseudonymKey {
    fn pseudonym(&self, kind: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("{kind}_{}_{}", self.key_id, hex::encode(&digest[..16]))
    }
}

/// Makes keyed pseudonyms and masks normalized events.
#[derive(Clone)]
pub struct Masker {
    active: PseudonymKey,
    previous: Option<PseudonymKey>,
    default_country: CountryId,
}

impl Masker {
    /// Creates a masker with one key, reading national phone numbers as US
    /// numbers.
    pub fn new(key: Secret, key_id: impl Into<String>) -> Masker {
        Masker {
            active: PseudonymKey {
                key,
                key_id: key_id.into(),
            },
            previous: None,
            default_country: CountryId::US,
        }
    }

    /// Adds the key that was active before a rotation. Each masked event
    /// then also carries its pseudonyms under that key.
    pub fn with_previous_key(mut self, key: Secret, key_id: impl Into<String>) -> Masker {
        self.previous = Some(PseudonymKey {
            key,
            key_id: key_id.into(),
        });
        self
    }

    /// Sets the country whose national format phone numbers without `+` or
    /// `00` are read in.
    pub fn with_default_country(mut self, country: CountryId) -> Masker {
        self.default_country = country;
        self
    }

    /// Creates the masker that `[mask]` configures: the active key, the
    /// previous key when one is set, and the default country.
    pub fn from_config(config: &Config) -> Result<Masker, ConfigError> {
        let mut masker = Masker::new(config.mask_key()?.clone(), config.mask.key_id.clone())
            .with_default_country(config.mask.default_country_id()?);
        if let Some((key, key_id)) = config.previous_mask_key()? {
            masker = masker.with_previous_key(key.clone(), key_id);
        }
        Ok(masker)
    }

    /// Returns the id of the active key.
    pub fn key_id(&self) -> &str {
        &self.active.key_id
    }

    /// Returns the pseudonym of `value` of the given kind (`agent`, `phone`,
    /// `customer`, `email`, `session`) under the active key:
    /// `<kind>_<key id>_<first 16 bytes of the HMAC in hex>`. The kind is
    /// part of the MAC input, so an agent id and a customer id with the
    /// same text get different pseudonyms.
    pub fn pseudonym(&self, kind: &str, value: &str) -> String {
        self.active.pseudonym(kind, value)
    }

    /// Returns the E.164 form of a phone number in any written form, with
    /// national numbers read in the default country.
    pub fn e164(&self, value: &str) -> Option<String> {
        phone::to_e164(value, self.default_country)
    }

    /// Returns the phone pseudonym of `value` under the active key: of its
    /// E.164 form, or of its trimmed text when it is not a phone number.
    pub fn phone_pseudonym(&self, value: &str) -> String {
        self.active.pseudonym("phone", &self.phone_text(value))
    }

    /// Returns the text a phone pseudonym is made of: the E.164 form, or
    /// the trimmed value when it is not a phone number, so it still gets a
    /// pseudonym and never passes through.
    fn phone_text(&self, value: &str) -> String {
        self.e164(value).unwrap_or_else(|| value.trim().to_string())
    }

    pub fn mask(&self, event: NormalizedEvent) -> MaskedEvent {
        let scrubber = Scrubber::keyed(self);
        let agent = trimmed(event.agent_id.as_deref());
        let phone = event.phone_number.as_deref().map(|value| self.phone_text(value));
        let customer = trimmed(event.customer_id.as_deref());
        let previous_pseudonyms = self.previous.as_ref().map(|key| PreviousPseudonyms {
            key_id: key.key_id.clone(),
            agent_pseudonym: agent.map(|value| key.pseudonym("agent", value)),
            phone_pseudonym: phone.as_deref().map(|value| key.pseudonym("phone", value)),
            customer_pseudonym: customer.map(|value| key.pseudonym("customer", value)),
        });
        let (attributes, dropped) = self.mask_attributes(event.attributes, &scrubber);
        if !dropped.is_empty() {
            tracing::debug!(
                event_id = %event.event_id,
                dropped_attributes = ?dropped,
                "Dropped attributes that are not on the mask allow-list."
            );
        }

        MaskedEvent {
            agent_pseudonym: agent.map(|value| self.active.pseudonym("agent", value)),
            phone_pseudonym: phone.as_deref().map(|value| self.active.pseudonym("phone", value)),
            customer_pseudonym: customer.map(|value| self.active.pseudonym("customer", value)),
            mask_key_id: self.active.key_id.clone(),
            attributes,
            message: event.message.as_deref().map(|text| scrubber.scrub(text)),
            dependency: event.dependency.map(|check| DependencyCheck {
                name: scrubber.scrub(&check.name),
                location: check.location.as_deref().map(|text| scrubber.scrub(text)),
                ..check
            }),
            previous_pseudonyms,
            dropped_attribute_count: dropped.len() as i64,
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
        }
    }

    /// Keeps the allow-listed attributes with their treatment applied, and
    /// returns the names of the dropped ones, scrubbed without a key for
    /// the log.
    fn mask_attributes(
        &self,
        attributes: BTreeMap<String, String>,
        scrubber: &Scrubber<'_>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let mut allowed = BTreeMap::new();
        let mut dropped = Vec::new();
        for (name, value) in attributes {
            let masked = match allow_list::treatment(&name) {
                Some(Treatment::Scrub) => scrubber.scrub(&value),
                Some(Treatment::Pseudonymize(kind)) => self.active.pseudonym(kind, value.trim()),
                Some(Treatment::PhonePseudonym) => self.phone_pseudonym(&value),
                None => {
                    dropped.push(scrub_text(&name));
                    continue;
                }
            };
            allowed.insert(name, masked);
        }
        (allowed, dropped)
    }
}

/// Returns the trimmed id, or `None` when there is none or it is blank.
fn trimmed(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
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

    const OLD_KEY: &str = "old-test-key-0123456789";
    const NEW_KEY: &str = "new-test-key-9876543210";

    fn masker() -> Masker {
        Masker::new(Secret::new("test-key-0123456789"), "k1")
    }

    fn event() -> NormalizedEvent {
        NormalizedEvent {
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
            attributes: BTreeMap::new(),
            message: None,
        }
    }

    #[test]
    fn phone_formats_share_one_pseudonym() {
        let m = masker();
        let expected = m.pseudonym("phone", "+13175550100");
        for value in [
            "+1 (317) 555-0100",
            "13175550100",
            "tel:+13175550100",
            "sip:+13175550100@trunk.example.com",
            "(317) 555-0100",
            "317-555-0100",
        ] {
            assert_eq!(m.phone_pseudonym(value), expected, "{value}");
        }
    }

    #[test]
    fn phone_default_country_is_configurable() {
        let m = masker().with_default_country(CountryId::GB);
        assert_eq!(m.phone_pseudonym("020 7946 0958"), m.pseudonym("phone", "+442079460958"));
        assert_eq!(m.phone_pseudonym("+1 (317) 555-0100"), m.pseudonym("phone", "+13175550100"));
    }

    #[test]
    fn non_phone_value_gets_pseudonym_of_trimmed_text() {
        let m = masker();
        for value in ["anonymous", " sip:dana.whitfield@example.com ", "555-0100"] {
            let pseudonym = m.phone_pseudonym(value);
            assert_eq!(pseudonym, m.pseudonym("phone", value.trim()), "{value}");
            assert!(pseudonym.starts_with("phone_k1_"), "{pseudonym}");
        }
        let mut input = event();
        input.phone_number = Some("sip:dana.whitfield@example.com".into());
        let masked = m.mask(input);
        let text = format!("{masked:?}");
        assert!(!text.contains("dana"), "{text}");
        assert!(masked.phone_pseudonym.is_some());
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
        let mut input = event();
        input.attributes = [
            ("provider".to_string(), "callback 317-555-0100".to_string()),
            ("note".to_string(), "leakme note".to_string()),
        ]
        .into();
        input.message = Some("caller dana@example.com card 4111 1111 1111 1111".into());
        input.dependency = Some(DependencyCheck {
            name: "CRM owner dana@example.com".into(),
            ok: false,
            http_status: Some(500),
            location: Some("probe 317-555-0100".into()),
        });
        let masked = masker().mask(input);
        let text = format!("{masked:?}");
        for raw in ["b781d507", "5555550898", "f56a0a91", "555-0100", "dana@example.com", "leakme", "4111"] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
        assert!(masked.agent_pseudonym.unwrap().starts_with("agent_k1_"));
        assert_eq!(masked.dependency.unwrap().http_status, Some(500));
    }

    #[test]
    fn blank_ids_get_no_pseudonym() {
        let mut input = event();
        input.agent_id = Some("  ".into());
        input.customer_id = None;
        let masked = masker().mask(input);
        assert_eq!(masked.agent_pseudonym, None);
        assert_eq!(masked.customer_pseudonym, None);
    }

    #[test]
    fn message_tokens_carry_pseudonyms() {
        let m = masker();
        let mut input = event();
        input.message = Some("Caller +1 (317) 555-0100 wrote from Dana@Example.com".into());
        let masked = m.mask(input);
        let phone = m.pseudonym("phone", "+13175550100");
        let email = m.pseudonym("email", "dana@example.com");
        assert_eq!(
            masked.message.as_deref(),
            Some(format!("Caller [PHONE:{phone}] wrote from [EMAIL:{email}]").as_str())
        );
        assert_eq!(m.phone_pseudonym("tel:+13175550100"), phone);
    }

    #[test]
    fn rotation_carries_both_keys_during_overlap() {
        let before = Masker::new(Secret::new(OLD_KEY), "k1");
        let during = Masker::new(Secret::new(NEW_KEY), "k2").with_previous_key(Secret::new(OLD_KEY), "k1");
        let after = Masker::new(Secret::new(NEW_KEY), "k2");

        // The same person before the rotation, during it, and after it.
        let old = before.mask(event());
        let overlap = during.mask(event());
        let new = after.mask(event());

        assert_eq!(old.mask_key_id, "k1");
        assert!(old.previous_pseudonyms.is_none());
        assert_ne!(old.agent_pseudonym, new.agent_pseudonym);

        assert_eq!(overlap.mask_key_id, "k2");
        assert_eq!(overlap.agent_pseudonym, new.agent_pseudonym);
        assert_eq!(overlap.phone_pseudonym, new.phone_pseudonym);
        assert_eq!(overlap.customer_pseudonym, new.customer_pseudonym);
        let previous = overlap.previous_pseudonyms.expect("previous pseudonyms during the overlap");
        assert_eq!(previous.key_id, "k1");
        assert_eq!(previous.agent_pseudonym, old.agent_pseudonym);
        assert_eq!(previous.phone_pseudonym, old.phone_pseudonym);
        assert_eq!(previous.customer_pseudonym, old.customer_pseudonym);

        assert_eq!(new.mask_key_id, "k2");
        assert!(new.previous_pseudonyms.is_none());
    }

    #[test]
    fn rotation_joins_phone_formats_across_keys() {
        let before = Masker::new(Secret::new(OLD_KEY), "k1");
        let during = Masker::new(Secret::new(NEW_KEY), "k2").with_previous_key(Secret::new(OLD_KEY), "k1");
        let mut old_input = event();
        old_input.phone_number = Some("+1 (317) 555-0100".into());
        let mut overlap_input = event();
        overlap_input.phone_number = Some("sip:+13175550100@trunk.example.com".into());
        let old = before.mask(old_input);
        let overlap = during.mask(overlap_input);
        assert_eq!(overlap.previous_pseudonyms.unwrap().phone_pseudonym, old.phone_pseudonym);
    }

    #[test]
    fn unlisted_attributes_are_dropped_and_counted() {
        let mut input = event();
        input.attributes = [
            ("media_type", "VOICE"),
            ("participant_id", "p-LEAKME-1"),
            ("user_name", "Dana LEAKME"),
            ("remote_name", "Caller LEAKME"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        let masked = masker().mask(input);
        assert_eq!(masked.dropped_attribute_count, 3);
        assert_eq!(masked.attributes.len(), 1);
        assert_eq!(masked.attributes["media_type"], "VOICE");
        assert!(!format!("{masked:?}").contains("LEAKME"));
    }

    #[test]
    fn attribute_treatments_apply() {
        let m = masker();
        let mut input = event();
        input.attributes = [
            ("session_id", "2c0e5b44-5f4e-4e52-9d4e-4b0f7b1a8d11"),
            ("dnis", "+13175550100"),
            ("provider", "Edge 317-555-0100"),
            ("queue_id", "e6ab4bb2-1b6e-4e4f-9d32-2a1b3c4d5e6f"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        let masked = m.mask(input);
        let phone = m.pseudonym("phone", "+13175550100");
        assert_eq!(masked.dropped_attribute_count, 0);
        assert_eq!(
            masked.attributes["session_id"],
            m.pseudonym("session", "2c0e5b44-5f4e-4e52-9d4e-4b0f7b1a8d11")
        );
        assert_eq!(masked.attributes["dnis"], phone);
        assert_eq!(masked.attributes["provider"], format!("Edge [PHONE:{phone}]"));
        assert_eq!(masked.attributes["queue_id"], "e6ab4bb2-1b6e-4e4f-9d32-2a1b3c4d5e6f");
    }

    #[tokio::test]
    async fn rotation_fields_round_trip_in_avro() {
        let codec = crate::codec::Codec::single_object().unwrap();
        let during = Masker::new(Secret::new(NEW_KEY), "k2").with_previous_key(Secret::new(OLD_KEY), "k1");
        let mut input = event();
        input.attributes = [("user_name".to_string(), "Dana".to_string())].into();
        let masked = during.mask(input);
        assert_eq!(masked.dropped_attribute_count, 1);

        let bytes = codec.encode(MASKED, &Record::Masked(masked.clone())).await.unwrap();
        let decoded: MaskedEvent = codec.decode(RecordKind::Masked, &bytes).await.unwrap();
        assert_eq!(decoded, masked);
    }

    /// Encodes `record` with `writer` and decodes it with `reader`, as a
    /// consumer with a schema registry does when the two differ.
    fn resolve(
        record: apache_avro::types::Value,
        writer: &apache_avro::Schema,
        reader: &apache_avro::Schema,
    ) -> MaskedEvent {
        use apache_avro::reader::datum::GenericDatumReader;
        use apache_avro::writer::datum::GenericDatumWriter;

        let value = record.resolve(writer).unwrap();
        let bytes = GenericDatumWriter::builder(writer).build().unwrap().write_value_to_vec(value).unwrap();
        let read = GenericDatumReader::builder(writer)
            .maybe_reader_schema(Some(reader))
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        apache_avro::from_value(&read).unwrap()
    }

    #[test]
    fn masked_schema_resolves_across_versions() {
        const NEW_FIELDS: [&str; 2] = ["previous_pseudonyms", "dropped_attribute_count"];
        let new_schema = apache_avro::Schema::parse_str(RecordKind::Masked.schema_text()).unwrap();
        let mut old_json: serde_json::Value = serde_json::from_str(RecordKind::Masked.schema_text()).unwrap();
        old_json["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|field| !NEW_FIELDS.contains(&field["name"].as_str().unwrap_or_default()));
        let old_schema = apache_avro::Schema::parse_str(&old_json.to_string()).unwrap();

        let during = Masker::new(Secret::new(NEW_KEY), "k2").with_previous_key(Secret::new(OLD_KEY), "k1");
        let mut input = event();
        input.attributes = [("user_name".to_string(), "Dana".to_string())].into();
        let masked = during.mask(input);

        // A record of the old schema reads with the defaults.
        let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(&masked).unwrap() else {
            panic!("a masked event serializes to an Avro record");
        };
        fields.retain(|(name, _)| !NEW_FIELDS.contains(&name.as_str()));
        let read = resolve(apache_avro::types::Value::Record(fields), &old_schema, &new_schema);
        assert_eq!(read.previous_pseudonyms, None);
        assert_eq!(read.dropped_attribute_count, 0);
        assert_eq!(read.agent_pseudonym, masked.agent_pseudonym);

        // A reader with the old schema skips the new fields.
        let read = resolve(apache_avro::to_value(&masked).unwrap(), &new_schema, &old_schema);
        assert_eq!(read.previous_pseudonyms, None);
        assert_eq!(read.agent_pseudonym, masked.agent_pseudonym);
    }

    /// Names of the attributes the sources write, read from their code:
    /// `attributes.insert("name"` and the `("fieldName", "name")` tables.
    fn source_attribute_names() -> Vec<String> {
        let sources = [
            include_str!("../sources/genesys.rs"),
            include_str!("../sources/nice.rs"),
            include_str!("../sources/synthetics.rs"),
            include_str!("normalize.rs"),
        ];
        let insert = regex::Regex::new(r#"attributes\.insert\("([a-z_]+)""#).unwrap();
        let table = regex::Regex::new(r#""[a-z][A-Za-z]*", "([a-z_]+)"\)"#).unwrap();
        let mut names: Vec<String> = sources
            .iter()
            .filter(|source| !source.is_empty())
            .flat_map(|source| {
                let code = source.split("#[cfg(test)]").next().unwrap_or(source);
                insert
                    .captures_iter(code)
                    .chain(table.captures_iter(code))
                    .map(|caps| caps[1].to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn allow_list_covers_source_attributes() {
        let names = source_attribute_names();
        assert!(names.len() >= 30, "too few attribute names found: {names:?}");
        let missing: Vec<_> = names.iter().filter(|name| treatment(name).is_none()).collect();
        assert!(missing.is_empty(), "attributes the sources write but the allow-list drops: {missing:?}");
    }

    #[test]
    fn fixture_events_lose_no_attribute() {
        use crate::config::{NormalizeConfig, ServiceRule};
        use crate::stages::ingest;
        use crate::stages::normalize::Normalizer;

        let config = NormalizeConfig {
            service_rules: vec![ServiceRule {
                service: "billing_voice".into(),
                media_type: Some("voice".into()),
                ..ServiceRule::default()
            }],
            ..NormalizeConfig::default()
        };
        let normalizer = Normalizer::new(&config);
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut masked_events = 0;
        for platform in ["genesys", "nice", "synthetics"] {
            for item in ingest::read_input(&fixtures.join(platform)).unwrap() {
                let (_, raw) = ingest::to_raw_event(&item, 1_700_000_000_000);
                for event in normalizer.normalize(&raw).unwrap_or_default() {
                    let names: Vec<String> = event.attributes.keys().cloned().collect();
                    let masked = masker().mask(event);
                    assert_eq!(masked.dropped_attribute_count, 0, "{}: {names:?}", item.origin);
                    assert_eq!(masked.attributes.len(), names.len(), "{}", item.origin);
                    masked_events += 1;
                }
            }
        }
        assert!(masked_events >= 5, "only {masked_events} fixture events were masked");
    }
}
