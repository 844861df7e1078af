//! Publication and slot management over ordinary SQL (tokio-postgres), and
//! the pre-flight checks that turn setup mistakes into one clear message
//! each (DESIGN invariant 8): wal_level, REPLICATION/SELECT privileges,
//! tables without a usable replica identity, a slot held by another process
//! or already past the position we expect (which would skip changes).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::model::lsn::Lsn;
use crate::model::{CatalogTable, PublishedTable, ReplicaIdentity, TableRef};
use crate::source::auth_guard::{AuthGuard, REFUSED_MARKER};
use crate::source::catalog;
use crate::source::error::SourceError;
use crate::source::pg_config::{PgConnectConfig, SslMode};
use crate::source::replication::ReplicationConnection;
use crate::source::row_filter::validate_row_filter;
use crate::source::sql::{quote_ident, quote_table};
use crate::source::value::SESSION_SETTINGS;

/// Open an ordinary SQL connection with the same TLS rules as the
/// replication connection and the session settings value conversion expects.
pub async fn connect_sql(cfg: &PgConnectConfig) -> Result<Client, SourceError> {
    match connect_sql_once(cfg).await {
        // libpq's `prefer`: a failed handshake, or a pg_hba.conf that refuses
        // the connection over TLS (28000), is tried again without TLS.
        Err(e)
            if cfg.sslmode == SslMode::Prefer
                && !cfg.is_unix_socket()
                && (matches!(e, SourceError::Tls { .. }) || e.sqlstate() == Some("28000")) =>
        {
            tracing::info!(server = %cfg, error = %e, "TLS connection to PostgreSQL failed; trying without TLS (sslmode=prefer)");
            connect_sql_once(&PgConnectConfig {
                sslmode: SslMode::Disable,
                ..cfg.clone()
            })
            .await
        }
        other => other,
    }
}

async fn connect_sql_once(cfg: &PgConnectConfig) -> Result<Client, SourceError> {
    let mut c = tokio_postgres::Config::new();
    if cfg.is_unix_socket() {
        c.host_path(&cfg.host);
    } else {
        c.host(&cfg.host);
    }
    c.port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name(&cfg.application_name)
        .connect_timeout(std::time::Duration::from_secs(
            cfg.connect_timeout_secs.max(1),
        ));
    if let Some(p) = &cfg.password {
        c.password(p);
    }
    let options: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect();
    c.options(options.join(" "));
    if cfg.is_unix_socket() {
        // No TLS over a local socket (as libpq), and nobody to pose as the server.
        c.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, conn) = c
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| connect_error(cfg, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "SQL connection ended");
            }
        });
        return Ok(client);
    }
    // TLS is negotiated here, by the same code as the replication
    // connection, so that `AuthGuard` sits between it and tokio-postgres and
    // sees the server's authentication request in the clear: tokio-postgres
    // would otherwise send a cleartext password to whoever asks.
    c.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let timeout = std::time::Duration::from_secs(cfg.connect_timeout_secs.max(1));
    let connect = async {
        let target = cfg.to_string();
        let tcp = ReplicationConnection::tcp(cfg, &target).await?;
        let (io, _encrypted) = ReplicationConnection::maybe_tls(cfg, tcp, &target).await?;
        c.connect_raw(AuthGuard::new(io, cfg), tokio_postgres::NoTls)
            .await
            .map_err(|e| connect_error(cfg, e))
    };
    let (client, conn) =
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| SourceError::Connect {
                target: cfg.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            })??;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "SQL connection ended");
        }
    });
    Ok(client)
}

/// tokio-postgres hides the cause of TLS failures in the error's source
/// chain; bring it into the message (e.g. "invalid peer certificate").
fn connect_error(cfg: &PgConnectConfig, e: tokio_postgres::Error) -> SourceError {
    let mut chain = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    if chain.iter().any(|c| c.contains(REFUSED_MARKER)) {
        return SourceError::Auth {
            user: cfg.user.clone(),
            reason: crate::source::auth_guard::cleartext_refusal(cfg),
        };
    }
    if e.to_string().contains("TLS") {
        SourceError::Tls {
            target: cfg.to_string(),
            reason: format!("{e}: {}", chain.join(": ")),
        }
    } else {
        SourceError::Sql(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationChange {
    Created,
    Altered,
    Unchanged,
}

/// Filters as the server deparses them (`(price > (0)::numeric)`) differ in
/// spelling from what users write; compare a canonical form that ignores
/// whitespace, parentheses, case and casts to constants.
fn canonical_filter(f: &str) -> String {
    let mut s: String = f
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '(' && *c != ')')
        .collect::<String>()
        .to_lowercase();
    while let Some(i) = s.find("::") {
        let end = s[i + 2..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ' '))
            .map_or(s.len(), |j| i + 2 + j);
        s.replace_range(i..end, "");
    }
    s
}

/// Create the publication, or bring an existing one to exactly these tables,
/// filters and column lists (publishing insert, update, delete, truncate).
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[PublishedTable],
) -> Result<PublicationChange, SourceError> {
    if tables.is_empty() {
        return Err(SourceError::Setup(format!(
            "publication `{name}` would publish no table"
        )));
    }
    // Each filter must be exactly one expression before it is pasted into
    // DDL (see `row_filter`): a `;` must never run statements of its own.
    for t in tables {
        if let Some(f) = &t.row_filter {
            validate_row_filter(client, &t.table.schema, &t.table.name, f).await?;
        }
    }
    let list = tables
        .iter()
        .map(PublishedTable::to_sql)
        .collect::<Vec<_>>()
        .join(", ");
    let Some((all_tables, all_ops)) = publication_flags(client, name).await? else {
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)",
            quote_ident(name)
        );
        run_ddl(client, &sql).await?;
        return Ok(PublicationChange::Created);
    };
    refuse_partitions_by_leaf(client, name).await?;
    let mut change = PublicationChange::Unchanged;
    if !all_ops {
        let sql = format!(
            "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
            quote_ident(name)
        );
        run_ddl(client, &sql).await?;
        change = PublicationChange::Altered;
    }
    if all_tables {
        if tables
            .iter()
            .any(|t| t.row_filter.is_some() || t.columns.is_some())
        {
            return Err(SourceError::Setup(format!(
                "publication `{name}` is FOR ALL TABLES, so it cannot carry the row filters or column lists the mappings ask for; drop it or use another publication name"
            )));
        }
        return Ok(change);
    }
    if comparable(&published_tables(client, name).await?) != comparable(tables) {
        let sql = format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(name));
        run_ddl(client, &sql).await?;
        change = PublicationChange::Altered;
    }
    Ok(change)
}

/// Whether the publication is FOR ALL TABLES and publishes every kind of
/// change; `None` when it does not exist.
async fn publication_flags(
    client: &Client,
    name: &str,
) -> Result<Option<(bool, bool)>, SourceError> {
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Partitioned tables must be published as their root: snapshot rows and
/// mappings name the parent, not the partition a row lives in.
async fn refuse_partitions_by_leaf(client: &Client, name: &str) -> Result<(), SourceError> {
    let leaf_named: bool = client
        .query_one(
            "SELECT NOT p.pubviaroot AND EXISTS (
                 SELECT 1 FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid
                  WHERE r.prpubid = p.oid AND c.relkind = 'p')
               FROM pg_publication p WHERE p.pubname = $1",
            &[&name],
        )
        .await?
        .get(0);
    if leaf_named {
        return Err(SourceError::Setup(format!(
            "publication `{name}` publishes a partitioned table without publish_via_partition_root: \
             run `ALTER PUBLICATION {} SET (publish_via_partition_root = true);` as its owner",
            quote_ident(name)
        )));
    }
    Ok(())
}

/// The tables the publication publishes now, with their column lists and
/// row filters (as the server deparses them).
async fn published_tables(client: &Client, name: &str) -> Result<Vec<PublishedTable>, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    (SELECT array_agg(a.attname::text ORDER BY a.attname)
                       FROM pg_attribute a WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs)),
                    pg_get_expr(pr.prqual, pr.prrelid)
               FROM pg_publication_rel pr
               JOIN pg_publication p ON p.oid = pr.prpubid
               JOIN pg_class c ON c.oid = pr.prrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.pubname = $1",
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PublishedTable {
            table: TableRef {
                schema: r.get(0),
                name: r.get(1),
            },
            columns: r.get(2),
            row_filter: r.get(3),
        })
        .collect())
}

/// Published tables in a form where equal means "publishes the same":
/// column lists in order, filters in [`canonical_filter`] form.
fn comparable(
    tables: &[PublishedTable],
) -> BTreeMap<&TableRef, (Option<Vec<&str>>, Option<String>)> {
    tables
        .iter()
        .map(|t| {
            let mut cols: Option<Vec<&str>> =
                (t.columns.as_ref()).map(|c| c.iter().map(String::as_str).collect());
            if let Some(c) = cols.as_mut() {
                c.sort();
            }
            (
                &t.table,
                (cols, t.row_filter.as_deref().map(canonical_filter)),
            )
        })
        .collect()
}

/// How long publication DDL waits for a table lock. CREATE/ALTER
/// PUBLICATION takes SHARE UPDATE EXCLUSIVE on each table: it never blocks
/// the application's reads and writes, but a waiting request would queue
/// the application's own DDL (CREATE INDEX, ALTER TABLE) behind it, so it
/// gives up early instead (SQLSTATE 55P03, retried by a restart).
pub const DDL_LOCK_TIMEOUT: &str = "5s";

/// One DDL statement, alone, through the extended protocol (which accepts
/// exactly one statement), in a transaction bounded by [`DDL_LOCK_TIMEOUT`].
async fn run_ddl(client: &Client, sql: &str) -> Result<(), SourceError> {
    client.batch_execute("BEGIN").await?;
    let done = async {
        client
            .execute(
                &format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"),
                &[],
            )
            .await?;
        client.execute(sql, &[]).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if done.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done.map_err(|e| privilege_hint(e, sql))
}

fn privilege_hint(e: tokio_postgres::Error, sql: &str) -> SourceError {
    match e.code().map(|c| c.code()) {
        Some("42501") => SourceError::Setup(format!(
            "the PostgreSQL role may not manage the publication ({}): creating or altering a publication needs ownership of its tables. Run this as the table owner, then start again:\n  {sql};",
            e.as_db_error()
                .map(|d| d.message())
                .unwrap_or("permission denied")
        )),
        Some("42P01") => SourceError::Setup(format!(
            "a published table does not exist ({}); check the mappings' table names",
            e.as_db_error()
                .map(|d| d.message())
                .unwrap_or("undefined table")
        )),
        _ => SourceError::Sql(e),
    }
}

pub async fn drop_publication(client: &Client, name: &str) -> Result<(), SourceError> {
    let sql = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name));
    run_ddl(client, &sql).await
}

/// Server-level prerequisites: PostgreSQL 15+, `wal_level = logical`, and a
/// role with REPLICATION. Every problem found is listed in one error.
pub async fn check_server(client: &Client) -> Result<(), SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('server_version_num')::int,
                    current_user::text, (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await?;
    let (wal_level, version, user, can_replicate): (String, i32, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut problems = Vec::new();
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is `{wal_level}`: set `wal_level = logical` in postgresql.conf and restart PostgreSQL"
        ));
    }
    if version < 150000 {
        problems.push(format!(
            "PostgreSQL {version} is too old: Sluice needs 15 or newer"
        ));
    }
    if !can_replicate {
        problems.push(format!("role `{user}` lacks the REPLICATION attribute: run `ALTER ROLE {user} REPLICATION;` as a superuser"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Setup(problems.join("\n")))
    }
}

/// Table-level prerequisites: each table exists, the role may SELECT it, and
/// it has a primary key (or REPLICA IDENTITY FULL / USING INDEX), so updates
/// and deletes identify their row. Every problem found is listed.
pub async fn check_tables(client: &Client, tables: &[PublishedTable]) -> Result<(), SourceError> {
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    let mut problems = Vec::new();
    for t in tables {
        let found = catalog::read_table(client, &t.table).await?;
        problems.extend(table_problems(&t.table, found.as_ref(), &user));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Setup(problems.join("\n")))
    }
}

/// What keeps `table` (`found` in the catalog, or not) from being
/// published and read by `user`.
fn table_problems(table: &TableRef, found: Option<&CatalogTable>, user: &str) -> Vec<String> {
    let q = table.qualified_name();
    let Some(found) = found else {
        return vec![format!("table {q} does not exist")];
    };
    let sql_name = quote_table(&table.schema, &table.name);
    let mut problems = Vec::new();
    match found.replica_identity {
        ReplicaIdentity::Nothing => problems.push(format!(
            "table {q} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be replicated: run `ALTER TABLE {sql_name} REPLICA IDENTITY DEFAULT;` (with a primary key) or `... REPLICA IDENTITY FULL;`"
        )),
        ReplicaIdentity::Default if found.primary_key.is_empty() => problems.push(format!(
            "table {q} has no primary key and REPLICA IDENTITY is not FULL: add a primary key or run `ALTER TABLE {sql_name} REPLICA IDENTITY FULL;`"
        )),
        _ => {}
    }
    if !found.readable {
        problems.push(format!(
            "role `{user}` may not read table {q}: run `GRANT SELECT ON {sql_name} TO {user};`"
        ));
    }
    problems
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    pub created: bool,
    /// The slot's confirmed flush position (for a new slot: where it starts).
    pub confirmed_flush: Lsn,
}

/// Create the logical pgoutput slot if missing (without a snapshot; for an
/// initial load use `ReplicationConnection::create_slot` with `Export`), or
/// check an existing one: right plugin and database, not held by another
/// process, and — if `expected` is given — not confirmed past it.
pub async fn ensure_slot(
    client: &Client,
    name: &str,
    expected: Option<Lsn>,
) -> Result<SlotState, SourceError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, slot_type, database::text, current_database()::text, active_pid, confirmed_flush_lsn::text,
                    wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else {
        return create_slot(client, name).await;
    };
    let slot = ExistingSlot {
        plugin: row.get(0),
        slot_type: row.get(1),
        database: row.get(2),
        current_db: row.get(3),
        active_pid: row.get(4),
        confirmed: row.get(5),
        wal_status: row.get(6),
    };
    let confirmed = slot.usable(name, expected)?;
    Ok(SlotState {
        created: false,
        confirmed_flush: confirmed,
    })
}

async fn create_slot(client: &Client, name: &str) -> Result<SlotState, SourceError> {
    let r = client
        .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&name])
        .await
        .map_err(|e| match e.code().map(|c| c.code()) {
            Some("42501") => SourceError::Setup(format!(
                "the PostgreSQL role may not create replication slot `{name}`: it needs the REPLICATION attribute"
            )),
            Some("53400") => SourceError::Setup(format!(
                "cannot create replication slot `{name}`: all replication slots are in use (raise max_replication_slots)"
            )),
            _ => SourceError::Sql(e),
        })?;
    let lsn: String = r.get(0);
    Ok(SlotState {
        created: true,
        confirmed_flush: lsn
            .parse()
            .map_err(|e| SourceError::Protocol(format!("{e}")))?,
    })
}

/// A slot as `pg_replication_slots` shows it.
struct ExistingSlot {
    plugin: Option<String>,
    slot_type: String,
    database: Option<String>,
    current_db: String,
    active_pid: Option<i32>,
    confirmed: Option<String>,
    wal_status: Option<String>,
}

impl ExistingSlot {
    /// Its confirmed position, if Sluice may stream from it: a logical
    /// pgoutput slot of this database, not invalidated, not held by another
    /// process, and not confirmed past `expected`.
    fn usable(self, name: &str, expected: Option<Lsn>) -> Result<Lsn, SourceError> {
        let ExistingSlot {
            plugin,
            slot_type,
            database,
            current_db,
            active_pid,
            confirmed,
            wal_status,
        } = self;
        if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") {
            return Err(SourceError::Setup(format!(
                "replication slot `{name}` exists but is not a logical pgoutput slot (type {slot_type}, plugin {}): choose another slot name or drop it",
                plugin.as_deref().unwrap_or("none")
            )));
        }
        if database.as_deref() != Some(current_db.as_str()) {
            return Err(SourceError::Setup(format!(
                "replication slot `{name}` belongs to database `{}`, not `{current_db}`: choose another slot name",
                database.unwrap_or_default()
            )));
        }
        if wal_status.as_deref() == Some("lost") {
            // PostgreSQL removed WAL the slot still needed (it fell further
            // behind than max_slot_wal_keep_size): the changes in that WAL are
            // gone, so no retry can help and the index can only be rebuilt.
            return Err(SourceError::Setup(format!(
                "replication slot `{name}` has been invalidated: it fell further behind than max_slot_wal_keep_size \
                 and PostgreSQL removed WAL it still needed, so changes since its position are lost. \
                 Rebuild: `sluice teardown --yes-drop-slot`, then `sluice run` (snapshot mode `initial` loads \
                 every table anew), then `sluice snapshot --reindex` to drop documents of rows deleted meanwhile \
                 (or delete the target indices before that `sluice run`)"
            )));
        }
        if let Some(pid) = active_pid {
            return Err(SourceError::SlotInUse {
                slot: name.to_string(),
                pid,
            });
        }
        let confirmed: Lsn = confirmed
            .as_deref()
            .unwrap_or("0/0")
            .parse()
            .map_err(|e| SourceError::Protocol(format!("{e}")))?;
        if let Some(exp) = expected
            && confirmed > exp
        {
            return Err(SourceError::Setup(format!(
                "replication slot `{name}` has confirmed up to {confirmed}, past the expected {exp}: changes in between were confirmed by someone else and would be skipped. Re-run the snapshot (or drop the slot) to resynchronise"
            )));
        }
        Ok(confirmed)
    }
}

/// Drop the slot if it exists; `Ok(false)` if there was none.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, SourceError> {
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    if let Some(pid) = row.get::<_, Option<i32>>(0) {
        return Err(SourceError::Setup(format!(
            "replication slot `{name}` is in use by server process {pid}: stop Sluice (or that consumer) before teardown"
        )));
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compare_equal_across_server_deparsing() {
        assert_eq!(
            canonical_filter("price > 0"),
            canonical_filter("(price > (0)::numeric)")
        );
        assert_eq!(
            canonical_filter("status = 'live'"),
            canonical_filter("(status = 'live'::text)")
        );
        assert_ne!(
            canonical_filter("price > 0"),
            canonical_filter("(price > (1)::numeric)")
        );
    }
}
