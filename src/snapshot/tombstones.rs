//! Delete tombstones that outlive a backfill (DESIGN invariant 3).
//!
//! Elasticsearch remembers a deleted document's version for
//! `index.gc_deletes` (60 s by default). A snapshot row read at P and
//! written hours later must still meet the tombstone of a delete the stream
//! wrote meanwhile (version ≥ P > P − 1), or it would resurrect the row. So a
//! backfill raises `index.gc_deletes` on its target for its whole duration
//! and restores the previous value afterwards. The previous value is kept in
//! the state index before anything is changed, so a crashed run that is
//! resumed (or restored) puts back the user's value, not the raised one.

use serde_json::{Value, json};

use super::error::SnapshotError;
use super::state::StateStore;
use crate::sink::admin;

/// Long enough for a backfill of many hours; tombstones cost a little heap
/// per delete made during the window, nothing per document.
pub const DEFAULT_BACKFILL_GC_DELETES: &str = "48h";

fn doc_id(index: &str) -> String {
    format!("tombstones|{index}")
}

/// The explicit `index.gc_deletes` of every concrete index behind `target`
/// (an index or an alias); `null` where it is the default.
async fn current(state: &StateStore, target: &str) -> Result<Value, SnapshotError> {
    let by_index = admin::explicit_gc_deletes(state.client(), target).await?;
    Ok(Value::Object(by_index))
}

async fn put(state: &StateStore, index: &str, value: &Value) -> Result<(), SnapshotError> {
    admin::put_index_settings(state.client(), index, &json!({"gc_deletes": value})).await?;
    Ok(())
}

/// Raise `index.gc_deletes` on `target` to `keep` for a backfill,
/// remembering the previous values (once: a resumed run keeps the first).
pub async fn extend(state: &StateStore, target: &str, keep: &str) -> Result<(), SnapshotError> {
    let id = doc_id(target);
    let saved = match state.get(&id).await? {
        Some(doc) => doc["original"].clone(),
        None => {
            let original = current(state, target).await?;
            state
                .put(
                    &id,
                    &json!({"kind": "tombstones", "target": target, "original": original}),
                )
                .await?;
            original
        }
    };
    for index in saved.as_object().into_iter().flat_map(|m| m.keys()) {
        put(state, index, &json!(keep)).await?;
    }
    Ok(())
}

/// Put back the values saved by `extend` and forget them. Call only after
/// every snapshot write is acknowledged.
pub async fn restore(state: &StateStore, target: &str) -> Result<(), SnapshotError> {
    let id = doc_id(target);
    let Some(doc) = state.get(&id).await? else {
        return Ok(());
    };
    if let Some(m) = doc["original"].as_object() {
        for (index, value) in m {
            put(state, index, value).await?;
        }
    }
    state.records().delete(&id, false).await?;
    Ok(())
}
