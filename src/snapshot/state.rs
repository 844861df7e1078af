//! Durable snapshot progress, kept in an Elasticsearch state index
//! (`sluice-state` by default).
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
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsParts, IndicesRefreshParts};
use elasticsearch::{Elasticsearch, GetParts, IndexParts, SearchParts};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::plan::Chunk;
use super::{SnapshotError, es_ok};

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

/// The state index.
#[derive(Clone)]
pub struct StateStore {
    pub es: Elasticsearch,
    pub index: String,
}

fn table_doc_id(table: &str, target: &str) -> String {
    format!("table|{table}|{target}")
}

impl StateStore {
    pub fn new(es: Elasticsearch, index: impl Into<String>) -> StateStore {
        StateStore {
            es,
            index: index.into(),
        }
    }

    /// Create the state index if it does not exist.
    pub async fn ensure(&self) -> Result<(), SnapshotError> {
        let exists = self
            .es
            .indices()
            .exists(IndicesExistsParts::Index(&[&self.index]))
            .send()
            .await?;
        if exists.status_code().is_success() {
            return Ok(());
        }
        let resp = self
            .es
            .indices()
            .create(IndicesCreateParts::Index(&self.index))
            .body(json!({
                "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
                "mappings": {
                    "dynamic": false,
                    "properties": {
                        "kind": {"type": "keyword"},
                        "run_id": {"type": "keyword"},
                        "table": {"type": "keyword"},
                        "target": {"type": "keyword"},
                        "status": {"type": "keyword"},
                        "chunk": {"type": "long"},
                        "rows": {"type": "long"}
                    }
                }
            }))
            .send()
            .await?;
        match es_ok("create the state index", resp).await {
            Ok(_) => Ok(()),
            // Another process created it first.
            Err(SnapshotError::EsStatus { body, .. })
                if body.contains("resource_already_exists_exception") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Write a document; acknowledged means durable (translog synced).
    pub async fn put(&self, id: &str, doc: &Value) -> Result<(), SnapshotError> {
        let resp = self
            .es
            .index(IndexParts::IndexId(&self.index, id))
            .body(doc)
            .send()
            .await?;
        es_ok(&format!("write state document {id}"), resp).await?;
        Ok(())
    }

    /// Read a document (real-time: no refresh needed).
    pub async fn get(&self, id: &str) -> Result<Option<Value>, SnapshotError> {
        let resp = self
            .es
            .get(GetParts::IndexId(&self.index, id))
            .send()
            .await?;
        if resp.status_code().as_u16() == 404 {
            return Ok(None);
        }
        let v = es_ok(&format!("read state document {id}"), resp).await?;
        Ok(v.get("_source").cloned())
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
        let resp = self
            .es
            .indices()
            .refresh(IndicesRefreshParts::Index(&[&self.index]))
            .send()
            .await?;
        es_ok("refresh the state index", resp).await?;
        let mut done = HashSet::new();
        let mut rows = 0;
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({
                "size": 5000,
                "_source": ["chunk", "rows"],
                "query": {"bool": {"filter": [
                    {"term": {"kind": "chunk"}},
                    {"term": {"run_id": run_id}}
                ]}},
                "sort": [{"chunk": "asc"}]
            });
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let resp = self
                .es
                .search(SearchParts::Index(&[&self.index]))
                .body(body)
                .send()
                .await?;
            let v = es_ok("read snapshot progress", resp).await?;
            let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                return Ok((done, rows));
            }
            for h in &hits {
                let c = h["_source"]["chunk"]
                    .as_u64()
                    .ok_or_else(|| SnapshotError::State(format!("chunk document {h}")))?;
                done.insert(c as u32);
                rows += h["_source"]["rows"].as_u64().unwrap_or(0);
            }
            after = hits.last().map(|h| h["sort"].clone());
        }
    }
}
