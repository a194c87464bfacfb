//! A full disk under the ledger: the service runs in its own mount
//! namespace (`unshare`, as any user) on a 16 MiB tmpfs; the test fills it
//! through `/proc/PID/root`. Writes that cannot be stored are answered 5xx
//! (never 204), `/stats` and `/metrics` say why, and once space returns the
//! service commits again by itself: nothing answered 204 is lost or billed
//! twice, and the ledger passes SQLite's integrity check.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Service, policy_dir, repo_file};
use reqwest::StatusCode;
use rust_decimal::Decimal;

/// The service on a fresh tmpfs at `data`, in a mount namespace of its own.
fn start(data: &Path, policies: &Path) -> Service {
    let mut command = Command::new("unshare");
    command.args([
        "--user",
        "--map-root-user",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        // The binary path and "serve" follow as $0 and $1.
        &format!(
            "mount -t tmpfs -o size=16m tmpfs '{}' && exec \"$0\" \"$@\"",
            data.display()
        ),
        env!("CARGO_BIN_EXE_os-credits"),
    ]);
    Service::start_with(command, data, policies, &[])
}

/// The data folder as the service sees it (its tmpfs).
fn seen(service: &Service, data: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{}", service.pid(), data.display()))
}

/// Writes zeros into `file` until the file system is full.
fn fill(file: &Path) {
    let mut out = std::fs::File::create(file).unwrap();
    let block = vec![0u8; 64 << 10];
    while out.write_all(&block).is_ok() {}
    let _ = out.sync_all();
}

/// New keys only (a baseline each): every write makes the ledger grow.
fn new_keys(batch: usize) -> String {
    (0..2000)
        .map(|i| {
            format!(
                "project_vcpu_usage,location_id=8676,project_name=filler_{batch}_{i} value=1 1714609360727000000\n"
            )
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs unprivileged user namespaces (unshare): make test"
)]
fn a_full_disk_refuses_writes_with_5xx_and_recovers_by_itself() {
    let (mountpoint, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(mountpoint.path(), policies.path());
    let data = |service: &Service| seen(service, mountpoint.path());
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    assert_eq!(service.write(&first.join("\n")).0, StatusCode::NO_CONTENT);

    let filler = data(&service).join("filler");
    fill(&filler);
    // Keep writing until the ledger needs space it cannot get.
    let mut refused = None;
    let mut stored = 0;
    for batch in 0..40 {
        let (status, body) = service.write(&new_keys(batch));
        match status {
            StatusCode::NO_CONTENT => stored += 1,
            StatusCode::INTERNAL_SERVER_ERROR => {
                assert!(body.contains("full"), "{body}");
                refused = Some(batch);
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let refused = refused.expect("the full disk refused a write");
    let stats = service.stats();
    assert_eq!(stats["ledger"]["failing"], true, "{stats}");
    assert!(
        stats["ledger"]["last_error"]
            .as_str()
            .unwrap()
            .contains("full"),
        "{stats}"
    );
    assert!(
        service
            .get("/metrics")
            .1
            .contains("os_credits_ledger_failing 1")
    );
    // Still refused while full: never a 204 for what was not stored.
    assert_eq!(
        service.write(&new_keys(refused)).0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Space returns; the sender retries; no restart.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(service.write(&new_keys(refused)).0, StatusCode::NO_CONTENT);
    assert_eq!(service.stats()["ledger"]["failing"], false);
    assert!(
        service
            .get("/metrics")
            .1
            .contains("os_credits_ledger_failing 0")
    );
    assert_eq!(service.write(&second.join("\n")).0, StatusCode::NO_CONTENT);
    // The first half answered before the disk filled, and the retried write, count once.
    assert_eq!(service.write(&first.join("\n")).0, StatusCode::NO_CONTENT);

    for (project, credits) in common::expected_credits() {
        let answer = service.get_json(&format!("/api/current_credits/{project}"));
        let exact: Decimal = answer["current_credits_exact"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(exact, credits, "{project}");
    }
    // The ledger is whole, with every stored filler key exactly once
    // (checked on a copy: SQLite would resolve /proc/PID/root away).
    let copy = tempfile::tempdir().unwrap();
    for file in ["ledger.sqlite3", "ledger.sqlite3-wal"] {
        let from = data(&service).join(file);
        if from.exists() {
            std::fs::copy(&from, copy.path().join(file)).unwrap();
        }
    }
    let connection = rusqlite::Connection::open(copy.path().join("ledger.sqlite3")).unwrap();
    let fillers: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM keys WHERE project LIKE 'filler_%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(fillers as usize, 2000 * (stored + 1));
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
