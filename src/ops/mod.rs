//! What operators see of a running Sluice: the HTTP endpoints (`/health`,
//! `/ready`, `/metrics`), the Prometheus metrics and their names (one
//! place), and logging with secrets redacted.
//!
//! Rule: nothing here reads PostgreSQL or writes Elasticsearch; the
//! application layer feeds these modules its state.

pub mod http;
pub mod logging;
pub mod metrics;
