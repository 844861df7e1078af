//! Fault matrix, PostgreSQL (issue 18): what an administrator or the server
//! does to Sluice's replication while it streams under a random workload.
//! Each case ends with the index equal to the table, or with `sluice run`
//! stopped on purpose (exit code and message checked), then one report line.
//! Restarts and crashes of the server: `run_outage`; a slot invalidated by
//! `max_slot_wal_keep_size`: `run_slot_lost`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::Value;

use crate::support::compare::{assert_index_holds, table_docs};
use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::slot::slot_pid;
use crate::support::sluice::{Sluice, mapping, table_mapping};
use crate::support::workload::Workload;
use crate::support::{Es, TestDb};

const SEED_ROWS: i64 = 500;

/// `accounts` (the workload's table) with `SEED_ROWS` rows, published as
/// `sluice`, and a `sluice run` (replication role, initial snapshot) that
/// streams it and has loaded the seed.
async fn accounts_streamed(db: &TestDb, es: &Es) -> (Sluice, String) {
    let index = db.index("accounts");
    db.sql(&format!(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, g, 'seed' FROM generate_series(1, {SEED_ROWS}) g;
         CREATE PUBLICATION sluice FOR TABLE accounts;"
    ))
    .await;
    let mut sluice = Sluice::new(db, "", &[table_mapping("accounts", &index)]);
    sluice.start_streaming(db).await;
    sluice
        .wait_converged(db, es, &index, "SELECT * FROM accounts")
        .await;
    (sluice, index)
}

fn workload(db: &TestDb) -> Workload {
    Workload::start(db.url(), "accounts", SEED_ROWS + 1, rand::rng().random())
}

/// Wait until the workload committed `n` more transactions.
async fn progress(sluice: &mut Sluice, workload: &Workload, n: u64) {
    let before = workload.committed();
    sluice
        .wait_for(Duration::from_secs(60), "workload progress", async || {
            workload.committed() >= before + n
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pg_walsender_terminated_five_times_under_load() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = accounts_streamed(&db, &es).await;
    let workload = workload(&db);
    let slot = sluice.slot.clone();
    let mut held = Duration::ZERO;
    let mut last_kill = Instant::now();
    for round in 1..=5 {
        progress(&mut sluice, &workload, 100).await;
        let pid = slot_pid(&db, &slot)
            .await
            .expect("a walsender serves the slot");
        let terminated: bool = db
            .query_value(&format!("SELECT pg_terminate_backend({pid})"))
            .await;
        assert!(terminated, "round {round}: walsender {pid} not terminated");
        last_kill = Instant::now();
        // Held: until a new walsender serves the slot again.
        sluice
            .wait_for(
                Duration::from_secs(60),
                "a new walsender on the slot",
                async || slot_pid(&db, &slot).await.is_some_and(|p| p != pid),
            )
            .await;
        held += last_kill.elapsed();
    }
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    let since_last = last_kill.elapsed();
    let committed = workload.stop().await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    let log = sluice.log_text();
    assert!(
        log.matches("reconnecting").count() >= 5,
        "the reader reconnected after each termination:\n{log}"
    );
    sluice.stop_cleanly();
    eprintln!("{committed} transactions; caught up {since_last:?} after the last termination");
    report(
        "fault_pg_walsender_terminated_five_times_under_load",
        &FaultCase {
            area: "PostgreSQL",
            fault: "walsender terminated (pg_terminate_backend) 5 times under load",
            held,
            recovery,
            outcome: "exact",
        },
    );
}

/// Stopped with exit 2 and the rebuild, as `publication_guard` words it.
fn assert_gap_stop(code: i32, log: &str, what: &str) {
    assert_eq!(code, 2, "a publication gap is for a person to fix:\n{log}");
    assert!(
        log.contains(what)
            && log.contains("never reached Sluice")
            && log.contains("sluice teardown --yes-drop-slot")
            && log.contains("delete the target indices"),
        "the message says what happened and the rebuild ({what}):\n{log}"
    );
}

/// Follow the rebuild the stop names: teardown, delete the index, create the
/// publication again (the replication role may not), start: time from the
/// start until the slot confirmed everything, then the index equals the table.
async fn rebuild(db: &TestDb, es: &Es, sluice: &mut Sluice, index: &str) -> Duration {
    // The owner drops and creates the publication (the replication role
    // may not); teardown drops the rest.
    db.sql("DROP PUBLICATION IF EXISTS sluice").await;
    let torn = sluice.command(&["teardown", "--yes-drop-slot"]);
    assert_eq!(torn.code, Some(0), "{}", torn.text());
    es.delete_indices(index).await.unwrap();
    db.sql("CREATE PUBLICATION sluice FOR TABLE accounts").await;
    sluice.start_streaming(db).await;
    let slot = sluice.slot.clone();
    let recovery = catch_up(db, &slot, sluice, Duration::from_secs(120)).await;
    sluice
        .wait_converged(db, es, index, "SELECT * FROM accounts")
        .await;
    recovery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pg_publication_table_dropped_and_added_back_stops_with_the_rebuild() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = accounts_streamed(&db, &es).await;
    let workload = workload(&db);
    progress(&mut sluice, &workload, 100).await;
    // Dropped and added back within a fraction of the guard's period: the
    // changes in between are not in the stream, and nothing in it says so.
    let started = Instant::now();
    db.sql("ALTER PUBLICATION sluice DROP TABLE accounts").await;
    db.sql("INSERT INTO accounts VALUES (-1, 0, 'in the gap')")
        .await;
    db.sql("ALTER PUBLICATION sluice ADD TABLE accounts").await;
    let held = started.elapsed();
    let code = sluice.wait_for_exit(Duration::from_secs(30)).await;
    let stopped_after = started.elapsed();
    assert_gap_stop(
        code,
        &sluice.log_text(),
        "public.accounts was removed from publication `sluice` and added again",
    );
    // A restart (an orchestrator's) must not stream over the gap either.
    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    assert_gap_stop(code, &sluice.log_text(), "since the last run");
    let committed = workload.stop().await;
    let recovery = rebuild(&db, &es, &mut sluice, &index).await;
    sluice.stop_cleanly();
    eprintln!("{committed} transactions; stopped {stopped_after:?} after the DROP TABLE");
    report(
        "fault_pg_publication_table_dropped_and_added_back_stops_with_the_rebuild",
        &FaultCase {
            area: "PostgreSQL",
            fault: "publication: mapped table dropped and added back by hand",
            held,
            recovery,
            outcome: "stopped: exit 2, names the change and the rebuild; rebuilt exact",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pg_publication_dropped_by_hand_stops_with_the_rebuild() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = accounts_streamed(&db, &es).await;
    let workload = workload(&db);
    progress(&mut sluice, &workload, 100).await;
    let started = Instant::now();
    db.sql("DROP PUBLICATION sluice").await;
    let code = sluice.wait_for_exit(Duration::from_secs(30)).await;
    let held = started.elapsed();
    let log = sluice.log_text();
    // The guard or the walsender's 42704, whichever comes first.
    assert!(
        log.contains("publication `sluice` no longer exists")
            || log.contains("the publication was dropped"),
        "{log}"
    );
    assert_gap_stop(code, &log, "publication");
    // Created again by hand while Sluice was stopped: still a gap.
    db.sql("CREATE PUBLICATION sluice FOR TABLE accounts").await;
    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    assert_gap_stop(
        code,
        &sluice.log_text(),
        "since the last run, publication `sluice` was dropped and created again",
    );
    let committed = workload.stop().await;
    let recovery = rebuild(&db, &es, &mut sluice, &index).await;
    sluice.stop_cleanly();
    eprintln!("{committed} transactions");
    report(
        "fault_pg_publication_dropped_by_hand_stops_with_the_rebuild",
        &FaultCase {
            area: "PostgreSQL",
            fault: "publication dropped by hand (then created again)",
            held,
            recovery,
            outcome: "stopped: exit 2, names the change and the rebuild; rebuilt exact",
        },
    );
}

/// Run `sql` (ending in `RETURNING to_jsonb(accounts)`, or for a delete
/// `RETURNING id`) and apply what it returned to `expected`: a row's
/// document is the row as its last change wrote it, in the table's shape at
/// that moment.
async fn apply(db: &TestDb, expected: &mut BTreeMap<String, Value>, sql: &str) {
    let rows = db
        .admin
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    for r in rows {
        match r.try_get::<_, Value>(0) {
            Ok(row) => expected.insert(row["id"].to_string(), row),
            Err(_) => expected.remove(&r.get::<_, i64>(0).to_string()),
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pg_column_added_dropped_retyped_with_a_backlog() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = accounts_streamed(&db, &es).await;
    let workload = workload(&db);
    progress(&mut sluice, &workload, 100).await;
    // Stopped; the workload goes on, then the schema changes under writes.
    sluice.stop_cleanly();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = workload.stop().await;
    let mut expected = table_docs(&db, "SELECT * FROM accounts", &["id"]).await;
    let t = "accounts";
    db.sql("ALTER TABLE accounts ADD COLUMN tag text").await;
    apply(
        &db,
        &mut expected,
        &format!("UPDATE {t} SET tag = 'tag ' || id WHERE id % 7 = 0 RETURNING to_jsonb({t})"),
    )
    .await;
    apply(&db, &mut expected, &format!(
        "INSERT INTO {t} SELECT g, g, 'added', 'new' FROM generate_series(100001, 100050) g RETURNING to_jsonb({t})"
    ))
    .await;
    db.sql("ALTER TABLE accounts DROP COLUMN note").await;
    apply(
        &db,
        &mut expected,
        &format!("UPDATE {t} SET balance = balance + 1 WHERE id % 5 = 0 RETURNING to_jsonb({t})"),
    )
    .await;
    apply(
        &db,
        &mut expected,
        &format!("DELETE FROM {t} WHERE id % 11 = 0 RETURNING id"),
    )
    .await;
    db.sql("ALTER TABLE accounts ALTER COLUMN balance TYPE text USING balance::text")
        .await;
    apply(
        &db,
        &mut expected,
        &format!(
            "UPDATE {t} SET balance = balance || '7' WHERE id % 3 = 0 RETURNING to_jsonb({t})"
        ),
    )
    .await;
    apply(&db, &mut expected, &format!(
        "INSERT INTO {t} SELECT g, g::text, 'late' FROM generate_series(100051, 100100) g RETURNING to_jsonb({t})"
    ))
    .await;
    let held = started.elapsed();

    sluice.start();
    let restarted = Instant::now();
    let slot = sluice.slot.clone();
    catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    let recovery = restarted.elapsed();
    // Every document is its row as its last change left it: rows untouched
    // since a DDL keep the shape they were written in (no row change, no
    // write; `sluice snapshot --reindex` rewrites them all).
    let deadline = Instant::now() + Duration::from_secs(60);
    while es.sources(&index).await != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_index_holds(
        &es,
        &index,
        &expected,
        "rows as their last change wrote them",
    )
    .await;
    // ...and new changes take the new shape.
    db.sql("UPDATE accounts SET balance = balance").await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    sluice.stop_cleanly();
    eprintln!("{committed} transactions before the DDL");
    report(
        "fault_pg_column_added_dropped_retyped_with_a_backlog",
        &FaultCase {
            area: "PostgreSQL",
            fault: "column added, dropped, retyped with a backlog pending",
            held,
            recovery,
            outcome: "exact",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pg_a_mapped_column_dropped_with_a_backlog_stops_until_the_mapping_is_fixed() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    db.sql(&format!(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, g, 'seed' FROM generate_series(1, {SEED_ROWS}) g;
         CREATE PUBLICATION sluice FOR TABLE accounts;"
    ))
    .await;
    // The mapping names `note`: it cannot apply once the column is gone.
    let renamed = mapping("public.accounts", &index, "[rename]\nnote = \"title\"\n");
    let mut sluice = Sluice::new(&db, "", &[("accounts.toml", renamed)]);
    sluice.start_streaming(&db).await;
    let workload = workload(&db);
    progress(&mut sluice, &workload, 100).await;
    sluice.stop_cleanly();
    let started = Instant::now();
    let committed = workload.stop().await;
    db.sql(
        "ALTER TABLE accounts DROP COLUMN note;
         UPDATE accounts SET balance = balance + 1 WHERE id % 5 = 0;",
    )
    .await;
    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    let log = sluice.log_text();
    assert_eq!(
        code, 2,
        "a mapping that cannot apply is for a person to fix:\n{log}"
    );
    assert!(
        log.contains("accounts.toml")
            && log.contains("column `note` does not exist in public.accounts"),
        "the stop names the mapping file and the column:\n{log}"
    );
    // The fix: the mapping without the column; the backlog then drains, and
    // the next change of each row gives its document the table's shape.
    sluice.write_mapping("accounts.toml", &mapping("public.accounts", &index, ""));
    let held = started.elapsed();
    sluice.start_streaming(&db).await;
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    db.sql("UPDATE accounts SET balance = balance").await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    sluice.stop_cleanly();
    eprintln!("{committed} transactions before the DDL");
    report(
        "fault_pg_a_mapped_column_dropped_with_a_backlog_stops_until_the_mapping_is_fixed",
        &FaultCase {
            area: "PostgreSQL",
            fault: "a column the mapping names dropped with a backlog pending",
            held,
            recovery,
            outcome: "stopped: exit 2, names the mapping file and column; fixed mapping exact",
        },
    );
}
