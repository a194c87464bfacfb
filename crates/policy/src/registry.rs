//! Hot reload: the policies in force, swapped atomically when the policy
//! folder changes.
//!
//! A watcher (`notify`) on the folder debounces events (hidden and
//! temporary files are ignored; a module written elsewhere and renamed into
//! place is the safe way to deploy) and calls [`Registry::reload`]. A reload
//! reads the mapping, compiles and validates only what changed (contract
//! version, `configure`, `describe`, the policy's self-test examples), off
//! the request path, and swaps the new [`PolicySet`] in with one atomic
//! store: pricing in flight finishes on the version it started with. A
//! module that fails never becomes active; its site keeps the last good
//! version, and the failure is kept for `/api/policies` and `/stats` until
//! that file loads. A removed module keeps its last good version in memory
//! (reported as a failure) until the mapping stops naming it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::PolicyRuntime;
use super::set::{Failure, MAPPING_FILE, PolicySet, SetError, assignments};

use os_credits_core::sync::Locked;

/// Quiet time after the last event before a reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// What is told of a new folder state (see [`Registry::on_change`]).
pub type OnChange = Box<dyn Fn(Arc<PolicySet>) + Send + Sync>;

/// The policies in force and the failures of the latest loads.
pub struct Registry {
    runtime: Arc<PolicyRuntime>,
    folder: PathBuf,
    current: Arc<ArcSwap<PolicySet>>,
    failures: Mutex<Vec<Failure>>,
    reloading: Mutex<()>,
    on_change: Mutex<Option<OnChange>>,
    refusals: Mutex<Vec<Failure>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Whether a new set was swapped in.
    pub swapped: bool,
    /// Failures of this reload.
    pub failures: Vec<Failure>,
}

impl Registry {
    /// Loads the folder; every mapped module must load.
    pub fn open(runtime: Arc<PolicyRuntime>, folder: &Path) -> Result<Self, SetError> {
        let set = PolicySet::load(&runtime, folder)?;
        Ok(Registry {
            runtime,
            folder: folder.to_owned(),
            current: Arc::new(ArcSwap::from_pointee(set)),
            failures: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
            on_change: Mutex::new(None),
            refusals: Mutex::new(Vec::new()),
        })
    }

    /// Calls `hook` with the folder's new state after each reload that
    /// swapped one in (the service turns it into schedule changes).
    pub fn on_change(&self, hook: OnChange) {
        *self.on_change.locked() = Some(hook);
    }

    /// Keeps what the latest change of the folder was refused (found by
    /// whoever acted on it) beside the loads' failures, until the next
    /// change's outcome replaces it.
    pub fn report(&self, refusals: Vec<Failure>) {
        *self.refusals.locked() = refusals;
    }

    /// The folder it watches.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The set in force, for readers that load it per use.
    pub fn policies(&self) -> Arc<ArcSwap<PolicySet>> {
        Arc::clone(&self.current)
    }

    /// Failures of the latest load of each file that does not load now,
    /// then what the latest change was refused.
    pub fn failures(&self) -> Vec<Failure> {
        let mut failures = self.failures.locked().clone();
        failures.extend(self.refusals.locked().iter().cloned());
        failures
    }

    /// Rescans the folder and swaps in what changed and validates.
    pub fn reload(&self) -> Reloaded {
        let _one_at_a_time = self.reloading.locked();
        let previous = self.current.load_full();
        let (set, failures) = match assignments(&self.folder) {
            Ok(assignments) => PolicySet::build(&self.runtime, &assignments, Some(&previous)),
            Err(e) => (
                None,
                vec![Failure {
                    site: "all".into(),
                    file: MAPPING_FILE.into(),
                    sha256: String::new(),
                    error: format!("{e}; keeping the policies in force"),
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                }],
            ),
        };
        for failure in &failures {
            tracing::error!(site = %failure.site, file = %failure.file, sha256 = %failure.sha256, "policy not activated: {}", failure.error);
        }
        let swapped = match set {
            Some(set) if !set.same_as(&previous) => {
                for active in set.active() {
                    let info = active.policy.info();
                    tracing::info!(site = %active.site, file = %active.file, policy = %info.name, version = %info.version, sha256 = %info.sha256, cached = info.activation.cached, compile_ms = info.activation.compile_ms, ms = info.activation.total_ms, "policy active");
                }
                self.current.store(Arc::new(set));
                true
            }
            _ => false,
        };
        if swapped && let Some(hook) = self.on_change.locked().as_ref() {
            hook(self.current.load_full());
        }
        {
            // Every mapped file was just tried: the failures are exactly this
            // reload's, unless the mapping itself could not be read.
            let mapping_failed = failures.iter().any(|f| f.file == MAPPING_FILE);
            let mut kept = self.failures.locked();
            if mapping_failed {
                kept.retain(|f| f.file != MAPPING_FILE);
                kept.extend(failures.iter().cloned());
            } else {
                *kept = failures.clone();
            }
        }
        Reloaded { swapped, failures }
    }

    /// Watches the folder and reloads on changes, on a thread of its own,
    /// for as long as the registry lives.
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        os_credits_core::watch::debounced(
            "policy-watch",
            std::slice::from_ref(&self.folder),
            DEBOUNCE,
            relevant,
            Arc::downgrade(self),
            |registry: &Registry| {
                registry.reload();
            },
        )
    }
}

/// Whether a changed path can matter: not hidden, not an editor's or a
/// copy's temporary file.
fn relevant(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !(name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".swp", ".part", ".partial", ".crdownload"]
            .iter()
            .any(|suffix| name.ends_with(suffix)))
}

#[cfg(test)]
mod tests {
    use super::relevant;
    use std::path::Path;

    #[test]
    fn hidden_and_temporary_files_are_ignored() {
        assert!(relevant(Path::new("/p/denbi.wasm")));
        assert!(relevant(Path::new("/p/policies.toml")));
        for ignored in [
            ".denbi.wasm",
            "denbi.wasm.tmp",
            "denbi.wasm~",
            ".policies.toml.swp",
            "x.part",
        ] {
            assert!(!relevant(&Path::new("/p").join(ignored)), "{ignored}");
        }
    }
}
