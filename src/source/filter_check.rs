//! Row filters put to PostgreSQL itself, for `check` (and every command's
//! preflight): as a WHERE clause (names, types, syntax; and which columns it
//! reads, from a VERBOSE plan), and under the stricter rules of a
//! publication, in a publication created inside a transaction that is
//! rolled back. Nothing here changes the server; the verdicts and their
//! words are the caller's. Keeps DESIGN invariant 10 with them: a filter
//! that would make PostgreSQL refuse the application's UPDATE and DELETE is
//! found before any publication carries it.
//!
//! Call only with a filter that `row_filter::single_expression` accepted:
//! the text is pasted into the statements below.

use serde_json::Value;
use tokio_postgres::{Client, Error};

use crate::source::manage::DDL_LOCK_TIMEOUT;
use crate::source::sql::quote_table;

/// The columns of `schema.table` that `filter` reads, in the order the
/// plan names them, each once. An error is PostgreSQL refusing the filter
/// as a WHERE clause.
pub async fn filter_columns(
    client: &Client,
    schema: &str,
    table: &str,
    filter: &str,
) -> Result<Vec<String>, Error> {
    let sql = format!(
        "EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM ONLY {} AS sluice_filter WHERE ({filter})",
        quote_table(schema, table)
    );
    let plan: Value = client.query_one(&sql, &[]).await?.get(0);
    let mut filters = Vec::new();
    collect_filters(&plan, &mut filters);
    let mut columns: Vec<String> = Vec::new();
    for f in &filters {
        for col in plan_filter_columns(f) {
            if !columns.contains(&col) {
                columns.push(col);
            }
        }
    }
    Ok(columns)
}

/// Whether the role may create publications in the database, and whether
/// the publication `publication` already publishes `schema.table`.
pub async fn publication_facts(
    client: &Client,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<(bool, bool), Error> {
    let r = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE'),
                    EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
            &[&publication, &schema, &table],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Create a publication of `schema.table` with `filter` and roll it back:
/// PostgreSQL applies its rules for publication row filters (built-in
/// immutable functions only, no subqueries or system columns), then table
/// ownership. The error, if any, is PostgreSQL's.
pub async fn try_in_publication(
    client: &Client,
    schema: &str,
    table: &str,
    filter: &str,
) -> Result<(), Error> {
    let sql = format!(
        "CREATE PUBLICATION sluice_check_{} FOR TABLE {} WHERE ({filter})",
        std::process::id(),
        quote_table(schema, table)
    );
    // The trial takes the same lock as the real publication DDL: bounded
    // the same way, so it never queues the application's DDL behind it.
    let lock_timeout = format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'");
    let tried = match client.batch_execute("BEGIN").await {
        // Extended protocol: exactly one statement, whatever the filter says.
        Ok(()) => match client.execute(&lock_timeout, &[]).await {
            Ok(_) => client.execute(&sql, &[]).await.map(|_| ()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let _ = client.batch_execute("ROLLBACK").await;
    tried
}

/// The column of PostgreSQL's `column "x" does not exist`.
pub fn unknown_filter_column(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("column \"")?;
    let name = rest.strip_suffix("\" does not exist")?;
    // `sluice_filter.x` when the filter qualified it with the alias.
    Some(name.rsplit('.').next().unwrap_or(name))
}

fn collect_filters(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "Filter" || k == "One-Time Filter" {
                    if let Value::String(s) = x {
                        out.push(s.clone());
                    }
                } else {
                    collect_filters(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_filters(x, out)),
        _ => {}
    }
}

/// Columns a VERBOSE plan's filter reads, from `sluice_filter.<column>`.
fn plan_filter_columns(filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = filter;
    while let Some(p) = rest.find("sluice_filter.") {
        let after = &rest[p + "sluice_filter.".len()..];
        let (name, consumed) = if let Some(q) = after.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if q[i + 1..].starts_with('"') {
                        name.push('"');
                        chars.next();
                        continue;
                    }
                    end = i + 1;
                    break;
                }
                name.push(c);
            }
            (name, end + 1)
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(after.len());
            (after[..end].to_string(), end)
        };
        if !name.is_empty() {
            out.push(name);
        }
        rest = &after[consumed.min(after.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_columns_are_read_from_verbose_plans() {
        assert_eq!(
            plan_filter_columns(
                "((sluice_filter.status <> 'draft'::text) AND (sluice_filter.\"Total\"\"x\" > 1))"
            ),
            vec!["status".to_string(), "Total\"x".to_string()]
        );
        assert!(plan_filter_columns("(1 = 1)").is_empty());
    }

    #[test]
    fn the_unknown_column_is_read_from_postgresqls_message() {
        assert_eq!(
            unknown_filter_column("column \"stauts\" does not exist"),
            Some("stauts")
        );
        assert_eq!(
            unknown_filter_column("column sluice_filter.x does not exist"),
            None
        );
        assert_eq!(unknown_filter_column("syntax error at or near \"(\""), None);
    }
}
