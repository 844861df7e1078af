//! Nested documents: a root row read together with its related rows
//! (`source::nested`) → the bulk op for the root's document. Each related
//! row goes through the same plan machinery as a top-level row (include,
//! exclude, rename, fields, conversions, templates), bottom up, and lands
//! in its parent as a JSON object (many-to-one) or an array of them.
//!
//! Like the rest of `transform`, pure: the rows come in read, the ops go
//! out; finding which roots to rebuild and reading them is `stream`'s and
//! `snapshot`'s job.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::plan::Plan;
use super::{Cx, Miss, TimeCache, TransformError, View};
use crate::config::Mapping;
use crate::model::{BulkOp, Change, ChangeKind, Datum, DocNode, Lsn, OldRow, Relation, Row};

impl super::Transformer {
    /// The ops of a nested document read with its related rows (a row of
    /// relation id 0, as `source::nested` and the snapshot read them).
    pub(super) fn transform_nested(
        &mut self,
        change: &Change,
        out: &mut Vec<BulkOp>,
    ) -> Result<usize, TransformError> {
        let before = out.len();
        for doc in &mut self.nested {
            let doc = match doc {
                Ok(d) => d,
                Err(e) => return Err(e.clone()),
            };
            if **doc.relation() != *change.relation {
                continue;
            }
            if let ChangeKind::Insert { new } = &change.kind {
                doc.index(new.clone(), change.version, change.commit_time, out)?;
            }
        }
        Ok(out.len() - before)
    }
}

/// One related table's plan, and its own related tables'.
struct RelPlan {
    field: String,
    plan: Plan,
    /// An array of rows (else one row or null).
    many: bool,
    /// The related table's column names, in read order.
    columns: Vec<String>,
    children: Vec<RelPlan>,
}

/// One nested mapping, bound to the rows `source::nested` reads for it.
pub struct NestedDoc {
    relation: Arc<Relation>,
    plan: Plan,
    children: Vec<RelPlan>,
    w: Writer,
}

/// What writing a document needs besides the plan.
struct Writer {
    table: Arc<str>,
    scratch: String,
    doc_hint: usize,
    times: TimeCache,
}

impl Writer {
    fn cx<'a>(&'a mut self, change: &'a Change) -> Cx<'a> {
        Cx {
            change,
            table: &self.table,
            scratch: &mut self.scratch,
            doc_hint: &mut self.doc_hint,
            times: &mut self.times,
        }
    }
}

/// `m` with its related fields among the copied columns (they are columns
/// of the rows read, named after the field).
fn with_fields(m: &Mapping, fields: &[String]) -> Arc<Mapping> {
    let mut m = m.clone();
    if let Some(inc) = &mut m.include {
        inc.extend(fields.iter().cloned());
    }
    Arc::new(m)
}

fn rel_plans(
    shapes: &[crate::config::RelatedMapping],
    node: &DocNode,
) -> Result<Vec<RelPlan>, TransformError> {
    node.children
        .iter()
        .map(|c| {
            let shape =
                shapes
                    .iter()
                    .find(|s| s.field == c.field)
                    .ok_or_else(|| TransformError::Plan {
                        table: node.table.qualified_name().into(),
                        mapping: c.field.clone().into(),
                        reason: "relation without a shape".into(),
                    })?;
            let fields: Vec<String> = c.node.children.iter().map(|g| g.field.clone()).collect();
            let plan = Plan::build(with_fields(&shape.shape, &fields), &c.node.read_relation())?;
            Ok(RelPlan {
                field: c.field.clone(),
                plan,
                many: c.link.is_many(),
                columns: c.node.columns.iter().map(|c| c.name.clone()).collect(),
                children: rel_plans(&shape.shape.relations, &c.node)?,
            })
        })
        .collect()
}

impl NestedDoc {
    /// The plans for `m`, whose tree the catalog bound.
    pub fn new(m: &Mapping) -> Result<NestedDoc, TransformError> {
        let tree = m.tree.as_ref().ok_or_else(|| TransformError::Plan {
            table: m.qualified_table.clone(),
            mapping: m.name.clone(),
            reason: "relations not bound to the catalog".into(),
        })?;
        let rel = tree.root.read_relation();
        let fields: Vec<String> = tree.root.children.iter().map(|c| c.field.clone()).collect();
        let plan = Plan::build(with_fields(m, &fields), &rel)?;
        Ok(NestedDoc {
            children: rel_plans(&m.relations, &tree.root)?,
            relation: Arc::new(rel),
            plan,
            w: Writer {
                table: m.qualified_table.clone(),
                scratch: String::new(),
                doc_hint: 512,
                times: TimeCache::default(),
            },
        })
    }

    /// The columns of the rows `source::nested` reads for this mapping.
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// The op for one root read with its related rows: its document (or a
    /// delete, if its soft-delete column is set).
    pub fn index(
        &mut self,
        row: Row,
        version: Lsn,
        commit_time: DateTime<Utc>,
        out: &mut Vec<BulkOp>,
    ) -> Result<(), TransformError> {
        let change = Change {
            relation: self.relation.clone(),
            kind: ChangeKind::Insert { new: row },
            version,
            commit_time,
            xid: 0,
        };
        let ChangeKind::Insert { new } = &change.kind else {
            unreachable!()
        };
        let n = self.relation.columns.len() - self.children.len();
        let mut rendered = new.clone();
        for (i, rp) in self.children.iter().enumerate() {
            let raw = match &new[n + i] {
                Datum::Value(v) => v,
                _ => &Value::Null,
            };
            let v = render(&mut self.w, rp, raw, &change)?;
            rendered[n + i] = Datum::Value(v);
        }
        let change = Change {
            kind: ChangeKind::Insert { new: rendered },
            ..change
        };
        self.apply(&change, out)
    }

    /// The delete for a root that no longer has a document (deleted, or
    /// outside the root's filter or a required relation): `key` holds the
    /// root's key values as text, in key order.
    pub fn delete(
        &mut self,
        key: &[String],
        version: Lsn,
        commit_time: DateTime<Utc>,
        out: &mut Vec<BulkOp>,
    ) -> Result<(), TransformError> {
        let mut old: Row = vec![Datum::Null; self.relation.columns.len()];
        for ((p, _), v) in self.plan.id_cols.iter().zip(key) {
            old[*p] = Datum::Value(Value::String(v.clone()));
        }
        let change = Change {
            relation: self.relation.clone(),
            kind: ChangeKind::Delete {
                old: OldRow::Full(old),
            },
            version,
            commit_time,
            xid: 0,
        };
        self.apply(&change, out)
    }

    fn apply(&mut self, change: &Change, out: &mut Vec<BulkOp>) -> Result<(), TransformError> {
        self.w.cx(change).apply(&mut self.plan, out)
    }
}

/// A related field's final JSON: `[[values], children...]` rows made
/// into objects by the related table's plan, bottom up.
fn render(
    w: &mut Writer,
    rp: &RelPlan,
    raw: &Value,
    change: &Change,
) -> Result<Value, TransformError> {
    match raw {
        Value::Null => Ok(if rp.many {
            Value::Array(Vec::new())
        } else {
            Value::Null
        }),
        Value::Array(rows) if rp.many => rows
            .iter()
            .map(|r| render_row(w, rp, r, change))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        one => render_row(w, rp, one, change),
    }
}

fn render_row(
    w: &mut Writer,
    rp: &RelPlan,
    raw: &Value,
    change: &Change,
) -> Result<Value, TransformError> {
    let parts = raw.as_array().map(Vec::as_slice).unwrap_or_default();
    let vals = parts
        .first()
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut row: Row = Vec::with_capacity(rp.columns.len() + rp.children.len());
    row.extend((0..rp.columns.len()).map(|i| match vals.get(i) {
        None | Some(Value::Null) => Datum::Null,
        Some(v) => Datum::Value(v.clone()),
    }));
    for (i, c) in rp.children.iter().enumerate() {
        let v = render(w, c, parts.get(i + 1).unwrap_or(&Value::Null), change)?;
        row.push(Datum::Value(v));
    }
    let mut buf = Vec::with_capacity(128);
    let v = View::New {
        new: &row,
        old_full: None,
    };
    let written = w.cx(change).write_doc(&rp.plan, v, &mut buf);
    let column = |p: usize| rp.columns.get(p).cloned().unwrap_or_default();
    match written {
        Ok(()) => serde_json::from_slice(&buf).map_err(|e| TransformError::Plan {
            table: w.table.clone(),
            mapping: rp.field.clone().into(),
            reason: e.to_string(),
        }),
        Err(Miss::Convert(p, reason)) => Err(TransformError::Convert {
            table: w.table.clone(),
            mapping: rp.plan.mapping.name.clone(),
            column: format!("{}.{}", rp.field, column(p)),
            reason,
            key: Value::Null,
        }),
        Err(_) => Err(TransformError::Plan {
            table: w.table.clone(),
            mapping: rp.field.clone().into(),
            reason: "a related row lacks a value".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::Mappings;
    use crate::model::{
        Catalog, CatalogColumn, CatalogTable, ForeignKey, OpAction, ReplicaIdentity, TableRef,
    };

    fn table(name: &str, cols: &[&str], fk: Option<(&str, &str)>) -> CatalogTable {
        CatalogTable {
            table: TableRef::new("public", name),
            oid: 1,
            partitioned: false,
            columns: cols
                .iter()
                .map(|c| CatalogColumn::named(c, "text"))
                .collect(),
            primary_key: vec!["id".into()],
            replica_identity: ReplicaIdentity::Full,
            identity_index: Vec::new(),
            readable: true,
            foreign_keys: fk
                .map(|(col, refs)| ForeignKey {
                    columns: vec![col.into()],
                    references: format!("public.{refs}"),
                    ref_columns: vec!["id".into()],
                })
                .into_iter()
                .collect(),
            indexes: Vec::new(),
        }
    }

    fn orders_doc() -> NestedDoc {
        let text = r#"table = "public.orders"
index = "orders"
include = ["id"]
[relations.customer]
table = "public.customers"
kind = "many_to_one"
[relations.customer.fields]
label = { template = "{name} ({id})" }
[relations.items]
table = "public.items"
kind = "one_to_many"
exclude = ["order_id"]
[relations.items.fields]
qty = { column = "qty", convert = "integer" }
"#;
        let mut ms = Mappings::from_texts(&[(Path::new("orders.toml"), text)]).unwrap();
        let catalog = Catalog::of([
            table(
                "orders",
                &["id", "customer_id"],
                Some(("customer_id", "customers")),
            ),
            table("customers", &["id", "name"], None),
            table(
                "items",
                &["id", "order_id", "qty"],
                Some(("order_id", "orders")),
            ),
        ]);
        ms.validate_against_catalog(&catalog).unwrap();
        NestedDoc::new(&ms.list[0]).unwrap()
    }

    fn doc(op: &BulkOp) -> serde_json::Value {
        match &op.action {
            OpAction::Index { doc } => serde_json::from_slice(doc).unwrap(),
            other => panic!("not an index: {other:?}"),
        }
    }

    #[test]
    fn related_rows_become_objects_and_arrays_through_their_own_mapping() {
        let mut d = orders_doc();
        let row = vec![
            Datum::Value(json!(7)),
            Datum::Value(json!(3)),
            Datum::Value(json!([[3, "Ada"]])),
            Datum::Value(json!([[[1, 7, "2"]], [[2, 7, "5"]]])),
        ];
        let mut out = Vec::new();
        d.index(row, Lsn(100), Utc::now(), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "7");
        assert_eq!(out[0].version, Lsn(100).as_version());
        assert_eq!(
            doc(&out[0]),
            json!({"id": 7, "customer": {"id": 3, "name": "Ada", "label": "Ada (3)"},
                   "items": [{"id": 1, "qty": 2}, {"id": 2, "qty": 5}]})
        );
    }

    #[test]
    fn a_missing_target_is_null_and_no_children_an_empty_array() {
        let mut d = orders_doc();
        let row = vec![
            Datum::Value(json!(8)),
            Datum::Null,
            Datum::Null,
            Datum::Value(json!([])),
        ];
        let mut out = Vec::new();
        d.index(row, Lsn(5), Utc::now(), &mut out).unwrap();
        assert_eq!(
            doc(&out[0]),
            json!({"id": 8, "customer": null, "items": []})
        );
    }

    #[test]
    fn a_related_value_that_does_not_convert_is_the_rows_failure_naming_the_field() {
        let mut d = orders_doc();
        let row = vec![
            Datum::Value(json!(9)),
            Datum::Null,
            Datum::Null,
            Datum::Value(json!([[[1, 9, "many"]]])),
        ];
        let e = d
            .index(row, Lsn(5), Utc::now(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(e.scope(), crate::transform::FailureScope::Row);
        assert!(e.to_string().contains("items.qty"), "{e}");
    }

    #[test]
    fn a_root_that_is_gone_is_deleted_by_its_key() {
        let mut d = orders_doc();
        let mut out = Vec::new();
        d.delete(&["9".to_string()], Lsn(7), Utc::now(), &mut out)
            .unwrap();
        assert_eq!(out[0].id, "9");
        assert!(matches!(out[0].action, OpAction::Delete));
    }
}
