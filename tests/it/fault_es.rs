//! The fault matrix, Elasticsearch (issue 18): `sluice run` (the real
//! process) under a concurrent random workload while Elasticsearch
//! throttles (429 storms), refuses writes with the disk watermark's block,
//! loses the target index, refuses a document too large for its HTTP limit,
//! and restarts. Each case ends with the index equal to the table, or with
//! Sluice stopped on purpose (exit code and message checked) and, after the
//! stated remedy, equal again; then it reports its row of the matrix.
//!
//! Faults that need a node configured otherwise (a tiny write queue, a
//! small `http.max_content_length`) or a node to kill run on a private
//! single-node cluster of their own; the others on the shared node, on the
//! test's own index only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::Lsn;

use crate::support::es_cluster::EsCluster;
use crate::support::faults::{FaultCase, catch_up, report};
use crate::support::slot::confirmed_flush;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, SluiceToml};
use crate::support::workload::{Workload, accounts_under_load};
use crate::support::{Es, TestDb};

const ACCOUNTS: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
     CREATE PUBLICATION sluice FOR TABLE accounts;";

const TABLE: &str = "SELECT * FROM accounts";

/// A catch-up longer than this fails the case.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(180);

/// One case's world: a test database with `accounts`, a streaming
/// `sluice run`, and the random workload writing to it.
struct Case {
    db: TestDb,
    /// Where Sluice writes (the shared node or a private one).
    es: Es,
    index: String,
    dead: String,
    sluice: Sluice,
    workload: Option<Workload>,
}

impl Case {
    /// Stream `accounts` into `es_url` (the shared node when `None`), seed
    /// 200 rows, start the workload and wait until documents arrive.
    async fn start(es_url: Option<String>, es_extra: &str, pipeline_extra: &str) -> Case {
        let db = TestDb::new().await;
        db.sql(ACCOUNTS).await;
        let index = db.index("accounts");
        let dead = db.index("dead-letters");
        let shared = crate::support::services().es_url.clone();
        let setup = SluiceToml {
            es_url: es_url.clone().unwrap_or(shared.clone()),
            es_extra: es_extra.into(),
            pipeline_extra: pipeline_extra.into(),
            extra: SNAPSHOT_NEVER.into(),
            ..SluiceToml::for_db(&db)
        };
        let es = Es::at(&es_url.unwrap_or(shared));
        let (sluice, workload) = accounts_under_load(&db, &es, &setup, &index).await;
        Case {
            db,
            es,
            index,
            dead,
            sluice,
            workload: Some(workload),
        }
    }

    fn committed(&self) -> u64 {
        self.workload.as_ref().map_or(0, Workload::committed)
    }

    /// The slot's catch-up from now (the heal): how long until it confirmed
    /// everything written so far.
    async fn recover(&mut self) -> Duration {
        let slot = self.sluice.slot.clone();
        catch_up(&self.db, &slot, &mut self.sluice, CATCH_UP_LIMIT).await
    }

    /// Stop the workload and compare the index whole with `query`'s rows.
    async fn converge(&mut self, query: &str) {
        if let Some(workload) = self.workload.take() {
            let committed = workload.stop().await;
            eprintln!("{committed} transactions during the test");
        }
        self.sluice
            .wait_converged(&self.db, &self.es, &self.index, query)
            .await;
    }

    /// [`Case::recover`], then [`Case::converge`] with `query`.
    async fn heal_and_converge(&mut self, query: &str) -> Duration {
        let recovery = self.recover().await;
        self.converge(query).await;
        recovery
    }

    /// The dead letters stored so far (none when the index does not exist).
    async fn dead_letters(&self) -> Vec<Value> {
        self.es.sources(&self.dead).await.into_values().collect()
    }

    async fn assert_no_dead_letters(&self) {
        let dead = self.dead_letters().await;
        assert!(dead.is_empty(), "nothing was dead-lettered: {dead:#?}");
    }

    /// Watch the slot for `hold` while Sluice must stay up; returns the
    /// highest position the slot confirmed meanwhile.
    async fn hold_for(&mut self, hold: Duration) -> Lsn {
        let started = Instant::now();
        let mut max_confirmed = Lsn::ZERO;
        while started.elapsed() < hold {
            if let Some(code) = self.sluice.exited() {
                panic!(
                    "sluice exited ({code}) during the fault:\n{}",
                    self.sluice.log_text()
                );
            }
            max_confirmed = max_confirmed.max(confirmed_flush(&self.db, &self.sluice.slot).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        max_confirmed
    }
}

/// Another client's bulk load on the same node: `writers` loops of
/// 200-document bulks into `index` until `stop`; counts the items the node
/// refused with 429.
fn noisy_neighbour(
    url: &str,
    index: &str,
    writers: usize,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (es, index) = (Es::at(url), index.to_string());
            let (stop, rejected) = (stop.clone(), rejected.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut lines: Vec<String> = Vec::new();
                    for _ in 0..200 {
                        n += 1;
                        lines.push(
                            json!({"index": {"_index": index, "_id": format!("{w}-{n}")}})
                                .to_string(),
                        );
                        lines.push(json!({"n": n, "pad": "x".repeat(200)}).to_string());
                    }
                    let Ok(r) = es
                        .client
                        .bulk(elasticsearch::BulkParts::None)
                        .body(lines)
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let v: Value = r.json().await.unwrap_or_default();
                    let refused = v["items"].as_array().map_or(0, |items| {
                        items.iter().filter(|i| i["index"]["status"] == 429).count()
                    });
                    rejected.fetch_add(refused as u64, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_es_429_storm_from_a_tiny_write_queue_converges_exactly() {
    let node = EsCluster::start_with(
        1,
        "thread_pool.write.size: 1\nthread_pool.write.queue_size: 1",
    )
    .await;
    let url = node.urls()[0].clone();
    let mut case = Case::start(Some(url.clone()), "", "concurrency = 4").await;
    let retries_before = case.sluice.metric("sluice_retries_total");

    // The storm: a neighbour's bulk load keeps the one-slot queue full.
    let storm = Duration::from_secs(25);
    let (stop, rejected) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let noise = noisy_neighbour(&url, "noise", 6, stop.clone(), rejected.clone());
    let committed_before = case.committed();
    let max_confirmed = case.hold_for(storm).await;
    stop.store(true, Ordering::Relaxed);
    for n in noise {
        n.await.unwrap();
    }
    let retries = case.sluice.metric("sluice_retries_total") - retries_before;
    eprintln!(
        "storm: {} items of the neighbour refused with 429, {retries} retries by Sluice, \
         slot at {max_confirmed}",
        rejected.load(Ordering::Relaxed)
    );
    assert!(
        rejected.load(Ordering::Relaxed) > 0,
        "the node never answered 429: no storm"
    );
    assert!(retries > 0.0, "Sluice met no 429 during the storm");
    assert!(
        case.committed() > committed_before + 100,
        "the workload kept writing during the storm"
    );

    let recovery = case.heal_and_converge(TABLE).await;
    case.assert_no_dead_letters().await;
    case.sluice.stop_cleanly();
    report(
        "fault_es_429_storm_from_a_tiny_write_queue_converges_exactly",
        &FaultCase {
            area: "Elasticsearch",
            fault: "429 storm (write queue 1, a neighbour's bulk load)",
            held: storm,
            recovery,
            outcome: "exact",
        },
    );
}

/// Set or lift `index.blocks.read_only_allow_delete` (the disk flood-stage
/// watermark's block) on `index`.
async fn read_only_allow_delete(es: &Es, index: &str, blocked: bool) {
    let value = if blocked { json!(true) } else { Value::Null };
    es.client
        .indices()
        .put_settings(elasticsearch::indices::IndicesPutSettingsParts::Index(&[
            index,
        ]))
        .body(json!({"index.blocks.read_only_allow_delete": value}))
        .send()
        .await
        .unwrap()
        .error_for_status_code()
        .unwrap_or_else(|e| panic!("read_only_allow_delete on {index}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_es_read_only_allow_delete_block_held_a_minute_holds_changes_then_exact() {
    let mut case = Case::start(None, "", "").await;
    read_only_allow_delete(&case.es, &case.index, true).await;
    // The first change after the block: the slot must not pass it while
    // it cannot be written.
    case.db
        .sql("INSERT INTO accounts VALUES (-1, 0, 'marker')")
        .await;
    let committed_before = case.committed();
    let held = Duration::from_secs(60);
    let max_confirmed = case.hold_for(held).await;
    assert!(
        case.committed() > committed_before + 100,
        "the workload kept writing during the block"
    );
    assert_eq!(
        case.es.doc_version(&case.index, "-1").await,
        None,
        "written through the block?"
    );
    case.assert_no_dead_letters().await;
    read_only_allow_delete(&case.es, &case.index, false).await;
    let recovery = case.recover().await;

    let version = crate::support::wait_until(
        Duration::from_secs(120),
        "the marker to be applied after the block",
        || case.es.doc_version(&case.index, "-1"),
    )
    .await;
    assert!(
        max_confirmed.0 <= version,
        "the slot confirmed {max_confirmed} during the block, past the unapplied marker \
         committed at {}",
        Lsn(version)
    );
    case.converge(TABLE).await;
    case.assert_no_dead_letters().await;
    case.sluice.stop_cleanly();
    report(
        "fault_es_read_only_allow_delete_block_held_a_minute_holds_changes_then_exact",
        &FaultCase {
            area: "Elasticsearch",
            fault: "index.blocks.read_only_allow_delete held 60 s",
            held,
            recovery,
            outcome: "exact",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_es_target_index_deleted_mid_stream_stops_and_the_snapshot_rebuilds_it_exactly() {
    let mut case = Case::start(None, "", "").await;
    case.es.delete_indices(&case.index).await.unwrap();
    let deleted = Instant::now();

    // Stopped on purpose, saying what happened and what to do.
    let code = case.sluice.wait_for_exit(Duration::from_secs(60)).await;
    let log = case.sluice.log_text();
    let lost = format!("target index `{}` was deleted", case.index);
    assert_eq!(code, 2, "exit code for a lost index:\n{log}");
    assert!(log.contains(&lost), "the message names the index:\n{log}");
    assert!(
        log.contains("sluice snapshot --table public.accounts"),
        "the message gives the command:\n{log}"
    );
    // A restart (an orchestrator's) must not stream on into the new index.
    case.sluice.start();
    let code = case.sluice.wait_for_exit(Duration::from_secs(60)).await;
    let log = case.sluice.log_text();
    assert_eq!(code, 2, "a restart refuses too:\n{log}");
    assert!(
        log.matches(&lost).count() >= 2,
        "the restart says why:\n{log}"
    );

    // The remedy the message gives.
    let ran = case
        .sluice
        .command(&["snapshot", "--table", "public.accounts"]);
    assert_eq!(
        ran.code,
        Some(0),
        "the snapshot rebuilds it: {}",
        ran.text()
    );
    let held = deleted.elapsed();
    let settings = case.es.settings(&case.index).await;
    assert!(
        settings[&case.index]["settings"]["index"]["gc_deletes"].is_string(),
        "rebuilt as configured (Sluice's gc_deletes), not auto-created: {settings}"
    );
    case.sluice.start_streaming(&case.db).await;
    let recovery = case.heal_and_converge(TABLE).await;
    case.assert_no_dead_letters().await;
    case.sluice.stop_cleanly();
    report(
        "fault_es_target_index_deleted_mid_stream_stops_and_the_snapshot_rebuilds_it_exactly",
        &FaultCase {
            area: "Elasticsearch",
            fault: "target index deleted by hand mid-stream",
            held,
            recovery,
            outcome: "stopped: exit 2, names the index and `sluice snapshot --table`; exact after it",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_es_document_over_http_max_content_length_is_dead_lettered_and_the_rest_exact() {
    let node = EsCluster::start_with(1, "http.max_content_length: 1mb").await;
    let mut case = Case::start(Some(node.urls()[0].clone()), "", "").await;
    // ~2 MB of text among normal traffic (the workload never touches id -1).
    let inserted = Instant::now();
    case.db
        .sql("INSERT INTO accounts VALUES (-1, 0, repeat('0123456789', 200000))")
        .await;
    let dead = crate::support::wait_until(
        Duration::from_secs(120),
        "the oversized document's dead letter",
        || async {
            case.dead_letters()
                .await
                .into_iter()
                .find(|d| d["id"] == "-1")
        },
    )
    .await;
    let held = inserted.elapsed();
    assert_eq!(dead["index"], case.index.as_str(), "{dead:#}");
    assert_eq!(dead["table"], "public.accounts");
    let reason = dead["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        dead["status"] == 413 && !reason.is_empty(),
        "the dead letter says why: {} {reason}",
        dead["status"]
    );
    assert_eq!(case.sluice.exited(), None, "the stream keeps going");
    // The record itself had to fit the limit: its copy of the document was
    // cut (to at most 1 MiB when stored, less when the cluster refused that).
    assert_eq!(dead["doc_truncated"], true, "{}", dead["doc_truncated"]);
    let stored = dead["doc"].as_str().map_or(0, str::len);
    eprintln!(
        "dead letter stores {stored} bytes of the document; shrunk for the limit: {}",
        case.sluice
            .log_text()
            .contains("storing less of their documents")
    );
    assert!(stored < 1 << 20, "{stored} bytes stored");

    let recovery = case
        .heal_and_converge("SELECT * FROM accounts WHERE id <> -1")
        .await;
    let others: Vec<Value> = case
        .dead_letters()
        .await
        .into_iter()
        .filter(|d| d["id"] != "-1")
        .collect();
    assert!(others.is_empty(), "only the oversized one: {others:#?}");
    case.sluice.stop_cleanly();
    report(
        "fault_es_document_over_http_max_content_length_is_dead_lettered_and_the_rest_exact",
        &FaultCase {
            area: "Elasticsearch",
            fault: "a 2 MB document over http.max_content_length 1mb",
            held,
            recovery,
            outcome: "exact; the oversized document dead-lettered (HTTP 413)",
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_es_node_killed_and_restarted_on_its_data_mid_stream_converges_exactly() {
    let node = EsCluster::start(1).await;
    let mut case = Case::start(
        Some(node.urls()[0].clone()),
        "request_timeout_ms = 3000",
        "",
    )
    .await;
    node.kill(1);
    let killed = Instant::now();
    let committed_before = case.committed();
    let max_confirmed = case.hold_for(Duration::from_secs(5)).await;
    node.start_node(1);
    node.wait_for_nodes(1).await;
    let held = killed.elapsed();
    eprintln!("node down {held:?}; slot at {max_confirmed} meanwhile");
    assert!(
        case.committed() > committed_before + 50,
        "the workload kept writing while the node was down"
    );
    let recovery = case.heal_and_converge(TABLE).await;
    case.assert_no_dead_letters().await;
    case.sluice.stop_cleanly();
    report(
        "fault_es_node_killed_and_restarted_on_its_data_mid_stream_converges_exactly",
        &FaultCase {
            area: "Elasticsearch",
            fault: "the node SIGKILLed and restarted on its data",
            held,
            recovery,
            outcome: "exact",
        },
    );
}
