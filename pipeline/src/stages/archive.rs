//! Archive: reads `masked` and writes it to the hot tier of object storage as
//! Avro object container files (queryable with any Avro reader), one object
//! per batch, affected service and hour:
//! `date=YYYY-MM-DD/hour=HH/service=NAME/<topic>-<partition>-<first offset>-<last offset>.avro`.
//! Offsets are committed only after every object of the batch is written.
//!
//! It also writes the incident snapshot: the masked events of one incident
//! (its service and interval, widened by a margin) copied to the cold tier
//! under `incidents/<incident id>/`, which is the ticket's
//! data_snapshot_url.

use std::collections::BTreeMap;
use std::sync::Arc;

use apache_avro::{Reader, Schema, Writer};
use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;

use crate::model::{IncidentEvent, MaskedEvent, Record, RecordKind};
use crate::transport::{Decoded, Outcome, Reject, Stage, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("Archive URL {url:?} is not usable: {reason}. Use a folder path, file:///absolute/path or s3://bucket/prefix.")]
    Url { url: String, reason: String },
    #[error("Object store operation on {location} failed: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error("Archive object {location} is not readable Avro: {reason}")]
    Format { location: String, reason: String },
}

/// Opens a folder path, a `file://` URL or an object store URL, and returns
/// the store, the prefix inside it and the URL that names it. A local folder
/// is created when missing. S3 settings (endpoint, region, credentials) come
/// from the usual `AWS_*` variables. An error is the reason, for the
/// caller's error type.
pub fn open_location(location: &str) -> Result<(Arc<dyn ObjectStore>, StorePath, String), String> {
    if !location.contains("://") {
        std::fs::create_dir_all(location).map_err(|e| e.to_string())?;
        let absolute = std::fs::canonicalize(location).map_err(|e| e.to_string())?;
        let store = LocalFileSystem::new_with_prefix(&absolute).map_err(|e| e.to_string())?;
        return Ok((Arc::new(store), StorePath::default(), format!("file://{}", absolute.display())));
    }
    let url = url::Url::parse(location).map_err(|e| e.to_string())?;
    if url.scheme() == "file" {
        std::fs::create_dir_all(url.path()).map_err(|e| e.to_string())?;
    }
    let options: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with("AWS_"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(&url, options).map_err(|e| e.to_string())?;
    Ok((Arc::from(store), prefix, location.trim_end_matches('/').to_string()))
}

/// An object store and the prefix inside it.
#[derive(Clone)]
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
}

impl ArchiveStore {
    /// Opens a folder path, a `file://` URL or an object store URL. S3
    /// settings (endpoint, region, credentials) come from the usual `AWS_*`
    /// variables.
    pub fn open(location: &str) -> Result<ArchiveStore, ArchiveError> {
        let (store, prefix, url) = open_location(location).map_err(|reason| ArchiveError::Url {
            url: location.to_string(),
            reason,
        })?;
        Ok(ArchiveStore { store, prefix, url })
    }

    fn path(&self, relative: &str) -> StorePath {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// Returns the URL of a location inside this store.
    pub fn url_of(&self, relative: &str) -> String {
        format!("{}/{}", self.url, relative)
    }

    async fn put(&self, relative: &str, bytes: Vec<u8>, mode: PutMode) -> Result<(), ArchiveError> {
        let path = self.path(relative);
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.store.put_opts(&path, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(()),
            // The same batch written again after a restart: the object is
            // already durable with the same records.
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(source) => Err(ArchiveError::Store {
                location: self.url_of(relative),
                source,
            }),
        }
    }

    async fn list(&self, relative: &str) -> Result<Vec<StorePath>, ArchiveError> {
        let prefix = self.path(relative);
        self.store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|source| ArchiveError::Store {
                location: self.url_of(relative),
                source,
            })
    }

    /// Returns the names of the folders directly under `relative`, such as
    /// `date=2025-12-12`, without listing the objects inside them.
    async fn list_folders(&self, relative: &str) -> Result<Vec<String>, ArchiveError> {
        let prefix = self.path(relative);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|source| ArchiveError::Store {
                location: self.url_of(relative),
                source,
            })?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|folder| folder.filename().map(str::to_string))
            .collect())
    }

    /// Returns the hot-tier folders of `service` whose hour overlaps
    /// `from_ms..=to_ms`, in time order. Only folders that exist are listed,
    /// so the cost follows the archive's size, not the span of the interval.
    async fn service_hour_folders(&self, service: &str, from_ms: i64, to_ms: i64) -> Result<Vec<String>, ArchiveError> {
        const HOUR_MS: i64 = 3_600_000;
        const DAY_MS: i64 = 24 * HOUR_MS;
        let overlaps = |start_ms: i64, length_ms: i64| start_ms <= to_ms && start_ms.saturating_add(length_ms) > from_ms;

        let mut dates: Vec<(i64, String)> = Vec::new();
        for folder in self.list_folders("").await? {
            let Some(date) = folder.strip_prefix("date=") else { continue };
            let Ok(day) = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d") else { continue };
            let day_start_ms = day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis();
            if overlaps(day_start_ms, DAY_MS) {
                dates.push((day_start_ms, folder));
            }
        }
        dates.sort();

        let mut folders = Vec::new();
        for (day_start_ms, date_folder) in dates {
            let mut hours: Vec<i64> = Vec::new();
            for folder in self.list_folders(&date_folder).await? {
                let Some(hour) = folder.strip_prefix("hour=").and_then(|h| h.parse::<i64>().ok()) else { continue };
                if (0..24).contains(&hour) && overlaps(day_start_ms + hour * HOUR_MS, HOUR_MS) {
                    hours.push(hour);
                }
            }
            hours.sort();
            folders.extend(hours.into_iter().map(|hour| format!("{date_folder}/hour={hour:02}/service={service}")));
        }
        Ok(folders)
    }

    async fn read_events(&self, path: &StorePath) -> Result<Vec<MaskedEvent>, ArchiveError> {
        let location = path.to_string();
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|source| ArchiveError::Store {
                location: location.clone(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| ArchiveError::Store {
                location: location.clone(),
                source,
            })?;
        read_container(&bytes).map_err(|reason| ArchiveError::Format { location, reason })
    }

    /// Reads every event archived under `relative`, in name order of the
    /// objects.
    pub async fn read_all(&self, relative: &str) -> Result<Vec<MaskedEvent>, ArchiveError> {
        let mut paths = self.list(relative).await?;
        paths.sort();
        let mut events = Vec::new();
        for path in paths.iter().filter(|p| p.as_ref().ends_with(".avro")) {
            events.extend(self.read_events(path).await?);
        }
        Ok(events)
    }
}

fn masked_schema() -> Schema {
    Schema::parse_str(RecordKind::Masked.schema_text()).expect("schemas/masked_event.avsc is checked by the codec tests")
}

/// Writes masked events as an Avro object container file.
pub fn write_container(events: &[MaskedEvent]) -> Result<Vec<u8>, String> {
    let schema = masked_schema();
    let mut writer = Writer::with_codec(&schema, Vec::new(), apache_avro::Codec::Deflate(Default::default()))
        .map_err(|e| e.to_string())?;
    for event in events {
        let value = apache_avro::to_value(event).map_err(|e| e.to_string())?;
        let value = value.resolve(&schema).map_err(|e| e.to_string())?;
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

pub struct ArchiveStage {
    hot: ArchiveStore,
}

impl ArchiveStage {
    pub fn new(hot: ArchiveStore) -> ArchiveStage {
        ArchiveStage { hot }
    }
}

#[async_trait]
impl Stage for ArchiveStage {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn input_kind(&self) -> RecordKind {
        RecordKind::Masked
    }

    async fn process(&mut self, batch: Vec<Decoded>) -> Result<Vec<Outcome>, TransportError> {
        let mut groups: BTreeMap<String, Vec<(&Decoded, &MaskedEvent)>> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for decoded in &batch {
            match &decoded.record {
                Record::Masked(event) => {
                    let folder = hour_folder(&event.affected_service, event.event_time_ms);
                    groups.entry(folder).or_default().push((decoded, event));
                    outcomes.push(Ok(Vec::new()));
                }
                _ => outcomes.push(Err(Reject::new("archive reads masked events only"))),
            }
        }
        for (folder, members) in groups {
            let first = members[0].0.position.clone();
            let last = members[members.len() - 1].0.position.offset;
            let events: Vec<MaskedEvent> = members.iter().map(|(_, e)| (*e).clone()).collect();
            let bytes = write_container(&events).map_err(|reason| TransportError::Stage {
                stage: "archive",
                reason,
            })?;
            let name = format!("{folder}/{}-{}-{}-{}.avro", first.topic, first.partition, first.offset, last);
            // A failing store stops the stage before the commit; the batch is
            // read again on restart, and nothing is skipped.
            self.hot
                .put(&name, bytes, PutMode::Create)
                .await
                .map_err(|e| TransportError::Stage {
                    stage: "archive",
                    reason: e.to_string(),
                })?;
        }
        Ok(outcomes)
    }
}

/// Contents of a snapshot, written beside it as `manifest.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotManifest {
    pub incident_id: String,
    pub affected_service: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub event_count: usize,
    pub schema: &'static str,
    pub sha256: String,
    pub complete: bool,
}

/// Copies the incident's events from the hot tier to
/// `incidents/<incident id>/` in the cold tier and returns its manifest. The
/// snapshot is written again, at the same location, when the incident closes.
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
    let mut events = Vec::new();
    for folder in hot.service_hour_folders(&incident.affected_service, from_ms, to_ms).await? {
        events.extend(hot.read_all(&folder).await?);
    }
    events.retain(|e| e.event_time_ms >= from_ms && e.event_time_ms <= to_ms);
    events.sort_by(|a, b| (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id)));
    events.dedup_by(|a, b| a.event_id == b.event_id);

    let bytes = write_container(&events).map_err(|reason| ArchiveError::Format {
        location: snapshot_folder(&incident.incident_id),
        reason,
    })?;
    use sha2::Digest;
    let manifest = SnapshotManifest {
        incident_id: incident.incident_id.clone(),
        affected_service: incident.affected_service.clone(),
        from_ms,
        to_ms,
        event_count: events.len(),
        schema: "masked_event.avsc",
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        complete: incident.timestamp_end_ms.is_some(),
    };
    let folder = snapshot_folder(&incident.incident_id);
    cold.put(&format!("{folder}/events.avro"), bytes, PutMode::Overwrite).await?;
    let manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    cold.put(&format!("{folder}/manifest.json"), manifest_json, PutMode::Overwrite)
        .await?;
    Ok(manifest)
}

/// Returns the cold-tier folder of an incident's snapshot.
pub fn snapshot_folder(incident_id: &str) -> String {
    format!("incidents/{incident_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "voice_inbound";

    fn masked(event_id: &str, service: &str, time_ms: i64) -> MaskedEvent {
        let mut event = crate::model::test_masked_event(service, "call_failed", time_ms);
        event.event_id = event_id.into();
        event
    }

    fn incident(start_ms: i64, end_ms: Option<i64>) -> IncidentEvent {
        IncidentEvent {
            incident_id: "inc-1".into(),
            change: "gated".into(),
            incident_type: "platform_outage".into(),
            severity: "sev1".into(),
            affected_service: SERVICE.into(),
            platform_source: "genesys_cloud_cx".into(),
            signal_type: "call_failed".into(),
            timestamp_start_ms: start_ms,
            timestamp_end_ms: end_ms,
            last_signal_ms: start_ms,
            failed_contacts: 1,
            total_contacts: 1,
            threshold_count: 1,
            window_ms: 300_000,
            gated: true,
            gate_reason: None,
            recurrences: 0,
            type_reason: None,
            dependencies: Vec::new(),
        }
    }

    /// Opens hot and cold stores in a temporary folder, with one event of
    /// `SERVICE` archived at each of `times_ms` and one of another service.
    async fn stores(times_ms: &[i64]) -> (tempfile::TempDir, ArchiveStore, ArchiveStore) {
        let dir = tempfile::tempdir().unwrap();
        let hot = ArchiveStore::open(dir.path().join("hot").to_str().unwrap()).unwrap();
        let cold = ArchiveStore::open(dir.path().join("cold").to_str().unwrap()).unwrap();
        for (index, time_ms) in times_ms.iter().enumerate() {
            let bytes = write_container(&[masked(&format!("e{index}"), SERVICE, *time_ms)]).unwrap();
            let name = format!("{}/masked-0-{index}-{index}.avro", hour_folder(SERVICE, *time_ms));
            hot.put(&name, bytes, PutMode::Create).await.unwrap();
        }
        let other = write_container(&[masked("other", "chat_inbound", times_ms[0])]).unwrap();
        let name = format!("{}/masked-1-0-0.avro", hour_folder("chat_inbound", times_ms[0]));
        hot.put(&name, other, PutMode::Create).await.unwrap();
        (dir, hot, cold)
    }

    /// 2025-12-12T15:01:53.383Z.
    const TIME_MS: i64 = 1_765_551_713_383;

    #[tokio::test]
    async fn snapshot_reads_existing_hours_only() {
        let times = [TIME_MS, TIME_MS + 3_600_000, TIME_MS + 86_400_000, TIME_MS + 10 * 86_400_000];
        let (_dir, hot, cold) = stores(&times).await;
        let manifest = write_snapshot(&hot, &cold, &incident(TIME_MS, Some(TIME_MS + 86_400_000)), 300_000)
            .await
            .unwrap();
        assert_eq!(manifest.event_count, 3);
        assert_eq!(manifest.from_ms, TIME_MS - 300_000);
        assert_eq!(manifest.to_ms, TIME_MS + 86_400_000 + 300_000);
    }

    #[tokio::test]
    async fn snapshot_of_huge_span_saturates() {
        let (_dir, hot, cold) = stores(&[TIME_MS]).await;
        let started = std::time::Instant::now();
        let manifest = write_snapshot(&hot, &cold, &incident(i64::MIN + 1, Some(i64::MAX - 1)), 300_000)
            .await
            .unwrap();
        assert_eq!(manifest.from_ms, i64::MIN);
        assert_eq!(manifest.to_ms, i64::MAX);
        assert_eq!(manifest.event_count, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn snapshot_of_75_years_is_quick() {
        let (_dir, hot, cold) = stores(&[TIME_MS]).await;
        let start_ms = 946_684_800_000;
        let end_ms = start_ms + 75 * 365 * 86_400_000;
        let started = std::time::Instant::now();
        let manifest = write_snapshot(&hot, &cold, &incident(start_ms, Some(end_ms)), 300_000)
            .await
            .unwrap();
        assert_eq!(manifest.event_count, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn hour_folder_is_utc() {
        assert_eq!(
            hour_folder("voice_inbound", 1_765_551_713_383),
            "date=2025-12-12/hour=15/service=voice_inbound"
        );
    }
}
