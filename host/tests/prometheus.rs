//! Ingest straight from a real Prometheus (Debian's `prometheus`): it
//! scrapes a small exporter serving growing counters shaped like the
//! project usage exporter's, adds `location_id` as an external label and
//! remote-writes to the real `os-credits` binary. The credits of every
//! project must equal a reference computed from the samples Prometheus
//! itself stored (read back through its HTTP API), and still after
//! Prometheus was restarted mid-run. Writes require a credential, which
//! Prometheus sends from its `remote_write` `basic_auth`.
//!
//! Needs `prometheus` (`make test` installs Debian's package, see
//! `scripts/test-programs.sh`; `PROMETHEUS` overrides the binary). Without
//! it this test fails and says so.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rust_decimal::Decimal;
use serde_json::Value;

const PROJECTS: usize = 4;
const SITE: &str = "8676";

fn prometheus_binary() -> PathBuf {
    common::program("PROMETHEUS", &["/usr/bin/prometheus"], "prometheus")
}

/// The exporter: every project's vCPU- and RAM-hours, growing by a
/// project-specific step every second scrape (the exporter refreshes less
/// often than Prometheus scrapes) until frozen.
struct Exporter {
    port: u16,
    scrapes: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
}

impl Exporter {
    fn start() -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let scrapes = Arc::new(AtomicU64::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let (count, stop) = (scrapes.clone(), frozen.clone());
        std::thread::spawn(move || {
            let mut refreshes = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                if !stop.load(Ordering::SeqCst) && count.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
                    refreshes += 1;
                }
                let body = Exporter::page(refreshes);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Exporter {
            port,
            scrapes,
            frozen,
        }
    }

    /// The metrics page after `refreshes` refreshes (floats as the Go
    /// exporter prints them: 0.1 steps give values like 100.30000000000001).
    fn page(refreshes: u64) -> String {
        let mut page =
            String::from("# HELP project_vcpu_usage vCPU-hours\n# TYPE project_vcpu_usage gauge\n");
        let mut ram =
            String::from("# HELP project_mb_usage RAM GiB-hours\n# TYPE project_mb_usage gauge\n");
        for project in 0..PROJECTS {
            let labels = format!(
                "domain_id=\"d{project}\",domain_name=\"elixir\",project_id=\"{project:032x}\",project_name=\"prom_{project}\""
            );
            let (mut cpu, mut mem) = (100.0_f64, 2048.0_f64);
            for _ in 0..refreshes {
                cpu += 0.1 * (project + 1) as f64;
                mem += 0.75 * (project + 1) as f64;
            }
            page.push_str(&format!("project_vcpu_usage{{{labels}}} {cpu}\n"));
            ram.push_str(&format!("project_mb_usage{{{labels}}} {mem}\n"));
        }
        page + &ram
    }
}

/// A Prometheus server with its own data folder.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(config: &Path, data: &Path, port: u16) -> Prometheus {
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/ready");
        common::await_until("Prometheus to be ready", || {
            common::http()
                .get(&ready)
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        Prometheus { child, url }
    }

    /// Stops it as `systemctl stop` would (SIGTERM), waiting for the exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Every raw sample Prometheus stored of `metric`, per project, oldest
    /// first, as the exact text it serves.
    fn stored(&self, metric: &str) -> BTreeMap<String, Vec<String>> {
        // `{metric}[1h]`: a range selector answers the raw samples.
        let url = format!("{}/api/v1/query?query={metric}%5B1h%5D", self.url);
        let answer: Value = common::http()
            .get(&url)
            .send()
            .and_then(|r| r.json())
            .expect("a query answer");
        let mut series = BTreeMap::new();
        for result in answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let project = result["metric"]["project_name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let values: Vec<String> = result["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v[1].as_str().unwrap().to_owned())
                .collect();
            series.insert(project, values);
        }
        series
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the billing rules give per project for Prometheus' stored samples
/// at 1 credit per vCPU-hour and 0.3 per GiB-hour (first sample a
/// baseline, rises billed, equal values nothing; exact decimals).
fn reference(prometheus: &Prometheus) -> BTreeMap<String, Decimal> {
    let mut credits: BTreeMap<String, Decimal> = BTreeMap::new();
    for (metric, price) in [
        ("project_vcpu_usage", Decimal::ONE),
        ("project_mb_usage", Decimal::new(3, 1)),
    ] {
        for (project, values) in prometheus.stored(metric) {
            let values: Vec<Decimal> = values.iter().map(|v| v.parse().unwrap()).collect();
            let billed: Decimal = values
                .windows(2)
                .filter(|w| w[1] > w[0])
                .map(|w| (w[1] - w[0]) * price)
                .sum();
            *credits.entry(project).or_default() += billed;
        }
    }
    credits
}

fn billed(service: &common::Service) -> BTreeMap<String, Decimal> {
    (0..PROJECTS)
        .map(|p| {
            let project = format!("prom_{p}");
            let (status, body) = service.get(&format!("/api/current_credits/{project}"));
            let credits = if status.is_success() {
                let json: Value = serde_json::from_str(&body).unwrap();
                json["current_credits_exact"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            } else {
                Decimal::ZERO
            };
            (project, credits)
        })
        .collect()
}

/// Freezes the exporter until os-credits bills exactly what Prometheus
/// stored (then lets it grow again); returns the credits.
fn converge(
    exporter: &Exporter,
    service: &common::Service,
    prometheus: &Prometheus,
) -> BTreeMap<String, Decimal> {
    exporter.frozen.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::await_until("os-credits to bill what Prometheus stored", || {
            last = (billed(service), reference(prometheus));
            last.0 == last.1 && last.1.values().all(|c| *c > Decimal::ZERO)
        })
    }));
    assert!(
        converged.is_ok(),
        "billed {:?}\nreference {:?}\n{}",
        last.0,
        last.1,
        service.log()
    );
    println!(
        "converged {:?} after freezing: {:?}",
        started.elapsed(),
        last.0
    );
    exporter.frozen.store(false, Ordering::SeqCst);
    last.0
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs Prometheus: make test")]
fn a_real_prometheus_remote_writes_and_the_credits_equal_its_stored_samples() {
    prometheus_binary();
    let (data, policies) = (tempfile::tempdir().unwrap(), common::policy_dir(&[]));
    let folder = tempfile::tempdir().unwrap();
    // Writes need a credential: Prometheus sends its `basic_auth`.
    let users = common::htpasswd(
        folder.path(),
        "users",
        &[("prometheus", "remote-write-secret", Some(SITE))],
    );
    let service = common::Service::start(
        data.path(),
        policies.path(),
        &[("OS_CREDITS_WRITE_USERS_FILE", users.to_str().unwrap())],
    );
    let exporter = Exporter::start();
    let config = folder.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:
  scrape_interval: 1s
  evaluation_interval: 1s
  external_labels:
    location_id: \"{SITE}\"
    replica: a
scrape_configs:
  - job_name: project_usages
    static_configs:
      - targets: [\"127.0.0.1:{exporter}\"]
remote_write:
  - url: {service}/api/v1/write
    basic_auth:
      username: prometheus
      password: remote-write-secret
    write_relabel_configs:
      - source_labels: [__name__]
        regex: project_vcpu_usage|project_mb_usage
        action: keep
      - regex: replica
        action: labeldrop
    queue_config:
      max_shards: 2
      max_samples_per_send: 2000
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
",
            exporter = exporter.port,
            service = service.url,
        ),
    )
    .unwrap();
    let tsdb = folder.path().join("data");
    let port = free_port();
    let mut prometheus = Prometheus::start(&config, &tsdb, port);
    common::await_until("twenty scrapes", || {
        exporter.scrapes.load(Ordering::SeqCst) >= 20
    });
    let before = converge(&exporter, &service, &prometheus);
    // Restarted mid-run: what it stored stays, new samples follow.
    prometheus.stop();
    let prometheus = Prometheus::start(&config, &tsdb, port);
    let restarted_at = exporter.scrapes.load(Ordering::SeqCst);
    common::await_until("twenty more scrapes", || {
        exporter.scrapes.load(Ordering::SeqCst) >= restarted_at + 20
    });
    let after = converge(&exporter, &service, &prometheus);
    for (project, credits) in &after {
        assert!(
            *credits > before[project],
            "{project}: nothing billed after the restart"
        );
    }
    assert_eq!(after.len(), PROJECTS);
    // The stale markers Prometheus writes when it stops scraping were
    // skipped, never billed or refused.
    let stats = service.stats();
    assert_eq!(stats["points"]["rejected"], 0, "{stats}");
    // Every remote write carried the credential, and its site was allowed.
    let credentials = &stats["write_credentials"];
    assert_eq!(credentials["required"], true, "{stats}");
    assert_eq!(credentials["denied"], serde_json::json!({}), "{stats}");
    assert_eq!(
        credentials["refused_points"],
        serde_json::json!({}),
        "{stats}"
    );
}
