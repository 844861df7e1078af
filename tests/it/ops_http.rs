//! Operator surface, against real servers: `/metrics`, `/health`, `/ready`
//! over HTTP, and logs that never carry secrets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice::ops::http::{Health, HttpHandles, PipelineState, ReadyState};
use sluice::ops::metrics::names;
use sluice::sink::{EsAuth, EsConfig};
use sluice::source::PgConnectConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::status::{es_config, pg_config_from_url, targets};
use crate::support::{TestDb, unique_name, wait_until};

/// One HTTP/1.1 GET; returns status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

struct Server {
    addr: SocketAddr,
    health: Health,
    ready: ReadyState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_server() -> Server {
    let handles = HttpHandles {
        metrics: sluice::ops::metrics::install().expect("install recorder"),
        health: Health::new(),
        ready: ReadyState::new(),
        page: sluice::ops::http::StatusPage::new(),
        ui_token: None,
    };
    let listener = sluice::ops::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (health, ready) = (handles.health.clone(), handles.ready.clone());
    let task = tokio::spawn(async move {
        sluice::ops::http::serve_on(listener, handles, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Server {
        addr,
        health,
        ready,
        stop: Some(tx),
        task,
    }
}

impl Server {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }
}

/// The value of the sample `name{...}` whose labels include all `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn metrics_endpoint_serves_described_metrics_with_the_values_recorded() {
    let server = start_server().await;
    let table = unique_name("public.ops_tbl");
    metrics::counter!(names::CHANGES_RECEIVED_TOTAL, "table" => table.clone(), "op" => "insert")
        .increment(3);
    metrics::counter!(names::CHANGES_RECEIVED_TOTAL, "table" => table.clone(), "op" => "delete")
        .increment(1);
    metrics::counter!(names::CHANGES_APPLIED_TOTAL, "table" => table.clone(), "op" => "insert")
        .increment(2);
    metrics::counter!(names::DEAD_LETTERS_TOTAL, "table" => table.clone()).increment(1);
    metrics::gauge!(names::SNAPSHOT_ROWS_EXPECTED, "table" => table.clone()).set(1000.0);
    metrics::counter!(names::SNAPSHOT_ROWS_TOTAL, "table" => table.clone()).increment(250);
    metrics::histogram!(names::BULK_REQUEST_DURATION_SECONDS).record(0.02);

    let (code, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(code, 200);
    let t = table.as_str();
    assert_eq!(
        sample(
            &text,
            names::CHANGES_RECEIVED_TOTAL,
            &[("table", t), ("op", "insert")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            names::CHANGES_RECEIVED_TOTAL,
            &[("table", t), ("op", "delete")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            names::CHANGES_APPLIED_TOTAL,
            &[("table", t), ("op", "insert")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, names::DEAD_LETTERS_TOTAL, &[("table", t)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, names::SNAPSHOT_ROWS_EXPECTED, &[("table", t)]),
        Some(1000.0)
    );
    assert_eq!(
        sample(&text, names::SNAPSHOT_ROWS_TOTAL, &[("table", t)]),
        Some(250.0)
    );

    // Described: help text and type lines come from the catalogue.
    assert!(
        text.contains("# HELP sluice_changes_received_total Row changes decoded"),
        "{text}"
    );
    assert!(text.contains("# TYPE sluice_changes_received_total counter"));
    assert!(
        text.contains("# TYPE sluice_bulk_request_duration_seconds histogram"),
        "{text}"
    );
    // The agreed buckets, and our sample at or below 0.025 s.
    let in_bucket = sample(
        &text,
        "sluice_bulk_request_duration_seconds_bucket",
        &[("le", "0.025")],
    )
    .expect("0.025 s bucket");
    assert!(in_bucket >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            "sluice_bulk_request_duration_seconds_bucket",
            &[("le", "60")]
        )
        .is_some()
    );
    // Fixed-label series exist before the first event.
    for outcome in ["ok", "conflict", "retried", "dead_lettered"] {
        assert!(
            sample(&text, names::BULK_ITEMS_TOTAL, &[("outcome", outcome)]).is_some(),
            "{outcome}"
        );
    }
    assert!(sample(&text, names::BULK_BYTES_SENT_TOTAL, &[]).is_some());

    // A counter moves by what was recorded between two scrapes.
    metrics::counter!(names::CHANGES_RECEIVED_TOTAL, "table" => table.clone(), "op" => "insert")
        .increment(4);
    let (_, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            names::CHANGES_RECEIVED_TOTAL,
            &[("table", t), ("op", "insert")]
        ),
        Some(7.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn ready_is_503_until_the_pipeline_snapshots_or_streams() {
    let server = start_server().await;
    let (code, body) = http_get(server.addr, "/ready").await;
    assert_eq!(
        (code, body.as_str()),
        (503, r#"{"ready":false,"state":"starting"}"#)
    );
    server.ready.set(PipelineState::Streaming);
    let (code, body) = http_get(server.addr, "/ready").await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"ready":true,"state":"streaming"}"#)
    );
    server.ready.set(PipelineState::Snapshotting);
    assert_eq!(http_get(server.addr, "/ready").await.0, 200);
    server.ready.set(PipelineState::Stopping);
    let (code, body) = http_get(server.addr, "/ready").await;
    assert_eq!(
        (code, body.as_str()),
        (503, r#"{"ready":false,"state":"stopping"}"#)
    );
    server.stop().await;
}

#[tokio::test]
async fn health_is_200_while_tasks_beat_and_503_when_one_stalls_or_dies() {
    let server = start_server().await;
    assert_eq!(http_get(server.addr, "/health").await.0, 200);
    let beat = server
        .health
        .heartbeat("stream", Duration::from_millis(200));
    assert_eq!(http_get(server.addr, "/health").await.0, 200);
    let body = wait_until(
        Duration::from_secs(5),
        "/health to notice the stalled task",
        || async {
            let (code, body) = http_get(server.addr, "/health").await;
            (code == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(body, r#"{"alive":true,"stalled":["stream"]}"#);
    beat.beat();
    assert_eq!(http_get(server.addr, "/health").await.0, 200);
    // A supervised long-running task that stops before shutdown: dead.
    tokio::spawn(server.health.supervise("slot gauges", async {}))
        .await
        .unwrap();
    let (code, body) = http_get(server.addr, "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            r#"{"alive":true,"stalled":[],"dead":["slot gauges: ended"]}"#
        )
    );
    server.health.set_alive(false);
    assert_eq!(http_get(server.addr, "/health").await.0, 503);
    server.stop().await;
}

#[tokio::test]
async fn a_busy_listen_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = sluice::ops::http::bind(addr).await.unwrap_err().to_string();
    assert!(
        err.contains(&addr.to_string()) && err.contains("[http] listen"),
        "{err}"
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_logs_of_a_status_run_with_known_secrets_never_contain_them() {
    let db = TestDb::new().await;
    let repl_url = db.repl_url();
    let pg = pg_config_from_url(&repl_url);
    let pg_secret = pg.password.clone().expect("the test URL has a password");
    let es_secret = "es-Pa55word-known";
    let api_key = "QXBpS2V5SWQ6YXBpLWtleS1zZWNyZXQ=";
    let es = EsConfig {
        auth: EsAuth::Basic {
            username: "sluice".into(),
            password: es_secret.into(),
        },
        ..es_config()
    };
    let es_api = EsConfig {
        auth: EsAuth::ApiKey(api_key.into()),
        ..es_config()
    };

    let out = Captured::default();
    let w = out.clone();
    // Everything, from every crate, at the most verbose level.
    let d = sluice::ops::logging::dispatch(
        sluice::cli::LogFormat::Json,
        tracing_subscriber::EnvFilter::new("trace"),
        move || w.clone(),
        false,
    );
    // `set_default` of the init extension also bridges `log` records
    // (tokio-postgres logs through `log`).
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(d);

    tracing::info!(pg = ?pg, es = ?es, es_api = ?es_api, "configuration");
    tracing::info!(pg = %pg, url = %sluice::ops::logging::redact_url(&repl_url), "connecting");
    let client = sluice::sink::build_client(&es).unwrap();
    let report = sluice::app::status::gather(&pg, &client, &targets(&db))
        .await
        .expect("status");
    tracing::info!(report = %sluice::app::status::render_json(&report), "status");
    let client = sluice::sink::build_client(&es_api).unwrap();
    sluice::app::status::gather(&pg, &client, &targets(&db))
        .await
        .expect("status with an API key");
    // And the error path: a wrong password.
    let wrong = PgConnectConfig {
        password: Some(format!("{pg_secret}-wrong")),
        ..pg.clone()
    };
    let err = sluice::app::status::gather(&wrong, &client, &targets(&db))
        .await
        .unwrap_err();
    tracing::error!(error = %err, "status failed");
    let err_text = err.to_string();
    assert!(
        err_text.contains("password authentication failed"),
        "{err_text}"
    );

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.lines().count() > 5,
        "expected a verbose log, got:\n{text}"
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(
        text.contains("<redacted>"),
        "the configuration line was logged redacted"
    );
    use base64::Engine as _;
    let basic_header =
        base64::engine::general_purpose::STANDARD.encode(format!("sluice:{es_secret}"));
    let metrics = sluice::ops::metrics::render(&sluice::ops::metrics::install().unwrap());
    for secret in [
        pg_secret.as_str(),
        es_secret,
        api_key,
        basic_header.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "secret {secret:?} in the logs:\n{text}"
        );
        assert!(!err_text.contains(secret));
        assert!(!metrics.contains(secret), "secret {secret:?} in /metrics");
    }
}
