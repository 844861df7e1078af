//! What the status page shows, as plain data: the JSON of `/status.json`
//! and the input of the HTML renderer. Built by the collector
//! (`super::collect`) from the recorder's values, the readiness state and
//! the background status reads; rendered by `super::html`.
//!
//! The configuration is shown through [`ConfigView`], built field by field
//! from the typed configuration: a value is copied only when it is not a
//! secret, so a new secret setting cannot leak by default (it is simply not
//! shown until someone adds it here, redacted).

use serde::Serialize;

use crate::app::status::StatusReport;
use crate::config::Config;
use crate::sink::EsAuth;

/// One history sample of the pipeline (fixed size, `Copy`: the ring's bound
/// is its capacity times this size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: i64,
    pub lag_bytes: u64,
    pub retained_wal_bytes: u64,
    pub lag_seconds: f32,
    pub changes_per_sec: f32,
    pub docs_per_sec: f32,
}

/// One history sample of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TableSample {
    pub changes_per_sec: f32,
    pub docs_per_sec: f32,
}

/// The whole page.
#[derive(Debug, Clone, Serialize)]
pub struct UiStatus {
    /// When this view was made (RFC 3339).
    pub generated_at: String,
    /// `starting`, `snapshotting`, `streaming`, `stalled`, `standby` or
    /// `stopping`.
    pub state: String,
    /// Why the state is `stalled` (or `standby`), in plain words.
    pub state_reason: Option<String>,
    pub confirmed_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub retained_wal_bytes: Option<u64>,
    pub tables: Vec<TableRow>,
    pub dead_letters: DeadLetters,
    pub counters: Counters,
    /// The last hour, oldest first.
    pub history: Vec<Sample>,
    pub history_bound: HistoryBound,
    pub config: ConfigView,
    /// What `sluice status --json` prints, read in the background every
    /// few seconds (`None` until the first read succeeded).
    pub status: Option<StatusReport>,
    pub status_error: Option<String>,
    pub status_read_at: Option<String>,
}

/// How much history is kept, and its memory bound.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HistoryBound {
    pub samples: usize,
    pub sample_every_secs: u64,
    pub sample_bytes: usize,
    pub table_sample_bytes: usize,
}

/// One mapped table and the indices it feeds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableRow {
    /// `schema.table`.
    pub table: String,
    pub indices: Vec<String>,
    pub changes_per_sec: f64,
    pub docs_per_sec: f64,
    /// Changes decoded from the WAL since start.
    pub changes_total: u64,
    /// Changes Elasticsearch acknowledged since start.
    pub docs_total: u64,
    /// When the last change of this table was acknowledged (RFC 3339).
    pub last_change: Option<String>,
    pub snapshot: Option<SnapshotProgress>,
    pub history: Vec<TableSample>,
}

/// A table's snapshot, while one runs or after it ran in this process.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotProgress {
    pub rows_done: u64,
    /// The planner's estimate (at least `rows_done`).
    pub rows_total: u64,
    pub rows_per_sec: f64,
    /// Seconds left at the current rate; `None` when done or not moving.
    pub eta_seconds: Option<u64>,
    pub done: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetters {
    pub index: String,
    /// Records in the dead-letter index (`None`: not read yet or unreadable).
    pub total: Option<u64>,
    /// Records per target index, most first.
    pub per_index: Vec<(String, u64)>,
    /// The newest few, newest first.
    pub latest: Vec<DeadLetterLine>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeadLetterLine {
    pub at: String,
    pub index: String,
    pub table: String,
    pub id: String,
    pub error_type: String,
    pub reason: String,
}

/// Counters since this process started (the `/metrics` values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    pub retries: u64,
    pub bulk_requests_failed: u64,
    pub bulk_items_retried: u64,
    pub bulk_items_conflict: u64,
    pub bulk_items_dead_lettered: u64,
    pub dead_letters_recorded: u64,
    pub dead_letter_write_failures: u64,
}

/// The configuration in effect, secrets replaced by whether they are set.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    pub file: String,
    /// Ordered `section.key = value` lines.
    pub settings: Vec<(String, String)>,
    /// `file: table → index` per mapping.
    pub mappings: Vec<String>,
}

/// What a secret setting shows.
fn secret_state(set: bool) -> String {
    if set { "<redacted>" } else { "(not set)" }.to_string()
}

impl ConfigView {
    pub fn of(cfg: &Config) -> ConfigView {
        let pg = &cfg.postgres;
        let es = &cfg.elasticsearch;
        let p = &cfg.pipeline;
        let path = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or("(not set)".to_string(), |p| p.display().to_string())
        };
        let (auth, username, es_secret) = match &es.auth {
            EsAuth::None => ("none", "(not set)".to_string(), false),
            EsAuth::Basic { username, .. } => ("basic", username.clone(), true),
            EsAuth::ApiKey(_) => ("api_key", "(not set)".to_string(), true),
        };
        let urls: Vec<String> = es
            .urls
            .iter()
            .map(|u| crate::ops::logging::redact_url(u))
            .collect();
        let s = |k: &str, v: String| (k.to_string(), v);
        let settings = vec![
            s("postgres.host", pg.host.clone()),
            s("postgres.port", pg.port.to_string()),
            s("postgres.user", pg.user.clone()),
            s("postgres.password", secret_state(pg.password.is_some())),
            s("postgres.dbname", pg.dbname.clone()),
            s(
                "postgres.sslmode",
                format!("{:?}", pg.sslmode).to_lowercase(),
            ),
            s("postgres.ssl_root_cert", path(&pg.ssl_root_cert)),
            s("postgres.application_name", pg.application_name.clone()),
            s("postgres.slot", cfg.slot.clone()),
            s("postgres.publication", cfg.publication.clone()),
            s(
                "postgres.heartbeat_interval_ms",
                cfg.heartbeat_interval
                    .map_or("(off)".into(), |d| d.as_millis().to_string()),
            ),
            s("elasticsearch.urls", urls.join(", ")),
            s("elasticsearch.auth", auth.to_string()),
            s("elasticsearch.username", username),
            s("elasticsearch.password / api_key", secret_state(es_secret)),
            s("elasticsearch.ca_file", path(&es.ca_file)),
            s(
                "elasticsearch.insecure_skip_verify",
                es.insecure_skip_verify.to_string(),
            ),
            s(
                "elasticsearch.request_timeout_ms",
                es.request_timeout.as_millis().to_string(),
            ),
            s("pipeline.batch_max_docs", p.batch_max_docs.to_string()),
            s("pipeline.batch_max_bytes", p.batch_max_bytes.to_string()),
            s("pipeline.linger_ms", p.linger.as_millis().to_string()),
            s("pipeline.concurrency", p.concurrency.to_string()),
            s(
                "pipeline.memory_bound_bytes",
                p.memory_bound_bytes.to_string(),
            ),
            s("pipeline.dead_letter_index", p.dead_letter_index.clone()),
            s(
                "pipeline.gc_deletes_secs",
                p.gc_deletes.as_secs().to_string(),
            ),
            s("snapshot.mode", format!("{:?}", cfg.snapshot.mode)),
            s(
                "snapshot.parallel_readers",
                cfg.snapshot.parallel_readers.to_string(),
            ),
            s("snapshot.chunk_rows", cfg.snapshot.chunk_rows.to_string()),
            s("http.listen", cfg.http.listen.to_string()),
            s("http.ui_token", secret_state(cfg.http.ui_token.is_some())),
            s("mappings_dir", cfg.mappings_dir.display().to_string()),
        ];
        let mappings = cfg
            .mappings
            .list
            .iter()
            .map(|m| format!("{}: {} → {}", m.name, m.qualified_table, m.index_pattern()))
            .collect();
        ConfigView {
            file: cfg.file.display().to_string(),
            settings,
            mappings,
        }
    }
}
