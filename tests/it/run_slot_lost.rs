//! A slot PostgreSQL invalidated (it fell further behind than
//! `max_slot_wal_keep_size`) cannot stream again: its changes are gone.
//! `sluice run` must say so and how to rebuild, not retry forever.

use std::time::{Duration, Instant};

use crate::run::{Sluice, mapping, wait_converged};
use crate::run_outage::{private_setup, wait_active};
use crate::support::es::Indices;
use crate::support::private_pg::PrivatePg;
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
    let mut sluice = Sluice::with_setup(
        &private_setup(&pg, &indices),
        &[("items.toml", mapping("public.items", &index, ""))],
    );
    sluice.start();
    wait_active(&admin, "sluice", &mut sluice).await;
    admin
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    wait_converged(
        &admin,
        &Es::new(),
        &index,
        "SELECT * FROM items",
        &mut sluice,
    )
    .await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());

    // With Sluice stopped, write far more WAL than the slot may keep; a
    // checkpoint then removes it and marks the slot lost.
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

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(sluice.config_path())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_ne!(
        check.status.code(),
        Some(0),
        "check passed a lost slot:\n{out}"
    );
    assert!(out.contains("has been invalidated"), "{out}");

    sluice.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(code) = sluice.exited() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "sluice run kept going on a lost slot:\n{}",
            sluice.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = sluice.log_text();
    assert_eq!(code, 2, "a lost slot is for a person to fix:\n{log}");
    assert!(
        log.contains("has been invalidated") && log.contains("sluice teardown --yes-drop-slot"),
        "the error names the problem and the way out:\n{log}"
    );
}
