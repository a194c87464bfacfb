//! Pricing policies in Python (`pricing-sdk/python`, built with
//! componentize-py by `make python-policies`): the de.NBI policy in Python
//! bills the stack sample to the last digit, a restart activates it from
//! the compile cache, a damaged cache entry is compiled again and never
//! loaded, hostile Python is contained under per-policy limits, and hot
//! swaps between Rust and Python under load fail no request.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Service, python_wasm, repo_file, wasm};
use os_credits::policy::set::PolicySet;
use os_credits::policy::{CallError, Limits, PolicyRuntime, Step};
use rust_decimal::Decimal;
use serde_json::Value;

/// A compile cache shared by the tests of this file (and kept between
/// runs): the Python modules are compiled once, not once per test.
fn shared_cache() -> PathBuf {
    let dir = common::root().join("target/test-policy-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the shared cache into a service's data folder.
fn seed_cache(data_dir: &Path) {
    let to = data_dir.join("policy-cache");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(shared_cache()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().ends_with(".cwasm") {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/stack-sample.expected.json")).unwrap(),
    )
    .unwrap()
}

fn folder_with(files: &[(&str, &Path)], mapping: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, from) in files {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("policies.toml"), mapping).unwrap();
    dir
}

fn active(service: &Service) -> Value {
    service.get_json("/api/policies")["active"][0].clone()
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn the_python_denbi_policy_bills_the_stack_sample_to_the_last_digit() {
    let module = python_wasm("denbi-python");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_os-credits"))
        .current_dir(common::root())
        .args(["policy", "run"])
        .arg(&module)
        .args([
            "examples/stack-sample.lp",
            "--format",
            "json",
            "--cache-dir",
        ])
        .arg(shared_cache())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["policy"]["name"], "denbi-python");
    assert_eq!(report["policy_errors"], serde_json::json!([]));
    let expected = expected();
    let projects: BTreeMap<String, String> = report["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["project"].as_str().unwrap().to_owned(),
                p["credits"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = expected["projects"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    // Exact decimals, the same text as the Rust policy's.
    assert_eq!(projects, want);
    assert_eq!(report["total"], expected["total"]);
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn restarted_with_only_a_python_policy_it_activates_from_the_cache_and_prices() {
    let module = python_wasm("denbi-python");
    let folder = folder_with(
        &[("denbi-python.wasm", &module)],
        "[default]\nmodule = \"denbi-python.wasm\"\n",
    );
    let data = tempfile::tempdir().unwrap();
    let mut first = Service::start(data.path(), folder.path(), &[]);
    assert_eq!(active(&first)["activation"]["cached"], false);
    first.terminate();
    drop(first);

    let second = Service::start(data.path(), folder.path(), &[]);
    let activation = active(&second)["activation"].clone();
    assert_eq!(activation["cached"], true, "{activation}");
    assert_eq!(second.get("/ping").1, "Pong");
    second.post_sample();
    let current = second.get_json("/api/current_credits/os_credits_0");
    assert_eq!(
        current["current_credits_exact"],
        expected()["projects"]["os_credits_0"]
    );
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn a_damaged_cache_entry_is_compiled_again_never_loaded() {
    let denbi = wasm("denbi-policy");
    let folder = folder_with(
        &[("denbi.wasm", &denbi)],
        "[default]\nmodule = \"denbi.wasm\"\n",
    );
    let data = tempfile::tempdir().unwrap();
    let cache = data.path().join("policy-cache");
    let mut service = Service::start(data.path(), folder.path(), &[]);
    assert_eq!(active(&service)["activation"]["cached"], false);
    service.terminate();
    drop(service);

    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "one entry per module: {entries:?}");
    // One bit of the compiled code flipped, as a bad disk would.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&entries[0], &bytes).unwrap();

    let mut service = Service::start(data.path(), folder.path(), &[]);
    assert_eq!(active(&service)["activation"]["cached"], false);
    assert!(
        service.log().contains("does not match its checksum"),
        "{}",
        service.log()
    );
    service.post_sample();
    let current = service.get_json("/api/current_credits/os_credits_0");
    assert_eq!(
        current["current_credits_exact"],
        expected()["projects"]["os_credits_0"]
    );
    service.terminate();
    drop(service);
    // Compiled again and stored whole: the next start loads it.
    let service = Service::start(data.path(), folder.path(), &[]);
    assert_eq!(active(&service)["activation"]["cached"], true);
}

fn cpu(project: &str) -> Step<'_> {
    Step {
        metric: "project_vcpu_usage",
        project,
        location_id: "1",
        tags: &[],
        previous: (0, "10"),
        current: (3_600_000_000_000, "12"),
    }
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn hostile_python_is_contained_under_the_limits_of_its_mapping_entry() {
    let module = python_wasm("hostile-python");
    // The default entry's deadline is short, for the endless loop; site
    // 8677's is a minute, so that the memory hog meets its 96 MB cap first
    // however slow or busy the machine (at 300 ms it could meet the
    // deadline first on a loaded machine).
    let folder = folder_with(
        &[("hostile-python.wasm", &module)],
        "[default]\nmodule = \"hostile-python.wasm\"\nmemory_mb = 96\ntimeout_ms = 300\n\
         [sites.\"8677\"]\nmodule = \"hostile-python.wasm\"\nmemory_mb = 96\ntimeout_ms = 60000\n",
    );
    let mut runtime = PolicyRuntime::new(Limits::default()).unwrap();
    runtime.use_cache(&shared_cache()).unwrap();
    let set = PolicySet::load(&runtime, folder.path()).expect("the hostile module loads");
    let policy = set.default_module().clone();
    let roomy = set
        .active()
        .find(|a| a.site == "8677")
        .expect("site 8677's entry")
        .policy
        .clone();
    assert_eq!(roomy.limits().call_timeout, Duration::from_secs(60));
    assert_eq!(
        policy.limits(),
        Limits {
            call_timeout: Duration::from_millis(300),
            memory_bytes: 96 << 20,
            ..Limits::default()
        }
    );
    assert_eq!(policy.bill(&cpu("calm")), Ok(Decimal::from(2)));
    assert_eq!(
        policy.bill(&cpu("loop")),
        Err(CallError::Timeout(Duration::from_millis(300)))
    );
    // The cap refuses to grow the heap; Python raises MemoryError, which
    // fails this step (the SDK says why) and the instance goes on.
    match roomy.bill(&cpu("hog")) {
        Err(CallError::Refused(why)) => assert!(why.starts_with("MemoryError"), "{why}"),
        Err(CallError::MemoryLimit(cap)) => assert_eq!(cap, 96 << 20),
        other => panic!("the memory hog was not contained: {other:?}"),
    }
    // In a batch, only the hostile steps fail (the hog by its cap or by
    // the deadline, whichever it meets first).
    let priced = policy.bill_batch(&[cpu("a"), cpu("loop"), cpu("b"), cpu("hog"), cpu("c")]);
    let ok: Vec<bool> = priced.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, true, false, true], "{priced:?}");
    assert_eq!(policy.bill(&cpu("calm")), Ok(Decimal::from(2)));
}

/// Deploys `from` as `current.wasm`: written hidden, renamed into place.
fn deploy(folder: &Path, from: &Path) {
    let hidden = folder.join(".current.wasm.tmp");
    std::fs::copy(from, &hidden).unwrap();
    std::fs::rename(&hidden, folder.join("current.wasm")).unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn hot_swaps_between_rust_and_python_under_load_fail_no_request() {
    let rust = wasm("denbi-policy");
    let python = python_wasm("denbi-python");
    let folder = folder_with(
        &[("current.wasm", &rust)],
        "[default]\nmodule = \"current.wasm\"\n",
    );
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    let service = Service::start(data.path(), folder.path(), &[]);

    let poster = common::Poster::start(&service.url, "swap");
    for swap in 0..4 {
        let (from, name) = if swap % 2 == 0 {
            (&python, "denbi-python")
        } else {
            (&rust, "denbi")
        };
        deploy(folder.path(), from);
        common::await_until("the swapped policy to be active", || {
            active(&service)["name"] == name
        });
        // Some writes priced by it.
        poster.await_more(3);
    }
    let (posted, failed) = poster.finish();
    assert_eq!(failed, 0, "requests failed during swaps");
    // Every point after the first of a key is billed: 1 credit per step,
    // whichever policy priced it.
    let steps = posted as i64 - 1;
    let current = service.get_json("/api/current_credits/swap_0");
    let credits: Decimal = current["current_credits_exact"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(credits, Decimal::from(steps));
}
