//! Publishing to Perun end to end: the real service against the fake Perun
//! (`fake-perun`, following docs/perun.md) over HTTP.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::fake_perun::FakePerun;
use common::{Service, await_until, policy_dir, repo_file};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn client() -> Client {
    common::http()
}

fn start(perun: &FakePerun, data: &std::path::Path, policies: &std::path::Path) -> Service {
    let env = perun.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start(data, policies, &env)
}

fn register_groups(perun: &FakePerun) {
    for (i, name) in common::expected_published().keys().enumerate() {
        perun.group(name, 1000 + i as i64, "200");
    }
}

#[test]
fn perun_gets_the_ledgers_rounded_totals_for_two_sites_with_few_calls() {
    let perun = FakePerun::start();
    register_groups(&perun);
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(&perun, data.path(), policies.path());
    service.post_sample();
    let expected = common::expected_published();
    await_until("Perun to hold the totals", || perun.published() == expected);

    let state = perun.state();
    for name in expected.keys() {
        let resources = &state["groups"][name]["resources"];
        for site in ["8676", "8677"] {
            let stamps = resources[site]["denbiCreditTimestamps"]
                .as_object()
                .unwrap();
            assert!(
                stamps["project_vcpu_usage"]
                    .as_str()
                    .unwrap()
                    .starts_with("2024-05-02 "),
                "{stamps:?}"
            );
            assert_eq!(stamps.len(), 2);
        }
    }
    // The project that is not a group: warned about once, kept pending.
    await_until("the missing group to be counted", || {
        service.stats()["perun"]["not_groups"] == 1
    });
    // Warned about once (the log is what an operator reads).
    assert_eq!(service.log().matches("not a Perun group").count(), 1);
    let current = service.get_json("/api/current_credits/unregistered-nextflow-2");
    assert_eq!(current["current_credits_exact"], "151.0652612777770");
    // Granted credits read from Perun: the history shows credits left.
    await_until("granted credits", || {
        let c = service.get_json("/api/current_credits/os_credits_0");
        c["granted_credits"] == json!(200.0)
    });
    let sync = &service.stats()["perun"];
    assert!(sync["last_success"].is_string());
    let calls = perun.state()["calls"].as_u64().unwrap();
    let billed = service.stats()["points"]["billed"].as_u64().unwrap();
    println!(
        "perun calls: {calls} for {billed} billed points = {:.1} per 1000",
        calls as f64 * 1000.0 / billed as f64
    );
    // The Python service made 19 to 21 calls per billed point.
    assert!(
        calls * 1000 / billed <= 190,
        "{calls} calls for {billed} billed points"
    );
}

#[test]
fn perun_down_during_the_whole_ingest_then_back_converges() {
    let perun = FakePerun::start();
    register_groups(&perun);
    perun.faults(json!({ "down": true }));
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(&perun, data.path(), policies.path());
    service.post_sample();
    await_until("the outage to show in /stats", || {
        service.stats()["perun"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unavailable"))
    });
    assert!(perun.published().is_empty());
    assert!(service.stats()["pending_projects"].as_u64().unwrap() >= 5);
    perun.faults(json!({ "down": false }));
    await_until("Perun to converge", || {
        perun.published() == common::expected_published()
    });
}

#[test]
fn a_wrong_password_is_one_clear_error_and_loses_nothing() {
    let perun = FakePerun::start();
    register_groups(&perun);
    perun.faults(json!({ "password": "rotated" }));
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(&perun, data.path(), policies.path());
    service.post_sample();
    await_until("the login error", || {
        service.stats()["perun"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Perun rejected the login \"oscredits\""))
    });
    // several failed attempts, one loud error
    await_until("retries", || {
        service.stats()["perun"]["calls"].as_u64().unwrap_or(0) >= 8
    });
    assert_eq!(
        service.log().matches("Perun rejected the login").count(),
        1,
        "{}",
        service.log()
    );
    assert!(perun.published().is_empty());
    perun.faults(json!({ "password": "secret" }));
    await_until("Perun to converge", || {
        perun.published() == common::expected_published()
    });
}

#[test]
fn the_fake_keeps_perun_quirks() {
    let perun = FakePerun::start();
    perun.group("myproj", 1061, "100");
    let rpc = |method: &str, body: Value| {
        let response = client()
            .post(format!("{}/krb/rpc/json/{method}", perun.url))
            .basic_auth("oscredits", Some("secret"))
            .json(&body)
            .send()
            .unwrap();
        (
            response.status(),
            response.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (status, error) = rpc(
        "groupsManager/getGroupByName",
        json!({"vo": 201, "name": "nope"}),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["name"], "GroupNotExistsException");
    assert!(error["errorId"].is_string());
    let (status, error) = rpc(
        "groupsManager/getGroupByName",
        json!({"vo": 201, "name": "bad/name"}),
    );
    assert_eq!(
        (status, error["type"].as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("UNCATCHED_EXCEPTION")
        )
    );
    // a number for a String attribute
    let wrong = json!([{"id": 3382, "friendlyName": "denbiCreditsCurrent", "namespace": "urn:perun:group:attribute-def:opt", "type": "java.lang.String", "value": 12}]);
    let (_, error) = rpc(
        "attributesManager/setAttributes",
        json!({"group": 1061, "attributes": wrong}),
    );
    assert_eq!(error["type"], "InternalErrorException");
    // a group_resource attribute in a group-only call
    let misplaced = json!([{"id": 3386, "friendlyName": "denbiCreditTimestamps", "namespace": "urn:perun:group_resource:attribute-def:opt", "type": "java.util.LinkedHashMap", "value": {"a": "b"}}]);
    let (_, error) = rpc(
        "attributesManager/setAttributes",
        json!({"group": 1061, "attributes": misplaced}),
    );
    assert_eq!(error["name"], "WrongAttributeAssignmentException");
    // full names only: unknown names and friendly names left out, known
    // unset ones null
    let (_, attributes) = rpc(
        "attributesManager/getAttributes",
        json!({"group": 1061, "attrNames": [
            "urn:perun:group:attribute-def:opt:denbiCreditsCurrent", "nope",
            "denbiCreditsGranted", "urn:perun:group:attribute-def:opt:denbiCreditsGranted"]}),
    );
    assert_eq!(attributes.as_array().unwrap().len(), 2);
    assert_eq!(attributes[0]["value"], Value::Null);
    assert_eq!(attributes[1]["value"], "100");
    // group-resource attributes: workWithGroupAttributes true adds the
    // group's; without it attrNames is ignored
    perun.add_group(&json!({"name": "myproj", "id": 1061,
        "attributes": {"denbiCreditsGranted": "100"},
        "resources": {"8676": {"denbiCreditTimestamps": {"cpu": "2024-05-02 00:00:00.000000"}}}}));
    let names = json!([
        "urn:perun:group_resource:attribute-def:opt:denbiCreditTimestamps",
        "urn:perun:group:attribute-def:opt:denbiCreditsGranted"
    ]);
    let (_, both) = rpc(
        "attributesManager/getAttributes",
        json!({"group": 1061, "resource": 8676, "attrNames": names, "workWithGroupAttributes": true}),
    );
    assert_eq!(both.as_array().unwrap().len(), 2);
    let (_, resource_only) = rpc(
        "attributesManager/getAttributes",
        json!({"group": 1061, "resource": 8676, "attrNames": names, "workWithGroupAttributes": false}),
    );
    assert_eq!(resource_only.as_array().unwrap().len(), 1);
    let (_, ignored) = rpc(
        "attributesManager/getAttributes",
        json!({"group": 1061, "resource": 8676, "attrNames": ["nope"]}),
    );
    assert_eq!(ignored[0]["friendlyName"], "denbiCreditTimestamps");
    // bad credentials: HTML 401
    let response = client()
        .post(format!(
            "{}/krb/rpc/json/groupsManager/getGroupByName",
            perun.url
        ))
        .basic_auth("oscredits", Some("x"))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
}

#[test]
fn adoption_continues_from_perun_and_a_hand_edit_is_recorded_not_overwritten() {
    let perun = FakePerun::start();
    register_groups(&perun);
    // The Python service left 100 credits used for os_credits_0.
    let body = json!({ "name": "os_credits_0", "id": 2000, "attributes": { "denbiCreditsGranted": "500", "denbiCreditsCurrent": "100.00" } });
    perun.add_group(&body);
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(&perun, data.path(), policies.path());
    service.post_sample();
    let mut expected = common::expected_published();
    expected.insert("os_credits_0".into(), "267.80".into());
    await_until("Perun to hold the adopted totals", || {
        perun.published() == expected
    });
    let current = service.get_json("/api/current_credits/os_credits_0");
    assert_eq!(current["current_credits_exact"], "267.8000000000000");
    assert_eq!(current["granted_credits"], json!(500.0));

    // Someone sets os_credits_4 to 50 in Perun by hand...
    let edit = json!({"group": 1004, "attributes": [{"id": 3382, "friendlyName": "denbiCreditsCurrent", "namespace": "urn:perun:group:attribute-def:opt", "type": "java.lang.String", "value": "50.00"}]});
    let group_id = perun.state()["groups"]["os_credits_4"]["id"]
        .as_i64()
        .unwrap();
    let mut edit = edit;
    edit["group"] = json!(group_id);
    let response = client()
        .post(format!(
            "{}/krb/rpc/json/attributesManager/setAttributes",
            perun.url
        ))
        .basic_auth("oscredits", Some("secret"))
        .json(&edit)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // ...then the project uses 10 more credits.
    let more = "project_vcpu_usage,location_id=9999,project_name=os_credits_4 value=1 1714700000000000000\n\
                project_vcpu_usage,location_id=9999,project_name=os_credits_4 value=11 1714700060000000000\n";
    let response = client()
        .post(service.at("/write"))
        .body(more)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    await_until("the edit to be continued from", || {
        perun.published()["os_credits_4"] == "60.00"
    });
    assert_eq!(service.stats()["perun"]["hand_edits"], 1);
    let current = service.get_json("/api/current_credits/os_credits_4");
    assert_eq!(current["current_credits"], json!(60.0));
}

/// What `policy run` bills per project for `lines` (fresh keys: each key's
/// first point is a baseline).
fn billed_alone(lines: &str) -> BTreeMap<String, Decimal> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("newer.lp");
    std::fs::write(&file, lines).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .args(["policy", "run", "--format", "json"])
        .arg(common::wasm("denbi-policy"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "policy run failed");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    report["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let credits: Decimal = p["credits"].as_str().unwrap().parse().unwrap();
            (p["project"].as_str().unwrap().to_owned(), credits)
        })
        .collect()
}

type SampleKey = (String, String, String);

/// The sample's billable points, parsed by the service's own parser: each
/// line with its key (project, site, metric), value text and timestamp.
fn sample_points(sample: &str) -> Vec<(&str, SampleKey, String, i64)> {
    use os_credits::ingest::{Item, Precision, lines};
    sample
        .lines()
        .filter_map(|line| {
            let (_, Item::Sample(m)) = lines(line.as_bytes(), Precision::Nanoseconds, 0).next()?
            else {
                return None;
            };
            let key = (
                m.project.to_string(),
                m.location_id.to_string(),
                m.metric.to_string(),
            );
            Some((line, key, m.text.to_string(), m.timestamp))
        })
        .collect()
}

#[test]
fn migration_adopts_perun_timestamps_and_bills_nothing_twice() {
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let points = sample_points(&sample);
    // The Python service ran for the first half hour of the sample: per key
    // it stored the timestamp of the last measurement it billed (the last
    // change of value), and left 100 credits used per project.
    let cut = points[0].3 + 1_800_000_000_000;
    // (The state moves as the billing rules move it: late points are stale,
    // a repeated value keeps the state's timestamp.)
    let mut floors: BTreeMap<SampleKey, (String, i64)> = BTreeMap::new();
    for (_, key, value, timestamp) in points.iter().filter(|p| p.3 <= cut) {
        let moves = floors
            .get(key)
            .is_none_or(|(last, at)| timestamp > at && last != value);
        if moves {
            floors.insert(key.clone(), (value.clone(), *timestamp));
        }
    }
    let perun = FakePerun::start();
    for (i, name) in common::expected_published().keys().enumerate() {
        let mut resources = serde_json::Map::new();
        for ((project, site, metric), (_, timestamp)) in &floors {
            if project == name {
                let text = chrono::DateTime::from_timestamp_nanos(*timestamp)
                    .format("%Y-%m-%d %H:%M:%S%.6f")
                    .to_string();
                resources
                    .entry(site.clone())
                    .or_insert_with(|| json!({ "denbiCreditTimestamps": {} }))["denbiCreditTimestamps"]
                    [metric] = json!(text);
            }
        }
        let body = json!({
            "name": name, "id": 1000 + i,
            "attributes": { "denbiCreditsGranted": "500", "denbiCreditsCurrent": "100.00" },
            "resources": resources,
        });
        perun.add_group(&body);
    }
    // Perun is down while the whole sample (old half included) is billed:
    // the old half's charges must be taken back on first contact.
    perun.faults(json!({ "down": true }));
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(&perun, data.path(), policies.path());
    service.post_sample();
    await_until("the outage to show in /stats", || {
        service.stats()["perun"]["last_error"].is_string()
    });
    let before = service.get_json("/api/current_credits/os_credits_0");
    assert_eq!(before["current_credits_exact"], "167.8000000000000");

    // What is left to bill: per key, from the measurement the old service
    // stopped at (a baseline for `policy run`) on.
    let newer: String = points
        .iter()
        .filter(|(_, key, _, timestamp)| {
            floors.get(key).is_none_or(|(_, floor)| timestamp >= floor)
        })
        .map(|(line, ..)| format!("{line}\n"))
        .collect();
    let newer = billed_alone(&newer);
    let expected: BTreeMap<String, String> = common::expected_published()
        .keys()
        .map(|name| {
            let used = Decimal::from(100) + newer.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                os_credits::credits::round(used, 2).to_string(),
            )
        })
        .collect();
    assert_ne!(expected["os_credits_0"], "267.80", "the floor must matter");
    perun.faults(json!({ "down": false }));
    await_until(
        "Perun to hold 100 + what was billed after the floor",
        || perun.published() == expected,
    );
    let current = service.get_json("/api/current_credits/os_credits_0");
    let exact: Decimal = current["current_credits_exact"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(exact, Decimal::from(100) + newer["os_credits_0"]);
    assert!(service.stats()["perun"]["adopted"].as_u64().unwrap() >= 1);

    // Re-sending everything (a subscription replaying its buffer) bills nothing.
    service.post_sample();
    let again = service.get_json("/api/current_credits/os_credits_0");
    assert_eq!(
        again["current_credits_exact"],
        current["current_credits_exact"]
    );
    // The audit keeps the reversed charges, marked.
    let audit = Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .args([
            "ledger",
            "charges",
            "--project",
            "os_credits_0",
            "--format",
            "json",
            "--data-dir",
        ])
        .arg(data.path())
        .envs(common::ledger_env(data.path()))
        .output()
        .unwrap();
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let charges = audit.as_array().unwrap();
    assert!(charges.iter().any(|c| c["reversed"] == true));
    assert!(charges.iter().any(|c| c["reversed"] == false));
}

/// The attribute definitions the service uses by default.
fn definitions() -> [os_credits::perun::client::AttributeDef; 3] {
    let def =
        |id, name: &str, namespace: &str, kind: &str| os_credits::perun::client::AttributeDef {
            id,
            friendly_name: name.into(),
            namespace: namespace.into(),
            kind: kind.into(),
        };
    [
        def(
            3382,
            "denbiCreditsCurrent",
            "urn:perun:group:attribute-def:opt",
            "java.lang.String",
        ),
        def(
            3383,
            "denbiCreditsGranted",
            "urn:perun:group:attribute-def:opt",
            "java.lang.String",
        ),
        def(
            2020,
            "toEmail",
            "urn:perun:group:attribute-def:def",
            "java.util.ArrayList",
        ),
    ]
}

#[test]
fn reads_by_friendly_name_get_nothing_from_perun_and_full_names_get_the_values() {
    use os_credits::perun::client::{Attribute, PerunClient};
    let perun = FakePerun::start();
    perun.add_group(&json!({"name": "myproj", "id": 1061, "attributes": {
        "denbiCreditsCurrent": "12.50", "denbiCreditsGranted": "100",
        "toEmail": ["alice@example.org"]}}));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = PerunClient::new(
        &format!("{}/krb/rpc/json", perun.url),
        "oscredits",
        "secret",
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    // What the client sent before this fix: friendly names. Perun (and the
    // fake) answer with nothing, no error.
    let before: Vec<Attribute> = runtime
        .block_on(client.call(
            "attributesManager",
            "getAttributes",
            &json!({"group": 1061, "attrNames": ["denbiCreditsCurrent", "denbiCreditsGranted", "toEmail"]}),
        ))
        .unwrap();
    assert!(before.is_empty(), "{before:?}");
    let definitions = definitions();
    let wanted: Vec<_> = definitions.iter().collect();
    let now = runtime
        .block_on(client.group_attributes(1061, &wanted))
        .unwrap();
    let values: Vec<&Value> = definitions
        .iter()
        .map(|d| &now.iter().find(|a| d.is(a)).expect("read").value)
        .collect();
    assert_eq!(
        values,
        [
            &json!("12.50"),
            &json!("100"),
            &json!(["alice@example.org"])
        ]
    );
}

/// What the ledger recorded as adjustments (`os-credits ledger adjustments`).
fn adjustments(data: &std::path::Path) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .args(["ledger", "adjustments", "--format", "json", "--data-dir"])
        .arg(data)
        .envs(common::ledger_env(data))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Only adoptions of nothing (the groups start without credits used): no
/// hand edit, nothing adopted twice.
fn assert_no_adjustment(data: &std::path::Path) {
    for adjustment in adjustments(data) {
        assert_eq!(adjustment["kind"], "adopted", "{adjustment}");
        let amount: Decimal = adjustment["amount"].as_str().unwrap().parse().unwrap();
        assert!(amount.is_zero(), "{adjustment}");
    }
}

fn pending(service: &Service) -> u64 {
    service.stats()["pending_projects"].as_u64().unwrap()
}

/// Whether everything publishable was published and confirmed: the only
/// project left in the outbox is the sample's one that is no Perun group
/// (retried hourly).
fn settled(service: &Service) -> bool {
    pending(service) == 1
}

/// Writes `denbiCreditsCurrent` of `group` as someone in Perun's GUI would.
fn set_in_perun(perun: &FakePerun, group: &str, value: Value) {
    let id = perun.state()["groups"][group]["id"].as_i64().unwrap();
    let attributes = json!([{"id": 3382, "friendlyName": "denbiCreditsCurrent",
        "namespace": "urn:perun:group:attribute-def:opt", "type": "java.lang.String", "value": value}]);
    let response = client()
        .post(format!(
            "{}/krb/rpc/json/attributesManager/setAttributes",
            perun.url
        ))
        .basic_auth("oscredits", Some("secret"))
        .json(&json!({"group": id, "attributes": attributes}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn an_unset_or_unreadable_value_in_perun_is_not_a_hand_edit() {
    let perun = FakePerun::start();
    register_groups(&perun);
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(&perun, data.path(), policies.path());
    service.post_sample();
    let expected = common::expected_published();
    await_until("Perun to hold the totals", || perun.published() == expected);
    await_until("the outbox to settle", || settled(&service));
    // Someone deletes one value and garbles another; then both projects use
    // 10 more credits.
    set_in_perun(&perun, "os_credits_0", Value::Null);
    set_in_perun(&perun, "denbi-annotation-005", json!("n/a"));
    let more = "project_vcpu_usage,location_id=9999,project_name=os_credits_0 value=1 1714700000000000000\n\
                project_vcpu_usage,location_id=9999,project_name=os_credits_0 value=11 1714700060000000000\n\
                project_vcpu_usage,location_id=9999,project_name=denbi-annotation-005 value=1 1714700000000000000\n\
                project_vcpu_usage,location_id=9999,project_name=denbi-annotation-005 value=11 1714700060000000000\n";
    let response = client()
        .post(service.at("/write"))
        .body(more)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let plus_ten = |name: &str| {
        let used: Decimal = expected[name].parse().unwrap();
        (used + Decimal::from(10)).to_string()
    };
    await_until("the ledger's values to be published again", || {
        let now = perun.published();
        now.get("os_credits_0") == Some(&plus_ten("os_credits_0"))
            && now.get("denbi-annotation-005") == Some(&plus_ten("denbi-annotation-005"))
    });
    assert_eq!(service.stats()["perun"]["unset_values"], 2);
    assert_eq!(service.log().matches("unset or unreadable").count(), 2);
    assert_eq!(service.stats()["perun"]["hand_edits"], 0);
    assert_no_adjustment(data.path());
}

#[test]
fn a_write_perun_applied_but_never_answered_is_ours_after_a_crash() {
    let perun = FakePerun::start();
    register_groups(&perun);
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    let (first, rest) = lines.split_at(lines.len() / 2);
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let mut service = start(&perun, data.path(), policies.path());
    let post = |service: &Service, lines: &[&str]| {
        let response = client()
            .post(service.at("/write"))
            .body(lines.join("\n"))
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    };
    // The first half published and confirmed.
    post(&service, first);
    await_until("the first half to be confirmed", || {
        settled(&service) && perun.published().len() == 5
    });
    let halfway = perun.published();
    // Perun applies every write from now on but never answers.
    perun.faults(json!({ "drop_after_write": 1_000_000 }));
    post(&service, rest);
    let expected = common::expected_published();
    assert_ne!(halfway, expected, "the second half must change the values");
    await_until("Perun to hold the final values, unanswered", || {
        perun.published() == expected
    });
    assert!(perun.state()["dropped_writes"].as_u64().unwrap() >= 5);
    // Killed in that window: the ledger never learnt the writes landed.
    service.kill9();
    perun.faults(json!({}));
    let service = start(&perun, data.path(), policies.path());
    await_until("the outbox to settle after the restart", || {
        settled(&service)
    });
    assert_eq!(perun.published(), expected);
    assert_eq!(
        service.stats()["perun"]["hand_edits"],
        0,
        "{}",
        service.log()
    );
    assert_no_adjustment(data.path());
}

/// Posts the sample in chunks while the service is killed with SIGKILL
/// `kills` times at random moments (each life restarts it and re-posts what
/// was not answered 204), Perun and SMTP live: Perun must end exactly at
/// the expected credits, with no adjustment; each threshold mail is sent
/// under one Message-ID (a mail sent again after a crash keeps it), with
/// at most one resend per kill; every kill lands while the client is still
/// posting; the ledger passes SQLite's integrity check.
fn crash_during_ingest(kills: usize) {
    let (mut random, _) = common::seeded("kills during ingest");
    let perun = FakePerun::start();
    // 150 granted: the 50 % mail is due for three projects, the 100 % one
    // for os_credits_0 (167.80 used).
    for (i, name) in common::expected_published().keys().enumerate() {
        perun.group(name, 1000 + i as i64, "150");
    }
    let smtp = common::smtp::SmtpSink::start();
    let smtp_port = smtp.port.to_string();
    let mail_env = [
        ("MAIL_SMTP_SERVER", "127.0.0.1"),
        ("MAIL_SMTP_PORT", smtp_port.as_str()),
        ("MAIL_NOT_STARTTLS", "true"),
        ("MAIL_FROM", "credits@cloud.example"),
        ("NOTIFICATION_TO_OVERWRITE", "ops@cloud.example"),
        // Threshold mails only (run-out warnings: forecasts.rs).
        ("OS_CREDITS_RUNOUT_WARNING_DAYS", "0"),
    ];
    let start = |data: &std::path::Path, policies: &std::path::Path| {
        let mut env = perun.env();
        env.extend(mail_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Service::start(data, policies, &env)
    };
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    // Enough chunks, paced, that every kill falls into the ingest (a life
    // posts about 12 chunks at most before its kill).
    let count = 20 * kills + 10;
    let chunks: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
        lines
            .chunks(lines.len().div_ceil(count))
            .map(|c| c.join("\n"))
            .collect(),
    );
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let mut next = 0;
    let mut landed = 0;
    for _ in 0..kills {
        let mut service = start(data.path(), policies.path());
        let url = service.at("/write");
        let (chunks_, from) = (chunks.clone(), next);
        // A client posting chunk after chunk, each once answered 204.
        let poster = std::thread::spawn(move || {
            let mut at = from;
            while at < chunks_.len() {
                match client().post(&url).body(chunks_[at].clone()).send() {
                    Ok(r) if r.status() == StatusCode::NO_CONTENT => at += 1,
                    _ => break,
                }
                std::thread::sleep(std::time::Duration::from_millis(60));
            }
            at
        });
        // The random moment of the crash (not a wait for a condition).
        std::thread::sleep(std::time::Duration::from_millis(random.u64(50..700)));
        service.kill9();
        next = poster.join().unwrap();
        println!("killed after {next} of {} chunks", chunks.len());
        // It landed while the client was still posting.
        assert!(next < chunks.len(), "a kill after the ingest ended");
        landed += 1;
    }
    assert_eq!(landed, kills);
    let service = start(data.path(), policies.path());
    for chunk in &chunks[next..] {
        let response = client()
            .post(service.at("/write"))
            .body(chunk.clone())
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let expected = common::expected_published();
    await_until("Perun to converge after the crashes", || {
        perun.published() == expected && settled(&service)
    });
    assert_no_adjustment(data.path());
    // Each threshold mail once: one Message-ID per (project, threshold).
    let due = [
        ("Cryoem Structural Lab 1", 50),
        ("os_credits_0", 50),
        ("os_credits_0", 100),
        ("os_credits_4", 50),
    ];
    await_until("every threshold mail", || {
        let mails = smtp.mails();
        due.iter().all(|(project, threshold)| {
            mails.iter().any(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.contains(&format!("{threshold}%")) && s.contains(project))
            })
        })
    });
    let mut ids: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for mail in smtp.mails() {
        let subject = mail.header("Subject").unwrap();
        ids.entry(subject)
            .or_default()
            .insert(mail.header("Message-ID").unwrap());
    }
    assert_eq!(ids.len(), due.len(), "{ids:?}");
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    // A resend (a crash between sending and recording) at most once a kill.
    let delivered = smtp.mails().len();
    println!("{delivered} mails delivered for {} thresholds", due.len());
    assert!(
        delivered <= due.len() + kills,
        "{delivered} mails for {} due and {kills} kills",
        due.len()
    );
    // The SQLite ledger is whole (read while the service runs: WAL readers
    // are fine); PostgreSQL keeps its own.
    if common::ledger_env(data.path()).is_empty() {
        let ledger = rusqlite::Connection::open_with_flags(
            data.path().join("ledger.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let check: String = ledger
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}

/// The acceptance run, in CI: 20 kills (about half a minute).
#[test]
fn twenty_kills_during_ingest_leave_perun_exact() {
    crash_during_ingest(20);
}
