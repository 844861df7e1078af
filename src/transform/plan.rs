//! A mapping bound to one `Relation`: column names resolved to positions,
//! the document laid out as a tree of pre-escaped keys. Built once per
//! relation (and again when PostgreSQL sends a new Relation message), so the
//! per-row work is a walk over positions.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::doc_shape::document_fields;
use crate::config::{Conversion, FieldSource, IndexName, Mapping, Template, TemplatePart};
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

/// Column names of one mapping resolved against one relation.
struct Resolver<'a> {
    mapping: &'a Mapping,
    rel: &'a Relation,
}

impl Resolver<'_> {
    fn pos(&self, column: &str) -> Result<usize, TransformError> {
        self.rel
            .column_index(column)
            .ok_or_else(|| TransformError::MissingColumn {
                table: self.mapping.qualified_table.clone(),
                mapping: self.mapping.name.clone(),
                column: column.to_string(),
            })
    }

    fn parts(&self, t: &Template) -> Result<Vec<PartPlan>, TransformError> {
        t.parts
            .iter()
            .map(|p| {
                Ok(match p {
                    TemplatePart::Literal(l) => PartPlan::Literal(l.clone()),
                    TemplatePart::Column(c) => PartPlan::Column(self.pos(c)?),
                    TemplatePart::CommitTime(f) => PartPlan::CommitTime(f.clone()),
                })
            })
            .collect()
    }

    fn index(&self) -> Result<IndexPlan, TransformError> {
        Ok(match &self.mapping.index {
            IndexName::Fixed(n) => IndexPlan::Fixed(n.clone()),
            IndexName::Template(t) => IndexPlan::Template {
                parts: self.parts(t)?,
                cache: HashMap::new(),
            },
        })
    }

    /// The `_id` columns: the mapping's `id`, else the primary key, else
    /// the relation's key columns (never every column of a FULL identity).
    fn id_cols(&self) -> Result<Vec<(usize, String)>, TransformError> {
        let (mapping, rel) = (self.mapping, self.rel);
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
        id_names
            .into_iter()
            .map(|n| Ok((self.pos(&n)?, n)))
            .collect()
    }

    /// The document as a tree of pre-escaped keys.
    fn doc(&self) -> Result<Vec<(Vec<u8>, Node)>, TransformError> {
        let names: Vec<&str> = self.rel.columns.iter().map(|c| c.name.as_str()).collect();
        let fields = document_fields(self.mapping, &names).map_err(|c| TransformError::Plan {
            table: self.mapping.qualified_table.clone(),
            mapping: self.mapping.name.clone(),
            reason: c.message,
        })?;
        let mut doc = Vec::new();
        for f in fields {
            let leaf = match &f.source {
                FieldSource::Column { column, convert } => {
                    Leaf::Column(self.pos(column)?, convert.clone())
                }
                FieldSource::Template(t) => Leaf::Template(self.parts(t)?),
                FieldSource::Constant(v) => {
                    let mut b = Vec::new();
                    write_value(&mut b, v);
                    Leaf::Constant(b)
                }
            };
            insert(&mut doc, &f.path, leaf);
        }
        Ok(doc)
    }
}

impl Plan {
    pub fn build(mapping: Arc<Mapping>, rel: &Relation) -> Result<Plan, TransformError> {
        let r = Resolver {
            mapping: &mapping,
            rel,
        };
        let index = r.index()?;
        let id_cols = r.id_cols()?;
        let routing = mapping.routing.as_deref().map(|c| r.pos(c)).transpose()?;
        let soft_delete = (mapping.soft_delete_column.as_deref())
            .map(|c| r.pos(c))
            .transpose()?;
        let doc = r.doc()?;
        let merges = mapping
            .merge
            .iter()
            .map(|c| r.pos(c))
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
