//! The Dockerfile, exercised without a Docker engine: its build stage's
//! `RUN` steps run as written (with `/out` in a temporary folder), then the
//! runtime stage's settings are applied to what they staged: the `ENV`, the
//! `VOLUME`s and `EXPOSE`, the `ENTRYPOINT` and `CMD` started, and the
//! `HEALTHCHECK` command must see the service alive. A container path `P`
//! is the staged `OUT/P` (`COPY --from=build /out/ /`); the exposed port is
//! mapped to a free one, as `docker run -p` would.
//!
//! This is the image build CI runs (inside `make test`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// One instruction: keyword and its argument text (continuations joined).
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// A JSON array argument (`["a", "b"]`).
fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON list: {text}: {e}"))
}

/// `ENV A=1 B=2` pairs.
fn env_pairs(text: &str) -> Vec<(String, String)> {
    text.split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("KEY=value");
            (key.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_and_runs_as_written() {
    let dockerfile = std::fs::read_to_string(common::repo_file("Dockerfile")).unwrap();
    let all = instructions(&dockerfile);
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&all[stages[0]..stages[1]], &all[stages[1]..]);
    assert!(build[0].1.ends_with(" AS build"), "{:?}", build[0]);

    // The build stage: WORKDIR is the repository (COPY . .), RUN as written.
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap().to_owned();
    let mut ran = 0;
    for (keyword, argument) in build {
        if keyword == "RUN" {
            let command = argument.replace("/out", &out_dir);
            let status = common::outside_cargo_test(&mut Command::new("sh"))
                .args(["-c", &command])
                .current_dir(common::root())
                .env("SMOKE_PORT", free_port().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "build stage: RUN {command} failed");
            ran += 1;
        }
    }
    assert!(ran > 0, "the build stage runs nothing");

    // The runtime stage, applied to the staged tree.
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(copies, [&"--from=build /out/ /".to_owned()]);
    let staged = |container_path: &str| out.path().join(container_path.trim_start_matches('/'));
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let (mut volumes, mut exposed, mut healthcheck, mut entrypoint, mut cmd) =
        (Vec::new(), None, None, Vec::new(), Vec::new());
    for (keyword, argument) in runtime {
        match keyword.as_str() {
            "ENV" => env.extend(env_pairs(argument)),
            "VOLUME" => volumes.extend(json_list(argument)),
            "EXPOSE" => exposed = Some(argument.clone()),
            "HEALTHCHECK" => {
                let at = argument.find("CMD ").expect("HEALTHCHECK CMD");
                healthcheck = Some(json_list(&argument[at + 4..]));
            }
            "ENTRYPOINT" => entrypoint = json_list(argument),
            "CMD" => cmd = json_list(argument),
            _ => {}
        }
    }
    assert_eq!(
        exposed.as_deref(),
        env.get("CREDITS_PORT").map(String::as_str)
    );
    for volume in &volumes {
        assert!(staged(volume).is_dir(), "VOLUME {volume} is not staged");
    }
    for setting in ["OS_CREDITS_DATA_DIR", "OS_CREDITS_POLICY_DIR"] {
        let path = &env[setting];
        assert!(volumes.contains(path), "{setting}={path} is not a volume");
    }
    let port = free_port().to_string();
    let container_env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| match key.as_str() {
            "CREDITS_PORT" => (key.clone(), port.clone()),
            _ if value.starts_with('/') => (key.clone(), staged(value).display().to_string()),
            _ => (key.clone(), value.clone()),
        })
        .collect();
    let program = |argv: &[String]| {
        let mut command = Command::new(staged(&argv[0]));
        command
            .args(&argv[1..])
            .env_clear()
            .envs(container_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let argv: Vec<String> = entrypoint.iter().chain(&cmd).cloned().collect();
    let mut service = program(&argv).spawn().expect("ENTRYPOINT + CMD start");
    let healthcheck = healthcheck.expect("a HEALTHCHECK");
    let mut healthy = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline && service.try_wait().unwrap().is_none() {
        if program(&healthcheck).status().unwrap().success() {
            healthy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = service.kill();
    let _ = service.wait();
    assert!(healthy, "the HEALTHCHECK never saw the service alive");
    // The ledger went to the data volume.
    assert!(
        Path::new(&staged(&env["OS_CREDITS_DATA_DIR"]))
            .join("ledger.sqlite3")
            .is_file()
    );
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
