//! What PostgreSQL records about replication, as a scenario's "then" reads
//! it: whether a slot is held and by which process, how far it confirmed,
//! the changes it still holds, the current WAL position; and a stand-in
//! client (`pg_recvlogical`) that holds a slot the way another Sluice would.

use std::process::Stdio;

use sluice::Lsn;

use super::{SqlClient, TestDb, services};

/// `Some(active)` for an existing slot; `None` if there is no such slot
/// (or the server cannot be asked right now: a wait goes on).
pub async fn slot_active(db: &impl SqlClient, slot: &str) -> Option<bool> {
    db.sql_client()
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// The walsender process holding `slot`, if any.
pub async fn slot_pid(db: &impl SqlClient, slot: &str) -> Option<i32> {
    db.sql_client()
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// The slot's `confirmed_flush_lsn` as the server records it.
pub async fn confirmed_flush(db: &impl SqlClient, slot: &str) -> Lsn {
    let row = db
        .sql_client()
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("read the slot");
    row.get::<_, String>(0).parse().unwrap()
}

/// Changes of the publication `sluice` the slot still holds (0: everything
/// is confirmed).
pub async fn pending_changes(db: &impl SqlClient, slot: &str) -> i64 {
    db.sql_client()
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
               'proto_version', '1', 'publication_names', 'sluice')",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// The server's current WAL position.
pub async fn wal_lsn(db: &impl SqlClient) -> Lsn {
    let lsn: String = db
        .sql_client()
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    lsn.parse().unwrap()
}

/// Create the pgoutput slot `slot` as the replication role.
pub async fn create_slot(db: &TestDb, slot: &str) {
    super::connect(&db.repl_url())
        .await
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .expect("create slot");
}

/// Hold `slot` active the way another Sluice would: a walsender streaming
/// it (for `publication`) to `pg_recvlogical`, killed on drop.
pub fn hold_slot(db: &TestDb, slot: &str, publication: &str) -> tokio::process::Child {
    tokio::process::Command::new(format!("{}/pg_recvlogical", services().pg_bin))
        .args(["-d", &db.repl_url(), "--slot", slot, "--start", "--no-loop"])
        .args(["-f", "/dev/null", "-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={publication}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pg_recvlogical")
}
