//! The command line: `sluice run | snapshot | check | status | teardown |
//! verify | dead-letters`.
//!
//! Owns argument parsing; the top of the crate, importing the commands
//! (`app`) and nothing importing it. Exit codes distinguish bad usage or
//! configuration (2) from runtime failure (1) (DESIGN invariant 8); the
//! commands define them (`app`), this module re-exports them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::snapshot::SnapshotRequest;
pub use crate::app::{EXIT_CONFIG, EXIT_DRIFT, EXIT_RUNTIME};
pub use crate::ops::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Stream PostgreSQL changes into Elasticsearch, exactly once in effect",
    long_about = "Sluice reads PostgreSQL's write-ahead log through logical replication \
                  (pgoutput), turns each changed row into a search document according to \
                  the mappings in mappings/*.toml, and writes it to Elasticsearch with \
                  versioned bulk requests. Progress is kept in the replication slot, so \
                  crashes and restarts never lose or duplicate a change."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `human` on a terminal, `json` for log collectors.
    #[arg(long, global = true, value_enum, env = "SLUICE_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Path to the configuration file.
    #[arg(
        long,
        short = 'c',
        env = "SLUICE_CONFIG",
        default_value = "sluice.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes continuously: preflight checks, publication and slot,
    /// initial snapshot if configured, then the live stream until SIGTERM.
    Run(ConfigArg),
    /// Backfill tables through the same pipeline, while `run` keeps streaming.
    Snapshot(SnapshotArgs),
    /// Check configuration, mappings and both servers; report every problem.
    Check(ConfigArg),
    /// Show slot state, confirmed LSN, lag, retained WAL, snapshots, dead letters.
    Status(StatusArgs),
    /// Drop the replication slot, the publication and Sluice's state index.
    Teardown(TeardownArgs),
    /// Compare the tables (inside one snapshot) with the index, document by
    /// document, while `run` streams; `--repair` mends the difference.
    /// Exit 0: equal; 3: drift found; 1: runtime failure; 2: bad usage.
    Verify(VerifyArgs),
    /// List the documents Elasticsearch refused, or write their rows again
    /// once the cause is fixed.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCommand),
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Print the dead letters (oldest first).
    List(DeadLettersArgs),
    /// Re-read the current rows of dead-lettered keys, write them through
    /// the normal path (version P − 1) and remove the dead letters that
    /// succeeded.
    Retry(DeadLettersArgs),
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only the dead letters of this index.
    #[arg(long)]
    pub index: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl DeadLettersCommand {
    pub fn request(&self) -> crate::app::dead_letters::DeadLettersRequest {
        let (a, retry) = match self {
            DeadLettersCommand::List(a) => (a, false),
            DeadLettersCommand::Retry(a) => (a, true),
        };
        crate::app::dead_letters::DeadLettersRequest {
            config: a.config.config.clone(),
            index: a.index.clone(),
            json: a.json,
            retry,
        }
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only these tables (`schema.table`); default: every mapped table.
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Print the report as JSON, with every drifted id.
    #[arg(long)]
    pub json: bool,
    /// Compare about N rows per table (whole chunks, in random order); no
    /// scan for extra documents.
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// Write the fixes (version P − 1, so never over a newer change) and
    /// delete extra documents (versioned deletes).
    #[arg(long, conflicts_with = "sample")]
    pub repair: bool,
    /// How long to wait for `sluice run` to apply everything up to the
    /// snapshot before giving up (exit 1).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub stream_timeout: u64,
}

impl VerifyArgs {
    pub fn request(&self) -> crate::app::verify::VerifyRequest {
        crate::app::verify::VerifyRequest {
            config: self.config.config.clone(),
            tables: self.tables.clone(),
            json: self.json,
            sample: self.sample,
            repair: self.repair,
            stream_timeout: std::time::Duration::from_secs(self.stream_timeout),
        }
    }
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only these tables (`schema.table`); default: every mapped table.
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Build each mapped index anew (`<name>-<timestamp>`, with the mapping
    /// files as they are now) while `sluice run` keeps streaming into both,
    /// then move the name (an alias) to it atomically. Needs a running
    /// `sluice run`.
    #[arg(long)]
    pub reindex: bool,
    /// With --reindex: delete the old index after the swap (required when
    /// the name is still a concrete index, not an alias).
    #[arg(long, requires = "reindex")]
    pub delete_old: bool,
    /// With --reindex: how long to wait for `sluice run` to pick up the
    /// reindex (and, at the end, the swap) before giving up (exit 1).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 600,
        requires = "reindex"
    )]
    pub stream_timeout: u64,
    /// With --reindex: give up a reindex that is building (delete its build
    /// index and state) instead of starting or resuming one.
    #[arg(long, requires = "reindex")]
    pub abandon: bool,
}

impl SnapshotArgs {
    /// The request as the command takes it.
    pub fn request(&self) -> SnapshotRequest {
        SnapshotRequest {
            config: self.config.config.clone(),
            tables: self.tables.clone(),
            reindex: self.reindex,
            delete_old: self.delete_old,
            stream_timeout: std::time::Duration::from_secs(self.stream_timeout),
            abandon: self.abandon,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TeardownArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Required: confirms that the slot and publication should be dropped.
    #[arg(long)]
    pub yes_drop_slot: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_defaults_to_sluice_toml() {
        let cli = Cli::try_parse_from(["sluice", "check"]).unwrap();
        match cli.command {
            Command::Check(c) => assert_eq!(c.config, PathBuf::from("sluice.toml")),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn delete_old_is_refused_without_reindex() {
        assert!(Cli::try_parse_from(["sluice", "snapshot", "--delete-old"]).is_err());
        let cli = Cli::try_parse_from(["sluice", "snapshot", "--reindex", "--delete-old"]).unwrap();
        match cli.command {
            Command::Snapshot(s) => {
                assert!(s.reindex && s.delete_old && !s.abandon);
                assert_eq!(s.stream_timeout, 600);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn verify_takes_tables_json_sample_and_repair_but_not_sample_with_repair() {
        let cli = Cli::try_parse_from([
            "sluice", "verify", "--table", "public.a", "--json", "--repair",
        ])
        .unwrap();
        match cli.command {
            Command::Verify(v) => {
                let r = v.request();
                assert_eq!(r.tables, ["public.a"]);
                assert!(r.json && r.repair && r.sample.is_none());
                assert_eq!(r.stream_timeout.as_secs(), 120);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["sluice", "verify", "--sample", "10", "--repair"]).is_err());
    }

    #[test]
    fn dead_letters_list_and_retry_take_an_index() {
        let cli =
            Cli::try_parse_from(["sluice", "dead-letters", "retry", "--index", "items"]).unwrap();
        match cli.command {
            Command::DeadLetters(c) => {
                let r = c.request();
                assert!(r.retry && !r.json);
                assert_eq!(r.index.as_deref(), Some("items"));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["sluice", "dead-letters", "list", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::DeadLetters(DeadLettersCommand::List(_))
        ));
    }

    #[test]
    fn snapshot_takes_several_tables() {
        let cli = Cli::try_parse_from([
            "sluice", "snapshot", "--table", "public.a", "--table", "public.b",
        ])
        .unwrap();
        match cli.command {
            Command::Snapshot(s) => assert_eq!(s.tables, ["public.a", "public.b"]),
            other => panic!("parsed as {other:?}"),
        }
    }
}
