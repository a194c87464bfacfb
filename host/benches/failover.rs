//! Failover time: two replicas on a PostgreSQL server the benchmark starts,
//! default lock check (`OS_CREDITS_LEADER_CHECK_SECONDS`, 1 s). The leader
//! is killed with SIGKILL; measured is the time until a write sent to the
//! other replica is billed (it answers as the leader). Repeated `ROUNDS`
//! times (the killed replica restarts as a follower each time).
//! `cargo bench -p os-credits --bench failover`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let postgres = common::postgres::Postgres::start();
    let url = postgres.database("failover");
    let policies = common::policy_dir(&[]);
    let start = |name: &str| {
        let data = tempfile::tempdir().expect("temp dir");
        common::Service::start_with(
            std::process::Command::new(env!("CARGO_BIN_EXE_os-credits")),
            data.path(),
            policies.path(),
            &[
                ("OS_CREDITS_DATABASE_URL", &url),
                ("OS_CREDITS_REPLICA_NAME", name),
            ],
        )
    };
    let mut replicas = [start("a"), start("b")];
    let role = |s: &common::Service| s.stats()["role"].as_str().unwrap_or_default().to_owned();
    common::await_until("a leader", || replicas.iter().any(|r| role(r) == "leader"));
    let mut value = 1000;
    let mut t = 1_714_609_360_727_000_000_i64;
    let mut point = || {
        value += 1;
        t += 60_000_000_000;
        format!("project_vcpu_usage,location_id=8676,project_name=failover value={value} {t}\n")
    };
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let leader = replicas
            .iter()
            .position(|r| role(r) == "leader")
            .expect("a leader");
        let other = 1 - leader;
        assert_eq!(replicas[leader].write(&point()).0.as_u16(), 204);
        let before =
            replicas[other].get_json("/api/current_credits/failover")["current_credits_exact"]
                .clone();
        let killed = Instant::now();
        replicas[leader].kill9();
        // Until the other replica bills what it receives.
        loop {
            let (status, _) = replicas[other].write(&point());
            let now =
                replicas[other].get_json("/api/current_credits/failover")["current_credits_exact"]
                    .clone();
            if status.as_u16() == 204 && role(&replicas[other]) == "leader" && now != before {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no failover");
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = killed.elapsed();
        times.push(took);
        println!("failover: leader killed -> the other bills in {took:.2?}");
        replicas[leader] = start(if leader == 0 { "a" } else { "b" });
    }
    times.sort();
    println!(
        "failover: {} rounds, median {:.2?}, max {:.2?} (lock check every 2 s)",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
