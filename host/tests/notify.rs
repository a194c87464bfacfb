//! Threshold mails end to end: the real service, the fake Perun (granted
//! credits and `toEmail`) and a real SMTP receiver over TCP.

mod common;

use std::net::TcpListener;

use common::fake_perun::FakePerun;
use common::smtp::{Mail, SmtpSink};
use common::{Service, await_until, http, policy_dir};
use serde_json::{Value, json};

const PROJECT: &str = "mailproj";

fn start(
    perun: &FakePerun,
    smtp_port: u16,
    extra: &[(&str, &str)],
) -> (Service, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let port = smtp_port.to_string();
    let mut env: Vec<(String, String)> = perun
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for (k, v) in [
        ("MAIL_SMTP_SERVER", "127.0.0.1"),
        ("MAIL_SMTP_PORT", port.as_str()),
        ("MAIL_NOT_STARTTLS", "true"),
        ("MAIL_FROM", "credits@cloud.example"),
        // Thresholds only: run-out warnings have their own test (forecasts.rs).
        ("OS_CREDITS_RUNOUT_WARNING_DAYS", "0"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        env.push((k.to_owned(), v.to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (Service::start(data.path(), policies.path(), &env), data)
}

fn group(perun: &FakePerun) {
    perun.add_group(&json!({
        "name": PROJECT, "id": 4242,
        "attributes": {
            "denbiCreditsGranted": "200",
            "toEmail": ["alice@lab.example", "not an address", "bob@lab.example"],
        },
    }));
}

/// One vCPU counter of the project reaching `value` (vCPU-hours) at minute `minute`.
fn use_up_to(service: &Service, value: u32, minute: i64) {
    let ns = 1_714_600_000_000_000_000 + minute * 60_000_000_000;
    let line =
        format!("project_vcpu_usage,location_id=8676,project_name={PROJECT} value={value} {ns}\n");
    let response = http().post(service.at("/write")).body(line).send().unwrap();
    assert_eq!(response.status().as_u16(), 204);
}

fn mail_stats(service: &Service) -> Value {
    service.get_json("/stats")["mail"].clone()
}

/// Waits for two more passes of the notifier: whatever it would send, it has.
fn settle(service: &Service) {
    let passes = mail_stats(service)["passes"].as_u64().unwrap();
    await_until("two more notifier passes", || {
        mail_stats(service)["passes"].as_u64().unwrap() >= passes + 2
    });
}

fn subjects(mails: &[Mail]) -> Vec<String> {
    mails.iter().filter_map(|m| m.header("Subject")).collect()
}

#[test]
fn one_mail_per_crossing_to_the_maintainers_with_governance_in_copy() {
    let perun = FakePerun::start();
    group(&perun);
    let sink = SmtpSink::start();
    let (service, _data) = start(
        &perun,
        sink.port,
        &[("CLOUD_GOVERNANCE_MAIL", "governance@cloud.example")],
    );
    use_up_to(&service, 0, 0);
    use_up_to(&service, 99, 1);
    settle(&service);
    assert!(sink.mails().is_empty(), "49.5 % used: no mail yet");
    use_up_to(&service, 100, 2);
    await_until("the 50 % mail", || sink.mails().len() == 1);
    let mail = &sink.mails()[0];
    assert_eq!(mail.from, "credits@cloud.example");
    assert_eq!(
        mail.recipients,
        vec![
            "alice@lab.example",
            "bob@lab.example",
            "governance@cloud.example"
        ]
    );
    assert_eq!(
        mail.header("To").unwrap(),
        "alice@lab.example, bob@lab.example"
    );
    assert!(service.log().contains("skipping an invalid mail address"));
    assert_eq!(mail.header("Cc").unwrap(), "governance@cloud.example");
    assert_eq!(
        mail.header("Subject").unwrap(),
        format!("50% of the credits of project {PROJECT} used")
    );
    assert!(
        mail.message
            .contains("used 100.00 of its 200.00 granted credits")
    );
    // More use below the next threshold: nothing new.
    use_up_to(&service, 150, 3);
    settle(&service);
    assert_eq!(sink.mails().len(), 1);
    // All used: the second and last mail.
    use_up_to(&service, 230, 4);
    await_until("the 100 % mail", || sink.mails().len() == 2);
    settle(&service);
    assert_eq!(
        subjects(&sink.mails()),
        vec![
            format!("50% of the credits of project {PROJECT} used"),
            format!("100% of the credits of project {PROJECT} used"),
        ]
    );
    assert_eq!(mail_stats(&service)["sent"], 2);
    // Prometheus sees them too.
    let metrics = http()
        .get(service.at("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("os_credits_mails_sent_total 2"));
}

#[test]
fn the_overwrite_replaces_every_recipient_and_a_down_smtp_server_gets_the_mail_later_once() {
    let perun = FakePerun::start();
    group(&perun);
    // A port with nobody listening yet: SMTP is down.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let (service, _data) = start(
        &perun,
        port,
        &[
            ("CLOUD_GOVERNANCE_MAIL", "governance@cloud.example"),
            ("NOTIFICATION_TO_OVERWRITE", "ops@cloud.example"),
        ],
    );
    use_up_to(&service, 0, 0);
    use_up_to(&service, 120, 1);
    await_until("a failed send", || {
        mail_stats(&service)["failed"].as_u64().unwrap() >= 1
    });
    // Billing goes on while mail is down.
    use_up_to(&service, 130, 2);
    let current = service.get_json(&format!("/api/current_credits/{PROJECT}"));
    assert_eq!(current["current_credits"], json!(130.0));
    assert!(!mail_stats(&service)["last_error"].is_null());

    let sink = SmtpSink::on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    await_until("the mail after SMTP came back", || sink.mails().len() == 1);
    settle(&service);
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "sent once, not once per attempt");
    assert_eq!(mails[0].recipients, vec!["ops@cloud.example"]);
    assert_eq!(mails[0].header("To").unwrap(), "ops@cloud.example");
    assert_eq!(mails[0].header("Cc"), None);
}

/// Books a correction of all the project's usage at `cpu_price` per
/// vCPU-hour, with the schedule's module (named by its SHA-256).
fn correct_cpu_price(service: &Service, cpu_price: &str) {
    let sha256 = service.get_json("/api/policies")["schedule"][0]["sha256"].clone();
    let response = http()
        .post(service.at("/api/corrections"))
        .header("X-API-KEY", "k")
        .json(&json!({
            "reason": format!("vCPU-hour at {cpu_price}"),
            "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z",
            "sha256": sha256, "config": {"cpu_price": cpu_price},
            "dry_run": false,
        }))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{:?}", response.text());
}

#[test]
fn corrections_reach_perun_and_the_thresholds_a_drop_below_re_arms_a_mail() {
    let perun = FakePerun::start();
    group(&perun);
    let sink = SmtpSink::start();
    let (service, _data) = start(&perun, sink.port, &[("API_KEY", "k")]);
    use_up_to(&service, 0, 0);
    use_up_to(&service, 90, 1);
    let published = |value: &str| {
        let value: rust_decimal::Decimal = value.parse().unwrap();
        await_until("Perun to hold the corrected credits", || {
            perun
                .published()
                .get(PROJECT)
                .is_some_and(|v| v.parse::<rust_decimal::Decimal>().ok() == Some(value))
        });
    };
    published("90");
    settle(&service);
    assert!(sink.mails().is_empty(), "45 % used: no mail");
    // Corrected to twice the price: 90 % used, the 50 % mail, once.
    correct_cpu_price(&service, "2");
    published("180");
    await_until("the 50 % mail", || !sink.mails().is_empty());
    settle(&service);
    assert_eq!(sink.mails().len(), 1);
    let first = sink.mails()[0].header("Message-ID").unwrap();
    // Corrected back: 45 %, re-armed; crossing again mails again, as
    // another event (another Message-ID).
    correct_cpu_price(&service, "1");
    published("90");
    await_until("the re-arm", || mail_stats(&service)["rearmed"] == 1);
    settle(&service);
    assert_eq!(sink.mails().len(), 1, "falling below mails nothing");
    use_up_to(&service, 110, 2);
    await_until("the second 50 % mail", || sink.mails().len() == 2);
    settle(&service);
    let mails = sink.mails();
    assert_eq!(mails.len(), 2);
    assert_eq!(
        subjects(&mails),
        vec![format!("50% of the credits of project {PROJECT} used"); 2]
    );
    assert_ne!(mails[1].header("Message-ID").unwrap(), first);
}

#[test]
fn bad_mail_settings_stop_the_start_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let serve = |env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        env.push(("MAIL_SMTP_SERVER", "127.0.0.1"));
        common::serve_stops(data.path(), policies.path(), &env)
    };
    let stderr = serve(&[("MAIL_FROM", "credits at cloud")]);
    assert!(
        stderr.contains("MAIL_FROM \"credits at cloud\" is not a mail address"),
        "{stderr}"
    );
    let stderr = serve(&[("OS_CREDITS_NOTIFY_THRESHOLDS", "50,most")]);
    assert!(
        stderr.contains("\"most\" is not a whole percentage"),
        "{stderr}"
    );
    let template = data.path().join("body.txt");
    std::fs::write(&template, "{project} used {usde}").unwrap();
    let stderr = serve(&[("OS_CREDITS_MAIL_BODY_FILE", template.to_str().unwrap())]);
    assert!(stderr.contains("unknown placeholder {usde}"), "{stderr}");
}
