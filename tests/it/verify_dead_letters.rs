//! Dead letters through the binary: a mapping conflict dead-letters rows,
//! `verify` names them as known drift, the user fixes the index mapping,
//! `sluice dead-letters retry` indexes them and removes the dead letters,
//! and `verify` then reports zero drift.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::compare::assert_index_matches;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, table_mapping};
use crate::support::{Es, TestDb, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_conflict_is_known_drift_until_the_fixed_mapping_lets_retry_index_it() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (index, dl) = (db.index("readings"), db.index("dead-letters"));
    es.create_index(
        &index,
        json!({
            "settings": {"index.gc_deletes": "1d"},
            "mappings": {"properties": {"amount": {"type": "long"}}}
        }),
    )
    .await;
    db.sql(
        "CREATE TABLE readings (id bigint PRIMARY KEY, amount text);
         CREATE PUBLICATION sluice FOR TABLE readings;",
    )
    .await;
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("readings", &index)]);
    sluice.start_streaming(&db).await;
    db.sql(
        "INSERT INTO readings SELECT g, g::text FROM generate_series(1, 20) g;
         INSERT INTO readings VALUES (21, 'abc'), (22, 'n/a'), (23, 'x');",
    )
    .await;
    wait_until(Duration::from_secs(60), "three dead letters", async || {
        es.refresh(&dl).await;
        (es.count(&dl).await == 3).then_some(())
    })
    .await;

    let listed = sluice.command(&["dead-letters", "list", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.text());
    let letters: Value = serde_json::from_str(&listed.stdout).unwrap();
    let mut ids: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["21", "22", "23"], "{letters}");

    let ran = sluice.command(&["verify", "--json"]);
    assert_eq!(ran.code, Some(3), "known drift is drift: {}", ran.text());
    let r: Value = serde_json::from_str(&ran.stdout).unwrap();
    let r = &r["indices"][&index];
    assert_eq!(r["dead_lettered"]["count"], json!(3), "{r}");
    assert_eq!(
        r["missing"]["count"],
        json!(0),
        "dead letters are named as such: {r}"
    );
    assert_eq!(r["equal"], json!(20), "{r}");

    // The fix: the field keeps malformed values in the source.
    es.put_mapping(
        &index,
        json!({"properties": {"amount": {"type": "long", "ignore_malformed": true}}}),
    )
    .await;

    let retried = sluice.command(&["dead-letters", "retry"]);
    assert_eq!(retried.code, Some(0), "{}", retried.text());
    assert!(
        retried
            .stdout
            .contains("3 indexed and removed, 0 still failing"),
        "{}",
        retried.text()
    );
    let listed = sluice.command(&["dead-letters", "list", "--json"]);
    assert_eq!(listed.stdout.trim(), "[]", "{}", listed.text());

    let ran = sluice.command(&["verify"]);
    assert_eq!(
        ran.code,
        Some(0),
        "zero drift after the retry: {}",
        ran.text()
    );
    assert_index_matches(&db, &es, &index, "SELECT * FROM readings", &["id"]).await;
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_documents_refused_by_the_index_are_rebuilt_whole_by_retry_once_it_is_fixed() {
    use crate::run_nested::{SHOP_SCHEMA, orders_mapping, wait_exact};
    use crate::support::sluice::SluiceToml;
    let db = TestDb::new().await;
    let es = Es::new();
    let (index, dl) = (db.index("orders"), db.index("dead-letters"));
    // Customer names are numbers, except two: their orders' documents
    // conflict with a numeric `customer.name`.
    db.sql(SHOP_SCHEMA).await;
    db.sql("UPDATE customers SET name = (id * 7)::text; UPDATE customers SET name = 'Ada' WHERE id IN (3, 4);")
        .await;
    let refused: i64 = db
        .query_value("SELECT count(*) FROM orders WHERE customer_id IN (3, 4)")
        .await;
    es.create_index(
        &index,
        json!({
            "settings": {"index.gc_deletes": "1d"},
            "mappings": {"properties": {"customer": {"properties": {"name": {"type": "long"}}}}}
        }),
    )
    .await;
    let mappings = [("orders.toml", orders_mapping(&index))];
    let mut sluice = Sluice::with_config(&SluiceToml::as_owner(&db), &mappings);
    sluice.start_streaming(&db).await;
    // The stream's rebuilds are refused too: an item added to order 3.
    let order3: i64 = db
        .query_value("SELECT id FROM orders WHERE customer_id = 3 LIMIT 1")
        .await;
    db.sql(&format!(
        "INSERT INTO order_items VALUES (9001, {order3}, 1, 9)"
    ))
    .await;
    wait_until(
        Duration::from_secs(60),
        "a dead letter per refused order",
        async || {
            es.refresh(&dl).await;
            (es.count(&dl).await > refused as u64).then_some(())
        },
    )
    .await;

    // One refused order is deleted before the retry: its retry is a delete.
    let gone: i64 = db
        .query_value("SELECT id FROM orders WHERE customer_id = 4 LIMIT 1")
        .await;
    db.sql(&format!("DELETE FROM orders WHERE id = {gone}"))
        .await;
    es.put_mapping(&index, json!({"properties": {"customer": {"properties": {"name": {"type": "long", "ignore_malformed": true}}}}})).await;

    let retried = sluice.command(&["dead-letters", "retry"]);
    assert_eq!(retried.code, Some(0), "{}", retried.text());
    assert!(
        retried.stdout.contains(", 0 still failing"),
        "{}\n{}",
        retried.text(),
        sluice.command(&["dead-letters", "list"]).text()
    );
    let listed = sluice.command(&["dead-letters", "list", "--json"]);
    assert_eq!(listed.stdout.trim(), "[]", "{}", listed.text());
    // Whole documents, items and all, equal to what SQL builds.
    wait_exact(&db, &es, &mut sluice, &index, Duration::from_secs(60)).await;
    let docs = es.sources(&index).await;
    assert_eq!(docs[&order3.to_string()]["customer"]["name"], "Ada");
    assert!(!docs.contains_key(&gone.to_string()));
    sluice.stop_cleanly();
}
