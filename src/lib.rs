//! Sluice: stream PostgreSQL changes into Elasticsearch, exactly once in effect.
//!
//! Layers, each knowing only the one below it through plain data types:
//! `source` (WAL and snapshot reads → `Change`), `transform` (`Change` →
//! `BulkOp`), `sink` (`BulkOp` → Elasticsearch), `checkpoint` (what is durable
//! → the slot's confirmed LSN), wired by `pipeline`. See `DESIGN.md` in the
//! shared folder for the invariants every change must keep.

pub mod backfill;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod dual_write;
pub mod http;
pub mod logging;
pub mod lsn;
pub mod metrics;
pub mod pipeline;
pub mod run;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod transform;
pub mod transform_step;

pub use lsn::Lsn;
