//! `sluice run` against an Elasticsearch that refuses writes because of its
//! configuration (issue 14, case 7): the changes are held, not
//! dead-lettered and confirmed. The slot stays behind them, `/ready` says
//! why, and once the cluster is fixed everything converges exactly.

use std::time::{Duration, Instant};

use crate::support::slot::{confirmed_flush, wal_lsn};
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, http_get, table_mapping};
use crate::support::{Es, TestDb};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_target_index_holds_changes_until_reopened_and_nothing_is_dead_lettered() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    let dead = db.index("dead-letters");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, n text);
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("items", &index)]);
    sluice.start_streaming(&db).await;
    db.sql("INSERT INTO items SELECT g, 'v1' FROM generate_series(1, 50) g")
        .await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM items")
        .await;

    es.close(&index).await;
    let before = wal_lsn(&db).await;
    db.sql("UPDATE items SET n = 'v2' WHERE id <= 10").await;
    db.sql("INSERT INTO items SELECT g, 'new' FROM generate_series(51, 60) g")
        .await;
    db.sql("DELETE FROM items WHERE id > 40 AND id <= 50").await;

    // Held: not ready, with the reason; the slot does not pass the changes.
    let addr = sluice.http_addr();
    sluice
        .wait_for(
            Duration::from_secs(30),
            "/ready to report the held writes",
            async || {
                let (code, body) = http_get(&addr, "/ready");
                code == 503 && body.contains("index_closed_exception")
            },
        )
        .await;
    let (_, body) = sluice.get("/ready");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false, "{body}");
    assert!(
        ready["held"].as_str().unwrap().contains(&index),
        "the reason names the index: {body}"
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        assert_eq!(sluice.exited(), None, "{}", sluice.log_text());
        let confirmed = confirmed_flush(&db, &sluice.slot).await;
        assert!(
            confirmed <= before,
            "the slot confirmed {confirmed} past held changes (after {before})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        sluice.log_text().contains("index_closed_exception"),
        "the log says why: {}",
        sluice.log_text()
    );

    es.open(&index).await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM items")
        .await;
    sluice
        .wait_for(
            Duration::from_secs(30),
            "/ready to be ready again",
            async || http_get(&addr, "/ready").0 == 200,
        )
        .await;
    if es.exists(&dead).await {
        let dead_letters = es.sources(&dead).await;
        assert!(
            dead_letters.is_empty(),
            "nothing was dead-lettered: {dead_letters:#?}"
        );
    }
    sluice.stop_cleanly();
}
