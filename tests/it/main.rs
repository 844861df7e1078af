//! Integration tests against the real PostgreSQL and Elasticsearch started by
//! `./dev services up`. One test binary (one link step) with a module per
//! area; a file's prefix names its area, and the shared fixtures (scenario
//! setup, a running `sluice`, "the index equals the table") live in
//! `support/`.

mod support;

// The foundations the design rests on, and configuration against the catalog.
mod config;
mod foundation;

// source: the WAL reader, publications and slots, value types, TLS.
mod source;
mod source_manage;
mod source_restart;
mod source_tls;
mod source_types;

// sink and stream: the indexer, index admin, the pipeline fed by hand.
mod sink;
mod stream_late_bulk;
mod stream_pipeline;

// snapshot: the engine through its seams, and `sluice snapshot`.
mod snapshot;
mod snapshot_retry;

// run: the real `sluice run` process end to end.
mod run;
mod run_cluster;
mod run_guard;
mod run_heartbeat;
mod run_held;
mod run_mappings;
mod run_nested;
mod run_nested_large;
mod run_nested_reindex;
mod run_outage;
mod run_refetch;
mod run_reindex;
mod run_slot_lost;
mod run_standby;
mod run_transform_failures;
// The long SIGKILL soak, run by `./dev soak` (ignored in the suite).
mod run_soak;

// fault: the fault matrix (`./dev faults` turns its report lines into
// RELIABILITY.md's table).
mod fault_es;
mod fault_kill;
mod fault_net;
mod fault_pg;

// ops: what an operator sees and runs (check, status, HTTP, secrets, packaging).
mod ops_check;
mod ops_http;
mod ops_packaging;
mod ops_run;
mod ops_secrets;
mod ops_status;
mod ops_tls;
mod ops_ui;

// verify: `sluice verify`, `--repair` and the dead-letter commands.
mod verify_dead_letters;
mod verify_large;
mod verify_repair;
