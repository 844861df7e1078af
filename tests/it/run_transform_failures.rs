//! Issue 14, cases 4, 9 and 11, through `sluice run`: a row the mapping
//! cannot transform becomes a dead letter and the stream goes on; the
//! unchanged-TOAST re-read reads the table as it is now (a dropped column,
//! an insert re-entering a row filter); a renamed table keeps being indexed.
//! Every test ends with the whole index compared with the whole table, and
//! the whole dead-letter index with what it must hold.

use std::time::Duration;

use serde_json::json;

use crate::support::compare::{assert_index_holds, table_docs};
use crate::support::slot::pending_changes;
use crate::support::sluice::{SNAPSHOT_NEVER, Sluice, SluiceToml, mapping, table_mapping};
use crate::support::{Es, TestDb};

/// Wait until `index` holds exactly `query`'s rows (keyed by `key`) and the
/// dead-letter index exactly `dead_letters` records.
async fn wait_exact(
    db: &TestDb,
    es: &Es,
    sluice: &mut Sluice,
    (index, query, key): (&str, &str, &str),
    (dl_index, dead_letters): (&str, usize),
) {
    let want = table_docs(db, query, &[key]).await;
    assert!(!want.is_empty(), "an empty expectation would prove nothing");
    sluice
        .wait_for(
            Duration::from_secs(180),
            "the index to match the table and the dead letters to be stored",
            async || {
                es.sources(index).await == want && es.sources(dl_index).await.len() == dead_letters
            },
        )
        .await;
    assert_index_holds(es, index, &want, query).await;
}

/// A `sluice run` connecting as the tables' owner, so it creates the
/// publication from the mappings (column lists, row filters).
fn as_owner<N: AsRef<str>>(db: &TestDb, extra: &str, mappings: &[(N, String)]) -> Sluice {
    let config = SluiceToml {
        extra: extra.to_string(),
        ..SluiceToml::as_owner(db)
    };
    Sluice::with_config(&config, mappings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_integer_text_becomes_one_dead_letter_and_the_stream_goes_on() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (index, dl) = (db.index("readings"), db.index("dead-letters"));
    db.sql("CREATE TABLE readings (id bigint PRIMARY KEY, label text, amount text);")
        .await;
    let file = mapping(
        "public.readings",
        &index,
        "include = [\"id\", \"label\"]\n[fields]\namount = { column = \"amount\", convert = \"integer\" }",
    );
    let mut sluice = as_owner(&db, SNAPSHOT_NEVER, &[("readings.toml", file)]);
    sluice.start_streaming(&db).await;
    db.sql(
        "INSERT INTO readings SELECT g, 'r' || g, (g * 10)::text FROM generate_series(1, 20) g;
         UPDATE readings SET amount = 'seven' WHERE id = 7;
         INSERT INTO readings SELECT g, 'r' || g, (g * 10)::text FROM generate_series(21, 30) g;",
    )
    .await;
    // Row 7's insert was indexed; its update is the dead letter, so the
    // document keeps the last state that could be transformed.
    let query = "SELECT id, label, CASE WHEN id = 7 THEN 70 ELSE amount::bigint END AS amount FROM readings";
    wait_exact(&db, &es, &mut sluice, (&index, query, "id"), (&dl, 1)).await;

    let letters = es.sources(&dl).await;
    let record = letters.values().next().unwrap();
    assert_eq!(record["stage"], "transform");
    assert_eq!(record["mapping"], "readings");
    assert_eq!(record["table"], "public.readings");
    assert_eq!(record["change"], "update");
    assert_eq!(record["key"], "{\"id\":7}");
    assert_eq!(record["error"]["type"], "convert");
    assert!(
        record["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("amount"),
        "{record}"
    );
    assert_eq!(
        record["row"],
        json!({"id": 7, "label": "r7", "amount": "seven"})
    );
    assert!(record["lsn"].as_str().unwrap().contains('/'), "{record}");

    // The dead letter is durable and confirmed: a clean stop leaves nothing
    // to replay, and a restart neither stops on the row nor stores it twice.
    sluice.stop_cleanly();
    assert_eq!(
        pending_changes(&db, &db.slot()).await,
        0,
        "the slot passed the bad row"
    );
    sluice.start_streaming(&db).await;
    db.sql("INSERT INTO readings VALUES (31, 'r31', '310')")
        .await;
    wait_exact(&db, &es, &mut sluice, (&index, query, "id"), (&dl, 1)).await;
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_id_column_becomes_a_dead_letter_and_the_stream_goes_on() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (index, dl) = (db.index("parts"), db.index("dead-letters"));
    db.sql(
        "CREATE TABLE parts (n bigint PRIMARY KEY, code text, name text);
         ALTER TABLE parts REPLICA IDENTITY FULL;
         CREATE PUBLICATION sluice FOR TABLE parts;",
    )
    .await;
    let mut sluice = Sluice::new(
        &db,
        SNAPSHOT_NEVER,
        &[(
            "parts.toml",
            mapping("public.parts", &index, "id = [\"code\"]"),
        )],
    );
    sluice.start_streaming(&db).await;
    db.sql(
        "INSERT INTO parts SELECT g, CASE WHEN g = 4 THEN NULL ELSE 'c' || g END, 'part ' || g
           FROM generate_series(1, 10) g;
         INSERT INTO parts VALUES (11, 'c11', 'after the bad row');",
    )
    .await;
    let query = "SELECT * FROM parts WHERE code IS NOT NULL";
    wait_exact(&db, &es, &mut sluice, (&index, query, "code"), (&dl, 1)).await;
    let letters = es.sources(&dl).await;
    let record = letters.values().next().unwrap();
    assert_eq!(record["error"]["type"], "null_id", "{record}");
    assert_eq!(record["change"], "insert");
    assert_eq!(record["key"], "{\"code\":null}");
    assert_eq!(
        record["row"],
        json!({"n": 4, "code": null, "name": "part 4"})
    );
    sluice.stop_cleanly();
    assert_eq!(pending_changes(&db, &db.slot()).await, 0);
}

/// 20 kB of incompressible text, stored out of line: an update of another
/// column (or an insert re-entering a filter) sends it as "unchanged".
const BIG: &str = "(SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 640) i)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_before_the_backlog_drains_does_not_break_the_toast_re_read() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("docs");
    db.sql(&format!(
        "CREATE TABLE docs (id bigint PRIMARY KEY, body text, n int, extra int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE PUBLICATION sluice FOR TABLE docs;
         INSERT INTO docs SELECT g, {BIG}, 0, g FROM generate_series(1, 10) g;"
    ))
    .await;
    let mut sluice = Sluice::new(&db, "", &[table_mapping("docs", &index)]);
    sluice.start();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM docs")
        .await;
    sluice.stop_cleanly();

    // While Sluice is down: updates whose re-read finds a column gone.
    db.sql(
        "UPDATE docs SET n = n + 1;
         ALTER TABLE docs DROP COLUMN extra;
         UPDATE docs SET n = n + 1;",
    )
    .await;
    sluice.start();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM docs")
        .await;
    let docs = es.sources(&index).await;
    assert!(
        docs.values()
            .all(|d| d["body"].as_str().is_some_and(|b| b.len() == 640 * 32) && d["n"] == 2),
        "every body whole, every row at its last update"
    );
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_while_streaming_keeps_being_indexed() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("items");
    db.sql(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, body text);
         ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE PUBLICATION sluice FOR TABLE items;
         INSERT INTO items SELECT g, 'item ' || g, {BIG} FROM generate_series(1, 10) g;"
    ))
    .await;
    let mut sluice = Sluice::new(&db, "", &[table_mapping("items", &index)]);
    sluice.start();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM items")
        .await;
    // After the rename: inserts, and updates whose re-read must find the
    // table under its new name.
    db.sql(&format!(
        "ALTER TABLE items RENAME TO goods;
         INSERT INTO goods SELECT g, 'item ' || g, {BIG} FROM generate_series(11, 20) g;
         UPDATE goods SET name = 'renamed ' || id WHERE id % 2 = 0;
         DELETE FROM goods WHERE id = 3;"
    ))
    .await;
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM goods")
        .await;
    assert!(
        sluice
            .log_text()
            .contains("following it by its relation id"),
        "the rename is reported\n{}",
        sluice.log_text()
    );
    sluice.stop_cleanly();

    // Renamed again while Sluice is down, after updates that need a
    // re-read: the backlog's Relation messages carry the name `goods`.
    db.sql(
        "UPDATE goods SET name = 'while down ' || id WHERE id <= 5;
         ALTER TABLE goods RENAME TO wares;",
    )
    .await;
    // With the mapping still naming the old table, start-up stops with an
    // error naming it, never streaming past its changes.
    sluice.start();
    let code = sluice.wait_for_exit(Duration::from_secs(60)).await;
    assert_ne!(code, 0, "{}", sluice.log_text());
    assert!(sluice.log_text().contains("public.goods"));
    assert!(
        pending_changes(&db, &db.slot()).await > 0,
        "nothing was confirmed"
    );
    // With the mapping naming the table as it is now, the backlog (named
    // `goods`, re-read from `wares`) is indexed.
    sluice.write_mapping("items.toml", &mapping("public.wares", &index, ""));
    sluice.start();
    sluice
        .wait_converged(&db, &es, &index, "SELECT * FROM wares")
        .await;
    sluice.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_re_entering_a_row_filter_with_an_unchanged_toast_value_is_indexed_whole() {
    let db = TestDb::new().await;
    let es = Es::new();
    let index = db.index("t");
    db.sql(
        "CREATE TABLE t (id bigint PRIMARY KEY, body text, n int);
         ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO t SELECT g, repeat(md5(g::text), 625), g FROM generate_series(1, 5) g;",
    )
    .await;
    let mut sluice = as_owner(
        &db,
        "",
        &[(
            "t.toml",
            mapping("public.t", &index, "filter = \"id < 1000\""),
        )],
    );
    sluice.start();
    let query = "SELECT * FROM t WHERE id < 1000";
    sluice.wait_converged(&db, &es, &index, query).await;
    // Leaves the filter (a delete), then re-enters it: PostgreSQL sends an
    // insert whose `body` is "unchanged", having no old row to take it from.
    db.sql(
        "UPDATE t SET id = 5000 WHERE id = 1;
         UPDATE t SET id = 1 WHERE id = 5000;
         UPDATE t SET n = n + 1 WHERE id = 2;",
    )
    .await;
    sluice.wait_converged(&db, &es, &index, query).await;
    let docs = es.sources(&index).await;
    assert_eq!(docs.len(), 5);
    assert_eq!(docs["1"]["body"].as_str().map(str::len), Some(20_000));
    sluice.stop_cleanly();
}
