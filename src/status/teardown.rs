//! `sluice teardown`: drops the slot, the publication and the state index,
//! after checking that all of them may be dropped, so a refusal leaves
//! everything as it was (DESIGN invariant 1: never pull the slot from under
//! a running Sluice).

use elasticsearch::Elasticsearch;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::error::SqlState;

use super::{
    SlotStatus, StatusError, Targets, connect_pg, es_reason, pg_err, read_slot, render_teardown,
    server_wal_lsn,
};
use crate::source::PgConnectConfig;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TeardownReport {
    pub slot_dropped: bool,
    pub publication_dropped: bool,
    pub state_index_deleted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(
        "teardown drops replication slot {slot} (its position is lost: a later `sluice run` \
         starts over with a snapshot), publication {publication} and index {state_index}; \
         rerun with --yes-drop-slot to confirm"
    )]
    NotConfirmed {
        slot: String,
        publication: String,
        state_index: String,
    },
    #[error(
        "replication slot {slot} is in use by process {pid}{}: another Sluice is streaming from it; \
         stop that one first (nothing was dropped)",
        application.as_deref().map(|a| format!(" ({a})")).unwrap_or_default()
    )]
    SlotActive {
        slot: String,
        pid: i32,
        application: Option<String>,
    },
    #[error(
        "replication slot {slot} belongs to database {database}, not {configured}: \
         refusing to drop another database's slot (nothing was dropped)"
    )]
    SlotInOtherDatabase {
        slot: String,
        database: String,
        configured: String,
    },
    #[error(
        "publication {publication} is owned by {owner}, and {user} may not drop it: \
         run `DROP PUBLICATION {publication}` as {owner}, or teardown as that role (nothing was dropped)"
    )]
    PublicationNotOwned {
        publication: String,
        owner: String,
        user: String,
    },
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl TeardownError {
    pub fn exit_code(&self) -> i32 {
        match self {
            TeardownError::NotConfirmed { .. } => crate::cli::EXIT_CONFIG,
            TeardownError::Status(e) => e.exit_code(),
            _ => crate::cli::EXIT_RUNTIME,
        }
    }
}

pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Drops the slot, the publication and the state index, after checking that
/// all three may be dropped (confirmed, slot idle and ours, publication
/// droppable by this role). The target and dead-letter indices stay: they
/// are the user's data.
pub async fn teardown(
    pg: &PgConnectConfig,
    es: &Elasticsearch,
    targets: &Targets,
    yes_drop_slot: bool,
) -> Result<TeardownReport, TeardownError> {
    if !yes_drop_slot {
        return Err(TeardownError::NotConfirmed {
            slot: targets.slot.clone(),
            publication: targets.publication.clone(),
            state_index: targets.state_index.clone(),
        });
    }
    let client = connect_pg(pg, "sluice-teardown").await?;
    let (server_lsn, _) = server_wal_lsn(&client, pg).await?;
    let slot = read_slot(&client, pg, &targets.slot, server_lsn).await?;
    if let SlotStatus::Present(s) = &slot {
        if let Some(db) = &s.database
            && db != &pg.dbname
        {
            return Err(TeardownError::SlotInOtherDatabase {
                slot: s.name.clone(),
                database: db.clone(),
                configured: pg.dbname.clone(),
            });
        }
        if s.active {
            return Err(TeardownError::SlotActive {
                slot: s.name.clone(),
                pid: s.active_pid.unwrap_or(0),
                application: s.active_application.clone(),
            });
        }
    }
    let publication = client
        .query_opt(
            "SELECT pg_get_userbyid(pubowner)::text, pg_has_role(pubowner, 'USAGE'), current_user::text
               FROM pg_publication WHERE pubname = $1",
            &[&targets.publication],
        )
        .await
        .map_err(pg_err("reading pg_publication", pg))?;
    if let Some(row) = &publication
        && !row.get::<_, bool>(1)
    {
        return Err(TeardownError::PublicationNotOwned {
            publication: targets.publication.clone(),
            owner: row.get(0),
            user: row.get(2),
        });
    }

    let mut report = TeardownReport {
        slot_dropped: false,
        publication_dropped: false,
        state_index_deleted: false,
    };
    if matches!(slot, SlotStatus::Present(_)) {
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&targets.slot])
            .await
        {
            Ok(_) => report.slot_dropped = true,
            // A Sluice started between the check and the drop.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                return Err(TeardownError::SlotActive {
                    slot: targets.slot.clone(),
                    pid: 0,
                    application: None,
                });
            }
            Err(e) => return Err(pg_err("dropping the replication slot", pg)(e).into()),
        }
        tracing::info!(slot = %targets.slot, "dropped replication slot");
    }
    if publication.is_some() {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(&targets.publication)
            ))
            .await
            .map_err(pg_err("dropping the publication", pg))?;
        report.publication_dropped = true;
        tracing::info!(publication = %targets.publication, "dropped publication");
    }
    let resp = es
        .indices()
        .delete(elasticsearch::indices::IndicesDeleteParts::Index(&[
            &targets.state_index,
        ]))
        .send()
        .await
        .map_err(|e| StatusError::Es {
            what: "deleting the state index",
            message: crate::sink::describe_es_error(&e),
        })?;
    match resp.status_code().as_u16() {
        404 => {}
        c if (200..300).contains(&c) => {
            report.state_index_deleted = true;
            tracing::info!(index = %targets.state_index, "deleted state index");
        }
        c => {
            let body: Value = resp.json().await.unwrap_or_default();
            return Err(StatusError::Es {
                what: "deleting the state index",
                message: format!("HTTP {c}: {}", es_reason(&body)),
            }
            .into());
        }
    }
    Ok(report)
}

/// `sluice teardown [--yes-drop-slot]` in one call: returns the text to print.
pub async fn teardown_command(
    pg: &PgConnectConfig,
    es: &crate::sink::EsConfig,
    targets: &Targets,
    yes_drop_slot: bool,
) -> Result<String, TeardownError> {
    let client = crate::sink::build_client(es).map_err(StatusError::from)?;
    let report = teardown(pg, &client, targets, yes_drop_slot).await?;
    Ok(render_teardown(&report, targets))
}
