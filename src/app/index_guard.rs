//! A target index deleted under `sluice run`: stop, say so, and keep
//! saying so until the index is rebuilt from its tables.
//!
//! `sink::index_watch` notices the deletion; this file owns the decision
//! and the words. Streaming cannot repair such an index (the documents of
//! rows that do not change again are gone, and Elasticsearch's automatic
//! creation gave the new index dynamic mappings and short delete
//! tombstones), so `run` stops with [`EXIT_CONFIG`] (a person must act,
//! restarting does not help) and records the loss in the state index
//! (`index-lost|<slot>|<index>`). Every later start refuses with the same
//! message, so an orchestrator's restart cannot stream on into the broken
//! index. The remedy is `sluice snapshot --table ...` for the tables that
//! write there: it deletes the partial index, creates it as configured,
//! loads the tables through the normal backfill path (DESIGN invariant 4
//! makes the stream's replay after it exact) and clears the record.

use anyhow::Context;
use backon::Retryable;
use serde_json::{Value, json};

use crate::app::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::config::{Config, STATE_INDEX};
use crate::model::RetryPolicy;
use crate::sink::Elasticsearch;
use crate::sink::admin::{self, AdminError};
use crate::sink::index_watch::{IndexIdentity, LostIndex, identity};
use crate::sink::state_store::StateIndex;

/// How often `run` looks at its target indices' identities.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

fn record_id(slot: &str, index: &str) -> String {
    format!("index-lost|{slot}|{index}")
}

/// The tables whose mappings write to `index`, as `schema.table`.
fn tables_of(cfg: &Config, index: &str) -> Vec<String> {
    let mut tables: Vec<String> = cfg
        .mappings
        .list
        .iter()
        .filter(|m| m.index_pattern() == index)
        .map(|m| m.qualified_table.to_string())
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

/// Whether `index` has a loss recorded: read like index preparation reads
/// (a busy or briefly unreachable cluster is tried again with
/// [`RetryPolicy::ADMIN`]), so this check adds no new way to fail a start.
async fn recorded(state: &StateIndex, slot: &str, index: &str) -> anyhow::Result<Option<Value>> {
    let id = record_id(slot, index);
    match (|| state.get(&id))
        .retry(RetryPolicy::ADMIN.builder())
        .when(AdminError::is_retryable)
        .await
    {
        Ok(r) => Ok(r),
        // No state index yet: nothing was ever recorded.
        Err(AdminError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e).context("reading lost indices from the state index"),
    }
}

/// The operator's message for a lost index: what happened, why streaming
/// cannot fix it, and the command that does. Exit code: [`EXIT_CONFIG`].
pub fn message(cfg: &Config, index: &str, what: &str) -> String {
    let tables: Vec<String> = tables_of(cfg, index)
        .iter()
        .map(|t| format!("--table {t}"))
        .collect();
    format!(
        "target index `{index}` was deleted while sluice run streamed into it: {what}. The \
         documents written before are gone and streaming alone cannot bring them back, so \
         Sluice stopped (exit {EXIT_CONFIG}) and refuses to stream into it until it is rebuilt \
         (recorded as `{id}` in index {STATE_INDEX}). Rebuild it from the tables: \
         `sluice snapshot {tables} --config <this config>` (deletes the partial index, creates \
         it as configured and loads the tables), then start `sluice run` again",
        id = record_id(&cfg.slot, index),
        tables = tables.join(" "),
    )
}

/// Record the loss, so a restart refuses until the rebuild.
pub async fn record(cfg: &Config, es: &Elasticsearch, lost: &LostIndex) -> anyhow::Result<()> {
    let state = StateIndex::new(es.clone(), STATE_INDEX);
    state.ensure().await.context("preparing the state index")?;
    state
        .put(
            &record_id(&cfg.slot, &lost.index),
            &json!({"kind": "index-lost", "slot": cfg.slot, "index": lost.index,
                    "what": lost.what, "tables": tables_of(cfg, &lost.index)}),
        )
        .await
        .context("recording the lost index in the state index")
}

/// The refusal of a start, if an index of this deployment was lost and not
/// rebuilt yet.
pub async fn refusal(cfg: &Config, es: &Elasticsearch) -> anyhow::Result<Option<String>> {
    let state = StateIndex::new(es.clone(), STATE_INDEX);
    for index in cfg.mappings.fixed_indices() {
        if let Some(doc) = recorded(&state, &cfg.slot, &index).await? {
            let what = doc["what"].as_str().unwrap_or("it was deleted");
            return Ok(Some(message(cfg, &index, what)));
        }
    }
    Ok(None)
}

/// Before `sluice snapshot` loads `tables`: the lost indices they write to
/// (recorded by `run`). Each is deleted when it is a concrete index (it holds
/// only what was written after the loss, under dynamic mappings), so the
/// snapshot's preparation creates it as configured.
pub async fn clear_lost_before_snapshot(
    cfg: &Config,
    es: &Elasticsearch,
    tables: &[String],
) -> Result<Vec<String>, (i32, anyhow::Error)> {
    let runtime = |e: anyhow::Error| (EXIT_RUNTIME, e);
    let state = StateIndex::new(es.clone(), STATE_INDEX);
    let mut lost = Vec::new();
    for index in cfg.mappings.fixed_indices() {
        let mine = tables_of(cfg, &index).iter().any(|t| tables.contains(t));
        if !mine
            || recorded(&state, &cfg.slot, &index)
                .await
                .map_err(runtime)?
                .is_none()
        {
            continue;
        }
        let all = tables_of(cfg, &index);
        if let Some(left_out) = all.iter().find(|t| !tables.contains(t)) {
            return Err((
                EXIT_CONFIG,
                anyhow::anyhow!(
                    "target index `{index}` was lost and must be rebuilt from every table that \
                 writes to it, but `{left_out}` is not in this snapshot: run `sluice snapshot {}`",
                    all.iter()
                        .map(|t| format!("--table {t}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ));
        }
        if let IndexIdentity::Concrete { .. } =
            identity(es, &index).await.map_err(|e| runtime(e.into()))?
        {
            tracing::warn!(index = %index, "deleting the index Elasticsearch created after the loss; the snapshot rebuilds it");
            admin::delete_indices(es, &[&index], true)
                .await
                .map_err(|e| runtime(e.into()))?;
        }
        lost.push(index);
    }
    Ok(lost)
}

/// After the snapshot loaded every table writing to them: the rebuilt
/// indices are whole again.
pub async fn forget_lost(
    cfg: &Config,
    es: &Elasticsearch,
    indices: &[String],
) -> anyhow::Result<()> {
    let state = StateIndex::new(es.clone(), STATE_INDEX);
    for index in indices {
        state
            .delete(&record_id(&cfg.slot, index), true)
            .await
            .context("clearing the lost index's record")?;
        tracing::info!(index = %index, "the lost index was rebuilt from its tables");
    }
    Ok(())
}
