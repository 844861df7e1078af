use super::*;
use crate::model::{Column, TableRef};

fn col(name: &str, oid: u32) -> Column {
    Column {
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
        is_key: name == "id",
    }
}

fn node(table: &str, cols: Vec<Column>, children: Vec<DocChild>) -> DocNode {
    DocNode {
        table: TableRef::new("public", table),
        columns: cols,
        key: vec!["id".into()],
        filter: None,
        order_by: vec!["id".into()],
        children,
    }
}

/// orders → items[] (order_items.order_id) → product{} (products.id).
fn orders() -> DocTree {
    let on = |a: &str, b: &str| vec![(a.to_string(), b.to_string())];
    let product = node("products", vec![col("id", 20), col("price", 1700)], vec![]);
    let items = node(
        "order_items",
        vec![col("id", 20), col("product_id", 20), col("qty", 23)],
        vec![DocChild {
            field: "product".into(),
            link: Link::ManyToOne {
                on: on("product_id", "id"),
            },
            required: false,
            node: product,
        }],
    );
    DocTree {
        root: node(
            "orders",
            vec![col("id", 20), col("note", 25)],
            vec![DocChild {
                field: "items".into(),
                link: Link::OneToMany {
                    on: on("id", "order_id"),
                },
                required: false,
                node: items,
            }],
        ),
    }
}

#[test]
fn related_rows_convert_by_their_column_types_at_every_depth() {
    let tree = orders();
    let (types, opts) = (TypeCatalog::new(), ValueOptions::default());
    let conv = converter(&types, &opts);
    let items = r#"[[["1","5","2"],[["5","9.50"]]],[["2","6",null],null]]"#;
    let row = document_row(&tree, &[Some("7"), None, Some(items)], &conv).unwrap();
    assert_eq!(row[0], Datum::Value(serde_json::json!(7)));
    assert_eq!(row[1], Datum::Null);
    let Datum::Value(v) = &row[2] else {
        panic!("items")
    };
    assert_eq!(v[0][0], serde_json::json!([1, 5, 2]));
    assert_eq!(v[0][1][0][0], serde_json::json!(5));
    assert_eq!(v[1][0][2], Value::Null);
    assert_eq!(
        v[1][1],
        Value::Null,
        "a missing many-to-one target stays null"
    );
}

#[test]
fn a_value_that_does_not_parse_as_its_type_names_table_and_column() {
    let tree = orders();
    let (types, opts) = (TypeCatalog::new(), ValueOptions::default());
    let conv = converter(&types, &opts);
    let items = r#"[[["x","5","2"],null]]"#;
    let e = document_row(&tree, &[Some("7"), None, Some(items)], &conv).unwrap_err();
    assert!(e.to_string().contains("public.order_items.id"), "{e}");
}

#[test]
fn key_values_are_untyped_literals_so_any_key_type_uses_its_index() {
    let sql = documents_by_keys(&orders(), &[vec!["7".into()], vec!["it's".into()]]);
    assert!(sql.contains(r#"(r."id") IN (('7'), ('it''s'))"#), "{sql}");
    assert!(documents_by_keys(&orders(), &[]).ends_with("WHERE (false)"));
}

#[test]
fn roots_above_a_deep_row_are_found_by_joining_down_to_its_parent() {
    let tree = orders();
    let place = Place {
        path: vec![0, 0],
        as_through: false,
    };
    assert_eq!(lower_columns(&tree, &place), ["id"]);
    let values = [vec!["5".into()]];
    let sql = roots_select(
        &tree,
        Scope::Above(&place, &values),
        Some(&vec!["10".into()]),
        100,
    );
    assert!(
        sql.contains(r#"JOIN "public"."order_items" u0 ON u0."order_id" = r."id""#),
        "{sql}"
    );
    assert!(sql.contains(r#"(u0."product_id") IN (('5'))"#), "{sql}");
    assert!(sql.contains(r#"(r."id") > ('10')"#), "{sql}");
    assert!(sql.ends_with(r#"ORDER BY r."id" LIMIT 100"#), "{sql}");
}

#[test]
fn every_root_is_paged_by_key_under_the_mapping_filter_after_a_truncate() {
    let mut tree = orders();
    tree.root.filter = Some("status <> 'draft'".into());
    let sql = roots_select(&tree, Scope::Every, Some(&vec!["10".into()]), 1000);
    assert_eq!(
        sql,
        r#"SELECT DISTINCT r."id"::text, r."id" FROM "public"."orders" r WHERE (status <> 'draft') AND (r."id") > ('10') ORDER BY r."id" LIMIT 1000"#
    );
    tree.root.filter = None;
    let first = roots_select(&tree, Scope::Every, None, 1000);
    assert!(first.contains(" WHERE true ORDER BY"), "{first}");
}
