//! High availability: two replicas on a real PostgreSQL (started by the
//! test), the stack sample posted in chunks to either at random (every
//! fifth to both), and the leader hit mid-ingest: killed with SIGKILL, its
//! sessions ended from the database (the lost-lock path: it exits 3),
//! frozen with SIGSTOP and woken with SIGCONT after the other took over,
//! or cut off the network (a namespace of the test's own, its veth link
//! taken down and brought back). In each: the other replica leads within
//! 15 s, a replaced leader exits 3 without billing, publishing or mailing,
//! no write answered 204 is lost, nothing is billed twice, Perun (the
//! fake) ends exactly at the expected credits, each due threshold mail
//! carries one Message-ID, with at most one resend per fault.
//!
//! The chunks go to replicas chosen by a seeded generator: the seed is
//! printed, and `OS_CREDITS_TEST_SEED` replays it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fake_perun::FakePerun;
use common::netns::Netns;
use common::postgres::Postgres;
use common::smtp::SmtpSink;
use common::{Service, await_until, policy_dir, repo_file};
use reqwest::StatusCode;
use serde_json::json;

/// How soon the other replica must lead once the leader is gone or hung.
const TAKEOVER: Duration = Duration::from_secs(15);
/// Threshold mails the sample makes due (50 % and 100 % of two projects).
const DUE_MAILS: usize = 4;

/// What happens to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then restarted.
    Kill,
    /// Its sessions ended from the database: it finds its lock gone and
    /// exits 3, then is restarted.
    EndSessions,
    /// SIGSTOP; SIGCONT once the other leads and took writes.
    Freeze,
    /// Its network cut; mended once the other leads and took writes.
    Cut,
}

struct Cluster<'a> {
    postgres: &'a Postgres,
    database: String,
    perun: &'a FakePerun,
    smtp_port: u16,
    policies: tempfile::TempDir,
    netns: Option<&'a Netns>,
}

impl Cluster<'_> {
    /// Starts replica `name`, inside the namespace if `inside`.
    fn start(&self, name: &str, inside: bool) -> Service {
        let data = tempfile::tempdir().unwrap();
        // Seen from where the replica runs: this machine's side of the
        // link inside the namespace, loopback outside.
        let here = match (inside, self.netns) {
            (true, Some(netns)) => netns.host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let perun_url = self.perun.url.replace("0.0.0.0", &here);
        let mut env: Vec<(&str, String)> = self
            .perun
            .env()
            .into_iter()
            .map(|(k, v)| match k {
                "OS_CREDITS_PERUN_URL" => (k, format!("{perun_url}/krb/rpc/json")),
                _ => (k, v),
            })
            .collect();
        env.extend([
            (
                "OS_CREDITS_DATABASE_URL",
                format!(
                    "postgres://postgres@{here}:{}/{}",
                    self.postgres.port, self.database
                ),
            ),
            ("OS_CREDITS_LEADER_CHECK_SECONDS", "0.3".into()),
            ("OS_CREDITS_REPLICA_NAME", name.into()),
            ("MAIL_SMTP_SERVER", here.clone()),
            ("MAIL_SMTP_PORT", self.smtp_port.to_string()),
            ("MAIL_NOT_STARTTLS", "true".into()),
            ("MAIL_FROM", "credits@cloud.example".into()),
            ("NOTIFICATION_TO_OVERWRITE", "ops@cloud.example".into()),
            // Threshold mails only (run-out warnings: forecasts.rs).
            ("OS_CREDITS_RUNOUT_WARNING_DAYS", "0".into()),
        ]);
        let command = match (inside, self.netns) {
            (true, Some(netns)) => {
                env.push(("CREDITS_HOST", netns.inside.clone()));
                netns.command(env!("CARGO_BIN_EXE_os-credits"))
            }
            _ => Command::new(env!("CARGO_BIN_EXE_os-credits")),
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let service = Service::start_with(command, data.path(), self.policies.path(), &env);
        // The data folder holds nothing the replica needs (the ledger is
        // in PostgreSQL); it goes when the test ends.
        std::mem::forget(data);
        service
    }
}

/// A replica's role, or `None` when it does not answer within 2 s.
fn role(service: &Service) -> Option<String> {
    client()
        .get(service.at("/stats"))
        .send()
        .ok()?
        .json::<serde_json::Value>()
        .ok()?["role"]
        .as_str()
        .map(str::to_owned)
}

/// A client that gives up on a replica that does not answer (frozen, cut).
fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client")
}

fn post(service: &Service, chunk: &str) -> bool {
    client()
        .post(service.at("/write"))
        .body(chunk.to_owned())
        .send()
        .is_ok_and(|r| r.status() == StatusCode::NO_CONTENT)
}

/// Waits up to `limit` for `condition`; how long it took.
fn within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// The sessions of the replica process `pid` ended from the database.
fn end_sessions(postgres: &Postgres, pid: u32) -> i64 {
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", postgres.port);
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    client
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE ended) FROM (SELECT pg_terminate_backend(pid) AS ended
                 FROM pg_stat_activity WHERE application_name LIKE $1) AS s",
            &[&format!("os-credits {pid} %")],
        )
        .unwrap()
        .get(0)
}

/// Runs the sample through two replicas while `faults` hit the leader,
/// evenly spaced through the ingest; with `netns`, replica `a` (the first
/// leader) runs inside it.
fn survive(test: &str, faults: &[Fault], netns: Option<&Netns>) {
    let (mut random, _) = common::seeded(test);
    let postgres = Postgres::start_listening("-c fsync=off", netns.map(|n| n.host.as_str()));
    let bind = if netns.is_some() {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    let perun = FakePerun::start_on(bind);
    for (i, name) in common::expected_published().keys().enumerate() {
        perun.group(name, 1000 + i as i64, "150");
    }
    let smtp = SmtpSink::on(std::net::TcpListener::bind((bind, 0)).unwrap());
    postgres.database("replicas");
    let cluster = Cluster {
        postgres: &postgres,
        database: "replicas".into(),
        perun: &perun,
        smtp_port: smtp.port,
        policies: policy_dir(&[]),
        netns,
    };
    let inside = |name: &str| netns.is_some() && name == "a";
    // `a` leads first (the first fault hits it), then `b` follows.
    let first = cluster.start("a", inside("a"));
    within("a to lead", Duration::from_secs(60), || {
        role(&first).as_deref() == Some("leader")
    });
    let mut replicas = [first, cluster.start("b", false)];
    within("b to follow", Duration::from_secs(60), || {
        role(&replicas[1]).as_deref() == Some("follower")
    });

    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    let chunks: Vec<String> = lines
        .chunks(lines.len().div_ceil(60))
        .map(|c| c.join("\n"))
        .collect();
    let at: Vec<usize> = (1..=faults.len())
        .map(|i| i * chunks.len() / (faults.len() + 1))
        .collect();
    // A fault waiting to be lifted: (replica, fault, chunk index to lift at).
    let mut hung: Option<(usize, Fault, usize)> = None;
    let mut landed = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        if let Some(position) = at.iter().position(|&i| i == index) {
            let fault = faults[position];
            let leader = replicas
                .iter()
                .position(|r| role(r).as_deref() == Some("leader"))
                .expect("a leader before each fault");
            let other = 1 - leader;
            let name = if leader == 0 { "a" } else { "b" };
            match fault {
                Fault::Kill => replicas[leader].kill9(),
                Fault::EndSessions => {
                    assert!(end_sessions(&postgres, replicas[leader].pid()) >= 1);
                }
                Fault::Freeze => replicas[leader].signal("STOP"),
                Fault::Cut => netns.expect("a namespace to cut").cut(),
            }
            let took = within("the other replica to lead", TAKEOVER, || {
                role(&replicas[other]).as_deref() == Some("leader")
            });
            match fault {
                Fault::Kill => replicas[leader] = cluster.start(name, inside(name)),
                Fault::EndSessions => {
                    // Its lock went with its session: it exits 3.
                    let code = replicas[leader].exit_within(Duration::from_secs(30));
                    assert_eq!(code, Some(3), "{}", replicas[leader].log());
                    replicas[leader] = cluster.start(name, inside(name));
                }
                Fault::Freeze | Fault::Cut => {}
            }
            println!("{test}: {fault:?} at chunk {index}: the other led after {took:?}");
            if matches!(fault, Fault::Freeze | Fault::Cut) {
                hung = Some((leader, fault, index + 5));
            }
            landed.push(index);
        }
        if let Some((replica, fault, lift_at)) = hung
            && index == lift_at
        {
            hung = None;
            let before = replicas[replica].log().len();
            match fault {
                Fault::Freeze => replicas[replica].signal("CONT"),
                _ => netns.expect("the namespace").mend(),
            }
            // Awake and replaced: it exits 3 (a cut-off leader may have
            // exited already, when its lease could not be renewed).
            let code = replicas[replica].exit_within(Duration::from_secs(30));
            let log = replicas[replica].log();
            assert_eq!(code, Some(3), "{log}");
            let after = &log[before.min(log.len())..];
            assert!(!after.contains("alert mail sent"), "{after}");
            assert!(after.contains("no two replicas bill") || log.contains("no two replicas bill"));
            let name = if replica == 0 { "a" } else { "b" };
            replicas[replica] = cluster.start(name, inside(name));
        }
        // To either at random; every fifth chunk to both; a replica that
        // does not answer (down, frozen, cut off): the sender retries.
        let first = random.usize(0..2);
        let mut delivered = post(&replicas[first], chunk);
        if index % 5 == 0 || !delivered {
            delivered |= post(&replicas[1 - first], chunk);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !delivered {
            assert!(
                Instant::now() < deadline,
                "chunk {index} was never accepted"
            );
            std::thread::sleep(Duration::from_millis(100));
            delivered = replicas.iter().any(|r| post(r, chunk));
        }
    }
    // Every fault landed while posting went on: chunks before and after it.
    assert_eq!(landed.len(), faults.len());
    assert!(
        landed.iter().all(|&i| i > 0 && i + 5 < chunks.len()),
        "{landed:?}"
    );
    assert!(hung.is_none());

    let expected = common::expected_published();
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        await_until("Perun to hold the exact credits", || {
            perun.published() == expected
        })
    }));
    assert!(
        converged.is_ok(),
        "Perun {:?}\nexpected {expected:?}\n{}\n---\n{}",
        perun.published(),
        replicas[0].log(),
        replicas[1].log()
    );
    // The inbox is drained and exactly one replica leads.
    await_until("the inbox drained", || {
        replicas
            .iter()
            .all(|r| r.stats()["inbox_depth"] == json!(0))
    });
    assert_eq!(
        replicas
            .iter()
            .filter(|r| role(r).as_deref() == Some("leader"))
            .count(),
        1
    );
    // Both answer, and read the same exact credits from the database.
    for replica in &replicas {
        assert_eq!(replica.get("/ping").1, "Pong");
        let current = replica.get_json("/api/current_credits/os_credits_0");
        assert_eq!(current["current_credits"], json!(167.80));
        let lease = &replica.stats()["lease"];
        assert!(
            lease["epoch"].as_i64().unwrap() > faults.len() as i64,
            "{lease}"
        );
    }
    // One Message-ID per due mail; a resend (same id) at most once per fault.
    await_until("every threshold mail", || {
        let subjects: BTreeSet<String> = smtp
            .mails()
            .iter()
            .filter_map(|m| m.header("Subject"))
            .collect();
        subjects.len() == DUE_MAILS
    });
    // The marker before counting: two more passes of the leader's alerts
    // (the first may have been under way; the second starts after it
    // ended), so a wrong extra mail would have been sent by now.
    let leader = replicas
        .iter()
        .find(|r| r.stats()["role"] == "leader")
        .expect("a leader");
    let passes = || leader.stats()["mail"]["passes"].as_u64().unwrap_or(0);
    let start = passes();
    await_until("two more passes of the leader's alerts", || {
        passes() >= start + 2
    });
    let mails = smtp.mails();
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for mail in &mails {
        ids.entry(mail.header("Subject").unwrap())
            .or_default()
            .insert(mail.header("Message-ID").unwrap());
    }
    assert_eq!(ids.len(), DUE_MAILS, "{ids:?}");
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    assert!(
        mails.len() <= DUE_MAILS + faults.len(),
        "{} mails for {DUE_MAILS} due and {} faults",
        mails.len(),
        faults.len()
    );
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs PostgreSQL and iproute2: make test"
)]
fn replicas_bill_each_point_once_through_crashes_and_a_lost_session() {
    survive(
        "crashes",
        &[Fault::Kill, Fault::EndSessions, Fault::Kill],
        None,
    );
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs PostgreSQL and iproute2: make test"
)]
fn a_frozen_leader_is_replaced_and_does_nothing_when_it_wakes() {
    survive("freeze", &[Fault::Freeze], None);
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs PostgreSQL and iproute2: make test"
)]
fn a_leader_cut_off_the_network_is_replaced_and_does_nothing_when_it_returns() {
    let netns = Netns::new();
    survive("network cut", &[Fault::Cut], Some(&netns));
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs PostgreSQL and iproute2: make test"
)]
fn a_replica_started_before_its_database_waits_for_it() {
    let postgres = Postgres::start();
    let url = postgres.database("waits");
    postgres.stop();
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let env = [
        ("OS_CREDITS_DATABASE_URL", url.as_str()),
        ("OS_CREDITS_LEADER_CHECK_SECONDS", "0.3"),
    ];
    let away = Duration::from_secs(3);
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(away);
            postgres.start_again();
        });
        let service = Service::start_with(
            Command::new(env!("CARGO_BIN_EXE_os-credits")),
            data.path(),
            policies.path(),
            &env,
        );
        // It listened only once the database was back, having said why it
        // waited, and leads.
        assert!(started.elapsed() >= away, "{:?}", started.elapsed());
        let log = service.log();
        assert!(log.contains("waiting for PostgreSQL"), "{log}");
        assert!(log.contains("Connection refused"), "{log}");
        await_until("the replica to lead", || {
            role(&service).as_deref() == Some("leader")
        });
        assert!(post(
            &service,
            "project_vcpu_usage,location_id=1,project_name=waited value=1 1767225600000000000\n"
        ));
    });
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs PostgreSQL and iproute2: make test"
)]
fn a_replica_refused_by_its_database_says_why_at_once() {
    let postgres = Postgres::start();
    let url = postgres
        .database("refuses")
        .replace("/refuses", "/no_such_database");
    let data = tempfile::tempdir().unwrap();
    let policies = policy_dir(&[]);
    let started = Instant::now();
    let stderr = common::serve_stops(
        data.path(),
        policies.path(),
        &[("OS_CREDITS_DATABASE_URL", &url)],
    );
    assert!(
        stderr.contains("cannot open the PostgreSQL ledger") && stderr.contains("no_such_database"),
        "{stderr}"
    );
    assert!(!stderr.contains("waiting for PostgreSQL"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A URL that does not parse is no reason to wait either.
    let started = Instant::now();
    let broken = format!("postgres://postgres@127.0.0.1:{}x/refuses", postgres.port);
    let stderr = common::serve_stops(
        data.path(),
        policies.path(),
        &[("OS_CREDITS_DATABASE_URL", &broken)],
    );
    assert!(
        stderr.contains("cannot open the PostgreSQL ledger")
            && stderr.contains("invalid value for option `port`"),
        "{stderr}"
    );
    assert!(!stderr.contains("waiting for PostgreSQL"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
