//! The data flows one way, and Cargo's graph is where it is kept: the
//! stage crates (`os-credits-ingest`, `-ledger`, `-policy`, `-billing`)
//! and their shared leaf (`os-credits-core`) may depend only on what their
//! place in the flow allows, and none of them on the service. The compiler
//! enforces a dependency once it is absent; this test keeps it absent,
//! reading the workspace's manifests through `cargo metadata`.
//!
//! Inside the service crate (which holds the API, the replicas, Perun and
//! the alerts side by side), a second check reads its sources and fails when
//! a module names (`crate::…`) one its layer must not know.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The workspace's crates of the flow and the workspace crates each may
/// depend on (normal dependencies; tests and benchmarks may use more).
const GRAPH: &[(&str, &[&str])] = &[
    // The shared words: nothing of the workspace.
    ("os-credits-core", &[]),
    // Decoders: nothing of the service.
    ("os-credits-ingest", &["pricing-sdk"]),
    // The durable store: the shared values, nothing above it.
    ("os-credits-ledger", &["os-credits-core", "pricing-sdk"]),
    // The Wasm host: knows nothing of billing or the ledger.
    ("os-credits-policy", &["os-credits-core", "pricing-sdk"]),
    // Billing: decoders, prices through its port, the ledger; not the service.
    (
        "os-credits-billing",
        &[
            "os-credits-core",
            "os-credits-ingest",
            "os-credits-ledger",
            "os-credits-policy",
            "pricing-sdk",
        ],
    ),
];

/// Each workspace package's normal dependencies that are workspace
/// packages themselves.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("a name").to_owned())
        .collect();
    packages
        .iter()
        .map(|package| {
            let depends = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                // `kind` is null for normal dependencies ("dev", "build").
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|name| members.contains(*name))
                .map(str::to_owned)
                .collect();
            (
                package["name"].as_str().expect("a name").to_owned(),
                depends,
            )
        })
        .collect()
}

/// The dependencies of `graph` that [`GRAPH`] does not allow.
fn graph_violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (package, allowed) in GRAPH {
        let Some(depends) = graph.get(*package) else {
            problems.push(format!("the workspace has no package {package}"));
            continue;
        };
        for dependency in depends {
            if !allowed.contains(&dependency.as_str()) {
                problems.push(format!("{package} must not depend on {dependency}"));
            }
        }
    }
    problems
}

#[test]
fn the_crates_of_the_flow_depend_only_on_what_their_stage_may() {
    let graph = workspace_graph();
    let problems = graph_violations(&graph);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The service sits on top of every stage.
    let service = &graph["os-credits"];
    for (package, _) in GRAPH {
        assert!(
            service.contains(*package),
            "os-credits does not use {package}"
        );
    }
}

#[test]
fn the_graph_rule_catches_a_stage_that_depends_on_the_service() {
    let mut graph = workspace_graph();
    graph
        .get_mut("os-credits-ledger")
        .expect("the ledger crate")
        .insert("os-credits-billing".to_owned());
    graph
        .get_mut("os-credits-policy")
        .expect("the policy crate")
        .insert("os-credits".to_owned());
    assert_eq!(
        graph_violations(&graph),
        vec![
            "os-credits-ledger must not depend on os-credits-billing".to_owned(),
            "os-credits-policy must not depend on os-credits".to_owned(),
        ]
    );
}

/// What every module may name: the clock and the lock of
/// `os-credits-core`, re-exported as `crate::time` and `crate::sync`.
const EVERYWHERE: &[&str] = &["time", "sync"];

/// What each module of the service may name besides itself. Modules not
/// listed (`api`, `config`) sit at the top and may name anything; the
/// stage crates are re-exported under their short names (`crate::ledger`).
const ALLOWED: &[(&str, &[&str])] = &[
    // The HTTP client of the service's own requests: a leaf.
    ("http", &[]),
    // The leader's tasks' timer and backoff: a leaf.
    ("leader", &[]),
    // Between api and billing: hands writes to the engine (leader) or the
    // ledger's inbox (follower); never reaches past the ledger.
    ("replica", &["billing", "ingest", "ledger"]),
    // Forecasts are computed from what the ledger reads.
    ("forecast", &["ledger", "schedule"]),
    // Perun and the alerts read the ledger and show totals.
    ("perun", &["ledger", "credits", "http", "leader"]),
    (
        "alerts",
        &["ledger", "credits", "forecast", "http", "leader"],
    ),
    // Who may write: credentials and their site scopes.
    ("writers", &["billing", "watch"]),
];

/// The modules of the crate a source text names, with the line.
fn named(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `pricing_crate::`
            }
            let module: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((number + 1, module));
        }
    }
    found
}

/// The violations of [`ALLOWED`] in the source of `module`.
fn violations(module: &str, file: &str, source: &str) -> Vec<String> {
    let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == module) else {
        return Vec::new();
    };
    named(source)
        .into_iter()
        .filter(|(_, named)| {
            named != module
                && !allowed.contains(&named.as_str())
                && !EVERYWHERE.contains(&named.as_str())
        })
        .map(|(line, named)| format!("{file}:{line}: `{module}` must not name `crate::{named}`"))
        .collect()
}

fn sources(dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source file");
            out.insert(path.display().to_string(), text);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &str) -> String {
    let relative = Path::new(file).strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn every_module_of_the_service_names_only_what_its_layer_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&src, &mut files);
    let mut checked = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for (file, text) in &files {
        let module = module_of(&src, file);
        checked.insert(module.clone());
        problems.extend(violations(&module, file, text));
    }
    for (module, _) in ALLOWED {
        assert!(checked.contains(*module), "no source of module {module}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_module_rule_catches_perun_naming_billing() {
    let source = "use std::sync::Arc;\n// crate::billing in a comment is fine\nuse crate::billing::{Priced, Pricer};\nfn f() { crate::api::x(); }\n";
    let found = violations("perun", "perun/sync.rs", source);
    assert_eq!(
        found,
        vec![
            "perun/sync.rs:3: `perun` must not name `crate::billing`".to_owned(),
            "perun/sync.rs:4: `perun` must not name `crate::api`".to_owned(),
        ]
    );
    assert!(violations("perun", "perun/sync.rs", "use crate::ledger::PerunStore;").is_empty());
    assert_eq!(
        violations("replica", "replica.rs", "use crate::perun::Publisher;").len(),
        1
    );
}
