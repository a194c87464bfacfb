//! `os-credits policy check|run|test` as a policy author runs them: the
//! real binary on the example measurements.

mod common;

use common::os_credits;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::{repo_file, wasm};
use rust_decimal::Decimal;
use serde_json::Value;

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Replaces the module's sha256 (it depends on the compiler) by a placeholder.
fn mask_sha256(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let masked = match line.find("sha256 ") {
            Some(at) if line.len() >= at + 7 + 64 => {
                format!(
                    "{}sha256 <sha256 of the module>{}",
                    &line[..at],
                    &line[at + 7 + 64..]
                )
            }
            _ => line.to_owned(),
        };
        out.push_str(&masked);
        out.push('\n');
    }
    out
}

#[test]
fn policy_run_prints_the_documented_output() {
    let denbi = wasm("denbi-policy");
    let output = os_credits(&["policy", "run", path(&denbi), "examples/stack-sample.lp"]);
    let printed = mask_sha256(&stdout(&output));
    let documented = std::fs::read_to_string(repo_file("examples/stack-sample.denbi.txt")).unwrap();
    assert_eq!(printed, documented);
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    assert!(
        readme.contains(&documented),
        "README.md does not show examples/stack-sample.denbi.txt"
    );
}

#[test]
fn policy_run_json_matches_the_expected_credits_of_the_sample() {
    let denbi = wasm("denbi-policy");
    let output = os_credits(&[
        "policy",
        "run",
        path(&denbi),
        "examples/stack-sample.lp",
        "--format",
        "json",
    ]);
    let json: Value = serde_json::from_str(&stdout(&output)).expect("one JSON object");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap(),
    )
    .unwrap();
    let decimal = |v: &Value| -> Decimal { v.as_str().expect("decimal string").parse().unwrap() };

    assert_eq!(json["policy"]["name"], "denbi");
    assert_eq!(json["policy"]["sha256"].as_str().map(str::len), Some(64));
    let lines = json["lines"].as_u64().unwrap();
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    assert_eq!(
        lines,
        sample.lines().filter(|l| !l.trim().is_empty()).count() as u64
    );
    assert_eq!(
        json["ignored"].as_u64().unwrap() + json["billed"].as_u64().unwrap(),
        lines
    );
    let by_reason: u64 = json["ignored_by_reason"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_reason, json["ignored"].as_u64().unwrap());

    let projects: BTreeMap<String, Decimal> = json["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["project"].as_str().unwrap().to_owned(),
                decimal(&p["credits"]),
            )
        })
        .collect();
    let wanted: BTreeMap<String, Decimal> = expected["projects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), decimal(v)))
        .collect();
    assert_eq!(projects, wanted);
    assert_eq!(decimal(&json["total"]), decimal(&expected["total"]));

    // Per-key charges add up to the project totals.
    let mut summed: BTreeMap<String, Decimal> = BTreeMap::new();
    for charge in json["charges"].as_array().unwrap() {
        *summed
            .entry(charge["project"].as_str().unwrap().to_owned())
            .or_default() += decimal(&charge["credits"]);
        assert!(charge["location_id"].is_string() && charge["metric"].is_string());
    }
    assert_eq!(summed, wanted);
}

#[test]
fn policy_run_reports_bad_lines_with_their_numbers_and_bills_the_rest() {
    let denbi = wasm("denbi-policy");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.lp");
    std::fs::write(
        &file,
        "project_vcpu_usage,location_id=1,project_name=p value=1 1000000000\n\
         project_vcpu_usage,location_id=1,project_name=p value=oops 2000000000\n\
         # a comment\n\
         project_vcpu_usage,location_id=1,project_name=p value=4 3000000000\n",
    )
    .unwrap();
    let output = os_credits(&[
        "policy",
        "run",
        path(&denbi),
        path(&file),
        "--format",
        "json",
    ]);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["lines"], 3);
    assert_eq!(json["billed"], 1);
    assert_eq!(json["total"], "3");
    assert_eq!(json["errors"][0]["line"], 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn policy_check_describes_a_good_module_and_explains_a_bad_one() {
    let denbi = wasm("denbi-policy");
    let text = stdout(&os_credits(&["policy", "check", path(&denbi)]));
    assert!(text.contains("policy    denbi 1.0.0"), "{text}");
    assert!(text.contains("project_mb_usage    ram"), "{text}");
    assert!(text.contains("self-test passed"));

    let bad = os_credits(&["policy", "check", path(&wasm("contract-v1-policy"))]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("os-credits:pricing@1.0.0"), "{stderr}");
    assert!(stderr.contains("this host speaks @2.0.0"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("site.toml");
    std::fs::write(&config, "ram_price = \"TiB\"\n").unwrap();
    let refused = os_credits(&["policy", "check", path(&denbi), "--config", path(&config)]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused its configuration") && stderr.contains("TiB"),
        "{stderr}"
    );
}

#[test]
fn tariff_example_config_changes_prices_inside_the_sample_hour() {
    let tariff = wasm("tariff-policy");
    let run = |config: Option<&str>| {
        let mut args = vec![
            "policy",
            "run",
            path(&tariff),
            "examples/stack-sample.lp",
            "--format",
            "json",
        ];
        if let Some(config) = config {
            args.extend(["--config", config]);
        }
        let json: Value = serde_json::from_str(&stdout(&os_credits(&args))).unwrap();
        json["total"].as_str().unwrap().parse::<Decimal>().unwrap()
    };
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap(),
    )
    .unwrap();
    let denbi_total: Decimal = expected["total"].as_str().unwrap().parse().unwrap();
    // Without configuration the template charges the de.NBI prices.
    assert_eq!(run(None), denbi_total);
    // Prices doubled from a date before the sample: exactly twice the credits.
    let dir = tempfile::tempdir().unwrap();
    let doubled = dir.path().join("doubled.toml");
    std::fs::write(
        &doubled,
        "[[periods]]\nfrom = \"2020-01-01T00:00:00Z\"\nprices = { cpu = \"1\", ram = \"0.3\" }\n\
         [[periods]]\nfrom = \"2024-05-01T00:00:00Z\"\nprices = { cpu = \"2\", ram = \"0.6\" }\n",
    )
    .unwrap();
    assert_eq!(run(Some(path(&doubled))), denbi_total * Decimal::from(2));
    // With the example configuration the prices change inside the sample hour.
    assert_ne!(run(Some("examples/tariff.toml")), denbi_total);
}

#[test]
fn default_env_lists_every_variable_serve_reads() {
    let help = stdout(&os_credits(&["serve", "--help"]));
    let documented = std::fs::read_to_string(repo_file(".default.env")).unwrap();
    let mut checked = 0;
    for name in help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
    {
        assert!(
            documented
                .lines()
                .any(|l| l.starts_with(&format!("{name}="))),
            "{name} is missing from .default.env"
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} variables found in serve --help"
    );
}

#[test]
fn the_service_starts_with_default_env_as_it_is() {
    // Every variable as documented (empty ones included), but a free port
    // and temporary folders.
    let documented = std::fs::read_to_string(repo_file(".default.env")).unwrap();
    let env: Vec<(&str, &str)> = documented
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| {
            ![
                "CREDITS_PORT",
                "OS_CREDITS_DATA_DIR",
                "OS_CREDITS_POLICY_DIR",
            ]
            .contains(name)
        })
        .collect();
    assert!(env.len() > 20);
    let (data, policies) = (tempfile::tempdir().unwrap(), common::policy_dir(&[]));
    let service = common::Service::start(data.path(), policies.path(), &env);
    let pong = common::http()
        .get(service.at("/ping"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(pong, "Pong");
    assert_eq!(service.stats()["mail"]["enabled"], false);
}

#[test]
fn ping_says_whether_a_service_answers() {
    let (data, policies) = (tempfile::tempdir().unwrap(), common::policy_dir(&[]));
    let service = common::Service::start(data.path(), policies.path(), &[]);
    let port = service.url.rsplit(':').next().unwrap();
    let alive = os_credits(&["ping", "--port", port]);
    assert!(alive.status.success());
    assert_eq!(stdout(&alive).trim(), "Pong");
    drop(service);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().port().to_string();
    drop(listener);
    let dead = os_credits(&["ping", "--port", &closed, "--timeout", "2"]);
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("no answer from"));
}

/// `examples/stack-sample.expected.json` is what an independent derivation
/// gives (`scripts/expected-credits.py`: its own line-protocol reader, the
/// billing rules written again, Python's exact decimals), byte for byte.
#[test]
fn the_expected_credits_of_the_sample_are_derived_independently() {
    let output = std::process::Command::new("python3")
        .arg(repo_file("scripts/expected-credits.py"))
        .arg(repo_file("examples/stack-sample.lp"))
        .output()
        .expect("python3 runs (it is on every machine this project builds on)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected =
        std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
}

/// `policy test`: equal credits exit 0; other prices exit 1 with a table of
/// the differences (each project and the total, exact); a missing or
/// malformed expected file exits 2; `--update` writes what the policy
/// bills, in the expected file's format (here: the file itself, byte for
/// byte).
#[test]
fn policy_test_compares_with_the_expected_credits_and_updates_them() {
    let module = wasm("denbi-policy");
    let sample = repo_file("examples/stack-sample.lp");
    let expected = repo_file("examples/stack-sample.expected.json");
    let test = |expect: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "test",
            path(&module),
            path(&sample),
            "--expect",
            path(expect),
        ];
        args.extend_from_slice(extra);
        os_credits(&args)
    };
    let same = test(&expected, &[]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    assert!(String::from_utf8_lossy(&same.stdout).starts_with("ok: 6 projects"));

    // The price of a vCPU-hour doubled: every project differs by its
    // vCPU-hours, exactly.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prices.toml");
    std::fs::write(&config, "cpu_price = \"2\"\n").unwrap();
    let changed = test(&expected, &["--config", path(&config)]);
    assert_eq!(changed.status.code(), Some(1));
    let table = String::from_utf8_lossy(&changed.stdout).into_owned();
    assert!(
        table.contains("FAILED: 7 of the expected credits differ"),
        "{table}"
    );
    assert!(
        table.contains(
            "os_credits_0             167.8000000000000     258.8000000000000      91.0000000000000"
        ),
        "{table}"
    );
    assert!(
        table.lines().last().unwrap().starts_with("TOTAL"),
        "{table}"
    );

    // Nothing to compare with, or not an expected file: an error, exit 2.
    let missing = test(&dir.path().join("missing.json"), &[]);
    assert_eq!(missing.status.code(), Some(2));
    let malformed = dir.path().join("malformed.json");
    std::fs::write(
        &malformed,
        "{\"projects\": {\"a\": \"one\"}, \"total\": \"1\"}",
    )
    .unwrap();
    let bad = test(&malformed, &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("the expected credits of a (\"one\")"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // --update writes what is billed; it then passes.
    let written = dir.path().join("expected.json");
    let update = test(&written, &["--update"]);
    assert_eq!(update.status.code(), Some(0), "{}", stdout(&update));
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        std::fs::read_to_string(&expected).unwrap()
    );
    assert_eq!(test(&written, &[]).status.code(), Some(0));
}

#[test]
fn policy_run_and_test_take_a_mapping_with_its_schedule() {
    // A change inside the sample (01:00 UTC): the steps before, after and
    // across it, priced by the script independently.
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::wasm("denbi-policy"),
        folder.path().join("denbi.wasm"),
    )
    .unwrap();
    let mapping = folder.path().join("policies.toml");
    std::fs::write(
        &mapping,
        "[default]\nmodule = \"denbi.wasm\"\n\n[[changes]]\nfrom = \"2024-05-02T01:00:00+00:00\"\nsite = \"default\"\nmodule = \"denbi.wasm\"\nconfig = { cpu_price = \"2\", ram_price = \"0.6\" }\n",
    )
    .unwrap();
    let noon: i64 = 1_714_611_600_000_000_000;
    let script = Command::new("python3")
        .arg(repo_file("scripts/expected-credits.py"))
        .arg(repo_file("examples/stack-sample.lp"))
        .args(["--change", &noon.to_string(), "2", "0.6"])
        .output()
        .expect("python3 runs");
    let want: serde_json::Value = serde_json::from_str(&stdout(&script)).unwrap();
    let run = os_credits(&[
        "policy",
        "run",
        "--mapping",
        path(&mapping),
        "examples/stack-sample.lp",
        "--format",
        "json",
    ]);
    let got: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    // The split points' values are interpolated with 28 significant digits
    // (the script computes with 60).
    let total = |v: &serde_json::Value| -> rust_decimal::Decimal {
        let text = v["total"].as_str().unwrap();
        text[..text.len().min(28)].parse().unwrap()
    };
    assert!(
        (total(&got) - total(&want)).abs() < rust_decimal::Decimal::new(1, 15),
        "the schedule prices the sample: {} against {}",
        got["total"],
        want["total"]
    );
    let old: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap(),
    )
    .unwrap();
    assert_ne!(got["total"], old["total"], "the change moved the total");
    let table = stdout(&os_credits(&[
        "policy",
        "run",
        "--mapping",
        path(&mapping),
        "examples/stack-sample.lp",
    ]));
    assert!(
        table.contains("schedule  site default from 2024-05-02T01:00:00Z: denbi.wasm"),
        "{table}"
    );
    // `policy test --mapping`: what it bills, kept with --update, passes;
    // the sample's credits without the change differ.
    let expected = folder.path().join("expected.json");
    let test = |expect: &str, update: bool| {
        let mut args = vec![
            "policy",
            "test",
            "--mapping",
            path(&mapping),
            "examples/stack-sample.lp",
            "--expect",
            expect,
        ];
        if update {
            args.push("--update");
        }
        os_credits(&args).status.code()
    };
    assert_eq!(test(path(&expected), true), Some(0));
    assert_eq!(test(path(&expected), false), Some(0));
    assert_eq!(test("examples/stack-sample.expected.json", false), Some(1));
    let refused = os_credits(&["policy", "run", path(&mapping), "examples/stack-sample.lp"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("give --mapping"));
}
