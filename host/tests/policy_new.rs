//! `os-credits policy new` as a policy author runs it, in a copy of the
//! workspace: the new policy is found by the workspace and the Makefile
//! (no other file edited), builds with `make`, passes its unit tests and
//! `policy test` on its examples, and fails `policy test` (exit 1, the
//! difference shown) once a price changes. For Rust and for Python.
//!
//! The copy builds into a target folder of its own
//! (`target/policy-new-test`), so it never touches the modules the other
//! tests load; the second run reuses it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What of the workspace the copy holds: everything `make` and Cargo read
/// to build policies. The tariff policy and the Python de.NBI are left out
/// (slow to build, and not what this test is about); the de.NBI policy
/// stays, so the Makefile finds an old policy beside the new one.
const COPIED: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "Makefile",
    "rust-toolchain.toml",
    "crates",
    "host",
    "pricing-sdk",
    "policies/denbi",
    "policies/policies.toml",
    "tests/policies",
    "scripts",
];

/// Folders never copied.
const SKIPPED: &[&str] = &["target", "__pycache__", ".pytest_cache"];

/// A copy of the workspace in a temporary folder.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("os-credits");
    for path in COPIED {
        common::copy_tree(&common::root().join(path), &root.join(path), SKIPPED);
    }
    std::fs::create_dir_all(root.join("policies/python")).unwrap();
    (dir, root)
}

fn target_dir() -> PathBuf {
    common::root().join("target/policy-new-test")
}

/// The workspace's pinned componentize-py and pytest (`make python-tools`
/// once per test process), shared with the copies.
fn python_env() -> PathBuf {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        let tools = Command::new("make")
            .current_dir(common::root())
            .args(["-s", "python-tools"])
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .status()
            .expect("make runs");
        assert!(tools.success(), "make python-tools failed");
    });
    common::root().join("target/python")
}

/// `make ARGS` in `root`, as an author runs it, building into the test's
/// own target folder, with the workspace's Python tools and without the
/// Python test fixtures (not copied).
fn make(root: &Path, args: &[&str]) -> Output {
    let mut command = Command::new("make");
    common::outside_cargo_test(&mut command)
        .current_dir(root)
        .args(["--no-print-directory"])
        .args(args)
        .arg(format!("PYTHON_ENV={}", python_env().display()))
        .arg("PYTHON_FIXTURES=")
        .env("CARGO_TARGET_DIR", target_dir())
        // Not a sub-make of whatever make runs the tests.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    command.output().expect("make runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeds(what: &str, output: Output) -> String {
    let text = text(&output);
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// `policy test` of the new policy's examples, with the binary under test.
fn policy_test(root: &Path, name: &str, folder: &str, extra: &[&str]) -> Output {
    let module = format!("policies/dist/{name}.wasm");
    let measurements = format!("{folder}/examples/measurements.lp");
    let expected = format!("{folder}/examples/expected.json");
    let mut args = vec![
        "policy",
        "test",
        &module,
        &measurements,
        "--expect",
        &expected,
    ];
    args.extend_from_slice(extra);
    common::os_credits_in(root, &args, &[])
}

/// The exit status of a failed `policy test` run, and its table (stdout).
fn differences(output: &Output) -> (Option<i32>, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), stdout)
}

/// The table of differences holds exactly these rows (project, expected,
/// billed, difference), after its header.
fn assert_rows(table: &str, rows: &[[&str; 4]]) {
    let header = table
        .lines()
        .position(|line| line.starts_with("PROJECT"))
        .unwrap_or_else(|| panic!("no table in\n{table}"));
    let found: Vec<Vec<&str>> = table
        .lines()
        .skip(header + 1)
        .map(|line| line.split_whitespace().collect())
        .filter(|cells: &Vec<&str>| !cells.is_empty())
        .collect();
    assert_eq!(found, rows, "{table}");
}

/// Runs `make policy-examples` with the binary under test.
fn policy_examples(root: &Path) -> Output {
    let binary = format!("OS_CREDITS={}", env!("CARGO_BIN_EXE_os-credits"));
    make(root, &["policy-examples", &binary])
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn a_new_rust_policy_builds_passes_its_examples_and_fails_them_when_a_price_changes() {
    let (_dir, root) = workspace();
    let created = succeeds(
        "policy new",
        common::os_credits_in(&root, &["policy", "new", "my-site"], &[]),
    );
    assert!(created.contains("policies/my-site"), "{created}");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "examples/measurements.lp",
        "examples/expected.json",
    ] {
        assert!(root.join("policies/my-site").join(file).is_file(), "{file}");
    }

    // The same name again, in either language, is refused and nothing changes.
    let lib = root.join("policies/my-site/src/lib.rs");
    let before = std::fs::read_to_string(&lib).unwrap();
    for args in [
        &["policy", "new", "my-site"][..],
        &["policy", "new", "my-site", "--python"],
    ] {
        let again = common::os_credits_in(&root, args, &[]);
        assert_eq!(again.status.code(), Some(1), "{}", text(&again));
        assert!(text(&again).contains("exists already"), "{}", text(&again));
    }
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), before);
    assert!(!root.join("policies/python/my-site").exists());

    // The Makefile finds it beside de.NBI; `make policies` builds both.
    let found = succeeds("make", make(&root, &["print-rust-policies"]));
    assert_eq!(found.trim(), "denbi my-site");
    succeeds("make policies", make(&root, &["policies"]));
    assert!(root.join("policies/dist/my-site.wasm").is_file());
    assert!(root.join("policies/dist/denbi.wasm").is_file());

    // Its unit tests pass, its code is formatted, the module is usable.
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    common::outside_cargo_test(&mut cargo)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target_dir())
        .args(["test", "--release", "-q", "-p", "my-site-policy"]);
    let tests = succeeds("cargo test -p my-site-policy", cargo.output().unwrap());
    assert!(tests.contains("4 passed"), "{tests}");
    let mut fmt = Command::new("rustfmt");
    fmt.current_dir(&root)
        .args(["--check", "--edition", "2024"])
        .arg(&lib);
    succeeds("rustfmt --check", fmt.output().unwrap());
    let check = succeeds(
        "policy check",
        common::os_credits_in(
            &root,
            &["policy", "check", "policies/dist/my-site.wasm"],
            &[],
        ),
    );
    assert!(check.contains("policy    my-site 0.1.0"), "{check}");
    assert!(check.contains("self-test passed"), "{check}");

    // Its examples pass, by hand and through `make policy-examples`.
    let ok = succeeds(
        "policy test",
        policy_test(&root, "my-site", "policies/my-site", &[]),
    );
    assert!(
        ok.contains("ok: 2 projects, total 20.0, as expected"),
        "{ok}"
    );
    let examples = succeeds("make policy-examples", policy_examples(&root));
    assert!(examples.contains("policy test my-site"), "{examples}");
    assert!(examples.contains("policy test denbi"), "{examples}");

    // A price changes: 1.1 credits per vCPU-hour instead of 1.
    common::edit(
        &lib,
        "cpu_price: Decimal::ONE,",
        "cpu_price: Decimal::new(11, 1),",
    );
    succeeds("make policies", make(&root, &["rust-policies"]));
    let (code, table) = differences(&policy_test(&root, "my-site", "policies/my-site", &[]));
    assert_eq!(code, Some(1), "{table}");
    // alpha: 12 vCPU-hours (+1.2) and 16 GiB-hours; beta: 2 vCPU-hours (+0.2).
    assert_rows(
        &table,
        &[
            ["alpha", "16.8", "18.0", "1.2"],
            ["beta", "3.2", "3.4", "0.2"],
            ["TOTAL", "20.0", "21.4", "1.4"],
        ],
    );
    let failed = policy_examples(&root);
    assert!(!failed.status.success(), "{}", text(&failed));

    // `--update` takes the new credits, and the test passes again.
    succeeds(
        "policy test --update",
        policy_test(&root, "my-site", "policies/my-site", &["--update"]),
    );
    let ok = succeeds(
        "policy test",
        policy_test(&root, "my-site", "policies/my-site", &[]),
    );
    assert!(ok.contains("total 21.4, as expected"), "{ok}");
}

#[test]
#[cfg_attr(
    not(feature = "programs"),
    ignore = "needs the Python tools (componentize-py): make test"
)]
fn a_new_python_policy_builds_passes_its_examples_and_fails_them_when_a_price_changes() {
    let python_env = python_env();
    let (_dir, root) = workspace();
    let created = succeeds(
        "policy new --python",
        common::os_credits_in(&root, &["policy", "new", "lab-gpu", "--python"], &[]),
    );
    let folder = root.join("policies/python/lab-gpu");
    assert!(created.contains("policies/python/lab-gpu"), "{created}");
    for file in [
        "pyproject.toml",
        "lab_gpu.py",
        "tests/test_lab_gpu.py",
        "examples/measurements.lp",
        "examples/expected.json",
    ] {
        assert!(folder.join(file).is_file(), "{file}");
    }
    assert!(!root.join("policies/lab-gpu").exists());
    let again = common::os_credits_in(&root, &["policy", "new", "lab-gpu"], &[]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));

    // pytest, as `make test` runs it.
    let pytest = Command::new(python_env.join("bin/python"))
        .current_dir(&folder)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .output()
        .unwrap();
    let tests = succeeds("pytest", pytest);
    assert!(tests.contains("4 passed"), "{tests}");

    // The Makefile finds it; `make python-policies` builds it.
    let build = ["python-policies"];
    succeeds("make python-policies", make(&root, &build));
    assert!(root.join("policies/dist/lab-gpu.wasm").is_file());
    let ok = succeeds(
        "policy test",
        policy_test(&root, "lab-gpu", "policies/python/lab-gpu", &[]),
    );
    assert!(
        ok.contains("ok: 2 projects, total 20.0, as expected"),
        "{ok}"
    );

    // A price changes: 0.5 credits per GiB-hour instead of 0.3.
    common::edit(
        &folder.join("lab_gpu.py"),
        "config.decimal(\"ram_price\", \"0.3\")",
        "config.decimal(\"ram_price\", \"0.5\")",
    );
    succeeds("make python-policies", make(&root, &build));
    let (code, table) = differences(&policy_test(
        &root,
        "lab-gpu",
        "policies/python/lab-gpu",
        &[],
    ));
    assert_eq!(code, Some(1), "{table}");
    // alpha: 16 GiB-hours (+3.2); beta: 4 GiB-hours (+0.8).
    assert!(
        table.contains("FAILED: 3 of the expected credits differ"),
        "{table}"
    );
    assert_rows(
        &table,
        &[
            ["alpha", "16.8", "20.0", "3.2"],
            ["beta", "3.2", "4.0", "0.8"],
            ["TOTAL", "20.0", "24.0", "4.0"],
        ],
    );
}

#[test]
fn policy_new_refuses_bad_names_and_folders_that_are_not_a_workspace() {
    let (_dir, root) = workspace();
    for name in ["My-Site", "a_b", "dist", "2fast"] {
        let refused = common::os_credits_in(&root, &["policy", "new", name], &[]);
        assert_eq!(refused.status.code(), Some(1), "{name}: {}", text(&refused));
        assert!(
            text(&refused).contains(&format!("{name:?}")),
            "{}",
            text(&refused)
        );
    }
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(elsewhere.path().join("policies")).unwrap();
    let refused = common::os_credits_in(elsewhere.path(), &["policy", "new", "my-site"], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("not the policies folder of an os-credits workspace"),
        "{}",
        text(&refused)
    );
    assert!(!elsewhere.path().join("policies/my-site").exists());
}
