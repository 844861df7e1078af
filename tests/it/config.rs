//! Mappings against the real catalog: the publication entries they produce
//! are accepted by PostgreSQL, and the published tables still take UPDATE
//! and DELETE (column lists and row filters cover the replica identity).

use std::path::Path;

use sluice::config::Mappings;
use sluice::source::catalog::read_schemas;

use crate::support::{DEMO_SCHEMA, TestDb};

#[tokio::test]
async fn publication_entries_from_the_shipped_mappings_are_accepted_by_postgresql() {
    let db = TestDb::new().await;
    db.sql(DEMO_SCHEMA).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut mappings = Mappings::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let catalog = read_schemas(&db.admin, &mappings.schemas())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    mappings
        .validate_against_catalog(&catalog)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        catalog.tables["public.order_items"].primary_key,
        ["order_id", "line_no"]
    );
    let tables = mappings.publication_tables();
    let products = tables.iter().find(|t| t.table.name == "products").unwrap();
    assert!(
        products
            .columns
            .as_ref()
            .is_some_and(|c| !c.contains(&"updated_at".to_string())),
        "products publishes only the columns its mappings use: {products:?}"
    );
    let orders = tables.iter().find(|t| t.table.name == "orders").unwrap();
    assert_eq!(orders.row_filter.as_deref(), Some("status <> 'draft'"));

    let list: Vec<String> = tables.iter().map(|t| t.to_sql()).collect();
    db.sql(&format!(
        "CREATE PUBLICATION sluice_test FOR TABLE {}",
        list.join(", ")
    ))
    .await;
    // PostgreSQL refuses these if a column list or filter misses the
    // replica identity; they must succeed.
    db.sql(
        "UPDATE products SET price = price + 1;
         UPDATE orders SET status = 'shipped' WHERE status = 'placed';
         UPDATE order_items SET quantity = quantity + 1;
         DELETE FROM order_items WHERE line_no = 2;
         UPDATE customers SET country = 'FR' WHERE id = 1;",
    )
    .await;
    let published: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'sluice_test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published as usize, tables.len());
}

#[tokio::test]
async fn a_mapping_typo_fails_start_up_validation_with_its_line() {
    let db = TestDb::new().await;
    db.sql("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric)")
        .await;
    let mut m = Mappings::from_texts(&[(
        Path::new("mappings/orders.toml"),
        "table = \"public.orders\"\nindex = \"o\"\nrouting = \"totl\"\n",
    )])
    .unwrap();
    let catalog = read_schemas(&db.admin, &m.schemas())
        .await
        .expect("the catalog reads: the error must be the mapping's, not a query failure");
    let errors = m.validate_against_catalog(&catalog).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("mappings/orders.toml line 3: `routing`: column `totl` does not exist in public.orders; did you mean `total`?"),
        "{errors}"
    );
}
