//! `sluice status` and `sluice teardown`: what the slot, the publication and
//! Sluice's indices look like, and how to remove them safely.
//!
//! Reads PostgreSQL through `source::inspect` (the slot and who holds it,
//! the publication, the server's WAL position) and Elasticsearch through
//! the sink (dead-letter count, snapshot progress in the state index, the
//! cluster's health); this module makes the report, its warnings and its
//! words. The state index's document shape belongs to the snapshot
//! feature, so the reader is tolerant: a missing index means "no snapshot
//! recorded", unknown fields are ignored.
//!
//! Teardown keeps DESIGN invariant 1 safe: it refuses to drop a slot that a
//! running Sluice is streaming from (dropping it would lose the checkpoint
//! under a live process), and it checks everything before dropping anything.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::Lsn;
use crate::source::PgConnectConfig;
use crate::source::{SourceError, inspect, standby};

pub mod es_health;
mod pg_conn;
mod render;
mod teardown;

use crate::sink::Elasticsearch;
use crate::sink::admin::{self, AdminError};
use crate::sink::build_client;
use crate::sink::client::ClientError;
use crate::sink::state_store::StateIndex;
pub use pg_conn::connect_pg;
pub use render::{human_bytes, render_human, render_json, render_teardown};
pub use teardown::{TeardownError, TeardownReport, teardown, teardown_command};

/// The names status and teardown look at, from the configuration.
#[derive(Debug, Clone)]
pub struct Targets {
    pub slot: String,
    pub publication: String,
    pub dead_letter_index: String,
    pub state_index: String,
    /// The indices (or aliases) the mappings write to, for their state.
    pub indices: Vec<String>,
}

impl Targets {
    pub fn of(cfg: &crate::config::Config) -> Targets {
        Targets {
            slot: cfg.slot.clone(),
            publication: cfg.publication.clone(),
            dead_letter_index: cfg.pipeline.dead_letter_index.clone(),
            state_index: crate::config::STATE_INDEX.to_string(),
            indices: cfg.mappings.fixed_indices(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// `user@host:port/dbname` (never the password).
    pub database: String,
    pub server_version: String,
    pub wal_level: String,
    pub in_recovery: bool,
    #[serde(serialize_with = "lsn_text")]
    pub server_wal_lsn: Lsn,
    pub slot: SlotStatus,
    pub publication: PublicationStatus,
    pub snapshots: SnapshotStatus,
    pub dead_letters: DeadLetterStatus,
    /// Cluster health and the state of the mapped indices.
    pub elasticsearch: es_health::EsStatus,
    /// Problems an operator should act on, in plain words.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotStatus {
    Missing { name: String },
    Present(Box<SlotInfo>),
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub name: String,
    pub slot_type: String,
    pub plugin: Option<String>,
    /// The database the slot belongs to (logical slots are per database).
    pub database: Option<String>,
    pub active: bool,
    pub active_pid: Option<i32>,
    /// `application_name` of the process holding the slot, if visible.
    pub active_application: Option<String>,
    #[serde(serialize_with = "opt_lsn_text")]
    pub confirmed_flush_lsn: Option<Lsn>,
    #[serde(serialize_with = "opt_lsn_text")]
    pub restart_lsn: Option<Lsn>,
    /// Server WAL position minus confirmed flush LSN.
    pub lag_bytes: Option<u64>,
    /// Server WAL position minus restart LSN: what the slot keeps on disk.
    pub retained_wal_bytes: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is in danger of
    /// losing WAL (`max_slot_wal_keep_size`); none when unlimited.
    pub safe_wal_size: Option<i64>,
    /// `sluice run` processes waiting to take the slot over (their SQL
    /// sessions' server pids), each with what it waits for.
    pub standbys: Vec<StandbyInfo>,
}

/// One waiting `sluice run` (see `source::standby`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StandbyInfo {
    /// The server pid of the standby's SQL session.
    pub pid: i32,
    /// Who holds the slot: the walsender streaming from it, or the session
    /// of a process creating it or loading its initial snapshot.
    pub slot_held_by: Option<i32>,
    /// `standby, slot held by pid N`.
    pub state: String,
}

impl StandbyInfo {
    pub fn new(pid: i32, slot_held_by: Option<i32>) -> StandbyInfo {
        let state = match slot_held_by {
            Some(n) => format!("standby, slot held by pid {n}"),
            None => "standby, slot free: taking over".into(),
        };
        StandbyInfo {
            pid,
            slot_held_by,
            state,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PublicationStatus {
    pub name: String,
    pub exists: bool,
    pub owner: Option<String>,
    pub all_tables: bool,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// The state index does not exist: no snapshot ever recorded progress.
    NoneRecorded { index: String },
    /// Elasticsearch could not be read; the PostgreSQL part still shows.
    Unavailable { index: String, error: String },
    Recorded {
        index: String,
        tables: Vec<TableSnapshot>,
        /// Documents without a `table` field (another writer, another version).
        unrecognized_documents: u64,
        /// More documents than one read returns; the counts are partial.
        truncated: bool,
        /// `sluice snapshot --reindex` records, newest first.
        #[serde(default)]
        reindexes: Vec<ReindexSummary>,
    },
}

/// One `--reindex`, as its state document tells it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReindexSummary {
    /// The name searches use (an alias once swapped).
    pub alias: String,
    pub build_index: String,
    /// `building`, `swapping`, `swapped` or `abandoning`.
    pub status: String,
    /// The commit LSN from which the stream writes both indices, once a
    /// running `sluice run` acknowledged the reindex.
    pub dual_write_from: Option<String>,
    /// The slot whose `sluice run` must dual-write.
    pub slot: Option<String>,
    pub started_at: Option<String>,
}

/// The reindex records among the state documents, newest first.
pub fn summarize_reindex_docs(docs: &[Value]) -> Vec<ReindexSummary> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let mut out: Vec<ReindexSummary> = docs
        .iter()
        .filter(|d| d["kind"] == "reindex")
        .filter_map(|d| {
            Some(ReindexSummary {
                alias: text(&d["alias"])?,
                build_index: text(&d["build_index"]).unwrap_or_default(),
                status: text(&d["status"]).unwrap_or_else(|| "unknown".into()),
                dual_write_from: text(&d["dual_write_from"]),
                slot: text(&d["slot"]),
                started_at: text(&d["started_at"]),
            })
        })
        .collect();
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    out
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TableSnapshot {
    pub table: String,
    pub chunks: u64,
    pub chunks_done: u64,
    /// Chunk count per state word as stored (`done`, `running`, ...).
    pub states: BTreeMap<String, u64>,
    pub rows: u64,
    pub last_update: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterStatus {
    pub index: String,
    /// `None`: the dead-letter index does not exist (nothing was rejected),
    /// or it could not be read (`error` says why).
    pub count: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    PgConnect { target: String, message: String },
    #[error("PostgreSQL query failed ({what}) on {target}: {message}")]
    PgQuery {
        what: &'static str,
        target: String,
        message: String,
    },

    #[error("Elasticsearch request failed ({what}): {message}")]
    Es { what: &'static str, message: String },
    #[error(transparent)]
    EsClient(#[from] ClientError),
}

impl StatusError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StatusError::EsClient(_) => crate::app::EXIT_CONFIG,
            _ => crate::app::EXIT_RUNTIME,
        }
    }
}

fn lsn_text<S: serde::Serializer>(l: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&l.to_string())
}

fn opt_lsn_text<S: serde::Serializer>(l: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match l {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

fn pg_err(
    what: &'static str,
    pg: &PgConnectConfig,
) -> impl Fn(tokio_postgres::Error) -> StatusError {
    let target = pg.to_string();
    move |e| StatusError::PgQuery {
        what,
        target: target.clone(),
        message: pg_conn::describe_pg_error(&e),
    }
}

/// Reads the slot's row; `Missing` if there is none.
async fn read_slot(
    client: &tokio_postgres::Client,
    pg: &PgConnectConfig,
    slot: &str,
    server_lsn: Lsn,
) -> Result<SlotStatus, StatusError> {
    let row = inspect::slot(client, slot)
        .await
        .map_err(pg_err("reading pg_replication_slots", pg))?;
    let Some(row) = row else {
        return Ok(SlotStatus::Missing { name: slot.into() });
    };
    let diff = |l: Option<Lsn>| l.map(|l| server_lsn.0.saturating_sub(l.0));
    let standby_err = |e: SourceError| StatusError::PgQuery {
        what: "reading the standbys in pg_stat_activity",
        target: pg.to_string(),
        message: e.to_string(),
    };
    let holder = standby::slot_holder(client, slot)
        .await
        .map_err(standby_err)?;
    let standbys = standby::standby_pids(client, slot)
        .await
        .map_err(standby_err)?
        .into_iter()
        .map(|pid| StandbyInfo::new(pid, holder))
        .collect();
    Ok(SlotStatus::Present(Box::new(SlotInfo {
        name: slot.into(),
        slot_type: row.slot_type,
        plugin: row.plugin,
        database: row.database,
        active: row.active,
        active_pid: row.active_pid,
        active_application: row.application,
        confirmed_flush_lsn: row.confirmed_flush,
        restart_lsn: row.restart,
        lag_bytes: diff(row.confirmed_flush),
        retained_wal_bytes: diff(row.restart),
        wal_status: row.wal_status,
        safe_wal_size: row.safe_wal_size,
        standbys,
    })))
}

async fn server_wal_lsn(
    client: &tokio_postgres::Client,
    pg: &PgConnectConfig,
) -> Result<(Lsn, bool), StatusError> {
    let at = inspect::wal_position(client)
        .await
        .map_err(pg_err("reading the server's WAL position", pg))?;
    Ok((at.lsn, at.in_recovery))
}

async fn read_publication(
    client: &tokio_postgres::Client,
    pg: &PgConnectConfig,
    name: &str,
) -> Result<PublicationStatus, StatusError> {
    let row = inspect::publication(client, name)
        .await
        .map_err(pg_err("reading pg_publication", pg))?;
    let Some(row) = row else {
        return Ok(PublicationStatus {
            name: name.into(),
            exists: false,
            owner: None,
            all_tables: false,
            tables: vec![],
        });
    };
    let tables = inspect::publication_tables(client, name)
        .await
        .map_err(pg_err("reading pg_publication_tables", pg))?;
    Ok(PublicationStatus {
        name: name.into(),
        exists: true,
        owner: row.owner,
        all_tables: row.all_tables,
        tables,
    })
}

/// Gathers the whole report. PostgreSQL and Elasticsearch are both required:
/// an unreachable server is an error, not a half-empty report.
pub async fn gather(
    pg: &PgConnectConfig,
    es: &Elasticsearch,
    targets: &Targets,
) -> Result<StatusReport, StatusError> {
    let client = connect_pg(pg, "sluice-status").await?;
    gather_with(&client, pg, es, targets).await
}

/// [`gather`] on an open session (the status page keeps one open instead
/// of connecting for every read).
pub async fn gather_with(
    client: &tokio_postgres::Client,
    pg: &PgConnectConfig,
    es: &Elasticsearch,
    targets: &Targets,
) -> Result<StatusReport, StatusError> {
    let (server_version, wal_level) = inspect::version_and_wal_level(client)
        .await
        .map_err(pg_err("reading server settings", pg))?;
    let (server_lsn, in_recovery) = server_wal_lsn(client, pg).await?;
    let slot = read_slot(client, pg, &targets.slot, server_lsn).await?;
    let publication = read_publication(client, pg, &targets.publication).await?;
    // During an Elasticsearch outage the slot is what an operator needs to
    // see (is WAL piling up?), so Elasticsearch errors become part of the
    // report instead of hiding it.
    let snapshots = read_snapshots(es, &targets.state_index)
        .await
        .unwrap_or_else(|e| SnapshotStatus::Unavailable {
            index: targets.state_index.clone(),
            error: e.to_string(),
        });
    let dead_letters = match count_docs(es, &targets.dead_letter_index).await {
        Ok(count) => DeadLetterStatus {
            index: targets.dead_letter_index.clone(),
            count,
            error: None,
        },
        Err(e) => DeadLetterStatus {
            index: targets.dead_letter_index.clone(),
            count: None,
            error: Some(e.to_string()),
        },
    };
    let elasticsearch = es_health::read(es, &targets.indices).await;
    let mut report = StatusReport {
        database: pg.to_string(),
        server_version,
        wal_level,
        in_recovery,
        server_wal_lsn: server_lsn,
        slot,
        publication,
        snapshots,
        dead_letters,
        elasticsearch,
        warnings: vec![],
    };
    report.warnings = warnings(&report, &pg.dbname);
    Ok(report)
}

fn warnings(r: &StatusReport, dbname: &str) -> Vec<String> {
    let mut w = vec![];
    if r.wal_level != "logical" {
        w.push(format!(
            "wal_level is {}: logical replication needs wal_level = logical (then restart PostgreSQL)",
            r.wal_level
        ));
    }
    match &r.slot {
        SlotStatus::Missing { name } => w.push(format!(
            "replication slot {name} does not exist: `sluice run` creates it (with an initial snapshot)"
        )),
        SlotStatus::Present(s) => {
            if s.database.as_deref().is_some_and(|d| d != dbname) {
                w.push(format!(
                    "slot {} belongs to database {}, not {dbname}: another application uses this slot name",
                    s.name,
                    s.database.as_deref().unwrap_or("?")
                ));
            }
            if s.wal_status.as_deref() == Some("lost") {
                w.push(format!(
                    "slot {} has lost required WAL (max_slot_wal_keep_size): it cannot stream again; \
                     tear down and run again with a fresh snapshot",
                    s.name
                ));
            } else if s.wal_status.as_deref() == Some("unreserved") {
                w.push(format!(
                    "slot {} is about to lose WAL (wal_status unreserved): Sluice must catch up now",
                    s.name
                ));
            }
            if !s.active {
                w.push(format!(
                    "slot {} is not in use: no Sluice is streaming, and the slot keeps WAL on the server's disk",
                    s.name
                ));
            }
        }
    }
    if !r.publication.exists {
        w.push(format!(
            "publication {} does not exist: `sluice run` creates it, or create it as a table owner (see docs/operations.md)",
            r.publication.name
        ));
    }
    w.extend(es_health::warnings(&r.elasticsearch));
    if let Some(e) = &r.dead_letters.error {
        w.push(format!("Elasticsearch could not be read: {e}"));
    }
    if r.dead_letters.count.is_some_and(|c| c > 0) {
        w.push(format!(
            "{} documents in the dead-letter index {}: Elasticsearch rejected them; fix the mapping and re-snapshot those rows",
            r.dead_letters.count.unwrap_or(0),
            r.dead_letters.index
        ));
    }
    w
}

fn es_err(what: &'static str) -> impl Fn(AdminError) -> StatusError {
    move |e| StatusError::Es {
        what,
        message: e.describe(),
    }
}

/// Document count of `index`, `None` if it does not exist.
async fn count_docs(es: &Elasticsearch, index: &str) -> Result<Option<u64>, StatusError> {
    admin::count_docs(es, index)
        .await
        .map_err(es_err("counting dead letters"))
}

/// How many state documents one status read looks at.
const STATE_READ_LIMIT: u64 = 10_000;

async fn read_snapshots(es: &Elasticsearch, index: &str) -> Result<SnapshotStatus, StatusError> {
    let read = StateIndex::new(es.clone(), index)
        .read_all(STATE_READ_LIMIT)
        .await
        .map_err(es_err("reading the snapshot state index"))?;
    let Some(page) = read else {
        return Ok(SnapshotStatus::NoneRecorded {
            index: index.into(),
        });
    };
    let sources: Vec<Value> = page.records.into_iter().map(|r| r.source).collect();
    let (tables, unrecognized) = summarize_snapshot_docs(&sources);
    Ok(SnapshotStatus::Recorded {
        index: index.into(),
        tables,
        unrecognized_documents: unrecognized,
        truncated: page.total > sources.len() as u64,
        reindexes: summarize_reindex_docs(&sources),
    })
}

fn is_done_word(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "done" | "complete" | "completed" | "finished" | "succeeded"
    )
}

/// Folds the snapshot feature's state documents into one line per table
/// and target: a `kind = "table"` document holds the plan (`plan`, one entry
/// per chunk), `status` and `run_id`; `kind = "chunk"` documents record each
/// chunk of a run once it is durable (`run_id`, `rows`, `done_at`). Chunks of
/// superseded runs, and other kinds (initial-load markers, reindexes,
/// tombstones), are not counted; documents with no `kind` are unrecognized.
pub fn summarize_snapshot_docs(docs: &[Value]) -> (Vec<TableSnapshot>, u64) {
    let mut tables: BTreeMap<String, TableSnapshot> = BTreeMap::new();
    let mut by_run: BTreeMap<String, String> = BTreeMap::new();
    let mut unrecognized = 0;
    for d in docs.iter().filter(|d| d["kind"] == "table") {
        let (Some(table), Some(run)) = (d["table"].as_str(), d["run_id"].as_str()) else {
            unrecognized += 1;
            continue;
        };
        let key = match d["target"].as_str() {
            Some(target) => format!("{table} → {target}"),
            None => table.to_string(),
        };
        let state = d["status"].as_str().unwrap_or("unknown").to_string();
        let t = TableSnapshot {
            table: key.clone(),
            chunks: d["plan"].as_array().map_or(0, |p| p.len() as u64),
            states: BTreeMap::from([(state, 1)]),
            last_update: d["finished_at"]
                .as_str()
                .or_else(|| d["started_at"].as_str())
                .map(str::to_string),
            ..Default::default()
        };
        by_run.insert(run.to_string(), key.clone());
        tables.insert(key, t);
    }
    for d in docs {
        match d["kind"].as_str() {
            Some("table") => {}
            Some("chunk") => {
                let Some(t) = d["run_id"]
                    .as_str()
                    .and_then(|r| by_run.get(r))
                    .and_then(|k| tables.get_mut(k))
                else {
                    continue; // a superseded run
                };
                t.chunks_done += 1;
                t.rows += d["rows"].as_u64().unwrap_or(0);
                if let Some(u) = d["done_at"].as_str()
                    && t.last_update.as_deref().is_none_or(|l| l < u)
                {
                    t.last_update = Some(u.to_string());
                }
            }
            Some(_) => {}
            None => unrecognized += 1,
        }
    }
    (tables.into_values().collect(), unrecognized)
}

/// `sluice status [--json]` in one call: connects to both servers and
/// returns the text to print on stdout.
pub async fn status_command(
    pg: &PgConnectConfig,
    es: &crate::sink::EsConfig,
    targets: &Targets,
    json: bool,
) -> Result<String, StatusError> {
    let client = build_client(es)?;
    let report = gather(pg, &client, targets).await?;
    Ok(if json {
        render_json(&report) + "\n"
    } else {
        render_human(&report)
    })
}

// ---- slot gauges ---------------------------------------------------------------

/// Refreshes `sluice_replication_lag_bytes` and `sluice_slot_retained_wal_bytes`
/// from the server every `interval` until `shutdown` resolves. Spawn it beside
/// the pipeline; a failed read is logged and retried at the next tick (the
/// gauges keep their last values).
pub async fn run_slot_gauges(
    pg: PgConnectConfig,
    slot: String,
    interval: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match connect_pg(&pg, "sluice-metrics").await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read slot gauges");
                    continue;
                }
            };
        }
        let Some(c) = &client else { continue };
        let res = async {
            let (lsn, _) = server_wal_lsn(c, &pg).await?;
            read_slot(c, &pg, &slot, lsn).await
        }
        .await;
        match res {
            Ok(SlotStatus::Present(s)) => set_slot_gauges(&s),
            Ok(SlotStatus::Missing { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read slot gauges"),
        }
    }
}

/// Sets the slot gauges from one reading.
pub fn set_slot_gauges(s: &SlotInfo) {
    use crate::ops::metrics::names;
    if let Some(b) = s.lag_bytes {
        metrics::gauge!(names::REPLICATION_LAG_BYTES).set(b as f64);
    }
    if let Some(b) = s.retained_wal_bytes {
        metrics::gauge!(names::SLOT_RETAINED_WAL_BYTES).set(b as f64);
    }
}

#[cfg(test)]
mod tests;
