//! Perun calls per billed point, at the stack's real rates on a clock 100x
//! faster: the exporter's cumulative usage measured every 30 s (here
//! 0.3 s), each measurement one `/write` as an InfluxDB subscription posts
//! it; the service publishes at most every 300 s per project (here 3 s,
//! `OS_CREDITS_PERUN_SYNC_INTERVAL`), and the sync's own pass tick is a
//! fixed fraction of that interval, so it is scaled with it. 40 projects on
//! 2 sites, 2 metrics each, usage rising at every measurement. The real
//! binary against `fake-perun`, which counts the calls.
//!
//! Asserts at most 0.2 Perun calls per billed point (the Python service
//! made about 20). `BUDGET_SECONDS` sets the run's length (default 30 s,
//! i.e. 50 minutes of the stack).

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const PROJECTS: usize = 40;
const SITES: [&str; 2] = ["8676", "8677"];
const METRICS: [&str; 2] = ["project_vcpu_usage", "project_mb_usage"];
/// The clock's speed-up.
const SCALE: u32 = 100;
/// A measurement every 30 s, scaled.
const MEASUREMENT: Duration = Duration::from_millis(30_000 / SCALE as u64);
/// 300 s, scaled.
const SYNC_INTERVAL_SECONDS: u32 = 300 / SCALE;
/// The target.
const BUDGET: f64 = 0.2;

/// One measurement of every key: usage grows at each.
fn measurement(round: usize, at_ns: i64) -> String {
    let mut body = String::new();
    for project in 0..PROJECTS {
        for (s, site) in SITES.iter().enumerate() {
            for (m, metric) in METRICS.iter().enumerate() {
                let value = 1000 + round * (1 + (project + s + m) % 5);
                body.push_str(&format!(
                    "{metric},domain_name=elixir,location=site-{site},location_id={site},project_name=budget_{project} value={value} {at_ns}\n"
                ));
            }
        }
    }
    body
}

#[test]
fn perun_gets_at_most_a_fifth_of_a_call_per_billed_point() {
    let seconds: u64 = std::env::var("BUDGET_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
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
        SYNC_INTERVAL_SECONDS.to_string(),
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
            .body(measurement(round, at_ns))
            .send()
            .expect("posted");
        assert_eq!(response.status().as_u16(), 204, "write refused");
        round += 1;
        // The clock of the measurements, not a wait for a condition.
        let next = MEASUREMENT * round as u32;
        if let Some(rest) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let stats = service.get_json("/stats");
    let billed = stats["points"]["billed"].as_u64().expect("billed points");
    let state = perun.state();
    let calls = state["calls"].as_u64().expect("calls");
    let per_point = calls as f64 / billed.max(1) as f64;
    println!(
        "perun_budget: {seconds} s ({} min of the stack), {round} measurements, {PROJECTS} projects x {} sites x {} metrics",
        seconds * u64::from(SCALE) / 60,
        SITES.len(),
        METRICS.len()
    );
    println!("perun_budget: calls by method {}", state["by_method"]);
    println!(
        "perun_budget: {calls} Perun calls for {billed} billed points = {per_point:.3} per billed point (at most {BUDGET}; the Python service ~20)"
    );
    // Every key billed at (nearly) every measurement: the run measured
    // something, and Perun was written for every project.
    let keys = (PROJECTS * SITES.len() * METRICS.len()) as u64;
    assert!(billed >= keys * (round as u64 - 2), "{billed} billed");
    assert!(calls as usize >= PROJECTS, "{calls} calls");
    assert!(per_point <= BUDGET, "{per_point:.3} calls per billed point");
}
