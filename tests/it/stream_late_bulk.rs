//! A bulk request the client gave up on (timeout) still applies when
//! Elasticsearch gets to it, possibly after its retry and after later
//! batches. Different states of one document in one transaction carry
//! different versions (`final_lsn + k`), so such a late write is refused as
//! stale instead of overwriting the newer state (issue 14, case 5).

use std::time::Duration;

use serde_json::json;
use sluice::Lsn;
use sluice::model::RetryPolicy;
use sluice::sink::{EsConfig, IndexerConfig, build_client};
use sluice::stream::pipeline::PipelineConfig;

use crate::support::pipeline::{RunningPipeline, indices, relation};
use crate::support::proxy::Proxy;
use crate::support::{Es, TestDb, services, wait_until};

#[tokio::test]
async fn a_timed_out_bulk_landing_after_its_retry_and_the_next_batch_leaves_the_final_row() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let dead = db.index("dead");
    let items = relation(1, "items");
    let proxy = Proxy::start(&services().es_url).await;
    let mut held = proxy.hold_next_bulk();

    let client = build_client(&EsConfig {
        urls: vec![proxy.url()],
        request_timeout: Duration::from_secs(1),
        ..EsConfig::default()
    })
    .unwrap();
    // One op per batch and one worker: the insert and the update of the row
    // go out as two requests, one after the other.
    let indexer_config = IndexerConfig {
        concurrency: 1,
        max_batch_docs: 1,
        linger: Duration::from_millis(1),
        dead_letter_index: dead.clone(),
        retry: RetryPolicy::BULK.between(Duration::from_millis(50), Duration::from_millis(200)),
        ..IndexerConfig::default()
    };
    let config = PipelineConfig {
        transform_buffer: 16,
        ..PipelineConfig::default()
    };
    let mut run = RunningPipeline::start_with(
        client,
        config,
        indexer_config,
        indices(&[("items", &index)]),
    );

    // One transaction inserts row 1 and then updates it.
    run.feed.begin(1000).await;
    run.feed.insert(&items, 1000, 1, json!("first")).await;
    run.feed.update(&items, 1000, 1, json!("final")).await;
    run.feed.commit(1000, 1100).await;

    // The insert's first request is held past the client's timeout; its
    // retry and then the update's request get through.
    tokio::time::timeout(Duration::from_secs(30), held.held())
        .await
        .expect("the first bulk request reached the proxy");
    run.confirmed
        .wait_for(|c| *c >= Lsn(1100))
        .await
        .expect("the transaction is confirmed");
    assert_eq!(
        es.all_docs(&index).await[&"1".to_string()].1,
        json!({"id": 1, "n": "final"})
    );

    // Now the abandoned request lands: Elasticsearch refuses its stale write.
    let response = held.release_and_wait().await;
    assert!(
        response.contains("version_conflict_engine_exception"),
        "the late insert must be refused as stale: {response}"
    );
    let docs = es.all_docs(&index).await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs["1"], (1001, json!({"id": 1, "n": "final"})));

    let summary = run.shutdown().await;
    assert_eq!(summary.confirmed, Lsn(1100));
    wait_until(Duration::from_secs(1), "nothing dead-lettered", || async {
        es.sources(&dead).await.is_empty().then_some(())
    })
    .await;
}
