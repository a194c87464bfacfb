//! Who may bill: write credentials (`OS_CREDITS_WRITE_USERS_FILE`,
//! `OS_CREDITS_WRITE_TOKENS_FILE`) and site scopes, end to end on the real
//! binary:
//! - a real InfluxDB 1.x (Debian's `influxdb`) whose subscription carries
//!   the credentials in its destination URL bills the stack sample
//!   exactly; a subscription with a wrong password bills nothing;
//! - missing, wrong and revoked credentials bill nothing (401), a writer
//!   scoped to one site cannot bill another (403, or 204 for the rest);
//! - replicas on PostgreSQL accept the same credentials and scopes.
//!
//! (The real Prometheus with `basic_auth` is `tests/prometheus.rs`.)
//! Needs `influxd` (`make test` installs Debian's `influxdb`, see
//! `scripts/test-programs.sh`; `INFLUXD` overrides the binary).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Service, await_until, basic, htpasswd, http, policy_dir, repo_file};
use reqwest::StatusCode;
use rust_decimal::Decimal;

const TOKEN: &str = "prometheus-token-7f3a9c1e55d04b2b";

fn influxd() -> PathBuf {
    common::program("INFLUXD", &["/usr/bin/influxd"], "influxdb")
}

/// `text` as a form value: every byte but letters and digits escaped.
fn form_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real InfluxDB 1.x with its own folders and ports.
struct Influx {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Influx {
    fn start() -> Influx {
        let dir = tempfile::tempdir().unwrap();
        let (http_port, rpc_port) = (free_port(), free_port());
        let root = dir.path().display();
        // One subscription writer: the points of a series reach the
        // service in the order they were written.
        let config = format!(
            "reporting-disabled = true
bind-address = \"127.0.0.1:{rpc_port}\"
[meta]
  dir = \"{root}/meta\"
[data]
  dir = \"{root}/data\"
  wal-dir = \"{root}/wal\"
  query-log-enabled = false
[http]
  bind-address = \"127.0.0.1:{http_port}\"
  log-enabled = false
[subscriber]
  enabled = true
  write-concurrency = 1
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"
        );
        let path = dir.path().join("influxdb.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(influxd())
            .arg("-config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("influxd starts");
        let url = format!("http://127.0.0.1:{http_port}");
        let ping = format!("{url}/ping");
        await_until("InfluxDB to answer /ping", || {
            http()
                .get(&ping)
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        Influx {
            child,
            url,
            _dir: dir,
        }
    }

    fn query(&self, q: &str) {
        let response = http()
            .post(format!("{}/query", self.url))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("q={}", form_encoded(q)))
            .send()
            .expect("InfluxDB query");
        let status = response.status();
        let body = response.text().unwrap_or_default();
        assert!(
            status.is_success() && !body.contains("\"error\""),
            "{q}: {status} {body}"
        );
    }

    fn write(&self, database: &str, lines: &str) {
        let response = http()
            .post(format!("{}/write?db={database}&precision=ns", self.url))
            .body(lines.to_owned())
            .send()
            .expect("InfluxDB write");
        assert_eq!(response.status().as_u16(), 204, "{:?}", response.text());
    }

    /// A database whose subscription posts every write to `destination`.
    fn subscribed(&self, database: &str, destination: &str) {
        self.query(&format!("CREATE DATABASE \"{database}\""));
        self.query(&format!(
            "CREATE SUBSCRIPTION \"credits\" ON \"{database}\".\"autogen\" DESTINATIONS ALL '{destination}'"
        ));
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project's exact credits (zero when it has none).
fn credits(service: &Service, project: &str) -> Decimal {
    let (status, body) = service.get(&format!("/api/current_credits/{project}"));
    if !status.is_success() {
        return Decimal::ZERO;
    }
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["current_credits_exact"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// One of the service's `/metrics` samples (0 when absent).
fn metric(service: &Service, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = service.get("/metrics");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// POSTs `body` to `/write` with `authorization` (if any).
fn post(service: &Service, query: &str, authorization: Option<&str>, body: &str) -> (u16, String) {
    let mut request = http()
        .post(service.at(&format!("/write?db=portal_prometheus&precision=ns{query}")))
        .header("Content-Type", "")
        .body(body.to_owned());
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    let response = request.send().expect("POST /write");
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

fn line(project: &str, site: &str, value: u64, t: u64) -> String {
    format!(
        "project_vcpu_usage,location_id={site},project_id={project},project_name={project} value={value} {t}\n"
    )
}

fn credentials(dir: &Path) -> (PathBuf, PathBuf) {
    let users = htpasswd(
        dir,
        "users",
        &[
            ("influx", "influx-secret", None),
            ("bielefeld", "bielefeld-secret", Some("8676")),
            ("leaver", "leaver-secret", None),
        ],
    );
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("# Prometheus\nprometheus {TOKEN}\n")).unwrap();
    (users, tokens)
}

/// The service with the test's credential files, and its folders.
struct Guarded {
    service: Service,
    secrets: tempfile::TempDir,
    users: PathBuf,
    _data: tempfile::TempDir,
    _policies: tempfile::TempDir,
}

impl Guarded {
    fn start() -> Guarded {
        let (data, policies, secrets) = (
            tempfile::tempdir().unwrap(),
            policy_dir(&[]),
            tempfile::tempdir().unwrap(),
        );
        let (users, tokens) = credentials(secrets.path());
        let service = Service::start(
            data.path(),
            policies.path(),
            &[
                ("OS_CREDITS_WRITE_USERS_FILE", users.to_str().unwrap()),
                ("OS_CREDITS_WRITE_TOKENS_FILE", tokens.to_str().unwrap()),
            ],
        );
        Guarded {
            service,
            secrets,
            users,
            _data: data,
            _policies: policies,
        }
    }
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs InfluxDB: make test")]
fn a_real_influxdb_subscription_with_credentials_in_its_url_bills_the_sample_exactly() {
    influxd();
    let guarded = Guarded::start();
    let service = &guarded.service;
    let influx = Influx::start();
    let port = service.url.rsplit(':').next().unwrap().to_owned();
    influx.subscribed(
        "portal_prometheus",
        &format!("http://influx:influx-secret@127.0.0.1:{port}"),
    );
    influx.subscribed(
        "intruders",
        &format!("http://influx:a-guess@127.0.0.1:{port}"),
    );
    // The subscription is live once a probe (a metric nobody prices)
    // reaches the service.
    let received = || service.stats()["points"]["received"].as_u64().unwrap();
    let mut probe = 0;
    await_until("the subscription to deliver", || {
        probe += 1;
        influx.write(
            "portal_prometheus",
            &format!("probe value={probe} {probe}\n"),
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        received() > 0
    });
    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    for chunk in lines.chunks(1000) {
        influx.write("portal_prometheus", &(chunk.join("\n") + "\n"));
    }
    let expected = common::expected_credits();
    let mut billed = BTreeMap::new();
    await_until("the sample to be billed through the subscription", || {
        billed = expected
            .keys()
            .map(|project| (project.clone(), credits(service, project)))
            .collect();
        billed == expected
    });
    assert_eq!(billed, expected);
    // The intruders' subscription sends a wrong password: refused, unbilled.
    influx.write("intruders", &line("intruder", "8676", 10, 1));
    influx.write("intruders", &line("intruder", "8676", 20, 2));
    await_until("the wrong password to be refused", || {
        metric(
            service,
            "os_credits_write_auth_failures_total",
            &[("endpoint", "/write"), ("reason", "wrong")],
        ) >= 2.0
    });
    assert_eq!(credits(service, "intruder"), Decimal::ZERO);
    assert_eq!(
        metric(
            service,
            "os_credits_write_auth_failures_total",
            &[("endpoint", "/write"), ("reason", "missing")],
        ),
        0.0,
        "the subscription always sent its credentials"
    );
    let stats = service.stats();
    assert_eq!(stats["write_credentials"]["required"], true);
    assert_eq!(stats["write_credentials"]["users"], 3);
    assert_eq!(stats["write_credentials"]["tokens"], 1);
}

#[test]
fn missing_wrong_and_revoked_credentials_and_other_sites_bill_nothing() {
    let guarded = Guarded::start();
    let (service, secrets, users) = (&guarded.service, guarded.secrets.path(), &guarded.users);
    let received = || service.stats()["points"]["received"].as_u64().unwrap();
    let body = line("p1", "8676", 10, 1_000) + &line("p1", "8676", 20, 2_000);
    let influx = basic("influx", "influx-secret");

    // Missing, wrong, malformed: 401 with the challenge, nothing read.
    for (authorization, query) in [
        (None, ""),
        (Some(basic("influx", "wrong").as_str()), ""),
        (Some(basic("nobody", "influx-secret").as_str()), ""),
        (Some("Basic !!!"), ""),
        (Some("Bearer not-a-token-of-ours-at-all"), ""),
        (None, "&u=influx&p=wrong"),
    ] {
        let response = http()
            .post(service.at(&format!("/write?db=x{query}")))
            .header("Content-Type", "");
        let response = match authorization {
            Some(value) => response.header("Authorization", value),
            None => response,
        }
        .body(body.clone())
        .send()
        .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?} {query}"
        );
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"os-credits\""
        );
    }
    let remote = http()
        .post(service.at("/api/v1/write"))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .unwrap();
    assert_eq!(remote.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(received(), 0, "a refused write was read");
    assert_eq!(credits(service, "p1"), Decimal::ZERO);
    let failures = |endpoint: &str, reason: &str| {
        metric(
            service,
            "os_credits_write_auth_failures_total",
            &[("endpoint", endpoint), ("reason", reason)],
        )
    };
    assert_eq!(failures("/write", "missing"), 1.0);
    assert_eq!(failures("/write", "wrong"), 5.0);
    assert_eq!(failures("/api/v1/write", "missing"), 1.0);

    // Basic, u/p and a bearer token each bill.
    assert_eq!(post(service, "", Some(&influx), &body).0, 204);
    assert_eq!(credits(service, "p1"), Decimal::from(10));
    let more = line("p1", "8676", 25, 3_000);
    assert_eq!(
        post(service, "&u=influx&p=influx-secret", None, &more).0,
        204
    );
    let token = format!("Bearer {TOKEN}");
    assert_eq!(
        post(service, "", Some(&token), &line("p1", "8676", 30, 4_000)).0,
        204
    );
    assert_eq!(credits(service, "p1"), Decimal::from(20));

    // A writer scoped to 8676: 8677 alone is refused (403, naming it),
    // mixed bills only 8676 (204); the refused points are counted.
    let other = line("p2", "8677", 10, 1_000) + &line("p2", "8677", 50, 2_000);
    let bielefeld = basic("bielefeld", "bielefeld-secret");
    let (status, answer) = post(service, "", Some(&bielefeld), &other);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("8677") && answer.contains("bielefeld"),
        "{answer}"
    );
    let mixed = line("p2", "8676", 5, 1_000)
        + &line("p2", "8677", 70, 3_000)
        + &line("p2", "8676", 9, 2_000);
    assert_eq!(post(service, "", Some(&bielefeld), &mixed).0, 204);
    assert_eq!(credits(service, "p2"), Decimal::from(4), "only 8676 billed");
    assert_eq!(
        service.stats()["write_credentials"]["refused_points"]["bielefeld"]["site not allowed"],
        3
    );
    assert_eq!(
        metric(
            service,
            "os_credits_write_points_refused_total",
            &[("writer", "bielefeld"), ("reason", "site not allowed")],
        ),
        3.0
    );

    // Revoked: the file rewritten without `leaver`; within the deadline
    // its writes are refused, and what it sends then bills nothing.
    let leaver = basic("leaver", "leaver-secret");
    assert_eq!(
        post(service, "", Some(&leaver), &line("p3", "8677", 1, 1_000)).0,
        204
    );
    htpasswd(
        secrets,
        "users",
        &[
            ("influx", "influx-secret", None),
            ("bielefeld", "bielefeld-secret", Some("8676")),
        ],
    );
    await_until("the revocation to take effect", || {
        // a metric nobody prices: bills nothing even while still allowed
        post(service, "", Some(&leaver), "probe value=1 1\n").0 == 401
    });
    assert_eq!(
        post(service, "", Some(&leaver), &line("p3", "8677", 99, 2_000)).0,
        401
    );
    assert_eq!(credits(service, "p3"), Decimal::ZERO);
    assert_eq!(service.stats()["write_credentials"]["users"], 2);
    // Still in force for the others.
    assert_eq!(
        post(service, "", Some(&influx), &line("p1", "8676", 31, 5_000)).0,
        204
    );
    assert_eq!(credits(service, "p1"), Decimal::from(21));

    // A file that no longer reads keeps the last good credentials.
    std::fs::write(users, "influx:{SHA}not-bcrypt\n").unwrap();
    await_until("the broken file to be reported", || {
        service.stats()["write_credentials"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("bcrypt"))
    });
    assert_eq!(
        post(service, "", Some(&influx), &line("p1", "8676", 32, 6_000)).0,
        204
    );
    assert_eq!(credits(service, "p1"), Decimal::from(22));
}

#[test]
fn without_credential_files_writes_are_open_and_say_so() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[]);
    assert_eq!(post(&service, "", None, &line("p", "8676", 1, 1)).0, 204);
    assert_eq!(service.stats()["write_credentials"]["required"], false);
    assert_eq!(
        metric(&service, "os_credits_write_credentials_required", &[]),
        0.0
    );
    assert!(
        service.log().contains("writes are open"),
        "{}",
        service.log()
    );
}

#[test]
fn a_credential_file_that_does_not_read_stops_the_start() {
    let (data, policies, secrets) = (
        tempfile::tempdir().unwrap(),
        policy_dir(&[]),
        tempfile::tempdir().unwrap(),
    );
    let users = secrets.path().join("users");
    std::fs::write(&users, "exporter:$apr1$abc$def\n").unwrap();
    let users = users.display().to_string();
    let stderr = common::serve_stops(
        data.path(),
        policies.path(),
        &[("OS_CREDITS_WRITE_USERS_FILE", &users)],
    );
    assert!(
        stderr.contains("users:1") && stderr.contains("bcrypt"),
        "{stderr}"
    );
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn replicas_accept_the_same_credentials_and_scopes() {
    let postgres = common::postgres::Postgres::start();
    let database = postgres.database("auth");
    let (policies, secrets) = (policy_dir(&[]), tempfile::tempdir().unwrap());
    let (users, tokens) = credentials(secrets.path());
    let start = |name: &str| {
        let data = tempfile::tempdir().unwrap();
        let env = [
            ("OS_CREDITS_DATABASE_URL", database.as_str()),
            ("OS_CREDITS_LEADER_CHECK_SECONDS", "0.1"),
            ("OS_CREDITS_REPLICA_NAME", name),
            ("OS_CREDITS_WRITE_USERS_FILE", users.to_str().unwrap()),
            ("OS_CREDITS_WRITE_TOKENS_FILE", tokens.to_str().unwrap()),
        ];
        let service = Service::start_with(
            Command::new(env!("CARGO_BIN_EXE_os-credits")),
            data.path(),
            policies.path(),
            &env,
        );
        (service, data)
    };
    let (a, _a) = start("a");
    await_until("a to lead", || a.stats()["role"] == "leader");
    let (b, _b) = start("b");
    assert_eq!(b.stats()["role"], "follower");
    let influx = basic("influx", "influx-secret");
    let bielefeld = basic("bielefeld", "bielefeld-secret");
    // The follower checks like the leader: 401, 403, and 204 for what it
    // stores in the inbox.
    assert_eq!(post(&b, "", None, &line("r1", "8676", 1, 1_000)).0, 401);
    assert_eq!(
        post(
            &b,
            "",
            Some(&basic("influx", "no")),
            &line("r1", "8676", 1, 1_000)
        )
        .0,
        401
    );
    let (status, answer) = post(&b, "", Some(&bielefeld), &line("r2", "8677", 1, 1_000));
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("8677"), "{answer}");
    let body = line("r1", "8676", 10, 1_000) + &line("r1", "8676", 17, 2_000);
    assert_eq!(post(&b, "", Some(&influx), &body).0, 204);
    let mixed = line("r2", "8676", 3, 1_000)
        + &line("r2", "8677", 40, 1_500)
        + &line("r2", "8676", 8, 2_000);
    assert_eq!(post(&b, "", Some(&bielefeld), &mixed).0, 204);
    let token = format!("Bearer {TOKEN}");
    assert_eq!(
        post(&b, "", Some(&token), &line("r3", "8677", 2, 1_000)).0,
        204
    );
    assert_eq!(
        post(&b, "", Some(&token), &line("r3", "8677", 6, 2_000)).0,
        204
    );
    // The leader bills what the follower stored, within its scope.
    await_until("the leader to bill the follower's writes", || {
        credits(&a, "r1") == Decimal::from(7) && credits(&a, "r3") == Decimal::from(4)
    });
    assert_eq!(credits(&a, "r2"), Decimal::from(5), "only 8676 billed");
    assert_eq!(
        b.stats()["write_credentials"]["refused_points"]["bielefeld"]["site not allowed"],
        2,
        "the follower counts what it refused"
    );
    assert_eq!(
        metric(
            &b,
            "os_credits_write_auth_failures_total",
            &[("endpoint", "/write")],
        ),
        2.0
    );
    // And the leader checks its own writes the same way.
    assert_eq!(post(&a, "", None, &line("r1", "8676", 30, 3_000)).0, 401);
    assert_eq!(
        post(&a, "", Some(&bielefeld), &line("r2", "8677", 90, 3_000)).0,
        403
    );
    assert_eq!(
        post(&a, "", Some(&influx), &line("r1", "8676", 30, 3_000)).0,
        204
    );
    assert_eq!(credits(&a, "r1"), Decimal::from(20));
}
