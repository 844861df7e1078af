//! The commands: where connections are opened and the layers are wired.
//!
//! - `run`: `sluice run` (initial load on first start, then streaming).
//! - `snapshot`: `sluice snapshot` (backfill and re-index while `run` streams).
//! - `check`: `sluice check` (every config, catalog and server problem at once).
//! - `status`: `sluice status` and `sluice teardown`.
//!
//! Rule: only this layer opens connections and wires closures; real work
//! lives in the layer that owns it (source, transform, sink, stream,
//! snapshot).

pub mod check;
pub mod load;
pub mod run;
pub mod setup;
pub mod snapshot;
pub mod status;

/// Exit code for a run that failed at runtime (a server went away, ...).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code for bad usage or bad configuration: fix the input, do not retry.
pub const EXIT_CONFIG: i32 = 2;
