//! A category renamed under 100,000 order documents: the stream finds every
//! root through keyset pages and rebuilds them in bounded memory. Prints
//! the nested snapshot's rate, the rebuild's (roots per second) and peak
//! RSS. Ignored by default (minutes on a small machine):
//! `./dev test nested_large -- --ignored --nocapture`; roots from
//! `SLUICE_NESTED_ROOTS` (default 100,000).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::run_nested::{SHOP_SCHEMA, orders_mapping};
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice};
use crate::support::{Es, TestDb};

/// Peak resident set of a process so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn renamed_count(es: &Es, index: &str) -> u64 {
    es.refresh(index).await;
    let r = es
        .client
        .count(elasticsearch::CountParts::Index(&[index]))
        .body(
            json!({"query": {"match_phrase": {"items.product.category.name": "category renamed"}}}),
        )
        .send()
        .await
        .unwrap();
    r.json::<serde_json::Value>().await.unwrap()["count"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100,000 documents: run with --ignored (see the module docs)"]
async fn a_category_rename_under_100k_orders_rebuilds_them_all_in_bounded_memory() {
    let roots: u64 = std::env::var("SLUICE_NESTED_ROOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let db = TestDb::new().await;
    let es = Es::new();
    db.sql(SHOP_SCHEMA).await;
    // Every new order holds one item of products 1..10, all in category 1.
    db.sql(&format!(
        "UPDATE products SET category_id = 1 WHERE id <= 10;
         INSERT INTO orders SELECT g, g % 30 + 1, 'placed' FROM generate_series(1001, 1000 + {roots}) g;
         INSERT INTO order_items SELECT g, g, g % 10 + 1, 1 FROM generate_series(1001, 1000 + {roots}) g;
         ANALYZE;
         CREATE PUBLICATION sluice FOR TABLE orders, customers, order_items, products, categories, tags, product_tags;"
    ))
    .await;
    let index = db.index("orders");
    let mut sluice = Sluice::new(
        &db,
        SNAPSHOT_NEVER,
        &[("orders.toml", orders_mapping(&index))],
    );
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["snapshot", "--config"])
        .arg(sluice.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap_secs = start.elapsed().as_secs_f64();
    let total: u64 = db.query_value::<i64>("SELECT count(*) FROM orders").await as u64;
    es.refresh(&index).await;
    assert_eq!(es.count(&index).await, total);

    sluice.start_streaming(&db).await;
    let pid = sluice.pid().unwrap();
    let affected: u64 = db
        .query_value::<i64>(
            "SELECT count(DISTINCT i.order_id) FROM order_items i JOIN products p ON p.id = i.product_id WHERE p.category_id = 1",
        )
        .await as u64;
    assert!(affected >= roots, "{affected}");
    let start = Instant::now();
    db.sql("UPDATE categories SET name = 'category renamed' WHERE id = 1")
        .await;
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(pid));
        if renamed_count(&es, &index).await == affected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "not converged:\n{}",
            sluice.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_kib(pid));
    eprintln!(
        "nested_large: snapshot of {total} order documents in {snap_secs:.1} s ({:.0} documents/s); \
         one category rename rebuilt {affected} documents in {secs:.1} s ({:.0} documents/s); peak RSS {} MiB",
        total as f64 / snap_secs,
        affected as f64 / secs,
        peak / 1024
    );
    assert!(
        peak < 256 * 1024,
        "over the default memory bound: {peak} KiB"
    );
}
