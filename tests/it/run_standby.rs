//! Standby takeover with PostgreSQL as the only lock: two `sluice run`
//! processes with the same configuration under a concurrent write load
//! (the random workload plus a pgbench-style load). The one streaming is
//! SIGKILLed at random moments; the standby takes over, and the killed one
//! is started again as the next standby. Each takeover is timed (from the
//! kill until the other process streams: `/ready` says `streaming` and the
//! slot is held by a new walsender); the test prints the median and the
//! maximum. At the end every index equals its table exactly: the overlap
//! of a takeover (the new process replays from the slot's confirmed
//! position what the killed one had already written) is refused as stale
//! by the versions (409, counted as `conflict`), never applied twice.
//!
//! `SLUICE_STANDBY_KILLS` sets the number of kills (default 10).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};

use crate::support::slot::slot_pid;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, http_get, metric_sum, table_mapping};
use crate::support::workload::{BENCH_ACCOUNTS, BENCH_TABLES, Workload, spawn_bench};
use crate::support::{Es, SqlClient, TestDb};

const TABLES: [&str; 3] = ["accounts", "bench_accounts", "bench_history"];

/// The state `/ready` reports for the last start of the process logging
/// to `log` (None: no answer).
fn ready_state(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let addr = crate::support::sluice::http_addr_in(&text)?;
    std::net::TcpStream::connect(&addr).ok()?;
    let body: serde_json::Value = serde_json::from_str(&http_get(&addr, "/ready").1).ok()?;
    body["state"].as_str().map(str::to_string)
}

/// Wait until `s` waits as a standby (its `/ready` says so).
async fn wait_standby(s: &mut Sluice) {
    let log = s.log_path();
    s.wait_for(Duration::from_secs(60), "the standby state", async || {
        ready_state(&log).as_deref() == Some("standby")
    })
    .await;
}

/// Bulk items Elasticsearch refused as already applied (409), so far.
fn conflicts(s: &Sluice) -> f64 {
    metric_sum(&s.metrics(), "sluice_bulk_items_total", &["conflict"])
}

/// Time from the kill (`killed_at`, when walsender `old_pid` held the
/// slot) until `next` streams from the slot under a new walsender.
async fn takeover(db: &TestDb, next: &mut Sluice, old_pid: i32, killed_at: Instant) -> Duration {
    let (slot, log) = (next.slot.clone(), next.log_path());
    let client = db.sql_client();
    let mut streaming = false;
    next.wait_for(
        Duration::from_secs(90),
        "the standby to take over",
        async || {
            streaming = streaming || ready_state(&log).as_deref() == Some("streaming");
            streaming && slot_pid(client, &slot).await.is_some_and(|p| p != old_pid)
        },
    )
    .await;
    killed_at.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_each_sigkill_and_the_index_stays_exact() {
    let kills: usize = std::env::var("SLUICE_STANDBY_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let db = TestDb::new().await;
    let es = Es::new();
    db.sql(&format!(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         {BENCH_TABLES}
         CREATE PUBLICATION sluice FOR TABLE {};",
        TABLES.join(", ")
    ))
    .await;
    let indices: Vec<String> = TABLES.iter().map(|t| db.index(t)).collect();
    let mappings: Vec<_> = TABLES
        .iter()
        .zip(&indices)
        .map(|(t, i)| table_mapping(t, i))
        .collect();
    // Two processes, one configuration (each in its own directory only so
    // each has its own log; the files are the same).
    let mut pair = [
        Sluice::new(&db, SNAPSHOT_NEVER, &mappings),
        Sluice::new(&db, SNAPSHOT_NEVER, &mappings),
    ];
    assert_eq!(
        std::fs::read_to_string(pair[0].config_path()).unwrap(),
        std::fs::read_to_string(pair[1].config_path()).unwrap()
    );
    pair[0].start_streaming(&db).await;
    pair[1].start();
    wait_standby(&mut pair[1]).await;
    db.sql(&format!(
        "INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g; {BENCH_ACCOUNTS}"
    ))
    .await;

    let seed: u64 = rand::rng().random();
    eprintln!("standby seed {seed}: {kills} kills");
    let stop = Arc::new(AtomicBool::new(false));
    let bench_tx = Arc::new(AtomicU64::new(0));
    let workload = Workload::start(db.url(), "accounts", 201, seed);
    let bench = spawn_bench(db.url(), stop.clone(), bench_tx.clone(), seed ^ 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let (mut active, mut times, mut conflicts_seen) = (0usize, Vec::new(), 0.0);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2000))).await;
        let old_pid = slot_pid(&db, &pair[active].slot)
            .await
            .expect("the active process holds the slot");
        conflicts_seen += conflicts(&pair[active]);
        pair[active].kill9();
        let killed_at = Instant::now();
        let next = 1 - active;
        times.push(takeover(&db, &mut pair[next], old_pid, killed_at).await);
        pair[active].start();
        wait_standby(&mut pair[active]).await;
        active = next;
    }
    stop.store(true, Ordering::Relaxed);
    let workload_tx = workload.stop().await;
    bench.await.unwrap();

    // Exact end state, written through all the takeovers.
    for (t, i) in TABLES.iter().zip(&indices) {
        pair[active]
            .wait_converged(&db, &es, i, &format!("SELECT * FROM {t}"))
            .await;
    }
    conflicts_seen += conflicts(&pair[active]);
    times.sort();
    let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
    eprintln!(
        "standby: {kills} takeovers under {workload_tx} random and {} bench transactions; \
         takeover median {median:?}, max {max:?}; {conflicts_seen} replayed writes refused as \
         already applied; all takeovers: {times:?}",
        bench_tx.load(Ordering::Relaxed)
    );
    // The overlap happened and was harmless: the replay after a takeover
    // met documents the killed process had already written.
    assert!(conflicts_seen > 0.0, "no takeover replayed anything");
    assert!(
        max < Duration::from_secs(20),
        "a takeover took {max:?}: {times:?}"
    );
    pair[active].stop_cleanly();
    let standby = 1 - active;
    pair[standby].stop_cleanly();
}

/// A frozen active process (SIGSTOP: what a lost node or a network
/// partition looks like to PostgreSQL — no FIN, the socket just goes
/// quiet) keeps the slot until its walsender gives up after
/// `wal_sender_timeout`; the standby then takes over. When the frozen one
/// wakes up (SIGCONT: the partition heals) its stream is gone, and it
/// waits as the standby; whatever it still sends is older than what the
/// new active one wrote, and the index stays exact. Ignored in the suite:
/// it waits out the server's `wal_sender_timeout` (60 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "waits out wal_sender_timeout (60 s); run by hand"]
async fn a_frozen_active_is_replaced_after_wal_sender_timeout() {
    let db = TestDb::new().await;
    let es = Es::new();
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         CREATE PUBLICATION sluice FOR TABLE accounts;",
    )
    .await;
    let index = db.index("accounts");
    let mappings = [table_mapping("accounts", &index)];
    let mut pair = [
        Sluice::new(&db, SNAPSHOT_NEVER, &mappings),
        Sluice::new(&db, SNAPSHOT_NEVER, &mappings),
    ];
    pair[0].start_streaming(&db).await;
    pair[1].start();
    wait_standby(&mut pair[1]).await;
    db.sql("INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g")
        .await;
    let timeout: String = db.query_value("SHOW wal_sender_timeout").await;
    let workload = Workload::start(db.url(), "accounts", 201, rand::rng().random());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_pid = slot_pid(&db, &pair[0].slot).await.expect("held");
    let frozen = pair[0].pid().unwrap().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &frozen])
            .status()
            .unwrap()
    };
    signal("-STOP");
    let frozen_at = Instant::now();
    let took = takeover(&db, &mut pair[1], old_pid, frozen_at).await;
    eprintln!(
        "standby: takeover from a frozen active took {took:?} (wal_sender_timeout {timeout})"
    );
    signal("-CONT");
    wait_standby(&mut pair[0]).await;
    workload.stop().await;
    pair[1]
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    pair[1].stop_cleanly();
    pair[0].stop_cleanly();
}
