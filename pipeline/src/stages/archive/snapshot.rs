//! Incident snapshots in the cold tier: `incidents/<incident id>/events.avro`
//! and `manifest.json`, written by the ticket stage and read back by
//! `blameless archive verify` and by anyone holding a data_snapshot_url.

use object_store::PutMode;
use serde::{Deserialize, Serialize};

use super::store::ArchiveStore;
use super::{masked_schema, read_container, sha256_hex, sync_marker, write_container_with_marker, ArchiveError};
use crate::model::{IncidentEvent, MaskedEvent};

/// Schema file of the events in a snapshot.
pub const SNAPSHOT_SCHEMA: &str = "masked_event.avsc";
/// Version of the manifest format. Version 1 is the first with these fields.
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;

const EVENTS_OBJECT: &str = "events.avro";
const MANIFEST_OBJECT: &str = "manifest.json";

/// Contents of a snapshot, written beside it as `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotManifest {
    pub incident_id: String,
    pub affected_service: String,
    pub incident_start_ms: i64,
    /// `None` while the incident is open.
    pub incident_end_ms: Option<i64>,
    /// Interval of the copied events: the incident widened by the margin.
    pub from_ms: i64,
    pub to_ms: i64,
    pub event_count: usize,
    /// Event times of the first and last copied event.
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    pub schema: String,
    /// Version of this manifest's format.
    pub schema_version: u32,
    /// Rabin fingerprint (CRC-64-AVRO) of the events' Avro schema, in hex.
    pub schema_fingerprint: String,
    /// Hex SHA-256 of `events.avro`.
    pub sha256: String,
    pub size_bytes: u64,
    /// S3 storage class of `events.avro`; `None` on stores without classes.
    pub storage_class: Option<String>,
    /// Whether the incident had closed, so the snapshot is final.
    pub complete: bool,
}

/// A snapshot read back and checked against its manifest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub manifest: SnapshotManifest,
    pub events: Vec<MaskedEvent>,
}

/// Result of checking one incident's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotCheck {
    pub incident_id: String,
    pub incident_start_ms: Option<i64>,
    pub event_count: Option<usize>,
    /// `None` when the snapshot reads back with its checksum and count.
    pub gap: Option<String>,
}

/// Returns the cold-tier folder of an incident's snapshot.
pub fn snapshot_folder(incident_id: &str) -> String {
    format!("incidents/{incident_id}")
}

/// Returns the data_snapshot_url of an incident: its snapshot folder in the
/// cold tier, known before the snapshot is written.
pub fn snapshot_url(cold: &ArchiveStore, incident_id: &str) -> String {
    cold.url_of(&format!("{}/", snapshot_folder(incident_id)))
}

/// Copies the incident's events from the hot tier to
/// `incidents/<incident id>/` in the cold tier and returns its manifest.
/// `events.avro` goes first, in the cold tier's storage class, and
/// `manifest.json` after it, in the default class so that it reads back at
/// once. A complete snapshot of the same interval is left as it is. Other
/// calls write again at the same location: when an open incident closes,
/// or a reopened one closes again.
pub async fn write_snapshot(
    hot: &ArchiveStore,
    cold: &ArchiveStore,
    incident: &IncidentEvent,
    margin_ms: i64,
) -> Result<SnapshotManifest, ArchiveError> {
    // Saturating, so a time near the ends of i64 widens to the end instead
    // of wrapping around.
    let from_ms = incident.timestamp_start_ms.saturating_sub(margin_ms);
    let to_ms = incident
        .timestamp_end_ms
        .unwrap_or(incident.last_signal_ms)
        .saturating_add(margin_ms);
    let folder = snapshot_folder(&incident.incident_id);
    let manifest_name = format!("{folder}/{MANIFEST_OBJECT}");
    let events_name = format!("{folder}/{EVENTS_OBJECT}");
    // A manifest that does not parse, or whose events object is gone, is
    // replaced by a fresh snapshot instead of stopping the ticket stage.
    let existing = match read_manifest(cold, &manifest_name).await {
        Ok(existing) => existing,
        Err(ArchiveError::Snapshot { location, reason }) => {
            tracing::warn!(location = %location, reason = %reason, "Snapshot manifest unreadable; writing the snapshot again.");
            None
        }
        Err(error) => return Err(error),
    };
    if let Some(existing) = existing {
        let complete = existing.complete && existing.from_ms == from_ms && existing.to_ms == to_ms;
        if complete && cold.list(&folder).await?.iter().any(|name| name == &events_name) {
            return Ok(existing);
        }
    }

    let mut events = Vec::new();
    for folder in hot.service_hour_folders(&incident.affected_service, from_ms, to_ms).await? {
        events.extend(hot.read_all(&folder).await?);
    }
    events.retain(|e| e.event_time_ms >= from_ms && e.event_time_ms <= to_ms);
    events.sort_by(|a, b| (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id)));
    events.dedup_by(|a, b| a.event_id == b.event_id);

    let bytes = write_container_with_marker(&events, sync_marker(&incident.incident_id)).map_err(|reason| {
        ArchiveError::Format {
            location: cold.url_of(&events_name),
            reason,
        }
    })?;
    let manifest = SnapshotManifest {
        incident_id: incident.incident_id.clone(),
        affected_service: incident.affected_service.clone(),
        incident_start_ms: incident.timestamp_start_ms,
        incident_end_ms: incident.timestamp_end_ms,
        from_ms,
        to_ms,
        event_count: events.len(),
        first_event_ms: events.first().map(|e| e.event_time_ms),
        last_event_ms: events.last().map(|e| e.event_time_ms),
        schema: SNAPSHOT_SCHEMA.to_string(),
        schema_version: SNAPSHOT_SCHEMA_VERSION,
        schema_fingerprint: schema_fingerprint(),
        sha256: sha256_hex(&bytes),
        size_bytes: bytes.len() as u64,
        storage_class: cold.storage_class().map(str::to_string),
        complete: incident.timestamp_end_ms.is_some(),
    };
    cold.put(&events_name, bytes, PutMode::Overwrite, true).await?;
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    cold.put(&manifest_name, manifest_json, PutMode::Overwrite, false).await?;
    Ok(manifest)
}

fn schema_fingerprint() -> String {
    let fingerprint = masked_schema().fingerprint::<apache_avro::rabin::Rabin>();
    hex::encode(fingerprint.bytes)
}

async fn read_manifest(store: &ArchiveStore, name: &str) -> Result<Option<SnapshotManifest>, ArchiveError> {
    let Some(bytes) = store.get(name).await? else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| ArchiveError::Snapshot {
        location: store.url_of(name),
        reason: format!("manifest is not valid JSON of a snapshot manifest: {e}"),
    })
}

/// Reads a snapshot back through its URL (a ticket's data_snapshot_url):
/// the manifest, then the events, whose SHA-256 and count must match it.
pub async fn read_snapshot(url: &str) -> Result<Snapshot, ArchiveError> {
    let store = ArchiveStore::open(url.trim_end_matches('/'))?;
    read_snapshot_in(&store, "").await
}

async fn read_snapshot_in(store: &ArchiveStore, folder: &str) -> Result<Snapshot, ArchiveError> {
    let manifest_name = join(folder, MANIFEST_OBJECT);
    let events_name = join(folder, EVENTS_OBJECT);
    let missing = |name: &str| ArchiveError::Snapshot {
        location: store.url_of(name),
        reason: "object not found".into(),
    };
    let manifest = read_manifest(store, &manifest_name)
        .await?
        .ok_or_else(|| missing(&manifest_name))?;
    let bytes = store.get(&events_name).await?.ok_or_else(|| missing(&events_name))?;
    let checksum = sha256_hex(&bytes);
    if checksum != manifest.sha256 {
        return Err(ArchiveError::Snapshot {
            location: store.url_of(&events_name),
            reason: format!("SHA-256 is {checksum}, but the manifest records {}", manifest.sha256),
        });
    }
    let events = read_container(&bytes).map_err(|reason| ArchiveError::Format {
        location: store.url_of(&events_name),
        reason,
    })?;
    if events.len() != manifest.event_count {
        return Err(ArchiveError::Snapshot {
            location: store.url_of(&events_name),
            reason: format!("holds {} events, but the manifest records {}", events.len(), manifest.event_count),
        });
    }
    Ok(Snapshot { manifest, events })
}

fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

/// Checks every snapshot in the cold tier whose incident started at least
/// `older_than_ms` before `now_ms`: present, complete, and read back with
/// the manifest's SHA-256 and event count. A folder without a readable
/// manifest is checked whatever its age, because its age is unknown.
pub async fn verify_snapshots(cold: &ArchiveStore, older_than_ms: i64, now_ms: i64) -> Result<Vec<SnapshotCheck>, ArchiveError> {
    let mut checks = Vec::new();
    let mut incidents = cold.list_folders("incidents").await?;
    incidents.sort();
    for incident_id in incidents {
        let folder = snapshot_folder(&incident_id);
        let manifest = match read_manifest(cold, &join(&folder, MANIFEST_OBJECT)).await {
            Ok(manifest) => manifest,
            Err(error) => {
                checks.push(gap(&incident_id, None, error.to_string()));
                continue;
            }
        };
        let Some(manifest) = manifest else {
            checks.push(gap(&incident_id, None, format!("{MANIFEST_OBJECT} is missing")));
            continue;
        };
        if now_ms.saturating_sub(manifest.incident_start_ms) < older_than_ms {
            continue;
        }
        let start = Some(manifest.incident_start_ms);
        if !manifest.complete {
            checks.push(gap(&incident_id, start, "the snapshot is incomplete: the incident never closed, or its close was not archived".into()));
            continue;
        }
        match read_snapshot_in(cold, &folder).await {
            Ok(snapshot) => checks.push(SnapshotCheck {
                incident_id,
                incident_start_ms: start,
                event_count: Some(snapshot.events.len()),
                gap: None,
            }),
            Err(error) => {
                let mut reason = error.to_string();
                if reason.contains("InvalidObjectState") {
                    reason.push_str(". The object is in an archive storage class: restore it (aws s3api restore-object) and run the check again");
                }
                checks.push(gap(&incident_id, start, reason));
            }
        }
    }
    Ok(checks)
}

fn gap(incident_id: &str, incident_start_ms: Option<i64>, reason: String) -> SnapshotCheck {
    SnapshotCheck {
        incident_id: incident_id.to_string(),
        incident_start_ms,
        event_count: None,
        gap: Some(reason),
    }
}
