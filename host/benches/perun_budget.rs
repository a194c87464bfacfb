//! Perun calls per billed point in real time: the stack's shape on a
//! clock 100x faster. The exporter refreshes every 60 s and Prometheus
//! scrapes every 15 s (here 0.6 s and 0.15 s); the service publishes at
//! most every 300 s per project (here 3 s, `OS_CREDITS_PERUN_SYNC_INTERVAL`).
//! 40 projects on 2 sites, 2 metrics each; every scrape is one `/write`, as
//! an InfluxDB subscription posts it. The real binary against `fake-perun`.
//!
//! Reports Perun calls (counted by the fake) per billed point (counted by
//! the service) after the run; the Python service made ~20. Target: at most
//! 0.2. `cargo bench -p os-credits --bench perun_budget`;
//! `BENCH_SECONDS` sets the run's length (default 60, i.e. 100 minutes of
//! the stack).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const PROJECTS: usize = 40;
const SITES: [&str; 2] = ["8676", "8677"];
const METRICS: [&str; 2] = ["project_vcpu_usage", "project_mb_usage"];
/// A scrape every 15 s, scaled.
const SCRAPE: Duration = Duration::from_millis(150);
/// The exporter refreshes every 4th scrape (60 s).
const REFRESH_EVERY: usize = 4;
/// 300 s, scaled.
const SYNC_INTERVAL_SECONDS: &str = "3";

fn scrape(round: usize, at_ns: i64) -> String {
    let mut body = String::new();
    for project in 0..PROJECTS {
        for (s, site) in SITES.iter().enumerate() {
            for (m, metric) in METRICS.iter().enumerate() {
                let refreshes = (round / REFRESH_EVERY) as f64;
                let value = 1000.0 + refreshes * (1 + (project + s + m) % 5) as f64 * 0.25;
                body.push_str(&format!(
                    "{metric},domain_name=elixir,location=site-{site},location_id={site},project_name=budget_{project} value={value} {at_ns}\n"
                ));
            }
        }
    }
    body
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let perun = common::fake_perun::FakePerun::start();
    for project in 0..PROJECTS {
        perun.add_group(&json!({
            "name": format!("budget_{project}"), "id": 5000 + project,
            "attributes": { "denbiCreditsGranted": "1000000" },
            "resources": { "8676": {}, "8677": {} },
        }));
    }
    let mut env = perun.env();
    env.retain(|(k, _)| *k != "OS_CREDITS_PERUN_SYNC_INTERVAL");
    env.push((
        "OS_CREDITS_PERUN_SYNC_INTERVAL",
        SYNC_INTERVAL_SECONDS.into(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let data = tempfile::tempdir().expect("temp dir");
    let policies = common::policy_dir(&[]);
    let service = common::Service::start(data.path(), policies.path(), &env);
    let client = common::http();
    let url = format!("{}/write?db=portal_prometheus&precision=ns", service.url);
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let at_ns = chrono::Utc::now()
            .timestamp_nanos_opt()
            .expect("a date in range");
        let response = client
            .post(&url)
            .body(scrape(round, at_ns))
            .send()
            .expect("posted");
        assert_eq!(response.status().as_u16(), 204, "write refused");
        round += 1;
        // The clock of the scrape, not a wait for a condition.
        let next = SCRAPE * round as u32;
        if let Some(rest) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let stats = service.get_json("/stats");
    let billed = stats["points"]["billed"].as_u64().expect("billed points");
    let state = perun.state();
    let calls = state["calls"].as_u64().expect("calls");
    println!(
        "perun_budget: {seconds} s ({} min of the stack), {round} scrapes, {PROJECTS} projects x {} sites x {} metrics",
        seconds * 100 / 60,
        SITES.len(),
        METRICS.len()
    );
    println!("perun_budget: calls by method {}", state["by_method"]);
    println!(
        "perun_budget: {calls} Perun calls for {billed} billed points = {:.3} per billed point (target <= 0.2; the Python service ~20)",
        calls as f64 / billed.max(1) as f64
    );
}
