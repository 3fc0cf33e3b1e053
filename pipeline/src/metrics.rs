//! Prometheus metrics of the stages, and the `/metrics` and `/health` server.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub const RECORDS_IN: &str = "blameless_records_in_total";
pub const RECORDS_OUT: &str = "blameless_records_out_total";
pub const DEAD_LETTERS: &str = "blameless_dead_letters_total";
pub const PROCESSING_SECONDS: &str = "blameless_batch_processing_seconds";
pub const CONSUMER_LAG: &str = "blameless_consumer_lag_records";
pub const HTTP_REQUESTS: &str = "blameless_http_requests_total";
pub const TICKET_REJECTIONS: &str = "blameless_ticket_rejections_total";
pub const TICKET_CIRCUIT_OPEN: &str = "blameless_ticket_circuit_open";
pub const ARCHIVE_STORE_PAUSED: &str = "blameless_archive_store_paused";
pub const ARCHIVE_STORE_RETRIES: &str = "blameless_archive_store_retries_total";
pub const ARCHIVE_OBJECTS: &str = "blameless_archive_objects_written_total";

/// Every metric of a process, labelled by stage.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    dead_letters: IntCounterVec,
    processing_seconds: HistogramVec,
    consumer_lag: IntGaugeVec,
    http_requests: IntCounterVec,
    archive_store_paused: IntGaugeVec,
    archive_store_retries: IntCounterVec,
    archive_objects: IntCounterVec,
    ticket: TicketMetrics,
}

/// Metrics of the ticket stage, by ticket system.
#[derive(Clone)]
pub struct TicketMetrics {
    /// Incidents the ticket system refused, sent to the dead-letter topic.
    pub rejected: IntCounterVec,
    /// 1 while the ticket system is unavailable and the stage waits.
    pub circuit_open: IntGaugeVec,
}

/// The metrics of one stage.
#[derive(Clone)]
pub struct StageMetrics {
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub dead_letters: IntCounter,
    pub processing_seconds: Histogram,
    pub consumer_lag: LagGauge,
}

/// Consumer lag of one stage, by topic and partition.
#[derive(Clone)]
pub struct LagGauge {
    stage: String,
    gauge: IntGaugeVec,
}

impl LagGauge {
    pub fn with_label_values(&self, topic_partition: &[&str; 2]) -> prometheus::IntGauge {
        self.gauge
            .with_label_values(&[self.stage.as_str(), topic_partition[0], topic_partition[1]])
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let vec = IntCounterVec::new(Opts::new(name, help), &["stage"]).expect("valid counter");
            registry.register(Box::new(vec.clone())).expect("unique counter");
            vec
        };
        let records_in = counter(RECORDS_IN, "Records a stage read from its input.");
        let records_out = counter(RECORDS_OUT, "Records a stage wrote to its output topics, acknowledged.");
        let dead_letters = counter(DEAD_LETTERS, "Records a stage sent to the dead-letter topic.");
        let processing_seconds = HistogramVec::new(
            HistogramOpts::new(PROCESSING_SECONDS, "Time from polling a batch to committing it, in seconds."),
            &["stage"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(processing_seconds.clone()))
            .expect("unique histogram");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(CONSUMER_LAG, "Records between a stage's committed position and the end of the partition."),
            &["stage", "topic", "partition"],
        )
        .expect("valid gauge");
        registry.register(Box::new(consumer_lag.clone())).expect("unique gauge");
        let http_requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS, "Requests the HTTP receiver answered, by outcome."),
            &["outcome"],
        )
        .expect("valid counter");
        registry.register(Box::new(http_requests.clone())).expect("unique counter");
        let rejected = IntCounterVec::new(
            Opts::new(TICKET_REJECTIONS, "Incidents a ticket system refused in a way retrying cannot fix; they went to the dead-letter topic."),
            &["system"],
        )
        .expect("valid counter");
        registry.register(Box::new(rejected.clone())).expect("unique counter");
        let circuit_open = IntGaugeVec::new(
            Opts::new(TICKET_CIRCUIT_OPEN, "1 while a ticket system is unavailable and the ticket stage waits for it."),
            &["system"],
        )
        .expect("valid gauge");
        registry.register(Box::new(circuit_open.clone())).expect("unique gauge");
        let archive_store_paused = IntGaugeVec::new(
            Opts::new(ARCHIVE_STORE_PAUSED, "1 while archive requests to the tier's object store fail and wait to be retried, else 0."),
            &["tier"],
        )
        .expect("valid gauge");
        registry.register(Box::new(archive_store_paused.clone())).expect("unique gauge");
        let archive_store_retries = IntCounterVec::new(
            Opts::new(ARCHIVE_STORE_RETRIES, "Failed archive requests to the tier's object store that were retried."),
            &["tier"],
        )
        .expect("valid counter");
        registry.register(Box::new(archive_store_retries.clone())).expect("unique counter");
        let archive_objects = IntCounterVec::new(
            Opts::new(ARCHIVE_OBJECTS, "Objects the archive stage created in the tier."),
            &["tier"],
        )
        .expect("valid counter");
        registry.register(Box::new(archive_objects.clone())).expect("unique counter");
        Metrics {
            registry,
            records_in,
            records_out,
            dead_letters,
            processing_seconds,
            consumer_lag,
            http_requests,
            archive_store_paused,
            archive_store_retries,
            archive_objects,
            ticket: TicketMetrics { rejected, circuit_open },
        }
    }

    pub fn ticket(&self) -> TicketMetrics {
        self.ticket.clone()
    }

    /// Returns the pause gauge and retry counter of an archive tier, `hot`
    /// or `cold`.
    pub fn store_health(&self, tier: &str) -> crate::stages::archive::StoreHealth {
        crate::stages::archive::StoreHealth {
            paused: self.archive_store_paused.with_label_values(&[tier]),
            retries: self.archive_store_retries.with_label_values(&[tier]),
        }
    }

    /// Returns the counter of objects the archive stage created in `tier`.
    pub fn archive_objects(&self, tier: &str) -> IntCounter {
        self.archive_objects.with_label_values(&[tier])
    }

    pub fn stage(&self, stage: &str) -> StageMetrics {
        StageMetrics {
            records_in: self.records_in.with_label_values(&[stage]),
            records_out: self.records_out.with_label_values(&[stage]),
            dead_letters: self.dead_letters.with_label_values(&[stage]),
            processing_seconds: self.processing_seconds.with_label_values(&[stage]),
            consumer_lag: LagGauge {
                stage: stage.to_string(),
                gauge: self.consumer_lag.clone(),
            },
        }
    }

    /// Returns the counter of HTTP receiver requests with `outcome`, such as
    /// `accepted` or `unauthenticated`.
    pub fn http_requests(&self, outcome: &str) -> IntCounter {
        self.http_requests.with_label_values(&[outcome])
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %error, "Metrics could not be rendered.");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Serves `/metrics` and `/health` on `address` until the process ends.
/// Equivalent to [`bind`] followed by [`serve_on`].
pub async fn serve(address: &str, metrics: Metrics) -> anyhow::Result<()> {
    let listener = bind(address).await?;
    serve_on(listener, metrics).await
}

/// Opens the metrics listener on `address`, a `host:port` such as
/// `127.0.0.1:9464`, `[::1]:9464` or `localhost:9464`. A host name is
/// resolved, and each of its addresses is tried in turn. Returns an error
/// for an invalid address, a host that does not resolve, or a port that is
/// in use, so a caller can stop before starting its work.
pub async fn bind(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "metrics.address {address:?} is not a usable host:port such as 127.0.0.1:9464 or localhost:9464: {e}"
            )
        })?
        .collect();
    let mut last_error = None;
    for candidate in &candidates {
        match tokio::net::TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some((candidate, error)),
        }
    }
    match last_error {
        Some((candidate, error)) => Err(anyhow::anyhow!(
            "could not listen on metrics.address {address:?} ({candidate}): {error}. Choose a free port, or set metrics.address to \"\" to turn the server off"
        )),
        None => Err(anyhow::anyhow!(
            "metrics.address {address:?} resolved to no address; use a host:port such as 127.0.0.1:9464"
        )),
    }
}

/// Serves `/metrics` and `/health` on an open listener until the process
/// ends or the server fails.
pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }))
        .route("/health", get(|| async { "ok\n" }));
    let address = listener.local_addr()?;
    tracing::info!(%address, "Serving metrics and health.");
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends a GET over plain HTTP/1.1 and returns the whole response.
    async fn get_text(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn bind_rejects_invalid_address() {
        for address in ["not an address", "127.0.0.1", "127.0.0.1:99999"] {
            let error = bind(address).await.unwrap_err().to_string();
            assert!(error.contains(&format!("metrics.address {address:?}")), "{error}");
        }
    }

    #[tokio::test]
    async fn bind_rejects_port_in_use() {
        let occupied = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = occupied.local_addr().unwrap().to_string();
        let error = bind(&address).await.unwrap_err().to_string();
        assert!(error.contains("could not listen on metrics.address"), "{error}");
        assert!(error.contains("Choose a free port"), "{error}");
    }

    #[tokio::test]
    async fn localhost_name_binds_and_serves() {
        let listener = bind("localhost:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        assert!(address.ip().is_loopback(), "{address}");
        let metrics = Metrics::new();
        metrics.stage("normalize").records_in.inc();
        let server = tokio::spawn(serve_on(listener, metrics));

        let health = get_text(address, "/health").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ok\n"), "{health}");
        let rendered = get_text(address, "/metrics").await;
        assert!(rendered.contains("blameless_records_in_total{stage=\"normalize\"} 1"), "{rendered}");
        server.abort();
    }
}
