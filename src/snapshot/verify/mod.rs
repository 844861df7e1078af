//! `sluice verify`: compare every mapped table, read inside one exported
//! snapshot (point P), with the documents in Elasticsearch, and optionally
//! repair the difference.
//!
//! Reads the tables with the snapshot's own reader (chunks, `COPY`, the
//! same value converter) and turns each row into documents with the same
//! transformer as the stream, so "what the document should be" is exactly
//! what Sluice would write. Each batch of rows is compared with a real-time
//! multi-get of its documents (`compare`): bounded by the batch, whatever
//! the table's size. Then each index is scanned once (ids and versions
//! only) for documents no row produced; that pass keeps an 8-byte digest
//! per row, the one part of memory that grows with the table.
//!
//! Correct while `sluice run` streams (DESIGN invariants 2 and 4): the
//! caller waits until the stream has applied everything up to P, so a
//! document older than P must equal the row at P; one at or after P is the
//! stream's newer work and skipped. A row at P whose document is absent may
//! have been deleted after P (the delete applied, its tombstone invisible
//! to reads): such candidates are confirmed by reading the row again now.
//!
//! `--repair` writes through the normal indexer with version P − 1, like a
//! snapshot row: newer than everything the snapshot contains, older than
//! every change the stream delivers after it, so a repair never overwrites
//! a newer streamed change, and extra documents are deleted with the same
//! version (a versioned delete).

pub mod compare;
pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{IndexName, Mappings, OnDelete};
use crate::model::change::{Change, ChangeKind, Relation, Row};
use crate::model::lsn::Lsn;
use crate::model::{BulkOp, OpAction, OpOrigin, PublishedTable};
use crate::sink::Elasticsearch;
use crate::sink::doc_reads::{DocRef, IndexScan, mget};
use crate::sink::indexer::{Ack, Indexer, IndexerConfig};
use crate::transform::Transformer;

use super::catalog::load_table;
use super::error::{SinkError, SnapshotError};
use super::plan::{Chunk, plan_table};
use super::reader::{RowContext, import_snapshot, read_chunk};
use super::seams::{
    AckFuture, BoxFuture, ExportedSnapshot, PgConnector, SnapshotSink, ValueConverter,
};
use compare::{Verdict, id_digest, judge};
use report::{IndexReport, StaleExample};

/// Reads the current rows (outside any snapshot) for `keys`, converted like
/// streamed values; rows that no longer exist are absent.
pub type RowRefetcher = Arc<
    dyn Fn(Arc<Relation>, Vec<Row>) -> BoxFuture<'static, Result<Vec<Row>, String>> + Send + Sync,
>;

/// Missing candidates confirmed at once (bounded memory per reader).
const CONFIRM_BATCH: usize = 5_000;
/// Stale examples (with their differing fields) kept per index.
const STALE_EXAMPLES: usize = 5;

/// What a verify needs from the rest of Sluice.
#[derive(Clone)]
pub struct VerifyDeps {
    pub connector: PgConnector,
    pub converter: ValueConverter,
    pub refetch: RowRefetcher,
    pub es: Elasticsearch,
    pub mappings: Arc<Mappings>,
    /// The indexer's settings, for `--repair`.
    pub indexer: IndexerConfig,
}

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyJob {
    pub tables: Vec<PublishedTable>,
    pub readers: usize,
    pub chunk_rows: u64,
    pub batch_rows: usize,
    /// Compare about this many rows per table (whole chunks in random
    /// order), and skip the scan for extra documents.
    pub sample: Option<u64>,
    /// Ids listed per kind and index (counts are always exact).
    pub id_cap: usize,
    pub repair: bool,
    /// Documents the stream dead-lettered: `(index, id)` and `(table, key)`.
    pub dead_letters: DeadLetterKeys,
}

/// The dead letters a verify counts as known drift.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterKeys {
    pub docs: HashSet<(String, String)>,
    pub rows: HashSet<(String, String)>,
}

impl DeadLetterKeys {
    fn covers(&self, op: &BulkOp) -> bool {
        self.docs.contains(&(op.index.to_string(), op.id.clone()))
            || self
                .rows
                .contains(&(op.origin.table.to_string(), op.origin.key.clone()))
    }
}

/// What a run found: per index, and the rows read.
#[derive(Debug, Clone, Default)]
pub struct VerifyOutcome {
    pub indices: BTreeMap<String, IndexReport>,
    pub rows: u64,
}

/// Everything the readers share.
struct Shared {
    point: Lsn,
    job: VerifyJob,
    deps: VerifyDeps,
    reports: Mutex<BTreeMap<String, IndexReport>>,
    /// Per index scanned for extras: digests of the ids rows produced.
    seen: Mutex<HashMap<String, HashSet<u64>>>,
    repair: Option<Repairer>,
    rows: AtomicU64,
    table_rows: Vec<AtomicU64>,
    work: Mutex<Vec<(usize, Chunk)>>,
    snapshot: String,
}

impl Shared {
    fn with_report<T>(&self, index: &str, f: impl FnOnce(&mut IndexReport) -> T) -> T {
        let mut r = self.reports.lock().expect("reports");
        f(r.entry(index.to_string())
            .or_insert_with(|| IndexReport::new(index)))
    }

    fn cap(&self) -> usize {
        self.job.id_cap
    }
}

/// The indices whose every document some row of this run explains, so a
/// scan can name the documents no row produced: fixed names, all of whose
/// writing tables are verified, that keep no documents of deleted rows.
pub fn extras_indices(mappings: &Mappings, tables: &[PublishedTable], sample: bool) -> Vec<String> {
    if sample {
        return Vec::new();
    }
    let verified: HashSet<String> = tables.iter().map(PublishedTable::qualified_name).collect();
    let mut by_index: BTreeMap<String, bool> = BTreeMap::new();
    for m in &mappings.list {
        if let IndexName::Fixed(n) = &m.index {
            let ok = verified.contains(&*m.qualified_table) && m.on_delete != OnDelete::Ignore;
            let e = by_index.entry(n.to_string()).or_insert(true);
            *e &= ok;
        }
    }
    by_index
        .into_iter()
        .filter(|(n, ok)| {
            *ok && mappings.list.iter().any(|m| {
                matches!(&m.index, IndexName::Fixed(x) if **x == **n)
                    && verified.contains(&*m.qualified_table)
            })
        })
        .map(|(n, _)| n)
        .collect()
}

/// Verify `job.tables` inside `exported` (the caller made sure the stream
/// applied everything up to its point, or says in the report it did not).
pub async fn verify(
    deps: &VerifyDeps,
    job: &VerifyJob,
    exported: ExportedSnapshot,
) -> Result<VerifyOutcome, SnapshotError> {
    let point = exported.consistent_point;
    let control = (deps.connector)().await?;
    let mut infos = Vec::new();
    let mut work = Vec::new();
    let chunk_rows = match job.sample {
        Some(n) => job.chunk_rows.min(n.max(1)),
        None => job.chunk_rows,
    };
    for (i, spec) in job.tables.iter().enumerate() {
        let mut info = load_table(&control, spec).await?;
        // A nested mapping's root is compared as whole documents.
        let tree = deps
            .mappings
            .for_table(&spec.qualified_name())
            .find_map(|m| m.tree.clone());
        if let Some(tree) = tree {
            info = info.as_documents(tree);
        }
        let info = Arc::new(info);
        let mut chunks = plan_table(&control, &info, chunk_rows).await?;
        if job.sample.is_some() {
            use rand::seq::SliceRandom;
            chunks.shuffle(&mut rand::rng());
        }
        // Popped from the end: reverse so tables are read in order.
        work.extend(chunks.into_iter().rev().map(|c| (i, c)));
        infos.push(info);
    }
    work.reverse();
    let extras = extras_indices(&deps.mappings, &job.tables, job.sample.is_some());
    let mut reports = BTreeMap::new();
    for name in &extras {
        let mut r = IndexReport::new(name);
        r.extras_checked = true;
        reports.insert(name.clone(), r);
    }
    let shared = Arc::new(Shared {
        point,
        job: job.clone(),
        deps: deps.clone(),
        reports: Mutex::new(reports),
        seen: Mutex::new(extras.iter().map(|n| (n.clone(), HashSet::new())).collect()),
        repair: job
            .repair
            .then(|| Repairer::start(deps.es.clone(), deps.indexer.clone())),
        rows: AtomicU64::new(0),
        table_rows: job.tables.iter().map(|_| AtomicU64::new(0)).collect(),
        work: Mutex::new(work),
        snapshot: exported.name.clone(),
    });
    let readers = job.readers.max(1);
    let (imported_tx, imported_rx) = mpsc::channel::<()>(readers);
    let mut set = JoinSet::new();
    for _ in 0..readers {
        set.spawn(reader(shared.clone(), infos.clone(), imported_tx.clone()));
    }
    drop(imported_tx);
    super::run::join_readers(set, imported_rx, readers, exported.guard).await?;
    for name in &extras {
        scan_extras(&shared, name).await?;
    }
    let shared = Arc::try_unwrap(shared)
        .map_err(|_| SnapshotError::Reader("a verify reader outlived the run".into()))?;
    let mut reports = shared.reports.into_inner().expect("reports");
    if let Some(repair) = shared.repair {
        for (index, n) in repair.finish().await? {
            reports
                .entry(index.clone())
                .or_insert_with(|| IndexReport::new(&index))
                .repaired += n;
        }
    }
    Ok(VerifyOutcome {
        indices: reports,
        rows: shared.rows.into_inner(),
    })
}

/// One reader: import the snapshot, then compare chunks until none is left.
async fn reader(
    shared: Arc<Shared>,
    infos: Vec<Arc<super::TableInfo>>,
    imported: mpsc::Sender<()>,
) -> Result<(), SnapshotError> {
    let client = (shared.deps.connector)().await?;
    import_snapshot(&client, &shared.snapshot).await?;
    let _ = imported.send(()).await;
    drop(imported);
    let sink = CompareSink {
        shared: shared.clone(),
        transformer: Mutex::new(Transformer::new(&shared.deps.mappings)),
        candidates: tokio::sync::Mutex::new(Vec::new()),
    };
    let version = Lsn(shared.point.0 - 1);
    let commit_time = Utc::now();
    loop {
        let next = shared.work.lock().expect("work").pop();
        let Some((t, chunk)) = next else { break };
        if let Some(n) = shared.job.sample
            && shared.table_rows[t].load(Ordering::Relaxed) >= n
        {
            continue;
        }
        let ctx = RowContext {
            table: infos[t].clone(),
            converter: shared.deps.converter.clone(),
            version,
            commit_time,
            batch_rows: shared.job.batch_rows.max(1),
        };
        let (rows, _acks) = read_chunk(&client, &ctx, &chunk, &sink, |_| {}).await?;
        shared.rows.fetch_add(rows, Ordering::Relaxed);
        shared.table_rows[t].fetch_add(rows, Ordering::Relaxed);
    }
    sink.confirm_missing().await?;
    let _ = client.batch_execute("COMMIT").await;
    Ok(())
}

/// A row at P whose document was absent.
struct Candidate {
    op: BulkOp,
    relation: Arc<Relation>,
    row: Row,
}

/// The reader's sink: each batch of snapshot rows is transformed and
/// compared on the spot; nothing is written (except by `--repair`).
struct CompareSink {
    shared: Arc<Shared>,
    transformer: Mutex<Transformer>,
    candidates: tokio::sync::Mutex<Vec<Candidate>>,
}

fn expected_doc(op: &BulkOp) -> Result<Option<serde_json::Value>, SinkError> {
    match &op.action {
        OpAction::Index { doc } => serde_json::from_slice(doc)
            .map(Some)
            .map_err(|e| SinkError::Failed(format!("a document that is not JSON: {e}"))),
        OpAction::Delete => Ok(None),
    }
}

fn doc_ref(op: &BulkOp) -> DocRef {
    DocRef {
        index: op.index.to_string(),
        id: op.id.clone(),
        routing: op.routing.clone(),
    }
}

fn es_err(e: crate::sink::admin::AdminError) -> SinkError {
    SinkError::Failed(e.to_string())
}

impl CompareSink {
    /// Transform `changes` the way the stream would; each op with the
    /// index of the change it came from.
    fn transform(&self, changes: &[Change]) -> Result<Vec<(BulkOp, usize)>, SinkError> {
        let mut t = self.transformer.lock().expect("transformer");
        let mut out = Vec::new();
        let mut ops = Vec::new();
        let mut rejected = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            t.transform_rows(c, &mut ops, &mut rejected)
                .map_err(|e| SinkError::Failed(format!("transforming a row: {e}")))?;
            out.extend(ops.drain(..).map(|op| (op, i)));
        }
        // Rows a mapping rejects are dead-lettered by the stream too; they
        // have no document to compare.
        Ok(out)
    }

    async fn compare(&self, changes: Vec<Change>) -> Result<(), SinkError> {
        let ops = self.transform(&changes)?;
        let refs: Vec<DocRef> = ops.iter().map(|(op, _)| doc_ref(op)).collect();
        let found = mget(&self.shared.deps.es, &refs).await.map_err(es_err)?;
        {
            let mut seen = self.shared.seen.lock().expect("seen");
            for (op, _) in &ops {
                if let Some(set) = seen.get_mut(&*op.index) {
                    set.insert(id_digest(&op.id));
                }
            }
        }
        let mut candidates = Vec::new();
        for ((op, i), found) in ops.into_iter().zip(found) {
            let expected = expected_doc(&op)?;
            match judge(
                expected.as_ref(),
                found.as_ref(),
                self.shared.point,
                op.pipeline.is_none(),
            ) {
                Verdict::MissingCandidate => {
                    let ChangeKind::Insert { new } = &changes[i].kind else {
                        unreachable!("snapshot rows are inserts")
                    };
                    candidates.push(Candidate {
                        relation: changes[i].relation.clone(),
                        row: new.clone(),
                        op,
                    });
                }
                v => self.record(op, v).await?,
            }
        }
        if !candidates.is_empty() {
            let mut c = self.candidates.lock().await;
            c.extend(candidates);
            if c.len() >= CONFIRM_BATCH {
                let batch = std::mem::take(&mut *c);
                drop(c);
                self.confirm(batch).await?;
            }
        }
        Ok(())
    }

    /// Count a verdict (a confirmed missing document as `MissingCandidate`)
    /// and queue its repair.
    async fn record(&self, op: BulkOp, v: Verdict) -> Result<(), SinkError> {
        let sh = &self.shared;
        let known = || sh.job.dead_letters.covers(&op);
        let cap = sh.cap();
        let fix = sh.with_report(&op.index, |r| {
            r.checked += 1;
            match &v {
                Verdict::Equal => r.equal += 1,
                Verdict::Newer => r.skipped_newer += 1,
                _ if known() => r.dead_lettered.push(&op.id, cap),
                Verdict::MissingCandidate => {
                    r.missing.push(&op.id, cap);
                    return true;
                }
                Verdict::Extra => {
                    r.extra.push(&op.id, cap);
                    return true;
                }
                Verdict::Stale(fields) => {
                    r.stale.push(&op.id, cap);
                    if r.stale_examples.len() < STALE_EXAMPLES {
                        r.stale_examples.push(StaleExample {
                            id: op.id.clone(),
                            fields: fields.clone(),
                        });
                    }
                    return true;
                }
            }
            false
        });
        // The op is the row at P as the transformer made it (a soft-deleted
        // row's: the delete), versioned P − 1.
        if fix && let Some(repair) = &sh.repair {
            repair.submit(op).await?;
        }
        Ok(())
    }

    /// Confirm the rest of the candidates (at the end of the reader).
    async fn confirm_missing(&self) -> Result<(), SnapshotError> {
        let batch = std::mem::take(&mut *self.candidates.lock().await);
        self.confirm(batch).await.map_err(SnapshotError::Sink)
    }

    /// A row at P without a document is drift only if the row still exists
    /// now and its document is still absent: a row deleted after P had its
    /// delete applied (no version to see on an absent document), and one
    /// changed after P has a newer document by now.
    async fn confirm(&self, batch: Vec<Candidate>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut by_rel: HashMap<u32, (Arc<Relation>, Vec<Row>)> = HashMap::new();
        for c in &batch {
            by_rel
                .entry(c.relation.id)
                .or_insert_with(|| (c.relation.clone(), Vec::new()))
                .1
                .push(c.row.clone());
        }
        let mut present: HashSet<(String, String)> = HashSet::new();
        for (_, (rel, keys)) in by_rel {
            let now = (self.shared.deps.refetch)(rel.clone(), keys)
                .await
                .map_err(SinkError::Failed)?;
            let changes: Vec<Change> = now
                .into_iter()
                .map(|new| Change {
                    relation: rel.clone(),
                    kind: ChangeKind::Insert { new },
                    version: Lsn(self.shared.point.0 - 1),
                    commit_time: Utc::now(),
                    xid: 0,
                })
                .collect();
            for (op, _) in self.transform(&changes)? {
                if matches!(op.action, OpAction::Index { .. }) {
                    present.insert((op.index.to_string(), op.id));
                }
            }
        }
        let (gone, still): (Vec<Candidate>, Vec<Candidate>) = batch
            .into_iter()
            .partition(|c| !present.contains(&(c.op.index.to_string(), c.op.id.clone())));
        for c in gone {
            self.shared.with_report(&c.op.index, |r| {
                r.checked += 1;
                r.skipped_newer += 1;
            });
        }
        let refs: Vec<DocRef> = still.iter().map(|c| doc_ref(&c.op)).collect();
        let found = mget(&self.shared.deps.es, &refs).await.map_err(es_err)?;
        for (c, found) in still.into_iter().zip(found) {
            let expected = expected_doc(&c.op)?;
            let v = judge(
                expected.as_ref(),
                found.as_ref(),
                self.shared.point,
                c.op.pipeline.is_none(),
            );
            self.record(c.op, v).await?;
        }
        Ok(())
    }
}

impl SnapshotSink for CompareSink {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        Box::pin(async move {
            self.compare(changes).await?;
            let done: AckFuture = Box::pin(async { Ok(()) });
            Ok(done)
        })
    }
}

/// Scan `index` for documents older than P that no row at P produced.
async fn scan_extras(shared: &Shared, index: &str) -> Result<(), SnapshotError> {
    // Searches see what was refreshed: make every write the stream
    // acknowledged up to now (so everything before P) visible.
    crate::sink::admin::refresh(&shared.deps.es, index).await?;
    let seen = shared
        .seen
        .lock()
        .expect("seen")
        .remove(index)
        .unwrap_or_default();
    let mut scan = IndexScan::new(&shared.deps.es, index, 5_000);
    loop {
        let page = scan.next_page().await?;
        if page.is_empty() {
            break;
        }
        for doc in page {
            if seen.contains(&id_digest(&doc.id)) {
                continue;
            }
            let extra = shared.with_report(index, |r| {
                if doc.version >= shared.point.0 {
                    r.skipped_newer += 1;
                    false
                } else {
                    r.extra.push(&doc.id, shared.cap());
                    true
                }
            });
            if extra && let Some(repair) = &shared.repair {
                repair
                    .submit(BulkOp {
                        action: OpAction::Delete,
                        index: Arc::from(doc.index.as_str()),
                        id: doc.id.clone(),
                        routing: doc.routing.clone(),
                        pipeline: None,
                        version: shared.point.0 - 1,
                        origin: OpOrigin {
                            table: Arc::from(index),
                            key: "null".into(),
                            lsn: Lsn(shared.point.0 - 1),
                        },
                    })
                    .await
                    .map_err(SnapshotError::Sink)?;
            }
        }
    }
    Ok(())
}

/// `--repair`'s writer: the normal indexer (versioned bulk writes, retries,
/// dead letters), with acknowledgements counted per index.
struct Repairer {
    indexer: Indexer,
    indices: Mutex<Vec<String>>,
    acked: Arc<Mutex<HashMap<u64, u64>>>,
    counter: tokio::task::JoinHandle<()>,
}

impl Repairer {
    fn start(es: Elasticsearch, config: IndexerConfig) -> Repairer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Ack>>();
        let acked: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
        let a = acked.clone();
        let counter = tokio::spawn(async move {
            while let Some(acks) = rx.recv().await {
                let mut a = a.lock().expect("acks");
                for ack in acks {
                    *a.entry(ack.tag).or_default() += ack.count;
                }
            }
        });
        Repairer {
            indexer: Indexer::start(es, config, tx),
            indices: Mutex::new(Vec::new()),
            acked,
            counter,
        }
    }

    /// Queue one fix (waits while the indexer's budget is spent).
    async fn submit(&self, op: BulkOp) -> Result<(), SinkError> {
        let tag = {
            let mut names = self.indices.lock().expect("indices");
            match names.iter().position(|n| **n == *op.index) {
                Some(i) => i as u64,
                None => {
                    names.push(op.index.to_string());
                    (names.len() - 1) as u64
                }
            }
        };
        self.indexer
            .submit(op, tag)
            .await
            .map_err(|_| SinkError::Closed)
    }

    /// Wait for every fix; how many each index had acknowledged.
    async fn finish(self) -> Result<Vec<(String, u64)>, SnapshotError> {
        if !self
            .indexer
            .finish(std::time::Duration::from_secs(600))
            .await
        {
            return Err(SnapshotError::Sink(SinkError::Failed(
                "the repair writes did not finish within 10 minutes".into(),
            )));
        }
        let _ = self.counter.await;
        let acked = self.acked.lock().expect("acks").clone();
        let names = self.indices.into_inner().expect("indices");
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, acked.get(&(i as u64)).copied().unwrap_or(0)))
            .collect())
    }
}
