//! Re-reads of rows with unchanged TOAST values (DESIGN invariant 6) see
//! the transaction that caused them, never an older state.
//!
//! PostgreSQL flushes a commit record before it makes the transaction
//! visible to other sessions, and the walsender may send the transaction in
//! between. A synchronous standby that never answers holds that gap open on
//! purpose: the committing session waits for it after the flush, before the
//! transaction becomes visible, while the logical stream already carries it.

use std::time::Duration;

use crate::support::es::Indices;
use crate::support::private_pg::PrivatePg;
use crate::support::sluice::{Sluice, SluiceToml, table_mapping};
use crate::support::{Es, connect};

/// An incompressible text over 8 kB: stored out of line (TOAST), so an
/// update of another column sends it as "unchanged".
fn big_text(seed: &str) -> String {
    format!("(SELECT string_agg(md5('{seed}' || i::text), '') FROM generate_series(1, 400) i)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_is_re_read_only_once_its_streamed_transaction_is_visible() {
    // Commits wait for a standby named `nobody` only in sessions that ask
    // for it (`synchronous_commit = on`); everything else commits locally.
    let pg = tokio::task::spawn_blocking(|| {
        PrivatePg::start_with("synchronous_standby_names = 'nobody'\nsynchronous_commit = local")
    })
    .await
    .unwrap();
    let indices = Indices::new();
    let admin = connect(&pg.url()).await;
    admin
        .batch_execute(
            "CREATE TABLE docs (id bigint PRIMARY KEY, body text, n int);
             CREATE PUBLICATION sluice FOR TABLE docs;",
        )
        .await
        .unwrap();
    let index = indices.name("docs");
    let mut sluice = Sluice::with_config(
        &SluiceToml::for_private(&pg, &indices),
        &[table_mapping("docs", &index)],
    );
    sluice.start_streaming(&admin).await;
    let es = Es::new();
    admin
        .batch_execute(&format!(
            "INSERT INTO docs VALUES (1, {}, 0)",
            big_text("old")
        ))
        .await
        .unwrap();
    sluice
        .wait_converged(&admin, &es, &index, "SELECT * FROM docs")
        .await;

    // One transaction: row 1 gets a new body and then another column (so
    // its second update carries the body as unchanged); row 2 is inserted
    // and updated (its update's body is unchanged too, and the row does
    // not exist before the transaction). Its commit waits for `nobody`.
    let writer = connect(&pg.url()).await;
    let addr = sluice.http_addr();
    let received_before = received(&addr);
    let commit = tokio::spawn(async move {
        writer
            .batch_execute(&format!(
                "SET synchronous_commit = on;
                 BEGIN;
                 UPDATE docs SET body = {} WHERE id = 1;
                 UPDATE docs SET n = 1 WHERE id = 1;
                 INSERT INTO docs VALUES (2, {}, 0);
                 UPDATE docs SET n = 1 WHERE id = 2;
                 COMMIT;",
                big_text("new"),
                big_text("two")
            ))
            .await
    });
    // The stream delivers the transaction while nobody else can see it.
    sluice
        .wait_for(
            Duration::from_secs(60),
            "the held transaction to reach Sluice",
            async || received(&addr) >= received_before + 4.0,
        )
        .await;
    let hidden: i64 = admin
        .query_one("SELECT count(*) FROM docs WHERE n = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hidden, 0, "the transaction must still be invisible here");
    // Let Sluice try its re-reads in the gap for a while, then end the
    // wait: the transaction becomes visible.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = ''",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    commit.await.unwrap().unwrap();
    sluice
        .wait_converged(&admin, &es, &index, "SELECT * FROM docs")
        .await;
    sluice.stop_cleanly();
}

/// Changes Sluice has received so far, all tables and kinds together.
fn received(addr: &str) -> f64 {
    let (_, text) = crate::support::sluice::http_get(addr, "/metrics");
    crate::support::sluice::metric_sum(&text, "sluice_changes_received_total", &[])
}
