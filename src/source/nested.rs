//! SQL for nested documents, and reading them: one statement builds whole
//! documents (the root row and every related row under it) so PostgreSQL
//! does the joins, and one finds the roots a changed row belongs to,
//! keyset-paged so a category under 100,000 products costs pages of roots,
//! never all of them at once in memory.
//!
//! Related rows travel as JSON arrays of text (`[[col, ...], child, ...]`),
//! each value the text PostgreSQL prints for it, and are converted here by
//! type exactly like streamed and snapshot values (one converter, `value`),
//! so a column reads the same in a nested part as at the top.
//!
//! Key values are written into the statements as untyped literals
//! (`(r."id") IN (('7'), ('9'))`): PostgreSQL coerces an untyped literal to
//! the column's type, so the index on the column is used whatever the type,
//! and one statement shape serves every key type.

use serde_json::Value;
use tokio_postgres::Client;

use crate::model::{Datum, DocChild, DocNode, DocTree, Link, Place, Row};
use crate::source::error::SourceError;
use crate::source::sql::{quote_ident, quote_literal, quote_table};
use crate::source::types::TypeCatalog;
use crate::source::value::{ValueOptions, convert};

/// A root's key values as text, in key column order.
pub type RootKey = Vec<String>;

/// The statement text for `SELECT`ing documents: the root's columns as
/// text, then one JSON column per related field, from the root rows that
/// match `predicate` (SQL on alias `r`).
pub fn documents_select(tree: &DocTree, predicate: &str) -> String {
    let root = &tree.root;
    let from = quote_table(&root.table.schema, &root.table.name);
    documents_from(tree, &from, predicate)
}

/// Like [`documents_select`], reading the root's rows from `from` (a leaf
/// partition under `ONLY`, for the snapshot's chunks).
pub fn documents_from(tree: &DocTree, from: &str, predicate: &str) -> String {
    let root = &tree.root;
    let mut cols: Vec<String> = root
        .columns
        .iter()
        .map(|c| format!("r.{}::text", quote_ident(&c.name)))
        .collect();
    for (i, c) in root.children.iter().enumerate() {
        cols.push(format!("{}::text", child_expr(c, "r", &format!("n{i}"))));
    }
    let mut wheres = vec![format!("({predicate})")];
    if let Some(f) = &root.filter {
        wheres.push(format!("({f})"));
    }
    for (i, c) in root.children.iter().enumerate() {
        if c.required {
            wheres.push(format!(
                "{} IS NOT NULL",
                required_expr(c, "r", &format!("q{i}"))
            ));
        }
    }
    format!(
        "SELECT {} FROM {from} r WHERE {}",
        cols.join(", "),
        wheres.join(" AND ")
    )
}

/// The documents of these roots (absent ones: deleted or filtered out).
pub fn documents_by_keys(tree: &DocTree, keys: &[RootKey]) -> String {
    documents_select(tree, &key_in(&tree.root.key, "r", keys))
}

/// `(a."x", a."y") IN (('1', '2'), ...)`; never true for no keys.
fn key_in(cols: &[String], alias: &str, keys: &[Vec<String>]) -> String {
    if keys.is_empty() {
        return "false".into();
    }
    let lhs: Vec<String> = cols
        .iter()
        .map(|c| format!("{alias}.{}", quote_ident(c)))
        .collect();
    let rows: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "({})",
                k.iter()
                    .map(|v| quote_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    format!("({}) IN ({})", lhs.join(", "), rows.join(", "))
}

/// A related row: `json_build_array(ARRAY[col::text, ...], child, ...)`.
fn row_expr(node: &DocNode, alias: &str) -> String {
    let vals: Vec<String> = node
        .columns
        .iter()
        .map(|c| format!("{alias}.{}::text", quote_ident(&c.name)))
        .collect();
    let mut parts = vec![format!("ARRAY[{}]::text[]", vals.join(", "))];
    for (i, c) in node.children.iter().enumerate() {
        parts.push(child_expr(c, alias, &format!("{alias}_{i}")));
    }
    format!("json_build_array({})", parts.join(", "))
}

fn on_clause(pairs: &[(String, String)], upper: &str, lower: &str) -> String {
    pairs
        .iter()
        .map(|(u, l)| format!("{lower}.{} = {upper}.{}", quote_ident(l), quote_ident(u)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `FROM ... WHERE ...` of a child's rows under the parent row `parent`.
fn child_from(c: &DocChild, parent: &str, alias: &str) -> String {
    let t = &c.node.table;
    let mut s = match &c.link {
        Link::ManyToOne { on } | Link::OneToMany { on } => format!(
            "FROM {} {alias} WHERE {}",
            quote_table(&t.schema, &t.name),
            on_clause(on, parent, alias)
        ),
        Link::Through {
            table,
            parent_on,
            child_on,
        } => {
            let j = format!("{alias}_j");
            format!(
                "FROM {} {j} JOIN {} {alias} ON {} WHERE {}",
                quote_table(&table.schema, &table.name),
                quote_table(&t.schema, &t.name),
                on_clause(child_on, &j, alias),
                on_clause(parent_on, parent, &j)
            )
        }
    };
    if let Some(f) = &c.node.filter {
        s.push_str(&format!(" AND ({f})"));
    }
    s
}

/// The JSON of a child field: an array (ordered) or one object or NULL.
fn child_expr(c: &DocChild, parent: &str, alias: &str) -> String {
    let row = row_expr(&c.node, alias);
    let from = child_from(c, parent, alias);
    if c.link.is_many() {
        let order: Vec<String> = c
            .node
            .order_by
            .iter()
            .map(|t| order_term(t, alias))
            .collect();
        format!(
            "(SELECT COALESCE(json_agg({row} ORDER BY {}), '[]') {from})",
            order.join(", ")
        )
    } else {
        let order: Vec<String> = c
            .node
            .key
            .iter()
            .map(|k| format!("{alias}.{}", quote_ident(k)))
            .collect();
        let order = if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", order.join(", "))
        };
        format!("(SELECT {row} {from}{order} LIMIT 1)")
    }
}

/// Whether a required child exists (one row is enough).
fn required_expr(c: &DocChild, parent: &str, alias: &str) -> String {
    format!("(SELECT 1 {} LIMIT 1)", child_from(c, parent, alias))
}

/// `name desc` → `a."name" DESC` (checked to be `column [asc|desc]` when
/// the mapping was read).
fn order_term(term: &str, alias: &str) -> String {
    let mut w = term.split_whitespace();
    let col = w.next().unwrap_or_default();
    let dir = w.next().map(str::to_uppercase).unwrap_or_default();
    format!("{alias}.{} {dir}", quote_ident(col))
        .trim_end()
        .to_string()
}

/// Which roots [`roots_select`] pages through.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The roots above the rows at a place holding one of these join
    /// values (the place's [`lower_columns`]).
    Above(&'a Place, &'a [Vec<String>]),
    /// Every root the mapping's filter admits: what a TRUNCATE of a
    /// related table touches.
    Every,
}

/// Up to `limit` root keys in `scope` after `after`, in key order, each as
/// the key columns' text then their values (for the keyset order).
pub fn roots_select(
    tree: &DocTree,
    scope: Scope<'_>,
    after: Option<&RootKey>,
    limit: usize,
) -> String {
    let root = &tree.root;
    let (from, mut wheres) = match scope {
        Scope::Above(place, values) => above(tree, place, values),
        Scope::Every => (
            format!("{} r", quote_table(&root.table.schema, &root.table.name)),
            root.filter.iter().map(|f| format!("({f})")).collect(),
        ),
    };
    let keys: Vec<String> = root
        .key
        .iter()
        .map(|k| format!("r.{}", quote_ident(k)))
        .collect();
    if let Some(a) = after {
        let lits: Vec<String> = a.iter().map(|v| quote_literal(v)).collect();
        wheres.push(format!("({}) > ({})", keys.join(", "), lits.join(", ")));
    }
    if wheres.is_empty() {
        wheres.push("true".into());
    }
    let text: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
    format!(
        "SELECT DISTINCT {}, {} FROM {from} WHERE {} ORDER BY {} LIMIT {limit}",
        text.join(", "),
        keys.join(", "),
        wheres.join(" AND "),
        keys.join(", ")
    )
}

/// The `FROM` (root `r` joined down to the changed row's parent) and the
/// condition on the join values, for [`Scope::Above`].
fn above(tree: &DocTree, place: &Place, values: &[Vec<String>]) -> (String, Vec<String>) {
    let root = &tree.root;
    let mut from = format!("{} r", quote_table(&root.table.schema, &root.table.name));
    let (mut node, mut alias) = (root, "r".to_string());
    let depth = place.path.len();
    // Walk down to the changed row's parent.
    for (d, &i) in place.path[..depth - 1].iter().enumerate() {
        let c = &node.children[i];
        let a = format!("u{d}");
        from.push_str(&join_down(c, &alias, &a));
        node = &c.node;
        alias = a;
    }
    let c = &node.children[place.path[depth - 1]];
    let (cond_alias, cols) = match (&c.link, place.as_through) {
        (Link::ManyToOne { on } | Link::OneToMany { on }, _) => (
            alias.clone(),
            on.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
        ),
        (Link::Through { parent_on, .. }, true) => (
            alias.clone(),
            parent_on.iter().map(|p| p.0.clone()).collect(),
        ),
        (
            Link::Through {
                table,
                parent_on,
                child_on,
            },
            false,
        ) => {
            let j = "uj".to_string();
            from.push_str(&format!(
                " JOIN {} {j} ON {}",
                quote_table(&table.schema, &table.name),
                on_clause(parent_on, &alias, &j)
            ));
            (j, child_on.iter().map(|p| p.0.clone()).collect())
        }
    };
    (from, vec![key_in(&cols, &cond_alias, values)])
}

/// ` JOIN child a ON ...` (through the join table for many-to-many).
fn join_down(c: &DocChild, parent: &str, a: &str) -> String {
    let t = &c.node.table;
    match &c.link {
        Link::ManyToOne { on } | Link::OneToMany { on } => format!(
            " JOIN {} {a} ON {}",
            quote_table(&t.schema, &t.name),
            on_clause(on, parent, a)
        ),
        Link::Through {
            table,
            parent_on,
            child_on,
        } => {
            let j = format!("{a}_j");
            format!(
                " JOIN {} {j} ON {} JOIN {} {a} ON {}",
                quote_table(&table.schema, &table.name),
                on_clause(parent_on, parent, &j),
                quote_table(&t.schema, &t.name),
                on_clause(child_on, &j, a)
            )
        }
    }
}

/// The columns of the changed row (of the table at `place`) that name the
/// rows above it: what `roots_select` takes values of. For the root, its key.
pub fn lower_columns(tree: &DocTree, place: &Place) -> Vec<String> {
    let (node, child) = tree.at(&place.path);
    match (child.map(|c| &c.link), place.as_through) {
        (None, _) => node.key.clone(),
        (Some(Link::ManyToOne { on } | Link::OneToMany { on }), _) => {
            on.iter().map(|p| p.1.clone()).collect()
        }
        (Some(Link::Through { parent_on, .. }), true) => {
            parent_on.iter().map(|p| p.1.clone()).collect()
        }
        (Some(Link::Through { child_on, .. }), false) => {
            child_on.iter().map(|p| p.1.clone()).collect()
        }
    }
}

/// Converts one value's text by its type OID (the snapshot's and the
/// stream's converter alike).
pub type Convert<'a> = &'a (dyn Fn(u32, &str) -> Result<Value, String> + Sync);

/// A converter from the type catalog, as streamed values are converted.
pub fn converter<'a>(
    types: &'a TypeCatalog,
    opts: &'a ValueOptions,
) -> impl Fn(u32, &str) -> Result<Value, String> + Sync + 'a {
    move |oid, text| convert(&types.resolve(oid), text, opts).map_err(|e| e.to_string())
}

/// Read documents' rows: the root's values converted, then per related
/// field the converted related rows (`[[value, ...], child, ...]`).
pub async fn read_documents(
    client: &Client,
    tree: &DocTree,
    keys: &[RootKey],
    conv: Convert<'_>,
) -> Result<Vec<Row>, SourceError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client.simple_query(&documents_by_keys(tree, keys)).await?;
    let mut out = Vec::with_capacity(keys.len());
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let texts: Vec<Option<&str>> = (0..r.len()).map(|i| r.get(i)).collect();
            out.push(document_row(tree, &texts, conv)?);
        }
    }
    Ok(out)
}

/// One result row of `documents_select` (texts in column order) converted.
pub fn document_row(
    tree: &DocTree,
    texts: &[Option<&str>],
    conv: Convert<'_>,
) -> Result<Row, SourceError> {
    let root = &tree.root;
    let n = root.columns.len();
    let bad = |what: String| SourceError::Setup(format!("{}: {what}", root.table.qualified_name()));
    let mut row = Vec::with_capacity(n + root.children.len());
    for (i, t) in texts.iter().take(n).enumerate() {
        row.push(match t {
            None => Datum::Null,
            Some(t) => Datum::Value(
                conv(root.columns[i].type_oid, t)
                    .map_err(|e| bad(format!("{}: {e}", root.columns[i].name)))?,
            ),
        });
    }
    for (i, c) in root.children.iter().enumerate() {
        let raw: Value = match texts.get(n + i).copied().flatten() {
            None => Value::Null,
            Some(t) => serde_json::from_str(t).map_err(|e| bad(format!("{}: {e}", c.field)))?,
        };
        let v = convert_child(raw, c, conv).map_err(bad)?;
        row.push(Datum::Value(v));
    }
    Ok(row)
}

/// A related field's raw JSON (`[[text, ...], child, ...]` rows) with
/// every value converted by its column's type.
pub fn convert_child(raw: Value, c: &DocChild, conv: Convert<'_>) -> Result<Value, String> {
    match raw {
        Value::Null => Ok(Value::Null),
        Value::Array(rows) if c.link.is_many() => rows
            .into_iter()
            .map(|r| convert_related(r, &c.node, conv))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        one => convert_related(one, &c.node, conv),
    }
}

/// `[[text, ...], child, ...]` → `[[value, ...], child, ...]`.
fn convert_related(raw: Value, node: &DocNode, conv: Convert<'_>) -> Result<Value, String> {
    let Value::Array(mut parts) = raw else {
        return Err(format!(
            "{}: a related row is not an array",
            node.table.qualified_name()
        ));
    };
    let children = parts.split_off(1.min(parts.len()));
    let vals = match parts.pop() {
        Some(Value::Array(vals)) => vals,
        _ => {
            return Err(format!(
                "{}: a related row has no values",
                node.table.qualified_name()
            ));
        }
    };
    let mut out = Vec::with_capacity(vals.len());
    for (i, v) in vals.into_iter().enumerate() {
        out.push(match v {
            Value::String(t) => conv(node.columns[i].type_oid, &t).map_err(|e| {
                format!(
                    "{}.{}: {e}",
                    node.table.qualified_name(),
                    node.columns[i].name
                )
            })?,
            other => other,
        });
    }
    let mut row = vec![Value::Array(out)];
    for (raw, c) in children.into_iter().zip(&node.children) {
        row.push(convert_child(raw, c, conv)?);
    }
    Ok(Value::Array(row))
}

/// Up to `limit` root keys in `scope` after `after`; fewer than `limit`
/// means there are no more.
pub async fn find_roots(
    client: &Client,
    tree: &DocTree,
    scope: Scope<'_>,
    after: Option<&RootKey>,
    limit: usize,
) -> Result<Vec<RootKey>, SourceError> {
    let n = tree.root.key.len();
    let sql = roots_select(tree, scope, after, limit);
    let mut out = Vec::new();
    for m in client.simple_query(&sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..n)
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

/// Whether every transaction of `xids` (32-bit ids from Begin messages) is
/// visible to a statement that starts now (see
/// [`crate::source::transaction_visible`] for why one may not be yet).
pub async fn all_visible(client: &Client, xids: &[u32]) -> Result<bool, SourceError> {
    if xids.is_empty() {
        return Ok(true);
    }
    const SQL: &str = "SELECT COALESCE(bool_and(COALESCE(pg_visible_in_snapshot(
                CASE WHEN f.full <= f.xmax THEN f.full::text::xid8
                     WHEN f.full >= 4294967296 THEN (f.full - 4294967296)::text::xid8 END,
                f.snap), true)), true)
           FROM (SELECT s.snap, s.xmax, ((s.xmax >> 32) << 32) | x AS full
                   FROM (SELECT pg_current_snapshot() AS snap,
                                pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax) s,
                        unnest($1::int8[]) x) f";
    let ids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
    Ok(client.query_one(SQL, &[&ids]).await?.get(0))
}
