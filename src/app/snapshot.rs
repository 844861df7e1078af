//! `sluice snapshot`: backfill (or re-index) mapped tables while `sluice
//! run` streams, or alone; resumable, retried on transient failures.
//!
//! The snapshot itself lives in the `snapshot` module and its wiring in
//! `app::load`; this file turns the command line into backfill targets.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::app::load::{deps, options, table_specs, temporary_slot_exporter};
use crate::app::setup::{indexer_config, preflight, prepare_indices};
use crate::app::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::config::{Config, IndexName, Mappings, STATE_INDEX};
use crate::model::PublishedTable;
use crate::sink::Elasticsearch;
use crate::snapshot::backfill::{BackfillRequest, BackfillTarget, backfill};
use crate::snapshot::sink::IndexerSink;
use crate::snapshot::{SnapshotError, SnapshotSink, StateStore};
use crate::source;
use crate::transform::Transformer;

/// Attempts after a retryable failure of `sluice snapshot` (jittered, 1 s
/// doubling to 30 s, so about five minutes of outage in all) before it gives
/// up with exit 1; running it again resumes where it stopped.
const SNAPSHOT_RETRIES: usize = 12;

/// What `sluice snapshot` is asked to do (the command line, as plain data).
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The configuration file.
    pub config: PathBuf,
    /// `schema.table` names; empty: every mapped table.
    pub tables: Vec<String>,
    pub reindex: bool,
    pub delete_old: bool,
    /// With `reindex`: how long to wait for `sluice run` to pick it up.
    pub stream_timeout: Duration,
    pub abandon: bool,
}

/// `sluice snapshot [--table ...]`: backfill while `run` streams (or alone).
pub async fn command(args: &SnapshotRequest) -> i32 {
    match snapshot_command(args).await {
        Ok(()) => 0,
        Err((code, e)) => {
            tracing::error!(error = %format!("{e:#}"), "sluice snapshot failed");
            eprintln!("sluice snapshot: {e:#}");
            code
        }
    }
}

async fn snapshot_command(args: &SnapshotRequest) -> Result<(), (i32, anyhow::Error)> {
    let (cfg, pg, es) = open(&args.config).await?;
    let wanted = wanted_tables(&cfg, &args.tables).map_err(config_err)?;
    let targets = if args.reindex {
        reindex_targets(&cfg, &wanted).map_err(config_err)?
    } else {
        backfill_targets(&cfg, &wanted)
    };
    if args.abandon {
        return abandon(&es, &targets, args.stream_timeout).await;
    }
    let mut rebuilt = Vec::new();
    if !args.reindex {
        // A backfill may come before any `sluice run`: create what is missing.
        let names: Vec<String> = wanted.iter().map(PublishedTable::qualified_name).collect();
        // An index `run` found deleted is rebuilt whole (see index_guard).
        rebuilt = crate::app::index_guard::clear_lost_before_snapshot(&cfg, &es, &names).await?;
        prepare_indices(&cfg, &es, Some(&names))
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
        wait_for_stream: args.reindex.then_some(args.stream_timeout),
        stream_slot: Some(cfg.slot.clone()),
        options: options(&cfg),
        retries: SNAPSHOT_RETRIES,
    };
    let sink = deps.sink.clone();
    let make_sink = |overrides: &BTreeMap<String, String>| {
        if overrides.is_empty() {
            sink
        } else {
            reindex_sink(&cfg, &es, overrides)
        }
    };
    let summary = backfill(&deps, &req, make_sink)
        .await
        .map_err(snapshot_failure)?;
    for t in &summary.tables {
        println!(
            "{}: {} rows read ({} of {} chunks were already done)",
            t.table, t.rows, t.chunks_resumed, t.chunks
        );
    }
    if args.reindex {
        print_swaps(&es, &req.targets, args.delete_old).await;
    }
    crate::app::index_guard::forget_lost(&cfg, &es, &rebuilt)
        .await
        .map_err(runtime_err)?;
    Ok(())
}

pub(crate) fn config_err(e: anyhow::Error) -> (i32, anyhow::Error) {
    (EXIT_CONFIG, e)
}

pub(crate) fn runtime_err(e: anyhow::Error) -> (i32, anyhow::Error) {
    (EXIT_RUNTIME, e)
}

/// A failed snapshot: worth running again (exit 1) or not (exit 2).
fn snapshot_failure(e: SnapshotError) -> (i32, anyhow::Error) {
    let code = if e.is_retryable() {
        EXIT_RUNTIME
    } else {
        EXIT_CONFIG
    };
    (code, anyhow::Error::new(e))
}

/// The configuration, checked against PostgreSQL, and both connections.
pub(crate) async fn open(
    config: &std::path::Path,
) -> Result<(Config, tokio_postgres::Client, Elasticsearch), (i32, anyhow::Error)> {
    let mut cfg = Config::load(config).map_err(|e| config_err(anyhow::anyhow!("{e}")))?;
    preflight(&cfg, crate::app::check::Preflight::Snapshot)
        .await
        .map_err(|f| (f.exit_code(), anyhow::anyhow!("{f}")))?;
    let pg = source::connect_sql(&cfg.postgres)
        .await
        .with_context(|| format!("connecting to PostgreSQL {}", cfg.postgres))
        .map_err(runtime_err)?;
    let catalog = source::catalog::read_schemas(&pg, &cfg.mappings.schemas())
        .await
        .map_err(|e| config_err(e.into()))?;
    (cfg.mappings.validate_against_catalog(&catalog)).map_err(|e| config_err(e.into()))?;
    let es = crate::sink::client::build_client(&cfg.elasticsearch)
        .map_err(|e| config_err(anyhow::anyhow!("[elasticsearch]: {e}")))?;
    Ok((cfg, pg, es))
}

/// The mapped tables `--table` names (all of them without it).
pub(crate) fn wanted_tables(cfg: &Config, names: &[String]) -> anyhow::Result<Vec<PublishedTable>> {
    let all = table_specs(cfg);
    if names.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in names {
        let spec = PublishedTable::parse(name);
        match all.iter().find(|t| t.table == spec.table) {
            Some(t) => out.push(t.clone()),
            None => anyhow::bail!(
                "--table {name}: no mapping in {} reads this table",
                cfg.mappings_dir.display()
            ),
        }
    }
    Ok(out)
}

/// `--reindex --abandon`: give up the reindex of every target's name.
async fn abandon(
    es: &Elasticsearch,
    targets: &[BackfillTarget],
    wait: Duration,
) -> Result<(), (i32, anyhow::Error)> {
    let state = StateStore::new(es.clone(), STATE_INDEX);
    let mut aliases: Vec<&str> = targets.iter().map(|t| t.index.as_str()).collect();
    aliases.dedup();
    for alias in aliases {
        match crate::snapshot::reindex::abandon(&state, alias, Some(wait)).await {
            Ok(Some(build)) => println!("{alias}: reindex abandoned, {build} deleted"),
            Ok(None) => println!("{alias}: no reindex in progress"),
            Err(e) => return Err(snapshot_failure(e)),
        }
    }
    Ok(())
}

/// The sink of a reindex: only the reindexed names, written to their build
/// indices. The table's other mappings are not being rebuilt, and the
/// stream keeps them current.
fn reindex_sink(
    cfg: &Config,
    es: &Elasticsearch,
    overrides: &BTreeMap<String, String>,
) -> Arc<dyn SnapshotSink> {
    let only = Mappings {
        list: cfg
            .mappings
            .list
            .iter()
            .filter(|m| {
                matches!(&m.index, IndexName::Fixed(n) if overrides.contains_key(&n.to_string()))
            })
            .cloned()
            .collect(),
    };
    Arc::new(IndexerSink::start(
        es.clone(),
        indexer_config(cfg),
        Transformer::new(&only),
        overrides.clone().into_iter().collect(),
    ))
}

/// Where each reindexed name points now, and what became of its old index.
async fn print_swaps(es: &Elasticsearch, targets: &[BackfillTarget], delete_old: bool) {
    let state = StateStore::new(es.clone(), STATE_INDEX);
    let mut seen = Vec::new();
    for t in targets {
        if seen.contains(&t.index) {
            continue;
        }
        seen.push(t.index.clone());
        if let Ok(Some(r)) = crate::snapshot::reindex::load(&state, &t.index).await {
            let old = if r.old_indices.is_empty() {
                "no old index".to_string()
            } else if delete_old {
                format!("old {} deleted", r.old_indices.join(", "))
            } else {
                format!("old {} kept", r.old_indices.join(", "))
            };
            println!("{}: alias now points at {} ({old})", r.alias, r.build_index);
        }
    }
}

/// `--reindex` targets: one per table and fixed index name, with the
/// mapping files that write that name. A reindex rebuilds a whole index,
/// so every table written to it must be part of the run, and templated
/// names (many indices) cannot be reindexed.
fn reindex_targets(cfg: &Config, tables: &[PublishedTable]) -> anyhow::Result<Vec<BackfillTarget>> {
    let mut out = Vec::new();
    for spec in tables {
        let qualified = spec.qualified_name();
        for m in cfg.mappings.for_table(&qualified) {
            let name = match &m.index {
                IndexName::Fixed(n) => n.to_string(),
                IndexName::Template(_) => anyhow::bail!(
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
                .filter(|w| matches!(&w.index, IndexName::Fixed(n) if n.to_string() == name))
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
fn backfill_targets(cfg: &Config, tables: &[PublishedTable]) -> Vec<BackfillTarget> {
    let mut out = Vec::new();
    for spec in tables {
        let qualified = spec.qualified_name();
        let mut fixed: Vec<BackfillTarget> = cfg
            .mappings
            .for_table(&qualified)
            .filter_map(|m| match &m.index {
                IndexName::Fixed(name) => Some(BackfillTarget {
                    table: spec.clone(),
                    index: name.to_string(),
                    settings: m.index_settings.clone().unwrap_or_default(),
                    mappings: m.index_mappings.clone().unwrap_or_default(),
                    mapping_files: Vec::new(),
                }),
                IndexName::Template(_) => None,
            })
            .collect();
        if fixed.is_empty() {
            tracing::warn!(table = %qualified, "every mapping of this table has a templated index name: backfilled without extending delete tombstones");
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
