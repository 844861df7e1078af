//! The generic pipeline against the real Elasticsearch, fed by hand with
//! `SourceEvent`s (no PostgreSQL needed): the confirmed LSN follows what
//! Elasticsearch acknowledged — never past an unacknowledged transaction,
//! held through an outage, advanced after it — and shutdown is graceful.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::Lsn;
use sluice::model::{ChangeKind, SourceEvent};
use sluice::sink::dead_letter;
use sluice::stream::pipeline::StopReason;
use sluice::stream::transform_step::StepError;
use sluice::transform::TransformError;

use crate::support::pipeline::{
    RunningPipeline, ensure_test_index, indices, relation, write_blocked_index,
};
use crate::support::proxy::Proxy;
use crate::support::{Es, TestDb, services, wait_until};

/// A shutdown signal that finds a transaction half-taken keeps reading until
/// its Commit, so the transaction is confirmed whole and the next start
/// replays nothing of it.
#[tokio::test]
async fn a_transaction_open_at_shutdown_is_finished_and_confirmed() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let items = relation(1, "items");
    let mut run = RunningPipeline::start(
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
    run.signal_shutdown();
    run.feed.insert(&items, 100, 2, json!(2)).await;
    run.feed.commit(100, 110).await;
    let summary = run.shutdown().await;
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

#[tokio::test]
async fn the_pipeline_confirms_acknowledged_transactions_and_shuts_down_gracefully() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let items = relation(1, "items");
    let filtered = relation(2, "audit_log");
    let run = RunningPipeline::start(
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
    run.feed.update(&items, 100, 7, json!(-7)).await;
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
    run.feed.update(&items, 140, 1, json!(11)).await;
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
    write_blocked_index(&blocked).await;
    let a = relation(1, "a");
    let b = relation(2, "b");
    let run = RunningPipeline::start(
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
        assert_eq!(run.confirmed(), Lsn(108));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    es.block_writes(&blocked, false).await;
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
    ensure_test_index(
        &index,
        json!({"number_of_replicas": 0}),
        json!({"properties": {"n": {"type": "long"}}}),
        Duration::from_secs(600),
    )
    .await;
    // The dead-letter index is not created beforehand: the indexer creates
    // it at the first dead letter, with its unindexed-document mapping.
    let t = relation(1, "typed");
    let run = RunningPipeline::start(&services().es_url, &dl, indices(&[("typed", &index)]));

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
    let mapping = es.mapping(&dl).await;
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
    let run = RunningPipeline::start(
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
    let feed = run.feed.clone();
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
        assert_eq!(run.confirmed(), Lsn(108), "held during the outage");
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
    let run = RunningPipeline::start(
        &services().es_url,
        &db.index("dead"),
        indices(&[("items", &index)]),
    );
    run.feed.insert_tx(&items, 100, 0..3, 1).await;
    run.feed.begin(200).await;
    run.feed.insert(&items, 200, 3, json!(3)).await;
    run.feed.change(&items, 200, ChangeKind::Truncate).await;
    // Sent without waiting on the pipeline: it may have stopped already.
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
    let run = RunningPipeline::start(
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
        assert_eq!(run.confirmed(), Lsn(1), "past an unapplied transaction");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore().await;
    run.wait_confirmed(500, Duration::from_secs(30)).await;
    assert_eq!(run.shutdown().await.confirmed, Lsn(500));
}
