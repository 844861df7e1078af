//! The publication changed under Sluice: a guard that notices.
//!
//! pgoutput sends only the changes the publication carries at the moment
//! each one is decoded. A table dropped from the publication by hand (even
//! for a second: `ALTER PUBLICATION … DROP TABLE`, then `ADD TABLE`), a
//! `publish` option narrowed, or the publication dropped, means that changes
//! made meanwhile never reach Sluice, and nothing in the stream says so
//! (measured on PostgreSQL 15: the insert between a DROP TABLE and an ADD
//! TABLE is simply absent; after DROP PUBLICATION the walsender fails with
//! 42704 at every start from then on, even once the publication is created
//! again, because decoding looks the publication up as of each change).
//!
//! Those changes are gone for good, so the only exact way on is a rebuild;
//! what must not happen is streaming on as if nothing happened. The guard
//! therefore records the publication's identity — its OID, what it
//! publishes, and the OID of each `pg_publication_rel` row of a mapped
//! table (a table dropped and added back gets a new row, so a new OID) —
//! and compares it with the catalog: while streaming (on a timer and
//! before every reconnect), and at start-up against the identity the
//! previous run recorded (for changes made while Sluice was stopped). Any
//! difference stops `sluice run` with exit 2 and the rebuild recipe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::source::error::SourceError;

/// What decides which changes a publication carries, as identities that
/// change whenever it is altered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationIdentity {
    /// `pg_publication.oid`: a publication dropped and created again has a new one.
    pub oid: u32,
    pub all_tables: bool,
    /// Which of insert, update, delete, truncate it publishes (`iudt`, `-` for off).
    pub publishes: String,
    /// `schema.table` → `pg_publication_rel.oid`, for tables named in it.
    pub tables: BTreeMap<String, u32>,
    /// `schema` → `pg_publication_namespace.oid` (`FOR TABLES IN SCHEMA`).
    pub schemas: BTreeMap<String, u32>,
}

/// Read the publication's identity; `None` when it does not exist.
pub async fn read_identity(
    client: &Client,
    publication: &str,
) -> Result<Option<PublicationIdentity>, SourceError> {
    let Some(row) = client
        .query_opt(
            "SELECT oid, puballtables,
                    (CASE WHEN pubinsert THEN 'i' ELSE '-' END) || (CASE WHEN pubupdate THEN 'u' ELSE '-' END)
                    || (CASE WHEN pubdelete THEN 'd' ELSE '-' END) || (CASE WHEN pubtruncate THEN 't' ELSE '-' END)
               FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let tables = client
        .query(
            "SELECT n.nspname || '.' || c.relname, pr.oid
               FROM pg_publication_rel pr
               JOIN pg_class c ON c.oid = pr.prrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE pr.prpubid = $1",
            &[&oid],
        )
        .await?;
    let schemas = client
        .query(
            "SELECT n.nspname::text, pn.oid
               FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
              WHERE pn.pnpubid = $1",
            &[&oid],
        )
        .await?;
    let pairs = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, u32>(1)))
            .collect()
    };
    Ok(Some(PublicationIdentity {
        oid,
        all_tables: row.get(1),
        publishes: row.get(2),
        tables: pairs(tables),
        schemas: pairs(schemas),
    }))
}

/// What changed between the identity Sluice recorded (`was`) and the one in
/// the catalog now (`now`) that can have kept changes of the `mapped`
/// tables (`schema.table`) from the stream; `None` if nothing did. Tables
/// that are not mapped are not looked at: their changes are not wanted.
pub fn what_changed(
    publication: &str,
    was: &PublicationIdentity,
    now: Option<&PublicationIdentity>,
    mapped: &[String],
) -> Option<String> {
    let Some(now) = now else {
        return Some(format!(
            "publication `{publication}` no longer exists (dropped by hand?)"
        ));
    };
    if now.oid != was.oid {
        return Some(format!(
            "publication `{publication}` was dropped and created again"
        ));
    }
    let lost: Vec<&str> = ["insert", "update", "delete", "truncate"]
        .into_iter()
        .zip(was.publishes.chars().zip(now.publishes.chars()))
        .filter(|(_, (w, n))| *w != '-' && *n == '-')
        .map(|(op, _)| op)
        .collect();
    if !lost.is_empty() {
        return Some(format!(
            "publication `{publication}` no longer publishes {} (its `publish` option was changed)",
            lost.join(", ")
        ));
    }
    if was.all_tables && !now.all_tables {
        return Some(format!(
            "publication `{publication}` is no longer FOR ALL TABLES"
        ));
    }
    for table in mapped {
        match (was.tables.get(table), now.tables.get(table)) {
            // Renamed (`ALTER TABLE … RENAME`): the same publication row
            // under another name still carries its changes, and the stream
            // follows the table by its relation id.
            (Some(w), None) if now.tables.values().any(|n| n == w) => {}
            (Some(_), None) => {
                return Some(format!(
                    "publication `{publication}` no longer publishes {table} (`ALTER PUBLICATION … DROP TABLE`?)"
                ));
            }
            (Some(w), Some(n)) if w != n => {
                return Some(format!(
                    "{table} was removed from publication `{publication}` and added again (or its row filter or column list was changed)"
                ));
            }
            _ => {}
        }
    }
    for (schema, w) in &was.schemas {
        if now.schemas.get(schema) != Some(w) {
            return Some(format!(
                "publication `{publication}` stopped publishing the tables in schema {schema} (at least for a while)"
            ));
        }
    }
    None
}

/// The error `sluice run` stops with: what happened, why the index cannot
/// be trusted, and the rebuild.
pub fn gap_error(slot: &str, what: &str) -> SourceError {
    SourceError::Setup(format!(
        "{what}: changes the publication did not carry in the meantime never reached Sluice, \
         so the index may miss them (or keep documents of rows deleted meanwhile), and streaming \
         on would hide that. Rebuild: `sluice teardown --yes-drop-slot` (drops replication slot \
         `{slot}`, the publication and this slot's records), delete the target indices, then \
         `sluice run` again (as the tables' owner, or after creating the publication again): its \
         initial snapshot loads every table anew (see docs/operations.md, section \"The \
         publication changed by hand\")"
    ))
}

/// A server error from `START_REPLICATION` or the stream that says the
/// publication is gone (42704 `publication "…" does not exist`): the slot
/// cannot pass the changes decoded while it was missing, even after the
/// publication is created again, so it is the same rebuild.
pub fn is_publication_missing(e: &SourceError) -> bool {
    matches!(e, SourceError::Server { error, .. }
        if error.code == "42704" && error.message.starts_with("publication "))
}

/// Checks the catalog against an identity while the reader streams.
#[derive(Debug, Clone)]
pub struct PublicationGuard {
    pub publication: String,
    pub slot: String,
    pub expected: PublicationIdentity,
    /// The mapped tables, `schema.table`.
    pub mapped: Vec<String>,
    pub every: std::time::Duration,
}

impl PublicationGuard {
    /// `Err` (the rebuild error) if the publication changed since `expected`.
    pub async fn check(&self, client: &Client) -> Result<(), SourceError> {
        let now = read_identity(client, &self.publication).await?;
        match what_changed(
            &self.publication,
            &self.expected,
            now.as_ref(),
            &self.mapped,
        ) {
            Some(what) => Err(gap_error(&self.slot, &what)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> PublicationIdentity {
        PublicationIdentity {
            oid: 100,
            all_tables: false,
            publishes: "iudt".into(),
            tables: [("public.a".to_string(), 1), ("public.b".to_string(), 2)].into(),
            schemas: BTreeMap::new(),
        }
    }

    fn mapped() -> Vec<String> {
        vec!["public.a".into()]
    }

    #[test]
    fn the_same_identity_is_no_change() {
        assert_eq!(
            what_changed("p", &identity(), Some(&identity()), &mapped()),
            None
        );
    }

    #[test]
    fn a_dropped_or_recreated_publication_is_a_change() {
        let gone = what_changed("p", &identity(), None, &mapped()).unwrap();
        assert!(gone.contains("no longer exists"), "{gone}");
        let again = PublicationIdentity {
            oid: 101,
            ..identity()
        };
        let msg = what_changed("p", &identity(), Some(&again), &mapped()).unwrap();
        assert!(msg.contains("dropped and created again"), "{msg}");
    }

    #[test]
    fn a_mapped_table_dropped_or_dropped_and_added_back_is_a_change() {
        let mut now = identity();
        now.tables.remove("public.a");
        let msg = what_changed("p", &identity(), Some(&now), &mapped()).unwrap();
        assert!(msg.contains("no longer publishes public.a"), "{msg}");
        now.tables.insert("public.a".into(), 7);
        let msg = what_changed("p", &identity(), Some(&now), &mapped()).unwrap();
        assert!(msg.contains("public.a was removed"), "{msg}");
    }

    #[test]
    fn a_mapped_table_renamed_is_still_published_and_no_change() {
        let mut now = identity();
        let row = now.tables.remove("public.a").unwrap();
        now.tables.insert("public.a_renamed".into(), row);
        assert_eq!(what_changed("p", &identity(), Some(&now), &mapped()), None);
    }

    #[test]
    fn tables_that_are_not_mapped_and_new_tables_do_not_matter() {
        let mut now = identity();
        now.tables.remove("public.b");
        now.tables.insert("public.c".into(), 9);
        assert_eq!(what_changed("p", &identity(), Some(&now), &mapped()), None);
    }

    #[test]
    fn a_narrowed_publish_option_is_a_change_and_a_wider_one_is_not() {
        let now = PublicationIdentity {
            publishes: "iu-t".into(),
            ..identity()
        };
        let msg = what_changed("p", &identity(), Some(&now), &mapped()).unwrap();
        assert!(msg.contains("no longer publishes delete"), "{msg}");
        let was = PublicationIdentity {
            publishes: "iu-t".into(),
            ..identity()
        };
        assert_eq!(what_changed("p", &was, Some(&identity()), &mapped()), None);
    }

    #[test]
    fn the_error_gives_the_rebuild() {
        let msg = gap_error("s", "publication `p` no longer exists").to_string();
        assert!(
            msg.contains("sluice teardown --yes-drop-slot") && msg.contains("`s`"),
            "{msg}"
        );
    }
}
