//! `BulkOp`: one Elasticsearch bulk action, the transformer's output and the
//! sink's input.
//!
//! Every op carries the version it must be written with (DESIGN invariant 2)
//! and where it came from, so a rejected op can be dead-lettered with its
//! source table, key and LSN (invariant 5).

use std::sync::Arc;

use crate::model::lsn::Lsn;

#[derive(Debug, Clone, PartialEq)]
pub enum OpAction {
    /// Index (create or replace) the document; `doc` is its serialized JSON.
    Index { doc: Vec<u8> },
    /// Delete the document.
    Delete,
}

/// Where an op came from, for dead letters and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct OpOrigin {
    /// `schema.table`.
    pub table: Arc<str>,
    /// The source row's key as JSON (`{"id": 7}`).
    pub key: String,
    /// The commit LSN (or snapshot point) the op was produced at.
    pub lsn: Lsn,
}

/// A change that one mapping could not turn into a document for a reason
/// of the row itself (a value that does not convert, say), not of the
/// mapping or the table, which would fail every row alike. It is
/// stored as a dead letter through the indexer like any write, so the slot
/// passes it only once the dead letter is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    pub mapping: Arc<str>,
    /// The index the mapping writes (its name or pattern).
    pub index: String,
    /// `schema.table`.
    pub table: Arc<str>,
    /// `insert`, `update` or `delete`.
    pub change: &'static str,
    /// The `_id` columns and values as JSON text (`null` when unknown).
    pub key: String,
    /// The commit LSN of the change's transaction (its version).
    pub lsn: Lsn,
    /// A short name of the failure (`convert`, `null_id`, ...).
    pub kind: &'static str,
    pub reason: String,
    /// The row's values (the new row; the old one for a delete).
    pub row: serde_json::Value,
    /// The old row of an update, when PostgreSQL sent one.
    pub old_row: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkOp {
    pub action: OpAction,
    pub index: Arc<str>,
    pub id: String,
    pub routing: Option<String>,
    pub pipeline: Option<Arc<str>>,
    /// Written as `version` with `version_type=external_gte`.
    pub version: u64,
    pub origin: OpOrigin,
}

impl BulkOp {
    /// Bytes this op adds to a bulk request body, roughly (for batching).
    pub fn approx_size(&self) -> usize {
        let doc = match &self.action {
            OpAction::Index { doc } => doc.len() + 1,
            OpAction::Delete => 0,
        };
        96 + self.index.len() + self.id.len() + doc
    }
}
