//! The self-contained pages in a real browser: headless Chromium renders
//! the credits history chart and the API docs from the running service.
//!
//! Needs Debian's `chromium` (`make test` finds or installs it, see
//! `scripts/test-programs.sh`; `CHROMIUM` overrides the binary). Without it
//! these tests fail and say so: they never pass silently.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Service, policy_dir};

fn chromium() -> PathBuf {
    common::program(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        "chromium",
    )
}

/// The DOM of `url` after its scripts ran, as headless Chromium sees it.
fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn write(service: &Service, body: &str) {
    assert_eq!(service.write(body).0.as_u16(), 204);
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs Chromium: make test")]
fn the_history_page_charts_every_change_of_the_credits_in_a_browser() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[("API_KEY", "k")]);
    let hour = 3_600_000_000_000i64;
    let start = 1_714_600_000_000_000_000i64;
    let body: String = [0, 2, 5, 9, 14, 20]
        .iter()
        .enumerate()
        .map(|(i, value)| {
            format!(
                "project_vcpu_usage,location_id=8676,project_name=Chart\\ Lab value={value} {}\n",
                start + i as i64 * hour
            )
        })
        .collect();
    write(&service, &body);
    let history = service.get_json("/api/credits_history/Chart%20Lab");
    assert_eq!(history["timestamps"].as_array().unwrap().len() - 1, 5);
    // A correction: its own entry, with its reason.
    let sha256 = service.get_json("/api/policies")["schedule"][0]["sha256"].clone();
    let corrected = common::http()
        .post(service.at("/api/corrections"))
        .header("X-API-KEY", "k")
        .json(&serde_json::json!({
            "reason": "vCPU price fixed", "from": "2024-01-01", "to": "2025-01-01",
            "sha256": sha256, "config": {"cpu_price": "2"}, "dry_run": false,
        }))
        .send()
        .unwrap();
    assert_eq!(corrected.status().as_u16(), 200);
    let history = service.get_json("/api/credits_history/Chart%20Lab");
    let entries = history["timestamps"].as_array().unwrap().len() - 1;
    assert_eq!(entries, 6);

    let dom = rendered(&service.at("/credits_history/Chart%20Lab"));
    assert!(
        dom.contains(r#"data-state="ok""#),
        "the page did not load its data:\n{dom}"
    );
    assert!(dom.contains("Credits history of <span id=\"project\">Chart Lab</span>"));
    assert!(
        dom.contains(&format!(r#"data-points="{entries}""#)),
        "the chart does not hold every entry:\n{dom}"
    );
    assert!(dom.contains("<polyline"));
    assert_eq!(dom.matches("<circle").count(), entries);
    // The table, newest first, credits used (no granted credits known):
    // the correction (40.00 after it) on top.
    let rows: Vec<&str> = dom.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), entries);
    assert!(
        rows[0].contains("correction: vCPU price fixed"),
        "{}",
        rows[0]
    );
    assert!(
        rows[0].contains("40.00") || rows[0].contains(">40<"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains("20.00") || rows[1].contains(">20<"),
        "{}",
        rows[1]
    );
    assert_eq!(dom.matches(r#"class="dot correction""#).count(), 1);
    // A link to each month's statement, from the first entry's month on;
    // it answers the month's CSV.
    let link = "../api/statements?format=csv&amp;month=2024-05&amp;project=Chart%20Lab";
    assert!(dom.contains(link), "no statement link:\n{dom}");
    let csv = common::http()
        .get(service.at("/api/statements?format=csv&month=2024-05&project=Chart%20Lab"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(csv.starts_with("period_start,period_end,project,"), "{csv}");
    assert!(csv.contains("vCPU price fixed"), "{csv}");
    assert!(dom.contains("Credits used"));
    // Nothing loaded from elsewhere: every script is inline.
    assert!(!dom.contains("<script src"));

    let unknown = rendered(&service.at("/credits_history/nobody"));
    assert!(unknown.contains(r#"data-state="empty""#));
    assert!(unknown.contains("No credits were billed for this project yet."));
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs Chromium: make test")]
fn the_docs_page_lists_every_operation_of_the_openapi_document() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[]);
    let doc = service.get_json("/api/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    let dom = rendered(&service.at("/api/docs"));
    assert_eq!(dom.matches(r#"class="op""#).count(), operations, "{dom}");
    assert!(dom.contains("/api/credits_history/{project}"));
    assert!(dom.contains("needs X-API-KEY"));
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs Chromium: make test")]
fn the_history_page_draws_when_the_credits_run_out_in_a_browser() {
    let perun = common::fake_perun::FakePerun::start();
    perun.add_group(&serde_json::json!({
        "name": "Pace Lab", "id": 5151,
        "attributes": {"denbiCreditsGranted": "40"},
    }));
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let env: Vec<(String, String)> = perun
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let service = Service::start(data.path(), policies.path(), &env);
    let hour = 3_600_000_000_000i64;
    let start = 1_714_600_000_000_000_000i64;
    // 4 vCPU-hours an hour for 5 hours: 20 of 40 used, 5 hours left.
    let body: String = (0..6)
        .map(|i| {
            format!(
                "project_vcpu_usage,location_id=8676,project_name=Pace\\ Lab value={} {}\n",
                i * 4,
                start + i * hour
            )
        })
        .collect();
    write(&service, &body);
    common::await_until("granted credits read from Perun", || {
        !service.get_json("/api/current_credits/Pace%20Lab")["granted_credits"].is_null()
    });
    let forecast = service.get_json("/api/forecast/Pace%20Lab");
    assert_eq!(forecast["rate_per_hour"], "4");
    let runs_out = forecast["runs_out_at"].as_str().unwrap().to_owned();
    let latest = chrono::DateTime::from_timestamp_nanos(start + 5 * hour);
    assert_eq!(
        runs_out,
        (latest + chrono::Duration::hours(5)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );

    let dom = rendered(&service.at("/credits_history/Pace%20Lab"));
    assert!(dom.contains(r#"data-state="ok""#), "{dom}");
    assert!(
        dom.contains(&format!(r#"data-runs-out="{runs_out}""#)),
        "the chart names when the credits run out:\n{dom}"
    );
    let attribute = |element: &str, name: &str| -> f64 {
        let at = dom
            .find(&format!(r#"<line class="{element}""#))
            .unwrap_or_else(|| panic!("no {element} line:\n{dom}"));
        let rest = &dom[at..];
        let rest = &rest[rest.find(&format!(r#" {name}=""#)).unwrap() + name.len() + 3..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    };
    // The dashed forecast starts at the latest point and ends on the line
    // where the granted credits are used up, at the right edge (the
    // forecast is the chart's latest time).
    assert_eq!(attribute("forecast", "y2"), attribute("granted", "y1"));
    assert_eq!(attribute("forecast", "x2"), 780.0);
    assert!(attribute("forecast", "x1") < 780.0);
    assert!(dom.contains("Credits left of 40"));
}
