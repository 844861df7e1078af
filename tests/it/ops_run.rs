//! The operator surface of a real `sluice run` process: what `/metrics`
//! says after known work, when `/ready` flips, and that no secret shows in
//! the output of runs (and failed runs) configured with known secrets —
//! while those secrets really are sent (a recording proxy in front of the
//! shared Elasticsearch sees the `Authorization` headers).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::slot::{confirmed_flush, create_slot, hold_slot, slot_pid};
use crate::support::sluice::{
    SNAPSHOT_NEVER, Sluice, SluiceToml, http_get, mapping, metric_sum, sluice_command,
    table_mapping,
};
use crate::support::{Es, TestDb, services, wait_until};

/// The value of the unlabelled series `name`.
fn plain(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Metric names of every sample in a scrape, histogram series folded into
/// their metric.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    sluice::ops::metrics::CATALOGUE
                        .iter()
                        .any(|c| c.name == base)
                        .then(|| base.to_string())
                })
                .unwrap_or_else(|| name.to_string())
        })
        .collect()
}

/// One `sluice run` with an initial snapshot, a stream of inserts, updates
/// and deletes, and one document Elasticsearch rejects: every counter says
/// exactly that, and every metric of the catalogue (and nothing else) is
/// exported — what the Grafana dashboard and the alerts query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_run_match_the_work_done_and_cover_the_whole_catalogue() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("m");
    db.sql(
        "CREATE TABLE m (id bigint PRIMARY KEY, v text);
         INSERT INTO m SELECT g, g::text FROM generate_series(1, 50) g;
         CREATE PUBLICATION sluice FOR TABLE m;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        "",
        &[(
            "m.toml",
            mapping(
                "public.m",
                &index,
                "[index_mappings.properties]\nv = { type = \"long\" }",
            ),
        )],
    );
    sluice.start_streaming(&db).await;
    // The slot is active from its creation on; changes committed before the
    // snapshot ends may still be in it. Stream only once `/ready` says so.
    let addr = sluice.http_addr();
    sluice
        .wait_for(Duration::from_secs(60), "the stream", async || {
            http_get(&addr, "/ready").1.contains("streaming")
        })
        .await;
    db.sql(
        "INSERT INTO m SELECT g, g::text FROM generate_series(1001, 1030) g;
         UPDATE m SET v = (id * 2)::text WHERE id <= 10;
         DELETE FROM m WHERE id BETWEEN 1026 AND 1030;
         INSERT INTO m VALUES (2000, 'not a number');",
    )
    .await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM m WHERE id <> 2000")
        .await;
    let table = "table=\"public.m\"";
    sluice
        .wait_for(
            Duration::from_secs(60),
            "the dead letter to be counted",
            async || {
                let m = http_get(&addr, "/metrics").1;
                metric_sum(&m, "sluice_dead_letters_total", &[table]) == 1.0
            },
        )
        .await;
    // The gauge is what Sluice confirms: the slot never passes it, and
    // reaches it with the next standby status update (other tests' WAL keeps
    // moving the position, so the two are compared in that order).
    let slot = confirmed_flush(&db, &db.slot()).await.0 as f64;
    let gauge = plain(&http_get(&addr, "/metrics").1, "sluice_confirmed_flush_lsn").unwrap();
    assert!(gauge >= slot, "gauge {gauge} behind the slot {slot}");
    sluice
        .wait_for(
            Duration::from_secs(60),
            "the slot's confirmed_flush_lsn to reach sluice_confirmed_flush_lsn",
            async || confirmed_flush(&db, &db.slot()).await.0 as f64 >= gauge,
        )
        .await;
    // Idle and applied: the lag in seconds drops to 0 (a keepalive confirms).
    sluice
        .wait_for(
            Duration::from_secs(90),
            "sluice_replication_lag_seconds to read 0 once caught up",
            async || {
                plain(
                    &http_get(&addr, "/metrics").1,
                    "sluice_replication_lag_seconds",
                ) == Some(0.0)
            },
        )
        .await;

    let m = http_get(&addr, "/metrics").1;
    let sum = |name: &str, labels: &[&str]| metric_sum(&m, name, labels);
    let received = |op: &str| {
        sum(
            "sluice_changes_received_total",
            &[table, &format!("op=\"{op}\"")],
        )
    };
    let applied = |op: &str| {
        sum(
            "sluice_changes_applied_total",
            &[table, &format!("op=\"{op}\"")],
        )
    };
    // Streamed changes only: the snapshot has its own counter.
    assert_eq!((received("insert"), applied("insert")), (31.0, 31.0), "{m}");
    assert_eq!((received("update"), applied("update")), (10.0, 10.0), "{m}");
    assert_eq!((received("delete"), applied("delete")), (5.0, 5.0), "{m}");
    assert_eq!(sum("sluice_snapshot_rows_total", &[table]), 50.0, "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("sluice_snapshot_rows_expected{") && l.contains(table)),
        "{m}"
    );
    // 50 snapshot rows + 45 streamed writes land; one document is dead-lettered.
    let items = |o: &str| sum("sluice_bulk_items_total", &[&format!("outcome=\"{o}\"")]);
    assert_eq!(items("ok") + items("conflict"), 95.0, "{m}");
    assert_eq!(items("dead_lettered"), 1.0, "{m}");
    assert_eq!(items("retried"), 0.0, "{m}");
    assert_eq!(sum("sluice_dead_letters_total", &[table]), 1.0, "{m}");
    let requests_ok = sum("sluice_bulk_requests_total", &["outcome=\"ok\""]);
    assert!(requests_ok >= 2.0, "snapshot and stream requests: {m}");
    assert_eq!(
        sum("sluice_bulk_requests_total", &["outcome=\"error\""]),
        0.0
    );
    assert_eq!(
        plain(&m, "sluice_bulk_request_duration_seconds_count"),
        Some(requests_ok),
        "one latency sample per request: {m}"
    );
    assert!(plain(&m, "sluice_bulk_bytes_sent_total").unwrap() > 95.0 * 20.0);
    assert_eq!(plain(&m, "sluice_retries_total"), Some(0.0));
    assert!(plain(&m, "sluice_replication_lag_bytes").is_some(), "{m}");
    assert!(
        plain(&m, "sluice_slot_retained_wal_bytes").unwrap() > 0.0,
        "{m}"
    );

    let exported = exported_names(&m);
    let catalogue: BTreeSet<String> = sluice::ops::metrics::CATALOGUE
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    let sluice_names: BTreeSet<String> = exported
        .iter()
        .filter(|n| n.starts_with("sluice_"))
        .cloned()
        .collect();
    assert_eq!(
        sluice_names, catalogue,
        "exported metrics (left) differ from the catalogue the dashboard is checked against (right)"
    );
    sluice.stop_cleanly();
}

/// `/ready` is 503 while `sluice run` waits as a standby — here for
/// another client (pg_recvlogical) to let go of its slot — naming the pid
/// that holds it, and `sluice status` (text and JSON) says the same; it
/// takes over and turns ready once the holder is gone. `/health` is 200
/// throughout: a standby is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_not_ready_names_the_holder_and_takes_over() {
    let db = TestDb::new().await;
    let index = db.index("r");
    let slot = db.slot();
    db.sql(
        "CREATE TABLE r (id bigint PRIMARY KEY);
         CREATE PUBLICATION sluice FOR TABLE r;",
    )
    .await;
    create_slot(&db, &slot).await;
    let mut holder = hold_slot(&db, &slot, "sluice");
    let pid = wait_until(
        Duration::from_secs(20),
        "pg_recvlogical to hold the slot",
        || async { slot_pid(&db, &slot).await },
    )
    .await;

    let mut sluice = Sluice::new(&db, SNAPSHOT_NEVER, &[table_mapping("r", &index)]);
    sluice.start();
    wait_until(Duration::from_secs(30), "the HTTP endpoint", || async {
        sluice.log_text().contains("serving /metrics").then_some(())
    })
    .await;
    let addr = sluice.http_addr();
    let standby_body =
        format!(r#"{{"ready":false,"state":"standby","reason":"slot held by pid {pid}"}}"#);
    sluice
        .wait_for(Duration::from_secs(30), "the standby state", async || {
            http_get(&addr, "/ready").1 == standby_body
        })
        .await;
    // It waits as long as the slot is held (well past the 30 s a restart
    // used to allow), not ready but alive, and never exits.
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push((http_get(&addr, "/ready"), http_get(&addr, "/health").0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for ((code, body), health) in &seen {
        assert_eq!(*code, 503, "{body}");
        assert_eq!(body, &standby_body);
        assert_eq!(*health, 200);
    }
    // What an orchestrator running the pair asks: a healthy standby is a
    // ready member.
    assert_eq!(
        http_get(&addr, "/ready?standby=ok"),
        (200, standby_body.replace("false", "true"))
    );
    let status = sluice.command(&["status"]);
    assert!(
        status
            .stdout
            .contains(&format!(": standby, slot held by pid {pid}")),
        "{}",
        status.text()
    );
    let json: serde_json::Value =
        serde_json::from_str(&sluice.command(&["status", "--json"]).stdout).unwrap();
    let standbys = json["slot"]["standbys"].as_array().expect("standbys");
    assert_eq!(standbys.len(), 1, "{json}");
    assert_eq!(standbys[0]["slot_held_by"], pid, "{json}");
    assert_eq!(
        standbys[0]["state"],
        format!("standby, slot held by pid {pid}")
    );
    assert!(sluice.exited().is_none(), "{}", sluice.log_text());

    holder.kill().await.unwrap();
    sluice
        .wait_for(Duration::from_secs(60), "/ready to turn 200", async || {
            http_get(&addr, "/ready").0 == 200
        })
        .await;
    assert_eq!(
        http_get(&addr, "/ready").1,
        r#"{"ready":true,"state":"streaming"}"#
    );
    sluice.wait_streaming(&db).await;
    let json: serde_json::Value =
        serde_json::from_str(&sluice.command(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["slot"]["standbys"], serde_json::json!([]), "{json}");
    sluice.stop_cleanly();
}

/// A TCP proxy in front of the shared Elasticsearch that keeps a copy of
/// every byte the client sent (to see the `Authorization` headers that the
/// security-off test server ignores).
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let upstream = services()
            .es_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = sw.shutdown().await;
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).to_lowercase()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the binary to completion; returns (exit code, stdout + stderr).
fn sluice_cmd(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let ran = sluice_command(args, env);
    (ran.code.unwrap_or(-1), ran.text())
}

/// Known secrets in every place Sluice takes them from — the PostgreSQL URL
/// in `sluice.toml` or a `password_file`, an Elasticsearch password file or
/// the URL's userinfo, an API key from an environment variable or a file —
/// and the most verbose JSON logs of every crate, of a working run, `sluice
/// status` and `sluice check` on each, and runs that fail on a wrong password:
/// no secret appears in any output or in `/metrics`, while the proxy shows
/// the credentials were really sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_the_output_of_runs_configured_with_known_secrets() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("s");
    db.sql(
        "CREATE TABLE s (id bigint PRIMARY KEY, v text);
         CREATE PUBLICATION sluice FOR TABLE s;",
    )
    .await;
    let recorder = Recorder::start().await;
    let pg_secret = url::Url::parse(&db.repl_url())
        .unwrap()
        .password()
        .expect("the test URL has a password")
        .to_string();
    let es_secret = "es-Known-Secret-7f3a";
    let api_key = "a25vd24tYXBpLWtleS1zZWNyZXQ=";
    let setup = SluiceToml {
        es_url: format!("http://{}", recorder.addr),
        es_extra: "username = \"sluice\"\npassword_file = \"es-password\"\n".into(),
        extra: SNAPSHOT_NEVER.into(),
        ..SluiceToml::for_db(&db)
    };
    let sluice = Sluice::with_config(&setup, &[table_mapping("s", &index)]);
    std::fs::write(sluice.file("es-password"), format!("{es_secret}\n")).unwrap();
    let config = sluice.config_path().display().to_string();
    let log_path = sluice.file("run.log");
    let trace = [("SLUICE_LOG", "trace"), ("SLUICE_LOG_FORMAT", "json")];

    // 1. A working run, JSON logs at trace level for every crate.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", &config])
        .envs(trace)
        .stdout(std::fs::File::create(sluice.file("run.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let addr = wait_until(Duration::from_secs(60), "the HTTP endpoint", || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("serving /metrics"))
            })
            .map(|v| v["addr"].as_str().unwrap().to_string())
    })
    .await;
    wait_until(Duration::from_secs(60), "streaming", || async {
        http_get(&addr, "/ready")
            .1
            .contains("streaming")
            .then_some(())
    })
    .await;
    db.sql("INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 20) g")
        .await;
    wait_until(Duration::from_secs(90), "the documents", || async {
        (es.sources(&index).await.len() == 20).then_some(())
    })
    .await;
    let metrics = http_get(&addr, "/metrics").1;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let run_log = std::fs::read_to_string(&log_path).unwrap()
        + &std::fs::read_to_string(sluice.file("run.out")).unwrap();
    assert!(run_log.lines().count() > 50, "a verbose log:\n{run_log}");
    for line in run_log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }

    // 2. `sluice status` with an API key from the environment.
    let api_config = sluice.file("api-key.toml");
    std::fs::write(
        &api_config,
        std::fs::read_to_string(sluice.config_path())
            .unwrap()
            .replace(
                "username = \"sluice\"\npassword_file = \"es-password\"",
                "api_key = \"${SLUICE_TEST_ES_API_KEY}\"",
            ),
    )
    .unwrap();
    let api_config = api_config.display().to_string();
    let mut env = trace.to_vec();
    env.push(("SLUICE_TEST_ES_API_KEY", api_key));
    let (code, status_out) = sluice_cmd(&["status", "--config", &api_config], &env);
    assert_eq!(code, 0, "{status_out}");
    assert!(
        status_out.contains(&format!("sluice_{}", db.name)),
        "{status_out}"
    );

    // 2b. The other places a secret can be written: the PostgreSQL password
    // in a file (not in the URL), the Elasticsearch password in the URL's
    // userinfo, the API key in a file. `check` and `status` on each.
    let url_secret = "es-Url-Secret-91c2";
    std::fs::write(sluice.file("pg-password"), &pg_secret).unwrap();
    std::fs::write(sluice.file("api-key"), format!("{api_key}\n")).unwrap();
    let base = std::fs::read_to_string(sluice.config_path()).unwrap();
    let es_auth = "username = \"sluice\"\npassword_file = \"es-password\"";
    let variants = [
        (
            "pg-password-file",
            base.replace(
                &db.repl_url(),
                &db.repl_url().replace(&format!(":{pg_secret}@"), "@"),
            )
            .replace(
                "[postgres]\n",
                "[postgres]\npassword_file = \"pg-password\"\n",
            ),
        ),
        (
            "es-url-userinfo",
            base.replace(es_auth, "").replace(
                &format!("http://{}", recorder.addr),
                &format!("http://sluice:{url_secret}@{}", recorder.addr),
            ),
        ),
        (
            "api-key-file",
            base.replace(es_auth, "api_key_file = \"api-key\""),
        ),
    ];
    let mut more_outputs = Vec::new();
    for (name, text) in variants {
        assert_ne!(text, base, "{name}: the variant changed nothing");
        let path = sluice.file(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        let (code, out) = sluice_cmd(&["status", "--config", &path], &trace);
        assert_eq!(code, 0, "status with {name}: {out}");
        more_outputs.push((format!("status with {name}"), out));
        let (_, out) = sluice_cmd(&["check", "--config", &path], &trace);
        assert!(out.contains("PostgreSQL"), "check with {name} ran: {out}");
        more_outputs.push((format!("check with {name}"), out));
    }

    // 3. Failures: a wrong PostgreSQL password, in `run` and in `status`.
    let wrong = sluice.file("wrong.toml");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(sluice.config_path())
            .unwrap()
            .replace(&format!(":{pg_secret}@"), &format!(":{pg_secret}-wrong@")),
    )
    .unwrap();
    let wrong = wrong.display().to_string();
    let (code, run_err) = sluice_cmd(&["run", "--config", &wrong], &trace);
    assert_eq!(code, 1, "{run_err}");
    assert!(
        run_err.contains("password authentication failed"),
        "{run_err}"
    );
    let (code, status_err) = sluice_cmd(&["status", "--config", &wrong], &[]);
    assert_ne!(code, 0, "{status_err}");
    assert!(
        status_err.contains("password authentication failed"),
        "{status_err}"
    );

    // The credentials were used...
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("sluice:{es_secret}"));
    let sent = recorder.text();
    assert!(
        sent.contains(&format!("authorization: basic {}", basic.to_lowercase())),
        "no basic auth header sent"
    );
    assert!(
        sent.contains(&format!("authorization: apikey {}", api_key.to_lowercase())),
        "no API key header sent"
    );
    let url_basic =
        base64::engine::general_purpose::STANDARD.encode(format!("sluice:{url_secret}"));
    assert!(
        sent.contains(&format!(
            "authorization: basic {}",
            url_basic.to_lowercase()
        )),
        "the URL's userinfo was not sent as basic auth"
    );
    // ...and never shown.
    let mut outputs = vec![
        ("run logs".to_string(), run_log),
        ("/metrics".to_string(), metrics),
        ("status".to_string(), status_out),
        ("failed run".to_string(), run_err),
        ("failed status".to_string(), status_err),
    ];
    outputs.extend(more_outputs);
    for (what, text) in &outputs {
        for secret in [
            pg_secret.as_str(),
            es_secret,
            api_key,
            basic.as_str(),
            url_secret,
            url_basic.as_str(),
        ] {
            assert!(
                !text.contains(secret),
                "secret {secret:?} in the {what}:\n{text}"
            );
        }
    }
}
