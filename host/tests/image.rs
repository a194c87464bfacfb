//! The image, built by `make image` and run by a container engine
//! (podman, as root with the runc runtime and the limits of
//! `target/containers.conf` that scripts/image.sh writes):
//! - it runs as its non-root user and its HEALTHCHECK turns healthy;
//! - the stack sample posted to it is billed exactly;
//! - its data survives `podman restart` and a new container on the volume;
//! - a module dropped into the mounted policy folder goes live;
//! - `podman stop` (SIGTERM) while a client keeps posting: every write
//!   answered 204 is in the ledger after a restart, and the container exits
//!   within 10 s with status 0;
//! - without `--sysctl net.ipv4.ip_unprivileged_port_start=0` it stops at
//!   start and names that setting.
//!
//! It prints the image's size and the time from `podman run` to healthy.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::podman::{image, ok, podman, unique};
use common::sample;
use rust_decimal::Decimal;

/// A podman volume, removed when dropped.
struct Volume(String);

impl Volume {
    fn new() -> Volume {
        let name = unique("data");
        ok("podman volume create", podman(&["volume", "create", &name]));
        Volume(name)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = podman(&["volume", "rm", "-f", &self.0]);
    }
}

/// A running container of the image, removed when dropped.
struct Container {
    name: String,
    url: String,
}

impl Container {
    /// `podman run` with the ledger on `volume` and the policy folder
    /// `policies` mounted; returns once it is healthy, with the time that took.
    fn run(volume: &Volume, policies: &Path) -> (Container, Duration) {
        let name = unique("service");
        let data = format!("{}:/var/lib/os-credits", volume.0);
        let folder = format!("{}:/etc/os-credits/policies", policies.display());
        let started = Instant::now();
        ok(
            "podman run",
            podman(&[
                "run",
                "--detach",
                "--name",
                &name,
                // Docker lets an unprivileged process bind port 80 by this
                // sysctl; podman needs it asked for (README, Deploy).
                "--sysctl",
                "net.ipv4.ip_unprivileged_port_start=0",
                "--publish",
                "127.0.0.1::80",
                "--volume",
                &data,
                "--volume",
                &folder,
                image(),
            ]),
        );
        let port = ok("podman port", podman(&["port", &name, "80"]));
        let url = format!("http://{}", port.lines().next().unwrap_or_default());
        let container = Container { name, url };
        let healthy = container.await_healthy(started);
        (container, healthy)
    }

    /// Waits (60 s at most) until `podman healthcheck run` passes.
    fn await_healthy(&self, started: Instant) -> Duration {
        common::await_until("the container's HEALTHCHECK", || {
            podman(&["healthcheck", "run", &self.name]).status.success()
        });
        started.elapsed()
    }

    fn exec(&self, command: &[&str]) -> String {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(command);
        ok("podman exec", podman(&args))
    }

    fn write(&self, body: &str) -> reqwest::StatusCode {
        common::http()
            .post(format!("{}/write?db=portal&precision=ns", self.url))
            .body(body.to_owned())
            .send()
            .map(|r| r.status())
            .unwrap_or(reqwest::StatusCode::BAD_GATEWAY)
    }

    fn credits(&self, project: &str) -> Decimal {
        sample::credits_of(&self.url, project)
    }

    fn credits_of(&self, projects: &[String]) -> BTreeMap<String, Decimal> {
        sample::credits_at(&self.url, projects)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--volumes", "--time", "2", &self.name]);
    }
}

/// The policy folder as shipped: the de.NBI module and the mapping.
fn policy_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::wasm("denbi-policy"), dir.path().join("denbi.wasm")).unwrap();
    std::fs::write(
        dir.path().join("policies.toml"),
        "[default]\nmodule = \"denbi.wasm\"\n",
    )
    .unwrap();
    // The container's user reads it.
    common::podman::make_readable(dir.path());
    dir
}

/// Writes `bytes` to `dir/name` as an operator deploys: a temporary name,
/// then a rename.
fn deploy(dir: &Path, name: &str, bytes: &[u8]) {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs podman: make test")]
fn the_image_runs_bills_keeps_its_data_reloads_and_stops_cleanly() {
    let image = image();
    let size = ok(
        "podman image inspect",
        podman(&["image", "inspect", image, "--format", "{{.Size}}"]),
    );
    println!(
        "image size: {:.0} MB",
        size.parse::<f64>().unwrap_or_default() / 1e6
    );
    let volume = Volume::new();
    let policies = policy_folder();
    let (first, healthy) = Container::run(&volume, policies.path());
    println!("podman run to healthy: {healthy:.1?}");

    // Its own user, not root, in the container and as the service's process.
    assert_eq!(first.exec(&["id", "-u"]), "10001");
    let status = first.exec(&["cat", "/proc/1/status"]);
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(
        uid.split_whitespace().skip(1).all(|id| id == "10001"),
        "{uid}"
    );

    // The stack sample, billed exactly.
    let text = std::fs::read_to_string(common::repo_file(sample::SAMPLE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(500) {
        let status = first.write(&(chunk.join("\n") + "\n"));
        assert_eq!(status.as_u16(), 204);
    }
    let projects = sample::projects(&lines);
    let expected = sample::expected(None);
    assert_eq!(first.credits_of(&projects), expected);

    // Its data survives a restart and a new container on the volume.
    ok("podman restart", podman(&["restart", &first.name]));
    first.await_healthy(Instant::now());
    assert_eq!(first.credits_of(&projects), expected, "after a restart");
    drop(first);
    let (second, _) = Container::run(&volume, policies.path());
    assert_eq!(second.credits_of(&projects), expected, "in a new container");

    // A module dropped into the mounted folder goes live.
    let tariff = std::fs::read(common::wasm("tariff-policy")).unwrap();
    deploy(policies.path(), "tariff.wasm", &tariff);
    deploy(
        policies.path(),
        "policies.toml",
        b"[default]\nmodule = \"tariff.wasm\"\n",
    );
    common::await_until("the dropped tariff module to go live", || {
        let answer = common::get_json(&format!("{}/api/policies", second.url));
        answer["active"]
            .as_array()
            .is_some_and(|all| all.iter().any(|p| p["name"] == "tariff"))
    });

    // SIGTERM while a client keeps posting: every 204 is kept.
    let stop = AtomicBool::new(false);
    let (accepted, refused, stopped_after, exit) = std::thread::scope(|scope| {
        let poster = scope.spawn(|| {
            let (mut accepted, mut refused) = (Vec::new(), 0usize);
            let base: i64 = 1_767_225_600_000_000_000;
            for i in 0.. {
                if stop.load(Ordering::SeqCst) && refused > 0 {
                    break;
                }
                let body = format!(
                    "project_vcpu_usage,location_id=1,project_name=load-{i} value=0 {base}\n\
                     project_vcpu_usage,location_id=1,project_name=load-{i} value=1 {}\n",
                    base + 3_600_000_000_000
                );
                match second.write(&body).as_u16() {
                    204 => accepted.push(i),
                    _ => refused += 1,
                }
                if refused > 50 {
                    break;
                }
            }
            (accepted, refused)
        });
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let output = podman(&["stop", "--time", "10", &second.name]);
        let stopped_after = started.elapsed();
        ok("podman stop", output);
        stop.store(true, Ordering::SeqCst);
        let (accepted, refused) = poster.join().unwrap();
        let exit = ok(
            "podman inspect",
            podman(&["inspect", &second.name, "--format", "{{.State.ExitCode}}"]),
        );
        (accepted, refused, stopped_after, exit)
    });
    println!(
        "podman stop under load: {} writes answered 204, {refused} refused; stopped in {stopped_after:.1?}, exit status {exit}",
        accepted.len()
    );
    assert!(!accepted.is_empty(), "the client posted before the stop");
    assert!(refused > 0, "the stop landed while the client was posting");
    assert!(stopped_after < Duration::from_secs(10), "{stopped_after:?}");
    assert_eq!(exit, "0", "SIGTERM ends the service with status 0");
    let log = common::podman::logs(&second.name);
    assert!(log.contains("stopped cleanly"), "{log}");
    drop(second);

    let (third, _) = Container::run(&volume, policies.path());
    for i in &accepted {
        assert_eq!(
            third.credits(&format!("load-{i}")),
            Decimal::ONE,
            "write {i} was answered 204 before the stop"
        );
    }
    assert_eq!(third.credits_of(&projects), expected);
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs podman: make test")]
fn without_the_port_sysctl_podman_says_what_to_set() {
    // Podman, unlike docker, keeps unprivileged ports at 1024 and up: the
    // service stops at start and names the setting.
    let name = unique("no-sysctl");
    let output = podman(&["run", "--name", &name, image()]);
    let log = common::podman::logs(&name);
    let _ = podman(&["rm", "--force", "--volumes", &name]);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("cannot listen on 0.0.0.0:80")
            && log.contains("--sysctl net.ipv4.ip_unprivileged_port_start=0")
            && log.contains("Permission denied"),
        "{log}"
    );
}
