//! A random write workload for end-to-end tests: inserts, updates, deletes,
//! primary-key changes, several per transaction, on a table
//! `(id bigint PRIMARY KEY, balance bigint NOT NULL, note text)`, running
//! until stopped. It survives a restart of the server it writes to: a lost
//! connection is reopened and the workload goes on (whether a transaction cut
//! off at its COMMIT landed does not matter, tests compare end states).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

pub struct Workload {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    committed: Arc<AtomicU64>,
}

/// One random transaction; `next_id` grows with every new key.
pub fn random_transaction(rng: &mut rand::rngs::StdRng, table: &str, next_id: &mut i64) -> String {
    let n = rng.random_range(1..=5);
    let mut sql = String::from("BEGIN;");
    for _ in 0..n {
        let id = rng.random_range(1..*next_id);
        match rng.random_range(0..10) {
            0..=3 => {
                *next_id += 1;
                sql += &format!(
                    "INSERT INTO {table} VALUES ({next_id}, {}, 'new');",
                    rng.random_range(0..1000)
                );
            }
            4..=6 => {
                sql += &format!(
                    "UPDATE {table} SET balance = balance + {} WHERE id = {id};",
                    rng.random_range(1..100)
                )
            }
            7..=8 => sql += &format!("DELETE FROM {table} WHERE id = {id};"),
            _ => {
                *next_id += 1;
                sql +=
                    &format!("UPDATE {table} SET id = {next_id}, note = 'moved' WHERE id = {id};");
            }
        }
    }
    sql + "COMMIT;"
}

impl Workload {
    /// Start writing to `table` (ids from 1 to `first_free_id - 1` may exist).
    pub fn start(url: String, table: &str, first_free_id: i64, seed: u64) -> Workload {
        eprintln!("workload seed {seed}");
        let (stop, mut stopped) = watch::channel(false);
        let committed = Arc::new(AtomicU64::new(0));
        let count = committed.clone();
        let table = table.to_string();
        let task = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut next_id = first_free_id.max(2);
            let mut client: Option<tokio_postgres::Client> = None;
            while !*stopped.borrow() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&url, NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        Err(_) => None,
                    };
                }
                if let Some(c) = &client {
                    let sql = random_transaction(&mut rng, &table, &mut next_id);
                    match c.batch_execute(&sql).await {
                        Ok(()) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => client = None,
                    }
                }
                let pause = if client.is_some() {
                    rng.random_range(0..8)
                } else {
                    100
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Workload {
            stop,
            task,
            committed,
        }
    }

    /// Transactions committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stop after the current transaction; returns how many committed.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.expect("workload task");
        self.committed.load(Ordering::Relaxed)
    }
}

/// The tables [`spawn_bench`] writes, and its 2000 accounts (fill them
/// after the slot exists when no snapshot loads them).
pub const BENCH_TABLES: &str =
    "CREATE TABLE bench_accounts (id bigint PRIMARY KEY, bid int NOT NULL,
                                      abalance bigint NOT NULL, filler text);
         CREATE TABLE bench_history (id bigserial PRIMARY KEY, aid bigint NOT NULL,
                                     delta int NOT NULL);";

pub const BENCH_ACCOUNTS: &str = "INSERT INTO bench_accounts SELECT g, g % 20, 0, repeat(' ', 84)
           FROM generate_series(1, 2000) g;";

/// pgbench's TPC-B-like transaction on our own tables, until `stop`:
/// update an account of `bench_accounts` (ids 1 to 2000), log the change in
/// `bench_history`; `count` counts the transactions. See [`BENCH_TABLES`].
pub fn spawn_bench(
    url: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = super::connect(&url).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        while !stop.load(Ordering::Relaxed) {
            let (aid, delta) = (rng.random_range(1..=2000), rng.random_range(-5000..5000));
            let sql = format!(
                "BEGIN;
                 UPDATE bench_accounts SET abalance = abalance + {delta} WHERE id = {aid};
                 INSERT INTO bench_history (aid, delta) VALUES ({aid}, {delta});
                 COMMIT;"
            );
            client.batch_execute(&sql).await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
        }
    })
}

/// `sluice run` with `setup` on an existing, empty `accounts` table mapped
/// to `index`: 200 seed rows, then a random workload from id 201, returned
/// once `es` (the cluster Sluice writes to) shows more than 100 documents.
pub async fn accounts_under_load(
    db: &super::TestDb,
    es: &super::Es,
    setup: &super::sluice::SluiceToml,
    index: &str,
) -> (super::sluice::Sluice, Workload) {
    use super::sluice::{Sluice, table_mapping};
    let mut sluice = Sluice::with_config(setup, &[table_mapping("accounts", index)]);
    sluice.start_streaming(db).await;
    db.sql("INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g")
        .await;
    let workload = Workload::start(db.url(), "accounts", 201, rand::rng().random());
    sluice
        .wait_for(Duration::from_secs(60), "the first documents", async || {
            es.count(index).await > 100
        })
        .await;
    (sluice, workload)
}
