//! Prometheus remote write: requests of 2,000 samples (Prometheus' default
//! batch) decoded (snappy, protobuf) and applied through billing with the
//! Wasm de.NBI policy, as `/api/v1/write` does on one core (the ledger
//! commit aside: `benches/service.rs` measures it for `/write`).
//!
//! The stack's shape: 2,000 series (1,000 projects, 2 metrics, one site),
//! a sample each per request, the exporter refreshing every 4th scrape (3
//! of 4 samples repeat the previous value). Criterion's `thrpt` is samples
//! per second. `cargo bench -p os-credits --bench remote_write`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use os_credits::billing::intake::Intake;
use os_credits::ingest::remote_write::{
    Label, Labels, PromSample, TimeSeries, WriteRequest, decode, encode, samples,
};
use os_credits::policy::{Limits, PolicyRuntime};

const SERIES: usize = 2000;
/// Distinct requests decoded in turn by the decode-only benchmark.
const ROUNDS: usize = 16;
const T0_MS: i64 = 1_714_609_360_727;

fn label(name: &str, value: &str) -> Label {
    Label {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// The request of scrape `round`, encoded as Prometheus sends it.
fn request(round: usize) -> Vec<u8> {
    let timeseries = (0..SERIES)
        .map(|series| {
            let project = series / 2;
            let metric = ["project_vcpu_usage", "project_mb_usage"][series % 2];
            let value = 1000.0 + ((round / 4) * (1 + series % 7)) as f64 * 0.1;
            TimeSeries {
                labels: vec![
                    label("__name__", metric),
                    label("domain_name", "elixir"),
                    label("instance", "usage_exporter:8080"),
                    label("job", "project_usages"),
                    label("location", "site-a"),
                    label("location_id", "8676"),
                    label("project_id", &format!("{project:032x}")),
                    label("project_name", &format!("project_{project}")),
                ],
                samples: vec![PromSample {
                    value,
                    timestamp: T0_MS + round as i64 * 15_000,
                }],
                histograms: Vec::new(),
            }
        })
        .collect();
    encode(&WriteRequest { timeseries })
}

fn bench(c: &mut Criterion) {
    let runtime = PolicyRuntime::new(Limits::default()).expect("engine");
    let policy = runtime
        .load(&common::wasm("denbi-policy"), "")
        .expect("de.NBI policy loads");
    let bodies: Vec<Vec<u8>> = (0..ROUNDS).map(request).collect();
    let labels = Labels::default();
    let mut group = c.benchmark_group("remote write");
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("decode", |b| {
        let mut round = 0;
        b.iter(|| {
            round += 1;
            black_box(decode(black_box(&bodies[round % ROUNDS]), 64 << 20).expect("decodes"))
        })
    });
    group.bench_function("decode + bill", |b| {
        let mut intake = Intake::new();
        let mut round = 0;
        // Each request a new scrape (encoding it is not timed).
        b.iter_batched(
            || {
                round += 1;
                request(round)
            },
            |body| {
                let request = decode(&body, 64 << 20).expect("decodes");
                black_box(intake.feed(&policy, samples(&request, &labels), |_| {}, |_, _, _| {}))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
