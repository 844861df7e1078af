//! The live catalog as plain data: what `source::catalog` reads from
//! PostgreSQL once, for `config` to check the mappings against (config runs
//! no SQL), for the publication checks, and for the snapshot to plan its
//! reads from.

use std::collections::BTreeMap;

use super::change::ReplicaIdentity;
use super::table::TableRef;

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogColumn {
    pub name: String,
    /// `format_type` output, e.g. `bigint`, `numeric(10,2)`, `text[]`.
    pub type_name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// A generated column, which pgoutput does not send (PostgreSQL 15), so
    /// snapshot rows leave it out too.
    pub generated: bool,
}

impl CatalogColumn {
    /// A plain (not generated) column of a type known by name only, as
    /// tests and hand-made catalogs describe one.
    pub fn named(name: &str, type_name: &str) -> CatalogColumn {
        CatalogColumn {
            name: name.into(),
            type_name: type_name.into(),
            type_oid: 0,
            type_modifier: -1,
            generated: false,
        }
    }
}

/// One ordinary or partitioned table.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogTable {
    pub table: TableRef,
    pub oid: u32,
    /// A partitioned table (its rows live in leaf partitions).
    pub partitioned: bool,
    /// In table order.
    pub columns: Vec<CatalogColumn>,
    /// The primary key's columns in index order; empty when there is none.
    pub primary_key: Vec<String>,
    pub replica_identity: ReplicaIdentity,
    /// The columns of the replica identity index, in index order, under
    /// `REPLICA IDENTITY USING INDEX`; empty otherwise.
    pub identity_index: Vec<String>,
    /// Whether the connected role may SELECT from it.
    pub readable: bool,
    /// Its foreign keys (the default joins of nested documents).
    pub foreign_keys: Vec<ForeignKey>,
    /// The columns of each of its indexes, in index order (to warn when a
    /// join searches a column no index leads with).
    pub indexes: Vec<Vec<String>>,
}

/// `columns` of one table reference `ref_columns` of `references`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    /// `schema.table`.
    pub references: String,
    pub ref_columns: Vec<String>,
}

impl CatalogTable {
    /// Whether some index starts with exactly these columns (in any order),
    /// so a search on them is not a scan.
    pub fn has_index_on(&self, columns: &[String]) -> bool {
        self.indexes.iter().any(|ix| {
            ix.len() >= columns.len() && columns.iter().all(|c| ix[..columns.len()].contains(c))
        })
    }

    pub fn column(&self, name: &str) -> Option<&CatalogColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Columns of the replica identity, which an UPDATE or DELETE carries
    /// as its old key: the primary key (`Default`), the chosen index
    /// (`Index`), every column (`Full`), none (`Nothing`).
    pub fn replica_identity_columns(&self) -> Vec<String> {
        match self.replica_identity {
            ReplicaIdentity::Full => self.columns.iter().map(|c| c.name.clone()).collect(),
            ReplicaIdentity::Nothing => Vec::new(),
            ReplicaIdentity::Index => self.identity_index.clone(),
            ReplicaIdentity::Default => self.primary_key.clone(),
        }
    }

    /// The unique not-null key a row is found by, in index order: the
    /// primary key, else the replica identity index when `identity` (the
    /// table's, or for a partition its root's) is `Index`; empty when there
    /// is neither.
    pub fn unique_key(&self, identity: ReplicaIdentity) -> Vec<&CatalogColumn> {
        let names = if !self.primary_key.is_empty() {
            &self.primary_key
        } else if identity == ReplicaIdentity::Index {
            &self.identity_index
        } else {
            return Vec::new();
        };
        names.iter().filter_map(|n| self.column(n)).collect()
    }
}

/// Tables by `schema.table`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub tables: BTreeMap<String, CatalogTable>,
    /// `schema.table` of every table in any user schema, for suggestions
    /// (`pubic.orders` → `public.orders`); `tables` holds only the schemas
    /// asked for.
    pub all_table_names: Vec<String>,
}

impl Catalog {
    /// A catalog of exactly these tables.
    pub fn of(tables: impl IntoIterator<Item = CatalogTable>) -> Catalog {
        Catalog {
            tables: tables
                .into_iter()
                .map(|t| (t.table.qualified_name(), t))
                .collect(),
            all_table_names: Vec::new(),
        }
    }
}

/// Where a table's rows are stored now, from `pg_class`: what the snapshot
/// splits its reads by.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStorage {
    /// Changes when the table is rewritten (VACUUM FULL, CLUSTER, ALTER ...
    /// TYPE), which moves every row to a new ctid.
    pub relfilenode: u32,
    /// Rows estimated by the planner statistics (-1 when never analyzed).
    pub reltuples: f64,
    /// Pages in the relation now.
    pub pages: i64,
}
