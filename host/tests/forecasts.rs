//! Forecasts and alerts end to end: the real service, the fake Perun
//! (granted credits, end dates), a real SMTP receiver and a real webhook
//! receiver over TCP, and kills.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::fake_perun::FakePerun;
use common::sample::{post, projects, sample};
use common::smtp::SmtpSink;
use common::webhook::Receiver;
use common::{Service, await_until, http, policy_dir, repo_file};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const END_ATTRIBUTE: &str = "urn:perun:group:attribute-def:opt:denbiProjectEndDate";
const HOUR: i64 = 3_600_000_000_000;

fn owned(env: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn start(data: &std::path::Path, folder: &std::path::Path, env: &[(String, String)]) -> Service {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::start(data, folder, &env)
}

/// The sample's charged steps per project, from the independent
/// calculation (scripts/expected-credits.py --steps).
fn steps() -> BTreeMap<String, Vec<(i64, i64, Decimal)>> {
    let output = Command::new("python3")
        .arg(repo_file("scripts/expected-credits.py"))
        .arg("--steps")
        .arg(repo_file(common::sample::SAMPLE))
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let document: BTreeMap<String, Vec<(i64, i64, String)>> =
        serde_json::from_slice(&output.stdout).unwrap();
    document
        .into_iter()
        .map(|(project, steps)| {
            let steps = steps
                .into_iter()
                .map(|(t0, t1, credits)| (t0, t1, credits.parse().unwrap()))
                .collect();
            (project, steps)
        })
        .collect()
}

/// The forecast's rule, written out again: the credits of usage in the
/// window ending at the latest step (each step's part in it by time), per
/// hour of the window the project has measurements for; when they run out.
fn independent(
    steps: &[(i64, i64, Decimal)],
    used: Decimal,
    granted: Option<Decimal>,
    window: i64,
) -> (Decimal, i64, Option<i64>) {
    let latest = steps.iter().map(|s| s.1).max().unwrap();
    let first = steps.iter().map(|s| s.0).min().unwrap();
    let start = latest - window;
    let mut credits = Decimal::ZERO;
    for &(t0, t1, amount) in steps {
        let (a, b) = (t0.max(start), t1.min(latest));
        if b > a {
            credits += amount * Decimal::from(b - a) / Decimal::from(t1 - t0);
        }
    }
    let measured = latest - first.max(start);
    let rate = credits * Decimal::from(HOUR) / Decimal::from(measured);
    let runs_out = granted.filter(|_| !credits.is_zero()).map(|granted| {
        let ns = (granted - used) * Decimal::from(measured) / credits;
        let ns: i64 = ns.floor().try_into().unwrap();
        (latest + ns).div_euclid(1_000_000_000)
    });
    (rate, latest, runs_out)
}

fn seconds(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().unwrap())
        .unwrap()
        .timestamp()
}

#[test]
fn the_forecast_of_every_project_of_the_stack_sample_equals_an_independent_calculation() {
    let perun = FakePerun::start();
    // Granted credits from Perun: plenty, a little, used up, none; end
    // dates after and before the credits run out.
    let groups = [
        ("Cryoem Structural Lab 1", "500", Some("2024-05-02")),
        ("denbi-annotation-005", "60", None),
        ("nextflow_structural.3", "1000", Some("02.05.2024")),
        ("os_credits_0", "10000", Some("2030-01-01")),
        ("os_credits_4", "300", None),
    ];
    for (i, (name, granted, end)) in groups.iter().enumerate() {
        let mut attributes = json!({"denbiCreditsGranted": granted});
        if let Some(end) = end {
            attributes["denbiProjectEndDate"] = json!(end);
        }
        perun.add_group(&json!({"name": name, "id": 7000 + i, "attributes": attributes}));
    }
    let mut env = owned(perun.env());
    env.push((
        "OS_CREDITS_PERUN_END_ATTRIBUTE".into(),
        END_ATTRIBUTE.into(),
    ));
    let (data, folder) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = start(data.path(), folder.path(), &env);
    let text = sample();
    let lines: Vec<&str> = text.lines().collect();
    post(&service, &lines);
    let names: Vec<String> = projects(&lines)
        .iter()
        .map(|p| p.replace("\\ ", " "))
        .collect();
    let url = |project: &str, query: &str| {
        let mut url = reqwest::Url::parse(&service.at("/api/forecast/")).unwrap();
        url.path_segments_mut().unwrap().pop().push(project);
        url.set_query(Some(query).filter(|q| !q.is_empty()));
        url
    };
    let forecast = |project: &str, query: &str| -> Value {
        http()
            .get(url(project, query))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    await_until("granted credits of every group", || {
        groups
            .iter()
            .all(|(name, _, _)| !forecast(name, "")["granted"].is_null())
    });
    let used = common::sample::expected(None);
    let steps = steps();
    let metrics = service.get("/metrics").1;
    let mut with_forecast = 0;
    for hours in [24u32, 1, 2160] {
        for name in &names {
            let forecast: Value = forecast(name, &format!("window_hours={hours}"));
            let granted: Option<Decimal> = groups
                .iter()
                .find(|g| g.0 == name)
                .map(|g| g.1.parse().unwrap());
            let (rate, latest, runs_out) =
                independent(&steps[name], used[name], granted, i64::from(hours) * HOUR);
            assert_eq!(forecast["project"], name.as_str());
            assert_eq!(forecast["window_hours"], hours);
            assert_eq!(
                forecast["used"]
                    .as_str()
                    .unwrap()
                    .parse::<Decimal>()
                    .unwrap(),
                used[name]
            );
            assert_eq!(
                forecast["granted"]
                    .as_str()
                    .map(|g| g.parse::<Decimal>().unwrap()),
                granted
            );
            let got: Decimal = forecast["rate_per_hour"].as_str().unwrap().parse().unwrap();
            assert_eq!(got, rate, "{name}: rate");
            assert_eq!(
                seconds(&forecast["latest_measurement"]),
                latest.div_euclid(1_000_000_000)
            );
            match runs_out {
                Some(at) => {
                    let got = seconds(&forecast["runs_out_at"]);
                    assert_eq!(got, at, "{name}: runs out");
                    if hours == 24 {
                        with_forecast += 1;
                        let line = format!(
                            "os_credits_runout_timestamp_seconds{{project=\"{name}\"}} {got}"
                        );
                        assert!(metrics.contains(&line), "{line} in\n{metrics}");
                    }
                }
                None => assert!(forecast["runs_out_at"].is_null(), "{name}: {forecast}"),
            }
            let exhausted = granted.is_some_and(|g| used[name] >= g);
            assert_eq!(forecast["exhausted"], exhausted, "{name}");
            let end = groups.iter().find(|g| g.0 == name).and_then(|g| g.2);
            match end {
                None => {
                    assert!(forecast["ends_at"].is_null());
                    assert!(forecast["lasts_until_end"].is_null());
                }
                Some(_) => {
                    let ends = seconds(&forecast["ends_at"]);
                    let lasts = runs_out.is_none_or(|at| at >= ends);
                    assert_eq!(forecast["lasts_until_end"], lasts, "{name}: {forecast}");
                }
            }
        }
    }
    assert_eq!(
        with_forecast, 5,
        "every project with granted credits has one"
    );
    // Both date forms name the day after the date: the project runs
    // through it (2024-05-02 and 02.05.2024 end 2024-05-03T00:00Z).
    let cryo: Value = forecast("Cryoem Structural Lab 1", "");
    assert_eq!(cryo["ends_at"], "2024-05-03T00:00:00Z");
    let next: Value = forecast("nextflow_structural.3", "");
    assert_eq!(next["ends_at"], "2024-05-03T00:00:00Z");
    // Used up: exhausted, running out in the past.
    let spent: Value = forecast("denbi-annotation-005", "");
    assert_eq!(spent["exhausted"], true);
    // Unknown projects and bad windows are refused, saying why.
    assert_eq!(
        http()
            .get(url("nobody", ""))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    for bad in ["window_hours=0", "window_hours=2161", "window_hours=day"] {
        let answer = http().get(url("os_credits_0", bad)).send().unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{bad}");
        let body: Value = answer.json().unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("window_hours"),
            "{body}"
        );
    }
}

const PROJECT: &str = "alertlab";

/// The project's vCPU counter at `value` (vCPU-hours), `minute` minutes in.
fn use_up_to(service: &Service, value: u32, minute: i64) {
    let ns = 1_714_600_000_000_000_000 + minute * 60_000_000_000;
    let line =
        format!("project_vcpu_usage,location_id=8676,project_name={PROJECT} value={value} {ns}\n");
    assert_eq!(service.write(&line).0.as_u16(), 204);
}

/// The Message-ID the rules give the mail about `what` (a threshold in
/// percent, or `runout`) at granted credits `granted`.
fn message_id(what: &str, granted: &str) -> String {
    use sha2::{Digest, Sha256};
    let project = hex::encode(&Sha256::digest(PROJECT.as_bytes())[..12]);
    format!("<credits.{project}.{what}.{granted}@cloud.example>")
}

/// What a webhook event is about: its type, and its threshold (or none).
fn about(body: &Value) -> (String, String) {
    let kind = body["type"].as_str().unwrap_or_default().to_owned();
    let detail = match kind.as_str() {
        "credits.threshold_crossed" => body["data"]["threshold"].to_string(),
        "credits.correction_booked" => body["data"]["id"].to_string(),
        _ => body["data"]["granted"].to_string(),
    };
    (kind, detail)
}

#[test]
fn alerts_are_raised_once_each_by_mail_and_webhook_through_kills_and_a_failing_receiver() {
    let perun = FakePerun::start();
    perun.add_group(&json!({
        "name": PROJECT, "id": 4343,
        "attributes": {"denbiCreditsGranted": "100", "toEmail": ["lead@lab.example"]},
    }));
    let sink = SmtpSink::start();
    // The receiver answers 500 three times, then once too late.
    let receiver = Receiver::start(3, 1, Duration::from_secs(3));
    let mut env = owned(perun.env());
    env.extend(owned(receiver.env()));
    let port = sink.port.to_string();
    for (k, v) in [
        ("MAIL_SMTP_SERVER", "127.0.0.1"),
        ("MAIL_SMTP_PORT", port.as_str()),
        ("MAIL_NOT_STARTTLS", "true"),
        ("MAIL_FROM", "credits@cloud.example"),
        ("OS_CREDITS_MAIL_THRESHOLDS", "75,25,50,100"),
        ("API_KEY", "key"),
    ] {
        env.push((k.into(), v.into()));
    }
    let (data, folder) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let mut service = start(data.path(), folder.path(), &env);
    // A first charge (1 %): the project is published, and its granted
    // credits read.
    use_up_to(&service, 0, 0);
    use_up_to(&service, 1, 1);
    await_until("granted credits from Perun", || {
        !service.get_json(&format!("/api/current_credits/{PROJECT}"))["granted_credits"].is_null()
    });
    let mail_ids = |sink: &SmtpSink| -> Vec<String> {
        sink.mails()
            .iter()
            .filter_map(|m| m.header("Message-ID"))
            .collect()
    };
    let delivered = |receiver: &Receiver| -> BTreeSet<(String, String)> {
        receiver
            .received()
            .iter()
            .filter(|r| r.answered == 204)
            .map(|r| about(&r.body))
            .collect()
    };
    // Five rounds: use crosses 25 %, 50 %, 75 %, 100 %, then more; each
    // write is followed at once by a kill, before the alerts' next pass.
    let rounds: [(u32, Option<&str>); 5] = [
        (26, Some("25")),
        (51, Some("50")),
        (76, Some("75")),
        (101, Some("100")),
        (130, None),
    ];
    let mut mid_work = 0;
    for (minute, (value, threshold)) in rounds.iter().enumerate() {
        use_up_to(&service, *value, minute as i64 + 2);
        let before = mail_ids(&sink);
        service.kill9();
        if let Some(t) = threshold
            && !before.contains(&message_id(t, "100"))
        {
            mid_work += 1;
        }
        service = start(data.path(), folder.path(), &env);
        if let Some(t) = threshold {
            await_until(&format!("the {t} % mail"), || {
                mail_ids(&sink).contains(&message_id(t, "100"))
            });
            await_until(&format!("the {t} % webhook"), || {
                delivered(&receiver)
                    .contains(&("credits.threshold_crossed".to_owned(), t.to_string()))
            });
        }
    }
    println!("kills that landed between a crossing and its alert: {mid_work} of 4");
    assert!(mid_work >= 3, "the kills landed mid-work: {mid_work} of 4");
    // After the first crossing, at 26 vCPU-hours a minute, the credits run
    // out within minutes: one run-out warning, before they were used up.
    await_until("the run-out warning", || {
        mail_ids(&sink).contains(&message_id("runout", "100"))
    });
    // Nothing else is due: wait for passes and the receiver's retries.
    await_until("every event delivered", || {
        service.stats()["webhooks"]["queued"] == 0
    });
    let passes = service.stats()["mail"]["passes"].as_u64().unwrap();
    await_until("a run-out check after the last kill", || {
        service.stats()["mail"]["passes"].as_u64().unwrap() >= passes + 11
    });
    let ids = mail_ids(&sink);
    let mut expected: Vec<String> = ["25", "50", "75", "100", "runout"]
        .iter()
        .map(|t| message_id(t, "100"))
        .collect();
    expected.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "exactly the mails due, once each");
    let runout = sink
        .mails()
        .into_iter()
        .find(|m| m.header("Message-ID") == Some(message_id("runout", "100")))
        .unwrap();
    assert!(
        runout
            .header("Subject")
            .unwrap()
            .contains("run out on 2024-05-01"),
        "the date: {:?}",
        runout.header("Subject")
    );
    assert!(
        runout.message.contains("credits per"),
        "the rate: {}",
        runout.message
    );

    // A correction reaches the receiver too, under its own id.
    let sha256 = service.get_json("/api/policies")["schedule"][0]["sha256"].clone();
    let correction: Value = http()
        .post(service.at("/api/corrections"))
        .header("X-API-KEY", "key")
        .json(&json!({
            "reason": "vCPU price halved", "from": "2024-01-01", "to": "2025-01-01",
            "sha256": sha256, "config": {"cpu_price": "0.5"}, "dry_run": false,
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let correction_id = correction["id"].as_str().unwrap().to_owned();
    await_until("the correction's webhook", || {
        receiver
            .received()
            .iter()
            .any(|r| r.id == correction_id && r.answered == 204)
    });

    // The receiver's view: every request signed; each event under one id
    // only, delivered at least once; the 500s and the late answer were
    // retried under the same id.
    let received = receiver.received();
    assert!(received.iter().all(|r| r.signed), "{received:?}");
    let mut ids_of: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in &received {
        ids_of
            .entry(about(&r.body))
            .or_default()
            .insert(r.id.clone());
    }
    assert_eq!(
        ids_of.len(),
        6,
        "4 thresholds, a run-out warning, a correction: {ids_of:?}"
    );
    for (event, ids) in &ids_of {
        assert_eq!(ids.len(), 1, "{event:?} under one id: {ids:?}");
    }
    assert_eq!(delivered(&receiver).len(), 6);
    let failed: Vec<&str> = received
        .iter()
        .filter(|r| r.answered == 500)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(failed.len(), 3);
    for id in failed {
        assert!(
            received.iter().any(|r| r.id == id && r.answered == 204),
            "{id}: resent and taken"
        );
    }
    let late = received.iter().find(|r| r.answered == 204).unwrap();
    assert!(
        received.iter().filter(|r| r.id == late.id).count() >= 2,
        "the late answer counted as a failure: sent again, same id"
    );
    // The queue as of the deliverer's last pass: empty once it passed again.
    await_until("an empty queue in /stats", || {
        service.stats()["webhooks"]["queued"] == 0
    });
    let stats = service.stats()["webhooks"].clone();
    assert_eq!(stats["enabled"], true);
    // Counted since this process started: the correction's event at least.
    assert!(stats["delivered"].as_u64().unwrap() >= 1, "{stats}");
    let metrics = service.get("/metrics").1;
    assert!(
        metrics.contains("os_credits_webhooks_queued 0"),
        "{metrics}"
    );
    assert!(metrics.contains("os_credits_webhooks_delivered_total"));
}

#[test]
fn bad_alert_settings_stop_the_start_with_a_clear_error() {
    let (data, folder) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let serve = |env: &[(&str, &str)]| common::serve_stops(data.path(), folder.path(), env);
    let hook = ("OS_CREDITS_WEBHOOK_URL", "http://127.0.0.1:9/hooks");
    let secret = ("OS_CREDITS_WEBHOOK_SECRET", common::webhook::SECRET);
    let stderr = serve(&[hook, secret, ("OS_CREDITS_MAIL_THRESHOLDS", "0,50")]);
    assert!(
        stderr.contains("OS_CREDITS_MAIL_THRESHOLDS: \"0\""),
        "{stderr}"
    );
    let stderr = serve(&[hook]);
    assert!(
        stderr.contains("OS_CREDITS_WEBHOOK_SECRET is not"),
        "{stderr}"
    );
    let stderr = serve(&[hook, ("OS_CREDITS_WEBHOOK_SECRET", "plain")]);
    assert!(stderr.contains("whsec_"), "{stderr}");
    let stderr = serve(&[
        ("OS_CREDITS_WEBHOOK_URL", "ftp://x"),
        ("OS_CREDITS_WEBHOOK_SECRET", "whsec_AAAA"),
    ]);
    assert!(stderr.contains("not an http(s) URL"), "{stderr}");
    let stderr = serve(&[
        ("OS_CREDITS_PERUN_LOGIN", "l"),
        ("OS_CREDITS_PERUN_PASSWORD", "p"),
        ("OS_CREDITS_PERUN_VO_ID", "1"),
        ("OS_CREDITS_PERUN_END_ATTRIBUTE", "projectEndDate"),
    ]);
    assert!(stderr.contains("not a full attribute name"), "{stderr}");
}
