//! `sluice dead-letters list | retry`: look at what Elasticsearch refused,
//! and, once the user fixed the cause (the index mapping, the document),
//! write the rows again through the normal path.
//!
//! A retry reads the dead-lettered rows as they are now, inside a snapshot
//! exported by a temporary slot (point P), and writes them with version
//! P − 1 like a snapshot row (DESIGN invariant 4): newer than the refused
//! write, older than any change the stream delivers after P, so a retry
//! never overwrites a newer streamed change. A row gone at P becomes a
//! versioned delete. A dead letter is removed once its document is in the
//! index (or, for a deleted row, absent); one that fails again stays, and
//! the indexer stores the new failure beside it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use crate::app::EXIT_RUNTIME;
use crate::app::load::{connector, temporary_slot_exporter};
use crate::app::setup::indexer_config;
use crate::app::snapshot::{open, runtime_err};
use crate::config::Mapping;
use crate::model::change::{Change, ChangeKind, Datum, Row};
use crate::model::{BulkOp, Lsn, OpAction, OpOrigin, PublishedTable};
use crate::sink::doc_reads::{DeadLetter, DocRef, dead_letters, delete_dead_letters, mget};
use crate::sink::indexer::{Ack, Indexer};
use crate::snapshot::catalog::load_table;
use crate::snapshot::reader::import_snapshot;
use crate::source;
use crate::transform::Transformer;
use crate::transform::nested::NestedDoc;

/// What `sluice dead-letters` is asked to do.
#[derive(Debug, Clone)]
pub struct DeadLettersRequest {
    pub config: PathBuf,
    pub index: Option<String>,
    pub json: bool,
    pub retry: bool,
}

pub async fn command(req: &DeadLettersRequest) -> i32 {
    let outcome = if req.retry {
        retry(req).await
    } else {
        list(req).await
    };
    match outcome {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err((code, e)) => {
            eprintln!("sluice dead-letters: {e:#}");
            code
        }
    }
}

async fn list(req: &DeadLettersRequest) -> Result<String, (i32, anyhow::Error)> {
    let (cfg, _pg, es) = open(&req.config).await?;
    let found = dead_letters(&es, &cfg.pipeline.dead_letter_index, req.index.as_deref())
        .await
        .map_err(|e| runtime_err(e.into()))?;
    if req.json {
        let all: Vec<Value> = found
            .iter()
            .map(|d| {
                let mut v = d.source.clone();
                v["record_id"] = Value::String(d.record_id.clone());
                v
            })
            .collect();
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&all).expect("JSON")
        ));
    }
    let mut out = format!("{} dead letters\n", found.len());
    for d in &found {
        let s = &d.source;
        out.push_str(&format!(
            "{} {} index={} id={} table={} key={} lsn={} {}: {}\n",
            d.record_id,
            s["@timestamp"].as_str().unwrap_or("-"),
            s["index"].as_str().unwrap_or("-"),
            s["id"].as_str().unwrap_or("-"),
            s["table"].as_str().unwrap_or("-"),
            s["key"].as_str().unwrap_or("-"),
            s["lsn"].as_str().unwrap_or("-"),
            s["error"]["type"].as_str().unwrap_or("-"),
            s["error"]["reason"].as_str().unwrap_or("-"),
        ));
    }
    Ok(out)
}

/// A dead letter's row key, in the relation's column order.
fn key_row(rel: &crate::model::change::Relation, key: &Value) -> Option<Row> {
    let obj = key.as_object()?;
    let row: Row = rel
        .columns
        .iter()
        .map(|c| match (c.is_key, obj.get(&c.name)) {
            (true, Some(v)) => Datum::Value(v.clone()),
            _ => Datum::Null,
        })
        .collect();
    Some(row)
}

async fn retry(req: &DeadLettersRequest) -> Result<String, (i32, anyhow::Error)> {
    let (cfg, pg, es) = open(&req.config).await?;
    let dl_index = cfg.pipeline.dead_letter_index.clone();
    let found = dead_letters(&es, &dl_index, req.index.as_deref())
        .await
        .map_err(|e| runtime_err(e.into()))?;
    if found.is_empty() {
        return Ok("no dead letters to retry\n".into());
    }
    let exported = (temporary_slot_exporter(&cfg))()
        .await
        .map_err(|e| runtime_err(anyhow::anyhow!("exporting a snapshot: {e}")))?;
    let point = exported.consistent_point;
    let reader = (connector(&cfg))()
        .await
        .map_err(|e| runtime_err(e.into()))?;
    import_snapshot(&reader, &exported.name)
        .await
        .map_err(|e| runtime_err(e.into()))?;
    drop(exported.guard);
    let catalog = source::TypeCatalog::load(&pg)
        .await
        .map_err(|e| runtime_err(e.into()))?;
    let version = Lsn(point.0 - 1);
    let mut by_table: BTreeMap<String, Vec<&DeadLetter>> = BTreeMap::new();
    for d in &found {
        if let Some(t) = d.source["table"].as_str() {
            by_table.entry(t.to_string()).or_default().push(d);
        }
    }
    let mut transformer = Transformer::new(&cfg.mappings);
    let mut planned = Retries::default();
    for (table, letters) in &by_table {
        // A nested mapping's dead letters name its root table: their
        // documents are read whole, like the stream rebuilds them.
        let nested = cfg.mappings.for_table(table).find(|m| m.is_nested());
        let (docs, rows): (Vec<&DeadLetter>, Vec<&DeadLetter>) = letters
            .iter()
            .partition(|d| nested.is_some_and(|m| of_mapping(d, m)));
        if let Some(m) = nested.filter(|_| !docs.is_empty()) {
            plan_documents(&reader, &catalog, m, &docs, version, &mut planned).await?;
        }
        if !rows.is_empty() {
            let cx = (&reader, &catalog, &mut transformer);
            plan_table(cx, table, &rows, version, &mut planned).await?;
        }
    }
    let Retries { expect, ops, .. } = planned;
    let _ = reader.batch_execute("COMMIT").await;
    let written = ops.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Ack>>();
    let indexer = Indexer::start(es.clone(), indexer_config(&cfg), tx);
    indexer
        .submit_all(ops, 1)
        .await
        .map_err(|e| runtime_err(e.into()))?;
    if !indexer.finish(std::time::Duration::from_secs(300)).await {
        return Err(runtime_err(anyhow::anyhow!(
            "the retried writes did not finish within 5 minutes"
        )));
    }
    while rx.try_recv().is_ok() {}
    let refs: Vec<DocRef> = expect.iter().map(|(_, r, _)| r.clone()).collect();
    let docs = mget(&es, &refs).await.map_err(|e| runtime_err(e.into()))?;
    let mut done = Vec::new();
    for ((d, _, present), doc) in expect.iter().zip(docs) {
        let ok = match doc {
            Some(doc) => *present && doc.version >= version.0,
            None => !*present,
        };
        if ok {
            done.push(d.record_id.clone());
        }
    }
    delete_dead_letters(&es, &dl_index, &done)
        .await
        .map_err(|e| runtime_err(e.into()))?;
    Ok(format!(
        "{} dead letters: {written} rows written again at {point} - 1; {} indexed and removed, {} still failing\n",
        found.len(),
        done.len(),
        found.len() - done.len()
    ))
}

/// The writes a retry makes, and what each should leave in the index.
#[derive(Default)]
struct Retries<'a> {
    /// Per dead letter: its document, and whether it should exist (`false`:
    /// the row is gone, so the document should be deleted).
    expect: Vec<(&'a DeadLetter, DocRef, bool)>,
    ops: Vec<BulkOp>,
    /// (index, id) of every document in `ops`.
    written: std::collections::HashSet<(String, String)>,
}

impl<'a> Retries<'a> {
    /// Dead letter `d` is settled by `op`. A document gets one write
    /// however many dead letters name it (a row refused again has two).
    fn add(&mut self, d: &'a DeadLetter, op: BulkOp) {
        let present = matches!(op.action, OpAction::Index { .. });
        let r = doc_ref(&op);
        let first = self.written.insert((r.index.clone(), r.id.clone()));
        self.expect.push((d, r, present));
        if first {
            self.ops.push(op);
        }
    }
}

/// Plan the retry of `letters`, the dead letters of `table`: each row as it
/// is now (read inside the imported snapshot), transformed like the stream
/// would, or a versioned delete when the row is gone; all at `version`.
async fn plan_table<'a>(
    (reader, catalog, transformer): Cx<'_>,
    table: &str,
    letters: &[&'a DeadLetter],
    version: Lsn,
    out: &mut Retries<'a>,
) -> Result<(), (i32, anyhow::Error)> {
    let info = load_table(reader, &PublishedTable::parse(table))
        .await
        .map_err(|e| runtime_err(e.into()))?;
    let rel = info.relation.clone();
    let keys: Vec<(&DeadLetter, Row)> = letters
        .iter()
        .filter_map(|d| {
            let key: Value = serde_json::from_str(d.source["key"].as_str()?).ok()?;
            Some((*d, key_row(&rel, &key)?))
        })
        .collect();
    let rows = source::fetch_rows_by_key(
        reader,
        &rel,
        &keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
        &source::ValueOptions::default(),
        catalog,
    )
    .await
    .map_err(|e| runtime_err(e.into()))?;
    let mut now: HashMap<String, BulkOp> = HashMap::new();
    for new in rows {
        let change = Change {
            relation: rel.clone(),
            kind: ChangeKind::Insert { new },
            version,
            commit_time: Utc::now(),
            xid: 0,
        };
        let mut ops = Vec::new();
        let mut rejected = Vec::new();
        transformer
            .transform_rows(&change, &mut ops, &mut rejected)
            .map_err(|e| (EXIT_RUNTIME, anyhow::anyhow!("{table}: {e}")))?;
        for op in ops {
            now.insert(format!("{}\u{0}{}", op.index, op.origin.key), op);
        }
    }
    for (d, _) in keys {
        let index = d.source["index"].as_str().unwrap_or_default();
        let key = d.source["key"].as_str().unwrap_or_default();
        let op = match now.get(&format!("{index}\u{0}{key}")) {
            Some(op) => op.clone(),
            // The row is gone (or no longer maps to this index).
            None => match gone(d, index, key, table, version) {
                Some(op) => op,
                None => continue,
            },
        };
        out.add(d, op);
    }
    Ok(())
}

/// What planning a retry reads with: the snapshot's connection, the type
/// catalog and the stream's transformer.
type Cx<'c> = (
    &'c tokio_postgres::Client,
    &'c source::TypeCatalog,
    &'c mut Transformer,
);

/// Whether dead letter `d` is of nested mapping `m` (a document it built,
/// or one Elasticsearch refused in its index).
fn of_mapping(d: &DeadLetter, m: &Mapping) -> bool {
    d.source["mapping"].as_str() == Some(&*m.name)
        || d.source["index"].as_str() == Some(&m.index_pattern())
}

/// A root key, as text in key column order, from a dead letter's or an
/// op's key (a JSON object of the key columns).
fn root_key(key: &str, columns: &[String]) -> Option<source::nested::RootKey> {
    let obj: serde_json::Map<String, Value> = serde_json::from_str(key).ok()?;
    columns
        .iter()
        .map(|c| match obj.get(c)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        })
        .collect()
}

/// Plan the retry of nested mapping `m`'s dead letters: each root's
/// document read whole inside the imported snapshot and built like the
/// stream builds it, or a versioned delete when the root is gone.
async fn plan_documents<'a>(
    reader: &tokio_postgres::Client,
    catalog: &source::TypeCatalog,
    m: &Mapping,
    letters: &[&'a DeadLetter],
    version: Lsn,
    out: &mut Retries<'a>,
) -> Result<(), (i32, anyhow::Error)> {
    let tree = m.tree.as_ref().expect("bound by open()");
    let keys: Vec<(&DeadLetter, source::nested::RootKey)> = letters
        .iter()
        .filter_map(|d| Some((*d, root_key(d.source["key"].as_str()?, &tree.root.key)?)))
        .collect();
    let opts = source::ValueOptions::default();
    let conv = source::nested::converter(catalog, &opts);
    let roots: Vec<_> = keys.iter().map(|(_, k)| k.clone()).collect();
    let rows = source::nested::read_documents(reader, tree, &roots, &conv)
        .await
        .map_err(|e| runtime_err(e.into()))?;
    let mut doc = NestedDoc::new(m).map_err(|e| (EXIT_RUNTIME, anyhow::anyhow!("{e}")))?;
    let mut now: HashMap<source::nested::RootKey, BulkOp> = HashMap::new();
    for row in rows {
        let mut ops = Vec::new();
        // A document that still cannot be built stays a dead letter.
        if doc.index(row, version, Utc::now(), &mut ops).is_err() {
            continue;
        }
        for op in ops {
            if let Some(k) = root_key(&op.origin.key, &tree.root.key) {
                now.insert(k, op);
            }
        }
    }
    for (d, key) in keys {
        let op = match now.get(&key) {
            Some(op) => op.clone(),
            // Gone (or outside the filter): its document is deleted.
            None => {
                let mut ops = Vec::new();
                let deleted = doc.delete(&key, version, Utc::now(), &mut ops);
                match (deleted, ops.pop()) {
                    (Ok(()), Some(op)) => op,
                    _ => continue,
                }
            }
        };
        out.add(d, op);
    }
    Ok(())
}

/// The versioned delete of dead letter `d`'s document, whose row is gone;
/// `None` when the dead letter names no document id.
fn gone(d: &DeadLetter, index: &str, key: &str, table: &str, version: Lsn) -> Option<BulkOp> {
    let id = d.source["id"].as_str()?;
    Some(BulkOp {
        action: OpAction::Delete,
        index: Arc::from(index),
        id: id.to_string(),
        routing: d.source["routing"].as_str().map(str::to_string),
        pipeline: None,
        version: version.0,
        origin: OpOrigin {
            table: Arc::from(table),
            key: key.to_string(),
            lsn: version,
        },
    })
}

fn doc_ref(op: &BulkOp) -> DocRef {
    DocRef {
        index: op.index.to_string(),
        id: op.id.clone(),
        routing: op.routing.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::{DeadLetter, Retries, root_key};
    use crate::model::{BulkOp, Lsn, OpAction, OpOrigin};

    #[test]
    fn two_dead_letters_of_one_row_make_one_write_and_both_wait_for_it() {
        let letter = |id: &str| DeadLetter {
            record_id: id.into(),
            source: serde_json::json!({"index": "orders", "id": "7"}),
        };
        let (first, again) = (letter("a"), letter("b"));
        let op = BulkOp {
            action: OpAction::Index {
                doc: b"{}".to_vec(),
            },
            index: "orders".into(),
            id: "7".into(),
            routing: None,
            pipeline: None,
            version: 99,
            origin: OpOrigin {
                table: "public.orders".into(),
                key: r#"{"id":7}"#.into(),
                lsn: Lsn(99),
            },
        };
        let mut r = Retries::default();
        r.add(&first, op.clone());
        r.add(&again, op);
        assert_eq!(r.ops.len(), 1, "one write for the document");
        assert_eq!(r.expect.len(), 2, "both dead letters settle on it");
        assert!(r.expect.iter().all(|(_, _, present)| *present));
    }

    #[test]
    fn a_root_key_reads_an_ops_typed_key_and_a_dead_letters_text_key_alike() {
        let cols = ["shop".to_string(), "id".to_string()];
        let typed = root_key(r#"{"id":5,"shop":"eu"}"#, &cols);
        let text = root_key(r#"{"shop":"eu","id":"5"}"#, &cols);
        assert_eq!(typed, Some(vec!["eu".to_string(), "5".to_string()]));
        assert_eq!(typed, text);
    }

    #[test]
    fn a_key_without_every_root_key_column_names_no_root() {
        let cols = ["id".to_string()];
        assert_eq!(root_key(r#"{"other":1}"#, &cols), None);
        assert_eq!(root_key(r#"{"id":null}"#, &cols), None);
        assert_eq!(root_key(r#"["5"]"#, &cols), None);
    }
}
