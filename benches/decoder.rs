//! Decoder + value conversion throughput for a typical 10-column row of
//! mixed types (target: ≥ 1,000,000 rows/s on one core).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::source::pgoutput::fixture::{Col, begin, insert, relation};
use sluice::source::{Decoder, SourceEvent, TypeCatalog, ValueOptions};

fn bench(c: &mut Criterion) {
    let mut d = Decoder::new(ValueOptions::default(), TypeCatalog::new());
    let mut out: Vec<SourceEvent> = Vec::new();
    d.decode(&begin(0x1000, 0, 1), &mut out).unwrap();
    d.decode(
        &relation(
            16384,
            "public",
            "orders",
            b'd',
            &[
                ("id", 20, true),
                ("customer_id", 23, false),
                ("status", 25, false),
                ("total", 1700, false),
                ("discount", 701, false),
                ("paid", 16, false),
                ("created_at", 1184, false),
                ("ref", 2950, false),
                ("note", 1043, false),
                ("attrs", 3802, false),
            ],
        ),
        &mut out,
    )
    .unwrap();
    let row = insert(
        16384,
        &[
            Col::Text("1234567"),
            Col::Text("42"),
            Col::Text("shipped"),
            Col::Text("199.99"),
            Col::Text("0.15"),
            Col::Text("t"),
            Col::Text("2024-05-06 07:08:09.123456+00"),
            Col::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Col::Text("leave at the door"),
            Col::Text(r#"{"gift":false,"items":3}"#),
        ],
    );
    out.clear();
    let mut g = c.benchmark_group("pgoutput");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_and_convert_10_column_insert", |b| {
        b.iter(|| {
            d.decode(std::hint::black_box(&row), &mut out).unwrap();
            out.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
