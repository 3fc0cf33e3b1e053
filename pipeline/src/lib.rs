//! Blameless: a streaming pipeline on Apache Kafka that turns contact-center
//! platform failures into masked telemetry, detected incidents, postmortem
//! tickets and a tiered archive.

pub mod app;
pub mod attachments;
pub mod codec;
pub mod config;
pub mod governance;
pub mod http_retry;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod scrub;
pub mod sources;
pub mod stages;
pub mod topology;
pub mod transport;
