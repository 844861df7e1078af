//! The live catalog as plain data, and mappings checked against it: tables
//! and columns exist (with did-you-mean), every mapping can compute an `_id`,
//! and deletes can find their document. Used by `sluice check` and at
//! start-up, so a typo fails before any data moves (DESIGN invariant 8).

use std::collections::BTreeMap;

use super::diag::{ConfigError, ConfigErrors, did_you_mean};
use super::doc_shape::document_fields;
use super::mapping::{IndexName, Mapping, OnDelete};
use crate::model::ReplicaIdentity;

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogColumn {
    pub name: String,
    /// `format_type` output, e.g. `bigint`, `numeric(10,2)`, `text[]`.
    pub type_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<CatalogColumn>,
    pub primary_key: Vec<String>,
    pub replica_identity: ReplicaIdentity,
    /// Columns of the replica identity: the primary key (`Default`), the
    /// chosen index (`Index`), every column (`Full`), none (`Nothing`).
    pub replica_identity_columns: Vec<String>,
}

impl CatalogTable {
    pub fn column(&self, name: &str) -> Option<&CatalogColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Tables by `schema.table`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub tables: BTreeMap<String, CatalogTable>,
    /// `schema.table` of every table in any user schema, for suggestions
    /// (`pubic.orders` → `public.orders`); `tables` holds only the mapped
    /// schemas.
    pub all_table_names: Vec<String>,
}

/// Read every ordinary or partitioned table of `schemas` from the catalog.
pub async fn load_catalog(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> Result<Catalog, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                    array(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                           ORDER BY a.attnum),
                    array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                           ORDER BY a.attnum),
                    array(SELECT a.attname::text FROM pg_index i
                           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                           WHERE i.indrelid = c.oid AND i.indisprimary
                           ORDER BY array_position(i.indkey::int2[], a.attnum)),
                    array(SELECT a.attname::text FROM pg_index i
                           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                           WHERE i.indrelid = c.oid AND i.indisreplident
                           ORDER BY array_position(i.indkey::int2[], a.attnum))
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)",
            &[&schemas],
        )
        .await?;
    let mut tables = BTreeMap::new();
    for r in rows {
        let schema: String = r.get(0);
        let name: String = r.get(1);
        let ident: String = r.get(2);
        let names: Vec<String> = r.get(3);
        let types: Vec<String> = r.get(4);
        let primary_key: Vec<String> = r.get(5);
        let ident_index: Vec<String> = r.get(6);
        let (replica_identity, replica_identity_columns) = match ident.as_str() {
            "f" => (ReplicaIdentity::Full, names.clone()),
            "n" => (ReplicaIdentity::Nothing, vec![]),
            "i" => (ReplicaIdentity::Index, ident_index),
            _ => (ReplicaIdentity::Default, primary_key.clone()),
        };
        let columns = names
            .into_iter()
            .zip(types)
            .map(|(name, type_name)| CatalogColumn { name, type_name })
            .collect();
        tables.insert(
            format!("{schema}.{name}"),
            CatalogTable {
                schema,
                name,
                columns,
                primary_key,
                replica_identity,
                replica_identity_columns,
            },
        );
    }
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

/// Check one mapping against the catalog; on success bind its primary key
/// and replica identity (used for the default `_id` and publication column
/// lists). Problems are appended to `errors`.
pub fn validate_mapping(m: &mut Mapping, catalog: &Catalog, errors: &mut ConfigErrors) {
    let at = |line: usize| ConfigError::new(&m.file, "").at(Some(line));
    let Some(t) = catalog.tables.get(&*m.qualified_table) else {
        let mut e = at(m.table_line).key("table");
        e.message = format!("table `{}` does not exist", m.qualified_table);
        e.hint = did_you_mean(
            &m.qualified_table,
            catalog
                .tables
                .keys()
                .chain(&catalog.all_table_names)
                .map(String::as_str),
        );
        errors.push(e);
        return;
    };
    let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    for r in &m.column_refs {
        if t.column(&r.column).is_none() {
            let mut e = at(r.line).key(&r.key);
            e.message = format!(
                "column `{}` does not exist in {}",
                r.column, m.qualified_table
            );
            e.hint = did_you_mean(&r.column, names.iter().copied());
            errors.push(e);
        }
    }
    if let Err(c) = document_fields(m, &names) {
        let (key, line) = m.target_place(&c.path);
        errors.push(ConfigError::new(&m.file, c.message).key(key).at(line));
    }
    let table_err = |msg: String, hint: &str| {
        let mut e = at(m.table_line).key("table");
        e.message = msg;
        e.hint = Some(hint.to_string());
        e
    };
    let q = &m.qualified_table;
    match t.replica_identity {
        ReplicaIdentity::Nothing => errors.push(table_err(
            format!("{q} has REPLICA IDENTITY NOTHING: PostgreSQL cannot publish its updates and deletes"),
            &format!("run `ALTER TABLE {q} REPLICA IDENTITY DEFAULT` (with a primary key) or `REPLICA IDENTITY FULL`"),
        )),
        ReplicaIdentity::Default if t.primary_key.is_empty() => errors.push(table_err(
            format!("{q} has no primary key and REPLICA IDENTITY DEFAULT: PostgreSQL refuses its updates and deletes once published"),
            &format!("add a primary key, or run `ALTER TABLE {q} REPLICA IDENTITY FULL` and set `id = [...]` in this mapping"),
        )),
        _ => {}
    }
    if m.id_columns.is_none()
        && t.primary_key.is_empty()
        && matches!(
            t.replica_identity,
            ReplicaIdentity::Full | ReplicaIdentity::Index
        )
    {
        errors.push(table_err(
            format!("{q} has no primary key, so the document `_id` is not defined"),
            "set `id = [\"col\", ...]` to columns that identify a row",
        ));
    }
    // A delete only carries the replica identity columns (unless FULL):
    // everything that locates the document must be among them.
    if m.on_delete == OnDelete::Delete && t.replica_identity != ReplicaIdentity::Full {
        let ident = &t.replica_identity_columns;
        let mut locating: Vec<(&str, &str)> = Vec::new();
        // The default `_id` is the primary key, which a REPLICA IDENTITY
        // USING INDEX table does not necessarily send.
        let ids = m.id_columns.as_ref().unwrap_or(&t.primary_key);
        locating.extend(ids.iter().map(|c| (c.as_str(), "id")));
        if let Some(r) = &m.routing {
            locating.push((r, "routing"));
        }
        if let IndexName::Template(tpl) = &m.index {
            locating.extend(tpl.columns().map(|c| (c, "index")));
        }
        for (col, key) in locating {
            if t.column(col).is_some() && !ident.iter().any(|c| c == col) {
                let line = m
                    .column_refs
                    .iter()
                    .find(|r| r.key == key && r.column == col)
                    .map(|r| r.line)
                    .unwrap_or(m.table_line);
                let key = if m.id_columns.is_none() && key == "id" {
                    "table"
                } else {
                    key
                };
                let mut e = at(line).key(key);
                e.message = format!(
                    "column `{col}` is not part of {q}'s replica identity, so a DELETE does not carry it and the document could not be found"
                );
                e.hint = Some(format!(
                    "run `ALTER TABLE {q} REPLICA IDENTITY FULL`, use key columns, or set `on_delete = \"ignore\"`"
                ));
                errors.push(e);
            }
        }
    }
    m.primary_key = Some(t.primary_key.clone());
    m.replica_identity = Some((t.replica_identity, t.replica_identity_columns.clone()));
}
