use serde_json::json;

use super::*;
use crate::source::sql::quote_ident;

#[test]
fn snapshot_documents_fold_into_one_line_per_table_and_target() {
    let docs = vec![
        json!({"kind": "table", "table": "public.a", "target": "a", "run_id": "r2", "status": "running",
               "plan": [1, 2, 3], "started_at": "2026-01-01T00:00:00Z"}),
        json!({"kind": "chunk", "run_id": "r2", "table": "public.a", "rows": 10, "done_at": "2026-01-01T00:00:01Z"}),
        json!({"kind": "chunk", "run_id": "r2", "table": "public.a", "rows": 3, "done_at": "2026-01-01T00:00:02Z"}),
        json!({"kind": "chunk", "run_id": "r1", "table": "public.a", "rows": 99}),
        json!({"kind": "table", "table": "public.b", "target": "b", "run_id": "r3", "status": "done",
               "plan": [1], "finished_at": "2026-01-02T00:00:00Z"}),
        json!({"kind": "chunk", "run_id": "r3", "table": "public.b", "rows": 7}),
        json!({"kind": "initial", "status": "done"}),
        json!({"chunk": 4}),
    ];
    let (tables, unrecognized) = summarize_snapshot_docs(&docs);
    assert_eq!(unrecognized, 1);
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[0].table, "public.a → a");
    assert_eq!(
        (tables[0].chunks, tables[0].chunks_done, tables[0].rows),
        (3, 2, 13)
    );
    assert_eq!(
        tables[0].last_update.as_deref(),
        Some("2026-01-01T00:00:02Z")
    );
    assert_eq!(tables[0].states["running"], 1);
    assert_eq!(
        (tables[1].chunks, tables[1].chunks_done, tables[1].rows),
        (1, 1, 7)
    );
}

#[test]
fn bytes_read_like_a_person_would_say_them() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(16 * 1024 * 1024), "16.0 MiB");
}

#[test]
fn identifiers_are_quoted_for_sql() {
    assert_eq!(quote_ident("sluice_pub"), "\"sluice_pub\"");
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}

fn report(slot: SlotStatus) -> StatusReport {
    StatusReport {
        database: "sluice@db:5432/app".into(),
        server_version: "15.8".into(),
        wal_level: "logical".into(),
        in_recovery: false,
        server_wal_lsn: Lsn(0x1_0000_0000),
        slot,
        publication: PublicationStatus {
            name: "sluice_pub".into(),
            exists: true,
            owner: Some("app".into()),
            all_tables: false,
            tables: vec!["public.items".into()],
        },
        snapshots: SnapshotStatus::NoneRecorded {
            index: "sluice-state".into(),
        },
        dead_letters: DeadLetterStatus {
            index: "sluice-dead-letters".into(),
            count: None,
            error: None,
        },
        elasticsearch: Default::default(),
        warnings: vec![],
    }
}

fn slot_info(active: bool) -> SlotInfo {
    SlotInfo {
        name: "sluice_slot".into(),
        slot_type: "logical".into(),
        plugin: Some("pgoutput".into()),
        database: Some("app".into()),
        active,
        active_pid: active.then_some(4242),
        active_application: active.then(|| "sluice".into()),
        confirmed_flush_lsn: Some(Lsn(0xFFFF_0000)),
        restart_lsn: Some(Lsn(0xFF00_0000)),
        lag_bytes: Some(0x1_0000),
        retained_wal_bytes: Some(0x100_0000),
        wal_status: Some("reserved".into()),
        safe_wal_size: None,
        standbys: vec![],
    }
}

#[test]
fn standbys_show_in_text_and_json_with_the_pid_holding_the_slot() {
    let mut slot = slot_info(true);
    slot.standbys = vec![StandbyInfo::new(5151, Some(4242))];
    let r = report(SlotStatus::Present(Box::new(slot)));
    let text = render_human(&r);
    assert!(
        text.contains("standby               pid 5151: standby, slot held by pid 4242"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(
        json["slot"]["standbys"],
        serde_json::json!([{"pid": 5151, "slot_held_by": 4242, "state": "standby, slot held by pid 4242"}])
    );
}

#[test]
fn the_human_report_names_slot_holder_lag_and_retained_wal() {
    let r = report(SlotStatus::Present(Box::new(slot_info(true))));
    let text = render_human(&r);
    assert!(text.contains("active, pid 4242 (sluice)"), "{text}");
    assert!(text.contains("lag                   64.0 KiB"), "{text}");
    assert!(
        text.contains("retained WAL          16.0 MiB (wal_status reserved)"),
        "{text}"
    );
    assert!(text.contains("confirmed flush LSN   0/FFFF0000"), "{text}");
    assert!(text.contains("no snapshot recorded"), "{text}");
}

#[test]
fn the_json_report_prints_lsns_as_postgres_does() {
    let r = report(SlotStatus::Present(Box::new(slot_info(false))));
    let v: Value = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(v["server_wal_lsn"], "1/0");
    assert_eq!(v["slot"]["state"], "present");
    assert_eq!(v["slot"]["confirmed_flush_lsn"], "0/FFFF0000");
    assert_eq!(v["slot"]["lag_bytes"], 65536);
    assert_eq!(v["snapshots"]["state"], "none_recorded");
    assert_eq!(v["dead_letters"]["count"], Value::Null);
}

#[test]
fn an_idle_slot_and_a_missing_publication_are_warned_about() {
    let mut r = report(SlotStatus::Present(Box::new(slot_info(false))));
    r.publication.exists = false;
    let w = warnings(&r, "app");
    assert!(w.iter().any(|w| w.contains("not in use")), "{w:?}");
    assert!(
        w.iter()
            .any(|w| w.contains("publication sluice_pub does not exist")),
        "{w:?}"
    );
    let r = report(SlotStatus::Present(Box::new(slot_info(true))));
    assert!(warnings(&r, "app").is_empty());
    assert!(
        warnings(&r, "other")
            .iter()
            .any(|w| w.contains("belongs to database app"))
    );
}

#[test]
fn reindexes_are_listed_newest_first_with_what_the_stream_does() {
    let docs = vec![
        serde_json::json!({"kind": "reindex", "alias": "orders", "build_index": "orders-20261101000000",
            "status": "swapped", "dual_write_from": "0/10", "started_at": "2026-11-01T00:00:00Z"}),
        serde_json::json!({"kind": "reindex", "alias": "orders", "build_index": "orders-20261123000000",
            "status": "building", "dual_write_from": "1/A0", "slot": "sluice",
            "started_at": "2026-11-23T00:00:00Z"}),
        serde_json::json!({"kind": "reindex", "alias": "users", "build_index": "users-20261122000000",
            "status": "building", "started_at": "2026-11-22T00:00:00Z"}),
        serde_json::json!({"kind": "table", "table": "public.orders", "run_id": "r"}),
    ];
    let r = summarize_reindex_docs(&docs);
    let names: Vec<&str> = r.iter().map(|r| r.build_index.as_str()).collect();
    assert_eq!(
        names,
        [
            "orders-20261123000000",
            "users-20261122000000",
            "orders-20261101000000"
        ]
    );
    assert_eq!(r[0].slot.as_deref(), Some("sluice"));

    let mut report = report(SlotStatus::Present(Box::new(slot_info(true))));
    report.snapshots = SnapshotStatus::Recorded {
        index: "sluice-state".into(),
        tables: vec![],
        unrecognized_documents: 0,
        truncated: false,
        reindexes: r,
    };
    let text = render_human(&report);
    assert!(
        text.contains("orders → orders-20261123000000: building, stream dual-writes from 1/A0"),
        "{text}"
    );
    assert!(
        text.contains(
            "users → users-20261122000000: building, waiting for `sluice run` to dual-write"
        ),
        "{text}"
    );
    assert!(
        text.contains("orders → orders-20261101000000: swapped, started"),
        "{text}"
    );
}
