//! A billed step through the Wasm de.NBI policy against the same formula
//! (the same crate, compiled natively):
//! - `billed step`: what the service does per step (key lookup, rules,
//!   pricing, totals), a round of 256 keys through `Book::apply`, which
//!   prices their steps as one batch;
//! - `pricing alone`: 256 steps priced, without the book; `wasm, one step
//!   per call` shows what batching saves.
//!
//! Criterion reports the time of a round; `thrpt` is steps per second.
//!
//! Run with `make bench` or `cargo bench -p os-credits --bench policy`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use denbi_policy::Denbi;
use os_credits::billing::{Book, Priced, Pricer};
use os_credits::ingest::Sample;
use os_credits::policy::Tag;
use os_credits::policy::{CallError, Limits, MAX_BATCH, PolicyRuntime, Step};
use pricing_sdk::Policy as _;

/// The de.NBI formula natively, behind the same `Pricer` interface: the
/// host's usage becomes the SDK's `Usage` as the Wasm glue does, with the
/// tags the policy declares it reads (none).
struct Native(Denbi);

impl Pricer for Native {
    fn prices(&self, _location_id: &str, metric: &str) -> bool {
        metric == "project_vcpu_usage" || metric == "project_mb_usage"
    }

    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
        steps.iter().map(|step| self.bill(step)).collect()
    }
}

impl Native {
    fn bill(&self, usage: &Step<'_>) -> Result<Priced, CallError> {
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
        Ok(Priced::whole(credits, None))
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

/// Steps in one round: one per key, as a write of the stack carries them.
const STEPS: usize = MAX_BATCH;

fn bench(c: &mut Criterion) {
    let runtime = PolicyRuntime::new(Limits::default()).expect("engine");
    let wasm = runtime
        .load(&common::wasm("denbi-policy"), "")
        .expect("de.NBI policy loads");
    let native = Native(Denbi::configure("").expect("defaults"));
    let tags = stack_tags();
    let projects: Vec<String> = (0..STEPS).map(|i| format!("os_credits_{i}")).collect();
    let values: Vec<(String, String)> = (0..STEPS)
        .map(|i| {
            let base = 10_749 + i;
            (
                format!("{base}.617071944445"),
                format!("{}.617071944445", base + 1),
            )
        })
        .collect();
    let usages: Vec<Step<'_>> = projects
        .iter()
        .zip(&values)
        .map(|(project, (previous, current))| Step {
            metric: "project_vcpu_usage",
            project,
            location_id: "8676",
            tags: &tags,
            previous: (1_714_609_360_727_000_000, previous),
            current: (1_714_609_420_727_000_000, current),
        })
        .collect();

    let mut group = c.benchmark_group("pricing alone");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("wasm", |b| b.iter(|| wasm.bill_batch(black_box(&usages))));
    group.bench_function("native", |b| {
        b.iter(|| Pricer::price(&native, black_box(&usages)))
    });
    group.bench_function("wasm, one step per call", |b| {
        b.iter(|| {
            for usage in &usages {
                black_box(wasm.bill(black_box(usage))).expect("priced");
            }
        })
    });
    group.finish();

    // Whole billing steps: the rules, the book's keys and totals, pricing
    // in batches (`Book::apply`, as `/write` does).
    let mut group = c.benchmark_group("billed step");
    group.throughput(Throughput::Elements(STEPS as u64));
    let round_values: Vec<String> = (0..100_000)
        .map(|i| format!("{}.617071944445", 10_749 + i))
        .collect();
    for (name, pricer) in [
        ("wasm", &wasm as &dyn Pricer),
        ("native", &native as &dyn Pricer),
    ] {
        group.bench_function(name, |b| {
            let mut book = Book::new();
            let mut round = 0usize;
            // One sample per key, updated in place each round (the parser
            // builds them; here only billing is timed).
            let mut samples: Vec<Sample<'_>> = projects
                .iter()
                .map(|project| Sample {
                    metric: Cow::Borrowed("project_vcpu_usage"),
                    project: Cow::Borrowed(project),
                    location_id: Cow::Borrowed("8676"),
                    timestamp: 0,
                    value: Default::default(),
                    text: Cow::Borrowed(""),
                    tags: tags.clone(),
                })
                .collect();
            b.iter(|| {
                round += 1;
                let text = &round_values[round % round_values.len()];
                let value = text.parse().unwrap_or_default();
                for sample in &mut samples {
                    sample.timestamp = round as i64 * 15_000_000_000;
                    sample.value = value;
                    sample.text = Cow::Borrowed(text);
                }
                // A wrap-around of the values is a counter drop:
                // re-baselined, cheap and rare.
                black_box(book.apply(black_box(&samples), &DynPricer(pricer)));
            })
        });
    }
    group.finish();
}

/// Lets `Book` take a `&dyn Pricer`.
struct DynPricer<'a>(&'a dyn Pricer);

impl Pricer for DynPricer<'_> {
    fn prices(&self, location_id: &str, metric: &str) -> bool {
        self.0.prices(location_id, metric)
    }
    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
        self.0.price(steps)
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
