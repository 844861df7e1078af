//! The seam between the stream and the sink: what `stream::Pipeline` needs
//! from whatever writes its ops, so the apply loop can run against the bulk
//! indexer in production and against a sink in memory in its tests.
//!
//! The contract keeps DESIGN invariant 1 on the stream's side: an op is
//! acknowledged (an [`Ack`] carrying the tag it was submitted with) only
//! once it is settled — written, refused as stale, or stored as a dead
//! letter — and never before it was submitted. The pipeline confirms only
//! what came back acknowledged. Only `BulkOp`s and plain tags cross here:
//! the sink never sees a source type.

use std::future::Future;
use std::time::Duration;

use crate::model::BulkOp;

/// `count` ops submitted with `tag` are settled: written, refused as stale,
/// or stored as dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tag: u64,
    pub count: u64,
}

/// The sink stopped (a worker died); nothing more can be submitted.
#[derive(Debug, thiserror::Error)]
#[error("the bulk indexer has stopped")]
pub struct IndexerClosed;

/// Where the pipeline hands its ops. Acknowledgements come back on a channel
/// the sink was started with (`Vec<Ack>` messages, in any order), so the
/// pipeline can take them while it waits in `submit`.
pub trait Sink: Send + Sync + 'static {
    /// Queue `ops`, in order, each to come back acknowledged with `tag`.
    /// Waits while the sink's budget of unacknowledged ops is spent. Ops for
    /// one document must be submitted in stream order (from one task).
    fn submit_all(
        &self,
        ops: Vec<BulkOp>,
        tag: u64,
    ) -> impl Future<Output = Result<(), IndexerClosed>> + Send;

    /// Stop taking ops and settle everything queued, for at most `timeout`.
    /// Returns false if it gave up: what was not settled is never
    /// acknowledged, so never confirmed, and the slot replays it.
    fn finish(self, timeout: Duration) -> impl Future<Output = bool> + Send
    where
        Self: Sized;
}
