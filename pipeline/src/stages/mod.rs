//! The stages of the pipeline, one module each.

pub mod archive;
pub mod ingest;
pub mod mask;
pub mod normalize;
pub mod ticket;
pub mod window;
