//! `sluice snapshot --reindex` of a nested mapping whose shape changes,
//! while `sluice run` streams random changes to every table of the
//! documents: the build index gets the new mapping's documents (the
//! snapshot's and the stream's rebuilds alike), and after the swap the
//! alias equals what SQL builds under the new mapping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use serde_json::Value;

use crate::run_nested::{orders_mapping, random_tx, shop_streaming, wait_shaped};
use crate::support::sluice::{Sluice, sluice_command};
use crate::support::{Es, TestDb};

/// The new mapping: `status` is called `state`, the customer object
/// keeps only its name.
fn orders_mapping_v2(index: &str) -> String {
    orders_mapping(index)
        .replacen(
            "\n\n[relations.customer]",
            "\nrename = { status = \"state\" }\n\n[relations.customer]",
            1,
        )
        .replacen("include = [\"id\", \"name\"]", "include = [\"name\"]", 1)
}

/// What the v2 mapping makes of a document the v1 SQL builds.
fn v2_shape(doc: &mut Value) {
    let o = doc.as_object_mut().expect("a document");
    let status = o.remove("status").expect("status");
    o.insert("state".into(), status);
    if let Some(c) = o.get_mut("customer").and_then(Value::as_object_mut) {
        c.remove("id");
    }
}

fn reindex(sluice: &Sluice, extra: &[&str]) -> (i32, String) {
    let config = sluice.config_path().display().to_string();
    let mut args = vec![
        "snapshot",
        "--reindex",
        "--stream-timeout",
        "120",
        "--config",
        &config,
    ];
    args.extend(extra);
    let ran = sluice_command(&args, &[("SLUICE_LOG", "sluice=info")]);
    (ran.code.unwrap_or(-1), ran.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reindexing_a_nested_mapping_under_load_builds_the_new_shape_from_snapshot_and_stream() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = shop_streaming(&db, &es).await;
    // The concrete index becomes an alias first (same mapping).
    let (code, stderr) = tokio::task::block_in_place(|| reindex(&sluice, &["--delete-old"]));
    assert_eq!(code, 0, "{stderr}\n{}", sluice.log_text());
    // Build index names carry a second-resolution timestamp.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Random changes to every table while the new shape is built.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (db.url(), stop.clone());
        tokio::spawn(async move {
            let pg = crate::support::connect(&url).await;
            let mut rng = rand::rngs::StdRng::seed_from_u64(12);
            let (mut next_id, mut n) = (5_000, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let tx = random_tx(&mut rng, &mut next_id);
                pg.batch_execute(&format!("BEGIN; {tx}; COMMIT;"))
                    .await
                    .expect("workload transaction");
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    sluice.write_mapping("orders.toml", &orders_mapping_v2(&index));
    let (code, stderr) = tokio::task::block_in_place(|| reindex(&sluice, &[]));
    assert_eq!(code, 0, "reindex failed:\n{stderr}\n{}", sluice.log_text());
    assert!(
        sluice
            .log_text()
            .contains("rebuilding nested documents for the reindex's build index too"),
        "the stream rebuilt documents under the new mapping:\n{}",
        sluice.log_text()
    );
    // The running process (loaded with v1) keeps writing v2 documents.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(
        written > 50,
        "the workload ran during the reindex: {written}"
    );
    wait_shaped(
        &db,
        &es,
        &mut sluice,
        &index,
        Duration::from_secs(120),
        v2_shape,
    )
    .await;
    let docs = es.sources(&index).await;
    assert!(
        docs.values()
            .all(|d| d.get("status").is_none() && d.get("state").is_some())
    );

    // A restart loads the edited mapping and goes on writing the alias.
    sluice.stop_cleanly();
    sluice.start_streaming(&db).await;
    db.sql("UPDATE customers SET name = 'after restart' WHERE id = 3; UPDATE orders SET status = 'late' WHERE id = 9;")
        .await;
    wait_shaped(
        &db,
        &es,
        &mut sluice,
        &index,
        Duration::from_secs(60),
        v2_shape,
    )
    .await;
}
