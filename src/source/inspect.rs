//! What the commands read of the server's own state: the replication slot
//! and who holds it, the publication, the WAL position, the settings and
//! privileges `check` verifies. Plain rows out; what they mean (warnings,
//! refusals, the words an operator reads) is the caller's.
//!
//! Read-only, on an ordinary SQL connection: nothing here changes the
//! server (DESIGN invariant 10, never break the application).

use tokio_postgres::{Client, Error};

use crate::model::Lsn;
use crate::source::sql::quote_table;

/// A replication slot as `pg_replication_slots` shows it, with the
/// `application_name` of the process holding it (if visible).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    pub slot_type: String,
    pub plugin: Option<String>,
    /// The database of a logical slot.
    pub database: Option<String>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    pub restart: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    /// Empty names are reported as none.
    pub application: Option<String>,
}

fn lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

/// The slot `name`; `None` if there is none.
pub async fn slot(client: &Client, name: &str) -> Result<Option<SlotRow>, Error> {
    let row = client
        .query_opt(
            "SELECT s.slot_type, s.plugin, s.database, s.active, s.active_pid,
                    s.confirmed_flush_lsn::text, s.restart_lsn::text, s.wal_status,
                    s.safe_wal_size, a.application_name
               FROM pg_replication_slots s
               LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
              WHERE s.slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|row| {
        let application: Option<String> = row.get(9);
        SlotRow {
            slot_type: row.get(0),
            plugin: row.get(1),
            database: row.get(2),
            active: row.get(3),
            active_pid: row.get(4),
            confirmed_flush: lsn(row.get(5)),
            restart: lsn(row.get(6)),
            wal_status: row.get(7),
            safe_wal_size: row.get(8),
            application: application.filter(|a| !a.is_empty()),
        }
    }))
}

/// Where the server's WAL is, and whether it is a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    pub lsn: Lsn,
    pub in_recovery: bool,
}

/// The current WAL insert position; on a standby, where none exists, what
/// it has received (the comparable position).
pub async fn wal_position(client: &Client) -> Result<WalPosition, Error> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                          ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await?;
    Ok(WalPosition {
        lsn: lsn(row.get(1)).unwrap_or_default(),
        in_recovery: row.get(0),
    })
}

/// `server_version` and `wal_level`.
pub async fn version_and_wal_level(client: &Client) -> Result<(String, String), Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('wal_level')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A publication: its owner and whether it is `FOR ALL TABLES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationRow {
    pub owner: Option<String>,
    pub all_tables: bool,
}

/// The publication `name`; `None` if there is none.
pub async fn publication(client: &Client, name: &str) -> Result<Option<PublicationRow>, Error> {
    let row = client
        .query_opt(
            "SELECT pg_get_userbyid(pubowner)::text, puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|row| PublicationRow {
        owner: row.get(0),
        all_tables: row.get(1),
    }))
}

/// The tables the publication `name` publishes (`schema.table`, quoted
/// where needed, sorted).
pub async fn publication_tables(client: &Client, name: &str) -> Result<Vec<String>, Error> {
    Ok(client
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables
              WHERE pubname = $1 ORDER BY 1",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Who owns a publication, and whether the connected role may drop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationOwner {
    pub owner: String,
    /// The role is the owner or a member of it.
    pub may_drop: bool,
    pub current_user: String,
}

/// The owner of the publication `name`; `None` if there is none.
pub async fn publication_owner(
    client: &Client,
    name: &str,
) -> Result<Option<PublicationOwner>, Error> {
    let row = client
        .query_opt(
            "SELECT pg_get_userbyid(pubowner)::text, pg_has_role(pubowner, 'USAGE'), current_user::text
               FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|row| PublicationOwner {
        owner: row.get(0),
        may_drop: row.get(1),
        current_user: row.get(2),
    }))
}

/// What `check` reads from the server before looking at tables.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version_num: i32,
    pub version: String,
    pub wal_level: String,
    /// REPLICATION or superuser.
    pub can_replicate: bool,
    pub free_slots: i32,
    pub slot_exists: bool,
    pub free_wal_senders: i32,
    /// The slot exists but PostgreSQL invalidated it (`wal_status = lost`).
    pub slot_lost: bool,
}

/// The server's version, `wal_level`, the role's REPLICATION attribute,
/// free slots and WAL senders, and whether `slot` exists (or was lost).
pub async fn server_facts(client: &Client, slot: &str) -> Result<ServerFacts, Error> {
    let r = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                    current_setting('wal_level'),
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND wal_status = 'lost')",
            &[&slot],
        )
        .await?;
    Ok(ServerFacts {
        version_num: r.get(0),
        version: r.get(1),
        wal_level: r.get(2),
        can_replicate: r.get::<_, Option<bool>>(3).unwrap_or(false),
        free_slots: r.get(4),
        slot_exists: r.get(5),
        free_wal_senders: r.get(6),
        slot_lost: r.get(7),
    })
}

/// Whether the connected role may read `schema.table`.
pub async fn may_select(client: &Client, schema: &str, table: &str) -> Result<bool, Error> {
    let r = client
        .query_one(
            "SELECT has_table_privilege($1, 'SELECT')",
            &[&quote_table(schema, table)],
        )
        .await?;
    Ok(r.get(0))
}

/// Whether the connected role may execute `function` (a signature such as
/// `pg_catalog.f(text)`).
pub async fn may_execute(client: &Client, function: &str) -> Result<bool, Error> {
    let r = client
        .query_one("SELECT has_function_privilege($1, 'EXECUTE')", &[&function])
        .await?;
    Ok(r.get(0))
}

/// Whether the connected role may create publications in the database.
pub async fn may_create_in_database(client: &Client) -> Result<bool, Error> {
    let r = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await?;
    Ok(r.get(0))
}

/// Whether the connected role owns `schema.table` (or is a superuser), as
/// adding a table to a publication requires.
pub async fn owns_table(client: &Client, schema: &str, table: &str) -> Result<bool, Error> {
    let r = client
        .query_one(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                 OR pg_has_role(current_user, c.relowner, 'USAGE')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await?;
    Ok(r.get(0))
}

/// A table the publication `name` publishes, with its published columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedColumns {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
}

/// Whether the publication `name` exists, and what it publishes.
pub async fn published_columns(
    client: &Client,
    name: &str,
) -> Result<(bool, Vec<PublishedColumns>), Error> {
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text, attnames::text[]
               FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await;
    let exists = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .map(|r| r.get::<_, bool>(0));
    let (tables, exists) = (tables?, exists?);
    let tables = tables
        .iter()
        .map(|r| PublishedColumns {
            schema: r.get(0),
            table: r.get(1),
            columns: r.get(2),
        })
        .collect();
    Ok((exists, tables))
}
