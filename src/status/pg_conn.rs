//! Ordinary SQL connections for status, teardown and the slot gauges.
//!
//! The single place where these commands connect to PostgreSQL, so TLS can be
//! plugged in once the source layer's rustls connector lands. Errors name the
//! target as `user@host:port/db` and never the password.

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, NoTls};

use super::StatusError;
use crate::source::{PgConnectConfig, SslMode};

fn pg_config(pg: &PgConnectConfig, application: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&pg.host)
        .port(pg.port)
        .user(&pg.user)
        .dbname(&pg.dbname)
        .application_name(application)
        .connect_timeout(std::time::Duration::from_secs(
            pg.connect_timeout_secs.max(1),
        ));
    if let Some(p) = &pg.password {
        c.password(p.as_bytes());
    }
    c
}

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
    crate::logging::redact_url(&s)
}

/// Connects with `application_name` set to `application` (visible in
/// `pg_stat_activity`), driving the connection on a spawned task.
pub async fn connect_pg(pg: &PgConnectConfig, application: &str) -> Result<Client, StatusError> {
    let mut config = pg_config(pg, application);
    match pg.sslmode {
        SslMode::Disable => {
            config.ssl_mode(PgSslMode::Disable);
        }
        SslMode::Prefer => {
            // With NoTls, "prefer" falls back to a plain connection.
            config.ssl_mode(PgSslMode::Prefer);
        }
        // ---- TLS PLUG POINT ----------------------------------------------
        // Require / verify-ca / verify-full need the source layer's rustls
        // connector (verify-full: CA from `ssl_root_cert`, host name checked).
        // Until it is wired here, refuse rather than connect without TLS.
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            let mode = match pg.sslmode {
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                _ => "verify-full",
            };
            return Err(StatusError::PgTlsUnavailable {
                mode: mode.into(),
                target: pg.to_string(),
            });
        }
    }
    let (client, conn) = config
        .connect(NoTls)
        .await
        .map_err(|e| StatusError::PgConnect {
            target: pg.to_string(),
            message: describe_pg_error(&e),
        })?;
    let target = pg.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%target, error = %describe_pg_error(&e), "status connection closed");
        }
    });
    Ok(client)
}
