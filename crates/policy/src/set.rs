//! The policies in force: a default and, optionally, one per site.
//!
//! Read from the policy folder. With a `policies.toml` there:
//!
//! ```toml
//! [default]                       # sites without their own policy
//! module = "denbi.wasm"
//!
//! [sites."8677"]                  # by location_id (the Perun resource id)
//! module = "tariff.wasm"
//! config_file = "tariff.toml"     # site parameters from a file in the folder...
//!
//! [sites."8678"]
//! module = "denbi.wasm"
//! config = { cpu_price = "2" }    # ...or inline
//! ```
//!
//! Without it, the folder must hold exactly one module (`*.wasm`), the
//! default for every site.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Module, PolicyRuntime};

/// The mapping file's name in the policy folder.
pub const MAPPING_FILE: &str = "policies.toml";

pub use super::mapping::DEFAULT_SITE;
use super::mapping::{self, ConfigSource, LimitOverrides};

/// Why the policy folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// The folder cannot be read.
    #[error("cannot read policy folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `policies.toml` is not valid.
    #[error("{path}: {message}")]
    Mapping {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Without `policies.toml`, the folder does not hold exactly one module.
    #[error(
        "policy folder {path} holds {found} modules and no {MAPPING_FILE}: put exactly one module there, or a {MAPPING_FILE} naming the default (run `make policies` to build them)"
    )]
    Ambiguous {
        /// The folder.
        path: PathBuf,
        /// How many modules it holds.
        found: usize,
    },
    /// A module could not be loaded.
    #[error("policy {file} for site {site}: {message}")]
    Load {
        /// The site it is mapped to.
        site: String,
        /// The module's file name.
        file: String,
        /// Why.
        message: String,
    },
}

/// A module and its configuration, as the mapping names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// `default` or a location id.
    pub site: String,
    /// The module's path.
    pub module: PathBuf,
    /// The configuration text given to `configure`.
    pub config: String,
    /// Limits of its own (`memory_mb`, `timeout_ms` in the mapping).
    pub limits: LimitOverrides,
    /// The SHA-256 the mapping pins the module to (lowercase hex), if any.
    pub sha256: Option<String>,
    /// For a `[[changes]]` entry: from when on (Unix ns) it applies.
    pub from: Option<i64>,
    /// For a `[[changes]]` entry that re-prices billed usage: why.
    pub correction_reason: Option<String>,
}

/// A policy in force at a site.
#[derive(Debug, Clone)]
pub struct Active {
    /// `default` or a location id.
    pub site: String,
    /// The module's file name.
    pub file: String,
    /// The loaded policy.
    pub policy: Arc<Module>,
    /// When the policy was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// For a `[[changes]]` entry: from when on (Unix ns) it applies.
    pub from: Option<i64>,
    /// The module's bytes as loaded (what a schedule keeps).
    pub bytes: Arc<[u8]>,
    /// The limits its entry sets, where they differ from the service's.
    pub overrides: LimitOverrides,
    /// For a `[[changes]]` entry that re-prices billed usage: why.
    pub correction_reason: Option<String>,
}

/// A module that could not be loaded for a site.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// The site it was meant for.
    pub site: String,
    /// The module's file name.
    pub file: String,
    /// Hex SHA-256 of the bytes that failed (empty when unreadable).
    pub sha256: String,
    /// Why.
    pub error: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The default policy and the per-site ones, with the changes the
/// mapping schedules (`[[changes]]`).
#[derive(Debug, Clone)]
pub struct PolicySet {
    default: Active,
    sites: BTreeMap<String, Active>,
    changes: Vec<Active>,
}

/// Reads the folder's mapping: which module and configuration each site gets.
pub fn assignments(folder: &Path) -> Result<Vec<Assignment>, SetError> {
    let mapping_path = folder.join(MAPPING_FILE);
    if mapping_path.exists() {
        return assignments_in(folder, &mapping_path);
    }
    let modules = modules_in(folder)?;
    match modules.as_slice() {
        [module] => Ok(vec![Assignment {
            site: DEFAULT_SITE.to_owned(),
            module: module.clone(),
            config: String::new(),
            limits: LimitOverrides::default(),
            sha256: None,
            from: None,
            correction_reason: None,
        }]),
        _ => Err(SetError::Ambiguous {
            path: folder.to_owned(),
            found: modules.len(),
        }),
    }
}

/// Reads the mapping at `mapping_path`, whose modules and configuration
/// files are in `folder`.
pub fn assignments_in(folder: &Path, mapping_path: &Path) -> Result<Vec<Assignment>, SetError> {
    let mapping_error = |message: String| SetError::Mapping {
        path: mapping_path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(mapping_path).map_err(|e| mapping_error(e.to_string()))?;
    mapping::parse(&text)
        .map_err(|e| mapping_error(e.0))?
        .into_iter()
        .map(|mapped| {
            let config = match &mapped.config {
                ConfigSource::Defaults => String::new(),
                ConfigSource::Inline(text) => text.clone(),
                ConfigSource::File(file) => std::fs::read_to_string(folder.join(file))
                    .map_err(|e| mapping_error(format!("site {}: {file}: {e}", mapped.site)))?,
            };
            Ok(Assignment {
                site: mapped.site,
                module: folder.join(&mapped.module),
                config,
                limits: mapped.limits,
                sha256: mapped.sha256,
                from: mapped.from,
                correction_reason: mapped.correction_reason,
            })
        })
        .collect()
}

/// The visible `*.wasm` files of a folder, sorted.
pub fn modules_in(folder: &Path) -> Result<Vec<PathBuf>, SetError> {
    let folder_error = |source| SetError::Folder {
        path: folder.to_owned(),
        source,
    };
    let mut modules = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(folder_error)? {
        let path = entry.map_err(folder_error)?.path();
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'));
        if visible && path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            modules.push(path);
        }
    }
    modules.sort();
    Ok(modules)
}

/// Whether the module's bytes may be loaded for `assignment`: the sha256
/// its mapping entry pins, and, when signatures are required, a signature
/// by a trusted key beside it.
fn vet(runtime: &PolicyRuntime, assignment: &Assignment, bytes: &[u8]) -> Result<(), String> {
    let file = file_name(&assignment.module);
    if let Some(pin) = &assignment.sha256 {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if *pin != sha256 {
            return Err(format!(
                "{file} has sha256 {sha256}, the mapping pins {pin}"
            ));
        }
    }
    if let Some(keys) = runtime.trusted_keys() {
        keys.verify_file(&assignment.module, bytes)
            .map_err(|why| format!("{file}: {why}"))?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl PolicySet {
    /// Loads every policy the folder maps; any failure is an error (there
    /// is no last good version to keep at start).
    pub fn load(runtime: &PolicyRuntime, folder: &Path) -> Result<Self, SetError> {
        let (set, failures) = Self::build(runtime, &assignments(folder)?, None);
        match (set, failures.into_iter().next()) {
            (Some(set), None) => Ok(set),
            (_, Some(failure)) => Err(SetError::Load {
                site: failure.site,
                file: failure.file,
                message: failure.error,
            }),
            (None, None) => Err(SetError::Mapping {
                path: folder.join(MAPPING_FILE),
                message: "no [default] policy".into(),
            }),
        }
    }

    /// Builds the set the assignments describe, reusing the policies of
    /// `previous` whose module bytes and configuration are unchanged. A
    /// module that cannot be read or loaded keeps the site on its previous
    /// policy (when there is one) and is reported as a failure. `None` when
    /// the default site ends up without a policy.
    pub fn build(
        runtime: &PolicyRuntime,
        assignments: &[Assignment],
        previous: Option<&PolicySet>,
    ) -> (Option<Self>, Vec<Failure>) {
        let mut failures = Vec::new();
        let mut fresh: Vec<Arc<Module>> = Vec::new();
        let mut default = None;
        let mut sites = BTreeMap::new();
        let mut changes = Vec::new();
        for assignment in assignments {
            let file = file_name(&assignment.module);
            let kept = previous
                .and_then(|p| p.get(&assignment.site, assignment.from))
                .cloned();
            let fail = |sha256: String, error: String| Failure {
                site: assignment.site.clone(),
                file: file.clone(),
                sha256,
                error,
                at: now(),
            };
            let kept_note = if kept.is_some() {
                "; keeping the last good version"
            } else {
                ""
            };
            let active = match runtime.read(&assignment.module) {
                Err(e) => {
                    failures.push(fail(
                        String::new(),
                        format!(
                            "cannot read {}: {e}{kept_note}",
                            assignment.module.display()
                        ),
                    ));
                    kept
                }
                Ok(bytes) if let Err(why) = vet(runtime, assignment, &bytes) => {
                    failures.push(fail(
                        hex::encode(Sha256::digest(&bytes)),
                        format!("{why}: refused{kept_note}"),
                    ));
                    kept
                }
                Ok(bytes) => {
                    let sha256 = hex::encode(Sha256::digest(&bytes));
                    let config_sha256 = hex::encode(Sha256::digest(assignment.config.as_bytes()));
                    let limits = runtime.limits().with(assignment.limits);
                    let same = |p: &Arc<Module>| {
                        p.info().sha256 == sha256
                            && p.info().config_sha256 == config_sha256
                            && p.limits() == limits
                    };
                    let known = previous
                        .into_iter()
                        .flat_map(PolicySet::entries)
                        .map(|a| &a.policy)
                        .chain(fresh.iter())
                        .find(|p| same(p))
                        .cloned();
                    let bytes: Arc<[u8]> = bytes.into();
                    match (known, &kept) {
                        (Some(policy), Some(kept))
                            if Arc::ptr_eq(&policy, &kept.policy) && kept.file == file =>
                        {
                            Some(kept.clone())
                        }
                        (Some(policy), _) => Some(Active {
                            site: assignment.site.clone(),
                            file: file.clone(),
                            policy,
                            loaded_at: now(),
                            from: assignment.from,
                            bytes,
                            overrides: assignment.limits,
                            correction_reason: assignment.correction_reason.clone(),
                        }),
                        (None, _) => {
                            match runtime.load_bytes_with(&bytes, &assignment.config, limits) {
                                Ok(policy) => {
                                    let policy = Arc::new(policy);
                                    fresh.push(Arc::clone(&policy));
                                    Some(Active {
                                        site: assignment.site.clone(),
                                        file: file.clone(),
                                        policy,
                                        loaded_at: now(),
                                        from: assignment.from,
                                        bytes,
                                        overrides: assignment.limits,
                                        correction_reason: assignment.correction_reason.clone(),
                                    })
                                }
                                Err(e) => {
                                    failures.push(fail(sha256, e.to_string()));
                                    kept
                                }
                            }
                        }
                    }
                }
            };
            match active {
                Some(active) if assignment.from.is_some() => changes.push(active),
                Some(active) if assignment.site == DEFAULT_SITE => default = Some(active),
                Some(active) => {
                    sites.insert(assignment.site.clone(), active);
                }
                None => {}
            }
        }
        (
            default.map(|default| PolicySet {
                default,
                sites,
                changes,
            }),
            failures,
        )
    }

    /// The entry for `site` itself (`default` for the default), or its
    /// change at `from`.
    fn get(&self, site: &str, from: Option<i64>) -> Option<&Active> {
        match from {
            Some(from) => self
                .changes
                .iter()
                .find(|c| c.site == site && c.from == Some(from)),
            None if site == DEFAULT_SITE => Some(&self.default),
            None => self.sites.get(site),
        }
    }

    /// Whether `other` holds the same entries with the same policies.
    pub fn same_as(&self, other: &PolicySet) -> bool {
        self.entries().count() == other.entries().count()
            && self.entries().zip(other.entries()).all(|(a, b)| {
                a.site == b.site
                    && a.from == b.from
                    && a.file == b.file
                    && Arc::ptr_eq(&a.policy, &b.policy)
            })
    }

    /// A set of one policy for every site (`bytes`: the module's).
    pub fn single(file: &str, policy: Arc<Module>, bytes: Arc<[u8]>) -> Self {
        PolicySet {
            default: Active {
                site: DEFAULT_SITE.to_owned(),
                file: file.to_owned(),
                policy,
                loaded_at: now(),
                from: None,
                bytes,
                overrides: LimitOverrides::default(),
                correction_reason: None,
            },
            sites: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    /// The default policy's module.
    pub fn default_module(&self) -> &Arc<Module> {
        &self.default.policy
    }

    /// Every site's policy, the default first (without the changes).
    pub fn active(&self) -> impl Iterator<Item = &Active> {
        std::iter::once(&self.default).chain(self.sites.values())
    }

    /// The changes the mapping schedules, in the mapping's order.
    pub fn changes(&self) -> &[Active] {
        &self.changes
    }

    /// Every entry: the default, the sites, then the changes.
    pub fn entries(&self) -> impl Iterator<Item = &Active> {
        self.active().chain(self.changes.iter())
    }
}
