//! `sluice snapshot` rides out a PostgreSQL hiccup by itself: its connections
//! are terminated mid-copy, it resumes the chunks not yet done under a new
//! snapshot, exits 0, and the index is exact.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::compare::assert_index_matches;
use crate::support::sluice::{Sluice, table_mapping};
use crate::support::{Es, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_snapshot_resumes_by_itself_when_its_postgres_connections_are_terminated() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, n int);
         INSERT INTO items SELECT g, 'item ' || g, g % 97 FROM generate_series(1, 300000) g;
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\nchunk_rows = 5000\nparallel_readers = 2\n",
        &[table_mapping("items", &index)],
    );
    let log_path = sluice.file("snapshot.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["snapshot", "--config"])
        .arg(sluice.config_path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Once some chunks are in the index, cut every connection the snapshot
    // holds (its readers and the replication connection that exported it).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut terminated = 0i64;
    while terminated == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the snapshot finished before it could be interrupted (make the table bigger):\n{}",
            log()
        );
        assert!(Instant::now() < deadline, "no chunk arrived:\n{}", log());
        es.refresh(&index).await;
        if es.count(&index).await >= 5_000 {
            terminated = db
                .admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE usename = 'sluice' AND datname = current_database()
                       AND query ILIKE 'COPY%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replication connections too: the next attempt must export anew.
    db.admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = 'sluice' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();

    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "the snapshot did not finish:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "sluice snapshot failed:\n{}", log());
    assert!(
        log().contains("resuming its remaining chunks"),
        "the snapshot was interrupted and resumed:\n{}",
        log()
    );
    assert_index_matches(&db, &es, &index, "SELECT * FROM items", &["id"]).await;
}
