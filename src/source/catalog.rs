//! The one reader of PostgreSQL's table catalog: tables, their columns,
//! keys and replica identity, partitions and storage, as the plain data of
//! `model::catalog`. Mapping validation (config, which runs no SQL), the
//! start-up table checks and the snapshot planner all read through it, so
//! they agree on what a table's key and replica identity are.
//!
//! Only ordinary SQL on the catalog: nothing here takes a lock on a user
//! table, except [`storage`], which sizes one relation for the snapshot.

use tokio_postgres::{Client, Error, Row};

use crate::model::{Catalog, CatalogColumn, CatalogTable, ReplicaIdentity, TableRef, TableStorage};

/// One row per table; a `WHERE` clause on `c` (pg_class) and `n`
/// (pg_namespace) is appended. Columns are in table order, keys in index
/// order.
const TABLES: &str = "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
        c.relreplident::text, has_table_privilege(c.oid, 'SELECT'),
        array(SELECT a.attname::text FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum),
        array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum),
        array(SELECT a.atttypid FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum),
        array(SELECT a.atttypmod FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum),
        array(SELECT a.attgenerated <> '' FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum),
        array(SELECT a.attname::text FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = c.oid AND i.indisprimary
               ORDER BY array_position(i.indkey::int2[], a.attnum)),
        array(SELECT a.attname::text FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = c.oid AND i.indisreplident
               ORDER BY array_position(i.indkey::int2[], a.attnum)),
        array(SELECT json_build_object(
                 'columns', (SELECT array_agg(a.attname::text ORDER BY k.n)
                               FROM unnest(co.conkey) WITH ORDINALITY k(att, n)
                               JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.att),
                 'references', (SELECT rn.nspname::text || '.' || rc.relname::text
                                  FROM pg_class rc JOIN pg_namespace rn ON rn.oid = rc.relnamespace
                                 WHERE rc.oid = co.confrelid),
                 'ref_columns', (SELECT array_agg(a.attname::text ORDER BY k.n)
                                   FROM unnest(co.confkey) WITH ORDINALITY k(att, n)
                                   JOIN pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.att))::text
               FROM pg_constraint co WHERE co.conrelid = c.oid AND co.contype = 'f'
               ORDER BY co.conname),
        array(SELECT (SELECT COALESCE(json_agg(a.attname::text ORDER BY k.n), '[]')
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(att, n)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att)::text
                FROM pg_index i WHERE i.indrelid = c.oid)
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace";

/// Ordinary and partitioned tables only (no views, sequences, ...).
const TABLE_KINDS: &str = "c.relkind IN ('r', 'p')";

fn table_of(r: &Row) -> CatalogTable {
    let names: Vec<String> = r.get(6);
    let types: Vec<String> = r.get(7);
    let oids: Vec<u32> = r.get(8);
    let modifiers: Vec<i32> = r.get(9);
    let generated: Vec<bool> = r.get(10);
    let columns = names
        .into_iter()
        .zip(types)
        .zip(oids.into_iter().zip(modifiers).zip(generated))
        .map(
            |((name, type_name), ((type_oid, type_modifier), generated))| CatalogColumn {
                name,
                type_name,
                type_oid,
                type_modifier,
                generated,
            },
        )
        .collect();
    let relkind: String = r.get(3);
    let replident: String = r.get(4);
    CatalogTable {
        oid: r.get(0),
        table: TableRef {
            schema: r.get(1),
            name: r.get(2),
        },
        partitioned: relkind == "p",
        replica_identity: match replident.as_str() {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        readable: r.get(5),
        columns,
        primary_key: r.get(11),
        identity_index: r.get(12),
        foreign_keys: json_list(r.get(13)),
        indexes: json_list(r.get(14)),
    }
}

/// A text array of JSON values (what the foreign-key and index columns
/// return), each parsed; the catalog query builds them, so they parse.
fn json_list<T: serde::de::DeserializeOwned>(texts: Vec<String>) -> Vec<T> {
    texts
        .iter()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect()
}

/// Every ordinary or partitioned table of `schemas`, and the names of all
/// tables in user schemas (for did-you-mean suggestions).
pub async fn read_schemas(client: &Client, schemas: &[String]) -> Result<Catalog, Error> {
    let sql = format!("{TABLES} WHERE {TABLE_KINDS} AND n.nspname = ANY($1)");
    let tables = client
        .query(&sql, &[&schemas])
        .await?
        .iter()
        .map(table_of)
        .map(|t| (t.table.qualified_name(), t))
        .collect();
    let all_table_names = client
        .query(
            "SELECT n.nspname::text || '.' || c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Catalog {
        tables,
        all_table_names,
    })
}

/// The ordinary or partitioned table `table`; `None` if there is none.
pub async fn read_table(client: &Client, table: &TableRef) -> Result<Option<CatalogTable>, Error> {
    let sql = format!("{TABLES} WHERE {TABLE_KINDS} AND n.nspname = $1 AND c.relname = $2");
    let row = client
        .query_opt(&sql, &[&table.schema, &table.name])
        .await?;
    Ok(row.as_ref().map(table_of))
}

/// The relation with this OID, of any kind, under its current name;
/// `None` once it is dropped.
pub async fn read_relation(client: &Client, oid: u32) -> Result<Option<CatalogTable>, Error> {
    let sql = format!("{TABLES} WHERE c.oid = $1");
    Ok(client
        .query_opt(&sql, &[&oid])
        .await?
        .as_ref()
        .map(table_of))
}

/// The OIDs of the physical tables holding `table`'s rows: its leaf
/// partitions in OID order when it is partitioned, else itself.
pub async fn leaf_oids(client: &Client, table: &CatalogTable) -> Result<Vec<u32>, Error> {
    if !table.partitioned {
        return Ok(vec![table.oid]);
    }
    Ok(client
        .query(
            "SELECT relid::oid FROM pg_partition_tree($1::oid::regclass)
              WHERE isleaf ORDER BY relid::oid",
            &[&table.oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Where the relation with this OID stores its rows now (its size is read
/// from the file system, under a brief ACCESS SHARE lock).
pub async fn storage(client: &Client, oid: u32) -> Result<TableStorage, Error> {
    let r = client
        .query_one(
            "SELECT c.relfilenode, c.reltuples::float8,
                    (pg_relation_size(c.oid) / current_setting('block_size')::int)::int8
               FROM pg_class c WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    Ok(TableStorage {
        relfilenode: r.get(0),
        reltuples: r.get(1),
        pages: r.get(2),
    })
}
