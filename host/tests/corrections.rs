//! Corrections and statements end to end, on the stack sample: a
//! correction previewed equals the independent calculation of the changed
//! price; applied, current credits equal it; applied again, nothing
//! changes; statements add up to current credits for every project, before
//! and after, over any split of time; a kill during an apply leaves the
//! whole correction or none of it. Runs on SQLite, and on PostgreSQL with
//! `OS_CREDITS_TEST_STORE=postgres` (`make test` runs both).

mod common;

use std::collections::BTreeMap;

use common::sample::{credits, expected, post, projects, rfc3339, sample, timestamp_of};
use common::{Service, http, policy_dir};
use rust_decimal::Decimal;

const KEY: &str = "corr3ct-k3y";
/// After all of the sample's usage (2024).
const END: &str = "2100-01-01T00:00:00Z";
const BEGINNING: &str = "2000-01-01T00:00:00Z";

/// The URL of the statements with `query`.
fn statements_url(service: &Service, query: &[(&str, &str)]) -> reqwest::Url {
    reqwest::Url::parse_with_params(&service.at("/api/statements"), query).unwrap()
}

/// POSTs a correction; the status and the JSON answer (or the error text).
fn correct(service: &Service, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = http()
        .post(service.at("/api/corrections"))
        .header("X-API-KEY", KEY)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("{e}: the service said:\n{}", service.log()));
    let status = response.status().as_u16();
    (status, response.json().unwrap_or_default())
}

/// A statement (JSON) of `[from, to)`.
fn statement(service: &Service, from: &str, to: &str) -> serde_json::Value {
    let response = http()
        .get(statements_url(
            service,
            &[("from", from), ("to", to), ("format", "json")],
        ))
        .header("X-API-KEY", KEY)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().unwrap()
}

/// Per project, the sum of a statement's lines.
fn sums(statement: &serde_json::Value) -> BTreeMap<String, Decimal> {
    let mut sums = BTreeMap::new();
    for line in statement["lines"].as_array().unwrap() {
        let credits: Decimal = line["credits"].as_str().unwrap().parse().unwrap();
        *sums
            .entry(line["project"].as_str().unwrap().to_owned())
            .or_insert(Decimal::ZERO) += credits;
    }
    sums
}

fn decimal(value: &serde_json::Value) -> Decimal {
    value.as_str().unwrap().parse().unwrap()
}

/// Two statements in CSV hold the same lines, to the last digit (one may
/// read days where the other read charges; numbers compared as decimals,
/// `1.50` = `1.5`).
fn same_csv(a: &str, b: &str) {
    let rows = |text: &str| -> Vec<csv::StringRecord> {
        csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(Result::unwrap)
            .collect()
    };
    let (a, b) = (rows(a), rows(b));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for column in 0..x.len() {
            if column == 6 || column == 7 {
                let number = |t: &str| t.parse::<Decimal>().unwrap_or_default();
                assert_eq!(number(&x[column]), number(&y[column]), "{x:?} {y:?}");
            } else {
                assert_eq!(x[column], y[column]);
            }
        }
    }
}

/// Statements of all time, and of `[BEGINNING, at)` plus `[at, END)`, each
/// sum to the current credits of every project.
fn statements_add_up(service: &Service, now: &BTreeMap<String, Decimal>, at: i64) {
    let all = sums(&statement(service, BEGINNING, END));
    let (before, after) = (
        sums(&statement(service, BEGINNING, &rfc3339(at))),
        sums(&statement(service, &rfc3339(at), END)),
    );
    for (project, credits) in now {
        let whole = all.get(project).copied().unwrap_or_default();
        assert_eq!(
            whole, *credits,
            "{project}: all time {whole} = current credits {credits}"
        );
        let split = before.get(project).copied().unwrap_or_default()
            + after.get(project).copied().unwrap_or_default();
        assert_eq!(split, whole, "{project}: two periods = the whole");
    }
    assert!(all.keys().all(|p| now.contains_key(p)), "no other project");
}

/// The sample billed by a service with the admin key; its lines and the
/// instant between two scrapes in its middle.
fn billed(data: &std::path::Path, folder: &std::path::Path) -> (Service, Vec<String>, i64) {
    let service = Service::start(data, folder, &[("API_KEY", KEY)]);
    let text = sample();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    post(&service, &lines);
    let mut times: Vec<i64> = lines.iter().map(|l| timestamp_of(l)).collect();
    times.sort_unstable();
    times.dedup();
    let middle = times.len() / 2;
    let at = times[middle - 1] + (times[middle] - times[middle - 1]) / 3;
    (service, projects(&lines), at)
}

fn request(at: i64, reason: &str, dry_run: bool) -> serde_json::Value {
    serde_json::json!({
        "reason": reason,
        "from": rfc3339(at),
        "to": END,
        "module": "denbi.wasm",
        "config": {"cpu_price": "2", "ram_price": "0.6"},
        "dry_run": dry_run,
    })
}

#[test]
fn a_correction_is_previewed_applied_once_and_explained_by_statements() {
    let data = tempfile::tempdir().unwrap();
    let folder = policy_dir(&[]);
    let (service, projects, at) = billed(data.path(), folder.path());
    let old = credits(&service, &projects);
    let want = expected(Some((at, "2", "0.6")));
    assert!(
        want.iter().any(|(p, c)| old[p] != *c),
        "the changed price moves some credits"
    );
    statements_add_up(&service, &old, at);

    // The preview: per project what it would book, nothing booked.
    let (status, preview) = correct(
        &service,
        &request(at, "RAM price from the 1st of May", true),
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["applied"], false);
    let id = preview["id"].as_str().unwrap().to_owned();
    let mut total = Decimal::ZERO;
    for row in preview["projects"].as_array().unwrap() {
        let project = row["project"].as_str().unwrap();
        let (before, after, difference) = (
            decimal(&row["before"]),
            decimal(&row["after"]),
            decimal(&row["difference"]),
        );
        assert_eq!(after - before, difference, "{project}");
        total += difference;
        // The split point's value is interpolated with 28 significant
        // digits (Python computes with 60).
        let off = (old[project] + difference - want[project]).abs();
        assert!(
            off < Decimal::new(1, 15),
            "{project}: preview against the independent calculation: {off}"
        );
    }
    assert_eq!(decimal(&preview["total_difference"]), total);
    assert_eq!(credits(&service, &projects), old, "a preview books nothing");

    // Applied: current credits move by exactly the differences.
    let (status, applied) = correct(
        &service,
        &request(at, "RAM price from the 1st of May", false),
    );
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["applied"], true);
    assert_eq!(applied["id"], id.as_str(), "the same request, the same id");
    assert_eq!(applied["projects"], preview["projects"], "as previewed");
    let now = credits(&service, &projects);
    for row in applied["projects"].as_array().unwrap() {
        let project = row["project"].as_str().unwrap();
        assert_eq!(
            now[project],
            old[project] + decimal(&row["difference"]),
            "{project}"
        );
    }
    // Applied again: the same answer, nothing booked.
    let (status, again) = correct(
        &service,
        &request(at, "RAM price from the 1st of May", false),
    );
    assert_eq!(status, 200);
    assert_eq!(again, applied, "the booked answer, repeated");
    assert_eq!(credits(&service, &projects), now);
    // Previewed again, it changes nothing more.
    let (_, repeat) = correct(
        &service,
        &request(at, "RAM price from the 1st of May", true),
    );
    assert_eq!(
        decimal(&repeat["total_difference"]),
        Decimal::ZERO,
        "{repeat}"
    );

    // Listed once, with its reason.
    let list = http()
        .get(service.at("/api/corrections"))
        .header("X-API-KEY", KEY)
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap();
    let listed = list["corrections"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["reason"], "RAM price from the 1st of May");

    // Statements explain the corrected credits, exactly, over any split;
    // the correction's lines fall in the periods of the usage it re-priced.
    statements_add_up(&service, &now, at);
    let before = statement(&service, BEGINNING, &rfc3339(at));
    assert!(
        before["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["correction_id"].is_null()),
        "no correction before its from"
    );
    let after = statement(&service, &rfc3339(at), END);
    let corrected: Vec<&serde_json::Value> = after["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["correction_id"] == id.as_str())
        .collect();
    assert!(!corrected.is_empty());
    assert!(
        corrected
            .iter()
            .all(|l| l["reason"] == "RAM price from the 1st of May")
    );

    // The CSV: RFC 4180, the header, a line per JSON line.
    let response = http()
        .get(statements_url(
            &service,
            &[("from", BEGINNING), ("to", END), ("format", "csv")],
        ))
        .header("X-API-KEY", KEY)
        .send()
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let text = response.text().unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader
            .headers()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
            .join(","),
        "period_start,period_end,project,site,metric,unit,quantity,credits,policy,policy_version,policy_sha256,correction_id,reason"
    );
    let mut csv_sums: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut rows = 0;
    for record in reader.records() {
        let record = record.unwrap();
        rows += 1;
        *csv_sums.entry(record[2].to_owned()).or_default() += record[7].parse::<Decimal>().unwrap();
        if record[11].is_empty() {
            assert!(
                !record[5].is_empty(),
                "a usage line names its unit: {record:?}"
            );
        }
    }
    let all = statement(&service, BEGINNING, END);
    assert_eq!(rows, all["lines"].as_array().unwrap().len());
    let json_sums = sums(&all);
    for (project, credits) in &csv_sums {
        assert_eq!(json_sums[project], *credits, "{project}");
    }

    // One project's statement is as public as its history.
    let project = now.iter().find(|(_, c)| !c.is_zero()).unwrap().0;
    let one = http()
        .get(statements_url(
            &service,
            &[
                ("from", BEGINNING),
                ("to", END),
                ("format", "json"),
                ("project", project),
            ],
        ))
        .send()
        .unwrap();
    assert_eq!(one.status().as_u16(), 200);
    let one: serde_json::Value = one.json().unwrap();
    assert_eq!(sums(&one)[project.as_str()], now[project.as_str()]);

    // The history shows the correction as its own point, with its reason.
    let mut url = reqwest::Url::parse(&service.at("/api/credits_history/")).unwrap();
    url.path_segments_mut().unwrap().pop().push(project);
    let history = common::get_json(url.as_str());
    let reasons = history["reasons"].as_array().expect("a reasons list");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "RAM price from the 1st of May")
            .count(),
        1,
        "{history}"
    );

    // The CLI asks the running service the same.
    let cli = |args: &[&str]| -> String {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_os-credits"))
            .args(args)
            .args(["--url", &service.url, "--api-key", KEY])
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let listed: serde_json::Value = serde_json::from_str(&cli(&["correction", "list"])).unwrap();
    assert_eq!(listed["corrections"].as_array().unwrap().len(), 1);
    same_csv(
        &cli(&["statement", "--from", BEGINNING, "--to", END]),
        &text,
    );
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "cpu_price = \"1\"\nram_price = \"0.3\"\n").unwrap();
    let previewed: serde_json::Value = serde_json::from_str(&cli(&[
        "correction",
        "preview",
        "--reason",
        "back to the old prices",
        "--from",
        &rfc3339(at),
        "--to",
        END,
        "--module",
        "denbi.wasm",
        "--config",
        config.path().to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(previewed["applied"], false);

    // A correction overlapping none being applied, but another module's
    // prices over the same usage: re-priced from the corrected state.
    let mut back = request(at, "back to the old prices", false);
    back["config"] = serde_json::json!({"cpu_price": "1", "ram_price": "0.3"});
    let (status, reverted) = correct(&service, &back);
    assert_eq!(status, 200, "{reverted}");
    assert_eq!(
        reverted["id"], previewed["id"],
        "the CLI's request is the API's"
    );
    assert_eq!(
        reverted["projects"], previewed["projects"],
        "as the CLI previewed"
    );
    let restored = credits(&service, &projects);
    for (project, credits) in &old {
        let off = (restored[project] - credits).abs();
        assert!(
            off < Decimal::new(1, 15),
            "{project}: back to the billed credits: {off}"
        );
    }
    statements_add_up(&service, &restored, at);
}

#[test]
fn bad_corrections_are_refused_with_what_is_wrong() {
    let data = tempfile::tempdir().unwrap();
    let folder = policy_dir(&[]);
    let service = Service::start(data.path(), folder.path(), &[("API_KEY", KEY)]);
    let cases = [
        (
            serde_json::json!({"reason": "", "from": BEGINNING, "to": END, "module": "denbi.wasm"}),
            400,
            "reason is empty",
        ),
        (
            serde_json::json!({"reason": "x", "from": END, "to": BEGINNING, "module": "denbi.wasm"}),
            400,
            "must be before",
        ),
        (
            serde_json::json!({"reason": "x", "from": "yesterday", "to": END, "module": "denbi.wasm"}),
            400,
            "not an RFC 3339",
        ),
        (
            serde_json::json!({"reason": "x", "from": BEGINNING, "to": END}),
            400,
            "give the module",
        ),
        (
            serde_json::json!({"reason": "x", "from": BEGINNING, "to": END, "module": "../denbi.wasm"}),
            400,
            "not the name of a .wasm file",
        ),
        (
            serde_json::json!({"reason": "x", "from": BEGINNING, "to": END, "module": "nope.wasm"}),
            404,
            "cannot read nope.wasm",
        ),
        (
            serde_json::json!({"reason": "x", "from": BEGINNING, "to": END, "sha256": "00"}),
            404,
            "knows no module",
        ),
        (
            serde_json::json!({"reason": "x", "from": BEGINNING, "to": END, "module": "denbi.wasm", "typo": 1}),
            400,
            "unknown field",
        ),
        // The name of policies.toml's default entry is not a location.
        (
            serde_json::json!({"reason": "x", "from": BEGINNING, "to": END, "module": "denbi.wasm", "site": "default"}),
            400,
            "names the default entry of policies.toml, not a location",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer) = correct(&service, &body);
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(message),
            "{body}: {answer}"
        );
    }
    let (status, _) = {
        let response = http()
            .get(service.at("/api/statements?month=2026-13"))
            .header("X-API-KEY", KEY)
            .send()
            .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 400);
}

#[test]
fn a_kill_during_an_apply_leaves_the_whole_correction_or_none_of_it() {
    let data = tempfile::tempdir().unwrap();
    let folder = policy_dir(&[]);
    let (mut service, projects, at) = billed(data.path(), folder.path());
    let (mut rng, seed) = common::seeded("corrections kill");
    // How long an apply takes here, from a preview.
    let started = std::time::Instant::now();
    let (status, _) = correct(&service, &request(at, "timing", true));
    assert_eq!(status, 200);
    let took = started.elapsed();
    let mut mid_work = 0;
    eprintln!("an apply takes about {took:?}");
    let mut attempts = 0;
    // Until three kills landed mid-work (at most 40 tries).
    for attempt in 0..40 {
        if mid_work == 3 {
            break;
        }
        attempts += 1;
        let before = credits(&service, &projects);
        let reason = format!("attempt {attempt} (seed {seed})");
        let body = request(at - attempt * 1_000_000_000, &reason, false);
        let url = service.at("/api/corrections");
        let sender = std::thread::spawn(move || {
            http()
                .post(url)
                .header("X-API-KEY", KEY)
                .json(&body)
                .send()
                .map(|r| r.status().as_u16())
        });
        // Kill after a random share of the time an apply takes; it landed
        // mid-work when the service had said it was applying and never answered.
        std::thread::sleep(took.mul_f64(0.3 + rng.f64() * 0.8));
        service.kill9();
        let answered = matches!(sender.join().unwrap(), Ok(200));
        let log_mark = format!("reason={reason}");
        std::thread::sleep(std::time::Duration::from_millis(100)); // the log's last lines
        if !answered && service.log().contains(&log_mark) {
            mid_work += 1;
        }
        drop(service);
        service = Service::start(data.path(), folder.path(), &[("API_KEY", KEY)]);
        let list = http()
            .get(service.at("/api/corrections"))
            .header("X-API-KEY", KEY)
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap();
        let booked = list["corrections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["reason"] == reason.as_str())
            .cloned();
        assert!(
            !answered || booked.is_some(),
            "seed {seed}: answered 200, so booked"
        );
        let after = credits(&service, &projects);
        let moved: Decimal = after.iter().map(|(p, c)| *c - before[p]).sum();
        match booked {
            Some(correction) => {
                let total = decimal(&correction["total_difference"]);
                assert_eq!(moved, total, "seed {seed}: the whole correction");
            }
            None => assert_eq!(after, before, "seed {seed}: none of it"),
        }
        statements_add_up(&service, &after, at);
    }
    eprintln!("{mid_work} of {attempts} kills landed while an apply was under way");
    assert!(
        mid_work == 3,
        "seed {seed}: three kills landed while an apply was under way"
    );
}
