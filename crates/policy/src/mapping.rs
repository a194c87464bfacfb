//! `policies.toml`, read: which module and configuration each site gets,
//! and from when on (`[[changes]]`: a site's entry replaced from an
//! instant, RFC 3339).
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
    #[serde(default)]
    changes: Vec<Change>,
}

/// A `[[changes]]` entry: a site's entry replaced from `from` on.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Change {
    from: toml::Value,
    site: String,
    module: String,
    config: Option<toml::Table>,
    config_file: Option<String>,
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    sha256: Option<String>,
    /// Why a change re-prices usage already billed (then it may lie in the past).
    correction_reason: Option<String>,
}

impl Change {
    fn split(self) -> (toml::Value, String, Entry, Option<String>) {
        let entry = Entry {
            module: self.module,
            config: self.config,
            config_file: self.config_file,
            memory_mb: self.memory_mb,
            timeout_ms: self.timeout_ms,
            sha256: self.sha256,
        };
        (self.from, self.site, entry, self.correction_reason)
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Entry {
    module: String,
    config: Option<toml::Table>,
    config_file: Option<String>,
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    sha256: Option<String>,
}

/// Limits a site's entry sets for its policy instead of the service's
/// (`OS_CREDITS_POLICY_MEMORY_MB`, `OS_CREDITS_POLICY_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LimitOverrides {
    /// Linear memory an instance may grow to, in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock time one call may take, in milliseconds.
    pub timeout_ms: Option<u64>,
}

impl LimitOverrides {
    /// The limits, or which one is out of its bounds (1 to
    /// [`MAX_MEMORY_MB`], 1 to [`MAX_TIMEOUT_MS`]).
    pub fn check(self) -> Result<Self, MappingError> {
        for (what, value, max) in [
            ("memory_mb", self.memory_mb, MAX_MEMORY_MB),
            ("timeout_ms", self.timeout_ms, MAX_TIMEOUT_MS),
        ] {
            if let Some(value) = value
                && (value == 0 || value > max)
            {
                return Err(MappingError(format!(
                    "{what} = {value} is not between 1 and {max}"
                )));
            }
        }
        Ok(self)
    }
}

/// The largest memory cap a mapping may set, in MiB (4 GiB: all a 32-bit
/// Wasm memory can address).
pub const MAX_MEMORY_MB: u64 = 4096;
/// The longest call deadline a mapping may set, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

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
    /// Its limits, where they differ from the service's.
    pub limits: LimitOverrides,
    /// The module's SHA-256 (lowercase hex) when the entry pins it: a
    /// module with other bytes is refused.
    pub sha256: Option<String>,
    /// For a `[[changes]]` entry: from when on (Unix ns) it replaces the
    /// site's entry; `None` for `[default]` and `[sites]`.
    pub from: Option<i64>,
    /// For a `[[changes]]` entry that re-prices usage already billed: why
    /// (the correction it books carries it).
    pub correction_reason: Option<String>,
}

/// Reads a `from`: RFC 3339 with an offset (`Z` for UTC), quoted or as a
/// TOML date-time.
fn parse_from(value: &toml::Value) -> Result<i64, String> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        other => return Err(format!("from = {other} is not a date-time")),
    };
    let parsed = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
        format!("from = {text:?} is not an RFC 3339 date-time with an offset (e.g. 2027-01-01T00:00:00Z): {e}")
    })?;
    parsed
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("from = {text:?} is out of range"))
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

/// What is wrong with a mapping: the entry (`site 8676`, `changes[0]
/// (site default)`) and what, as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

/// Reads a mapping: the default first, then the sites by location id.
pub fn parse(text: &str) -> Result<Vec<Mapped>, MappingError> {
    entries(text).map_err(MappingError)
}

/// [`parse`], its errors as the texts they show.
fn entries(text: &str) -> Result<Vec<Mapped>, String> {
    let mapping: Mapping = toml::from_str(text).map_err(|e| e.to_string())?;
    let default = mapping
        .default
        .ok_or_else(|| "no [default] policy".to_owned())?;
    let mut changes = Vec::with_capacity(mapping.changes.len());
    let mut seen = std::collections::BTreeSet::new();
    for (index, change) in mapping.changes.into_iter().enumerate() {
        let (from, site, entry, reason) = change.split();
        let at = |message: String| format!("changes[{index}] (site {site}): {message}");
        let from = parse_from(&from).map_err(at)?;
        if site.trim().is_empty() {
            return Err(at(
                "site is empty (give \"default\" or a location id)".into()
            ));
        }
        if !seen.insert((site.clone(), from)) {
            return Err(at(format!(
                "a second change for this site at from = {:?}",
                rfc3339(from)
            )));
        }
        let reason = match reason.map(|r| r.trim().to_owned()) {
            Some(r) if r.is_empty() => {
                return Err(at(
                    "correction_reason is empty: say why the past is re-priced".into(),
                ));
            }
            other => other,
        };
        changes.push((site, Some(from), entry, reason));
    }
    std::iter::once((DEFAULT_SITE.to_owned(), None, default, None))
        .chain(
            mapping
                .sites
                .into_iter()
                .map(|(site, entry)| (site, None, entry, None)),
        )
        .chain(changes)
        .map(|(site, from, entry, correction_reason)| {
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
            let limits = LimitOverrides {
                memory_mb: entry.memory_mb,
                timeout_ms: entry.timeout_ms,
            }
            .check()
            .map_err(|why| format!("site {site}: {why}"))?;
            let sha256 = entry
                .sha256
                .map(|pin| {
                    let pin = pin.trim().to_ascii_lowercase();
                    if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(pin)
                    } else {
                        Err(format!(
                            "site {site}: sha256 = {pin:?} is not a SHA-256 (64 hex digits; `sha256sum` prints it)"
                        ))
                    }
                })
                .transpose()?;
            Ok(Mapped {
                site,
                from,
                correction_reason,
                sha256,
                module: entry.module,
                config,
                limits,
            })
        })
        .collect()
}

/// A time for a message (RFC 3339, UTC).
fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    .unwrap_or_else(|| ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_sha256_is_read_and_checked() {
        let pin = "AB".repeat(32);
        let mapped = parse(&format!(
            "[default]\nmodule = \"p.wasm\"\nsha256 = \"{pin}\"\n"
        ))
        .unwrap();
        assert_eq!(mapped[0].sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(
            parse("[default]\nmodule = \"p.wasm\"\n").unwrap()[0].sha256,
            None
        );
        for bad in ["abc", &"zz".repeat(32), &"ab".repeat(33)] {
            let err = parse(&format!(
                "[default]\nmodule = \"p.wasm\"\nsha256 = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(err.0.contains("is not a SHA-256"), "{err}");
        }
    }

    #[test]
    fn limits_per_site_are_read_and_bounded() {
        let mapped =
            parse("[default]\nmodule = \"p.wasm\"\nmemory_mb = 256\ntimeout_ms = 1000\n").unwrap();
        assert_eq!(
            mapped[0].limits,
            LimitOverrides {
                memory_mb: Some(256),
                timeout_ms: Some(1000)
            }
        );
        for bad in [
            "memory_mb = 0",
            "memory_mb = 5000",
            "timeout_ms = 0",
            "timeout_ms = 600000",
        ] {
            let error = parse(&format!("[default]\nmodule = \"p.wasm\"\n{bad}\n")).unwrap_err();
            assert!(error.0.contains("not between"), "{bad}: {error}");
        }
        assert!(parse("[default]\nmodule = \"p.wasm\"\nmemory_mb = \"lots\"\n").is_err());
    }

    #[test]
    fn paths_outside_the_folder_are_refused() {
        for path in ["../denbi.wasm", "/etc/passwd", "a/../../b.wasm", "", "."] {
            assert!(!inside_folder(path), "{path}");
            let error = parse(&format!("[default]\nmodule = {path:?}\n")).unwrap_err();
            assert!(error.0.contains("not inside the policy folder"), "{error}");
        }
        for path in ["denbi.wasm", "./denbi.wasm", "sub/denbi.wasm"] {
            assert!(inside_folder(path), "{path}");
        }
        let error = parse(
            "[default]\nmodule = \"denbi.wasm\"\n[sites.\"1\"]\nmodule = \"d.wasm\"\nconfig_file = \"/etc/shadow\"\n",
        )
        .unwrap_err();
        assert!(error.0.contains("config_file"), "{error}");
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
        assert_eq!(mapped[0].limits, LimitOverrides::default());
        assert!(parse("[default]\nmodule = \"a.wasm\"\nextra = 1\n").is_err());
    }

    #[test]
    fn changes_are_read_with_their_from_and_checked() {
        let mapped = parse(
            "[default]\nmodule = \"denbi.wasm\"\n\n[[changes]]\nfrom = \"2027-01-01T01:00:00+01:00\"\nsite = \"default\"\nmodule = \"denbi.wasm\"\nconfig = { cpu_price = \"2\" }\n\n[[changes]]\nfrom = 2027-02-01T00:00:00Z\nsite = \"8677\"\nmodule = \"tariff.wasm\"\n",
        )
        .unwrap();
        assert_eq!(mapped.len(), 3);
        assert_eq!(mapped[0].from, None);
        let new_year = 1_798_761_600_000_000_000; // 2027-01-01T00:00:00Z
        assert_eq!(mapped[1].from, Some(new_year));
        assert_eq!(mapped[1].site, DEFAULT_SITE);
        assert_eq!(mapped[2].from, Some(new_year + 31 * 86_400 * 1_000_000_000));
        assert_eq!(mapped[2].site, "8677");
        assert_eq!(mapped[1].correction_reason, None);
        let reasoned = parse(
            "[default]\nmodule = \"p.wasm\"\n[[changes]]\nfrom = 2020-01-01T00:00:00Z\nsite = \"default\"\nmodule = \"p.wasm\"\ncorrection_reason = \" a bug in 1.0 \"\n",
        )
        .unwrap();
        assert_eq!(
            reasoned[1].correction_reason.as_deref(),
            Some("a bug in 1.0")
        );
        assert!(
            parse("[default]\nmodule = \"p.wasm\"\ncorrection_reason = \"x\"\n").is_err(),
            "only a change re-prices the past"
        );
        for (bad, why) in [
            (
                "from = 2027-01-01T00:00:00Z\ncorrection_reason = \" \"",
                "correction_reason is empty",
            ),
            ("from = \"tomorrow\"", "not an RFC 3339"),
            ("from = 2027-01-01T00:00:00", "not an RFC 3339"),
            ("from = 5", "not a date-time"),
        ] {
            let error = parse(&format!(
                "[default]\nmodule = \"p.wasm\"\n[[changes]]\n{bad}\nsite = \"default\"\nmodule = \"p.wasm\"\n"
            ))
            .unwrap_err();
            assert!(
                error.0.contains(why) && error.0.contains("changes[0]"),
                "{bad}: {error}"
            );
        }
        let twice =
            "[[changes]]\nfrom = \"2027-01-01T00:00:00Z\"\nsite = \"1\"\nmodule = \"p.wasm\"\n";
        let error = parse(&format!("[default]\nmodule = \"p.wasm\"\n{twice}{twice}")).unwrap_err();
        assert!(error.0.contains("a second change"), "{error}");
        let error = parse("[default]\nmodule = \"p.wasm\"\n[[changes]]\nfrom = \"2027-01-01T00:00:00Z\"\nsite = \"1\"\nmodule = \"../p.wasm\"\n").unwrap_err();
        assert!(error.0.contains("not inside the policy folder"), "{error}");
    }
}
