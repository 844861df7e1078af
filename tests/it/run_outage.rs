//! `sluice run` (the real process) through outages of the servers it talks
//! to, with a random workload running: Elasticsearch refusing and then
//! hanging (behind a proxy, never the shared server), and PostgreSQL
//! restarting fast and crashing (a private cluster). No manual step: the
//! process stays up, and at the end the index equals the table exactly.

use std::time::{Duration, Instant};

use rand::RngExt;
use sluice::Lsn;

use crate::support::compare::assert_index_matches;
use crate::support::es::Indices;
use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::private_pg::PrivatePg;
use crate::support::proxy::Proxy;
use crate::support::slot::confirmed_flush;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, SluiceToml, table_mapping};
use crate::support::workload::{Workload, accounts_under_load};
use crate::support::{Es, TestDb};

const ACCOUNTS: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
     CREATE PUBLICATION sluice FOR TABLE accounts;";

#[derive(Debug, Clone, Copy)]
enum Outage {
    /// Connections refused, open ones reset.
    Refuse,
    /// Connections accepted, nothing answers: request timeouts must fire.
    Hang,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elasticsearch_outage_mid_stream_holds_the_slot_and_heals_without_a_manual_step() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    db.sql(ACCOUNTS).await;
    let proxy = Proxy::start(&crate::support::services().es_url).await;
    let setup = SluiceToml {
        es_url: proxy.url(),
        es_extra: "request_timeout_ms = 2000".into(),
        extra: SNAPSHOT_NEVER.into(),
        ..SluiceToml::for_db(&db)
    };
    let (mut sluice, workload) = accounts_under_load(&db, &es, &setup, &index).await;

    for (n, outage) in [Outage::Refuse, Outage::Hang].into_iter().enumerate() {
        let retries_before = sluice.metric("sluice_retries_total");
        match outage {
            Outage::Refuse => proxy.cut(),
            Outage::Hang => proxy.hang(),
        }
        let started = Instant::now();
        // The first transaction committed during the outage: whatever the
        // slot confirms until it is applied must stay below its commit.
        let marker = format!("-{}", n + 1);
        db.sql(&format!(
            "INSERT INTO accounts VALUES ({marker}, 0, 'marker')"
        ))
        .await;
        let committed_before = workload.committed();
        let mut max_confirmed = Lsn::ZERO;
        let mut ready = Vec::new();
        while started.elapsed() < Duration::from_secs(22) {
            if let Some(code) = sluice.exited() {
                panic!(
                    "sluice exited ({code}) during the outage:\n{}",
                    sluice.log_text()
                );
            }
            max_confirmed = max_confirmed.max(confirmed_flush(&db, &sluice.slot).await);
            assert_eq!(sluice.get("/health").0, 200, "alive while it retries");
            ready.push(sluice.get("/ready").0);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let retries = sluice.metric("sluice_retries_total") - retries_before;
        assert!(retries > 0.0, "{outage:?}: no retries were counted");
        assert!(
            workload.committed() > committed_before + 100,
            "the workload kept writing during the outage"
        );
        if let Outage::Hang = outage {
            assert!(
                sluice.log_text().contains("timeout=true"),
                "a hanging Elasticsearch must be cut off by the request timeout:\n{}",
                sluice.log_text()
            );
        }
        ready.dedup();
        eprintln!("{outage:?}: {retries} retries, /ready answered {ready:?}");
        proxy.restore().await;

        let version = crate::support::wait_until(
            Duration::from_secs(60),
            "the marker to be applied after the outage",
            || es.doc_version(&index, &marker),
        )
        .await;
        assert!(
            max_confirmed.0 <= version,
            "{outage:?}: the slot confirmed {max_confirmed} during the outage, past the \
             unapplied transaction committed at {}",
            Lsn(version)
        );
        // ...and moves past it once it is applied (status updates: 10 s).
        let slot = sluice.slot.clone();
        sluice
            .wait_for(
                Duration::from_secs(30),
                "the slot to move past the marker",
                async || confirmed_flush(&db, &slot).await.0 > version,
            )
            .await;
    }
    let committed = workload.stop().await;
    eprintln!("{committed} transactions during the test");
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM accounts")
        .await;
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_and_crash_mid_stream_heal_without_a_manual_step() {
    let pg = std::sync::Arc::new(tokio::task::spawn_blocking(PrivatePg::start).await.unwrap());
    let indices = Indices::new();
    let es = Es::new();
    let index = indices.name("accounts");
    let docs_index = indices.name("docs");
    let admin = crate::support::connect(&pg.url()).await;
    admin.batch_execute(ACCOUNTS).await.unwrap();
    // Updates of `docs` leave a TOASTed column unchanged, so Sluice re-reads
    // those rows on its SQL connection, which the restarts close too.
    admin
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             ALTER PUBLICATION sluice ADD TABLE docs;",
        )
        .await
        .unwrap();
    let setup = SluiceToml::for_private(&pg, &indices);
    let mut sluice = Sluice::with_config(
        &setup,
        &[
            table_mapping("accounts", &index),
            table_mapping("docs", &docs_index),
        ],
    );
    sluice.start_streaming(&admin).await;
    admin
        .batch_execute(
            "INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g;
             INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i), 0
               FROM generate_series(1, 5) g;",
        )
        .await
        .unwrap();
    let workload = Workload::start(pg.url(), "accounts", 201, rand::rng().random());

    let mut figures = Vec::new();
    for mode in ["fast", "immediate"] {
        let before = workload.committed();
        sluice
            .wait_for(Duration::from_secs(30), "workload progress", async || {
                workload.committed() > before + 200
            })
            .await;
        let started = Instant::now();
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.restart_mode(mode))
            .await
            .unwrap();
        let held = started.elapsed();
        eprintln!("pg_ctl restart -m {mode}: {held:?}");
        let fresh = crate::support::connect(&pg.url()).await;
        let slot = sluice.slot.clone();
        let recovery = catch_up(&fresh, &slot, &mut sluice, Duration::from_secs(120)).await;
        figures.push((mode, held, recovery));
        // Sluice reconnects by itself and streams what was written since.
        let before = workload.committed();
        sluice
            .wait_for(
                Duration::from_secs(60),
                "the workload to resume",
                async || workload.committed() > before + 200,
            )
            .await;
        let admin = crate::support::connect(&pg.url()).await;
        sluice.wait_streaming(&admin).await;
        admin
            .batch_execute("UPDATE docs SET n = n + 1")
            .await
            .unwrap();
    }
    let committed = workload.stop().await;
    eprintln!("{committed} transactions during the test");

    let admin = crate::support::connect(&pg.url()).await;
    let query = "SELECT * FROM accounts";
    sluice.wait_converged(&admin, &es, &index, query).await;
    let docs = "SELECT * FROM docs";
    sluice
        .wait_for(Duration::from_secs(60), "docs to match", async || {
            let d = es.sources(&docs_index).await;
            d.len() == 5 && d.values().all(|d| d["n"] == 2)
        })
        .await;
    assert_index_matches(&admin, &es, &docs_index, docs, &["id"]).await;
    let log = sluice.log_text();
    assert!(
        log.contains("reconnecting"),
        "the reader never reconnected:\n{log}"
    );
    sluice.stop_cleanly();
    for (mode, held, recovery) in figures {
        let fault = match mode {
            "fast" => "fast restart (pg_ctl restart -m fast) mid-stream",
            _ => "crash (pg_ctl stop -m immediate) and restart mid-stream",
        };
        report(
            "a_postgres_restart_and_crash_mid_stream_heal_without_a_manual_step",
            &FaultCase {
                area: "PostgreSQL",
                fault,
                held,
                recovery,
                outcome: "exact",
            },
        );
    }
}

/// A fast PostgreSQL shutdown while Sluice cannot apply (its Elasticsearch
/// is cut off). The walsender waits for its client to confirm everything it
/// sent, which Sluice cannot do; without the reader's shutdown detection the
/// stop never finished (measured: `pg_ctl stop -m fast -t 20` gave up).
/// Sluice must let go of the connection, and after the restart and the
/// outage nothing is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_can_stop_while_elasticsearch_is_down_and_nothing_is_lost() {
    stop_postgres_during_an_outage(50, "").await;
}

/// The same with a backlog that fills the pipeline: the reader stops reading
/// (so it never sees the stopping walsender's reply requests) and the
/// walsender blocks on a full socket. The stall probe must notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_can_stop_while_a_backlog_waits_for_elasticsearch() {
    stop_postgres_during_an_outage(60_000, "memory_bound_bytes = 4194304").await;
}

/// Stream `accounts`, cut Elasticsearch off, write `during` rows (plus an
/// update), stop PostgreSQL with `-m fast`, start it, restore Elasticsearch:
/// the stop must finish and the index must end equal to the table.
async fn stop_postgres_during_an_outage(during: i64, pipeline: &str) {
    let pg = std::sync::Arc::new(tokio::task::spawn_blocking(PrivatePg::start).await.unwrap());
    let indices = Indices::new();
    let index = indices.name("accounts");
    let admin = crate::support::connect(&pg.url()).await;
    admin.batch_execute(ACCOUNTS).await.unwrap();
    let proxy = Proxy::start(&crate::support::services().es_url).await;
    let setup = SluiceToml {
        es_url: proxy.url(),
        pipeline_extra: pipeline.to_string(),
        ..SluiceToml::for_private(&pg, &indices)
    };
    let mut sluice = Sluice::with_config(&setup, &[table_mapping("accounts", &index)]);
    sluice.start_streaming(&admin).await;
    admin
        .batch_execute("INSERT INTO accounts SELECT g, g, 'before' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let es = Es::new();
    sluice
        .wait_for(Duration::from_secs(60), "the first rows", async || {
            es.sources(&index).await.len() == 50
        })
        .await;
    proxy.cut();
    admin
        .batch_execute(&format!(
            "INSERT INTO accounts SELECT g, g, 'during' FROM generate_series(51, {}) g;
             UPDATE accounts SET note = 'changed' WHERE id <= 10;",
            50 + during
        ))
        .await
        .unwrap();
    drop(admin);
    let p = pg.clone();
    let stopped = tokio::task::spawn_blocking(move || p.pg_ctl_stop("fast", 120))
        .await
        .unwrap();
    assert!(
        stopped,
        "PostgreSQL could not stop while Sluice held changes it could not apply:\n{}",
        sluice.log_text()
    );
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.pg_ctl_start())
        .await
        .unwrap();
    proxy.restore().await;

    let admin = crate::support::connect(&pg.url()).await;
    let query = "SELECT * FROM accounts";
    sluice.wait_converged(&admin, &es, &index, query).await;
    let log = sluice.log_text();
    assert!(log.contains("PostgreSQL is shutting down"), "{log}");
    sluice.stop_cleanly();
}
