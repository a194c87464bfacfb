//! `policies.toml`, read: which module and configuration each site gets.
//! Pure (text in, entries out) and free of the rest of the crate, so it is
//! fuzzed on its own (`fuzz/`).
//!
//! Every path it names (`module`, `config_file`) must stay inside the
//! policy folder: relative, without `..`; anything else is refused, so a
//! mapping cannot make the service read files elsewhere.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;

/// The site label of the default policy.
pub const DEFAULT_SITE: &str = "default";

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

/// Where a site's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// None: the policy's defaults.
    Defaults,
    /// Written inline, as TOML text.
    Inline(String),
    /// A file in the policy folder (a relative path inside it).
    File(String),
}

/// One site's entry of the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// `default` or a location id.
    pub site: String,
    /// The module: a relative path inside the policy folder.
    pub module: String,
    /// Its configuration.
    pub config: ConfigSource,
}

/// Whether `path` names something inside the folder: relative, only
/// normal components (no `..`, no root, no drive).
pub fn inside_folder(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && Path::new(path)
            .components()
            .any(|c| matches!(c, Component::Normal(_)))
}

/// Reads a mapping: the default first, then the sites by location id.
pub fn parse(text: &str) -> Result<Vec<Mapped>, String> {
    let mapping: Mapping = toml::from_str(text).map_err(|e| e.to_string())?;
    let default = mapping
        .default
        .ok_or_else(|| "no [default] policy".to_owned())?;
    std::iter::once((DEFAULT_SITE.to_owned(), default))
        .chain(mapping.sites)
        .map(|(site, entry)| {
            if !inside_folder(&entry.module) {
                return Err(format!(
                    "site {site}: module {:?} is not inside the policy folder (give a file name)",
                    entry.module
                ));
            }
            let config = match (entry.config, entry.config_file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "site {site}: give either config or config_file, not both"
                    ));
                }
                (Some(table), None) => ConfigSource::Inline(
                    toml::to_string(&table).map_err(|e| format!("site {site}: {e}"))?,
                ),
                (None, Some(file)) if !inside_folder(&file) => {
                    return Err(format!(
                        "site {site}: config_file {file:?} is not inside the policy folder (give a file name)"
                    ));
                }
                (None, Some(file)) => ConfigSource::File(file),
                (None, None) => ConfigSource::Defaults,
            };
            Ok(Mapped {
                site,
                module: entry.module,
                config,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_folder_are_refused() {
        for path in ["../denbi.wasm", "/etc/passwd", "a/../../b.wasm", "", "."] {
            assert!(!inside_folder(path), "{path}");
            let error = parse(&format!("[default]\nmodule = {path:?}\n")).unwrap_err();
            assert!(error.contains("not inside the policy folder"), "{error}");
        }
        for path in ["denbi.wasm", "./denbi.wasm", "sub/denbi.wasm"] {
            assert!(inside_folder(path), "{path}");
        }
        let error = parse(
            "[default]\nmodule = \"denbi.wasm\"\n[sites.\"1\"]\nmodule = \"d.wasm\"\nconfig_file = \"/etc/shadow\"\n",
        )
        .unwrap_err();
        assert!(error.contains("config_file"), "{error}");
    }

    #[test]
    fn a_mapping_reads_default_first_then_sites() {
        let mapped = parse(
            "[default]\nmodule = \"denbi.wasm\"\n[sites.\"8677\"]\nmodule = \"tariff.wasm\"\nconfig_file = \"tariff.toml\"\n[sites.\"8678\"]\nmodule = \"denbi.wasm\"\nconfig = { cpu_price = \"2\" }\n",
        )
        .unwrap();
        assert_eq!(mapped[0].site, DEFAULT_SITE);
        assert_eq!(mapped[1].config, ConfigSource::File("tariff.toml".into()));
        assert_eq!(
            mapped[2].config,
            ConfigSource::Inline("cpu_price = \"2\"\n".into())
        );
        assert!(parse("[sites.\"1\"]\nmodule = \"a.wasm\"\n").is_err());
        assert!(parse("[default]\nmodule = \"a.wasm\"\nextra = 1\n").is_err());
    }
}
