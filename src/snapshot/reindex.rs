//! `--reindex`: build a fresh physical index behind an alias while the live
//! stream keeps writing, then swap the alias atomically.
//!
//! The flow (driven by `sluice snapshot --reindex`; the stream's side is
//! `crate::stream::dual_write`):
//! 1. `start` creates `<alias>-<UTC timestamp>` with the mapping's settings
//!    and mappings plus bulk-load settings (no refresh, no replicas, long
//!    `gc_deletes`), and records `reindex|<alias>` (status `building`, the
//!    new mapping files, the slot of the `sluice run` that must dual-write)
//!    in the state index. A second reindex of the alias with other mapping
//!    files is refused while one is unfinished; the same one resumes.
//! 2. The running `sluice run` of that slot polls `active_for` and from then
//!    on also writes every change, transformed with the stored mapping
//!    files, to the build index (same id, routing, version), and reports the
//!    commit LSN L it dual-writes from with `acknowledge_dual_write`.
//!    `wait_for_dual_write` blocks the snapshot until then, so the snapshot's
//!    point P ≥ L is taken after dual writing began: every change with
//!    commit LSN ≥ P reaches the build index through the stream (DESIGN
//!    invariant 4).
//! 3. The snapshot fills the build index (target = build index).
//! 4. `finish` marks the reindex `swapping` and waits for the stream to stop
//!    writing the old shape through the alias and to settle what it wrote
//!    (`acknowledge_switch`), restores the live settings (the mapping's
//!    refresh/replicas, `gc_deletes` of the replay window), refreshes, and
//!    moves the alias in one `_aliases` request (removals from the old
//!    indices and the addition to the new one), so searches never see an
//!    empty or half-filled index; the old index is kept, or deleted with
//!    `delete_old`.
//!
//! `abandon` gives an unfinished reindex up the same careful way: the stream
//! stops writing the build index before it is deleted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesExistsParts, IndicesGetAliasParts,
    IndicesPutSettingsParts, IndicesRefreshParts,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::state::StateStore;
use super::{SnapshotError, es_ok};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReindexState {
    pub alias: String,
    pub build_index: String,
    /// What the alias pointed at when the reindex started (or the concrete
    /// index that had the alias's name).
    pub old_indices: Vec<String>,
    /// `true` when `old_indices[0]` is a concrete index named like the alias.
    pub old_is_concrete: bool,
    pub status: ReindexStatus,
    /// Settings to put back on the build index when it goes live.
    pub live_settings: Value,
    /// Commit LSN (as text) from which the pipeline writes to both indices.
    pub dual_write_from: Option<String>,
    pub started_at: String,
    /// The mapping files (as read when the reindex started) of the mappings
    /// that write to `alias`. A running `sluice run` builds the build
    /// index's documents from these, not from the mapping it loaded at its
    /// start, so the build index holds the *new* shape while the old index
    /// keeps the old one. Empty: the stream uses its own mapping for both.
    #[serde(default)]
    pub mapping_files: Vec<MappingFile>,
    /// Set by the stream in `Swapping`: it no longer writes the old shape
    /// through the alias, and every such write it made is settled.
    #[serde(default)]
    pub stream_switched: bool,
    /// The replication slot of the `sluice run` that must dual-write: the
    /// state index is shared by every Sluice on the cluster, and only the
    /// stream of this deployment writes these tables. `None`: no `sluice run`
    /// (a library caller acknowledges by itself).
    #[serde(default)]
    pub slot: Option<String>,
}

/// One mapping file's path and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingFile {
    pub path: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReindexStatus {
    /// The build index is being filled; the stream writes both indices.
    Building,
    /// The snapshot is done and the alias is about to move: the stream
    /// stops writing the alias's old shape (see `finish`).
    Swapping,
    Swapped,
    /// Being given up (`--abandon`): the stream stops writing the build
    /// index, then the build index and this record are deleted.
    Abandoning,
}

fn doc_id(alias: &str) -> String {
    format!("reindex|{alias}")
}

/// `<alias>-<yyyymmddhhmmss>`: sorts by creation time.
pub fn build_index_name(alias: &str, now: DateTime<Utc>) -> String {
    format!("{alias}-{}", now.format("%Y%m%d%H%M%S"))
}

/// The mapping's index settings with bulk-load values on top.
pub fn bulk_load_settings(mapping_settings: &Value, gc_deletes: &str) -> Value {
    let mut s = flatten_index_settings(mapping_settings);
    s.insert("refresh_interval".into(), json!("-1"));
    s.insert("number_of_replicas".into(), json!(0));
    s.insert("gc_deletes".into(), json!(gc_deletes));
    Value::Object(s)
}

/// What the build index gets back when it goes live: the mapping's values
/// for the settings `bulk_load_settings` overrode, or `null` (the default).
pub fn live_settings(mapping_settings: &Value) -> Value {
    let s = flatten_index_settings(mapping_settings);
    let mut out = serde_json::Map::new();
    for key in ["refresh_interval", "number_of_replicas", "gc_deletes"] {
        out.insert(key.into(), s.get(key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// Accept `{"index": {...}}`, `{"index.x": ..}` or `{...}` and return the
/// inner index-level map with `index.` prefixes removed.
fn flatten_index_settings(settings: &Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let Some(obj) = settings.as_object() else {
        return out;
    };
    for (k, v) in obj {
        if k == "index" {
            if let Some(inner) = v.as_object() {
                out.extend(inner.clone());
            }
        } else if let Some(stripped) = k.strip_prefix("index.") {
            out.insert(stripped.to_string(), v.clone());
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The `_aliases` actions that move `alias` to `build` in one request.
pub fn swap_actions(state: &ReindexState, delete_old: bool) -> Result<Value, SnapshotError> {
    let mut actions = Vec::new();
    if state.old_is_concrete {
        if !delete_old {
            return Err(SnapshotError::Reindex(format!(
                "`{}` is a concrete index, not an alias: an alias of the same name can only \
                 replace it by deleting it (run with --delete-old), or point the mapping at an \
                 alias first",
                state.alias
            )));
        }
        actions.push(json!({"remove_index": {"index": state.old_indices[0]}}));
    } else {
        for old in &state.old_indices {
            actions.push(json!({"remove": {"index": old, "alias": state.alias}}));
        }
    }
    actions.push(json!({"add": {"index": state.build_index, "alias": state.alias}}));
    Ok(json!({ "actions": actions }))
}

async fn save(state: &StateStore, r: &ReindexState) -> Result<(), SnapshotError> {
    let mut doc = serde_json::to_value(r).expect("serializes");
    doc["kind"] = json!("reindex");
    doc["status"] = serde_json::to_value(r.status).expect("serializes");
    state.put(&doc_id(&r.alias), &doc).await
}

pub async fn load(state: &StateStore, alias: &str) -> Result<Option<ReindexState>, SnapshotError> {
    match state.get(&doc_id(alias)).await? {
        None => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| SnapshotError::State(format!("reindex of {alias}: {e}"))),
    }
}

/// What `alias` names now: the indices an alias points at (`false`), a
/// concrete index of that name (`[alias]`, `true`), or nothing.
pub async fn current_target(
    es: &elasticsearch::Elasticsearch,
    alias: &str,
) -> Result<(Vec<String>, bool), SnapshotError> {
    let resp = es
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[alias]))
        .send()
        .await?;
    if resp.status_code().is_success() {
        let v: Value = resp.json().await?;
        let names = v
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        return Ok((names, false));
    }
    let exists = es
        .indices()
        .exists(IndicesExistsParts::Index(&[alias]))
        .send()
        .await?;
    Ok(if exists.status_code().is_success() {
        (vec![alias.to_string()], true)
    } else {
        (Vec::new(), false)
    })
}

/// Create the build index (or pick up the one an interrupted reindex made,
/// if it builds with the same mapping files: a second, different reindex of
/// the same alias while one is building is refused).
pub async fn start(
    state: &StateStore,
    alias: &str,
    mapping_settings: &Value,
    mappings: &Value,
    gc_deletes: &str,
    mapping_files: &[MappingFile],
    slot: Option<&str>,
) -> Result<ReindexState, SnapshotError> {
    state.ensure().await?;
    if let Some(r) = load(state, alias).await?
        && r.status != ReindexStatus::Swapped
    {
        if r.status == ReindexStatus::Abandoning {
            return Err(SnapshotError::Reindex(format!(
                "the reindex of `{alias}` into `{}` is being abandoned: finish that with \
                 `sluice snapshot --reindex --abandon` first",
                r.build_index
            )));
        }
        if r.mapping_files != mapping_files {
            return Err(SnapshotError::Reindex(format!(
                "a reindex of `{alias}` into `{}` (started {}) is still building with a \
                 different mapping: finish it first by running the same command with the mapping \
                 files it started with, or abandon it with `sluice snapshot --reindex \
                 --abandon` (deletes the build index)",
                r.build_index, r.started_at
            )));
        }
        tracing::info!(%alias, build_index = %r.build_index, "resuming the interrupted reindex");
        return Ok(r);
    }
    let (old_indices, old_is_concrete) = current_target(&state.es, alias).await?;
    let es = &state.es;
    let build_index = build_index_name(alias, Utc::now());
    let mut body =
        json!({ "settings": {"index": bulk_load_settings(mapping_settings, gc_deletes)} });
    if !mappings.is_null() {
        body["mappings"] = mappings.clone();
    }
    let resp = es
        .indices()
        .create(IndicesCreateParts::Index(&build_index))
        .body(body)
        .send()
        .await?;
    es_ok(&format!("create build index {build_index}"), resp).await?;
    let r = ReindexState {
        alias: alias.to_string(),
        build_index,
        old_indices,
        old_is_concrete,
        status: ReindexStatus::Building,
        live_settings: {
            // Indices Sluice makes keep tombstones for the replay window
            // (DESIGN invariant 3) unless the mapping says otherwise.
            let mut live = live_settings(mapping_settings);
            if live["gc_deletes"].is_null() {
                live["gc_deletes"] = json!(gc_deletes);
            }
            live
        },
        dual_write_from: None,
        started_at: Utc::now().to_rfc3339(),
        mapping_files: mapping_files.to_vec(),
        stream_switched: false,
        slot: slot.map(str::to_string),
    };
    save(state, &r).await?;
    Ok(r)
}

/// Give up a reindex that is not swapped yet: mark it `abandoning`, wait
/// (with `wait_for_stream`) until the running stream stopped writing the
/// build index and every such write is settled — a later write would make
/// Elasticsearch create the deleted index again — then delete the build
/// index and the record. Returns the deleted build index.
pub async fn abandon(
    state: &StateStore,
    alias: &str,
    wait_for_stream: Option<Duration>,
) -> Result<Option<String>, SnapshotError> {
    let Some(mut r) = load(state, alias).await? else {
        return Ok(None);
    };
    if r.status == ReindexStatus::Swapped {
        return Ok(None);
    }
    if r.status != ReindexStatus::Abandoning {
        r.status = ReindexStatus::Abandoning;
        r.stream_switched = false;
        save(state, &r).await?;
    }
    if let Some(timeout) = wait_for_stream {
        tracing::info!(%alias, build_index = %r.build_index,
            "waiting for `sluice run` to stop writing to {}", r.build_index);
        let deadline = tokio::time::Instant::now() + timeout;
        while !load(state, alias).await?.is_some_and(|r| r.stream_switched) {
            if tokio::time::Instant::now() >= deadline {
                return Err(SnapshotError::NoStream(format!(
                    "no running `sluice run` stopped writing to {} within {timeout:?}: start \
                     `sluice run` with this configuration, then run this command again",
                    r.build_index
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let resp = state
        .es
        .indices()
        .delete(IndicesDeleteParts::Index(&[&r.build_index]))
        .send()
        .await?;
    if resp.status_code().as_u16() != 404 {
        es_ok(&format!("delete {}", r.build_index), resp).await?;
    }
    let resp = state
        .es
        .delete(elasticsearch::DeleteParts::IndexId(
            &state.index,
            &doc_id(alias),
        ))
        .refresh(elasticsearch::params::Refresh::True)
        .send()
        .await?;
    es_ok(&format!("delete state document of {alias}"), resp).await?;
    Ok(Some(r.build_index))
}

/// Reindexes in progress (`building` or `swapping`): for each, the pipeline
/// also writes every op aimed at `alias` to `build_index`.
pub async fn active(state: &StateStore) -> Result<Vec<ReindexState>, SnapshotError> {
    // A refresh of the small state index makes a just-started reindex
    // visible to the next poll.
    let _ = state
        .es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[&state.index]))
        .send()
        .await?;
    let resp = state
        .es
        .search(elasticsearch::SearchParts::Index(&[&state.index]))
        .body(json!({
            "size": 1000,
            "query": {"bool": {"filter": [
                {"term": {"kind": "reindex"}},
                {"terms": {"status": ["building", "swapping", "abandoning"]}}
            ]}}
        }))
        .send()
        .await?;
    if resp.status_code().as_u16() == 404 {
        return Ok(Vec::new());
    }
    let v = es_ok("list reindexes", resp).await?;
    v["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            serde_json::from_value(h["_source"].clone())
                .map_err(|e| SnapshotError::State(format!("reindex document: {e}")))
        })
        .collect()
}

/// The reindexes in progress that the stream of `slot` must dual-write.
pub async fn active_for(
    state: &StateStore,
    slot: &str,
) -> Result<Vec<ReindexState>, SnapshotError> {
    let mut all = active(state).await?;
    all.retain(|r| r.slot.as_deref() == Some(slot));
    Ok(all)
}

/// Called by the pipeline once it writes every op for `alias` to both
/// indices, starting with the transaction whose commit LSN is `from`.
pub async fn acknowledge_dual_write(
    state: &StateStore,
    alias: &str,
    from: crate::model::lsn::Lsn,
) -> Result<(), SnapshotError> {
    let Some(mut r) = load(state, alias).await? else {
        return Err(SnapshotError::Reindex(format!("no reindex of {alias}")));
    };
    if r.dual_write_from.is_none() {
        r.dual_write_from = Some(from.to_string());
        save(state, &r).await?;
    }
    Ok(())
}

/// Wait until a running pipeline dual-writes for `alias` (see the module
/// doc). Refreshes the state index while polling, since search is not
/// real-time but `get` is.
pub async fn wait_for_dual_write(
    state: &StateStore,
    alias: &str,
    timeout: Duration,
) -> Result<String, SnapshotError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut logged = false;
    loop {
        let r = load(state, alias).await?;
        if let Some(r) = &r
            && let Some(from) = &r.dual_write_from
        {
            return Ok(from.clone());
        }
        if !logged && let Some(r) = &r {
            tracing::info!(%alias, build_index = %r.build_index, timeout = ?timeout,
                "waiting for `sluice run` to start writing to {}", r.build_index);
            logged = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SnapshotError::NoStream(format!(
                "no running `sluice run` started writing `{alias}` to the build index within \
                 {timeout:?}: start `sluice run` with this configuration (it picks up the \
                 reindex within a second and the snapshot continues), then run this command \
                 again; the build index is kept and resumed"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Called by the pipeline in `Swapping` once it writes `alias`'s documents
/// only to the build index and every write of the old shape through the
/// alias is settled (so none can land in the build index after the swap).
pub async fn acknowledge_switch(state: &StateStore, alias: &str) -> Result<(), SnapshotError> {
    let Some(mut r) = load(state, alias).await? else {
        return Err(SnapshotError::Reindex(format!("no reindex of {alias}")));
    };
    if matches!(
        r.status,
        ReindexStatus::Swapping | ReindexStatus::Abandoning
    ) && !r.stream_switched
    {
        r.stream_switched = true;
        save(state, &r).await?;
    }
    Ok(())
}

/// Make the build index live: mark it `swapping` and (with
/// `wait_for_stream`) wait for the running stream to stop writing the old
/// shape through the alias — else an old-shape write in flight at the swap
/// could land in the build index after its new-shape twin with the same
/// version and win. Then restore settings, refresh, swap the alias in one
/// request, and optionally delete the old indices.
pub async fn finish(
    state: &StateStore,
    alias: &str,
    delete_old: bool,
    wait_for_stream: Option<Duration>,
) -> Result<ReindexState, SnapshotError> {
    let Some(mut r) = load(state, alias).await? else {
        return Err(SnapshotError::Reindex(format!("no reindex of {alias}")));
    };
    if r.status == ReindexStatus::Swapped {
        return Ok(r);
    }
    let actions = swap_actions(&r, delete_old)?;
    if r.status == ReindexStatus::Building {
        r.status = ReindexStatus::Swapping;
        save(state, &r).await?;
    }
    if let Some(timeout) = wait_for_stream {
        tracing::info!(%alias, build_index = %r.build_index,
            "waiting for `sluice run` to switch `{alias}` to {}", r.build_index);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            r = load(state, alias).await?.ok_or_else(|| {
                SnapshotError::Reindex(format!("the reindex of {alias} vanished"))
            })?;
            if r.stream_switched {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SnapshotError::NoStream(format!(
                    "no running `sluice run` switched `{alias}` to {} within {timeout:?}: start \
                     `sluice run` with this configuration, then run this command again (the \
                     build index is complete; only the swap is left)",
                    r.build_index
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let es = &state.es;
    let resp = es
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(&[&r.build_index]))
        .body(json!({ "index": r.live_settings }))
        .send()
        .await?;
    es_ok(&format!("restore settings of {}", r.build_index), resp).await?;
    let resp = es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[&r.build_index]))
        .send()
        .await?;
    es_ok(&format!("refresh {}", r.build_index), resp).await?;
    // Replicas must be allocated before the alias moves, or a node loss
    // right after the swap could lose the only copy.
    let resp = es
        .cluster()
        .health(elasticsearch::cluster::ClusterHealthParts::Index(&[
            &r.build_index
        ]))
        .wait_for_status(elasticsearch::params::WaitForStatus::Yellow)
        .timeout("5m")
        .send()
        .await?;
    es_ok(&format!("wait for {} to be allocated", r.build_index), resp).await?;
    let resp = es.indices().update_aliases().body(actions).send().await?;
    es_ok(&format!("move alias {alias}"), resp).await?;
    r.status = ReindexStatus::Swapped;
    save(state, &r).await?;
    if delete_old && !r.old_is_concrete && !r.old_indices.is_empty() {
        let names: Vec<&str> = r.old_indices.iter().map(String::as_str).collect();
        let resp = es
            .indices()
            .delete(IndicesDeleteParts::Index(&names))
            .send()
            .await?;
        es_ok("delete the old indices", resp).await?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_index_names_sort_by_time() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T20:01:02Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(build_index_name("orders", t), "orders-20261123200102");
    }

    #[test]
    fn bulk_load_settings_override_refresh_replicas_and_gc_deletes_only() {
        let mapping = json!({"index": {"number_of_shards": 3, "refresh_interval": "5s"}});
        assert_eq!(
            bulk_load_settings(&mapping, "48h"),
            json!({"number_of_shards": 3, "refresh_interval": "-1",
                   "number_of_replicas": 0, "gc_deletes": "48h"})
        );
        assert_eq!(
            live_settings(&mapping),
            json!({"refresh_interval": "5s", "number_of_replicas": null, "gc_deletes": null})
        );
        assert_eq!(
            live_settings(&json!({"index.number_of_replicas": 2})),
            json!({"refresh_interval": null, "number_of_replicas": 2, "gc_deletes": null})
        );
    }

    fn state(old: &[&str], concrete: bool) -> ReindexState {
        ReindexState {
            alias: "orders".into(),
            build_index: "orders-1".into(),
            old_indices: old.iter().map(|s| s.to_string()).collect(),
            old_is_concrete: concrete,
            status: ReindexStatus::Building,
            live_settings: Value::Null,
            dual_write_from: None,
            started_at: String::new(),
            mapping_files: Vec::new(),
            stream_switched: false,
            slot: None,
        }
    }

    #[test]
    fn the_alias_moves_in_one_request_of_removes_and_an_add() {
        assert_eq!(
            swap_actions(&state(&["orders-0"], false), false).unwrap(),
            json!({"actions": [
                {"remove": {"index": "orders-0", "alias": "orders"}},
                {"add": {"index": "orders-1", "alias": "orders"}}
            ]})
        );
        assert_eq!(
            swap_actions(&state(&[], false), false).unwrap(),
            json!({"actions": [{"add": {"index": "orders-1", "alias": "orders"}}]})
        );
    }

    #[test]
    fn a_concrete_index_with_the_alias_name_is_replaced_only_when_deleting_it_is_allowed() {
        assert!(swap_actions(&state(&["orders"], true), false).is_err());
        assert_eq!(
            swap_actions(&state(&["orders"], true), true).unwrap(),
            json!({"actions": [
                {"remove_index": {"index": "orders"}},
                {"add": {"index": "orders-1", "alias": "orders"}}
            ]})
        );
    }
}
