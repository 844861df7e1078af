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
//! - Imports model, source (its SQL quoting), sink and transform; never
//!   stream, ops, app or cli.

pub mod backfill;
pub mod catalog;
pub mod copy_text;
pub mod plan;
pub mod progress;
pub mod reader;
pub mod reindex;
pub mod run;
pub mod seams;
pub mod sink;
pub mod state;
pub mod tombstones;

pub use catalog::{TableInfo, TableSpec};
pub use plan::{Bounds, Chunk};
pub use run::{SnapshotJob, SnapshotOptions, SnapshotSummary, TableJob, run_snapshot};
pub use seams::{
    AckFuture, ChannelSink, ExportedSnapshot, PgConnector, SinkError, SnapshotBatch,
    SnapshotExporter, SnapshotSink, ValueConverter,
};
pub use state::StateStore;

use crate::sink::admin::AdminError;

/// Everything that can stop a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("table {0} does not exist (or is not a table)")]
    NoSuchTable(String),
    #[error("table {table} has no column `{column}` (named in the mapping's column list)")]
    NoSuchColumn { table: String, column: String },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("reading COPY data of {table}: {source}")]
    Copy {
        table: String,
        source: copy_text::CopyParseError,
    },
    #[error("converting {table}.{column} (type oid {type_oid}): {message}")]
    Convert {
        table: String,
        column: String,
        type_oid: u32,
        message: String,
    },
    #[error("the sink failed: {0}")]
    Sink(#[from] SinkError),
    /// The state index or an administrative request (`sink::admin`).
    #[error(transparent)]
    Elasticsearch(#[from] AdminError),
    #[error("connecting to PostgreSQL: {0}")]
    Connect(String),
    #[error("exporting the snapshot: {0}")]
    Export(String),
    #[error("snapshot state in Elasticsearch is unreadable: {0}")]
    State(String),
    #[error("reindex: {0}")]
    Reindex(String),
    /// A reindex waited in vain for a running `sluice run` (retry once it runs).
    #[error("reindex: {0}")]
    NoStream(String),
    #[error("a snapshot reader stopped: {0}")]
    Reader(String),
}

impl SnapshotError {
    /// Whether running the same command again may succeed (the run resumes
    /// where it stopped). Pure, so it is tested as one.
    pub fn is_retryable(&self) -> bool {
        match self {
            SnapshotError::Postgres(e) => {
                e.is_closed() || postgres_code_is_retryable(e.code().map(|c| c.code()))
            }
            SnapshotError::Sink(SinkError::Closed) => true,
            SnapshotError::Sink(SinkError::Failed(_)) => true,
            SnapshotError::Elasticsearch(e) => e.is_retryable(),
            SnapshotError::Export(_) | SnapshotError::Connect(_) => true,
            SnapshotError::NoSuchTable(_)
            | SnapshotError::NoSuchColumn { .. }
            | SnapshotError::Copy { .. }
            | SnapshotError::Convert { .. }
            | SnapshotError::State(_)
            | SnapshotError::Reindex(_) => false,
            SnapshotError::Reader(_) | SnapshotError::NoStream(_) => true,
        }
    }
}

/// Whether a PostgreSQL error with this SQLSTATE (`None`: no server error,
/// i.e. I/O or protocol) may go away by itself: connection problems,
/// serialization failures, resource shortage, a server shutting down or
/// starting up, a lock not available. Everything else (missing table,
/// permission, bad filter SQL) needs a person.
pub fn postgres_code_is_retryable(code: Option<&str>) -> bool {
    match code {
        None => true,
        Some(c) => {
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || matches!(c, "57P01" | "57P02" | "57P03" | "55P03")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_not_retryable_but_outages_are() {
        assert!(!SnapshotError::NoSuchTable("public.x".into()).is_retryable());
        assert!(
            SnapshotError::Elasticsearch(AdminError::Status {
                what: "bulk".into(),
                status: 503,
                body: String::new()
            })
            .is_retryable()
        );
        assert!(
            !SnapshotError::Elasticsearch(AdminError::Status {
                what: "create index".into(),
                status: 400,
                body: String::new()
            })
            .is_retryable()
        );
        assert!(SnapshotError::Sink(SinkError::Closed).is_retryable());
    }

    #[test]
    fn postgres_outages_are_retryable_but_mistakes_are_not() {
        assert!(postgres_code_is_retryable(None));
        assert!(
            postgres_code_is_retryable(Some("08006")),
            "connection failure"
        );
        assert!(postgres_code_is_retryable(Some("57P01")), "admin shutdown");
        assert!(postgres_code_is_retryable(Some("40001")), "serialization");
        assert!(
            !postgres_code_is_retryable(Some("42P01")),
            "undefined table"
        );
        assert!(!postgres_code_is_retryable(Some("42501")), "permission");
        assert!(
            !postgres_code_is_retryable(Some("22P02")),
            "bad filter literal"
        );
    }
}
