//! Sluice: stream PostgreSQL changes into Elasticsearch, exactly once in effect.
//!
//! The layout follows the data path (docs/architecture.md draws it):
//!
//! - `model`: plain data crossing every seam (`Lsn`, `Change`, `BulkOp`);
//!   imports nothing from the crate.
//! - `config`: the config and mapping files, checked whole.
//! - `source`: PostgreSQL (replication, pgoutput, values, slot and
//!   publication management); yields `Change`s in WAL order.
//! - `transform`: pure `Change` → `BulkOp`, by the mappings.
//! - `sink`: `BulkOp` → Elasticsearch (batching, bulk, retries, dead
//!   letters, index admin).
//! - `stream`: the loop that closes the pipeline (apply, checkpoint,
//!   dual write).
//! - `snapshot`: exact backfills through the same sink.
//! - `app`: the commands, where connections are opened and layers wired.
//! - `ops`: HTTP endpoints, metrics, logging.
//!
//! See `DESIGN.md` in the shared folder for the invariants every change must
//! keep.

pub mod app;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod model;
pub mod ops;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stream;
pub mod transform;

pub use model::Lsn;
