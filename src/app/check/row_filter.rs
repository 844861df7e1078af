//! Row filters, validated by PostgreSQL itself: first as a WHERE clause
//! (names, types, syntax), then under the stricter rules of a publication
//! (built-in immutable functions only, no subqueries or system columns) in a
//! publication created and rolled back, and finally for the columns it
//! reads: outside the replica identity, PostgreSQL would refuse every
//! UPDATE and DELETE on the table once it is published.

use serde_json::Value;

use super::Report;
use crate::config::{Config, Mapping};
use crate::model::CatalogTable;
use crate::model::ReplicaIdentity;
use crate::source::sql::quote_table;

/// Ask PostgreSQL to parse the filter, and check that it only reads replica
/// identity columns: PostgreSQL refuses UPDATE and DELETE on a table whose
/// publication row filter reads other columns (unless REPLICA IDENTITY FULL).
pub(super) async fn check_row_filter(
    client: &tokio_postgres::Client,
    config: &Config,
    m: &Mapping,
    t: &CatalogTable,
    filter: &str,
    report: &mut Report,
) {
    let at = format!(
        "{} line {}: `filter`",
        m.file.display(),
        m.filter_line.unwrap_or(m.table_line)
    );
    // One expression, or nothing below may see it (the EXPLAIN and the trial
    // publication paste it into SQL).
    if let Err(why) = crate::source::row_filter::single_expression(filter) {
        report.problem(format!("{at}: Sluice rejects the row filter: {why}"));
        return;
    }
    let sql = format!(
        "EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1 FROM ONLY {} AS sluice_filter WHERE ({filter})",
        quote_table(&t.table.schema, &t.table.name)
    );
    let plan: Value = match client.query_one(&sql, &[]).await {
        Ok(r) => r.get(0),
        Err(e) => {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            let hint = unknown_filter_column(&msg)
                .and_then(|c| {
                    crate::config::diag::did_you_mean(c, t.columns.iter().map(|c| c.name.as_str()))
                })
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            report.problem(format!(
                "{at}: PostgreSQL rejects the row filter: {msg}{hint}"
            ));
            return;
        }
    };
    check_publication_rules(client, config, t, filter, &at, report).await;
    let mut filters = Vec::new();
    collect_filters(&plan, &mut filters);
    if t.replica_identity == ReplicaIdentity::Full {
        return;
    }
    let mut outside: Vec<String> = Vec::new();
    for f in &filters {
        for col in filter_columns(f) {
            if !t.replica_identity_columns().contains(&col) && !outside.contains(&col) {
                outside.push(col);
            }
        }
    }
    if !outside.is_empty() {
        report.problem(format!(
            "{at}: the row filter reads {} outside {}.{}'s replica identity; PostgreSQL would then refuse UPDATE and DELETE on the table; run `ALTER TABLE {} REPLICA IDENTITY FULL` or filter on key columns only",
            outside.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
            t.table.schema,
            t.table.name,
            quote_table(&t.table.schema, &t.table.name)
        ));
    }
}

/// A filter that is fine in a WHERE clause may still be refused in a
/// publication (`now()`, a user-defined function, a subquery). Creating a
/// publication in a transaction that is rolled back asks PostgreSQL without
/// changing anything. That needs CREATE on the database; PostgreSQL checks
/// the filter before table ownership, so "must be owner" means it passed.
/// Without CREATE, and with no publication holding the table yet, the
/// filter is checked only when its owner creates the publication: a warning.
async fn check_publication_rules(
    client: &tokio_postgres::Client,
    config: &Config,
    t: &CatalogTable,
    filter: &str,
    at: &str,
    report: &mut Report,
) {
    let facts = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE'),
                    EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
            &[&config.publication, &t.table.schema, &t.table.name],
        )
        .await;
    let (can_create, published) = match facts {
        Ok(r) => (r.get::<_, bool>(0), r.get::<_, bool>(1)),
        Err(e) => {
            report.problem(format!(
                "{at}: cannot check the row filter's privileges: {e}"
            ));
            return;
        }
    };
    if !can_create {
        if !published {
            report.warnings.push(format!(
                "{at}: role `{}` may not create publications, so PostgreSQL's rules for publication row filters (built-in immutable functions only, no subqueries) are applied only when the tables' owner creates the publication",
                config.postgres.user
            ));
        }
        return;
    }
    let sql = format!(
        "CREATE PUBLICATION sluice_check_{} FOR TABLE {} WHERE ({filter})",
        std::process::id(),
        quote_table(&t.table.schema, &t.table.name)
    );
    // The trial takes the same lock as the real publication DDL: bounded
    // the same way, so it never queues the application's DDL behind it.
    let lock_timeout = format!(
        "SET LOCAL lock_timeout = '{}'",
        crate::source::manage::DDL_LOCK_TIMEOUT
    );
    let tried = match client.batch_execute("BEGIN").await {
        // Extended protocol: exactly one statement, whatever the filter says.
        Ok(()) => match client.execute(&lock_timeout, &[]).await {
            Ok(_) => client.execute(&sql, &[]).await.map(|_| ()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let _ = client.batch_execute("ROLLBACK").await;
    let Err(e) = tried else { return };
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {}
        Some(db) => {
            let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
            report.problem(format!(
                "{at}: PostgreSQL refuses it as a publication row filter: {}{detail}",
                db.message()
            ));
        }
        None => report.problem(format!("{at}: cannot validate the row filter: {e}")),
    }
}

/// The column of PostgreSQL's `column "x" does not exist`.
fn unknown_filter_column(msg: &str) -> Option<&str> {
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
fn filter_columns(filter: &str) -> Vec<String> {
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
            filter_columns(
                "((sluice_filter.status <> 'draft'::text) AND (sluice_filter.\"Total\"\"x\" > 1))"
            ),
            vec!["status".to_string(), "Total\"x".to_string()]
        );
        assert!(filter_columns("(1 = 1)").is_empty());
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
