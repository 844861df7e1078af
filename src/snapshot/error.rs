//! Everything that can stop a snapshot (and the sink's part of it), and
//! which of it may pass by itself
//! (`is_retryable`: running the same command again resumes where it
//! stopped), as one pure function tested as such.

use super::copy_text::CopyParseError;
use crate::sink::admin::AdminError;

/// Why the sink could not take or settle a batch of snapshot rows.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// The pipeline is shutting down.
    #[error("the pipeline closed before acknowledging the batch")]
    Closed,
    /// The batch could not be made durable (e.g. Elasticsearch unreachable
    /// beyond the sink's retry budget). The chunk is not recorded as done.
    #[error("{0}")]
    Failed(String),
}

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
        source: CopyParseError,
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
