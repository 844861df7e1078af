//! The transform task: source events in, work for the coordinator out, in
//! stream order. Each change goes through the transform step; its ops are
//! versioned (the k-th write of a document in a transaction gets
//! `final_lsn + k`, DESIGN invariant 2) and gathered into runs, so the
//! coordinator takes a batch of ops per message rather than per change. A
//! change the step refuses ends the task: nothing of it goes out.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::PipelineError;
use crate::model::BulkOp;
use crate::model::lsn::Lsn;
use crate::model::{Change, ChangeKind, SourceEvent};
use crate::stream::nested::NestedStream;
use crate::stream::transform_step::StepError;
use crate::transform::versions::TxVersions;

/// Source events the transform task takes per wake-up (and so, roughly, per
/// message to the coordinator): handing work over one change at a time cost
/// more in task wake-ups than the transformation itself.
pub(super) const TRANSFORM_BATCH: usize = 256;

/// Changes per (table, op) in a run of ops, reported as applied at
/// confirmation.
pub(super) type Counts = Vec<(Arc<str>, &'static str, u64)>;

/// What the transform task hands the coordinator (in batches, in stream
/// order).
pub(super) enum Work {
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

pub(super) fn add_count(counts: &mut Counts, table: Arc<str>, op: &'static str, n: u64) {
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
pub(super) async fn transform_loop<T>(
    mut events: mpsc::Receiver<SourceEvent>,
    mut transform: T,
    work: mpsc::Sender<Vec<Work>>,
    mut nested: Option<NestedStream>,
) where
    T: FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError>,
{
    let mut tables: HashMap<u32, Arc<str>> = HashMap::new();
    let mut evs = Vec::with_capacity(TRANSFORM_BATCH);
    let mut pending = PendingOps::default();
    // The k-th write of a document in a transaction is versioned
    // `final_lsn + k`, in stream order (DESIGN invariant 2).
    let mut versions = TxVersions::new();
    // The open transaction: commit LSN, id and time (for nested touches).
    let mut open = (Lsn(0), 0u32, chrono::Utc::now());
    while events.recv_many(&mut evs, TRANSFORM_BATCH).await > 0 {
        let mut out = Vec::new();
        let mut failed = false;
        // Where the batch's rebuilt nested documents go: before the first
        // Commit of a transaction that touched one.
        let mut rebuild_at = None;
        for ev in evs.drain(..) {
            let w = match ev {
                SourceEvent::Begin {
                    final_lsn,
                    commit_time,
                    xid,
                } => {
                    versions.begin(final_lsn.as_version());
                    open = (final_lsn, xid, commit_time);
                    if let Some(n) = nested.as_mut() {
                        n.begin();
                    }
                    Work::Begin(final_lsn, commit_time.into())
                }
                SourceEvent::Commit { end_lsn, .. } => {
                    pending.flush_into(&mut out);
                    if let Some(n) = nested.as_mut()
                        && n.commit(open.0, open.1, open.2)
                        && rebuild_at.is_none()
                    {
                        rebuild_at = Some(out.len());
                    }
                    Work::Commit(end_lsn)
                }
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
                    let noted = match nested.as_mut() {
                        Some(n) => n.note(&change).map_err(|e| StepError::Mapping(Box::new(e))),
                        None => Ok(()),
                    };
                    let before = pending.ops.len();
                    match noted.and_then(|()| transform(&change, &mut pending.ops)) {
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
                                source: e,
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
        if let (Some(at), Some(n), false) = (rebuild_at, nested.as_mut(), failed) {
            let rest = out.split_off(at);
            if !out.is_empty() && work.send(out).await.is_err() {
                return;
            }
            if !send_rebuilt(n, &work).await {
                return;
            }
            out = rest;
        }
        if out.is_empty() {
            continue;
        }
        if work.send(out).await.is_err() || failed {
            return;
        }
    }
}

/// Hand over the batch's rebuilt nested documents page by page (each page
/// waits for room in the channel, which bounds memory however many roots a
/// change touched). False when the pipeline is gone or the rebuild failed.
async fn send_rebuilt(n: &mut NestedStream, work: &mpsc::Sender<Vec<Work>>) -> bool {
    loop {
        let w = match n.next_page().await {
            Ok(None) => return true,
            Ok(Some(page)) if page.ops.is_empty() => continue,
            Ok(Some(page)) => Work::Ops {
                counts: vec![(page.table, "rebuild", page.roots)],
                ops: page.ops,
                lsn: page.lsn,
            },
            Err(e) => {
                let _ = work
                    .send(vec![Work::Failed(PipelineError::Transform {
                        table: "nested documents".into(),
                        lsn: Lsn(0),
                        source: e,
                    })])
                    .await;
                return false;
            }
        };
        if work.send(vec![w]).await.is_err() {
            return false;
        }
    }
}
