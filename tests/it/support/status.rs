//! What `sluice status` and `sluice teardown` are pointed at in a test:
//! the deployment's targets (slot, publication, indices) in its database,
//! and the connection configs the library functions take.

use sluice::app::status::Targets;
use sluice::sink::EsConfig;
use sluice::source::{PgConnectConfig, SslMode};

use super::{TestDb, services};

/// `PgConnectConfig` from a `postgres://user:pw@host:port/db` URL.
pub fn pg_config_from_url(url: &str) -> PgConnectConfig {
    let u = url::Url::parse(url).expect("PostgreSQL URL");
    PgConnectConfig {
        host: u.host_str().unwrap().to_string(),
        port: u.port().unwrap_or(5432),
        user: u.username().to_string(),
        password: u.password().map(str::to_string),
        dbname: u.path().trim_start_matches('/').to_string(),
        sslmode: SslMode::Prefer,
        ..Default::default()
    }
}

/// The shared Elasticsearch, no credentials.
pub fn es_config() -> EsConfig {
    EsConfig {
        urls: vec![services().es_url.clone()],
        ..Default::default()
    }
}

/// A deployment in `db`: its own slot, publication and indices.
pub fn targets(db: &TestDb) -> Targets {
    Targets {
        slot: format!("{}_slot", db.name),
        publication: format!("{}_pub", db.name),
        dead_letter_index: db.index("dead-letters"),
        state_index: db.index("state"),
        indices: vec![db.index("items")],
    }
}
