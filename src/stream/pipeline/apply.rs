//! The coordinator's loop: take the transform task's work in stream order,
//! hand ops to the sink, and — whatever it waits on, the next work or a sink
//! whose budget is spent — keep applying acknowledgements and watching for
//! shutdown. That waiting is written once, in [`Apply::meanwhile`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::coordinator::Coordinator;
use super::transform_task::Work;
use super::{PipelineError, StopReason};
use crate::sink::{Ack, Sink};

/// What a wait ended with.
enum Waited<T> {
    Ready(T),
    /// Shutdown: signalled with no transaction open, or the open one did
    /// not commit in time.
    Stop,
}

/// The loop's state besides the work channel and the sink.
pub(super) struct Apply<'a, F> {
    pub(super) co: Coordinator,
    acks: mpsc::UnboundedReceiver<Vec<Ack>>,
    shutdown: Pin<&'a mut F>,
    /// Set when a shutdown signal found a transaction open: the loop goes
    /// on until that transaction's Commit, or this deadline.
    finishing: Option<Instant>,
    finish_by: Duration,
}

impl<'a, F: Future<Output = ()>> Apply<'a, F> {
    pub(super) fn new(
        co: Coordinator,
        acks: mpsc::UnboundedReceiver<Vec<Ack>>,
        shutdown: Pin<&'a mut F>,
        finish_by: Duration,
    ) -> Self {
        Apply {
            co,
            acks,
            shutdown,
            finishing: None,
            finish_by,
        }
    }

    /// Take work until the source ends, a shutdown, or an error.
    pub(super) async fn take_work<S: Sink>(
        &mut self,
        work: &mut mpsc::Receiver<Vec<Work>>,
        sink: &S,
    ) -> Result<StopReason, PipelineError> {
        loop {
            let batch = match self.meanwhile(work.recv()).await {
                Waited::Ready(Some(batch)) => batch,
                Waited::Ready(None) => return Ok(StopReason::SourceEnded),
                Waited::Stop => return Ok(StopReason::Shutdown),
            };
            for w in batch {
                if let Some(stop) = self.take(w, sink).await? {
                    return Ok(stop);
                }
            }
        }
    }

    /// One piece of work. `Some`: stop here.
    async fn take<S: Sink>(
        &mut self,
        work: Work,
        sink: &S,
    ) -> Result<Option<StopReason>, PipelineError> {
        match work {
            Work::Begin(lsn, at) => self.co.begin(lsn, at),
            Work::Commit(end) => {
                self.co.commit(end)?;
                if self.finishing.is_some() {
                    return Ok(Some(StopReason::Shutdown));
                }
            }
            Work::Keepalive(lsn) => self.co.keepalive(lsn),
            Work::Failed(e) => return Err(e),
            Work::Ops { ops, counts, lsn } => {
                let n = ops.len() as u64;
                // Registered first, so no ack can precede it.
                let tx = self.co.register(n, counts, lsn)?;
                match self.meanwhile(sink.submit_all(ops, tx.0)).await {
                    Waited::Ready(submitted) => submitted?,
                    Waited::Stop => return Ok(Some(StopReason::Shutdown)),
                }
                self.co.ops_submitted += n;
            }
        }
        Ok(None)
    }

    /// Wait for `fut` while applying acknowledgements (so the confirmed LSN
    /// moves while the sink makes us wait) and watching for shutdown.
    async fn meanwhile<T>(&mut self, fut: impl Future<Output = T>) -> Waited<T> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                Some(acks) = self.acks.recv() => self.co.apply(&acks),
                _ = &mut self.shutdown, if self.finishing.is_none() => {
                    if self.co.current.is_none() {
                        return Waited::Stop;
                    }
                    tracing::info!("shutdown: finishing the transaction in progress first");
                    self.finishing = Some(Instant::now() + self.finish_by);
                }
                _ = deadline(self.finishing) => {
                    tracing::info!("shutdown: the open transaction did not finish in time; it will be replayed");
                    return Waited::Stop;
                }
                out = &mut fut => return Waited::Ready(out),
            }
        }
    }

    /// Let the sink settle what it holds (within `timeout`), applying the
    /// acknowledgements as they come, then publish the final LSN. Returns
    /// false if the sink gave up.
    pub(super) async fn drain<S: Sink>(&mut self, sink: S, timeout: Duration) -> bool {
        let finish = sink.finish(timeout);
        tokio::pin!(finish);
        let drained = loop {
            tokio::select! {
                drained = &mut finish => break drained,
                Some(acks) = self.acks.recv() => self.co.apply(&acks),
            }
        };
        while let Ok(acks) = self.acks.try_recv() {
            self.co.apply(&acks);
        }
        self.co.publish();
        drained
    }
}

/// Completes at `at`; never without one.
async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
