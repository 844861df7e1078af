//! Snapshots against the real servers: exact under a concurrent workload,
//! resumable after being killed, every table shape, delete tombstones, the
//! acknowledgement rule, and the reindex alias swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice::model::PublishedTable;
use sluice::model::change::Change;
use sluice::snapshot::backfill::{BackfillRequest, BackfillTarget, backfill};
use sluice::snapshot::progress::Progress;
use sluice::snapshot::run::SnapshotDeps;
use sluice::snapshot::seams::BoxFuture;
use sluice::snapshot::{
    AckFuture, ChannelSink, SinkError, SnapshotJob, SnapshotOptions, SnapshotSink, StateStore,
    TableJob, reindex, run_snapshot, tombstones,
};
use tokio::sync::Notify;

use crate::support::compare::assert_index_matches;
use crate::support::slot::wal_lsn;
use crate::support::snapshot::{
    Exported, TestSink, Write, bulk_write, connector, stream_writer, test_converter, test_exporter,
    workload,
};
use crate::support::{Es, TestDb, wait_until};

fn rows_for_big_tests() -> i64 {
    std::env::var("SLUICE_TEST_SNAPSHOT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn deps(db: &TestDb, sink: Arc<dyn SnapshotSink>, log: Arc<Mutex<Vec<Exported>>>) -> SnapshotDeps {
    SnapshotDeps {
        documents: Vec::new(),
        connector: connector(db.repl_url()),
        exporter: test_exporter(db.url(), log),
        converter: test_converter(),
        sink,
        state: StateStore::new(Es::new().client, db.index("state")),
        progress: Arc::new(Progress::new(false)),
    }
}

fn job(tables: &[(&str, &str)], readers: usize, chunk_rows: u64) -> SnapshotJob {
    SnapshotJob {
        tables: tables
            .iter()
            .map(|(t, target)| TableJob {
                spec: PublishedTable::parse(t),
                target: target.to_string(),
            })
            .collect(),
        options: SnapshotOptions {
            readers,
            chunk_rows,
            batch_rows: 1_000,
        },
    }
}

async fn items_table(db: &TestDb, rows: i64) {
    db.sql(&format!(
        "CREATE TABLE items (id int8 PRIMARY KEY, name text, qty int4, price numeric(10,2), flag bool);
         INSERT INTO items SELECT i, 'item ' || i, (i % 97)::int4, (i % 1000) / 7.0, i % 2 = 0
           FROM generate_series(1, {rows}) i;
         ANALYZE items;"
    ))
    .await;
}

/// The workload and the emulated stream around a snapshot run.
struct Traffic {
    stop: Arc<AtomicBool>,
    workload: tokio::task::JoinHandle<usize>,
    stream: tokio::task::JoinHandle<usize>,
}

impl Traffic {
    fn start(db: &TestDb, index: &str, rows: i64, log: Arc<Mutex<Vec<Exported>>>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let workload = tokio::spawn(workload(
            db.url(),
            Arc::new(AtomicI64::new(rows)),
            stop.clone(),
            tx,
        ));
        let stream = tokio::spawn(stream_writer(db.url(), index.to_string(), log, rx));
        Traffic {
            stop,
            workload,
            stream,
        }
    }

    /// Stop the workload and wait until the stream has written all of it.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let txs = self.workload.await.unwrap();
        let streamed = self.stream.await.unwrap();
        (txs, streamed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_taken_under_a_concurrent_workload_equals_the_table() {
    let db = TestDb::new().await;
    let rows = rows_for_big_tests();
    items_table(&db, rows).await;
    let index = db.index("items");
    let log = Arc::new(Mutex::new(Vec::new()));
    let traffic = Traffic::start(&db, &index, rows, log.clone());

    let summary = run_snapshot(
        &deps(&db, TestSink::new(&index), log.clone()),
        &job(&[("public.items", &index)], 4, 10_000),
    )
    .await
    .expect("snapshot");
    let (txs, streamed) = traffic.finish().await;

    assert!(summary.tables[0].chunks >= 5, "{summary:?}");
    assert!(summary.tables[0].rows >= rows as u64 / 2, "{summary:?}");
    assert!(
        streamed > 0 && txs > streamed / 2,
        "the workload ran alongside: {txs} transactions, {streamed} after the snapshot"
    );
    assert_index_matches(&db, &Es::new(), &index, "SELECT * FROM items", &["id"]).await;
}

/// Counts rows handed to the inner sink and wakes the test once a threshold
/// is passed, so it can kill the run at a random point of its progress.
struct Tripwire {
    inner: Arc<TestSink>,
    rows: AtomicU64,
    at: AtomicU64,
    hit: Notify,
}

impl SnapshotSink for Tripwire {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        let n = changes.len() as u64;
        Box::pin(async move {
            // Paced, so the test's kills land mid-run however fast the
            // build is (an attempt finishing first would leave the last
            // attempt nothing to resume).
            tokio::time::sleep(Duration::from_millis(15)).await;
            let ack = self.inner.write(changes).await?;
            let total = self.rows.fetch_add(n, Ordering::SeqCst) + n;
            let at = self.at.load(Ordering::SeqCst);
            // Fire once per kill point, or a stored wake-up would kill the
            // next attempt before it starts.
            if total >= at
                && self
                    .at
                    .compare_exchange(at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                self.hit.notify_one();
            }
            Ok(ack)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_killed_at_random_points_resumes_under_new_snapshots_to_an_exact_index() {
    let db = TestDb::new().await;
    let rows = rows_for_big_tests() / 2;
    items_table(&db, rows).await;
    let index = db.index("items");
    let log = Arc::new(Mutex::new(Vec::new()));
    let traffic = Traffic::start(&db, &index, rows, log.clone());
    let trip = Arc::new(Tripwire {
        inner: TestSink::new(&index),
        rows: AtomicU64::new(0),
        at: AtomicU64::new(u64::MAX),
        hit: Notify::new(),
    });
    let deps = deps(&db, trip.clone(), log.clone());
    // Small chunks, so four kills always leave work for the last attempt.
    let job = job(&[("public.items", &index)], 3, 1_000);

    let state = StateStore::new(Es::new().client, db.index("state"));
    let recorded = || async {
        match state.load_table("public.items", &index).await.unwrap() {
            Some(st) => state.done_chunks(&st.run_id).await.unwrap().0.len(),
            None => 0,
        }
    };
    for kill in 0..4 {
        let mut run = {
            let (deps, job) = (deps.clone(), job.clone());
            tokio::spawn(async move { run_snapshot(&deps, &job).await })
        };
        if kill % 2 == 0 {
            // At a random row, wherever the readers are.
            let seen = trip.rows.load(Ordering::SeqCst);
            let at = seen + 1 + rand::random::<u64>() % (rows as u64 / 12);
            trip.at.store(at, Ordering::SeqCst);
            tokio::select! {
                _ = trip.hit.notified() => run.abort(),
                done = &mut run => panic!("attempt {kill} finished before its kill point: {done:?}"),
            }
        } else {
            // Right after a chunk was recorded, while others are in flight;
            // the tripwire is armed too, so a loaded machine whose readers
            // outrun the polling still gets its kill before the end. Counted
            // only once this attempt exported its snapshot: a chunk record
            // of the killed attempt may become searchable later and must
            // not kill this one before it starts.
            tokio::select! {
                _ = wait_until(Duration::from_secs(60), "the attempt to export its snapshot", || async {
                    (log.lock().unwrap().len() > kill).then_some(())
                }) => {}
                done = &mut run => panic!("attempt {kill} ended before exporting: {done:?}"),
            }
            let before = recorded().await;
            let seen = trip.rows.load(Ordering::SeqCst);
            trip.at.store(seen + 1 + rows as u64 / 12, Ordering::SeqCst);
            tokio::select! {
                _ = wait_until(Duration::from_secs(60), "a chunk to be recorded", || async {
                    (recorded().await > before).then_some(())
                }) => run.abort(),
                _ = trip.hit.notified() => run.abort(),
                done = &mut run => panic!("attempt {kill} finished before its kill point: {done:?}"),
            }
        }
        // Let the killed attempt end, then disarm the tripwire and drop a
        // wake-up it may have stored meanwhile, so it cannot kill the next
        // attempt at its start.
        let _ = run.await;
        trip.at.store(u64::MAX, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::ZERO, trip.hit.notified()).await;
    }
    let summary = run_snapshot(&deps, &job)
        .await
        .expect("the last attempt finishes");
    let (_, streamed) = traffic.finish().await;

    let points: Vec<_> = log.lock().unwrap().iter().map(|e| e.point).collect();
    assert_eq!(points.len(), 5, "every attempt exported its own snapshot");
    assert!(points.windows(2).all(|w| w[0] < w[1]), "{points:?}");
    assert!(
        summary.tables[0].chunks_resumed > 0,
        "the last attempt skipped chunks recorded by the killed ones: {summary:?}"
    );
    assert!(streamed > 0);
    assert_index_matches(&db, &Es::new(), &index, "SELECT * FROM items", &["id"]).await;
}

/// Sends each table's rows to its own test sink.
struct ByTable(HashMap<String, Arc<TestSink>>);

impl SnapshotSink for ByTable {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        let table = changes[0].relation.qualified_name();
        self.0[&table].write(changes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn composite_text_keyless_empty_partitioned_and_filtered_tables_are_read_exactly() {
    let db = TestDb::new().await;
    db.sql(
        r#"CREATE TABLE comp (region text, n int4, payload text, PRIMARY KEY (region, n));
           INSERT INTO comp SELECT (ARRAY['eu','us','ap','o''hare'])[1 + i % 4], i, 'p' || i
             FROM generate_series(1, 3000) i;
           CREATE TABLE texts (code text PRIMARY KEY, v int4);
           INSERT INTO texts SELECT 'k' || i || E'\t\n\\' || chr(233) || '''"', i FROM generate_series(1, 2000) i;
           INSERT INTO texts VALUES ('\N', 1), (' ', 2), (E'\\x41', 3);
           CREATE TABLE nokey (a int4, b text);
           ALTER TABLE nokey REPLICA IDENTITY FULL;
           INSERT INTO nokey SELECT i, repeat('x', i % 50) FROM generate_series(1, 6000) i;
           CREATE TABLE empty (id int4 PRIMARY KEY, v text);
           CREATE TABLE parted (id int8, region text, v int4, PRIMARY KEY (id, region))
             PARTITION BY LIST (region);
           CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
           CREATE TABLE parted_us (v int4, region text NOT NULL, id int8 NOT NULL);
           ALTER TABLE parted ATTACH PARTITION parted_us FOR VALUES IN ('us');
           CREATE TABLE parted_rest PARTITION OF parted DEFAULT;
           INSERT INTO parted SELECT i, (ARRAY['eu','us','ap'])[1 + i % 3], i * 2 FROM generate_series(1, 3000) i;
           CREATE TABLE flt (id int4 PRIMARY KEY, active bool, secret text, v text);
           INSERT INTO flt SELECT i, i % 3 = 0, 's', 'v' || i FROM generate_series(1, 3000) i;
           ANALYZE;"#,
    )
    .await;
    let tables = ["comp", "texts", "nokey", "empty", "parted", "flt"];
    let sinks: HashMap<String, Arc<TestSink>> = tables
        .iter()
        .map(|t| (format!("public.{t}"), TestSink::new(&db.index(t))))
        .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let deps = deps(&db, Arc::new(ByTable(sinks)), log);
    let names: Vec<(String, String)> = tables
        .iter()
        .map(|t| (format!("public.{t}"), db.index(t)))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut job = job(&refs, 3, 400);
    let flt = job
        .tables
        .iter_mut()
        .find(|t| t.spec.table.name == "flt")
        .unwrap();
    flt.spec.row_filter = Some("active AND v <> 'v3'".into());
    flt.spec.columns = Some(vec!["id".into(), "v".into()]);

    let summary = run_snapshot(&deps, &job).await.expect("snapshot");
    let chunks: HashMap<_, _> = summary
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.chunks))
        .collect();
    assert!(chunks["public.comp"] > 3, "keyset chunks: {chunks:?}");
    assert!(chunks["public.texts"] > 3, "text keyset chunks: {chunks:?}");
    assert!(chunks["public.nokey"] > 3, "ctid chunks: {chunks:?}");
    assert!(
        chunks["public.parted"] >= 3,
        "a chunk per partition at least: {chunks:?}"
    );
    assert_eq!(chunks["public.empty"], 1);

    let es = Es::new();
    assert_index_matches(
        &db,
        &es,
        &db.index("comp"),
        "SELECT * FROM comp",
        &["region", "n"],
    )
    .await;
    assert_index_matches(
        &db,
        &es,
        &db.index("texts"),
        "SELECT * FROM texts",
        &["code"],
    )
    .await;
    assert_index_matches(
        &db,
        &es,
        &db.index("nokey"),
        "SELECT * FROM nokey",
        &["a", "b"],
    )
    .await;
    assert_index_matches(&db, &es, &db.index("empty"), "SELECT * FROM empty", &["id"]).await;
    assert_index_matches(
        &db,
        &es,
        &db.index("parted"),
        "SELECT id, region, v FROM parted",
        &["id", "region"],
    )
    .await;
    assert_index_matches(
        &db,
        &es,
        &db.index("flt"),
        "SELECT id, v FROM flt WHERE active AND v <> 'v3'",
        &["id"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_is_recorded_done_only_after_its_batches_are_acknowledged() {
    let db = TestDb::new().await;
    items_table(&db, 10_000).await;
    let index = db.index("items");
    let log = Arc::new(Mutex::new(Vec::new()));
    // A pipeline that makes every batch durable except those holding id 5000,
    // whose acknowledgement it drops (as if Elasticsearch never confirmed).
    let (sink, mut rx) = ChannelSink::new(4);
    let es_sink = TestSink::new(&index);
    let pipeline = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let has_5000 = batch.changes.iter().any(|c| match &c.kind {
                sluice::model::change::ChangeKind::Insert { new } => {
                    new[0] == sluice::model::change::Datum::Value(json!(5000))
                }
                _ => false,
            });
            if has_5000 {
                continue;
            }
            let ack = es_sink.write(batch.changes).await.unwrap();
            let _ = batch.ack.send(ack.await);
        }
    });
    let deps_dropping = deps(&db, Arc::new(sink), log.clone());
    let job = job(&[("public.items", &index)], 2, 1_000);
    let err = run_snapshot(&deps_dropping, &job)
        .await
        .expect_err("a batch was never acknowledged");
    assert!(
        matches!(
            err,
            sluice::snapshot::SnapshotError::Sink(SinkError::Closed)
        ),
        "{err}"
    );
    pipeline.abort();

    let state = StateStore::new(Es::new().client, db.index("state"));
    let st = state
        .load_table("public.items", &index)
        .await
        .unwrap()
        .unwrap();
    let (done, _) = state.done_chunks(&st.run_id).await.unwrap();
    let unacked = st
        .plan
        .iter()
        .find(|c| c.bounds.predicate() == "\"id\" >= 4001 AND \"id\" < 5001")
        .map(|c| c.id)
        .expect("ten chunks of a thousand ids");
    assert!(
        done.len() < st.plan.len(),
        "{} of {} done",
        done.len(),
        st.plan.len()
    );
    assert!(
        !done.contains(&unacked),
        "the unacknowledged chunk {unacked} was recorded"
    );

    // The same command again with a healthy sink reads only what is missing.
    let summary = run_snapshot(&deps(&db, TestSink::new(&index), log), &job)
        .await
        .expect("resumed");
    assert_eq!(summary.tables[0].chunks_resumed, done.len());
    assert!(summary.tables[0].rows < 10_000);
    assert_index_matches(&db, &Es::new(), &index, "SELECT * FROM items", &["id"]).await;
}

/// Holds back the batch holding `id` until released.
struct Gate {
    inner: Arc<TestSink>,
    id: i64,
    reached: Notify,
    open: Notify,
}

impl SnapshotSink for Gate {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        Box::pin(async move {
            let holds = changes.iter().any(|c| match &c.kind {
                sluice::model::change::ChangeKind::Insert { new } => {
                    new[0] == sluice::model::change::Datum::Value(json!(self.id))
                }
                _ => false,
            });
            if holds {
                self.reached.notify_one();
                self.open.notified().await;
            }
            self.inner.write(changes).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_snapshot_row_arriving_after_the_streams_delete_stays_deleted() {
    let db = TestDb::new().await;
    items_table(&db, 2_000).await;
    let es = Es::new();
    let index = db.index("items");
    // The target exists before the backfill, with the default tombstone
    // lifetime; the backfill raises it for its duration.
    es.create_index(
        &index,
        json!({"settings": {"index": {"gc_deletes": "0s", "refresh_interval": "-1"}}}),
    )
    .await;
    let state = StateStore::new(es.client.clone(), db.index("state"));
    state.ensure().await.unwrap();
    tombstones::extend(&state, &index, tombstones::DEFAULT_BACKFILL_GC_DELETES)
        .await
        .unwrap();

    let gate = Arc::new(Gate {
        inner: TestSink::new(&index),
        id: 1_500,
        reached: Notify::new(),
        open: Notify::new(),
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    let run = {
        let deps = deps(&db, gate.clone(), log.clone());
        let job = job(&[("public.items", &index)], 1, 500);
        tokio::spawn(async move { run_snapshot(&deps, &job).await })
    };
    gate.reached.notified().await;
    // The stream deletes row 1500 after the snapshot was taken.
    db.sql("DELETE FROM items WHERE id = 1500").await;
    let point = log.lock().unwrap()[0].point;
    let delete_version = wal_lsn(&db).await.as_version();
    assert!(delete_version >= point.as_version());
    bulk_write(
        &es,
        &index,
        delete_version,
        &[Write::Delete { id: "1500".into() }],
    )
    .await
    .unwrap();
    // Time passes and the shard refreshes (where expired tombstones are pruned).
    tokio::time::sleep(Duration::from_millis(300)).await;
    es.refresh(&index).await;
    gate.open.notify_one();
    run.await.unwrap().expect("snapshot");

    tombstones::restore(&state, &index).await.unwrap();
    let settings = es.settings(&index).await;
    assert_eq!(
        settings[&index]["settings"]["index"]["gc_deletes"],
        json!("0s"),
        "the user's value is back"
    );
    let docs = es.sources(&index).await;
    assert!(!docs.contains_key("1500"), "the deleted row came back");
    assert_index_matches(&db, &es, &index, "SELECT * FROM items", &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_raised_tombstone_lifetime_the_same_stale_write_resurrects_the_row() {
    // The control for the test above: proves that the order of writes it
    // builds really is the dangerous one.
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("control");
    es.create_index(
        &index,
        json!({"settings": {"index": {"gc_deletes": "0s", "refresh_interval": "-1"}}}),
    )
    .await;
    let doc = json!({"id": 1});
    bulk_write(
        &es,
        &index,
        10,
        &[Write::Index {
            id: "1".into(),
            doc: doc.clone(),
        }],
    )
    .await
    .unwrap();
    bulk_write(&es, &index, 20, &[Write::Delete { id: "1".into() }])
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the tombstone to be pruned",
        || {
            let (es, index, doc) = (&es, &index, &doc);
            async move {
                es.refresh(index).await;
                bulk_write(
                    es,
                    index,
                    15,
                    &[Write::Index {
                        id: "1".into(),
                        doc: doc.clone(),
                    }],
                )
                .await
                .unwrap();
                es.sources(index).await.contains_key("1").then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reindex_swaps_the_alias_atomically_while_queries_never_see_fewer_documents() {
    let db = TestDb::new().await;
    let rows = 20_000;
    items_table(&db, rows).await;
    let es = Es::new();
    let alias = db.index("items");
    let first = format!("{alias}-initial");
    let log = Arc::new(Mutex::new(Vec::new()));

    // The current generation: an index behind the alias.
    es.create_index(&first, json!({"aliases": {&alias: {}}}))
        .await;
    run_snapshot(
        &deps(&db, TestSink::new(&first), log.clone()),
        &job(&[("public.items", &first)], 2, 5_000),
    )
    .await
    .unwrap();
    es.refresh(&alias).await;
    let at_start = rows as u64;

    // Queries against the alias all along.
    let stop = Arc::new(AtomicBool::new(false));
    let min_seen = Arc::new(AtomicU64::new(u64::MAX));
    let queries = {
        let (alias, stop, min_seen) = (alias.clone(), stop.clone(), min_seen.clone());
        tokio::spawn(async move {
            let es = Es::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let c = es
                    .try_count(&alias)
                    .await
                    .unwrap_or_else(|v| panic!("count: {v}"));
                min_seen.fetch_min(c, Ordering::Relaxed);
                n += 1;
            }
            n
        })
    };

    let state = StateStore::new(es.client.clone(), db.index("state"));
    // A running pipeline: polls for reindexes, then reports that it writes
    // to both indices (no workload here, so from any LSN).
    let pipeline = {
        let (state, alias) = (state.clone(), alias.clone());
        tokio::spawn(async move {
            let seen = wait_until(Duration::from_secs(30), "a reindex to start", || {
                let state = state.clone();
                async move {
                    let a = reindex::active(&state).await.unwrap();
                    (!a.is_empty()).then_some(a)
                }
            })
            .await;
            reindex::acknowledge_dual_write(&state, &alias, sluice::Lsn(1))
                .await
                .unwrap();
            // At the swap: nothing of the old shape is in flight here.
            wait_until(Duration::from_secs(120), "the swap to begin", || {
                let (state, alias) = (state.clone(), alias.clone());
                async move {
                    let r = reindex::load(&state, &alias).await.unwrap().unwrap();
                    (r.status == reindex::ReindexStatus::Swapping).then_some(())
                }
            })
            .await;
            reindex::acknowledge_switch(&state, &alias).await.unwrap();
            seen
        })
    };
    let req = BackfillRequest {
        targets: vec![BackfillTarget {
            table: PublishedTable::parse("public.items"),
            index: alias.clone(),
            settings: json!({"index": {"number_of_shards": 1, "refresh_interval": "1s"}}),
            mappings: json!({"properties": {"name": {"type": "keyword"}}}),
            mapping_files: Vec::new(),
        }],
        reindex: true,
        delete_old: false,
        gc_deletes: "48h".into(),
        wait_for_stream: Some(Duration::from_secs(30)),
        stream_slot: None,
        retries: 0,
        options: SnapshotOptions {
            readers: 2,
            chunk_rows: 5_000,
            batch_rows: 1_000,
        },
    };
    let summary = backfill(&deps(&db, TestSink::new(&first), log), &req, |overrides| {
        TestSink::new(&overrides[&alias])
    })
    .await
    .expect("reindex");
    assert_eq!(summary.tables[0].rows, rows as u64);
    let seen = pipeline.await.unwrap();
    let r = reindex::load(&state, &alias).await.unwrap().unwrap();
    assert_eq!(seen[0].build_index, r.build_index);
    assert_eq!(r.old_indices, vec![first.clone()]);
    assert_eq!(r.status, reindex::ReindexStatus::Swapped);
    assert!(reindex::active(&state).await.unwrap().is_empty());
    // A few more queries after the swap.
    let after = es.sources(&alias).await.len();
    stop.store(true, Ordering::Relaxed);
    let queries_run = queries.await.unwrap();

    assert!(
        queries_run > 5,
        "queries ran during the reindex: {queries_run}"
    );
    assert!(
        min_seen.load(Ordering::Relaxed) >= at_start,
        "a query saw {} documents, fewer than the {at_start} at the start",
        min_seen.load(Ordering::Relaxed)
    );
    assert_eq!(after as u64, at_start);
    assert_eq!(es.indices_behind(&alias).await, vec![r.build_index.clone()]);
    let settings = es.settings(&r.build_index).await;
    let s = &settings[&r.build_index]["settings"]["index"];
    assert_eq!(s["refresh_interval"], json!("1s"));
    // Like every index Sluice creates, it keeps tombstones for the replay
    // window (DESIGN invariant 3), which is what the request passed.
    assert_eq!(s["gc_deletes"], json!("48h"), "{s}");
    assert!(
        es.exists(&first).await,
        "the old index is kept without --delete-old"
    );
    assert_index_matches(&db, &es, &alias, "SELECT * FROM items", &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_ctid_snapshot_starts_over_when_the_table_was_rewritten() {
    let db = TestDb::new().await;
    db.sql(
        "CREATE TABLE nokey (a int4, b text);
         ALTER TABLE nokey REPLICA IDENTITY FULL;
         INSERT INTO nokey SELECT i, 'b' || i FROM generate_series(1, 5000) i;
         ANALYZE nokey;",
    )
    .await;
    let index = db.index("nokey");
    let log = Arc::new(Mutex::new(Vec::new()));
    let job = job(&[("public.nokey", &index)], 1, 500);
    // First attempt: the pipeline never acknowledges anything.
    let (dropping, mut rx) = ChannelSink::new(1);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    run_snapshot(&deps(&db, Arc::new(dropping), log.clone()), &job)
        .await
        .expect_err("nothing was acknowledged");
    drain.abort();
    let state = StateStore::new(Es::new().client, db.index("state"));
    let first = state
        .load_table("public.nokey", &index)
        .await
        .unwrap()
        .unwrap();

    // VACUUM FULL moves every row to a new ctid: the old page ranges mean
    // nothing now.
    db.sql("DELETE FROM nokey WHERE a % 2 = 0").await;
    db.sql("VACUUM FULL nokey").await;
    let summary = run_snapshot(&deps(&db, TestSink::new(&index), log), &job)
        .await
        .expect("snapshot");
    assert_ne!(summary.tables[0].run_id, first.run_id);
    assert_eq!(summary.tables[0].chunks_resumed, 0);
    assert_index_matches(&db, &Es::new(), &index, "SELECT * FROM nokey", &["a", "b"]).await;
}
