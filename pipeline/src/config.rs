//! Configuration: defaults, then a TOML file, then environment variables
//! prefixed `BLAMELESS__` with `__` for nesting
//! (`BLAMELESS__KAFKA__BROKERS=host:9092`). Secrets come from the environment
//! or a file and never print.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod ticket;
pub use ticket::{JiraConfig, JiraFieldMapping, ServiceNowConfig, TicketConfig, WebhookConfig};

/// A secret value: prints as `[redacted]` in `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Accepts a TOML number or boolean too and keeps its text, because
/// librdkafka properties in `kafka.client_properties` are naturally written
/// as `"linger.ms" = 5` or `"enable.idempotence" = true`. The mask keys
/// from the environment do not go through here: [`Config::load`] takes them
/// verbatim.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            String(String),
            Unsigned(u64),
            Signed(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Secret(match Text::deserialize(deserializer)? {
            Text::String(text) => text,
            Text::Unsigned(number) => number.to_string(),
            Text::Signed(number) => number.to_string(),
            Text::Float(number) => number.to_string(),
            Text::Bool(flag) => flag.to_string(),
        }))
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub metrics: MetricsConfig,
    pub stage: StageConfig,
    pub mask: MaskConfig,
    pub window: WindowConfig,
    pub ticket: TicketConfig,
    pub archive: ArchiveConfig,
    pub ingest: IngestConfig,
    pub sources: SourcesConfig,
    pub normalize: NormalizeConfig,
    pub attachments: AttachmentsConfig,
}

/// Environment variable whose exact text is the mask key. figment would read
/// its value as TOML, so `1234567890123456.0` or `"quoted"` would arrive
/// changed. [`Config::load`] takes it verbatim instead.
pub const MASK_KEY_VARIABLE: &str = "BLAMELESS__MASK__KEY";

/// Environment variables whose exact text is an attachment master key, taken
/// verbatim for the same reason as [`MASK_KEY_VARIABLE`]: a hexadecimal key
/// of digits and one `e` would otherwise arrive as a TOML float.
pub const ATTACHMENTS_MASTER_KEY_VARIABLE: &str = "BLAMELESS__ATTACHMENTS__MASTER_KEY";
pub const ATTACHMENTS_PREVIOUS_MASTER_KEY_VARIABLE: &str = "BLAMELESS__ATTACHMENTS__PREVIOUS_MASTER_KEY";

/// Environment variable whose exact text is the previous mask key during a
/// key rotation, taken verbatim like [`MASK_KEY_VARIABLE`].
pub const PREVIOUS_MASK_KEY_VARIABLE: &str = "BLAMELESS__MASK__PREVIOUS_KEY";

/// Minimum characters of a mask key.
pub const MIN_MASK_KEY_CHARS: usize = 16;

/// Largest accepted value of the duration settings in seconds
/// (window.window_secs, window.quiet_secs, window.gate_min_duration_secs,
/// window.out_of_orderness_secs, window.allowed_lateness_secs,
/// window.idle_timeout_secs, window.cooldown_secs, window.cooldown_max_secs,
/// window.calm_secs and archive.snapshot_margin_secs): 7 days.
pub const MAX_DURATION_SECS: u64 = 604_800;

/// Event types that can be signals, and so the only keys of
/// `window.thresholds`.
pub const SIGNAL_EVENT_TYPES: [&str; 6] = [
    "call_failed",
    "ivr_error",
    "api_connection_error",
    "service_level_failure",
    "agent_availability_drop",
    "dependency_check",
];

/// Default of `ingest.max_payload_bytes`. It is below librdkafka's default
/// `message.max.bytes` of 1000000 bytes (librdkafka CONFIGURATION.md), which
/// caps what the producer sends, leaving room for the raw event's other
/// fields and the record encoding.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 900_000;


#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Prepended to every topic name of topology/, for sharing a cluster.
    /// Default empty.
    pub topic_prefix: String,
    /// Prepended to every consumer group name instead of `blameless`.
    /// Default `blameless`.
    pub group_prefix: String,
    /// Extra librdkafka client properties such as `security.protocol` or
    /// `sasl.username`. Values are never logged.
    pub client_properties: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            group_prefix: "blameless".into(),
            client_properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Confluent-compatible schema registry URL. When empty, records use the
    /// Avro single-object encoding. Default empty.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address serving `/metrics` and `/health`. Default `127.0.0.1:9464`.
    /// An empty value turns the server off.
    pub address: String,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            address: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// Most records a stage takes from its input before producing and
    /// committing. Default 500.
    pub batch_max_records: usize,
    /// Maximum time a stage waits to fill a batch, in milliseconds. Default 200.
    pub batch_max_wait_ms: u64,
    /// Wall-clock tick that lets time-driven stages move on when no record
    /// arrives, in milliseconds. Default 1000.
    pub tick_ms: u64,
}

impl Default for StageConfig {
    fn default() -> StageConfig {
        StageConfig {
            batch_max_records: 500,
            batch_max_wait_ms: 200,
            tick_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskConfig {
    /// The HMAC-SHA-256 key for pseudonyms. Set it through
    /// `BLAMELESS__MASK__KEY` or `key_file`; never commit it.
    pub key: Secret,
    /// A file holding the key (trailing whitespace is ignored).
    pub key_file: Option<PathBuf>,
    /// Id of the key, written with every masked record so a key rotation can
    /// be distinguished. Letters, digits, `.`, `_` and `-`, at most 32
    /// characters. Default `k1`.
    pub key_id: String,
    /// The key that was active before `key`, kept during a key rotation so
    /// each masked event also carries its pseudonyms under it. Set it
    /// through `BLAMELESS__MASK__PREVIOUS_KEY` or `previous_key_file`.
    /// Default empty (no rotation in progress).
    pub previous_key: Secret,
    /// A file holding the previous key (trailing whitespace is ignored).
    pub previous_key_file: Option<PathBuf>,
    /// Id of the previous key. Required when a previous key is set.
    pub previous_key_id: Option<String>,
    /// ISO 3166-1 alpha-2 code of the country whose national format phone
    /// numbers without `+` or `00` are read in, such as `US` or `GB`.
    /// Default `US`.
    pub default_country: String,
}

impl Default for MaskConfig {
    fn default() -> MaskConfig {
        MaskConfig {
            key: Secret::default(),
            key_file: None,
            key_id: "k1".into(),
            previous_key: Secret::default(),
            previous_key_file: None,
            previous_key_id: None,
            default_country: "US".into(),
        }
    }
}

impl MaskConfig {
    /// Returns the default country of phone numbers, or an error naming
    /// the invalid code.
    pub fn default_country_id(&self) -> Result<phonenumber::country::Id, ConfigError> {
        self.default_country.trim().to_ascii_uppercase().parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "mask.default_country is {:?}, which is not an ISO 3166-1 alpha-2 country code; set one such as \"US\" or \"GB\"",
                self.default_country
            ))
        })
    }

    /// Adds the problems of the `[mask]` section to `problems`. The active
    /// key itself is checked by [`Config::mask_key`], because only the
    /// commands that mask need it.
    fn validate(&self, problems: &mut Vec<String>) {
        if !valid_key_id(&self.key_id) {
            problems.push(format!(
                "mask.key_id is {:?}; set 1 to 32 letters, digits, '.', '_' or '-' such as \"k2\"",
                self.key_id
            ));
        }
        if let Err(ConfigError::Invalid(problem)) = self.default_country_id() {
            problems.push(problem);
        }
        let previous_id = self.previous_key_id.as_deref();
        if self.previous_key.is_empty() {
            if let Some(id) = previous_id {
                problems.push(format!(
                    "mask.previous_key_id is {id:?} but no previous key is set; set {PREVIOUS_MASK_KEY_VARIABLE} or mask.previous_key_file during a key rotation, or remove mask.previous_key_id when the rotation is over"
                ));
            }
            return;
        }
        match previous_id {
            None => problems.push(
                "mask.previous_key is set but mask.previous_key_id is not; set it to the id the previous key's pseudonyms carry, such as \"k1\"".to_string(),
            ),
            Some(id) if !valid_key_id(id) => problems.push(format!(
                "mask.previous_key_id is {id:?}; set 1 to 32 letters, digits, '.', '_' or '-' such as \"k1\""
            )),
            Some(id) if id == self.key_id => problems.push(format!(
                "mask.previous_key_id and mask.key_id are both {id:?}; give the new key a new id such as \"k2\", so pseudonyms of the two keys can be told apart"
            )),
            Some(_) => {}
        }
        if self.previous_key.expose().chars().count() < MIN_MASK_KEY_CHARS {
            problems.push(format!(
                "mask.previous_key is shorter than {MIN_MASK_KEY_CHARS} characters; set the key that was active before the rotation"
            ));
        }
        if self.previous_key == self.key {
            problems.push(
                "mask.previous_key is the same as mask.key; a rotation needs a new random key in mask.key and the old one in mask.previous_key".to_string(),
            );
        }
    }
}

/// Returns whether a key id can be written into pseudonyms such as
/// `agent_<key id>_<hex>`.
fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Length of the sliding event-time window, in seconds. Default 300.
    pub window_secs: u64,
    /// Signals that open an incident, by event type, as a count within the
    /// window. Default `call_failed = 50`, `service_level_failure = 3`,
    /// `ivr_error = 50`, `api_connection_error = 10`,
    /// `agent_availability_drop = 2`.
    pub thresholds: BTreeMap<String, u64>,
    /// An incident is ticketed once it lasts longer than this, in seconds.
    /// Default 600.
    pub gate_min_duration_secs: u64,
    /// Or once its failed contacts exceed this share of the service's
    /// contacts over the same interval. Default 0.05.
    pub gate_min_failure_share: f64,
    /// An incident closes when no signal arrived for this long, in event-time
    /// seconds. Default 300.
    pub quiet_secs: u64,
    /// How far events may arrive out of order, in seconds. Default 30.
    pub out_of_orderness_secs: u64,
    /// How far behind the watermark an event may still count, in seconds.
    /// Later events go to the `late-events` topic. Default 60.
    pub allowed_lateness_secs: u64,
    /// Wall-clock seconds without a record after which a partition no
    /// longer holds the watermark back. Default 60.
    pub idle_timeout_secs: u64,
    /// A breach this many event-time seconds after the service's last
    /// incident closed reopens that incident as a recurrence. Default 600.
    pub cooldown_secs: u64,
    /// The cooldown doubles with each recurrence up to this, in seconds.
    /// Default 3600.
    pub cooldown_max_secs: u64,
    /// Event-time seconds after a close without a breach that reset the
    /// cooldown. Default 3600.
    pub calm_secs: u64,
    /// Settings of single affected services, by service name, such as
    /// `[window.services.voice_inbound.thresholds]`. Default none.
    pub services: BTreeMap<String, ServiceWindowConfig>,
}

/// The window settings of one affected service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceWindowConfig {
    /// Thresholds of this service by event type. Each replaces the
    /// `window.thresholds` entry of its type, and the others still apply.
    pub thresholds: BTreeMap<String, u64>,
}

impl Default for WindowConfig {
    fn default() -> WindowConfig {
        let thresholds = [
            ("call_failed".to_string(), 50),
            ("service_level_failure".to_string(), 3),
            ("ivr_error".to_string(), 50),
            ("api_connection_error".to_string(), 10),
            ("agent_availability_drop".to_string(), 2),
        ]
        .into_iter()
        .collect();
        WindowConfig {
            window_secs: 300,
            thresholds,
            gate_min_duration_secs: 600,
            gate_min_failure_share: 0.05,
            quiet_secs: 300,
            out_of_orderness_secs: 30,
            allowed_lateness_secs: 60,
            idle_timeout_secs: 60,
            cooldown_secs: 600,
            cooldown_max_secs: 3600,
            calm_secs: 3600,
            services: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Hot tier: an object store URL (`file:///abs/path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`) or a plain folder path.
    /// Default `out/archive/hot`.
    pub url: String,
    /// Cold tier, where each ticketed incident's events are copied and which
    /// data_snapshot_url points into. Default `out/archive/cold`.
    pub cold_url: String,
    /// Events before the incident start and after its end that the snapshot
    /// keeps, in seconds. Default 300.
    pub snapshot_margin_secs: u64,
    /// A partition's batch is written once its events reach about this many
    /// bytes, Avro-encoded before compression. Default 8388608 (8 MiB).
    pub batch_max_bytes: usize,
    /// A partition's batch is written at the latest this many seconds after
    /// its first record arrived. Default 60.
    pub batch_max_secs: u64,
    /// S3 storage class of snapshot events in the cold tier: GLACIER,
    /// DEEP_ARCHIVE, GLACIER_IR, or STANDARD for S3-compatible stores that
    /// have no archive classes, such as MinIO. Local folders have no storage
    /// class. Default GLACIER.
    pub cold_storage_class: String,
    /// Days the hot tier keeps objects, for `blameless archive lifecycle`.
    /// At least 90. Default 90.
    pub hot_retention_days: u32,
    /// Days the cold tier keeps snapshots, for `blameless archive
    /// lifecycle`. At least 365. Default 365.
    pub cold_retention_days: u32,
}

/// Storage classes that `archive.cold_storage_class` accepts.
pub const COLD_STORAGE_CLASSES: [&str; 4] = ["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "STANDARD"];
/// Minimum of `archive.hot_retention_days`.
pub const MIN_HOT_RETENTION_DAYS: u32 = 90;
/// Minimum of `archive.cold_retention_days`.
pub const MIN_COLD_RETENTION_DAYS: u32 = 365;

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig {
            url: "out/archive/hot".into(),
            cold_url: "out/archive/cold".into(),
            snapshot_margin_secs: 300,
            batch_max_bytes: 8 * 1024 * 1024,
            batch_max_secs: 60,
            cold_storage_class: "GLACIER".into(),
            hot_retention_days: MIN_HOT_RETENTION_DAYS,
            cold_retention_days: MIN_COLD_RETENTION_DAYS,
        }
    }
}

impl ArchiveConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.batch_max_bytes == 0 {
            problems.push("archive.batch_max_bytes is 0; set a size in bytes such as 8388608".to_string());
        }
        if self.batch_max_secs == 0 || self.batch_max_secs > MAX_DURATION_SECS {
            problems.push(format!(
                "archive.batch_max_secs is {}; set a number of seconds from 1 to {MAX_DURATION_SECS}, such as 60",
                self.batch_max_secs
            ));
        }
        if !COLD_STORAGE_CLASSES.contains(&self.cold_storage_class.as_str()) {
            problems.push(format!(
                "archive.cold_storage_class is {:?}; use one of {}",
                self.cold_storage_class,
                COLD_STORAGE_CLASSES.join(", ")
            ));
        }
        if self.hot_retention_days < MIN_HOT_RETENTION_DAYS {
            problems.push(format!(
                "archive.hot_retention_days is {}, below the {MIN_HOT_RETENTION_DAYS} days the hot tier must keep; set {MIN_HOT_RETENTION_DAYS} or more",
                self.hot_retention_days
            ));
        }
        if self.cold_retention_days < MIN_COLD_RETENTION_DAYS {
            problems.push(format!(
                "archive.cold_retention_days is {}, below the {MIN_COLD_RETENTION_DAYS} days the cold tier must keep; set {MIN_COLD_RETENTION_DAYS} or more",
                self.cold_retention_days
            ));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest payload, in bytes, that ingest writes to `raw-events`; a
    /// larger one is rejected with its origin and size. Default 900000
    /// (`DEFAULT_MAX_PAYLOAD_BYTES`).
    pub max_payload_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// Copies of an event (same event id) accepted within this many seconds
    /// of the first are dropped. 0 turns deduplication off. Default 3600.
    pub dedupe_horizon_secs: u64,
    /// Rules that name the affected service, tried in order; the first that
    /// matches wins. An event no rule matches keeps its platform default,
    /// such as `voice_inbound`.
    pub service_rules: Vec<ServiceRule>,
}

impl Default for NormalizeConfig {
    fn default() -> NormalizeConfig {
        NormalizeConfig {
            dedupe_horizon_secs: 3600,
            service_rules: Vec::new(),
        }
    }
}

/// A service rule: the service to name, and conditions on the normalized
/// event that must all hold. Each condition compares with an attribute
/// (`queue_id`, `flow_id`, `dnis`, `media_type`, `direction`,
/// `integration_id`, `provider`) or with the platform or the default service,
/// ignoring case.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceRule {
    pub service: String,
    pub platform: Option<String>,
    pub default_service: Option<String>,
    pub queue_id: Option<String>,
    pub flow_id: Option<String>,
    pub dnis: Option<String>,
    pub media_type: Option<String>,
    pub direction: Option<String>,
    pub integration_id: Option<String>,
    pub provider: Option<String>,
}

impl ServiceRule {
    fn conditions(&self) -> [(&'static str, Option<&String>); 9] {
        [
            ("platform", self.platform.as_ref()),
            ("default_service", self.default_service.as_ref()),
            ("queue_id", self.queue_id.as_ref()),
            ("flow_id", self.flow_id.as_ref()),
            ("dnis", self.dnis.as_ref()),
            ("media_type", self.media_type.as_ref()),
            ("direction", self.direction.as_ref()),
            ("integration_id", self.integration_id.as_ref()),
            ("provider", self.provider.as_ref()),
        ]
    }

    /// Returns whether every condition of the rule holds for `event`.
    pub fn matches(&self, event: &crate::model::NormalizedEvent) -> bool {
        self.conditions().iter().all(|(name, expected)| {
            let Some(expected) = expected else { return true };
            let actual = match *name {
                "platform" => Some(&event.platform_source),
                "default_service" => Some(&event.affected_service),
                attribute => event.attributes.get(attribute),
            };
            actual.is_some_and(|actual| actual.eq_ignore_ascii_case(expected))
        })
    }

    fn validate(&self, index: usize, problems: &mut Vec<String>) {
        let valid_name = !self.service.is_empty()
            && self.service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            problems.push(format!(
                "normalize.service_rules[{index}].service is {:?}; set a service name of lower-case letters, digits and underscores such as \"billing_voice\"",
                self.service
            ));
        }
        if self.conditions().iter().all(|(_, expected)| expected.is_none()) {
            problems.push(format!(
                "normalize.service_rules[{index}] has no condition, so it would match every event; add one such as queue_id or dnis"
            ));
        }
    }
}

/// Encrypted incident attachments (`blameless attachment`), stored in the
/// cold tier (`archive.cold_url`). See docs/attachments.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// The AES-256 master key that wraps each attachment's data key: 32
    /// bytes as 64 hexadecimal characters or base64. Set it through
    /// `BLAMELESS__ATTACHMENTS__MASTER_KEY` or `master_key_file`; never
    /// commit it.
    pub master_key: Secret,
    /// A file containing the master key (surrounding whitespace is ignored).
    /// It replaces `master_key`.
    pub master_key_file: Option<PathBuf>,
    /// Id of the master key, written into every attachment so the right key
    /// is chosen after a rotation. Default `ak1`.
    pub master_key_id: String,
    /// The master key before the last rotation, used only to decrypt
    /// attachments written with it. Default empty.
    pub previous_master_key: Secret,
    /// A file containing the previous master key. It replaces
    /// `previous_master_key`.
    pub previous_master_key_file: Option<PathBuf>,
    /// Id of the previous master key. Required when a previous key is set.
    pub previous_master_key_id: String,
    /// TOML (or, for a `.json` name, JSON) file mapping principal names to
    /// roles. Required by `blameless attachment get`. Default unset.
    pub principals_file: Option<PathBuf>,
    /// Append-only JSON Lines file with one line per decryption attempt.
    /// Default `out/audit/attachments.jsonl`.
    pub audit_log: PathBuf,
}

impl Default for AttachmentsConfig {
    fn default() -> AttachmentsConfig {
        AttachmentsConfig {
            master_key: Secret::default(),
            master_key_file: None,
            master_key_id: "ak1".into(),
            previous_master_key: Secret::default(),
            previous_master_key_file: None,
            previous_master_key_id: String::new(),
            principals_file: None,
            audit_log: PathBuf::from("out/audit/attachments.jsonl"),
        }
    }
}

impl AttachmentsConfig {
    /// Reads the master key variables verbatim, when set.
    fn read_key_variables(&mut self) -> Result<(), ConfigError> {
        for (variable, key) in [
            (ATTACHMENTS_MASTER_KEY_VARIABLE, &mut self.master_key),
            (ATTACHMENTS_PREVIOUS_MASTER_KEY_VARIABLE, &mut self.previous_master_key),
        ] {
            match std::env::var(variable) {
                Ok(text) => *key = Secret::new(text),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError::Invalid(format!(
                        "{variable} is not valid UTF-8. Set it to 64 hexadecimal characters or base64 of 32 bytes"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Replaces each key by the contents of its key file, when one is set.
    fn read_key_files(&mut self) -> Result<(), ConfigError> {
        ticket::read_secret_file("attachments.master_key_file", &self.master_key_file, &mut self.master_key)?;
        ticket::read_secret_file(
            "attachments.previous_master_key_file",
            &self.previous_master_key_file,
            &mut self.previous_master_key,
        )
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if let Err(reason) = crate::attachments::envelope::check_key_id(&self.master_key_id) {
            problems.push(format!("attachments.master_key_id {reason}"));
        }
        if !self.master_key.is_empty() {
            if let Err(reason) = crate::attachments::envelope::decode_key_text(self.master_key.expose()) {
                problems.push(format!("attachments.master_key {reason}"));
            }
        }
        if !self.previous_master_key.is_empty() {
            if let Err(reason) = crate::attachments::envelope::decode_key_text(self.previous_master_key.expose()) {
                problems.push(format!("attachments.previous_master_key {reason}"));
            }
            if self.previous_master_key_id.is_empty() {
                problems.push(
                    "attachments.previous_master_key is set but previous_master_key_id is empty; set it to the id the previous key had as master_key_id"
                        .to_string(),
                );
            }
        }
        if !self.previous_master_key_id.is_empty() {
            if let Err(reason) = crate::attachments::envelope::check_key_id(&self.previous_master_key_id) {
                problems.push(format!("attachments.previous_master_key_id {reason}"));
            }
            if self.previous_master_key_id == self.master_key_id {
                problems.push(format!(
                    "attachments.previous_master_key_id is {:?}, the same as master_key_id; give each key its own id, such as \"ak2\" for the new key",
                    self.master_key_id
                ));
            }
        }
        if self.audit_log.as_os_str().is_empty() {
            problems.push(
                "attachments.audit_log is empty; set a file path such as \"out/audit/attachments.jsonl\"".to_string(),
            );
        }
    }

    /// Returns the master keys, or an error explaining how to set the
    /// current one. Checked only by the commands that encrypt or decrypt.
    pub fn keyring(&self) -> Result<crate::attachments::envelope::Keyring, ConfigError> {
        use crate::attachments::envelope::{Keyring, MasterKey};
        if self.master_key.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "attachments.master_key is empty. Set {ATTACHMENTS_MASTER_KEY_VARIABLE} or attachments.master_key_file to 32 random bytes as 64 hexadecimal characters, for example from `openssl rand -hex 32`"
            )));
        }
        let current = MasterKey::parse(&self.master_key_id, self.master_key.expose())
            .map_err(|reason| ConfigError::Invalid(format!("attachments.master_key {reason}")))?;
        let previous = if self.previous_master_key.is_empty() {
            None
        } else {
            Some(
                MasterKey::parse(&self.previous_master_key_id, self.previous_master_key.expose())
                    .map_err(|reason| ConfigError::Invalid(format!("attachments.previous_master_key {reason}")))?,
            )
        };
        Ok(Keyring { current, previous })
    }
}

/// Settings of the programs that fetch or receive platform payloads and
/// publish them to `raw-events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// `blameless source http`: webhooks and forwarded events over HTTP.
    pub http: crate::sources::receiver::ReceiverConfig,
    /// `blameless source genesys`: the Genesys Cloud Notification API.
    pub genesys: crate::sources::genesys_client::GenesysClientConfig,
    /// `blameless source nice`: the NICE CXone reporting API.
    pub nice: crate::sources::nice_poller::NicePollerConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Configuration is invalid: {0}")]
    Invalid(String),
    // The I/O error is a plain field, not a `source`, because the message
    // already contains it and `{:#}` would print it a second time.
    #[error("Could not read the mask key file {path}: {error}. Check the path in mask.key_file or mask.previous_key_file and the file's permissions.")]
    KeyFile { path: PathBuf, error: std::io::Error },
    #[error("Could not read {setting} {path}: {error}. Check the path, or leave {setting} out.")]
    SecretFile {
        setting: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Config {
    /// Loads defaults, then `file` when given, then `BLAMELESS__` variables.
    /// The mask key variables are taken verbatim.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mask_key = read_verbatim(MASK_KEY_VARIABLE)?;
        let previous_mask_key = read_verbatim(PREVIOUS_MASK_KEY_VARIABLE)?;
        Config::load_with_mask_keys(file, mask_key, previous_mask_key)
    }

    /// Loads like [`Config::load`], with `mask_key` standing for the value
    /// of `BLAMELESS__MASK__KEY`, which is then used as the key exactly as
    /// given, and no previous key from the environment. `mask.key_file`,
    /// when set, still replaces it.
    pub fn load_with_mask_key(file: Option<&Path>, mask_key: Option<String>) -> Result<Config, ConfigError> {
        Config::load_with_mask_keys(file, mask_key, None)
    }

    /// Loads like [`Config::load`], with `mask_key` and `previous_mask_key`
    /// standing for the values of `BLAMELESS__MASK__KEY` and
    /// `BLAMELESS__MASK__PREVIOUS_KEY`. `mask.key_file` and
    /// `mask.previous_key_file`, when set, still replace them.
    pub fn load_with_mask_keys(
        file: Option<&Path>,
        mask_key: Option<String>,
        previous_mask_key: Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "the file {} does not exist. Pass an existing TOML file with --config, or leave it out to use defaults and BLAMELESS__ variables",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        // The mask keys and the attachment master keys are left out here
        // and set verbatim below.
        figment = figment.merge(Env::prefixed("BLAMELESS__").split("__").ignore(&[
            "mask.key",
            "mask.previous_key",
            "attachments.master_key",
            "attachments.previous_master_key",
        ]));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        if let Some(key) = mask_key {
            config.mask.key = Secret::new(key);
        }
        if let Some(key) = previous_mask_key {
            config.mask.previous_key = Secret::new(key);
        }
        config.attachments.read_key_variables()?;
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.mask.key_file {
            self.mask.key = read_key_file(path)?;
        }
        if let Some(path) = &self.mask.previous_key_file {
            self.mask.previous_key = read_key_file(path)?;
        }
        self.attachments.read_key_files()?;
        self.ticket.read_secret_files()?;
        Ok(())
    }

    /// Checks the cross-field rules and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.window.window_secs == 0 {
            problems.push("window.window_secs is 0; set a window length in seconds such as 300".to_string());
        }
        if self.window.cooldown_max_secs < self.window.cooldown_secs {
            problems.push(format!(
                "window.cooldown_max_secs is {}, below window.cooldown_secs ({}); set it to {} or more",
                self.window.cooldown_max_secs, self.window.cooldown_secs, self.window.cooldown_secs
            ));
        }
        if self.window.idle_timeout_secs == 0 {
            problems.push(
                "window.idle_timeout_secs is 0, which would treat every partition as idle; set a number of seconds such as 60"
                    .to_string(),
            );
        }
        for (name, value) in [
            ("window.window_secs", self.window.window_secs),
            ("window.quiet_secs", self.window.quiet_secs),
            ("window.gate_min_duration_secs", self.window.gate_min_duration_secs),
            ("window.out_of_orderness_secs", self.window.out_of_orderness_secs),
            ("window.allowed_lateness_secs", self.window.allowed_lateness_secs),
            ("window.idle_timeout_secs", self.window.idle_timeout_secs),
            ("window.cooldown_secs", self.window.cooldown_secs),
            ("window.cooldown_max_secs", self.window.cooldown_max_secs),
            ("window.calm_secs", self.window.calm_secs),
            ("archive.snapshot_margin_secs", self.archive.snapshot_margin_secs),
        ] {
            if value > MAX_DURATION_SECS {
                problems.push(format!(
                    "{name} is {value}, above the limit of {MAX_DURATION_SECS} seconds (7 days); set a number of seconds up to {MAX_DURATION_SECS}"
                ));
            }
        }
        for (event_type, count) in &self.window.thresholds {
            if !SIGNAL_EVENT_TYPES.contains(&event_type.as_str()) {
                problems.push(format!(
                    "window.thresholds.{event_type} is not an event type that can be a signal; the known types are {}",
                    SIGNAL_EVENT_TYPES.join(", ")
                ));
            }
            if *count == 0 {
                problems.push(format!(
                    "window.thresholds.{event_type} is 0, which would open an incident on no signal; set 1 or more"
                ));
            }
        }
        for (service, settings) in &self.window.services {
            for (event_type, count) in &settings.thresholds {
                let name = format!("window.services.{service}.thresholds.{event_type}");
                if !SIGNAL_EVENT_TYPES.contains(&event_type.as_str()) {
                    problems.push(format!(
                        "{name} is not an event type that can be a signal; use one of {}",
                        SIGNAL_EVENT_TYPES.join(", ")
                    ));
                }
                if *count == 0 {
                    problems.push(format!(
                        "{name} is 0, which would open an incident of {service} on no signal; set 1 or more, or remove the entry to use window.thresholds"
                    ));
                }
            }
        }
        let share = self.window.gate_min_failure_share;
        if !(0.0..=1.0).contains(&share) {
            problems.push(format!(
                "window.gate_min_failure_share is {share}; it is a share between 0.0 and 1.0 such as 0.05"
            ));
        }
        if self.normalize.dedupe_horizon_secs > MAX_DURATION_SECS {
            problems.push(format!(
                "normalize.dedupe_horizon_secs is {}, above the limit of {MAX_DURATION_SECS} seconds (7 days); set a number of seconds up to {MAX_DURATION_SECS}",
                self.normalize.dedupe_horizon_secs
            ));
        }
        for (index, rule) in self.normalize.service_rules.iter().enumerate() {
            rule.validate(index, &mut problems);
        }
        self.sources.http.validate(&mut problems);
        self.sources.genesys.validate(&mut problems);
        self.sources.nice.validate(&mut problems);
        self.attachments.validate(&mut problems);
        self.archive.validate(&mut problems);
        self.ticket.validate(&mut problems);
        if self.stage.batch_max_records == 0 {
            problems.push("stage.batch_max_records is 0; set 1 or more".to_string());
        }
        self.mask.validate(&mut problems);
        if self.ingest.max_payload_bytes == 0 {
            problems.push(format!(
                "ingest.max_payload_bytes is 0; set a size in bytes such as {DEFAULT_MAX_PAYLOAD_BYTES}"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// Returns the mask key, or an error explaining how to set one.
    pub fn mask_key(&self) -> Result<&Secret, ConfigError> {
        if self.mask.key.is_empty() {
            return Err(ConfigError::Invalid(
                "mask.key is empty. Set BLAMELESS__MASK__KEY or mask.key_file to a secret of at least 16 characters".into(),
            ));
        }
        if self.mask.key.expose().len() < MIN_MASK_KEY_CHARS {
            return Err(ConfigError::Invalid(
                "mask.key is shorter than 16 characters. Use a random secret of at least 16 characters".into(),
            ));
        }
        Ok(&self.mask.key)
    }

    /// Returns the previous mask key and its id while a key rotation is in
    /// progress, `None` when no previous key is set, or an error when the
    /// `[mask]` section is invalid.
    pub fn previous_mask_key(&self) -> Result<Option<(&Secret, &str)>, ConfigError> {
        let mut problems = Vec::new();
        self.mask.validate(&mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems.join("; ")));
        }
        if self.mask.previous_key.is_empty() {
            return Ok(None);
        }
        // `validate` requires the id whenever the key is set.
        let id = self.mask.previous_key_id.as_deref().unwrap_or_default();
        Ok(Some((&self.mask.previous_key, id)))
    }
}

/// Returns the value of an environment variable exactly as set, or `None`
/// when it is not set.
fn read_verbatim(variable: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(variable) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Invalid(format!(
            "{variable} is not valid UTF-8. Set it to a text secret of at least {MIN_MASK_KEY_CHARS} characters"
        ))),
    }
}

/// Reads a key file, ignoring trailing whitespace such as the final newline.
fn read_key_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::KeyFile {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(Secret::new(text.trim_end()))
}

/// Formats every error of a figment extraction, one after another. Keys
/// are shown without figment's `default.` profile prefix, because this
/// program uses no profiles.
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|single| single.to_string().replace("for key \"default.", "for key \""))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
    }

    #[test]
    fn toml_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[window]\nwindow_secs = 120\n[window.thresholds]\ncall_failed = 7\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.window.window_secs, 120);
        assert_eq!(config.window.thresholds["call_failed"], 7);
        assert_eq!(config.window.quiet_secs, 300);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[window]\nwindow_sec = 120\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("window_sec"), "{error}");
    }

    #[test]
    fn window_idle_timeout_of_zero_is_rejected() {
        let mut config = Config::default();
        config.window.idle_timeout_secs = 0;
        config.window.allowed_lateness_secs = 604_801;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("window.idle_timeout_secs is 0"), "{error}");
        assert!(error.contains("window.allowed_lateness_secs is 604801, above the limit"), "{error}");
    }

    #[test]
    fn window_service_thresholds_load_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        let text = "[window.services.voice_inbound.thresholds]\ncall_failed = 20\n";
        std::fs::write(&path, text).unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.window.services["voice_inbound"].thresholds["call_failed"], 20);

        let mut config = Config::default();
        let thresholds = &mut config.window.services.entry("chat".into()).or_default().thresholds;
        thresholds.insert("call_faild".into(), 5);
        thresholds.insert("ivr_error".into(), 0);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("window.services.chat.thresholds.call_faild is not an event type that can be a signal"), "{error}");
        assert!(error.contains("window.services.chat.thresholds.ivr_error is 0, which would open an incident of chat on no signal"), "{error}");
    }

    #[test]
    fn window_cooldown_max_below_cooldown_is_rejected() {
        let mut config = Config::default();
        config.window.cooldown_secs = 900;
        config.window.cooldown_max_secs = 600;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("window.cooldown_max_secs is 600, below window.cooldown_secs (900); set it to 900 or more"), "{error}");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let mut config = Config::default();
        config.window.window_secs = 0;
        config.window.gate_min_failure_share = 5.0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("window.window_secs"), "{error}");
        assert!(error.contains("gate_min_failure_share"), "{error}");
    }

    #[test]
    fn mask_key_from_environment_is_verbatim() {
        let keys = [
            "123456789012345678",
            "1234567890123456.0",
            "\"quoted-key-0123456789\"",
            "0x1234567890abcdef",
            " spaced key 0123456789 ",
            "true",
        ];
        for key in keys {
            let config = Config::load_with_mask_key(None, Some(key.to_string())).unwrap();
            assert_eq!(config.mask.key.expose(), key);
        }
    }

    #[test]
    fn client_properties_accept_numbers_and_booleans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[kafka.client_properties]\n\"linger.ms\" = 5\n\"enable.idempotence\" = true\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.kafka.client_properties["linger.ms"].expose(), "5");
        assert_eq!(config.kafka.client_properties["enable.idempotence"].expose(), "true");
    }

    #[test]
    fn mask_key_file_replaces_environment_key() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("mask.key");
        std::fs::write(&key_file, "file-key-0123456789\n").unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, format!("[mask]\nkey_file = {:?}\n", key_file.display().to_string())).unwrap();
        let config = Config::load_with_mask_key(Some(&path), Some("environment-key-0123".into())).unwrap();
        assert_eq!(config.mask.key.expose(), "file-key-0123456789");
    }

    #[test]
    fn durations_above_seven_days_are_rejected() {
        let mut config = Config::default();
        config.window.window_secs = u64::MAX;
        config.window.quiet_secs = 604_801;
        config.window.gate_min_duration_secs = 604_801;
        config.window.out_of_orderness_secs = 604_801;
        config.archive.snapshot_margin_secs = 604_801;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("window.window_secs is 18446744073709551615, above the limit of 604800 seconds"), "{error}");
        for name in [
            "window.quiet_secs",
            "window.gate_min_duration_secs",
            "window.out_of_orderness_secs",
            "archive.snapshot_margin_secs",
        ] {
            assert!(error.contains(&format!("{name} is 604801")), "{name}: {error}");
        }

        let mut config = Config::default();
        config.window.window_secs = MAX_DURATION_SECS;
        config.archive.snapshot_margin_secs = MAX_DURATION_SECS;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn archive_settings_are_validated() {
        let mut config = Config::default();
        config.archive.batch_max_bytes = 0;
        config.archive.batch_max_secs = 0;
        config.archive.cold_storage_class = "glacier".into();
        config.archive.hot_retention_days = 30;
        config.archive.cold_retention_days = 364;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("archive.batch_max_bytes is 0"), "{error}");
        assert!(error.contains("archive.batch_max_secs is 0"), "{error}");
        assert!(error.contains("archive.cold_storage_class is \"glacier\"; use one of GLACIER, DEEP_ARCHIVE, GLACIER_IR, STANDARD"), "{error}");
        assert!(error.contains("archive.hot_retention_days is 30"), "{error}");
        assert!(error.contains("archive.cold_retention_days is 364"), "{error}");

        let mut config = Config::default();
        config.archive.cold_storage_class = "DEEP_ARCHIVE".into();
        config.archive.hot_retention_days = 120;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_threshold_type_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[window.thresholds]\ncall_faild = 5\nagent_availability_drop = 2\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("window.thresholds.call_faild is not an event type that can be a signal"), "{error}");
        assert!(error.contains("call_failed, ivr_error, api_connection_error"), "{error}");
        assert!(!error.contains("agent_availability_drop is not"), "{error}");
    }

    #[test]
    fn error_keys_have_no_profile_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        let cases = [
            ("[window]\nwindow_sec = 120\n", "for key \"window.window_sec\""),
            ("[window]\nquiet_secs = \"long\"\n", "for key \"window.quiet_secs\""),
        ];
        for (text, key) in cases {
            std::fs::write(&path, text).unwrap();
            let error = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(!error.contains("default."), "{error}");
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn ingest_section_loads() {
        assert_eq!(Config::default().ingest.max_payload_bytes, 900_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[ingest]\nmax_payload_bytes = 4096\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().ingest.max_payload_bytes, 4096);
        std::fs::write(&path, "[ingest]\nmax_payload_byte = 4096\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("max_payload_byte"), "{error}");
    }

    #[test]
    fn short_mask_key_is_refused() {
        let mut config = Config::default();
        config.mask.key = Secret::new("short");
        assert!(config.mask_key().is_err());
    }

    #[test]
    fn previous_key_from_environment_is_verbatim() {
        let keys = ["1234567890123456.0", "\"quoted-old-key-0123456789\"", " spaced old key 0123456789 "];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[mask]\nkey_id = \"k2\"\nprevious_key_id = \"k1\"\n").unwrap();
        for key in keys {
            let config =
                Config::load_with_mask_keys(Some(&path), Some("new-key-0123456789".into()), Some(key.to_string()))
                    .unwrap();
            assert_eq!(config.mask.previous_key.expose(), key);
            let (previous, id) = config.previous_mask_key().unwrap().unwrap();
            assert_eq!(previous.expose(), key);
            assert_eq!(id, "k1");
        }
    }

    #[test]
    fn previous_key_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("previous.key");
        std::fs::write(&key_file, "old-file-key-0123456789\n").unwrap();
        let path = dir.path().join("blameless.toml");
        let text = format!(
            "[mask]\nkey_id = \"k2\"\nprevious_key_id = \"k1\"\nprevious_key_file = {:?}\n",
            key_file.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        let config = Config::load_with_mask_keys(Some(&path), Some("new-key-0123456789".into()), None).unwrap();
        assert_eq!(config.mask.previous_key.expose(), "old-file-key-0123456789");
        assert!(!format!("{:?}", config.mask).contains("old-file-key"));
    }

    #[test]
    fn no_previous_key_means_no_rotation() {
        let config = Config::load_with_mask_keys(None, Some("new-key-0123456789".into()), None).unwrap();
        assert!(config.previous_mask_key().unwrap().is_none());
    }

    #[test]
    fn invalid_rotation_settings_are_reported() {
        let cases: [(&str, &str, Option<&str>, &str); 5] = [
            ("old-key-0123456789", "k1", None, "mask.previous_key_id is not"),
            ("old-key-0123456789", "k1", Some("k1"), "mask.previous_key_id and mask.key_id are both \"k1\""),
            ("short", "k2", Some("k1"), "mask.previous_key is shorter than 16 characters"),
            ("new-key-0123456789", "k2", Some("k1"), "mask.previous_key is the same as mask.key"),
            ("", "k2", Some("k1"), "mask.previous_key_id is \"k1\" but no previous key is set"),
        ];
        for (previous_key, key_id, previous_key_id, expected) in cases {
            let mut config = Config::default();
            config.mask.key = Secret::new("new-key-0123456789");
            config.mask.key_id = key_id.into();
            config.mask.previous_key = Secret::new(previous_key);
            config.mask.previous_key_id = previous_key_id.map(str::to_string);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
            assert!(config.previous_mask_key().is_err(), "{expected}");
            assert!(!error.contains("0123456789"), "a key is in the message: {error}");
        }
    }

    #[test]
    fn mask_key_id_and_country_are_checked() {
        let mut config = Config::default();
        config.mask.key_id = "k 1/x".into();
        config.mask.default_country = "USA".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("mask.key_id is \"k 1/x\""), "{error}");
        assert!(error.contains("mask.default_country is \"USA\""), "{error}");

        config.mask.key_id = "2026-01.b".into();
        config.mask.default_country = "gb".into();
        assert!(config.validate().is_ok());
        assert_eq!(config.mask.default_country_id().unwrap(), phonenumber::country::Id::GB);
    }

    #[test]
    fn service_rule_needs_name_and_condition() {
        let mut config = Config::default();
        config.normalize.service_rules = vec![ServiceRule {
            service: "Billing Voice".into(),
            ..ServiceRule::default()
        }];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("normalize.service_rules[0].service is \"Billing Voice\""), "{error}");
        assert!(error.contains("normalize.service_rules[0] has no condition"), "{error}");
    }

    const ATTACHMENT_KEY_HEX: &str = "8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a";

    #[test]
    fn attachments_defaults_are_valid() {
        let config = Config::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.attachments.master_key_id, "ak1");
        assert_eq!(config.attachments.audit_log, PathBuf::from("out/audit/attachments.jsonl"));
        let error = config.attachments.keyring().unwrap_err().to_string();
        assert!(error.contains("BLAMELESS__ATTACHMENTS__MASTER_KEY"), "{error}");
        assert!(error.contains("master_key_file"), "{error}");
    }

    #[test]
    fn attachment_key_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("attachments.key");
        std::fs::write(&current, format!("{ATTACHMENT_KEY_HEX}\n")).unwrap();
        let previous = dir.path().join("attachments-previous.key");
        std::fs::write(&previous, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let path = dir.path().join("blameless.toml");
        let text = format!(
            "[attachments]\nmaster_key_file = {:?}\nmaster_key_id = \"ak2\"\nprevious_master_key_file = {:?}\nprevious_master_key_id = \"ak1\"\nprincipals_file = \"principals.toml\"\n",
            current.display().to_string(),
            previous.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.attachments.master_key.expose(), ATTACHMENT_KEY_HEX);
        assert_eq!(config.attachments.principals_file, Some(PathBuf::from("principals.toml")));
        let keyring = config.attachments.keyring().unwrap();
        assert_eq!(keyring.current.id(), "ak2");
        assert_eq!(keyring.previous.as_ref().map(|key| key.id()), Some("ak1"));
    }

    #[test]
    fn missing_attachment_key_file_names_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[attachments]\nmaster_key_file = \"/nonexistent/attachments.key\"\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("attachments.master_key_file /nonexistent/attachments.key"), "{error}");
    }

    #[test]
    fn short_attachment_key_is_rejected() {
        let mut config = Config::default();
        config.attachments.master_key = Secret::new("00112233445566778899aabbccddeeff");
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("attachments.master_key decodes to 24 bytes"), "{error}");
        assert!(!error.contains("00112233"), "{error}");
        assert!(config.attachments.keyring().is_err());
    }

    #[test]
    fn previous_attachment_key_needs_own_id() {
        let mut config = Config::default();
        config.attachments.master_key = Secret::new(ATTACHMENT_KEY_HEX);
        config.attachments.previous_master_key = Secret::new(ATTACHMENT_KEY_HEX);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("previous_master_key_id is empty"), "{error}");

        config.attachments.previous_master_key_id = "ak1".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("previous_master_key_id is \"ak1\", the same as master_key_id"), "{error}");

        config.attachments.previous_master_key_id = "ak0".into();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn invalid_attachment_settings_are_reported() {
        let mut config = Config::default();
        config.attachments.master_key_id = "ak/1".into();
        config.attachments.audit_log = PathBuf::new();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("attachments.master_key_id \"ak/1\" is not a valid master key id"), "{error}");
        assert!(error.contains("attachments.audit_log is empty"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blameless.toml");
        std::fs::write(&path, "[attachments]\nmaster_key_path = \"k\"\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("master_key_path"), "{error}");
    }

    #[test]
    fn attachment_keys_never_print() {
        let mut config = Config::default();
        config.attachments.master_key = Secret::new(ATTACHMENT_KEY_HEX);
        let printed = format!("{config:?}");
        assert!(!printed.contains(ATTACHMENT_KEY_HEX), "{printed}");
        let keyring = config.attachments.keyring().unwrap();
        assert!(!format!("{keyring:?}").contains("8f3a"), "{keyring:?}");
    }

}
