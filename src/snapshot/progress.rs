//! Snapshot progress for people and for metrics: a bar per table on a
//! terminal (rows, rows/s, ETA), a log line per table every few seconds
//! otherwise, and `sluice_snapshot_rows_total{table}` /
//! `sluice_snapshot_rows_expected{table}`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ops::metrics::names;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// All tables of one snapshot run.
pub struct Progress {
    multi: Option<MultiProgress>,
    log_every: Duration,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn auto() -> Progress {
        Progress::new(std::io::stderr().is_terminal())
    }

    pub fn new(bars: bool) -> Progress {
        Progress {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            log_every: Duration::from_secs(10),
        }
    }

    /// Track one table; `done` rows were finished by an earlier attempt.
    pub fn table(&self, table: &str, expected: u64, done: u64) -> TableProgress {
        metrics::gauge!(names::SNAPSHOT_ROWS_EXPECTED, "table" => table.to_string())
            .set(expected as f64);
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(expected.max(done)));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24} {wide_bar} {human_pos}/{human_len} rows {per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(table.to_string());
            bar.set_position(done);
            bar
        });
        TableProgress {
            table: table.to_string(),
            expected,
            rows: AtomicU64::new(done),
            started: Instant::now(),
            resumed_at: done,
            bar,
            last_log: Mutex::new(Instant::now()),
            log_every: self.log_every,
        }
    }
}

pub struct TableProgress {
    table: String,
    expected: u64,
    rows: AtomicU64,
    resumed_at: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_log: Mutex<Instant>,
    log_every: Duration,
}

impl TableProgress {
    /// `n` more rows handed to the pipeline.
    pub fn add(&self, n: u64) {
        let total = self.rows.fetch_add(n, Ordering::Relaxed) + n;
        metrics::counter!(names::SNAPSHOT_ROWS_TOTAL, "table" => self.table.clone()).increment(n);
        match &self.bar {
            Some(bar) => {
                if total > bar.length().unwrap_or(0) {
                    bar.set_length(total);
                }
                bar.set_position(total);
            }
            None => {
                let mut last = self.last_log.lock().expect("not poisoned");
                if last.elapsed() >= self.log_every {
                    *last = Instant::now();
                    let rate = self.rate();
                    tracing::info!(
                        table = %self.table,
                        rows = total,
                        expected = self.expected,
                        rows_per_sec = rate as u64,
                        "snapshot progress"
                    );
                }
            }
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        (self.rows() - self.resumed_at) as f64 / secs
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        tracing::info!(
            table = %self.table,
            rows = self.rows(),
            rows_per_sec = self.rate() as u64,
            "snapshot of table finished"
        );
    }
}
