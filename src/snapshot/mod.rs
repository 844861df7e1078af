//! Snapshots and backfills: read whole tables inside an exported snapshot and
//! hand their rows to the pipeline as `Insert` changes.
//!
//! Keeps DESIGN invariant 4 (exact snapshots): every reader imports the same
//! exported snapshot (`SET TRANSACTION SNAPSHOT`), every row is versioned with
//! the snapshot's consistent point minus one, and a chunk is recorded as done
//! only after the sink reports all of its documents durable in Elasticsearch,
//! so an interrupted run resumes its remaining chunks under a new snapshot.
//! Also keeps invariant 3 for backfills (`tombstones`): delete tombstones
//! outlive the backfill, so a stale snapshot row never resurrects a document
//! the stream deleted.
//!
//! Seams the rest of Sluice plugs in (see `seams`): how to export a snapshot
//! (`SnapshotExporter`; the replication slot in production), how to convert a
//! column text to JSON (`ValueConverter`), how to connect (`PgConnector`),
//! and where rows go (`SnapshotSink`, with a per-batch acknowledgement).
//!
//! Rules that hold here:
//! - No connection is opened here: the connector, the exporter and the
//!   Elasticsearch client come in from `app`, which wires them.
//! - SQL only in the snapshot reader (`catalog`, `plan`, `reader`: reads
//!   inside the exported snapshot); nothing else here writes SQL.
//! - No Elasticsearch request here: the state records go through
//!   `sink::state_store` (`state`), index settings, build indices and
//!   aliases through `sink::admin` (`tombstones`, `reindex`), documents
//!   through the sink's indexer (`sink`). This module decides what the
//!   records mean and when a chunk, a backfill or a swap is done.
//! - Imports model, ops (metric names), source (its SQL quoting), sink
//!   and transform (and, for `verify`, the mappings from config, to know
//!   which indices a scan for extra documents covers); never stream, app
//!   or cli.

pub mod backfill;
pub mod catalog;
pub mod copy_text;
pub mod error;
pub mod plan;
pub mod progress;
pub mod reader;
pub mod reindex;
pub mod run;
pub mod seams;
pub mod sink;
pub mod state;
pub mod tombstones;
/// `sluice verify`: tables at a snapshot vs. their documents, and repair.
pub mod verify;

pub use catalog::TableInfo;
pub use error::{SnapshotError, postgres_code_is_retryable};
pub use plan::{Bounds, Chunk};
pub use run::{SnapshotJob, SnapshotOptions, SnapshotSummary, TableJob, run_snapshot};
pub use seams::{
    AckFuture, ChannelSink, ExportedSnapshot, PgConnector, SinkError, SnapshotBatch,
    SnapshotExporter, SnapshotSink, ValueConverter,
};
pub use state::StateStore;
