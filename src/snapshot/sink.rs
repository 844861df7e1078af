//! The production `SnapshotSink`: snapshot rows go through the same
//! transformer and bulk indexer as streamed changes (one pipeline for batch
//! and live data), and a batch is acknowledged only when Elasticsearch has
//! settled every op it produced — written, refused as stale (409), or stored
//! as a dead letter. That acknowledgement is what lets the snapshot record a
//! chunk as done (progress stored only after the destination is durable).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sink::Elasticsearch;
use tokio::sync::{mpsc, oneshot};

use crate::model::BulkOp;
use crate::model::change::Change;
use crate::sink::indexer::{Ack, Indexer, IndexerConfig};
use crate::transform::Transformer;

use super::seams::{AckFuture, BoxFuture, SinkError, SnapshotSink};

/// Outstanding ops per batch tag, and who to tell when they are all done.
type Waiting = Arc<Mutex<HashMap<u64, (u64, oneshot::Sender<Result<(), SinkError>>)>>>;

pub struct IndexerSink {
    indexer: Indexer,
    transformer: Mutex<Transformer>,
    /// Target index → index actually written (a reindex writes its build index).
    overrides: HashMap<String, Arc<str>>,
    waiting: Waiting,
    next_tag: AtomicU64,
}

impl IndexerSink {
    pub fn start(
        client: Elasticsearch,
        config: IndexerConfig,
        transformer: Transformer,
        overrides: HashMap<String, String>,
    ) -> IndexerSink {
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<Ack>>();
        let indexer = Indexer::start(client, config, ack_tx);
        let waiting: Waiting = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(acks) = ack_rx.recv().await {
                let mut w = w.lock().expect("ack table");
                for ack in acks {
                    let done = match w.get_mut(&ack.tag) {
                        Some((left, _)) => {
                            *left = left.saturating_sub(ack.count);
                            *left == 0
                        }
                        None => false,
                    };
                    if done && let Some((_, tx)) = w.remove(&ack.tag) {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            // The indexer is gone: every batch still waiting failed.
            w.lock().expect("ack table").clear();
        });
        IndexerSink {
            indexer,
            transformer: Mutex::new(transformer),
            overrides: overrides
                .into_iter()
                .map(|(k, v)| (k, Arc::from(v)))
                .collect(),
            waiting,
            next_tag: AtomicU64::new(1),
        }
    }

    /// Send what is queued and wait for it (bounded by `timeout`).
    pub async fn finish(self, timeout: Duration) -> bool {
        self.indexer.finish(timeout).await
    }

    fn transform(&self, changes: &[Change]) -> Result<Vec<BulkOp>, SinkError> {
        let mut ops = Vec::with_capacity(changes.len());
        let mut t = self.transformer.lock().expect("transformer");
        for c in changes {
            t.transform(c, &mut ops)
                .map_err(|e| SinkError::Failed(format!("transforming a snapshot row: {e}")))?;
        }
        drop(t);
        if !self.overrides.is_empty() {
            for op in &mut ops {
                if let Some(to) = self.overrides.get(&*op.index) {
                    op.index = to.clone();
                }
            }
        }
        Ok(ops)
    }
}

impl SnapshotSink for IndexerSink {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        Box::pin(async move {
            let ops = self.transform(&changes)?;
            let (tx, rx) = oneshot::channel();
            if ops.is_empty() {
                let _ = tx.send(Ok(()));
            } else {
                let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
                // Registered before the first submit, so no ack can precede it.
                self.waiting
                    .lock()
                    .expect("ack table")
                    .insert(tag, (ops.len() as u64, tx));
                self.indexer
                    .submit_all(ops, tag)
                    .await
                    .map_err(|_| SinkError::Closed)?;
            }
            let ack: AckFuture =
                Box::pin(async move { rx.await.unwrap_or(Err(SinkError::Closed)) });
            Ok(ack)
        })
    }
}
