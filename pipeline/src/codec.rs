//! Avro encoding of topic records.
//!
//! Without a schema registry, records use the Avro single-object encoding:
//! the two marker bytes `C3 01`, the schema's CRC-64-AVRO (Rabin) fingerprint
//! in little-endian order, then the Avro binary datum. With a registry URL,
//! records use the Confluent wire format (a zero byte, the registry's schema
//! id as a big-endian u32, then the datum) through schema_registry_converter,
//! which registers the schemas of `schemas/` under the topic-name strategy.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{GenericSingleObjectReader, Schema};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Record, RecordKind};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("Schema {file} does not parse: {source}. Fix the file in schemas/.")]
    Schema {
        file: &'static str,
        source: apache_avro::Error,
    },
    #[error("Could not encode a {kind:?} record as Avro: {reason}.")]
    Encode { kind: RecordKind, reason: String },
    #[error("Could not decode the record as Avro {kind:?} ({reason}). The producer may use another schema or encoding.")]
    Decode { kind: RecordKind, reason: String },
    #[error("The schema registry at {url} failed: {reason}.")]
    Registry { url: String, reason: String },
}

/// Encodes and decodes every record kind of the topology.
#[derive(Clone)]
pub struct Codec {
    schemas: Arc<HashMap<RecordKind, SchemaEntry>>,
    registry: Option<Arc<Registry>>,
}

struct SchemaEntry {
    schema: Schema,
    header: Vec<u8>,
}

struct Registry {
    url: String,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl Codec {
    /// Creates a codec that writes the Avro single-object encoding with the
    /// schemas of `schemas/`.
    pub fn single_object() -> Result<Codec, CodecError> {
        let mut schemas = HashMap::new();
        for kind in RecordKind::ALL {
            let schema = Schema::parse_str(kind.schema_text()).map_err(|source| {
                CodecError::Schema {
                    file: kind.schema_file(),
                    source,
                }
            })?;
            let header = RabinFingerprintHeader::from_schema(&schema).build_header();
            schemas.insert(kind, SchemaEntry { schema, header });
        }
        Ok(Codec {
            schemas: Arc::new(schemas),
            registry: None,
        })
    }

    /// Creates a codec that writes the Confluent wire format through the
    /// schema registry at `url`.
    pub fn with_registry(url: &str) -> Result<Codec, CodecError> {
        let mut codec = Codec::single_object()?;
        let settings = SrSettings::new(url.to_string());
        codec.registry = Some(Arc::new(Registry {
            url: url.to_string(),
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings),
        }));
        Ok(codec)
    }

    pub fn uses_registry(&self) -> bool {
        self.registry.is_some()
    }

    fn entry(&self, kind: RecordKind) -> &SchemaEntry {
        // The constructor fills the map with every kind.
        &self.schemas[&kind]
    }

    /// Encodes a record for `topic`.
    pub async fn encode(&self, topic: &str, record: &Record) -> Result<Vec<u8>, CodecError> {
        let kind = record.kind();
        let value = match record {
            Record::Raw(r) => self.to_resolved_value(kind, r),
            Record::Normalized(r) => self.to_resolved_value(kind, r),
            Record::Masked(r) => self.to_resolved_value(kind, r),
            Record::Incident(r) => self.to_resolved_value(kind, r),
            Record::Ticket(r) => self.to_resolved_value(kind, r),
            Record::DeadLetter(r) => self.to_resolved_value(kind, r),
            Record::Cursor(r) => self.to_resolved_value(kind, r),
        }?;
        match &self.registry {
            None => {
                let entry = self.entry(kind);
                let encode_error = |e: apache_avro::Error| CodecError::Encode {
                    kind,
                    reason: e.to_string(),
                };
                let datum = GenericDatumWriter::builder(&entry.schema)
                    .build()
                    .map_err(encode_error)?
                    .write_value_to_vec(value)
                    .map_err(encode_error)?;
                let mut bytes = Vec::with_capacity(entry.header.len() + datum.len());
                bytes.extend_from_slice(&entry.header);
                bytes.extend_from_slice(&datum);
                Ok(bytes)
            }
            Some(registry) => {
                let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                    topic.to_string(),
                    false,
                    SuppliedSchema::new(None, SchemaType::Avro, kind.schema_text().to_string()),
                );
                registry
                    .encoder
                    .encode_value(value, &strategy)
                    .await
                    .map_err(|e| CodecError::Registry {
                        url: registry.url.clone(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    fn to_resolved_value<T: Serialize>(
        &self,
        kind: RecordKind,
        record: &T,
    ) -> Result<Value, CodecError> {
        let encode_error = |e: apache_avro::Error| CodecError::Encode {
            kind,
            reason: e.to_string(),
        };
        let value = apache_avro::to_value(record).map_err(encode_error)?;
        value
            .resolve(&self.entry(kind).schema)
            .map_err(encode_error)
    }

    /// Decodes a record written with the schema of `kind`.
    pub async fn decode<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        bytes: &[u8],
    ) -> Result<T, CodecError> {
        let decode_error = |reason: String| CodecError::Decode { kind, reason };
        let value = match &self.registry {
            None => {
                let reader = GenericSingleObjectReader::builder()
                    .schema(self.entry(kind).schema.clone())
                    .build()
                    .map_err(|e| decode_error(e.to_string()))?;
                reader
                    .read_value(&mut &bytes[..])
                    .map_err(|e| decode_error(e.to_string()))?
            }
            Some(registry) => {
                registry
                    .decoder
                    .decode(Some(bytes))
                    .await
                    .map_err(|e| decode_error(e.to_string()))?
                    .value
            }
        };
        apache_avro::from_value::<T>(&value).map_err(|e| decode_error(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeadLetter, RawEvent};

    fn raw_event() -> RawEvent {
        RawEvent {
            event_id: "9df95214".into(),
            source: "genesys".into(),
            delivery: "eventbridge".into(),
            received_at_ms: 1_765_551_713_383,
            interval_start_ms: None,
            interval_end_ms: Some(1_765_551_720_000),
            payload: b"{\"a\":1}".to_vec(),
            capture_json: None,
        }
    }

    #[tokio::test]
    async fn single_object_round_trip() {
        let codec = Codec::single_object().unwrap();
        let record = raw_event();
        let bytes = codec
            .encode("raw-events", &Record::Raw(record.clone()))
            .await
            .unwrap();
        let back: RawEvent = codec.decode(RecordKind::Raw, &bytes).await.unwrap();
        assert_eq!(back, record);
    }

    #[tokio::test]
    async fn single_object_header_carries_fingerprint() {
        let codec = Codec::single_object().unwrap();
        let bytes = codec
            .encode("raw-events", &Record::Raw(raw_event()))
            .await
            .unwrap();
        let schema = Schema::parse_str(RecordKind::Raw.schema_text()).unwrap();
        let fingerprint = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &fingerprint[..]);
    }

    #[tokio::test]
    async fn decode_rejects_another_schema() {
        let codec = Codec::single_object().unwrap();
        let bytes = codec
            .encode("raw-events", &Record::Raw(raw_event()))
            .await
            .unwrap();
        let result: Result<DeadLetter, _> = codec.decode(RecordKind::DeadLetter, &bytes).await;
        assert!(matches!(result, Err(CodecError::Decode { .. })));
    }
}
