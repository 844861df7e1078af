//! The live part of the page, from the recorder's values: rates per table,
//! snapshot progress, counters, the history rings, and the pipeline's state
//! word. Pure: fed the values and the clock, so it is tested as a function.

use std::collections::{BTreeMap, VecDeque};

use crate::ops::http::{HealthReport, PipelineState};
use crate::ops::metric_values::MetricValue;
use crate::ops::metrics::names;

use super::ring::{HISTORY_EVERY, HISTORY_SAMPLES, Ring};
use super::view::{Counters, Sample, SnapshotProgress, TableRow, TableSample};

/// Rates are measured over this many seconds of observations.
const RATE_WINDOW_SECS: f64 = 10.0;
/// Lag this old with no confirmed progress for as long reads as stalled.
pub const STALL_SECS: f64 = 60.0;

/// Per-table totals at one observation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    changes: u64,
    docs: u64,
    snapshot_rows: u64,
}

/// Gauges and counters of one observation.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    tables: BTreeMap<String, Totals>,
    expected: BTreeMap<String, u64>,
    pub counters: Counters,
    pub confirmed_lsn: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub lag_bytes: Option<u64>,
    pub retained_wal_bytes: Option<u64>,
}

/// Fold the recorder's series into one observation.
pub fn observe(values: &[MetricValue]) -> Observation {
    let mut o = Observation::default();
    for v in values {
        let n = v.value.max(0.0) as u64;
        let table = || v.label("table").unwrap_or("?").to_string();
        let outcome = v.label("outcome").unwrap_or("");
        let c = &mut o.counters;
        match v.name.as_str() {
            names::CHANGES_RECEIVED_TOTAL => o.tables.entry(table()).or_default().changes += n,
            names::CHANGES_APPLIED_TOTAL => o.tables.entry(table()).or_default().docs += n,
            names::SNAPSHOT_ROWS_TOTAL => o.tables.entry(table()).or_default().snapshot_rows += n,
            names::SNAPSHOT_ROWS_EXPECTED => {
                o.expected.insert(table(), n);
            }
            names::RETRIES_TOTAL => c.retries += n,
            names::BULK_REQUESTS_TOTAL if outcome == "error" => c.bulk_requests_failed += n,
            names::BULK_ITEMS_TOTAL => match outcome {
                "retried" => c.bulk_items_retried += n,
                "conflict" => c.bulk_items_conflict += n,
                "dead_lettered" => c.bulk_items_dead_lettered += n,
                _ => {}
            },
            names::DEAD_LETTERS_TOTAL => c.dead_letters_recorded += n,
            names::DEAD_LETTER_WRITE_FAILURES_TOTAL => c.dead_letter_write_failures += n,
            names::CONFIRMED_FLUSH_LSN if n > 0 => o.confirmed_lsn = Some(n),
            names::REPLICATION_LAG_SECONDS => o.lag_seconds = Some(v.value.max(0.0)),
            names::REPLICATION_LAG_BYTES => o.lag_bytes = Some(n),
            names::SLOT_RETAINED_WAL_BYTES => o.retained_wal_bytes = Some(n),
            _ => {}
        }
    }
    o
}

/// What the tracker keeps between observations: a short window for rates,
/// the hour of history, and when things last moved. Bounded: the window
/// holds at most `RATE_WINDOW_SECS` plus one observations, each ring
/// `HISTORY_SAMPLES`, and there is one entry per mapped table.
#[derive(Debug)]
pub struct Tracker {
    /// `schema.table` → the indices it feeds, from the mappings.
    tables: Vec<(String, Vec<String>)>,
    window: VecDeque<(f64, BTreeMap<String, Totals>)>,
    history: Ring<Sample>,
    table_history: BTreeMap<String, Ring<TableSample>>,
    last_change: BTreeMap<String, f64>,
    last_history_at: Option<f64>,
    /// The confirmed LSN and since when it has not moved.
    confirmed_since: Option<(u64, f64)>,
}

/// Rates and progress of one tick.
#[derive(Debug, Clone)]
pub struct Live {
    pub tables: Vec<TableRow>,
    /// Seconds the confirmed LSN has not moved.
    pub confirmed_still_for: f64,
}

impl Tracker {
    pub fn new(tables: Vec<(String, Vec<String>)>) -> Tracker {
        let table_history = tables
            .iter()
            .map(|(t, _)| (t.clone(), Ring::new(HISTORY_SAMPLES)))
            .collect();
        Tracker {
            tables,
            window: VecDeque::new(),
            history: Ring::new(HISTORY_SAMPLES),
            table_history,
            last_change: BTreeMap::new(),
            last_history_at: None,
            confirmed_since: None,
        }
    }

    pub fn history(&self) -> Vec<Sample> {
        self.history.iter().copied().collect()
    }

    /// Take an observation made at `now` (Unix seconds).
    pub fn tick(&mut self, now: f64, o: &Observation) -> Live {
        self.note_changes(now, o);
        self.window.push_back((now, o.tables.clone()));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now - t > RATE_WINDOW_SECS)
        {
            self.window.pop_front();
        }
        let tables: Vec<TableRow> = (self.tables.clone().iter())
            .map(|(t, idx)| self.row(t, idx, o))
            .collect();
        if self
            .last_history_at
            .is_none_or(|at| now - at >= HISTORY_EVERY.as_secs_f64())
        {
            self.last_history_at = Some(now);
            self.sample(now, o, &tables);
        }
        let confirmed = o.confirmed_lsn.unwrap_or(0);
        let since = match self.confirmed_since {
            Some((lsn, since)) if lsn == confirmed => since,
            _ => now,
        };
        self.confirmed_since = Some((confirmed, since));
        let mut tables = tables;
        for row in &mut tables {
            if let Some(r) = self.table_history.get(&row.table) {
                row.history = r.iter().copied().collect();
            }
        }
        Live {
            tables,
            confirmed_still_for: now - since,
        }
    }

    fn note_changes(&mut self, now: f64, o: &Observation) {
        let Some((_, before)) = self.window.back() else {
            return;
        };
        for (t, tot) in &o.tables {
            if before.get(t).is_none_or(|b| b.docs < tot.docs) {
                self.last_change.insert(t.clone(), now);
            }
        }
    }

    /// Per-second rate of `field` for `table` over the window.
    fn rate(&self, table: &str, field: fn(&Totals) -> u64) -> f64 {
        let (Some((t0, first)), Some((t1, last))) = (self.window.front(), self.window.back())
        else {
            return 0.0;
        };
        if t1 - t0 <= 0.0 {
            return 0.0;
        }
        let get = |m: &BTreeMap<String, Totals>| m.get(table).map_or(0, field);
        get(last).saturating_sub(get(first)) as f64 / (t1 - t0)
    }

    fn row(&self, table: &str, indices: &[String], o: &Observation) -> TableRow {
        let tot = o.tables.get(table).copied().unwrap_or_default();
        let snapshot = o.expected.get(table).map(|&expected| {
            let rate = self.rate(table, |t| t.snapshot_rows);
            progress(tot.snapshot_rows, expected, rate)
        });
        TableRow {
            table: table.to_string(),
            indices: indices.to_vec(),
            changes_per_sec: self.rate(table, |t| t.changes),
            docs_per_sec: self.rate(table, |t| t.docs),
            changes_total: tot.changes,
            docs_total: tot.docs,
            last_change: self.last_change.get(table).map(|&t| rfc3339(t)),
            snapshot,
            history: Vec::new(),
        }
    }

    fn sample(&mut self, now: f64, o: &Observation, tables: &[TableRow]) {
        for row in tables {
            if let Some(r) = self.table_history.get_mut(&row.table) {
                r.push(TableSample {
                    changes_per_sec: row.changes_per_sec as f32,
                    docs_per_sec: row.docs_per_sec as f32,
                });
            }
        }
        self.history.push(Sample {
            t: now as i64,
            lag_bytes: o.lag_bytes.unwrap_or(0),
            retained_wal_bytes: o.retained_wal_bytes.unwrap_or(0),
            lag_seconds: o.lag_seconds.unwrap_or(0.0) as f32,
            changes_per_sec: tables.iter().map(|t| t.changes_per_sec).sum::<f64>() as f32,
            docs_per_sec: tables.iter().map(|t| t.docs_per_sec).sum::<f64>() as f32,
        });
    }
}

/// A snapshot's progress: done when every expected row was read (the
/// expectation is the planner's estimate, so `done` can pass it).
pub fn progress(done: u64, expected: u64, rows_per_sec: f64) -> SnapshotProgress {
    let total = expected.max(done);
    let finished = expected > 0 && done >= expected;
    let left = total - done;
    SnapshotProgress {
        rows_done: done,
        rows_total: total,
        rows_per_sec,
        eta_seconds: (!finished && left > 0 && rows_per_sec > 0.0)
            .then(|| (left as f64 / rows_per_sec).ceil() as u64),
        done: finished,
    }
}

/// The snapshots this process runs are its initial load (or the resume of
/// one), which ends before streaming starts: once the pipeline is past
/// snapshotting every table's snapshot is done, whatever the planner's
/// estimate said (0 for a table never analyzed).
pub fn finish_snapshots(tables: &mut [TableRow], ready: PipelineState) {
    if matches!(ready, PipelineState::Starting | PipelineState::Snapshotting) {
        return;
    }
    for p in tables.iter_mut().filter_map(|t| t.snapshot.as_mut()) {
        p.done = true;
        p.eta_seconds = None;
        p.rows_total = p.rows_done;
    }
}

/// Unix seconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(t: f64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What the pipeline is doing, in one word, and why when it is stuck.
pub fn pipeline_state(
    ready: PipelineState,
    held: Option<String>,
    health: &HealthReport,
    standby: bool,
    lag_seconds: Option<f64>,
    confirmed_still_for: f64,
) -> (String, Option<String>) {
    let word = |w: &str, why: Option<String>| (w.to_string(), why);
    if ready == PipelineState::Stopping {
        return word("stopping", None);
    }
    if ready == PipelineState::Standby {
        return word(
            "standby",
            Some("another `sluice run` holds the replication slot: this one takes over when it stops".into()),
        );
    }
    if standby {
        return word(
            "standby",
            Some(
                "PostgreSQL is a standby (in recovery): nothing to stream until it is promoted"
                    .into(),
            ),
        );
    }
    if let Some(reason) = held {
        return word("stalled", Some(format!("writes are held: {reason}")));
    }
    if !health.is_healthy() {
        let mut why: Vec<String> = health
            .stalled
            .iter()
            .map(|t| format!("{t}: no heartbeat"))
            .collect();
        why.extend(health.dead.iter().cloned());
        if !health.alive {
            why.push("a fatal error was reported".into());
        }
        return word("stalled", Some(why.join("; ")));
    }
    if ready == PipelineState::Streaming
        && lag_seconds.is_some_and(|l| l >= STALL_SECS)
        && confirmed_still_for >= STALL_SECS
    {
        return word(
            "stalled",
            Some(format!(
                "no progress confirmed for {confirmed_still_for:.0} s while the lag is {:.0} s",
                lag_seconds.unwrap_or(0.0)
            )),
        );
    }
    word(ready.as_str(), None)
}
