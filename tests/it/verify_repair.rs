//! `sluice verify` and `--repair` through the binary, while `sluice run`
//! streams a concurrent write load into the same table: an index corrupted
//! four ways is reported exactly (counts and ids), repaired to zero drift,
//! and the load's own changes are never reported nor overwritten.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::sluice::{Ran, Sluice, metric_sum, table_mapping};
use crate::support::{Es, TestDb, connect, wait_until};

/// Writes to ids 1..=500 of `accounts` (updates, deletes, re-inserts of new
/// ids above 100000) until stopped: the stream's newer work, which verify
/// must skip and repair must never overwrite.
fn start_load(url: String) -> (watch::Sender<bool>, tokio::task::JoinHandle<u64>) {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let client = connect(&url).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut next = 100_001i64;
        let mut n = 0u64;
        while !*stopped.borrow() {
            let id = rng.random_range(1..=500);
            let sql = match rng.random_range(0..10) {
                0..=5 => format!(
                    "UPDATE accounts SET balance = balance + {} WHERE id = {id}",
                    rng.random_range(1..100)
                ),
                6..=7 => {
                    next += 1;
                    format!("INSERT INTO accounts VALUES ({next}, 1, 'load')")
                }
                _ => format!("DELETE FROM accounts WHERE id = {id}"),
            };
            client.batch_execute(&sql).await.expect("load write");
            n += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
        }
        n
    });
    (stop, task)
}

/// `sluice verify <args> --json`: its exit code and the report of `index`.
fn verify(sluice: &Sluice, args: &[&str], index: &str) -> (Option<i32>, Value) {
    let mut all = vec!["verify", "--json"];
    all.extend(args);
    let ran: Ran = sluice.command(&all);
    let report: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}):\n{}", ran.text()));
    eprintln!("verify {args:?}: exit {:?}\n{}", ran.code, ran.stderr);
    (ran.code, report["indices"][index].clone())
}

fn ids(report: &Value, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = report[kind]["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {report}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn range(from: i64, to: i64) -> Vec<String> {
    let mut v: Vec<String> = (from..=to).map(|i| i.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_four_kinds_of_corruption_exactly_and_repair_mends_them_under_load() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, g * 10, 'n' || g FROM generate_series(1, 1000) g;
         CREATE PUBLICATION sluice FOR TABLE accounts;",
    )
    .await;
    let mut sluice = Sluice::new(&db, "", &[table_mapping("accounts", &index)]);
    sluice.start_streaming(&db).await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;

    // Equal before anything happens.
    let (code, r) = verify(&sluice, &[], &index);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["checked"], json!(1000), "{r}");

    let (stop, load) = start_load(db.url());
    // Corrupt documents the load never touches (ids 501..=1000), by hand.
    let c = &es.client;
    for id in 501..=505 {
        c.delete(elasticsearch::DeleteParts::IndexId(&index, &id.to_string()))
            .send()
            .await
            .unwrap();
    }
    for id in 506..=508 {
        // Edited by hand: a plain write, Elasticsearch counts the version on.
        c.index(elasticsearch::IndexParts::IndexId(&index, &id.to_string()))
            .body(json!({"id": id, "balance": -1, "note": format!("n{id}")}))
            .send()
            .await
            .unwrap();
    }
    let docs = es.all_docs(&index).await;
    for id in 509..=512 {
        // An old build that did not write `note`: same version, one field less.
        let (version, _) = docs[&id.to_string()].clone();
        c.index(elasticsearch::IndexParts::IndexId(&index, &id.to_string()))
            .version_type(elasticsearch::params::VersionType::ExternalGte)
            .version(version as i64)
            .body(json!({"id": id, "balance": id * 10}))
            .send()
            .await
            .unwrap();
    }
    for extra in ["x1", "x2"] {
        c.index(elasticsearch::IndexParts::IndexId(&index, extra))
            .body(json!({"id": 0, "balance": 0, "note": "stray"}))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Reported exactly, while the load goes on.
    let (code, r) = verify(&sluice, &[], &index);
    assert_eq!(code, Some(3), "drift is exit 3: {r}");
    assert_eq!(ids(&r, "missing"), range(501, 505), "{r}");
    assert_eq!(ids(&r, "stale"), range(506, 512), "{r}");
    assert_eq!(ids(&r, "extra"), ["x1", "x2"], "{r}");
    assert_eq!(r["dead_lettered"]["count"], json!(0), "{r}");
    assert_eq!(r["missing"]["count"], json!(5));
    assert_eq!(r["stale"]["count"], json!(7));
    assert_eq!(r["extra"]["count"], json!(2));
    let examples = r["stale_examples"].to_string();
    assert!(
        examples.contains("\"balance\"") && examples.contains("\"note\""),
        "{r}"
    );
    // The running stream serves the last result on /metrics.
    wait_for_drift_metrics(&sluice, &index, [5.0, 2.0, 7.0]).await;

    // Repaired while the load goes on; a verify right after finds nothing.
    let (code, r) = verify(&sluice, &["--repair"], &index);
    assert_eq!(code, Some(3), "{r}");
    assert_eq!(r["missing"]["count"], json!(5), "{r}");
    assert_eq!(r["stale"]["count"], json!(7), "{r}");
    assert_eq!(r["extra"]["count"], json!(2), "{r}");
    assert_eq!(r["repaired"], json!(14), "{r}");
    let (code, r) = verify(&sluice, &[], &index);
    assert_eq!(code, Some(0), "zero drift after the repair: {r}");
    assert!(r["skipped_newer"].as_u64().is_some(), "{r}");

    let _ = stop.send(true);
    let writes = load.await.unwrap();
    eprintln!("load: {writes} writes during verify and repair");
    assert!(writes > 50, "the load ran during the verifies ({writes})");
    // The load's changes all landed, none overwritten by the repair.
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    let (code, r) = verify(&sluice, &[], &index);
    assert_eq!(code, Some(0), "{r}");
    wait_for_drift_metrics(&sluice, &index, [0.0, 0.0, 0.0]).await;
    sluice.stop_cleanly();
}

/// Wait until `/metrics` shows the last verify's missing, extra and stale
/// counts for `index`, and a time for it.
async fn wait_for_drift_metrics(sluice: &Sluice, index: &str, want: [f64; 3]) {
    let label = format!("index=\"{index}\"");
    wait_until(
        Duration::from_secs(60),
        "the verify result on /metrics",
        async || {
            let m = sluice.metrics();
            let got: Vec<f64> = ["missing", "extra", "stale"]
                .iter()
                .map(|k| {
                    metric_sum(
                        &m,
                        "sluice_verify_drift_documents",
                        &[&label, &format!("kind=\"{k}\"")],
                    )
                })
                .collect();
            let at = metric_sum(&m, "sluice_verify_last_run_timestamp_seconds", &[&label]);
            (got == want && at > 0.0).then_some(())
        },
    )
    .await;
}
