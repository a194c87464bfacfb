//! The price schedule end to end: a step is priced by the version in force
//! when its usage happened, whatever the delivery order, chunking or
//! arrival time; a folder change without `from` prices only usage after it;
//! a back-dated change is refused. Runs on SQLite, and on PostgreSQL with
//! `OS_CREDITS_TEST_STORE=postgres` (`make test` runs both).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::sample::{
    credits, expected, post, project_of, projects, rfc3339, sample, timestamp_of,
};
use common::{Service, await_until, policy_dir};
use rust_decimal::Decimal;

/// Entries of `/api/policies`' schedule.
fn schedule(service: &Service) -> Vec<serde_json::Value> {
    service.get_json("/api/policies")["schedule"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_change_inside_the_sample_prices_each_step_by_when_its_usage_happened() {
    let text = sample();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // A change between two scrapes in the middle of the sample: steps
    // before it, after it, and spanning it.
    let mut times: Vec<i64> = lines.iter().map(|l| timestamp_of(l)).collect();
    times.sort_unstable();
    times.dedup();
    let middle = times.len() / 2;
    let at = times[middle - 1] + (times[middle] - times[middle - 1]) / 3;
    let mapping = format!(
        "[default]\nmodule = \"denbi.wasm\"\n\n[[changes]]\nfrom = \"{}\"\nsite = \"default\"\nmodule = \"denbi.wasm\"\nconfig = {{ cpu_price = \"2\", ram_price = \"0.6\" }}\n",
        rfc3339(at)
    );
    let want = expected(Some((at, "2", "0.6")));
    let old = expected(None);
    let projects = projects(&lines);
    let close = |got: &BTreeMap<String, Decimal>, how: &str| {
        assert_eq!(got.len(), want.len(), "{how}");
        for (project, exact) in &want {
            let difference = (got[project] - exact).abs();
            // The split point's value is interpolated with 28 significant
            // digits (Python computes with 60).
            assert!(
                difference < Decimal::new(1, 15),
                "{how}: {project}: service {} against {exact}",
                got[project]
            );
        }
    };
    assert!(
        want.iter().any(|(p, c)| old[p] != *c && !c.is_zero()),
        "the change moves some credits"
    );

    // In time order, all at once.
    let data = tempfile::tempdir().unwrap();
    let folder = policy_dir(&[("policies.toml", &mapping)]);
    let service = Service::start(data.path(), folder.path(), &[]);
    post(&service, &lines);
    let in_order = credits(&service, &projects);
    close(&in_order, "in time order");
    // Every charge names the entry that priced it: spanning steps were
    // split into a part per entry.
    let entries = schedule(&service);
    assert_eq!(entries.len(), 2, "{entries:?}");
    drop(service);

    // Project by project, each in its own order, in small requests.
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), folder.path(), &[]);
    let (mut rng, _) = common::seeded("schedule project by project");
    let mut shuffled = projects.clone();
    rng.shuffle(&mut shuffled);
    for project in &shuffled {
        let own: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| project_of(l) == project)
            .collect();
        for chunk in own.chunks(1 + rng.usize(..40)) {
            let (status, body) = service.write(&(chunk.join("\n") + "\n"));
            assert_eq!(status.as_u16(), 204, "{body}");
        }
    }
    let by_project = credits(&service, &projects);
    assert_eq!(
        by_project, in_order,
        "project by project = in time order, to the last digit"
    );
}

#[test]
fn a_folder_change_without_from_prices_only_later_usage_and_the_past_is_not_rewritten() {
    let text = sample();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let projects = projects(&lines);
    let data = tempfile::tempdir().unwrap();
    let folder = policy_dir(&[("policies.toml", "[default]\nmodule = \"denbi.wasm\"\n")]);
    let service = Service::start(data.path(), folder.path(), &[]);
    let (first, rest) = lines.split_at(lines.len() / 2);
    post(&service, first);
    // New prices, no `from`: in force from now (2026), after all of the
    // sample's usage (2024).
    std::fs::write(
        folder.path().join("policies.toml"),
        "[default]\nmodule = \"denbi.wasm\"\nconfig = { cpu_price = \"2\", ram_price = \"0.6\" }\n",
    )
    .unwrap();
    await_until("the folder change in the schedule", || {
        schedule(&service).len() == 2
    });
    let added = &schedule(&service)[1];
    assert_eq!(added["origin"], "folder", "{added}");
    assert_eq!(added["status"], "current", "{added}");
    post(&service, rest);
    assert_eq!(
        credits(&service, &projects),
        expected(None),
        "all at the old prices"
    );

    // A change back-dated into billed usage is refused, and says why.
    let start = lines.iter().map(|l| timestamp_of(l)).min().unwrap();
    std::fs::write(
        folder.path().join("policies.toml"),
        format!(
            "[default]\nmodule = \"denbi.wasm\"\nconfig = {{ cpu_price = \"2\", ram_price = \"0.6\" }}\n\n[[changes]]\nfrom = \"{}\"\nsite = \"default\"\nmodule = \"denbi.wasm\"\nconfig = {{ cpu_price = \"5\" }}\n",
            rfc3339(start + 1)
        ),
    )
    .unwrap();
    await_until("the back-dated change refused", || {
        service.get_json("/api/policies")["errors"]
            .as_array()
            .is_some_and(|errors| {
                errors.iter().any(|e| {
                    e["error"]
                        .as_str()
                        .is_some_and(|t| t.contains("lies before steps already billed"))
                })
            })
    });
    assert_eq!(schedule(&service).len(), 2, "nothing added");
    assert_eq!(credits(&service, &projects), expected(None));
    let stats = service.stats();
    assert_eq!(stats["policy_folder"]["matches_schedule"], false, "{stats}");

    // The same, with a reason: accepted, and a correction re-prices what
    // was billed from its `from` on, as if it had been in force then.
    let mut times: Vec<i64> = lines.iter().map(|l| timestamp_of(l)).collect();
    times.sort_unstable();
    times.dedup();
    let at = times[times.len() / 2] + 7_000_000_000;
    std::fs::write(
        folder.path().join("policies.toml"),
        format!(
            "[default]\nmodule = \"denbi.wasm\"\nconfig = {{ cpu_price = \"2\", ram_price = \"0.6\" }}\n\n[[changes]]\nfrom = \"{}\"\nsite = \"default\"\nmodule = \"denbi.wasm\"\nconfig = {{ cpu_price = \"2\", ram_price = \"0.6\" }}\ncorrection_reason = \"new prices decided after the fact\"\n",
            rfc3339(at)
        ),
    )
    .unwrap();
    await_until("the back-dated entry in the schedule", || {
        schedule(&service).len() == 3
    });
    let added = &schedule(&service)[2];
    assert_eq!(
        added["correction_reason"], "new prices decided after the fact",
        "{added}"
    );
    let want = expected(Some((at, "2", "0.6")));
    let close = |got: &BTreeMap<String, Decimal>| {
        want.iter()
            .all(|(p, c)| (got[p] - c).abs() < Decimal::new(1, 15))
    };
    await_until("the back-dated entry's correction", || {
        close(&credits(&service, &projects))
    });
    // Booked once: a restart (the entry's correction looked for again) changes nothing.
    let corrected = credits(&service, &projects);
    let statements = &service.stats()["statements"];
    assert_eq!(statements["back_dated_booked"], 1, "{statements}");
    assert_eq!(statements["back_dated_settled"], 1, "{statements}");
    drop(service);
    let service = Service::start(data.path(), folder.path(), &[]);
    // The marker: the restarted service has looked for the entry's
    // correction and settled it (found it booked).
    await_until(
        "the restarted service to settle the back-dated entry",
        || service.stats()["statements"]["back_dated_settled"] == 1,
    );
    assert_eq!(credits(&service, &projects), corrected);
    assert_eq!(
        service.stats()["statements"]["back_dated_booked"],
        0,
        "booked by the first run, not again"
    );
}

/// `POST /api/policies` with `entry` and `module` parts.
fn upload(service: &Service, key: Option<&str>, entry: &str, module: Vec<u8>) -> (u16, String) {
    let form = reqwest::blocking::multipart::Form::new()
        .text("entry", entry.to_owned())
        .part(
            "module",
            reqwest::blocking::multipart::Part::bytes(module).file_name("denbi.wasm"),
        );
    let mut request = common::http()
        .post(service.at("/api/policies"))
        .multipart(form);
    if let Some(key) = key {
        request = request.header("X-API-KEY", key);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn quote(service: &Service, at: &str) -> (u16, String) {
    let response = common::http()
        .post(service.at(&format!("/api/costs_per_hour?at={at}")))
        .body(r#"{"cpu":10}"#)
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

#[test]
fn an_uploaded_entry_joins_the_schedule_and_quotes_by_time() {
    let data = tempfile::tempdir().unwrap();
    let folder = policy_dir(&[]);
    let service = Service::start(data.path(), folder.path(), &[("API_KEY", "k")]);
    let module = std::fs::read(common::wasm("denbi-policy")).unwrap();
    let entry = r#"{"site": "default", "from": "2030-01-01T00:00:00Z", "file": "denbi.wasm", "config": {"cpu_price": "3"}}"#;
    // (A small body: refused before it is read, a large one may not be
    // sent in full.)
    assert_eq!(upload(&service, None, entry, b"x".to_vec()).0, 401);
    assert_eq!(upload(&service, Some("wrong"), entry, b"x".to_vec()).0, 403);
    let (status, body) = upload(&service, Some("k"), entry, module.clone());
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["added"][0]["from"], "2030-01-01T00:00:00Z",
        "{answer}"
    );
    // The same again adds nothing.
    let (status, body) = upload(&service, Some("k"), entry, module.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["added"],
        serde_json::json!([])
    );
    let entries = schedule(&service);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1]["status"], "upcoming");
    assert_eq!(entries[1]["origin"], "api");
    // Quotes by the version in force at `at`.
    assert_eq!(
        quote(&service, "2029-12-31T23:59:59Z"),
        (200, "10.00".to_owned())
    );
    assert_eq!(
        quote(&service, "2030-01-01T00:00:00Z"),
        (200, "30.00".to_owned())
    );
    assert_eq!(quote(&service, "yesterday").0, 400);
    // Back-dated into billed usage: refused, naming the latest measurement.
    let (status, body) = service.write(
        "project_vcpu_usage,location_id=8676,project_name=p value=1 1714609360000000000\nproject_vcpu_usage,location_id=8676,project_name=p value=2 1714609420000000000\n",
    );
    assert_eq!(status.as_u16(), 204, "{body}");
    let late = r#"{"site": "8676", "from": "2024-05-02T00:22:50Z", "config": {"cpu_price": "5"}}"#;
    let (status, body) = upload(&service, Some("k"), late, module.clone());
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("2024-05-02T00:23:40Z"), "{body}");
    // An unusable module or entry says what is wrong.
    let (status, body) = upload(&service, Some("k"), entry, b"\0asm no component".to_vec());
    assert_eq!(status, 422, "{body}");
    let (status, body) = upload(
        &service,
        Some("k"),
        r#"{"site": "default", "frm": 1}"#,
        module.clone(),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = upload(
        &service,
        Some("k"),
        r#"{"site": "default", "from": "2031-01-01T00:00:00Z", "memory_mb": 5000}"#,
        module,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("memory_mb = 5000 is not between 1 and 4096"),
        "{body}"
    );
    assert_eq!(schedule(&service).len(), 2, "nothing more added");
}

/// A replica on `url` with its own policy folder.
fn replica(url: &str, name: &str, folder: &std::path::Path) -> (Service, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start_with(
        Command::new(env!("CARGO_BIN_EXE_os-credits")),
        data.path(),
        folder,
        &[
            ("OS_CREDITS_DATABASE_URL", url),
            ("OS_CREDITS_LEADER_CHECK_SECONDS", "0.3"),
            ("OS_CREDITS_REPLICA_NAME", name),
        ],
    );
    (service, data)
}

fn role(service: &Service) -> String {
    service.stats()["role"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn replicas_whose_folders_differ_price_alike_across_a_failover() {
    let postgres = common::postgres::Postgres::start();
    let url = postgres.database("differ");
    let text = sample();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let projects = projects(&lines);
    // `a` leads with the de.NBI prices and gives the new ledger its
    // schedule; `b`'s folder has other prices.
    let plain = policy_dir(&[("policies.toml", "[default]\nmodule = \"denbi.wasm\"\n")]);
    let other = policy_dir(&[(
        "policies.toml",
        "[default]\nmodule = \"denbi.wasm\"\nconfig = { cpu_price = \"5\", ram_price = \"2\" }\n",
    )]);
    let (mut a, _a) = replica(&url, "a", plain.path());
    await_until("a to lead", || role(&a) == "leader");
    let (b, _b) = replica(&url, "b", other.path());
    await_until("b to follow", || role(&b) == "follower");
    await_until("b to see how its folder differs", || {
        b.stats()["policy_folder"]["matches_schedule"] == false
    });
    let (first, rest) = lines.split_at(lines.len() / 2);
    post(&a, first);
    a.kill9();
    await_until("b to lead", || role(&b) == "leader");
    post(&b, rest);
    // Becoming leader changed no price: the schedule is the ledger's.
    assert_eq!(credits(&b, &projects), expected(None));
    let entries = schedule(&b);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        b.stats()["policy_folder"]["matches_schedule"],
        false,
        "{}",
        b.stats()
    );
    // A change to a follower's folder changes the schedule for all: `a`
    // comes back as a follower, its folder gains an upcoming change.
    drop(a);
    let (a, _a) = replica(&url, "a", plain.path());
    await_until("a to follow", || role(&a) == "follower");
    std::fs::write(
        plain.path().join("policies.toml"),
        "[default]\nmodule = \"denbi.wasm\"\n\n[[changes]]\nfrom = \"2030-01-01T00:00:00Z\"\nsite = \"default\"\nmodule = \"denbi.wasm\"\nconfig = { cpu_price = \"7\" }\n",
    )
    .unwrap();
    await_until("the leader to add the follower's change", || {
        schedule(&b).len() == 2
    });
    await_until("the follower to read it back", || schedule(&a).len() == 2);
    let added = &schedule(&b)[1];
    assert_eq!(added["from"], "2030-01-01T00:00:00Z", "{added}");
    assert_eq!(added["status"], "upcoming", "{added}");
    assert_eq!(credits(&b, &projects), expected(None), "the past unchanged");
}
