//! The sink layer: writes `BulkOp`s to Elasticsearch.
//!
//! Owns batching, bulk requests, per-item results, retries, dead letters and
//! index creation. Keeps DESIGN invariants 2, 3 and 5: versioned writes,
//! long-enough delete tombstones, nothing dropped silently.

pub mod es_config;

pub use es_config::{EsAuth, EsConfig};
