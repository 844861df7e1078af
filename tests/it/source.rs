//! The WAL reader against the real PostgreSQL: the replication connection
//! (SCRAM as the non-superuser role, TLS), replication commands, updates and
//! deletes with and without REPLICA IDENTITY FULL, a primary-key change,
//! ALTER TABLE mid-stream and reconnects. Value types: `source_types`.

use std::time::Duration;

use serde_json::json;
use sluice::Lsn;
use sluice::model::PublishedTable;
use sluice::model::{Change, ChangeKind, Datum, OldRow, RetryPolicy, SourceEvent};
use sluice::source::{
    ReaderConfig, ReplicationConnection, SnapshotAction, SourceError, SslMode, connect_sql,
    ensure_publication, run_reader,
};
use tokio::sync::{mpsc, watch};

use crate::support::reader::{
    Reader, admin_config, by_name, new_row, published_slot, repl_config, stream,
};
use crate::support::slot::{confirmed_flush, slot_pid};
use crate::support::{TestDb, services, unique_name, wait_until};

#[tokio::test]
async fn the_replication_role_authenticates_with_scram_identifies_the_system_and_creates_an_exported_slot()
 {
    let db = TestDb::new().await;
    let mut conn = ReplicationConnection::connect(&repl_config(&db))
        .await
        .unwrap();
    let sys = conn.identify_system().await.unwrap();
    assert_eq!(sys.dbname.as_deref(), Some(db.name.as_str()));
    assert!(sys.xlogpos > Lsn::ZERO);
    let slot = unique_name("slot");
    let created = conn
        .create_slot(&slot, true, SnapshotAction::Export)
        .await
        .unwrap();
    assert_eq!(created.slot_name, slot);
    assert!(created.consistent_point >= sys.xlogpos);
    let snap = created.snapshot_name.expect("an exported snapshot name");
    // The snapshot is importable from another session while this connection stays open.
    db.admin
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'; COMMIT;"
        ))
        .await
        .expect("the exported snapshot can be imported");

    // The Unix socket is tested on a private cluster (source_tls), whose
    // socket directory is known; the shared server's may be elsewhere.

    let mut bad = repl_config(&db);
    bad.password = Some("wrong".into());
    let err = ReplicationConnection::connect(&bad)
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password never appears in errors: {err}"
    );
}

#[tokio::test]
async fn create_replication_slot_without_a_snapshot_or_using_it_in_the_open_transaction() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    db.sql("GRANT SELECT ON t TO sluice").await;
    let mut conn = ReplicationConnection::connect(&repl_config(&db))
        .await
        .unwrap();
    let slot = unique_name("slot");
    let created = conn
        .create_slot(&slot, true, SnapshotAction::NoExport)
        .await
        .unwrap();
    assert_eq!(created.snapshot_name, None);
    assert!(created.consistent_point > Lsn::ZERO);

    // USE_SNAPSHOT: the slot's snapshot becomes the one of the transaction
    // this replication connection has open.
    let mut conn = ReplicationConnection::connect(&repl_config(&db))
        .await
        .unwrap();
    conn.simple_query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let slot = unique_name("slot");
    let created = conn
        .create_slot(&slot, true, SnapshotAction::Use)
        .await
        .unwrap();
    assert_eq!(created.snapshot_name, None);
    db.sql("INSERT INTO t VALUES (2)").await;
    let rows = conn
        .simple_query("SELECT count(*) AS n FROM t")
        .await
        .unwrap();
    assert_eq!(rows.first("n"), Some("1"), "row 2 came after the snapshot");
    conn.simple_query("COMMIT").await.unwrap();
    let rows = conn
        .simple_query("SELECT count(*) AS n FROM t")
        .await
        .unwrap();
    assert_eq!(rows.first("n"), Some("2"));
}

#[tokio::test]
async fn updates_carry_old_rows_per_replica_identity_and_a_key_change_carries_the_old_key() {
    let db = TestDb::new().await;
    db.sql(
        "CREATE TABLE plain (id int PRIMARY KEY, v text, big text);
         CREATE TABLE full_ (id int PRIMARY KEY, v text);
         ALTER TABLE full_ REPLICA IDENTITY FULL;
         INSERT INTO plain VALUES (1, 'a', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 5000) g));
         INSERT INTO full_ VALUES (1, 'a');",
    )
    .await;
    let (mut reader, _slot) = stream(&db, &["plain", "full_"]).await;
    db.sql(
        "UPDATE plain SET v = 'b' WHERE id = 1;
         UPDATE full_ SET v = 'b' WHERE id = 1;
         UPDATE plain SET id = 2 WHERE id = 1;
         DELETE FROM plain WHERE id = 2;
         DELETE FROM full_ WHERE id = 1;",
    )
    .await;
    let ch = reader.changes(5).await;
    // Without FULL: no old row, and the big TOASTed value is marked unchanged, never null.
    assert_eq!(
        ch[0].kind,
        ChangeKind::Update {
            old: None,
            new: vec![
                Datum::Value(json!(1)),
                Datum::Value(json!("b")),
                Datum::Unchanged
            ]
        }
    );
    // FULL: the whole old row.
    assert_eq!(
        ch[1].kind,
        ChangeKind::Update {
            old: Some(OldRow::Full(vec![
                Datum::Value(json!(1)),
                Datum::Value(json!("a"))
            ])),
            new: vec![Datum::Value(json!(1)), Datum::Value(json!("b"))]
        }
    );
    // Primary key change: the old key comes along.
    match &ch[2].kind {
        ChangeKind::Update {
            old: Some(OldRow::Key(old)),
            new,
        } => {
            assert_eq!(old[0], Datum::Value(json!(1)));
            assert_eq!(new[0], Datum::Value(json!(2)));
        }
        other => panic!("expected an update with the old key, got {other:?}"),
    }
    assert!(
        matches!(&ch[3].kind, ChangeKind::Delete { old: OldRow::Key(k) } if k[0] == Datum::Value(json!(2)) && k[1] == Datum::Null)
    );
    assert!(
        matches!(&ch[4].kind, ChangeKind::Delete { old: OldRow::Full(r) } if r[1] == Datum::Value(json!("b")))
    );
    // One batch is one implicit transaction: one version for all five.
    assert!(ch.windows(2).all(|w| w[0].version == w[1].version));
    reader.stop().await.unwrap();
}

#[tokio::test]
async fn alter_table_mid_stream_changes_how_later_rows_decode_and_versions_are_commit_lsns() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE t (id int PRIMARY KEY, n int, gone text)")
        .await;
    let (mut reader, _slot) = stream(&db, &["t"]).await;
    db.sql("BEGIN; INSERT INTO t VALUES (1, 5, 'x'); INSERT INTO t VALUES (2, 6, 'y'); COMMIT;")
        .await;
    db.sql(
        "ALTER TABLE t ADD COLUMN added bool DEFAULT true;
         ALTER TABLE t DROP COLUMN gone;
         ALTER TABLE t RENAME COLUMN n TO label;
         ALTER TABLE t ALTER COLUMN label TYPE text;",
    )
    .await;
    db.sql("INSERT INTO t VALUES (3, 'seven', false)").await;
    db.sql("TRUNCATE t").await;
    let mut events = Vec::new();
    loop {
        let ev = reader.next(Duration::from_secs(30)).await;
        let done = matches!(&ev, SourceEvent::Change(c) if c.kind == ChangeKind::Truncate);
        events.push(ev);
        if done {
            break;
        }
    }
    let SourceEvent::Begin { final_lsn, .. } = events
        .iter()
        .find(|e| matches!(e, SourceEvent::Begin { .. }))
        .unwrap()
    else {
        unreachable!()
    };
    let changes: Vec<&Change> = events
        .iter()
        .filter_map(|e| {
            if let SourceEvent::Change(c) = e {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(changes[0].version, *final_lsn);
    assert_eq!(
        changes[1].version, *final_lsn,
        "one transaction, one version"
    );
    let commit_lsn = events
        .iter()
        .find_map(|e| {
            if let SourceEvent::Commit { commit_lsn, .. } = e {
                Some(*commit_lsn)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(
        commit_lsn, *final_lsn,
        "Begin's final_lsn is the commit LSN"
    );
    assert_eq!(
        by_name(changes[0], new_row(changes[0])),
        json!({"id": 1, "n": 5, "gone": "x"})
            .as_object()
            .unwrap()
            .clone()
    );
    assert_eq!(
        by_name(changes[2], new_row(changes[2])),
        json!({"id": 3, "label": "seven", "added": false})
            .as_object()
            .unwrap()
            .clone()
    );
    assert_eq!(changes[3].kind, ChangeKind::Truncate);
    reader.stop().await.unwrap();
}

#[tokio::test]
async fn tls_verify_full_accepts_the_test_ca_for_localhost_and_127_0_0_1_and_a_wrong_ca_is_refused()
{
    let db = TestDb::new().await;
    for host in ["localhost", "127.0.0.1"] {
        let mut cfg = repl_config(&db);
        cfg.host = host.into();
        cfg.sslmode = SslMode::VerifyFull;
        cfg.ssl_root_cert = Some(services().pg_ca.clone().into());
        let mut conn = ReplicationConnection::connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        conn.identify_system().await.unwrap();
        let sql = connect_sql(&cfg)
            .await
            .unwrap_or_else(|e| panic!("SQL verify-full to {host}: {e}"));
        let ssl: bool = sql
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "the SQL connection is encrypted");
    }

    // A CA generated here never signed the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.crt");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not-the-ca",
        ])
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(&ca)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let mut cfg = repl_config(&db);
    cfg.sslmode = SslMode::VerifyFull;
    cfg.ssl_root_cert = Some(ca);
    let err = ReplicationConnection::connect(&cfg)
        .await
        .err()
        .expect("a wrong CA is refused");
    assert!(matches!(err, SourceError::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("certificate"),
        "the error says why: {err}"
    );
    let err = connect_sql(&cfg)
        .await
        .expect_err("SQL with a wrong CA is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // require: encrypted without checking.
    let mut cfg = repl_config(&db);
    cfg.sslmode = SslMode::Require;
    ReplicationConnection::connect(&cfg)
        .await
        .unwrap()
        .identify_system()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_keepalive_is_forwarded_while_idle_and_confirmed_flush_reaches_the_slot() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut cfg = published_slot(&db, &["t"]).await;
    cfg.status_interval = Duration::from_millis(200);
    let slot = cfg.slot.clone();
    let mut reader = Reader::start(cfg, 16);
    db.sql("INSERT INTO t VALUES (1)").await;
    let end = reader.next_commit().await;
    // Idle after the commit: the server's keepalives come through as events.
    let wal_end = loop {
        if let SourceEvent::Keepalive { wal_end } = reader.next(Duration::from_secs(40)).await {
            break wal_end;
        }
    };
    assert!(wal_end >= end);
    reader.flushed.send(end).unwrap();
    let confirmed = wait_until(
        Duration::from_secs(20),
        "the slot to confirm the flushed LSN",
        || async {
            let lsn = confirmed_flush(&db, &slot).await;
            (lsn >= end).then_some(lsn)
        },
    )
    .await;
    assert!(confirmed >= end);
    reader.stop().await.unwrap();
}

#[tokio::test]
async fn a_killed_connection_reconnects_with_backoff_and_resumes_after_the_confirmed_position() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut cfg = published_slot(&db, &["t"]).await;
    let slot = cfg.slot.clone();
    cfg.reconnect =
        RetryPolicy::RECONNECT.between(Duration::from_millis(50), Duration::from_millis(500));
    cfg.status_interval = Duration::from_millis(100);
    let mut reader = Reader::start(cfg, 1024);

    // Transactions 1..=5 arrive and 1..=3 are confirmed; 4 and 5 are not.
    for i in 1..=5 {
        db.sql(&format!("INSERT INTO t VALUES ({i})")).await;
    }
    let mut commits = Vec::new();
    while commits.len() < 5 {
        commits.push(reader.next_commit().await);
    }
    reader.flushed.send(commits[2]).unwrap();
    let first = crate::support::wait_until(Duration::from_secs(20), "the slot to confirm", || async {
        let row = db
            .admin
            .query_one(
                "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        let lsn: Lsn = row.get::<_, String>(0).parse().unwrap();
        (lsn >= commits[2]).then(|| row.get::<_, Option<i32>>(1)).flatten()
    })
    .await;

    // Cut the connection; the reader reconnects by itself.
    db.admin
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    db.sql("INSERT INTO t VALUES (6)").await;
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    while !ids.contains(&6) {
        if let SourceEvent::Change(c) = reader.next(Duration::from_secs(30)).await {
            versions.push(c.version);
            match &new_row(&c)[0] {
                Datum::Value(v) => ids.push(v.as_i64().unwrap()),
                other => panic!("id is {other:?}"),
            }
        }
    }
    let now = slot_pid(&db, &slot).await;
    assert!(
        now.is_some() && now != Some(first),
        "a new walsender serves the slot"
    );
    // Everything after the confirmed position comes again (4 and 5 were
    // never confirmed), nothing confirmed before it is resent.
    assert_eq!(&ids[ids.len() - 3..], [4, 5, 6]);
    assert!(
        !ids.contains(&1) && !ids.contains(&2) && !ids.contains(&3),
        "{ids:?}"
    );
    assert!(versions.iter().all(|v| *v >= commits[2]));
    reader.stop().await.unwrap();
}

#[tokio::test]
async fn a_slot_created_with_an_exported_snapshot_hands_its_connection_to_the_reader() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    let admin = connect_sql(&admin_config(&db)).await.unwrap();
    ensure_publication(&admin, "sluice_pub", &[PublishedTable::new("public", "t")])
        .await
        .unwrap();
    let mut conn = ReplicationConnection::connect(&repl_config(&db))
        .await
        .unwrap();
    let slot = unique_name("slot");
    let created = conn
        .create_slot(&slot, false, SnapshotAction::Export)
        .await
        .unwrap();
    db.sql("INSERT INTO t VALUES (2)").await;
    // The snapshot sees exactly what committed before the consistent point.
    let snap_reader = connect_sql(&repl_config(&db)).await.unwrap();
    let ids: Vec<i32> = {
        snap_reader
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}';",
                created.snapshot_name.clone().unwrap()
            ))
            .await
            .unwrap();
        let rows = snap_reader
            .query("SELECT id FROM t ORDER BY id", &[])
            .await
            .unwrap();
        snap_reader.batch_execute("COMMIT").await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    assert_eq!(ids, [1]);
    db.sql("SELECT pg_logical_emit_message(false, 'sluice.test', 'hello')")
        .await;

    // Then the same connection starts streaming: row 2 and the message arrive.
    let (tx, mut rx) = mpsc::channel(16);
    let (_flushed, flushed_rx) = watch::channel(Lsn::ZERO);
    let (stop, stop_rx) = watch::channel(false);
    let cfg = ReaderConfig::new(repl_config(&db), slot.clone(), vec!["sluice_pub".into()]);
    let handle = tokio::spawn(run_reader(cfg, Some(conn), tx, flushed_rx, stop_rx));
    let mut got_row = None;
    let mut got_message = false;
    while got_row.is_none() || !got_message {
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("events arrive")
            .expect("the reader runs");
        match ev {
            SourceEvent::Change(c) => {
                assert!(c.version >= created.consistent_point);
                got_row = Some(new_row(&c)[0].clone());
            }
            SourceEvent::Message {
                prefix,
                content,
                transactional,
                ..
            } => {
                assert_eq!(
                    (prefix.as_str(), content.as_slice(), transactional),
                    ("sluice.test", &b"hello"[..], false)
                );
                got_message = true;
            }
            _ => {}
        }
    }
    assert_eq!(got_row, Some(Datum::Value(json!(2))));
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}
