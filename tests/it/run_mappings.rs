//! Mapping features end to end through `sluice run` against the real
//! servers: a row filter pushed into the publication and the snapshot's
//! WHERE, updates moving rows into and out of it, a soft-delete column, one
//! table feeding several indices (one templated by a column, so a changed
//! value moves the document), and two tables sharing one index.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::compare::docs_diff;
use crate::support::sluice::{Sluice, SluiceToml, metric_sum, shipped_mappings};
use crate::support::{DEMO_SCHEMA, Es, TestDb};

/// The documents a query says an index should hold: `_id` → `doc`.
async fn expected(db: &TestDb, query: &str) -> BTreeMap<String, Value> {
    db.json_rows(query)
        .await
        .into_iter()
        .map(|row| {
            let id = row["_id"].as_str().expect("text _id").to_string();
            (id, row["doc"].clone())
        })
        .collect()
}

/// `None` when every index holds exactly its query's documents, otherwise
/// what differs first.
async fn mismatch(db: &TestDb, es: &Es, wanted: &[(String, String)]) -> Option<String> {
    for (index, query) in wanted {
        let want = expected(db, query).await;
        if let Some(diff) = docs_diff(&want, &es.sources(index).await) {
            return Some(format!("{index}: {diff}"));
        }
    }
    None
}

async fn wait_matching(db: &TestDb, es: &Es, sluice: &mut Sluice, wanted: &[(String, String)]) {
    for (index, query) in wanted {
        assert!(
            !expected(db, query).await.is_empty(),
            "{index}: an empty expectation would prove nothing"
        );
    }
    let mut last = None;
    let waited = tokio::time::timeout(
        // Generous: a loaded 2-core machine has been seen to take over 90 s.
        Duration::from_secs(180),
        sluice.wait_for(
            Duration::from_secs(3600),
            "every index to match its query",
            async || {
                last = mismatch(db, es, wanted).await;
                last.is_none()
            },
        ),
    )
    .await;
    if waited.is_err() {
        panic!(
            "timed out waiting for the indices to match: {}\n{}",
            last.unwrap_or_default(),
            sluice.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_soft_deletes_and_several_indices_per_table_stay_exact_through_snapshot_and_stream()
{
    let db = TestDb::new().await;
    let es = Es::new();
    // The filter reads a non-key column: PostgreSQL needs the full old row
    // to decide whether an update leaves the filter.
    db.sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric(12,2), deleted_at timestamptz);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         CREATE TABLE customers (id bigint PRIMARY KEY, name text);
         INSERT INTO orders SELECT g, (ARRAY['draft','placed','shipped','cancelled'])[g % 4 + 1], g + 0.25, NULL
           FROM generate_series(1, 120) g;
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 20) g;",
    )
    .await;
    let (orders, by_status, search) = (
        db.index("orders"),
        db.index("orders-{status}"),
        db.index("search"),
    );
    let filter = "filter = \"status <> 'draft'\"\n";
    let mappings = [
        (
            "orders.toml",
            format!(
                "table = \"public.orders\"\nindex = \"{orders}\"\n{filter}soft_delete_column = \"deleted_at\"\nexclude = [\"deleted_at\"]\n[fields]\ntotal = {{ column = \"total\", convert = \"float\" }}\n"
            ),
        ),
        (
            "orders_by_status.toml",
            format!(
                "table = \"public.orders\"\nindex = \"{by_status}\"\n{filter}include = [\"id\", \"status\", \"total\"]\n[fields]\ntotal = {{ column = \"total\", convert = \"float\" }}\n"
            ),
        ),
        (
            "search_orders.toml",
            format!(
                "table = \"public.orders\"\nindex = \"{search}\"\n{filter}id_prefix = \"order-\"\ninclude = [\"id\", \"status\"]\n[fields]\nkind = {{ value = \"order\" }}\n"
            ),
        ),
        (
            "search_customers.toml",
            format!(
                "table = \"public.customers\"\nindex = \"{search}\"\nid_prefix = \"customer-\"\ninclude = [\"id\", \"name\"]\n[fields]\nkind = {{ value = \"customer\" }}\n"
            ),
        ),
    ];
    // `(index, query)`: the query yields each document as `_id` and `doc`.
    let order_doc = "jsonb_build_object('id', id, 'status', status, 'total', total::float8)";
    let mut wanted = vec![
        (
            orders.clone(),
            format!(
                "SELECT id::text AS _id, {order_doc} AS doc FROM orders
                  WHERE status <> 'draft' AND deleted_at IS NULL"
            ),
        ),
        (
            search.clone(),
            "SELECT 'order-' || id AS _id, jsonb_build_object('id', id, 'status', status, 'kind', 'order') AS doc
               FROM orders WHERE status <> 'draft'
             UNION ALL
             SELECT 'customer-' || id, jsonb_build_object('id', id, 'name', name, 'kind', 'customer')
               FROM customers"
                .to_string(),
        ),
    ];
    for status in ["placed", "shipped", "cancelled"] {
        wanted.push((
            db.index(&format!("orders-{status}")),
            format!(
                "SELECT id::text AS _id, {order_doc} AS doc FROM orders WHERE status = '{status}'"
            ),
        ));
    }

    // As the tables' owner, so Sluice creates the publication from the mappings.
    let mut sluice = Sluice::with_config(&SluiceToml::as_owner(&db), &mappings);
    sluice.start_streaming(&db).await;
    // The initial snapshot read through the same filter: no draft arrived.
    wait_matching(&db, &es, &mut sluice, &wanted).await;
    let row_filter: Option<String> = db
        .admin
        .query_one(
            "SELECT rowfilter FROM pg_publication_tables WHERE pubname = 'sluice' AND tablename = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        row_filter
            .as_deref()
            .is_some_and(|f| f.contains("status <> 'draft'")),
        "the mapping's filter is the publication's row filter: {row_filter:?}"
    );

    // 10 drafts enter the filter (PostgreSQL sends inserts), 6 shipped
    // orders leave it (deletes), 5 move from `cancelled` to `placed` (their
    // document moves index), some are soft-deleted, drafts change unseen.
    db.sql(
        "UPDATE orders SET status = 'placed' WHERE status = 'draft' AND id % 3 = 0;
         UPDATE orders SET status = 'draft' WHERE status = 'shipped' AND id % 5 = 0;
         UPDATE orders SET status = 'placed' WHERE status = 'cancelled' AND id % 7 = 0;
         UPDATE orders SET deleted_at = now() WHERE status = 'placed' AND id % 2 = 1 AND id < 40;
         UPDATE orders SET total = total + 1 WHERE status = 'draft';",
    )
    .await;
    let published_deletes: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM orders WHERE id % 11 = 0 AND status <> 'draft'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.sql(
        "DELETE FROM orders WHERE id % 11 = 0;
         INSERT INTO orders SELECT g, (ARRAY['draft','placed','shipped','cancelled'])[g % 4 + 1], g + 0.25, NULL
           FROM generate_series(121, 140) g;
         UPDATE orders SET id = id + 1000 WHERE id IN (1, 2);
         UPDATE customers SET name = name || '!' WHERE id % 2 = 0;
         DELETE FROM customers WHERE id = 3;",
    )
    .await;
    wait_matching(&db, &es, &mut sluice, &wanted).await;

    // Filtered rows never left the server: the stream carried exactly the
    // 10 entering drafts and 15 new non-drafts as inserts, and as deletes
    // the 6 leaving rows and the deleted non-drafts.
    let metrics = sluice.metrics();
    let received = |op: &str| {
        metric_sum(
            &metrics,
            "sluice_changes_received_total",
            &["table=\"public.orders\"", &format!("op=\"{op}\"")],
        )
    };
    assert_eq!(received("insert"), 25.0, "{metrics}");
    assert_eq!(
        received("delete"),
        (6 + published_deletes) as f64,
        "{metrics}"
    );
    sluice.stop_cleanly();
    if let Some(m) = mismatch(&db, &es, &wanted).await {
        panic!("after a clean stop: {m}");
    }
}

/// One document by `_id`, if the index (or alias, or pattern) has it.
async fn doc(es: &Es, index: &str, id: &str) -> Option<Value> {
    es.sources(index).await.remove(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_mappings_make_the_documents_their_comments_describe() {
    let db = TestDb::new().await;
    let es = Es::new();
    db.sql(DEMO_SCHEMA).await;
    let mut sluice = Sluice::with_config(
        &SluiceToml::as_owner(&db),
        &shipped_mappings(&db.index_prefix),
    );
    sluice.start_streaming(&db).await;
    let i = |name: &str| db.index(name);
    sluice
        .wait_for(
            Duration::from_secs(180),
            "the snapshot in every index",
            async || {
                es.sources(&i("search")).await.len() == 4
                    && es.sources(&i("order-items")).await.len() == 3
                    && doc(&es, &i("orders-archive-*"), "2").await.is_none()
                    && doc(&es, &i("orders-archive-*"), "1").await.is_some()
            },
        )
        .await;

    // Snapshot values (read by the snapshot reader) through every conversion.
    let sql_text = async |q: &str| -> String { db.admin.query_one(q, &[]).await.unwrap().get(0) };
    let ada = doc(&es, &i("customers"), "1")
        .await
        .expect("through the alias");
    let signed_up = sql_text(
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(ada["full_name"], "Ada Lovelace", "{ada}");
    assert_eq!(ada["signup_day"], signed_up.as_str(), "{ada}");
    assert_eq!(ada["tier"], "gold", "jsonb merged into the root: {ada}");
    assert!(
        ada.get("signed_up_at").is_some() && ada.get("created_at").is_none(),
        "{ada}"
    );
    assert!(
        ada.get("email").is_none() && ada.get("attributes").is_none(),
        "{ada}"
    );
    assert_eq!(
        doc(&es, &i("products"), "1").await,
        Some(serde_json::json!({
            "id": 1, "sku": "KB-01", "name": "Keyboard", "description": "A mechanical keyboard.",
            "price": 89.9, "tags": ["input", "usb"], "active": true
        }))
    );
    let order = doc(&es, &i("orders"), "1").await.expect("order 1");
    for (k, v) in [
        ("customer", serde_json::json!({"id": 1})),
        ("total", serde_json::json!(114.4)),
        ("summary", serde_json::json!("order #1 (placed, eu)")),
        ("source", serde_json::json!("sluice-demo")),
        ("deleted_at", Value::Null),
    ] {
        assert_eq!(order[k], v, "{k} in {order}");
    }
    assert!(order.get("note").is_none(), "{order}");
    assert!(
        doc(&es, &i("orders"), "2").await.is_none(),
        "drafts are filtered"
    );
    let mapping = es.mapping(&i("orders")).await;
    assert_eq!(
        mapping[i("orders")]["mappings"]["properties"]["status"]["type"],
        "keyword",
        "orders.index.json was applied: {mapping}"
    );
    let placed_ms: i64 = db
        .admin
        .query_one(
            "SELECT floor(extract(epoch FROM placed_at) * 1000)::bigint FROM orders WHERE id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let archived = doc(&es, &i("orders-archive-*"), "1").await.unwrap();
    assert_eq!(archived["placed_at_ms"], placed_ms, "{archived}");
    assert_eq!(
        doc(&es, &i("order-items"), "1|2").await,
        Some(serde_json::json!({
            "order": {"id": 1}, "line_no": 2, "product": {"id": 2}, "quantity": 1, "unit_price": 24.5
        }))
    );
    assert_eq!(
        doc(&es, &i("search"), "product-2").await,
        Some(serde_json::json!({"id": 2, "kind": "product", "title": "Mouse (MS-02)"}))
    );
    assert_eq!(
        doc(&es, &i("search"), "customer-2").await,
        Some(
            serde_json::json!({"id": 2, "country": "US", "kind": "customer", "title": "Grace Hopper"})
        )
    );

    // Streamed values (decoded from pgoutput) through the same mappings.
    db.sql(
        "UPDATE customers SET attributes = '{\"tier\": \"silver\", \"vip\": true}', first_name = 'Augusta Ada' WHERE id = 1;
         UPDATE products SET tags = 'input,  usb ,wired', price = 79.00 WHERE id = 1;
         UPDATE orders SET status = 'placed', placed_at = now() WHERE id = 2;
         UPDATE orders SET deleted_at = now() WHERE id = 1;",
    )
    .await;
    sluice
        .wait_for(
            Duration::from_secs(180),
            "the streamed changes",
            async || {
                doc(&es, &i("orders"), "2").await.is_some()
                    && doc(&es, &i("orders"), "1").await.is_none()
                    && doc(&es, &i("customers"), "1")
                        .await
                        .is_some_and(|d| d["tier"] == "silver")
                    && doc(&es, &i("products"), "1")
                        .await
                        .is_some_and(|d| d["price"] == 79.0)
            },
        )
        .await;
    let ada = doc(&es, &i("customers"), "1").await.unwrap();
    assert_eq!(
        (&ada["full_name"], &ada["tier"], &ada["vip"]),
        (
            &serde_json::json!("Augusta Ada Lovelace"),
            &serde_json::json!("silver"),
            &serde_json::json!(true)
        ),
        "{ada}"
    );
    assert_eq!(ada["signup_day"], signed_up.as_str(), "{ada}");
    let keyboard = doc(&es, &i("products"), "1").await.unwrap();
    assert_eq!(
        keyboard["tags"],
        serde_json::json!(["input", "usb", "wired"]),
        "{keyboard}"
    );
    let placed = doc(&es, &i("orders"), "2").await.unwrap();
    assert_eq!(placed["summary"], "order #2 (placed, us)", "{placed}");
    assert!(
        doc(&es, &i("orders-archive-*"), "1").await.is_some(),
        "the archive keeps the soft-deleted order"
    );
    sluice.stop_cleanly();
}
