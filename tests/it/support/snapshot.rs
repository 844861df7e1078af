//! Test-local stand-ins for the pieces other helpers build (value converter,
//! bulk sink, slot-exported snapshot, live stream), so the snapshot's
//! exactness is checked against the real servers before the merge.
//! TEST-ONLY: the converter knows a handful of types and the sink is a
//! minimal bulk writer; the real ones plug into the same seams.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use elasticsearch::BulkParts;
use serde_json::{Value, json};
use sluice::Lsn;
use sluice::model::change::{Change, ChangeKind, Datum};
use sluice::snapshot::seams::BoxFuture;
use sluice::snapshot::{
    AckFuture, ExportedSnapshot, PgConnector, SinkError, SnapshotExporter, SnapshotSink,
    ValueConverter,
};
use tokio::sync::Semaphore;

use super::compare::doc_id;
use super::{Es, connect};

/// TEST-ONLY converter for int, text, bool, numeric and float; anything else
/// stays text. Matches `to_jsonb` for those types.
pub fn test_converter() -> ValueConverter {
    Arc::new(|oid, text| {
        Ok(match oid {
            16 => Value::Bool(text == "t"),
            20 | 21 | 23 | 26 => Value::from(text.parse::<i64>().map_err(|e| e.to_string())?),
            700 | 701 | 1700 => serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))?,
            _ => Value::String(text.to_string()),
        })
    })
}

pub fn connector(url: String) -> PgConnector {
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(sluice::snapshot::SnapshotError::from)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        })
    })
}

/// One exported snapshot as the test saw it.
#[derive(Debug, Clone)]
pub struct Exported {
    pub point: Lsn,
    /// `pg_current_snapshot()` text, for visibility checks.
    pub snapshot: String,
}

/// Exports snapshots with `pg_export_snapshot()` in an open REPEATABLE READ
/// transaction (the slot-based exporter comes from the source layer). The
/// point is read *before* the snapshot is taken, so every transaction the
/// snapshot does not see finishes with the WAL at or beyond it.
pub fn test_exporter(url: String, log: Arc<Mutex<Vec<Exported>>>) -> SnapshotExporter {
    Arc::new(move || {
        let url = url.clone();
        let log = log.clone();
        Box::pin(async move {
            let client = connect(&url).await;
            let p: String = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .await
                .map_err(|e| e.to_string())?;
            let row = client
                .query_one(
                    "SELECT pg_export_snapshot(), pg_current_snapshot()::text",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            let point: Lsn = p.parse().map_err(|e| format!("{e}"))?;
            log.lock().unwrap().push(Exported {
                point,
                snapshot: row.get(1),
            });
            Ok(ExportedSnapshot {
                name: row.get(0),
                consistent_point: point,
                guard: Box::new(client),
            })
        })
    })
}

fn change_doc(change: &Change) -> (String, Value) {
    let ChangeKind::Insert { new } = &change.kind else {
        panic!("snapshot rows are inserts")
    };
    let mut doc = serde_json::Map::new();
    for (c, d) in change.relation.columns.iter().zip(new) {
        let v = match d {
            Datum::Null => Value::Null,
            Datum::Value(v) => v.clone(),
            Datum::Unchanged => panic!("a snapshot row has no unchanged TOAST values"),
        };
        doc.insert(c.name.clone(), v);
    }
    let keys: Vec<&str> = change
        .relation
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| c.name.as_str())
        .collect();
    (doc_id(&doc, &keys), Value::Object(doc))
}

/// One write for `bulk_write`.
pub enum Write {
    Index { id: String, doc: Value },
    Delete { id: String },
}

/// Versioned bulk write (`external_gte`); 409 (stale) and 404 on delete are
/// success, anything else fails.
pub async fn bulk_write(
    es: &Es,
    index: &str,
    version: u64,
    writes: &[Write],
) -> Result<(), String> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut body = Vec::new();
    for w in writes {
        match w {
            Write::Index { id, doc } => {
                serde_json::to_writer(
                    &mut body,
                    &json!({"index": {"_index": index, "_id": id,
                    "version": version, "version_type": "external_gte"}}),
                )
                .unwrap();
                body.push(b'\n');
                serde_json::to_writer(&mut body, doc).unwrap();
                body.push(b'\n');
            }
            Write::Delete { id } => {
                serde_json::to_writer(
                    &mut body,
                    &json!({"delete": {"_index": index, "_id": id,
                    "version": version, "version_type": "external_gte"}}),
                )
                .unwrap();
                body.push(b'\n');
            }
        }
    }
    let resp = es
        .client
        .bulk(BulkParts::None)
        .filter_path(&["errors", "items.*.status", "items.*.error"])
        .body(vec![Bytes::from(body)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if v["errors"] == json!(true) {
        for item in v["items"].as_array().into_iter().flatten() {
            let (op, res) = item.as_object().unwrap().iter().next().unwrap();
            let status = res["status"].as_u64().unwrap_or(0);
            let ok =
                (200..300).contains(&status) || status == 409 || (op == "delete" && status == 404);
            if !ok {
                return Err(format!("bulk item failed: {res}"));
            }
        }
    }
    Ok(())
}

/// TEST-ONLY sink: every change straight into one index with its version,
/// a few requests in flight; a batch is acknowledged when its bulk request
/// succeeded item by item.
pub struct TestSink {
    pub index: String,
    inflight: Arc<Semaphore>,
}

impl TestSink {
    pub fn new(index: &str) -> Arc<TestSink> {
        Arc::new(TestSink {
            index: index.to_string(),
            inflight: Arc::new(Semaphore::new(4)),
        })
    }
}

impl SnapshotSink for TestSink {
    fn write(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<AckFuture, SinkError>> {
        Box::pin(async move {
            let permit = self.inflight.clone().acquire_owned().await.unwrap();
            let index = self.index.clone();
            let task = tokio::spawn(async move {
                let _permit = permit;
                let version = changes[0].version.as_version();
                let writes: Vec<Write> = changes
                    .iter()
                    .map(|c| {
                        assert_eq!(c.version.as_version(), version);
                        let (id, doc) = change_doc(c);
                        Write::Index { id, doc }
                    })
                    .collect();
                bulk_write(&Es::new(), &index, version, &writes).await
            });
            let ack: AckFuture = Box::pin(async move {
                task.await
                    .map_err(|e| SinkError::Failed(e.to_string()))?
                    .map_err(SinkError::Failed)
            });
            Ok(ack)
        })
    }
}

/// A transaction of the emulated live stream: its xid, a version at or
/// above its commit LSN, and the rows it left (`None` = deleted).
#[derive(Debug, Clone)]
pub struct StreamTx {
    pub xid: String,
    pub version: u64,
    pub effects: Vec<(String, Option<Value>)>,
}

/// Emulates the live stream: writes every workload transaction that the
/// run's first snapshot does not see, with its own version, as soon as that
/// snapshot exists (so stream writes and snapshot writes interleave).
pub async fn stream_writer(
    db_url: String,
    index: String,
    exported: Arc<Mutex<Vec<Exported>>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StreamTx>,
) -> usize {
    let client = connect(&db_url).await;
    let es = Es::new();
    let mut pending = Vec::new();
    // Hold transactions back until the first snapshot exists.
    let first = loop {
        if let Some(first) = exported.lock().unwrap().first().cloned() {
            break first;
        }
        tokio::select! {
            got = rx.recv() => match got {
                Some(tx) => pending.push(tx),
                None => return 0,
            },
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
    };
    let mut written = 0;
    loop {
        for tx in pending.drain(..) {
            let visible: bool = client
                .query_one(
                    "SELECT pg_visible_in_snapshot($1::text::xid8, $2::text::pg_snapshot)",
                    &[&tx.xid, &first.snapshot],
                )
                .await
                .unwrap()
                .get(0);
            if visible {
                continue;
            }
            let writes: Vec<Write> = tx
                .effects
                .iter()
                .map(|(id, doc)| match doc {
                    Some(d) => Write::Index {
                        id: id.clone(),
                        doc: d.clone(),
                    },
                    None => Write::Delete { id: id.clone() },
                })
                .collect();
            bulk_write(&es, &index, tx.version, &writes).await.unwrap();
            written += 1;
        }
        match rx.recv().await {
            Some(tx) => pending.push(tx),
            None => return written,
        }
    }
}

/// A random workload on `items(id int8 pk, name text, qty int4, price numeric,
/// flag bool)`, one transaction at a time (so versions follow commit order),
/// until `stop` is set. Returns the number of transactions.
pub async fn workload(
    db_url: String,
    max_id: Arc<std::sync::atomic::AtomicI64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tx_out: tokio::sync::mpsc::UnboundedSender<StreamTx>,
) -> usize {
    use std::sync::atomic::Ordering;
    let client = connect(&db_url).await;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let ops = 1 + rand::random::<u32>() % 3;
        client.batch_execute("BEGIN").await.unwrap();
        let mut effects = Vec::new();
        for _ in 0..ops {
            let top = max_id.load(Ordering::Relaxed);
            let pick = 1 + (rand::random::<u64>() % top as u64) as i64;
            let row = match rand::random::<u32>() % 3 {
                0 => {
                    let id = max_id.fetch_add(1, Ordering::Relaxed) + 1;
                    client
                        .query_opt(
                            "INSERT INTO items VALUES ($1::int8, 'new ' || ($1::int8)::text, 1, 9.99, true)
                             RETURNING id::text, to_jsonb(items.*)",
                            &[&id],
                        )
                        .await
                        .unwrap()
                }
                1 => client
                    .query_opt(
                        "UPDATE items SET qty = qty + 1, name = name || '+' WHERE id = $1
                         RETURNING id::text, to_jsonb(items.*)",
                        &[&pick],
                    )
                    .await
                    .unwrap(),
                _ => client
                    .query_opt(
                        "DELETE FROM items WHERE id = $1 RETURNING id::text, NULL::jsonb",
                        &[&pick],
                    )
                    .await
                    .unwrap(),
            };
            if let Some(r) = row {
                effects.push((r.get::<_, String>(0), r.get::<_, Option<Value>>(1)));
            }
        }
        let xid: String = client
            .query_one("SELECT txid_current()::text", &[])
            .await
            .unwrap()
            .get(0);
        client.batch_execute("COMMIT").await.unwrap();
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let version = lsn.parse::<Lsn>().unwrap().as_version();
        let _ = tx_out.send(StreamTx {
            xid,
            version,
            effects,
        });
        n += 1;
    }
    n
}
