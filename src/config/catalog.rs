//! Mappings checked against the live catalog: tables and columns exist
//! (with did-you-mean), every mapping can compute an `_id`, and deletes can
//! find their document. Used by `sluice check` and at start-up, so a typo
//! fails before any data moves (DESIGN invariant 8).
//!
//! The catalog arrives as plain data (`model::Catalog`, read by
//! `source::catalog`): config runs no SQL.

use super::diag::{ConfigError, ConfigErrors, did_you_mean};
use super::doc_shape::document_fields;
use super::mapping::{IndexName, Mapping, OnDelete};
use crate::model::{Catalog, CatalogTable, ReplicaIdentity};

/// Check one mapping against the catalog; on success bind its primary key
/// and replica identity (used for the default `_id` and publication column
/// lists). Problems are appended to `errors`.
pub fn validate_mapping(m: &mut Mapping, catalog: &Catalog, errors: &mut ConfigErrors) {
    let Some(t) = catalog.tables.get(&*m.qualified_table) else {
        errors.push(missing_table(m, catalog));
        return;
    };
    unknown_columns(m, t, errors);
    if let Err(c) = document_fields(m, &column_names(t)) {
        let (key, line) = m.target_place(&c.path);
        errors.push(ConfigError::new(&m.file, c.message).key(key).at(line));
    }
    replica_identity(m, t, errors);
    if m.on_delete == OnDelete::Delete && t.replica_identity != ReplicaIdentity::Full {
        deletes_find_their_document(m, t, errors);
    }
    m.primary_key = Some(t.primary_key.clone());
    m.replica_identity = Some((t.replica_identity, t.replica_identity_columns()));
}

fn column_names(t: &CatalogTable) -> Vec<&str> {
    t.columns.iter().map(|c| c.name.as_str()).collect()
}

/// A problem at `line` of the mapping file, about `key`.
fn at(m: &Mapping, line: usize, key: &str, message: String, hint: Option<String>) -> ConfigError {
    ConfigError::new(&m.file, message)
        .at(Some(line))
        .key(key)
        .hint_opt(hint)
}

fn missing_table(m: &Mapping, catalog: &Catalog) -> ConfigError {
    let names = (catalog.tables.keys().chain(&catalog.all_table_names)).map(String::as_str);
    at(
        m,
        m.table_line,
        "table",
        format!("table `{}` does not exist", m.qualified_table),
        did_you_mean(&m.qualified_table, names),
    )
}

/// Every column the file names exists in the table.
pub(super) fn unknown_columns(m: &Mapping, t: &CatalogTable, errors: &mut ConfigErrors) {
    let names = column_names(t);
    for r in &m.column_refs {
        if t.column(&r.column).is_none() {
            errors.push(at(
                m,
                r.line,
                &r.key,
                format!(
                    "column `{}` does not exist in {}",
                    r.column, m.qualified_table
                ),
                did_you_mean(&r.column, names.iter().copied()),
            ));
        }
    }
}

/// PostgreSQL can publish the table's updates and deletes, and the
/// document `_id` is defined.
fn replica_identity(m: &Mapping, t: &CatalogTable, errors: &mut ConfigErrors) {
    let q = &m.qualified_table;
    let table_err = |msg: String, hint: String| at(m, m.table_line, "table", msg, Some(hint));
    match t.replica_identity {
        ReplicaIdentity::Nothing => errors.push(table_err(
            format!("{q} has REPLICA IDENTITY NOTHING: PostgreSQL cannot publish its updates and deletes"),
            format!("run `ALTER TABLE {q} REPLICA IDENTITY DEFAULT` (with a primary key) or `REPLICA IDENTITY FULL`"),
        )),
        ReplicaIdentity::Default if t.primary_key.is_empty() => errors.push(table_err(
            format!("{q} has no primary key and REPLICA IDENTITY DEFAULT: PostgreSQL refuses its updates and deletes once published"),
            format!("add a primary key, or run `ALTER TABLE {q} REPLICA IDENTITY FULL` and set `id = [...]` in this mapping"),
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
            "set `id = [\"col\", ...]` to columns that identify a row".to_string(),
        ));
    }
}

/// A delete only carries the replica identity columns (unless FULL):
/// everything that locates the document must be among them.
fn deletes_find_their_document(m: &Mapping, t: &CatalogTable, errors: &mut ConfigErrors) {
    let q = &m.qualified_table;
    let ident = t.replica_identity_columns();
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
        if t.column(col).is_none() || ident.iter().any(|c| c == col) {
            continue;
        }
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
        errors.push(at(
            m,
            line,
            key,
            format!(
                "column `{col}` is not part of {q}'s replica identity, so a DELETE does not carry it and the document could not be found"
            ),
            Some(format!(
                "run `ALTER TABLE {q} REPLICA IDENTITY FULL`, use key columns, or set `on_delete = \"ignore\"`"
            )),
        ));
    }
}
