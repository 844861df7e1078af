//! The page's pure parts: rates and states from recorder values, the
//! redacted configuration, and the HTML.

use super::html::{page, polyline_points, progress_bar, shape};
use super::live::{Tracker, observe, pipeline_state, progress};
use super::view::*;
use crate::ops::http::{HealthReport, PipelineState};
use crate::ops::metric_values::parse;

fn values(changes: u64, docs: u64, snap: u64) -> Vec<crate::ops::metric_values::MetricValue> {
    parse(&format!(
        "sluice_changes_received_total{{table=\"public.orders\",op=\"insert\"}} {changes}\n\
         sluice_changes_applied_total{{table=\"public.orders\",op=\"insert\"}} {docs}\n\
         sluice_snapshot_rows_total{{table=\"public.orders\"}} {snap}\n\
         sluice_snapshot_rows_expected{{table=\"public.orders\"}} 1000\n\
         sluice_retries_total 3\n\
         sluice_bulk_items_total{{outcome=\"dead_lettered\"}} 2\n\
         sluice_bulk_requests_total{{outcome=\"error\"}} 1\n\
         sluice_confirmed_flush_lsn 4096\n\
         sluice_replication_lag_seconds 0.25\n"
    ))
}

#[test]
fn rates_progress_and_counters_come_from_the_recorder_values() {
    let mut t = Tracker::new(vec![("public.orders".into(), vec!["orders".into()])]);
    t.tick(1000.0, &observe(&values(0, 0, 0)));
    let l = t.tick(1005.0, &observe(&values(50, 40, 500)));
    let row = &l.tables[0];
    assert_eq!(row.changes_per_sec, 10.0);
    assert_eq!(row.docs_per_sec, 8.0);
    assert_eq!(row.docs_total, 40);
    assert!(row.last_change.is_some());
    let snap = row.snapshot.as_ref().unwrap();
    assert_eq!((snap.rows_done, snap.rows_total), (500, 1000));
    assert_eq!(snap.eta_seconds, Some(5), "500 rows left at 100 rows/s");
    let o = observe(&values(50, 40, 500));
    assert_eq!(o.counters.retries, 3);
    assert_eq!(o.counters.bulk_items_dead_lettered, 2);
    assert_eq!(o.counters.bulk_requests_failed, 1);
    assert_eq!(o.confirmed_lsn, Some(4096));
    // One history sample per 10 s, whatever the tick rate.
    assert_eq!(t.history().len(), 1);
    t.tick(1010.0, &o);
    assert_eq!(t.history().len(), 2);
}

#[test]
fn a_finished_snapshot_has_no_eta_and_an_estimate_below_the_rows_is_raised() {
    let p = progress(1200, 1000, 50.0);
    assert!(p.done);
    assert_eq!(
        (p.rows_done, p.rows_total, p.eta_seconds),
        (1200, 1200, None)
    );
    assert_eq!(progress(0, 1000, 0.0).eta_seconds, None);
    assert_eq!(
        progress(200, 0, 10.0).eta_seconds,
        None,
        "estimate 0: nothing left to time"
    );
    let mut rows = vec![TableRow {
        snapshot: Some(progress(200, 0, 10.0)),
        ..TableRow::default()
    }];
    super::live::finish_snapshots(&mut rows, PipelineState::Snapshotting);
    assert!(!rows[0].snapshot.as_ref().unwrap().done, "still loading");
    super::live::finish_snapshots(&mut rows, PipelineState::Streaming);
    let p = rows[0].snapshot.as_ref().unwrap();
    assert!(p.done && p.rows_total == 200 && p.eta_seconds.is_none());
}

#[test]
fn the_state_word_says_stalled_with_a_reason() {
    let ok = HealthReport {
        alive: true,
        stalled: vec![],
        dead: vec![],
    };
    let state = |ready, held: Option<&str>, h: &HealthReport, lag, still| {
        pipeline_state(ready, held.map(str::to_string), h, false, lag, still)
    };
    assert_eq!(
        state(PipelineState::Streaming, None, &ok, Some(1.0), 500.0).0,
        "streaming"
    );
    assert_eq!(
        state(PipelineState::Snapshotting, None, &ok, None, 0.0).0,
        "snapshotting"
    );
    let held = state(
        PipelineState::Streaming,
        Some("disk watermark"),
        &ok,
        None,
        0.0,
    );
    assert_eq!(held.0, "stalled");
    assert!(held.1.unwrap().contains("disk watermark"));
    let stuck = state(PipelineState::Streaming, None, &ok, Some(120.0), 90.0);
    assert_eq!(stuck.0, "stalled");
    let dead = HealthReport {
        dead: vec!["replication reader: ended".into()],
        ..ok.clone()
    };
    assert!(
        state(PipelineState::Streaming, None, &dead, None, 0.0)
            .1
            .unwrap()
            .contains("replication reader")
    );
    let waiting = pipeline_state(PipelineState::Standby, None, &ok, false, None, 0.0);
    assert_eq!(waiting.0, "standby");
    assert!(waiting.1.unwrap().contains("holds the replication slot"));
    let standby = pipeline_state(PipelineState::Starting, None, &ok, true, None, 0.0);
    assert_eq!(standby.0, "standby");
}

#[test]
fn the_chart_scales_to_its_box() {
    assert_eq!(
        polyline_points(&[0.0, 5.0, 10.0], 100.0, 10.0),
        "0.0,10.0 50.0,5.0 100.0,0.0"
    );
    assert_eq!(
        polyline_points(&[0.0, 0.0], 100.0, 10.0),
        "0.0,10.0 100.0,10.0"
    );
    assert_eq!(polyline_points(&[], 100.0, 10.0), "");
}

#[test]
fn a_progress_bar_shows_rows_and_eta_escaped() {
    let html = progress_bar("public.<x>", &progress(250, 1000, 25.0));
    assert!(html.contains("value=\"250\" max=\"1000\""), "{html}");
    assert!(html.contains("250 / 1000 rows"), "{html}");
    assert!(html.contains("ETA 30.0 s"), "{html}");
    assert!(
        html.contains("public.&lt;x&gt;") && !html.contains("<x>"),
        "{html}"
    );
}

/// A configuration with a secret in every place `sluice.toml` accepts one.
pub const SECRETS: [&str; 5] = [
    "pgUrlSecret-1",
    "pgPasswordSecret-2",
    "esPasswordSecret-3",
    "esUrlSecret-4",
    "uiTokenSecret-5",
];

fn config_with_secrets(es_auth: &str) -> crate::config::Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/orders.toml"),
        "table = \"public.orders\"\nindex = \"orders\"\n",
    )
    .unwrap();
    let toml = format!(
        "[postgres]\nurl = \"postgres://app:{}@db:5432/shop\"\npassword = \"{}\"\n\
         [elasticsearch]\nurls = [\"https://elastic:{}@es:9200/?api_key=x\"]\n{es_auth}\n\
         [http]\nui_token = \"{}\"\n",
        SECRETS[0], SECRETS[1], SECRETS[3], SECRETS[4]
    );
    std::fs::write(dir.path().join("sluice.toml"), toml).unwrap();
    crate::config::Config::load(&dir.path().join("sluice.toml")).unwrap()
}

fn sample_status(config: ConfigView) -> UiStatus {
    UiStatus {
        generated_at: "2026-01-01T00:00:00Z".into(),
        state: "snapshotting".into(),
        state_reason: None,
        confirmed_lsn: Some("0/1000".into()),
        lag_bytes: Some(2048),
        lag_seconds: Some(1.5),
        retained_wal_bytes: Some(4096),
        tables: vec![TableRow {
            table: "public.orders".into(),
            indices: vec!["orders".into()],
            snapshot: Some(progress(10, 100, 5.0)),
            ..TableRow::default()
        }],
        dead_letters: DeadLetters {
            index: "dl".into(),
            total: Some(1),
            per_index: vec![("orders".into(), 1)],
            latest: vec![DeadLetterLine {
                reason: "failed to parse field [n] of type [long]".into(),
                error_type: "document_parsing_exception".into(),
                ..DeadLetterLine::default()
            }],
            error: None,
        },
        counters: Counters::default(),
        history: vec![Sample::default(); 3],
        history_bound: HistoryBound {
            samples: 360,
            sample_every_secs: 10,
            sample_bytes: 40,
            table_sample_bytes: 8,
        },
        config,
        status: None,
        status_error: None,
        status_read_at: None,
    }
}

#[test]
fn no_secret_reaches_the_page_or_the_json() {
    for auth in [
        format!("username = \"elastic\"\npassword = \"{}\"", SECRETS[2]),
        format!("api_key = \"{}\"", SECRETS[2]),
    ] {
        let cfg = config_with_secrets(&auth);
        let u = sample_status(ConfigView::of(&cfg));
        let html = page(&u);
        let json = serde_json::to_string(&u).unwrap();
        for s in SECRETS {
            assert!(!html.contains(s), "{s} in the page");
            assert!(!json.contains(s), "{s} in the JSON");
        }
        assert!(html.contains("&lt;redacted&gt;"), "secrets show as set");
        assert!(json.contains("\"postgres.host\",\"db\""), "{json}");
    }
}

#[test]
fn the_page_shows_state_figures_tables_and_dead_letters() {
    let cfg = config_with_secrets("");
    let u = sample_status(ConfigView::of(&cfg));
    let html = page(&u);
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("class=\"state s-snapshotting\""));
    assert!(
        html.contains("2.0 KiB") && html.contains("4.0 KiB"),
        "lag and WAL"
    );
    assert!(html.contains("data-table=\"public.orders\""));
    assert!(html.contains("class=\"snapshot-progress\""));
    assert!(html.contains("failed to parse field [n] of type [long]"));
    assert!(html.contains("<svg") && html.contains("<polyline"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "nothing fetched from elsewhere"
    );
    assert!(html.contains(&format!("data-shape=\"{}\"", shape(&u))));
}
