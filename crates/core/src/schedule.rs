//! The price schedule's entries as the ledger keeps them: which module,
//! configuration and limits price a site from when on. A leaf: it names
//! nothing of the crate, so the ledger stores entries, `policy` builds the
//! live schedule from them and billing applies changes, without any of
//! them naming another.

/// The `from` of the entries in force when a ledger first got its
/// schedule: the beginning of time.
pub const BEGINNING: i64 = i64::MIN;

/// What an entry does from its `from` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The site is priced by this entry's module and configuration.
    Module,
    /// The site has no policy of its own any more: the default prices it.
    Inherit,
    /// An upcoming change taken back before its `from`: the entries at
    /// this site and `from` added before it no longer count.
    Withdrawn,
}

impl Kind {
    /// The word the ledger stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::Inherit => "inherit",
            Kind::Withdrawn => "withdrawn",
        }
    }

    /// Reads a stored word.
    pub fn parse(word: &str) -> Option<Kind> {
        match word {
            "module" => Some(Kind::Module),
            "inherit" => Some(Kind::Inherit),
            "withdrawn" => Some(Kind::Withdrawn),
            _ => None,
        }
    }
}

/// One entry of the schedule, append-only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Its number: entries are numbered in the order they were added.
    pub id: i64,
    /// `default` or a location id.
    pub site: String,
    /// Unix time (ns) of the usage it prices from on ([`BEGINNING`] for
    /// the first entries).
    pub from: i64,
    /// What it does.
    pub kind: Kind,
    /// The module's file name where it came from (informative).
    pub file: String,
    /// Hex SHA-256 of the module's bytes (which the ledger keeps); empty
    /// unless `kind` is [`Kind::Module`].
    pub sha256: String,
    /// The configuration text given to `configure`.
    pub config: String,
    /// Its memory cap in MiB, where it differs from the service's.
    pub memory_mb: Option<u64>,
    /// Its call deadline in ms, where it differs from the service's.
    pub timeout_ms: Option<u64>,
    /// When it was added (Unix ns).
    pub added_at: i64,
    /// Where it came from: `folder`, `folder at start`, `api`.
    pub origin: String,
    /// Why it re-prices usage already billed: a back-dated entry is
    /// accepted only with a reason, and books a correction with it.
    #[serde(default)]
    pub correction_reason: Option<String>,
}

impl Entry {
    /// Whether `other` prices the same way: same kind, module,
    /// configuration and limits (where and when it applies aside).
    pub fn same_prices(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.sha256 == other.sha256
            && self.config == other.config
            && self.memory_mb == other.memory_mb
            && self.timeout_ms == other.timeout_ms
    }
}

/// `from` as RFC 3339 (UTC), or `beginning` for [`BEGINNING`].
pub fn show_time(ns: i64) -> String {
    if ns == BEGINNING {
        return "beginning".to_owned();
    }
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ns.to_string())
}
