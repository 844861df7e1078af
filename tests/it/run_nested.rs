//! Nested documents end to end through `sluice run`: an order document
//! carries its customer, its items, each item's product with the product's
//! category and tags (four levels, all three relation kinds). A random
//! workload changes every table (including items moving between orders and
//! products changing category) while Sluice is SIGKILLed and restarted;
//! at the end every document equals the one SQL builds from the tables,
//! and nothing else is in the index.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngExt;

use serde_json::Value;

use crate::support::compare::docs_diff;
use crate::support::sluice::{Sluice, SluiceToml};
use crate::support::{Es, TestDb};

pub const SHOP_SCHEMA: &str = "
    CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE categories (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE products (id bigint PRIMARY KEY, title text NOT NULL, price numeric(10,2),
                           category_id bigint REFERENCES categories);
    CREATE INDEX ON products (category_id);
    CREATE TABLE tags (id bigint PRIMARY KEY, label text NOT NULL UNIQUE);
    CREATE TABLE product_tags (product_id bigint REFERENCES products ON DELETE CASCADE,
                               tag_id bigint REFERENCES tags ON DELETE CASCADE,
                               PRIMARY KEY (product_id, tag_id));
    CREATE INDEX ON product_tags (tag_id);
    CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers,
                         status text NOT NULL);
    CREATE INDEX ON orders (customer_id);
    CREATE TABLE order_items (id bigint PRIMARY KEY,
                              order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
                              product_id bigint REFERENCES products, qty int NOT NULL);
    CREATE INDEX ON order_items (order_id);
    CREATE INDEX ON order_items (product_id);
    -- An item moving to another order must say which order it left.
    ALTER TABLE order_items REPLICA IDENTITY FULL;
    INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 30) g;
    INSERT INTO categories SELECT g, 'category ' || g FROM generate_series(1, 5) g;
    INSERT INTO products SELECT g, 'product ' || g, g * 1.25, g % 5 + 1 FROM generate_series(1, 40) g;
    INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, 8) g;
    INSERT INTO product_tags SELECT p, t FROM generate_series(1, 40) p, generate_series(1, 8) t WHERE (p + t) % 3 = 0;
    INSERT INTO orders SELECT g, g % 30 + 1, 'placed' FROM generate_series(1, 200) g;
    INSERT INTO order_items SELECT g, g % 200 + 1, g % 40 + 1, g % 4 + 1 FROM generate_series(1, 500) g;
";

/// The orders mapping: customer{}, items[] → product{} → category{}, tags[].
pub fn orders_mapping(index: &str) -> String {
    format!(
        r#"table = "public.orders"
index = "{index}"

[relations.customer]
table = "public.customers"
kind = "many_to_one"
include = ["id", "name"]

[relations.items]
table = "public.order_items"
kind = "one_to_many"
exclude = ["order_id"]
order_by = ["id"]

[relations.items.relations.product]
table = "public.products"
kind = "many_to_one"
rename = {{ title = "name" }}
fields = {{ price = {{ column = "price", convert = "float" }} }}

[relations.items.relations.product.relations.category]
table = "public.categories"
kind = "many_to_one"

[relations.items.relations.product.relations.tags]
table = "public.tags"
kind = "many_to_many"
through = "public.product_tags"
order_by = ["label desc"]
"#
    )
}

/// Every order document as SQL builds it, written independently of Sluice.
pub const EXPECTED_ORDERS: &str = "
    SELECT o.id::text AS _id, jsonb_build_object(
      'id', o.id, 'customer_id', o.customer_id, 'status', o.status,
      'customer', (SELECT jsonb_build_object('id', c.id, 'name', c.name) FROM customers c WHERE c.id = o.customer_id),
      'items', COALESCE((SELECT jsonb_agg(jsonb_build_object(
            'id', i.id, 'product_id', i.product_id, 'qty', i.qty,
            'product', (SELECT jsonb_build_object(
                 'id', p.id, 'name', p.title, 'price', p.price::float8, 'category_id', p.category_id,
                 'category', (SELECT jsonb_build_object('id', k.id, 'name', k.name) FROM categories k WHERE k.id = p.category_id),
                 'tags', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', t.id, 'label', t.label) ORDER BY t.label DESC)
                                     FROM product_tags pt JOIN tags t ON t.id = pt.tag_id WHERE pt.product_id = p.id), '[]'))
               FROM products p WHERE p.id = i.product_id)) ORDER BY i.id)
          FROM order_items i WHERE i.order_id = o.id), '[]')) AS doc
    FROM orders o";

pub async fn expected(db: &TestDb) -> BTreeMap<String, Value> {
    db.json_rows(EXPECTED_ORDERS)
        .await
        .into_iter()
        .map(|row| {
            (
                row["_id"].as_str().unwrap().to_string(),
                numbers_as_floats(&row["doc"]),
            )
        })
        .collect()
}

/// Every number as a float: `convert = "float"` writes `25.0`, where
/// PostgreSQL's `jsonb` prints `25`; the same value either way.
pub fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

pub async fn actual(es: &Es, index: &str) -> BTreeMap<String, Value> {
    es.sources(index)
        .await
        .into_iter()
        .map(|(k, v)| (k, numbers_as_floats(&v)))
        .collect()
}

/// Wait until the index holds exactly the expected documents.
pub async fn wait_exact(db: &TestDb, es: &Es, sluice: &mut Sluice, index: &str, within: Duration) {
    wait_shaped(db, es, sluice, index, within, |_| {}).await
}

/// [`wait_exact`] against the SQL-built documents reshaped by `shape`
/// (what another mapping of the same tables makes of them).
pub async fn wait_shaped(
    db: &TestDb,
    es: &Es,
    sluice: &mut Sluice,
    index: &str,
    within: Duration,
    shape: fn(&mut Value),
) {
    let mut last = None;
    let waited = tokio::time::timeout(
        within,
        sluice.wait_for(
            Duration::from_secs(3600),
            "the index to equal the tables",
            async || {
                let mut want = expected(db).await;
                want.values_mut().for_each(shape);
                last = docs_diff(&want, &actual(es, index).await);
                last.is_none()
            },
        ),
    )
    .await;
    if waited.is_err() {
        panic!(
            "the index never equalled the tables: {}\n{}",
            last.unwrap_or_default(),
            sluice.log_text()
        );
    }
}

/// The shop schema with its order documents snapshotted and streaming:
/// the running `sluice` and the index, already equal to the tables.
pub async fn shop_streaming(db: &TestDb, es: &Es) -> (Sluice, String) {
    db.sql(SHOP_SCHEMA).await;
    let index = db.index("orders");
    let mappings = [("orders.toml", orders_mapping(&index))];
    let mut sluice = Sluice::with_config(&SluiceToml::as_owner(db), &mappings);
    sluice.start_streaming(db).await;
    wait_exact(db, es, &mut sluice, &index, Duration::from_secs(120)).await;
    (sluice, index)
}

/// One random transaction over the shop's tables.
pub fn random_tx(rng: &mut impl RngExt, next_id: &mut i64) -> String {
    let o = rng.random_range(1..=220);
    let p = rng.random_range(1..=40);
    let i = rng.random_range(1..=600);
    *next_id += 1;
    let n = *next_id;
    match rng.random_range(0..14) {
        0 => format!(
            "INSERT INTO orders VALUES ({n}, {}, 'new') ON CONFLICT DO NOTHING; INSERT INTO order_items SELECT {n} * 10 + g, {n}, {p}, g FROM generate_series(1, 3) g ON CONFLICT DO NOTHING",
            n % 30 + 1
        ),
        1 => format!("UPDATE orders SET status = 'shipped' WHERE id = {o}"),
        2 => format!("DELETE FROM orders WHERE id = {o}"),
        3 => format!("UPDATE order_items SET qty = qty + 1 WHERE id = {i}"),
        4 => format!(
            "UPDATE order_items SET order_id = (SELECT id FROM orders ORDER BY random() LIMIT 1) WHERE id = {i}"
        ),
        5 => format!("DELETE FROM order_items WHERE id = {i}"),
        6 => format!(
            "UPDATE customers SET name = 'customer {n}' WHERE id = {}",
            o % 30 + 1
        ),
        7 => format!(
            "UPDATE categories SET name = 'category {n}' WHERE id = {}",
            p % 5 + 1
        ),
        8 => format!("UPDATE products SET price = price + 1, title = 'product {n}' WHERE id = {p}"),
        9 => format!(
            "UPDATE products SET category_id = {} WHERE id = {p}",
            n % 5 + 1
        ),
        10 => format!(
            "INSERT INTO product_tags VALUES ({p}, {}) ON CONFLICT DO NOTHING",
            n % 8 + 1
        ),
        11 => format!(
            "DELETE FROM product_tags WHERE product_id = {p} AND tag_id = {}",
            n % 8 + 1
        ),
        12 => format!("UPDATE tags SET label = 'tag {n}' WHERE id = {}", n % 8 + 1),
        _ => format!(
            "UPDATE orders SET customer_id = {} WHERE id = {o}",
            n % 30 + 1
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_order_documents_equal_the_tables_after_random_changes_to_every_table_and_sigkills()
{
    let db = TestDb::new().await;
    let es = Es::new();
    db.sql(SHOP_SCHEMA).await;
    let index = db.index("orders");
    let mappings = [("orders.toml", orders_mapping(&index))];
    let mut sluice = Sluice::with_config(&SluiceToml::as_owner(&db), &mappings);
    sluice.start_streaming(&db).await;
    // The snapshot built every document with its nested parts.
    wait_exact(&db, &es, &mut sluice, &index, Duration::from_secs(120)).await;

    let mut rng = rand::rng();
    let mut next_id = 1_000;
    for round in 0..3 {
        for _ in 0..150 {
            let tx = random_tx(&mut rng, &mut next_id);
            db.sql(&format!("BEGIN; {tx}; COMMIT;")).await;
        }
        if round < 2 {
            // Killed with changes in flight, restarted: the slot replays.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            sluice.kill9();
            for _ in 0..40 {
                let tx = random_tx(&mut rng, &mut next_id);
                db.sql(&format!("BEGIN; {tx}; COMMIT;")).await;
            }
            sluice.start();
        }
    }
    wait_exact(&db, &es, &mut sluice, &index, Duration::from_secs(180)).await;
    let docs = es.sources(&index).await;
    assert!(docs.len() > 150, "a real index: {}", docs.len());
    assert!(
        docs.values().any(|d| d["items"][0]["product"]["tags"]
            .as_array()
            .is_some_and(|t| !t.is_empty())),
        "four levels deep, with tags"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_category_rebuilds_every_order_that_holds_one_of_its_products() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = shop_streaming(&db, &es).await;
    // One row changes; every order with a product of category 2 changes.
    db.sql("UPDATE categories SET name = 'renamed' WHERE id = 2; UPDATE customers SET name = 'Ada' WHERE id = 7; DELETE FROM tags WHERE id = 3;").await;
    wait_exact(&db, &es, &mut sluice, &index, Duration::from_secs(60)).await;
    let docs = es.sources(&index).await;
    let renamed = docs
        .values()
        .filter(|d| {
            d["items"].as_array().is_some_and(|is| {
                is.iter()
                    .any(|i| i["product"]["category"]["name"] == "renamed")
            })
        })
        .count();
    let holding: i64 = db
        .query_value(
            "SELECT count(DISTINCT i.order_id) FROM order_items i JOIN products p ON p.id = i.product_id WHERE p.category_id = 2",
        )
        .await;
    assert_eq!(
        renamed as i64, holding,
        "every order holding one of its products"
    );
    assert!(renamed > 20, "the rename reached many roots: {renamed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_a_joined_table_rebuilds_every_document_that_held_its_rows() {
    let db = TestDb::new().await;
    let es = Es::new();
    let (mut sluice, index) = shop_streaming(&db, &es).await;
    let tagged = |docs: &BTreeMap<String, Value>| {
        docs.values()
            .filter(|d| {
                d["items"].as_array().is_some_and(|is| {
                    is.iter().any(|i| {
                        i["product"]["tags"]
                            .as_array()
                            .is_some_and(|t| !t.is_empty())
                    })
                })
            })
            .count()
    };
    assert!(
        tagged(&es.sources(&index).await) > 100,
        "tags reached the documents"
    );
    // Two levels down, many-to-many: every order loses its products' tags.
    db.sql("TRUNCATE product_tags").await;
    wait_exact(&db, &es, &mut sluice, &index, Duration::from_secs(60)).await;
    assert_eq!(tagged(&es.sources(&index).await), 0, "no tag is left");
    // Directly under the root, with a change to a root in the same
    // transaction: every order's items array empties, order 5 is gone.
    db.sql("BEGIN; TRUNCATE order_items; DELETE FROM orders WHERE id = 5; UPDATE orders SET status = 'x' WHERE id = 6; COMMIT;")
        .await;
    wait_exact(&db, &es, &mut sluice, &index, Duration::from_secs(60)).await;
    let docs = es.sources(&index).await;
    assert!(docs.values().all(|d| d["items"] == serde_json::json!([])));
    assert!(!docs.contains_key("5") && docs["6"]["status"] == "x");
    assert!(
        sluice.log_text().contains("rebuilding every document"),
        "the log says why every document was rebuilt"
    );
}
