//! The commands: where connections are opened and the layers are wired.
//!
//! - `run`: `sluice run` (initial load on first start, then streaming).
//! - `snapshot`: `sluice snapshot` (backfill and re-index while `run` streams).
//! - `load`: the snapshot wiring both share (exporters, converter, sink, the
//!   initial load's marker); `setup`: their common start-up steps.
//! - `check`: `sluice check` (every config, catalog and server problem at once).
//! - `status`: `sluice status` and `sluice teardown`.
//! - `verify`: `sluice verify [--repair]`; `dead_letters`: `sluice dead-letters`.
//!
//! Rules that hold here:
//! - Only this layer opens connections (PostgreSQL sessions, the
//!   Elasticsearch client, replication connections) and wires closures
//!   (connectors, exporters, transform factories); the layers below get
//!   them passed in.
//! - No SQL here: what a command asks PostgreSQL is in `source` (`inspect`,
//!   `filter_check`, `manage`) or the snapshot reader, returned as plain
//!   rows. No Elasticsearch request either: index, alias, template and
//!   cluster calls are `sink::admin`, Sluice's records `sink::state_store`,
//!   the cluster's health `sink::health`.
//! - What stays here is the decisions and the words: which check fails,
//!   which message an operator reads (tests hold them word for word), which
//!   exit code ([`EXIT_CONFIG`]: fix the input; [`EXIT_RUNTIME`]: retry).
//! - Imports every layer below; only `cli` and `main` import this one.

pub mod check;
pub mod dead_letters;
pub mod index_guard;
pub mod load;
pub mod run;
pub mod setup;
pub mod snapshot;
pub mod status;
pub mod ui;
pub mod verify;

/// Exit code for a run that failed at runtime (a server went away, ...).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code for bad usage or bad configuration: fix the input, do not retry.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code of `sluice verify` when it found drift (distinct from a
/// failure to run, so a script or an alert can tell them apart).
pub const EXIT_DRIFT: i32 = 3;
