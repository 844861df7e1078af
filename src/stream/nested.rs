//! The stream's side of nested documents: which root documents a change of
//! any table of a nested mapping touches, and rebuilding them.
//!
//! A change is never turned into a document by itself: it names roots (its
//! own key for the root table; for a related table the rows above it,
//! found through the join columns of its old and new row, so a child that
//! moved leaves its old parent too). At each Commit the transaction's
//! touches join the batch, each root keeping the commit LSN of the latest
//! transaction that touched it. When the batch ends, once every touching
//! transaction is visible to other sessions, the roots are read again
//! whole (one statement per page of keys) and written with that version
//! (`external_gte`): a replay, a reordering or two rebuilds of one root
//! converge on the newest state, because each write carries a version no
//! older than the state it read.
//!
//! Exactly-once (DESIGN invariant 1): the pipeline hands these ops to the
//! sink before the first Commit of the batch that touched anything, so no
//! touching transaction is confirmed before the documents it touched are
//! acknowledged. Memory stays bounded: roots above a changed row (a
//! category under 100,000 products) are found and rebuilt one page at a
//! time, each page handed on before the next is read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Mapping, Mappings};
use crate::model::{
    BulkOp, Change, ChangeKind, Datum, DocTree, Lsn, OldRow, Place, RejectedRow, Row,
};
use crate::sink::dead_letter;
use crate::source::nested::{self as sql, RootKey};
use crate::source::{self, SourceError};
use crate::stream::transform_step::StepError;
use crate::transform::nested::NestedDoc;

/// Root keys per statement when reading documents.
const READ_PAGE: usize = 500;
/// Roots per page when finding the roots above a changed row.
const FIND_PAGE: usize = 1_000;
/// Join values per statement when finding roots.
const VALUES_PAGE: usize = 500;
/// How long a rebuild waits for PostgreSQL to come back.
const PATIENCE: Duration = Duration::from_secs(120);

/// One nested mapping as the stream sees it.
struct Doc {
    mapping: Arc<Mapping>,
    tree: Arc<DocTree>,
    doc: NestedDoc,
    /// `schema.table` → where it appears, with the columns naming the rows
    /// above it.
    places: HashMap<String, Vec<(usize, Vec<String>)>>,
    all_places: Vec<Place>,
    /// Per place: when the rows above it are the roots themselves, joined
    /// on the root's key (items under their order), where each root key
    /// column is among the place's columns — no query needed to find them.
    root_from: Vec<Option<Vec<usize>>>,
    /// Touched roots of the batch → the latest version.
    direct: HashMap<RootKey, Lsn>,
    /// (place, join values) of the batch → the latest version.
    upward: HashMap<(usize, Vec<String>), Lsn>,
}

/// What the open transaction touched: (doc, place or root, values).
enum Touch {
    Root(usize, RootKey),
    Up(usize, usize, Vec<String>),
}

/// A unit of rebuild work: a page of known roots, or roots still to find.
enum Job {
    Read {
        doc: usize,
        keys: Vec<(RootKey, Lsn)>,
    },
    Find {
        doc: usize,
        place: usize,
        values: Vec<Vec<String>>,
        version: Lsn,
        after: Option<RootKey>,
    },
}

/// One page of rebuilt documents.
pub struct Page {
    pub ops: Vec<BulkOp>,
    /// The root table, and how many roots the page rebuilt.
    pub table: Arc<str>,
    pub roots: u64,
    pub lsn: Lsn,
}

pub struct NestedStream {
    docs: Vec<Doc>,
    pg_cfg: source::PgConnectConfig,
    pg: Option<Arc<tokio_postgres::Client>>,
    types: source::TypeCatalog,
    opts: source::ValueOptions,
    dead_letter_index: Arc<str>,
    open: Vec<Touch>,
    /// Transactions of the batch that touched something.
    xids: Vec<u32>,
    jobs: VecDeque<Job>,
    commit_time: DateTime<Utc>,
    /// Reindexes in progress: rebuilt documents go to their build index too.
    dual: Option<crate::stream::dual_write::DualWrite>,
}

/// For a table directly under the root whose join names the root's key
/// (`orders.id = order_items.order_id`): the position, among the place's
/// columns, of each root key column's value.
fn roots_by_join(tree: &DocTree, place: &Place) -> Option<Vec<usize>> {
    if place.path.len() != 1 || place.as_through {
        return None;
    }
    let (_, child) = tree.at(&place.path);
    let on = match &child?.link {
        crate::model::Link::OneToMany { on } | crate::model::Link::ManyToOne { on } => on,
        crate::model::Link::Through { .. } => return None,
    };
    let key = &tree.root.key;
    if on.len() != key.len() {
        return None;
    }
    key.iter()
        .map(|k| on.iter().position(|(upper, _)| upper == k))
        .collect()
}

/// A value as the text PostgreSQL would parse back (`t`/`f` for booleans).
fn text(d: &Datum) -> Option<String> {
    match d {
        Datum::Value(serde_json::Value::String(s)) => Some(s.clone()),
        Datum::Value(serde_json::Value::Bool(b)) => Some(if *b { "t" } else { "f" }.into()),
        Datum::Value(serde_json::Value::Null) | Datum::Null | Datum::Unchanged => None,
        Datum::Value(v) => Some(v.to_string()),
    }
}

impl NestedStream {
    /// `None` when no mapping is nested.
    pub fn new(
        mappings: &Mappings,
        pg_cfg: source::PgConnectConfig,
        pg: Arc<tokio_postgres::Client>,
        dead_letter_index: Arc<str>,
    ) -> Result<Option<NestedStream>, StepError> {
        let mut docs = Vec::new();
        for m in mappings.list.iter().filter(|m| m.is_nested()) {
            let doc = NestedDoc::new(m).map_err(|e| StepError::Mapping(Box::new(e)))?;
            let tree = m.tree.clone().expect("bound with the doc");
            let mut places: HashMap<String, Vec<(usize, Vec<String>)>> = HashMap::new();
            let mut all_places = Vec::new();
            for t in tree.tables() {
                for p in tree.places(&t) {
                    let cols = sql::lower_columns(&tree, &p);
                    places
                        .entry(t.qualified_name())
                        .or_default()
                        .push((all_places.len(), cols));
                    all_places.push(p);
                }
            }
            let root_from = all_places.iter().map(|p| roots_by_join(&tree, p)).collect();
            docs.push(Doc {
                root_from,
                mapping: Arc::new(m.clone()),
                tree,
                doc,
                places,
                all_places,
                direct: HashMap::new(),
                upward: HashMap::new(),
            });
        }
        if docs.is_empty() {
            return Ok(None);
        }
        Ok(Some(NestedStream {
            docs,
            pg_cfg,
            pg: Some(pg),
            types: source::TypeCatalog::new(),
            opts: source::ValueOptions::default(),
            dead_letter_index,
            open: Vec::new(),
            xids: Vec::new(),
            jobs: VecDeque::new(),
            commit_time: Utc::now(),
            dual: None,
        }))
    }

    /// Write rebuilt documents to the build index of a reindex too.
    pub fn with_reindexes(mut self, dual: crate::stream::dual_write::DualWrite) -> Self {
        self.dual = Some(dual);
        self
    }

    /// A transaction begins: touches of one left open (the reader
    /// reconnected; it will be delivered again) are forgotten.
    pub fn begin(&mut self) {
        self.open.clear();
    }

    /// Note what `change` (of the open transaction) touches.
    pub fn note(&mut self, change: &Change) {
        let rel = &change.relation;
        let q = rel.qualified_name();
        for (d, doc) in self.docs.iter().enumerate() {
            let Some(places) = doc.places.get(&q) else {
                continue;
            };
            let rows: Vec<&Row> = match &change.kind {
                ChangeKind::Insert { new } => vec![new],
                ChangeKind::Update { old, new } => {
                    let mut r = vec![new];
                    r.extend(old.as_ref().map(OldRow::row));
                    r
                }
                ChangeKind::Delete { old } => vec![old.row()],
                ChangeKind::Truncate => {
                    tracing::error!(table = %q, mapping = %doc.mapping.name, "TRUNCATE of a table of a nested mapping: its documents are not rebuilt; run `sluice snapshot --reindex`");
                    continue;
                }
            };
            for (p, cols) in places {
                let Some(pos) = cols
                    .iter()
                    .map(|c| rel.column_index(c))
                    .collect::<Option<Vec<_>>>()
                else {
                    tracing::warn!(table = %q, mapping = %doc.mapping.name, "a join column is gone from the table; its change cannot name its documents");
                    continue;
                };
                for row in &rows {
                    let Some(values) = pos
                        .iter()
                        .map(|&i| row.get(i).and_then(text))
                        .collect::<Option<Vec<_>>>()
                    else {
                        continue; // a NULL join value joins nothing
                    };
                    let root = doc.all_places[*p].path.is_empty();
                    self.open.push(match &doc.root_from[*p] {
                        _ if root => Touch::Root(d, values),
                        Some(order) => {
                            Touch::Root(d, order.iter().map(|&i| values[i].clone()).collect())
                        }
                        None => Touch::Up(d, *p, values),
                    });
                }
            }
        }
    }

    /// The open transaction committed at `version`: its touches join the
    /// batch. Whether it touched anything.
    pub fn commit(&mut self, version: Lsn, xid: u32, commit_time: DateTime<Utc>) -> bool {
        if self.open.is_empty() {
            return false;
        }
        for t in self.open.drain(..) {
            match t {
                Touch::Root(d, k) => {
                    self.docs[d].direct.insert(k, version);
                }
                Touch::Up(d, p, v) => {
                    self.docs[d].upward.insert((p, v), version);
                }
            }
        }
        self.xids.push(xid);
        self.commit_time = commit_time;
        true
    }

    /// Whether a rebuild is due (something committed since the last one).
    pub fn due(&self) -> bool {
        !self.xids.is_empty() || !self.jobs.is_empty()
    }

    /// Turn the batch's touches into jobs, after waiting until every
    /// touching transaction is visible to a new statement.
    async fn plan(&mut self) -> Result<(), SourceError> {
        let xids = std::mem::take(&mut self.xids);
        let client = self.client().await?;
        let give_up = tokio::time::Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(1);
        while !sql::all_visible(&client, &xids).await? {
            if tokio::time::Instant::now() >= give_up {
                return Err(SourceError::Protocol(format!(
                    "transactions {xids:?}, delivered as committed, are still not visible after {PATIENCE:?}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        for (d, doc) in self.docs.iter_mut().enumerate() {
            let direct: Vec<(RootKey, Lsn)> = doc.direct.drain().collect();
            for chunk in direct.chunks(READ_PAGE) {
                self.jobs.push_back(Job::Read {
                    doc: d,
                    keys: chunk.to_vec(),
                });
            }
            // One query per page of join values of a place, whatever
            // transactions they came from. The roots found are written with
            // the newest of those versions: their documents are read after
            // every transaction of the batch is visible, so their content
            // is at least that new, and any later change has a later commit.
            let mut by_place: HashMap<usize, Vec<(Vec<String>, Lsn)>> = HashMap::new();
            for ((p, v), version) in doc.upward.drain() {
                by_place.entry(p).or_default().push((v, version));
            }
            for (place, values) in by_place {
                for chunk in values.chunks(VALUES_PAGE) {
                    self.jobs.push_back(Job::Find {
                        doc: d,
                        place,
                        values: chunk.iter().map(|(v, _)| v.clone()).collect(),
                        version: chunk.iter().map(|(_, l)| *l).max().unwrap_or(Lsn(0)),
                        after: None,
                    });
                }
            }
        }
        Ok(())
    }

    async fn client(&mut self) -> Result<Arc<tokio_postgres::Client>, SourceError> {
        if let Some(c) = &self.pg
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(source::connect_sql(&self.pg_cfg).await?);
        self.pg = Some(c.clone());
        Ok(c)
    }

    /// The next page of rebuilt documents, `None` when the batch is done.
    /// A lost connection is retried (the page is read again) for up to
    /// two minutes; what remains fails the pipeline, which then replays.
    pub async fn next_page(&mut self) -> Result<Option<Page>, StepError> {
        let give_up = tokio::time::Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(100);
        loop {
            let attempt = async {
                if !self.xids.is_empty() {
                    self.plan().await?;
                }
                self.page().await
            };
            match attempt.await {
                Ok(p) => return Ok(p),
                Err(e) if source::is_retryable(&e) && tokio::time::Instant::now() < give_up => {
                    tracing::warn!(error = %e, "rebuilding nested documents: retrying");
                    self.pg = None;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(StepError::Refetch {
                        table: "nested documents".into(),
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    async fn page(&mut self) -> Result<Option<Page>, SourceError> {
        let Some(job) = self.jobs.pop_front() else {
            return Ok(None);
        };
        let client = self.client().await?;
        let (d, keys) = match job {
            Job::Read { doc, keys } => (doc, keys),
            Job::Find {
                doc,
                place,
                values,
                version,
                after,
            } => {
                let tree = self.docs[doc].tree.clone();
                let p = &self.docs[doc].all_places[place];
                let found =
                    match sql::find_roots(&client, &tree, p, &values, after.as_ref(), FIND_PAGE)
                        .await
                    {
                        Ok(f) => f,
                        Err(e) => {
                            self.jobs.push_front(Job::Find {
                                doc,
                                place,
                                values,
                                version,
                                after,
                            });
                            return Err(e);
                        }
                    };
                if found.len() == FIND_PAGE {
                    let after = found.last().cloned();
                    self.jobs.push_front(Job::Find {
                        doc,
                        place,
                        values,
                        version,
                        after,
                    });
                }
                (doc, found.into_iter().map(|k| (k, version)).collect())
            }
        };
        let page = self.rebuild(&client, d, &keys).await;
        if page.is_err() {
            self.jobs.push_front(Job::Read { doc: d, keys });
        }
        page.map(Some)
    }

    /// Read `keys`' documents and make their ops: an index for each root
    /// found, a delete for each gone, a dead letter for one that fails.
    async fn rebuild(
        &mut self,
        client: &tokio_postgres::Client,
        d: usize,
        keys: &[(RootKey, Lsn)],
    ) -> Result<Page, SourceError> {
        let doc = &mut self.docs[d];
        let roots: Vec<RootKey> = keys.iter().map(|(k, _)| k.clone()).collect();
        let conv = sql::converter(&self.types, &self.opts);
        let rows = sql::read_documents(client, &doc.tree, &roots, &conv).await?;
        let key_pos: Vec<usize> = doc
            .tree
            .root
            .key
            .iter()
            .filter_map(|k| doc.tree.root.columns.iter().position(|c| &c.name == k))
            .collect();
        let versions: HashMap<&RootKey, Lsn> = keys.iter().map(|(k, v)| (k, *v)).collect();
        let mut ops = Vec::with_capacity(keys.len());
        let mut seen = std::collections::HashSet::new();
        let mut lsn = Lsn(0);
        for row in rows {
            let key: Option<RootKey> = key_pos.iter().map(|&i| text(&row[i])).collect();
            let Some(key) = key else { continue };
            let Some(&version) = versions.get(&key) else {
                continue;
            };
            lsn = lsn.max(version);
            if let Err(e) = doc.doc.index(row, version, self.commit_time, &mut ops) {
                let r = RejectedRow {
                    mapping: doc.mapping.name.clone(),
                    index: doc.mapping.index_pattern(),
                    table: doc.mapping.qualified_table.clone(),
                    change: "update",
                    key: serde_json::json!(key).to_string(),
                    lsn: version,
                    kind: e.kind(),
                    reason: e.to_string(),
                    row: serde_json::json!(key),
                    old_row: None,
                };
                tracing::error!(mapping = %r.mapping, key = %r.key, reason = %r.reason, "a nested document cannot be built; storing it as a dead letter and going on");
                ops.push(dead_letter::rejected_row_op(&r, &self.dead_letter_index));
            }
            seen.insert(key);
        }
        for (key, version) in keys.iter().filter(|(k, _)| !seen.contains(k)) {
            lsn = lsn.max(*version);
            if let Err(e) = doc.doc.delete(key, *version, self.commit_time, &mut ops) {
                tracing::error!(mapping = %doc.mapping.name, error = %e, "deleting a nested document");
            }
        }
        if let Some(dual) = &self.dual {
            dual.copy_rebuilt(&mut ops);
        }
        Ok(Page {
            ops,
            table: doc.mapping.qualified_table.clone(),
            roots: keys.len() as u64,
            lsn,
        })
    }
}
