//! Shared helpers of the integration tests: building the policies (and the
//! hostile fixtures) to Wasm, and finding the files of the repository.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every policy package the tests load, built in one cargo call.
const POLICY_PACKAGES: [&str; 4] = [
    "denbi-policy",
    "tariff-policy",
    "hostile-policy",
    "contract-v2-policy",
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

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The built module of `package` (e.g. `denbi-policy`), building all
/// policy packages for `wasm32-wasip2` once per test process.
pub fn wasm(package: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(root()).args([
            "build",
            "--release",
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
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}
