//! Re-reading rows by key, for changes that arrive without every value: an
//! unchanged TOAST value is not sent when REPLICA IDENTITY is not FULL
//! (DESIGN invariant 6), so the current row is read and converted exactly
//! like a streamed one.

use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::model::TableRef;
use crate::model::change::{Datum, Relation, Row};
use crate::source::catalog;
use crate::source::error::SourceError;
use crate::source::sql::{quote_ident, quote_table};
use crate::source::types::TypeCatalog;
use crate::source::value::{ValueOptions, convert};

/// Re-read the current rows for `keys` (rows in `rel`'s column order; only
/// the key columns are used) and convert them like streamed values. Used to
/// fill unchanged TOAST values when REPLICA IDENTITY is not FULL (DESIGN
/// invariant 6). Rows deleted meanwhile are simply absent; order is arbitrary.
///
/// `rel` is the relation as of the change's WAL position, which may be
/// older than the catalog: the table is found by its OID (a renamed table
/// is read under its current name; a dropped one has no rows), and only the
/// columns it has now are selected. A column dropped since reads as NULL:
/// it has no current value, and every later change of the row omits it.
pub async fn fetch_rows_by_key(
    client: &Client,
    rel: &Relation,
    keys: &[Row],
    opts: &ValueOptions,
    catalog: &TypeCatalog,
) -> Result<Vec<Row>, SourceError> {
    let key_idx = key_positions(rel)?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let key_types = key_types(client, rel, &key_idx).await?;
    let params = key_params(keys, &key_idx);
    let Some(now) = catalog::read_relation(client, rel.id).await? else {
        return Ok(Vec::new()); // dropped: no row exists any more
    };
    let present: Vec<String> = now.columns.into_iter().map(|c| c.name).collect();
    if let Some(&gone) = key_idx
        .iter()
        .find(|&&i| !present.contains(&rel.columns[i].name))
    {
        return Err(SourceError::Setup(format!(
            "key column `{}` of {} no longer exists, so the row cannot be re-read",
            rel.columns[gone].name,
            rel.qualified_name()
        )));
    }
    let sql = select_by_keys(rel, &now.table, &present, &key_idx, &key_types);
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&sql, &refs).await?;
    convert_rows(&rows, rel, opts, catalog)
}

/// Whether transaction `xid` (the 32-bit id of a Begin message) is visible
/// to a statement that starts now, i.e. whether a re-read of its rows sees
/// its effects.
///
/// Why this is asked: a committing backend flushes its commit record, and
/// only then leaves the list of running transactions. The walsender decodes
/// and sends the transaction as soon as the record is flushed, so the stream
/// can hand Sluice a transaction that other sessions do not see yet. A
/// re-read in that gap finds the row as it was before the transaction (or
/// not at all, if the transaction inserted it), and the document would be
/// built from a state older than its version says. Visibility never goes
/// back: once a snapshot sees the transaction, every later one does.
///
/// The full 64-bit id is rebuilt from the snapshot's `xmax` (the
/// transaction was assigned before it, so it lies in `xmax`'s epoch or the
/// one before); an id older than the snapshot's `xmin` is visible.
pub async fn transaction_visible(client: &Client, xid: u32) -> Result<bool, SourceError> {
    const SQL: &str = "SELECT COALESCE(pg_visible_in_snapshot(
                CASE WHEN f.full <= f.xmax THEN f.full::text::xid8
                     WHEN f.full >= 4294967296 THEN (f.full - 4294967296)::text::xid8 END,
                f.snap), true)
           FROM (SELECT s.snap, s.xmax, ((s.xmax >> 32) << 32) | $1::int8 AS full
                   FROM (SELECT pg_current_snapshot() AS snap,
                                pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax) s) f";
    let row = client.query_one(SQL, &[&i64::from(xid)]).await?;
    Ok(row.get(0))
}

/// Positions of `rel`'s key columns (its replica identity).
fn key_positions(rel: &Relation) -> Result<Vec<usize>, SourceError> {
    let key_idx: Vec<usize> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect();
    if key_idx.is_empty() {
        return Err(SourceError::Setup(format!(
            "table {} has no key columns in its replica identity, so rows cannot be re-read by key",
            rel.qualified_name()
        )));
    }
    Ok(key_idx)
}

/// The SQL type of each key column as the relation knew it, to cast the
/// key values (sent as text) back.
async fn key_types(
    client: &Client,
    rel: &Relation,
    key_idx: &[usize],
) -> Result<Vec<String>, SourceError> {
    let mut key_types = Vec::with_capacity(key_idx.len());
    for &i in key_idx {
        let c = &rel.columns[i];
        let t: String = client
            .query_one(
                "SELECT format_type($1::oid, $2::int)",
                &[&c.type_oid, &c.type_modifier],
            )
            .await?
            .get(0);
        key_types.push(t);
    }
    Ok(key_types)
}

/// One text array per key column: the keys' values in PostgreSQL's text
/// form (booleans as `t`/`f`), NULL for a missing one.
fn key_params(keys: &[Row], key_idx: &[usize]) -> Vec<Vec<Option<String>>> {
    let mut params: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(keys.len()); key_idx.len()];
    for key in keys {
        for (p, &i) in params.iter_mut().zip(key_idx) {
            p.push(match key.get(i) {
                Some(Datum::Value(Value::String(s))) => Some(s.clone()),
                Some(Datum::Value(Value::Bool(b))) => {
                    Some(if *b { "t".into() } else { "f".into() })
                }
                Some(Datum::Value(v)) => Some(v.to_string()),
                _ => None,
            });
        }
    }
    params
}

/// `SELECT` every column of `rel` (as text; NULL for one that is gone)
/// from `table` where the key is among the `unnest`ed parameter arrays.
fn select_by_keys(
    rel: &Relation,
    table: &TableRef,
    present: &[String],
    key_idx: &[usize],
    key_types: &[String],
) -> String {
    let select = rel
        .columns
        .iter()
        .map(|c| match present.contains(&c.name) {
            true => format!("{}::text", quote_ident(&c.name)),
            false => "NULL::text".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key_cols = key_idx
        .iter()
        .map(|&i| quote_ident(&rel.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ");
    let unnest_args = (1..=key_idx.len())
        .map(|n| format!("${n}::text[]"))
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (1..=key_idx.len())
        .map(|n| format!("k{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let casts = key_types
        .iter()
        .enumerate()
        .map(|(n, t)| format!("k{}::{t}", n + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {select} FROM {} WHERE ({key_cols}) IN (SELECT {casts} FROM unnest({unnest_args}) AS u({aliases}))",
        quote_table(&table.schema, &table.name)
    )
}

/// Rows of text values, converted like streamed ones.
fn convert_rows(
    rows: &[tokio_postgres::Row],
    rel: &Relation,
    opts: &ValueOptions,
    catalog: &TypeCatalog,
) -> Result<Vec<Row>, SourceError> {
    let convs: Vec<_> = rel
        .columns
        .iter()
        .map(|c| catalog.resolve(c.type_oid))
        .collect();
    rows.iter()
        .map(|r| {
            (0..rel.columns.len())
                .map(|i| match r.get::<_, Option<&str>>(i) {
                    None => Ok(Datum::Null),
                    Some(text) => convert(&convs[i], text, opts)
                        .map(Datum::Value)
                        .map_err(|e| {
                            SourceError::Setup(format!(
                                "{}.{}: {e}",
                                rel.qualified_name(),
                                rel.columns[i].name
                            ))
                        }),
                })
                .collect()
        })
        .collect()
}
