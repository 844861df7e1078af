//! Test harness for integration tests against the real PostgreSQL and
//! Elasticsearch that `./dev services up` starts.
//!
//! Each test gets its own database (created with a unique name and dropped
//! afterwards, with its replication slots) and its own index-name prefix, so
//! tests run in parallel without seeing each other. There are no bare sleeps:
//! `wait_until` polls a condition with a deadline.
//!
//! The fixtures, by what a scenario does with them:
//! - `es`: read and administer Elasticsearch (documents, counts, mappings);
//! - `compare`: "the index equals the table", with a diff on failure;
//! - `slot`: what PostgreSQL records about a replication slot;
//! - `sluice`: a real `sluice run` process and its config directory;
//! - `pipeline`: the in-process stream (pipeline, indexer) fed by hand;
//! - `reader`: the WAL reader on a publication and slot;
//! - `snapshot`: test seams for the snapshot engine;
//! - `status`: what `sluice status` and `teardown` are pointed at;
//! - `private_pg`, `es_cluster`, `proxy`: private servers and a faulty
//!   network, for tests that restart, kill or cut what they talk to;
//! - `workload`: random writes that run until stopped;
//! - `faults`: the fault matrix's catch-up clock and report line.

#![allow(dead_code)]

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::types::FromSqlOwned;
use tokio_postgres::{Client, NoTls};

pub mod compare;
pub mod es;
pub mod es_cluster;
pub mod faults;
pub mod pipeline;
pub mod private_pg;
pub mod proxy;
pub mod reader;
pub mod slot;
pub mod sluice;
pub mod snapshot;
pub mod status;
pub mod workload;

pub use es::Es;

/// The demo schema (`scripts/demo-schema.sql`) the shipped mappings are for.
pub const DEMO_SCHEMA: &str = include_str!("../../../scripts/demo-schema.sql");

/// Connection facts exported by `./dev services env`.
#[derive(Debug, Clone)]
pub struct Services {
    /// Superuser URL (database part is replaced per test).
    pub pg_url: String,
    /// The non-superuser REPLICATION role Sluice normally runs as.
    pub pg_repl_url: String,
    /// CA that signed the server's TLS certificate.
    pub pg_ca: String,
    /// Directory with `pg_ctl`, `pg_recvlogical`, ...
    pub pg_bin: String,
    pub es_url: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: integration tests need the local services. \
             Run `./dev test`, or `eval \"$(./dev services up)\"` before `cargo test`."
        )
    })
}

pub fn services() -> &'static Services {
    static S: OnceLock<Services> = OnceLock::new();
    S.get_or_init(|| Services {
        pg_url: var("SLUICE_TEST_PG_URL"),
        pg_repl_url: var("SLUICE_TEST_PG_REPL_URL"),
        pg_ca: var("SLUICE_TEST_PG_CA"),
        pg_bin: var("SLUICE_TEST_PG_BIN"),
        es_url: var("SLUICE_TEST_ES_URL"),
    })
}

/// A name no other test (in this or a parallel process) uses.
pub fn unique_name(kind: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{kind}_{}_{n}_{:x}", std::process::id(), nanos & 0xffff)
}

/// Replace the database name in a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("valid PostgreSQL URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A private database for one test, dropped (with its slots) when this drops.
pub struct TestDb {
    pub name: String,
    /// Superuser connection to this database.
    pub admin: Client,
    /// Prefix for every index this test creates (`t-<unique>-`).
    pub index_prefix: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let s = services();
        let name = unique_name("sluice_t");
        let root = connect(&s.pg_url).await;
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        SWEPT.get_or_init(|| sweep_stale_databases(&root)).await;
        root.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let admin = connect(&with_database(&s.pg_url, &name)).await;
        // The replication role may read everything the test creates.
        admin
            .batch_execute(
                "GRANT USAGE ON SCHEMA public TO sluice;
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO sluice;",
            )
            .await
            .expect("grant the replication role");
        let index_prefix = format!("{}-", name.replace('_', "-"));
        TestDb {
            name,
            admin,
            index_prefix,
        }
    }

    /// Superuser URL for this database.
    pub fn url(&self) -> String {
        with_database(&services().pg_url, &self.name)
    }

    /// Replication-role URL for this database.
    pub fn repl_url(&self) -> String {
        with_database(&services().pg_repl_url, &self.name)
    }

    /// An index name private to this test.
    pub fn index(&self, name: &str) -> String {
        format!("{}{name}", self.index_prefix)
    }

    pub async fn sql(&self, sql: &str) {
        self.admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"));
    }

    /// Rows of a query as JSON objects (`SELECT to_jsonb(t) ...` style).
    pub async fn json_rows(&self, query: &str) -> Vec<Value> {
        json_rows(&self.admin, query).await
    }

    /// The one value a query returns (`SELECT count(*) ...`).
    pub async fn query_value<T: FromSqlOwned>(&self, query: &str) -> T {
        self.admin
            .query_one(query, &[])
            .await
            .unwrap_or_else(|e| panic!("query failed: {e}\n{query}"))
            .get(0)
    }

    /// The replication slot of a `sluice run` configured for this database.
    pub fn slot(&self) -> String {
        format!("sluice_{}", self.name)
    }
}

/// A superuser connection to the database a scenario runs in: a `TestDb`,
/// or a client of a private cluster.
pub trait SqlClient {
    fn sql_client(&self) -> &Client;
}

impl SqlClient for TestDb {
    fn sql_client(&self) -> &Client {
        &self.admin
    }
}

impl SqlClient for Client {
    fn sql_client(&self) -> &Client {
        self
    }
}

/// Rows of a query as JSON objects, on any connection.
pub async fn json_rows(client: &Client, query: &str) -> Vec<Value> {
    let wrapped = format!("SELECT to_jsonb(q) FROM ({query}) q");
    client
        .query(&wrapped, &[])
        .await
        .unwrap_or_else(|e| panic!("query failed: {e}\n{query}"))
        .iter()
        .map(|r| r.get::<_, Value>(0))
        .collect()
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let prefix = self.index_prefix.clone();
        // Async cleanup from a synchronous Drop: a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let root = connect(&services().pg_url).await;
                drop_database(&root, &name).await;
                let es = Es::new();
                let _ = es.delete_indices(&format!("{prefix}*")).await;
            });
        })
        .join();
    }
}

/// Drop a test database and its replication slots, ending whatever still
/// holds them (a walsender may take a moment to notice its client died).
async fn drop_database(root: &Client, name: &str) {
    // Separate statements: DROP DATABASE refuses to run inside the implicit
    // transaction of a multi-statement query.
    for _ in 0..100 {
        let _ = root
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                   WHERE database = '{name}' AND active_pid IS NOT NULL"
            ))
            .await;
        let slots = root
            .batch_execute(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                   WHERE database = '{name}' AND NOT active"
            ))
            .await;
        let drop = root
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        if slots.is_ok() && drop.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("warning: could not drop test database {name}");
}

/// Test databases whose test process is gone (a run that was killed) are
/// dropped by the next run, so leftovers never accumulate slots and WAL.
async fn sweep_stale_databases(root: &Client) {
    let rows = root
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'sluice\\_t\\_%'",
            &[],
        )
        .await
        .unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| {
            p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()
        }) {
            drop_database(root, &name).await;
        }
    }
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `check` until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
