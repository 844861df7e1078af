//! Metrics: the one catalogue of Sluice's Prometheus metrics and the recorder
//! that holds them.
//!
//! Other modules record with the `metrics` crate's macros
//! (`metrics::counter!(names::CHANGES_RECEIVED_TOTAL, "table" => t, "op" => op)`),
//! using the names below, which the team agreed on and the Grafana dashboard
//! and alerts rely on. This module installs a Prometheus recorder (without the
//! exporter's own HTTP listener: `http.rs` renders it on `/metrics`), gives
//! every metric its help text and unit, and sets the latency histogram's
//! buckets. Label values are table names and fixed outcome words only: never
//! anything from a connection string (no secrets in metrics).

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// The agreed metric names. Every recording in `src/` uses these constants,
/// never a string literal (`scripts/check-packaging.sh` fails otherwise), so
/// a typo cannot export a series no dashboard or alert knows.
pub mod names {
    pub const CHANGES_RECEIVED_TOTAL: &str = "sluice_changes_received_total";
    pub const CHANGES_APPLIED_TOTAL: &str = "sluice_changes_applied_total";
    pub const BULK_REQUESTS_TOTAL: &str = "sluice_bulk_requests_total";
    pub const BULK_REQUEST_DURATION_SECONDS: &str = "sluice_bulk_request_duration_seconds";
    pub const BULK_ITEMS_TOTAL: &str = "sluice_bulk_items_total";
    pub const BULK_BYTES_SENT_TOTAL: &str = "sluice_bulk_bytes_sent_total";
    pub const RETRIES_TOTAL: &str = "sluice_retries_total";
    pub const DEAD_LETTERS_TOTAL: &str = "sluice_dead_letters_total";
    pub const DEAD_LETTER_WRITE_FAILURES_TOTAL: &str = "sluice_dead_letter_write_failures_total";
    pub const CONFIRMED_FLUSH_LSN: &str = "sluice_confirmed_flush_lsn";
    pub const REPLICATION_LAG_BYTES: &str = "sluice_replication_lag_bytes";
    pub const REPLICATION_LAG_SECONDS: &str = "sluice_replication_lag_seconds";
    pub const SLOT_RETAINED_WAL_BYTES: &str = "sluice_slot_retained_wal_bytes";
    pub const SNAPSHOT_ROWS_TOTAL: &str = "sluice_snapshot_rows_total";
    pub const SNAPSHOT_ROWS_EXPECTED: &str = "sluice_snapshot_rows_expected";
    pub const VERIFY_DRIFT_DOCUMENTS: &str = "sluice_verify_drift_documents";
    pub const VERIFY_LAST_RUN_TIMESTAMP_SECONDS: &str = "sluice_verify_last_run_timestamp_seconds";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One entry of the catalogue: what `/metrics` says about a metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// Label names the metric carries (empty: none).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Every metric Sluice exposes. `scripts/check-packaging.sh` checks that the
/// dashboard and alerts use only names (and labels) listed here and that the
/// code records only by `names::` constants described here; `tests/it/ops_run.rs` that a real run exports
/// exactly these.
pub const CATALOGUE: &[MetricSpec] = &[
    MetricSpec {
        name: names::CHANGES_RECEIVED_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &["table", "op"],
        help: "Row changes decoded from the WAL, per table and operation (insert, update, delete, truncate). Snapshot rows count in sluice_snapshot_rows_total.",
    },
    MetricSpec {
        name: names::CHANGES_APPLIED_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &["table", "op"],
        help: "Row changes acknowledged by Elasticsearch (written, stale 409 or dead-lettered), per table and operation.",
    },
    MetricSpec {
        name: names::BULK_REQUESTS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &["outcome"],
        help: "Bulk requests sent to Elasticsearch, by outcome (ok: HTTP 2xx, error: transport error or non-2xx).",
    },
    MetricSpec {
        name: names::BULK_REQUEST_DURATION_SECONDS,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        labels: &[],
        help: "Duration of one bulk request, from send to the full response.",
    },
    MetricSpec {
        name: names::BULK_ITEMS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &["outcome"],
        help: "Bulk items by outcome: ok, conflict (409: already applied), retried, dead_lettered.",
    },
    MetricSpec {
        name: names::BULK_BYTES_SENT_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Bytes,
        labels: &[],
        help: "Bytes of bulk request bodies sent to Elasticsearch, for requests it answered with 2xx.",
    },
    MetricSpec {
        name: names::RETRIES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &[],
        help: "Retries of failed requests or items (429, 5xx, connection loss).",
    },
    MetricSpec {
        name: names::DEAD_LETTERS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &["table"],
        help: "Dead letters: documents Elasticsearch rejected for good, and rows a mapping could not transform (bad text for a conversion, a NULL _id column).",
    },
    MetricSpec {
        name: names::DEAD_LETTER_WRITE_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &[],
        help: "Dead letters the dead-letter index refused too: each is kept only in an error log line.",
    },
    MetricSpec {
        name: names::CONFIRMED_FLUSH_LSN,
        kind: Kind::Gauge,
        unit: Unit::Count,
        labels: &[],
        help: "Last LSN confirmed to the replication slot as durable in Elasticsearch (as a 64-bit number).",
    },
    MetricSpec {
        name: names::REPLICATION_LAG_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        labels: &[],
        help: "Server WAL position minus the slot's confirmed flush LSN.",
    },
    MetricSpec {
        name: names::REPLICATION_LAG_SECONDS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        labels: &[],
        help: "Now minus the commit time of the last transaction applied to Elasticsearch (0 when caught up).",
    },
    MetricSpec {
        name: names::SLOT_RETAINED_WAL_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        labels: &[],
        help: "WAL the replication slot keeps on the server's disk (server WAL position minus the slot's restart LSN).",
    },
    MetricSpec {
        name: names::SNAPSHOT_ROWS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels: &["table"],
        help: "Rows read by snapshots, per table.",
    },
    MetricSpec {
        name: names::SNAPSHOT_ROWS_EXPECTED,
        kind: Kind::Gauge,
        unit: Unit::Count,
        labels: &["table"],
        help: "Estimated rows of the table being snapshotted (planner estimate), for progress.",
    },
    MetricSpec {
        name: names::VERIFY_DRIFT_DOCUMENTS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        labels: &["index", "kind"],
        help: "Drift the last `sluice verify` found, per index and kind (missing, extra, stale, dead_lettered); 0 until an index was verified. Read from the state index every 10 s.",
    },
    MetricSpec {
        name: names::VERIFY_LAST_RUN_TIMESTAMP_SECONDS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        labels: &["index"],
        help: "When the last `sluice verify` of the index finished (Unix time; 0: never).",
    },
];

/// Bucket bounds for `sluice_bulk_request_duration_seconds`: a healthy bulk
/// request takes tens to hundreds of milliseconds; the upper buckets show
/// overloaded clusters and requests that end in the client's timeout.
pub const BULK_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Fixed outcome label values, pre-registered at zero so `rate()` works
/// before the first event.
pub const BULK_REQUEST_OUTCOMES: &[&str] = &["ok", "error"];
pub const BULK_ITEM_OUTCOMES: &[&str] = &["ok", "conflict", "retried", "dead_lettered"];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus metrics recorder: {0}")]
    Install(#[from] BuildError),
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process; later calls
/// return the same handle) and describes every metric in [`CATALOGUE`].
///
/// Call it first thing in `main`, before any module records a metric:
/// values recorded before install go nowhere.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::BULK_REQUEST_DURATION_SECONDS.to_string()),
            BULK_DURATION_BUCKETS,
        )?
        .install_recorder()?;
    describe_all();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// The installed recorder's handle, if [`install`] ran.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}

/// Prometheus text exposition of every metric recorded so far.
pub fn render(handle: &PrometheusHandle) -> String {
    // Without the exporter's own listener nobody else runs upkeep, which
    // drains histogram samples into their buckets.
    handle.run_upkeep();
    refresh_lag_gauge();
    handle.render()
}

/// What `sluice_replication_lag_seconds` is computed from: "now minus the
/// commit time of the last applied transaction", evaluated when `/metrics` is
/// scraped, so the value keeps growing while the pipeline is stuck (an
/// outage) instead of freezing at the last apply.
///
/// - `caught_up`: everything received was applied and the stream's position
///   passed it (a keepalive or an empty commit confirmed): the lag is 0.
/// - `reference`: the commit time of the last applied transaction; when a
///   transaction arrives after a caught-up period, its own commit time (all
///   before it was applied), so an idle hour does not read as an hour of lag.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LagClock {
    reference: Option<std::time::SystemTime>,
    caught_up: bool,
}

impl LagClock {
    /// A transaction committed at `commit_time` arrived (its Begin).
    pub fn began(&mut self, commit_time: std::time::SystemTime) {
        if self.caught_up || self.reference.is_none() {
            self.reference = Some(commit_time);
        }
        self.caught_up = false;
    }

    /// Every transaction up to one committed at `commit_time` is applied.
    pub fn applied(&mut self, commit_time: std::time::SystemTime) {
        self.reference = Some(self.reference.map_or(commit_time, |r| r.max(commit_time)));
    }

    /// Nothing received is waiting for Elasticsearch.
    pub fn caught_up(&mut self) {
        self.caught_up = true;
    }

    /// The lag at `now` (clock skew never makes it negative), or `None`
    /// before anything was seen.
    pub fn seconds_at(&self, now: std::time::SystemTime) -> Option<f64> {
        if self.caught_up {
            return Some(0.0);
        }
        let r = self.reference?;
        Some(now.duration_since(r).unwrap_or_default().as_secs_f64())
    }
}

static LAG: std::sync::Mutex<LagClock> = std::sync::Mutex::new(LagClock {
    reference: None,
    caught_up: false,
});

fn with_lag<T>(f: impl FnOnce(&mut LagClock) -> T) -> T {
    f(&mut LAG.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The pipeline saw the Begin of a transaction committed at `commit_time`.
pub fn record_transaction_received(commit_time: std::time::SystemTime) {
    with_lag(|l| l.began(commit_time));
}

/// The pipeline confirmed a transaction committed at `commit_time`.
pub fn record_applied_commit(commit_time: std::time::SystemTime) {
    with_lag(|l| l.applied(commit_time));
}

/// The pipeline has nothing in flight and its position passed everything it
/// received (a keepalive arrived with no open transaction): idle tables read
/// as caught up.
pub fn record_caught_up() {
    with_lag(|l| l.caught_up());
}

fn refresh_lag_gauge() {
    if let Some(s) = with_lag(|l| l.seconds_at(std::time::SystemTime::now())) {
        metrics::gauge!(names::REPLICATION_LAG_SECONDS).set(s);
    }
}

/// Sets `sluice_confirmed_flush_lsn` when the checkpoint confirms `lsn`.
pub fn record_confirmed_flush(lsn: crate::Lsn) {
    metrics::gauge!(names::CONFIRMED_FLUSH_LSN).set(lsn.0 as f64);
}

fn describe_all() {
    for spec in CATALOGUE {
        match spec.kind {
            Kind::Counter => metrics::describe_counter!(spec.name, spec.unit, spec.help),
            Kind::Gauge => metrics::describe_gauge!(spec.name, spec.unit, spec.help),
            Kind::Histogram => metrics::describe_histogram!(spec.name, spec.unit, spec.help),
        }
    }
    // Series with no or fixed labels exist from the start, so dashboards and
    // `rate()` see zero rather than "no data" before the first event.
    metrics::counter!(names::BULK_BYTES_SENT_TOTAL).absolute(0);
    metrics::counter!(names::RETRIES_TOTAL).absolute(0);
    metrics::counter!(names::DEAD_LETTER_WRITE_FAILURES_TOTAL).absolute(0);
    for outcome in BULK_REQUEST_OUTCOMES {
        metrics::counter!(names::BULK_REQUESTS_TOTAL, "outcome" => *outcome).absolute(0);
    }
    for outcome in BULK_ITEM_OUTCOMES {
        metrics::counter!(names::BULK_ITEMS_TOTAL, "outcome" => *outcome).absolute(0);
    }
}

/// Names of every metric, including the series a histogram renders as
/// (`_bucket`, `_sum`, `_count`): what a dashboard may query.
pub fn queryable_names() -> Vec<String> {
    let mut out = Vec::new();
    for spec in CATALOGUE {
        out.push(spec.name.to_string());
        if spec.kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.push(format!("{}{suffix}", spec.name));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_follows_prometheus_conventions() {
        for spec in CATALOGUE {
            assert!(spec.name.starts_with("sluice_"), "{}", spec.name);
            assert!(
                spec.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                spec.name
            );
            if spec.kind == Kind::Counter {
                assert!(spec.name.ends_with("_total"), "counter {}", spec.name);
            } else {
                assert!(!spec.name.ends_with("_total"), "non-counter {}", spec.name);
            }
            match spec.unit {
                Unit::Seconds => assert!(spec.name.contains("_seconds"), "{}", spec.name),
                Unit::Bytes => assert!(spec.name.contains("_bytes"), "{}", spec.name),
                _ => {}
            }
            assert!(!spec.help.is_empty());
        }
    }

    #[test]
    fn the_catalogue_names_each_metric_once() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|s| s.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn histogram_buckets_are_increasing() {
        assert!(BULK_DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    fn at(secs: u64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    #[test]
    fn lag_is_unknown_before_anything_was_seen() {
        assert_eq!(LagClock::default().seconds_at(at(100)), None);
    }

    #[test]
    fn lag_grows_from_the_last_applied_commit_while_work_waits() {
        let mut l = LagClock::default();
        l.began(at(100));
        assert_eq!(l.seconds_at(at(103)), Some(3.0));
        l.applied(at(100));
        l.began(at(101));
        // Stuck (an outage): the value keeps growing between scrapes.
        assert_eq!(l.seconds_at(at(110)), Some(10.0));
        assert_eq!(l.seconds_at(at(170)), Some(70.0));
        l.applied(at(101));
        assert_eq!(l.seconds_at(at(171)), Some(70.0));
    }

    #[test]
    fn caught_up_is_zero_and_an_idle_period_does_not_count_as_lag() {
        let mut l = LagClock::default();
        l.began(at(100));
        l.applied(at(100));
        l.caught_up();
        assert_eq!(l.seconds_at(at(4000)), Some(0.0));
        // An hour later a transaction arrives: it is behind by its own age only.
        l.began(at(3600));
        assert_eq!(l.seconds_at(at(3602)), Some(2.0));
    }

    #[test]
    fn lag_never_goes_negative_or_backwards_on_skew() {
        let mut l = LagClock::default();
        l.began(at(200));
        assert_eq!(l.seconds_at(at(150)), Some(0.0));
        l.applied(at(200));
        l.applied(at(190));
        assert_eq!(l.seconds_at(at(205)), Some(5.0));
    }

    #[test]
    fn a_histogram_is_queryable_by_its_bucket_series() {
        let q = queryable_names();
        assert!(q.contains(&"sluice_bulk_request_duration_seconds_bucket".to_string()));
        assert!(!q.contains(&"sluice_retries_total_bucket".to_string()));
    }
}
