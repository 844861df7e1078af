//! A mapping bound to one `Relation`: column names resolved to positions,
//! the document laid out as a tree of pre-escaped keys. Built once per
//! relation (and again when PostgreSQL sends a new Relation message), so the
//! per-row work is a walk over positions.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::doc_shape::document_fields;
use crate::config::{Conversion, FieldSource, IndexName, Mapping, TemplatePart};
use crate::model::{Relation, ReplicaIdentity};

use super::TransformError;
use super::convert::{write_json_str, write_value};

#[derive(Debug, Clone)]
pub enum PartPlan {
    Literal(String),
    Column(usize),
    CommitTime(String),
}

#[derive(Debug, Clone)]
pub enum Leaf {
    Column(usize, Conversion),
    Template(Vec<PartPlan>),
    /// Pre-serialized JSON.
    Constant(Vec<u8>),
}

#[derive(Debug, Clone)]
pub enum Node {
    /// `("\"key\":" bytes, child)` in output order.
    Object(Vec<(Vec<u8>, Node)>),
    Leaf(Leaf),
}

#[derive(Debug)]
pub enum IndexPlan {
    Fixed(Arc<str>),
    Template {
        parts: Vec<PartPlan>,
        /// Rendered names → shared names, so equal names share one Arc.
        cache: HashMap<Box<str>, Arc<str>>,
    },
}

/// One mapping bound to one relation.
#[derive(Debug)]
pub struct Plan {
    pub mapping: Arc<Mapping>,
    pub index: IndexPlan,
    /// `(position, name)` of the `_id` columns.
    pub id_cols: Vec<(usize, String)>,
    pub routing: Option<usize>,
    pub soft_delete: Option<usize>,
    /// The document: always a root object.
    pub doc: Vec<(Vec<u8>, Node)>,
    /// jsonb columns merged into the root, and the root keys they must skip.
    pub merges: Vec<usize>,
    pub root_keys: Vec<String>,
}

fn key_bytes(k: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(k.len() + 3);
    write_json_str(&mut b, k);
    b.push(b':');
    b
}

fn insert(tree: &mut Vec<(Vec<u8>, Node)>, path: &[String], leaf: Leaf) {
    let k = key_bytes(&path[0]);
    if path.len() == 1 {
        tree.push((k, Node::Leaf(leaf)));
        return;
    }
    let pos = match tree.iter().position(|(key, _)| *key == k) {
        Some(p) => p,
        None => {
            tree.push((k, Node::Object(Vec::new())));
            tree.len() - 1
        }
    };
    if let Node::Object(children) = &mut tree[pos].1 {
        insert(children, &path[1..], leaf);
    }
}

impl Plan {
    pub fn build(mapping: Arc<Mapping>, rel: &Relation) -> Result<Plan, TransformError> {
        let missing = |column: &str| TransformError::MissingColumn {
            table: mapping.qualified_table.clone(),
            mapping: mapping.name.clone(),
            column: column.to_string(),
        };
        let pos = |c: &str| rel.column_index(c).ok_or_else(|| missing(c));
        let parts = |t: &crate::config::Template| {
            t.parts
                .iter()
                .map(|p| {
                    Ok(match p {
                        TemplatePart::Literal(l) => PartPlan::Literal(l.clone()),
                        TemplatePart::Column(c) => PartPlan::Column(pos(c)?),
                        TemplatePart::CommitTime(f) => PartPlan::CommitTime(f.clone()),
                    })
                })
                .collect::<Result<Vec<_>, TransformError>>()
        };
        let index = match &mapping.index {
            IndexName::Fixed(n) => IndexPlan::Fixed(n.clone()),
            IndexName::Template(t) => IndexPlan::Template {
                parts: parts(t)?,
                cache: HashMap::new(),
            },
        };
        let id_names: Vec<String> = match (&mapping.id_columns, &mapping.primary_key) {
            (Some(ids), _) => ids.clone(),
            (None, Some(pk)) if !pk.is_empty() => pk.clone(),
            _ if rel.replica_identity != ReplicaIdentity::Full => rel
                .columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.clone())
                .collect(),
            _ => Vec::new(),
        };
        if id_names.is_empty() {
            return Err(TransformError::NoId {
                table: mapping.qualified_table.clone(),
                mapping: mapping.name.clone(),
            });
        }
        let id_cols = id_names
            .into_iter()
            .map(|n| Ok((pos(&n)?, n)))
            .collect::<Result<Vec<_>, TransformError>>()?;
        let routing = mapping.routing.as_deref().map(pos).transpose()?;
        let soft_delete = mapping.soft_delete_column.as_deref().map(pos).transpose()?;

        let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        let fields = document_fields(&mapping, &names).map_err(|c| TransformError::Plan {
            table: mapping.qualified_table.clone(),
            mapping: mapping.name.clone(),
            reason: c.message,
        })?;
        let mut doc = Vec::new();
        for f in fields {
            let leaf = match &f.source {
                FieldSource::Column { column, convert } => {
                    Leaf::Column(pos(column)?, convert.clone())
                }
                FieldSource::Template(t) => Leaf::Template(parts(t)?),
                FieldSource::Constant(v) => {
                    let mut b = Vec::new();
                    write_value(&mut b, v);
                    Leaf::Constant(b)
                }
            };
            insert(&mut doc, &f.path, leaf);
        }
        let merges = mapping
            .merge
            .iter()
            .map(|c| pos(c))
            .collect::<Result<Vec<_>, _>>()?;
        let root_keys = doc
            .iter()
            .map(|(k, _)| serde_json::from_slice::<String>(&k[..k.len() - 1]).unwrap_or_default())
            .collect();
        Ok(Plan {
            mapping,
            index,
            id_cols,
            routing,
            soft_delete,
            doc,
            merges,
            root_keys,
        })
    }
}
