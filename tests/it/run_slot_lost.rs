//! A slot PostgreSQL invalidated (it fell further behind than
//! `max_slot_wal_keep_size`) cannot stream again: its changes are gone.
//! `sluice run` must say so and how to rebuild, not retry forever.

use std::time::{Duration, Instant};

use crate::support::es::Indices;
use crate::support::faults::{FaultCase, report};
use crate::support::private_pg::PrivatePg;
use crate::support::sluice::{Sluice, SluiceToml, table_mapping};
use crate::support::{Es, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_run_with_exit_2_and_the_way_to_rebuild() {
    let pg = PrivatePg::start_with("max_slot_wal_keep_size = 1MB\nmax_wal_size = 64MB\n");
    let indices = Indices::new();
    let index = indices.name("items");
    let admin = connect(&pg.url()).await;
    admin
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text);
             CREATE TABLE filler (id bigint, pad text);
             CREATE PUBLICATION sluice FOR TABLE items;",
        )
        .await
        .unwrap();
    let mut sluice = Sluice::with_config(
        &SluiceToml::for_private(&pg, &indices),
        &[table_mapping("items", &index)],
    );
    sluice.start_streaming(&admin).await;
    admin
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    sluice
        .wait_converged(&admin, &Es::new(), &index, "SELECT * FROM items")
        .await;
    sluice.stop_cleanly();

    // With Sluice stopped, write far more WAL than the slot may keep; a
    // checkpoint then removes it and marks the slot lost.
    let outage = Instant::now();
    admin
        .batch_execute("INSERT INTO items VALUES (51, 'written while stopped')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        admin
            .batch_execute(
                "INSERT INTO filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 20000) g;
                 SELECT pg_switch_wal();
                 CHECKPOINT;",
            )
            .await
            .unwrap();
        let status: Option<String> = admin
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'sluice'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was not invalidated (wal_status {status:?})"
        );
    }

    let check = sluice.command(&["check"]);
    let out = check.text();
    assert_ne!(check.code, Some(0), "check passed a lost slot:\n{out}");
    assert!(out.contains("has been invalidated"), "{out}");

    let held = outage.elapsed();
    sluice.start();
    let started = Instant::now();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    let stopped = started.elapsed();
    let log = sluice.log_text();
    assert_eq!(code, 2, "a lost slot is for a person to fix:\n{log}");
    assert!(
        log.contains("has been invalidated") && log.contains("sluice teardown --yes-drop-slot"),
        "the error names the problem and the way out:\n{log}"
    );
    // Recovery here is how long `run` took to stop with the rebuild.
    report(
        "an_invalidated_slot_stops_run_with_exit_2_and_the_way_to_rebuild",
        &FaultCase {
            area: "PostgreSQL",
            fault: "slot invalidated by max_slot_wal_keep_size during an outage",
            held,
            recovery: stopped,
            outcome: "stopped: exit 2, names the slot and the rebuild",
        },
    );
}
