//! `os-credits policy new`: a policy that builds and passes its tests at
//! once, in Rust (a crate `policies/NAME`) or Python (a package
//! `policies/python/NAME`), with example measurements and the exact credits
//! they must give. The workspace's `policies/*` members and the Makefile
//! find it without any other file changing.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The Rust crate's files: (path in the policy folder, template).
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("scaffold/Cargo.toml.in")),
    ("src/lib.rs", include_str!("scaffold/lib.rs.in")),
    ("README.md", include_str!("scaffold/README.md.in")),
    (
        "examples/measurements.lp",
        include_str!("scaffold/measurements.lp"),
    ),
    (
        "examples/expected.json",
        include_str!("scaffold/expected.json"),
    ),
];

/// The Python package's files; `__CRATE__` is the module name.
const PYTHON: &[(&str, &str)] = &[
    ("pyproject.toml", include_str!("scaffold/pyproject.toml.in")),
    ("__CRATE__.py", include_str!("scaffold/policy.py.in")),
    (
        "tests/test___CRATE__.py",
        include_str!("scaffold/test_policy.py.in"),
    ),
    ("README.md", include_str!("scaffold/README.md.in")),
    (
        "examples/measurements.lp",
        include_str!("scaffold/measurements.lp"),
    ),
    (
        "examples/expected.json",
        include_str!("scaffold/expected.json"),
    ),
];

/// Names the Makefile and the workspace use for themselves.
const RESERVED: &[&str] = &["dist", "python"];

/// Creates the policy `name` under `dir` (the workspace's `policies`
/// folder) and returns the folder it made.
pub fn new(name: &str, python: bool, dir: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    check_workspace(dir)?;
    let folder = if python {
        dir.join("python").join(name)
    } else {
        dir.join(name)
    };
    for other in [dir.join(name), dir.join("python").join(name)] {
        if other.exists() {
            bail!(
                "a policy {name:?} exists already ({}); choose another name",
                other.display()
            );
        }
    }
    let shown = if python {
        format!("policies/python/{name}")
    } else {
        format!("policies/{name}")
    };
    let fill = |text: &str| {
        text.replace("__NAME__", name)
            .replace("__CRATE__", &name.replace('-', "_"))
            .replace("__TYPE__", &type_name(name))
            .replace("__DIR__", &shown)
    };
    let files = if python { PYTHON } else { RUST };
    // Written into a hidden folder beside `policies` (which neither the
    // workspace's `policies/*` nor the Makefile sees) and renamed into
    // place, so that an interrupted run leaves no half policy behind.
    let staging = dir
        .join("..")
        .join(format!(".os-credits-policy-new-{name}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    let written = write_files(&staging, files, fill).and_then(|()| {
        if let Some(parent) = folder.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::rename(&staging, &folder)
            .with_context(|| format!("cannot move the new policy to {}", folder.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written.map(|()| folder)
}

/// Writes the templates, filled, under `root`.
fn write_files(
    root: &Path,
    files: &[(&str, &str)],
    fill: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    for (path, template) in files {
        let path = root.join(fill(path));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(template))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A name the Makefile, Cargo and Python all accept: lowercase letters,
/// digits and single dashes, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !valid {
        bail!(
            "policy name {name:?}: use lowercase letters, digits and single dashes, \
             starting with a letter (at most 40), e.g. \"my-site\""
        );
    }
    if RESERVED.contains(&name) || name.ends_with("-policy") {
        bail!("policy name {name:?} is taken by the workspace; choose another");
    }
    Ok(())
}

/// `dir` must be the `policies` folder of an os-credits workspace: the new
/// crate inherits the workspace's settings and its `pricing-sdk`.
fn check_workspace(dir: &Path) -> anyhow::Result<()> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("the policies folder {} does not exist", dir.display()))?;
    let manifest = root.parent().map(|r| r.join("Cargo.toml"));
    let text = manifest
        .as_ref()
        .and_then(|m| std::fs::read_to_string(m).ok())
        .unwrap_or_default();
    let table: toml::Table = text.parse().unwrap_or_default();
    let workspace = table.get("workspace").and_then(toml::Value::as_table);
    let members_policies = workspace
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some("policies/*")));
    let has_sdk = workspace
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table)
        .is_some_and(|d| d.contains_key("pricing-sdk"));
    let named_policies = root.file_name().is_some_and(|n| n == "policies");
    if !(members_policies && has_sdk && named_policies) {
        bail!(
            "{} is not the policies folder of an os-credits workspace (its Cargo.toml \
             must have `members = [\"policies/*\", …]` and `pricing-sdk` in \
             [workspace.dependencies]); run this in a checkout of os-credits, or pass \
             --dir path/to/os-credits/policies",
            dir.display()
        );
    }
    Ok(())
}

/// `my-site` -> `MySite`: the policy's type (Rust) or class (Python).
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_bad_names_are_refused() {
        assert_eq!(type_name("my-site"), "MySite");
        assert_eq!(type_name("gpu2"), "Gpu2");
        for good in ["a", "my-site", "hpc-2026"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "My", "2fast", "a_b", "a--b", "a-", "dist", "python", "x-policy", "ü",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for (path, template) in RUST.iter().chain(PYTHON) {
            let filled = template
                .replace("__NAME__", "x")
                .replace("__CRATE__", "x")
                .replace("__TYPE__", "X")
                .replace("__DIR__", "policies/x");
            let placeholder = filled
                .match_indices("__")
                .any(|(at, _)| filled[at + 2..].starts_with(|c: char| c.is_ascii_uppercase()));
            assert!(!placeholder, "{path} keeps a placeholder");
        }
    }
}
