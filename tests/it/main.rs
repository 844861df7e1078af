//! Integration tests against the real PostgreSQL and Elasticsearch started by
//! `./dev services up`. One test binary (one link step) with a module per area.

mod support;

mod check;
mod config;
mod foundation;
mod heartbeat;
mod mapping_run;
mod ops;
mod ops_packaging;
mod ops_run;
mod ops_secrets;
mod ops_status;
mod ops_tls;
mod pipeline;
mod pipeline_late_bulk;
mod reindex_run;
mod run;
mod run_cluster;
mod run_guard;
mod run_held;
mod run_outage;
mod run_slot_lost;
mod sink;
mod snapshot;
mod snapshot_retry;
mod source;
mod source_manage;
mod source_restart;
mod source_tls;
mod source_types;
mod transform_failures;
