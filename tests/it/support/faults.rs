//! The fault matrix's shared pieces (issue 18): how long a pipeline takes to
//! catch up after a fault heals, and the one report line each case writes.
//!
//! Every `fault_*` test ends with the index compared to its tables (or with
//! Sluice stopped on purpose, with its exit code and message checked), then
//! calls `report`. `./dev faults` runs the cases with `SLUICE_FAULT_REPORT`
//! set and turns the lines into RELIABILITY.md's fault-matrix table; in the
//! plain suite the line only goes to the test's output.

use std::io::Write;
use std::time::{Duration, Instant};

use super::SqlClient;
use super::sluice::Sluice;

/// What one fault case measured.
pub struct FaultCase<'a> {
    /// The link or server the fault hit: `Sluice→Elasticsearch`, `PostgreSQL`, ...
    pub area: &'a str,
    /// The fault, as a reader of the table would name it.
    pub fault: &'a str,
    /// How long the fault was held before it healed.
    pub held: Duration,
    /// From the heal until the slot confirmed everything written before it.
    pub recovery: Duration,
    /// `exact` when missing/extra/stale are all 0, else what Sluice did
    /// (for example `stopped: exit 2, names the slot and the rebuild`).
    pub outcome: &'a str,
}

/// Print the case's line and, under `./dev faults`, append it to the report.
pub fn report(test: &str, case: &FaultCase) {
    let line = format!(
        "| {} | {} | {} | {:.0} | {:.1} | {} |",
        case.area,
        case.fault,
        test.rsplit("::").next().unwrap_or(test),
        case.held.as_secs_f64(),
        case.recovery.as_secs_f64(),
        case.outcome
    );
    eprintln!("[fault matrix] {line}");
    if let Ok(path) = std::env::var("SLUICE_FAULT_REPORT") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open the fault report {path}: {e}"));
        writeln!(file, "{line}").expect("write the fault report");
    }
}

/// Wait until Sluice confirmed every WAL position written up to now, and
/// return how long that took: the moment its checkpoint passes it
/// (`sluice_confirmed_flush_lsn`), or the slot shows it, whichever is seen
/// first (the slot alone would add up to one status interval, 10 s).
/// Panics (with the log) if Sluice exits, or after `limit`.
pub async fn catch_up(
    db: &impl SqlClient,
    slot: &str,
    sluice: &mut Sluice,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let client = db.sql_client();
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("read the current WAL position")
        .get(0);
    let target_lsn = parse_lsn(&target);
    let query = format!(
        "SELECT coalesce(bool_or(confirmed_flush_lsn >= '{target}'::pg_lsn), false)
           FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    loop {
        if let Some(code) = sluice.exited() {
            panic!(
                "sluice exited with {code} while catching up:\n{}",
                sluice.log_text()
            );
        }
        if confirmed_lsn(sluice).is_some_and(|c| c >= target_lsn) {
            return started.elapsed();
        }
        // A restarted server may refuse for a moment: that is still "not yet".
        if let Ok(row) = client.query_one(&query, &[]).await
            && row.get::<_, bool>(0)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no catch-up within {limit:?}:\n{}",
            sluice.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `X/Y` as a 64-bit position.
fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("an LSN") << 32)
        | u64::from_str_radix(lo, 16).expect("an LSN")
}

/// `sluice_confirmed_flush_lsn` from the running process's `/metrics`;
/// `None` while it is not serving (starting, restarting).
fn confirmed_lsn(sluice: &Sluice) -> Option<u64> {
    let addr = super::sluice::http_addr_in(&sluice.log_text())?;
    let (_, body) = super::sluice::try_http_get(&addr, "/metrics", None).ok()?;
    let line = body
        .lines()
        .find(|l| l.starts_with("sluice_confirmed_flush_lsn "))?;
    // Exact as an f64 up to 2^53 bytes of WAL (8 PiB).
    Some(line.rsplit(' ').next()?.parse::<f64>().ok()? as u64)
}
