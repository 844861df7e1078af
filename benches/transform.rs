//! Transformer throughput: a 10-column row with a few renames (one nested)
//! and one template field, against a baseline in the same run that builds
//! the same document the obvious way (a `serde_json::Map`, then `to_vec`).
//!
//! `cargo bench --bench transform`; rows/s = 1 / time per iteration.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluice::Lsn;
use sluice::config::Mappings;
use sluice::model::BulkOp;
use sluice::model::{Change, ChangeKind, Column, Datum, Relation, ReplicaIdentity};
use sluice::transform::Transformer;

const MAPPING: &str = r#"
table = "public.orders"
index = "orders"
[rename]
customer_id = "customer.id"
created_at = "created"
qty = "quantity"
[fields]
label = { template = "{status} order {id} ({region})" }
"#;

fn relation() -> Arc<Relation> {
    let cols = [
        "id",
        "customer_id",
        "status",
        "region",
        "total",
        "note",
        "created_at",
        "updated_at",
        "qty",
        "active",
    ];
    Arc::new(Relation {
        id: 16384,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: cols
            .iter()
            .enumerate()
            .map(|(i, n)| Column {
                name: n.to_string(),
                type_oid: 25,
                type_modifier: -1,
                is_key: i == 0,
            })
            .collect(),
    })
}

fn values() -> Vec<Value> {
    vec![
        json!(123456),
        json!(42),
        json!("placed"),
        json!("eu-west"),
        json!("1234.50"),
        json!("Leave the parcel at the back door, please."),
        json!("2024-03-05T10:11:12.123456Z"),
        json!("2024-03-06T08:00:00Z"),
        json!(3),
        json!(true),
    ]
}

fn bench(c: &mut Criterion) {
    let mappings = Mappings::from_texts(&[(Path::new("orders.toml"), MAPPING)]).unwrap();
    let mut t = Transformer::new(&mappings);
    let rel = relation();
    let change = Change {
        relation: rel.clone(),
        kind: ChangeKind::Insert {
            new: values().into_iter().map(Datum::Value).collect(),
        },
        version: Lsn(0x16_B374_D848),
        commit_time: Utc.with_ymd_and_hms(2024, 3, 5, 10, 0, 0).unwrap(),
        xid: 0,
    };
    let mut out: Vec<BulkOp> = Vec::with_capacity(1);

    let mut g = c.benchmark_group("transform_10_columns");
    g.throughput(Throughput::Elements(1));
    g.bench_function("transformer", |b| {
        b.iter(|| {
            out.clear();
            t.transform(std::hint::black_box(&change), &mut out)
                .unwrap();
            std::hint::black_box(&out);
        })
    });
    // The same with a templated index name (column + commit time).
    let templated = MAPPING.replace(
        "index = \"orders\"",
        // A commit-time index keeps every period's documents (no deletes).
        "index = \"orders-{region}-{commit_time:%Y.%m}\"\non_delete = \"ignore\"",
    );
    let mappings = Mappings::from_texts(&[(Path::new("orders.toml"), templated.as_str())]).unwrap();
    let mut tt = Transformer::new(&mappings);
    g.bench_function("transformer_templated_index", |b| {
        b.iter(|| {
            out.clear();
            tt.transform(std::hint::black_box(&change), &mut out)
                .unwrap();
            std::hint::black_box(&out);
        })
    });
    // Baseline: the same document through serde_json::Map and to_vec.
    let names: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
    g.bench_function("baseline_serde_map", |b| {
        b.iter(|| {
            let ChangeKind::Insert { new } = &std::hint::black_box(&change).kind else {
                unreachable!()
            };
            let mut doc = serde_json::Map::new();
            let mut customer = serde_json::Map::new();
            for (name, d) in names.iter().zip(new) {
                let Datum::Value(v) = d else { continue };
                match name.as_str() {
                    "customer_id" => {
                        customer.insert("id".into(), v.clone());
                    }
                    "created_at" => {
                        doc.insert("created".into(), v.clone());
                    }
                    "qty" => {
                        doc.insert("quantity".into(), v.clone());
                    }
                    _ => {
                        doc.insert(name.clone(), v.clone());
                    }
                }
            }
            doc.insert("customer".into(), Value::Object(customer));
            let label = format!(
                "{} order {} ({})",
                doc["status"].as_str().unwrap(),
                doc["id"],
                doc["region"].as_str().unwrap()
            );
            doc.insert("label".into(), Value::String(label));
            let bytes = serde_json::to_vec(&doc).unwrap();
            std::hint::black_box((bytes, doc["id"].to_string()));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
