//! Wiring of stages to transports: the embedded run over the in-memory log,
//! and one stage as a member of its consumer group on Kafka.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::codec::Codec;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{DeadLetter, Record, RecordKind};
use crate::publish::Publisher;
use crate::stages::archive::{ArchiveStage, ArchiveStore, BatchLimits, StoreRetry};
use crate::stages::ingest;
use crate::stages::mask::{MaskStage, Masker};
use crate::stages::normalize::NormalizeStage;
use crate::stages::ticket::{build_sink, TicketStage};
use crate::stages::window::{WindowRules, WindowStage};
use crate::topology::{self, Topology};
use crate::transport::kafka::{read_topic_to_end, KafkaSink, KafkaSource, TopicRecord};
use crate::transport::memory::{MemoryLog, MemorySink};
use crate::transport::{
    decode_record, run_stage, RecordSink, RunReport, RunUntil, Stage, StageRuntime, TopicNames,
};

/// The stages that read a topic, in the order the embedded run drives them.
pub const CONSUMING_STAGES: [&str; 5] = ["normalize", "mask", "archive", "window", "ticket"];

/// Builds the record logic of a consuming stage, reporting to `metrics`.
pub fn build_stage(name: &str, config: &Config, metrics: &Metrics) -> anyhow::Result<Box<dyn Stage>> {
    Ok(match name {
        "normalize" => Box::new(NormalizeStage::new(&config.normalize)),
        "mask" => {
            Box::new(MaskStage::new(Masker::from_config(config)?))
        }
        "window" => Box::new(WindowStage::new(WindowRules::from(&config.window))),
        "archive" => Box::new(archive_stage(config, metrics)?),
        "ticket" => Box::new(ticket_stage(config, metrics)?),
        other => anyhow::bail!(
            "unknown stage {other:?}; the stages are ingest, normalize, mask, window, ticket and archive"
        ),
    })
}

/// Builds the ticket stage with the sink that the settings choose.
pub fn ticket_stage(config: &Config, metrics: &Metrics) -> anyhow::Result<TicketStage> {
    if config.ticket.review {
        tracing::info!(
            stage = "ticket",
            outbox = %config.ticket.outbox_dir.display(),
            "Review mode: tickets go to the outbox folder; no ticket system is contacted."
        );
    }
    Ok(TicketStage::new(
        build_sink(&config.ticket)?,
        ArchiveStore::open(&config.archive.url)?,
        cold_store(config, metrics)?,
        config.archive.snapshot_margin_secs as i64 * 1000,
    )
    .with_circuit_wait(Duration::from_secs(config.ticket.circuit_open_secs))
    .with_metrics(metrics.ticket()))
}

/// Builds the archive stage. Its store retries until a request succeeds, so
/// a store that stays down pauses the stage instead of failing it.
fn archive_stage(config: &Config, metrics: &Metrics) -> anyhow::Result<ArchiveStage> {
    let retry = StoreRetry {
        max_attempts: None,
        ..StoreRetry::default()
    };
    let hot = ArchiveStore::open(&config.archive.url)?
        .with_retry(retry)
        .with_health(metrics.store_health("hot"));
    let limits = BatchLimits {
        max_bytes: config.archive.batch_max_bytes,
        max_age: Duration::from_secs(config.archive.batch_max_secs),
    };
    Ok(ArchiveStage::new(hot, limits).with_object_counter(metrics.archive_objects("hot")))
}

/// Opens the cold tier with its storage class.
pub fn cold_store(config: &Config, metrics: &Metrics) -> anyhow::Result<ArchiveStore> {
    Ok(ArchiveStore::open(&config.archive.cold_url)?
        .with_storage_class(&config.archive.cold_storage_class)
        .with_health(metrics.store_health("cold")))
}

pub fn codec_for(config: &Config) -> anyhow::Result<Codec> {
    Ok(match &config.schema_registry.url {
        Some(url) if !url.is_empty() => Codec::with_registry(url)?,
        _ => Codec::single_object()?,
    })
}

fn runtime(config: &Config, codec: Codec, topics: TopicNames, metrics: &Metrics, stage: &str) -> StageRuntime {
    StageRuntime {
        codec,
        topics,
        metrics: metrics.stage(stage),
        batch_max_records: config.stage.batch_max_records,
        batch_max_wait: Duration::from_millis(config.stage.batch_max_wait_ms),
        tick: Duration::from_millis(config.stage.tick_ms),
    }
}

/// Builds the publisher that writes payloads to `raw-events` with the
/// configured size limit.
pub fn publisher(
    config: &Config,
    sink: Arc<dyn RecordSink>,
    codec: Codec,
    topics: TopicNames,
    metrics: &Metrics,
) -> Publisher {
    Publisher::new(sink, codec, topics, metrics.stage("ingest"), config.ingest.max_payload_bytes)
}

/// Counts and output locations of an embedded run.
#[derive(Default)]
pub struct EmbeddedReport {
    pub events_read: u64,
    pub normalized: u64,
    pub masked: u64,
    pub dead_letters: Vec<DeadLetter>,
    pub incidents_opened: Vec<String>,
    pub incidents_gated: u64,
    /// Every `windowed-incidents` record, in log order.
    pub incidents: Vec<crate::model::IncidentEvent>,
    pub tickets_written: Vec<(String, String)>,
    pub archive_url: String,
    pub cold_url: String,
    pub outbox_dir: PathBuf,
    pub stages: Vec<(String, RunReport)>,
    pub log: Option<Arc<MemoryLog>>,
}

/// Runs the whole topology in this process over the in-memory log, from
/// `input` to tickets and archive, and reports what happened.
pub async fn run_embedded(config: &Config, input: &Path) -> anyhow::Result<EmbeddedReport> {
    Masker::from_config(config)?;
    let delivered = ingest::read_input(input)?;
    let topology = Topology::load_default();
    let log = MemoryLog::new();
    for topic in &topology.topics {
        log.create_topic(&topic.name, topic.partitions as usize);
    }
    let codec = Codec::single_object()?;
    let topics = TopicNames::default();
    let metrics = Metrics::new();
    let sink = Arc::new(MemorySink { log: Arc::clone(&log) });
    let publisher = publisher(config, sink.clone(), codec.clone(), topics.clone(), &metrics);
    publisher.publish(&delivered).await?;
    // The in-memory log's offsets start at 0 in every run, so archive
    // object names carry a digest of the input: the same input gives the
    // same names, another input never overwrites or hides the first.
    let input_label = {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        for item in &delivered {
            digest.update((item.bytes.len() as u64).to_be_bytes());
            digest.update(&item.bytes);
        }
        format!("input-{}", &hex::encode(digest.finalize())[..12])
    };

    let mut report = EmbeddedReport {
        events_read: delivered.len() as u64,
        ..EmbeddedReport::default()
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    for name in CONSUMING_STAGES {
        let mut stage = match name {
            "archive" => Box::new(archive_stage(config, &metrics)?.with_log_label(input_label.clone())),
            _ => build_stage(name, config, &metrics)?,
        };
        if let Some(state) = stage.restore_topic() {
            let records = log.records(state.0).into_iter().map(|record| (record.partition, record.offset, record.payload));
            let restored = decode_state(&codec, stage.as_ref(), state, records).await;
            stage.restore(restored);
        }
        let spec = topology.stage(name).context("stage missing from topology")?;
        let input_topic = spec.input.clone().context("consuming stage without input")?;
        let mut source = log.consumer(&spec.consumer_group, &input_topic);
        let stage_runtime = runtime(config, codec.clone(), topics.clone(), &metrics, name);
        let run = run_stage(stage.as_mut(), &mut source, sink.as_ref(), &stage_runtime, RunUntil::Drained, shutdown.clone()).await?;
        report.stages.push((name.to_string(), run));
    }

    summarize(&mut report, &log, &codec).await?;
    report.archive_url = ArchiveStore::open(&config.archive.url)?.url_of("");
    report.cold_url = ArchiveStore::open(&config.archive.cold_url)?.url_of("");
    report.outbox_dir = config.ticket.outbox_dir.clone();
    report.log = Some(log);
    Ok(report)
}

async fn summarize(report: &mut EmbeddedReport, log: &MemoryLog, codec: &Codec) -> anyhow::Result<()> {
    report.normalized = log.records(topology::NORMALIZED).len() as u64;
    report.masked = log.records(topology::MASKED).len() as u64;
    for record in log.records(topology::DEAD_LETTER) {
        if let Record::DeadLetter(letter) = decode_record(codec, RecordKind::DeadLetter, record.payload.as_deref().unwrap_or_default()).await? {
            report.dead_letters.push(letter);
        }
    }
    for record in log.records(topology::WINDOWED_INCIDENTS) {
        if let Record::Incident(incident) = decode_record(codec, RecordKind::Incident, record.payload.as_deref().unwrap_or_default()).await? {
            match incident.change.as_str() {
                "opened" => report.incidents_opened.push(format!(
                    "{} {} on {} ({})",
                    incident.incident_id, incident.incident_type, incident.affected_service, incident.signal_type
                )),
                "gated" => report.incidents_gated += 1,
                _ => {}
            }
            report.incidents.push(incident);
        }
    }
    for record in log.records(topology::TICKETS) {
        if let Record::Ticket(ticket) = decode_record(codec, RecordKind::Ticket, record.payload.as_deref().unwrap_or_default()).await? {
            report.tickets_written.push((ticket.status, ticket.ticket_url));
        }
    }
    Ok(())
}

/// Decodes the records of a stage's state topic. A record that does not
/// decode is skipped with a warning: the stage's own checks (such as the
/// ticket stage's search before a create) cover what it held.
async fn decode_state(
    codec: &Codec,
    stage: &dyn Stage,
    (topic, kind): (&str, RecordKind),
    records: impl IntoIterator<Item = TopicRecord>,
) -> Vec<Record> {
    let mut decoded = Vec::new();
    for (partition, offset, payload) in records {
        let Some(payload) = payload else { continue };
        match decode_record(codec, kind, &payload).await {
            Ok(record) => decoded.push(record),
            Err(error) => tracing::warn!(
                stage = stage.name(),
                topic,
                partition,
                offset,
                error = %error,
                "State record does not decode; skipped."
            ),
        }
    }
    decoded
}

/// Runs one stage as a member of its consumer group on Kafka until Ctrl-C or
/// SIGTERM. The ingest stage reads `input` instead of a topic.
pub async fn run_kafka_stage(name: &str, config: &Config, input: Option<&Path>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    // Checks the stage name and its settings before anything starts.
    let stage = match name {
        "ingest" => None,
        _ => Some(build_stage(name, config, &metrics)?),
    };
    let topology = Topology::load_default();
    let codec = codec_for(config)?;
    let topics = TopicNames {
        prefix: config.kafka.topic_prefix.clone(),
    };
    // The ingest command lives for one file: it serves no metrics.
    if !config.metrics.address.is_empty() && name != "ingest" {
        // Bound before the stage starts, so a bad address or a port in use
        // stops the stage instead of leaving it without /metrics.
        let listener = crate::metrics::bind(&config.metrics.address).await?;
        let served = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve_on(listener, served).await {
                tracing::error!(error = %error, "Metrics server stopped.");
            }
        });
    }
    let sink = Arc::new(KafkaSink::new(&config.kafka)?);

    if name == "ingest" {
        let input = input.context("the ingest stage needs --input PATH (a JSON Lines file or a folder of .json files)")?;
        let delivered = ingest::read_input(input)?;
        let published = publisher(config, sink, codec, topics, &metrics).publish(&delivered).await?;
        tracing::info!(
            stage = "ingest",
            records = published.accepted,
            dead_letters = published.rejected.len(),
            "Input written to raw-events."
        );
        return Ok(());
    }

    let mut stage = stage.context("a consuming stage is built above")?;
    let spec = topology.stage(name).context("stage missing from topology")?;
    let input_topic = topics.physical(spec.input.as_deref().context("consuming stage without input")?);
    let group = format!("{}-{}", config.kafka.group_prefix, name);
    if let Some(state) = stage.restore_topic() {
        let physical = topics.physical(state.0);
        let kafka = config.kafka.clone();
        let reader = stage.name();
        let records = tokio::task::spawn_blocking(move || read_topic_to_end(&kafka, &physical, reader)).await??;
        let restored = decode_state(&codec, stage.as_ref(), state, records).await;
        stage.restore(restored);
    }
    let mut source = KafkaSource::new(&config.kafka, stage.name(), &group, &input_topic, stage.max_processing_time())?;
    let stage_runtime = runtime(config, codec, topics, &metrics, name);

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop.send(true);
    });
    tracing::info!(stage = name, consumer_group = %group, topic = %input_topic, "Stage started.");
    let report = run_stage(stage.as_mut(), &mut source, sink.as_ref(), &stage_runtime, RunUntil::Shutdown, shutdown).await?;
    tracing::info!(stage = name, records_in = report.records_in, dead_letters = report.dead_letters, "Stage stopped.");
    Ok(())
}

/// Returns once the process receives Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
