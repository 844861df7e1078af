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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::SnapshotError;
use super::state::StateStore;
use crate::sink::admin;
use crate::sink::state_store::Filter;

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
    let (old_indices, old_is_concrete) = admin::alias_target(state.client(), alias).await?;
    let build_index = build_index_name(alias, Utc::now());
    let mut body =
        json!({ "settings": {"index": bulk_load_settings(mapping_settings, gc_deletes)} });
    if !mappings.is_null() {
        body["mappings"] = mappings.clone();
    }
    admin::create_index(state.client(), &build_index, body).await?;
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
        let switched = poll(state, alias, timeout, |now| {
            Ok(now.filter(|now| now.stream_switched).map(|_| ()))
        })
        .await?;
        if switched.is_none() {
            return Err(SnapshotError::NoStream(format!(
                "no running `sluice run` stopped writing to {} within {timeout:?}: start \
                 `sluice run` with this configuration, then run this command again",
                r.build_index
            )));
        }
    }
    admin::delete_indices(state.client(), &[&r.build_index], true).await?;
    state.records().delete(&doc_id(alias), true).await?;
    Ok(Some(r.build_index))
}

/// Reindexes in progress (`building` or `swapping`): for each, the pipeline
/// also writes every op aimed at `alias` to `build_index`.
pub async fn active(state: &StateStore) -> Result<Vec<ReindexState>, SnapshotError> {
    // A refresh of the small state index makes a just-started reindex
    // visible to the next poll (a missing index has nothing to show).
    match state.records().refresh().await {
        Ok(()) | Err(admin::AdminError::Status { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let records = state
        .records()
        .find(
            &[
                Filter::Is("kind", json!("reindex")),
                Filter::AnyOf(
                    "status",
                    vec![json!("building"), json!("swapping"), json!("abandoning")],
                ),
            ],
            1000,
        )
        .await?;
    records
        .into_iter()
        .map(|r| {
            serde_json::from_value(r.source)
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
    let mut logged = false;
    let from = poll(state, alias, timeout, |now| {
        let Some(now) = now else { return Ok(None) };
        if now.dual_write_from.is_none() && !logged {
            tracing::info!(%alias, build_index = %now.build_index, timeout = ?timeout,
                "waiting for `sluice run` to start writing to {}", now.build_index);
            logged = true;
        }
        Ok(now.dual_write_from)
    })
    .await?;
    from.ok_or_else(|| {
        SnapshotError::NoStream(format!(
            "no running `sluice run` started writing `{alias}` to the build index within \
             {timeout:?}: start `sluice run` with this configuration (it picks up the \
             reindex within a second and the snapshot continues), then run this command \
             again; the build index is kept and resumed"
        ))
    })
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
        r = wait_for_switch(state, &r, timeout).await?;
    }
    go_live(state, &r, actions).await?;
    r.status = ReindexStatus::Swapped;
    save(state, &r).await?;
    if delete_old && !r.old_is_concrete && !r.old_indices.is_empty() {
        let names: Vec<&str> = r.old_indices.iter().map(String::as_str).collect();
        admin::delete_indices(state.client(), &names, false).await?;
    }
    Ok(r)
}

/// Wait until the stream acknowledged the switch of `r.alias` (see
/// `finish`); returns the record as it is then.
async fn wait_for_switch(
    state: &StateStore,
    r: &ReindexState,
    timeout: Duration,
) -> Result<ReindexState, SnapshotError> {
    let alias = &r.alias;
    tracing::info!(%alias, build_index = %r.build_index,
        "waiting for `sluice run` to switch `{alias}` to {}", r.build_index);
    let switched = poll(state, alias, timeout, |now| {
        let now =
            now.ok_or_else(|| SnapshotError::Reindex(format!("the reindex of {alias} vanished")))?;
        Ok(now.stream_switched.then_some(now))
    })
    .await?;
    switched.ok_or_else(|| {
        SnapshotError::NoStream(format!(
            "no running `sluice run` switched `{alias}` to {} within {timeout:?}: start \
             `sluice run` with this configuration, then run this command again (the \
             build index is complete; only the swap is left)",
            r.build_index
        ))
    })
}

/// Put the build index's live settings back, make it searchable, wait for
/// its replicas (a node lost right after the swap must not lose the only
/// copy), then move the alias with `actions` in one request.
async fn go_live(
    state: &StateStore,
    r: &ReindexState,
    actions: Value,
) -> Result<(), SnapshotError> {
    let es = state.client();
    admin::put_index_settings(es, &r.build_index, &r.live_settings).await?;
    admin::refresh(es, &r.build_index).await?;
    admin::wait_until_allocated(es, &r.build_index, "5m").await?;
    admin::update_aliases(es, actions).await?;
    Ok(())
}

/// How often a wait for the stream reads the reindex record again.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Read `alias`'s reindex record every `POLL_EVERY` until `ready` finds
/// what it waits for in it; `Ok(None)` once `timeout` passed without.
async fn poll<T>(
    state: &StateStore,
    alias: &str,
    timeout: Duration,
    mut ready: impl FnMut(Option<ReindexState>) -> Result<Option<T>, SnapshotError>,
) -> Result<Option<T>, SnapshotError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = ready(load(state, alias).await?)? {
            return Ok(Some(found));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
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
