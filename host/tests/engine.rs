//! The engine's failed-commit path, on the real binary: another process
//! holds SQLite's write lock longer than the service waits for it (an
//! operator's `sqlite3` shell left in a transaction, a backup tool). The
//! writes of that transaction are answered 500 (nothing of them is
//! stored), the book is rebuilt from the ledger, and the same write sent
//! again once the lock is gone bills exactly once.

mod common;

use std::process::Command;

use common::{Service, policy_dir};
use rust_decimal::Decimal;

fn line(value: &str, at: i64) -> String {
    format!("project_vcpu_usage,location_id=8676,project_name=p value={value} {at}\n")
}

#[test]
fn a_failed_commit_answers_500_rebuilds_the_book_and_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    // Always the SQLite ledger: the lock is SQLite's.
    let service = Service::start_with(
        Command::new(env!("CARGO_BIN_EXE_os-credits")),
        data.path(),
        policies.path(),
        &[],
    );
    let url = service.at("/write?precision=s");
    let post = |body: String| {
        let response = common::http().post(&url).body(body).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let used = || -> Decimal {
        let current = service.get_json("/api/current_credits/p");
        current["current_credits_exact"]
            .as_str()
            .map_or(Decimal::ZERO, |exact| exact.parse().unwrap())
    };
    let failed_commits = || service.stats()["failed_commits"].as_u64().unwrap();

    // 10 -> 15: five credits, committed.
    assert_eq!(post(line("10", 1) + &line("15", 2)).0, 204);
    assert_eq!(used(), Decimal::from(5));
    assert_eq!(failed_commits(), 0);
    // 15 -> 18 while another process holds the write lock: 500 once the
    // service stops waiting for it, nothing stored.
    let other = rusqlite::Connection::open(data.path().join("ledger.sqlite3")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (status, body) = post(line("18", 3));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("ledger write failed"), "{body}");
    assert_eq!(used(), Decimal::from(5));
    assert_eq!(failed_commits(), 1);
    assert_eq!(service.stats()["ledger"]["failing"], true);
    // Prometheus' samples get a 5xx too, never a 4xx: it retries them.
    let remote = {
        use os_credits::ingest::remote_write::{
            Label, PromSample, TimeSeries, WriteRequest, encode,
        };
        let label = |n: &str, v: &str| Label {
            name: n.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
        };
        encode(&WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    label("__name__", "project_vcpu_usage"),
                    label("location_id", "8676"),
                    label("project_name", "p"),
                ],
                samples: vec![PromSample {
                    value: 19.0,
                    timestamp: 3_500,
                }],
                histograms: Vec::new(),
            }],
        })
    };
    let response = common::http()
        .post(service.at("/api/v1/write"))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(remote)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    assert_eq!(failed_commits(), 2);
    assert_eq!(used(), Decimal::from(5));
    // The lock is gone; the sender retries the same write. Had the book
    // kept the refused step, the retry would be stale and 3 credits lost.
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(post(line("18", 3)).0, 204);
    assert_eq!(used(), Decimal::from(8));
    assert_eq!(service.stats()["ledger"]["failing"], false);
    let charges: i64 = other
        .query_row(
            "SELECT COUNT(*) FROM charges WHERE project = 'p'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(charges, 2);
    // And the next step continues from the stored state.
    assert_eq!(post(line("20", 4)).0, 204);
    assert_eq!(used(), Decimal::from(10));
}
