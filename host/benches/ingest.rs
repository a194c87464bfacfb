//! Line-protocol parsing throughput on stack-shaped lines (one core).
//!
//! Run with `make bench` or `cargo bench -p os-credits --bench ingest`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use os_credits::ingest::{Item, Precision, lines, parse_lines};

fn bench(c: &mut Criterion) {
    let body = std::fs::read(common::repo_file("examples/stack-sample.lp")).expect("sample");
    let count = parse_lines(&body).count() as u64;

    let mut group = c.benchmark_group("line protocol");
    group.throughput(Throughput::Elements(count));
    group.bench_function("parse", |b| {
        b.iter(|| {
            parse_lines(black_box(&body))
                .filter(|(_, p)| p.is_ok())
                .count()
        })
    });
    group.bench_function("parse + sample", |b| {
        b.iter(|| {
            lines(black_box(&body), Precision::Nanoseconds, 0)
                .filter(|(_, item)| matches!(item, Item::Sample(_)))
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
