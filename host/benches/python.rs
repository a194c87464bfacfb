//! Python policies: activation of the de.NBI policy in Python (a new
//! module, compiled; the same module after a restart, from the compile
//! cache), the same for the Rust policy, and priced steps per second of
//! both (batches of 256 steps, as the engine sends them).
//!
//! `cargo bench -p os-credits --bench python` (or `make bench`).
//! `BENCH_PYTHON_MODULE=path.wasm` measures that module in place of the
//! Python de.NBI policy (another SDK's build of it, to compare).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use os_credits::policy::{Limits, Module, PolicyRuntime, Step};

const ROUNDS: usize = 5;
const BATCH: usize = 256;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn activation(name: &str, bytes: &[u8]) -> Module {
    // New: no cache, the module compiled.
    let started = Instant::now();
    let runtime = PolicyRuntime::new(Limits::default()).expect("engine");
    runtime.load_bytes(bytes, "").expect("loads");
    let new = started.elapsed();
    // Cached: a fresh runtime (as after a restart) on a warm cache.
    let cache = tempfile::tempdir().expect("temp dir");
    let mut warm = PolicyRuntime::new(Limits::default()).expect("engine");
    warm.use_cache(cache.path()).expect("cache");
    warm.load_bytes(bytes, "").expect("loads");
    let mut cached = Vec::new();
    let mut module = None;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut runtime = PolicyRuntime::new(Limits::default()).expect("engine");
        runtime.use_cache(cache.path()).expect("cache");
        let loaded = runtime.load_bytes(bytes, "").expect("loads");
        cached.push(started.elapsed());
        assert!(loaded.info().activation.cached);
        module = Some(loaded);
    }
    println!(
        "python/activation: {name:<13} {:>5.1} MiB  new {:>8.2?}  cached (median of {ROUNDS}) {:>8.2?}",
        bytes.len() as f64 / (1 << 20) as f64,
        new,
        median(cached)
    );
    module.expect("loaded")
}

fn steps_per_second(name: &str, module: &Module) -> f64 {
    let values: Vec<(String, String)> = (0..BATCH)
        .map(|i| (format!("{}.25", 1000 + i), format!("{}.75", 1003 + i)))
        .collect();
    let projects: Vec<String> = (0..BATCH).map(|i| format!("project_{i}")).collect();
    let steps: Vec<Step<'_>> = (0..BATCH)
        .map(|i| Step {
            metric: if i % 2 == 0 {
                "project_vcpu_usage"
            } else {
                "project_mb_usage"
            },
            project: &projects[i],
            location_id: "8676",
            tags: &[],
            previous: (1_714_609_360_000_000_000, &values[i].0),
            current: (1_714_609_375_000_000_000, &values[i].1),
        })
        .collect();
    // Warm up, then as many batches as fit in about two seconds.
    for _ in 0..3 {
        assert!(module.bill_batch(&steps).iter().all(Result::is_ok));
    }
    let started = Instant::now();
    let mut batches = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let priced = module.bill_batch(&steps);
        assert_eq!(priced.len(), BATCH);
        batches += 1;
    }
    let rate = (batches * BATCH) as f64 / started.elapsed().as_secs_f64();
    println!("python/bill: {name:<13} {rate:>10.0} priced steps/s");
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let python = match std::env::var_os("BENCH_PYTHON_MODULE") {
        Some(path) => std::fs::read(path).expect("BENCH_PYTHON_MODULE is readable"),
        None => std::fs::read(common::python_wasm("denbi-python")).expect("module"),
    };
    let rust = std::fs::read(common::wasm("denbi-policy")).expect("module");
    let python = activation("denbi-python", &python);
    let rust = activation("denbi (Rust)", &rust);
    let p = steps_per_second("denbi-python", &python);
    let r = steps_per_second("denbi (Rust)", &rust);
    println!(
        "python/bill: Rust prices {:.1}x as many steps per second",
        r / p
    );
}
