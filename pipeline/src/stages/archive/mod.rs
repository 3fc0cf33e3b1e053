//! Archive: the hot tier of masked telemetry, and incident snapshots in the
//! cold tier. docs/archive.md describes the layout, the format, and the
//! durability rules that this module enforces.
//!
//! The archive stage ([`ArchiveStage`]) reads `masked` and writes Avro object
//! container files, one per batch of a partition, affected service and hour:
//! `date=YYYY-MM-DD/hour=HH/service=NAME/<topic>-<partition>-<first offset>-<last offset>.avro`.
//! An input offset is committed only after the object holding it is
//! durable, and a batch has the same offset range, so the same keys, when it
//! is written again after a crash.
//!
//! The ticket stage writes incident snapshots ([`write_snapshot`]): the
//! masked events of one incident, widened by a margin, copied to
//! `incidents/<incident id>/` in the cold tier with a manifest. That folder
//! is the ticket's data_snapshot_url.

mod lifecycle;
mod snapshot;
mod stage;
mod store;

#[cfg(test)]
mod tests;

use apache_avro::{Reader, Schema, Writer};
use chrono::{DateTime, Timelike, Utc};

use crate::model::{MaskedEvent, RecordKind};

pub use lifecycle::{lifecycle_rules, parse_age, RetentionRules};
pub use snapshot::{
    read_snapshot, snapshot_folder, snapshot_url, verify_snapshots, write_snapshot, Snapshot, SnapshotCheck,
    SnapshotManifest, SNAPSHOT_SCHEMA, SNAPSHOT_SCHEMA_VERSION,
};
pub use stage::{ArchiveStage, BatchLimits, BATCH_PLAN_FOLDER};
pub use store::{open_location, ArchiveStore, PutOutcome, StoreHealth, StoreRetry};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("Archive URL {url:?} is not usable: {reason}. Use a folder path, file:///absolute/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.")]
    Url { url: String, reason: String },
    #[error("Object store operation on {location} failed: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error("Archive object {location} is not readable Avro: {reason}")]
    Format { location: String, reason: String },
    #[error("Snapshot object {location} failed the check: {reason}")]
    Snapshot { location: String, reason: String },
    #[error("Batch plan {location} is invalid: {reason}")]
    Plan { location: String, reason: String },
}

fn masked_schema() -> &'static Schema {
    static SCHEMA: std::sync::LazyLock<Schema> = std::sync::LazyLock::new(|| {
        Schema::parse_str(RecordKind::Masked.schema_text()).expect("schemas/masked_event.avsc is checked by the codec tests")
    });
    &SCHEMA
}

/// Writes masked events as an Avro object container file with a random
/// sync marker.
pub fn write_container(events: &[MaskedEvent]) -> Result<Vec<u8>, String> {
    write_container_with_marker(events, rand_marker())
}

fn rand_marker() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Returns a sync marker derived from `name`. A rewrite of the same events
/// under the same name then differs from the first write at most in the
/// order of the header's metadata, which apache-avro 0.22 keeps in a hash
/// map.
pub fn sync_marker(name: &str) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut marker = [0u8; 16];
    marker.copy_from_slice(&digest[..16]);
    marker
}

/// Writes masked events as an Avro object container file, deflate
/// compressed, with the given sync marker.
pub fn write_container_with_marker(events: &[MaskedEvent], marker: [u8; 16]) -> Result<Vec<u8>, String> {
    let schema = masked_schema();
    let mut writer = Writer::builder()
        .schema(schema)
        .writer(Vec::new())
        .codec(apache_avro::Codec::Deflate(Default::default()))
        .marker(marker)
        .build()
        .map_err(|e| e.to_string())?;
    for event in events {
        let value = apache_avro::to_value(event).map_err(|e| e.to_string())?;
        let value = value.resolve(schema).map_err(|e| e.to_string())?;
        writer.append_value(value).map_err(|e| e.to_string())?;
    }
    writer.into_inner().map_err(|e| e.to_string())
}

/// Reads an Avro object container file of masked events.
pub fn read_container(bytes: &[u8]) -> Result<Vec<MaskedEvent>, String> {
    let reader = Reader::new(bytes).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for value in reader {
        let value = value.map_err(|e| e.to_string())?;
        events.push(apache_avro::from_value::<MaskedEvent>(&value).map_err(|e| e.to_string())?);
    }
    Ok(events)
}

/// Returns the hot-tier folder of a service's events in the hour of
/// `time_ms`.
fn hour_folder(service: &str, time_ms: i64) -> String {
    let time: DateTime<Utc> = DateTime::from_timestamp_millis(time_ms).unwrap_or_default();
    format!(
        "date={}/hour={:02}/service={}",
        time.format("%Y-%m-%d"),
        time.hour(),
        service
    )
}

/// Returns the hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
