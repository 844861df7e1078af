//! `sluice snapshot --reindex` end to end, through the binaries: a running
//! `sluice run` streams a workload, the mapping file changes, the reindex
//! rebuilds the index under the new mapping while queries run against the
//! name, and the stream keeps writing the new index after the swap and after
//! a restart. Every test ends by comparing the whole table with the index.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use tokio::task::JoinHandle;

use crate::support::compare::assert_index_matches;
use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::sluice::{Ran, Sluice, mapping, sluice_command, table_mapping};
use crate::support::{Es, TestDb};

/// `sluice snapshot --reindex --stream-timeout <secs> <extra>` with the
/// test's config, on a blocking thread (the test goes on meanwhile).
fn start_reindex(sluice: &Sluice, stream_timeout: u64, extra: &[&str]) -> JoinHandle<Ran> {
    let mut args: Vec<String> = vec![
        "snapshot".into(),
        "--reindex".into(),
        "--stream-timeout".into(),
        stream_timeout.to_string(),
        "--config".into(),
        sluice.config_path().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice_command(&args, &[("SLUICE_LOG", "sluice=info")])
    })
}

/// The reindex to its end: (exit code, stderr).
async fn reindex_waiting(sluice: &Sluice, stream_timeout: u64, extra: &[&str]) -> (i32, String) {
    let ran = start_reindex(sluice, stream_timeout, extra).await.unwrap();
    (ran.code.unwrap_or(-1), ran.stderr)
}

/// [`reindex_waiting`] up to 120 s for the stream to dual-write.
async fn reindex(sluice: &Sluice, extra: &[&str]) -> (i32, String) {
    reindex_waiting(sluice, 120, extra).await
}

/// Inserts (ids above `first_new`), updates of any row, deletes of rows the
/// workload inserted itself: the table never has fewer rows than at start.
fn workload(db: &TestDb, first_new: i64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = db.url();
    tokio::spawn(async move {
        let pg = crate::support::connect(&url).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut next = first_new;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let sql = match rng.random_range(0..4) {
                0 | 1 => {
                    next += 1;
                    format!(
                        "INSERT INTO items VALUES ({next}, 'new {next}', {})",
                        next % 97
                    )
                }
                2 => format!(
                    "UPDATE items SET name = name || '+', qty = qty + 1 WHERE id = {}",
                    rng.random_range(1..=next)
                ),
                _ => format!(
                    "DELETE FROM items WHERE id = {}",
                    rng.random_range(first_new..=next)
                ),
            };
            pg.batch_execute(&sql).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

/// `_count` on `name` in a loop until stopped: (queries run, fewest seen).
fn count_queries(name: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let es = Es::new();
        let min = AtomicU64::new(u64::MAX);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let c = es
                .try_count(&name)
                .await
                .unwrap_or_else(|v| panic!("count: {v}"));
            min.fetch_min(c, Ordering::Relaxed);
            n += 1;
        }
        (n, min.load(Ordering::Relaxed))
    })
}

const V2: &str = "[rename]\nname = \"title\"\n\n[fields]\ngeneration = { value = \"v2\" }\n";
const V2_QUERY: &str = "SELECT id, name AS title, qty, 'v2' AS generation FROM items";

/// `rows` items, published and streamed by a running `sluice run` into the
/// concrete index `items`, which already equals the table: (the process,
/// the index name).
async fn items_streamed(db: &TestDb, es: &Es, rows: i64) -> (Sluice, String) {
    db.sql(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int);
         INSERT INTO items SELECT g, 'item ' || g, g % 97 FROM generate_series(1, {rows}) g;
         CREATE PUBLICATION sluice FOR TABLE items;"
    ))
    .await;
    let name = db.index("items");
    let mut sluice = Sluice::new(db, "", &[table_mapping("items", &name)]);
    sluice.start_streaming(db).await;
    sluice
        .wait_converged(db, es, &name, "SELECT * FROM items")
        .await;
    (sluice, name)
}

/// Edit the mapping on disk: `name` becomes `title`, and a constant field
/// `generation` appears (a running process keeps the old one).
fn edit_mapping_to_v2(sluice: &Sluice, name: &str) {
    sluice.write_mapping("items.toml", &mapping("public.items", name, V2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reindex_rebuilds_under_the_new_mapping_while_the_stream_writes_and_queries_never_see_fewer_documents()
 {
    let db = TestDb::new().await;
    let es = Es::new();
    let rows = 5_000;
    let (mut sluice, name) = items_streamed(&db, &es, rows).await;
    assert_eq!(
        es.indices_behind(&name).await,
        vec![name.clone()],
        "a concrete index"
    );
    // Once, without readers: the concrete index becomes an alias of the
    // same name (deleting the index fails searches in flight at that
    // instant, which is why the README says to do this first).
    let (code, stderr) = reindex(&sluice, &["--delete-old"]).await;
    assert_eq!(code, 0, "{stderr}\n{}", sluice.log_text());
    let old = es.indices_behind(&name).await;
    assert_eq!(old.len(), 1);
    assert_ne!(old[0], name);
    // Build index names carry a second-resolution timestamp.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Live traffic and readers, then the mapping changes on disk: `name`
    // becomes `title` and a constant field appears.
    let stop_writes = Arc::new(AtomicBool::new(false));
    let writes = workload(&db, rows, stop_writes.clone());
    let stop_queries = Arc::new(AtomicBool::new(false));
    let queries = count_queries(name.clone(), stop_queries.clone());
    edit_mapping_to_v2(&sluice, &name);

    let started = Instant::now();
    let (code, stderr) = reindex(&sluice, &[]).await;
    assert_eq!(code, 0, "reindex failed:\n{stderr}\n{}", sluice.log_text());
    let took = started.elapsed();
    assert!(
        stderr.contains("waiting for `sluice run` to start writing to"),
        "{stderr}"
    );
    // The swap is visible at once: the name is an alias over the new index.
    let now = es.indices_behind(&name).await;
    assert_eq!(now.len(), 1);
    assert_ne!(now, old, "the name moved to the build index");
    assert!(es.exists(&old[0]).await, "the old index is kept");
    assert!(
        sluice.log_text().contains("writing every change of"),
        "the running stream dual-wrote:\n{}",
        sluice.log_text()
    );

    // The same process (still holding the old mapping) keeps writing the
    // new shape after the swap.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writes.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    stop_queries.store(true, Ordering::Relaxed);
    let (queries_run, fewest) = queries.await.unwrap();
    assert!(
        written > 20,
        "the workload ran during the reindex: {written}"
    );
    assert!(queries_run > 5, "queries ran: {queries_run}");
    assert!(
        fewest >= rows as u64,
        "a query saw {fewest} documents, fewer than the {rows} rows at the start"
    );
    sluice.wait_converged(&db, &es, &name, V2_QUERY).await;

    // A restart loads the edited mapping and accepts the alias as its index.
    sluice.stop_cleanly();
    sluice.start_streaming(&db).await;
    db.sql(
        "INSERT INTO items SELECT g, 'late ' || g, 1 FROM generate_series(100001, 100100) g;
         UPDATE items SET qty = 0 WHERE id <= 50;
         DELETE FROM items WHERE id BETWEEN 100001 AND 100010;",
    )
    .await;
    sluice.wait_converged(&db, &es, &name, V2_QUERY).await;
    assert_eq!(
        es.indices_behind(&name).await,
        now,
        "written through the alias"
    );
    sluice.stop_cleanly();
    eprintln!("reindex of {rows} rows under load took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concrete_name_needs_delete_old_and_a_second_reindex_keeps_the_old_index() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, name) = items_streamed(&db, &es, 1_000).await;

    // The name is a concrete index: keeping it is impossible, said up front.
    let (code, stderr) = reindex(&sluice, &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--delete-old"), "{stderr}");
    assert_eq!(
        es.indices_behind(&name).await,
        vec![name.clone()],
        "nothing changed"
    );

    let (code, stderr) = reindex(&sluice, &["--delete-old"]).await;
    assert_eq!(code, 0, "{stderr}\n{}", sluice.log_text());
    let first = es.indices_behind(&name).await;

    // Second generation with a changed mapping, old index kept.
    edit_mapping_to_v2(&sluice, &name);
    db.sql("UPDATE items SET qty = -1 WHERE id % 10 = 0").await;
    // Build index names carry a second-resolution timestamp.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, stderr) = reindex(&sluice, &[]).await;
    assert_eq!(code, 0, "{stderr}\n{}", sluice.log_text());
    let second = es.indices_behind(&name).await;
    assert_ne!(second, first);
    assert!(es.exists(&first[0]).await, "the old index is kept");
    assert_index_matches(&db, &es, &name, V2_QUERY, &["id"]).await;

    db.sql("INSERT INTO items VALUES (5000, 'after', 5); DELETE FROM items WHERE id = 1;")
        .await;
    sluice.wait_converged(&db, &es, &name, V2_QUERY).await;
    // The kept index stopped changing at the swap: the new row is not in it.
    es.refresh(&first[0]).await;
    assert!(!es.sources(&first[0]).await.contains_key("5000"));
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_running_stream_the_reindex_waits_then_fails_and_can_be_abandoned() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, name) = items_streamed(&db, &es, 500).await;
    let (code, stderr) = reindex(&sluice, &["--delete-old"]).await;
    assert_eq!(code, 0, "{stderr}");
    let live = es.indices_behind(&name).await;
    sluice.stop_cleanly();

    // Nobody streams: the command says so and exits 1, keeping the build.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, stderr) = reindex_waiting(&sluice, 2, &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("start `sluice run`"), "{stderr}");
    let build = format!("{name}-2");
    let builds: Vec<String> = es
        .indices_behind(&format!("{name}-*"))
        .await
        .into_iter()
        .filter(|i| !live.contains(i))
        .collect();
    assert_eq!(builds.len(), 1, "one build index: {builds:?}");
    assert!(builds[0].starts_with(&build[..build.len() - 1]));
    // `sluice status` shows the waiting reindex.
    let status = sluice.command(&["status"]).stdout;
    assert!(
        status.contains(&format!(
            "{name} → {}: building, waiting for `sluice run` to dual-write",
            builds[0]
        )),
        "{status}"
    );

    // A (re)started stream picks the reindex up before streaming, and then
    // abandoning it stops the dual writes before the build index goes.
    sluice.start_streaming(&db).await;
    db.sql("UPDATE items SET qty = 7 WHERE id <= 20").await;
    let (code, stderr) = reindex(&sluice, &["--abandon"]).await;
    assert_eq!(code, 0, "{stderr}\n{}", sluice.log_text());
    assert!(!es.exists(&builds[0]).await, "the build index is deleted");
    assert!(
        sluice.log_text().contains("the reindex is abandoned"),
        "{}",
        sluice.log_text()
    );
    // Later changes reach the live index only; the build index stays gone.
    db.sql("UPDATE items SET qty = 8 WHERE id <= 20").await;
    sluice
        .wait_converged(&db, &es, &name, "SELECT * FROM items")
        .await;
    assert!(
        !es.exists(&builds[0]).await,
        "not recreated by a late write"
    );
    assert_eq!(es.indices_behind(&name).await, live, "the name never moved");
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_killed_during_the_build_dual_writes_everything_it_replays_after_restart() {
    let db = TestDb::new().await;
    let es = Es::new();
    let rows = 3_000;
    let (mut sluice, name) = items_streamed(&db, &es, rows).await;
    let (code, stderr) = reindex(&sluice, &["--delete-old"]).await;
    assert_eq!(code, 0, "{stderr}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = workload(&db, rows, stop.clone());
    edit_mapping_to_v2(&sluice, &name);
    let before = sluice.log_text().matches("writing every change of").count();
    let command = start_reindex(&sluice, 120, &[]);
    // SIGKILL once the stream dual-writes: whatever it had not confirmed is
    // replayed to the next process, which must dual-write it as well.
    let log = sluice.log_path();
    sluice
        .wait_for(
            Duration::from_secs(60),
            "the stream to pick the reindex up",
            async || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .matches("writing every change of")
                    .count()
                    > before
            },
        )
        .await;
    sluice.kill9();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice.start();
    let held = killed.elapsed();
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    let out = command.await.unwrap();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, sluice.log_text());
    assert!(
        sluice.log_text().matches("writing every change of").count() >= before + 2,
        "the restarted stream picked the reindex up too:\n{}",
        sluice.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    assert!(writes.await.unwrap() > 10);
    sluice.wait_converged(&db, &es, &name, V2_QUERY).await;
    sluice.stop_cleanly();
    report(
        "a_stream_killed_during_the_build_dual_writes_everything_it_replays_after_restart",
        &FaultCase {
            area: "Sluice",
            fault: "SIGKILL of `sluice run` while it dual-writes a reindex build",
            held,
            recovery,
            outcome: "exact",
        },
    );
}
