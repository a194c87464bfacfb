//! High availability: two replicas on a real PostgreSQL (started by the
//! test), the sample posted to either at random and some chunks to both,
//! the leader killed with SIGKILL twice mid-ingest and restarted. Perun
//! (the fake) ends exactly at the expected credits, each threshold mail is
//! sent under one Message-ID, both replicas are up at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::fake_perun::FakePerun;
use common::postgres::Postgres;
use common::smtp::SmtpSink;
use common::{Service, await_until, http, policy_dir, repo_file};
use reqwest::StatusCode;
use serde_json::json;

struct Cluster<'a> {
    url: String,
    perun: &'a FakePerun,
    smtp_port: String,
    policies: tempfile::TempDir,
}

impl Cluster<'_> {
    fn start(&self, name: &str) -> Service {
        let data = tempfile::tempdir().unwrap();
        let mut env = self.perun.env();
        env.extend([
            ("OS_CREDITS_DATABASE_URL", self.url.clone()),
            ("OS_CREDITS_LEADER_CHECK_SECONDS", "0.3".into()),
            ("OS_CREDITS_REPLICA_NAME", name.into()),
            ("MAIL_SMTP_SERVER", "127.0.0.1".into()),
            ("MAIL_SMTP_PORT", self.smtp_port.clone()),
            ("MAIL_NOT_STARTTLS", "true".into()),
            ("MAIL_FROM", "credits@cloud.example".into()),
            ("NOTIFICATION_TO_OVERWRITE", "ops@cloud.example".into()),
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Service::start(data.path(), self.policies.path(), &env)
    }
}

fn role(service: &Service) -> String {
    service.stats()["role"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn two_replicas_bill_each_point_once_through_two_leader_crashes() {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut random = fastrand::Rng::with_seed(seed);
    let postgres = Postgres::start();
    let perun = FakePerun::start();
    for (i, name) in common::expected_published().keys().enumerate() {
        perun.group(name, 1000 + i as i64, "150");
    }
    let smtp = SmtpSink::start();
    let cluster = Cluster {
        url: postgres.database("replicas"),
        perun: &perun,
        smtp_port: smtp.port.to_string(),
        policies: policy_dir(&[]),
    };
    let mut replicas = [cluster.start("a"), cluster.start("b")];
    await_until("a leader", || replicas.iter().any(|r| role(r) == "leader"));
    assert_eq!(
        replicas.iter().filter(|r| role(r) == "leader").count(),
        1,
        "exactly one leader"
    );

    let sample = std::fs::read_to_string(repo_file("examples/stack-sample.lp")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    let chunks: Vec<String> = lines
        .chunks(lines.len().div_ceil(60))
        .map(|c| c.join("\n"))
        .collect();
    let post = |service: &Service, chunk: &str| -> bool {
        http()
            .post(service.at("/write"))
            .body(chunk.to_owned())
            .send()
            .is_ok_and(|r| r.status() == StatusCode::NO_CONTENT)
    };
    let kills = [chunks.len() / 3, 2 * chunks.len() / 3];
    let mut killed = 0;
    for (index, chunk) in chunks.iter().enumerate() {
        if kills.contains(&index) {
            // The leader dies mid-ingest, is restarted, and follows.
            let leader = replicas.iter().position(|r| role(r) == "leader").unwrap();
            replicas[leader].kill9();
            let name = if leader == 0 { "a" } else { "b" };
            replicas[leader] = cluster.start(name);
            killed += 1;
        }
        // To either at random; every fifth chunk to both.
        let first = random.usize(0..2);
        let mut delivered = post(&replicas[first], chunk);
        if index % 5 == 0 || !delivered {
            delivered |= post(&replicas[1 - first], chunk);
        }
        // A replica that is down for a moment: the sender retries.
        while !delivered {
            std::thread::sleep(Duration::from_millis(100));
            delivered = replicas.iter().any(|r| post(r, chunk));
        }
    }
    assert_eq!(killed, 2);
    let expected = common::expected_published();
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        await_until("Perun to hold the exact credits", || {
            perun.published() == expected
        })
    }));
    assert!(
        converged.is_ok(),
        "Perun {:?}\nexpected {expected:?}\n{}\n---\n{}\n---\n{}",
        perun.published(),
        replicas[0].stats(),
        replicas[0].log(),
        replicas[1].log()
    );
    // The inbox is drained and exactly one replica leads.
    await_until("the inbox drained", || {
        replicas
            .iter()
            .all(|r| r.stats()["inbox_depth"] == json!(0))
    });
    assert_eq!(replicas.iter().filter(|r| role(r) == "leader").count(), 1);
    // Both answer, and read the same credits from the database.
    for replica in &replicas {
        assert_eq!(replica.get("/ping").1, "Pong");
        let current = replica.get_json("/api/current_credits/os_credits_0");
        assert_eq!(current["current_credits"], json!(167.80));
    }
    // Each threshold mail once (a resend after a crash keeps its id).
    let due = 4;
    await_until("every threshold mail", || {
        let subjects: BTreeSet<String> = smtp
            .mails()
            .iter()
            .filter_map(|m| m.header("Subject"))
            .collect();
        subjects.len() == due
    });
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for mail in smtp.mails() {
        ids.entry(mail.header("Subject").unwrap())
            .or_default()
            .insert(mail.header("Message-ID").unwrap());
    }
    assert_eq!(ids.len(), due, "{ids:?}");
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
}
