//! The status page of `sluice run`: `/ui` (HTML with inline SVG charts and
//! a small refreshing script) and `/status.json` (the same data; its
//! `status` member is what `sluice status --json` prints).
//!
//! Owns gathering and rendering; `ops::status_page` serves the result.
//! Two background tasks, never a read per request:
//! - every [`STATUS_EVERY`] the status reader runs `sluice status`'s
//!   `gather` on one kept PostgreSQL session and reads a summary of the
//!   dead letters from Elasticsearch;
//! - every [`TICK`] the sampler reads the metrics recorder (the numbers of
//!   `/metrics`), updates rates and the bounded history (`ring`), renders
//!   the page and the JSON, and publishes both bytes on the board.
//!
//! A request then only copies published bytes (p99 well under a
//! millisecond; BENCHMARKS.md). Nothing shown is a secret: the
//! configuration goes through `view::ConfigView`, which copies only named,
//! non-secret settings, and the status report holds no password.

pub mod html;
pub mod live;
pub mod ring;
pub mod view;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::app::status::{self, SlotStatus, StatusReport, Targets};
use crate::config::Config;
use crate::model::Lsn;
use crate::ops::http::{Health, ReadyState, StatusPage};
use crate::sink::Elasticsearch;
use crate::source::PgConnectConfig;

use live::Tracker;
use view::{DeadLetterLine, DeadLetters, HistoryBound, UiStatus};

/// How often the page is re-rendered from the recorder.
pub const TICK: Duration = Duration::from_secs(1);
/// How often PostgreSQL and Elasticsearch are read for the status report.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How many of the newest dead letters the page lists.
pub const LATEST_DEAD_LETTERS: usize = 5;
/// A status read that takes longer is abandoned until the next one.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the status reader last found.
#[derive(Debug, Default, Clone)]
struct Slow {
    status: Option<StatusReport>,
    status_error: Option<String>,
    read_at: Option<String>,
    dead_letters: DeadLetters,
}

/// Everything the page's tasks need, taken from the configuration.
pub struct UiSetup {
    pub pg: PgConnectConfig,
    pub es: Elasticsearch,
    pub targets: Targets,
    pub tables: Vec<(String, Vec<String>)>,
    pub config: view::ConfigView,
    pub page: StatusPage,
    pub ready: ReadyState,
    pub health: Health,
    pub metrics: PrometheusHandle,
}

impl UiSetup {
    /// The page's setup for `cfg`; `es` may be a client nobody connected yet.
    pub fn new(
        cfg: &Config,
        es: Elasticsearch,
        page: StatusPage,
        ready: ReadyState,
        health: Health,
        metrics: PrometheusHandle,
    ) -> UiSetup {
        let mut tables: Vec<(String, Vec<String>)> = Vec::new();
        for m in &cfg.mappings.list {
            let name = m.qualified_table.to_string();
            let index = m.index_pattern();
            match tables.iter_mut().find(|(t, _)| *t == name) {
                Some((_, idx)) if !idx.contains(&index) => idx.push(index),
                Some(_) => {}
                None => tables.push((name, vec![index])),
            }
        }
        UiSetup {
            pg: cfg.postgres.clone(),
            es,
            targets: Targets::of(cfg),
            tables,
            config: view::ConfigView::of(cfg),
            page,
            ready,
            health,
            metrics,
        }
    }
}

/// Runs the page's two tasks until `shutdown` resolves.
pub async fn run(setup: UiSetup, shutdown: impl std::future::Future<Output = ()>) {
    let slow = Arc::new(Mutex::new(Slow {
        dead_letters: DeadLetters {
            index: setup.targets.dead_letter_index.clone(),
            ..DeadLetters::default()
        },
        ..Slow::default()
    }));
    let reader = read_status(
        setup.pg.clone(),
        setup.es.clone(),
        setup.targets.clone(),
        slow.clone(),
    );
    let sampler = sample(setup, slow);
    tokio::select! {
        _ = shutdown => {}
        _ = reader => {}
        _ = sampler => {}
    }
}

/// Every [`STATUS_EVERY`]: the status report and the dead letters.
async fn read_status(
    pg: PgConnectConfig,
    es: Elasticsearch,
    targets: Targets,
    slow: Arc<Mutex<Slow>>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client =
                tokio::time::timeout(READ_TIMEOUT, status::connect_pg(&pg, "sluice-status-page"))
                    .await
                    .ok()
                    .and_then(Result::ok);
        }
        let report = match &client {
            None => Err(format!("cannot connect to PostgreSQL at {pg}")),
            Some(c) => {
                match tokio::time::timeout(READ_TIMEOUT, status::gather_with(c, &pg, &es, &targets))
                    .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("reading the status timed out".to_string()),
                }
            }
        };
        let dead = read_dead_letters(&es, &targets.dead_letter_index).await;
        let mut s = slow.lock().unwrap_or_else(|p| p.into_inner());
        match report {
            Ok(r) => {
                s.status = Some(r);
                s.status_error = None;
                s.read_at = Some(live::rfc3339(now_secs()));
            }
            Err(e) => s.status_error = Some(e),
        }
        s.dead_letters = dead;
    }
}

async fn read_dead_letters(es: &Elasticsearch, index: &str) -> DeadLetters {
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        crate::sink::doc_reads::dead_letter_summary(es, index, LATEST_DEAD_LETTERS),
    )
    .await;
    let mut out = DeadLetters {
        index: index.to_string(),
        ..DeadLetters::default()
    };
    match read {
        Ok(Ok(None)) => out.total = Some(0),
        Ok(Ok(Some(s))) => {
            out.total = Some(s.total);
            out.per_index = s.per_index;
            out.latest = s
                .latest
                .iter()
                .map(|d| dead_letter_line(&d.source))
                .collect();
        }
        Ok(Err(e)) => out.error = Some(e.describe()),
        Err(_) => out.error = Some("reading the dead letters timed out".into()),
    }
    out
}

/// One dead-letter record as a line of the page (the document itself is
/// left out: it is the user's data, and can be large).
pub fn dead_letter_line(s: &serde_json::Value) -> DeadLetterLine {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    DeadLetterLine {
        at: text(&s["@timestamp"]),
        index: text(&s["index"]),
        table: text(&s["table"]),
        id: text(&s["id"]),
        error_type: s["error"]["type"]
            .as_str()
            .or(s["stage"].as_str())
            .unwrap_or("-")
            .to_string(),
        reason: text(&s["error"]["reason"]),
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Every [`TICK`]: observe, render, publish.
async fn sample(setup: UiSetup, slow: Arc<Mutex<Slow>>) {
    let mut tracker = Tracker::new(setup.tables.clone());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let values = crate::ops::metric_values::current(&setup.metrics);
        let slow = slow.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let u = compose(&setup, &mut tracker, now_secs(), &values, slow);
        let json = serde_json::to_vec(&u).unwrap_or_default();
        setup.page.publish(html::page(&u), json);
    }
}

/// One view of the page from the recorder's `values` and the last reads.
fn compose(
    setup: &UiSetup,
    tracker: &mut Tracker,
    now: f64,
    values: &[crate::ops::metric_values::MetricValue],
    slow: Slow,
) -> UiStatus {
    let o = live::observe(values);
    let mut l = tracker.tick(now, &o);
    live::finish_snapshots(&mut l.tables, setup.ready.get());
    let slot = match slow.status.as_ref().map(|s| &s.slot) {
        Some(SlotStatus::Present(s)) => Some(s.as_ref().clone()),
        _ => None,
    };
    let standby = slow.status.as_ref().is_some_and(|s| s.in_recovery);
    let (state, state_reason) = live::pipeline_state(
        setup.ready.get(),
        setup.ready.holds().reason(),
        &setup.health.report(),
        standby,
        o.lag_seconds,
        l.confirmed_still_for,
    );
    let confirmed = o
        .confirmed_lsn
        .map(Lsn)
        .or(slot.as_ref().and_then(|s| s.confirmed_flush_lsn));
    UiStatus {
        generated_at: live::rfc3339(now),
        state,
        state_reason,
        confirmed_lsn: confirmed.map(|l| l.to_string()),
        lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes).or(o.lag_bytes),
        lag_seconds: o.lag_seconds,
        retained_wal_bytes: slot
            .as_ref()
            .and_then(|s| s.retained_wal_bytes)
            .or(o.retained_wal_bytes),
        tables: l.tables,
        dead_letters: slow.dead_letters,
        counters: o.counters,
        history: tracker.history(),
        history_bound: HistoryBound {
            samples: ring::HISTORY_SAMPLES,
            sample_every_secs: ring::HISTORY_EVERY.as_secs(),
            sample_bytes: std::mem::size_of::<view::Sample>(),
            table_sample_bytes: std::mem::size_of::<view::TableSample>(),
        },
        config: setup.config.clone(),
        status: slow.status,
        status_error: slow.status_error,
        status_read_at: slow.read_at,
    }
}

#[cfg(test)]
mod tests;
