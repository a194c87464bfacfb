//! Bad input at the edges, each answered with a clear error while nothing
//! else is lost: a line of 10 MB, invalid UTF-8 in tags, timestamps far in
//! the future or before 1970, a sender making up 100k projects, a policy
//! module of 100 MB and a `policies.toml` pointing outside the folder.
//! The real binary over HTTP.

mod common;

use common::{Service, policy_dir};
use reqwest::StatusCode;
use serde_json::Value;

fn line(project: &str, value: &str, at: i64) -> String {
    format!("project_vcpu_usage,location_id=8676,project_name={project} value={value} {at}\n")
}

const T0: i64 = 1_714_609_360_727_000_000;
const MINUTE: i64 = 60_000_000_000;

fn start(env: &[(&str, &str)]) -> (Service, tempfile::TempDir, tempfile::TempDir) {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), env);
    (service, data, policies)
}

fn errors(body: &str) -> Vec<(u64, String)> {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    json["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn used(service: &Service, project: &str) -> String {
    service.get_json(&format!("/api/current_credits/{project}"))["current_credits_exact"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_line_of_10_mb_is_refused_by_number_and_the_rest_billed() {
    let (service, _d, _p) = start(&[]);
    let huge = format!(
        "project_vcpu_usage,location_id=8676,project_name={} value=1 {T0}\n",
        "x".repeat(10 << 20)
    );
    let body = line("p", "1", T0) + &huge + &line("p", "4", T0 + MINUTE);
    let (status, answer) = service.write(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let errors = errors(&answer);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 2);
    assert!(
        errors[0].1.contains("longer than the 65536 allowed"),
        "{errors:?}"
    );
    assert_eq!(used(&service, "p"), "3");
}

#[test]
fn invalid_utf8_in_a_tag_is_named_with_its_column() {
    let (service, _d, _p) = start(&[]);
    let mut body = line("p", "1", T0).into_bytes();
    body.extend_from_slice(
        b"project_vcpu_usage,location_id=8676,project_name=\xff\xfe value=2 1\n",
    );
    body.extend_from_slice(line("p", "3", T0 + MINUTE).as_bytes());
    let response = common::http()
        .post(service.at("/write"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let errors = errors(&response.text().unwrap());
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].1.contains("line 2, column 50") && errors[0].1.contains("UTF-8"),
        "{errors:?}"
    );
    assert_eq!(used(&service, "p"), "2");
}

#[test]
fn timestamps_far_in_the_future_or_before_1970_are_refused() {
    let (service, _d, _p) = start(&[]);
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let year = 365 * 24 * 60 * MINUTE;
    let body = [
        line("p", "1", now - MINUTE),
        line("p", "50", now + year),  // a year ahead: would stall the key
        line("p", "60", -5 * MINUTE), // 1969
        line("p", "2", now),
    ]
    .concat();
    let (status, answer) = service.write(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let errors = errors(&answer);
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        [2, 3],
        "{errors:?}"
    );
    assert!(errors[0].1.contains("in the future"), "{errors:?}");
    assert!(errors[1].1.contains("before 1970"), "{errors:?}");
    // The key was not stalled by the future point: the next real one bills.
    assert_eq!(used(&service, "p"), "1");
    // Beyond what nanoseconds can hold: out of range.
    let response = common::http()
        .post(service.at("/write?precision=s"))
        .body(line("p", "3", i64::MAX / 10))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().unwrap().contains("timestamp out of range"));
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib >> 10
}

#[test]
fn a_sender_making_up_100k_projects_is_refused_beyond_the_key_limit() {
    let (service, _d, _p) = start(&[("OS_CREDITS_MAX_KEYS", "20000")]);
    // A real project first.
    assert_eq!(
        service.write(&line("real", "1", T0)).0,
        StatusCode::NO_CONTENT
    );
    let mut refused = 0;
    for chunk in 0..10 {
        let body: String = (0..10_000)
            .map(|i| line(&format!("bogus_{}", chunk * 10_000 + i), "1", T0))
            .collect();
        let (status, answer) = service.write(&body);
        if status == StatusCode::BAD_REQUEST {
            let json: Value = serde_json::from_str(&answer).unwrap();
            assert!(
                json["lines"][0]["error"]
                    .as_str()
                    .unwrap()
                    .contains("limit of 20000 keys (OS_CREDITS_MAX_KEYS)")
            );
            refused += json["error"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
        } else {
            assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
        }
    }
    assert_eq!(refused, 100_000 - 19_999);
    let stats = service.stats();
    assert_eq!(stats["keys"], 20_000);
    assert_eq!(stats["points"]["ignored"]["too many keys"], refused);
    // The project known before goes on billing.
    assert_eq!(
        service.write(&line("real", "3", T0 + MINUTE)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(used(&service, "real"), "2");
    // Memory stays bounded: 100k made-up projects cost no more than the
    // 20k keys taken.
    let peak = peak_rss_mib(service.pid());
    assert!(peak < 256, "peak RSS {peak} MiB");
}

#[test]
fn a_100_mb_module_is_refused_unread_and_the_last_good_policy_stays() {
    let (service, _d, policies) = start(&[]);
    assert_eq!(service.write(&line("p", "1", T0)).0, StatusCode::NO_CONTENT);
    let file = std::fs::File::create(policies.path().join("huge.wasm")).unwrap();
    file.set_len(100 << 20).unwrap();
    std::fs::write(
        policies.path().join("policies.toml"),
        "[default]\nmodule = \"huge.wasm\"\n",
    )
    .unwrap();
    common::await_until("the refusal in /api/policies", || {
        service.get_json("/api/policies")["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    let errors = service.get_json("/api/policies")["errors"].to_string();
    assert!(
        errors.contains("100 MiB, more than the 64 MiB allowed"),
        "{errors}"
    );
    // Still priced by de.NBI.
    assert_eq!(
        service.write(&line("p", "6", T0 + MINUTE)).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(used(&service, "p"), "5");
}

#[test]
fn a_mapping_pointing_outside_the_folder_is_refused() {
    let folder = policy_dir(&[("policies.toml", "[default]\nmodule = \"../denbi.wasm\"\n")]);
    let data = tempfile::tempdir().unwrap();
    let stderr = common::serve_stops(data.path(), folder.path(), &[]);
    assert!(
        stderr.contains("module \"../denbi.wasm\" is not inside the policy folder"),
        "{stderr}"
    );
}
