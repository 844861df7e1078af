//! The bulk indexer and index management against the real Elasticsearch,
//! with hand-built `BulkOp`s: versioned writes converge whatever the order,
//! rejected documents become dead letters, indices are created with long
//! tombstones and existing mappings are never changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::Lsn;
use sluice::model::{BulkOp, OpAction, OpOrigin, RetryPolicy};
use sluice::sink::indices::{EnsureOutcome, IndexError, IndexSpec, ensure_index};
use sluice::sink::{Ack, EsConfig, Indexer, IndexerConfig, build_client, dead_letter};
use tokio::sync::mpsc;

use crate::support::{Es, TestDb, services, wait_until};

pub fn client_for(url: &str) -> elasticsearch::Elasticsearch {
    build_client(&EsConfig {
        urls: vec![url.to_string()],
        request_timeout: Duration::from_secs(5),
        ..EsConfig::default()
    })
    .expect("client")
}

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

pub fn test_config(dead_letter_index: &str) -> IndexerConfig {
    IndexerConfig {
        concurrency: 3,
        max_batch_docs: 50,
        linger: Duration::from_millis(5),
        dead_letter_index: dead_letter_index.to_string(),
        retry: RetryPolicy::BULK.between(Duration::from_millis(50), Duration::from_millis(500)),
        ..IndexerConfig::default()
    }
}

/// Run ops through a fresh indexer; returns the total acknowledged per tag.
async fn index_all(config: IndexerConfig, ops: Vec<(BulkOp, u64)>) -> Vec<Ack> {
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

#[tokio::test]
async fn versioned_writes_converge_when_replayed_out_of_order() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let dl = db.index("dead");

    // One transaction (version 200) changes row 1 four times: the last
    // change must win although all four share a version.
    let mut ops = vec![
        (index_op(&index, "1", 200, json!({"n": 1})), 1),
        (index_op(&index, "1", 200, json!({"n": 2})), 1),
        (delete_op(&index, "1", 200), 1),
        (index_op(&index, "1", 200, json!({"n": 4})), 1),
    ];
    // Many documents, so the ops spread over workers and batches.
    for i in 2..300u64 {
        ops.push((index_op(&index, &i.to_string(), 300, json!({"n": i})), 2));
    }
    ops.push((delete_op(&index, "2", 400), 3));
    let acks = index_all(test_config(&dl), ops).await;
    assert_eq!(
        acks,
        vec![
            Ack { tag: 1, count: 4 },
            Ack { tag: 2, count: 298 },
            Ack { tag: 3, count: 1 }
        ]
    );

    // A replay of older transactions, newest first: every write is refused as
    // stale (and acknowledged as done); a delete is not undone either.
    let replay = vec![
        (index_op(&index, "2", 300, json!({"n": -2})), 7),
        (index_op(&index, "1", 100, json!({"n": -1})), 8),
        (delete_op(&index, "3", 100), 9),
        (index_op(&index, "3", 300, json!({"n": 3})), 9),
    ];
    let acks = index_all(test_config(&dl), replay).await;
    assert_eq!(acks.iter().map(|a| a.count).sum::<u64>(), 4);

    let docs = es.all_docs(&index).await;
    assert_eq!(docs.len(), 298, "row 2 stays deleted");
    assert_eq!(docs["1"], (200, json!({"n": 4})));
    assert_eq!(docs["3"], (300, json!({"n": 3})));
    assert!(!docs.contains_key("2"));
    assert_eq!(docs["299"], (300, json!({"n": 299})));
    let dead = es.sources(&dl).await;
    assert!(dead.is_empty(), "nothing was dead-lettered: {dead:#?}");
}

#[tokio::test]
async fn a_rejected_document_becomes_a_dead_letter_and_the_stream_continues() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("typed");
    let dl = db.index("dead");
    let client = client_for(&services().es_url);
    let window = Duration::from_secs(3600);
    ensure_index(
        &client,
        &IndexSpec {
            name: index.clone(),
            settings: json!({"index": {"number_of_replicas": 0}}),
            mappings: json!({"dynamic": "strict", "properties": {"n": {"type": "long"}}}),
            alias: None,
        },
        window,
    )
    .await
    .unwrap();
    ensure_index(&client, &dead_letter::index_spec(&dl), window)
        .await
        .unwrap();

    let ops = vec![
        (index_op(&index, "1", 10, json!({"n": 1})), 1),
        (index_op(&index, "2", 10, json!({"n": "not a number"})), 1),
        (
            index_op(&index, "3", 10, json!({"n": 3, "unknown": true})),
            1,
        ),
        (index_op(&index, "4", 11, json!({"n": 4})), 2),
    ];
    let acks = index_all(test_config(&dl), ops).await;
    assert_eq!(
        acks,
        vec![Ack { tag: 1, count: 3 }, Ack { tag: 2, count: 1 }],
        "dead letters are acknowledged once stored"
    );

    let docs = es.sources(&index).await;
    assert_eq!(docs.keys().collect::<Vec<_>>(), vec!["1", "4"]);
    let dead: Vec<Value> = es.sources(&dl).await.into_values().collect();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let by_id = |id: &str| dead.iter().find(|d| d["id"] == id).unwrap().clone();
    let d2 = by_id("2");
    assert_eq!(d2["index"], index.as_str());
    assert_eq!(d2["action"], "index");
    assert_eq!(d2["status"], 400);
    assert_eq!(d2["table"], "public.items");
    assert_eq!(d2["key"], "{\"id\":2}");
    assert_eq!(d2["lsn"], Lsn(10).to_string());
    assert_eq!(d2["version"], 10);
    assert_eq!(d2["doc"], json!({"n": "not a number"}));
    assert!(
        d2["error"]["type"]
            .as_str()
            .unwrap()
            .contains("parsing_exception"),
        "{d2}"
    );
    assert!(!d2["error"]["reason"].as_str().unwrap().is_empty());
    assert_eq!(
        by_id("3")["error"]["type"],
        "strict_dynamic_mapping_exception"
    );

    // A restart replays the same writes: each is refused again, and each
    // still has exactly one dead letter.
    let replay = vec![
        (index_op(&index, "2", 10, json!({"n": "not a number"})), 3),
        (
            index_op(&index, "3", 10, json!({"n": 3, "unknown": true})),
            3,
        ),
    ];
    let acks = index_all(test_config(&dl), replay).await;
    assert_eq!(acks, vec![Ack { tag: 3, count: 2 }]);
    let dead_after_replay = es.sources(&dl).await;
    assert_eq!(dead_after_replay.len(), 2, "{dead_after_replay:#?}");
}

#[tokio::test]
async fn two_rejected_updates_of_one_row_in_one_transaction_give_two_dead_letters() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("typed");
    let dl = db.index("dead");
    let client = client_for(&services().es_url);
    let window = Duration::from_secs(3600);
    ensure_index(
        &client,
        &IndexSpec {
            name: index.clone(),
            settings: json!({"index": {"number_of_replicas": 0}}),
            mappings: json!({"dynamic": "strict", "properties": {"n": {"type": "long"}}}),
            alias: None,
        },
        window,
    )
    .await
    .unwrap();

    // Both writes share the version (the same transaction, past the
    // per-transaction version cap); only their documents differ.
    let ops = vec![
        (index_op(&index, "1", 10, json!({"n": "first"})), 1),
        (index_op(&index, "1", 10, json!({"n": "second"})), 1),
    ];
    let acks = index_all(test_config(&dl), ops).await;
    assert_eq!(acks, vec![Ack { tag: 1, count: 2 }]);

    let mut docs: Vec<Value> = es
        .sources(&dl)
        .await
        .into_values()
        .map(|d| d["doc"].clone())
        .collect();
    docs.sort_by_key(|d| d.to_string());
    assert_eq!(docs, vec![json!({"n": "first"}), json!({"n": "second"})]);
    assert!(es.sources(&index).await.is_empty());
}

/// A request-level 429 `circuit_breaking_exception` names the size of the
/// request: sending the same bytes again trips it forever, so the batch is
/// halved until its parts fit (issue 14, the oversize-batch case).
#[tokio::test]
async fn a_batch_tripping_the_request_circuit_breaker_is_halved_until_it_fits() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("halved");
    let dl = db.index("dead");
    // About 130 bytes per op: at most 3 ops fit in 400 bytes.
    let proxy = crate::sink_proxy::Proxy::start_breaking_over(&services().es_url, 400).await;
    let config = IndexerConfig {
        concurrency: 1,
        max_batch_docs: 40,
        linger: Duration::from_millis(200),
        ..test_config(&dl)
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let indexer = Indexer::start(client_for(&proxy.url()), config, tx);
    let ops: Vec<BulkOp> = (0..40u64)
        .map(|i| index_op(&index, &i.to_string(), 7, json!({"n": i})))
        .collect();
    indexer.submit_all(ops, 1).await.unwrap();
    let mut acked = 0;
    wait_until(Duration::from_secs(60), "all 40 acks", || {
        while let Ok(batch) = rx.try_recv() {
            acked += batch.iter().map(|a| a.count).sum::<u64>();
        }
        let done = acked == 40;
        async move { done.then_some(()) }
    })
    .await;
    assert!(indexer.finish(Duration::from_secs(10)).await);
    assert!(
        proxy.broken.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the breaker tripped"
    );
    let docs = es.all_docs(&index).await;
    assert_eq!(docs.len(), 40);
    for i in 0..40u64 {
        assert_eq!(docs[&i.to_string()], (7, json!({"n": i})));
    }
    assert!(es.sources(&dl).await.is_empty(), "nothing dead-lettered");
}

#[tokio::test]
async fn a_blocked_index_is_retried_until_writable_without_losing_anything() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("blocked");
    let dl = db.index("dead");
    let client = client_for(&services().es_url);
    ensure_index(
        &client,
        &IndexSpec {
            name: index.clone(),
            settings: json!({"index": {"number_of_replicas": 0, "blocks.write": true}}),
            mappings: Value::Null,
            alias: None,
        },
        Duration::from_secs(120),
    )
    .await
    .unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let indexer = Indexer::start(client.clone(), test_config(&dl), tx);
    for i in 0..20u64 {
        indexer
            .submit(index_op(&index, &i.to_string(), 5, json!({"i": i})), 1)
            .await
            .unwrap();
    }
    // Retried, never acknowledged, while the block lasts.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(acks)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            panic!("acknowledged while the index refused writes: {acks:?}");
        }
    }
    client
        .indices()
        .put_settings(elasticsearch::indices::IndicesPutSettingsParts::Index(&[
            &index,
        ]))
        .body(json!({"index.blocks.write": false}))
        .send()
        .await
        .unwrap()
        .error_for_status_code()
        .unwrap();
    let mut acked = 0;
    wait_until(Duration::from_secs(30), "all 20 acks", || {
        while let Ok(batch) = rx.try_recv() {
            acked += batch.iter().map(|a| a.count).sum::<u64>();
        }
        let done = acked == 20;
        async move { done.then_some(()) }
    })
    .await;
    assert!(indexer.finish(Duration::from_secs(10)).await);
    assert_eq!(es.sources(&index).await.len(), 20);
}

#[tokio::test]
async fn indices_are_created_with_long_tombstones_and_an_alias_and_never_remapped() {
    let db = TestDb::new().await;
    let es = Es::new();
    let client = client_for(&services().es_url);
    let name = db.index("created");
    let spec = IndexSpec {
        name: name.clone(),
        settings: json!({"number_of_replicas": 0}),
        mappings: json!({"properties": {"title": {"type": "text"}, "n": {"type": "long"}}}),
        alias: Some(db.index("alias")),
    };
    let window = Duration::from_secs(7200);
    assert_eq!(
        ensure_index(&client, &spec, window).await.unwrap(),
        EnsureOutcome::Created
    );
    let settings: Value = es
        .client
        .indices()
        .get_settings(elasticsearch::indices::IndicesGetSettingsParts::Index(&[
            &name,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings[&name]["settings"]["index"]["gc_deletes"], "7200s");
    let alias = es
        .client
        .indices()
        .exists_alias(elasticsearch::indices::IndicesExistsAliasParts::Name(&[
            &db.index("alias"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(alias.status_code().as_u16(), 200);

    // Ensuring again is a no-op.
    assert_eq!(
        ensure_index(&client, &spec, window).await.unwrap(),
        EnsureOutcome::Existing {
            gc_deletes_too_short: false
        }
    );
    // A longer window than the index keeps is reported.
    assert_eq!(
        ensure_index(&client, &spec, Duration::from_secs(99_999))
            .await
            .unwrap(),
        EnsureOutcome::Existing {
            gc_deletes_too_short: true
        }
    );

    // A changed mapping is a conflict, and the index is left as it was.
    let mut changed = spec.clone();
    changed.mappings = json!({"properties": {"n": {"type": "keyword"}, "new": {"type": "long"}}});
    match ensure_index(&client, &changed, window).await {
        Err(IndexError::MappingConflict { differences, .. }) => {
            assert_eq!(differences.len(), 2, "{differences:?}");
        }
        other => panic!("expected a mapping conflict, got {other:?}"),
    }
    let mapping: Value = es
        .client
        .indices()
        .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
            &name,
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        mapping[&name]["mappings"]["properties"]["n"]["type"],
        "long"
    );
    assert!(mapping[&name]["mappings"]["properties"]["new"].is_null());
}
