//! The runtime: the engine, its limits, a loaded [`Module`] and its calls.

use std::path::{Path, PathBuf};

use crate::{cache, mapping, signature};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::instance::{HostState, Pool};
pub use crate::instance::{MAX_BATCH, Step};

/// A tag of a sample: key and value (the policy reads those it declares).
pub type Tag<'a> = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>);

/// The contract version this host speaks (`os-credits:pricing@…`).
pub const CONTRACT_VERSION: &str = pricing_sdk::CONTRACT_VERSION;
/// The interface a policy exports, without its version.
const POLICY_INTERFACE: &str = "os-credits:pricing/policy";

/// Seconds per pricing call of the service's policies (`/metrics`):
/// buckets from 1 µs to about 0.3 s, times 4.
pub fn call_latency() -> &'static prometheus_client::metrics::histogram::Histogram {
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    static LATENCY: std::sync::OnceLock<Histogram> = std::sync::OnceLock::new();
    LATENCY.get_or_init(|| Histogram::new(exponential_buckets(1e-6, 4.0, 10)))
}

/// How often the ticker advances the engine's epoch.
pub(crate) const TICK: Duration = Duration::from_millis(2);

/// Limits on each call into a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time a single call may take.
    pub call_timeout: Duration,
    /// Linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// The largest module file read, in bytes.
    pub module_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            module_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// These limits with a mapping entry's own memory cap and deadline.
    pub fn with(self, overrides: mapping::LimitOverrides) -> Limits {
        Limits {
            call_timeout: overrides
                .timeout_ms
                .map_or(self.call_timeout, Duration::from_millis),
            memory_bytes: overrides
                .memory_mb
                .map_or(self.memory_bytes, |mb| (mb as usize) << 20),
            module_bytes: self.module_bytes,
        }
    }
}

/// A metric a policy prices, from its `describe`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metric {
    /// Measurement name, e.g. `project_vcpu_usage`.
    pub name: String,
    /// Short name for the APIs, e.g. `cpu`.
    pub friendly_name: String,
    /// Unit of the cumulative value.
    pub unit: String,
    /// What it measures.
    pub description: String,
    /// `int` or `decimal`: what quote amounts may be.
    pub amount_type: String,
}

/// What a loaded policy is: its own description plus the module's identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInfo {
    /// The policy's name, e.g. `denbi`.
    pub name: String,
    /// The policy's version.
    pub version: String,
    /// One line on what it charges.
    pub description: String,
    /// The metrics it prices.
    pub metrics: Vec<Metric>,
    /// The tags `bill` reads; `None` for all.
    pub tags: Option<Vec<String>>,
    /// The contract version the module was built against.
    pub contract: String,
    /// Hex SHA-256 of the module file's bytes.
    pub sha256: String,
    /// Hex SHA-256 of the configuration text.
    pub config_sha256: String,
    /// How it became ready.
    pub activation: Activation,
}

/// How a module became ready: compiled or loaded from the compile cache,
/// and how long that and the whole activation (instances, self-test) took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Activation {
    /// Its compiled code came from the cache.
    pub cached: bool,
    /// Milliseconds spent compiling (or loading the compiled code).
    pub compile_ms: u64,
    /// Milliseconds from the module's bytes to a tested policy.
    pub total_ms: u64,
}

impl ModuleInfo {
    /// The metric with measurement name `name`.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// Why a module could not become a policy.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid Wasm component.
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component exports no pricing interface.
    #[error(
        "the component exports no `{POLICY_INTERFACE}` interface (exports: {exports}); build it with pricing-sdk's export_policy!"
    )]
    NotAPolicy {
        /// What it does export.
        exports: String,
    },
    /// Built against a contract version this host does not speak.
    #[error(
        "policy built for contract os-credits:pricing@{found}, this host speaks @{CONTRACT_VERSION}: rebuild it with a matching pricing-sdk"
    )]
    Contract {
        /// The version the module exports.
        found: String,
    },
    /// Instantiation failed (for example an import the host does not give).
    #[error("cannot instantiate the policy: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The policy refused its configuration.
    #[error("the policy refused its configuration: {0}")]
    Configure(String),
    /// A call during loading failed.
    #[error("{call} failed while loading: {source}")]
    Call {
        /// Which call.
        call: &'static str,
        /// Why.
        source: CallError,
    },
    /// A self-test example billed something else than it declares.
    #[error("self-test example {name:?} failed: {reason}")]
    Example {
        /// The example's name.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why one call into a policy failed. Only this call is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline and was interrupted.
    #[error("policy call timed out after {0:?}")]
    Timeout(Duration),
    /// The instance tried to grow its memory past the cap.
    #[error("policy exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The instance trapped (a panic, an `unreachable`, a stack overflow).
    #[error("policy trapped: {0}")]
    Trap(String),
    /// The policy returned an error for this input.
    #[error("policy refused: {0}")]
    Refused(String),
    /// The policy returned something that is not a valid charge.
    #[error("policy returned an invalid charge {0:?}")]
    BadResult(String),
    /// The policy returned another number of charges than steps it got.
    #[error("policy returned {results} charges for a batch of {steps} steps")]
    ResultCount {
        /// Steps in the batch.
        steps: usize,
        /// Charges returned.
        results: usize,
    },
    /// No instance could be created.
    #[error("cannot instantiate policy: {0}")]
    Instantiate(String),
}

impl CallError {
    /// A step that got no charge back (one missing from a batch's results).
    pub fn missing() -> Self {
        CallError::ResultCount {
            steps: 1,
            results: 0,
        }
    }
}

/// Compiles and runs policies; one per process.
pub struct PolicyRuntime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    limits: Limits,
    cache: Option<cache::CompileCache>,
    trusted: Option<Arc<signature::TrustedKeys>>,
}

impl PolicyRuntime {
    /// An engine with the component model and epoch interruption, a ticker
    /// thread that advances the epoch, and a linker with empty WASI.
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(PolicyRuntime {
            engine,
            linker: Arc::new(linker),
            limits,
            cache: None,
            trusted: None,
        })
    }

    /// Keeps compiled modules in `dir` (see [`cache`]); without it every
    /// load compiles.
    pub fn use_cache(&mut self, dir: &Path) -> std::io::Result<()> {
        self.cache = Some(cache::CompileCache::new(dir, &self.engine)?);
        Ok(())
    }

    /// From now on, a module loads from the policy folder only with a
    /// signature beside it by one of `keys` (see [`signature`]).
    pub fn require_signatures(&mut self, keys: signature::TrustedKeys) {
        self.trusted = Some(Arc::new(keys));
    }

    /// The keys whose signatures a module needs, if signatures are required.
    pub fn trusted_keys(&self) -> Option<&signature::TrustedKeys> {
        self.trusted.as_deref()
    }

    /// The compile cache, if any.
    pub fn cache(&self) -> Option<&cache::CompileCache> {
        self.cache.as_ref()
    }

    /// The module's code: from the cache when it holds it, else compiled
    /// (and cached).
    fn compile(&self, bytes: &[u8], sha256: &str) -> Result<(Component, bool), LoadError> {
        if let Some(component) = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, sha256))
        {
            return Ok((component, true));
        }
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        if let Some(cache) = &self.cache {
            cache.store(sha256, &component);
        }
        Ok((component, false))
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Reads a module file, refusing one over the size limit unread.
    pub fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let size = std::fs::metadata(path)?.len();
        if size > self.limits.module_bytes as u64 {
            return Err(std::io::Error::other(format!(
                "the module is {} MiB, more than the {} MiB allowed (OS_CREDITS_POLICY_MAX_MB)",
                size >> 20,
                self.limits.module_bytes >> 20
            )));
        }
        std::fs::read(path)
    }

    /// Loads the module at `path` with configuration `config`.
    pub fn load(&self, path: &Path, config: &str) -> Result<Module, LoadError> {
        let bytes = self.read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&bytes, config)
    }

    /// Loads a module from its bytes: compile, check the contract, configure,
    /// describe, run the self-test examples.
    pub fn load_bytes(&self, bytes: &[u8], config: &str) -> Result<Module, LoadError> {
        self.load_bytes_with(bytes, config, self.limits)
    }

    /// [`PolicyRuntime::load_bytes`] with limits of its own (a mapping
    /// entry's `memory_mb`, `timeout_ms`).
    pub fn load_bytes_with(
        &self,
        bytes: &[u8],
        config: &str,
        limits: Limits,
    ) -> Result<Module, LoadError> {
        let started = Instant::now();
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, cached) = self.compile(bytes, &sha256)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let contract = contract_version(&self.engine, &component)?;
        let interface = format!("{POLICY_INTERFACE}@{contract}");
        let pool = Pool::new(
            &self.engine,
            &self.linker,
            &component,
            &interface,
            config,
            limits,
        )?;
        let info = pool.describe().map_err(|source| LoadError::Call {
            call: "describe",
            source,
        })?;
        let mut policy = Module {
            info: Arc::new(ModuleInfo {
                name: info.name,
                version: info.version,
                description: info.description,
                metrics: info.metrics,
                tags: info.tags,
                contract,
                sha256,
                config_sha256: hex::encode(Sha256::digest(config.as_bytes())),
                activation: Activation {
                    cached,
                    compile_ms,
                    total_ms: 0,
                },
            }),
            config: config.to_owned(),
            limits,
            pool,
        };
        policy.self_test()?;
        if let Some(info) = Arc::get_mut(&mut policy.info) {
            info.activation.total_ms = started.elapsed().as_millis() as u64;
        }
        Ok(policy)
    }
}

/// Finds the version of the pricing interface the component exports and
/// checks that this host speaks it (same major, minor not newer).
fn contract_version(engine: &Engine, component: &Component) -> Result<String, LoadError> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let Some(found) = names
        .iter()
        .find_map(|name| name.strip_prefix(POLICY_INTERFACE))
    else {
        return Err(LoadError::NotAPolicy {
            exports: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        });
    };
    let found = found.strip_prefix('@').unwrap_or(found).to_owned();
    let ours = semver_parts(CONTRACT_VERSION);
    match semver_parts(&found) {
        Some((major, minor))
            if Some(major) == ours.map(|v| v.0) && ours.is_some_and(|v| minor <= v.1) =>
        {
            Ok(found)
        }
        _ => Err(LoadError::Contract { found }),
    }
}

fn semver_parts(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A loaded, validated policy. Cheap to share (`Arc<Module>`); calls from
/// several threads each take their own instance from the pool.
pub struct Module {
    info: Arc<ModuleInfo>,
    config: String,
    limits: Limits,
    pool: Pool,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("info", &self.info).finish()
    }
}

impl Module {
    /// Name, version, metrics, sha256 of the module and of its config.
    pub fn info(&self) -> &Arc<ModuleInfo> {
        &self.info
    }

    /// The limits its calls run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The configuration text the policy was loaded with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The exact credits for one step of usage (a batch of one).
    pub fn bill(&self, usage: &Step<'_>) -> Result<Decimal, CallError> {
        self.bill_batch(std::slice::from_ref(usage))
            .pop()
            .unwrap_or_else(|| Err(CallError::missing()))
    }

    /// The exact credits for each step, in order, priced in batches of
    /// up to [`MAX_BATCH`] steps per call: much cheaper per step than
    /// [`Module::bill`], as one call into the module serves the batch.
    pub fn bill_batch(&self, usages: &[Step<'_>]) -> Vec<Result<Decimal, CallError>> {
        self.pool.bill(usages, self.info.tags.as_deref())
    }

    /// The credits one hour of `amount` units of `metric` costs at `at_ns`.
    pub fn cost_per_hour(
        &self,
        metric: &str,
        amount: Decimal,
        at_ns: i64,
    ) -> Result<Decimal, CallError> {
        self.pool.cost_per_hour(metric, amount, at_ns)
    }

    /// How many ready instances the pool holds.
    pub fn idle_instances(&self) -> usize {
        self.pool.idle()
    }

    fn self_test(&self) -> Result<(), LoadError> {
        let examples = self.pool.examples().map_err(|source| LoadError::Call {
            call: "examples",
            source,
        })?;
        for example in examples {
            let fail = |reason: String| LoadError::Example {
                name: example.name.clone(),
                reason,
            };
            let expected =
                pricing_sdk::parse_decimal(&example.expected).map_err(|e| fail(e.to_string()))?;
            let charge = self
                .pool
                .bill_example(&example.usage)
                .map_err(|e| fail(e.to_string()))?;
            if charge != expected {
                return Err(fail(format!("billed {charge}, declares {expected}")));
            }
        }
        Ok(())
    }
}
