//! Heartbeat: a tiny non-transactional logical message written into the WAL
//! on a timer while `sluice run` streams.
//!
//! Why: the slot's confirmed position only moves when the walsender tells
//! Sluice about a position (a transaction, a keepalive, a message). A
//! walsender that is never idle — busy decoding WAL of tables Sluice does not
//! publish — sends no keepalive, so the slot would pin that WAL. A heartbeat
//! is decoded in WAL order like everything else and reaches Sluice outside
//! any transaction; the checkpoint treats it like a keepalive's WAL end
//! (confirmable once everything before it is acknowledged, DESIGN
//! invariant 1), so the slot advances past the unpublished WAL.
//!
//! The message must be written in the slot's database: logical decoding
//! only hands a slot the messages of its own database.

use std::time::Duration;

use tokio_postgres::Client;

use crate::model::lsn::Lsn;
use crate::source::error::SourceError;
use crate::source::manage::connect_sql;
use crate::source::pg_config::PgConnectConfig;

/// The message prefix (`pg_logical_emit_message`'s second argument).
pub const PREFIX: &str = "sluice.heartbeat";

/// The function a heartbeat calls, as `GRANT EXECUTE ON FUNCTION` names it.
pub const FUNCTION: &str = "pg_catalog.pg_logical_emit_message(boolean, text, text)";

const EMIT: &str = "SELECT pg_catalog.pg_logical_emit_message(false, $1::text, ''::text)::text";

/// Write one heartbeat; returns the LSN of its WAL record.
pub async fn emit(client: &Client) -> Result<Lsn, SourceError> {
    let row = client.query_one(EMIT, &[&PREFIX]).await?;
    let lsn: String = row.get(0);
    lsn.parse()
        .map_err(|_| SourceError::Protocol(format!("pg_logical_emit_message returned `{lsn}`")))
}

/// Start-up check: write one heartbeat, turning the errors a user must fix
/// (the function's EXECUTE privilege revoked, a read-only server) into a
/// setup error that names the function, the role and the fix.
pub async fn preflight(client: &Client, role: &str) -> Result<Lsn, SourceError> {
    emit(client).await.map_err(|e| match e.sqlstate() {
        Some("42501") => SourceError::Setup(format!(
            "[postgres] heartbeat_interval_ms is set, but role `{role}` may not execute \
             {FUNCTION}: run `GRANT EXECUTE ON FUNCTION {FUNCTION} TO {role};` as a superuser, \
             or set heartbeat_interval_ms = 0 to turn the heartbeat off"
        )),
        Some("25006") => SourceError::Setup(format!(
            "[postgres] heartbeat_interval_ms is set, but the server refuses writes \
             (read-only transaction) so {FUNCTION} cannot run: connect to the primary, \
             or set heartbeat_interval_ms = 0"
        )),
        _ => e,
    })
}

/// Write a heartbeat every `interval` until `shutdown` completes, on a
/// connection of its own (reconnected after failures, e.g. a PostgreSQL
/// restart). Failures are logged, never fatal: without heartbeats Sluice
/// still streams correctly, the slot just advances less often.
pub async fn run_heartbeat(
    pg: PgConnectConfig,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut pg = pg;
    pg.application_name = format!("{}-heartbeat", pg.application_name);
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // A connection whose server end is gone without a word (a lost
        // node, a half-open link) never answers: give up on it in time
        // and connect again, or heartbeats would stop for good.
        let limit = interval.max(Duration::from_secs(10));
        let attempt = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(connect_sql(&pg).await?);
            }
            emit(client.as_ref().expect("connected")).await
        };
        let result = tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| Err(SourceError::Protocol(format!("no answer within {limit:?}"))));
        match result {
            Ok(lsn) => {
                if failing {
                    tracing::info!(%lsn, "heartbeat written again");
                }
                failing = false;
                tracing::trace!(%lsn, "heartbeat");
            }
            Err(e) => {
                // One warning per run of failures (a restart takes a while).
                if !failing {
                    tracing::warn!(error = %e, "cannot write the heartbeat; retrying every interval");
                }
                failing = true;
                client = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::source::{PgConnectConfig, ReaderConfig};

    #[test]
    fn the_reader_asks_for_logical_messages_so_heartbeats_reach_the_pipeline() {
        let cfg = ReaderConfig::new(PgConnectConfig::default(), "s", vec!["p".into()]);
        assert!(cfg.messages);
    }
}
