//! Snapshot wiring: plugs the real source (connections, exported snapshots,
//! value conversion), transformer and indexer into the `snapshot` module,
//! for the initial load of `sluice run` and for `sluice snapshot`.
//!
//! Keeps DESIGN invariant 4 at the edge: an initial load reads the snapshot
//! the main slot exported at its creation (version P − 1); anything resumed
//! or backfilled later reads a snapshot exported by a temporary slot, whose
//! point P2 is again older than every change the stream has not yet applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use elasticsearch::Elasticsearch;

use crate::cli::{EXIT_CONFIG, EXIT_RUNTIME, SnapshotArgs};

/// Attempts after a retryable failure of `sluice snapshot` (jittered, 1 s
/// doubling to 30 s, so about five minutes of outage in all) before it gives
/// up with exit 1; running it again resumes where it stopped.
const SNAPSHOT_RETRIES: usize = 12;
use crate::config::{Config, STATE_INDEX};
use crate::run::pipeline_config;
use crate::snapshot::backfill::{BackfillRequest, BackfillTarget, backfill};
use crate::snapshot::progress::Progress;
use crate::snapshot::run::SnapshotDeps;
use crate::snapshot::seams::{ExportedSnapshot, PgConnector, SnapshotExporter, ValueConverter};
use crate::snapshot::sink::IndexerSink;
use crate::snapshot::{
    SnapshotError, SnapshotJob, SnapshotOptions, StateStore, TableJob, TableSpec,
};
use crate::source::{self, ReplicationConnection, SnapshotAction, SourceError};
use crate::transform::Transformer;

/// The mapped tables as snapshot specs (row filter and column list included,
/// so filtered rows never leave the server), one per table.
pub fn table_specs(cfg: &Config) -> Vec<TableSpec> {
    cfg.mappings
        .publication_tables()
        .into_iter()
        .map(|t| TableSpec {
            schema: t.schema,
            name: t.table,
            filter: t.row_filter,
            columns: t.columns,
        })
        .collect()
}

fn connector(cfg: &Config) -> PgConnector {
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

async fn converter(pg: &tokio_postgres::Client) -> anyhow::Result<ValueConverter> {
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
fn temporary_slot_exporter(cfg: &Config) -> SnapshotExporter {
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

fn options(cfg: &Config) -> SnapshotOptions {
    SnapshotOptions {
        readers: cfg.snapshot.parallel_readers.max(1),
        chunk_rows: cfg.snapshot.chunk_rows.max(1),
        ..SnapshotOptions::default()
    }
}

async fn deps(
    cfg: &Config,
    es: &Elasticsearch,
    pg: &tokio_postgres::Client,
    exporter: SnapshotExporter,
    overrides: HashMap<String, String>,
) -> anyhow::Result<SnapshotDeps> {
    let sink = IndexerSink::start(
        es.clone(),
        pipeline_config(cfg).indexer,
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
    })
}

/// The initial load's marker in the state index: written before the slot
/// exists, so a crash anywhere between creating the slot and finishing the
/// load is noticed on restart (`pending`) and the load resumed.
pub(crate) fn marker_id(slot: &str) -> String {
    format!("initial|{slot}")
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
        let _ = es
            .delete(elasticsearch::DeleteParts::IndexId(STATE_INDEX, &id))
            .send()
            .await?;
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

/// `sluice snapshot [--table ...]`: backfill while `run` streams (or alone).
pub async fn command(args: &SnapshotArgs) -> i32 {
    match snapshot_command(args).await {
        Ok(()) => 0,
        Err((code, e)) => {
            tracing::error!(error = %format!("{e:#}"), "sluice snapshot failed");
            eprintln!("sluice snapshot: {e:#}");
            code
        }
    }
}

async fn snapshot_command(args: &SnapshotArgs) -> Result<(), (i32, anyhow::Error)> {
    let config_err = |e: anyhow::Error| (EXIT_CONFIG, e);
    let runtime_err = |e: anyhow::Error| (EXIT_RUNTIME, e);
    let mut cfg =
        Config::load(&args.config.config).map_err(|e| config_err(anyhow::anyhow!("{e}")))?;
    crate::run::preflight(&cfg, crate::check::Preflight::Snapshot)
        .await
        .map_err(|f| (f.exit_code(), anyhow::anyhow!("{f}")))?;
    let pg = source::connect_sql(&cfg.postgres)
        .await
        .with_context(|| format!("connecting to PostgreSQL {}", cfg.postgres))
        .map_err(runtime_err)?;
    crate::config::validate_against_database(&mut cfg.mappings, &pg)
        .await
        .map_err(config_err)?;
    let es = crate::sink::client::build_client(&cfg.elasticsearch)
        .map_err(|e| config_err(anyhow::anyhow!("[elasticsearch]: {e}")))?;

    let all = table_specs(&cfg);
    let wanted: Vec<TableSpec> = if args.tables.is_empty() {
        all
    } else {
        let mut out = Vec::new();
        for name in &args.tables {
            let spec = TableSpec::parse(name);
            match all
                .iter()
                .find(|t| t.schema == spec.schema && t.name == spec.name)
            {
                Some(t) => out.push(t.clone()),
                None => {
                    return Err(config_err(anyhow::anyhow!(
                        "--table {name}: no mapping in {} reads this table",
                        cfg.mappings_dir.display()
                    )));
                }
            }
        }
        out
    };
    let targets = if args.reindex {
        reindex_targets(&cfg, &wanted).map_err(config_err)?
    } else {
        backfill_targets(&cfg, &wanted)
    };
    if args.abandon {
        let state = StateStore::new(es.clone(), STATE_INDEX);
        let mut aliases: Vec<&str> = targets.iter().map(|t| t.index.as_str()).collect();
        aliases.dedup();
        for alias in aliases {
            let wait = std::time::Duration::from_secs(args.stream_timeout);
            match crate::snapshot::reindex::abandon(&state, alias, Some(wait)).await {
                Ok(Some(build)) => println!("{alias}: reindex abandoned, {build} deleted"),
                Ok(None) => println!("{alias}: no reindex in progress"),
                Err(e) => {
                    let code = if e.is_retryable() {
                        EXIT_RUNTIME
                    } else {
                        EXIT_CONFIG
                    };
                    return Err((code, anyhow::Error::new(e)));
                }
            }
        }
        return Ok(());
    }
    if !args.reindex {
        // A backfill may come before any `sluice run`: create what is missing.
        let names: Vec<String> = wanted.iter().map(TableSpec::qualified_name).collect();
        crate::run::prepare_indices(&cfg, &es, Some(&names))
            .await
            .map_err(runtime_err)?;
    }
    let deps = deps(
        &cfg,
        &es,
        &pg,
        temporary_slot_exporter(&cfg),
        HashMap::new(),
    )
    .await
    .map_err(runtime_err)?;
    let req = BackfillRequest {
        targets,
        reindex: args.reindex,
        delete_old: args.delete_old,
        gc_deletes: cfg.pipeline.gc_deletes_setting(),
        wait_for_stream: args
            .reindex
            .then(|| std::time::Duration::from_secs(args.stream_timeout)),
        stream_slot: Some(cfg.slot.clone()),
        options: options(&cfg),
        retries: SNAPSHOT_RETRIES,
    };
    let sink = deps.sink.clone();
    let make_sink = |overrides: &std::collections::BTreeMap<String, String>| {
        if overrides.is_empty() {
            return sink;
        }
        // Only the reindexed names: the table's other mappings are not
        // being rebuilt, and the stream keeps them current.
        let only = crate::config::Mappings {
            list: cfg
                .mappings
                .list
                .iter()
                .filter(|m| {
                    matches!(&m.index, crate::config::IndexName::Fixed(n) if overrides.contains_key(&n.to_string()))
                })
                .cloned()
                .collect(),
        };
        Arc::new(IndexerSink::start(
            es.clone(),
            pipeline_config(&cfg).indexer,
            Transformer::new(&only),
            overrides.clone().into_iter().collect(),
        )) as Arc<dyn crate::snapshot::SnapshotSink>
    };
    let summary = backfill(&deps, &req, make_sink).await.map_err(|e| {
        let code = if e.is_retryable() {
            EXIT_RUNTIME
        } else {
            EXIT_CONFIG
        };
        (code, anyhow::Error::new(e))
    })?;
    for t in &summary.tables {
        println!(
            "{}: {} rows read ({} of {} chunks were already done)",
            t.table, t.rows, t.chunks_resumed, t.chunks
        );
    }
    if args.reindex {
        let state = StateStore::new(es.clone(), STATE_INDEX);
        let mut seen = Vec::new();
        for t in &req.targets {
            if seen.contains(&t.index) {
                continue;
            }
            seen.push(t.index.clone());
            if let Ok(Some(r)) = crate::snapshot::reindex::load(&state, &t.index).await {
                let old = if r.old_indices.is_empty() {
                    "no old index".to_string()
                } else if args.delete_old {
                    format!("old {} deleted", r.old_indices.join(", "))
                } else {
                    format!("old {} kept", r.old_indices.join(", "))
                };
                println!("{}: alias now points at {} ({old})", r.alias, r.build_index);
            }
        }
    }
    Ok(())
}

/// `--reindex` targets: one per table and fixed index name, with the
/// mapping files that write that name. A reindex rebuilds a whole index,
/// so every table written to it must be part of the run, and templated
/// names (many indices) cannot be reindexed.
fn reindex_targets(cfg: &Config, tables: &[TableSpec]) -> anyhow::Result<Vec<BackfillTarget>> {
    let mut out = Vec::new();
    for spec in tables {
        let qualified = spec.qualified_name();
        for m in cfg.mappings.for_table(&qualified) {
            let name = match &m.index {
                crate::config::IndexName::Fixed(n) => n.to_string(),
                crate::config::IndexName::Template(_) => anyhow::bail!(
                    "{}: index `{}` is templated; a reindex builds one index behind one alias, \
                     so templated names cannot be reindexed (leave {qualified} out with --table)",
                    m.file.display(),
                    m.index_pattern()
                ),
            };
            if let Some(alias) = &m.alias {
                anyhow::bail!(
                    "{}: the mapping writes `{name}` and adds the alias `{alias}`; a reindex \
                     replaces the name the mapping writes to, and would leave `{alias}` on the old \
                     index. Write and search through one name instead: set index = \"{alias}\" \
                     and remove `alias` (Sluice writes through an alias over one index), restart \
                     `sluice run`, then reindex",
                    m.file.display()
                );
            }
            let writers: Vec<_> = cfg
                .mappings
                .list
                .iter()
                .filter(|w| matches!(&w.index, crate::config::IndexName::Fixed(n) if n.to_string() == name))
                .collect();
            for w in &writers {
                if !tables
                    .iter()
                    .any(|t| t.qualified_name() == *w.qualified_table)
                {
                    anyhow::bail!(
                        "--reindex rebuilds all of `{name}`, which {} also fills from {}: add --table {}",
                        w.file.display(),
                        w.qualified_table,
                        w.qualified_table
                    );
                }
            }
            let mut files = Vec::new();
            for w in &writers {
                let text = std::fs::read_to_string(&w.file)
                    .with_context(|| format!("reading {}", w.file.display()))?;
                files.push(crate::snapshot::reindex::MappingFile {
                    path: w.file.display().to_string(),
                    text,
                });
            }
            out.push(BackfillTarget {
                table: spec.clone(),
                index: name,
                settings: m.index_settings.clone().unwrap_or_default(),
                mappings: m.index_mappings.clone().unwrap_or_default(),
                mapping_files: files,
            });
        }
    }
    Ok(out)
}

/// One backfill target per table and fixed index of its mappings. Templated
/// index names have no single index to protect with tombstones; their rows
/// are still written, because the transformer applies every mapping of a
/// table to each row it reads.
fn backfill_targets(cfg: &Config, tables: &[TableSpec]) -> Vec<BackfillTarget> {
    let mut out = Vec::new();
    for spec in tables {
        let qualified = spec.qualified_name();
        let mut fixed: Vec<BackfillTarget> = cfg
            .mappings
            .for_table(&qualified)
            .filter_map(|m| match &m.index {
                crate::config::IndexName::Fixed(name) => Some(BackfillTarget {
                    table: spec.clone(),
                    index: name.to_string(),
                    settings: m.index_settings.clone().unwrap_or_default(),
                    mappings: m.index_mappings.clone().unwrap_or_default(),
                    mapping_files: Vec::new(),
                }),
                crate::config::IndexName::Template(_) => None,
            })
            .collect();
        if fixed.is_empty() {
            tracing::warn!(table = %qualified, "every mapping of this table has a templated index name: backfilled without extending delete tombstones");
        }
        if fixed.is_empty() {
            // The table must still be read; `{` marks a name with no index
            // behind it, which the backfill leaves out of tombstone handling.
            let m = cfg
                .mappings
                .for_table(&qualified)
                .next()
                .expect("a mapped table");
            fixed.push(BackfillTarget {
                table: spec.clone(),
                index: m.index_pattern(),
                settings: serde_json::Value::Null,
                mappings: serde_json::Value::Null,
                mapping_files: Vec::new(),
            });
        }
        out.extend(fixed);
    }
    out
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
