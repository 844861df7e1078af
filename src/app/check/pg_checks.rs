//! The PostgreSQL half of `sluice check`, and of every command's
//! preflight: the server (version, `wal_level`, REPLICATION, free slots and
//! WAL senders, the slot), the mappings against the live catalog, each
//! table's privileges and row filter, the heartbeat's privilege and the
//! publication. The questions are `source::inspect`'s; the verdicts and
//! their words are here.

use super::{Report, publication, row_filter};
use crate::config::Config;
use crate::model::Catalog;
use crate::source::PgConnectConfig;
use crate::source::inspect::{self, ServerFacts};
use crate::source::sql::quote_table;

/// The PostgreSQL half of `check` (and of [`preflight`](super::preflight)); `publication`:
/// whether the publication the command manages is checked too.
pub(super) async fn check_postgres(
    config: &mut Config,
    publication: bool,
    report: &mut Report,
) -> Option<Catalog> {
    // Below verify-full someone may stand in the server's place: said in
    // `check`, and logged at warn by `run` and `snapshot` (via `preflight`).
    if let Some(w) = crate::source::auth_guard::transport_warning(&config.postgres) {
        report.warnings.push(w);
    }
    let client = match crate::source::connect_sql(&config.postgres).await {
        Ok(c) => c,
        Err(e) => {
            // Refused or lost connections may pass; wrong credentials, a
            // missing database or a certificate the CA does not sign are
            // fixed in the configuration.
            let msg = connect_problem(&e, &config.postgres);
            if crate::source::is_retryable(&e) {
                report.unreachable(msg);
            } else {
                report.problem(msg);
            }
            return None;
        }
    };
    check_server(&client, config, report).await;
    let catalog =
        match crate::source::catalog::read_schemas(&client, &config.mappings.schemas()).await {
            Ok(c) => c,
            Err(e) => {
                report.problem(format!("PostgreSQL: cannot read the catalog: {e}"));
                return None;
            }
        };
    if let Err(errors) = config.mappings.validate_against_catalog(&catalog) {
        for e in errors.0 {
            report.problem(e.to_string());
        }
    }
    check_tables(&client, config, &catalog, report).await;
    if config.heartbeat_interval.is_some() {
        check_heartbeat_privilege(&client, config, report).await;
    }
    if publication {
        publication::check_publication(&client, config, &catalog, report).await;
    }
    let mapped = config.mappings.list.len();
    report.facts.push(format!(
        "{mapped} mapping(s) over {} table(s) match the catalog",
        config.mappings.tables().len()
    ));
    Some(catalog)
}

/// The server's version, `wal_level`, the role's REPLICATION attribute,
/// free slots and WAL senders, and the slot.
async fn check_server(client: &tokio_postgres::Client, config: &Config, report: &mut Report) {
    let s = match inspect::server_facts(client, &config.slot).await {
        Ok(s) => s,
        Err(e) => {
            report.problem(format!("PostgreSQL: cannot read server settings: {e}"));
            return;
        }
    };
    for p in s.problems(&config.postgres.user, &config.slot) {
        report.problem(p);
    }
    report.facts.push(format!(
        "PostgreSQL {} at {}, wal_level={}",
        s.version, config.postgres, s.wal_level
    ));
    report.facts.push(if s.slot_exists {
        format!(
            "replication slot `{}` exists (streaming resumes from it)",
            config.slot
        )
    } else {
        format!(
            "{} free replication slot(s); `{}` will be created",
            s.free_slots, config.slot
        )
    });
}

/// Each mapped table the catalog has: readable by the role, and its row
/// filter acceptable to PostgreSQL.
async fn check_tables(
    client: &tokio_postgres::Client,
    config: &Config,
    catalog: &Catalog,
    report: &mut Report,
) {
    for table in config.mappings.tables() {
        let (schema, table) = (table.schema, table.name);
        let q = format!("{schema}.{table}");
        let Some(t) = catalog.tables.get(&q) else {
            continue;
        };
        match inspect::may_select(client, &schema, &table).await {
            Ok(true) => {}
            Ok(false) => report.problem(format!(
                "PostgreSQL role `{}` may not read {q}: run `GRANT SELECT ON {} TO {}`",
                config.postgres.user,
                quote_table(&schema, &table),
                config.postgres.user
            )),
            Err(e) => report.problem(format!("{q}: cannot check privileges: {e}")),
        }
        let Some(m) = config.mappings.for_table(&q).next() else {
            continue;
        };
        if let Some(filter) = &m.filter {
            row_filter::check_row_filter(client, config, m, t, filter, report).await;
        }
    }
}

/// The heartbeat writes WAL with a function whose EXECUTE privilege an
/// administrator may have revoked; `check` changes nothing, so it asks
/// instead of emitting one.
async fn check_heartbeat_privilege(
    client: &tokio_postgres::Client,
    config: &Config,
    report: &mut Report,
) {
    use crate::source::heartbeat::FUNCTION;
    let user = &config.postgres.user;
    match inspect::may_execute(client, FUNCTION).await {
        Ok(true) => report
            .facts
            .push(format!("heartbeat: role `{user}` may execute {FUNCTION}")),
        Ok(_) => report.problem(format!(
            "[postgres] heartbeat_interval_ms is set, but role `{user}` may not execute \
             {FUNCTION}: run `GRANT EXECUTE ON FUNCTION {FUNCTION} TO {user};` as a superuser, \
             or set heartbeat_interval_ms = 0 to turn the heartbeat off"
        )),
        Err(e) => report.problem(format!(
            "heartbeat: cannot check the privilege on {FUNCTION}: {e}"
        )),
    }
}

/// One line for a failed connection: the server's own words, and which
/// setting to look at.
fn connect_problem(e: &crate::source::SourceError, pg: &PgConnectConfig) -> String {
    let db = match e {
        crate::source::SourceError::Sql(err) => err.as_db_error(),
        _ => None,
    };
    let Some(db) = db else {
        return format!("PostgreSQL: {e}");
    };
    let hint = match db.code().code() {
        "28P01" => "; check `password` / `password_file` (or the URL) in [postgres]",
        "3D000" => "; check `dbname` (or the URL's path) in [postgres]",
        "28000" => "; pg_hba.conf or the role does not allow this login",
        _ => "",
    };
    format!(
        "PostgreSQL at {pg} refused the connection: {} (SQLSTATE {}){hint}",
        db.message(),
        db.code().code()
    )
}

/// What `check` makes of the facts `source::inspect` reads.
impl ServerFacts {
    /// Each server-level problem, with what to do about it.
    pub fn problems(&self, user: &str, slot: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.version_num < 150000 {
            out.push(format!(
                "PostgreSQL {} is too old: Sluice needs 15 or newer (row filters and column lists in publications)",
                self.version
            ));
        }
        if self.wal_level != "logical" {
            out.push(format!(
                "PostgreSQL wal_level is `{}`: set `wal_level = logical` in postgresql.conf and restart the server",
                self.wal_level
            ));
        }
        if !self.can_replicate {
            out.push(format!(
                "PostgreSQL role `{user}` lacks the REPLICATION privilege: run `ALTER ROLE {user} REPLICATION`"
            ));
        }
        if !self.slot_exists && self.free_slots < 1 {
            out.push(format!(
                "PostgreSQL has no free replication slot for `{slot}`: raise max_replication_slots (restart needed) or drop an unused slot"
            ));
        }
        if self.slot_lost {
            out.push(format!(
                "replication slot `{slot}` has been invalidated (wal_status lost: it fell further behind than max_slot_wal_keep_size), so changes since its position are gone: rebuild with `sluice teardown --yes-drop-slot` and a fresh `sluice run` (see docs/operations.md)"
            ));
        }
        if self.free_wal_senders < 1 {
            out.push(
                "PostgreSQL has no free WAL sender: raise max_wal_senders (restart needed)".into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_facts_report_each_unmet_requirement() {
        let ok = ServerFacts {
            version_num: 150004,
            version: "15.4".into(),
            wal_level: "logical".into(),
            can_replicate: true,
            free_slots: 3,
            slot_exists: false,
            free_wal_senders: 5,
            slot_lost: false,
        };
        assert!(ok.problems("sluice", "s").is_empty());
        let bad = ServerFacts {
            version_num: 140009,
            version: "14.9".into(),
            wal_level: "replica".into(),
            can_replicate: false,
            free_slots: 0,
            slot_exists: false,
            free_wal_senders: 0,
            slot_lost: false,
        };
        let p = bad.problems("app", "s").join("\n");
        for w in [
            "14.9 is too old",
            "wal_level is `replica`",
            "`app` lacks the REPLICATION",
            "no free replication slot",
            "no free WAL sender",
        ] {
            assert!(p.contains(w), "{w} in {p}");
        }
        // An existing slot needs no free one.
        let resume = ServerFacts {
            free_slots: 0,
            slot_exists: true,
            ..ok.clone()
        };
        assert!(resume.problems("sluice", "s").is_empty());
        // A slot PostgreSQL invalidated cannot be resumed.
        let lost = ServerFacts {
            slot_exists: true,
            slot_lost: true,
            ..ok
        };
        assert!(lost.problems("sluice", "s")[0].contains("`s` has been invalidated"));
    }
}
