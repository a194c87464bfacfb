//! The compose files of `examples/project_usage`, brought up by
//! `podman-compose` as a site would (a copy of the folder, `credits.env`
//! copied from `.default.env`, the de.NBI module in `policies/`, the write
//! credentials made as the files' comments say), on the image `make image`
//! builds and the stack's images `make stack-images` builds from Debian's
//! packages (InfluxDB 1.6, Prometheus, PostgreSQL, nginx):
//! - `docker-compose.yml`: points written to InfluxDB reach
//!   `portal_credits` through the subscription, with its credential, and
//!   the stack sample is billed exactly;
//! - `docker-compose.remote-write.yml`: Prometheus scrapes the usage
//!   exporter (nginx serving a metrics page, the stand-in this test adds)
//!   and remote-writes into `portal_credits`, which bills the increase;
//! - `docker-compose.ha.yml`: two replicas on PostgreSQL behind nginx; the
//!   leader's container stopped, the other replica leads and a write
//!   through nginx is billed.
//!
//! The containers are reached at their addresses on the compose network
//! (podman runs as root here), as the stack's other services reach them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

use common::podman::{
    address, containers_conf, logs, make_readable, ok, podman, stack_images, unique,
};
use common::sample;
use rust_decimal::Decimal;

/// de.NBI's price of a vCPU-hour (`cpu_price`'s default, policies/denbi).
const CPU_PRICE: Decimal = Decimal::ONE;

/// A copy of `examples/project_usage` run as one compose project; taken
/// down with its containers, volumes and network when dropped.
struct Stack {
    project: String,
    dir: tempfile::TempDir,
    files: Vec<String>,
}

impl Stack {
    /// The folder copied, with `credits.env` (the repository's
    /// `.default.env`, unchanged) and the policy folder holding the de.NBI
    /// module, readable by the containers' users.
    fn new(what: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        common::copy_tree(
            &common::repo_file("examples/project_usage"),
            dir.path(),
            &[],
        );
        std::fs::copy(
            common::repo_file(".default.env"),
            dir.path().join("credits.env"),
        )
        .unwrap();
        let policies = dir.path().join("policies");
        std::fs::copy(common::wasm("denbi-policy"), policies.join("denbi.wasm")).unwrap();
        std::fs::write(
            policies.join("policies.toml"),
            "[default]\nmodule = \"denbi.wasm\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("credentials")).unwrap();
        Stack {
            project: unique(what),
            dir,
            files: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `podman-compose -p PROJECT -f FILE... ARGS` in the folder, with the
    /// variables that name the local images.
    fn compose(&self, args: &[&str]) -> Output {
        let mut command = Command::new("podman-compose");
        command
            .current_dir(self.dir.path())
            .env("CONTAINERS_CONF", containers_conf())
            .envs(stack_images().iter().map(|(k, v)| (k, v)))
            .args(["-p", &self.project]);
        for file in &self.files {
            command.args(["-f", file]);
        }
        command.args(args).output().expect("podman-compose runs")
    }

    /// `podman-compose up -d` with `files`, every file in the folder made
    /// readable by the containers' users first.
    fn up(&mut self, files: &[&str]) {
        self.files = files.iter().map(|f| (*f).to_owned()).collect();
        make_readable(self.dir.path());
        let started = Instant::now();
        ok("podman-compose up", self.compose(&["up", "-d"]));
        println!(
            "{}: podman-compose up took {:.1?}",
            self.files.join(" + "),
            started.elapsed()
        );
    }

    /// The container of `service` (podman-compose's naming).
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// `http://ADDRESS:PORT` of `service` on the compose network.
    fn url(&self, service: &str, port: u16) -> String {
        format!("http://{}:{port}", address(&self.container(service)))
    }

    /// podman's filter for what podman-compose made for this project.
    fn label(&self) -> String {
        format!("label=io.podman.compose.project={}", self.project)
    }

    /// The names of the project's containers, running or not.
    fn containers(&self) -> Vec<String> {
        let listed = podman(&[
            "ps",
            "-a",
            "--filter",
            &self.label(),
            "--format",
            "{{.Names}}",
        ]);
        String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the image's HEALTHCHECK passes in `service`'s container
    /// and returns its URL.
    fn healthy(&self, service: &str) -> String {
        let container = self.container(service);
        let started = Instant::now();
        common::await_until(&format!("{container} healthy"), || {
            podman(&["healthcheck", "run", &container]).status.success()
        });
        println!("{service}: healthy {:.1?} after asking", started.elapsed());
        self.url(service, 80)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let containers = self.containers();
        if std::thread::panicking() {
            for name in &containers {
                eprintln!("--- {name}:\n{}", logs(name));
            }
        }
        // The containers first, with their anonymous volumes (the image's
        // VOLUMEs), which `podman-compose down` leaves behind; then `down`
        // for the named volumes, then what is left of them and the network.
        for name in &containers {
            let _ = podman(&["rm", "--force", "--volumes", "--time", "2", name]);
        }
        let _ = self.compose(&["down", "-v"]);
        let volumes = podman(&["volume", "ls", "-q", "--filter", &self.label()]);
        for name in String::from_utf8_lossy(&volumes.stdout).split_whitespace() {
            let _ = podman(&["volume", "rm", "--force", name]);
        }
        let _ = podman(&[
            "network",
            "rm",
            "--force",
            &format!("{}_default", self.project),
        ]);
    }
}

/// POSTs `body` to `url`, with HTTP Basic `user:password` when given.
fn post(url: &str, body: String, credential: Option<(&str, &str)>) -> u16 {
    let mut request = common::http().post(url).body(body);
    if let Some((user, password)) = credential {
        request = request.header("Authorization", common::basic(user, password));
    }
    request.send().map_or(0, |r| r.status().as_u16())
}

fn stats(url: &str) -> serde_json::Value {
    common::get_json(&format!("{url}/stats"))
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs podman and podman-compose: make test"
)]
fn influxdb_subscription_delivers_every_point_to_portal_credits() {
    let mut stack = Stack::new("influx");
    // The subscription's credential, as the compose file's comments say.
    let password = unique("password");
    common::edit(
        &stack.path("influxdb-init/subscription.iql"),
        "CHANGE-ME",
        &password,
    );
    common::htpasswd(
        &stack.path("credentials"),
        "writers.htpasswd",
        &[("influx", &password, None)],
    );
    stack.up(&["docker-compose.yml"]);
    let credits = stack.healthy("portal_credits");
    let influx = stack.url("influxdb", 8086);
    common::await_until("InfluxDB to answer", || {
        common::http()
            .get(format!("{influx}/ping"))
            .send()
            .is_ok_and(|r| r.status().as_u16() == 204)
    });

    // Without the credential, portal_credits refuses a write.
    let lines: Vec<String> = sample::sample().lines().map(str::to_owned).collect();
    assert_eq!(
        post(&format!("{credits}/write"), lines[0].clone(), None),
        401
    );

    // The sample written to InfluxDB (as Prometheus writes into it, in
    // batches) reaches portal_credits and is billed exactly.
    for chunk in lines.chunks(500) {
        let status = post(
            &format!("{influx}/write?db=prometheus"),
            chunk.join("\n") + "\n",
            None,
        );
        assert_eq!(status, 204, "InfluxDB took the write");
    }
    let projects = sample::projects(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    let expected = sample::expected(None);
    common::await_until("the sample's credits through the subscription", || {
        sample::credits_at(&credits, &projects) == expected
    });
    let stats = stats(&credits);
    assert_eq!(
        stats["points"]["received"].as_u64(),
        Some(lines.len() as u64),
        "every point once: {stats}"
    );
    // The one refusal is this test's write without the credential: the
    // subscription's credential was taken every time.
    assert_eq!(
        stats["write_credentials"]["denied"],
        serde_json::json!({"/write": {"missing": 1}}),
        "{stats}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs podman and podman-compose: make test"
)]
fn prometheus_remote_writes_the_exporters_counters_into_portal_credits() {
    let mut stack = Stack::new("remote-write");
    // The credential, as the compose file's comments say: Prometheus'
    // password file, and its user scoped to this Prometheus' site.
    let password = unique("password");
    std::fs::write(stack.path("credentials/prometheus.password"), &password).unwrap();
    common::htpasswd(
        &stack.path("credentials"),
        "writers.htpasswd",
        &[("prometheus", &password, Some("8676"))],
    );
    // Scraped every second rather than 15 s, to keep the test short.
    common::edit(
        &stack.path("prometheus/prometheus.yml"),
        "scrape_interval: 15s",
        "scrape_interval: 1s",
    );
    // The usage exporter (`usage_exporter:8080` in prometheus.yml), stood in
    // for by nginx serving its metrics page from a folder.
    std::fs::create_dir_all(stack.path("exporter/metrics")).unwrap();
    std::fs::write(
        stack.path("exporter/nginx.conf"),
        "server {\n    listen 8080;\n    location = /metrics {\n        \
         alias /srv/metrics/metrics.txt;\n        \
         default_type \"text/plain; version=0.0.4\";\n    }\n}\n",
    )
    .unwrap();
    std::fs::write(
        stack.path("docker-compose.exporter.yml"),
        "services:\n  usage_exporter:\n    image: ${NGINX_IMAGE}\n    volumes:\n      \
         - ./exporter/nginx.conf:/etc/nginx/conf.d/default.conf:ro\n      \
         - ./exporter/metrics:/srv/metrics:ro\n",
    )
    .unwrap();
    let before = [
        ("alpha", Decimal::new(100, 0)),
        ("beta", Decimal::new(40, 0)),
    ];
    let after = [
        ("alpha", Decimal::new(1125, 1)),
        ("beta", Decimal::new(4325, 2)),
    ];
    let folder = stack.path("exporter/metrics");
    let publish = |values: &[(&str, Decimal)]| {
        let mut page = String::from("# TYPE project_vcpu_usage counter\n");
        for (i, (project, value)) in values.iter().enumerate() {
            page.push_str(&format!(
                "project_vcpu_usage{{domain_name=\"elixir\",location=\"site-a\",location_id=\"8676\",\
                 project_id=\"{i:032x}\",project_name=\"{project}\"}} {value}\n"
            ));
        }
        std::fs::write(folder.join(".metrics.txt"), page).unwrap();
        make_readable(&folder.join(".metrics.txt"));
        std::fs::rename(folder.join(".metrics.txt"), folder.join("metrics.txt")).unwrap();
    };
    publish(&before);
    stack.up(&[
        "docker-compose.remote-write.yml",
        "docker-compose.exporter.yml",
    ]);
    let credits = stack.healthy("portal_credits");

    // The first samples are each series' baseline; the next ones are billed.
    common::await_until("both series' baselines through remote write", || {
        stats(&credits)["keys"].as_u64() == Some(2)
    });
    publish(&after);
    let expected: Vec<(String, Decimal)> = before
        .iter()
        .zip(&after)
        .map(|((project, old), (_, new))| ((*project).to_owned(), (new - old) * CPU_PRICE))
        .collect();
    println!("expected: {expected:?}");
    common::await_until("the increase billed through remote write", || {
        expected
            .iter()
            .all(|(project, credit)| sample::credits_of(&credits, project) == *credit)
    });
    let stats = stats(&credits);
    assert_eq!(
        stats["write_credentials"]["denied"],
        serde_json::json!({}),
        "{stats}"
    );
    assert_eq!(
        stats["write_credentials"]["refused_points"],
        serde_json::json!({}),
        "{stats}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs podman and podman-compose: make test"
)]
fn ha_the_other_replica_leads_when_the_leaders_container_stops() {
    let mut stack = Stack::new("ha");
    let password = unique("password");
    common::htpasswd(
        &stack.path("credentials"),
        "writers.htpasswd",
        &[("influx", &password, None)],
    );
    stack.up(&["docker-compose.ha.yml"]);
    let replicas = ["portal_credits_a", "portal_credits_b"].map(|r| stack.healthy(r));
    let nginx = stack.url("portal_credits", 80);
    let role = |url: &str| stats(url)["role"].as_str().unwrap_or_default().to_owned();
    let mut leader = None;
    common::await_until("one leader and one follower", || {
        let roles = replicas.each_ref().map(|url| role(url));
        leader = roles.iter().position(|r| r == "leader");
        let followers = roles.iter().filter(|r| *r == "follower").count();
        leader.is_some() && followers == 1
    });
    let leader = leader.unwrap_or_default();
    let follower = 1 - leader;
    println!(
        "leader: {}",
        stack.container(["portal_credits_a", "portal_credits_b"][leader])
    );

    // The stack's writes go to nginx; either replica takes them.
    let hour = 3_600_000_000_000_i64;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    let point = |value: &str, at: i64| {
        format!("project_vcpu_usage,location_id=8676,project_name=ha-project value={value} {at}\n")
    };
    let write = |body: String| {
        post(
            &format!("{nginx}/write?db=prometheus"),
            body,
            Some(("influx", &password)),
        )
    };
    let values = ["10", "12", "15.5"].map(|v| v.parse::<Decimal>().unwrap());
    let status = write(point("10", now - 3 * hour) + &point("12", now - 2 * hour));
    assert_eq!(status, 204);
    let first = (values[1] - values[0]) * CPU_PRICE;
    common::await_until("the first write billed", || {
        sample::credits_of(&nginx, "ha-project") == first
    });

    // The leader's container stops (SIGTERM): it exits 0 and the other
    // replica takes the lead.
    let stopped = stack.container(["portal_credits_a", "portal_credits_b"][leader]);
    let started = Instant::now();
    ok("podman stop", podman(&["stop", "--time", "10", &stopped]));
    let exit = ok(
        "podman inspect",
        podman(&["inspect", &stopped, "--format", "{{.State.ExitCode}}"]),
    );
    assert_eq!(exit, "0", "{}", logs(&stopped));
    common::await_until("the other replica to lead", || {
        role(&replicas[follower]) == "leader"
    });
    println!(
        "failover: the other replica leads {:.1?} after the stop",
        started.elapsed()
    );

    // A write through nginx is billed by the new leader.
    assert_eq!(write(point("15.5", now - hour)), 204);
    let total = (values[2] - values[0]) * CPU_PRICE;
    common::await_until("the write after the failover billed", || {
        sample::credits_of(&nginx, "ha-project") == total
    });
    assert_eq!(sample::credits_of(&replicas[follower], "ha-project"), total);
}
