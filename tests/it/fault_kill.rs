//! Fault matrix, Sluice killed (issue 18): SIGKILL at the moments where
//! half-done work is most likely to be lost or doubled — mid initial
//! snapshot, mid `--reindex`, mid dead-letter writes, mid a 1M-row
//! transaction — under a random workload; each case ends with the index
//! equal to the table, then one report line. SIGKILL of the streaming
//! `sluice run` during a reindex build: `run_reindex`; the 100-kill soak:
//! `run_soak`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{Value, json};

use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, mapping, table_mapping};
use crate::support::workload::Workload;
use crate::support::{Es, TestDb, json_rows};

const ACCOUNTS: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);";

/// The `accounts` table with `rows` seed rows whose `note` is `note_sql`
/// (an expression of `g`), published as `sluice`.
async fn accounts(db: &TestDb, rows: i64, note_sql: &str) {
    db.sql(&format!(
        "{ACCOUNTS}
         INSERT INTO accounts SELECT g, g, {note_sql} FROM generate_series(1, {rows}) g;
         CREATE PUBLICATION sluice FOR TABLE accounts;"
    ))
    .await;
}

fn workload(db: &TestDb, first_free: i64) -> Workload {
    Workload::start(db.url(), "accounts", first_free, rand::rng().random())
}

/// Documents in `index` right now (refreshed first: build indices run with
/// refresh off).
async fn count_now(es: &Es, index: &str) -> u64 {
    es.refresh(index).await;
    es.count(index).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_kill_sigkill_during_the_initial_snapshot() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    let rows = 200_000;
    accounts(&db, rows, "'seed'").await;
    let workload = workload(&db, rows + 1);
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"initial\"\nchunk_rows = 5000\nparallel_readers = 1\n",
        &[table_mapping("accounts", &index)],
    );
    sluice.start();
    sluice
        .wait_for(
            Duration::from_secs(120),
            "the snapshot to be under way",
            async || count_now(&es, &index).await > 20_000,
        )
        .await;
    sluice.kill9();
    let killed = Instant::now();
    let log = sluice.log_text();
    assert!(
        !log.contains("initial snapshot done"),
        "the snapshot finished before the kill; make the table bigger:\n{log}"
    );
    let loaded = count_now(&es, &index).await;
    assert!(loaded < rows as u64, "killed mid-copy: {loaded} documents");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice.start();
    let held = killed.elapsed();
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(180)).await;
    let committed = workload.stop().await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    let log = sluice.log_text();
    assert!(log.contains("resuming its remaining chunks"), "{log}");
    sluice.stop_cleanly();
    eprintln!("killed with {loaded} of {rows} documents loaded; {committed} transactions");
    report(
        "fault_kill_sigkill_during_the_initial_snapshot",
        &FaultCase {
            area: "Sluice",
            fault: "SIGKILL during the initial snapshot (200k rows)",
            held,
            recovery,
            outcome: "exact",
        },
    );
}

/// The reindexed shape: `note` renamed `title`, a constant `generation`.
const V2: &str = "[rename]\nnote = \"title\"\n\n[fields]\ngeneration = { value = \"v2\" }\n";
const V2_QUERY: &str = "SELECT id, balance, note AS title, 'v2' AS generation FROM accounts";

/// `sluice snapshot --reindex <extra>` as a child process (so it can be
/// killed), its stderr in `log`.
fn spawn_reindex(sluice: &Sluice, log: &std::path::Path, extra: &[&str]) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "snapshot",
            "--reindex",
            "--stream-timeout",
            "120",
            "--config",
        ])
        .arg(sluice.config_path())
        .args(extra)
        .env("SLUICE_LOG", "sluice=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sluice snapshot --reindex")
}

/// Wait for a reindex child to exit; its exit code.
async fn reindex_exit(mut child: Child, log: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "the reindex did not finish:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_kill_sigkill_of_the_reindex_then_the_same_command_again() {
    let db = TestDb::new().await;
    let es = Es::new();
    let name = db.index("accounts");
    let rows = 60_000;
    accounts(&db, rows, "'seed ' || g").await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nchunk_rows = 2000\nparallel_readers = 1\n",
        &[table_mapping("accounts", &name)],
    );
    sluice.start_streaming(&db).await;
    sluice
        .wait_converged(&db, &es, &name, "SELECT * FROM accounts")
        .await;
    // The name becomes an alias (a reindex of a concrete index replaces it).
    let log = sluice.file("reindex.log");
    let first = spawn_reindex(&sluice, &log, &["--delete-old"]);
    assert_eq!(reindex_exit(first, &log).await, 0);
    let live = es.indices_behind(&name).await;
    // Build index names carry a second-resolution timestamp.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let workload = workload(&db, rows + 1);
    sluice.write_mapping("accounts.toml", &mapping("public.accounts", &name, V2));
    let child = spawn_reindex(&sluice, &log, &[]);
    let mut child = Some(child);
    let build =
        crate::support::wait_until(Duration::from_secs(120), "the build index to fill", || {
            let (es, name, live) = (&es, &name, &live);
            async move {
                let builds: Vec<String> = es
                    .indices_behind(&format!("{name}-*"))
                    .await
                    .into_iter()
                    .filter(|i| !live.contains(i))
                    .collect();
                let build = builds.first()?.clone();
                (count_now(es, &build).await > 5_000).then_some(build)
            }
        })
        .await;
    let mut c = child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let killed = Instant::now();
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        es.indices_behind(&name).await,
        live,
        "killed before the swap:\n{out}"
    );
    let copied = count_now(&es, &build).await;
    assert!(copied < rows as u64, "killed mid-copy: {copied} documents");

    // The documented way on: the same command again resumes the build.
    let again = spawn_reindex(&sluice, &log, &[]);
    let held = killed.elapsed();
    let code = reindex_exit(again, &log).await;
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 0, "{out}\n{}", sluice.log_text());
    assert_eq!(
        es.indices_behind(&name).await,
        vec![build.clone()],
        "the same build index was resumed and swapped in:\n{out}"
    );
    let slot = sluice.slot.clone();
    catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    let recovery = killed.elapsed() - held;
    let committed = workload.stop().await;
    sluice.wait_converged(&db, &es, &name, V2_QUERY).await;
    sluice.stop_cleanly();
    eprintln!("killed with {copied} of {rows} copied; {committed} transactions");
    report(
        "fault_kill_sigkill_of_the_reindex_then_the_same_command_again",
        &FaultCase {
            area: "Sluice",
            fault: "SIGKILL of `sluice snapshot --reindex` mid-copy, then the same command again",
            held,
            recovery,
            outcome: "exact",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_kill_sigkill_during_dead_letter_writes() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (index, dl) = (db.index("accounts"), db.index("dead-letters"));
    // `note` is a number to the index: the seed's numeric notes index, the
    // workload's `new` and `moved` are refused for good (dead letters).
    es.create_index(
        &index,
        json!({
            "settings": {"index.gc_deletes": "1d"},
            "mappings": {"properties": {"note": {"type": "long"}}}
        }),
    )
    .await;
    let rows = 2_000;
    accounts(&db, rows, "g::text").await;
    let numeric = "SELECT * FROM accounts WHERE note ~ '^[0-9]+$'";
    let mut sluice = Sluice::new(&db, "", &[table_mapping("accounts", &index)]);
    sluice.start_streaming(&db).await;
    sluice.wait_converged(&db, &es, &index, numeric).await;
    let workload = workload(&db, rows + 1);
    let mut held = Duration::ZERO;
    let mut letters = 0;
    for _ in 0..3 {
        sluice
            .wait_for(
                Duration::from_secs(60),
                "dead letters being written",
                async || count_now(&es, &dl).await >= letters + 30,
            )
            .await;
        sluice.kill9();
        let killed = Instant::now();
        letters = count_now(&es, &dl).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        sluice.start_streaming(&db).await;
        held += killed.elapsed();
    }
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    let committed = workload.stop().await;
    catch_up(&db, &slot, &mut sluice, Duration::from_secs(120)).await;
    // No row lost: the rows the index can take are in it, exactly.
    sluice.wait_converged(&db, &es, &index, numeric).await;
    // ...and every other row is dead-lettered as its last change wrote it.
    let records: Vec<Value> = es.sources(&dl).await.into_values().collect();
    let mut lettered: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &records {
        let id = r["id"].as_str().unwrap().to_string();
        lettered.entry(id).or_default().push(&r["doc"]);
    }
    let refused = json_rows(&db.admin, "SELECT * FROM accounts WHERE note !~ '^[0-9]+$'").await;
    assert!(!refused.is_empty());
    for row in &refused {
        let docs = lettered.get(&row["id"].to_string());
        assert!(
            docs.is_some_and(|d| d.contains(&row)),
            "row {row} is neither indexed nor dead-lettered in its last state"
        );
    }
    // Not duplicated (docs/operations.md: a replayed write is the same
    // write, stored once): one record per refused write.
    let mut writes: BTreeMap<(String, u64, String), u32> = BTreeMap::new();
    for r in &records {
        let w = (
            r["id"].as_str().unwrap().to_string(),
            r["version"].as_u64().unwrap(),
            r["doc"].to_string(),
        );
        *writes.entry(w).or_default() += 1;
    }
    let doubled: Vec<_> = writes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "dead letters stored twice: {doubled:?}");
    let log = sluice.log_text();
    sluice.stop_cleanly();
    eprintln!(
        "{} dead letters for {} refused rows; {committed} transactions",
        records.len(),
        refused.len()
    );
    assert!(log.contains("dead"), "{log}");
    report(
        "fault_kill_sigkill_during_dead_letter_writes",
        &FaultCase {
            area: "Sluice",
            fault: "SIGKILL during dead-letter writes (3 kills)",
            held,
            recovery,
            outcome: "exact (rows indexed or dead-lettered once)",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: ./dev faults --ignored"]
async fn fault_kill_sigkill_during_a_million_row_transaction() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (index, big) = (db.index("accounts"), db.index("big"));
    accounts(&db, 0, "'seed'").await;
    db.sql(
        "CREATE TABLE big (id int PRIMARY KEY, n int);
         ALTER PUBLICATION sluice ADD TABLE big;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        SNAPSHOT_NEVER,
        &[
            table_mapping("accounts", &index),
            table_mapping("big", &big),
        ],
    );
    sluice.start_streaming(&db).await;
    db.sql("INSERT INTO accounts SELECT g, g, 'seed' FROM generate_series(1, 200) g")
        .await;
    let workload = workload(&db, 201);
    let rows: u64 = 1_000_000;
    let started = Instant::now();
    db.sql(&format!(
        "INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, {rows}) g"
    ))
    .await;
    eprintln!(
        "the 1M-row transaction committed in {:?}",
        started.elapsed()
    );
    sluice
        .wait_for(
            Duration::from_secs(300),
            "the transaction to be partly indexed",
            async || count_now(&es, &big).await > 200_000,
        )
        .await;
    sluice.kill9();
    let killed = Instant::now();
    let indexed = count_now(&es, &big).await;
    assert!(
        indexed < rows,
        "killed mid-transaction: {indexed} documents"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice.start();
    let held = killed.elapsed();
    let slot = sluice.slot.clone();
    let recovery = catch_up(&db, &slot, &mut sluice, Duration::from_secs(600)).await;
    let committed = workload.stop().await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    sluice
        .wait_converged(&db, &es, &big, "SELECT * FROM big")
        .await;
    sluice.stop_cleanly();
    eprintln!(
        "killed with {indexed} of {rows} indexed; {committed} transactions; whole case {:?}",
        started.elapsed()
    );
    report(
        "fault_kill_sigkill_during_a_million_row_transaction",
        &FaultCase {
            area: "Sluice",
            fault: "SIGKILL during a 1M-row transaction's streaming",
            held,
            recovery,
            outcome: "exact",
        },
    );
}
