//! The seams where the rest of Sluice plugs into the snapshot: small traits
//! and closures over plain types, so the snapshot does not depend on how the
//! source, the converter or the sink are built.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

pub use super::error::SinkError;
use super::error::SnapshotError;
use crate::model::change::Change;
use crate::model::lsn::Lsn;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Column text (as PostgreSQL's output function prints it, the same text
/// pgoutput sends) → JSON, by type OID. The source layer's converter plugs in
/// here: `Arc::new(|oid, text| convert(oid, text).map_err(|e| e.to_string()))`.
pub type ValueConverter = Arc<dyn Fn(u32, &str) -> Result<serde_json::Value, String> + Send + Sync>;

/// Opens an ordinary SQL connection (`tokio_postgres`) to the source
/// database, with whatever TLS the config asks for; the connection task is
/// spawned by the connector.
pub type PgConnector = Arc<
    dyn Fn() -> BoxFuture<'static, Result<tokio_postgres::Client, SnapshotError>> + Send + Sync,
>;

/// A snapshot exported by PostgreSQL, valid while `guard` lives.
pub struct ExportedSnapshot {
    /// The name for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The consistent point P: snapshot rows are written with version P − 1.
    pub consistent_point: Lsn,
    /// Keeps the exporting session open and idle (the replication
    /// connection that ran `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`).
    /// Dropped as soon as every reader has imported the snapshot, so an
    /// initial snapshot's replication connection may go on to
    /// `START_REPLICATION`.
    pub guard: Box<dyn Any + Send>,
}

impl std::fmt::Debug for ExportedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedSnapshot")
            .field("name", &self.name)
            .field("consistent_point", &self.consistent_point)
            .finish()
    }
}

/// Exports a fresh snapshot. In production: a temporary logical slot created
/// with `EXPORT_SNAPSHOT` on a replication connection (or the main slot for
/// the initial load). Called once per run (a resumed run gets a new one).
pub type SnapshotExporter =
    Arc<dyn Fn() -> BoxFuture<'static, Result<ExportedSnapshot, String>> + Send + Sync>;

/// Resolves once Elasticsearch acknowledged every operation of one batch:
/// written, refused as stale (409), or stored as a dead letter.
pub type AckFuture = BoxFuture<'static, Result<(), SinkError>>;

/// Where snapshot rows go: the same transformer and indexer as the stream.
pub trait SnapshotSink: Send + Sync {
    /// Hand over a batch of `Insert` changes. The outer future resolves when
    /// the sink has accepted the batch (it may wait: that is backpressure);
    /// the returned `AckFuture` resolves when the batch is durable.
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>>;
}

/// A batch sent through a channel, with its acknowledgement.
#[derive(Debug)]
pub struct SnapshotBatch {
    pub changes: Vec<Change>,
    /// Send `Ok(())` once every op produced from `changes` is acknowledged by
    /// Elasticsearch (or dead-lettered); dropping it without sending means
    /// the batch failed and the chunk stays pending.
    pub ack: oneshot::Sender<Result<(), SinkError>>,
}

/// The channel form of the sink seam, for a pipeline that takes batches
/// from a bounded `mpsc` channel: capacity is the backpressure.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    tx: mpsc::Sender<SnapshotBatch>,
}

impl ChannelSink {
    /// A sink and the receiving end for the pipeline.
    pub fn new(capacity: usize) -> (ChannelSink, mpsc::Receiver<SnapshotBatch>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (ChannelSink { tx }, rx)
    }
}

impl SnapshotSink for ChannelSink {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        Box::pin(async move {
            let (ack, done) = oneshot::channel();
            self.tx
                .send(SnapshotBatch { changes, ack })
                .await
                .map_err(|_| SinkError::Closed)?;
            let fut: AckFuture =
                Box::pin(async move { done.await.unwrap_or(Err(SinkError::Closed)) });
            Ok(fut)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_channel_batch_is_acknowledged_only_when_the_pipeline_says_so() {
        let (sink, mut rx) = ChannelSink::new(1);
        let ack = sink.write(Vec::new()).await.unwrap();
        let batch = rx.recv().await.unwrap();
        let waiter = tokio::spawn(ack);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        batch.ack.send(Ok(())).unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_dropped_acknowledgement_fails_the_batch() {
        let (sink, mut rx) = ChannelSink::new(1);
        let ack = sink.write(Vec::new()).await.unwrap();
        drop(rx.recv().await.unwrap());
        assert_eq!(ack.await, Err(SinkError::Closed));
    }
}
