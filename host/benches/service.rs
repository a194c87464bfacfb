//! Throughput of `/write` into the ledger and the service's peak memory,
//! with the de.NBI policy and a stack-shaped workload: 10k projects x 3
//! sites x 2 metrics, a point per series every 15 s, the exporter
//! refreshing every 60 s (3 of 4 points repeat the previous value).
//!
//! Starts the real release binary, posts pre-built bodies of 5000 lines
//! from two client threads (each owns half of the series, so every series
//! arrives in order), and reads the server's peak RSS (VmHWM).
//!
//! `cargo bench -p os-credits --bench service` (or `make bench`).
//! `BENCH_ROUNDS` sets the number of 15 s rounds (default 16);
//! `BENCH_STORE=postgres` keeps the ledger on a PostgreSQL server the
//! benchmark starts (`fsync=on`, as a site runs it), the service as a
//! replica that leads. `BENCH_AUTH=basic` requires write credentials and
//! sends HTTP Basic with every body (a user scoped to the three sites, so
//! every point's site is checked; bcrypt at its default cost, as
//! `htpasswd -B` makes it); `BENCH_AUTH=token` a bearer token.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

const PROJECTS: usize = 10_000;
const SITES: [&str; 3] = ["8676", "8677", "8678"];
const METRICS: [&str; 2] = ["project_vcpu_usage", "project_mb_usage"];
const LINES_PER_BODY: usize = 5000;
const CLIENTS: usize = 2;
const T0: i64 = 1_714_609_360_727_000_000;
const SCRAPE: i64 = 15_000_000_000;

fn line(out: &mut String, series: usize, round: usize) {
    let project = series / (SITES.len() * METRICS.len());
    let site = SITES[series / METRICS.len() % SITES.len()];
    let metric = METRICS[series % METRICS.len()];
    // refreshes every 4th scrape; grows by a series-specific step
    let refreshes = round / 4;
    let value = 1000.0 + (refreshes * (1 + series % 7)) as f64 * 0.25;
    out.push_str(&format!(
        "{metric},domain_id=04fcd5555daf106d,domain_name=elixir,instance=usage_exporter:8080,job=project_usages,location=site-{site},location_id={site},project_id={project:032x},project_name=project_{project} value={value} {}\n",
        T0 + round as i64 * SCRAPE
    ));
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(16);
    let series = PROJECTS * SITES.len() * METRICS.len();
    // Pre-build each client's bodies, in order.
    let mut bodies: Vec<Vec<String>> = vec![Vec::new(); CLIENTS];
    for (client, bodies) in bodies.iter_mut().enumerate() {
        let mut body = String::new();
        let mut lines = 0;
        for round in 0..rounds {
            for s in (client..series).step_by(CLIENTS) {
                line(&mut body, s, round);
                lines += 1;
                if lines == LINES_PER_BODY {
                    bodies.push(std::mem::take(&mut body));
                    lines = 0;
                }
            }
        }
        if !body.is_empty() {
            bodies.push(body);
        }
    }
    let points = series * rounds;

    let data = tempfile::tempdir().expect("temp dir");
    let policies = common::policy_dir(&[]);
    let postgres = (std::env::var("BENCH_STORE").as_deref() == Ok("postgres"))
        // As a site runs it: every commit synced to disk.
        .then(|| common::postgres::Postgres::start_with("-c fsync=on"));
    let url = postgres.as_ref().map(|p| p.database("bench"));
    let auth = std::env::var("BENCH_AUTH").unwrap_or_default();
    let secrets = tempfile::tempdir().expect("temp dir");
    let users = secrets.path().join("users");
    let tokens = secrets.path().join("tokens");
    const TOKEN: &str = "bench-token-0123456789abcdef";
    let authorization = match auth.as_str() {
        "" => None,
        "basic" => {
            let hash = bcrypt::hash("bench-secret", bcrypt::DEFAULT_COST).expect("bcrypt");
            std::fs::write(
                &users,
                format!("# sites: {}\nbench:{hash}\n", SITES.join(",")),
            )
            .expect("users file");
            Some(common::basic("bench", "bench-secret"))
        }
        "token" => {
            std::fs::write(&tokens, format!("bench {TOKEN}\n")).expect("tokens file");
            Some(format!("Bearer {TOKEN}"))
        }
        other => panic!("BENCH_AUTH={other:?}: basic, token or unset"),
    };
    let mut env = Vec::new();
    match auth.as_str() {
        "basic" => env.push(("OS_CREDITS_WRITE_USERS_FILE", users.to_str().expect("path"))),
        "token" => env.push((
            "OS_CREDITS_WRITE_TOKENS_FILE",
            tokens.to_str().expect("path"),
        )),
        _ => {}
    }
    if let Some(url) = &url {
        env.push(("OS_CREDITS_DATABASE_URL", url.as_str()));
        env.push(("OS_CREDITS_LEADER_CHECK_SECONDS", "0.1"));
    }
    let service = common::Service::start(data.path(), policies.path(), &env);
    common::await_until("the service to lead", || {
        service.stats()["role"] == "leader"
    });
    let store = if url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let url = format!("{}/write?db=portal_prometheus&precision=ns", service.url);
    if let Some(value) = &authorization {
        // The credential's first use verifies its bcrypt hash (once, then
        // remembered): timed on its own, not in the throughput.
        let first = Instant::now();
        let response = common::http()
            .post(&url)
            .header("Authorization", value)
            .body("")
            .send()
            .expect("posted");
        assert_eq!(response.status().as_u16(), 204, "credential refused");
        println!(
            "service/auth: first use of the credential ({auth}) answered in {:.2?}",
            first.elapsed()
        );
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        for bodies in bodies {
            let (url, authorization) = (url.clone(), authorization.clone());
            scope.spawn(move || {
                let client = common::http();
                for body in bodies {
                    let mut request = client.post(&url).body(body);
                    if let Some(value) = &authorization {
                        request = request.header("Authorization", value);
                    }
                    let response = request.send().expect("posted");
                    assert_eq!(response.status().as_u16(), 204, "write refused");
                }
            });
        }
    });
    let took = started.elapsed();
    let stats: serde_json::Value = common::http()
        .get(format!("{}/stats", service.url))
        .send()
        .and_then(|r| r.json())
        .expect("stats");
    let rss = peak_rss_kib(service.pid()).unwrap_or(0);
    println!("service/write: {points} points ({series} series x {rounds} rounds) in {took:.2?}");
    println!(
        "service/write: {:.0} points/s through /write into the {store} ledger, credentials: {} ({} billed, {} keys, {} commits)",
        points as f64 / took.as_secs_f64(),
        if auth.is_empty() {
            "none"
        } else {
            auth.as_str()
        },
        stats["points"]["billed"],
        stats["keys"],
        stats["commits"],
    );
    println!(
        "service/memory: peak RSS {:.1} MiB with {} keys",
        rss as f64 / 1024.0,
        stats["keys"]
    );
}
