//! The data flows one way: `api -> replica -> billing` (which uses ingest,
//! the policies through its own `Pricer` port, and the ledger), and `perun`
//! and `notify` read the ledger; the ledger names nothing above it. This test reads every source file of the crate and fails when a
//! module names (`crate::…`) a module its layer must not know.

use std::collections::BTreeMap;
use std::path::Path;

/// What each module of the library may name besides itself. Modules not
/// listed (`api`, `config`) sit at the top and may name anything.
const ALLOWED: &[(&str, &[&str])] = &[
    // Decoders: nothing of the service.
    ("ingest", &[]),
    // How totals are shown: a leaf.
    ("credits", &[]),
    // The key, state and account billing and the ledger share: a leaf.
    ("account", &[]),
    // The price schedule's entries, as the ledger keeps them: a leaf.
    ("schedule", &[]),
    // Re-reading changed files: a leaf.
    ("watch", &[]),
    // Shares of usage by time, UTC days: a leaf.
    ("period", &[]),
    // The Wasm host: knows nothing of billing; builds the live schedule
    // from its entries; re-reads its folder when it changes.
    ("policy", &["schedule", "watch"]),
    // Billing consumes samples, prices through its port (whose adapter for
    // the policies lives in billing), writes the ledger, shows totals.
    (
        "billing",
        &[
            "ingest", "policy", "ledger", "credits", "account", "schedule", "period",
        ],
    ),
    // The ledger stores the shared accounts and schedule entries and names
    // nothing above it.
    ("ledger", &["account", "schedule", "period"]),
    // Between api and billing: hands writes to the engine (leader) or the
    // ledger's inbox (follower); never reaches past the ledger.
    ("replica", &["billing", "ingest", "ledger"]),
    // The HTTP client of the service's own requests: a leaf.
    ("http", &[]),
    // Forecasts are computed from what the ledger reads.
    ("forecast", &["ledger", "schedule"]),
    // Perun and the alerts read the ledger and show totals.
    ("perun", &["ledger", "credits", "http"]),
    ("notify", &["ledger", "credits", "forecast", "http"]),
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
        .filter(|(_, named)| named != module && !allowed.contains(&named.as_str()))
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
fn every_module_names_only_what_its_layer_may() {
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
fn the_rule_catches_a_policy_that_imports_billing() {
    let source = "use std::sync::Arc;\n// crate::billing in a comment is fine\nuse crate::billing::{Priced, Pricer};\nfn f() { crate::perun::x(); }\n";
    let found = violations("policy", "policy/set.rs", source);
    assert_eq!(
        found,
        vec![
            "policy/set.rs:3: `policy` must not name `crate::billing`".to_owned(),
            "policy/set.rs:4: `policy` must not name `crate::perun`".to_owned(),
        ]
    );
    assert!(violations("billing", "billing/book.rs", "use crate::policy::Step;").is_empty());
    // The ledger stores billing's values through the leaf, never billing.
    assert_eq!(
        violations("ledger", "ledger/engine.rs", "use crate::billing::Key;").len(),
        1
    );
    assert!(violations("ledger", "ledger/engine.rs", "use crate::account::Key;").is_empty());
    assert_eq!(
        violations("ingest", "ingest/mod.rs", "use crate::billing::Book;").len(),
        1
    );
    assert_eq!(
        violations(
            "ledger",
            "ledger/mod.rs",
            "x: crate::perun::sync::Publisher"
        )
        .len(),
        1
    );
}
