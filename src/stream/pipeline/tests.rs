//! The apply loop in memory: fed with `SourceEvent`s by hand, writing to a
//! sink that stands in for Elasticsearch and acknowledges only what the test
//! says, in the order it says. What these tests watch is DESIGN invariant 1:
//! the LSN the pipeline publishes (and would confirm to the slot) never
//! passes a change the sink has not acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::*;
use crate::model::{ChangeKind, Column, Datum, OpAction, OpOrigin, Relation, ReplicaIdentity};
use crate::stream::transform_step::StepError;
use crate::transform::TransformError;

/// Long enough for anything the pipeline does in memory.
const PATIENCE: Duration = Duration::from_secs(10);

/// One op the sink took, and whether it was acknowledged since.
struct Taken {
    tag: u64,
    id: String,
    acked: bool,
}

/// What the sink and the test share.
struct Shared {
    taken: Vec<Taken>,
    /// At `finish`, whether Elasticsearch is up (everything queued settles)
    /// or down (nothing does, and the drain times out).
    up_at_finish: bool,
}

/// The sink the pipeline writes to.
struct MemorySink {
    shared: Arc<Mutex<Shared>>,
    acks: mpsc::UnboundedSender<Vec<Ack>>,
    /// Count of ops taken, for the test to wait on.
    taken: watch::Sender<usize>,
    /// While false, `submit_all` waits (a spent budget).
    open: watch::Receiver<bool>,
}

impl Sink for MemorySink {
    async fn submit_all(&self, ops: Vec<BulkOp>, tag: u64) -> Result<(), IndexerClosed> {
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await.map_err(|_| IndexerClosed)?;
        let mut sh = self.shared.lock().unwrap();
        for op in ops {
            sh.taken.push(Taken {
                tag,
                id: op.id,
                acked: false,
            });
        }
        self.taken.send_replace(sh.taken.len());
        Ok(())
    }

    async fn finish(self, timeout: Duration) -> bool {
        let up = self.shared.lock().unwrap().up_at_finish;
        if !up {
            tokio::time::sleep(timeout).await;
            return false;
        }
        let mut sh = self.shared.lock().unwrap();
        let acks = sh
            .taken
            .iter_mut()
            .filter(|t| !t.acked)
            .map(|t| {
                t.acked = true;
                Ack {
                    tag: t.tag,
                    count: 1,
                }
            })
            .collect();
        let _ = self.acks.send(acks);
        true
    }
}

/// The test's side of the sink: Elasticsearch, as far as the pipeline can
/// tell.
struct Elastic {
    shared: Arc<Mutex<Shared>>,
    acks: mpsc::UnboundedSender<Vec<Ack>>,
    taken: watch::Receiver<usize>,
    open: watch::Sender<bool>,
}

impl Elastic {
    /// Acknowledge the first unacknowledged op of each document, in this
    /// order, one message each.
    fn acknowledge(&self, ids: &[&str]) {
        let mut sh = self.shared.lock().unwrap();
        for id in ids {
            let t = sh
                .taken
                .iter_mut()
                .find(|t| t.id == *id && !t.acked)
                .unwrap_or_else(|| panic!("no unacknowledged op for {id}"));
            t.acked = true;
            self.acks
                .send(vec![Ack {
                    tag: t.tag,
                    count: 1,
                }])
                .unwrap();
        }
    }

    async fn wait_taken(&self, n: usize) {
        let mut taken = self.taken.clone();
        tokio::time::timeout(PATIENCE, taken.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("the sink never took {n} ops"))
            .unwrap();
    }

    fn taken_ids(&self) -> Vec<String> {
        let sh = self.shared.lock().unwrap();
        sh.taken.iter().map(|t| t.id.clone()).collect()
    }

    /// Make `submit_all` wait, as a spent in-flight budget does.
    fn hold_submits(&self) {
        self.open.send_replace(false);
    }

    fn release_submits(&self) {
        self.open.send_replace(true);
    }

    fn down_at_finish(&self) {
        self.shared.lock().unwrap().up_at_finish = false;
    }
}

fn items() -> Arc<Relation> {
    Arc::new(Relation {
        id: 1,
        schema: "public".into(),
        name: "items".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![Column {
            name: "id".into(),
            type_oid: 25,
            type_modifier: -1,
            is_key: true,
        }],
    })
}

/// One op per inserted row, `_id` the row's id; the row `bad` is one the
/// mapping cannot work with.
fn transform(c: &Change, out: &mut Vec<BulkOp>) -> Result<(), StepError> {
    let ChangeKind::Insert { new } = &c.kind else {
        return Ok(());
    };
    let Datum::Value(id) = &new[0] else {
        return Ok(());
    };
    let id = id.as_str().expect("text ids").to_string();
    if id == "bad" {
        return Err(StepError::Mapping(Box::new(
            TransformError::MissingColumn {
                table: c.relation.qualified_name().into(),
                mapping: "items".into(),
                column: "gone".into(),
            },
        )));
    }
    out.push(BulkOp {
        action: OpAction::Index {
            doc: b"{}".to_vec(),
        },
        index: "items".into(),
        id: id.clone(),
        routing: None,
        pipeline: None,
        version: c.version.0,
        origin: OpOrigin {
            table: "public.items".into(),
            key: id,
            lsn: c.version,
        },
    });
    Ok(())
}

fn config() -> PipelineConfig {
    PipelineConfig {
        transform_buffer: 16,
        drain_timeout: Duration::from_millis(200),
        finish_transaction_timeout: PATIENCE,
    }
}

/// A pipeline at work, started at LSN 1.
struct Running {
    events: mpsc::Sender<SourceEvent>,
    es: Elastic,
    confirmed: watch::Receiver<Lsn>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<PipelineSummary, PipelineError>>,
}

impl Running {
    fn start(config: PipelineConfig) -> Running {
        let shared = Arc::new(Mutex::new(Shared {
            taken: Vec::new(),
            up_at_finish: true,
        }));
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (taken_tx, taken) = watch::channel(0);
        let (open, open_rx) = watch::channel(true);
        let sink = MemorySink {
            shared: shared.clone(),
            acks: ack_tx.clone(),
            taken: taken_tx,
            open: open_rx,
        };
        let (events, events_rx) = mpsc::channel(64);
        let (confirmed_tx, confirmed) = watch::channel(Lsn(1));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(Pipeline::new(sink, acks, config).run(
            Lsn(1),
            events_rx,
            transform,
            confirmed_tx,
            async {
                let _ = stop_rx.await;
            },
        ));
        Running {
            events,
            es: Elastic {
                shared,
                acks: ack_tx,
                taken,
                open,
            },
            confirmed,
            stop: Some(stop),
            task,
        }
    }

    async fn send(&self, ev: SourceEvent) {
        self.events.send(ev).await.expect("the pipeline runs");
    }

    async fn begin(&self, final_lsn: u64) {
        self.send(SourceEvent::Begin {
            final_lsn: Lsn(final_lsn),
            commit_time: Utc::now(),
            xid: final_lsn as u32,
        })
        .await;
    }

    async fn insert(&self, final_lsn: u64, id: &str) {
        self.send(SourceEvent::Change(Change {
            relation: items(),
            kind: ChangeKind::Insert {
                new: vec![Datum::Value(json!(id))],
            },
            version: Lsn(final_lsn),
            commit_time: Utc::now(),
            xid: 0,
        }))
        .await;
    }

    async fn commit(&self, final_lsn: u64, end_lsn: u64) {
        self.send(SourceEvent::Commit {
            commit_lsn: Lsn(final_lsn),
            end_lsn: Lsn(end_lsn),
        })
        .await;
    }

    async fn keepalive(&self, wal_end: u64) {
        self.send(SourceEvent::Keepalive {
            wal_end: Lsn(wal_end),
        })
        .await;
    }

    /// A whole transaction inserting `ids`.
    async fn transaction(&self, final_lsn: u64, end_lsn: u64, ids: &[&str]) {
        self.begin(final_lsn).await;
        for id in ids {
            self.insert(final_lsn, id).await;
        }
        self.commit(final_lsn, end_lsn).await;
    }

    /// Wait until exactly `lsn` is published (never past it).
    async fn wait_confirmed(&self, lsn: u64) {
        let mut rx = self.confirmed.clone();
        tokio::time::timeout(PATIENCE, rx.wait_for(|c| *c >= Lsn(lsn)))
            .await
            .unwrap_or_else(|_| panic!("{} was never confirmed", Lsn(lsn)))
            .unwrap();
        assert_eq!(*self.confirmed.borrow(), Lsn(lsn), "never past the goal");
    }

    fn signal_shutdown(&mut self) {
        let _ = self.stop.take().expect("one shutdown").send(());
    }

    /// Shut down and wait for the pipeline to end.
    async fn shutdown(mut self) -> Ended {
        self.signal_shutdown();
        self.end().await
    }

    /// Close the source's channel (the reader stopped) and wait.
    async fn close_source(mut self) -> Ended {
        let (unconnected, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.events, unconnected));
        self.end().await
    }

    /// Wait for the pipeline to end by itself.
    async fn end(self) -> Ended {
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the pipeline ends")
            .expect("the pipeline does not panic");
        Ended {
            result,
            published: *self.confirmed.borrow(),
            taken: self.es.taken_ids(),
        }
    }
}

/// How a pipeline ended.
struct Ended {
    result: Result<PipelineSummary, PipelineError>,
    /// The last LSN it published (what the reader confirms to the slot).
    published: Lsn,
    /// The `_id`s of the ops the sink took, in order.
    taken: Vec<String>,
}

impl Ended {
    fn summary(self) -> PipelineSummary {
        let published = self.published;
        let summary = self.result.expect("a clean stop");
        assert_eq!(published, summary.confirmed, "the final LSN is published");
        summary
    }
}

#[tokio::test]
async fn a_transaction_is_confirmed_only_once_every_op_of_it_is_acknowledged() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a", "b"]).await;
    run.es.wait_taken(2).await;
    run.es.acknowledge(&["a"]);
    run.es.down_at_finish();
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(1), "b was never acknowledged");
    assert!(!summary.drained);
}

#[tokio::test]
async fn the_confirmed_lsn_never_passes_an_unacknowledged_change() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a", "b"]).await;
    run.transaction(200, 210, &["c"]).await;
    run.es.wait_taken(3).await;
    run.es.acknowledge(&["a", "b"]);
    run.wait_confirmed(110).await;
    // Elasticsearch goes down with c unacknowledged.
    run.es.down_at_finish();
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(110));
}

#[tokio::test]
async fn acknowledgements_of_later_transactions_confirm_nothing_while_an_earlier_one_waits() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a"]).await;
    run.transaction(200, 210, &["b"]).await;
    run.transaction(300, 310, &["c"]).await;
    run.es.wait_taken(3).await;
    run.es.acknowledge(&["c", "b"]);
    run.es.down_at_finish();
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(1));
}

#[tokio::test]
async fn out_of_order_acknowledgements_confirm_in_stream_order_once_the_gap_closes() {
    let run = Running::start(config());
    let mut published = run.confirmed.clone();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while published.changed().await.is_ok() {
            seen.push(*published.borrow_and_update());
        }
        seen
    });
    run.transaction(100, 110, &["a"]).await;
    run.transaction(200, 210, &["b"]).await;
    run.transaction(300, 310, &["c"]).await;
    run.es.wait_taken(3).await;
    run.es.acknowledge(&["c", "b", "a"]);
    run.wait_confirmed(310).await;
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(310));
    assert_eq!(
        seen.await.unwrap(),
        [Lsn(310)],
        "no position short of the gap's end was published"
    );
}

#[tokio::test]
async fn a_keepalive_inside_a_transaction_confirms_nothing_past_it() {
    let run = Running::start(config());
    run.begin(100).await;
    run.insert(100, "a").await;
    run.keepalive(500).await;
    run.commit(100, 110).await;
    run.es.wait_taken(1).await;
    run.es.acknowledge(&["a"]);
    run.wait_confirmed(110).await;
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(110), "not the keepalive's WAL end");
}

#[tokio::test]
async fn a_keepalive_between_transactions_is_confirmed_once_those_before_it_are() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a"]).await;
    run.keepalive(500).await;
    run.es.wait_taken(1).await;
    run.es.acknowledge(&["a"]);
    run.wait_confirmed(500).await;
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(500));
}

#[tokio::test]
async fn a_keepalive_after_an_unacknowledged_transaction_confirms_nothing() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a"]).await;
    run.keepalive(500).await;
    run.es.wait_taken(1).await;
    run.es.down_at_finish();
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.confirmed, Lsn(1));
}

#[tokio::test]
async fn an_idle_stream_confirms_a_keepalive_at_once() {
    let run = Running::start(config());
    run.keepalive(500).await;
    run.wait_confirmed(500).await;
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.stopped_by, StopReason::Shutdown);
    assert_eq!(summary.confirmed, Lsn(500));
}

#[tokio::test]
async fn a_shutdown_that_finds_a_transaction_open_finishes_it_and_publishes_its_end() {
    let mut run = Running::start(config());
    run.begin(100).await;
    run.insert(100, "a").await;
    run.es.wait_taken(1).await;
    run.signal_shutdown();
    run.insert(100, "b").await;
    run.commit(100, 110).await;
    let summary = run.end().await.summary();
    assert_eq!(summary.stopped_by, StopReason::Shutdown);
    assert_eq!(summary.confirmed, Lsn(110), "the whole transaction");
    assert_eq!(summary.ops_submitted, 2);
    assert!(summary.drained);
}

#[tokio::test]
async fn a_transaction_still_open_at_the_finish_timeout_is_abandoned_and_the_last_whole_one_confirmed()
 {
    let mut run = Running::start(PipelineConfig {
        finish_transaction_timeout: Duration::from_millis(100),
        ..config()
    });
    run.transaction(50, 60, &["a"]).await;
    run.begin(100).await;
    run.insert(100, "b").await;
    run.es.wait_taken(2).await;
    run.signal_shutdown();
    // Its Commit never comes.
    let summary = run.end().await.summary();
    assert_eq!(summary.stopped_by, StopReason::Shutdown);
    assert_eq!(
        summary.confirmed,
        Lsn(60),
        "b settled, but its transaction is open"
    );
    assert!(summary.drained);
}

#[tokio::test]
async fn acknowledgements_still_confirm_while_the_sink_makes_the_pipeline_wait() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a"]).await;
    run.es.wait_taken(1).await;
    run.es.hold_submits();
    run.transaction(200, 210, &["b"]).await;
    run.es.acknowledge(&["a"]);
    run.wait_confirmed(110).await;
    assert_eq!(run.es.taken_ids(), ["a"], "b still waits for the budget");
    run.es.release_submits();
    run.es.wait_taken(2).await;
    run.es.acknowledge(&["b"]);
    run.wait_confirmed(210).await;
    let summary = run.shutdown().await.summary();
    assert_eq!(summary.ops_submitted, 2);
    assert_eq!(summary.confirmed, Lsn(210));
}

#[tokio::test]
async fn a_shutdown_while_the_sink_holds_a_submit_gives_up_after_the_finish_timeout() {
    let mut run = Running::start(PipelineConfig {
        finish_transaction_timeout: Duration::from_millis(100),
        ..config()
    });
    run.es.hold_submits();
    run.transaction(100, 110, &["a"]).await;
    run.signal_shutdown();
    let ended = run.end().await;
    assert!(ended.taken.is_empty());
    let summary = ended.summary();
    assert_eq!(summary.stopped_by, StopReason::Shutdown);
    assert_eq!(summary.ops_submitted, 0);
    assert_eq!(summary.confirmed, Lsn(1));
}

#[tokio::test]
async fn the_end_of_the_source_stops_the_pipeline_after_settling_what_it_took() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a"]).await;
    run.es.wait_taken(1).await;
    let summary = run.close_source().await.summary();
    assert_eq!(summary.stopped_by, StopReason::SourceEnded);
    assert_eq!(summary.confirmed, Lsn(110));
}

#[tokio::test]
async fn a_change_the_transform_step_refuses_stops_the_pipeline_with_nothing_of_it_confirmed() {
    let run = Running::start(config());
    run.transaction(100, 110, &["a"]).await;
    run.es.wait_taken(1).await;
    run.es.acknowledge(&["a"]);
    run.wait_confirmed(110).await;
    run.transaction(200, 210, &["c", "bad", "d"]).await;
    let ended = run.end().await;
    let err = ended
        .result
        .expect_err("the refused change stops the pipeline");
    // Typed all the way: the caller sees which mapping and column.
    assert!(
        matches!(&err, PipelineError::Transform {
            table,
            lsn,
            source: StepError::Mapping(e),
        } if table == "public.items"
            && *lsn == Lsn(200)
            && matches!(&**e, TransformError::MissingColumn { column, .. } if column == "gone")),
        "{err}"
    );
    assert_eq!(
        ended.taken,
        ["a", "c"],
        "nothing of the refused change or after it"
    );
    assert_eq!(
        ended.published,
        Lsn(110),
        "its transaction is not confirmed"
    );
}
