//! Errors of the source layer and the one pure function that decides which
//! of them a reconnect can fix.

use std::io;

use crate::source::decoder::DecoderError;

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] io::Error),
    #[error("connection to PostgreSQL closed by the server")]
    Closed,
    #[error("TLS to PostgreSQL at {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("authentication as `{user}` failed: {reason}")]
    Auth { user: String, reason: String },
    #[error("PostgreSQL refused `{command}`: {error}")]
    Server {
        command: String,
        error: Box<ServerError>,
    },
    #[error("unexpected replication protocol message: {0}")]
    Protocol(String),
    /// A pgoutput message that cannot be decoded, with the WAL position of
    /// the XLogData that carried it (for `pg_logical_slot_peek_binary_changes`).
    #[error("{source} (XLogData at WAL position {wal_start})")]
    Decode {
        wal_start: crate::model::lsn::Lsn,
        source: DecoderError,
    },
    #[error("SQL on PostgreSQL failed: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// A setup problem found by the publication/slot checks; the message says what to do.
    #[error("{0}")]
    Setup(String),
    /// The slot is held by another server process (another Sluice streaming
    /// from it, or a consumer such as pg_recvlogical): `sluice run` waits as
    /// a standby; one-shot commands report it.
    #[error(
        "replication slot `{slot}` is in use by server process {pid} (another Sluice instance or pg_recvlogical?): stop that consumer, or end it with `SELECT pg_terminate_backend({pid});`"
    )]
    SlotInUse { slot: String, pid: i32 },
}

impl SourceError {
    /// The SQLSTATE if the server reported one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SourceError::Server { error, .. } => Some(&error.code),
            SourceError::Sql(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Whether reconnecting (after a backoff) can fix this error. Connection
/// loss, server shutdown/restart/crash recovery, too many connections and a
/// slot still held by a dying walsender are transient; bad credentials,
/// missing privileges, malformed data and setup problems are not.
pub fn is_retryable(e: &SourceError) -> bool {
    match e {
        SourceError::Connect { .. }
        | SourceError::Io(_)
        | SourceError::Closed
        | SourceError::SlotInUse { .. } => true,
        SourceError::Sql(err) => {
            err.code().is_none()
                || err.is_closed()
                || sqlstate_retryable(err.code().unwrap().code())
        }
        SourceError::Server { error, .. } => sqlstate_retryable(&error.code),
        SourceError::Tls { .. }
        | SourceError::Auth { .. }
        | SourceError::Protocol(_)
        | SourceError::Decode { .. }
        | SourceError::Setup(_) => false,
    }
}

fn sqlstate_retryable(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || code.starts_with("53") // insufficient resources (too many connections)
        || code == "55006" // object in use: the slot's previous walsender is still exiting
        || code == "55P03" // lock not available: our DDL's lock_timeout gave way to the application
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> SourceError {
        SourceError::Server {
            command: "START_REPLICATION".into(),
            error: Box::new(ServerError {
                code: code.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn connection_loss_and_server_restarts_are_retryable() {
        assert!(is_retryable(&SourceError::Closed));
        assert!(is_retryable(&SourceError::Io(io::Error::other("reset"))));
        assert!(is_retryable(&server("57P01")));
        assert!(is_retryable(&server("57P03")));
        assert!(is_retryable(&server("53300")));
        assert!(is_retryable(&server("55006")));
    }

    #[test]
    fn a_decode_error_names_the_message_kind_offset_and_wal_position() {
        let source = crate::source::pgoutput::parse(&[b'I', 0, 0])
            .map(|_| ())
            .map_err(DecoderError::from)
            .unwrap_err();
        let e = SourceError::Decode {
            wal_start: "0/16B3748".parse().unwrap(),
            source,
        };
        let msg = e.to_string();
        assert!(
            msg.contains("Insert") && msg.contains("at byte 1") && msg.contains("0/16B3748"),
            "{msg}"
        );
        assert!(!is_retryable(&e));
    }

    #[test]
    fn auth_privileges_and_bad_data_are_not_retryable() {
        assert!(!is_retryable(&server("28P01")));
        assert!(!is_retryable(&server("42501")));
        assert!(!is_retryable(&server("42704")));
        assert!(!is_retryable(&SourceError::Setup("x".into())));
        assert!(!is_retryable(&SourceError::Auth {
            user: "u".into(),
            reason: "r".into()
        }));
    }
}
