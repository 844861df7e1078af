//! The bulk indexer: batches `BulkOp`s into `_bulk` requests, sends several
//! at once, and resolves every item to done (acknowledged), retried or
//! dead-lettered.
//!
//! Ops are partitioned by (index, _id) over `concurrency` workers; each worker
//! has one request in flight and resolves a batch fully before the next, so
//! writes to one document reach Elasticsearch in stream order (DESIGN
//! invariant 2). Retryable failures are retried (only the failed items, plus
//! later items of the same document) with jittered exponential backoff for as
//! long as it takes; other rejections go to the dead-letter index (invariant
//! 5). Memory is bounded by a byte budget and a count of op slots, both held
//! from `submit` until the op is acknowledged (invariant 7).
//!
//! - this file: the handle (`submit_all` hands ops to the workers in chunks,
//!   under the budget; `finish` drains them) and the [`Sink`] impl;
//! - `batch`: when a worker's batch closes;
//! - `worker`: send a batch, act on the request's outcome, retry;
//! - `items`: per-item results (done, retried, held, dead-lettered);
//! - `dead_letters`: storing rejected ops in the dead-letter index.

mod batch;
mod dead_letters;
pub(crate) mod items;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use elasticsearch::Elasticsearch;
use tokio::sync::{OnceCell, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::bulk;
use super::seam::Sink;
pub use super::seam::{Ack, IndexerClosed};
use crate::model::{BulkOp, RetryPolicy};
use crate::ops::Holds;
use batch::Inbox;
use worker::Worker;

/// How the indexer batches and sends.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Bulk requests in flight at once (one per worker).
    pub concurrency: usize,
    /// A batch closes at this many ops...
    pub max_batch_docs: usize,
    /// ...or this many body bytes...
    pub max_batch_bytes: usize,
    /// ...or this long after its first op arrived.
    pub linger: Duration,
    /// Bytes of ops accepted but not yet acknowledged; `submit` waits beyond.
    pub max_in_flight_bytes: usize,
    /// Where rejected documents go.
    pub dead_letter_index: String,
    /// How failed requests and items are retried (for as long as it takes).
    pub retry: RetryPolicy,
    /// Where workers report writes they hold back because of the cluster's
    /// configuration (read by `/ready`).
    pub holds: Holds,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            concurrency: 4,
            max_batch_docs: 5_000,
            max_batch_bytes: 8 << 20,
            linger: Duration::from_millis(20),
            max_in_flight_bytes: 128 << 20,
            dead_letter_index: "sluice-dead-letters".into(),
            retry: RetryPolicy::BULK,
            holds: Holds::new(),
        }
    }
}

impl IndexerConfig {
    /// Roughly the most memory the indexer holds: ops accepted but not yet
    /// acknowledged, plus one rendered request body per worker.
    pub fn memory_estimate(&self) -> usize {
        self.max_in_flight_bytes + self.concurrency.max(1) * self.max_batch_bytes
    }

    /// Size the budgets so `memory_estimate()` stays within `bytes`: request
    /// bodies get at most a quarter of it, queued ops the rest.
    pub fn fit_memory(mut self, bytes: usize) -> Self {
        let workers = self.concurrency.max(1);
        let per_body = (bytes / 4 / workers).clamp(64 << 10, self.max_batch_bytes);
        self.max_batch_bytes = per_body;
        self.max_in_flight_bytes = bytes.saturating_sub(per_body * workers).max(1 << 20);
        self
    }
}

struct Item {
    op: BulkOp,
    tag: u64,
    cost: u32,
}

/// Most ops handed to the workers per budget acquisition: one wake-up of a
/// worker per chunk rather than per op (which cost more than the op itself).
const SUBMIT_CHUNK_OPS: usize = 1024;

/// Handle to the running workers.
pub struct Indexer {
    /// Each worker receives its ops in chunks, in stream order.
    workers: Vec<mpsc::UnboundedSender<Vec<Item>>>,
    handles: Vec<JoinHandle<()>>,
    budget: Arc<Semaphore>,
    budget_total: u32,
    /// Ops accepted but not yet acknowledged, at most two batches per
    /// worker: enough for the next batch to fill while one is in flight.
    /// More read-ahead only costs memory (the byte budget alone let a
    /// backlog fill hundreds of MB) and gains nothing once Elasticsearch is
    /// the bottleneck.
    slots: Arc<Semaphore>,
    slots_total: usize,
}

impl Indexer {
    /// Start the workers. Acknowledgements arrive on `acks` (unbounded so a
    /// worker never waits on the consumer, which may itself wait in `submit`;
    /// its size is bounded by the ops in flight).
    pub fn start(
        client: Elasticsearch,
        config: IndexerConfig,
        acks: mpsc::UnboundedSender<Vec<Ack>>,
    ) -> Indexer {
        let concurrency = config.concurrency.max(1);
        let budget_total = config.max_in_flight_bytes.clamp(1 << 16, u32::MAX as usize) as u32;
        let budget = Arc::new(Semaphore::new(budget_total as usize));
        let slots_total =
            (2 * concurrency * config.max_batch_docs.max(1)).max(2 * SUBMIT_CHUNK_OPS);
        let slots = Arc::new(Semaphore::new(slots_total));
        let config = Arc::new(config);
        let dead_letter_ready = Arc::new(OnceCell::new());
        let mut workers = Vec::with_capacity(concurrency);
        let mut handles = Vec::with_capacity(concurrency);
        for id in 0..concurrency {
            // Unbounded: what is queued is bounded by the byte budget and
            // the op slots taken in `submit_all`.
            let (tx, rx) = mpsc::unbounded_channel();
            let w = Worker {
                id,
                client: client.clone(),
                config: config.clone(),
                rx: Inbox::new(rx),
                acks: acks.clone(),
                budget: budget.clone(),
                slots: slots.clone(),
                dead_letter_ready: dead_letter_ready.clone(),
                body: Default::default(),
            };
            workers.push(tx);
            handles.push(tokio::spawn(w.run()));
        }
        Indexer {
            workers,
            handles,
            budget,
            budget_total,
            slots,
            slots_total,
        }
    }

    /// Queue one op; `tag` comes back in its `Ack`. Waits while the in-flight
    /// byte budget is spent. Ops for one document must be submitted in stream
    /// order (from one task).
    pub async fn submit(&self, op: BulkOp, tag: u64) -> Result<(), IndexerClosed> {
        self.submit_all(vec![op], tag).await
    }

    /// Queue several ops, in order, all with `tag`. Same contract as
    /// `submit`, with one budget acquisition and one message per worker for
    /// each chunk of ops instead of per op.
    pub async fn submit_all(&self, ops: Vec<BulkOp>, tag: u64) -> Result<(), IndexerClosed> {
        let workers = self.workers.len();
        // A chunk never needs more than an eighth of the budget, so several
        // submitters' chunks and the workers' batches can all fit.
        let chunk_bytes = (self.budget_total / 8).max(1) as u64;
        let mut parts: Vec<Vec<Item>> = (0..workers).map(|_| Vec::new()).collect();
        let (mut bytes, mut count) = (0u64, 0usize);
        for op in ops {
            let cost = (op.approx_size().min(self.budget_total as usize)) as u32;
            if count > 0 && (count >= SUBMIT_CHUNK_OPS || bytes + cost as u64 > chunk_bytes) {
                self.hand_over(&mut parts, bytes).await?;
                (bytes, count) = (0, 0);
            }
            let w = bulk::partition(&op, workers);
            parts[w].push(Item { op, tag, cost });
            bytes += cost as u64;
            count += 1;
        }
        if count > 0 {
            self.hand_over(&mut parts, bytes).await?;
        }
        Ok(())
    }

    /// Take `bytes` of the budget (waiting while it is spent), then send each
    /// worker its part. A chunk holds at most an eighth of the budget, or one
    /// op whose cost is clamped to the whole budget, so `bytes` always fits.
    async fn hand_over(&self, parts: &mut [Vec<Item>], bytes: u64) -> Result<(), IndexerClosed> {
        debug_assert!(bytes <= self.budget_total as u64);
        let count: usize = parts.iter().map(Vec::len).sum();
        debug_assert!(count <= self.slots_total);
        self.slots
            .acquire_many(count.min(self.slots_total) as u32)
            .await
            .map_err(|_| IndexerClosed)?
            .forget();
        self.budget
            .acquire_many(bytes.min(self.budget_total as u64) as u32)
            .await
            .map_err(|_| IndexerClosed)?
            .forget();
        for (w, part) in parts.iter_mut().enumerate() {
            if !part.is_empty() {
                self.workers[w]
                    .send(std::mem::take(part))
                    .map_err(|_| IndexerClosed)?;
            }
        }
        Ok(())
    }

    /// Bytes currently accepted but not acknowledged.
    pub fn in_flight_bytes(&self) -> usize {
        self.budget_total as usize - self.budget.available_permits()
    }

    /// Stop taking ops, send everything queued and wait until every op is
    /// resolved, for at most `timeout` (retries can last as long as
    /// Elasticsearch is down). Returns false if it timed out: the workers are
    /// then aborted and their unacknowledged ops are simply never confirmed.
    pub async fn finish(self, timeout: Duration) -> bool {
        drop(self.workers);
        let mut handles = self.handles;
        let all = futures::future::join_all(handles.iter_mut());
        match tokio::time::timeout(timeout, all).await {
            Ok(results) => {
                for r in results {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "bulk worker failed");
                    }
                }
                true
            }
            Err(_) => {
                tracing::warn!(
                    timeout_secs = timeout.as_secs_f64(),
                    "in-flight bulks did not finish in time; they will be replayed on restart"
                );
                for h in &handles {
                    h.abort();
                }
                false
            }
        }
    }
}

impl Sink for Indexer {
    async fn submit_all(&self, ops: Vec<BulkOp>, tag: u64) -> Result<(), IndexerClosed> {
        Indexer::submit_all(self, ops, tag).await
    }

    async fn finish(self, timeout: Duration) -> bool {
        Indexer::finish(self, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_bound_splits_between_queued_ops_and_request_bodies() {
        let c = IndexerConfig::default().fit_memory(64 << 20);
        assert!(c.memory_estimate() <= 64 << 20);
        assert_eq!(c.max_batch_bytes, 4 << 20, "a quarter over 4 workers");
        assert_eq!(c.max_in_flight_bytes, 48 << 20);
        let big = IndexerConfig::default().fit_memory(1 << 30);
        assert_eq!(big.max_batch_bytes, 8 << 20, "never above the batch size");
        assert!(big.memory_estimate() <= 1 << 30);
    }
}
