//! The stack-shaped sample (`examples/stack-sample.lp`): its lines, its
//! projects, the service's exact credits for them, and the independent
//! calculation (`scripts/expected-credits.py`).

use std::collections::BTreeMap;
use std::process::Command;

use rust_decimal::Decimal;

use super::{Service, repo_file};

/// The stack-shaped sample.
pub const SAMPLE: &str = "examples/stack-sample.lp";

/// The sample's text.
pub fn sample() -> String {
    std::fs::read_to_string(repo_file(SAMPLE)).expect("the sample")
}

/// The project of a sample line (its `project_name` tag, escaped).
pub fn project_of(line: &str) -> &str {
    line.split(",project_name=")
        .nth(1)
        .map(|rest| {
            let mut end = rest.len();
            let bytes = rest.as_bytes();
            for (i, &b) in bytes.iter().enumerate() {
                if (b == b',' || b == b' ') && (i == 0 || bytes[i - 1] != b'\\') {
                    end = i;
                    break;
                }
            }
            &rest[..end]
        })
        .unwrap_or_default()
}

/// The timestamp of a sample line.
pub fn timestamp_of(line: &str) -> i64 {
    line.rsplit(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_default()
}

/// Exact credits per project, from the service.
pub fn credits(service: &Service, projects: &[String]) -> BTreeMap<String, Decimal> {
    credits_at(&service.url, projects)
}

/// Exact credits per project (escaped as in the lines), from the service
/// at `base` (`http://HOST:PORT`).
pub fn credits_at(base: &str, projects: &[String]) -> BTreeMap<String, Decimal> {
    projects
        .iter()
        .map(|project| {
            let name = project.replace("\\ ", " ");
            let exact = credits_of(base, &name);
            (name, exact)
        })
        .collect()
}

/// Exact credits of one project (its plain name), from the service at
/// `base`; zero for a project without charges.
pub fn credits_of(base: &str, project: &str) -> Decimal {
    let mut url = reqwest::Url::parse(&format!("{base}/api/current_credits/")).unwrap();
    url.path_segments_mut().unwrap().pop().push(project);
    let answer = super::get_json(url.as_str());
    answer["current_credits_exact"]
        .as_str()
        .map(|t| t.parse().unwrap())
        .unwrap_or_default()
}

/// The independent calculation (scripts/expected-credits.py).
pub fn expected(change: Option<(i64, &str, &str)>) -> BTreeMap<String, Decimal> {
    let mut command = Command::new("python3");
    command
        .arg(repo_file("scripts/expected-credits.py"))
        .arg(repo_file(SAMPLE));
    if let Some((at, cpu, ram)) = change {
        command.args(["--change", &at.to_string(), cpu, ram]);
    }
    let output = command.output().expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    document["projects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
        .collect()
}

/// Unix ns as RFC 3339 (UTC, ns).
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Posts `lines` in chunks of 500; each must be answered 204.
pub fn post(service: &Service, lines: &[&str]) {
    for chunk in lines.chunks(500) {
        let (status, body) = service.write(&(chunk.join("\n") + "\n"));
        assert_eq!(status.as_u16(), 204, "{body}");
    }
}

/// Every project of the sample (escaped as in the lines).
pub fn projects(lines: &[&str]) -> Vec<String> {
    let mut projects: Vec<String> = lines
        .iter()
        .map(|l| project_of(l).to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    projects.sort();
    projects.dedup();
    projects
}
