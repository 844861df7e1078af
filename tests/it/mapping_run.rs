//! Mapping features end to end through `sluice run` against the real
//! servers: a row filter pushed into the publication and the snapshot's
//! WHERE, updates moving rows into and out of it, a soft-delete column, one
//! table feeding several indices (one templated by a column, so a changed
//! value moves the document), and two tables sharing one index.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::run::{Setup, Sluice, http_get, metric_sum, poll, wait_streaming};
use crate::support::{Es, TestDb};

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
        let have = es.sources(index).await;
        if want != have {
            let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
            let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
                .map(|(k, v)| format!("{k}: table {v} vs index {}", have[k]))
                .take(3)
                .collect();
            return Some(format!(
                "{index}: missing {missing:?}, extra {extra:?}, differ {differ:?}"
            ));
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
        poll(
            sluice,
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
    let setup = Setup {
        pg_url: db.url(),
        ..Setup::for_db(&db)
    };
    let mut sluice = Sluice::with_setup(&setup, &mappings);
    sluice.start();
    wait_streaming(&db, &mut sluice).await;
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
    let metrics = http_get(&sluice.http_addr(), "/metrics").1;
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
    assert_eq!(sluice.terminate(), 0, "{}", sluice.log_text());
    if let Some(m) = mismatch(&db, &es, &wanted).await {
        panic!("after a clean stop: {m}");
    }
}
