//! `sluice teardown`: drops the slot, the publication and this deployment's
//! records in the state index, after checking that all of them may be
//! dropped, so a refusal leaves everything as it was (DESIGN invariant 1:
//! never pull the slot from under a running Sluice).
//!
//! The state index is shared: other deployments (other slots) keep their
//! initial-load markers, snapshot progress and reindexes in it. Deleting the
//! whole index made such a deployment take an unfinished initial load for
//! done after a crash. So only this slot's records go: its `initial|<slot>`
//! marker, the `publication|<slot>|…` identity `run` streams with, the
//! `table|…|initial:<slot>` progress of its initial load with their
//! `chunk|<run>|…` records, and the reindexes it runs (`"slot"`).
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
use crate::source::{self, PgConnectConfig, SourceError, inspect};

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
            TeardownError::NotConfirmed { .. } => crate::app::EXIT_CONFIG,
            TeardownError::Status(e) => e.exit_code(),
            _ => crate::app::EXIT_RUNTIME,
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
    let (slot_exists, publication_exists) = may_drop(&client, pg, targets).await?;
    let mut report = TeardownReport {
        slot_dropped: false,
        publication_dropped: false,
        state_records_deleted: 0,
    };
    if slot_exists {
        report.slot_dropped = drop_slot(&client, pg, &targets.slot).await?;
        if report.slot_dropped {
            tracing::info!(slot = %targets.slot, "dropped replication slot");
        }
    }
    if publication_exists {
        source::drop_publication(&client, &targets.publication)
            .await
            .map_err(|e| query_failed("dropping the publication", pg, e))?;
        report.publication_dropped = true;
        tracing::info!(publication = %targets.publication, "dropped publication");
    }
    report.state_records_deleted =
        delete_own_state(es, &targets.state_index, &targets.slot, pg).await?;
    tracing::info!(index = %targets.state_index, slot = %targets.slot,
        deleted = report.state_records_deleted, "deleted this slot's state records");
    Ok(report)
}

/// Everything teardown checks before it drops anything: the slot is this
/// database's and idle, the publication is this role's to drop. Returns
/// whether the slot and the publication exist.
async fn may_drop(
    client: &tokio_postgres::Client,
    pg: &PgConnectConfig,
    targets: &Targets,
) -> Result<(bool, bool), TeardownError> {
    let (server_lsn, _) = server_wal_lsn(client, pg).await?;
    let slot = read_slot(client, pg, &targets.slot, server_lsn).await?;
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
    let publication = inspect::publication_owner(client, &targets.publication)
        .await
        .map_err(pg_err("reading pg_publication", pg))?;
    if let Some(p) = &publication
        && !p.may_drop
    {
        return Err(TeardownError::PublicationNotOwned {
            publication: targets.publication.clone(),
            owner: p.owner.clone(),
            user: p.current_user.clone(),
        });
    }
    Ok((
        matches!(slot, SlotStatus::Present(_)),
        publication.is_some(),
    ))
}

/// Drop the (idle) slot; whether it was there to drop.
async fn drop_slot(
    client: &tokio_postgres::Client,
    pg: &PgConnectConfig,
    slot: &str,
) -> Result<bool, TeardownError> {
    match source::drop_slot(client, slot).await {
        Ok(dropped) => Ok(dropped),
        // A Sluice started between the check and the drop.
        Err(SourceError::Setup(_)) => Err(TeardownError::SlotActive {
            slot: slot.to_string(),
            pid: 0,
            application: None,
        }),
        Err(SourceError::Sql(e)) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
            Err(TeardownError::SlotActive {
                slot: slot.to_string(),
                pid: 0,
                application: None,
            })
        }
        Err(e) => Err(query_failed("dropping the replication slot", pg, e).into()),
    }
}

/// A failed statement of the source layer, in status's words.
fn query_failed(what: &'static str, pg: &PgConnectConfig, e: SourceError) -> StatusError {
    match e {
        SourceError::Sql(e) => pg_err(what, pg)(e),
        other => StatusError::PgQuery {
            what,
            target: pg.to_string(),
            message: crate::ops::logging::redact_url(&other.to_string()),
        },
    }
}

/// Delete `slot`'s records from the state index (see the module docs);
/// returns how many there were. A missing state index holds none.
async fn delete_own_state(
    es: &Elasticsearch,
    index: &str,
    slot: &str,
    pg: &PgConnectConfig,
) -> Result<u64, StatusError> {
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
    let mut ids: Vec<String> = vec![
        crate::app::load::marker_id(slot),
        crate::app::load::publication_record_id(slot, pg),
    ];
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
