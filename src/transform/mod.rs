//! The transform layer: a pure function from a `Change` and the mappings to
//! bulk operations (`index` with the full document, or `delete`).
//!
//! Rule: transform is pure and imports only `model` (its input and output)
//! and `config` (the mappings). It opens no connection, runs no SQL, calls
//! no Elasticsearch API and never sees source or sink types; re-reading a
//! row it cannot complete is the caller's job (`stream`).
//!
//! It keeps DESIGN invariant 6: an unchanged TOAST value never becomes a null
//! or a placeholder in a document. When the new row has an unchanged value a
//! mapping needs and no full old row supplies it, the whole change fails with
//! [`TransformError::NeedsFullRow`] and nothing is emitted, so the pipeline
//! re-reads the row.
//!
//! Rules, per mapping of the changed table:
//! - insert → index (or delete, if the soft-delete column is set);
//! - update → the same; and if the document's location (`_id`, index or
//!   routing) moved — the key changed, or with REPLICA IDENTITY FULL a
//!   templated index / routing column changed — delete at the old location
//!   first (skipped with `on_delete = "ignore"`);
//! - delete → delete (nothing with `on_delete = "ignore"`). Row-filter
//!   transitions need nothing special: PostgreSQL sends a row leaving the
//!   filter as a delete and a row entering it as an insert;
//! - truncate → `on_truncate`: `log` (default) emits nothing and logs an
//!   error, `fail` returns [`TransformError::Truncated`]. A bulk request
//!   cannot delete "all documents of a table"; re-snapshot to clean up.
//!
//! `_id` is the primary key's values (or the `id` columns) as text, joined
//! with `|` (`id_separator`), after `id_prefix`.

mod convert;
pub mod nested;
mod plan;
pub mod versions;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{Mapping, Mappings, OnDelete, OnTruncate};
use crate::model::{BulkOp, Change, ChangeKind, Datum, OldRow, OpAction, OpOrigin, Relation, Row};
use convert::{push_text, write_converted, write_json_str, write_value};
use plan::{IndexPlan, Leaf, Node, PartPlan, Plan};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// The new row lacks an unchanged TOAST value the mapping needs and no
    /// full old row supplies it: re-read the row by `key` and transform
    /// that instead. Nothing was emitted for this change.
    #[error(
        "{table} row {key}: column `{column}` is an unchanged TOAST value that mapping `{mapping}` needs; the row must be read again"
    )]
    NeedsFullRow {
        table: Arc<str>,
        mapping: Arc<str>,
        column: String,
        /// The key columns and values, as a JSON object.
        key: Value,
    },
    #[error("{table}: mapping `{mapping}` uses column `{column}`, which the table no longer has")]
    MissingColumn {
        table: Arc<str>,
        mapping: Arc<str>,
        column: String,
    },
    #[error(
        "{table}: mapping `{mapping}` has no `_id` columns (no primary key known); set `id` in the mapping"
    )]
    NoId { table: Arc<str>, mapping: Arc<str> },
    #[error("{table}: mapping `{mapping}`: {reason}")]
    Plan {
        table: Arc<str>,
        mapping: Arc<str>,
        reason: String,
    },
    #[error("{table} row {key}: `_id` column `{column}` for mapping `{mapping}` is NULL")]
    NullId {
        table: Arc<str>,
        mapping: Arc<str>,
        column: String,
        key: Value,
    },
    #[error(
        "{table} row {key}: the old row does not carry column `{column}`, needed by mapping `{mapping}` to find the document (use REPLICA IDENTITY FULL)"
    )]
    MissingOldValue {
        table: Arc<str>,
        mapping: Arc<str>,
        column: String,
        key: Value,
    },
    #[error("{table} row {key}: column `{column}` for mapping `{mapping}`: {reason}")]
    Convert {
        table: Arc<str>,
        mapping: Arc<str>,
        column: String,
        reason: String,
        key: Value,
    },
    #[error("{table} was truncated and mapping `{mapping}` has `on_truncate = \"fail\"`")]
    Truncated { table: Arc<str>, mapping: Arc<str> },
}

/// What a transform failure belongs to, which decides what the stream does
/// with it (see [`TransformError::scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureScope {
    /// This row's values cannot make a document for this mapping (bad text
    /// for a conversion, a NULL `_id` column, an old row too thin to find
    /// the document). Other rows are fine: dead-letter this one and go on.
    Row,
    /// The mapping cannot work with the table as it is now (a column it
    /// needs is gone, no `_id` columns) or the user asked to stop
    /// (`on_truncate = "fail"`): every row would fail the same way, so stop
    /// and let the user fix the mapping; the restart replays the change.
    Mapping,
}

impl TransformError {
    /// The one place that decides whether a failure is the row's (dead
    /// letter) or the mapping's (stop). `NeedsFullRow` is a row's: it only
    /// escapes the transform step when the re-read could not fill the row.
    pub fn scope(&self) -> FailureScope {
        match self {
            TransformError::NeedsFullRow { .. }
            | TransformError::NullId { .. }
            | TransformError::MissingOldValue { .. }
            | TransformError::Convert { .. } => FailureScope::Row,
            TransformError::MissingColumn { .. }
            | TransformError::NoId { .. }
            | TransformError::Plan { .. }
            | TransformError::Truncated { .. } => FailureScope::Mapping,
        }
    }

    /// The mapping that failed.
    pub fn mapping(&self) -> &Arc<str> {
        match self {
            TransformError::NeedsFullRow { mapping, .. }
            | TransformError::MissingColumn { mapping, .. }
            | TransformError::NoId { mapping, .. }
            | TransformError::Plan { mapping, .. }
            | TransformError::NullId { mapping, .. }
            | TransformError::MissingOldValue { mapping, .. }
            | TransformError::Convert { mapping, .. }
            | TransformError::Truncated { mapping, .. } => mapping,
        }
    }

    /// The row's `_id` columns and values, where the failure knows them.
    pub fn key(&self) -> Option<&Value> {
        match self {
            TransformError::NeedsFullRow { key, .. }
            | TransformError::NullId { key, .. }
            | TransformError::MissingOldValue { key, .. }
            | TransformError::Convert { key, .. } => Some(key),
            TransformError::MissingColumn { .. }
            | TransformError::NoId { .. }
            | TransformError::Plan { .. }
            | TransformError::Truncated { .. } => None,
        }
    }

    /// A short name of the failure, for dead letters and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformError::NeedsFullRow { .. } => "unchanged_toast",
            TransformError::MissingColumn { .. } => "missing_column",
            TransformError::NoId { .. } => "no_id",
            TransformError::Plan { .. } => "plan",
            TransformError::NullId { .. } => "null_id",
            TransformError::MissingOldValue { .. } => "missing_old_value",
            TransformError::Convert { .. } => "convert",
            TransformError::Truncated { .. } => "truncated",
        }
    }
}

/// Why a value could not be read.
enum Miss {
    Unchanged(usize),
    NotInOld(usize),
    Convert(usize, String),
    NullId(usize),
}

static NULL: Value = Value::Null;

/// Where to read column values: the new row (holes filled from a full old
/// row), or the old row (non-key columns of a key-only old row taken from
/// the new row when there is one, since they did not change it).
#[derive(Clone, Copy)]
enum View<'a> {
    New {
        new: &'a Row,
        old_full: Option<&'a Row>,
    },
    Old {
        old: &'a OldRow,
        rel: &'a Relation,
        new: Option<&'a Row>,
    },
}

fn datum(d: &Datum) -> Option<&Value> {
    match d {
        Datum::Null => Some(&NULL),
        Datum::Value(v) => Some(v),
        Datum::Unchanged => None,
    }
}

impl<'a> View<'a> {
    fn get(self, pos: usize) -> Result<&'a Value, Miss> {
        let from = |row: Option<&'a Row>| row.and_then(|r| r.get(pos)).and_then(datum);
        match self {
            View::New { new, old_full } => from(Some(new))
                .or_else(|| from(old_full))
                .ok_or(Miss::Unchanged(pos)),
            View::Old { old, rel, new } => match old {
                OldRow::Full(r) => from(Some(r))
                    .or_else(|| from(new))
                    .ok_or(Miss::Unchanged(pos)),
                OldRow::Key(r) if rel.columns.get(pos).is_some_and(|c| c.is_key) => {
                    from(Some(r)).ok_or(Miss::NotInOld(pos))
                }
                OldRow::Key(_) => from(new).ok_or(Miss::NotInOld(pos)),
            },
        }
    }
}

/// Where a document lives.
#[derive(PartialEq)]
struct Location {
    index: Arc<str>,
    id: String,
    routing: Option<String>,
}

struct RelEntry {
    rel: Arc<Relation>,
    table: Arc<str>,
    plans: Result<Vec<Plan>, TransformError>,
}

/// Turns changes into bulk operations. Holds per-relation plans and index
/// name caches, hence `&mut self`; otherwise a pure function of its input.
///
/// Mappings name tables, but PostgreSQL identifies a relation by its OID and
/// a Relation message carries the name the table had at that WAL position.
/// So a relation matched to a mapping once (or whose OID the caller knew at
/// start, [`Transformer::with_relation_ids`]) stays matched by OID: a
/// renamed table keeps being indexed instead of its changes being confirmed
/// as "not mapped" (issue 14, case 9).
pub struct Transformer {
    by_table: HashMap<String, Vec<Arc<Mapping>>>,
    relations: HashMap<u32, RelEntry>,
    /// Relation OID → the mapped table name (a key of `by_table`) it was
    /// matched to.
    matched: HashMap<u32, String>,
    doc_hint: usize,
    scratch: String,
    times: TimeCache,
    /// Nested mappings, fed rows read with their related rows (relation
    /// id 0), never the stream's changes directly.
    nested: Vec<Result<nested::NestedDoc, TransformError>>,
}

impl Transformer {
    pub fn new(mappings: &Mappings) -> Transformer {
        let mut by_table: HashMap<String, Vec<Arc<Mapping>>> = HashMap::new();
        let mut nested = Vec::new();
        for m in &mappings.list {
            if m.is_nested() {
                nested.push(nested::NestedDoc::new(m));
                continue;
            }
            by_table
                .entry(m.qualified_table.to_string())
                .or_default()
                .push(Arc::new(m.clone()));
        }
        Transformer {
            by_table,
            relations: HashMap::new(),
            matched: HashMap::new(),
            doc_hint: 256,
            scratch: String::new(),
            times: TimeCache::default(),
            nested,
        }
    }

    /// Seed the OID matching with the mapped tables' OIDs as they are now
    /// (`oid → schema.table`), so changes replayed from before a rename,
    /// whose Relation messages still carry the old name, find their mapping.
    pub fn with_relation_ids(mut self, ids: impl IntoIterator<Item = (u32, String)>) -> Self {
        for (oid, table) in ids {
            if self.by_table.contains_key(&table) {
                self.matched.insert(oid, table);
            }
        }
        self
    }

    /// Whether any mapping reads `schema.table`.
    pub fn maps_table(&self, qualified: &str) -> bool {
        self.by_table.contains_key(qualified)
    }

    /// Append the ops for `change` to `out` and return how many. On error
    /// nothing is appended (all mappings of the change, or none).
    pub fn transform(
        &mut self,
        change: &Change,
        out: &mut Vec<BulkOp>,
    ) -> Result<usize, TransformError> {
        let mut rejected = Vec::new();
        let start = out.len();
        let n = self.transform_rows(change, out, &mut rejected)?;
        match rejected.into_iter().next() {
            Some(e) => {
                out.truncate(start);
                Err(e)
            }
            None => Ok(n),
        }
    }

    /// Like [`Transformer::transform`], but a mapping that fails on this
    /// row for a reason of the row ([`FailureScope::Row`]) only drops its
    /// own ops: its error goes to `rejected` and the other mappings' ops
    /// stay in `out`. Errors that are returned (an unchanged TOAST value to
    /// re-read, or a failure of the mapping itself) leave `out` and
    /// `rejected` as they were.
    pub fn transform_rows(
        &mut self,
        change: &Change,
        out: &mut Vec<BulkOp>,
        rejected: &mut Vec<TransformError>,
    ) -> Result<usize, TransformError> {
        let start = out.len();
        let rejected_before = rejected.len();
        let rel = &change.relation;
        if rel.id == 0 {
            return match self.transform_nested(change, out) {
                Err(e) if e.scope() == FailureScope::Row => {
                    out.truncate(start);
                    rejected.push(e);
                    Ok(0)
                }
                other => other,
            };
        }
        let fresh = match self.relations.get_mut(&rel.id) {
            Some(e) if Arc::ptr_eq(&e.rel, rel) => false,
            Some(e) if *e.rel == **rel => {
                e.rel = rel.clone();
                false
            }
            _ => true,
        };
        if fresh {
            let entry = self.entry_for(rel);
            self.relations.insert(rel.id, entry);
        }
        let entry = self.relations.get_mut(&rel.id).expect("just inserted");
        let plans = match &mut entry.plans {
            Ok(p) => p,
            Err(e) => return Err(e.clone()),
        };
        let mut cx = Cx {
            change,
            table: &entry.table,
            scratch: &mut self.scratch,
            doc_hint: &mut self.doc_hint,
            times: &mut self.times,
        };
        for plan in plans.iter_mut() {
            let before = out.len();
            match cx.apply(plan, out) {
                Ok(()) => {}
                Err(e)
                    if e.scope() == FailureScope::Row
                        && !matches!(e, TransformError::NeedsFullRow { .. }) =>
                {
                    out.truncate(before);
                    rejected.push(e);
                }
                Err(e) => {
                    out.truncate(start);
                    rejected.truncate(rejected_before);
                    return Err(e);
                }
            }
        }
        Ok(out.len() - start)
    }

    /// Plans for a relation seen for the first time or changed: its
    /// mappings by name, else by the OID it was matched to before.
    fn entry_for(&mut self, rel: &Arc<Relation>) -> RelEntry {
        let table: Arc<str> = rel.qualified_name().into();
        let key = if self.by_table.contains_key(&*table) {
            self.matched.insert(rel.id, table.to_string());
            Some(table.to_string())
        } else {
            let followed = self.matched.get(&rel.id).cloned();
            if let Some(mapped) = &followed {
                tracing::warn!(
                    relation_oid = rel.id,
                    mapped_table = %mapped,
                    table = %table,
                    "a mapped table is now called {table}: following it by its relation id; \
                     change `table` in its mapping to \"{table}\" before the next restart"
                );
            }
            followed
        };
        let plans = key
            .and_then(|k| self.by_table.get(&k))
            .map(|ms| {
                ms.iter()
                    .map(|m| Plan::build(m.clone(), rel))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_else(|| Ok(Vec::new()));
        RelEntry {
            rel: rel.clone(),
            table,
            plans,
        }
    }
}

struct Cx<'a> {
    change: &'a Change,
    table: &'a Arc<str>,
    scratch: &'a mut String,
    doc_hint: &'a mut usize,
    times: &'a mut TimeCache,
}

impl Cx<'_> {
    fn apply(&mut self, plan: &mut Plan, out: &mut Vec<BulkOp>) -> Result<(), TransformError> {
        let rel = &*self.change.relation;
        match &self.change.kind {
            ChangeKind::Insert { new } => {
                let v = View::New {
                    new,
                    old_full: None,
                };
                self.upsert(plan, v, out)
                    .map_err(|m| self.error(plan, v, m))
            }
            ChangeKind::Update { old, new } => {
                let old_full = match old {
                    Some(OldRow::Full(r)) => Some(r),
                    _ => None,
                };
                let nv = View::New { new, old_full };
                if let Some(old) = old
                    && plan.mapping.on_delete == OnDelete::Delete
                {
                    let ov = View::Old {
                        old,
                        rel,
                        new: Some(new),
                    };
                    let before = self.locate(plan, ov).map_err(|m| self.error(plan, ov, m))?;
                    let after = self.locate(plan, nv).map_err(|m| self.error(plan, nv, m))?;
                    if before != after {
                        out.push(self.op(plan, ov, before, OpAction::Delete));
                    }
                }
                self.upsert(plan, nv, out)
                    .map_err(|m| self.error(plan, nv, m))
            }
            ChangeKind::Delete { old } => {
                if plan.mapping.on_delete == OnDelete::Ignore {
                    return Ok(());
                }
                let ov = View::Old {
                    old,
                    rel,
                    new: None,
                };
                let loc = self.locate(plan, ov).map_err(|m| self.error(plan, ov, m))?;
                out.push(self.op(plan, ov, loc, OpAction::Delete));
                Ok(())
            }
            ChangeKind::Truncate => match plan.mapping.on_truncate {
                OnTruncate::Log => {
                    tracing::error!(
                        table = %self.table,
                        mapping = %plan.mapping.name,
                        index = %plan.mapping.index_pattern(),
                        "TRUNCATE received: its documents stay in Elasticsearch; run `sluice snapshot --reindex` to rebuild the index"
                    );
                    Ok(())
                }
                OnTruncate::Fail => Err(TransformError::Truncated {
                    table: self.table.clone(),
                    mapping: plan.mapping.name.clone(),
                }),
            },
        }
    }

    fn upsert(&mut self, plan: &mut Plan, v: View, out: &mut Vec<BulkOp>) -> Result<(), Miss> {
        let loc = self.locate(plan, v)?;
        if let Some(p) = plan.soft_delete {
            let flag = v.get(p)?;
            if !matches!(flag, Value::Null | Value::Bool(false)) {
                out.push(self.op(plan, v, loc, OpAction::Delete));
                return Ok(());
            }
        }
        let mut doc = Vec::with_capacity(*self.doc_hint);
        self.write_doc(plan, v, &mut doc)?;
        *self.doc_hint = (*self.doc_hint).max(doc.len() + 16);
        out.push(self.op(plan, v, loc, OpAction::Index { doc }));
        Ok(())
    }

    fn op(&self, plan: &Plan, v: View, loc: Location, action: OpAction) -> BulkOp {
        BulkOp {
            action,
            index: loc.index,
            id: loc.id,
            routing: loc.routing,
            pipeline: plan.mapping.pipeline.clone(),
            version: self.change.version.as_version(),
            origin: OpOrigin {
                table: self.table.clone(),
                key: key_text(plan, v),
                lsn: self.change.version,
            },
        }
    }

    fn locate(&mut self, plan: &mut Plan, v: View) -> Result<Location, Miss> {
        let m = &plan.mapping;
        let mut id = String::with_capacity(m.id_prefix.len() + 16);
        id.push_str(&m.id_prefix);
        for (i, (p, _)) in plan.id_cols.iter().enumerate() {
            if i > 0 {
                id.push_str(&m.id_separator);
            }
            let val = v.get(*p)?;
            if val.is_null() {
                return Err(Miss::NullId(*p));
            }
            push_text(&mut id, val);
        }
        let routing = match plan.routing {
            Some(p) => match v.get(p)? {
                Value::Null => None,
                val => {
                    let mut s = String::new();
                    push_text(&mut s, val);
                    Some(s)
                }
            },
            None => None,
        };
        let index = match &mut plan.index {
            IndexPlan::Fixed(n) => n.clone(),
            IndexPlan::Template { parts, cache } => {
                self.scratch.clear();
                render(parts, v, self.change.commit_time, self.times, self.scratch)?;
                // Keyed by the rendered text, so a hit allocates nothing.
                match cache.get(self.scratch.as_str()) {
                    Some(a) => a.clone(),
                    None => {
                        if cache.len() > 10_000 {
                            cache.clear();
                        }
                        let a: Arc<str> = self.scratch.to_lowercase().into();
                        cache.insert(self.scratch.as_str().into(), a.clone());
                        a
                    }
                }
            }
        };
        Ok(Location { index, id, routing })
    }

    fn write_doc(&mut self, plan: &Plan, v: View, buf: &mut Vec<u8>) -> Result<(), Miss> {
        buf.push(b'{');
        let mut first = true;
        for (k, node) in &plan.doc {
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.extend_from_slice(k);
            self.write_node(node, v, buf)?;
        }
        for &p in &plan.merges {
            match v.get(p)? {
                Value::Null => {}
                Value::Object(map) => {
                    for (k, val) in map {
                        if plan.root_keys.iter().any(|r| r == k) {
                            continue;
                        }
                        if !first {
                            buf.push(b',');
                        }
                        first = false;
                        write_json_str(buf, k);
                        buf.push(b':');
                        write_value(buf, val);
                    }
                }
                other => {
                    return Err(Miss::Convert(
                        p,
                        format!("`merge` needs a JSON object, got {other}"),
                    ));
                }
            }
        }
        buf.push(b'}');
        Ok(())
    }

    fn write_node(&mut self, node: &Node, v: View, buf: &mut Vec<u8>) -> Result<(), Miss> {
        match node {
            Node::Object(children) => {
                buf.push(b'{');
                for (i, (k, child)) in children.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(k);
                    self.write_node(child, v, buf)?;
                }
                buf.push(b'}');
            }
            Node::Leaf(Leaf::Column(p, conv)) => {
                write_converted(buf, v.get(*p)?, conv).map_err(|e| Miss::Convert(*p, e))?
            }
            Node::Leaf(Leaf::Constant(bytes)) => buf.extend_from_slice(bytes),
            Node::Leaf(Leaf::Template(parts)) => {
                self.scratch.clear();
                render(parts, v, self.change.commit_time, self.times, self.scratch)?;
                write_json_str(buf, self.scratch);
            }
        }
        Ok(())
    }

    fn error(&self, plan: &Plan, v: View, miss: Miss) -> TransformError {
        let rel = &self.change.relation;
        let name = |p: usize| {
            rel.columns
                .get(p)
                .map(|c| c.name.clone())
                .unwrap_or_default()
        };
        let table = self.table.clone();
        let key = key_json(plan, v);
        match miss {
            Miss::Unchanged(p) => TransformError::NeedsFullRow {
                table,
                mapping: plan.mapping.name.clone(),
                column: name(p),
                key,
            },
            Miss::NotInOld(p) => TransformError::MissingOldValue {
                table,
                mapping: plan.mapping.name.clone(),
                column: name(p),
                key,
            },
            Miss::NullId(p) => TransformError::NullId {
                table,
                mapping: plan.mapping.name.clone(),
                column: name(p),
                key,
            },
            Miss::Convert(p, reason) => TransformError::Convert {
                table,
                mapping: plan.mapping.name.clone(),
                column: name(p),
                reason,
                key,
            },
        }
    }
}

/// A row as a JSON object, column name → value, for a dead letter that
/// must carry the values the transform could not use. Unchanged TOAST
/// values are left out (PostgreSQL did not send them).
pub fn row_values(rel: &Relation, row: &Row) -> Value {
    Value::Object(
        rel.columns
            .iter()
            .zip(row)
            .filter_map(|(c, d)| datum(d).map(|v| (c.name.clone(), v.clone())))
            .collect(),
    )
}

/// `key_json` as compact text, written directly (this runs for every op).
fn key_text(plan: &Plan, v: View) -> String {
    let mut buf = Vec::with_capacity(32);
    buf.push(b'{');
    for (i, (p, n)) in plan.id_cols.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_json_str(&mut buf, n);
        buf.push(b':');
        write_value(&mut buf, v.get(*p).unwrap_or(&NULL));
    }
    buf.push(b'}');
    String::from_utf8(buf).expect("JSON text is UTF-8")
}

/// The row's `_id` columns and values (`{"id": 7}`), for origins and errors.
fn key_json(plan: &Plan, v: View) -> Value {
    Value::Object(
        plan.id_cols
            .iter()
            .map(|(p, n)| (n.clone(), v.get(*p).cloned().unwrap_or(Value::Null)))
            .collect(),
    )
}

/// Formatted commit times, per format. Changes of one transaction share a
/// commit time, and strftime costs more than the rest of a row.
#[derive(Default)]
struct TimeCache {
    entries: Vec<(String, DateTime<Utc>, String)>,
}

impl TimeCache {
    fn get(&mut self, fmt: &str, t: DateTime<Utc>) -> &str {
        let i = match self.entries.iter().position(|e| e.0 == fmt) {
            Some(i) => i,
            None => {
                self.entries
                    .push((fmt.to_string(), t, t.format(fmt).to_string()));
                return &self.entries.last().expect("just pushed").2;
            }
        };
        let e = &mut self.entries[i];
        if e.1 != t {
            e.1 = t;
            e.2.clear();
            let _ = write!(e.2, "{}", t.format(fmt));
        }
        &e.2
    }
}

fn render(
    parts: &[PartPlan],
    v: View,
    commit_time: DateTime<Utc>,
    times: &mut TimeCache,
    out: &mut String,
) -> Result<(), Miss> {
    for part in parts {
        match part {
            PartPlan::Literal(l) => out.push_str(l),
            PartPlan::Column(p) => push_text(out, v.get(*p)?),
            PartPlan::CommitTime(f) => out.push_str(times.get(f, commit_time)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
