//! Snapshot wiring shared by `sluice run`'s initial load and `sluice
//! snapshot`: plugs the real source (connections, exported snapshots, value
//! conversion), transformer and indexer into the `snapshot` module, and
//! keeps the initial load's marker in the state index.
//!
//! Keeps DESIGN invariant 4 at the edge: an initial load reads the snapshot
//! the main slot exported at its creation (version P − 1); anything resumed
//! or backfilled later reads a snapshot exported by a temporary slot, whose
//! point P2 is again older than every change the stream has not yet applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::app::setup::indexer_config;
use crate::config::{Config, STATE_INDEX};
use crate::model::PublishedTable;
use crate::sink::Elasticsearch;
use crate::sink::admin::AdminError;
use crate::snapshot::progress::Progress;
use crate::snapshot::run::SnapshotDeps;
use crate::snapshot::seams::{ExportedSnapshot, PgConnector, SnapshotExporter, ValueConverter};
use crate::snapshot::sink::IndexerSink;
use crate::snapshot::{SnapshotError, SnapshotJob, SnapshotOptions, StateStore, TableJob};
use crate::source::{self, ReplicationConnection, SnapshotAction, SourceError};
use crate::transform::Transformer;

/// The mapped tables as snapshot specs (row filter and column list included,
/// so filtered rows never leave the server), one per table.
/// The tables a snapshot reads: those a mapping is fed by (a table only
/// joined into nested documents is read with its roots, never alone).
pub fn table_specs(cfg: &Config) -> Vec<PublishedTable> {
    let mut specs = cfg.mappings.publication_tables();
    specs.retain(|s| cfg.mappings.for_table(&s.qualified_name()).next().is_some());
    specs
}

pub(crate) fn connector(cfg: &Config) -> PgConnector {
    let pg = cfg.postgres.clone();
    Arc::new(move || {
        let pg = pg.clone();
        Box::pin(async move {
            source::connect_sql(&pg).await.map_err(|e| match e {
                SourceError::Sql(e) => SnapshotError::Postgres(e),
                other => SnapshotError::Connect(other.to_string()),
            })
        })
    })
}

pub(crate) async fn converter(pg: &tokio_postgres::Client) -> anyhow::Result<ValueConverter> {
    let catalog = source::TypeCatalog::load(pg)
        .await
        .context("reading the type catalog")?;
    let opts = source::ValueOptions::default();
    Ok(Arc::new(move |oid, text| {
        source::convert_text(oid, text, &opts, &catalog).map_err(|e| e.to_string())
    }))
}

/// The main slot's exported snapshot, handed out once. Dropping the guard
/// (the replication connection) after every reader imported it is fine: the
/// slot is permanent and streaming reconnects to it.
fn main_slot_exporter(
    conn: ReplicationConnection,
    name: String,
    point: crate::Lsn,
) -> SnapshotExporter {
    let once = Arc::new(Mutex::new(Some(conn)));
    Arc::new(move || {
        let conn = once.lock().expect("exporter").take();
        let name = name.clone();
        Box::pin(async move {
            let conn = conn.ok_or("the slot's exported snapshot was already used")?;
            Ok(ExportedSnapshot {
                name,
                consistent_point: point,
                guard: Box::new(conn),
            })
        })
    })
}

/// A fresh snapshot from a temporary slot, for resumed and later backfills.
pub(crate) fn temporary_slot_exporter(cfg: &Config) -> SnapshotExporter {
    let pg = cfg.postgres.clone();
    let base = cfg.slot.clone();
    Arc::new(move || {
        let pg = pg.clone();
        let name = temporary_slot_name(&base, rand::random::<u64>());
        Box::pin(async move {
            let mut conn = ReplicationConnection::connect(&pg)
                .await
                .map_err(|e| e.to_string())?;
            let slot = conn
                .create_slot(&name, true, SnapshotAction::Export)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExportedSnapshot {
                name: slot
                    .snapshot_name
                    .ok_or("the temporary slot exported no snapshot")?,
                consistent_point: slot.consistent_point,
                guard: Box::new(conn),
            })
        })
    })
}

/// `{slot}_snap_{random}`: unique across processes and containers (where
/// every process may be pid 1, so a pid would collide), and a valid slot
/// name (lower-case letters, digits, `_`; at most 63 bytes) for any valid
/// `slot`, whose prefix is shortened to make room for the suffix.
fn temporary_slot_name(slot: &str, random: u64) -> String {
    let suffix = format!("_snap_{random:016x}");
    let keep = 63 - suffix.len();
    let prefix: String = slot.chars().take(keep).collect();
    format!("{prefix}{suffix}")
}

pub(crate) fn options(cfg: &Config) -> SnapshotOptions {
    SnapshotOptions {
        readers: cfg.snapshot.parallel_readers.max(1),
        chunk_rows: cfg.snapshot.chunk_rows.max(1),
        ..SnapshotOptions::default()
    }
}

pub(crate) async fn deps(
    cfg: &Config,
    es: &Elasticsearch,
    pg: &tokio_postgres::Client,
    exporter: SnapshotExporter,
    overrides: HashMap<String, String>,
) -> anyhow::Result<SnapshotDeps> {
    let sink = IndexerSink::start(
        es.clone(),
        indexer_config(cfg),
        Transformer::new(&cfg.mappings),
        overrides,
    );
    Ok(SnapshotDeps {
        connector: connector(cfg),
        exporter,
        converter: converter(pg).await?,
        sink: Arc::new(sink),
        state: StateStore::new(es.clone(), STATE_INDEX),
        progress: Arc::new(Progress::auto()),
        documents: cfg
            .mappings
            .list
            .iter()
            .filter_map(|m| m.tree.clone())
            .collect(),
    })
}

/// The initial load's marker in the state index: written before the slot
/// exists, so a crash anywhere between creating the slot and finishing the
/// load is noticed on restart (`pending`) and the load resumed.
pub(crate) fn marker_id(slot: &str) -> String {
    format!("initial|{slot}")
}

/// The state-index record of the publication's identity a `sluice run` on
/// `slot` streams with (see `source::publication_guard`). Keyed by the
/// database too: publication and table OIDs mean nothing in another one,
/// and deployments on other servers may reuse the slot name.
pub(crate) fn publication_record_id(slot: &str, pg: &crate::source::PgConnectConfig) -> String {
    format!("publication|{slot}|{}:{}/{}", pg.host, pg.port, pg.dbname)
}

pub(crate) fn target(slot: &str) -> String {
    format!("initial:{slot}")
}

/// Before creating the slot: forget any earlier initial load for this slot
/// name and mark a new one pending.
pub async fn begin_initial(cfg: &Config, es: &Elasticsearch) -> Result<(), SnapshotError> {
    let state = StateStore::new(es.clone(), STATE_INDEX);
    state.ensure().await?;
    for spec in table_specs(cfg) {
        let id = format!("table|{}|{}", spec.qualified_name(), target(&cfg.slot));
        // Gone already is as good as deleted.
        match state.records().delete(&id, false).await {
            Ok(()) | Err(AdminError::Status { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    state
        .put(
            &marker_id(&cfg.slot),
            &serde_json::json!({"kind": "initial", "status": "pending"}),
        )
        .await
}

/// Why `run` must not create the slot anew, if it must not: the initial
/// load for this slot name finished earlier, so its indices hold documents,
/// and a missing slot means it was dropped or lost (a failover to a standby
/// does not carry logical slots). Its changes since the last confirmed
/// position are gone; snapshotting again over the same indices would keep
/// the documents of rows deleted in that gap forever, silently. So the
/// rebuild is left to a person, with the recipe (docs/operations.md, "A
/// lost slot").
pub async fn lost_slot_refusal(
    cfg: &Config,
    es: &Elasticsearch,
) -> Result<Option<String>, SnapshotError> {
    let state = StateStore::new(es.clone(), STATE_INDEX);
    let done = state
        .get(&marker_id(&cfg.slot))
        .await?
        .is_some_and(|d| d["status"] == "done");
    if !done {
        return Ok(None);
    }
    let mut indices: Vec<String> = cfg
        .mappings
        .list
        .iter()
        .map(|m| m.index_pattern())
        .collect();
    indices.sort();
    indices.dedup();
    Ok(Some(format!(
        "replication slot `{slot}` does not exist, but its initial snapshot finished earlier \
         (`{marker}` in index {STATE_INDEX}): the slot was dropped or lost (a failover does not \
         carry logical slots), so the changes since its last confirmed position are gone. \
         Refusing to create a new slot and snapshot over the existing indices: documents of rows \
         deleted in the gap would stay forever. Rebuild: `sluice teardown --yes-drop-slot` \
         (removes this deployment's state), delete the target indices ({}), then `sluice run` \
         loads every table anew (see docs/operations.md, section \"A lost slot\")",
        indices.join(", "),
        slot = cfg.slot,
        marker = marker_id(&cfg.slot),
    )))
}

/// Whether an initial load for this slot was started and not finished.
pub async fn initial_pending(cfg: &Config, es: &Elasticsearch) -> Result<bool, SnapshotError> {
    let state = StateStore::new(es.clone(), STATE_INDEX);
    state.ensure().await?;
    Ok(state
        .get(&marker_id(&cfg.slot))
        .await?
        .is_some_and(|d| d["status"] == "pending"))
}

/// Load every mapped table: from the main slot's snapshot when `exported`
/// is given (the slot was just created), else from a temporary slot's
/// (resuming an interrupted initial load: only the chunks not yet recorded).
pub async fn initial_load(
    cfg: &Config,
    es: &Elasticsearch,
    pg: &tokio_postgres::Client,
    exported: Option<(ReplicationConnection, String, crate::Lsn)>,
) -> anyhow::Result<()> {
    let exporter = match exported {
        Some((conn, name, point)) => main_slot_exporter(conn, name, point),
        None => temporary_slot_exporter(cfg),
    };
    let deps = deps(cfg, es, pg, exporter, HashMap::new()).await?;
    let job = SnapshotJob {
        tables: table_specs(cfg)
            .into_iter()
            .map(|spec| TableJob {
                spec,
                target: target(&cfg.slot),
            })
            .collect(),
        options: options(cfg),
    };
    let summary = crate::snapshot::run_snapshot(&deps, &job)
        .await
        .context("initial snapshot")?;
    let rows: u64 = summary.tables.iter().map(|t| t.rows).sum();
    tracing::info!(tables = summary.tables.len(), rows, point = ?summary.point, "initial snapshot done");
    deps.state
        .put(
            &marker_id(&cfg.slot),
            &serde_json::json!({"kind": "initial", "status": "done"}),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::temporary_slot_name;

    #[test]
    fn temporary_slot_names_are_random_valid_and_at_most_63_bytes() {
        let a = temporary_slot_name("sluice", rand::random());
        let b = temporary_slot_name("sluice", rand::random());
        assert_ne!(a, b, "two processes with the same pid still differ");
        assert!(a.starts_with("sluice_snap_") && a.len() == "sluice_snap_".len() + 16);
        let long = "s".repeat(63);
        for name in [
            a,
            temporary_slot_name(&long, u64::MAX),
            temporary_slot_name(&long, 0),
        ] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{name}"
            );
        }
        assert_eq!(
            temporary_slot_name(&long, 0xab),
            format!("{}_snap_00000000000000ab", "s".repeat(41))
        );
    }
}
