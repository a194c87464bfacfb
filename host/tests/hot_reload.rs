//! Hot reload, per-site policies, audit and re-rating, end to end: the real
//! service, its policy folder changed under load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Service, policy_dir, repo_file, wasm};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};

const KEY: &str = "s3cret-admin-key";
const MAPPING: &str = "[default]\nmodule = \"current.wasm\"\n";

fn client() -> Client {
    common::http()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The module with a custom section appended: the same policy, other bytes.
fn variant(module: &[u8], tag: &str) -> Vec<u8> {
    let name = b"os-credits-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    assert!(payload.len() < 128, "one-byte LEB128 size");
    let mut bytes = module.to_vec();
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend(payload);
    bytes
}

/// Deploys `bytes` as `name` the safe way: written hidden, renamed into place.
fn deploy(folder: &Path, name: &str, bytes: &[u8]) {
    let hidden = folder.join(format!(".{name}.tmp"));
    std::fs::write(&hidden, bytes).unwrap();
    std::fs::rename(&hidden, folder.join(name)).unwrap();
}

fn policies(service: &Service) -> Value {
    service.get_json("/api/policies")
}

/// Waits (polling, bounded) until `condition` holds for `/api/policies`.
fn await_policies(service: &Service, what: &str, condition: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = policies(service);
        if condition(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {state}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn active_sha(state: &Value) -> String {
    state["active"][0]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn json_of(args: &[&str]) -> Value {
    // The ledger the command reads: the service's (its data folder, or its
    // database when the tests run against PostgreSQL).
    let data = args
        .iter()
        .position(|a| *a == "--data-dir")
        .map(|i| std::path::PathBuf::from(args[i + 1]));
    let env = data.map(|d| common::ledger_env(&d)).unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = common::os_credits_in(&common::root(), args, &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn twenty_swaps_under_load_lose_no_request_and_never_activate_a_broken_module() {
    let denbi = std::fs::read(wasm("denbi-policy")).unwrap();
    let wrong_contract = std::fs::read(wasm("contract-v1-policy")).unwrap();
    let folder = policy_dir(&[("policies.toml", MAPPING)]);
    let first = variant(&denbi, "v0");
    deploy(folder.path(), "current.wasm", &first);
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), folder.path(), &[("API_KEY", KEY)]);

    // A client posting without pause, timestamped by the clock: every
    // point raises every key, so every step after the first is billed by
    // the version in force when its usage happened (a step spanning a
    // swap by both, in parts).
    let poster = common::Poster::start_now(&service.url, "load");

    let mut valid = BTreeSet::from([sha256(&first)]);
    let mut refused = BTreeSet::new();
    for swap in 1..=20 {
        let bytes = match swap {
            7 => b"\0asm this is no component".to_vec(),
            13 => wrong_contract.clone(),
            _ => variant(&denbi, &format!("v{swap}")),
        };
        let sha = sha256(&bytes);
        let before = active_sha(&policies(&service));
        deploy(folder.path(), "current.wasm", &bytes);
        if matches!(swap, 7 | 13) {
            await_policies(&service, "the failure to be reported", |s| {
                s["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["sha256"] == sha.as_str())
            });
            assert_eq!(
                active_sha(&policies(&service)),
                before,
                "a broken module became active"
            );
            refused.insert(sha);
        } else {
            await_policies(&service, "the new module to be active", |s| {
                active_sha(s) == sha
            });
            valid.insert(sha);
        }
        // let some points be priced by this version
        poster.await_more(3);
    }
    let (posted, failed) = poster.finish();
    assert_eq!(failed, 0, "requests failed during swaps");
    assert!(posted >= 60);
    let errors = policies(&service)["errors"].clone();
    assert_eq!(
        errors,
        serde_json::json!([]),
        "the last swap loaded, so no error remains"
    );

    // Every charge names exactly one valid version; broken ones priced
    // nothing; the parts of a step add up to its 1 credit.
    let mut used = BTreeSet::new();
    for p in 0..20 {
        let charges = json_of(&[
            "ledger",
            "charges",
            "--project",
            &format!("load_{p}"),
            "--format",
            "json",
            "--data-dir",
            data.path().to_str().unwrap(),
        ]);
        let mut steps: BTreeMap<String, Decimal> = BTreeMap::new();
        for charge in charges.as_array().unwrap() {
            let sha = charge["policy"]["sha256"].as_str().unwrap().to_owned();
            assert!(valid.contains(&sha), "charge by unknown module {sha}");
            assert!(!refused.contains(&sha));
            let credits: Decimal = charge["credits"].as_str().unwrap().parse().unwrap();
            // A step is named by the value it reached; its parts end at
            // interpolated values before it.
            let reached = charge["current"]["value"].as_str().unwrap();
            let step = reached.split('.').next().unwrap_or(reached);
            let step = if reached.contains('.') {
                (step.parse::<i64>().unwrap() + 1).to_string()
            } else {
                step.to_owned()
            };
            *steps.entry(step).or_default() += credits;
            assert!(charge["schedule_entry"].is_i64(), "{charge}");
            used.insert(sha);
        }
        assert!(
            steps.values().all(|c| *c == Decimal::ONE),
            "load_{p}: steps of other than 1 credit: {steps:?}"
        );
    }
    assert!(
        used.len() >= 10,
        "only {} versions priced points",
        used.len()
    );
}

#[test]
fn a_removed_module_keeps_its_last_good_version_and_says_so() {
    let folder = policy_dir(&[("policies.toml", MAPPING)]);
    let denbi = std::fs::read(wasm("denbi-policy")).unwrap();
    deploy(folder.path(), "current.wasm", &denbi);
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), folder.path(), &[("API_KEY", KEY)]);
    std::fs::remove_file(folder.path().join("current.wasm")).unwrap();
    await_policies(&service, "the removal to be reported", |s| {
        s["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("keeping the last good version"))
    });
    assert_eq!(active_sha(&policies(&service)), sha256(&denbi));
    let body = "project_vcpu_usage,location_id=1,project_name=r value=1 1\nproject_vcpu_usage,location_id=1,project_name=r value=3 2\n";
    let response = client()
        .post(service.at("/write"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let current = service.get_json("/api/current_credits/r");
    assert_eq!(current["current_credits_exact"], "2");
    // /stats shows the failure too
    let stats = service.get_json("/stats");
    assert_eq!(stats["policy_errors"][0]["file"], "current.wasm");
}

/// A mapping entry that pins `sha256`: the module with those bytes is
/// active; other bytes under the same name are refused (the last good
/// version kept, the reason in `/api/policies`, `/stats` and `/metrics`);
/// pinning the new bytes activates them.
#[test]
fn a_pinned_sha256_refuses_other_bytes_and_keeps_the_last_good_version() {
    let denbi = std::fs::read(wasm("denbi-policy")).unwrap();
    let pinned = |bytes: &[u8]| {
        format!(
            "[default]\nmodule = \"current.wasm\"\nsha256 = \"{}\"\n",
            sha256(bytes)
        )
    };
    let folder = policy_dir(&[("policies.toml", &pinned(&denbi))]);
    deploy(folder.path(), "current.wasm", &denbi);
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), folder.path(), &[("API_KEY", KEY)]);
    await_active(&service, &sha256(&denbi));
    // Other bytes, the pin unchanged: refused, the pinned module stays.
    let other = variant(&denbi, "not the one built");
    deploy(folder.path(), "current.wasm", &other);
    await_policies(&service, "the other bytes to be refused", |s| {
        s["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("the mapping pins {}", sha256(&denbi))))
    });
    let state = policies(&service);
    assert_eq!(active_sha(&state), sha256(&denbi));
    assert_eq!(state["errors"][0]["sha256"], sha256(&other).as_str());
    assert!(
        state["errors"][0]["error"]
            .as_str()
            .unwrap()
            .ends_with("refused; keeping the last good version")
    );
    let metrics = client()
        .get(service.at("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("os_credits_policy_load_failures_total 1"),
        "{metrics}"
    );
    // The operator pins the new bytes: they go live.
    std::fs::write(folder.path().join("policies.toml"), pinned(&other)).unwrap();
    await_policies(&service, "the newly pinned module", |s| {
        active_sha(s) == sha256(&other)
    });
    assert!(policies(&service)["errors"].as_array().unwrap().is_empty());
}

/// Runs `os-credits policy …` (the real binary); its exit code and output.
fn policy_tool(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .arg("policy")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// With trusted keys set, under load: a module signed by a trusted key
/// goes live; unsigned, tampered (signed bytes changed) and wrongly keyed
/// modules are refused with the reason, the last good version kept; no
/// Waits (bounded) until the module `sha` is the default's in force: on
/// PostgreSQL a replica reports itself leader before its first leadership
/// has put the folder into the schedule (asynchronously).
fn await_active(service: &Service, sha: &str) {
    common::await_until("the folder's module in force", || {
        active_sha(&policies(service)) == sha
    });
    assert_eq!(active_sha(&policies(service)), sha);
}

/// write fails meanwhile. `policy verify` agrees with the service.
#[test]
fn only_modules_signed_by_a_trusted_key_go_live() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("author");
    let stranger = keys.path().join("stranger");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    for k in [&key, &stranger] {
        assert_eq!(policy_tool(&["keygen", "--out", &path(k)]).0, 0);
    }
    let trusted = keys.path().join("author.pub");
    let denbi = std::fs::read(wasm("denbi-policy")).unwrap();
    let folder = policy_dir(&[("policies.toml", MAPPING)]);
    let module = folder.path().join("current.wasm");
    // Signed before it is renamed into place, as a deployment would.
    let signed = |bytes: &[u8], by: &Path| {
        let staged = keys.path().join("current.wasm");
        std::fs::write(&staged, bytes).unwrap();
        let (code, text) = policy_tool(&["sign", &path(&staged), "--key", &path(by)]);
        assert_eq!(code, 0, "{text}");
        std::fs::read(keys.path().join("current.wasm.sig")).unwrap()
    };
    let first = variant(&denbi, "signed");
    deploy(folder.path(), "current.wasm.sig", &signed(&first, &key));
    deploy(folder.path(), "current.wasm", &first);
    let (code, text) = policy_tool(&["verify", &path(&module), "--trusted-keys", &path(&trusted)]);
    assert_eq!(code, 0, "{text}");
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(
        data.path(),
        folder.path(),
        &[("OS_CREDITS_POLICY_TRUSTED_KEYS", &path(&trusted))],
    );
    await_active(&service, &sha256(&first));
    let poster = common::Poster::start(&service.url, "signed");
    poster.await_more(20);

    let refused =
        |bytes: &[u8], why: &str| {
            let sha = sha256(bytes);
            await_policies(&service, why, |s| {
                s["errors"].as_array().unwrap().iter().any(|e| {
                    e["sha256"] == sha.as_str() && e["error"].as_str().unwrap().contains(why)
                })
            });
            assert_eq!(active_sha(&policies(&service)), sha256(&first));
            let (code, text) =
                policy_tool(&["verify", &path(&module), "--trusted-keys", &path(&trusted)]);
            assert_eq!(code, 1, "{text}");
            assert!(text.contains(why), "{text}");
        };
    // Unsigned: new bytes, no signature beside them.
    std::fs::remove_file(folder.path().join("current.wasm.sig")).unwrap();
    let unsigned = variant(&denbi, "unsigned");
    deploy(folder.path(), "current.wasm", &unsigned);
    refused(&unsigned, "unsigned: no current.wasm.sig");
    // Tampered: a valid signature of other bytes.
    deploy(folder.path(), "current.wasm.sig", &signed(&first, &key));
    let tampered = variant(&denbi, "tampered");
    deploy(folder.path(), "current.wasm", &tampered);
    refused(&tampered, "the signature does not match the module's bytes");
    // Wrongly keyed: signed, but by a key nobody trusts.
    let strange = variant(&denbi, "strange");
    deploy(
        folder.path(),
        "current.wasm.sig",
        &signed(&strange, &stranger),
    );
    deploy(folder.path(), "current.wasm", &strange);
    refused(&strange, "which is not a trusted key");
    // Signed by the author: live.
    let next = variant(&denbi, "next");
    deploy(folder.path(), "current.wasm.sig", &signed(&next, &key));
    deploy(folder.path(), "current.wasm", &next);
    await_policies(&service, "the signed module", |s| {
        active_sha(s) == sha256(&next)
    });
    poster.await_more(20);
    let (posted, failed) = poster.finish();
    assert!(posted > 40);
    assert_eq!(failed, 0, "writes failed during the swaps");
}

#[test]
fn the_reload_endpoint_wants_the_api_key() {
    let folder = policy_dir(&[]);
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), folder.path(), &[("API_KEY", KEY)]);
    let post = |key: Option<&str>| {
        let mut request = client().post(service.at("/api/policies/reload"));
        if let Some(key) = key {
            request = request.header("X-API-KEY", key);
        }
        request.send().unwrap()
    };
    assert_eq!(post(None).status(), StatusCode::UNAUTHORIZED);
    assert_eq!(post(Some("guess")).status(), StatusCode::FORBIDDEN);
    let ok = post(Some(KEY));
    assert_eq!(ok.status(), StatusCode::OK);
    let state: Value = ok.json().unwrap();
    assert_eq!(state["active"][0]["site"], "default");
    assert_eq!(state["active"][0]["name"], "denbi");
    assert_eq!(state["active"][0]["file"], "denbi.wasm");
    assert_eq!(
        state["active"][0]["sha256"],
        sha256(&std::fs::read(wasm("denbi-policy")).unwrap())
    );
    assert!(
        state["active"][0]["loaded_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // Without API_KEY the admin endpoints are off.
    let data = tempfile::tempdir().unwrap();
    let open = Service::start(data.path(), folder.path(), &[]);
    let response = client()
        .post(open.at("/api/policies/reload"))
        .header("X-API-KEY", "x")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

fn per_project(list: &Value, field: &str) -> BTreeMap<String, Decimal> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["project"].as_str().unwrap().to_owned(),
                p[field].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn rerating_the_examples_with_the_tariff_policy_shows_what_its_prices_imply() {
    let folder = policy_dir(&[]);
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(data.path(), folder.path(), &[]);
    service.post_sample();

    let tariff = wasm("tariff-policy");
    let config = repo_file("examples/tariff.toml");
    let dir = data.path().to_str().unwrap();
    let (tariff, config) = (tariff.to_str().unwrap(), config.to_str().unwrap());
    let rerated = json_of(&[
        "policy",
        "rerate",
        tariff,
        "--config",
        config,
        "--from",
        "2024-05-02",
        "--to",
        "2024-05-03",
        "--data-dir",
        dir,
        "--format",
        "json",
    ]);
    let rerate = &rerated["rerate"];
    // billed: what the de.NBI policy charged, as expected for the sample
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap(),
    )
    .unwrap();
    let billed = per_project(&rerate["projects"], "billed");
    let wanted: BTreeMap<String, Decimal> = expected["projects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
        .collect();
    assert_eq!(billed, wanted);
    // would be: exactly what the tariff policy bills on the same measurements
    let run = json_of(&[
        "policy",
        "run",
        tariff,
        "--config",
        config,
        repo_file("examples/stack-sample.lp").to_str().unwrap(),
        "--format",
        "json",
    ]);
    let would_be = per_project(&rerate["projects"], "would_be");
    assert_eq!(would_be, per_project(&run["projects"], "credits"));
    for row in rerate["projects"].as_array().unwrap() {
        let (b, w, d): (Decimal, Decimal, Decimal) = (
            row["billed"].as_str().unwrap().parse().unwrap(),
            row["would_be"].as_str().unwrap().parse().unwrap(),
            row["difference"].as_str().unwrap().parse().unwrap(),
        );
        assert_eq!(d, w - b);
    }
    assert_ne!(rerate["difference"], "0");
    // A period without charges re-rates nothing.
    let empty = json_of(&[
        "policy",
        "rerate",
        tariff,
        "--from",
        "2020-01-01",
        "--to",
        "2020-01-02",
        "--data-dir",
        dir,
        "--format",
        "json",
    ]);
    assert_eq!(empty["steps"], 0);
}
