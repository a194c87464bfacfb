//! The price schedule as billing holds it: read from the ledger (never
//! from a local folder), shared with the API, extended only by the billing
//! engine (see [`super::engine`]), in the same transaction as the writes
//! around it.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use os_credits_core::schedule::Entry;
use os_credits_core::sync::Locked;
use os_credits_ledger::{LedgerError, Schedules};
use os_credits_policy::schedule::{LoadFailure, ModuleLoader};
pub use os_credits_policy::schedule::{Plan, Schedule, Wanted};
use os_credits_policy::set::PolicySet;
use os_credits_policy::{Module, PolicyRuntime};

/// The schedule in force and where it comes from.
pub struct LiveSchedule {
    runtime: Arc<PolicyRuntime>,
    store: Arc<dyn Schedules>,
    live: Arc<ArcSwap<Schedule>>,
    building: Mutex<()>,
    /// Modules loaded elsewhere (the folder's at start), reused when an
    /// entry names the same bytes, configuration and limits.
    offered: Mutex<Vec<Arc<Module>>>,
}

impl LiveSchedule {
    /// The schedule of the ledger behind `store` (empty until [`Self::refresh`]).
    pub fn new(runtime: Arc<PolicyRuntime>, store: Arc<dyn Schedules>) -> Self {
        LiveSchedule {
            runtime,
            store,
            live: Arc::new(ArcSwap::from_pointee(Schedule::default())),
            building: Mutex::new(()),
            offered: Mutex::new(Vec::new()),
        }
    }

    /// Offers the modules of `set` (loaded already) for the schedule's
    /// entries that name the same bytes, configuration and limits: they
    /// are not loaded twice.
    pub fn offer(&self, set: &PolicySet) {
        self.offered
            .locked()
            .extend(set.entries().map(|active| Arc::clone(&active.policy)));
    }

    /// The runtime that loads the schedule's modules.
    pub fn runtime(&self) -> &PolicyRuntime {
        &self.runtime
    }

    /// Keeps one module's bytes in the ledger (an upload's).
    pub fn keep_module(&self, sha256: &str, bytes: &[u8]) -> Result<(), LedgerError> {
        self.store.put_module(sha256, bytes)
    }

    /// A module's bytes from the ledger, by SHA-256 (hex).
    pub fn module_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.store.module(sha256)
    }

    /// The schedule in force, for readers that load it per use.
    pub fn live(&self) -> Arc<ArcSwap<Schedule>> {
        Arc::clone(&self.live)
    }

    /// The schedule in force now.
    pub fn current(&self) -> Arc<Schedule> {
        self.live.load_full()
    }

    /// Reads the ledger's schedule and swaps it in when it has entries
    /// the one in force lacks. Returns whether it did.
    pub fn refresh(&self) -> Result<bool, LedgerError> {
        let _one = self.building.locked();
        let head = self.store.schedule_head()?;
        let current = self.current();
        if head == current.next_id() - 1 {
            return Ok(false);
        }
        let entries = self.store.schedule()?;
        let schedule = self.build(entries, &[], Some(&current));
        self.live.store(Arc::new(schedule));
        Ok(true)
    }

    /// The schedule in force with `entries` added (their modules from
    /// `wanted` where loaded already, else from the ledger's bytes).
    pub fn extended(&self, base: &Schedule, entries: &[Entry], wanted: &[Wanted]) -> Schedule {
        let all: Vec<Entry> = base
            .entries()
            .iter()
            .map(|v| v.entry.clone())
            .chain(entries.iter().cloned())
            .collect();
        self.build(all, wanted, Some(base))
    }

    /// Swaps in a schedule the engine has committed.
    pub fn install(&self, schedule: Arc<Schedule>) {
        self.live.store(schedule);
    }

    /// Keeps the bytes of every module `set` names in the ledger, so
    /// that whichever replica bills can load them.
    pub fn store_modules(&self, set: &PolicySet) -> Result<(), LedgerError> {
        for active in set.entries() {
            self.store
                .put_module(&active.policy.info().sha256, &active.bytes)?;
        }
        Ok(())
    }

    fn build(
        &self,
        entries: Vec<Entry>,
        wanted: &[Wanted],
        previous: Option<&Schedule>,
    ) -> Schedule {
        let mut loader = ModuleLoader::new(&self.runtime, previous);
        for module in wanted.iter().filter_map(|w| w.module.clone()) {
            loader.offer(module);
        }
        for module in self.offered.locked().iter() {
            loader.offer(Arc::clone(module));
        }
        let store = &self.store;
        Schedule::build(entries, &mut |entry: &Entry| {
            let loaded = loader.load(entry, |sha256| match store.module(sha256) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(LoadFailure::Missing(sha256.to_owned())),
                Err(e) => Err(LoadFailure::Ledger(e.to_string())),
            });
            if let Err(why) = &loaded {
                tracing::error!(entry = entry.id, site = %entry.site, file = %entry.file, "schedule entry cannot be loaded: {why}");
            }
            loaded
        })
    }
}
