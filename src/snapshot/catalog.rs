//! What the snapshot needs to know about a table, from the catalog as
//! `source::catalog` reads it: this file writes no SQL of its own, so the
//! snapshot and the start-up checks agree on a table's key and replica
//! identity.
//!
//! Owns building the `Relation` for snapshot rows so that it matches what
//! pgoutput sends for the same table (same columns, type OIDs and key flags:
//! generated columns excluded, every column a key under REPLICA IDENTITY
//! FULL), and finding the physical pieces to read: the table itself, or the
//! leaf partitions of a partitioned table.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::model::change::{Column, Relation, ReplicaIdentity};
use crate::model::{CatalogTable, PublishedTable};
use crate::source::catalog;
use crate::source::sql::quote_table;

use super::SnapshotError;

/// A physical table to read: the table itself or one leaf partition.
///
/// Not a `TableRef`: a leaf is not what a mapping names (its rows carry the
/// root's `Relation`), and it is stored in the state index as it is, with
/// its own storage and key facts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Leaf {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Changes when the table is rewritten (VACUUM FULL, CLUSTER, ALTER ...
    /// TYPE), which moves every row to a new ctid.
    pub relfilenode: u32,
    /// Rows estimated by the planner statistics (-1 when never analyzed).
    pub reltuples: f64,
    /// Pages in the relation now.
    pub pages: i64,
    /// How this leaf can be split.
    pub key: KeyKind,
}

impl Leaf {
    pub fn sql_name(&self) -> String {
        quote_table(&self.schema, &self.name)
    }
}

/// The key a leaf is chunked by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyKind {
    /// One `int2`/`int4`/`int8` column: min/max ranges.
    Integer { column: String },
    /// Any other unique not-null key (composite, text, uuid, ...): keyset
    /// boundaries on the key tuple.
    Tuple { columns: Vec<KeyColumn> },
    /// No primary key or replica identity index: ctid page ranges.
    Ctid,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyColumn {
    pub name: String,
    /// `format_type()` of the column, for casting boundary literals.
    pub sql_type: String,
}

/// Everything the planner and the readers need for one mapped table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub spec: PublishedTable,
    /// Shared by every snapshot row of this table.
    pub relation: Arc<Relation>,
    /// The physical tables to read (one, or every leaf partition).
    pub leaves: Vec<Leaf>,
    /// Read as nested documents (root rows with their related rows, by
    /// `source::nested`): `relation` is then the read's relation.
    pub documents: Option<Arc<crate::model::DocTree>>,
    /// With `documents`: the table's own relation, so its flat mappings
    /// get the root columns of each document row as a row of their own.
    pub flat: Option<Arc<Relation>>,
}

impl TableInfo {
    /// Rows expected, from planner statistics (0 when unknown).
    pub fn estimated_rows(&self) -> u64 {
        self.leaves
            .iter()
            .map(|l| l.reltuples.max(0.0) as u64)
            .sum()
    }
}

/// Read the catalog for `spec` (through `source::catalog`, the one
/// catalog reader).
pub async fn load_table(
    client: &Client,
    spec: &PublishedTable,
) -> Result<TableInfo, SnapshotError> {
    let table = catalog::read_table(client, &spec.table)
        .await?
        .ok_or_else(|| SnapshotError::NoSuchTable(spec.qualified_name()))?;
    let relation = Arc::new(relation(spec, &table)?);
    let mut leaves = Vec::new();
    for oid in catalog::leaf_oids(client, &table).await? {
        // Partitioned: each leaf is read on its own (ctid ranges only mean
        // something per physical table); rows carry the parent's Relation,
        // like pgoutput with `publish_via_partition_root = true`.
        leaves.push(load_leaf(client, oid, table.replica_identity).await?);
    }
    Ok(TableInfo {
        spec: spec.clone(),
        relation,
        leaves,
        documents: None,
        flat: None,
    })
}

impl TableInfo {
    /// Read this table as the root of nested documents of `tree`.
    pub fn as_documents(mut self, tree: Arc<crate::model::DocTree>) -> TableInfo {
        let read = Arc::new(tree.root.read_relation());
        let own = std::mem::replace(&mut self.relation, read);
        // Same columns in the same order (every column not generated):
        // the document row starts with the table's row.
        if own.columns.len() == tree.root.columns.len() {
            self.flat = Some(own);
        }
        self.documents = Some(tree);
        self
    }
}

/// The Relation pgoutput would send for `spec`: the published columns
/// (generated ones are never sent) with the replica identity's key flags.
fn relation(spec: &PublishedTable, table: &CatalogTable) -> Result<Relation, SnapshotError> {
    let ri = table.replica_identity;
    let key_names: Vec<&str> = table
        .unique_key(ri)
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let columns: Vec<Column> = table
        .columns
        .iter()
        .filter(|c| !c.generated)
        .filter(|c| {
            spec.columns
                .as_ref()
                .is_none_or(|only| only.contains(&c.name))
        })
        .map(|c| Column {
            name: c.name.clone(),
            type_oid: c.type_oid,
            type_modifier: c.type_modifier,
            is_key: match ri {
                ReplicaIdentity::Full => true,
                ReplicaIdentity::Nothing => false,
                _ => key_names.contains(&c.name.as_str()),
            },
        })
        .collect();
    if let Some(only) = &spec.columns
        && let Some(missing) = only.iter().find(|c| !columns.iter().any(|k| &k.name == *c))
    {
        return Err(SnapshotError::NoSuchColumn {
            table: spec.qualified_name(),
            column: missing.clone(),
        });
    }
    Ok(Relation {
        id: table.oid,
        schema: spec.table.schema.clone(),
        name: spec.table.name.clone(),
        replica_identity: ri,
        columns,
    })
}

/// One physical table and how to split it; `ri` is the replica identity of
/// the table it belongs to (a leaf's own may differ).
async fn load_leaf(client: &Client, oid: u32, ri: ReplicaIdentity) -> Result<Leaf, SnapshotError> {
    let table = catalog::read_relation(client, oid)
        .await?
        .ok_or_else(|| SnapshotError::NoSuchTable(format!("relation {oid}")))?;
    let storage = catalog::storage(client, oid).await?;
    let keys: Vec<KeyColumn> = table
        .unique_key(ri)
        .into_iter()
        .map(|c| KeyColumn {
            name: c.name.clone(),
            sql_type: c.type_name.clone(),
        })
        .collect();
    let key = match keys.as_slice() {
        [] => KeyKind::Ctid,
        [k] if ["smallint", "integer", "bigint"].contains(&k.sql_type.as_str()) => {
            KeyKind::Integer {
                column: k.name.clone(),
            }
        }
        _ => KeyKind::Tuple { columns: keys },
    };
    Ok(Leaf {
        oid,
        schema: table.table.schema,
        name: table.table.name,
        relfilenode: storage.relfilenode,
        reltuples: storage.reltuples,
        pages: storage.pages,
        key,
    })
}
