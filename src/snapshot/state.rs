//! Durable snapshot progress, kept in an Elasticsearch state index
//! (`sluice-state` by default) through `sink::state_store`; this module
//! says what the snapshot's records mean.
//!
//! Keeps the resumability half of DESIGN invariant 4: a chunk document is
//! written only after every document of that chunk is acknowledged by
//! Elasticsearch, the same rule as the slot (progress stored only after the
//! destination is durable). Documents:
//!
//! - `table|<schema.table>|<target>`: one per table and target — the run id,
//!   the chunk plan (stored once, reused on resume), a fingerprint of the
//!   physical layout, and `running`/`done`;
//! - `chunk|<run id>|<chunk id>`: one per finished chunk, written once by the
//!   reader that finished it, never updated — so parallel readers never
//!   contend on one document and a replayed write is harmless;
//! - `reindex|<alias>` and `tombstones|<index>`: see `reindex` and `tombstones`.

use std::collections::HashSet;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::SnapshotError;
use super::plan::Chunk;
use crate::sink::Elasticsearch;
use crate::sink::state_store::{Filter, StateIndex};

pub const DEFAULT_STATE_INDEX: &str = "sluice-state";

/// Per-table progress of one snapshot run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    pub run_id: String,
    /// `schema.table`.
    pub table: String,
    /// What the rows are written to (index or alias name, or a mapping name).
    pub target: String,
    pub status: TableStatus,
    pub plan: Vec<Chunk>,
    /// `(leaf oid, relfilenode)` for each leaf chunked by ctid (`0` for key
    /// chunks, whose ranges survive a table rewrite). A different layout on
    /// resume means the plan no longer describes the table: start over.
    pub fingerprint: Vec<(u32, u32)>,
    pub expected_rows: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Consistent points of the snapshots this run has used so far.
    pub points: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableStatus {
    Running,
    Done,
}

/// The state index, as the snapshot reads and writes it.
#[derive(Clone)]
pub struct StateStore {
    records: StateIndex,
}

fn table_doc_id(table: &str, target: &str) -> String {
    format!("table|{table}|{target}")
}

impl StateStore {
    pub fn new(es: Elasticsearch, index: impl Into<String>) -> StateStore {
        StateStore {
            records: StateIndex::new(es, index),
        }
    }

    /// The records themselves, for the kinds kept beside the snapshot's.
    pub fn records(&self) -> &StateIndex {
        &self.records
    }

    /// The cluster the state index lives in.
    pub fn client(&self) -> &Elasticsearch {
        self.records.client()
    }

    /// Create the state index if it does not exist.
    pub async fn ensure(&self) -> Result<(), SnapshotError> {
        Ok(self.records.ensure().await?)
    }

    /// Write a document; acknowledged means durable (translog synced).
    pub async fn put(&self, id: &str, doc: &Value) -> Result<(), SnapshotError> {
        Ok(self.records.put(id, doc).await?)
    }

    /// Read a document (real-time: no refresh needed).
    pub async fn get(&self, id: &str) -> Result<Option<Value>, SnapshotError> {
        Ok(self.records.get(id).await?)
    }

    pub async fn load_table(
        &self,
        table: &str,
        target: &str,
    ) -> Result<Option<TableState>, SnapshotError> {
        match self.get(&table_doc_id(table, target)).await? {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| SnapshotError::State(format!("{table}: {e}"))),
        }
    }

    pub async fn save_table(&self, state: &TableState) -> Result<(), SnapshotError> {
        let mut doc = serde_json::to_value(state).expect("state serializes");
        doc["kind"] = json!("table");
        self.put(&table_doc_id(&state.table, &state.target), &doc)
            .await
    }

    /// Record a chunk as done. Call only after its documents are durable.
    pub async fn mark_chunk_done(
        &self,
        run_id: &str,
        table: &str,
        chunk: u32,
        rows: u64,
        point: &str,
    ) -> Result<(), SnapshotError> {
        self.put(
            &format!("chunk|{run_id}|{chunk}"),
            &json!({
                "kind": "chunk",
                "run_id": run_id,
                "table": table,
                "chunk": chunk,
                "rows": rows,
                "point": point,
                "done_at": Utc::now().to_rfc3339(),
            }),
        )
        .await
    }

    /// The chunks of a run already recorded as done, and their rows.
    pub async fn done_chunks(&self, run_id: &str) -> Result<(HashSet<u32>, u64), SnapshotError> {
        self.records.refresh().await?;
        let chunks = self
            .records
            .find_all_sorted(
                &[
                    Filter::Is("kind", json!("chunk")),
                    Filter::Is("run_id", json!(run_id)),
                ],
                "chunk",
                &["chunk", "rows"],
            )
            .await?;
        let mut done = HashSet::new();
        let mut rows = 0;
        for c in &chunks {
            let chunk = c.source["chunk"]
                .as_u64()
                .ok_or_else(|| SnapshotError::State(format!("chunk document {}", c.id)))?;
            done.insert(chunk as u32);
            rows += c.source["rows"].as_u64().unwrap_or(0);
        }
        Ok((done, rows))
    }
}
