//! The SIGKILL soak (`./dev soak`): `sluice run` killed with SIGKILL many
//! times under a pgbench-style load plus the random workload (inserts,
//! updates, key changes, deletes) and large inserts and deletes; at the
//! end every index must equal its table exactly. Ignored in the suite (it
//! runs for many minutes); `./dev soak` runs it with its figures going to
//! RELIABILITY.md.
//!
//! One kill in four follows a fault from the fault matrix, held 0.5–4 s:
//! Elasticsearch refusing connections or frozen (behind a proxy), or the
//! walsender terminated.
//!
//! Settings (environment): `SLUICE_SOAK_KILLS` (default 100),
//! `SLUICE_SOAK_MINUTES` (stop killing after this long even if fewer kills
//! were made), `SLUICE_SOAK_REPORT` (a file the figures are written to as
//! one Markdown table row).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};

use crate::support::compare::table_docs;
use crate::support::faults::catch_up;
use crate::support::proxy::Proxy;
use crate::support::services;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, SluiceToml, table_mapping};
use crate::support::workload::{Workload, spawn_bench};
use crate::support::{Es, TestDb};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Peak resident set of a process so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One fault from the fault matrix, held briefly and healed (the kill that
/// follows may land while Sluice is still recovering from it). Its name.
async fn inject_fault(
    rng: &mut rand::rngs::StdRng,
    proxy: &Proxy,
    db: &TestDb,
    slot: &str,
) -> &'static str {
    let hold = Duration::from_millis(rng.random_range(500..4000));
    match rng.random_range(0..3) {
        0 => {
            proxy.cut();
            tokio::time::sleep(hold).await;
            proxy.restore().await;
            "Elasticsearch outages"
        }
        1 => {
            proxy.hang();
            tokio::time::sleep(hold).await;
            proxy.restore().await;
            "Elasticsearch freezes"
        }
        _ => {
            db.sql(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
            ))
            .await;
            "walsenders terminated"
        }
    }
}

/// Now and then a large transaction: 20k rows inserted into `big`, or all deleted.
fn spawn_big(
    url: String,
    stop: Arc<AtomicBool>,
    rows: Arc<AtomicU64>,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = crate::support::connect(&url).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut next = 1i64;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(2000..8000))).await;
            // A large delete, not TRUNCATE: Sluice logs a TRUNCATE and keeps
            // the documents until `--reindex` (`on_truncate = "log"`, by
            // design), so an exact comparison cannot follow one.
            if rng.random_range(0..4) == 0 {
                client.batch_execute("DELETE FROM big").await.unwrap();
                continue;
            }
            let n = 20_000;
            client
                .batch_execute(&format!(
                    "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series({next}, {}) g",
                    next + n - 1
                ))
                .await
                .unwrap();
            next += n;
            rows.fetch_add(n as u64, Ordering::Relaxed);
        }
    })
}

/// Missing, extra and stale documents of `index` against the rows of `table`.
async fn differences(db: &TestDb, es: &Es, table: &str, index: &str) -> (usize, usize, usize) {
    let expected = table_docs(db, &format!("SELECT * FROM {table}"), &["id"]).await;
    let actual = es.sources(index).await;
    let missing = expected.keys().filter(|k| !actual.contains_key(*k)).count();
    let extra = actual.keys().filter(|k| !expected.contains_key(*k)).count();
    let stale = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .count();
    (missing, extra, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by ./dev soak"]
async fn soak_sigkill_under_load_loses_and_duplicates_nothing() {
    let kills_wanted = env_u64("SLUICE_SOAK_KILLS").unwrap_or(100);
    let time_cap = env_u64("SLUICE_SOAK_MINUTES").map(|m| Duration::from_secs(m * 60));
    let db = TestDb::new().await;
    let es = Es::new();
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         CREATE TABLE bench_accounts (id bigint PRIMARY KEY, bid int NOT NULL,
                                      abalance bigint NOT NULL, filler text);
         CREATE TABLE bench_history (id bigserial PRIMARY KEY, aid bigint NOT NULL,
                                     delta int NOT NULL);
         CREATE TABLE big (id bigint PRIMARY KEY, payload text);
         CREATE PUBLICATION sluice FOR TABLE accounts, bench_accounts, bench_history, big;",
    )
    .await;
    let tables = ["accounts", "bench_accounts", "bench_history", "big"];
    let indices: Vec<String> = tables.iter().map(|t| db.index(t)).collect();
    let mappings: Vec<(String, String)> = tables
        .iter()
        .zip(&indices)
        .map(|(t, i)| table_mapping(t, i))
        .collect();
    // Elasticsearch behind a proxy the soak cuts and freezes now and then.
    let proxy = Proxy::start(&services().es_url).await;
    let config = SluiceToml {
        extra: SNAPSHOT_NEVER.into(),
        es_url: proxy.url(),
        ..SluiceToml::for_db(&db)
    };
    let mut sluice = Sluice::with_config(&config, &mappings);
    sluice.start_streaming(&db).await;
    // Rows written after the slot exists, so they stream (no snapshot).
    db.sql(
        "INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g;
         INSERT INTO bench_accounts SELECT g, g % 20, 0, repeat(' ', 84)
           FROM generate_series(1, 2000) g;",
    )
    .await;

    let seed: u64 = rand::rng().random();
    eprintln!("soak seed {seed}: {kills_wanted} kills, time cap {time_cap:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let bench_tx = Arc::new(AtomicU64::new(0));
    let big_rows = Arc::new(AtomicU64::new(0));
    let workload = Workload::start(db.url(), "accounts", 201, seed);
    let bench = spawn_bench(db.url(), stop.clone(), bench_tx.clone(), seed ^ 1);
    let big = spawn_big(db.url(), stop.clone(), big_rows.clone(), seed ^ 2);

    let slot = sluice.slot.clone();
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let (mut kills, mut catch_ups, mut peak_kib) = (0u64, Vec::new(), 0u64);
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    while kills < kills_wanted && time_cap.is_none_or(|c| started.elapsed() < c) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
        // One kill in four follows a fault, so some kills land mid-recovery.
        if rng.random_range(0..4) == 0 {
            *faults
                .entry(inject_fault(&mut rng, &proxy, &db, &slot).await)
                .or_default() += 1;
        }
        if let Some(pid) = sluice.pid() {
            peak_kib = peak_kib.max(peak_rss_kib(pid));
        }
        sluice.kill9();
        kills += 1;
        sluice.start();
        catch_ups.push(catch_up(&db, &slot, &mut sluice, Duration::from_secs(300)).await);
        if kills % 10 == 0 {
            eprintln!("soak: {kills} kills after {:?}", started.elapsed());
        }
    }
    let kill_phase = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let workload_tx = workload.stop().await;
    bench.await.unwrap();
    big.await.unwrap();

    // Converged: every index equals its table (or the wait times out and
    // the figures below say what differs).
    let deadline = Instant::now() + Duration::from_secs(300);
    let diff = loop {
        let mut diff = (0, 0, 0);
        for (t, i) in tables.iter().zip(&indices) {
            let (m, e, s) = differences(&db, &es, t, i).await;
            diff = (diff.0 + m, diff.1 + e, diff.2 + s);
        }
        if diff == (0, 0, 0) || Instant::now() >= deadline {
            break diff;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(pid) = sluice.pid() {
        peak_kib = peak_kib.max(peak_rss_kib(pid));
    }
    sluice.stop_cleanly();

    catch_ups.sort();
    let median = catch_ups
        .get(catch_ups.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = catch_ups.last().copied().unwrap_or_default();
    let changes = workload_tx + bench_tx.load(Ordering::Relaxed) + big_rows.load(Ordering::Relaxed);
    let faults: Vec<String> = faults.iter().map(|(f, n)| format!("{n} {f}")).collect();
    let faults = if faults.is_empty() {
        String::new()
    } else {
        format!("; faults: {}", faults.join(", "))
    };
    let row = format!(
        "| {kills} | {:.1} | {workload_tx} random tx, {} bench tx, {} rows in large tx{faults} | {:.2} | {:.2} | {} | {} / {} / {} |",
        kill_phase.as_secs_f64() / 60.0,
        bench_tx.load(Ordering::Relaxed),
        big_rows.load(Ordering::Relaxed),
        max.as_secs_f64(),
        median.as_secs_f64(),
        peak_kib / 1024,
        diff.0,
        diff.1,
        diff.2
    );
    eprintln!(
        "soak: kills {kills}{faults}, changes (transactions + large-tx rows) {changes}, catch-up max {max:?} median {median:?}, peak RSS {} MiB, missing/extra/stale {}/{}/{}",
        peak_kib / 1024,
        diff.0,
        diff.1,
        diff.2
    );
    if let Ok(path) = std::env::var("SLUICE_SOAK_REPORT") {
        std::fs::write(path, format!("{row}\n")).unwrap();
    }
    assert_eq!(
        diff,
        (0, 0, 0),
        "missing / extra / stale documents after the soak"
    );
}
