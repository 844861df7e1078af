//! One snapshot run: plan (or resume) every table, export one snapshot, read
//! the pending chunks with N parallel readers, record each chunk once it is
//! durable, and mark finished tables done.
//!
//! Keeps DESIGN invariant 4: all readers of a run import the same snapshot
//! and write version P − 1; a resumed run reads only the chunks not yet
//! recorded, under a new snapshot P2 — exact because every change between P
//! and P2 reaches the index through the stream with a version ≥ P.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::task::JoinSet;

use crate::model::PublishedTable;
use crate::model::lsn::Lsn;

use super::catalog::{KeyKind, TableInfo, load_table};
use super::error::SnapshotError;
use super::plan::{Chunk, plan_table};
use super::progress::{Progress, TableProgress};
use super::reader::{RowContext, import_snapshot, read_chunk};
use super::seams::{ExportedSnapshot, PgConnector, SnapshotExporter, SnapshotSink, ValueConverter};
use super::state::{StateStore, TableState, TableStatus};

/// Tuning (from `[snapshot]` in sluice.toml).
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Parallel reader connections.
    pub readers: usize,
    /// Rows per chunk (the unit of progress and of lost work on a crash).
    pub chunk_rows: u64,
    /// Rows per batch handed to the sink.
    pub batch_rows: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            readers: 4,
            chunk_rows: 50_000,
            batch_rows: 1_000,
        }
    }
}

/// One table to snapshot and what its rows are written to.
#[derive(Debug, Clone)]
pub struct TableJob {
    pub spec: PublishedTable,
    /// Names the destination in the state index (the mapping's index or
    /// alias, or the build index of a reindex), so a backfill into a new
    /// index does not resume a finished one into the old.
    pub target: String,
}

#[derive(Debug, Clone)]
pub struct SnapshotJob {
    pub tables: Vec<TableJob>,
    pub options: SnapshotOptions,
}

/// Everything a run needs from the rest of Sluice.
#[derive(Clone)]
pub struct SnapshotDeps {
    pub connector: PgConnector,
    pub exporter: SnapshotExporter,
    pub converter: ValueConverter,
    pub sink: Arc<dyn SnapshotSink>,
    pub state: StateStore,
    pub progress: Arc<Progress>,
    /// Nested mappings' trees: their root tables are read as documents.
    pub documents: Vec<Arc<crate::model::DocTree>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSummary {
    pub table: String,
    pub run_id: String,
    pub chunks: usize,
    /// Chunks recorded done by earlier, interrupted attempts.
    pub chunks_resumed: usize,
    /// Rows read by this attempt.
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSummary {
    /// The consistent point of this attempt's snapshot (`None` when nothing
    /// was left to read).
    pub point: Option<Lsn>,
    pub tables: Vec<TableSummary>,
}

struct Planned {
    info: Arc<TableInfo>,
    state: TableState,
    pending: Vec<Chunk>,
    progress: Arc<TableProgress>,
    rows: Arc<AtomicU64>,
}

fn fingerprint(info: &TableInfo) -> Vec<(u32, u32)> {
    info.leaves
        .iter()
        .map(|l| match l.key {
            KeyKind::Ctid => (l.oid, l.relfilenode),
            _ => (l.oid, 0),
        })
        .collect()
}

fn new_run_id() -> String {
    format!(
        "{}-{:08x}",
        Utc::now().format("%Y%m%dT%H%M%S"),
        rand::random::<u32>()
    )
}

/// Plan a table or pick up its unfinished run.
async fn plan_or_resume(
    deps: &SnapshotDeps,
    client: &tokio_postgres::Client,
    job: &TableJob,
    chunk_rows: u64,
) -> Result<Planned, SnapshotError> {
    let mut info = load_table(client, &job.spec).await?;
    if let Some(tree) = deps
        .documents
        .iter()
        .find(|t| t.root.table == job.spec.table)
    {
        info = info.as_documents(tree.clone());
    }
    let info = Arc::new(info);
    let table = job.spec.qualified_name();
    let fp = fingerprint(&info);
    let existing = deps.state.load_table(&table, &job.target).await?;
    let (state, done, done_rows) = match existing {
        Some(st) if st.status == TableStatus::Running && st.fingerprint == fp => {
            let (done, rows) = deps.state.done_chunks(&st.run_id).await?;
            tracing::info!(%table, run_id = %st.run_id, done = done.len(), chunks = st.plan.len(),
                "resuming an interrupted snapshot");
            (st, done, rows)
        }
        other => {
            if other
                .as_ref()
                .is_some_and(|s| s.status == TableStatus::Running)
            {
                tracing::warn!(%table, "the table was rewritten or repartitioned since the \
                    interrupted snapshot was planned; starting it over");
            }
            let plan = plan_table(client, &info, chunk_rows).await?;
            let st = TableState {
                run_id: new_run_id(),
                table: table.clone(),
                target: job.target.clone(),
                status: TableStatus::Running,
                plan,
                fingerprint: fp,
                expected_rows: info.estimated_rows(),
                started_at: Utc::now().to_rfc3339(),
                finished_at: None,
                points: Vec::new(),
            };
            deps.state.save_table(&st).await?;
            (st, Default::default(), 0)
        }
    };
    let pending = state
        .plan
        .iter()
        .filter(|c| !done.contains(&c.id))
        .cloned()
        .collect();
    let progress = Arc::new(deps.progress.table(&table, state.expected_rows, done_rows));
    Ok(Planned {
        info,
        state,
        pending,
        progress,
        rows: Default::default(),
    })
}

/// Run (or resume) a snapshot of `job.tables`.
pub async fn run_snapshot(
    deps: &SnapshotDeps,
    job: &SnapshotJob,
) -> Result<SnapshotSummary, SnapshotError> {
    deps.state.ensure().await?;
    let control = (deps.connector)().await?;
    let mut planned = Vec::new();
    for t in &job.tables {
        planned.push(plan_or_resume(deps, &control, t, job.options.chunk_rows).await?);
    }
    let work: VecDeque<(usize, Chunk)> = planned
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.pending.iter().cloned().map(move |c| (i, c)))
        .collect();

    let mut point = None;
    if !work.is_empty() {
        let exported = (deps.exporter)().await.map_err(SnapshotError::Export)?;
        let p = exported.consistent_point;
        if p.0 == 0 {
            return Err(SnapshotError::Export("consistent point 0/0".into()));
        }
        point = Some(p);
        for pl in &mut planned {
            if !pl.pending.is_empty() {
                pl.state.points.push(p.to_string());
                deps.state.save_table(&pl.state).await?;
            }
        }
        read_all(deps, &job.options, &planned, work, exported).await?;
    }

    let mut summary = SnapshotSummary {
        point,
        tables: Vec::new(),
    };
    for pl in &mut planned {
        pl.state.status = TableStatus::Done;
        pl.state.finished_at = Some(Utc::now().to_rfc3339());
        deps.state.save_table(&pl.state).await?;
        pl.progress.finish();
        summary.tables.push(TableSummary {
            table: pl.state.table.clone(),
            run_id: pl.state.run_id.clone(),
            chunks: pl.state.plan.len(),
            chunks_resumed: pl.state.plan.len() - pl.pending.len(),
            rows: pl.rows.load(Ordering::Relaxed),
        });
    }
    Ok(summary)
}

/// Read every pending chunk with `options.readers` parallel readers, all
/// inside the exported snapshot, and record each chunk once it is durable.
async fn read_all(
    deps: &SnapshotDeps,
    options: &SnapshotOptions,
    planned: &[Planned],
    work: VecDeque<(usize, Chunk)>,
    exported: ExportedSnapshot,
) -> Result<(), SnapshotError> {
    let version = Lsn(exported.consistent_point.0 - 1);
    let commit_time = Utc::now();
    let readers = options.readers.max(1).min(work.len());
    let shared = Arc::new(ReaderShared {
        work: Mutex::new(work),
        tables: planned
            .iter()
            .map(|p| ReaderTable {
                ctx: RowContext {
                    table: p.info.clone(),
                    converter: deps.converter.clone(),
                    version,
                    commit_time,
                    batch_rows: options.batch_rows.max(1),
                },
                progress: p.progress.clone(),
                run_id: p.state.run_id.clone(),
                rows: p.rows.clone(),
            })
            .collect(),
        snapshot: exported.name.clone(),
        point: exported.consistent_point.to_string(),
    });
    let (imported_tx, imported_rx) = tokio::sync::mpsc::channel::<()>(readers);
    let mut set = JoinSet::new();
    for _ in 0..readers {
        set.spawn(read_chunks(
            deps.clone(),
            shared.clone(),
            imported_tx.clone(),
        ));
    }
    drop(imported_tx);
    join_readers(set, imported_rx, readers, exported.guard).await
}

/// What the readers of one run share: the chunks left, per table the row
/// context, progress, run id and rows read, and the snapshot.
struct ReaderShared {
    work: Mutex<VecDeque<(usize, Chunk)>>,
    tables: Vec<ReaderTable>,
    /// The exported snapshot's name.
    snapshot: String,
    /// Its consistent point, recorded with each chunk.
    point: String,
}

struct ReaderTable {
    ctx: RowContext,
    progress: Arc<TableProgress>,
    run_id: String,
    rows: Arc<AtomicU64>,
}

/// One reader: import the snapshot, say so, then take chunks until none is
/// left, recording each once its acknowledgements are in.
async fn read_chunks(
    deps: SnapshotDeps,
    shared: Arc<ReaderShared>,
    imported: tokio::sync::mpsc::Sender<()>,
) -> Result<(), SnapshotError> {
    let client = (deps.connector)().await?;
    import_snapshot(&client, &shared.snapshot).await?;
    let _ = imported.send(()).await;
    drop(imported);
    // Chunks whose rows are sent and whose acknowledgements are awaited
    // here, so reading goes on meanwhile.
    let mut completing: JoinSet<Result<(), SnapshotError>> = JoinSet::new();
    loop {
        let next = shared.work.lock().expect("not poisoned").pop_front();
        let Some((t, chunk)) = next else { break };
        let table = &shared.tables[t];
        let (rows, acks) = read_chunk(&client, &table.ctx, &chunk, deps.sink.as_ref(), |n| {
            table.progress.add(n)
        })
        .await?;
        table.rows.fetch_add(rows, Ordering::Relaxed);
        // Keep at most one chunk completing besides the one being read.
        while completing.len() > 1 {
            if let Some(r) = completing.join_next().await {
                r.expect("chunk completion does not panic")?;
            }
        }
        let state = deps.state.clone();
        let run_id = table.run_id.clone();
        let name = table.ctx.table.relation.qualified_name();
        let point = shared.point.clone();
        completing.spawn(async move {
            for ack in acks {
                ack.await?;
            }
            state
                .mark_chunk_done(&run_id, &name, chunk.id, rows, &point)
                .await
        });
    }
    while let Some(r) = completing.join_next().await {
        r.expect("chunk completion does not panic")?;
    }
    let _ = client.batch_execute("COMMIT").await;
    Ok(())
}

/// Wait for every reader, releasing the exporting session (`guard`) as soon
/// as all of them hold the snapshot; the first failure ends the run.
pub(super) async fn join_readers(
    mut set: JoinSet<Result<(), SnapshotError>>,
    mut imported_rx: tokio::sync::mpsc::Receiver<()>,
    readers: usize,
    guard: Box<dyn std::any::Any + Send>,
) -> Result<(), SnapshotError> {
    let mut guard = Some(guard);
    let mut imported = 0;
    loop {
        tokio::select! {
            got = imported_rx.recv(), if guard.is_some() => {
                match got {
                    Some(()) => {
                        imported += 1;
                        if imported == readers {
                            guard = None;
                        }
                    }
                    None => guard = None,
                }
            }
            res = set.join_next() => match res {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(SnapshotError::Reader(e.to_string())),
            }
        }
    }
    drop(guard);
    Ok(())
}
