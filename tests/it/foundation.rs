//! The two facts the whole design rests on, checked against the real servers:
//! PostgreSQL hands out logical changes through a pgoutput slot, and
//! Elasticsearch refuses a write whose external version is older.

use std::time::Duration;

use elasticsearch::params::VersionType;
use elasticsearch::{GetParts, IndexParts};
use serde_json::json;

use crate::support::{Es, TestDb, connect, wait_until};

#[tokio::test]
async fn the_replication_role_can_create_a_pgoutput_slot_that_sees_committed_rows() {
    let db = TestDb::new().await;
    db.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text);
         CREATE PUBLICATION sluice_pub FOR TABLE items;",
    )
    .await;

    let repl = connect(&db.repl_url()).await;
    let wal_level: String = repl.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal_level, "logical");
    let is_superuser: bool = repl
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !is_superuser,
        "the replication role must not be a superuser"
    );

    repl.execute(
        "SELECT pg_create_logical_replication_slot('sluice_slot', 'pgoutput')",
        &[],
    )
    .await
    .expect("the REPLICATION role creates a logical slot");
    let plugin: String = repl
        .query_one(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = 'sluice_slot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plugin, "pgoutput");

    db.sql("INSERT INTO items VALUES (1, 'first')").await;

    // pgoutput's binary messages: B(egin), R(elation), I(nsert), C(ommit).
    let kinds = wait_until(
        Duration::from_secs(10),
        "the insert to reach the slot",
        || async {
            let rows = repl
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('sluice_slot', NULL, NULL,
                   'proto_version', '1', 'publication_names', 'sluice_pub')",
                &[],
            )
            .await
            .unwrap();
            let kinds: String = rows
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0)[0] as char)
                .collect();
            kinds.contains('I').then_some(kinds)
        },
    )
    .await;
    assert_eq!(kinds, "BRIC");

    let rows = repl
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('sluice_slot', NULL, NULL,
               'proto_version', '1', 'publication_names', 'sluice_pub')",
            &[],
        )
        .await
        .unwrap();
    let insert: Vec<u8> = rows[2].get(0);
    let text = String::from_utf8_lossy(&insert);
    assert!(
        text.contains("first"),
        "the insert carries the new row: {text:?}"
    );
}

#[tokio::test]
async fn elasticsearch_refuses_an_older_external_version_with_409() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("versions");

    let write = |version: i64, name: &'static str| {
        es.client
            .index(IndexParts::IndexId(&index, "1"))
            .version(version)
            .version_type(VersionType::ExternalGte)
            .body(json!({ "name": name }))
            .send()
    };

    assert_eq!(write(10, "ten").await.unwrap().status_code().as_u16(), 201);
    assert_eq!(
        write(5, "five").await.unwrap().status_code().as_u16(),
        409,
        "older version is refused"
    );
    assert_eq!(
        write(10, "ten again").await.unwrap().status_code().as_u16(),
        200,
        "equal version is accepted (gte)"
    );

    let got: serde_json::Value = es
        .client
        .get(GetParts::IndexId(&index, "1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["_version"], 10);
    assert_eq!(got["_source"]["name"], "ten again");
}
