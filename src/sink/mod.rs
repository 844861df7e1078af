//! The sink layer: writes `BulkOp`s to Elasticsearch.
//!
//! Owns batching, bulk requests, per-item results, retries, dead letters and
//! index creation. Keeps DESIGN invariants 2, 3 and 5: versioned writes,
//! long-enough delete tombstones, nothing dropped silently.
//!
//! Rules this layer keeps:
//!
//! - It never sees `source` types (nor the stream's): what comes in is a
//!   `model::BulkOp` and a plain tag, what goes back an [`Ack`]. So the
//!   source and the sink can change without each other. (A test in
//!   `stream`, which sits on this seam, reads the imports to hold it.)
//! - Elasticsearch calls live here (the client, bulk writes, index admin);
//!   the stream reaches them only through the [`Sink`] seam.
//! - An op is acknowledged only once it is settled — written, refused as
//!   stale, or stored as a dead letter — which is what lets the pipeline
//!   confirm it (invariant 1); retryable failures are retried with
//!   [`crate::model::RetryPolicy::BULK`] for as long as it takes.
//! - Index admin (creation, templates, aliases, settings, cluster health,
//!   the state records Sluice keeps) lives here too (`admin`, `health`,
//!   `state_store`), so no other layer builds an Elasticsearch request.

pub mod admin;
pub mod bulk;
pub mod classify;
pub mod client;
pub mod dead_letter;
pub mod doc_reads;
pub mod es_config;
pub mod health;
pub mod index_watch;
pub mod indexer;
pub mod indices;
pub mod seam;
pub mod state_store;

pub use classify::{ItemOutcome, classify_item, classify_request};
pub use client::{build_client, describe_es_error};
pub use es_config::{EsAuth, EsConfig};
pub use indexer::{Ack, Indexer, IndexerClosed, IndexerConfig};
pub use indices::{EnsureOutcome, IndexError, IndexSpec, ensure_index};
pub use seam::Sink;

/// The client handle: built by the commands (`app`), passed down to whoever
/// writes or administers through the sink.
pub use elasticsearch::Elasticsearch;
