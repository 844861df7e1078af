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

use crate::config::{Mapping, Mappings, OnTruncate};
use crate::model::{
    BulkOp, Change, ChangeKind, Datum, DocTree, Lsn, OldRow, Place, RejectedRow, Row,
};
use crate::sink::dead_letter;
use crate::source::nested::{self as sql, RootKey};
use crate::source::{self, SourceError};
use crate::stream::dual_write::DualWrite;
use crate::stream::transform_step::StepError;
use crate::transform::TransformError;
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
    /// A related table was truncated in the batch: every root is rebuilt,
    /// at the latest such version.
    every: Option<Lsn>,
    /// A reindex's mapping: (alias, build index) its documents go to
    /// instead of the alias. `None` for a mapping this process loaded.
    target: Option<(Arc<str>, Arc<str>)>,
    /// The reindex ended: its pending work is dropped (its build index
    /// may be gone, and a write would create it again).
    retired: bool,
}

/// What the open transaction touched: (doc, place or root, values).
enum Touch {
    Root(usize, RootKey),
    Up(usize, usize, Vec<String>),
    Every(usize),
}

/// Which roots a find job pages through (see [`sql::Scope`]).
enum Finding {
    Above {
        place: usize,
        values: Vec<Vec<String>>,
    },
    Every,
}

/// A unit of rebuild work: a page of known roots, or roots still to find.
enum Job {
    Read {
        doc: usize,
        keys: Vec<(RootKey, Lsn)>,
    },
    Find {
        doc: usize,
        finding: Finding,
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
    /// Reindexes in progress: their nested mappings' documents are
    /// rebuilt for their build index too.
    dual: Option<DualWrite>,
    /// The generation of the reindex routes `docs` follows.
    routes_seen: u64,
}

impl Doc {
    fn new(
        mapping: Arc<Mapping>,
        target: Option<(Arc<str>, Arc<str>)>,
    ) -> Result<Doc, TransformError> {
        let doc = NestedDoc::new(&mapping)?;
        let tree = mapping.tree.clone().expect("bound with the doc");
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
        Ok(Doc {
            root_from,
            mapping,
            tree,
            doc,
            places,
            all_places,
            direct: HashMap::new(),
            upward: HashMap::new(),
            every: None,
            target,
            retired: false,
        })
    }
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
    /// The nested mappings of `mappings` (there may be none: a reindex
    /// can bring one).
    pub fn new(
        mappings: &Mappings,
        pg_cfg: source::PgConnectConfig,
        pg: Arc<tokio_postgres::Client>,
        dead_letter_index: Arc<str>,
    ) -> Result<NestedStream, StepError> {
        let docs = mappings
            .list
            .iter()
            .filter(|m| m.is_nested())
            .map(|m| Doc::new(Arc::new(m.clone()), None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StepError::Mapping(Box::new(e)))?;
        Ok(NestedStream {
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
            routes_seen: 0,
        })
    }

    /// Follow reindexes: a reindex's nested mapping gets documents of its
    /// own, rebuilt for its build index from the same touches.
    pub fn with_reindexes(mut self, dual: DualWrite) -> Self {
        self.dual = Some(dual);
        self
    }

    /// Take the reindex routes in effect for a change at `version`: a new
    /// route's mapping starts noting touches from this change on, an ended
    /// one's documents retire.
    fn follow_routes(&mut self, version: Lsn) -> Result<(), TransformError> {
        let Some((generation, routes)) = self
            .dual
            .as_ref()
            .and_then(|d| d.observe(version, self.routes_seen))
        else {
            return Ok(());
        };
        self.routes_seen = generation;
        for doc in self.docs.iter_mut() {
            if let Some((_, build)) = &doc.target {
                doc.retired |= !routes
                    .iter()
                    .any(|r| r.build_index == *build && Arc::ptr_eq(&r.mapping, &doc.mapping));
            }
        }
        for r in routes {
            let have = self.docs.iter().any(|d| {
                !d.retired
                    && d.target.as_ref().is_some_and(|(_, b)| *b == r.build_index)
                    && Arc::ptr_eq(&d.mapping, &r.mapping)
            });
            if !have {
                tracing::info!(mapping = %r.mapping.name, build_index = %r.build_index, "rebuilding nested documents for the reindex's build index too");
                let target = Some((r.alias.clone(), r.build_index.clone()));
                self.docs.push(Doc::new(r.mapping, target)?);
            }
        }
        Ok(())
    }

    /// A transaction begins: touches of one left open (the reader
    /// reconnected; it will be delivered again) are forgotten.
    pub fn begin(&mut self) {
        self.open.clear();
    }

    /// Note what `change` (of the open transaction) touches. A TRUNCATE
    /// of a nested mapping's root table follows its `on_truncate` (like a
    /// flat mapping's; `fail` is the error); of a related table it touches
    /// every root, since every document may have held its rows.
    pub fn note(&mut self, change: &Change) -> Result<(), TransformError> {
        self.follow_routes(change.version)?;
        if self.docs.is_empty() {
            return Ok(());
        }
        let rel = &change.relation;
        let q = rel.qualified_name();
        for (d, doc) in self.docs.iter().enumerate() {
            if doc.retired {
                continue;
            }
            let Some(places) = doc.places.get(&q) else {
                continue;
            };
            if matches!(change.kind, ChangeKind::Truncate) {
                let root = places
                    .iter()
                    .any(|(p, _)| doc.all_places[*p].path.is_empty());
                match (root, doc.mapping.on_truncate) {
                    (false, _) => {
                        tracing::warn!(table = %q, mapping = %doc.mapping.name, "TRUNCATE of a table joined into nested documents: rebuilding every document of the mapping");
                        self.open.push(Touch::Every(d));
                    }
                    (true, OnTruncate::Log) => {
                        tracing::error!(table = %q, mapping = %doc.mapping.name, index = %doc.mapping.index_pattern(), "TRUNCATE received: its documents stay in the index; run `sluice snapshot --reindex` to rebuild it");
                    }
                    (true, OnTruncate::Fail) => {
                        return Err(TransformError::Truncated {
                            table: q.into(),
                            mapping: doc.mapping.name.clone(),
                        });
                    }
                }
                continue;
            }
            let rows: Vec<&Row> = match &change.kind {
                ChangeKind::Insert { new } => vec![new],
                ChangeKind::Update { old, new } => {
                    let mut r = vec![new];
                    r.extend(old.as_ref().map(OldRow::row));
                    r
                }
                ChangeKind::Delete { old } => vec![old.row()],
                ChangeKind::Truncate => continue, // handled above
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
        Ok(())
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
                Touch::Every(d) => {
                    self.docs[d].every = Some(version);
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
            if doc.retired {
                doc.direct.clear();
                doc.upward.clear();
                doc.every = None;
                continue;
            }
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
                        finding: Finding::Above {
                            place,
                            values: chunk.iter().map(|(v, _)| v.clone()).collect(),
                        },
                        version: chunk.iter().map(|(_, l)| *l).max().unwrap_or(Lsn(0)),
                        after: None,
                    });
                }
            }
            // Read after every transaction of the batch is visible, like
            // the finds above: the newest truncating version is safe.
            if let Some(version) = doc.every.take() {
                self.jobs.push_back(Job::Find {
                    doc: d,
                    finding: Finding::Every,
                    version,
                    after: None,
                });
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
        let d = match &job {
            Job::Read { doc, .. } | Job::Find { doc, .. } => *doc,
        };
        if self.docs[d].retired {
            return Ok(Some(Page {
                ops: Vec::new(),
                table: self.docs[d].mapping.qualified_table.clone(),
                roots: 0,
                lsn: Lsn(0),
            }));
        }
        let client = self.client().await?;
        let (d, keys) = match job {
            Job::Read { doc, keys } => (doc, keys),
            Job::Find {
                doc,
                finding,
                version,
                after,
            } => {
                let tree = self.docs[doc].tree.clone();
                let scope = match &finding {
                    Finding::Above { place, values } => {
                        sql::Scope::Above(&self.docs[doc].all_places[*place], values)
                    }
                    Finding::Every => sql::Scope::Every,
                };
                let found = sql::find_roots(&client, &tree, scope, after.as_ref(), FIND_PAGE).await;
                // Still to do: this page again after an error, else the
                // pages after it.
                let next = match &found {
                    Err(_) => Some(after),
                    Ok(f) if f.len() == FIND_PAGE => Some(f.last().cloned()),
                    Ok(_) => None,
                };
                if let Some(after) = next {
                    self.jobs.push_front(Job::Find {
                        doc,
                        finding,
                        version,
                        after,
                    });
                }
                let found = found?;
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
                    // Like an op's key: the key columns by name.
                    key: serde_json::Value::Object(
                        doc.tree
                            .root
                            .key
                            .iter()
                            .cloned()
                            .zip(key.iter().map(|v| serde_json::Value::String(v.clone())))
                            .collect(),
                    )
                    .to_string(),
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
        match (&doc.target, &self.dual) {
            (Some((alias, build)), _) => {
                for op in ops.iter_mut().filter(|op| *op.index == **alias) {
                    op.index = build.clone();
                }
            }
            (None, Some(dual)) => dual.drop_switched(&mut ops),
            (None, None) => {}
        }
        Ok(Page {
            ops,
            table: doc.mapping.qualified_table.clone(),
            roots: keys.len() as u64,
            lsn,
        })
    }
}
