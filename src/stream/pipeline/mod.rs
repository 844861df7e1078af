//! Wiring: source → transform → sink with bounded channels, and shutdown.
//! Keeps DESIGN invariant 7 (bounded memory) and, through the checkpoint,
//! invariant 1: the LSN published on the `watch` channel never passes a
//! change Elasticsearch has not acknowledged.
//!
//! ```text
//! SourceEvent ─(bounded mpsc)─▶ transform task ─(bounded)─▶ coordinator ─submit─▶ Sink
//!                                                             ▲    │                 │
//!                                     watch<Lsn> ◀─ Checkpoint ◀───┴──── acks ◀──────┘
//! ```
//!
//! The sink is anything that implements [`crate::sink::Sink`]: `app` hands
//! in the bulk indexer; the tests here a sink in memory that acknowledges
//! when and in what order they choose.
//!
//! The coordinator registers every op with the checkpoint before handing it
//! to the indexer (whose byte budget bounds what is in flight), so an ack can
//! never precede its registration. A transaction of any size streams through
//! piecewise: nothing waits for its Commit except the confirmation.
//!
//! On shutdown a transaction the coordinator holds half-taken is read to its
//! Commit first (bounded by `finish_transaction_timeout`), so a clean stop
//! confirms whole transactions and the next start re-sends nothing.
//!
//! Work moves between tasks in batches (up to `TRANSFORM_BATCH` events per
//! message, a run of ops per submit): per-change hand-offs cost more in task
//! wake-ups than transforming the change.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::model::BulkOp;
use crate::model::lsn::Lsn;
use crate::model::{Change, ChangeKind, SourceEvent};
use crate::sink::{Ack, IndexerClosed, Sink};
use crate::stream::checkpoint::{Checkpoint, CheckpointError, TxTicket};
use crate::transform::versions::TxVersions;

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Changes buffered between the transform step and the indexer.
    pub transform_buffer: usize,
    /// After a shutdown signal (or the end of the source), how long to wait
    /// for in-flight bulks before giving up on them (they are replayed on the
    /// next start, as they were never confirmed).
    pub drain_timeout: Duration,
    /// After a shutdown signal that finds a transaction half-taken, how long
    /// to keep reading so it can commit and be confirmed whole (the next
    /// start then replays nothing of it). Past that it is abandoned and
    /// replayed on the next start, which is correct too.
    pub finish_transaction_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            transform_buffer: 1024,
            drain_timeout: Duration::from_secs(30),
            finish_transaction_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot transform a change of {table} at {lsn}: {message}")]
    Transform {
        table: String,
        lsn: Lsn,
        message: String,
    },
    #[error("the source stream is inconsistent: {0}")]
    Stream(#[from] CheckpointError),
    #[error("a change arrived outside a transaction (at {0})")]
    ChangeOutsideTransaction(Lsn),
    #[error(transparent)]
    Indexer(#[from] IndexerClosed),
}

/// Why the transform step could not take a change. Row failures are not
/// here: the step stores those as dead letters and goes on (issue 14,
/// case 4). What is here stops the pipeline; nothing is confirmed past the
/// change, so a restart (after the cause is fixed) replays it.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The mapping cannot work with the table as it is (see
    /// [`crate::transform::FailureScope::Mapping`]): fix the mapping.
    #[error(transparent)]
    Mapping(Box<crate::transform::TransformError>),
    /// Re-reading a row failed for a reason that is not the row's (lost
    /// connection past the patience, a missing privilege).
    #[error("re-reading a row of {table}: {source}")]
    Refetch {
        table: String,
        source: Box<crate::source::SourceError>,
    },
}

/// Why `run` returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The shutdown future completed.
    Shutdown,
    /// The source closed its channel.
    SourceEnded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSummary {
    /// The final confirmed flush LSN (also the last value published).
    pub confirmed: Lsn,
    pub stopped_by: StopReason,
    /// Ops handed to the sink.
    pub ops_submitted: u64,
    /// False if the drain timeout cut off in-flight bulks.
    pub drained: bool,
}

/// Source events the transform task takes per wake-up (and so, roughly, per
/// message to the coordinator): handing work over one change at a time cost
/// more in task wake-ups than the transformation itself.
const TRANSFORM_BATCH: usize = 256;

/// Changes per (table, op) in a run of ops, reported as applied at
/// confirmation.
type Counts = Vec<(Arc<str>, &'static str, u64)>;

/// What the transform task hands the coordinator (in batches, in stream
/// order).
enum Work {
    /// A transaction's commit LSN and commit time.
    Begin(Lsn, std::time::SystemTime),
    /// The ops of consecutive changes of the open transaction.
    Ops {
        ops: Vec<BulkOp>,
        counts: Counts,
        /// The last change's LSN (for errors).
        lsn: Lsn,
    },
    Commit(Lsn),
    Keepalive(Lsn),
    Failed(PipelineError),
}

fn op_label(kind: &ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Insert { .. } => "insert",
        ChangeKind::Update { .. } => "update",
        ChangeKind::Delete { .. } => "delete",
        ChangeKind::Truncate => "truncate",
    }
}

/// The running pipeline's parts.
pub struct Pipeline<S> {
    sink: S,
    acks: mpsc::UnboundedReceiver<Vec<Ack>>,
    config: PipelineConfig,
}

/// Per-transaction counts of changes, reported as applied at confirmation.
type TxStats = HashMap<u64, Counts>;

impl<S: Sink> Pipeline<S> {
    /// A pipeline writing to `sink`, which acknowledges on `acks`.
    pub fn new(
        sink: S,
        acks: mpsc::UnboundedReceiver<Vec<Ack>>,
        config: PipelineConfig,
    ) -> Pipeline<S> {
        Pipeline { sink, acks, config }
    }

    /// Run until `shutdown` completes, the source closes `events`, or an
    /// error. `start` is the slot's confirmed flush LSN; every advance of the
    /// confirmed LSN is published on `confirmed` (the reader sends it in
    /// standby status updates). In-flight bulks are finished (within
    /// `drain_timeout`) and the final confirmed LSN published before return,
    /// on errors too.
    pub async fn run<T, E, F>(
        self,
        start: Lsn,
        events: mpsc::Receiver<SourceEvent>,
        transform: T,
        confirmed: watch::Sender<Lsn>,
        shutdown: F,
    ) -> Result<PipelineSummary, PipelineError>
    where
        T: FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), E> + Send + 'static,
        E: Display + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let (work_tx, mut work_rx) =
            mpsc::channel((self.config.transform_buffer / TRANSFORM_BATCH).max(1));
        let transformer = tokio::spawn(transform_loop(events, transform, work_tx));
        let Pipeline {
            sink,
            acks: mut ack_rx,
            config,
        } = self;

        let mut co = Coordinator {
            cp: Checkpoint::new(start),
            current: None,
            stats: HashMap::new(),
            confirmed,
            ops_submitted: 0,
            commit_times: std::collections::VecDeque::new(),
            current_time: None,
            started_at: start,
        };
        co.publish();
        tokio::pin!(shutdown);
        // Set when a shutdown signal found a transaction open: the loop goes
        // on until that transaction's Commit (or this deadline).
        let mut finishing: Option<tokio::time::Instant> = None;
        let finish_by = config.finish_transaction_timeout;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);

        let outcome: Result<StopReason, PipelineError> = 'run: loop {
            tokio::select! {
                biased;
                Some(acks) = ack_rx.recv() => co.apply(&acks),
                _ = &mut shutdown, if finishing.is_none() => {
                    if co.current.is_none() {
                        break 'run Ok(StopReason::Shutdown);
                    }
                    tracing::info!("shutdown: finishing the transaction in progress first");
                    finishing = Some(tokio::time::Instant::now() + finish_by);
                }
                _ = tokio::time::sleep_until(finishing.unwrap_or(far)), if finishing.is_some() => {
                    tracing::info!("shutdown: the open transaction did not finish in time; it will be replayed");
                    break 'run Ok(StopReason::Shutdown);
                }
                batch = work_rx.recv() => {
                    let Some(batch) = batch else { break 'run Ok(StopReason::SourceEnded) };
                    for work in batch {
                    match work {
                        Work::Begin(lsn, at) => co.begin(lsn, at),
                        Work::Commit(end) => {
                            if let Err(e) = co.commit(end) { break 'run Err(e.into()) }
                            if finishing.is_some() { break 'run Ok(StopReason::Shutdown) }
                        }
                        Work::Keepalive(lsn) => co.keepalive(lsn),
                        Work::Failed(e) => break 'run Err(e),
                        Work::Ops { ops, counts, lsn } => {
                            let n = ops.len() as u64;
                            let tx = match co.register(n, counts, lsn) {
                                Ok(tx) => tx,
                                Err(e) => break 'run Err(e),
                            };
                            let submit = sink.submit_all(ops, tx.0);
                            tokio::pin!(submit);
                            // Keep confirming while the budget makes us wait.
                            loop {
                                tokio::select! {
                                    biased;
                                    r = &mut submit => match r {
                                        Ok(()) => break,
                                        Err(e) => break 'run Err(e.into()),
                                    },
                                    Some(acks) = ack_rx.recv() => co.apply(&acks),
                                    _ = &mut shutdown, if finishing.is_none() => {
                                        tracing::info!("shutdown: finishing the transaction in progress first");
                                        finishing = Some(tokio::time::Instant::now() + finish_by);
                                    }
                                    _ = tokio::time::sleep_until(finishing.unwrap_or(far)), if finishing.is_some() => {
                                        tracing::info!("shutdown: the open transaction did not finish in time; it will be replayed");
                                        break 'run Ok(StopReason::Shutdown);
                                    }
                                }
                            }
                            co.ops_submitted += n;
                        }
                    }
                    }
                }
            }
        };

        // Stop taking events: the reader sees its channel close.
        drop(work_rx);
        transformer.abort();
        match &outcome {
            Ok(reason) => tracing::info!(?reason, "pipeline stopping; finishing in-flight bulks"),
            Err(e) => tracing::error!(error = %e, "pipeline failed; finishing in-flight bulks"),
        }
        let finish = sink.finish(config.drain_timeout);
        tokio::pin!(finish);
        let drained = loop {
            tokio::select! {
                drained = &mut finish => break drained,
                Some(acks) = ack_rx.recv() => co.apply(&acks),
            }
        };
        while let Ok(acks) = ack_rx.try_recv() {
            co.apply(&acks);
        }
        co.publish();
        let confirmed = co.cp.confirmed();
        tracing::info!(confirmed = %confirmed, drained, "pipeline stopped");
        outcome.map(|stopped_by| PipelineSummary {
            confirmed,
            stopped_by,
            ops_submitted: co.ops_submitted,
            drained,
        })
    }
}

struct Coordinator {
    cp: Checkpoint,
    current: Option<TxTicket>,
    stats: TxStats,
    confirmed: watch::Sender<Lsn>,
    ops_submitted: u64,
    /// Commit times of the unconfirmed transactions with ops, in stream
    /// order, for `sluice_replication_lag_seconds`.
    commit_times: std::collections::VecDeque<(u64, std::time::SystemTime)>,
    /// The open transaction's commit time.
    current_time: Option<std::time::SystemTime>,
    started_at: Lsn,
}

impl Coordinator {
    fn begin(&mut self, final_lsn: Lsn, commit_time: std::time::SystemTime) {
        if let Some(open) = self.current.take() {
            tracing::info!(
                abandoned = ?open,
                final_lsn = %final_lsn,
                "a transaction began while another was open (the reader reconnected); \
                 the open one will be delivered again"
            );
            self.stats.remove(&open.0);
        }
        self.current = Some(self.cp.begin(final_lsn));
        self.current_time = Some(commit_time);
        crate::ops::metrics::record_transaction_received(commit_time);
    }

    fn register(&mut self, n: u64, counts: Counts, lsn: Lsn) -> Result<TxTicket, PipelineError> {
        let tx = self
            .current
            .ok_or(PipelineError::ChangeOutsideTransaction(lsn))?;
        self.cp.add_ops(tx, n)?;
        if self.commit_times.back().map(|b| b.0) != Some(tx.0)
            && let Some(t) = self.current_time
        {
            self.commit_times.push_back((tx.0, t));
        }
        let stats = self.stats.entry(tx.0).or_default();
        for (table, op, n) in counts {
            add_count(stats, table, op, n);
        }
        Ok(tx)
    }

    fn commit(&mut self, end: Lsn) -> Result<(), CheckpointError> {
        self.current = None;
        if self.cp.commit(end)? {
            self.publish();
        }
        Ok(())
    }

    fn keepalive(&mut self, wal_end: Lsn) {
        if self.cp.keepalive(wal_end) {
            self.publish();
        }
    }

    fn apply(&mut self, acks: &[Ack]) {
        let mut advanced = false;
        for a in acks {
            advanced |= self.cp.ack(TxTicket(a.tag), a.count);
        }
        if advanced {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let completed = self.cp.take_completed();
        for tx in &completed {
            for (table, op, n) in self.stats.remove(&tx.0).unwrap_or_default() {
                metrics::counter!("sluice_changes_applied_total", "table" => table.to_string(), "op" => op)
                    .increment(n);
            }
        }
        // Confirmation is in stream order: everything up to the last
        // completed transaction is applied.
        if let Some(last) = completed.last() {
            let mut newest = None;
            while let Some(&(seq, t)) = self.commit_times.front()
                && seq <= last.0
            {
                newest = Some(t);
                self.commit_times.pop_front();
            }
            if let Some(t) = newest {
                crate::ops::metrics::record_applied_commit(t);
            }
        }
        // Not at start-up: a backlog may be on its way.
        if self.cp.confirmed() > self.started_at
            && self.cp.pending() == 0
            && !self.cp.in_transaction()
        {
            self.commit_times.clear();
            crate::ops::metrics::record_caught_up();
        }
        let lsn = self.cp.confirmed();
        metrics::gauge!("sluice_confirmed_flush_lsn").set(lsn.0 as f64);
        self.confirmed.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
    }
}

/// `schema.table` of a change, allocated once per table (and again after a
/// rename, which a new Relation message announces).
fn table_name(cache: &mut HashMap<u32, Arc<str>>, change: &Change) -> Arc<str> {
    let r = &change.relation;
    let fresh = |n: &str| {
        n.len() == r.schema.len() + 1 + r.name.len()
            && n.starts_with(r.schema.as_str())
            && n.ends_with(r.name.as_str())
    };
    match cache.get(&r.id) {
        Some(n) if fresh(n) => n.clone(),
        _ => {
            let n: Arc<str> = Arc::from(r.qualified_name());
            cache.insert(r.id, n.clone());
            n
        }
    }
}

fn add_count(counts: &mut Counts, table: Arc<str>, op: &'static str, n: u64) {
    match counts
        .iter_mut()
        .find(|(t, o, _)| *o == op && (Arc::ptr_eq(t, &table) || **t == *table))
    {
        Some((_, _, c)) => *c += n,
        None => counts.push((table, op, n)),
    }
}

/// Ops of consecutive changes, gathered until a transaction boundary or the
/// end of a batch.
#[derive(Default)]
struct PendingOps {
    ops: Vec<BulkOp>,
    counts: Counts,
    lsn: Lsn,
}

impl PendingOps {
    fn flush_into(&mut self, out: &mut Vec<Work>) {
        if !self.ops.is_empty() {
            out.push(Work::Ops {
                ops: std::mem::take(&mut self.ops),
                counts: std::mem::take(&mut self.counts),
                lsn: self.lsn,
            });
        }
    }
}

/// Turn source events into work for the coordinator, in stream order. Takes
/// whatever events are waiting (up to `TRANSFORM_BATCH`) and hands them over
/// as one message.
async fn transform_loop<T, E>(
    mut events: mpsc::Receiver<SourceEvent>,
    mut transform: T,
    work: mpsc::Sender<Vec<Work>>,
) where
    T: FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), E>,
    E: Display,
{
    let mut tables: HashMap<u32, Arc<str>> = HashMap::new();
    let mut evs = Vec::with_capacity(TRANSFORM_BATCH);
    let mut pending = PendingOps::default();
    // The k-th write of a document in a transaction is versioned
    // `final_lsn + k`, in stream order (DESIGN invariant 2).
    let mut versions = TxVersions::new();
    while events.recv_many(&mut evs, TRANSFORM_BATCH).await > 0 {
        let mut out = Vec::new();
        let mut failed = false;
        for ev in evs.drain(..) {
            let w = match ev {
                SourceEvent::Begin {
                    final_lsn,
                    commit_time,
                    ..
                } => {
                    versions.begin(final_lsn.as_version());
                    Work::Begin(final_lsn, commit_time.into())
                }
                SourceEvent::Commit { end_lsn, .. } => Work::Commit(end_lsn),
                SourceEvent::Keepalive { wal_end } => Work::Keepalive(wal_end),
                // A heartbeat (or any non-transactional message) is a position
                // outside every transaction, like a keepalive's WAL end.
                SourceEvent::Message {
                    lsn,
                    transactional: false,
                    ..
                } => Work::Keepalive(lsn),
                SourceEvent::Message { .. } => continue,
                SourceEvent::Change(change) => {
                    let before = pending.ops.len();
                    match transform(&change, &mut pending.ops) {
                        Ok(()) if pending.ops.len() == before => continue,
                        Ok(()) => {
                            versions.stamp(&mut pending.ops[before..]);
                            let table = table_name(&mut tables, &change);
                            add_count(&mut pending.counts, table, op_label(&change.kind), 1);
                            pending.lsn = change.version;
                            continue;
                        }
                        Err(e) => {
                            // Nothing of the failed change goes out.
                            pending.ops.truncate(before);
                            failed = true;
                            Work::Failed(PipelineError::Transform {
                                table: change.relation.qualified_name(),
                                lsn: change.version,
                                message: e.to_string(),
                            })
                        }
                    }
                }
            };
            pending.flush_into(&mut out);
            out.push(w);
            if failed {
                break;
            }
        }
        pending.flush_into(&mut out);
        if out.is_empty() {
            continue;
        }
        if work.send(out).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
