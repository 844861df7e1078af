//! What a standby `sluice run` needs from PostgreSQL: whether the slot is
//! taken, by whom, and a way to show the wait to `sluice status`.
//!
//! PostgreSQL is the only lock. While a process streams, the slot is
//! active for its walsender and a second `START_REPLICATION` is refused
//! with SQLSTATE 55006 ("replication slot ... is active for PID N"). While a
//! process creates the slot and takes (or resumes) the initial snapshot,
//! the slot is not active (PostgreSQL releases it after
//! `CREATE_REPLICATION_SLOT`), so that process marks its SQL session with
//! the `application_name` [`loading_name`]; the session ends with the
//! process, so the mark cannot outlive it. A waiting process marks its
//! session with [`standby_name`], which `sluice status` lists.

use tokio_postgres::Client;

use crate::source::error::SourceError;

/// `application_name` is cut by the server at 63 bytes (NAMEDATALEN - 1).
const NAME_MAX: usize = 63;

fn marked(kind: &str, slot: &str) -> String {
    let mut s = format!("sluice {kind} {slot}");
    while s.len() > NAME_MAX {
        s.pop();
    }
    s
}

/// The `application_name` of a session waiting as a standby for `slot`.
pub fn standby_name(slot: &str) -> String {
    marked("standby", slot)
}

/// The `application_name` of the session of a process that creates `slot`
/// or takes its initial snapshot.
pub fn loading_name(slot: &str) -> String {
    marked("loading", slot)
}

/// If `e` says the slot is held by another process (55006 from
/// `START_REPLICATION`, or the slot check), that process's pid when the
/// error names it.
pub fn slot_in_use(e: &SourceError) -> Option<Option<i32>> {
    match e {
        SourceError::SlotInUse { pid, .. } => Some(Some(*pid)),
        SourceError::Server { error, .. } if error.code == "55006" => Some(pid_in(&error.message)),
        _ => None,
    }
}

/// The number after `PID ` in "replication slot \"s\" is active for PID 123"
/// (None when the server's messages are translated).
fn pid_in(message: &str) -> Option<i32> {
    let at = message.find("PID ")? + 4;
    let digits: String = message[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Set this session's `application_name` (`None`: back to the one it
/// connected with).
pub async fn mark_session(client: &Client, name: Option<&str>) -> Result<(), SourceError> {
    match name {
        Some(n) => client
            .execute("SELECT set_config('application_name', $1, false)", &[&n])
            .await
            .map(drop)?,
        None => client.batch_execute("RESET application_name").await?,
    }
    Ok(())
}

/// Mark this session as the one loading `slot`, unless another session
/// already is: of two that mark themselves at once, the lower server pid
/// keeps the mark (so exactly one proceeds). `false`: another process
/// loads it, and this session's mark is taken back.
pub async fn claim_loading(client: &Client, slot: &str) -> Result<bool, SourceError> {
    let name = loading_name(slot);
    mark_session(client, Some(&name)).await?;
    let first: bool = client
        .query_one(
            "SELECT coalesce(min(pid), pg_backend_pid()) = pg_backend_pid()
               FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await?
        .get(0);
    if !first {
        mark_session(client, None).await?;
    }
    Ok(first)
}

/// Who keeps `slot` from this process, if anyone: the pid holding the slot
/// (`pg_replication_slots.active_pid`), or else the pid of another session
/// marked as loading it. `None`: the slot is free (or missing).
pub async fn slot_holder(client: &Client, slot: &str) -> Result<Option<i32>, SourceError> {
    let row = client
        .query_one(
            "SELECT (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1),
                    (SELECT min(pid) FROM pg_stat_activity
                      WHERE application_name = $2 AND pid <> pg_backend_pid())",
            &[&slot, &loading_name(slot)],
        )
        .await?;
    let active: Option<i32> = row.get(0);
    let loading: Option<i32> = row.get(1);
    Ok(active.or(loading))
}

/// The server pids of the sessions waiting as standbys for `slot`.
pub async fn standby_pids(client: &Client, slot: &str) -> Result<Vec<i32>, SourceError> {
    let rows = client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
            &[&standby_name(slot)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::error::ServerError;

    #[test]
    fn the_holder_pid_is_read_from_the_servers_refusal() {
        let refused = SourceError::Server {
            command: "START_REPLICATION".into(),
            error: Box::new(ServerError {
                code: "55006".into(),
                message: "replication slot \"sluice\" is active for PID 31337".into(),
                ..Default::default()
            }),
        };
        assert_eq!(slot_in_use(&refused), Some(Some(31337)));
        let translated = SourceError::Server {
            command: "START_REPLICATION".into(),
            error: Box::new(ServerError {
                code: "55006".into(),
                message: "le slot est actif".into(),
                ..Default::default()
            }),
        };
        assert_eq!(slot_in_use(&translated), Some(None));
        let held = SourceError::SlotInUse {
            slot: "s".into(),
            pid: 9,
        };
        assert_eq!(slot_in_use(&held), Some(Some(9)));
        assert_eq!(slot_in_use(&SourceError::Closed), None);
    }

    #[test]
    fn session_marks_fit_the_servers_63_bytes() {
        assert_eq!(standby_name("sluice"), "sluice standby sluice");
        assert_eq!(loading_name("sluice"), "sluice loading sluice");
        let long = "s".repeat(63);
        assert_eq!(standby_name(&long).len(), 63);
        assert!(standby_name(&long).starts_with("sluice standby s"));
    }
}
