//! The in-process stream against the real Elasticsearch, fed by hand (no
//! PostgreSQL): relations and rows, a minimal transformer, a `Feed` of
//! source events, a running `Pipeline` with its confirmed LSN, and bulk ops
//! for driving an `Indexer` directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use sluice::Lsn;
use sluice::model::RetryPolicy;
use sluice::model::{
    BulkOp, Change, ChangeKind, Column, Datum, OldRow, OpAction, OpOrigin, Relation,
    ReplicaIdentity, SourceEvent,
};
use sluice::sink::indices::{IndexSpec, ensure_index};
use sluice::sink::{Ack, EsConfig, Indexer, IndexerConfig, build_client};
use sluice::stream::pipeline::{Pipeline, PipelineConfig, PipelineError, PipelineSummary};
use sluice::stream::transform_step::StepError;
use sluice::transform::TransformError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{services, wait_until};

/// Sluice's own Elasticsearch client for `url` (5 s request timeout).
pub fn client_for(url: &str) -> elasticsearch::Elasticsearch {
    build_client(&EsConfig {
        urls: vec![url.to_string()],
        request_timeout: Duration::from_secs(5),
        ..EsConfig::default()
    })
    .expect("client")
}

/// Create `name` through Sluice's `ensure_index` (no alias), with the
/// tombstone window `window`.
pub async fn ensure_test_index(name: &str, settings: Value, mappings: Value, window: Duration) {
    let spec = IndexSpec {
        name: name.to_string(),
        settings,
        mappings,
        alias: None,
    };
    ensure_index(&client_for(&services().es_url), &spec, window)
        .await
        .unwrap_or_else(|e| panic!("ensure index {name}: {e}"));
}

/// An index that refuses writes (`blocks.write`) until unblocked.
pub async fn write_blocked_index(name: &str) {
    ensure_test_index(
        name,
        json!({"index": {"number_of_replicas": 0, "blocks.write": true}}),
        Value::Null,
        Duration::from_secs(120),
    )
    .await;
}

/// An index that takes only documents `{"n": <long>}`.
pub async fn strict_long_index(name: &str) {
    ensure_test_index(
        name,
        json!({"index": {"number_of_replicas": 0}}),
        json!({"dynamic": "strict", "properties": {"n": {"type": "long"}}}),
        Duration::from_secs(3600),
    )
    .await;
}

/// `public.<name>` with columns `id bigint` (the key) and `n text`.
pub fn relation(id: u32, name: &str) -> Arc<Relation> {
    Arc::new(Relation {
        id,
        schema: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
                is_key: true,
            },
            Column {
                name: "n".into(),
                type_oid: 25,
                type_modifier: -1,
                is_key: false,
            },
        ],
    })
}

pub fn row(id: i64, n: Value) -> Vec<Datum> {
    vec![Datum::Value(json!(id)), Datum::Value(n)]
}

/// `table → index` pairs for [`transformer`].
pub fn indices(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(t, i)| (t.to_string(), i.to_string()))
        .collect()
}

/// A minimal stand-in for the real transformer: table `public.<t>` goes to
/// the index `indices[t]`; other tables are filtered out (no ops).
pub fn transformer(
    indices: HashMap<String, String>,
) -> impl FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError> + Send + 'static {
    move |c: &Change, out: &mut Vec<BulkOp>| {
        let Some(index) = indices.get(&c.relation.name) else {
            return Ok(());
        };
        let to_doc = |r: &Vec<Datum>| {
            let mut m = Map::new();
            for (col, d) in c.relation.columns.iter().zip(r) {
                if let Datum::Value(v) = d {
                    m.insert(col.name.clone(), v.clone());
                }
            }
            Value::Object(m)
        };
        let (action, key_row) = match &c.kind {
            ChangeKind::Insert { new } | ChangeKind::Update { new, .. } => (
                OpAction::Index {
                    doc: serde_json::to_vec(&to_doc(new)).unwrap(),
                },
                new,
            ),
            ChangeKind::Delete { old } => (OpAction::Delete, old.row()),
            ChangeKind::Truncate => {
                return Err(StepError::Mapping(Box::new(TransformError::Truncated {
                    table: c.relation.qualified_name().into(),
                    mapping: c.relation.name.as_str().into(),
                })));
            }
        };
        let Datum::Value(id) = &key_row[0] else {
            return Err(StepError::Mapping(Box::new(TransformError::NoId {
                table: c.relation.qualified_name().into(),
                mapping: c.relation.name.as_str().into(),
            })));
        };
        out.push(BulkOp {
            action,
            index: Arc::from(index.as_str()),
            id: id.to_string(),
            routing: None,
            pipeline: None,
            version: c.version.as_version(),
            origin: OpOrigin {
                table: Arc::from(c.relation.qualified_name()),
                key: json!({ "id": id }).to_string(),
                lsn: c.version,
            },
        });
        Ok(())
    }
}

/// Builds the events of transactions.
#[derive(Clone)]
pub struct Feed {
    pub tx: mpsc::Sender<SourceEvent>,
}

impl Feed {
    pub async fn send(&self, ev: SourceEvent) {
        self.tx.send(ev).await.expect("pipeline is running");
    }

    pub async fn begin(&self, final_lsn: u64) {
        self.send(SourceEvent::Begin {
            final_lsn: Lsn(final_lsn),
            commit_time: Utc::now(),
            xid: final_lsn as u32,
        })
        .await;
    }

    pub async fn change(&self, rel: &Arc<Relation>, version: u64, kind: ChangeKind) {
        self.send(SourceEvent::Change(Change {
            relation: rel.clone(),
            kind,
            version: Lsn(version),
            commit_time: Utc::now(),
            xid: 0,
        }))
        .await;
    }

    pub async fn insert(&self, rel: &Arc<Relation>, version: u64, id: i64, n: Value) {
        self.change(rel, version, ChangeKind::Insert { new: row(id, n) })
            .await;
    }

    /// An update without the old row (REPLICA IDENTITY DEFAULT, key kept).
    pub async fn update(&self, rel: &Arc<Relation>, version: u64, id: i64, n: Value) {
        self.change(
            rel,
            version,
            ChangeKind::Update {
                old: None,
                new: row(id, n),
            },
        )
        .await;
    }

    pub async fn delete(&self, rel: &Arc<Relation>, version: u64, id: i64) {
        self.change(
            rel,
            version,
            ChangeKind::Delete {
                old: OldRow::Key(vec![Datum::Value(json!(id)), Datum::Null]),
            },
        )
        .await;
    }

    pub async fn commit(&self, final_lsn: u64, end_lsn: u64) {
        self.send(SourceEvent::Commit {
            commit_lsn: Lsn(final_lsn),
            end_lsn: Lsn(end_lsn),
        })
        .await;
    }

    /// A whole transaction inserting `ids` with `n = id * mult`.
    pub async fn insert_tx(
        &self,
        rel: &Arc<Relation>,
        lsn: u64,
        ids: std::ops::Range<i64>,
        mult: i64,
    ) {
        self.begin(lsn).await;
        for id in ids {
            self.insert(rel, lsn, id, json!(id * mult)).await;
        }
        self.commit(lsn, lsn + 8).await;
    }
}

/// The pipeline settings the in-process tests use: small batches, quick
/// retries, a short wait for a transaction open at shutdown.
pub fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        transform_buffer: 16,
        drain_timeout: Duration::from_secs(30),
        // The tests leave transactions open at shutdown on purpose.
        finish_transaction_timeout: Duration::from_millis(300),
    }
}

/// The indexer settings of [`pipeline_config`]'s pipelines.
pub fn pipeline_indexer_config(dead_letters: &str) -> IndexerConfig {
    IndexerConfig {
        concurrency: 3,
        max_batch_docs: 40,
        linger: Duration::from_millis(5),
        max_in_flight_bytes: 1 << 20,
        dead_letter_index: dead_letters.to_string(),
        retry: RetryPolicy::BULK.between(Duration::from_millis(50), Duration::from_secs(1)),
        ..IndexerConfig::default()
    }
}

/// A running `Pipeline` (from LSN 1) with [`transformer`], its feed, its
/// confirmed LSN and its shutdown signal.
pub struct RunningPipeline {
    pub feed: Feed,
    pub confirmed: watch::Receiver<Lsn>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<PipelineSummary, PipelineError>>,
}

impl RunningPipeline {
    /// [`pipeline_config`] against the Elasticsearch at `es_url`.
    pub fn start(
        es_url: &str,
        dead_letters: &str,
        indices: HashMap<String, String>,
    ) -> RunningPipeline {
        RunningPipeline::start_with(
            client_for(es_url),
            pipeline_config(),
            pipeline_indexer_config(dead_letters),
            indices,
        )
    }

    pub fn start_with(
        client: elasticsearch::Elasticsearch,
        config: PipelineConfig,
        indexer_config: IndexerConfig,
        indices: HashMap<String, String>,
    ) -> RunningPipeline {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (confirmed_tx, confirmed) = watch::channel(Lsn(1));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let indexer = Indexer::start(client, indexer_config, ack_tx);
        let pipeline = Pipeline::new(indexer, acks, config);
        let task = tokio::spawn(pipeline.run(
            Lsn(1),
            events_rx,
            transformer(indices),
            confirmed_tx,
            async {
                let _ = stop_rx.await;
            },
        ));
        RunningPipeline {
            feed: Feed { tx: events_tx },
            confirmed,
            stop: Some(stop),
            task,
        }
    }

    /// Wait until the confirmed LSN reaches `lsn`, and assert it never
    /// passed it.
    pub async fn wait_confirmed(&self, lsn: u64, within: Duration) {
        let rx = self.confirmed.clone();
        wait_until(within, &format!("confirmed LSN {}", Lsn(lsn)), || {
            let c = *rx.borrow();
            async move { (c >= Lsn(lsn)).then_some(()) }
        })
        .await;
        assert_eq!(*self.confirmed.borrow(), Lsn(lsn), "never past the goal");
    }

    /// The confirmed LSN now.
    pub fn confirmed(&self) -> Lsn {
        *self.confirmed.borrow()
    }

    /// Send the shutdown signal (the pipeline may still be finishing).
    pub fn signal_shutdown(&mut self) {
        let _ = self.stop.take().expect("signalled once").send(());
    }

    /// Signal shutdown and wait for a clean end.
    pub async fn shutdown(mut self) -> PipelineSummary {
        if self.stop.is_some() {
            self.signal_shutdown();
        }
        self.task.await.unwrap().expect("pipeline ends cleanly")
    }
}

/// An index op as the transformer makes it (table `public.items`).
pub fn index_op(index: &str, id: &str, version: u64, doc: Value) -> BulkOp {
    BulkOp {
        action: OpAction::Index {
            doc: serde_json::to_vec(&doc).unwrap(),
        },
        index: Arc::from(index),
        id: id.to_string(),
        routing: None,
        pipeline: None,
        version,
        origin: OpOrigin {
            table: Arc::from("public.items"),
            key: format!("{{\"id\":{id}}}"),
            lsn: Lsn(version),
        },
    }
}

pub fn delete_op(index: &str, id: &str, version: u64) -> BulkOp {
    BulkOp {
        action: OpAction::Delete,
        ..index_op(index, id, version, Value::Null)
    }
}

/// The indexer settings the in-process tests use.
pub fn indexer_config(dead_letter_index: &str) -> IndexerConfig {
    IndexerConfig {
        concurrency: 3,
        max_batch_docs: 50,
        linger: Duration::from_millis(5),
        dead_letter_index: dead_letter_index.to_string(),
        retry: RetryPolicy::BULK.between(Duration::from_millis(50), Duration::from_millis(500)),
        ..IndexerConfig::default()
    }
}

/// Run `(op, tag)`s through a fresh indexer to the end; the acknowledged
/// count per tag, in tag order.
pub async fn index_all(config: IndexerConfig, ops: Vec<(BulkOp, u64)>) -> Vec<Ack> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let indexer = Indexer::start(client_for(&services().es_url), config, tx);
    for (op, tag) in ops {
        indexer.submit(op, tag).await.unwrap();
    }
    assert!(indexer.finish(Duration::from_secs(60)).await);
    let mut acks: Vec<Ack> = Vec::new();
    while let Some(batch) = rx.recv().await {
        for a in batch {
            match acks.iter_mut().find(|x| x.tag == a.tag) {
                Some(x) => x.count += a.count,
                None => acks.push(a),
            }
        }
    }
    acks.sort_by_key(|a| a.tag);
    acks
}

/// Wait until `rx` has acknowledged `n` ops in all.
pub async fn wait_acked(rx: &mut mpsc::UnboundedReceiver<Vec<Ack>>, n: u64, within: Duration) {
    let mut acked = 0;
    wait_until(within, &format!("all {n} acks"), || {
        while let Ok(batch) = rx.try_recv() {
            acked += batch.iter().map(|a| a.count).sum::<u64>();
        }
        let done = acked == n;
        async move { done.then_some(()) }
    })
    .await;
}
