//! Relations in mapping files: parsing with located errors, binding to the
//! catalog's foreign keys, and the refusals that keep rebuilds exact.

use std::path::Path;

use crate::config::Mappings;
use crate::model::{
    Catalog, CatalogColumn, CatalogTable, ForeignKey, Link, ReplicaIdentity, TableRef,
};

fn load(text: &str) -> Result<Mappings, crate::config::ConfigErrors> {
    Mappings::from_texts(&[(Path::new("mappings/orders.toml"), text)])
}

fn table(name: &str, cols: &[&str], fks: &[(&str, &str, &str)]) -> CatalogTable {
    CatalogTable {
        table: TableRef::new("public", name),
        oid: 1,
        partitioned: false,
        columns: cols
            .iter()
            .map(|c| CatalogColumn::named(c, "bigint"))
            .collect(),
        primary_key: vec!["id".into()],
        replica_identity: ReplicaIdentity::Default,
        identity_index: Vec::new(),
        readable: true,
        foreign_keys: fks
            .iter()
            .map(|(col, refs, ref_col)| ForeignKey {
                columns: vec![col.to_string()],
                references: format!("public.{refs}"),
                ref_columns: vec![ref_col.to_string()],
            })
            .collect(),
        indexes: vec![vec!["id".into()]],
    }
}

fn shop() -> Catalog {
    let mut items = table(
        "order_items",
        &["id", "order_id", "product_id", "qty"],
        &[
            ("order_id", "orders", "id"),
            ("product_id", "products", "id"),
        ],
    );
    items.replica_identity = ReplicaIdentity::Full;
    items.indexes.push(vec!["order_id".into()]);
    Catalog::of([
        table(
            "orders",
            &["id", "customer_id", "status"],
            &[("customer_id", "customers", "id")],
        ),
        table("customers", &["id", "name"], &[]),
        items,
        table("products", &["id", "title"], &[]),
    ])
}

const ORDERS: &str = r#"table = "public.orders"
index = "orders"

[relations.customer]
table = "public.customers"
kind = "many_to_one"
include = ["name"]

[relations.items]
table = "public.order_items"
kind = "one_to_many"
order_by = ["qty desc"]

[relations.items.relations.product]
table = "public.products"
kind = "many_to_one"
"#;

#[test]
fn relations_parse_into_a_tree_bound_to_the_foreign_keys_postgres_knows() {
    let mut m = load(ORDERS).unwrap();
    m.validate_against_catalog(&shop()).unwrap();
    let tree = m.list[0].tree.clone().expect("bound");
    let root = &tree.root;
    assert_eq!(root.children.len(), 2);
    assert_eq!(root.filter, None);
    let customer = &root.children[0];
    assert_eq!(customer.field, "customer");
    assert_eq!(
        customer.link,
        Link::ManyToOne {
            on: vec![("customer_id".into(), "id".into())]
        }
    );
    let items = &root.children[1];
    assert_eq!(
        items.link,
        Link::OneToMany {
            on: vec![("id".into(), "order_id".into())]
        }
    );
    assert_eq!(items.node.order_by, ["qty desc"]);
    assert_eq!(
        items.node.children[0].link,
        Link::ManyToOne {
            on: vec![("product_id".into(), "id".into())]
        }
    );
    // Every table of the tree is published whole, without a row filter.
    let published: Vec<String> = m
        .publication_tables()
        .iter()
        .map(|t| t.qualified_name())
        .collect();
    assert_eq!(
        published,
        [
            "public.orders",
            "public.customers",
            "public.order_items",
            "public.products"
        ]
    );
    assert!(
        m.publication_tables()
            .iter()
            .all(|t| t.row_filter.is_none() && t.columns.is_none())
    );
}

#[test]
fn the_roots_filter_applies_when_documents_are_read() {
    let text = ORDERS.replace(
        "index = \"orders\"",
        "index = \"orders\"\nfilter = \"status <> 'draft'\"",
    );
    let mut m = load(&text).unwrap();
    m.validate_against_catalog(&shop()).unwrap();
    let tree = m.list[0].tree.clone().unwrap();
    assert_eq!(tree.root.filter.as_deref(), Some("status <> 'draft'"));
}

#[test]
fn an_unknown_key_inside_a_relation_names_its_file_and_line() {
    let text = ORDERS.replace(
        "order_by = [\"qty desc\"]",
        "order_by = [\"qty desc\"]\nsort = \"qty\"",
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("mappings/orders.toml line 13"), "{e}");
    assert!(e.contains("sort"), "{e}");
}

#[test]
fn an_unknown_relation_kind_and_a_bad_order_by_are_located() {
    let text = ORDERS.replace("kind = \"one_to_many\"", "kind = \"one_to_few\"");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("line 11") && e.contains("one_to_few"), "{e}");
    let text = ORDERS.replace("\"qty desc\"", "\"qty sideways\"");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("line 12") && e.contains("qty sideways"), "{e}");
}

#[test]
fn a_relation_without_a_foreign_key_asks_for_on() {
    let mut cat = shop();
    cat.tables
        .get_mut("public.orders")
        .unwrap()
        .foreign_keys
        .clear();
    let mut m = load(ORDERS).unwrap();
    let e = m.validate_against_catalog(&cat).unwrap_err().to_string();
    assert!(
        e.contains("no foreign key") && e.contains("relations.customer.on"),
        "{e}"
    );
    // Explicit columns need no foreign key.
    let text = ORDERS.replace(
        "include = [\"name\"]",
        "include = [\"name\"]\non = { customer_id = \"id\" }",
    );
    load(&text).unwrap().validate_against_catalog(&cat).unwrap();
}

#[test]
fn a_join_column_outside_the_replica_identity_is_refused_with_the_statement_to_run() {
    let mut cat = shop();
    cat.tables
        .get_mut("public.order_items")
        .unwrap()
        .replica_identity = ReplicaIdentity::Default;
    let mut m = load(ORDERS).unwrap();
    let e = m.validate_against_catalog(&cat).unwrap_err().to_string();
    assert!(e.contains("`order_id` of public.order_items"), "{e}");
    assert!(
        e.contains("ALTER TABLE public.order_items REPLICA IDENTITY FULL"),
        "{e}"
    );
}

#[test]
fn a_table_that_is_its_own_ancestor_is_a_cycle() {
    let text = ORDERS.replace("table = \"public.products\"", "table = \"public.orders\"");
    let mut m = load(&text).unwrap();
    let e = m.validate_against_catalog(&shop()).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn a_join_column_without_an_index_is_a_warning_with_the_index_to_create() {
    let mut cat = shop();
    cat.tables
        .get_mut("public.order_items")
        .unwrap()
        .indexes
        .retain(|i| i != &["order_id"]);
    let mut m = load(ORDERS).unwrap();
    let warnings = crate::config::nested::bind(&mut m.list[0], &cat, &mut Default::default());
    assert!(
        warnings.iter().any(|w| w
            .contains("CREATE INDEX order_items_order_id_idx ON public.order_items (order_id)")),
        "{warnings:?}"
    );
}

#[test]
fn a_column_templated_index_or_routing_cannot_locate_a_rebuilt_document() {
    let text = ORDERS.replace("index = \"orders\"", "index = \"orders-{status}\"");
    let mut m = load(&text).unwrap();
    let e = m.validate_against_catalog(&shop()).unwrap_err().to_string();
    assert!(e.contains("cannot be used with `relations`"), "{e}");
}

#[test]
fn a_second_nested_mapping_of_one_root_or_a_filtered_related_table_is_refused() {
    let other = ORDERS.replace("index = \"orders\"", "index = \"other\"");
    let e = Mappings::from_texts(&[
        (Path::new("mappings/orders.toml"), ORDERS),
        (Path::new("mappings/other.toml"), &other),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("one table roots one nested mapping"), "{e}");
    let customers = "table = \"public.customers\"\nindex = \"customers\"\nfilter = \"id > 3\"\n";
    let e = Mappings::from_texts(&[
        (Path::new("mappings/orders.toml"), ORDERS),
        (Path::new("mappings/customers.toml"), customers),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot have a row filter"), "{e}");
    // A flat mapping of the root table is fine: the stream feeds it as usual.
    let flat = "table = \"public.orders\"\nindex = \"flat\"\n";
    Mappings::from_texts(&[
        (Path::new("mappings/orders.toml"), ORDERS),
        (Path::new("mappings/flat.toml"), flat),
    ])
    .unwrap();
}
