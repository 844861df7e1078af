//! The publication: if it is missing, can the role create it (it must own
//! every published table); if it exists, does it publish what the mappings
//! need. A missing publication the role cannot create would stop `run`, so
//! the report gives the exact SQL for the tables' owner to run.

use std::collections::BTreeMap;

use super::Report;
use crate::config::Config;
use crate::model::{Catalog, PublishedTable};
use crate::source::inspect::{self, PublishedColumns};

pub async fn check_publication(
    client: &tokio_postgres::Client,
    config: &Config,
    catalog: &Catalog,
    report: &mut Report,
) {
    let name = &config.publication;
    // Missing tables are reported on their own; SQL naming them would fail.
    let wanted: Vec<_> = config
        .mappings
        .publication_tables()
        .into_iter()
        .filter(|t| catalog.tables.contains_key(&t.qualified_name()))
        .collect();
    match inspect::published_columns(client, name).await {
        Err(e) => report.problem(format!("PostgreSQL: cannot read publication `{name}`: {e}")),
        Ok((false, _)) => check_creatable(client, config, &wanted, report).await,
        Ok((true, existing)) => check_published(name, &wanted, &existing, report),
    }
}

/// A missing publication: `run` creates it if the role owns every table
/// and may create in the database; otherwise the tables' owner must, and
/// the report says with which statement.
async fn check_creatable(
    client: &tokio_postgres::Client,
    config: &Config,
    wanted: &[PublishedTable],
    report: &mut Report,
) {
    let name = &config.publication;
    let mut not_owned = Vec::new();
    for t in wanted {
        if let Ok(false) = inspect::owns_table(client, &t.table.schema, &t.table.name).await {
            not_owned.push(t.qualified_name());
        }
    }
    let can_create_db = inspect::may_create_in_database(client)
        .await
        .unwrap_or(false);
    if wanted.is_empty() {
        return;
    }
    if !not_owned.is_empty() || !can_create_db {
        let why = if not_owned.is_empty() {
            "it lacks CREATE on the database".to_string()
        } else {
            format!("it does not own {}", not_owned.join(", "))
        };
        let list: Vec<String> = wanted.iter().map(|t| t.to_sql()).collect();
        report.problem(format!(
            "publication `{name}` does not exist and role `{}` cannot create it ({why}); as the tables' owner run: CREATE PUBLICATION {name} FOR TABLE {} WITH (publish_via_partition_root = true);",
            config.postgres.user,
            list.join(", ")
        ));
    } else {
        report
            .facts
            .push(format!("publication `{name}` will be created"));
    }
}

/// An existing publication: every wanted table and column published (or
/// `run` must add them: warnings, since `run` does).
fn check_published(
    name: &str,
    wanted: &[PublishedTable],
    existing: &[PublishedColumns],
    report: &mut Report,
) {
    let have: BTreeMap<String, &Vec<String>> = existing
        .iter()
        .map(|p| (format!("{}.{}", p.schema, p.table), &p.columns))
        .collect();
    for t in wanted {
        let q = t.qualified_name();
        match (have.get(&q), &t.columns) {
            (None, _) => report.warnings.push(format!(
                "publication `{name}` does not publish {q}: `run` must add it (ALTER PUBLICATION {name} ADD TABLE {})",
                t.to_sql()
            )),
            (Some(cols), Some(need)) => {
                let missing: Vec<&String> = need.iter().filter(|c| !cols.contains(c)).collect();
                if !missing.is_empty() {
                    report.warnings.push(format!(
                        "publication `{name}` does not publish column(s) {missing:?} of {q} that the mappings use"
                    ));
                }
            }
            _ => {}
        }
    }
    report.facts.push(format!(
        "publication `{name}` exists ({} table(s))",
        have.len()
    ));
}
