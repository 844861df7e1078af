//! The publication: if it is missing, can the role create it (it must own
//! every published table); if it exists, does it publish what the mappings
//! need. A missing publication the role cannot create would stop `run`, so
//! the report gives the exact SQL for the tables' owner to run.

use std::collections::BTreeMap;

use super::Report;
use crate::config::Config;
use crate::model::Catalog;

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
    let existing = client
        .query(
            "SELECT schemaname::text, tablename::text, attnames::text[]
               FROM pg_publication_tables WHERE pubname = $1",
            &[name],
        )
        .await;
    let exists = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[name],
        )
        .await
        .map(|r| r.get::<_, bool>(0));
    let (existing, exists) = match (existing, exists) {
        (Ok(e), Ok(x)) => (e, x),
        (Err(e), _) | (_, Err(e)) => {
            report.problem(format!("PostgreSQL: cannot read publication `{name}`: {e}"));
            return;
        }
    };
    if !exists {
        let mut not_owned = Vec::new();
        for t in &wanted {
            let owned = client
                .query_one(
                    "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                         OR pg_has_role(current_user, c.relowner, 'USAGE')
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = $1 AND c.relname = $2",
                    &[&t.table.schema, &t.table.name],
                )
                .await;
            if let Ok(r) = owned
                && !r.get::<_, bool>(0)
            {
                not_owned.push(t.qualified_name());
            }
        }
        let can_create_db = client
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
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
        return;
    }
    let have: BTreeMap<String, Vec<String>> = existing
        .iter()
        .map(|r| {
            (
                format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
                r.get::<_, Vec<String>>(2),
            )
        })
        .collect();
    for t in &wanted {
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
