//! The stream's transform step: the pure transformer plus the two things it
//! cannot do alone.
//!
//! - Unchanged TOAST values (DESIGN invariant 6): when a change carries one
//!   that no full old row can fill — an update, or an insert of a row that
//!   re-enters a row filter, which PostgreSQL sends without the value — the
//!   row is read again by key and the holes are filled from it — once the
//!   change's transaction is visible to other sessions, which can lag a
//!   moment behind the stream delivering it (`source::transaction_visible`).
//! - Row failures (issue 14, case 4): a change one mapping cannot turn into
//!   a document (bad text for a conversion, a NULL `_id` column) becomes a
//!   dead-letter write for that mapping, handed to the indexer with the
//!   change's other ops. So it is durable before the slot passes the change
//!   (invariants 1 and 5), and the stream goes on instead of stopping on the
//!   same change at every restart.
//!
//! What stops the stream is returned as [`StepError`]: a mapping that cannot
//! work with the table (every row would fail), or a re-read failing for a
//! reason that is not the row's. [`TransformError::scope`] decides which is
//! which.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;

use crate::config::Mappings;
use crate::model::{BulkOp, RejectedRow, RetryPolicy};
use crate::model::{Change, ChangeKind, Datum, OldRow, Row};
use crate::ops::metrics::names;
use crate::sink::dead_letter;
use crate::source::{self, SourceError};
use crate::transform::{FailureScope, TransformError, Transformer};

/// Why the transform step could not take a change. Row failures are not
/// here: the step stores those as dead letters and goes on (issue 14,
/// case 4). What is here stops the pipeline; nothing is confirmed past the
/// change, so a restart (after the cause is fixed) replays it.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The mapping cannot work with the table as it is (see
    /// [`crate::transform::FailureScope::Mapping`]): fix the mapping.
    #[error(transparent)]
    Mapping(Box<crate::transform::TransformError>),
    /// Re-reading a row failed for a reason that is not the row's (lost
    /// connection past the patience, a missing privilege).
    #[error("re-reading a row of {table}: {source}")]
    Refetch {
        table: String,
        source: Box<crate::source::SourceError>,
    },
}

/// How long re-reading a row waits for PostgreSQL to come back.
const REFETCH_PATIENCE: Duration = Duration::from_secs(120);

/// What the step needs besides the mappings.
#[derive(Clone)]
pub struct StepSetup {
    pub pg_cfg: source::PgConnectConfig,
    pub pg: Arc<tokio_postgres::Client>,
    pub dead_letter_index: Arc<str>,
    /// OIDs of the mapped tables at start (`oid → schema.table`), so the
    /// backlog from before a rename finds its mapping.
    pub relation_ids: Vec<(u32, String)>,
}

/// The transform step for `mappings`. A row deleted before its re-read
/// yields nothing: its delete follows in the stream.
pub fn transform_step(
    mappings: &Mappings,
    setup: StepSetup,
) -> impl FnMut(&Change, &mut Vec<BulkOp>) -> Result<(), StepError> + Send + 'static {
    let mut transformer =
        Transformer::new(mappings).with_relation_ids(setup.relation_ids.iter().cloned());
    let indices: Vec<(Arc<str>, String)> = mappings
        .list
        .iter()
        .map(|m| (m.name.clone(), m.index_pattern()))
        .collect();
    let mut reader = Refetcher {
        pg_cfg: setup.pg_cfg,
        pg: Some(setup.pg),
        catalog: source::TypeCatalog::new(),
        opts: source::ValueOptions::default(),
        visible: None,
    };
    let dead_letter_index = setup.dead_letter_index;
    move |change, out| {
        let mut rejected = Vec::new();
        let mut refused = Vec::new();
        let first = transformer.transform_rows(change, out, &mut rejected);
        match first {
            Ok(_) => {}
            Err(TransformError::NeedsFullRow { mapping, .. }) => match reader.fill(change)? {
                Filled::Change(filled) => {
                    if let Err(e) = transformer.transform_rows(&filled, out, &mut rejected) {
                        if e.scope() == FailureScope::Mapping {
                            return Err(StepError::Mapping(Box::new(e)));
                        }
                        rejected.push(e);
                    }
                }
                Filled::Gone => {}
                Filled::Refused(reason) => refused.push((mapping, reason)),
            },
            Err(e) => return Err(StepError::Mapping(Box::new(e))),
        }
        let index_of = |m: &str| {
            indices
                .iter()
                .find(|(n, _)| &**n == m)
                .map(|(_, i)| i.clone())
                .unwrap_or_default()
        };
        let rows =
            rejected
                .iter()
                .map(|e| {
                    let m = e.mapping();
                    rejected_row(change, m, index_of(m), e.kind(), e.key(), e)
                })
                .chain(refused.iter().map(|(m, reason)| {
                    rejected_row(change, m, index_of(m), "refetch", None, reason)
                }));
        for r in rows {
            tracing::error!(
                table = %r.table,
                mapping = %r.mapping,
                key = %r.key,
                lsn = %r.lsn,
                reason = %r.reason,
                dead_letter_index = %dead_letter_index,
                "a row cannot be transformed; storing it as a dead letter and going on"
            );
            // Counted when handed over (a replay after a crash counts it
            // again; the record itself is stored once).
            metrics::counter!(names::DEAD_LETTERS_TOTAL, "table" => r.table.to_string())
                .increment(1);
            out.push(dead_letter::rejected_row_op(&r, &dead_letter_index));
        }
        Ok(())
    }
}

/// The dead-letter description of `change`, which `mapping` refused.
fn rejected_row(
    change: &Change,
    mapping: &Arc<str>,
    index: String,
    kind: &'static str,
    key: Option<&serde_json::Value>,
    reason: &dyn std::fmt::Display,
) -> RejectedRow {
    let rel = &change.relation;
    let (label, row, old) = match &change.kind {
        ChangeKind::Insert { new } => ("insert", Some(new), None),
        ChangeKind::Update { old, new } => ("update", Some(new), old.as_ref()),
        ChangeKind::Delete { old } => ("delete", None, Some(old)),
        ChangeKind::Truncate => ("truncate", None, None),
    };
    let old_row = old.map(|o| match o {
        OldRow::Key(r) | OldRow::Full(r) => crate::transform::row_values(rel, r),
    });
    let row_json = match row {
        Some(r) => crate::transform::row_values(rel, r),
        None => old_row.clone().unwrap_or(serde_json::Value::Null),
    };
    let key = key.map_or_else(|| identity_key(change), |k| k.to_string());
    RejectedRow {
        mapping: mapping.clone(),
        index,
        table: rel.qualified_name().into(),
        change: label,
        key,
        lsn: change.version,
        kind,
        reason: reason.to_string(),
        row: row_json,
        old_row: if label == "delete" { None } else { old_row },
    }
}

/// The row's replica identity columns as JSON text (every change carries
/// them), for failures that do not know the mapping's `_id` columns.
fn identity_key(change: &Change) -> String {
    let rel = &change.relation;
    let row = match &change.kind {
        ChangeKind::Insert { new } | ChangeKind::Update { new, .. } => Some(new),
        ChangeKind::Delete { old } => match old {
            OldRow::Key(r) | OldRow::Full(r) => Some(r),
        },
        ChangeKind::Truncate => None,
    };
    let Some(row) = row else {
        return "null".into();
    };
    let key: serde_json::Map<String, serde_json::Value> = rel
        .columns
        .iter()
        .zip(row)
        .filter(|(c, _)| c.is_key)
        .map(|(c, d)| {
            let v = match d {
                Datum::Value(v) => v.clone(),
                Datum::Null | Datum::Unchanged => serde_json::Value::Null,
            };
            (c.name.clone(), v)
        })
        .collect();
    serde_json::Value::Object(key).to_string()
}

/// What a re-read made of a change.
enum Filled {
    /// The change with its unchanged values filled from the current row.
    Change(Change),
    /// The row is gone (deleted since; its delete follows in the stream).
    Gone,
    /// The row cannot be re-read for a reason of its own (a key column
    /// dropped since, a value that no longer converts): dead-letter it.
    Refused(String),
}

/// Re-reads rows over one SQL connection, reopened when it drops.
struct Refetcher {
    pg_cfg: source::PgConnectConfig,
    pg: Option<Arc<tokio_postgres::Client>>,
    catalog: source::TypeCatalog,
    opts: source::ValueOptions,
    /// The last transaction seen visible (re-reads of one transaction's
    /// rows ask once).
    visible: Option<u32>,
}

impl Refetcher {
    /// Fill `change`'s unchanged TOAST values from the row as it is now.
    /// Only the holes are filled: columns the change set keep its values,
    /// and an update's old row still moves the document if the key changed.
    fn fill(&mut self, change: &Change) -> Result<Filled, StepError> {
        let new = match &change.kind {
            ChangeKind::Insert { new } | ChangeKind::Update { new, .. } => new,
            // A delete needs only where the document is; a hole there is
            // the row's problem.
            ChangeKind::Delete { .. } | ChangeKind::Truncate => {
                return Ok(Filled::Refused(
                    "an unchanged TOAST value in the old row of a delete".into(),
                ));
            }
        };
        let current = match self.read(change, new) {
            Ok(rows) => match rows.into_iter().next() {
                Some(r) => r,
                None => return Ok(Filled::Gone),
            },
            Err(e @ SourceError::Setup(_)) => return Ok(Filled::Refused(e.to_string())),
            Err(source) => {
                return Err(StepError::Refetch {
                    table: change.relation.qualified_name(),
                    source: Box::new(source),
                });
            }
        };
        let filled: Row = new
            .iter()
            .zip(current)
            .map(|(mine, now)| match mine {
                Datum::Unchanged => now,
                other => other.clone(),
            })
            .collect();
        let kind = match &change.kind {
            ChangeKind::Update { old, .. } => ChangeKind::Update {
                old: old.clone(),
                new: filled,
            },
            _ => ChangeKind::Insert { new: filled },
        };
        Ok(Filled::Change(Change {
            kind,
            ..change.clone()
        }))
    }

    /// Wait, polling from 1 ms up to 50 ms, until `xid` is visible to a
    /// new statement on `client`, or `give_up` (see
    /// [`source::transaction_visible`] for why a streamed transaction may
    /// not be visible yet).
    async fn wait_visible(
        client: &tokio_postgres::Client,
        xid: u32,
        give_up: tokio::time::Instant,
    ) -> Result<(), SourceError> {
        let mut pause = Duration::from_millis(1);
        while !source::transaction_visible(client, xid).await? {
            if tokio::time::Instant::now() >= give_up {
                return Err(SourceError::Protocol(format!(
                    "transaction {xid}, delivered by the replication stream as committed, is still not visible to other sessions after {REFETCH_PATIENCE:?}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Read the row by `new`'s key. The transform task runs on the
    /// multi-threaded runtime; this rare path may block it briefly for one
    /// primary-key lookup. A PostgreSQL restart closes the connection:
    /// reopen it and wait (holding the stream, like any backpressure) for a
    /// while; past that the error stops the pipeline (nothing is confirmed
    /// past it).
    fn read(&mut self, change: &Change, new: &Row) -> Result<Vec<Row>, SourceError> {
        let give_up = tokio::time::Instant::now() + REFETCH_PATIENCE;
        let attempt = || async {
            let client = match self.pg.as_ref().filter(|c| !c.is_closed()) {
                Some(c) => c.clone(),
                None => Arc::new(source::connect_sql(&self.pg_cfg).await?),
            };
            // Snapshot rows (xid 0) are read at their snapshot; a streamed
            // change is re-read only once its transaction is visible.
            if change.xid != 0 && self.visible != Some(change.xid) {
                Self::wait_visible(&client, change.xid, give_up).await?;
            }
            let rows = source::fetch_rows_by_key(
                &client,
                &change.relation,
                std::slice::from_ref(new),
                &self.opts,
                &self.catalog,
            )
            .await;
            Ok::<_, SourceError>((client, rows))
        };
        let result = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                (|| async {
                    let (client, rows) = attempt().await?;
                    let rows = rows?;
                    Ok((client, rows))
                })
                .retry(RetryPolicy::REFETCH.builder())
                .when(|e: &SourceError| {
                    source::is_retryable(e) && tokio::time::Instant::now() < give_up
                })
                .notify(|e, delay| {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot re-read a row with an unchanged TOAST value; retrying");
                    metrics::counter!(names::RETRIES_TOTAL).increment(1);
                })
                .await
            })
        });
        match result {
            Ok((client, rows)) => {
                self.pg = Some(client);
                self.visible = Some(change.xid);
                Ok(rows)
            }
            Err(e) => {
                self.pg = None;
                Err(e)
            }
        }
    }
}
