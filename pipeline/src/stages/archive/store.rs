//! Opening an archive location, and the object store requests of the
//! archive with retries: conditional puts, reads and listings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};

use super::{read_container, ArchiveError};
use crate::model::MaskedEvent;

/// Timeout of one object store request, before object_store retries it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Retries of one request inside object_store, for timeouts, connection
/// resets, HTTP 5xx and throttling (429, 503 SlowDown). Past them the error
/// reaches [`ArchiveStore`], which waits and tries again (see [`StoreRetry`]).
fn request_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(60),
    }
}

/// Opens a folder path, a `file://` URL or an object store URL (`s3://`,
/// `gs://`, `az://`), and returns the store, the prefix inside it and the
/// URL that names it. A local folder is created when missing, and local
/// writes are fsynced before they return. S3 settings (endpoint, region,
/// credentials) come from the `AWS_*` variables, Google Cloud Storage ones
/// from `GOOGLE_*` and Azure ones from `AZURE_*`. An error is the reason,
/// for the caller's error type.
/// Refuses to open S3 without credentials when AWS_EC2_METADATA_DISABLED
/// is set: the S3 client would otherwise ask the instance metadata service
/// for them, which that variable turns off in the AWS tools.
fn check_s3_credentials() -> Result<(), String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let metadata_disabled = std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
    let credentials = set("AWS_ACCESS_KEY_ID")
        || set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    if metadata_disabled && !credentials {
        return Err(
            "no S3 credentials are set and AWS_EC2_METADATA_DISABLED=true turns off the instance metadata service; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a web identity token file)"
                .to_string(),
        );
    }
    Ok(())
}

pub fn open_location(location: &str) -> Result<(Arc<dyn ObjectStore>, StorePath, String), String> {
    if !location.contains("://") {
        std::fs::create_dir_all(location).map_err(|e| e.to_string())?;
        let absolute = std::fs::canonicalize(location).map_err(|e| e.to_string())?;
        let store = LocalFileSystem::new_with_prefix(&absolute)
            .map_err(|e| e.to_string())?
            .with_fsync(true);
        return Ok((Arc::new(store), StorePath::default(), format!("file://{}", absolute.display())));
    }
    let url = url::Url::parse(location).map_err(|e| e.to_string())?;
    let named = location.trim_end_matches('/').to_string();
    match url.scheme() {
        "file" => {
            std::fs::create_dir_all(url.path()).map_err(|e| e.to_string())?;
            let store = LocalFileSystem::new_with_prefix(url.path())
                .map_err(|e| e.to_string())?
                .with_fsync(true);
            Ok((Arc::new(store), StorePath::default(), named))
        }
        "s3" | "s3a" => {
            check_s3_credentials()?;
            // Timeouts first, so that AWS_TIMEOUT and AWS_CONNECT_TIMEOUT
            // override them.
            let mut builder = AmazonS3Builder::new().with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT),
            );
            for (name, value) in environment_options("AWS_") {
                if let Ok(key) = name.parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            let store = builder
                .with_url(location)
                .with_retry(request_retry())
                .build()
                .map_err(|e| e.to_string())?;
            let prefix = StorePath::from_url_path(url.path()).map_err(|e| e.to_string())?;
            Ok((Arc::new(store), prefix, named))
        }
        _ => {
            let mut options = environment_options("AWS_");
            options.extend(environment_options("GOOGLE_"));
            options.extend(environment_options("AZURE_"));
            options.push(("timeout".into(), format!("{}s", REQUEST_TIMEOUT.as_secs())));
            options.push(("connect_timeout".into(), format!("{}s", CONNECT_TIMEOUT.as_secs())));
            let (store, prefix) = object_store::parse_url_opts(&url, options).map_err(|e| e.to_string())?;
            Ok((Arc::from(store), prefix, named))
        }
    }
}

fn environment_options(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect()
}

/// Retry policy of [`ArchiveStore`] for a request that failed with an error
/// that may pass, such as a store that is down.
#[derive(Debug, Clone)]
pub struct StoreRetry {
    /// Attempts before the error is returned. `None` retries until the
    /// request succeeds: the archive stage pauses rather than skip data.
    pub max_attempts: Option<u32>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for StoreRetry {
    /// Five attempts over about 15 seconds: for commands and the ticket
    /// stage's snapshots, which report the error to their caller.
    fn default() -> StoreRetry {
        StoreRetry {
            max_attempts: Some(5),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// Gauges of a store that keeps failing, so a pause shows in `/metrics`.
#[derive(Clone)]
pub struct StoreHealth {
    /// 1 while requests fail and the store waits to retry, 0 otherwise.
    pub paused: prometheus::IntGauge,
    /// Failed attempts that were retried.
    pub retries: prometheus::IntCounter,
}

/// Whether a put created the object or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyExists,
}

/// An object store and the prefix inside it.
#[derive(Clone)]
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
    /// Whether the store is a local file system, which takes no storage
    /// class.
    local: bool,
    storage_class: Option<String>,
    retry: StoreRetry,
    health: Option<StoreHealth>,
}

impl ArchiveStore {
    /// Opens a folder path, a `file://` URL or an object store URL (see
    /// [`open_location`]).
    pub fn open(location: &str) -> Result<ArchiveStore, ArchiveError> {
        let (store, prefix, url) = open_location(location).map_err(|reason| ArchiveError::Url {
            url: location.to_string(),
            reason,
        })?;
        let local = url.starts_with("file://");
        Ok(ArchiveStore {
            store,
            prefix,
            url,
            local,
            storage_class: None,
            retry: StoreRetry::default(),
            health: None,
        })
    }

    /// Wraps a store built elsewhere, such as an in-memory store in tests.
    pub fn from_store(store: Arc<dyn ObjectStore>, url: &str) -> ArchiveStore {
        ArchiveStore {
            store,
            prefix: StorePath::default(),
            url: url.trim_end_matches('/').to_string(),
            local: true,
            storage_class: None,
            retry: StoreRetry::default(),
            health: None,
        }
    }

    /// Writes large objects, such as snapshot events, in `class` (an S3
    /// storage class such as GLACIER). Local stores ignore it.
    pub fn with_storage_class(mut self, class: &str) -> ArchiveStore {
        self.storage_class = (!self.local && !class.is_empty()).then(|| class.to_string());
        self
    }

    /// Returns the storage class of archived objects, when the store has
    /// one.
    pub fn storage_class(&self) -> Option<&str> {
        self.storage_class.as_deref()
    }

    pub fn with_retry(mut self, retry: StoreRetry) -> ArchiveStore {
        self.retry = retry;
        self
    }

    pub fn with_health(mut self, health: StoreHealth) -> ArchiveStore {
        self.health = Some(health);
        self
    }

    pub(super) fn path(&self, relative: &str) -> StorePath {
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

    /// Runs `request` until it succeeds, fails with an error that retrying
    /// cannot fix, or uses up [`StoreRetry::max_attempts`]. Each failure is
    /// logged with the wait before the next attempt.
    async fn retrying<T, F, Fut>(&self, operation: &'static str, relative: &str, mut request: F) -> Result<T, ArchiveError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, object_store::Error>>,
    {
        let mut failures: u32 = 0;
        let mut backoff = self.retry.initial_backoff;
        loop {
            let error = match request().await {
                Ok(value) => {
                    if failures > 0 {
                        tracing::info!(operation, location = %self.url_of(relative), failures, "Object store request succeeded again; the archive resumes.");
                        self.set_paused(false);
                    }
                    return Ok(value);
                }
                Err(error) => error,
            };
            failures += 1;
            let give_up = !is_retryable(&error) || self.retry.max_attempts.is_some_and(|max| failures >= max);
            if give_up {
                self.set_paused(false);
                return Err(ArchiveError::Store {
                    location: self.url_of(relative),
                    source: error,
                });
            }
            self.set_paused(true);
            if let Some(health) = &self.health {
                health.retries.inc();
            }
            tracing::warn!(
                operation,
                location = %self.url_of(relative),
                failures,
                retry_in_ms = backoff.as_millis() as u64,
                error = %error,
                "Object store request failed; the archive pauses and retries, and commits nothing meanwhile."
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }

    fn set_paused(&self, paused: bool) {
        if let Some(health) = &self.health {
            health.paused.set(i64::from(paused));
        }
    }

    /// Writes an object. With [`PutMode::Create`] an object that already
    /// exists is left as it is and reported as [`PutOutcome::AlreadyExists`].
    /// `archived` writes in the store's storage class, when it has one.
    pub(super) async fn put(&self, relative: &str, bytes: Vec<u8>, mode: PutMode, archived: bool) -> Result<PutOutcome, ArchiveError> {
        let path = self.path(relative);
        let payload = PutPayload::from(bytes);
        let mut attributes = Attributes::new();
        if let (true, Some(class)) = (archived, &self.storage_class) {
            attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        let options = PutOptions {
            mode,
            attributes,
            ..PutOptions::default()
        };
        let result = self
            .retrying("put", relative, || self.store.put_opts(&path, payload.clone(), options.clone()))
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Created),
            // A create that finds the key taken: an earlier attempt, or a
            // run before a restart, made the object durable.
            Err(ArchiveError::Store {
                source: object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
                ..
            }) => Ok(PutOutcome::AlreadyExists),
            Err(error) => Err(error),
        }
    }

    /// Reads an object, or `None` when it does not exist.
    pub(super) async fn get(&self, relative: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let path = self.path(relative);
        let result = self
            .retrying("get", relative, || async {
                let fetched = self.store.get(&path).await?;
                fetched.bytes().await
            })
            .await;
        match result {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(ArchiveError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Lists the objects under `relative`, with the paths relative to this
    /// store, in name order. Staging files of an unfinished local write are
    /// not listed.
    pub(super) async fn list(&self, relative: &str) -> Result<Vec<String>, ArchiveError> {
        let prefix = self.path(relative);
        let listed: Vec<StorePath> = self
            .retrying("list", relative, || self.store.list(Some(&prefix)).map_ok(|meta| meta.location).try_collect())
            .await?;
        let mut names: Vec<String> = listed.iter().map(|path| self.relative_of(path)).collect();
        names.sort();
        Ok(names)
    }

    fn relative_of(&self, path: &StorePath) -> String {
        path.prefix_match(&self.prefix)
            .map(|parts| parts.map(|part| part.as_ref().to_string()).collect::<Vec<_>>().join("/"))
            .unwrap_or_else(|| path.to_string())
    }

    /// Returns the names of the folders directly under `relative`, such as
    /// `date=2025-12-12`, without listing the objects inside them.
    pub(super) async fn list_folders(&self, relative: &str) -> Result<Vec<String>, ArchiveError> {
        let prefix = self.path(relative);
        let listing = self
            .retrying("list", relative, || self.store.list_with_delimiter(Some(&prefix)))
            .await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|folder| folder.filename().map(str::to_string))
            .collect())
    }

    /// Returns the hot-tier folders of `service` whose hour overlaps
    /// `from_ms..=to_ms`, in time order. Only folders that exist are listed,
    /// so the cost follows the archive's size, not the span of the interval.
    pub(super) async fn service_hour_folders(&self, service: &str, from_ms: i64, to_ms: i64) -> Result<Vec<String>, ArchiveError> {
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

    /// Reads every event archived under `relative`, in name order of the
    /// objects.
    pub async fn read_all(&self, relative: &str) -> Result<Vec<MaskedEvent>, ArchiveError> {
        let mut events = Vec::new();
        for name in self.list(relative).await?.iter().filter(|name| name.ends_with(".avro")) {
            let bytes = self.get(name).await?.unwrap_or_default();
            let decoded = read_container(&bytes).map_err(|reason| ArchiveError::Format {
                location: self.url_of(name),
                reason,
            })?;
            events.extend(decoded);
        }
        Ok(events)
    }
}

/// Returns whether an error may pass: a store that is down, slow, throttling or
/// refusing the credentials for now. Errors of the request itself, such as
/// an invalid path or an unsupported operation, fail at once, and so does a
/// read of an S3 object in an archive storage class (InvalidObjectState),
/// which needs a restore first.
fn is_retryable(error: &object_store::Error) -> bool {
    if error.to_string().contains("InvalidObjectState") {
        return false;
    }
    matches!(
        error,
        object_store::Error::Generic { .. }
            | object_store::Error::JoinError { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}
