//! `sluice verify` on a large table: bounded memory (peak RSS of the verify
//! process, printed) and its throughput against `sluice snapshot`'s on the
//! same table. Ignored by default (a minute or more on a small machine):
//! `./dev test verify_large -- --ignored --nocapture`; rows from
//! `SLUICE_VERIFY_ROWS` (default 1,000,000).

use std::process::Command;
use std::time::Instant;

use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, table_mapping};
use crate::support::{Es, TestDb};

/// Run `sluice <args> --config ...` under `/usr/bin/time -v`: exit code,
/// stdout, seconds and peak RSS in KiB.
fn timed(sluice: &Sluice, args: &[&str]) -> (Option<i32>, String, f64, u64) {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(sluice.config_path())
        .output()
        .expect("run sluice under /usr/bin/time");
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in:\n{stderr}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        secs,
        rss,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a large table: run with --ignored (see the module docs)"]
async fn verify_checks_a_large_table_in_bounded_memory_at_snapshot_speed() {
    let rows: u64 = std::env::var("SLUICE_VERIFY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("big");
    db.sql(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, a int, b text, c numeric, d timestamptz, e boolean);
         INSERT INTO big SELECT g, g % 1000, 'row ' || g, g / 7.0, '2026-01-01'::timestamptz + g * interval '1 s', g % 2 = 0
           FROM generate_series(1, {rows}) g;
         ANALYZE big;
         CREATE PUBLICATION sluice FOR TABLE big;"
    ))
    .await;
    let sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("big", &index)]);

    let (code, out, snap_secs, snap_rss) = timed(&sluice, &["snapshot", "--table", "public.big"]);
    assert_eq!(code, Some(0), "{out}");
    es.refresh(&index).await;
    assert_eq!(es.count(&index).await, rows);

    let (code, out, verify_secs, verify_rss) = timed(&sluice, &["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(code, Some(0), "{report}");
    let r = &report["indices"][&index];
    assert_eq!(r["checked"], serde_json::json!(rows), "{r}");
    assert_eq!(r["equal"], serde_json::json!(rows), "{r}");

    eprintln!(
        "verify_large: {rows} rows; snapshot {snap_secs:.1} s ({:.0} rows/s, peak RSS {} MiB); \
         verify {verify_secs:.1} s ({:.0} rows/s, peak RSS {} MiB)",
        rows as f64 / snap_secs,
        snap_rss / 1024,
        rows as f64 / verify_secs,
        verify_rss / 1024
    );
    // Bounded: the batch, the readers and an 8-byte digest per row, far
    // below what holding the table's documents would take.
    assert!(
        verify_rss < 400 * 1024,
        "verify peaked at {} MiB",
        verify_rss / 1024
    );
}
