//! `sluice run` end to end: the real binary against the real servers. Every
//! test ends by comparing the whole table with the whole index.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{RngExt, SeedableRng};

use crate::support::compare::{assert_index_matches, table_docs};
use crate::support::slot::{pending_changes, slot_active};
use crate::support::{Es, SqlClient, TestDb};

/// A `sluice run` process with its own config directory.
pub struct Sluice {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

/// Where a [`Sluice`] connects, and extra lines for its `sluice.toml`.
pub struct Setup {
    pub pg_url: String,
    pub slot: String,
    pub es_url: String,
    pub dead_letter_index: String,
    /// Lines added to `[postgres]`.
    pub postgres_extra: String,
    /// Lines added to `[elasticsearch]`.
    pub es_extra: String,
    /// Lines added to `[pipeline]`.
    pub pipeline_extra: String,
    /// Appended at the end (whole sections).
    pub extra: String,
}

impl Setup {
    /// The test database (as the replication role) and the shared Elasticsearch.
    pub fn for_db(db: &TestDb) -> Setup {
        Setup {
            pg_url: db.repl_url(),
            slot: format!("sluice_{}", db.name),
            es_url: crate::support::services().es_url.clone(),
            dead_letter_index: db.index("dead-letters"),
            postgres_extra: String::new(),
            es_extra: String::new(),
            pipeline_extra: String::new(),
            extra: String::new(),
        }
    }
}

impl Sluice {
    /// Write `sluice.toml` (connecting as the replication role) and the given
    /// mapping files into a fresh directory.
    pub fn new(db: &TestDb, extra_config: &str, mappings: &[(&str, String)]) -> Sluice {
        let setup = Setup {
            extra: extra_config.to_string(),
            ..Setup::for_db(db)
        };
        Sluice::with_setup(&setup, mappings)
    }

    /// Like `new`, with the servers and extra settings of `setup`.
    pub fn with_setup(setup: &Setup, mappings: &[(&str, String)]) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mappings")).unwrap();
        for (name, text) in mappings {
            std::fs::write(dir.path().join("mappings").join(name), text).unwrap();
        }
        let config = format!(
            r#"mappings_dir = "mappings"

[postgres]
url = "{url}"
slot = "{slot}"
publication = "sluice"
{postgres_extra}

[elasticsearch]
urls = ["{es}"]
{es_extra}

[pipeline]
dead_letter_index = "{dl}"
linger_ms = 20
{pipeline_extra}

[http]
listen = "127.0.0.1:0"
{extra}"#,
            url = setup.pg_url,
            slot = setup.slot,
            postgres_extra = setup.postgres_extra,
            es = setup.es_url,
            es_extra = setup.es_extra,
            dl = setup.dead_letter_index,
            pipeline_extra = setup.pipeline_extra,
            extra = setup.extra,
        );
        std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
        let log = dir.path().join("sluice.log");
        Sluice {
            dir,
            child: None,
            log,
            starts: 0,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("SLUICE_LOG", "sluice=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        unsafe_sigterm(c.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sluice did not stop within 60 s of SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process exited on its own (with this code), if it did.
    pub fn exited(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        c.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    }

    /// The address `/metrics`, `/health` and `/ready` are served on (the
    /// config asks for port 0), from the start-up log line.
    pub fn http_addr(&self) -> String {
        http_addr_in(&self.log_text()).expect("http started")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The address in the last "serving /metrics" line of a human-format log.
pub(crate) fn http_addr_in(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains("serving /metrics"))?;
    let at = line.find("addr=")? + 5;
    Some(
        line[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// Whether `/ready` at `addr` answers that the pipeline streams (false if
/// nothing listens there).
pub(crate) fn streaming_at(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let mut out = String::new();
    write!(s, "GET /ready HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.contains("\"state\":\"streaming\"")
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

pub(crate) fn mapping(table: &str, index: &str, extra: &str) -> String {
    format!("table = \"{table}\"\nindex = \"{index}\"\n{extra}\n")
}

/// Poll `check` every 100 ms until it is true; fail early if Sluice exits.
pub(crate) async fn poll(
    sluice: &mut Sluice,
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(code) = sluice.exited() {
            panic!(
                "sluice exited with {code} while waiting for {what}:\n{}",
                sluice.log_text()
            );
        }
        if check().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}\nmetrics at the timeout:\n{}",
            sluice.log_text(),
            progress_metrics(sluice)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The counters that tell a stalled source from a stalled sink, for a
/// timeout's message (empty when the process serves no metrics).
fn progress_metrics(sluice: &Sluice) -> String {
    let log = sluice.log_text();
    if !log.contains("serving /metrics") {
        return String::new();
    }
    http_get(&sluice.http_addr(), "/metrics")
        .1
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "sluice_changes_",
                    "sluice_bulk_items_total",
                    "sluice_bulk_requests_total",
                    "sluice_confirmed_flush_lsn",
                    "sluice_replication_lag",
                    "sluice_retries_total",
                ]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait until Sluice streams: `/ready` says so and the slot is held. (The
/// slot alone is not enough: it is active from the start of its creation,
/// and on a busy cluster its consistent point comes only after every running
/// transaction ends; a change committed before it is in neither the stream
/// nor, with snapshot mode `never`, the index.)
pub(crate) async fn wait_streaming(db: &TestDb, sluice: &mut Sluice) {
    let slot = db.slot();
    let log = sluice.log.clone();
    poll(
        sluice,
        Duration::from_secs(60),
        "sluice to stream from its replication slot",
        async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The last start's address (an earlier one may be dead).
            http_addr_in(&text).is_some_and(|a| streaming_at(&a))
                && slot_active(db, &slot).await == Some(true)
        },
    )
    .await;
}

/// Wait until the index equals the table (then assert it once more, whole,
/// with a diff on failure). `db`: a `TestDb`, or a private cluster's client.
pub(crate) async fn wait_converged(
    db: &impl SqlClient,
    es: &Es,
    index: &str,
    query: &str,
    sluice: &mut Sluice,
) {
    // Generous: a loaded 2-core machine has been seen to take over 90 s.
    let timeout = Duration::from_secs(180);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(code) = sluice.exited() {
            panic!(
                "sluice exited with {code} while waiting for the index to match the table:\n{}",
                sluice.log_text()
            );
        }
        if table_docs(db, query, &["id"]).await == es.sources(index).await {
            break;
        }
        if std::time::Instant::now() >= deadline {
            // The assertion below says which documents differ.
            eprintln!(
                "timed out after {timeout:?} waiting for the index to match the table\n{}\nmetrics at the timeout:\n{}",
                sluice.log_text(),
                progress_metrics(sluice)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_index_matches(db, es, index, query, &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_inserts_updates_deletes_and_key_changes_into_the_index() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, active boolean, meta jsonb);
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\n",
        &[("items.toml", mapping("public.items", &index, ""))],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;

    db.sql(
        "INSERT INTO items SELECT g, 'item ' || g, g * 10, g % 2 = 0, jsonb_build_object('g', g) FROM generate_series(1, 500) g;
         UPDATE items SET name = 'renamed', qty = qty + 1 WHERE id % 7 = 0;
         DELETE FROM items WHERE id % 11 = 0;
         UPDATE items SET id = id + 10000 WHERE id BETWEEN 100 AND 120;
         BEGIN; UPDATE items SET qty = 1 WHERE id = 1; UPDATE items SET qty = 2 WHERE id = 1; UPDATE items SET qty = 3 WHERE id = 1; COMMIT;",
    )
    .await;
    wait_converged(&db, &es, &index, "SELECT * FROM items", &mut sluice).await;

    // The operator's view agrees with the work done.
    let addr = sluice.http_addr();
    assert_eq!(http_get(&addr, "/ready").0, 200, "ready while streaming");
    let metrics = http_get(&addr, "/metrics").1;
    let applied = |op: &str| {
        metric_sum(
            &metrics,
            "sluice_changes_applied_total",
            &["table=\"public.items\"", &format!("op=\"{op}\"")],
        )
    };
    assert_eq!(applied("insert"), 500.0, "{metrics}");
    assert_eq!(applied("delete"), 45.0, "{metrics}");
    // 71 renames, 20 key changes (110 of 100..=120 was deleted), 3 in one transaction.
    assert_eq!(applied("update"), (71 + 20 + 3) as f64, "{metrics}");
    assert_eq!(
        sluice.terminate(),
        0,
        "graceful exit\n{}",
        sluice.log_text()
    );
}

/// The sum of a Prometheus metric's series whose labels contain all `labels`.
pub(crate) fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A bare HTTP/1.0 GET: (status, body).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_confirms_the_final_lsn_so_a_restart_replays_nothing() {
    let db = TestDb::new().await;
    let index = db.index("items");
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text);
         CREATE PUBLICATION sluice FOR TABLE items;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\n",
        &[("items.toml", mapping("public.items", &index, ""))],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    db.sql("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 1000) g")
        .await;
    let es = Es::new();
    wait_converged(&db, &es, &index, "SELECT * FROM items", &mut sluice).await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());

    assert_eq!(
        slot_active(&db, &db.slot()).await,
        Some(false),
        "a clean exit ends the stream, so the slot is already free for a successor"
    );
    assert_eq!(
        pending_changes(&db, &db.slot()).await,
        0,
        "the slot still holds changes Sluice already applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_is_never_written_as_null() {
    let db = TestDb::new().await;
    let es = Es::new();
    // Incompressible > 8 kB text: stored out of line (TOAST), so an update of
    // another column sends it as "unchanged" without REPLICA IDENTITY FULL.
    db.sql(
        "CREATE TABLE docs (id bigint PRIMARY KEY, body text, n int);
         CREATE TABLE docs_full (id bigint PRIMARY KEY, body text, n int);
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION sluice FOR TABLE docs, docs_full;",
    )
    .await;
    let (i1, i2) = (db.index("docs"), db.index("docs-full"));
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\n",
        &[
            ("docs.toml", mapping("public.docs", &i1, "")),
            ("docs_full.toml", mapping("public.docs_full", &i2, "")),
        ],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    for t in ["docs", "docs_full"] {
        db.sql(&format!(
            "INSERT INTO {t} SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i), 0
               FROM generate_series(1, 20) g;
             UPDATE {t} SET n = n + 1;
             UPDATE {t} SET n = n + 1 WHERE id <= 10;"
        ))
        .await;
    }
    wait_converged(&db, &es, &i1, "SELECT * FROM docs", &mut sluice).await;
    wait_converged(&db, &es, &i2, "SELECT * FROM docs_full", &mut sluice).await;
    let docs = es.sources(&i1).await;
    assert!(
        docs.values()
            .all(|d| d["body"].as_str().is_some_and(|b| b.len() == 400 * 32))
    );
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
}

/// The product's core promise: SIGKILL at random moments, at least ten times,
/// during a random workload; at the end the index equals the table exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_at_random_moments_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("accounts");
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, 0, 'seed' FROM generate_series(1, 200) g;
         CREATE PUBLICATION sluice FOR TABLE accounts;",
    )
    .await;
    // The seed rows predate the slot; with mode `never` they are not loaded,
    // so touch them all once the slot exists.
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\n",
        &[("accounts.toml", mapping("public.accounts", &index, ""))],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    db.sql("UPDATE accounts SET note = 'touched'").await;

    let seed: u64 = rand::rng().random();
    eprintln!("workload seed {seed}");
    let url = db.url();
    let workload = tokio::spawn(async move {
        let client = crate::support::connect(&url).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut next_id = 1_000i64;
        for _ in 0..600 {
            let sql =
                crate::support::workload::random_transaction(&mut rng, "accounts", &mut next_id);
            client.batch_execute(&sql).await.unwrap();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
        }
    });

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut kills = 0;
    while kills < 10 || !workload.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        sluice.kill9();
        kills += 1;
        sluice.start();
    }
    workload.await.unwrap();
    assert!(kills >= 10);
    wait_converged(&db, &es, &index, "SELECT * FROM accounts", &mut sluice).await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
    eprintln!("{kills} kills, {} starts", sluice.starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_snapshot_loads_existing_rows_exactly_even_when_killed_midway() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("books");
    db.sql(
        "CREATE TABLE books (id bigint PRIMARY KEY, title text, copies int);
         INSERT INTO books SELECT g, 'book ' || g, g % 17 FROM generate_series(1, 60000) g;
         CREATE PUBLICATION sluice FOR TABLE books;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"initial\"\nchunk_rows = 2000\nparallel_readers = 2\n",
        &[("books.toml", mapping("public.books", &index, ""))],
    );
    let url = db.url();
    // Writes racing the snapshot: each must win over the snapshot's rows.
    let workload = tokio::spawn(async move {
        let client = crate::support::connect(&url).await;
        for i in 0..300i64 {
            client
                .batch_execute(&format!(
                    "UPDATE books SET copies = copies + 100 WHERE id = {a};
                     DELETE FROM books WHERE id = {b};
                     INSERT INTO books VALUES ({c}, 'late', 1);",
                    a = 1 + (i * 97) % 60000,
                    b = 1 + (i * 89 + 7) % 60000,
                    c = 100_000 + i
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::rng().random());
    for _ in 0..3 {
        sluice.start();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        sluice.kill9();
    }
    sluice.start();
    workload.await.unwrap();
    wait_converged(&db, &es, &index, "SELECT * FROM books", &mut sluice).await;
    let log = sluice.log_text();
    assert!(
        log.contains("initial snapshot done"),
        "the snapshot never completed:\n{log}"
    );
    eprintln!(
        "resumed after a kill: {}",
        log.contains("resuming its remaining chunks")
    );
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_snapshot_backfills_a_table_mapped_later_while_run_streams() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (ia, ib) = (db.index("a"), db.index("b"));
    db.sql(
        "CREATE TABLE a (id bigint PRIMARY KEY, v text);
         CREATE TABLE b (id bigint PRIMARY KEY, v text);
         INSERT INTO b SELECT g, 'old ' || g FROM generate_series(1, 5000) g;
         CREATE PUBLICATION sluice FOR TABLE a;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\n",
        &[("a.toml", mapping("public.a", &ia, ""))],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    db.sql("INSERT INTO a SELECT g, 'a' FROM generate_series(1, 100) g")
        .await;
    wait_converged(&db, &es, &ia, "SELECT * FROM a", &mut sluice).await;

    // Map table b too: the owner adds it to the publication, Sluice restarts
    // to stream it, and a backfill loads the rows it already had.
    std::fs::write(
        sluice.dir.path().join("mappings/b.toml"),
        mapping("public.b", &ib, ""),
    )
    .unwrap();
    db.sql("ALTER PUBLICATION sluice ADD TABLE b").await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    db.sql("UPDATE b SET v = 'new' WHERE id % 10 = 0; DELETE FROM b WHERE id % 13 = 0; INSERT INTO b VALUES (9999, 'fresh')")
        .await;
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["snapshot", "--table", "public.b", "--config"])
        .arg(sluice.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice snapshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.sql("UPDATE b SET v = 'after' WHERE id % 7 = 0").await;
    wait_converged(&db, &es, &ib, "SELECT * FROM b", &mut sluice).await;
    wait_converged(&db, &es, &ia, "SELECT * FROM a", &mut sluice).await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_snapshotted_and_streamed_under_its_root_name() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("events");
    db.sql(
        "CREATE TABLE events (id bigint, kind text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
         CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (1000);
         CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (MAXVALUE);
         GRANT SELECT ON events_low, events_high TO sluice;
         INSERT INTO events SELECT g, 'old' FROM generate_series(1, 1500) g;
         CREATE PUBLICATION sluice FOR TABLE events WITH (publish_via_partition_root = true);",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "",
        &[("events.toml", mapping("public.events", &index, ""))],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    db.sql(
        "UPDATE events SET kind = 'new' WHERE id % 3 = 0;
         DELETE FROM events WHERE id % 5 = 0;
         UPDATE events SET id = id + 1000 WHERE id BETWEEN 990 AND 995;
         INSERT INTO events VALUES (5000, 'fresh');",
    )
    .await;
    wait_converged(&db, &es, &index, "SELECT * FROM events", &mut sluice).await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
}

/// SIGTERM while the stream is busy: a clean exit that finishes the
/// transaction in progress and confirms exactly what was applied, so the
/// restart neither loses nor re-sends anything. (A re-sent write would not
/// show as a 409: `external_gte` accepts the same version again. So the
/// restart's received changes are counted: exactly the rows missing from the
/// index.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_busy_stream_exits_cleanly_and_the_restart_replays_nothing() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("busy");
    db.sql(
        "CREATE TABLE busy (id bigint PRIMARY KEY, v text);
         CREATE PUBLICATION sluice FOR TABLE busy;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "[snapshot]\nmode = \"never\"\n",
        &[("busy.toml", mapping("public.busy", &index, ""))],
    );
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
    for s in (1..=60_000).step_by(500) {
        db.sql(&format!(
            "INSERT INTO busy SELECT g, repeat('v', 200) FROM generate_series({s}, {}) g",
            s + 499
        ))
        .await;
    }
    // Stop while documents are still arriving.
    poll(
        &mut sluice,
        Duration::from_secs(60),
        "the first documents",
        async || {
            es.refresh(&index).await;
            es.count(&index).await > 0
        },
    )
    .await;
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
    es.refresh(&index).await;
    let before = es.count(&index).await;
    eprintln!("{before} of 60000 documents in the index at SIGTERM");

    sluice.start();
    wait_converged(&db, &es, &index, "SELECT * FROM busy", &mut sluice).await;
    let metrics = http_get(&sluice.http_addr(), "/metrics").1;
    let received = metric_sum(&metrics, "sluice_changes_received_total", &[]) as u64;
    let missing = 60_000 - before;
    eprintln!("after the restart: {received} changes received, {missing} were missing");
    assert_eq!(
        received, missing,
        "the restart received {received} changes for {missing} missing documents"
    );
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
}
