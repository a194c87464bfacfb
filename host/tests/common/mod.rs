//! Shared helpers of the integration tests: building the policies (and the
//! hostile fixtures) to Wasm, and finding the files of the repository.
#![allow(dead_code)]

pub mod fake_perun;
pub mod netns;
pub mod podman;
pub mod postgres;
pub mod sample;
pub mod smtp;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every policy package the tests load, built in one cargo call.
const POLICY_PACKAGES: [&str; 4] = [
    "denbi-policy",
    "tariff-policy",
    "hostile-policy",
    "contract-v1-policy",
];

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// A file of the repository, by its path from the root.
pub fn repo_file(path: &str) -> PathBuf {
    root().join(path)
}

/// Where cargo builds: `CARGO_TARGET_DIR`, or `target` in the repository.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A client posting to `/write` without pause from a thread of its own:
/// each round raises `project_vcpu_usage` of 20 projects `PREFIX_0..19` at
/// site 8676 by 1, so every point after a key's first is billed.
pub struct Poster {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    posted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poster {
    /// Starts posting to the service at `url`, round `n` at `n` seconds
    /// after 1970 (before any price change a test makes).
    pub fn start(url: &str, prefix: &str) -> Poster {
        Poster::posting(url, prefix, false)
    }

    /// Starts posting with the clock's time as the points' timestamps, so
    /// that a price change takes effect for the points after it.
    pub fn start_now(url: &str, prefix: &str) -> Poster {
        Poster::posting(url, prefix, true)
    }

    fn posting(url: &str, prefix: &str, now: bool) -> Poster {
        use std::sync::atomic::Ordering;
        let poster = Poster {
            stop: Default::default(),
            posted: Default::default(),
            failed: Default::default(),
            thread: None,
        };
        let (stop, posted, failed) = (
            poster.stop.clone(),
            poster.posted.clone(),
            poster.failed.clone(),
        );
        let (url, prefix) = (format!("{url}/write"), prefix.to_owned());
        let thread = std::thread::spawn(move || {
            let client = http();
            let mut step: i64 = 0;
            let mut at: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                step += 1;
                at = if now {
                    let clock = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
                    clock.max(at + 1)
                } else {
                    step * 1_000_000_000
                };
                let body: String = (0..20)
                    .map(|p| {
                        format!(
                            "project_vcpu_usage,location_id=8676,project_name={prefix}_{p} value={step} {at}\n"
                        )
                    })
                    .collect();
                match client.post(&url).body(body).send() {
                    Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => {
                        posted.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Poster {
            thread: Some(thread),
            ..poster
        }
    }

    /// Writes answered 204 so far.
    pub fn posted(&self) -> usize {
        self.posted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes refused or unanswered so far.
    pub fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` further writes were answered 204, or
    /// one failed.
    pub fn await_more(&self, more: usize) {
        let target = self.posted() + more;
        await_until("more writes answered", || {
            self.posted() >= target || self.failed() > 0
        });
    }

    /// Stops posting; the writes answered 204 and the failed ones.
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the poster thread");
        }
        (self.posted(), self.failed())
    }
}

/// `examples/stack-sample.expected.json`: the exact credits per project.
pub fn expected_credits() -> std::collections::BTreeMap<String, rust_decimal::Decimal> {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/stack-sample.expected.json"))
            .expect("the expected credits"),
    )
    .expect("JSON");
    expected["projects"]
        .as_object()
        .expect("projects")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("text").parse().expect("decimal"),
            )
        })
        .collect()
}

/// The sample's projects that are Perun groups (all but `unregistered-*`)
/// with their expected credits rounded as published.
pub fn expected_published() -> std::collections::BTreeMap<String, String> {
    expected_credits()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("unregistered"))
        .map(|(name, exact)| (name, os_credits::credits::round(exact, 2).to_string()))
        .collect()
}

/// Clears what `cargo test` sets for a test process (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...) from a command that runs cargo: build
/// scripts that read them (ring's, via `rerun-if-env-changed`) would
/// otherwise see another environment than `make` gave them and rebuild
/// half the dependency tree.
pub fn outside_cargo_test(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            command.env_remove(key.as_ref());
        }
    }
    command
}

/// The built module of `package` (e.g. `denbi-policy`), building all
/// policy packages for `wasm32-wasip2` once per test process.
pub fn wasm(package: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // The wasm32-wasip2 target of rust-toolchain.toml, added to the
        // toolchain running the tests (RUSTUP_TOOLCHAIN, set by rustup's
        // cargo) where it is missing, so that `cargo test` needs nothing
        // but rustup. Without rustup, the build below says what is missing.
        let _ = Command::new("rustup")
            .current_dir(root())
            .args(["target", "add", "wasm32-wasip2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        outside_cargo_test(&mut command);
        command.current_dir(root()).args([
            "build",
            "--profile",
            "policy",
            "--quiet",
            "--target",
            "wasm32-wasip2",
        ]);
        for package in POLICY_PACKAGES {
            command.args(["-p", package]);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the policies to Wasm failed");
    });
    let path = target_dir()
        .join("wasm32-wasip2/policy")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The built component of the Python policy (or fixture) `name` (e.g.
/// `denbi-python`): `make python-policies` once per test process, which
/// rebuilds only what changed.
pub fn python_wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = outside_cargo_test(&mut Command::new("make"))
            .current_dir(root())
            .args(["-s", "python-policies"])
            // Not a sub-make of whatever make runs the tests.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .status()
            .expect("make runs");
        assert!(status.success(), "building the Python policies failed");
    });
    let path = root()
        .join("target/python-wasm")
        .join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Replaces `from` by `to` in the file `path`, which holds it exactly
/// once.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read the file to edit");
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} in {}:\n{text}",
        path.display()
    );
    std::fs::write(path, text.replace(from, to)).expect("write the edited file");
}

/// Copies `from` (a file or a folder, recursively) to `to`, leaving out
/// folders named in `skipped`; symlinks become the files they point to.
pub fn copy_tree(from: &Path, to: &Path, skipped: &[&str]) {
    let meta = std::fs::symlink_metadata(from).expect("the source exists");
    if meta.is_dir() {
        std::fs::create_dir_all(to).expect("create the copy's folder");
        for entry in std::fs::read_dir(from).expect("read the source folder") {
            let entry = entry.expect("a folder entry");
            let name = entry.file_name();
            if skipped.iter().any(|s| name == *s) {
                continue;
            }
            copy_tree(&entry.path(), &to.join(name), skipped);
        }
    } else {
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("create the parent");
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// Runs the `os-credits` binary with `args` in `dir`, with `env` added
/// (and no ledger URL inherited from the test's own environment): what it
/// printed and how it ended.
pub fn os_credits_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .current_dir(dir)
        .args(args)
        .env_remove("OS_CREDITS_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .expect("os-credits runs")
}

/// [`os_credits_in`] at the repository's root, with no extra environment.
pub fn os_credits(args: &[&str]) -> std::process::Output {
    os_credits_in(&root(), args, &[])
}

/// Runs `os-credits serve` on `data_dir` and `policy_dir` with extra
/// environment `env`, expecting it to stop at start (a setting it refuses,
/// a database it cannot use); returns what it wrote to standard error.
pub fn serve_stops(data_dir: &Path, policy_dir: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .arg("serve")
        .env("CREDITS_HOST", "127.0.0.1")
        .env("CREDITS_PORT", "0")
        .env("OS_CREDITS_DATA_DIR", data_dir)
        .env("OS_CREDITS_POLICY_DIR", policy_dir)
        .envs(env.iter().copied())
        .output()
        .expect("os-credits serve runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "serve did not stop: {stderr}");
    stderr
}

/// The real `os-credits serve`, on a free port of 127.0.0.1.
pub struct Service {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Service {
    /// Starts the service on `data_dir` and `policy_dir` with extra
    /// environment `env`, and waits until it listens.
    ///
    /// With `OS_CREDITS_TEST_STORE=postgres` the service keeps its ledger
    /// in a database of its own on a real PostgreSQL (one server per test
    /// process, one database per data folder, so a restart finds its
    /// ledger), and is started once it leads: the end-to-end tests run
    /// against each store.
    pub fn start(data_dir: &Path, policy_dir: &Path, env: &[(&str, &str)]) -> Service {
        let command = Command::new(env!("CARGO_BIN_EXE_os-credits"));
        let Some(url) = postgres_store(data_dir) else {
            return Service::start_with(command, data_dir, policy_dir, env);
        };
        let mut env = env.to_vec();
        env.push(("OS_CREDITS_DATABASE_URL", &url));
        env.push(("OS_CREDITS_LEADER_CHECK_SECONDS", "0.1"));
        let service = Service::start_with(command, data_dir, policy_dir, &env);
        await_until("the service to lead", || {
            get_json(&service.at("/stats"))["role"] == "leader"
        });
        service
    }

    /// Starts `command` (the binary, or something that ends up exec'ing
    /// it) with `serve` and the test settings.
    pub fn start_with(
        mut command: Command,
        data_dir: &Path,
        policy_dir: &Path,
        env: &[(&str, &str)],
    ) -> Service {
        use std::io::{BufRead, BufReader};
        command
            .arg("serve")
            .env("CREDITS_HOST", "127.0.0.1")
            .env("CREDITS_PORT", "0")
            .env("OS_CREDITS_DATA_DIR", data_dir)
            .env("OS_CREDITS_POLICY_DIR", policy_dir)
            .env("OS_CREDITS_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("os-credits serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.split("listening on ").nth(1) {
                    let _ = tx.send(address.trim().to_owned());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(address) => Service {
                child,
                url: format!("http://{address}"),
                log,
            },
            Err(_) => {
                let _ = child.kill();
                panic!("the service did not start:\n{}", log.lock().unwrap());
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the service logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The URL of `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits up to `limit` for the process to exit; its exit code (`None`:
    /// still running, or ended by a signal).
    pub fn exit_within(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// GETs `path` and parses the answer as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        get_json(&self.at(path))
    }

    /// GETs `path`: status and body.
    pub fn get(&self, path: &str) -> (reqwest::StatusCode, String) {
        let response = http().get(self.at(path)).send().expect("GET");
        (response.status(), response.text().expect("a body"))
    }

    /// `/stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        self.get_json("/stats")
    }

    /// POSTs line protocol to `/write` as an InfluxDB 1.x subscription
    /// does (its query, an empty content type): status and body.
    pub fn write(&self, body: &str) -> (reqwest::StatusCode, String) {
        let response = http()
            .post(self.at("/write?db=portal_prometheus&precision=ns&rp=autogen"))
            .header("Content-Type", "")
            .body(body.to_owned())
            .send()
            .expect("POST /write");
        (response.status(), response.text().expect("a body"))
    }

    /// Posts `examples/stack-sample.lp` in one write; it must be accepted.
    pub fn post_sample(&self) {
        let sample =
            std::fs::read_to_string(repo_file("examples/stack-sample.lp")).expect("sample");
        let (status, body) = self.write(&sample);
        assert_eq!(status.as_u16(), 204, "the sample was not accepted: {body}");
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited
    /// cleanly and how long it took.
    pub fn terminate(&mut self) -> (bool, std::time::Duration) {
        let started = std::time::Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("exits");
        (exit.success(), started.elapsed())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment that points `os-credits ledger …` and `policy rerate`
/// at the ledger of the service started on `data_dir` (its database when
/// the tests run against PostgreSQL; nothing needed for SQLite).
pub fn ledger_env(data_dir: &Path) -> Vec<(&'static str, String)> {
    postgres_store(data_dir)
        .map(|url| vec![("OS_CREDITS_DATABASE_URL", url)])
        .unwrap_or_default()
}

/// With `OS_CREDITS_TEST_STORE=postgres`: the database of `data_dir` (made
/// on first use) on this test process's PostgreSQL server.
fn postgres_store(data_dir: &Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    if std::env::var("OS_CREDITS_TEST_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    static SERVER: OnceLock<postgres::Postgres> = OnceLock::new();
    static DATABASES: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let server = SERVER.get_or_init(postgres::Postgres::start);
    let mut databases = DATABASES.get_or_init(Mutex::default).lock().unwrap();
    let count = databases.len();
    let url = databases
        .entry(data_dir.to_owned())
        .or_insert_with(|| server.database(&format!("ledger_{count}")));
    Some(url.clone())
}

/// A policy folder holding the de.NBI module and `files` (name, content).
pub fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(wasm("denbi-policy"), dir.path().join("denbi.wasm")).expect("copy module");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write file");
    }
    dir
}

/// An HTTP client for the tests (installs the TLS crypto provider that
/// reqwest, built without a default one, needs first).
pub fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("HTTP client")
}

/// GETs `url` and parses the answer as JSON.
pub fn get_json(url: &str) -> serde_json::Value {
    http()
        .get(url)
        .send()
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A random generator for a test, and its seed: `OS_CREDITS_TEST_SEED` when
/// set (to replay a run), a fresh one otherwise; printed either way.
pub fn seeded(test: &str) -> (fastrand::Rng, u64) {
    let seed = match std::env::var("OS_CREDITS_TEST_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("OS_CREDITS_TEST_SEED={text:?} is not a number")),
        Err(_) => fastrand::u64(..),
    };
    println!("{test}: seed {seed} (replay with OS_CREDITS_TEST_SEED={seed})");
    (fastrand::Rng::with_seed(seed), seed)
}

/// Polls `condition` every 50 ms for up to 60 s.
pub fn await_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A program a test runs (a Debian package's): the file `variable` names,
/// else the first of `paths` that exists; panics naming the package to
/// install and the variable otherwise.
pub fn program(variable: &str, paths: &[&str], package: &str) -> PathBuf {
    let candidates = std::env::var_os(variable)
        .map(PathBuf::from)
        .into_iter()
        .chain(paths.iter().map(PathBuf::from));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{} is needed for this test and was not found: install Debian's `{package}` \
         package (make test does, see scripts/test-programs.sh) or set {variable}",
        paths.first().copied().unwrap_or(package)
    );
}

/// Writes an htpasswd file `name` in `dir` with bcrypt hashes (cost 4,
/// quick to verify in tests) of `users`: (user, password, `# sites:` list
/// or `None` for every site). Written beside and renamed, as an operator's
/// editor would.
pub fn htpasswd(dir: &Path, name: &str, users: &[(&str, &str, Option<&str>)]) -> PathBuf {
    let mut text = String::from("# write credentials of the tests\n");
    for (user, password, sites) in users {
        if let Some(sites) = sites {
            text.push_str(&format!("# sites: {sites}\n"));
        }
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        text.push_str(&format!("{user}:{hash}\n"));
    }
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).expect("write the htpasswd file");
    std::fs::rename(&temporary, &path).expect("rename the htpasswd file");
    path
}

/// `Authorization: Basic` for `user` and `password`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
