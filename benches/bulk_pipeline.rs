//! One huge transaction through the whole generic pipeline: a million
//! changes (generated lazily, as the WAL reader would deliver them) →
//! transform → Indexer → Elasticsearch → checkpoint. Reports the rate, the
//! CPU used and the peak RSS against the configured in-flight byte bound
//! (DESIGN invariant 7: the transaction streams through, never held whole).
//!
//! `cargo bench --bench bulk_pipeline -- [changes=1000000] [memory_mb=64]`
//! with SLUICE_TEST_ES_URL set (`./dev bench micro` runs it too). Asserts
//! only that everything was confirmed and indexed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value, json};
use sluice::Lsn;
use sluice::model::{BulkOp, OpAction, OpOrigin};
use sluice::model::{Change, ChangeKind, Column, Datum, Relation, ReplicaIdentity, SourceEvent};
use sluice::sink::{EsConfig, Indexer, IndexerConfig, build_client};
use sluice::stream::pipeline::{Pipeline, PipelineConfig};
use sluice::stream::transform_step::StepError;
use tokio::sync::{mpsc, watch};

fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
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

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let budget_mb: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let url = std::env::var("SLUICE_TEST_ES_URL").expect("SLUICE_TEST_ES_URL");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let es = build_client(&EsConfig {
            urls: vec![url],
            request_timeout: Duration::from_secs(120),
            ..EsConfig::default()
        })
        .unwrap();
        let index = format!("bench-pipeline-{}", std::process::id());
        let _ = es
            .indices()
            .create(elasticsearch::indices::IndicesCreateParts::Index(&index))
            .body(json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}}))
            .send()
            .await
            .unwrap()
            .error_for_status_code()
            .unwrap();

        let names = [
            "id", "name", "email", "city", "score", "active", "balance", "created_at", "tags",
            "note",
        ];
        let rel = Arc::new(Relation {
            id: 1,
            schema: "public".into(),
            name: "customers".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: names
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: *c == "id",
                })
                .collect(),
        });
        let idx: Arc<str> = Arc::from(index.as_str());
        let transform = move |c: &Change, out: &mut Vec<BulkOp>| -> Result<(), StepError> {
            let ChangeKind::Insert { new } = &c.kind else {
                return Ok(());
            };
            let mut m = Map::new();
            for (col, d) in c.relation.columns.iter().zip(new) {
                if let Datum::Value(v) = d {
                    m.insert(col.name.clone(), v.clone());
                }
            }
            let id = m["id"].to_string();
            out.push(BulkOp {
                action: OpAction::Index {
                    doc: serde_json::to_vec(&Value::Object(m)).expect("a JSON object serializes"),
                },
                index: idx.clone(),
                id: id.clone(),
                routing: None,
                pipeline: None,
                version: c.version.0,
                origin: OpOrigin {
                    table: Arc::from("public.customers"),
                    key: id,
                    lsn: c.version,
                },
            });
            Ok(())
        };

        let (events_tx, events_rx) = mpsc::channel(1024);
        let (confirmed_tx, mut confirmed) = watch::channel(Lsn(1));
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let indexer = Indexer::start(
            es.clone(),
            IndexerConfig::default().fit_memory(budget_mb << 20),
            ack_tx,
        );
        let rss0 = status_kb("VmRSS:");
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let cpu0 = cpu_time();
        let started = Instant::now();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(Pipeline::new(indexer, acks, PipelineConfig::default()).run(
            Lsn(1),
            events_rx,
            transform,
            confirmed_tx,
            async {
                let _ = stop_rx.await;
            },
        ));
        let version = Lsn(1000);
        let producer = tokio::spawn(async move {
            let now = Utc::now();
            let send = |e| events_tx.send(e);
            send(SourceEvent::Begin {
                final_lsn: version,
                commit_time: now,
                xid: 1,
            })
            .await
            .unwrap();
            for i in 0..n {
                let city = ["Lyon", "Oslo", "Porto", "Graz", "Turku"][(i % 5) as usize];
                let row = vec![
                    json!(i),
                    json!(format!("customer {i}")),
                    json!(format!("customer{i}@example.com")),
                    json!(city),
                    json!((i * 7919) % 1000),
                    json!(i % 3 != 0),
                    json!(i as f64 * 1.25),
                    json!("2026-11-23T12:34:56Z"),
                    json!(["a", "b"]),
                    json!("lorem ipsum dolor sit amet, consectetur adipiscing elit"),
                ]
                .into_iter()
                .map(Datum::Value)
                .collect();
                send(SourceEvent::Change(Change {
                    relation: rel.clone(),
                    kind: ChangeKind::Insert { new: row },
                    version,
                    commit_time: now,
                    xid: 0,
                }))
                .await
                .unwrap();
            }
            send(SourceEvent::Commit {
                commit_lsn: version,
                end_lsn: Lsn(1008),
            })
            .await
            .unwrap();
            events_tx
        });
        let mut max_rss = 0;
        loop {
            tokio::select! {
                r = confirmed.changed() => { r.unwrap(); if *confirmed.borrow() == Lsn(1008) { break } }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            max_rss = max_rss.max(status_kb("VmRSS:"));
        }
        let elapsed = started.elapsed();
        let cpu = cpu_time() - cpu0;
        let _keep_open = producer.await.unwrap();
        let _ = stop_tx.send(());
        let summary = run.await.unwrap().unwrap();
        assert_eq!(summary.confirmed, Lsn(1008));
        es.indices()
            .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[&index]))
            .send()
            .await
            .unwrap();
        let count: Value = es
            .count(elasticsearch::CountParts::Index(&[&index]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(count["count"].as_u64(), Some(n), "every change indexed");
        let _ = es
            .indices()
            .delete(elasticsearch::indices::IndicesDeleteParts::Index(&[&index]))
            .send()
            .await;
        println!("| one transaction of {n} changes through the pipeline | value |");
        println!("|---|---|");
        println!(
            "| rate (Begin to confirmed) | {:.0} changes/s ({:.1} s) |",
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        println!(
            "| Sluice CPU (transform + indexer, in-process event generator included) | {:.1} s ({:.1} µs/change) |",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "| memory bound given to IndexerConfig::fit_memory (queued ops + request bodies) | {budget_mb} MB |"
        );
        println!(
            "| peak RSS (VmHWM) / max sampled RSS / RSS before | {} MB / {} MB / {} MB |",
            status_kb("VmHWM:") / 1024,
            max_rss / 1024,
            rss0 / 1024
        );
    });
}
