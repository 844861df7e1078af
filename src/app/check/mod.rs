//! `sluice check`: read the configuration and mappings, connect to both
//! servers, and report every problem at once (DESIGN invariant 8).
//!
//! Each check adds a [`Problem`] rather than stopping, so one run lists all
//! that must be fixed. Problems the user fixes in configuration, mappings or
//! server settings exit with `EXIT_CONFIG` (2); a server that cannot be
//! reached at all exits with `EXIT_RUNTIME` (1).
//!
//! [`preflight`] is the PostgreSQL half of the same checks for `run` and
//! `snapshot`, so a configuration `check` refuses can never be started and
//! turn against the application (e.g. a row filter outside the replica
//! identity, which makes PostgreSQL refuse the application's UPDATEs).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

mod compat;
mod publication;
mod row_filter;

use crate::cli::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::config::doc_shape::document_fields;
use crate::config::{Catalog, Config, IndexName, load_catalog};
use crate::sink::admin::{self, AdminError};
use crate::sink::{Elasticsearch, EsConfig};
use crate::source::PgConnectConfig;
use crate::source::inspect;
pub use crate::source::inspect::ServerFacts;
use crate::source::sql::quote_table;
use compat::{field_conflicts, flatten_properties, parse_es_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Fix the configuration, a mapping, the schema or a server setting.
    Config,
    /// A server could not be reached.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
}

/// Everything `check` found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// What was verified, for the summary.
    pub facts: Vec<String>,
    /// Risks that do not fail the check.
    pub warnings: Vec<String>,
}

impl Report {
    fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            kind: ProblemKind::Config,
            message: message.into(),
        });
    }

    fn unreachable(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            kind: ProblemKind::Unreachable,
            message: message.into(),
        });
    }

    /// The problems as `check` prints them: a count, then one line each.
    pub fn problems_text(&self) -> String {
        let mut out = format!("{} problem(s):", self.problems.len());
        for p in &self.problems {
            out.push_str(&format!("\n  ✗ {}", p.message));
        }
        out
    }

    pub fn exit_code(&self) -> i32 {
        if self.problems.is_empty() {
            0
        } else if self.problems.iter().any(|p| p.kind == ProblemKind::Config) {
            EXIT_CONFIG
        } else {
            EXIT_RUNTIME
        }
    }
}

/// `sluice check --config <path>`: print the findings, return the exit code.
pub async fn run(path: &Path) -> i32 {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "sluice check: {} problem(s) in the configuration:",
                errors.0.len()
            );
            for e in &errors.0 {
                eprintln!("  ✗ {e}");
            }
            return EXIT_CONFIG;
        }
    };
    let report = check(&mut config).await;
    for w in &report.warnings {
        eprintln!("  ⚠ {w}");
    }
    if report.problems.is_empty() {
        println!("sluice check: all good");
        for f in &report.facts {
            println!("  ✓ {f}");
        }
    } else {
        eprintln!("sluice check: {}", report.problems_text());
    }
    report.exit_code()
}

/// What the command calling [`preflight`] is about to do on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preflight {
    /// `run`: creates or alters the publication and the slot.
    Run,
    /// `snapshot`: reads tables through a temporary slot, no publication.
    Snapshot,
}

/// The fatal PostgreSQL checks of `check`, run by every command before it
/// changes anything on the server. This is the guard that keeps Sluice from
/// breaking the application: a publication whose row filter reads columns
/// outside the replica identity makes PostgreSQL refuse the application's
/// UPDATE and DELETE, so `run` must refuse before creating it, with the same
/// words `check` prints. `Err((exit code, message))` when any problem was
/// found; `Ok` carries the warnings, for the caller to log.
pub async fn preflight(config: &Config, what: Preflight) -> Result<Vec<String>, (i32, String)> {
    // Binding the mappings is the caller's business: work on a copy.
    let mut config = config.clone();
    let mut report = Report::default();
    check_postgres(&mut config, what == Preflight::Run, &mut report).await;
    if report.problems.is_empty() {
        Ok(report.warnings)
    } else {
        Err((report.exit_code(), report.problems_text()))
    }
}

/// Run every check against the servers `config` names. Binds the mappings
/// to the catalog on the way (as start-up does).
pub async fn check(config: &mut Config) -> Report {
    let mut report = Report::default();
    let catalog = check_postgres(config, true, &mut report).await;
    check_elasticsearch(config, catalog.as_ref(), &mut report).await;
    report
}

/// Connect for ordinary SQL, with the configured TLS mode.
pub async fn pg_connect(pg: &PgConnectConfig) -> anyhow::Result<tokio_postgres::Client> {
    crate::source::connect_sql(pg)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {pg}"))
}

/// An Elasticsearch client from `EsConfig` (auth, CA, timeout).
pub fn es_client(es: &EsConfig) -> anyhow::Result<Elasticsearch> {
    Ok(crate::sink::client::build_client(es)?)
}

/// The PostgreSQL half of `check` (and of [`preflight`]); `publication`:
/// whether the publication the command manages is checked too.
async fn check_postgres(
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
    let catalog = match load_catalog(&client, &config.mappings.schemas()).await {
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
    for (schema, table) in config.mappings.tables() {
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

/// An existing index that forgets delete tombstones sooner than the replay
/// window risks resurrecting deleted documents (DESIGN invariant 3).
async fn check_gc_deletes(es: &Elasticsearch, index: &str, config: &Config, report: &mut Report) {
    let Some(value) = admin::effective_gc_deletes(es, index).await else {
        return;
    };
    let secs = parse_es_duration(&value);
    let want = config.pipeline.gc_deletes.as_secs();
    if secs.is_some_and(|s| s < want) {
        report.warnings.push(format!(
            "index `{index}` has index.gc_deletes={value}, shorter than the replay window ({want}s, pipeline.gc_deletes_secs): a replayed write could resurrect a deleted document; run `PUT {index}/_settings {{\"index.gc_deletes\": \"{want}s\"}}`"
        ));
    }
}

/// What a failed request says in `check`'s words: the client's error, or
/// the status Elasticsearch answered.
fn short_reason(e: &AdminError) -> String {
    match e {
        AdminError::Request { source, .. } => source.to_string(),
        AdminError::Status { status, .. } => format!("HTTP {status}"),
        other => other.to_string(),
    }
}

/// A missing ingest pipeline would make Elasticsearch refuse every write
/// of the mapping (all of them dead letters).
async fn check_ingest_pipelines(es: &Elasticsearch, config: &Config, report: &mut Report) {
    let mut seen: Vec<&str> = Vec::new();
    for m in &config.mappings.list {
        let Some(p) = m.pipeline.as_deref() else {
            continue;
        };
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        let found = admin::ingest_pipeline_exists(es, p).await;
        let at = format!(
            "{} line {}: `pipeline`",
            m.file.display(),
            m.pipeline_line.unwrap_or(m.table_line)
        );
        match found {
            Ok(true) => {}
            Ok(false) => report.problem(format!(
                "{at}: ingest pipeline `{p}` does not exist in Elasticsearch; every document of this mapping would be refused (create it with PUT _ingest/pipeline/{p}, or remove `pipeline`)"
            )),
            Err(e @ AdminError::Status { .. }) => report.problem(format!(
                "{at}: cannot read ingest pipeline `{p}`: {}",
                short_reason(&e)
            )),
            Err(e) => report.unreachable(format!(
                "{at}: cannot read ingest pipeline `{p}`: {}",
                short_reason(&e)
            )),
        }
    }
}

/// Elasticsearch before 7 wants a mapping type in every bulk action, which
/// Sluice does not write; OpenSearch (a fork of 7.10) numbers its own
/// versions and is fine.
fn es_version_problem(distribution: &str, version: &str) -> Option<String> {
    let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
    match major {
        _ if distribution != "elasticsearch" => None,
        Some(m) if m >= 7 => None,
        Some(_) => Some(format!(
            "Elasticsearch {version} is too old: Sluice needs 7 or newer"
        )),
        None => Some(format!(
            "Elasticsearch reports version `{version}`, which Sluice cannot read; it needs 7 or newer"
        )),
    }
}

async fn check_elasticsearch(config: &Config, catalog: Option<&Catalog>, report: &mut Report) {
    let es = match es_client(&config.elasticsearch) {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("Elasticsearch: {e:#}"));
            return;
        }
    };
    // `user:password@` in a URL is a secret: never print it.
    let urls = config
        .elasticsearch
        .urls
        .iter()
        .map(|u| crate::ops::logging::redact_url(u))
        .collect::<Vec<_>>()
        .join(", ");
    let info = match admin::cluster_info(&es).await {
        Ok(info) => info,
        Err(AdminError::Status { status, .. }) if matches!(status, 401 | 403) => {
            report.problem(format!(
                "Elasticsearch at {urls} answered HTTP {status}: check `username`/`password` or `api_key` in [elasticsearch]"
            ));
            return;
        }
        // Some proxies and locked-down clusters refuse `GET /`: ask a node.
        Err(AdminError::Status { .. }) => match admin::node_version(&es).await {
            Ok(number) => serde_json::json!({ "version": { "number": number } }),
            Err(e) => {
                report.problem(format!(
                    "Elasticsearch at {urls}: cannot read its version: {}",
                    short_reason(&e)
                ));
                return;
            }
        },
        Err(e) => {
            report.unreachable(format!(
                "Elasticsearch at {urls} is not reachable: {}",
                short_reason(&e)
            ));
            return;
        }
    };
    let version = info["version"]["number"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let distribution = info["version"]["distribution"]
        .as_str()
        .unwrap_or("elasticsearch");
    if let Some(p) = es_version_problem(distribution, &version) {
        report.problem(p);
    }
    report
        .facts
        .push(format!("{distribution} {version} at {urls}"));

    check_ingest_pipelines(&es, config, report).await;

    let Some(catalog) = catalog else { return };
    let specs = config
        .mappings
        .index_specs(&config.pipeline.gc_deletes_setting());
    for m in &config.mappings.list {
        let Some(t) = catalog.tables.get(&*m.qualified_table) else {
            continue;
        };
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        let Ok(fields) = document_fields(m, &names) else {
            continue;
        };
        let pattern = match &m.index {
            IndexName::Fixed(n) => n.to_string(),
            IndexName::Template(tpl) => tpl.wildcard(),
        };
        let body = match admin::index_mappings(&es, &pattern).await {
            Ok(body) => body,
            Err(e @ AdminError::Status { .. }) => {
                report.problem(format!(
                    "Elasticsearch: cannot read the mapping of `{pattern}`: {}",
                    short_reason(&e)
                ));
                continue;
            }
            Err(e) => {
                report.unreachable(format!(
                    "Elasticsearch: cannot read the mapping of `{pattern}`: {}",
                    short_reason(&e)
                ));
                continue;
            }
        };
        let Some(indices) = body.as_object() else {
            continue;
        };
        let templated = matches!(m.index, IndexName::Template(_));
        if indices.is_empty() || templated {
            // Sluice will create it (or, for a templated name, the next
            // ones): the mapping it creates them with must take the
            // documents too.
            let spec = specs.iter().find(|s| s.pattern == pattern);
            let mut types = BTreeMap::new();
            if let Some(spec) = spec {
                flatten_properties(&spec.body["mappings"]["properties"], "", &mut types);
            }
            for conflict in field_conflicts(&fields, t, &types) {
                report.problem(format!(
                    "{}: {conflict} but the index mapping configured for `{pattern}` maps it as `{}`; change `index_mappings` (or the index file) or convert the field in [fields]",
                    m.file.display(),
                    conflict.es_type,
                ));
            }
        }
        for (index, def) in indices {
            check_gc_deletes(&es, index, config, report).await;
            let mut types = BTreeMap::new();
            flatten_properties(&def["mappings"]["properties"], "", &mut types);
            for conflict in field_conflicts(&fields, t, &types) {
                report.problem(format!(
                    "{}: {conflict} but index `{index}` maps it as `{}`; change the index mapping or convert the field in [fields]",
                    m.file.display(),
                    conflict.es_type,
                ));
            }
        }
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

    #[test]
    fn elasticsearch_before_7_is_refused_and_opensearch_is_not() {
        assert_eq!(es_version_problem("elasticsearch", "8.19.21"), None);
        assert_eq!(es_version_problem("elasticsearch", "7.17.0"), None);
        assert_eq!(
            es_version_problem("elasticsearch", "6.8.23").as_deref(),
            Some("Elasticsearch 6.8.23 is too old: Sluice needs 7 or newer")
        );
        assert!(es_version_problem("elasticsearch", "?").is_some());
        assert_eq!(es_version_problem("opensearch", "2.11.0"), None);
    }
}
