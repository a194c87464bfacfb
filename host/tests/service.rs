//! End-to-end: the real `os-credits serve` over real HTTP with a temporary
//! data dir. The original service's test cases, bad batches, crash safety,
//! and the same totals as `policy run`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Service, policy_dir, repo_file};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use rust_decimal::Decimal;
use serde_json::Value;

const DAY: i64 = 24 * 3600 * 1_000_000_000;
/// 2019-01-08 00:00:00 UTC in ns.
const T0: i64 = 1_546_905_600_000_000_000;

/// Sites mapped to priced variants of the de.NBI policy.
const MAPPING: &str = r#"
[default]
module = "denbi.wasm"

[sites."9999"]
module = "denbi.wasm"
config = { cpu_price = "1.3", ram_price = "1" }

[sites."7777"]
module = "denbi.wasm"
config = { cpu_price = "0.001" }
"#;

fn client() -> Client {
    common::http()
}

fn point(project: &str, site: &str, value: &str, ts: i64) -> String {
    format!(
        "project_vcpu_usage,domain_name=elixir,location=site-a,location_id={site},project_name={project} value={value} {ts}\n"
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// (rounded credits used as JSON text, exact credits used).
fn current(service: &Service, project: &str) -> (String, Decimal) {
    let (status, body) = service.get(&format!("/api/current_credits/{project}"));
    assert_eq!(status, StatusCode::OK, "{body}");
    let value = json(&body);
    let rounded = body
        .split("\"current_credits\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .unwrap()
        .to_owned();
    let exact = value["current_credits_exact"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (rounded, exact)
}

fn quote(service: &Service, query: &str, body: &str) -> (StatusCode, String) {
    let response = client()
        .post(service.at(&format!("/api/costs_per_hour{query}")))
        .body(body.to_owned())
        .send()
        .unwrap();
    (response.status(), response.text().unwrap())
}

#[test]
fn the_original_service_cases_hold_through_write_and_the_apis() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[("policies.toml", MAPPING)]);
    let service = Service::start(data.path(), policies.path(), &[]);

    // first write: accepted, credits used 0, nothing billed
    assert_eq!(
        service.write(&point("p", "8676", "100", T0)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(current(&service, "p").0, "0.00");
    assert_eq!(
        service.get("/api/credits_history/p").0,
        StatusCode::NOT_FOUND
    );

    // +5 usage seven days later: used 5, one history entry
    assert_eq!(
        service.write(&point("p", "8676", "105", T0 + 7 * DAY)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(current(&service, "p").0, "5.00");
    let (status, body) = service.get("/api/credits_history/p");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        r#"{"timestamps":["timestamps","2019-01-15 00:00:00"],"credits":["credits",5.00],"metrics":["metrics","cpu"]}"#
    );

    // same timestamp with a higher value: ignored
    assert_eq!(
        service.write(&point("p", "8676", "200", T0 + 7 * DAY)).0,
        StatusCode::NO_CONTENT
    );
    // same value seven days later: nothing billed
    assert_eq!(
        service.write(&point("p", "8676", "105", T0 + 14 * DAY)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(current(&service, "p").1, Decimal::from(5));
    assert_eq!(
        json(&service.get("/api/credits_history/p").1)["credits"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // price 0.001: five +1 steps store nothing visible, the sixth shows 0.01
    for step in 0..=5 {
        let value = (1000 + step).to_string();
        assert_eq!(
            service
                .write(&point("q", "7777", &value, T0 + step * DAY))
                .0,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        current(&service, "q"),
        ("0.00".into(), "0.005".parse().unwrap())
    );
    assert_eq!(
        service.get("/api/credits_history/q").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        service.write(&point("q", "7777", "1006", T0 + 6 * DAY)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        current(&service, "q"),
        ("0.01".into(), "0.006".parse().unwrap())
    );
    let history = json(&service.get("/api/credits_history/q").1);
    assert_eq!(history["credits"], serde_json::json!(["credits", 0.01]));

    // costs per hour: {"metric_a":3,"metric_b":2} at 1.3 and 1 -> 5.9
    assert_eq!(
        quote(&service, "?location_id=9999", r#"{"cpu":3,"ram":2}"#),
        (StatusCode::OK, "5.90".into())
    );
    assert_eq!(
        quote(&service, "", r#"{"cpu":16,"ram":32}"#),
        (StatusCode::OK, "25.60".into())
    );
    assert_eq!(quote(&service, "", r#"{"gpu":1}"#).0, StatusCode::NOT_FOUND);
    assert_eq!(quote(&service, "", r#"{"cpu":"#).0, StatusCode::BAD_REQUEST);
    assert_eq!(
        quote(&service, "", r#"{"cpu":"3"}"#).0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        quote(&service, "", r#"{"cpu":1.5}"#).0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(quote(&service, "", r#"[1,2]"#).0, StatusCode::BAD_REQUEST);
    assert_eq!(
        quote(&service, "", r#"{"ram":0.5}"#),
        (StatusCode::OK, "0.15".into())
    );
}

#[test]
fn history_dates_filter_and_refuse_nonsense() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let service = Service::start(data.path(), policies.path(), &[]);
    let body: String = (0..4)
        .map(|d| point("h", "1", &(10 * d).to_string(), T0 + d * DAY))
        .collect();
    assert_eq!(service.write(&body).0, StatusCode::NO_CONTENT);

    let history = json(&service.get("/api/credits_history/h").1);
    // newest first, headed by the list's name
    assert_eq!(
        history["timestamps"],
        serde_json::json!([
            "timestamps",
            "2019-01-11 00:00:00",
            "2019-01-10 00:00:00",
            "2019-01-09 00:00:00"
        ])
    );
    assert_eq!(
        history["credits"],
        serde_json::json!(["credits", 30.0, 20.0, 10.0])
    );
    let ranged = service.get(
        "/api/credits_history/h?start_date=2019-01-09%2012:00:00&end_date=2019-01-10%2000:00:00",
    );
    assert_eq!(
        json(&ranged.1)["credits"],
        serde_json::json!(["credits", 20.0])
    );
    let empty = service.get(
        "/api/credits_history/h?start_date=2020-01-01%2000:00:00&end_date=2020-02-01%2000:00:00",
    );
    assert_eq!(empty.0, StatusCode::NO_CONTENT);
    let bad = service.get("/api/credits_history/h?start_date=yesterday");
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    assert!(bad.1.contains("start_date"), "{}", bad.1);
    let backwards = service.get(
        "/api/credits_history/h?start_date=2019-01-10%2000:00:00&end_date=2019-01-09%2000:00:00",
    );
    assert_eq!(backwards.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        service.get("/api/credits_history/%20").0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        service.get("/api/credits_history/nobody").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        service.get("/api/current_credits/nobody").0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(service.get("/ping"), (StatusCode::OK, "Pong".into()));
    let metrics = json(&service.get("/api/metrics").1);
    assert_eq!(
        metrics["cpu"],
        serde_json::json!({"type":"int","description":"Amount of vCPUs.","name":"project_vcpu_usage","friendly_name":"cpu"})
    );
    let stats = json(&service.get("/stats").1);
    assert_eq!(stats["queue_size"], 0);
    assert_eq!(stats["projects"], 1);
    assert_eq!(stats["points"]["billed"], 3);
    assert_eq!(stats["policies"][0]["name"], "denbi");
    assert!(stats["uptime_seconds"].is_u64());
}

#[test]
fn a_batch_with_bad_lines_is_answered_400_naming_them_and_its_good_lines_are_billed() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let service = Service::start(data.path(), policies.path(), &[]);
    let body = [
        point("good", "1", "1", T0),
        "project_vcpu_usage,location_id=1,project_name=good value=oops 2\n".into(),
        point(r"Genome\ Lab", "1", "5", T0),
        "project_vcpu_usage,location_id=1 value=3 2\n".into(),
        "go_goroutines,instance=x value=12 1\n".into(),
        point("good", "1", "4", T0 + DAY),
        point(r"Genome\ Lab", "1", "7.5", T0 + DAY),
    ]
    .concat();
    let (status, text) = service.write(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let answer = json(&text);
    assert_eq!(
        answer["error"],
        "2 of 7 lines rejected; the other lines were applied"
    );
    assert_eq!(answer["lines"][0]["line"], 2);
    assert!(
        answer["lines"][0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid field value")
    );
    assert_eq!(answer["lines"][1]["line"], 4);
    assert!(
        answer["lines"][1]["error"]
            .as_str()
            .unwrap()
            .contains("project_name")
    );
    assert_eq!(current(&service, "good").1, Decimal::from(3));
    // an escaped space in a project name is billed like any other
    assert_eq!(current(&service, "Genome%20Lab").1, "2.5".parse().unwrap());
    // a bad precision is refused as a whole
    let response = client()
        .post(service.at("/write?precision=weeks"))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn a_body_over_the_limit_is_answered_413_and_a_whitelist_limits_billing() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let service = Service::start(
        data.path(),
        policies.path(),
        &[
            ("OS_CREDITS_MAX_BODY_MB", "1"),
            ("OS_CREDITS_PROJECT_WHITELIST", "a;b"),
        ],
    );
    let line = point("a", "1", "1", T0);
    let big = line.repeat((2 << 20) / line.len());
    assert_eq!(service.write(&big).0, StatusCode::PAYLOAD_TOO_LARGE);
    let body = [
        point("a", "1", "1", T0),
        point("a", "1", "2", T0 + DAY),
        point("c", "1", "1", T0),
        point("c", "1", "9", T0 + DAY),
    ]
    .concat();
    assert_eq!(service.write(&body).0, StatusCode::NO_CONTENT);
    assert_eq!(current(&service, "a").1, Decimal::ONE);
    assert_eq!(
        service.get("/api/current_credits/c").0,
        StatusCode::NOT_FOUND
    );
    let stats = json(&service.get("/stats").1);
    assert_eq!(stats["points"]["ignored"]["not whitelisted"], 2);
}

fn expected_sample_totals() -> BTreeMap<String, Decimal> {
    let expected =
        json(&std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap());
    expected["projects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
        .collect()
}

fn sample_chunks(lines_per_chunk: usize) -> Vec<String> {
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    lines
        .chunks(lines_per_chunk)
        .map(|chunk| chunk.iter().map(|l| format!("{l}\n")).collect())
        .collect()
}

fn service_totals(service: &Service) -> BTreeMap<String, Decimal> {
    expected_sample_totals()
        .keys()
        .map(|project| {
            let encoded = project.replace(' ', "%20");
            (project.clone(), current(service, &encoded).1)
        })
        .collect()
}

#[test]
fn the_service_bills_the_sample_exactly_as_policy_run_does() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let service = Service::start(data.path(), policies.path(), &[]);
    for chunk in sample_chunks(500) {
        assert_eq!(service.write(&chunk).0, StatusCode::NO_CONTENT);
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .args(["policy", "run"])
        .arg(policies.path().join("denbi.wasm"))
        .arg(repo_file("examples/stack-sample.lp"))
        .args(["--format", "json"])
        .output()
        .unwrap();
    let run = json(&String::from_utf8(output.stdout).unwrap());
    let from_run: BTreeMap<String, Decimal> = run["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["project"].as_str().unwrap().to_owned(),
                p["credits"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(service_totals(&service), from_run);
    assert_eq!(from_run, expected_sample_totals());
}

#[test]
fn after_kill_9_mid_ingest_resending_everything_gives_the_totals_of_one_clean_run() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let chunks = sample_chunks(100);
    let mut service = Service::start(data.path(), policies.path(), &[]);
    // Post in order from another thread; kill the service mid-stream.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let url = service.url.clone();
    let poster = {
        let chunks = chunks.clone();
        std::thread::spawn(move || {
            for chunk in chunks {
                let sent = client().post(format!("{url}/write")).body(chunk).send();
                match sent {
                    Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                        let _ = done_tx.send(());
                    }
                    _ => break,
                }
            }
        })
    };
    for _ in 0..chunks.len() / 3 {
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("writes go through");
    }
    service.kill9();
    poster.join().unwrap();
    let partial = {
        let restarted = Service::start(data.path(), policies.path(), &[]);
        let totals = service_totals(&restarted);
        assert_ne!(
            totals,
            expected_sample_totals(),
            "the kill came too late to test anything"
        );
        for chunk in &chunks {
            assert_eq!(restarted.write(chunk).0, StatusCode::NO_CONTENT);
        }
        assert_eq!(service_totals(&restarted), expected_sample_totals());
        totals
    };
    // Re-delivering everything once more is a no-op.
    let again = Service::start(data.path(), policies.path(), &[]);
    for chunk in &chunks {
        assert_eq!(again.write(chunk).0, StatusCode::NO_CONTENT);
    }
    assert_eq!(service_totals(&again), expected_sample_totals());
    assert!(
        partial.values().any(|v| !v.is_zero()),
        "nothing was committed before the kill"
    );
}

#[test]
fn sigterm_drains_commits_and_exits_within_ten_seconds() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let mut service = Service::start(data.path(), policies.path(), &[]);
    let body = [point("t", "1", "1", T0), point("t", "1", "3", T0 + DAY)].concat();
    assert_eq!(service.write(&body).0, StatusCode::NO_CONTENT);
    let (clean, took) = service.terminate();
    assert!(clean, "exit status not success:\n{}", service.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(service.log().contains("stopped cleanly"));
    let restarted = Service::start(data.path(), policies.path(), &[]);
    assert_eq!(current(&restarted, "t").1, Decimal::from(2));
}

#[test]
fn a_missing_policy_folder_stops_the_start_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let stderr = common::serve_stops(data.path(), &data.path().join("nowhere"), &[]);
    assert!(
        stderr.contains("cannot read policy folder") && stderr.contains("nowhere"),
        "{stderr}"
    );
}

#[test]
fn logconfig_changes_the_log_level_at_runtime_and_wants_the_api_key() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let service = Service::start(data.path(), policies.path(), &[("API_KEY", "k3y")]);
    let post = |key: Option<&str>, body: &str| {
        let mut request = client()
            .post(service.at("/logconfig"))
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("X-API-KEY", key);
        }
        request.send().unwrap().status()
    };
    let debug = r#"{"filter":"os_credits=debug"}"#;
    assert_eq!(post(None, debug), StatusCode::UNAUTHORIZED);
    assert_eq!(post(Some("nope"), debug), StatusCode::FORBIDDEN);
    assert_eq!(post(Some("k3y"), "{\"level\":1}"), StatusCode::BAD_REQUEST);
    assert_eq!(
        post(Some("k3y"), r#"{"filter":"os_credits=loud"}"#),
        StatusCode::BAD_REQUEST
    );
    // At info, a write logs nothing at debug level; after /logconfig the
    // next one does. The log is one stream in order: once the second
    // write's line is there, a line of the first would be there too.
    assert_eq!(
        service.write(&point("l", "1", "1", T0)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(post(Some("k3y"), debug), StatusCode::NO_CONTENT);
    assert_eq!(
        service.write(&point("l", "1", "2", T0 + DAY)).0,
        StatusCode::NO_CONTENT
    );
    common::await_until("the debug line after /logconfig", || {
        service.log().contains("write applied")
    });
    assert_eq!(
        service.log().matches("write applied").count(),
        1,
        "the write before /logconfig logged at debug level:\n{}",
        service.log()
    );
}
