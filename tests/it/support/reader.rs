//! The WAL reader against a real PostgreSQL: connection configs for a test
//! database, a publication and slot to read from, a running reader task
//! with the ends of its channels, and a change's row by column name.

use sluice::model::PublishedTable;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::Lsn;
use sluice::model::{Change, ChangeKind, Datum, SourceEvent};
use sluice::source::{
    PgConnectConfig, ReaderConfig, SourceError, SslMode, connect_sql, ensure_publication,
    ensure_slot, run_reader,
};
use tokio::sync::{mpsc, watch};

use super::{TestDb, unique_name};

/// Replication-role config for a test database (SCRAM over TCP, no TLS).
pub fn repl_config(db: &TestDb) -> PgConnectConfig {
    let mut c = PgConnectConfig::parse(&db.repl_url()).unwrap();
    c.sslmode = SslMode::Disable;
    c
}

/// Superuser config for a test database (no TLS).
pub fn admin_config(db: &TestDb) -> PgConnectConfig {
    let mut c = PgConnectConfig::parse(&db.url()).unwrap();
    c.sslmode = SslMode::Disable;
    c
}

/// Publish `public.<t>` for each of `tables` as `publication` (connecting
/// with `owner`), and create the slot `slot` (connecting with `repl`): the
/// reader's config for them.
pub async fn publish_and_create_slot(
    owner: &PgConnectConfig,
    repl: &PgConnectConfig,
    publication: &str,
    tables: &[&str],
    slot: &str,
) -> ReaderConfig {
    let admin = connect_sql(owner).await.unwrap();
    let published: Vec<_> = tables
        .iter()
        .map(|t| PublishedTable::new("public", t))
        .collect();
    ensure_publication(&admin, publication, &published)
        .await
        .unwrap();
    let sql = connect_sql(repl).await.unwrap();
    ensure_slot(&sql, slot, None).await.unwrap();
    ReaderConfig::new(repl.clone(), slot, vec![publication.into()])
}

/// [`publish_and_create_slot`] in a test database: the publication
/// `sluice_pub` (as the owner) and a fresh slot (as the replication role).
pub async fn published_slot(db: &TestDb, tables: &[&str]) -> ReaderConfig {
    let slot = unique_name("slot");
    publish_and_create_slot(
        &admin_config(db),
        &repl_config(db),
        "sluice_pub",
        tables,
        &slot,
    )
    .await
}

/// A running reader task and the ends of its channels.
pub struct Reader {
    pub rx: mpsc::Receiver<SourceEvent>,
    pub flushed: watch::Sender<Lsn>,
    shutdown: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Result<(), SourceError>>,
}

impl Reader {
    pub fn start(cfg: ReaderConfig, capacity: usize) -> Reader {
        let (tx, rx) = mpsc::channel(capacity);
        let (flushed, flushed_rx) = watch::channel(Lsn::ZERO);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let handle = tokio::spawn(run_reader(cfg, None, tx, flushed_rx, shutdown_rx));
        Reader {
            rx,
            flushed,
            shutdown,
            handle,
        }
    }

    /// The next event, or a panic after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> SourceEvent {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                let result = (&mut self.handle).await;
                panic!("the reader stopped: {result:?}")
            }
            Err(_) => panic!("no event from the reader within {timeout:?}"),
        }
    }

    /// The next `n` changes (skipping Begin/Commit/keepalives).
    pub async fn changes(&mut self, n: usize) -> Vec<Change> {
        let mut out = Vec::new();
        while out.len() < n {
            if let SourceEvent::Change(c) = self.next(Duration::from_secs(30)).await {
                out.push(c);
            }
        }
        out
    }

    /// The `end_lsn` of the next Commit.
    pub async fn next_commit(&mut self) -> Lsn {
        loop {
            if let SourceEvent::Commit { end_lsn, .. } = self.next(Duration::from_secs(30)).await {
                return end_lsn;
            }
        }
    }

    pub async fn stop(self) -> Result<(), SourceError> {
        let _ = self.shutdown.send(true);
        drop(self.rx);
        self.handle.await.expect("reader task panicked")
    }
}

/// Publish `tables` (as the owner), create a slot, and start a reader on it
/// as the replication role.
pub async fn stream(db: &TestDb, tables: &[&str]) -> (Reader, String) {
    let cfg = published_slot(db, tables).await;
    let slot = cfg.slot.clone();
    (Reader::start(cfg, 1024), slot)
}

pub fn new_row(c: &Change) -> &Vec<Datum> {
    match &c.kind {
        ChangeKind::Insert { new } | ChangeKind::Update { new, .. } => new,
        other => panic!("expected a new row, got {other:?}"),
    }
}

/// A row as `column → value` (`"<unchanged>"` for an unchanged TOAST value).
pub fn by_name(c: &Change, row: &[Datum]) -> serde_json::Map<String, Value> {
    c.relation
        .columns
        .iter()
        .zip(row)
        .map(|(col, d)| {
            let v = match d {
                Datum::Null => Value::Null,
                Datum::Unchanged => json!("<unchanged>"),
                Datum::Value(v) => v.clone(),
            };
            (col.name.clone(), v)
        })
        .collect()
}
