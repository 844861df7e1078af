//! `sluice status` and `sluice teardown` against a real slot, publication and
//! indices.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::app::status::es_health::IndexState;
use sluice::app::status::{
    SlotStatus, SnapshotStatus, TeardownError, gather, render_human, render_json, teardown,
};

use crate::support::slot::{create_slot, hold_slot, slot_pid};
use crate::support::status::{es_config, pg_config_from_url, targets};
use crate::support::{Es, TestDb, connect, free_port, wait_until};

async fn slot_and_publication(db: &TestDb) {
    let t = targets(db);
    db.sql(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, body text);
         CREATE PUBLICATION {} FOR TABLE items;",
        t.publication
    ))
    .await;
    create_slot(db, &t.slot).await;
}

/// Write documents with the given ids, then refresh.
async fn put_docs(es: &Es, index: &str, docs: &[(String, Value)]) {
    for (id, d) in docs {
        let r = es
            .client
            .index(elasticsearch::IndexParts::IndexId(index, id))
            .body(d.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status_code().is_success(), "{:?}", r.text().await);
    }
    es.refresh(index).await;
}

async fn index_docs(es: &Es, index: &str, docs: &[Value]) {
    for d in docs {
        let r = es
            .client
            .index(elasticsearch::IndexParts::Index(index))
            .body(d.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status_code().is_success(), "{:?}", r.text().await);
    }
    es.refresh(index).await;
}

#[tokio::test]
async fn status_reports_slot_lag_retained_wal_snapshots_and_dead_letters() {
    let db = TestDb::new().await;
    slot_and_publication(&db).await;
    let t = targets(&db);
    let pg = pg_config_from_url(&db.repl_url());
    let es = sluice::sink::build_client(&es_config()).unwrap();

    let r = gather(&pg, &es, &t).await.expect("status");
    let SlotStatus::Present(s) = &r.slot else {
        panic!("slot missing: {r:?}")
    };
    assert!(!s.active);
    assert_eq!(s.plugin.as_deref(), Some("pgoutput"));
    assert_eq!(s.database.as_deref(), Some(db.name.as_str()));
    assert!(matches!(r.snapshots, SnapshotStatus::NoneRecorded { .. }));
    assert_eq!(r.dead_letters.count, None);
    assert_eq!(r.publication.tables, ["public.items"]);
    assert!(render_human(&r).contains("no snapshot recorded"));

    // WAL written after the slot's creation is lag: nobody consumes it.
    db.sql("INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
        .await;
    index_docs(
        &Es::new(),
        &t.dead_letter_index,
        &vec![json!({"table": "public.items", "error": "mapper_parsing_exception"}); 2],
    )
    .await;
    index_docs(
        &Es::new(),
        &t.state_index,
        &[
            json!({"kind": "table", "table": "public.items", "target": "items", "run_id": "r1",
                   "status": "running", "plan": [0, 1]}),
            json!({"kind": "chunk", "run_id": "r1", "table": "public.items", "chunk": 0, "rows": 1000}),
            json!({"kind": "chunk", "run_id": "r1", "table": "public.items", "chunk": 1, "rows": 400}),
        ],
    )
    .await;

    let r = gather(&pg, &es, &t).await.expect("status");
    let SlotStatus::Present(s) = &r.slot else {
        panic!()
    };
    let confirmed = s.confirmed_flush_lsn.expect("confirmed LSN");
    let restart = s.restart_lsn.expect("restart LSN");
    let lag = s.lag_bytes.unwrap();
    let retained = s.retained_wal_bytes.unwrap();
    assert_eq!(lag, r.server_wal_lsn.0 - confirmed.0);
    assert_eq!(retained, r.server_wal_lsn.0 - restart.0);
    // 2000 rows of ~200 bytes: at least 400 kB of WAL, far below a gigabyte.
    assert!((400_000..1 << 30).contains(&lag), "lag {lag}");
    assert!(retained >= lag, "retained {retained} < lag {lag}");
    assert_eq!(s.wal_status.as_deref(), Some("reserved"));
    assert_eq!(r.dead_letters.count, Some(2));
    let SnapshotStatus::Recorded { tables, .. } = &r.snapshots else {
        panic!("{r:?}")
    };
    assert_eq!(tables.len(), 1);
    assert_eq!(
        (tables[0].chunks, tables[0].chunks_done, tables[0].rows),
        (2, 2, 1400)
    );

    let v: Value = serde_json::from_str(&render_json(&r)).unwrap();
    for key in [
        "database",
        "server_version",
        "wal_level",
        "server_wal_lsn",
        "slot",
        "publication",
        "snapshots",
        "dead_letters",
        "warnings",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert_eq!(v["slot"]["state"], "present");
    assert_eq!(v["slot"]["lag_bytes"], lag);
    assert_eq!(v["slot"]["confirmed_flush_lsn"], confirmed.to_string());
    assert!(v["database"].as_str().unwrap().starts_with("sluice@"));
    assert_eq!(v["snapshots"]["tables"][0]["table"], "public.items → items");
    assert_eq!(v["dead_letters"]["count"], 2);
    let human = render_human(&r);
    assert!(human.contains("2/2 chunks done, 1400 rows"), "{human}");
    assert!(human.contains("dead letters          2"), "{human}");
}

#[tokio::test]
async fn status_of_a_database_without_a_slot_says_so() {
    let db = TestDb::new().await;
    let pg = pg_config_from_url(&db.repl_url());
    let es = sluice::sink::build_client(&es_config()).unwrap();
    let r = gather(&pg, &es, &targets(&db)).await.unwrap();
    assert!(matches!(r.slot, SlotStatus::Missing { .. }));
    assert!(!r.publication.exists);
    assert!(
        r.warnings.iter().any(|w| w.contains("does not exist")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test]
async fn status_names_a_closed_mapped_index_and_the_cluster_health() {
    let db = TestDb::new().await;
    let pg = pg_config_from_url(&db.repl_url());
    let es = sluice::sink::build_client(&es_config()).unwrap();
    let t = targets(&db);
    let index = &t.indices[0];
    let r = gather(&pg, &es, &t).await.unwrap();
    let cluster = r.elasticsearch.cluster.as_ref().expect("cluster health");
    assert!(
        ["green", "yellow"].contains(&cluster.status.as_str()) && cluster.number_of_nodes >= 1,
        "{cluster:?}"
    );
    assert_eq!(r.elasticsearch.indices[0].state, IndexState::Missing);
    assert!(
        !r.warnings.iter().any(|w| w.contains(index.as_str())),
        "{:?}",
        r.warnings
    );

    let helper = Es::new();
    index_docs(&helper, index, &[json!({"id": 1})]).await;
    helper.close(index).await;
    let r = gather(&pg, &es, &t).await.unwrap();
    assert_eq!(
        r.elasticsearch.indices[0].state,
        IndexState::Closed {
            indices: vec![index.clone()]
        }
    );
    let text = render_human(&r);
    assert!(
        text.contains(&format!("index {index} is closed ({index})"))
            && text.contains("holds its changes")
            && text.contains("elasticsearch         cluster "),
        "{text}"
    );
}

async fn exists(db: &TestDb, sql: &str, name: &str) -> bool {
    db.admin.query_opt(sql, &[&name]).await.unwrap().is_some()
}

#[tokio::test]
async fn teardown_refuses_while_the_slot_streams_and_drops_everything_once_idle() {
    let db = TestDb::new().await;
    // Least privilege: the replication role owns the table and creates the
    // publication, so it may drop it too.
    db.sql(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY);
         ALTER TABLE items OWNER TO sluice;
         GRANT CREATE ON DATABASE {} TO sluice;",
        db.name
    ))
    .await;
    let t = targets(&db);
    let repl = connect(&db.repl_url()).await;
    repl.batch_execute(&format!(
        "CREATE PUBLICATION {} FOR TABLE items",
        t.publication
    ))
    .await
    .unwrap();
    create_slot(&db, &t.slot).await;
    put_docs(
        &Es::new(),
        &t.state_index,
        &[(
            format!("initial|{}", t.slot),
            json!({"kind": "initial", "status": "done"}),
        )],
    )
    .await;
    let pg = pg_config_from_url(&db.repl_url());
    let es = sluice::sink::build_client(&es_config()).unwrap();

    let err = teardown(&pg, &es, &t, false).await.unwrap_err();
    assert!(matches!(err, TeardownError::NotConfirmed { .. }), "{err}");
    assert!(err.to_string().contains("--yes-drop-slot"));
    assert_eq!(err.exit_code(), sluice::cli::EXIT_CONFIG);

    let mut holder = hold_slot(&db, &t.slot, &t.publication);
    let pid = wait_until(
        Duration::from_secs(20),
        "pg_recvlogical to hold the slot",
        || async { slot_pid(&db, &t.slot).await },
    )
    .await;
    let err = teardown(&pg, &es, &t, true).await.unwrap_err();
    match &err {
        TeardownError::SlotActive { pid: p, .. } => assert_eq!(*p, pid),
        other => panic!("expected SlotActive, got {other}"),
    }
    assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
    // Nothing was dropped.
    assert!(
        exists(
            &db,
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &t.slot
        )
        .await
    );
    assert!(
        exists(
            &db,
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &t.publication
        )
        .await
    );
    assert_eq!(Es::new().count(&t.state_index).await, 1);

    holder.kill().await.unwrap();
    let _ = holder.wait().await;
    wait_until(
        Duration::from_secs(20),
        "the slot to be released",
        || async { slot_pid(&db, &t.slot).await.is_none().then_some(()) },
    )
    .await;

    let done = teardown(&pg, &es, &t, true).await.expect("teardown");
    assert!(
        done.slot_dropped && done.publication_dropped && done.state_records_deleted == 1,
        "{done:?}"
    );
    assert!(
        !exists(
            &db,
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &t.slot
        )
        .await
    );
    assert!(
        !exists(
            &db,
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &t.publication
        )
        .await
    );
    assert_eq!(Es::new().count(&t.state_index).await, 0);

    // Again: nothing left, nothing to do, no error.
    let again = teardown(&pg, &es, &t, true).await.expect("second teardown");
    assert!(!again.slot_dropped && !again.publication_dropped && again.state_records_deleted == 0);
}

/// Teardown of deployment A deletes A's records from the shared state index
/// and nothing of deployment B's (issue 14, case 8): B's unfinished initial
/// load must still read as unfinished after B restarts.
#[tokio::test]
async fn teardown_of_one_deployment_keeps_the_other_deployments_state_records() {
    let db = TestDb::new().await;
    let a = targets(&db);
    let b_slot = format!("{}_other", a.slot);
    let records = |slot: &str, run: &str, alias: &str| {
        vec![
            (
                format!("initial|{slot}"),
                json!({"kind": "initial", "status": "pending"}),
            ),
            (
                format!("table|public.items|initial:{slot}"),
                json!({"kind": "table", "table": "public.items", "target": format!("initial:{slot}"),
                       "run_id": run, "status": "running"}),
            ),
            (
                format!("chunk|{run}|0"),
                json!({"kind": "chunk", "run_id": run, "chunk": 0, "rows": 10}),
            ),
            (
                format!("chunk|{run}|1"),
                json!({"kind": "chunk", "run_id": run, "chunk": 1, "rows": 10}),
            ),
            (
                format!("reindex|{alias}"),
                json!({"kind": "reindex", "status": "building", "slot": slot, "alias": alias}),
            ),
        ]
    };
    let es = Es::new();
    // The state index as Sluice creates it (its mapping decides what the
    // teardown's searches find).
    sluice::snapshot::StateStore::new(es.client.clone(), a.state_index.clone())
        .ensure()
        .await
        .unwrap();
    let mine = records(&a.slot, "run-a", "alias-a");
    let theirs = records(&b_slot, "run-b", "alias-b");
    put_docs(&es, &a.state_index, &mine).await;
    put_docs(&es, &a.state_index, &theirs).await;
    // A backfill's progress names no slot: nothing says it is A's.
    let backfill = (
        "table|public.items|items".to_string(),
        json!({"kind": "table", "table": "public.items", "target": "items", "run_id": "run-c"}),
    );
    put_docs(&es, &a.state_index, std::slice::from_ref(&backfill)).await;

    let pg = pg_config_from_url(&db.url());
    let client = sluice::sink::build_client(&es_config()).unwrap();
    let done = teardown(&pg, &client, &a, true).await.expect("teardown");
    assert_eq!(done.state_records_deleted, mine.len() as u64, "{done:?}");

    es.refresh(&a.state_index).await;
    let left = es.sources(&a.state_index).await;
    let mut expected: std::collections::BTreeMap<String, Value> = theirs.into_iter().collect();
    expected.insert(backfill.0, backfill.1);
    assert_eq!(left, expected);
}

#[tokio::test]
async fn teardown_drops_nothing_when_it_may_not_drop_the_publication() {
    let db = TestDb::new().await;
    slot_and_publication(&db).await; // publication owned by the superuser
    let t = targets(&db);
    let pg = pg_config_from_url(&db.repl_url());
    let es = sluice::sink::build_client(&es_config()).unwrap();
    let err = teardown(&pg, &es, &t, true).await.unwrap_err();
    assert!(
        matches!(err, TeardownError::PublicationNotOwned { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sluice_admin"), "{err}");
    assert!(
        exists(
            &db,
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &t.slot
        )
        .await
    );
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test]
async fn slot_gauges_follow_the_server_until_shutdown() {
    let db = TestDb::new().await;
    slot_and_publication(&db).await;
    db.sql("INSERT INTO items SELECT g, repeat('y', 200) FROM generate_series(1, 2000) g")
        .await;
    let t = targets(&db);
    let pg = pg_config_from_url(&db.repl_url());
    let es = sluice::sink::build_client(&es_config()).unwrap();
    let before = match gather(&pg, &es, &t).await.unwrap().slot {
        SlotStatus::Present(s) => s.retained_wal_bytes.unwrap(),
        other => panic!("{other:?}"),
    };
    let handle = sluice::ops::metrics::install().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice::app::status::run_slot_gauges(
        pg.clone(),
        t.slot.clone(),
        Duration::from_millis(100),
        async {
            let _ = stopped.await;
        },
    ));
    let seen = wait_until(
        Duration::from_secs(10),
        "the retained-WAL gauge",
        || async {
            gauge(
                &sluice::ops::metrics::render(&handle),
                "sluice_slot_retained_wal_bytes",
            )
            .filter(|v| *v >= before as f64)
        },
    )
    .await;
    // The slot is not consumed, so what it retains only grows.
    let after = match gather(&pg, &es, &t).await.unwrap().slot {
        SlotStatus::Present(s) => s.retained_wal_bytes.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(seen <= after as f64, "gauge {seen} > retained {after}");
    let lag = gauge(
        &sluice::ops::metrics::render(&handle),
        "sluice_replication_lag_bytes",
    )
    .unwrap();
    assert!(lag >= 400_000.0, "lag gauge {lag}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the gauge task stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_status_and_teardown_commands_print_what_they_did() {
    let db = TestDb::new().await;
    let t = targets(&db);
    let pg = pg_config_from_url(&db.url()); // as the superuser, like a DBA
    let json = sluice::app::status::status_command(&pg, &es_config(), &t, true)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["slot"]["state"], "missing");
    slot_and_publication(&db).await;
    let text = sluice::app::status::status_command(&pg, &es_config(), &t, false)
        .await
        .unwrap();
    assert!(
        text.contains(&format!("replication slot      {}", t.slot)),
        "{text}"
    );
    let out = sluice::app::status::teardown_command(&pg, &es_config(), &t, true)
        .await
        .unwrap();
    assert_eq!(
        out,
        format!(
            "dropped replication slot {}\ndropped publication {}\ndeleted 0 record(s) of slot {} \
             from state index {} (other deployments' records stay)\n",
            t.slot, t.publication, t.slot, t.state_index
        )
    );
}

#[tokio::test]
async fn status_still_shows_the_slot_when_elasticsearch_is_down() {
    let db = TestDb::new().await;
    slot_and_publication(&db).await;
    let es = sluice::sink::EsConfig {
        urls: vec![format!("http://127.0.0.1:{}", free_port())],
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let text = sluice::app::status::status_command(
        &pg_config_from_url(&db.repl_url()),
        &es,
        &targets(&db),
        false,
    )
    .await
    .expect("a report despite Elasticsearch");
    assert!(
        text.contains("replication slot      ") && text.contains("inactive"),
        "{text}"
    );
    assert!(
        text.contains("snapshots             unknown: cannot read"),
        "{text}"
    );
    assert!(
        text.contains("warning: Elasticsearch could not be read"),
        "{text}"
    );
}
