//! `os-credits ledger copy --to postgres://…`: an operator moving to
//! replicas. A SQLite ledger filled by the service is copied into an empty
//! PostgreSQL one (a real server); a service on the copy answers exactly as
//! before; a second copy into the now non-empty target is refused.

mod common;

use std::process::Command;

use common::postgres::Postgres;
use common::{Service, await_until, policy_dir};
use serde_json::Value;

fn charges(location: &[&str]) -> Value {
    let mut args = vec![
        "ledger",
        "charges",
        "--project",
        "os_credits_0",
        "--format",
        "json",
    ];
    args.extend_from_slice(location);
    let output = common::os_credits_in(&common::root(), &args, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn a_sqlite_ledger_copied_to_postgresql_answers_the_same() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let data_dir = data.path().to_str().unwrap();
    let projects = [
        "Cryoem Structural Lab 1",
        "denbi-annotation-005",
        "nextflow_structural.3",
        "os_credits_0",
        "os_credits_4",
        "unregistered-nextflow-2",
    ];
    let mut before = Vec::new();
    let schedule;
    {
        let mut service = Service::start_with(
            Command::new(env!("CARGO_BIN_EXE_os-credits")),
            data.path(),
            policies.path(),
            &[],
        );
        service.post_sample();
        for project in projects {
            before.push(service.get_json(&format!(
                "/api/current_credits/{}",
                project.replace(' ', "%20")
            )));
        }
        schedule = service.get_json("/api/policies")["schedule"].clone();
        assert!(service.terminate().0, "stopped cleanly");
    }
    let postgres = Postgres::start();
    let url = postgres.database("copied");
    let output = common::os_credits_in(
        &common::root(),
        &["ledger", "copy", "--data-dir", data_dir, "--to", &url],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("charges: "), "{printed}");

    // The audit reads the same from both.
    assert_eq!(
        charges(&["--database-url", &url]),
        charges(&["--data-dir", data_dir])
    );

    // A service on the copy answers as the one on SQLite did.
    let fresh = tempfile::tempdir().unwrap();
    let service = Service::start_with(
        Command::new(env!("CARGO_BIN_EXE_os-credits")),
        fresh.path(),
        policies.path(),
        &[
            ("OS_CREDITS_DATABASE_URL", &url),
            ("OS_CREDITS_LEADER_CHECK_SECONDS", "0.1"),
        ],
    );
    await_until("the service to lead", || {
        service.stats()["role"] == "leader"
    });
    for (project, answer) in projects.iter().zip(&before) {
        let now = service.get_json(&format!(
            "/api/current_credits/{}",
            project.replace(' ', "%20")
        ));
        assert_eq!(&now, answer, "{project}");
    }
    // The price schedule came along, modules and all: the service on the
    // copy adds nothing and loads every entry from the copied bytes.
    let copied = service.get_json("/api/policies");
    assert_eq!(copied["schedule"], schedule, "{copied}");
    assert_eq!(copied["folder"]["matches_schedule"], true, "{copied}");
    // Posting the sample again bills nothing: the states came along.
    service.post_sample();
    let again = service.get_json("/api/current_credits/os_credits_0");
    assert_eq!(again, before[3]);

    // The target is not empty any more: a second copy is refused.
    let output = common::os_credits_in(
        &common::root(),
        &["ledger", "copy", "--data-dir", data_dir, "--to", &url],
        &[],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"));
}
