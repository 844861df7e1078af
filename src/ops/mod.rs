//! What operators see of a running Sluice: the HTTP endpoints (`/health`,
//! `/ready`, `/metrics`, and the status page `app::ui` renders), the Prometheus metrics and their names (one
//! place), and logging with secrets redacted.
//!
//! Rules that hold here:
//! - Nothing here reads PostgreSQL or writes Elasticsearch, and nothing
//!   opens a connection: the commands (`app`) feed these modules their state
//!   (`Health`, `ReadyState`, the recorder handle) and wire the HTTP server.
//! - No SQL and no Elasticsearch request (those are `source` and `sink`).
//! - Imports only `model`: every other layer records metrics and logs
//!   through here, so `ops` must sit below them all. What `/ready` needs
//!   from the sink (why writes are held) is the [`Holds`] board defined
//!   here, written by the sink's workers; whether this process waits as a
//!   standby for the replication slot is the [`Standby`] board, written by
//!   the source's reader and `run`'s start-up gate. Never `app` or `cli`: the log
//!   format is defined here and the command line takes it from here.

pub mod holds;
pub mod http;
pub mod logging;
pub mod metric_values;
pub mod metrics;
pub mod standby;
pub mod status_page;

pub use holds::Holds;
pub use standby::Standby;
