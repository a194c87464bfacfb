//! A billed step through the Wasm de.NBI policy against the same formula
//! (the same crate, compiled natively), both as a bare pricing call and as
//! a whole billing step (`Book::apply`: key lookup, rules, pricing, totals).
//!
//! Run with `make bench` or `cargo bench -p os-credits --bench policy`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use denbi_policy::Denbi;
use os_credits::billing::{Book, Priced, Pricer};
use os_credits::ingest::{Measurement, Tag};
use os_credits::policy::{CallError, Limits, PolicyRuntime, Usage};
use pricing_sdk::Policy as _;

/// The de.NBI formula natively, behind the same `Pricer` interface: the
/// host's usage becomes the SDK's `Usage` as the Wasm glue does, with the
/// tags the policy declares it reads (none).
struct Native(Denbi);

impl Pricer for Native {
    fn prices(&self, _location_id: &str, metric: &str) -> bool {
        metric == "project_vcpu_usage" || metric == "project_mb_usage"
    }

    fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError> {
        let usage = pricing_sdk::Usage {
            metric: usage.metric.to_owned(),
            project: usage.project.to_owned(),
            location_id: usage.location_id.to_owned(),
            // de.NBI declares it reads no tags: none cross, as for the Wasm.
            tags: Default::default(),
            previous: pricing_sdk::Measurement::new(usage.previous.0, usage.previous.1),
            current: pricing_sdk::Measurement::new(usage.current.0, usage.current.1),
        };
        let credits = self
            .0
            .bill(&usage)
            .map_err(|e| CallError::Refused(e.to_string()))?;
        Ok(Priced {
            credits,
            policy: None,
        })
    }
}

fn stack_tags() -> Vec<Tag<'static>> {
    [
        ("domain_id", "04fcd5555daf106d"),
        ("domain_name", "elixir"),
        ("instance", "usage_exporter:8080"),
        ("job", "project_usages"),
        ("location", "bielefeld"),
        ("location_id", "8676"),
        ("project_id", "4ba2e1619fb9af5084768b8c54dd0ba5"),
        ("project_name", "os_credits_0"),
    ]
    .into_iter()
    .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
    .collect()
}

fn bench(c: &mut Criterion) {
    let runtime = PolicyRuntime::new(Limits::default()).expect("engine");
    let wasm = runtime
        .load(&common::wasm("denbi-policy"), "")
        .expect("de.NBI policy loads");
    let native = Native(Denbi::configure("").expect("defaults"));
    let tags = stack_tags();
    let usage = Usage {
        metric: "project_vcpu_usage",
        project: "os_credits_0",
        location_id: "8676",
        tags: &tags,
        previous: (1_714_609_360_727_000_000, "10749.617071944445"),
        current: (1_714_609_420_727_000_000, "10750.617071944445"),
    };

    let mut group = c.benchmark_group("price one step");
    group.bench_function("wasm", |b| b.iter(|| wasm.bill(black_box(&usage))));
    group.bench_function("native", |b| {
        b.iter(|| Pricer::bill(&native, black_box(&usage)))
    });
    group.finish();

    let mut group = c.benchmark_group("billing step (Book::apply)");
    let values: Vec<String> = (0..100_000)
        .map(|i| format!("{}.617071944445", 10_749 + i))
        .collect();
    for (name, pricer) in [
        ("wasm", &wasm as &dyn Pricer),
        ("native", &native as &dyn Pricer),
    ] {
        group.bench_function(name, |b| {
            let mut book = Book::new();
            let mut i = 0usize;
            b.iter(|| {
                i += 1;
                let text = &values[i % values.len()];
                let m = Measurement {
                    metric: "project_vcpu_usage",
                    project: "os_credits_0",
                    location_id: "8676",
                    timestamp: i as i64 * 15_000_000_000,
                    value: text.parse().unwrap_or_default(),
                    text,
                    tags: &tags,
                };
                // A wrap-around of `values` is a counter drop: re-baselined, cheap and rare.
                book.apply(black_box(&m), &DynPricer(pricer))
            })
        });
    }
    group.finish();
}

/// Lets `Book::apply` take a `&dyn Pricer`.
struct DynPricer<'a>(&'a dyn Pricer);

impl Pricer for DynPricer<'_> {
    fn prices(&self, location_id: &str, metric: &str) -> bool {
        self.0.prices(location_id, metric)
    }
    fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError> {
        self.0.bill(usage)
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
