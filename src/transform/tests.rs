//! Table-driven tests of every mapping feature, on hand-built changes.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::*;
use crate::config::Mappings;
use crate::model::lsn::Lsn;
use crate::model::{Column, ReplicaIdentity};

fn rel(id: u32, cols: &[(&str, bool)], ident: ReplicaIdentity) -> Arc<Relation> {
    Arc::new(Relation {
        id,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: ident,
        columns: cols
            .iter()
            .map(|(n, k)| Column {
                name: n.to_string(),
                type_oid: 25,
                type_modifier: -1,
                is_key: *k,
            })
            .collect(),
    })
}

fn orders() -> Arc<Relation> {
    rel(
        1,
        &[
            ("id", true),
            ("region", false),
            ("customer_name", false),
            ("total", false),
            ("note", false),
            ("deleted", false),
        ],
        ReplicaIdentity::Default,
    )
}

fn v(x: Value) -> Datum {
    if x.is_null() {
        Datum::Null
    } else {
        Datum::Value(x)
    }
}

fn row(vals: &[Value]) -> Row {
    vals.iter().cloned().map(v).collect()
}

fn change(relation: &Arc<Relation>, kind: ChangeKind) -> Change {
    Change {
        relation: relation.clone(),
        kind,
        version: Lsn(0x16_0000_0100),
        commit_time: Utc.with_ymd_and_hms(2024, 3, 5, 10, 0, 0).unwrap(),
        xid: 0,
    }
}

fn insert(r: &Arc<Relation>, vals: &[Value]) -> Change {
    change(r, ChangeKind::Insert { new: row(vals) })
}

fn transformer(files: &[&str]) -> Transformer {
    let names: Vec<String> = (0..files.len()).map(|i| format!("m{i}.toml")).collect();
    let texts: Vec<(&Path, &str)> = names
        .iter()
        .zip(files)
        .map(|(n, t)| (Path::new(n.as_str()), *t))
        .collect();
    Transformer::new(&Mappings::from_texts(&texts).unwrap())
}

fn run(t: &mut Transformer, c: &Change) -> Result<Vec<BulkOp>, TransformError> {
    let mut out = Vec::new();
    let n = t.transform(c, &mut out)?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// `(action, index, id, routing, doc)` — compact for table comparisons.
fn summary(ops: &[BulkOp]) -> Vec<(String, String, String, Option<String>, Value)> {
    ops.iter()
        .map(|o| match &o.action {
            OpAction::Index { doc } => (
                "index".into(),
                o.index.to_string(),
                o.id.clone(),
                o.routing.clone(),
                serde_json::from_slice(doc).expect("doc is valid JSON"),
            ),
            OpAction::Delete => (
                "delete".into(),
                o.index.to_string(),
                o.id.clone(),
                o.routing.clone(),
                Value::Null,
            ),
        })
        .collect()
}

fn order_row() -> Vec<Value> {
    vec![
        json!(7),
        json!("EU"),
        json!("Ada"),
        json!("12.50"),
        json!("hello"),
        json!(false),
    ]
}

#[test]
fn every_document_feature_renders_as_configured() {
    let base = "table = \"public.orders\"\nindex = \"orders\"\n";
    // (name, mapping, changed columns of `order_row`, document)
    type Case = (&'static str, String, Vec<(usize, Value)>, Value);
    let cases: Vec<Case> = vec![
        (
            "every column by default",
            base.to_string(),
            vec![],
            json!({"id":7,"region":"EU","customer_name":"Ada","total":"12.50","note":"hello","deleted":false}),
        ),
        (
            "include",
            format!("{base}include = [\"id\", \"total\"]\n"),
            vec![],
            json!({"id":7,"total":"12.50"}),
        ),
        (
            "exclude",
            format!("{base}exclude = [\"note\", \"deleted\", \"region\"]\n"),
            vec![],
            json!({"id":7,"customer_name":"Ada","total":"12.50"}),
        ),
        (
            "renames into nested paths",
            format!(
                "{base}include = [\"id\", \"customer_name\", \"region\"]\n[rename]\ncustomer_name = \"customer.name\"\nregion = \"customer.region\"\nid = \"order_id\"\n"
            ),
            vec![],
            json!({"order_id":7,"customer":{"name":"Ada","region":"EU"}}),
        ),
        (
            "a field at a column's path replaces it, others add",
            format!(
                "{base}include = [\"id\", \"total\"]\n[fields]\ntotal = {{ column = \"total\", convert = \"float\" }}\ntotal_text = {{ column = \"total\", convert = \"string\" }}\n"
            ),
            vec![],
            json!({"id":7,"total":12.5,"total_text":"12.50"}),
        ),
        (
            "constants and templates",
            format!(
                "{base}include = [\"id\"]\n[fields]\nsource = {{ value = \"postgres\" }}\n\"meta.v\" = {{ value = 2 }}\nlabel = {{ template = \"#{{id}} {{customer_name}} ({{region}})\" }}\nday = {{ template = \"{{commit_time:%Y-%m-%d}}\" }}\n"
            ),
            vec![],
            json!({"id":7,"source":"postgres","meta":{"v":2},"label":"#7 Ada (EU)","day":"2024-03-05"}),
        ),
        (
            "numbers to float, integer and string",
            format!(
                "{base}include = [\"id\"]\n[fields]\nf = {{ column = \"total\", convert = \"float\" }}\ni = {{ column = \"id\", convert = \"integer\" }}\ns = {{ column = \"id\", convert = \"string\" }}\n"
            ),
            vec![],
            json!({"id":7,"f":12.5,"i":7,"s":"7"}),
        ),
        (
            "timestamps formatted or as epoch milliseconds",
            format!(
                "{base}include = [\"id\"]\n[fields]\nday = {{ column = \"note\", convert = \"timestamp\", format = \"%d/%m/%Y %H:%M\" }}\nms = {{ column = \"note\", convert = \"epoch_millis\" }}\n"
            ),
            vec![(4, json!("2024-03-05 10:30:00+01"))],
            json!({"id":7,"day":"05/03/2024 09:30","ms":1709631000000i64}),
        ),
        (
            "json text kept under a nested field",
            format!(
                "{base}include = [\"id\"]\n[fields]\n\"meta.attrs\" = {{ column = \"region\", convert = \"json\" }}\n"
            ),
            vec![(1, json!("{\"zone\": \"EU\"}"))],
            json!({"id":7,"meta":{"attrs":{"zone":"EU"}}}),
        ),
        (
            "split text into an array",
            format!(
                "{base}include = [\"id\"]\n[fields]\nwords = {{ column = \"note\", convert = \"split\", separator = \"l\" }}\n"
            ),
            vec![],
            json!({"id":7,"words":["he","o"]}),
        ),
    ];
    let r = orders();
    for (name, text, changed, want) in cases {
        let mut t = transformer(&[&text]);
        let mut vals = order_row();
        for (i, v) in changed {
            vals[i] = v;
        }
        let ops = run(&mut t, &insert(&r, &vals)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            summary(&ops),
            vec![("index".into(), "orders".into(), "7".into(), None, want)],
            "{name}"
        );
    }
}

#[test]
fn ops_carry_the_version_origin_routing_and_pipeline() {
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"orders\"\nrouting = \"region\"\npipeline = \"enrich\"\n",
    ]);
    let ops = run(&mut t, &insert(&orders(), &order_row())).unwrap();
    let op = &ops[0];
    assert_eq!(op.version, 0x16_0000_0100);
    assert_eq!(op.routing.as_deref(), Some("EU"));
    assert_eq!(op.pipeline.as_deref(), Some("enrich"));
    assert_eq!(&*op.origin.table, "public.orders");
    assert_eq!(op.origin.key, r#"{"id":7}"#);
    assert_eq!(op.origin.lsn, Lsn(0x16_0000_0100));
}

#[test]
fn jsonb_merges_into_the_root_without_overriding_mapped_fields() {
    let r = rel(
        2,
        &[("id", true), ("attrs", false)],
        ReplicaIdentity::Default,
    );
    let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\nmerge = [\"attrs\"]\n"]);
    let ops = run(
        &mut t,
        &insert(&r, &[json!(1), json!({"color":"red","id":99})]),
    )
    .unwrap();
    assert_eq!(summary(&ops)[0].4, json!({"id":1,"color":"red"}));
    let err = run(&mut t, &insert(&r, &[json!(2), json!("not an object")])).unwrap_err();
    assert!(matches!(err, TransformError::Convert { .. }), "{err}");
    // Without `merge`, jsonb is kept under its own field.
    let mut kept = transformer(&["table = \"public.orders\"\nindex = \"o\"\n"]);
    let ops = run(&mut kept, &insert(&r, &[json!(1), json!({"color":"red"})])).unwrap();
    assert_eq!(summary(&ops)[0].4, json!({"id":1,"attrs":{"color":"red"}}));
}

#[test]
fn ids_join_composite_keys_and_honour_chosen_columns_and_prefixes() {
    let r = rel(
        3,
        &[("order_id", true), ("line", true), ("sku", false)],
        ReplicaIdentity::Default,
    );
    let vals = [json!(7), json!(2), json!("A-1")];
    let cases = [
        ("", "7|2"),
        ("id_separator = \"-\"\n", "7-2"),
        ("id = [\"sku\"]\n", "A-1"),
        ("id_prefix = \"line:\"\n", "line:7|2"),
    ];
    for (extra, want) in cases {
        let mut t = transformer(&[&format!(
            "table = \"public.orders\"\nindex = \"o\"\n{extra}"
        )]);
        assert_eq!(
            run(&mut t, &insert(&r, &vals)).unwrap()[0].id,
            want,
            "{extra}"
        );
    }
}

#[test]
fn a_null_id_column_is_an_error() {
    let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\nid = [\"region\"]\n"]);
    let mut vals = order_row();
    vals[1] = Value::Null;
    let err = run(&mut t, &insert(&orders(), &vals)).unwrap_err();
    assert!(matches!(err, TransformError::NullId { ref column, .. } if column == "region"));
}

#[test]
fn index_templates_render_columns_and_commit_time_and_share_names() {
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"orders-{region}-{commit_time:%Y.%m}\"\non_delete = \"ignore\"\n",
    ]);
    let r = orders();
    let a = run(&mut t, &insert(&r, &order_row())).unwrap();
    let b = run(&mut t, &insert(&r, &order_row())).unwrap();
    assert_eq!(&*a[0].index, "orders-eu-2024.03");
    assert!(
        Arc::ptr_eq(&a[0].index, &b[0].index),
        "cached name is shared"
    );
}

#[test]
fn updates_index_and_key_changes_delete_the_old_document_first() {
    let r = orders();
    let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\ninclude = [\"id\"]\n"]);
    let plain = change(
        &r,
        ChangeKind::Update {
            old: None,
            new: row(&order_row()),
        },
    );
    assert_eq!(
        summary(&run(&mut t, &plain).unwrap()),
        vec![(
            "index".into(),
            "o".into(),
            "7".into(),
            None,
            json!({"id":7})
        )]
    );

    let mut new = order_row();
    new[0] = json!(8);
    let old_key = row(&[
        json!(7),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ]);
    let moved = change(
        &r,
        ChangeKind::Update {
            old: Some(OldRow::Key(old_key)),
            new: row(&new),
        },
    );
    let ops = run(&mut t, &moved).unwrap();
    assert_eq!(
        summary(&ops),
        vec![
            ("delete".into(), "o".into(), "7".into(), None, Value::Null),
            (
                "index".into(),
                "o".into(),
                "8".into(),
                None,
                json!({"id":8})
            ),
        ]
    );
    assert_eq!(ops[0].origin.key, r#"{"id":7}"#);
}

#[test]
fn with_a_full_old_row_a_document_moving_index_is_deleted_from_the_old_one() {
    let r = rel(4, &[("id", true), ("region", false)], ReplicaIdentity::Full);
    let mut t =
        transformer(&["table = \"public.orders\"\nindex = \"orders-{region}\"\nid = [\"id\"]\n"]);
    let c = change(
        &r,
        ChangeKind::Update {
            old: Some(OldRow::Full(row(&[json!(1), json!("eu")]))),
            new: row(&[json!(1), json!("us")]),
        },
    );
    let s = summary(&run(&mut t, &c).unwrap());
    assert_eq!(s[0].0, "delete");
    assert_eq!(s[0].1, "orders-eu");
    assert_eq!((s[1].0.as_str(), s[1].1.as_str()), ("index", "orders-us"));
    // Same location: no delete.
    let c = change(
        &r,
        ChangeKind::Update {
            old: Some(OldRow::Full(row(&[json!(1), json!("us")]))),
            new: row(&[json!(1), json!("us")]),
        },
    );
    assert_eq!(run(&mut t, &c).unwrap().len(), 1);
}

#[test]
fn deletes_follow_on_delete_and_row_filter_transitions() {
    let r = orders();
    let key = OldRow::Key(row(&[
        json!(7),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ]));
    let del = change(&r, ChangeKind::Delete { old: key.clone() });
    let mut t =
        transformer(&["table = \"public.orders\"\nindex = \"o\"\nfilter = \"total > 10\"\n"]);
    // PostgreSQL sends a row entering the filter as an insert...
    assert_eq!(
        summary(&run(&mut t, &insert(&r, &order_row())).unwrap())[0].0,
        "index"
    );
    // ...and an update leaving it as a delete carrying the old key.
    assert_eq!(
        summary(&run(&mut t, &del).unwrap()),
        vec![("delete".into(), "o".into(), "7".into(), None, Value::Null)]
    );
    let mut keep =
        transformer(&["table = \"public.orders\"\nindex = \"o\"\non_delete = \"ignore\"\n"]);
    assert!(run(&mut keep, &del).unwrap().is_empty());
}

#[test]
fn a_delete_that_cannot_know_its_routing_is_an_error_not_a_misrouted_delete() {
    let r = orders();
    let key = OldRow::Key(row(&[
        json!(7),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ]));
    let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\nrouting = \"region\"\n"]);
    let err = run(&mut t, &change(&r, ChangeKind::Delete { old: key })).unwrap_err();
    assert!(
        matches!(err, TransformError::MissingOldValue { ref column, .. } if column == "region"),
        "{err}"
    );
}

#[test]
fn soft_deleted_rows_become_deletes() {
    let r = orders();
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"o\"\nsoft_delete_column = \"deleted\"\n",
    ]);
    assert_eq!(
        summary(&run(&mut t, &insert(&r, &order_row())).unwrap())[0].0,
        "index"
    );
    let mut gone = order_row();
    gone[5] = json!(true);
    let c = change(
        &r,
        ChangeKind::Update {
            old: None,
            new: row(&gone),
        },
    );
    assert_eq!(summary(&run(&mut t, &c).unwrap())[0].0, "delete");
    gone[5] = json!("2024-01-01T00:00:00Z");
    assert_eq!(
        summary(&run(&mut t, &insert(&r, &gone)).unwrap())[0].0,
        "delete"
    );
}

#[test]
fn truncate_logs_or_fails_as_configured() {
    let r = orders();
    let mut log = transformer(&["table = \"public.orders\"\nindex = \"o\"\n"]);
    assert!(
        run(&mut log, &change(&r, ChangeKind::Truncate))
            .unwrap()
            .is_empty()
    );
    let mut fail =
        transformer(&["table = \"public.orders\"\nindex = \"o\"\non_truncate = \"fail\"\n"]);
    assert!(matches!(
        run(&mut fail, &change(&r, ChangeKind::Truncate)),
        Err(TransformError::Truncated { .. })
    ));
}

#[test]
fn unchanged_toast_is_filled_from_the_full_old_row() {
    let r = orders();
    let mut t =
        transformer(&["table = \"public.orders\"\nindex = \"o\"\ninclude = [\"id\", \"note\"]\n"]);
    let mut new = row(&order_row());
    new[4] = Datum::Unchanged;
    let c = change(
        &r,
        ChangeKind::Update {
            old: Some(OldRow::Full(row(&order_row()))),
            new,
        },
    );
    assert_eq!(
        summary(&run(&mut t, &c).unwrap())[0].4,
        json!({"id":7,"note":"hello"})
    );
}

#[test]
fn unchanged_toast_without_an_old_row_emits_nothing_and_asks_for_the_row() {
    let r = orders();
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"a\"\ninclude = [\"id\"]\n",
        "table = \"public.orders\"\nindex = \"b\"\ninclude = [\"id\", \"note\"]\n",
    ]);
    let mut new = row(&order_row());
    new[4] = Datum::Unchanged;
    let c = change(&r, ChangeKind::Update { old: None, new });
    let mut out = Vec::new();
    let err = t.transform(&c, &mut out).unwrap_err();
    assert!(out.is_empty(), "no partial output, not even for mapping a");
    match err {
        TransformError::NeedsFullRow {
            column,
            key,
            mapping,
            ..
        } => {
            assert_eq!((column.as_str(), &*mapping), ("note", "m1"));
            assert_eq!(key, json!({"id": 7}));
        }
        other => panic!("{other}"),
    }
    // A mapping that does not use the column is unaffected.
    let mut only_a =
        transformer(&["table = \"public.orders\"\nindex = \"a\"\ninclude = [\"id\"]\n"]);
    assert_eq!(run(&mut only_a, &c).unwrap().len(), 1);
}

#[test]
fn one_table_feeds_several_indices_and_other_tables_are_ignored() {
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"a\"\ninclude = [\"id\"]\n",
        "table = \"public.orders\"\nindex = \"b\"\ninclude = [\"total\"]\n",
    ]);
    let ops = run(&mut t, &insert(&orders(), &order_row())).unwrap();
    let idx: Vec<&str> = ops.iter().map(|o| &*o.index).collect();
    assert_eq!(idx, ["a", "b"]);
    let other = Arc::new(Relation {
        name: "other".into(),
        id: 9,
        ..(*orders()).clone()
    });
    assert!(
        run(&mut t, &insert(&other, &order_row()))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_new_relation_message_rebinds_column_positions() {
    let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\n"]);
    let r1 = rel(5, &[("id", true), ("a", false)], ReplicaIdentity::Default);
    run(&mut t, &insert(&r1, &[json!(1), json!("x")])).unwrap();
    // Same id, columns reordered and one added.
    let r2 = rel(
        5,
        &[("b", false), ("id", true), ("a", false)],
        ReplicaIdentity::Default,
    );
    let ops = run(&mut t, &insert(&r2, &[json!(true), json!(1), json!("x")])).unwrap();
    assert_eq!(summary(&ops)[0].4, json!({"b":true,"id":1,"a":"x"}));
    // A column the mapping needs disappears.
    let mut t =
        transformer(&["table = \"public.orders\"\nindex = \"o\"\ninclude = [\"id\", \"a\"]\n"]);
    let r3 = rel(5, &[("id", true)], ReplicaIdentity::Default);
    assert!(matches!(
        run(&mut t, &insert(&r3, &[json!(1)])),
        Err(TransformError::MissingColumn { .. })
    ));
}

#[test]
fn conversion_failures_name_the_column() {
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"o\"\ninclude = [\"id\"]\n[fields]\nn = { column = \"note\", convert = \"integer\" }\n",
    ]);
    let err = run(&mut t, &insert(&orders(), &order_row())).unwrap_err();
    assert!(
        matches!(err, TransformError::Convert { ref column, .. } if column == "note"),
        "{err}"
    );
}

proptest::proptest! {
    /// Whatever the values, the document is valid JSON holding exactly them.
    #[test]
    fn documents_are_valid_json_for_any_values(
        name in ".*",
        note in proptest::option::of(".*"),
        n in proptest::num::i64::ANY,
        f in -1.0e300f64..1.0e300,
    ) {
        let r = rel(6, &[("id", true), ("name", false), ("note", false), ("f", false)], ReplicaIdentity::Default);
        let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\n[fields]\nlabel = { template = \"{name}/{note}\" }\n"]);
        let note_v = note.clone().map(Value::from).unwrap_or(Value::Null);
        let ops = run(&mut t, &insert(&r, &[json!(n), json!(name), note_v.clone(), json!(f)])).unwrap();
        let doc = &summary(&ops)[0].4;
        let label = format!("{name}/{}", note.unwrap_or_default());
        // Both sides through the same printer and parser (serde_json parses
        // floats within an ulp unless `float_roundtrip` is on).
        let want = json!({"id": n, "name": name, "note": note_v, "f": f, "label": label});
        let want: Value = serde_json::from_slice(&serde_json::to_vec(&want).unwrap()).unwrap();
        proptest::prop_assert_eq!(doc, &want);
        proptest::prop_assert_eq!(&ops[0].id, &n.to_string());
    }
}

#[test]
fn several_tables_share_one_index_with_prefixed_ids() {
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"search\"\nid_prefix = \"order-\"\ninclude = [\"id\"]\n[fields]\nkind = { value = \"order\" }\n",
        "table = \"public.customers\"\nindex = \"search\"\nid_prefix = \"customer-\"\ninclude = [\"id\"]\n[fields]\nkind = { value = \"customer\" }\n",
    ]);
    let customers = Arc::new(Relation {
        name: "customers".into(),
        id: 10,
        ..(*orders()).clone()
    });
    let mut ops = run(&mut t, &insert(&orders(), &order_row())).unwrap();
    ops.extend(run(&mut t, &insert(&customers, &order_row())).unwrap());
    assert_eq!(
        summary(&ops),
        vec![
            (
                "index".into(),
                "search".into(),
                "order-7".into(),
                None,
                json!({"id":7,"kind":"order"})
            ),
            (
                "index".into(),
                "search".into(),
                "customer-7".into(),
                None,
                json!({"id":7,"kind":"customer"})
            ),
        ]
    );
}

#[test]
fn a_row_one_mapping_cannot_convert_is_rejected_for_that_mapping_only() {
    let mut t = transformer(&[
        "table = \"public.orders\"\nindex = \"a\"\ninclude = [\"id\"]\n[fields]\nn = { column = \"note\", convert = \"integer\" }\n",
        "table = \"public.orders\"\nindex = \"b\"\ninclude = [\"id\", \"note\"]\n",
    ]);
    let (mut out, mut rejected) = (Vec::new(), Vec::new());
    let n = t
        .transform_rows(&insert(&orders(), &order_row()), &mut out, &mut rejected)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        summary(&out),
        [(
            "index".into(),
            "b".into(),
            "7".into(),
            None,
            json!({"id": 7, "note": "hello"})
        )]
    );
    assert!(
        matches!(&rejected[..], [TransformError::Convert { mapping, column, .. }] if &**mapping == "m0" && column == "note"),
        "{rejected:?}"
    );
    assert_eq!(rejected[0].scope(), FailureScope::Row);
    assert_eq!(rejected[0].key(), Some(&json!({"id": 7})));
    // `transform` keeps its all-or-nothing contract for the snapshot path.
    let mut all = Vec::new();
    assert!(
        t.transform(&insert(&orders(), &order_row()), &mut all)
            .is_err()
    );
    assert!(all.is_empty());
}

#[test]
fn row_failures_are_the_rows_and_plan_failures_the_mappings() {
    let table: Arc<str> = "public.orders".into();
    let mapping: Arc<str> = "m".into();
    let key = json!({"id": 1});
    let row = [
        TransformError::NullId {
            table: table.clone(),
            mapping: mapping.clone(),
            column: "id".into(),
            key: key.clone(),
        },
        TransformError::Convert {
            table: table.clone(),
            mapping: mapping.clone(),
            column: "n".into(),
            reason: "not a number".into(),
            key: key.clone(),
        },
        TransformError::MissingOldValue {
            table: table.clone(),
            mapping: mapping.clone(),
            column: "region".into(),
            key,
        },
    ];
    let whole = [
        TransformError::MissingColumn {
            table: table.clone(),
            mapping: mapping.clone(),
            column: "gone".into(),
        },
        TransformError::NoId {
            table: table.clone(),
            mapping: mapping.clone(),
        },
        TransformError::Truncated { table, mapping },
    ];
    assert!(row.iter().all(|e| e.scope() == FailureScope::Row));
    assert!(whole.iter().all(|e| e.scope() == FailureScope::Mapping));
}

fn renamed(r: &Arc<Relation>, name: &str) -> Arc<Relation> {
    let mut n = (**r).clone();
    n.name = name.into();
    Arc::new(n)
}

#[test]
fn a_renamed_table_keeps_its_mapping_by_relation_id() {
    let mut t = transformer(&["table = \"public.orders\"\nindex = \"o\"\ninclude = [\"id\"]\n"]);
    let r = orders();
    assert_eq!(run(&mut t, &insert(&r, &order_row())).unwrap().len(), 1);
    let ops = run(&mut t, &insert(&renamed(&r, "orders_v2"), &order_row())).unwrap();
    assert_eq!(summary(&ops)[0].1, "o", "still indexed after the rename");
    assert_eq!(&*ops[0].origin.table, "public.orders_v2");
    // Another relation that merely had no mapping stays unmapped.
    let other = rel(2, &[("id", true)], ReplicaIdentity::Default);
    assert!(
        run(&mut t, &insert(&renamed(&other, "misc"), &[json!(1)]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_relation_known_by_oid_at_start_is_mapped_under_the_name_it_had_before_a_rename() {
    // The mapping names the table as it is called now; the backlog's
    // Relation messages still carry the old name.
    let t = transformer(&["table = \"public.orders_v2\"\nindex = \"o\"\ninclude = [\"id\"]\n"]);
    let mut t = t.with_relation_ids([(1, "public.orders_v2".to_string())]);
    let ops = run(&mut t, &insert(&orders(), &order_row())).unwrap();
    assert_eq!(summary(&ops)[0].1, "o");
}
