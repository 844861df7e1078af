//! The `sluice snapshot [--table ...] [--reindex]` flow around a run:
//! prepare the destinations, run (or resume) the snapshot, then make the
//! result live.
//!
//! - Without `--reindex`: rows go to the mapping's index; its delete
//!   tombstones are kept for the backfill's duration (DESIGN invariant 3,
//!   `tombstones`) and restored afterwards.
//! - With `--reindex`: each mapped alias gets a build index (`reindex`);
//!   snapshot rows are written to the build index only (the sink applies
//!   `Prepared::index_overrides` to snapshot ops), the running stream writes
//!   to both; `complete` swaps the aliases.
//!
//! Every step is idempotent, so after a crash the same command picks up the
//! same build index, the saved tombstone settings and the remaining chunks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use serde_json::Value;

use super::SnapshotError;
use super::run::{SnapshotDeps, SnapshotJob, SnapshotOptions, SnapshotSummary, TableJob};
use super::seams::SnapshotSink;
use super::state::StateStore;
use super::{reindex, run_snapshot, tombstones};
use crate::model::{PublishedTable, RetryPolicy};

/// A templated index name (`orders-{region}`) names no single index whose
/// settings could be changed; its documents are still written.
fn is_templated(index: &str) -> bool {
    index.contains('{')
}

/// One mapped table and where the mapping writes it.
#[derive(Debug, Clone)]
pub struct BackfillTarget {
    pub table: PublishedTable,
    /// The mapping's index or alias.
    pub index: String,
    /// The mapping's index settings and mappings (used for a build index).
    pub settings: Value,
    pub mappings: Value,
    /// With `--reindex`: the mapping files that write to `index`, stored
    /// with the reindex so the running stream builds the build index's
    /// documents with them (see `reindex::ReindexState::mapping_files`).
    pub mapping_files: Vec<reindex::MappingFile>,
}

#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub targets: Vec<BackfillTarget>,
    pub reindex: bool,
    /// Delete the old index after the alias swap (`--delete-old`).
    pub delete_old: bool,
    /// `index.gc_deletes` while the backfill runs.
    pub gc_deletes: String,
    /// With `--reindex`: how long to wait for a running `sluice run` to start
    /// dual writing; `None` when no stream runs (nothing else writes).
    pub wait_for_stream: Option<Duration>,
    /// With `--reindex`: the slot of the `sluice run` that dual-writes
    /// (`None`: none; the caller acknowledges by itself).
    pub stream_slot: Option<String>,
    pub options: SnapshotOptions,
    /// Attempts after a retryable failure (a PostgreSQL restart, a dropped
    /// connection, Elasticsearch refusing for a while); each resumes the
    /// chunks not yet recorded as done under a new snapshot. 0 = fail at once.
    pub retries: usize,
}

/// What `prepare` set up.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub job: SnapshotJob,
    /// Mapping index/alias → build index: the sink must write snapshot ops
    /// aimed at the key to the value instead (reindex only).
    pub index_overrides: BTreeMap<String, String>,
    reindex: bool,
    wait_for_stream: Option<Duration>,
    indices: Vec<String>,
}

pub async fn prepare(state: &StateStore, req: &BackfillRequest) -> Result<Prepared, SnapshotError> {
    state.ensure().await?;
    let mut index_overrides = BTreeMap::new();
    let mut indices: Vec<String> = Vec::new();
    for t in &req.targets {
        if indices.contains(&t.index) {
            continue;
        }
        indices.push(t.index.clone());
        if req.reindex {
            if is_templated(&t.index) {
                return Err(SnapshotError::Reindex(format!(
                    "`{}` is a templated index name: a reindex builds one index behind one \
                     alias, so templated names cannot be reindexed (leave the table out with \
                     --table, or use a fixed index name)",
                    t.index
                )));
            }
            let resuming = reindex::load(state, &t.index)
                .await?
                .is_some_and(|r| r.status != reindex::ReindexStatus::Swapped);
            if !resuming && !req.delete_old {
                let (_, concrete) =
                    crate::sink::admin::alias_target(state.client(), &t.index).await?;
                if concrete {
                    return Err(SnapshotError::Reindex(format!(
                        "`{0}` is a concrete index, not an alias: the reindex replaces it with an \
                         alias `{0}` over the new index, which needs the name, so the old index \
                         cannot be kept; run again with --delete-old (later reindexes of `{0}` \
                         can keep their old index)",
                        t.index
                    )));
                }
            }
            let r = reindex::start(
                state,
                &t.index,
                &t.settings,
                &t.mappings,
                &req.gc_deletes,
                &t.mapping_files,
                req.stream_slot.as_deref(),
            )
            .await?;
            index_overrides.insert(t.index.clone(), r.build_index);
        } else if !is_templated(&t.index) {
            tombstones::extend(state, &t.index, &req.gc_deletes).await?;
        }
    }
    if req.reindex
        && let Some(timeout) = req.wait_for_stream
    {
        for alias in index_overrides.keys() {
            let from = reindex::wait_for_dual_write(state, alias, timeout).await?;
            tracing::info!(%alias, %from, "the stream writes to both indices");
        }
    }
    let tables = req
        .targets
        .iter()
        .map(|t| TableJob {
            spec: t.table.clone(),
            target: index_overrides
                .get(&t.index)
                .cloned()
                .unwrap_or_else(|| t.index.clone()),
        })
        .collect();
    Ok(Prepared {
        job: SnapshotJob {
            tables,
            options: req.options.clone(),
        },
        index_overrides,
        reindex: req.reindex,
        wait_for_stream: req.wait_for_stream,
        indices,
    })
}

/// Make a finished backfill live: swap aliases (reindex) or restore the
/// tombstone lifetime. Call only after `run_snapshot` succeeded.
pub async fn complete(
    state: &StateStore,
    prepared: &Prepared,
    delete_old: bool,
) -> Result<(), SnapshotError> {
    for index in &prepared.indices {
        if prepared.reindex {
            let r = reindex::finish(state, index, delete_old, prepared.wait_for_stream).await?;
            tracing::info!(alias = %index, index = %r.build_index, "alias swapped");
        } else if !is_templated(index) {
            tombstones::restore(state, index).await?;
        }
    }
    Ok(())
}

/// The whole flow. `make_sink` gets the index overrides, so snapshot ops of
/// a reindex land in the build index.
pub async fn backfill(
    deps: &SnapshotDeps,
    req: &BackfillRequest,
    make_sink: impl FnOnce(&BTreeMap<String, String>) -> Arc<dyn SnapshotSink>,
) -> Result<SnapshotSummary, SnapshotError> {
    let prepared = prepare(&deps.state, req).await?;
    let mut deps = deps.clone();
    deps.sink = make_sink(&prepared.index_overrides);
    // A retry exports a new snapshot with a later point P' and resumes the
    // chunks not yet done; rows already written carry the older P - 1, which
    // streamed changes outrank all the same (invariant 4 holds per chunk).
    let summary = (|| run_snapshot(&deps, &prepared.job))
        .retry(RetryPolicy::SNAPSHOT_RESUME.times(req.retries).builder())
        .when(SnapshotError::is_retryable)
        .notify(|e, after| {
            tracing::warn!(error = %e, ?after, "snapshot interrupted; resuming its remaining chunks under a new snapshot")
        })
        .await?;
    if prepared.reindex
        && let Some(point) = summary.point
    {
        // Invariant 4 for the build index: commits >= P must be dual
        // written. P was exported after the acknowledgement, so P >= L.
        for alias in prepared.index_overrides.keys() {
            let from = reindex::load(&deps.state, alias)
                .await?
                .and_then(|r| r.dual_write_from)
                .and_then(|f| f.parse::<crate::model::lsn::Lsn>().ok());
            if let Some(from) = from
                && from > point
            {
                return Err(SnapshotError::Reindex(format!(
                    "the stream dual-writes `{alias}` from {from}, after the snapshot point \
                     {point}: changes in between would miss the build index"
                )));
            }
        }
    }
    complete(&deps.state, &prepared, req.delete_old).await?;
    Ok(summary)
}
