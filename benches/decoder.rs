//! Decoder + value conversion throughput for a typical 10-column row of
//! mixed types (target: ≥ 1,000,000 rows/s on one core).
//!
//! Besides criterion's wall-clock figure it prints the thread's CPU time per
//! row over a fixed run (from /proc, 10 ms ticks over seconds of work): on a
//! machine shared with other builds, wall time measures the neighbours too.

use criterion::{Criterion, Throughput, criterion_group};
use sluice::model::SourceEvent;
use sluice::source::pgoutput::fixture::{Col, begin, insert, relation};
use sluice::source::{Decoder, TypeCatalog, ValueOptions};

/// A decoder that has seen the table's Relation inside an open transaction,
/// and one Insert of the typical row.
fn setup() -> (Decoder, Vec<u8>) {
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
    (d, row)
}

fn bench(c: &mut Criterion) {
    let (mut d, row) = setup();
    let mut out: Vec<SourceEvent> = Vec::new();
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

/// This thread's user+system CPU time in seconds (clock ticks of 10 ms).
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_time_per_row() {
    let (mut d, row) = setup();
    let mut out: Vec<SourceEvent> = Vec::new();
    const ROWS: u32 = 5_000_000;
    let (cpu0, wall0) = (thread_cpu_secs(), std::time::Instant::now());
    for _ in 0..ROWS {
        d.decode(std::hint::black_box(&row), &mut out).unwrap();
        out.clear();
    }
    let (cpu, wall) = (thread_cpu_secs() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "pgoutput/decode_and_convert_10_column_insert, {ROWS} rows: {:.0} ns CPU/row ({:.2} M rows per CPU-second), {:.0} ns wall/row",
        cpu * 1e9 / ROWS as f64,
        ROWS as f64 / cpu / 1e6,
        wall * 1e9 / ROWS as f64
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    cpu_time_per_row();
    Criterion::default().configure_from_args().final_summary();
}
