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
//!
//! `pg_checks` and `es_checks` hold the two halves (with `publication`,
//! `row_filter` and `compat`); the questions they put to the servers are
//! `source::inspect`, `source::filter_check` and `sink::admin`, so only the
//! verdicts and their words are here.

use std::path::Path;

use anyhow::Context;

mod compat;
mod es_checks;
mod pg_checks;
mod publication;
mod row_filter;

use crate::app::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::config::Config;
use crate::sink::{Elasticsearch, EsConfig};
use crate::source::PgConnectConfig;
pub use crate::source::inspect::ServerFacts;
use es_checks::check_elasticsearch;
use pg_checks::check_postgres;

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
