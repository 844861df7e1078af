//! The generic pipeline against the real Elasticsearch, fed by hand with
//! `SourceEvent`s (no PostgreSQL needed): the confirmed LSN follows what
//! Elasticsearch acknowledged — never past an unacknowledged transaction,
//! held through an outage, advanced after it — and shutdown is graceful.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value, json};
use sluice::Lsn;
use sluice::model::{BulkOp, OpAction, OpOrigin, RetryPolicy};
use sluice::model::{
    Change, ChangeKind, Column, Datum, OldRow, Relation, ReplicaIdentity, SourceEvent,
};
use sluice::sink::indices::{IndexSpec, ensure_index};
use sluice::sink::{Indexer, IndexerConfig, dead_letter};
use sluice::stream::pipeline::{Pipeline, PipelineConfig, PipelineSummary, StopReason};
use sluice::stream::transform_step::StepError;
use sluice::transform::TransformError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::sink::client_for;
use crate::sink_proxy::Proxy;
use crate::support::{Es, TestDb, services, wait_until};

pub(crate) fn relation(id: u32, name: &str) -> Arc<Relation> {
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

pub(crate) fn row(id: i64, n: Value) -> Vec<Datum> {
    vec![Datum::Value(json!(id)), Datum::Value(n)]
}

/// A minimal stand-in for the real transformer: table `public.<t>` goes to
/// the index `indices[t]`; other tables are filtered out (no ops). It fails
/// as the real one does on a truncate (`on_truncate = "fail"`) and on a row
/// without a key.
pub(crate) fn transformer(
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
pub(crate) struct Feed {
    pub(crate) tx: mpsc::Sender<SourceEvent>,
}

impl Feed {
    pub(crate) async fn send(&self, ev: SourceEvent) {
        self.tx.send(ev).await.expect("pipeline is running");
    }

    pub(crate) async fn begin(&self, final_lsn: u64) {
        self.send(SourceEvent::Begin {
            final_lsn: Lsn(final_lsn),
            commit_time: Utc::now(),
            xid: final_lsn as u32,
        })
        .await;
    }

    pub(crate) async fn change(&self, rel: &Arc<Relation>, version: u64, kind: ChangeKind) {
        self.send(SourceEvent::Change(Change {
            relation: rel.clone(),
            kind,
            version: Lsn(version),
            commit_time: Utc::now(),
        }))
        .await;
    }

    pub(crate) async fn insert(&self, rel: &Arc<Relation>, version: u64, id: i64, n: Value) {
        self.change(rel, version, ChangeKind::Insert { new: row(id, n) })
            .await;
    }

    pub(crate) async fn delete(&self, rel: &Arc<Relation>, version: u64, id: i64) {
        self.change(
            rel,
            version,
            ChangeKind::Delete {
                old: OldRow::Key(vec![Datum::Value(json!(id)), Datum::Null]),
            },
        )
        .await;
    }

    pub(crate) async fn commit(&self, final_lsn: u64, end_lsn: u64) {
        self.send(SourceEvent::Commit {
            commit_lsn: Lsn(final_lsn),
            end_lsn: Lsn(end_lsn),
        })
        .await;
    }

    /// A whole transaction inserting `ids` with `n = id * mult`.
    pub(crate) async fn insert_tx(
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

struct Running {
    feed: Feed,
    confirmed: watch::Receiver<Lsn>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<PipelineSummary, sluice::stream::pipeline::PipelineError>>,
}

impl Running {
    fn start(es_url: &str, dead_letters: &str, indices: HashMap<String, String>) -> Running {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (confirmed_tx, confirmed) = watch::channel(Lsn(1));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let indexer_config = IndexerConfig {
            concurrency: 3,
            max_batch_docs: 40,
            linger: Duration::from_millis(5),
            max_in_flight_bytes: 1 << 20,
            dead_letter_index: dead_letters.to_string(),
            retry: RetryPolicy::BULK.between(Duration::from_millis(50), Duration::from_secs(1)),
            ..IndexerConfig::default()
        };
        let config = PipelineConfig {
            transform_buffer: 16,
            drain_timeout: Duration::from_secs(30),
            // The tests leave transactions open at shutdown on purpose.
            finish_transaction_timeout: Duration::from_millis(300),
        };
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let indexer = Indexer::start(client_for(es_url), indexer_config, ack_tx);
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
        Running {
            feed: Feed { tx: events_tx },
            confirmed,
            stop: Some(stop),
            task,
        }
    }

    async fn wait_confirmed(&self, lsn: u64, within: Duration) {
        let rx = self.confirmed.clone();
        wait_until(within, &format!("confirmed LSN {}", Lsn(lsn)), || {
            let c = *rx.borrow();
            async move { (c >= Lsn(lsn)).then_some(()) }
        })
        .await;
        assert_eq!(*self.confirmed.borrow(), Lsn(lsn), "never past the goal");
    }

    async fn shutdown(mut self) -> PipelineSummary {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().expect("pipeline ends cleanly")
    }
}

/// A shutdown signal that finds a transaction half-taken keeps reading until
/// its Commit, so the transaction is confirmed whole and the next start
/// replays nothing of it.
#[tokio::test]
async fn a_transaction_open_at_shutdown_is_finished_and_confirmed() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let items = relation(1, "items");
    let mut run = Running::start(
        &services().es_url,
        &db.index("dead"),
        indices(&[("items", &index)]),
    );
    run.feed.begin(100).await;
    run.feed.insert(&items, 100, 1, json!(1)).await;
    // Written, so the pipeline holds the transaction open.
    wait_until(Duration::from_secs(30), "the first write", || async {
        es.sources(&index).await.contains_key("1").then_some(())
    })
    .await;
    let _ = run.stop.take().unwrap().send(());
    run.feed.insert(&items, 100, 2, json!(2)).await;
    run.feed.commit(100, 110).await;
    let summary = run.task.await.unwrap().expect("pipeline ends cleanly");
    assert_eq!(summary.stopped_by, StopReason::Shutdown);
    assert_eq!(
        summary.confirmed,
        Lsn(110),
        "the open transaction was finished"
    );
    assert_eq!(
        es.sources(&index).await.keys().collect::<Vec<_>>(),
        ["1", "2"]
    );
}

fn indices(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(t, i)| (t.to_string(), i.to_string()))
        .collect()
}

#[tokio::test]
async fn the_pipeline_confirms_acknowledged_transactions_and_shuts_down_gracefully() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let items = relation(1, "items");
    let filtered = relation(2, "audit_log");
    let run = Running::start(
        &services().es_url,
        &db.index("dead"),
        indices(&[("items", &index)]),
    );

    run.feed
        .send(SourceEvent::Keepalive { wal_end: Lsn(50) })
        .await;
    run.wait_confirmed(50, Duration::from_secs(10)).await;

    // 300 inserts, row 7 changed three times inside the transaction.
    run.feed.begin(100).await;
    for id in 0..300 {
        run.feed.insert(&items, 100, id, json!(id)).await;
    }
    run.feed
        .change(
            &items,
            100,
            ChangeKind::Update {
                old: None,
                new: row(7, json!(-7)),
            },
        )
        .await;
    run.feed.delete(&items, 100, 7).await;
    run.feed.insert(&items, 100, 7, json!(77)).await;
    run.feed.commit(100, 110).await;
    // A transaction that touches only a table no mapping wants.
    run.feed.begin(120).await;
    run.feed.insert(&filtered, 120, 1, json!("ignored")).await;
    run.feed.commit(120, 130).await;
    // Deletes and updates.
    run.feed.begin(140).await;
    run.feed.delete(&items, 140, 0).await;
    run.feed
        .change(
            &items,
            140,
            ChangeKind::Update {
                old: None,
                new: row(1, json!(11)),
            },
        )
        .await;
    run.feed.commit(140, 150).await;
    run.wait_confirmed(150, Duration::from_secs(30)).await;

    // An open transaction at shutdown is written but never confirmed.
    run.feed.begin(160).await;
    run.feed.insert(&items, 160, 1000, json!(1000)).await;
    let summary = run.shutdown().await;
    assert_eq!(summary.confirmed, Lsn(150));
    assert_eq!(summary.stopped_by, StopReason::Shutdown);
    assert!(summary.drained);

    let mut docs = es.all_docs(&index).await;
    // The open transaction's write may or may not have been taken before the
    // shutdown signal; either way it was not confirmed.
    docs.remove("1000");
    let missing: Vec<i64> = (1..300)
        .filter(|i| !docs.contains_key(&i.to_string()))
        .collect();
    assert_eq!(docs.len(), 299, "row 0 deleted; missing: {missing:?}");
    // Row 7's fourth write in its transaction: version 100 + 3.
    assert_eq!(docs["7"], (103, json!({"id": 7, "n": 77})));
    assert_eq!(docs["1"], (140, json!({"id": 1, "n": 11})));
    assert_eq!(docs["299"], (100, json!({"id": 299, "n": 299})));
    assert!(!docs.contains_key("0"));
    assert!(es.sources(&db.index("dead")).await.is_empty());
}

#[tokio::test]
async fn the_confirmed_lsn_never_passes_an_unacknowledged_transaction() {
    let db = TestDb::new().await;
    let es = Es::new();
    let blocked = db.index("blocked");
    let open = db.index("open");
    let client = client_for(&services().es_url);
    ensure_index(
        &client,
        &IndexSpec {
            name: blocked.clone(),
            settings: json!({"index": {"number_of_replicas": 0, "blocks.write": true}}),
            mappings: Value::Null,
            alias: None,
        },
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let a = relation(1, "a");
    let b = relation(2, "b");
    let run = Running::start(
        &services().es_url,
        &db.index("dead"),
        indices(&[("a", &blocked), ("b", &open)]),
    );

    run.feed.insert_tx(&b, 100, 0..5, 1).await; // confirmed: 108
    run.feed.insert_tx(&a, 200, 0..3, 1).await; // refused: write block
    run.feed.insert_tx(&b, 300, 5..10, 1).await; // acknowledged, but after a
    run.wait_confirmed(108, Duration::from_secs(10)).await;
    wait_until(
        Duration::from_secs(20),
        "the later transaction's writes",
        || async { (es.sources(&open).await.len() == 10).then_some(()) },
    )
    .await;
    // Give acks time to arrive; the confirmed LSN must stay put.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(*run.confirmed.borrow(), Lsn(108));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    client
        .indices()
        .put_settings(elasticsearch::indices::IndicesPutSettingsParts::Index(&[
            &blocked,
        ]))
        .body(json!({"index.blocks.write": false}))
        .send()
        .await
        .unwrap()
        .error_for_status_code()
        .unwrap();
    run.wait_confirmed(308, Duration::from_secs(30)).await;
    assert_eq!(es.sources(&blocked).await.len(), 3);
    assert_eq!(run.shutdown().await.confirmed, Lsn(308));
}

#[tokio::test]
async fn a_mapping_conflict_is_dead_lettered_and_the_stream_goes_on() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("typed");
    let dl = db.index("dead");
    let client = client_for(&services().es_url);
    let window = Duration::from_secs(600);
    ensure_index(
        &client,
        &IndexSpec {
            name: index.clone(),
            settings: json!({"number_of_replicas": 0}),
            mappings: json!({"properties": {"n": {"type": "long"}}}),
            alias: None,
        },
        window,
    )
    .await
    .unwrap();
    // The dead-letter index is not created beforehand: the indexer creates
    // it at the first dead letter, with its unindexed-document mapping.
    let t = relation(1, "typed");
    let run = Running::start(&services().es_url, &dl, indices(&[("typed", &index)]));

    run.feed.begin(100).await;
    run.feed.insert(&t, 100, 1, json!(1)).await;
    run.feed.insert(&t, 100, 2, json!("two")).await;
    run.feed.commit(100, 110).await;
    run.feed.insert_tx(&t, 200, 3..4, 1).await;
    run.wait_confirmed(208, Duration::from_secs(20)).await;
    run.shutdown().await;

    assert_eq!(
        es.sources(&index).await.keys().collect::<Vec<_>>(),
        vec!["1", "3"]
    );
    let dead: Vec<Value> = es.sources(&dl).await.into_values().collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "2");
    assert_eq!(dead[0]["table"], "public.typed");
    assert_eq!(dead[0]["lsn"], Lsn(100).to_string());
    assert_eq!(dead[0]["doc"], json!({"id": 2, "n": "two"}));
    let mapping: Value = es
        .client
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            &dl,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        mapping[&dl]["mappings"]["properties"]["doc"],
        dead_letter::index_spec(&dl).mappings["properties"]["doc"]
    );
}

#[tokio::test]
async fn an_elasticsearch_outage_holds_the_checkpoint_and_loses_nothing() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let proxy = Proxy::start(&services().es_url).await;
    let items = relation(1, "items");
    let run = Running::start(
        &proxy.url(),
        &db.index("dead"),
        indices(&[("items", &index)]),
    );

    run.feed.insert_tx(&items, 100, 0..50, 1).await;
    run.wait_confirmed(108, Duration::from_secs(10)).await;

    proxy.cut();
    let cut_at = Instant::now();
    // Fed from a task: once the in-flight budget and the bounded channels
    // are full, backpressure blocks the feeder (as it would the reader).
    let feed = Feed {
        tx: run.feed.tx.clone(),
    };
    let rel = items.clone();
    let feeder = tokio::spawn(async move {
        feed.insert_tx(&rel, 200, 50..150, 1).await;
        feed.insert_tx(&rel, 300, 0..150, 2).await;
        // The reader reconnects mid-transaction and delivers it again.
        feed.begin(400).await;
        feed.insert(&rel, 400, 7, json!(-1)).await;
        feed.insert_tx(&rel, 400, 0..150, 3).await;
        feed.send(SourceEvent::Keepalive { wal_end: Lsn(500) })
            .await;
    });

    while cut_at.elapsed() < Duration::from_secs(21) {
        assert_eq!(*run.confirmed.borrow(), Lsn(108), "held during the outage");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.restore().await;
    feeder.await.unwrap();
    run.wait_confirmed(500, Duration::from_secs(60)).await;
    let summary = run.shutdown().await;
    assert_eq!(summary.confirmed, Lsn(500));

    let docs = es.all_docs(&index).await;
    assert_eq!(docs.len(), 150);
    for (id, (version, doc)) in &docs {
        let id: i64 = id.parse().unwrap();
        assert_eq!(*version, 400);
        assert_eq!(*doc, json!({"id": id, "n": id * 3}));
    }
}

#[tokio::test]
async fn a_change_the_transformer_rejects_stops_the_pipeline_before_its_transaction() {
    let db = TestDb::new().await;
    let index = db.index("items");
    let items = relation(1, "items");
    let run = Running::start(
        &services().es_url,
        &db.index("dead"),
        indices(&[("items", &index)]),
    );
    run.feed.insert_tx(&items, 100, 0..3, 1).await;
    run.feed.begin(200).await;
    run.feed.insert(&items, 200, 3, json!(3)).await;
    run.feed.change(&items, 200, ChangeKind::Truncate).await;
    let _ = run
        .feed
        .tx
        .send(SourceEvent::Commit {
            commit_lsn: Lsn(200),
            end_lsn: Lsn(208),
        })
        .await;
    let confirmed = run.confirmed.clone();
    let err = run
        .task
        .await
        .unwrap()
        .expect_err("the transform error stops the pipeline");
    assert!(
        matches!(&err, sluice::stream::pipeline::PipelineError::Transform {
            table,
            lsn,
            source: StepError::Mapping(e),
        } if table == "public.items"
            && *lsn == Lsn(200)
            && matches!(**e, TransformError::Truncated { .. })),
        "{err}"
    );
    assert_eq!(
        *confirmed.borrow(),
        Lsn(108),
        "never past the failed transaction"
    );
}

#[tokio::test]
async fn a_heartbeat_message_is_confirmed_only_after_the_transactions_before_it() {
    let db = TestDb::new().await;
    let index = db.index("items");
    let proxy = Proxy::start(&services().es_url).await;
    let items = relation(1, "items");
    let run = Running::start(
        &proxy.url(),
        &db.index("dead"),
        indices(&[("items", &index)]),
    );
    proxy.cut();
    run.feed.insert_tx(&items, 100, 0..5, 1).await;
    // Unpublished WAL, then a heartbeat: a position outside any transaction.
    run.feed
        .send(SourceEvent::Message {
            lsn: Lsn(500),
            transactional: false,
            prefix: sluice::source::heartbeat::PREFIX.into(),
            content: Vec::new(),
        })
        .await;
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            *run.confirmed.borrow(),
            Lsn(1),
            "past an unapplied transaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore().await;
    run.wait_confirmed(500, Duration::from_secs(30)).await;
    assert_eq!(run.shutdown().await.confirmed, Lsn(500));
}
