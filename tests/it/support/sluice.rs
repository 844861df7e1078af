//! A real `sluice` process for end-to-end tests: its config directory
//! (`sluice.toml` and the mapping files), start / SIGKILL / SIGTERM, the
//! operator endpoints it serves, one-shot subcommands on the same config,
//! and waits that fail early, with the log, when the process dies.
//!
//! Every wait here polls with a deadline; none is a bare sleep.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::compare::{assert_index_matches, table_docs};
use super::es::{Es, Indices};
use super::private_pg::PrivatePg;
use super::slot::slot_active;
use super::{SqlClient, TestDb, services};

/// `[snapshot] mode = "never"`: stream only, no initial load.
pub const SNAPSHOT_NEVER: &str = "[snapshot]\nmode = \"never\"\n";

/// What goes into a test's `sluice.toml`: where Sluice connects, and extra
/// lines per section.
#[derive(Debug, Clone)]
pub struct SluiceToml {
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

impl SluiceToml {
    /// `pg_url` and `slot`, the shared Elasticsearch, nothing extra.
    pub fn new(pg_url: String, slot: String, dead_letter_index: String) -> SluiceToml {
        SluiceToml {
            pg_url,
            slot,
            es_url: services().es_url.clone(),
            dead_letter_index,
            postgres_extra: String::new(),
            es_extra: String::new(),
            pipeline_extra: String::new(),
            extra: String::new(),
        }
    }

    /// The test database as the replication role (which may not create the
    /// publication), and the shared Elasticsearch.
    pub fn for_db(db: &TestDb) -> SluiceToml {
        SluiceToml::new(db.repl_url(), db.slot(), db.index("dead-letters"))
    }

    /// The test database as the tables' owner, so Sluice creates the
    /// publication from the mappings (column lists, row filters).
    pub fn as_owner(db: &TestDb) -> SluiceToml {
        SluiceToml {
            pg_url: db.url(),
            ..SluiceToml::for_db(db)
        }
    }

    /// A private cluster's `postgres` database as its superuser (slot
    /// `sluice`), indices under `indices`, no initial snapshot.
    pub fn for_private(pg: &PrivatePg, indices: &Indices) -> SluiceToml {
        SluiceToml {
            extra: SNAPSHOT_NEVER.into(),
            ..SluiceToml::new(pg.url(), "sluice".into(), indices.name("dead-letters"))
        }
    }

    fn render(&self) -> String {
        format!(
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
            url = self.pg_url,
            slot = self.slot,
            postgres_extra = self.postgres_extra,
            es = self.es_url,
            es_extra = self.es_extra,
            dl = self.dead_letter_index,
            pipeline_extra = self.pipeline_extra,
            extra = self.extra,
        )
    }
}

/// A mapping file's text: `table` into `index`, then `extra` lines.
pub fn mapping(table: &str, index: &str, extra: &str) -> String {
    format!("table = \"{table}\"\nindex = \"{index}\"\n{extra}\n")
}

/// The mapping file `<table>.toml`: `public.<table>` into `index`, as is.
pub fn table_mapping(table: &str, index: &str) -> (String, String) {
    (
        format!("{table}.toml"),
        mapping(&format!("public.{table}"), index, ""),
    )
}

/// The shipped `mappings/` directory (every file, as shipped), with index
/// names and aliases given `prefix`, so a test's indices are its own.
pub fn shipped_mappings(prefix: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("index = \"", &format!("index = \"{prefix}"))
            .replace("alias = \"", &format!("alias = \"{prefix}"));
        out.push((name, text));
    }
    out
}

/// What a one-shot `sluice <subcommand>` printed and how it exited.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// stdout then stderr, for assertions that do not care which.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run the binary to completion with `args` and extra environment.
pub fn sluice_command(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run sluice");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `sluice run` process with its own config directory.
pub struct Sluice {
    pub dir: tempfile::TempDir,
    /// The replication slot its config names.
    pub slot: String,
    /// How many times it was started.
    pub starts: u32,
    child: Option<Child>,
    log: PathBuf,
}

impl Sluice {
    /// Config for `db` (as the replication role) with `extra_config`
    /// appended, and the given mapping files.
    pub fn new<N: AsRef<str>>(db: &TestDb, extra_config: &str, mappings: &[(N, String)]) -> Sluice {
        let config = SluiceToml {
            extra: extra_config.to_string(),
            ..SluiceToml::for_db(db)
        };
        Sluice::with_config(&config, mappings)
    }

    /// Write `config` and the mapping files into a fresh directory.
    pub fn with_config<N: AsRef<str>>(config: &SluiceToml, mappings: &[(N, String)]) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mappings")).unwrap();
        for (name, text) in mappings {
            std::fs::write(dir.path().join("mappings").join(name.as_ref()), text).unwrap();
        }
        std::fs::write(dir.path().join("sluice.toml"), config.render()).unwrap();
        let log = dir.path().join("sluice.log");
        Sluice {
            dir,
            slot: config.slot.clone(),
            starts: 0,
            child: None,
            log,
        }
    }

    /// A file in the config directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.file("sluice.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replace (or add) a mapping file; a running process sees it only
    /// after a restart.
    pub fn write_mapping(&self, name: &str, text: &str) {
        std::fs::write(self.file("mappings").join(name), text).unwrap();
    }

    /// `sluice <args> --config <this config>` run to completion.
    pub fn command(&self, args: &[&str]) -> Ran {
        self.command_with_env(args, &[])
    }

    pub fn command_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let config = self.config_path();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        sluice_command(&all, env)
    }

    /// Start `sluice run` (debug log appended to the log file).
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

    /// Start, and wait until it streams from its slot in `db`.
    pub async fn start_streaming(&mut self, db: &impl SqlClient) {
        self.start();
        self.wait_streaming(db).await;
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
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
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not stop within 60 s of SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and assert a clean exit (code 0).
    pub fn stop_cleanly(&mut self) {
        let code = self.terminate();
        assert_eq!(code, 0, "not a clean exit:\n{}", self.log_text());
    }

    /// The process exited on its own (with this code), if it did.
    pub fn exited(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        c.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    }

    /// Wait for the process to exit on its own; its exit code (and it may
    /// be started again).
    pub async fn wait_for_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(code) = self.exited() {
                self.child = None;
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "sluice kept running for {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The address `/metrics`, `/health` and `/ready` are served on (the
    /// config asks for port 0), from the start-up log line.
    pub fn http_addr(&self) -> String {
        http_addr_in(&self.log_text()).expect("http started")
    }

    /// GET `path` from its HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_addr(), path)
    }

    /// A `/metrics` scrape.
    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// A metric's value summed over its series (also one without labels).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Poll `check` every 100 ms until it is true; fail early if Sluice
    /// exits, and at `timeout` with the log and the progress counters.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited() {
                panic!(
                    "sluice exited with {code} while waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            if check().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}\nmetrics at the timeout:\n{}",
                self.log_text(),
                self.progress_metrics()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The counters that tell a stalled source from a stalled sink, for a
    /// timeout's message (empty when the process serves no metrics).
    fn progress_metrics(&self) -> String {
        if !self.log_text().contains("serving /metrics") {
            return String::new();
        }
        self.metrics()
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

    /// Wait until Sluice streams: `/ready` says so and its slot in `db` is
    /// held. (The slot alone is not enough: it is active from the start of
    /// its creation, and on a busy cluster its consistent point comes only
    /// after every running transaction ends; a change committed before it
    /// is in neither the stream nor, with snapshot mode `never`, the index.)
    pub async fn wait_streaming(&mut self, db: &impl SqlClient) {
        let (slot, log) = (self.slot.clone(), self.log.clone());
        let client = db.sql_client();
        self.wait_for(
            Duration::from_secs(60),
            "sluice to stream from its replication slot",
            async || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                // The last start's address (an earlier one may be dead).
                http_addr_in(&text).is_some_and(|a| streaming_at(&a))
                    && slot_active(client, &slot).await == Some(true)
            },
        )
        .await;
    }

    /// Wait until `index` equals the rows of `query` (keyed by their `id`),
    /// then assert it once more, whole, with a diff on failure.
    pub async fn wait_converged(&mut self, db: &impl SqlClient, es: &Es, index: &str, query: &str) {
        let client: &Client = db.sql_client();
        // Generous: a loaded 2-core machine has been seen to take over 90 s.
        let timeout = Duration::from_secs(180);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited() {
                panic!(
                    "sluice exited with {code} while waiting for the index to match the table:\n{}",
                    self.log_text()
                );
            }
            if table_docs(client, query, &["id"]).await == es.sources(index).await {
                break;
            }
            if Instant::now() >= deadline {
                // The assertion below says which documents differ.
                eprintln!(
                    "timed out after {timeout:?} waiting for the index to match the table\n{}\nmetrics at the timeout:\n{}",
                    self.log_text(),
                    self.progress_metrics()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_index_matches(client, es, index, query, &["id"]).await;
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The address in the last "serving /metrics" line of a human-format log.
pub fn http_addr_in(log: &str) -> Option<String> {
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
pub fn streaming_at(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let mut out = String::new();
    write!(s, "GET /ready HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.contains("\"state\":\"streaming\"")
}

/// A bare HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_auth(addr, path, None)
}

/// A bare HTTP/1.0 GET with an optional `Authorization` value: (status, body).
pub fn http_get_auth(addr: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    try_http_get(addr, path, auth).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get_auth`] that reports failure (nothing listening yet, a
/// process restarting) instead of panicking; gives up after 10 s of silence.
pub fn try_http_get(addr: &str, path: &str, auth: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The sum of a Prometheus metric's series whose labels contain all `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
