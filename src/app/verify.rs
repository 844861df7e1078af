//! `sluice verify [--repair]`: prove the index equals the tables, and mend
//! it where it does not (the comparison itself: `snapshot::verify`).
//!
//! This file wires it: a snapshot exported by a temporary slot (point P),
//! a wait until `sluice run` has applied everything up to P (its slot's
//! confirmed position reaches P), the dead letters counted as known drift,
//! the report on stdout and, per index, in the state index, where the
//! running `sluice run` reads it for `/metrics`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::json;

use crate::app::load::{connector, converter, options, temporary_slot_exporter};
use crate::app::setup::indexer_config;
use crate::app::snapshot::{config_err, open, runtime_err, wanted_tables};
use crate::app::{EXIT_DRIFT, EXIT_RUNTIME};
use crate::config::{Config, STATE_INDEX};
use crate::model::Lsn;
use crate::sink::Elasticsearch;
use crate::sink::doc_reads::dead_letters;
use crate::sink::state_store::StateIndex;
use crate::snapshot::verify::report::VerifyReport;
use crate::snapshot::verify::{DeadLetterKeys, RowRefetcher, VerifyDeps, VerifyJob, verify};
use crate::source;

/// What `sluice verify` is asked to do.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub config: PathBuf,
    pub tables: Vec<String>,
    pub json: bool,
    pub sample: Option<u64>,
    pub repair: bool,
    /// How long to wait for `sluice run` to apply everything up to P.
    pub stream_timeout: Duration,
}

/// Ids listed per kind and index in the text output (`--json`: all).
const TEXT_ID_CAP: usize = 20;

/// The state record id of the last verify of `index`.
pub fn record_id(index: &str) -> String {
    format!("verify|{index}")
}

/// `sluice verify`: exit 0 when the index equals the tables, [`EXIT_DRIFT`]
/// when drift was found (repaired or not), 1 or 2 when it could not run.
pub async fn command(req: &VerifyRequest) -> i32 {
    match run(req).await {
        Ok(report) => {
            if req.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
            } else {
                print!("{}", report.render());
            }
            if report.drift() > 0 { EXIT_DRIFT } else { 0 }
        }
        Err((code, e)) => {
            eprintln!("sluice verify: {e:#}");
            code
        }
    }
}

async fn run(req: &VerifyRequest) -> Result<VerifyReport, (i32, anyhow::Error)> {
    let started = Utc::now();
    let clock = Instant::now();
    let (cfg, pg, es) = open(&req.config).await?;
    let tables = wanted_tables(&cfg, &req.tables).map_err(config_err)?;
    let known = known_drift(&cfg, &es).await.map_err(runtime_err)?;
    let exported = (temporary_slot_exporter(&cfg))()
        .await
        .map_err(|e| runtime_err(anyhow::anyhow!("exporting a snapshot: {e}")))?;
    let point = exported.consistent_point;
    let caught_up = wait_for_stream(&cfg, &pg, point, req.stream_timeout)
        .await
        .map_err(runtime_err)?;
    let refetch = refetcher(&cfg, &pg).await.map_err(runtime_err)?;
    let deps = VerifyDeps {
        connector: connector(&cfg),
        converter: converter(&pg).await.map_err(runtime_err)?,
        refetch,
        es: es.clone(),
        mappings: Arc::new(cfg.mappings.clone()),
        indexer: indexer_config(&cfg),
    };
    let opts = options(&cfg);
    let job = VerifyJob {
        tables,
        readers: opts.readers,
        chunk_rows: opts.chunk_rows,
        batch_rows: opts.batch_rows,
        sample: req.sample,
        id_cap: if req.json { usize::MAX } else { TEXT_ID_CAP },
        repair: req.repair,
        dead_letters: known,
    };
    let outcome = verify(&deps, &job, exported)
        .await
        .map_err(|e| (EXIT_RUNTIME, anyhow::Error::new(e)))?;
    let report = VerifyReport {
        point: point.to_string(),
        started_at: started.to_rfc3339(),
        finished_at: Utc::now().to_rfc3339(),
        rows: outcome.rows,
        seconds: clock.elapsed().as_secs_f64(),
        stream_caught_up: caught_up,
        repair: req.repair,
        indices: outcome.indices,
    };
    if req.sample.is_none() {
        store(&es, &report).await.map_err(runtime_err)?;
    }
    Ok(report)
}

/// The dead letters, as the keys `verify` counts as known drift.
async fn known_drift(cfg: &Config, es: &Elasticsearch) -> anyhow::Result<DeadLetterKeys> {
    let mut keys = DeadLetterKeys::default();
    for d in dead_letters(es, &cfg.pipeline.dead_letter_index, None).await? {
        let s = &d.source;
        if let (Some(i), Some(id)) = (s["index"].as_str(), s["id"].as_str()) {
            keys.docs.insert((i.to_string(), id.to_string()));
        }
        if let (Some(t), Some(k)) = (s["table"].as_str(), s["key"].as_str()) {
            keys.rows.insert((t.to_string(), k.to_string()));
        }
    }
    Ok(keys)
}

/// Wait until `sluice run` confirmed P: then every change committed before
/// P is in Elasticsearch, and an older document that differs from the row
/// at P is drift, not lag. A heartbeat message gives an idle stream a
/// position past P to confirm. Returns false (with a warning) when no
/// `sluice run` holds the slot: what it has yet to apply shows as drift.
async fn wait_for_stream(
    cfg: &Config,
    pg: &tokio_postgres::Client,
    point: Lsn,
    timeout: Duration,
) -> anyhow::Result<bool> {
    // Best effort: without the privilege, the stream's own traffic or
    // PostgreSQL's keepalives move the slot instead.
    let _ = source::heartbeat::emit(pg).await;
    let deadline = Instant::now() + timeout;
    let mut last_beat = Instant::now();
    loop {
        let slot = source::inspect::slot(pg, &cfg.slot)
            .await
            .context("reading the replication slot")?;
        match slot {
            Some(s) if s.confirmed_flush.is_some_and(|c| c >= point) => return Ok(true),
            Some(s) if s.active => {}
            _ => {
                tracing::warn!(slot = %cfg.slot, %point, "sluice run is not streaming: changes it has yet to apply are reported as drift");
                return Ok(false);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "sluice run (slot `{}`) has not applied the changes up to {point} within {}s: \
                 it is behind or stuck; see `sluice status`, then verify again",
                cfg.slot,
                timeout.as_secs()
            );
        }
        if last_beat.elapsed() > Duration::from_secs(5) {
            let _ = source::heartbeat::emit(pg).await;
            last_beat = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Re-reads rows by key on a connection of its own (outside the snapshot).
async fn refetcher(cfg: &Config, pg: &tokio_postgres::Client) -> anyhow::Result<RowRefetcher> {
    let client = Arc::new(
        source::connect_sql(&cfg.postgres)
            .await
            .context("connecting to PostgreSQL")?,
    );
    let catalog = Arc::new(source::TypeCatalog::load(pg).await?);
    Ok(Arc::new(move |rel, keys| {
        let client = client.clone();
        let catalog = catalog.clone();
        Box::pin(async move {
            source::fetch_rows_by_key(
                &client,
                &rel,
                &keys,
                &source::ValueOptions::default(),
                &catalog,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }))
}

/// One state record per index: the last result, for `/metrics`.
async fn store(es: &Elasticsearch, report: &VerifyReport) -> anyhow::Result<()> {
    let state = StateIndex::new(es.clone(), STATE_INDEX);
    state.ensure().await?;
    for r in report.indices.values() {
        let counts: serde_json::Map<String, serde_json::Value> = r
            .counts()
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        state
            .put(
                &record_id(&r.index),
                &json!({
                    "kind": "verify",
                    "index": r.index,
                    "finished_at": report.finished_at,
                    "finished_at_epoch": Utc::now().timestamp(),
                    "point": report.point,
                    "checked": r.checked,
                    "drift": counts,
                    "repaired": r.repaired,
                    "repair": report.repair,
                }),
            )
            .await?;
    }
    Ok(())
}

/// `sluice run`'s side of the verify metrics: `verify` is a separate
/// process, so its last result per index lives in the state index, and the
/// running stream reads it back every `every` into the gauges `/metrics`
/// serves (an alert fires on drift without scraping the verify itself).
/// Every mapped index is registered at 0 (never verified: timestamp 0).
pub async fn run_verify_gauges(
    es: Elasticsearch,
    indices: Vec<String>,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use crate::ops::metrics::names;
    use crate::snapshot::verify::report::DRIFT_KINDS;
    for index in &indices {
        for kind in DRIFT_KINDS {
            metrics::gauge!(names::VERIFY_DRIFT_DOCUMENTS, "index" => index.clone(), "kind" => kind)
                .set(0.0);
        }
        metrics::gauge!(names::VERIFY_LAST_RUN_TIMESTAMP_SECONDS, "index" => index.clone())
            .set(0.0);
    }
    let state = StateIndex::new(es, STATE_INDEX);
    tokio::pin!(stop);
    loop {
        let filter = [crate::sink::state_store::Filter::Is(
            "kind",
            json!("verify"),
        )];
        match state.find(&filter, 10_000).await {
            Ok(records) => {
                for r in records {
                    let s = &r.source;
                    let Some(index) = s["index"].as_str().map(str::to_string) else {
                        continue;
                    };
                    for kind in DRIFT_KINDS {
                        let n = s["drift"][kind].as_f64().unwrap_or(0.0);
                        metrics::gauge!(names::VERIFY_DRIFT_DOCUMENTS, "index" => index.clone(), "kind" => kind)
                            .set(n);
                    }
                    let at = s["finished_at_epoch"].as_f64().unwrap_or(0.0);
                    metrics::gauge!(names::VERIFY_LAST_RUN_TIMESTAMP_SECONDS, "index" => index)
                        .set(at);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the last verify results"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
