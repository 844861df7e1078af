//! `sluice run` must never break the application's database nor silently
//! leave a wrong index (issue 14): it refuses, with `check`'s words, a row
//! filter PostgreSQL would turn against the application's UPDATEs; it never
//! lets a filter run statements of its own; it refuses to rebuild over a lost
//! slot; and SIGTERM stops it within seconds even mid-snapshot.

use std::time::{Duration, Instant};

use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::sluice::{Sluice, mapping, table_mapping};
use crate::support::{Es, TestDb};

/// A table the replication role owns, in a database it may create
/// publications in: nothing but Sluice's own checks stands in the way.
async fn owned_table(db: &TestDb, ddl: &str, table: &str) {
    db.sql(&format!(
        "{ddl};
         ALTER TABLE {table} OWNER TO sluice;
         GRANT CREATE ON DATABASE {} TO sluice;",
        db.name
    ))
    .await;
}

/// Replication slots in the test database (none unless Sluice made one).
async fn slots(db: &TestDb) -> i64 {
    db.query_value("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_row_filter_outside_the_replica_identity_and_the_application_still_updates() {
    let db = TestDb::new().await;
    owned_table(
        &db,
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text);
         INSERT INTO orders VALUES (1, 'new'), (2, 'hidden')",
        "orders",
    )
    .await;
    let index = db.index("orders");
    let mut sluice = Sluice::new(
        &db,
        "",
        &[(
            "orders.toml",
            mapping("public.orders", &index, "filter = \"status <> 'hidden'\""),
        )],
    );
    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    let log = sluice.log_text();
    assert_eq!(
        code, 2,
        "a filter check refuses is for a person to fix:\n{log}"
    );
    assert!(
        log.contains("the row filter reads `status` outside public.orders's replica identity")
            && log.contains("REPLICA IDENTITY FULL"),
        "run says what check says:\n{log}"
    );
    assert_eq!(
        db.query_value::<i64>("SELECT count(*) FROM pg_publication")
            .await,
        0
    );
    assert_eq!(slots(&db).await, 0);
    // `snapshot` runs the same checks and refuses with the same words.
    let snapshot = sluice.command(&["snapshot"]);
    let out = &snapshot.stderr;
    assert_eq!(snapshot.code, Some(2), "{out}");
    assert!(
        out.contains("the row filter reads `status` outside public.orders's replica identity"),
        "{out}"
    );
    assert_eq!(
        slots(&db).await,
        0,
        "snapshot created no temporary slot either"
    );
    // The application's own writes still work.
    db.admin
        .execute("UPDATE orders SET status = 'shipped' WHERE id = 1", &[])
        .await
        .expect("the application's UPDATE succeeds");
    db.admin
        .execute("DELETE FROM orders WHERE id = 2", &[])
        .await
        .expect("the application's DELETE succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_filter_with_extra_statements_is_refused_naming_the_mapping_file_and_nothing_runs() {
    let db = TestDb::new().await;
    owned_table(
        &db,
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         CREATE TABLE victim (id int);
         ALTER TABLE victim OWNER TO sluice",
        "orders",
    )
    .await;
    let index = db.index("orders");
    for filter in [
        "id > 0); DROP TABLE victim; --",
        "true); CREATE TABLE pwned(); --",
        "true; CREATE TABLE pwned()",
    ] {
        let mut sluice = Sluice::new(
            &db,
            "",
            &[(
                "orders.toml",
                mapping("public.orders", &index, &format!("filter = {filter:?}")),
            )],
        );
        sluice.start();
        let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
        let log = sluice.log_text();
        assert_eq!(code, 2, "{filter}: refused as configuration:\n{log}");
        assert!(
            log.contains("orders.toml line 3: `filter`"),
            "{filter}: the error names the mapping file and line:\n{log}"
        );
        assert_eq!(
            db.query_value::<i64>("SELECT count(*) FROM pg_tables WHERE tablename = 'victim'")
                .await,
            1,
            "{filter}: the victim table is still there"
        );
        assert_eq!(
            db.query_value::<i64>("SELECT count(*) FROM pg_tables WHERE tablename = 'pwned'")
                .await,
            0,
            "{filter}: no table was created"
        );
        assert_eq!(
            db.query_value::<i64>("SELECT count(*) FROM pg_publication")
                .await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_after_the_initial_load_stops_run_with_exit_2_and_the_rebuild_recipe() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 200) g;
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let mut sluice = Sluice::new(&db, "", &[table_mapping("items", &index)]);
    sluice.start();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM items")
        .await;
    sluice.stop_cleanly();

    // The slot goes (a failover, an administrator); rows change meanwhile.
    let slot = db.slot();
    db.admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    db.sql("DELETE FROM items WHERE id <= 10").await;
    es.refresh(&index).await;
    let before = es.all_docs(&index).await;

    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    let log = sluice.log_text();
    assert_eq!(code, 2, "a lost slot is for a person to fix:\n{log}");
    assert!(
        log.contains(&format!("replication slot `{slot}` does not exist"))
            && log.contains("sluice teardown --yes-drop-slot")
            && log.contains(&format!("delete the target indices ({index})")),
        "the error says what happened and how to rebuild:\n{log}"
    );
    assert_eq!(slots(&db).await, 0, "no new slot was created");
    es.refresh(&index).await;
    assert_eq!(
        es.all_docs(&index).await,
        before,
        "the index was not touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_initial_snapshot_stops_within_seconds_and_a_restart_converges() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("big");
    db.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 100000) g;
         CREATE PUBLICATION sluice FOR TABLE big;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"initial\"\nchunk_rows = 5000\nparallel_readers = 1\n",
        &[table_mapping("big", &index)],
    );
    sluice.start();
    // Mid-snapshot: some documents are in, far from all.
    sluice
        .wait_for(
            Duration::from_secs(120),
            "the snapshot to begin",
            async || {
                es.refresh(&index).await;
                es.count(&index).await > 0
            },
        )
        .await;
    let stopping = Instant::now();
    let code = sluice.terminate();
    let took = stopping.elapsed();
    let log = sluice.log_text();
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} to stop the snapshot:\n{log}"
    );
    assert!(
        !log.contains("initial snapshot done"),
        "the snapshot finished before SIGTERM; make the table bigger:\n{log}"
    );
    assert_eq!(code, 0, "{log}");
    eprintln!("stopped {took:?} after SIGTERM mid-snapshot");

    sluice.start();
    db.sql("UPDATE big SET pad = 'changed after the restart' WHERE id % 1000 = 0")
        .await;
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(180)).await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM big")
        .await;
    let log = sluice.log_text();
    assert!(log.contains("resuming its remaining chunks"), "{log}");
    sluice.stop_cleanly();
    report(
        "sigterm_during_the_initial_snapshot_stops_within_seconds_and_a_restart_converges",
        &FaultCase {
            area: "Sluice",
            fault: "SIGTERM during the initial snapshot (100k rows), restart",
            held: took,
            recovery,
            outcome: "exact",
        },
    );
}
