//! Line-protocol parsing throughput on stack-shaped lines (one core), and
//! what write credentials add: the site check of a scoped writer per
//! point, and the check of a remembered credential per request.
//!
//! Run with `make bench` or `cargo bench -p os-credits --bench ingest`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use os_credits::billing::scope::{Scope, Scoped};
use os_credits::ingest::{Item, Precision, lines, parse_lines};
use os_credits::writers::{Credential, Writers};

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
    let scope = Scope::from_text("exporter", "8676,8677,8678");
    group.bench_function("parse + sample + scope", |b| {
        b.iter(|| {
            Scoped::new(
                lines(black_box(&body), Precision::Nanoseconds, 0),
                Some(&scope),
            )
            .filter(|(_, item)| matches!(item, Item::Sample(_)))
            .count()
        })
    });
    group.finish();

    // A request's credential, once its bcrypt hash was verified (the
    // first use, tens of milliseconds, is not what this measures).
    let folder = tempfile::tempdir().expect("temp dir");
    let (users, tokens) = (folder.path().join("users"), folder.path().join("tokens"));
    let hash = bcrypt::hash("secret", bcrypt::DEFAULT_COST).expect("bcrypt");
    std::fs::write(&users, format!("# sites: 8676\nexporter:{hash}\n")).expect("users");
    std::fs::write(&tokens, "prometheus prometheus-token-0123456789\n").expect("tokens");
    let writers = Writers::open(Some(users), Some(tokens)).expect("credentials");
    let basic = Credential::Password {
        user: "exporter".into(),
        password: "secret".into(),
    };
    let token = Credential::Token("prometheus-token-0123456789".into());
    assert!(writers.verify(Some(&basic)).is_ok());
    let mut group = c.benchmark_group("write credential");
    group.throughput(Throughput::Elements(1));
    group.bench_function("basic, remembered", |b| {
        b.iter(|| writers.known(Some(black_box(&basic))))
    });
    group.bench_function("token", |b| {
        b.iter(|| writers.known(Some(black_box(&token))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
