//! What the snapshot needs to know about a table, read from the catalog.
//!
//! Owns building the `Relation` for snapshot rows so that it matches what
//! pgoutput sends for the same table (same columns, type OIDs and key flags:
//! generated columns excluded, every column a key under REPLICA IDENTITY
//! FULL), and finding the physical pieces to read: the table itself, or the
//! leaf partitions of a partitioned table.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::model::PublishedTable;
use crate::model::change::{Column, Relation, ReplicaIdentity};
use crate::source::sql::quote_ident;

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
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
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

/// Read the catalog for `spec`.
pub async fn load_table(
    client: &Client,
    spec: &PublishedTable,
) -> Result<TableInfo, SnapshotError> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.relreplident::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&spec.table.schema, &spec.table.name],
        )
        .await?
        .ok_or_else(|| SnapshotError::NoSuchTable(spec.qualified_name()))?;
    let oid: u32 = row.get(0);
    let relkind: String = row.get(1);
    let replident: String = row.get(2);
    let replica_identity = match replident.as_str() {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };

    let key_names = key_columns(client, oid, replica_identity).await?;
    let mut columns = Vec::new();
    for r in client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod
               FROM pg_attribute a
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&oid],
        )
        .await?
    {
        let name: String = r.get(0);
        if let Some(only) = &spec.columns
            && !only.contains(&name)
        {
            continue;
        }
        let is_key = match replica_identity {
            ReplicaIdentity::Full => true,
            ReplicaIdentity::Nothing => false,
            _ => key_names.iter().any(|k| k.name == name),
        };
        columns.push(Column {
            name,
            type_oid: r.get(1),
            type_modifier: r.get(2),
            is_key,
        });
    }
    if let Some(only) = &spec.columns
        && let Some(missing) = only.iter().find(|c| !columns.iter().any(|k| &k.name == *c))
    {
        return Err(SnapshotError::NoSuchColumn {
            table: spec.qualified_name(),
            column: missing.clone(),
        });
    }
    let relation = Arc::new(Relation {
        id: oid,
        schema: spec.table.schema.clone(),
        name: spec.table.name.clone(),
        replica_identity,
        columns,
    });

    let leaf_oids: Vec<u32> = if relkind == "p" {
        // Partitioned: read each leaf on its own (ctid ranges only mean
        // something per physical table); rows carry the parent's Relation,
        // like pgoutput with `publish_via_partition_root = true`.
        client
            .query(
                "SELECT relid::oid FROM pg_partition_tree($1::oid::regclass)
                  WHERE isleaf ORDER BY relid::oid",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        vec![oid]
    };
    let mut leaves = Vec::with_capacity(leaf_oids.len());
    for leaf in leaf_oids {
        leaves.push(load_leaf(client, leaf, replica_identity).await?);
    }
    Ok(TableInfo {
        spec: spec.clone(),
        relation,
        leaves,
    })
}

async fn load_leaf(client: &Client, oid: u32, ri: ReplicaIdentity) -> Result<Leaf, SnapshotError> {
    let r = client
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relfilenode, c.reltuples::float8,
                    (pg_relation_size(c.oid) / current_setting('block_size')::int)::int8
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    let keys = key_columns(client, oid, ri).await?;
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
        schema: r.get(0),
        name: r.get(1),
        relfilenode: r.get(2),
        reltuples: r.get(3),
        pages: r.get(4),
        key,
    })
}

/// The unique not-null key of a table in index order: the primary key, else
/// the replica identity index; empty when there is neither.
async fn key_columns(
    client: &Client,
    oid: u32,
    ri: ReplicaIdentity,
) -> Result<Vec<KeyColumn>, SnapshotError> {
    for which in ["indisprimary", "indisreplident"] {
        if which == "indisreplident" && ri != ReplicaIdentity::Index {
            continue;
        }
        let rows = client
            .query(
                &format!(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                       FROM pg_index i
                       CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      WHERE i.indrelid = $1 AND i.{which}
                      ORDER BY k.ord"
                ),
                &[&oid],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(rows
                .iter()
                .map(|r| KeyColumn {
                    name: r.get(0),
                    sql_type: r.get(1),
                })
                .collect());
        }
    }
    Ok(Vec::new())
}
