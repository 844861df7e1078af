//! Ordinary SQL connections for status, teardown and the slot gauges.
//!
//! The single place where these commands connect to PostgreSQL, so TLS can be
//! shared with the source layer's connector (all sslmodes). Errors name the
//! target as `user@host:port/db` and never the password.

use tokio_postgres::Client;

use super::StatusError;
use crate::source::{PgConnectConfig, SourceError};

/// One-line description of a PostgreSQL error: the server's message and
/// SQLSTATE if it sent one, else the client-side error chain.
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    crate::ops::logging::redact_url(&s)
}

/// Connects with `application_name` set to `application` (visible in
/// `pg_stat_activity`), with the same TLS modes as the source layer.
pub async fn connect_pg(pg: &PgConnectConfig, application: &str) -> Result<Client, StatusError> {
    let mut cfg = pg.clone();
    cfg.application_name = application.to_string();
    crate::source::connect_sql(&cfg)
        .await
        .map_err(|e| StatusError::PgConnect {
            target: pg.to_string(),
            message: match &e {
                SourceError::Sql(inner) => describe_pg_error(inner),
                other => crate::ops::logging::redact_url(&other.to_string()),
            },
        })
}
