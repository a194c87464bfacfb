//! The price schedule, live: each entry of the ledger's schedule with its
//! loaded module, and the answers billing needs from it: which version was
//! in force at a site at an instant, where a step's usage crosses from one
//! version to another, and what a folder's (or an upload's) entries change.
//!
//! A site's **timeline** is its entries ordered by `from`; at a `(site,
//! from)` the entry added last counts, and a [`Kind::Withdrawn`] one takes
//! back the entries there before it. The version in force at a site at `t`
//! is the site's latest entry with `from <= t` when that is a module, else
//! the default's (a site without entries of its own, or one whose latest
//! entry is [`Kind::Inherit`], is priced by the default).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::set::{Active, DEFAULT_SITE, PolicySet};
use super::{Module, PolicyRuntime};
use os_credits_core::schedule::{BEGINNING, Entry, Kind, show_time};

/// An entry with its module.
#[derive(Debug)]
pub struct Version {
    /// The entry as the ledger keeps it.
    pub entry: Entry,
    /// Its module (configured, with its limits), or why it cannot be
    /// loaded now: steps it prices then fail and wait, one key at a time.
    pub policy: Result<Arc<Module>, LoadFailure>,
}

/// Why a schedule entry has no module now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadFailure {
    /// The entry names none (it inherits the default, or withdraws).
    #[error("no module")]
    NoModule,
    /// The ledger holds no module with this SHA-256.
    #[error("the ledger holds no module with sha256 {0}")]
    Missing(String),
    /// The module could not be read from the ledger.
    #[error("{0}")]
    Ledger(String),
    /// The ledger's bytes are not the module the entry names.
    #[error("the ledger's module {expected} has sha256 {found}")]
    Checksum {
        /// The SHA-256 the entry names.
        expected: String,
        /// The SHA-256 of the bytes the ledger holds.
        found: String,
    },
    /// The runtime refused the module (its error).
    #[error("{0}")]
    Load(String),
}

impl Version {
    /// Its module, when loaded.
    pub fn module(&self) -> Option<&Arc<Module>> {
        self.policy.as_ref().ok()
    }
}

/// The schedule: every entry ever added, and each site's timeline.
#[derive(Debug, Default)]
pub struct Schedule {
    entries: Vec<Arc<Version>>,
    timelines: BTreeMap<String, Vec<Arc<Version>>>,
    metrics: HashMap<String, HashSet<String>>,
    default_metrics: HashSet<String>,
    plain: bool,
}

/// The module of an entry: its bytes, vetted elsewhere, loaded (or reused).
pub type Loader<'a> = dyn FnMut(&Entry) -> Result<Arc<Module>, LoadFailure> + 'a;

/// The last version of `line` whose `from` is at or before `t`.
fn last_at(line: &[Arc<Version>], t: i64) -> Option<&Arc<Version>> {
    let after = line.partition_point(|v| v.entry.from <= t);
    after.checked_sub(1).map(|i| &line[i])
}

/// The entries that count, per site, ordered by `from` (see the module doc).
fn timelines_of(entries: &[Arc<Version>]) -> BTreeMap<String, Vec<Arc<Version>>> {
    let mut latest: BTreeMap<(&str, i64), &Arc<Version>> = BTreeMap::new();
    for version in entries {
        let key = (version.entry.site.as_str(), version.entry.from);
        match latest.get(&key) {
            Some(kept) if kept.entry.id > version.entry.id => {}
            _ => {
                latest.insert(key, version);
            }
        }
    }
    let mut timelines: BTreeMap<String, Vec<Arc<Version>>> = BTreeMap::new();
    for ((site, _), version) in latest {
        if version.entry.kind != Kind::Withdrawn {
            timelines
                .entry(site.to_owned())
                .or_default()
                .push(Arc::clone(version));
        }
    }
    timelines
}

/// The entries that count, as plain entries (for planning).
fn effective(entries: &[Entry]) -> BTreeMap<(String, i64), Entry> {
    let mut latest: BTreeMap<(String, i64), Entry> = BTreeMap::new();
    for entry in entries {
        let key = (entry.site.clone(), entry.from);
        match latest.get(&key) {
            Some(kept) if kept.id > entry.id => {}
            _ => {
                latest.insert(key, entry.clone());
            }
        }
    }
    latest.retain(|_, e| e.kind != Kind::Withdrawn);
    latest
}

/// A site's own entry in force at `t` among `effective` entries.
fn own_at(effective: &BTreeMap<(String, i64), Entry>, site: &str, t: i64) -> Option<Entry> {
    effective
        .range((site.to_owned(), i64::MIN)..=(site.to_owned(), t))
        .next_back()
        .map(|(_, e)| e.clone())
}

impl Schedule {
    /// Builds the schedule of `entries` (in the order they were added),
    /// loading each entry's module with `load`.
    pub fn build(entries: Vec<Entry>, load: &mut Loader<'_>) -> Schedule {
        let entries: Vec<Arc<Version>> = entries
            .into_iter()
            .map(|entry| {
                let policy = match entry.kind {
                    Kind::Module => load(&entry),
                    Kind::Inherit | Kind::Withdrawn => Err(LoadFailure::NoModule),
                };
                Arc::new(Version { entry, policy })
            })
            .collect();
        let timelines = timelines_of(&entries);
        let known = |line: &[Arc<Version>]| -> HashSet<String> {
            line.iter()
                .filter_map(|v| v.module())
                .flat_map(|m| m.info().metrics.iter().map(|metric| metric.name.clone()))
                .collect()
        };
        let default_metrics = timelines
            .get(DEFAULT_SITE)
            .map(|line| known(line))
            .unwrap_or_default();
        let metrics = timelines
            .iter()
            .filter(|(site, _)| site.as_str() != DEFAULT_SITE)
            .map(|(site, line)| {
                let mut names = known(line);
                names.extend(default_metrics.iter().cloned());
                (site.clone(), names)
            })
            .collect();
        let plain = timelines.values().all(|line| line.len() <= 1);
        Schedule {
            entries,
            timelines,
            metrics,
            default_metrics,
            plain,
        }
    }

    /// The schedule a policy folder describes on its own: its entries
    /// from the beginning of time, its `[[changes]]` from their `from`
    /// (what a ledger's first schedule is, and what `policy run
    /// --mapping` prices with).
    pub fn of_folder(set: &PolicySet, origin: &str, added_at: i64) -> Schedule {
        let entries = folder_entries(set, origin, added_at);
        let mut modules: HashMap<i64, Arc<Module>> = HashMap::new();
        for (entry, active) in entries.iter().zip(set.entries()) {
            modules.insert(entry.id, Arc::clone(&active.policy));
        }
        Schedule::build(entries, &mut |entry: &Entry| {
            modules.get(&entry.id).cloned().ok_or(LoadFailure::NoModule)
        })
    }

    /// Every entry, in the order they were added.
    pub fn entries(&self) -> &[Arc<Version>] {
        &self.entries
    }

    /// The id the next entry gets.
    pub fn next_id(&self) -> i64 {
        self.entries.last().map_or(1, |v| v.entry.id + 1)
    }

    /// Whether no entry has been added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The version in force at `site` at `t` (`None` before the default's
    /// first entry, which only an empty schedule lacks).
    pub fn in_force(&self, site: &str, t: i64) -> Option<&Arc<Version>> {
        if let Some(line) = self.timelines.get(site)
            && let Some(own) = last_at(line, t)
            && own.entry.kind == Kind::Module
        {
            return Some(own);
        }
        last_at(self.timelines.get(DEFAULT_SITE)?, t)
    }

    /// The versions that price the usage of a step from `t0` to `t1` at
    /// `site`: each with the instant its part starts (the first at `t0`),
    /// a new part wherever the version in force changes strictly inside
    /// the step.
    pub fn parts(&self, site: &str, t0: i64, t1: i64) -> Vec<(i64, &Arc<Version>)> {
        let Some(first) = self.in_force(site, t0) else {
            return Vec::new();
        };
        let mut parts = vec![(t0, first)];
        if self.plain || t1 <= t0 {
            return parts;
        }
        let mut edges: Vec<i64> = [Some(site), Some(DEFAULT_SITE)]
            .into_iter()
            .flatten()
            .filter_map(|s| self.timelines.get(s))
            .flat_map(|line| line.iter().map(|v| v.entry.from))
            .filter(|from| *from > t0 && *from < t1)
            .collect();
        edges.sort_unstable();
        edges.dedup();
        for edge in edges {
            if let Some(version) = self.in_force(site, edge)
                && !Arc::ptr_eq(version, parts[parts.len() - 1].1)
            {
                parts.push((edge, version));
            }
        }
        parts
    }

    /// Whether any version at `site` ever prices `metric`.
    pub fn prices(&self, site: &str, metric: &str) -> bool {
        if self.metrics.is_empty() {
            return self.default_metrics.contains(metric);
        }
        self.metrics
            .get(site)
            .unwrap_or(&self.default_metrics)
            .contains(metric)
    }

    /// The policies in force at `t`: the default's, then each site's own.
    pub fn at(&self, t: i64) -> Vec<(String, &Arc<Version>)> {
        self.timelines
            .keys()
            .filter_map(|site| {
                let version = self.in_force(site, t)?;
                (site == DEFAULT_SITE || version.entry.site == *site)
                    .then(|| (site.clone(), version))
            })
            .collect()
    }

    /// Whether entry `id` is part of a timeline (not replaced by a later
    /// entry at the same site and `from`, not withdrawn).
    pub fn counts(&self, id: i64) -> bool {
        self.timelines
            .values()
            .any(|line| line.iter().any(|v| v.entry.id == id))
    }

    /// Whether `site` has entries of its own (else the default prices it).
    pub fn has_own(&self, site: &str) -> bool {
        site != DEFAULT_SITE && self.timelines.contains_key(site)
    }

    /// Whether a step at `site` can never span a change (every timeline
    /// holds one entry): billing's fast path.
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// What adding `wanted` changes, decided at `now` (Unix ns): the new
    /// entries (numbered from [`Self::next_id`]) and why any was refused.
    ///
    /// - a wanted entry with a `from` (a `[[changes]]` entry) is added at
    ///   its `from` unless the same prices are there already;
    /// - one without (`[default]`, `[sites]`) takes effect at `now` when it
    ///   differs from what is in force then (no entry at all on a
    ///   ledger's first schedule: everything from the beginning);
    /// - with `complete` (the whole folder), a site the folder no longer
    ///   names goes back to the default at `now`, and an upcoming change
    ///   the folder added and no longer names is withdrawn.
    ///
    /// A `from` before `billed_until(site)` (the latest measurement billed
    /// there) is refused: the past is corrected, never silently re-priced.
    pub fn plan(
        &self,
        wanted: &[Wanted],
        complete: bool,
        now: i64,
        billed_until: &dyn Fn(&str) -> Option<i64>,
    ) -> Plan {
        let mut plan = Plan::default();
        // Entries the wanted ones imply (withdrawals, back to the default)
        // come from where they do.
        let origin = wanted
            .first()
            .map_or_else(|| "folder".to_owned(), |w| w.entry.origin.clone());
        let known: Vec<Entry> = self.entries.iter().map(|v| v.entry.clone()).collect();
        let first = known.is_empty();
        let mut next = self.next_id();
        let mut add = |plan: &mut Plan, entry: Entry| {
            plan.entries.push(Entry { id: next, ..entry });
            next += 1;
        };
        let refuse = |site: &str, from: i64| -> Option<String> {
            let until = billed_until(site)?;
            (from < until).then(|| {
                format!(
                    "a change at site {site} from {} lies before steps already billed there (latest billed measurement {}): give it a correction_reason to re-price them (a correction is booked), or a later from",
                    show_time(from),
                    show_time(until)
                )
            })
        };
        // Changes with a `from` of their own.
        for want in wanted.iter().filter(|w| w.from.is_some()) {
            let from = want.from.unwrap_or(BEGINNING);
            let all: Vec<Entry> = known.iter().chain(&plan.entries).cloned().collect();
            let there = effective(&all).remove(&(want.entry.site.clone(), from));
            if there.is_some_and(|e| e.same_prices(&want.entry)) {
                continue;
            }
            // Back-dated with a reason: accepted; a correction re-prices
            // what was billed (see `billing::correction::for_entry`).
            if want.entry.correction_reason.is_none()
                && let Some(why) = refuse(&want.entry.site, from)
            {
                plan.refused.push(why);
                continue;
            }
            add(
                &mut plan,
                Entry {
                    from,
                    added_at: now,
                    ..want.entry.clone()
                },
            );
        }
        if complete {
            // Upcoming changes the folder added and no longer names.
            let named: HashSet<(&str, i64)> = wanted
                .iter()
                .filter_map(|w| Some((w.entry.site.as_str(), w.from?)))
                .collect();
            for entry in effective(&known).into_values() {
                if entry.from > now
                    && entry.origin.starts_with("folder")
                    && !named.contains(&(entry.site.as_str(), entry.from))
                {
                    add(
                        &mut plan,
                        Entry {
                            file: entry.file.clone(),
                            ..marker(Kind::Withdrawn, &entry.site, entry.from, now, &origin)
                        },
                    );
                }
            }
        }
        // Entries without a `from`: in force from now (or from the
        // beginning on a first schedule).
        let all: Vec<Entry> = known.iter().chain(&plan.entries).cloned().collect();
        let current = effective(&all);
        let mut sites: Vec<&str> = wanted.iter().map(|w| w.entry.site.as_str()).collect();
        if complete {
            sites.extend(current.keys().map(|(site, _)| site.as_str()));
        }
        sites.sort_unstable();
        sites.dedup();
        let from = if first { BEGINNING } else { now };
        for site in sites {
            let base = wanted
                .iter()
                .find(|w| w.entry.site == site && w.from.is_none());
            if first {
                // A first schedule: the entries from the beginning of time.
                if let Some(base) = base {
                    add(
                        &mut plan,
                        Entry {
                            from,
                            added_at: now,
                            ..base.entry.clone()
                        },
                    );
                }
                continue;
            }
            // A change of the wanted ones in force at `now` was added above.
            if wanted
                .iter()
                .any(|w| w.entry.site == site && w.from.is_some_and(|f| f <= now))
            {
                continue;
            }
            let wanted_now = match base {
                Some(want) => Some(&want.entry),
                None if !complete => continue,
                None => None,
            };
            let have = own_at(&current, site, now);
            let differs = match (wanted_now, &have) {
                (Some(want), Some(have)) => !have.same_prices(want),
                (Some(_), None) => true,
                (None, Some(have)) => have.kind == Kind::Module && site != DEFAULT_SITE,
                (None, None) => false,
            };
            if !differs {
                continue;
            }
            if !first && let Some(why) = refuse(site, from) {
                plan.refused.push(why);
                continue;
            }
            let entry = match wanted_now {
                Some(want) => want.clone(),
                None => marker(Kind::Inherit, site, from, now, &origin),
            };
            add(
                &mut plan,
                Entry {
                    from,
                    added_at: now,
                    ..entry
                },
            );
        }
        plan
    }

    /// How `set` (a policy folder) differs from this schedule at `now`:
    /// one line per site or change that differs (empty: it matches).
    pub fn differences(&self, set: &PolicySet, now: i64) -> Vec<String> {
        let wanted = wanted_of(set, "folder", now);
        self.plan(&wanted, true, now, &|_| None)
            .entries
            .iter()
            .map(|entry| match entry.kind {
                Kind::Withdrawn => format!(
                    "site {}: the schedule has a change from {} the folder does not name",
                    entry.site,
                    show_time(entry.from)
                ),
                Kind::Inherit => format!(
                    "site {}: the schedule prices it with a policy of its own, the folder with the default",
                    entry.site
                ),
                Kind::Module if entry.from == now || entry.from == BEGINNING => format!(
                    "site {}: the folder has {} (sha256 {}), the schedule {}",
                    entry.site,
                    entry.file,
                    entry.sha256,
                    self.in_force(&entry.site, now)
                        .filter(|v| v.entry.site == entry.site || entry.site == DEFAULT_SITE)
                        .map_or_else(
                            || "the default".to_owned(),
                            |v| format!("{} (sha256 {})", v.entry.file, v.entry.sha256)
                        )
                ),
                Kind::Module => format!(
                    "site {}: the folder has a change from {} ({}) the schedule does not",
                    entry.site,
                    show_time(entry.from),
                    entry.file
                ),
            })
            .collect()
    }
}

/// An entry without a module ([`Kind::Inherit`], [`Kind::Withdrawn`]), not
/// yet numbered.
fn marker(kind: Kind, site: &str, from: i64, added_at: i64, origin: &str) -> Entry {
    Entry {
        id: 0,
        site: site.to_owned(),
        from,
        kind,
        file: String::new(),
        sha256: String::new(),
        config: String::new(),
        memory_mb: None,
        timeout_ms: None,
        added_at,
        origin: origin.to_owned(),
        correction_reason: None,
    }
}

/// An entry someone wants in the schedule, not yet numbered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Wanted {
    /// The entry (its `id`, `from` and `added_at` are set when planned).
    pub entry: Entry,
    /// Its own `from` (a `[[changes]]` entry or an upload naming one);
    /// `None`: in force from when it is added.
    pub from: Option<i64>,
    /// Its module, when the one who wants it has it loaded already.
    #[serde(skip)]
    pub module: Option<Arc<Module>>,
}

/// What [`Schedule::plan`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries to add, numbered, in order.
    pub entries: Vec<Entry>,
    /// Why wanted entries were not added.
    pub refused: Vec<String>,
}

/// The schedule entry an active policy of a folder stands for.
pub fn entry_of(active: &Active, origin: &str, added_at: i64) -> Entry {
    Entry {
        id: 0,
        site: active.site.clone(),
        from: active.from.unwrap_or(BEGINNING),
        kind: Kind::Module,
        file: active.file.clone(),
        sha256: hex::encode(Sha256::digest(&active.bytes)),
        config: active.policy.config().to_owned(),
        memory_mb: active.overrides.memory_mb,
        timeout_ms: active.overrides.timeout_ms,
        added_at,
        origin: origin.to_owned(),
        correction_reason: active.correction_reason.clone(),
    }
}

/// What a folder wants, entry by entry.
pub fn wanted_of(set: &PolicySet, origin: &str, added_at: i64) -> Vec<Wanted> {
    set.entries()
        .map(|active| Wanted {
            entry: entry_of(active, origin, added_at),
            from: active.from,
            module: Some(Arc::clone(&active.policy)),
        })
        .collect()
}

/// A folder's entries as a first schedule: numbered from 1, the base
/// entries from the beginning, the changes from their `from`.
fn folder_entries(set: &PolicySet, origin: &str, added_at: i64) -> Vec<Entry> {
    set.entries()
        .zip(1..)
        .map(|(active, id)| Entry {
            id,
            ..entry_of(active, origin, added_at)
        })
        .collect()
}

/// Loads schedule entries' modules from their bytes, reusing modules
/// already loaded with the same bytes, configuration and limits.
pub struct ModuleLoader<'a> {
    runtime: &'a PolicyRuntime,
    known: Vec<Arc<Module>>,
}

impl<'a> ModuleLoader<'a> {
    /// A loader that reuses the modules of `previous`.
    pub fn new(runtime: &'a PolicyRuntime, previous: Option<&Schedule>) -> Self {
        let known = previous
            .into_iter()
            .flat_map(|s| s.entries.iter())
            .filter_map(|v| v.module().cloned())
            .collect();
        ModuleLoader { runtime, known }
    }

    /// Offers a module already loaded elsewhere (a folder's) for reuse.
    pub fn offer(&mut self, module: Arc<Module>) {
        self.known.push(module);
    }

    /// The module of `entry`, its bytes fetched with `bytes` when it must
    /// be loaded.
    pub fn load(
        &mut self,
        entry: &Entry,
        bytes: impl FnOnce(&str) -> Result<Vec<u8>, LoadFailure>,
    ) -> Result<Arc<Module>, LoadFailure> {
        let limits = self.runtime.limits().with(super::mapping::LimitOverrides {
            memory_mb: entry.memory_mb,
            timeout_ms: entry.timeout_ms,
        });
        let config_sha256 = hex::encode(Sha256::digest(entry.config.as_bytes()));
        if let Some(known) = self.known.iter().find(|m| {
            m.info().sha256 == entry.sha256
                && m.info().config_sha256 == config_sha256
                && m.limits() == limits
        }) {
            return Ok(Arc::clone(known));
        }
        let bytes = bytes(&entry.sha256)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if sha256 != entry.sha256 {
            return Err(LoadFailure::Checksum {
                expected: entry.sha256.clone(),
                found: sha256,
            });
        }
        let module = Arc::new(
            self.runtime
                .load_bytes_with(&bytes, &entry.config, limits)
                .map_err(|e| LoadFailure::Load(e.to_string()))?,
        );
        self.known.push(Arc::clone(&module));
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn entry(id: i64, site: &str, from: i64, kind: Kind, config: &str) -> Entry {
        Entry {
            id,
            site: site.into(),
            from,
            kind,
            file: "p.wasm".into(),
            sha256: if kind == Kind::Module {
                "ab".repeat(32)
            } else {
                String::new()
            },
            config: config.into(),
            memory_mb: None,
            timeout_ms: None,
            added_at: 0,
            origin: "folder".into(),
            correction_reason: None,
        }
    }

    fn schedule(entries: Vec<Entry>) -> Schedule {
        Schedule::build(entries, &mut |_: &Entry| {
            Err(LoadFailure::Load("not loaded in this test".into()))
        })
    }

    fn want(site: &str, from: Option<i64>, config: &str) -> Wanted {
        Wanted {
            entry: entry(0, site, 0, Kind::Module, config),
            from,
            module: None,
        }
    }

    fn ids(parts: &[(i64, &Arc<Version>)]) -> Vec<(i64, i64)> {
        parts.iter().map(|(at, v)| (*at, v.entry.id)).collect()
    }

    #[test]
    fn a_step_finds_its_versions_by_the_time_of_its_usage() {
        let s = schedule(vec![
            entry(1, DEFAULT_SITE, BEGINNING, Kind::Module, "a"),
            entry(2, DEFAULT_SITE, 100, Kind::Module, "b"),
            entry(3, "8677", 50, Kind::Module, "own"),
            entry(4, "8677", 150, Kind::Inherit, ""),
            entry(5, DEFAULT_SITE, 300, Kind::Module, "c"),
            entry(6, DEFAULT_SITE, 300, Kind::Withdrawn, ""),
        ]);
        assert!(!s.is_plain());
        // Ends at the change: the version before; starts at it: the new one.
        assert_eq!(ids(&s.parts("8676", 10, 100)), vec![(10, 1)]);
        assert_eq!(ids(&s.parts("8676", 100, 120)), vec![(100, 2)]);
        assert_eq!(ids(&s.parts("8676", 90, 110)), vec![(90, 1), (100, 2)]);
        // A site of its own, then back to the default (whose change at
        // 100 does not split the site's steps while it has its own).
        assert_eq!(
            ids(&s.parts("8677", 0, 200)),
            vec![(0, 1), (50, 3), (150, 2)]
        );
        // A withdrawn change splits nothing.
        assert_eq!(ids(&s.parts("8676", 200, 400)), vec![(200, 2)]);
        assert!(!s.counts(5) && !s.counts(6) && s.counts(4));
        assert!(s.has_own("8677") && !s.has_own("8676"));
    }

    #[test]
    fn a_plan_adds_what_differs_from_when_it_applies_and_refuses_the_past() {
        let none = |_: &str| None;
        // A first schedule: the folder from the beginning, changes at theirs.
        let first = Schedule::default().plan(
            &[
                want(DEFAULT_SITE, None, "a"),
                want(DEFAULT_SITE, Some(500), "b"),
            ],
            true,
            NOW,
            &|_: &str| Some(400),
        );
        assert_eq!(first.refused, Vec::<String>::new());
        let froms: Vec<(i64, i64)> = first.entries.iter().map(|e| (e.id, e.from)).collect();
        assert_eq!(froms, vec![(1, 500), (2, BEGINNING)]);
        let s = schedule(first.entries.clone());
        // The same folder again: nothing.
        let same = s.plan(
            &[
                want(DEFAULT_SITE, None, "a"),
                want(DEFAULT_SITE, Some(500), "b"),
            ],
            true,
            NOW,
            &none,
        );
        assert_eq!(same, Plan::default());
        // An edited base entry takes effect now; a dropped upcoming change
        // (from after now) is withdrawn; a past one stays.
        let edited = s.plan(&[want(DEFAULT_SITE, None, "c")], true, 200, &none);
        let kinds: Vec<(Kind, i64)> = edited.entries.iter().map(|e| (e.kind, e.from)).collect();
        assert_eq!(kinds, vec![(Kind::Withdrawn, 500), (Kind::Module, 200)]);
        assert_eq!(edited.entries[0].id, 3);
        // A change before billed usage is refused, naming it.
        let late = s.plan(&[want("8677", Some(10), "x")], false, NOW, &|site: &str| {
            (site == "8677").then_some(20)
        });
        assert!(late.entries.is_empty());
        assert!(
            late.refused[0].contains("latest billed measurement"),
            "{late:?}"
        );
        // A site the folder no longer names goes back to the default.
        let own = schedule(vec![
            entry(1, DEFAULT_SITE, BEGINNING, Kind::Module, "a"),
            entry(2, "8677", BEGINNING, Kind::Module, "own"),
        ]);
        let dropped = own.plan(&[want(DEFAULT_SITE, None, "a")], true, NOW, &none);
        assert_eq!(dropped.entries.len(), 1);
        assert_eq!(
            (
                dropped.entries[0].kind,
                dropped.entries[0].site.as_str(),
                dropped.entries[0].from
            ),
            (Kind::Inherit, "8677", NOW)
        );
    }
}
