//! `sluice teardown`: drops the slot, the publication and this deployment's
//! records in the state index, after checking that all of them may be
//! dropped, so a refusal leaves everything as it was (DESIGN invariant 1:
//! never pull the slot from under a running Sluice).
//!
//! The state index is shared: other deployments (other slots) keep their
//! initial-load markers, snapshot progress and reindexes in it. Deleting the
//! whole index made such a deployment take an unfinished initial load for
//! done after a crash. So only this slot's records go: its `initial|<slot>`
//! marker, the `table|…|initial:<slot>` progress of its initial load with
//! their `chunk|<run>|…` records, and the reindexes it runs (`"slot"`).
//! Backfills (`sluice snapshot`) record their progress by table and target,
//! not by slot, so nothing says whose they are: they stay.

use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::error::SqlState;

use super::{
    SlotStatus, StatusError, Targets, connect_pg, es_err, pg_err, read_slot, render_teardown,
    server_wal_lsn,
};
use crate::sink::Elasticsearch;
use crate::sink::admin::AdminError;
use crate::sink::state_store::{Filter, Record, StateIndex};
use crate::source::PgConnectConfig;
use crate::source::sql::quote_ident;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TeardownReport {
    pub slot_dropped: bool,
    pub publication_dropped: bool,
    /// Records of this deployment deleted from the state index.
    pub state_records_deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(
        "teardown drops replication slot {slot} (its position is lost: a later `sluice run` \
         starts over with a snapshot), publication {publication} and this slot's records in \
         index {state_index}; rerun with --yes-drop-slot to confirm"
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

/// Drops the slot, the publication and this slot's state records, after
/// checking that all three may be dropped (confirmed, slot idle and ours, publication
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
        state_records_deleted: 0,
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
    report.state_records_deleted =
        delete_own_state(es, &targets.state_index, &targets.slot).await?;
    tracing::info!(index = %targets.state_index, slot = %targets.slot,
        deleted = report.state_records_deleted, "deleted this slot's state records");
    Ok(report)
}

/// Delete `slot`'s records from the state index (see the module docs);
/// returns how many there were. A missing state index holds none.
async fn delete_own_state(es: &Elasticsearch, index: &str, slot: &str) -> Result<u64, StatusError> {
    let records = StateIndex::new(es.clone(), index);
    // Searches see what was written before (a missing index has nothing).
    match records.refresh().await {
        Ok(()) | Err(AdminError::Status { .. }) => {}
        Err(e) => return Err(es_err("refreshing the state index")(e)),
    }
    let initial = crate::app::load::target(slot);
    let tables = find(
        &records,
        &[
            Filter::Is("kind", json!("table")),
            Filter::Is("target", json!(initial)),
        ],
    )
    .await?;
    let reindexes = find(&records, &[Filter::Is("kind", json!("reindex"))]).await?;
    let run_ids: Vec<Value> = tables
        .iter()
        .filter_map(|r| r.source.get("run_id").cloned())
        .collect();
    let mut ids: Vec<String> = vec![crate::app::load::marker_id(slot)];
    ids.extend(tables.into_iter().map(|r| r.id));
    ids.extend(
        reindexes
            .into_iter()
            .filter(|r| r.source["slot"] == slot)
            .map(|r| r.id),
    );
    let mut deleted = delete(&records, &ids).await?;
    // Chunk records, a page at a time: each page is deleted (and refreshed)
    // before the next search, so the loop ends when none is left.
    if !run_ids.is_empty() {
        let chunks_of_runs = [
            Filter::Is("kind", json!("chunk")),
            Filter::AnyOf("run_id", run_ids),
        ];
        loop {
            let chunks = find(&records, &chunks_of_runs).await?;
            if chunks.is_empty() {
                break;
            }
            let ids: Vec<String> = chunks.into_iter().map(|r| r.id).collect();
            deleted += delete(&records, &ids).await?;
        }
    }
    Ok(deleted)
}

/// Up to 5000 records of the state index matching `filters`; none if the
/// index does not exist.
async fn find(records: &StateIndex, filters: &[Filter]) -> Result<Vec<Record>, StatusError> {
    records
        .find(filters, 5000)
        .await
        .map_err(es_err("reading the state index"))
}

/// Delete `ids` from the state index (refreshed, so the next search no
/// longer sees them); returns how many existed.
async fn delete(records: &StateIndex, ids: &[String]) -> Result<u64, StatusError> {
    records
        .delete_ids(ids)
        .await
        .map_err(es_err("deleting this slot's state records"))
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
