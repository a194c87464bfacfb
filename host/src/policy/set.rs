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

use serde::Deserialize;

use super::{CallError, LoadError, Policy, PolicyRuntime, Usage};
use crate::billing::{Priced, Pricer};

/// The mapping file's name in the policy folder.
pub const MAPPING_FILE: &str = "policies.toml";

/// The site label of the default policy.
pub const DEFAULT_SITE: &str = "default";

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
    #[error("policy {file} for site {site}: {source}")]
    Load {
        /// The site it is mapped to.
        site: String,
        /// The module's file name.
        file: String,
        /// Why.
        source: LoadError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    default: Option<Entry>,
    #[serde(default)]
    sites: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Entry {
    module: String,
    config: Option<toml::Table>,
    config_file: Option<String>,
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
}

/// A policy in force at a site.
#[derive(Debug, Clone)]
pub struct Active {
    /// `default` or a location id.
    pub site: String,
    /// The module's file name.
    pub file: String,
    /// The loaded policy.
    pub policy: Arc<Policy>,
}

/// The default policy and the per-site ones.
#[derive(Debug, Clone)]
pub struct PolicySet {
    default: Active,
    sites: BTreeMap<String, Active>,
}

/// Reads the folder's mapping: which module and configuration each site gets.
pub fn assignments(folder: &Path) -> Result<Vec<Assignment>, SetError> {
    let mapping_path = folder.join(MAPPING_FILE);
    if mapping_path.exists() {
        let mapping_error = |message: String| SetError::Mapping {
            path: mapping_path.clone(),
            message,
        };
        let text =
            std::fs::read_to_string(&mapping_path).map_err(|e| mapping_error(e.to_string()))?;
        let mapping: Mapping = toml::from_str(&text).map_err(|e| mapping_error(e.to_string()))?;
        let default = mapping
            .default
            .ok_or_else(|| mapping_error("no [default] policy".into()))?;
        let entries = std::iter::once((DEFAULT_SITE.to_owned(), default)).chain(mapping.sites);
        return entries
            .map(|(site, entry)| {
                let config = match (&entry.config, &entry.config_file) {
                    (Some(_), Some(_)) => {
                        return Err(mapping_error(format!(
                            "site {site}: give either config or config_file, not both"
                        )));
                    }
                    (Some(table), None) => toml::to_string(table)
                        .map_err(|e| mapping_error(format!("site {site}: {e}")))?,
                    (None, Some(file)) => std::fs::read_to_string(folder.join(file))
                        .map_err(|e| mapping_error(format!("site {site}: {file}: {e}")))?,
                    (None, None) => String::new(),
                };
                Ok(Assignment {
                    site,
                    module: folder.join(&entry.module),
                    config,
                })
            })
            .collect();
    }
    let modules = modules_in(folder)?;
    match modules.as_slice() {
        [module] => Ok(vec![Assignment {
            site: DEFAULT_SITE.to_owned(),
            module: module.clone(),
            config: String::new(),
        }]),
        _ => Err(SetError::Ambiguous {
            path: folder.to_owned(),
            found: modules.len(),
        }),
    }
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

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl PolicySet {
    /// Loads every policy the folder maps. A module used by several sites
    /// with the same configuration is loaded once.
    pub fn load(runtime: &PolicyRuntime, folder: &Path) -> Result<Self, SetError> {
        let mut loaded: Vec<(PathBuf, String, Arc<Policy>)> = Vec::new();
        let mut default = None;
        let mut sites = BTreeMap::new();
        for assignment in assignments(folder)? {
            let reuse = loaded
                .iter()
                .find(|(m, c, _)| *m == assignment.module && *c == assignment.config)
                .map(|(_, _, p)| Arc::clone(p));
            let policy = match reuse {
                Some(policy) => policy,
                None => {
                    let policy = runtime
                        .load(&assignment.module, &assignment.config)
                        .map(Arc::new)
                        .map_err(|source| SetError::Load {
                            site: assignment.site.clone(),
                            file: file_name(&assignment.module),
                            source,
                        })?;
                    loaded.push((
                        assignment.module.clone(),
                        assignment.config.clone(),
                        Arc::clone(&policy),
                    ));
                    policy
                }
            };
            let active = Active {
                site: assignment.site.clone(),
                file: file_name(&assignment.module),
                policy,
            };
            if assignment.site == DEFAULT_SITE {
                default = Some(active);
            } else {
                sites.insert(assignment.site, active);
            }
        }
        let default = default.ok_or_else(|| SetError::Mapping {
            path: folder.join(MAPPING_FILE),
            message: "no [default] policy".into(),
        })?;
        Ok(PolicySet { default, sites })
    }

    /// A set of one policy for every site.
    pub fn single(file: &str, policy: Arc<Policy>) -> Self {
        PolicySet {
            default: Active {
                site: DEFAULT_SITE.to_owned(),
                file: file.to_owned(),
                policy,
            },
            sites: BTreeMap::new(),
        }
    }

    /// The policy in force at `location_id`.
    pub fn for_site(&self, location_id: &str) -> &Arc<Policy> {
        &self.sites.get(location_id).unwrap_or(&self.default).policy
    }

    /// The default policy.
    pub fn default_policy(&self) -> &Arc<Policy> {
        &self.default.policy
    }

    /// Every site's policy, the default first.
    pub fn active(&self) -> impl Iterator<Item = &Active> {
        std::iter::once(&self.default).chain(self.sites.values())
    }
}

impl Pricer for PolicySet {
    fn prices(&self, location_id: &str, metric: &str) -> bool {
        self.for_site(location_id).info().metric(metric).is_some()
    }

    fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError> {
        Pricer::bill(self.for_site(usage.location_id).as_ref(), usage)
    }
}
