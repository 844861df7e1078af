//! Row filters, validated by PostgreSQL itself (the questions are put by
//! `source::filter_check`): first as a WHERE clause (names, types, syntax),
//! then under the stricter rules of a publication (built-in immutable
//! functions only, no subqueries or system columns) in a publication created
//! and rolled back, and finally for the columns it reads: outside the
//! replica identity, PostgreSQL would refuse every UPDATE and DELETE on the
//! table once it is published.

use super::Report;
use crate::config::{Config, Mapping};
use crate::model::CatalogTable;
use crate::model::ReplicaIdentity;
use crate::source::filter_check::{
    filter_columns, publication_facts, try_in_publication, unknown_filter_column,
};
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
    let columns = match filter_columns(client, &t.table.schema, &t.table.name, filter).await {
        Ok(columns) => columns,
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
    if t.replica_identity == ReplicaIdentity::Full {
        return;
    }
    let outside: Vec<&String> = columns
        .iter()
        .filter(|c| !t.replica_identity_columns().contains(c))
        .collect();
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
    let (can_create, published) = match publication_facts(
        client,
        &config.publication,
        &t.table.schema,
        &t.table.name,
    )
    .await
    {
        Ok(facts) => facts,
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
    let Err(e) = try_in_publication(client, &t.table.schema, &t.table.name, filter).await else {
        return;
    };
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
