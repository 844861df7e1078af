//! `sluice run` end to end: the real binary against the real servers. Every
//! test ends by comparing the whole table with the whole index.

use std::time::Duration;

use rand::{RngExt, SeedableRng};

use crate::support::slot::{pending_changes, slot_active};
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, metric_sum, table_mapping};
use crate::support::{Es, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_inserts_updates_deletes_and_key_changes_into_the_index() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, active boolean, meta jsonb);
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("items", &index)]);
    sluice.start_streaming(&db).await;

    db.sql(
        "INSERT INTO items SELECT g, 'item ' || g, g * 10, g % 2 = 0, jsonb_build_object('g', g) FROM generate_series(1, 500) g;
         UPDATE items SET name = 'renamed', qty = qty + 1 WHERE id % 7 = 0;
         DELETE FROM items WHERE id % 11 = 0;
         UPDATE items SET id = id + 10000 WHERE id BETWEEN 100 AND 120;
         BEGIN; UPDATE items SET qty = 1 WHERE id = 1; UPDATE items SET qty = 2 WHERE id = 1; UPDATE items SET qty = 3 WHERE id = 1; COMMIT;",
    )
    .await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM items")
        .await;

    // The operator's view agrees with the work done.
    assert_eq!(sluice.get("/ready").0, 200, "ready while streaming");
    let metrics = sluice.metrics();
    let applied = |op: &str| {
        metric_sum(
            &metrics,
            "sluice_changes_applied_total",
            &["table=\"public.items\"", &format!("op=\"{op}\"")],
        )
    };
    assert_eq!(applied("insert"), 500.0, "{metrics}");
    assert_eq!(applied("delete"), 45.0, "{metrics}");
    // 71 renames, 20 key changes (110 of 100..=120 was deleted), 3 in one transaction.
    assert_eq!(applied("update"), (71 + 20 + 3) as f64, "{metrics}");
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_confirms_the_final_lsn_so_a_restart_replays_nothing() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text);
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("items", &index)]);
    sluice.start_streaming(&db).await;
    db.sql("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 1000) g")
        .await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM items")
        .await;
    sluice.stop_cleanly();

    assert_eq!(
        slot_active(&db, &sluice.slot).await,
        Some(false),
        "a clean exit ends the stream, so the slot is already free for a successor"
    );
    assert_eq!(
        pending_changes(&db, &sluice.slot).await,
        0,
        "the slot still holds changes Sluice already applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_is_never_written_as_null() {
    let db = TestDb::new().await;
    let es = Es::new();
    // Incompressible > 8 kB text: stored out of line (TOAST), so an update of
    // another column sends it as "unchanged" without REPLICA IDENTITY FULL.
    db.sql(
        "CREATE TABLE docs (id bigint PRIMARY KEY, body text, n int);
         CREATE TABLE docs_full (id bigint PRIMARY KEY, body text, n int);
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION sluice FOR TABLE docs, docs_full;",
    )
    .await;
    let (i1, i2) = (db.index("docs"), db.index("docs-full"));
    let mut sluice = Sluice::new(
        &db,
        SNAPSHOT_NEVER,
        &[table_mapping("docs", &i1), table_mapping("docs_full", &i2)],
    );
    sluice.start_streaming(&db).await;
    for t in ["docs", "docs_full"] {
        db.sql(&format!(
            "INSERT INTO {t} SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i), 0
               FROM generate_series(1, 20) g;
             UPDATE {t} SET n = n + 1;
             UPDATE {t} SET n = n + 1 WHERE id <= 10;"
        ))
        .await;
    }
    sluice
        .wait_converged(&db, &es, &i1, "SELECT * FROM docs")
        .await;
    sluice
        .wait_converged(&db, &es, &i2, "SELECT * FROM docs_full")
        .await;
    let docs = es.sources(&i1).await;
    assert!(
        docs.values()
            .all(|d| d["body"].as_str().is_some_and(|b| b.len() == 400 * 32))
    );
    sluice.stop_cleanly();
}

/// The product's core promise: SIGKILL at random moments, at least ten times,
/// during a random workload; at the end the index equals the table exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_at_random_moments_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g;
         CREATE PUBLICATION sluice FOR TABLE accounts;",
    )
    .await;
    // The seed rows predate the slot; with mode `never` they are not loaded,
    // so touch them all once the slot exists.
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("accounts", &index)]);
    sluice.start_streaming(&db).await;
    db.sql("UPDATE accounts SET note = 'touched'").await;

    let seed: u64 = rand::rng().random();
    eprintln!("workload seed {seed}");
    let url = db.url();
    let workload = tokio::spawn(async move {
        let client = crate::support::connect(&url).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut next_id = 1_000i64;
        for _ in 0..600 {
            let sql =
                crate::support::workload::random_transaction(&mut rng, "accounts", &mut next_id);
            client.batch_execute(&sql).await.unwrap();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
        }
    });

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut kills = 0;
    while kills < 10 || !workload.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        sluice.kill9();
        kills += 1;
        sluice.start();
    }
    workload.await.unwrap();
    assert!(kills >= 10);
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    sluice.stop_cleanly();
    eprintln!("{kills} kills, {} starts", sluice.starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_snapshot_loads_existing_rows_exactly_even_when_killed_midway() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("books");
    db.sql(
        "CREATE TABLE books (id bigint PRIMARY KEY, title text, copies int);
         INSERT INTO books SELECT g, 'book ' || g, g % 17 FROM generate_series(1, 60000) g;
         CREATE PUBLICATION sluice FOR TABLE books;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"initial\"\nchunk_rows = 2000\nparallel_readers = 2\n",
        &[table_mapping("books", &index)],
    );
    let url = db.url();
    // Writes racing the snapshot: each must win over the snapshot's rows.
    let workload = tokio::spawn(async move {
        let client = crate::support::connect(&url).await;
        for i in 0..300i64 {
            client
                .batch_execute(&format!(
                    "UPDATE books SET copies = copies + 100 WHERE id = {a};
                     DELETE FROM books WHERE id = {b};
                     INSERT INTO books VALUES ({c}, 'late', 1);",
                    a = 1 + (i * 97) % 60000,
                    b = 1 + (i * 89 + 7) % 60000,
                    c = 100_000 + i
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::rng().random());
    for _ in 0..3 {
        sluice.start();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        sluice.kill9();
    }
    sluice.start();
    workload.await.unwrap();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM books")
        .await;
    let log = sluice.log_text();
    assert!(
        log.contains("initial snapshot done"),
        "the snapshot never completed:\n{log}"
    );
    eprintln!(
        "resumed after a kill: {}",
        log.contains("resuming its remaining chunks")
    );
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_snapshot_backfills_a_table_mapped_later_while_run_streams() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (ia, ib) = (db.index("a"), db.index("b"));
    db.sql(
        "CREATE TABLE a (id bigint PRIMARY KEY, v text);
         CREATE TABLE b (id bigint PRIMARY KEY, v text);
         INSERT INTO b SELECT g, 'old ' || g FROM generate_series(1, 5000) g;
         CREATE PUBLICATION sluice FOR TABLE a;",
    )
    .await;
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("a", &ia)]);
    sluice.start_streaming(&db).await;
    db.sql("INSERT INTO a SELECT g, 'a' FROM generate_series(1, 100) g")
        .await;
    sluice
        .wait_converged(&db, &es, &ia, "SELECT * FROM a")
        .await;

    // Map table b too: the owner adds it to the publication, Sluice restarts
    // to stream it, and a backfill loads the rows it already had.
    let (file, text) = table_mapping("b", &ib);
    sluice.write_mapping(&file, &text);
    db.sql("ALTER PUBLICATION sluice ADD TABLE b").await;
    sluice.stop_cleanly();
    sluice.start_streaming(&db).await;
    db.sql("UPDATE b SET v = 'new' WHERE id % 10 = 0; DELETE FROM b WHERE id % 13 = 0; INSERT INTO b VALUES (9999, 'fresh')")
        .await;
    let backfill = sluice.command(&["snapshot", "--table", "public.b"]);
    assert_eq!(
        backfill.code,
        Some(0),
        "sluice snapshot failed: {}",
        backfill.stderr
    );
    db.sql("UPDATE b SET v = 'after' WHERE id % 7 = 0").await;
    sluice
        .wait_converged(&db, &es, &ib, "SELECT * FROM b")
        .await;
    sluice
        .wait_converged(&db, &es, &ia, "SELECT * FROM a")
        .await;
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_snapshotted_and_streamed_under_its_root_name() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("events");
    db.sql(
        "CREATE TABLE events (id bigint, kind text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
         CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (1000);
         CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (MAXVALUE);
         GRANT SELECT ON events_low, events_high TO sluice;
         INSERT INTO events SELECT g, 'old' FROM generate_series(1, 1500) g;
         CREATE PUBLICATION sluice FOR TABLE events WITH (publish_via_partition_root = true);",
    )
    .await;
    let mut sluice = Sluice::new(&db, "", &[table_mapping("events", &index)]);
    sluice.start_streaming(&db).await;
    db.sql(
        "UPDATE events SET kind = 'new' WHERE id % 3 = 0;
         DELETE FROM events WHERE id % 5 = 0;
         UPDATE events SET id = id + 1000 WHERE id BETWEEN 990 AND 995;
         INSERT INTO events VALUES (5000, 'fresh');",
    )
    .await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM events")
        .await;
    sluice.stop_cleanly();
}

/// SIGTERM while the stream is busy: a clean exit that finishes the
/// transaction in progress and confirms exactly what was applied, so the
/// restart neither loses nor re-sends anything. (A re-sent write would not
/// show as a 409: `external_gte` accepts the same version again. So the
/// restart's received changes are counted: exactly the rows missing from the
/// index.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_busy_stream_exits_cleanly_and_the_restart_replays_nothing() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("busy");
    db.sql(
        "CREATE TABLE busy (id bigint PRIMARY KEY, v text);
         CREATE PUBLICATION sluice FOR TABLE busy;",
    )
    .await;
    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("busy", &index)]);
    sluice.start_streaming(&db).await;
    for s in (1..=60_000).step_by(500) {
        db.sql(&format!(
            "INSERT INTO busy SELECT g, repeat('v', 200) FROM generate_series({s}, {}) g",
            s + 499
        ))
        .await;
    }
    // Stop while documents are still arriving.
    sluice
        .wait_for(Duration::from_secs(60), "the first documents", async || {
            es.refresh(&index).await;
            es.count(&index).await > 0
        })
        .await;
    sluice.stop_cleanly();
    es.refresh(&index).await;
    let before = es.count(&index).await;
    eprintln!("{before} of 60000 documents in the index at SIGTERM");

    sluice.start();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM busy")
        .await;
    let received = metric_sum(&sluice.metrics(), "sluice_changes_received_total", &[]) as u64;
    let missing = 60_000 - before;
    eprintln!("after the restart: {received} changes received, {missing} were missing");
    assert_eq!(
        received, missing,
        "the restart received {received} changes for {missing} missing documents"
    );
    sluice.stop_cleanly();
}
