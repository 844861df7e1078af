//! Mapping files: parsing, located errors, cross-mapping rules, catalog
//! validation, publication entries and index specs.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::model::{CatalogColumn, CatalogTable};

fn load(files: &[(&str, &str)]) -> Result<Mappings, ConfigErrors> {
    let texts: Vec<(&Path, &str)> = files.iter().map(|(f, t)| (Path::new(*f), *t)).collect();
    Mappings::from_texts(&texts)
}

fn one_error(files: &[(&str, &str)]) -> String {
    let e = load(files).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    e.to_string()
}

fn table(cols: &[(&str, &str)], pk: &[&str], ident: ReplicaIdentity) -> CatalogTable {
    CatalogTable {
        table: TableRef::new("public", "orders"),
        oid: 1,
        partitioned: false,
        columns: cols
            .iter()
            .map(|(n, t)| CatalogColumn::named(n, t))
            .collect(),
        primary_key: pk.iter().map(|s| s.to_string()).collect(),
        replica_identity: ident,
        identity_index: Vec::new(),
        readable: true,
        foreign_keys: Vec::new(),
        indexes: Vec::new(),
    }
}

fn catalog(t: CatalogTable) -> Catalog {
    Catalog::of([t])
}

fn orders_catalog() -> Catalog {
    catalog(table(
        &[
            ("id", "bigint"),
            ("total", "numeric"),
            ("region", "text"),
            ("status", "text"),
        ],
        &["id"],
        ReplicaIdentity::Default,
    ))
}

#[test]
fn a_full_mapping_file_parses_into_every_feature() {
    let m = load(&[(
        "mappings/orders.toml",
        r#"
table = "public.orders"
index = "orders-{region}"
id = ["id"]
include = ["id", "total", "region"]
filter = "status <> 'draft'"
routing = "region"
pipeline = "p1"
alias = "orders"
soft_delete_column = "status"
on_delete = "delete"
on_truncate = "fail"
[rename]
region = "geo.region"
[fields]
total = { column = "total", convert = "float" }
label = { template = "{id}/{region}" }
kind = { value = "order" }
[index_settings]
number_of_shards = 1
[index_mappings]
properties.total = { type = "double" }
"#,
    )])
    .unwrap();
    let m = &m.list[0];
    assert_eq!(&*m.name, "orders");
    assert_eq!(&*m.qualified_table, "public.orders");
    assert_eq!(m.filter.as_deref(), Some("status <> 'draft'"));
    assert_eq!(m.index_pattern(), "orders-*");
    assert_eq!(m.on_truncate, OnTruncate::Fail);
    assert_eq!(m.renames["region"], vec!["geo", "region"]);
    assert_eq!(m.fields.len(), 3);
    let body = m.create_index_body("3600s");
    assert_eq!(body["settings"]["index.gc_deletes"], json!("3600s"));
    assert_eq!(body["settings"]["number_of_shards"], json!(1));
    assert_eq!(
        body["mappings"]["properties"]["total"]["type"],
        json!("double")
    );
    assert_eq!(body["aliases"], json!({"orders": {}}));
}

#[test]
fn mapping_errors_name_file_line_key_and_suggest() {
    let cases: Vec<(&str, &[&str])> = vec![
        (
            "table = \"public.orders\"\nindex = \"o\"\nroutin = \"x\"\n",
            &["m.toml line 3", "`routin`", "did you mean `routing`?"],
        ),
        (
            "table = \"public.orders\"\nindex = \"Orders\"\n",
            &["line 2", "lower-case"],
        ),
        (
            "table = \"public.orders\"\nindex = \"o-{x\"\n",
            &["line 2", "never closed"],
        ),
        (
            "table = \"a.b.c\"\nindex = \"o\"\n",
            &["line 1", "schema.table"],
        ),
        (
            "table = \"public.orders\"\nindex = \"o\"\n[fields]\nx = { column = \"a\", convert = \"flot\" }\n",
            &["line 4", "did you mean `float`?"],
        ),
        (
            "table = \"public.orders\"\nindex = \"o\"\n[fields]\nx = { column = \"a\", value = 1 }\n",
            &["exactly one of"],
        ),
        (
            "table = \"public.orders\"\nindex = \"o\"\ninclude = [\"a\"]\nexclude = [\"b\"]\n",
            &["line 4", "both set"],
        ),
        (
            "table = \"public.orders\"\nindex = \"o\"\n[rename]\na = \"x\"\n[fields]\n\"x.y\" = { value = 1 }\n",
            &["`x` is a value and also holds `x.y`"],
        ),
        (
            "table = \"public.orders\"\nindex = \"o\"\n[fields]\n_id = { value = 1 }\n",
            &["reserved"],
        ),
        (
            "index = \"o\"\n",
            &["m.toml: required key `table` is missing"],
        ),
    ];
    for (text, wants) in cases {
        let msg = one_error(&[("m.toml", text)]);
        for w in wants {
            assert!(msg.contains(w), "expected {w:?} in: {msg}");
        }
    }
}

#[test]
fn every_file_problem_is_reported_together() {
    let e = load(&[
        ("a.toml", "table = \"public.a\"\nindex = \"A\"\n"),
        ("b.toml", "table = \"public.b\"\nindx = \"b\"\n"),
    ])
    .unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
}

#[test]
fn mappings_of_one_table_must_share_their_row_filter() {
    let msg = one_error(&[
        (
            "a.toml",
            "table = \"public.orders\"\nindex = \"a\"\nfilter = \"total > 1\"\n",
        ),
        ("b.toml", "table = \"public.orders\"\nindex = \"b\"\n"),
    ]);
    assert!(msg.starts_with("b.toml"), "{msg}");
    assert!(msg.contains("row filter differs"), "{msg}");
    assert!(
        load(&[
            (
                "a.toml",
                "table = \"public.orders\"\nindex = \"a\"\nfilter = \"total > 1\"\n"
            ),
            (
                "b.toml",
                "table = \"public.orders\"\nindex = \"b\"\nfilter = \"total > 1\"\n"
            ),
        ])
        .is_ok()
    );
}

#[test]
fn a_shared_index_is_configured_once() {
    let ok = load(&[
        (
            "a.toml",
            "table = \"public.a\"\nindex = \"all\"\n[index_settings]\nnumber_of_shards = 1\n",
        ),
        (
            "b.toml",
            "table = \"public.b\"\nindex = \"all\"\nid_prefix = \"b-\"\n",
        ),
    ])
    .unwrap();
    let specs = ok.index_specs("60s");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].body["settings"]["number_of_shards"], json!(1));
    let msg = one_error(&[
        (
            "a.toml",
            "table = \"public.a\"\nindex = \"all\"\n[index_settings]\nnumber_of_shards = 1\n",
        ),
        (
            "b.toml",
            "table = \"public.b\"\nindex = \"all\"\n[index_settings]\nnumber_of_shards = 2\n",
        ),
    ]);
    assert!(msg.starts_with("b.toml line 2: `index`"), "{msg}");
    assert!(msg.contains("also configured by a.toml"), "{msg}");
}

#[test]
fn index_settings_can_come_from_a_json_file_next_to_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("o.index.json"),
        r#"{"settings":{"number_of_replicas":0},"mappings":{"properties":{"id":{"type":"long"}}}}"#,
    )
    .unwrap();
    let f = dir.path().join("o.toml");
    std::fs::write(
        &f,
        "table = \"public.orders\"\nindex = \"o\"\nindex_file = \"o.index.json\"\n",
    )
    .unwrap();
    let m = Mappings::load_dir(dir.path()).unwrap();
    let body = m.list[0].create_index_body("60s");
    assert_eq!(body["settings"]["number_of_replicas"], json!(0));
    assert_eq!(body["mappings"]["properties"]["id"]["type"], json!("long"));
    std::fs::write(
        &f,
        "table = \"public.orders\"\nindex = \"o\"\nindex_file = \"nope.json\"\n",
    )
    .unwrap();
    assert!(
        Mappings::load_dir(dir.path())
            .unwrap_err()
            .to_string()
            .contains("line 3")
    );
}

#[test]
fn catalog_validation_finds_typos_with_suggestions() {
    let mut m = load(&[(
        "mappings/orders.toml",
        "table = \"public.orders\"\nindex = \"o\"\n\n\n\n\ninclude = [\"id\", \"totl\"]\n",
    )])
    .unwrap();
    let e = m.validate_against_catalog(&orders_catalog()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mappings/orders.toml line 7: `include`: column `totl` does not exist in public.orders; did you mean `total`?"
    );
    let mut m = load(&[("o.toml", "table = \"public.ordrs\"\nindex = \"o\"\n")]).unwrap();
    let msg = m
        .validate_against_catalog(&orders_catalog())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("did you mean `public.orders`?"), "{msg}");
}

#[test]
fn catalog_validation_requires_a_key_and_locatable_deletes() {
    let no_pk = catalog(table(
        &[("id", "bigint"), ("region", "text")],
        &[],
        ReplicaIdentity::Default,
    ));
    let mut m = load(&[("o.toml", "table = \"public.orders\"\nindex = \"o\"\n")]).unwrap();
    let msg = m.validate_against_catalog(&no_pk).unwrap_err().to_string();
    assert!(msg.contains("no primary key"), "{msg}");
    assert!(msg.contains("REPLICA IDENTITY FULL"), "{msg}");

    let mut m = load(&[(
        "o.toml",
        "table = \"public.orders\"\nindex = \"o\"\nrouting = \"region\"\n",
    )])
    .unwrap();
    let msg = m
        .validate_against_catalog(&orders_catalog())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("o.toml line 3: `routing`"), "{msg}");
    assert!(msg.contains("replica identity"), "{msg}");

    let full = catalog(table(
        &[("id", "bigint"), ("region", "text")],
        &["id"],
        ReplicaIdentity::Full,
    ));
    let mut m = load(&[(
        "o.toml",
        "table = \"public.orders\"\nindex = \"o-{region}\"\nrouting = \"region\"\n",
    )])
    .unwrap();
    m.validate_against_catalog(&full).unwrap();
    assert_eq!(m.list[0].primary_key, Some(vec!["id".to_string()]));
}

#[test]
fn publication_entries_carry_the_filter_and_a_column_list_only_when_safe() {
    let files = [
        (
            "a.toml",
            "table = \"public.orders\"\nindex = \"a\"\ninclude = [\"total\"]\nfilter = \"total > 1\"\n",
        ),
        (
            "b.toml",
            "table = \"public.orders\"\nindex = \"b\"\ninclude = [\"region\"]\nfilter = \"total > 1\"\n",
        ),
    ];
    let mut m = load(&files).unwrap();
    // Before the catalog is known, the key is unknown: publish every column.
    assert_eq!(m.publication_tables()[0].columns, None);
    m.validate_against_catalog(&orders_catalog()).unwrap();
    assert_eq!(
        m.publication_tables(),
        vec![PublishedTable {
            table: TableRef::new("public", "orders"),
            row_filter: Some("total > 1".into()),
            columns: Some(vec!["id".into(), "total".into(), "region".into()]),
        }]
    );
    let mut all = load(&[("a.toml", "table = \"public.orders\"\nindex = \"a\"\n")]).unwrap();
    all.validate_against_catalog(&orders_catalog()).unwrap();
    assert_eq!(all.publication_tables()[0].columns, None);
}

#[test]
fn the_shipped_example_mappings_and_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = |n: &str| Some(format!("<{n}>"));
    for cfg in ["sluice.example.toml", "docker/sluice.toml"] {
        let text = std::fs::read_to_string(root.join(cfg)).unwrap();
        parse_settings(&root.join(cfg), &text, &env).unwrap_or_else(|e| panic!("{cfg}: {e}"));
    }
    let m = Mappings::load_dir(&root.join("mappings")).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.list.len() >= 4);
}

#[test]
fn a_column_in_a_multi_line_list_or_field_table_is_reported_at_its_own_line() {
    let mut m = load(&[(
        "mappings/orders.toml",
        "table = \"public.orders\"\nindex = \"o\"\ninclude = [\n  \"id\",\n  \"totl\",\n]\n[fields.label]\ntemplate = \"{id}\"\n[fields.t]\n\ncolumn = \"regon\"\n",
    )])
    .unwrap();
    let e = m.validate_against_catalog(&orders_catalog()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mappings/orders.toml line 5: `include`: column `totl` does not exist in public.orders; did you mean `total`?\n\
         mappings/orders.toml line 11: `fields.t`: column `regon` does not exist in public.orders; did you mean `region`?"
    );
}

#[test]
fn every_problem_of_a_mapping_file_is_reported_without_echoes() {
    let e = load(&[(
        "m.toml",
        "table = \"public.orders\"\nindex = \"O\"\nroutng = \"region\"\non_delete = \"remove\"\n[fields]\nx = { colum = \"a\" }\ny = { column = \"a\", convert = \"flaot\" }\n",
    )])
    .unwrap_err();
    let msgs: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "m.toml line 2: `index`: index name `O` must be lower-case",
            "m.toml line 3: `routng`: unknown key; did you mean `routing`?",
            "m.toml line 4: `on_delete`: `remove` is not a valid value; use one of `delete`, `ignore`",
            "m.toml line 6: `fields.x.colum`: unknown key; did you mean `column`?",
            "m.toml line 7: `fields.y`: unknown conversion `flaot`; did you mean `float`?",
        ]
    );
}

#[test]
fn a_broken_sluice_toml_does_not_hide_the_mappings_problems() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    std::fs::write(
        dir.path().join("maps/o.toml"),
        "table = \"public.orders\"\nindx = \"o\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        "mappings_dir = \"maps\"\n[snapshot]\nmode = \"inital\"\n",
    )
    .unwrap();
    let e = Config::load_with_env(&cfg, &|_: &str| None).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.0.len(), 2, "{msg}");
    assert!(
        msg.contains("sluice.toml line 3: `snapshot.mode`: `inital` is not a valid value; did you mean `initial`?"),
        "{msg}"
    );
    assert!(
        msg.contains("o.toml line 2: `indx`: unknown key; did you mean `index`?"),
        "{msg}"
    );
}

#[test]
fn document_shape_clashes_point_at_the_line_that_writes_the_field() {
    let msg = one_error(&[(
        "m.toml",
        "table = \"public.orders\"\nindex = \"o\"\n[rename]\nregion = \"geo\"\n[fields]\n\"geo.name\" = { value = 1 }\n",
    )]);
    assert_eq!(
        msg,
        "m.toml line 6: `fields.\"geo.name\"`: `geo` is a value and also holds `geo.name`; rename one of them"
    );
    // Visible only with the table's columns: `status` is copied as well.
    let mut m = load(&[(
        "m.toml",
        "table = \"public.orders\"\nindex = \"o\"\n[rename]\nregion = \"status\"\n",
    )])
    .unwrap();
    let msg = m
        .validate_against_catalog(&orders_catalog())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "m.toml line 4: `rename.region`: two fields write `status`; rename or exclude one of them"
    );
}

#[test]
fn an_index_named_by_the_commit_time_refuses_deletes_it_could_not_aim() {
    let e = load(&[(
        "m.toml",
        "table = \"public.orders\"\nindex = \"logs-{commit_time:%Y.%m}\"\nsoft_delete_column = \"gone\"\n",
    )])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("m.toml line 2: `index`: an index named by the commit time cannot take deletes"),
        "{e}"
    );
    assert!(e.contains("set `on_delete = \"ignore\"`"), "{e}");
    assert!(e.contains("m.toml line 3: `soft_delete_column`"), "{e}");
    assert!(
        load(&[(
            "m.toml",
            "table = \"public.orders\"\nindex = \"logs-{commit_time:%Y.%m}\"\non_delete = \"ignore\"\n",
        )])
        .is_ok()
    );
}
