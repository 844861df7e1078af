//! Bulk indexer throughput against the raw `_bulk` ceiling, in one run on the
//! same Elasticsearch.
//!
//! The ceiling: the same NDJSON (identical bytes: same action lines with
//! external versions, same documents), pre-rendered into request bodies
//! before the clock starts, sent by a minimal loader at concurrency 1, 2, 4
//! and 8; the best rate counts. Sluice: the same documents as `BulkOp`s
//! submitted one by one to the `Indexer` (batching, partitioning, rendering,
//! per-item classification and acks included), timed until the last ack.
//! Rounds alternate to even out noise from other users of the server.
//!
//! Run with `./dev bench micro` (or `cargo bench --bench bulk -- [docs]
//! [rounds]` with SLUICE_TEST_ES_URL set). Prints a table; asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::json;
use sluice::Lsn;
use sluice::model::{BulkOp, OpAction, OpOrigin};
use sluice::sink::{EsConfig, Indexer, IndexerConfig, build_client, bulk};
use tokio::sync::mpsc;

const BATCH: usize = 5_000;

fn docs(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let city = ["Lyon", "Oslo", "Porto", "Graz", "Turku"][i % 5];
            serde_json::to_vec(&json!({
                "id": i,
                "name": format!("customer {i}"),
                "email": format!("customer{i}@example.com"),
                "city": city,
                "score": (i * 7919) % 1000,
                "active": i % 3 != 0,
                "balance": (i as f64) * 1.25,
                "created_at": "2026-11-23T12:34:56Z",
                "tags": ["a", "b"],
                "note": "lorem ipsum dolor sit amet, consectetur adipiscing elit",
            }))
            .unwrap()
        })
        .collect()
}

fn op(index: &Arc<str>, table: &Arc<str>, i: usize, doc: Vec<u8>) -> BulkOp {
    BulkOp {
        action: OpAction::Index { doc },
        index: index.clone(),
        id: i.to_string(),
        routing: None,
        pipeline: None,
        version: 1000,
        origin: OpOrigin {
            table: table.clone(),
            key: String::new(),
            lsn: Lsn(1000),
        },
    }
}

/// (utime + stime) of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // CLK_TCK is 100 on Linux
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reset the peak-RSS mark (VmHWM) so the next phase's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn fresh_index(es: &Elasticsearch, name: &str) {
    let _ = es
        .indices()
        .delete(elasticsearch::indices::IndicesDeleteParts::Index(&[name]))
        .send()
        .await;
    es.indices()
        .create(elasticsearch::indices::IndicesCreateParts::Index(name))
        .body(
            json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0,
                                  "refresh_interval": "1s"}}),
        )
        .send()
        .await
        .unwrap()
        .error_for_status_code()
        .unwrap();
}

async fn raw(es: &Elasticsearch, index: &str, docs: &[Vec<u8>], concurrency: usize) -> f64 {
    fresh_index(es, index).await;
    let index: Arc<str> = Arc::from(index);
    let table: Arc<str> = Arc::from("bench.t");
    let bodies: Vec<Bytes> = docs
        .chunks(BATCH)
        .enumerate()
        .map(|(c, chunk)| {
            let ops: Vec<BulkOp> = chunk
                .iter()
                .enumerate()
                .map(|(i, d)| op(&index, &table, c * BATCH + i, d.clone()))
                .collect();
            bulk::render(ops.iter(), chunk.len() * 400)
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (es, bodies, next) = (es.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { return };
                let mut h = HeaderMap::new();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                let resp = es
                    .send(
                        Method::Post,
                        "/_bulk",
                        h,
                        Some(&[("filter_path", "errors")]),
                        Some(body.clone()),
                        None,
                    )
                    .await
                    .expect("bulk");
                let v: serde_json::Value = resp.json().await.expect("bulk response");
                assert_eq!(v["errors"], false, "raw loader saw item errors");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    docs.len() as f64 / started.elapsed().as_secs_f64()
}

struct SluiceRun {
    rate: f64,
    cpu: Duration,
    peak_rss_kb: u64,
}

async fn sluice(es: &Elasticsearch, index: &str, docs: &[Vec<u8>]) -> SluiceRun {
    fresh_index(es, index).await;
    let mine = docs.to_vec();
    let index: Arc<str> = Arc::from(index);
    let table: Arc<str> = Arc::from("bench.t");
    reset_peak_rss();
    let cpu0 = cpu_time();
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let indexer = Indexer::start(es.clone(), IndexerConfig::default(), tx);
    let total = mine.len() as u64;
    let counter = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Some(batch) = rx.recv().await {
            acked += batch.iter().map(|a| a.count).sum::<u64>();
        }
        acked
    });
    for (i, d) in mine.into_iter().enumerate() {
        indexer
            .submit(op(&index, &table, i, d), i as u64 / 1000)
            .await
            .unwrap();
    }
    assert!(indexer.finish(Duration::from_secs(600)).await);
    let acked = counter.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(acked, total, "every op acknowledged");
    SluiceRun {
        rate: total as f64 / elapsed.as_secs_f64(),
        cpu: cpu_time() - cpu0,
        peak_rss_kb: status_kb("VmHWM:"),
    }
}

async fn count(es: &Elasticsearch, index: &str) -> u64 {
    es.indices()
        .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[index]))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = es
        .count(elasticsearch::CountParts::Index(&[index]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["count"].as_u64().unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let url =
        std::env::var("SLUICE_TEST_ES_URL").expect("SLUICE_TEST_ES_URL (run ./dev bench micro)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let es = build_client(&EsConfig {
            urls: vec![url],
            request_timeout: Duration::from_secs(120),
            ..EsConfig::default()
        })
        .unwrap();
        let docs = docs(n);
        let bytes: usize = docs.iter().map(|d| d.len()).sum();
        let base_rss = status_kb("VmRSS:");
        println!(
            "bench-bulk: {n} docs of 10 fields ({:.1} MB of JSON), batches of {BATCH}, {rounds} rounds",
            bytes as f64 / 1e6
        );
        println!("{:<8} {:<26} {:>12}", "round", "run", "docs/s");
        // Round 1 finds the loader's best concurrency; every round then
        // pairs the ceiling (best concurrency and its neighbour) with a
        // Sluice run right after it, so each ratio compares like with like
        // on a server that other work shares.
        let idx = format!("bench-bulk-{}", std::process::id());
        let mut best_c = 1;
        let mut best = 0f64;
        let mut ratios = Vec::new();
        let mut runs = Vec::new();
        for r in 1..=rounds {
            let cs: Vec<usize> = if r == 1 {
                vec![1, 2, 4, 8, 16]
            } else {
                vec![best_c, (best_c * 2).min(16)]
            };
            let mut round_best = 0f64;
            for c in cs {
                let rate = raw(&es, &idx, &docs, c).await;
                assert_eq!(count(&es, &idx).await, n as u64);
                println!("{r:<8} {:<26} {rate:>12.0}", format!("raw _bulk, concurrency {c}"));
                if rate > round_best {
                    round_best = rate;
                }
                if r == 1 && rate > best {
                    (best, best_c) = (rate, c);
                }
            }
            let s = sluice(&es, &idx, &docs).await;
            assert_eq!(count(&es, &idx).await, n as u64);
            println!(
                "{r:<8} {:<26} {:>12.0}   ratio {:.2}, cpu {:.2}s, peak RSS {} MB",
                "sluice Indexer (defaults)",
                s.rate,
                s.rate / round_best,
                s.cpu.as_secs_f64(),
                s.peak_rss_kb / 1024
            );
            ratios.push(s.rate / round_best);
            runs.push((round_best, s));
        }
        let _ = es
            .indices()
            .delete(elasticsearch::indices::IndicesDeleteParts::Index(&[&idx]))
            .send()
            .await;
        let mut sorted = ratios.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = sorted[sorted.len() / 2];
        let (ceiling, s) = &runs[ratios.iter().position(|r| *r == median).unwrap()];
        println!();
        println!("| measure (median round of {rounds}) | value |");
        println!("|---|---|");
        println!("| raw `_bulk` ceiling (loader's best concurrency, c={best_c} or 2c) | {ceiling:.0} docs/s |");
        println!("| Sluice Indexer, default config | {:.0} docs/s |", s.rate);
        println!(
            "| ratio (median; all rounds: {}) | {median:.2}x |",
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
        );
        println!(
            "| Sluice CPU for {n} docs | {:.2} s ({:.1} µs/doc) |",
            s.cpu.as_secs_f64(),
            s.cpu.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "| peak RSS of the process during the Sluice run (incl. {:.0} MB of test docs held twice) | {} MB (at start: {} MB) |",
            bytes as f64 / 1e6,
            s.peak_rss_kb / 1024,
            base_rss / 1024
        );
    });
}
