//! The sink layer: writes `BulkOp`s to Elasticsearch.
//!
//! Owns batching, bulk requests, per-item results, retries, dead letters and
//! index creation. Keeps DESIGN invariants 2, 3 and 5: versioned writes,
//! long-enough delete tombstones, nothing dropped silently.

pub mod admin;
mod batch;
pub mod bulk;
pub mod classify;
pub mod client;
pub mod dead_letter;
pub mod es_config;
pub mod health;
pub mod hold;
pub mod indexer;
pub mod indices;
pub mod state_store;

pub use classify::{ItemOutcome, classify_item, classify_request};
pub use client::{build_client, describe_es_error};
/// The client handle: built by the commands (`app`), passed down to whoever
/// writes or administers through the sink.
pub use elasticsearch::Elasticsearch;
pub use es_config::{EsAuth, EsConfig};
pub use hold::Holds;
pub use indexer::{Ack, Indexer, IndexerClosed, IndexerConfig};
pub use indices::{EnsureOutcome, IndexError, IndexSpec, ensure_index};
