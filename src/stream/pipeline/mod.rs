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
//! to the sink (whose budget bounds what is in flight), so an ack can
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
//!
//! - `transform_task`: events → versioned ops, in runs, in stream order.
//! - `coordinator`: checkpoint bookkeeping and publication of the LSN.
//! - `apply`: the coordinator's loop (work in, ops to the sink, acks back,
//!   shutdown).

mod apply;
mod coordinator;
mod transform_task;

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::model::BulkOp;
use crate::model::lsn::Lsn;
use crate::model::{Change, SourceEvent};
use crate::sink::{Ack, IndexerClosed, Sink};
use crate::stream::checkpoint::CheckpointError;
use crate::stream::transform_step::StepError;
use apply::Apply;
use coordinator::Coordinator;
use transform_task::{TRANSFORM_BATCH, transform_loop};

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
    /// The transform step refused a change; what it said is `source`, to
    /// match on (a mapping to fix, or a re-read that failed).
    #[error("cannot transform a change of {table} at {lsn}: {source}")]
    Transform {
        table: String,
        lsn: Lsn,
        source: StepError,
    },
    #[error("the source stream is inconsistent: {0}")]
    Stream(#[from] CheckpointError),
    #[error("a change arrived outside a transaction (at {0})")]
    ChangeOutsideTransaction(Lsn),
    #[error(transparent)]
    Indexer(#[from] IndexerClosed),
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

/// The running pipeline's parts.
pub struct Pipeline<S> {
    sink: S,
    acks: mpsc::UnboundedReceiver<Vec<Ack>>,
    config: PipelineConfig,
    nested: Option<crate::stream::nested::NestedStream>,
}

impl<S: Sink> Pipeline<S> {
    /// A pipeline writing to `sink`, which acknowledges on `acks`.
    pub fn new(
        sink: S,
        acks: mpsc::UnboundedReceiver<Vec<Ack>>,
        config: PipelineConfig,
    ) -> Pipeline<S> {
        Pipeline {
            sink,
            acks,
            config,
            nested: None,
        }
    }

    /// Rebuild the documents of nested mappings as their tables change.
    pub fn with_nested(mut self, nested: Option<crate::stream::nested::NestedStream>) -> Self {
        self.nested = nested;
        self
    }

    /// Run until `shutdown` completes, the source closes `events`, or an
    /// error. `start` is the slot's confirmed flush LSN; every advance of the
    /// confirmed LSN is published on `confirmed` (the reader sends it in
    /// standby status updates). In-flight bulks are finished (within
    /// `drain_timeout`) and the final confirmed LSN published before return,
    /// on errors too.
    pub async fn run<T, F>(
        self,
        start: Lsn,
        events: mpsc::Receiver<SourceEvent>,
        transform: T,
        confirmed: watch::Sender<Lsn>,
        shutdown: F,
    ) -> Result<PipelineSummary, PipelineError>
    where
        T: FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError> + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let Pipeline {
            sink,
            acks,
            config,
            nested,
        } = self;
        let (work_tx, mut work_rx) =
            mpsc::channel((config.transform_buffer / TRANSFORM_BATCH).max(1));
        let transformer = tokio::spawn(transform_loop(events, transform, work_tx, nested));
        tokio::pin!(shutdown);
        let co = Coordinator::start(start, confirmed);
        let mut apply = Apply::new(co, acks, shutdown, config.finish_transaction_timeout);
        let outcome = apply.take_work(&mut work_rx, &sink).await;

        // Stop taking events: the reader sees its channel close.
        drop(work_rx);
        transformer.abort();
        match &outcome {
            Ok(reason) => tracing::info!(?reason, "pipeline stopping; finishing in-flight bulks"),
            Err(e) => tracing::error!(error = %e, "pipeline failed; finishing in-flight bulks"),
        }
        let drained = apply.drain(sink, config.drain_timeout).await;
        let confirmed = apply.co.cp.confirmed();
        tracing::info!(confirmed = %confirmed, drained, "pipeline stopped");
        outcome.map(|stopped_by| PipelineSummary {
            confirmed,
            stopped_by,
            ops_submitted: apply.co.ops_submitted,
            drained,
        })
    }
}

#[cfg(test)]
mod tests;
