//! The heartbeat (`[postgres] heartbeat_interval_ms`): while the published
//! tables are idle and unpublished ones are busy, the slot's confirmed
//! position still moves past the unpublished WAL, so the slot does not pin
//! it. Private clusters, so no other database's WAL blurs the measurement.

use std::time::{Duration, Instant};

use sluice::Lsn;
use tokio_postgres::Client;

use crate::support::es::Indices;
use crate::support::private_pg::PrivatePg;
use crate::support::slot::{confirmed_flush, wal_lsn};
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, SluiceToml, table_mapping};
use crate::support::{Es, TestDb, connect};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// One session, a few small transactions every 10 ms: the walsender
    /// catches up between them.
    Light,
    /// Two sessions writing 50 000-row transactions back to back: the
    /// walsender is busy decoding all the time.
    Heavy,
}

struct Outcome {
    /// WAL position when the load started.
    load_start: Lsn,
    /// (seconds since the load started, current WAL − confirmed, confirmed − load_start).
    samples: Vec<(f64, i64, i64)>,
    /// WAL the slot retains at the end (server position − restart LSN), bytes.
    retained: f64,
}

/// A private cluster where Sluice streams the published table `quiet`
/// (idle after one row) while `busy` is not published.
struct QuietBusy {
    pg: PrivatePg,
    _indices: Indices,
    admin: Client,
    sluice: Sluice,
}

async fn quiet_busy(heartbeat_ms: Option<u64>, observer: bool) -> QuietBusy {
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let indices = Indices::new();
    let admin = connect(&pg.url()).await;
    admin
        .batch_execute(
            "CREATE TABLE quiet (id int PRIMARY KEY, v text);
             CREATE TABLE busy (id bigserial PRIMARY KEY, payload text);
             CREATE PUBLICATION sluice FOR TABLE quiet;",
        )
        .await
        .unwrap();
    if observer {
        // A second slot reads back what the slot's database received.
        admin
            .batch_execute("SELECT pg_create_logical_replication_slot('observer', 'pgoutput')")
            .await
            .unwrap();
    }
    let mut setup = SluiceToml::for_private(&pg, &indices);
    if let Some(ms) = heartbeat_ms {
        setup.postgres_extra = format!("heartbeat_interval_ms = {ms}");
    }
    let index = indices.name("quiet");
    let mut sluice = Sluice::with_config(&setup, &[table_mapping("quiet", &index)]);
    sluice.start_streaming(&admin).await;
    admin
        .batch_execute("INSERT INTO quiet VALUES (1, 'only change')")
        .await
        .unwrap();
    let es = Es::new();
    sluice
        .wait_for(Duration::from_secs(30), "the quiet row", async || {
            es.count(&index).await == 1
        })
        .await;
    QuietBusy {
        pg,
        _indices: indices,
        admin,
        sluice,
    }
}

/// Writers on the unpublished table until the returned sender says stop.
fn write_busy(
    url: String,
    load: Load,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sessions = if load == Load::Heavy { 2 } else { 1 };
    let writers = (0..sessions)
        .map(|_| {
            let url = url.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let c = connect(&url).await;
                let sql = match load {
                    Load::Light => {
                        "INSERT INTO busy (payload) SELECT repeat('x', 500) FROM generate_series(1, 10)"
                    }
                    Load::Heavy => {
                        "INSERT INTO busy (payload) SELECT repeat('x', 200) FROM generate_series(1, 50000)"
                    }
                };
                while !*stop.borrow() {
                    c.batch_execute(sql).await.unwrap();
                    if load == Load::Light {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
            })
        })
        .collect();
    (stop_tx, writers)
}

/// (seconds since `started`, current WAL − confirmed, confirmed − `from`).
async fn sample(admin: &Client, started: Instant, from: Lsn) -> ((f64, i64, i64), Lsn) {
    let current = wal_lsn(admin).await;
    let confirmed = confirmed_flush(admin, "sluice").await;
    (
        (
            started.elapsed().as_secs_f64(),
            (current.0 - confirmed.0) as i64,
            confirmed.0 as i64 - from.0 as i64,
        ),
        confirmed,
    )
}

async fn slot_measure(heartbeat_ms: Option<u64>, load: Load, secs: u64, starve: bool) -> Outcome {
    let QuietBusy {
        pg,
        _indices,
        admin,
        mut sluice,
    } = quiet_busy(heartbeat_ms, false).await;
    if starve {
        // The walsender at the lowest CPU priority, competing with the
        // writers: an attempt to make it fall behind and stay behind.
        let pid: i32 = admin
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'sluice'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let st = std::process::Command::new("renice")
            .args(["-n", "19", "-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let load_start = wal_lsn(&admin).await;
    let (stop, writers) = write_busy(pg.url(), load);
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(sluice.exited().is_none(), "{}", sluice.log_text());
        samples.push(sample(&admin, started, load_start).await.0);
    }
    let _ = stop.send(true);
    for w in writers {
        w.await.unwrap();
    }
    // Sluice's own gauge (refreshed every 15 s) after a 30 s run.
    let retained = sluice.metric("sluice_slot_retained_wal_bytes");
    sluice.stop_cleanly();
    Outcome {
        load_start,
        samples,
        retained,
    }
}

/// Light unpublished load with the published table idle: the slot must
/// move past WAL written during the load. Also returns how many heartbeat
/// messages the slot's database received (read back through a second slot).
async fn moves_past_unpublished_wal(heartbeat_ms: Option<u64>) -> (Outcome, i64) {
    let QuietBusy {
        pg,
        _indices,
        admin,
        mut sluice,
    } = quiet_busy(heartbeat_ms, true).await;
    let load_start = wal_lsn(&admin).await;
    let (stop, writers) = write_busy(pg.url(), Load::Light);
    // WAL the unpublished table wrote in the first seconds of the load...
    let started = Instant::now();
    sluice
        .wait_for(Duration::from_secs(10), "unpublished WAL", async || {
            started.elapsed() > Duration::from_secs(3)
        })
        .await;
    let mark = wal_lsn(&admin).await;
    // ...is passed by the slot while the load goes on (status updates every 10 s).
    let mut samples = Vec::new();
    sluice
        .wait_for(
            Duration::from_secs(40),
            "the slot to pass the unpublished WAL",
            async || {
                let (s, confirmed) = sample(&admin, started, load_start).await;
                samples.push(s);
                confirmed > mark
            },
        )
        .await;
    let _ = stop.send(true);
    for w in writers {
        w.await.unwrap();
    }
    let retained: f64 = admin
        .query_one(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::float8 FROM pg_replication_slots
             WHERE slot_name = 'sluice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    sluice.stop_cleanly();
    let heartbeats: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('observer', NULL, NULL,
               'proto_version', '1', 'publication_names', 'sluice', 'messages', 'true')
             WHERE position('sluice.heartbeat'::bytea IN data) > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (
        Outcome {
            load_start,
            samples,
            retained,
        },
        heartbeats,
    )
}

/// Measured on PostgreSQL 15: keepalives alone already move the slot past
/// unpublished WAL (the walsender sends its WAL position whenever it waits
/// for more WAL), once per status update; the heartbeat does the same
/// through the stream itself. Both are checked, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_moves_past_unpublished_wal_while_published_tables_are_idle() {
    let ((with, beats_on), (without, beats_off)) = tokio::join!(
        moves_past_unpublished_wal(Some(500)),
        moves_past_unpublished_wal(None)
    );
    report(&format!("heartbeat 500 ms ({beats_on} heartbeats)"), &with);
    report("no heartbeat", &without);
    assert!(
        beats_on >= 5,
        "heartbeats reach the slot's database: {beats_on}"
    );
    assert_eq!(beats_off, 0, "no heartbeat unless configured");
}

fn report(name: &str, o: &Outcome) {
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    // The last sample of each second is enough to read.
    let n = o.samples.len();
    let line: Vec<String> = o
        .samples
        .iter()
        .enumerate()
        .filter(|(i, s)| *i + 1 == n || o.samples[i + 1].0 as i64 != s.0 as i64)
        .map(|(_, (t, lag, adv))| format!("{t:.1}s lag {:.1} adv {:.1}", mib(*lag), mib(*adv)))
        .collect();
    eprintln!(
        "{name}: load from {}; retained {:.1} MiB; {}",
        o.load_start,
        o.retained / (1024.0 * 1024.0),
        line.join(" | ")
    );
}

/// `cargo test --test it measure_slot -- --ignored --nocapture`; with
/// `SLUICE_MEASURE_STARVE=1` the walsender runs at nice 19 under the heavy
/// load (an attempt to make it fall behind for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints a table"]
async fn measure_slot_advance_with_and_without_heartbeat() {
    let starve = std::env::var("SLUICE_MEASURE_STARVE").is_ok();
    let loads: &[Load] = if starve {
        &[Load::Heavy]
    } else {
        &[Load::Light, Load::Heavy]
    };
    for &load in loads {
        for hb in [None, Some(500)] {
            let o = slot_measure(hb, load, 30, starve).await;
            report(&format!("{load:?} heartbeat={hb:?} starved={starve}"), &o);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_emit_message_privilege_is_reported_at_startup_naming_the_function_and_role() {
    let db = TestDb::new().await;
    let index = db.index("t");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE PUBLICATION sluice FOR TABLE t;
         REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC;",
    )
    .await;
    let setup = SluiceToml {
        postgres_extra: "heartbeat_interval_ms = 1000".into(),
        extra: SNAPSHOT_NEVER.into(),
        ..SluiceToml::for_db(&db)
    };
    let mut sluice = Sluice::with_config(&setup, &[table_mapping("t", &index)]);
    // `check` finds it without writing anything.
    let check = sluice.command(&["check"]);
    let out = check.text();
    assert_eq!(check.code, Some(2), "{out}");
    assert!(
        out.contains("pg_logical_emit_message(boolean, text, text)")
            && out.contains("role `sluice`")
            && out.contains("GRANT EXECUTE"),
        "{out}"
    );
    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    let log = sluice.log_text();
    assert_eq!(code, 2, "a setup problem is a configuration failure\n{log}");
    assert!(
        log.contains("pg_logical_emit_message(boolean, text, text)")
            && log.contains("role `sluice`")
            && log.contains("GRANT EXECUTE"),
        "{log}"
    );
}
