//! Instances of one compiled policy: the generated bindings, the per-store
//! state (empty WASI, memory cap) and the pool of ready instances.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rust_decimal::Decimal;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Linker, Lower, ResourceTable, TypedFunc,
    WasmStr,
};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{CallError, Limits, LoadError, MetricInfo, TICK};
use crate::ingest::Tag;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../pricing-sdk/wit",
        world: "pricing",
    });
}

use bindings::exports::os_credits::pricing::policy as wit;
use bindings::{Pricing, PricingPre};

/// Idle instances kept per policy; more are created under load and
/// dropped when returned to a full pool.
const MAX_IDLE: usize = 64;

/// A step of usage to price, borrowed from the measurement being billed.
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    /// Measurement name.
    pub metric: &'a str,
    /// Project (Perun group name).
    pub project: &'a str,
    /// Site (`location_id`).
    pub location_id: &'a str,
    /// All tags of the current measurement, sorted by key.
    pub tags: &'a [Tag<'a>],
    /// Timestamp (ns) and value text of the last billed measurement.
    pub previous: (i64, &'a str),
    /// Timestamp (ns) and value text of the new measurement.
    pub current: (i64, &'a str),
}

impl<'a> Usage<'a> {
    /// The WIT record, borrowing every string (lowered straight into the
    /// guest's memory, no host copies), with only the tags in `read` (all
    /// when `None`).
    fn lower(self, read: Option<&[String]>, tags: &'a mut Vec<WitTag<'a>>) -> WitUsage<'a> {
        tags.extend(
            self.tags
                .iter()
                .filter(|(key, _)| read.is_none_or(|keys| keys.iter().any(|k| k == key)))
                .map(|(key, value)| WitTag { key, value }),
        );
        WitUsage {
            metric: self.metric,
            project: self.project,
            location_id: self.location_id,
            tags,
            previous: WitMeasurement::of(self.previous),
            current: WitMeasurement::of(self.current),
        }
    }
}

/// `measurement` of the WIT contract, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
struct WitMeasurement<'a> {
    #[component(name = "timestamp-ns")]
    timestamp_ns: i64,
    value: &'a str,
}

impl<'a> WitMeasurement<'a> {
    fn of((timestamp_ns, value): (i64, &'a str)) -> Self {
        WitMeasurement {
            timestamp_ns,
            value,
        }
    }
}

/// `tag` of the WIT contract, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
struct WitTag<'a> {
    key: &'a str,
    value: &'a str,
}

/// `usage` of the WIT contract, borrowed: the same canonical ABI as the
/// generated (owned) record, checked against the component's type when an
/// instance is made.
#[derive(ComponentType, Lower)]
#[component(record)]
struct WitUsage<'a> {
    metric: &'a str,
    project: &'a str,
    #[component(name = "location-id")]
    location_id: &'a str,
    tags: &'a [WitTag<'a>],
    previous: WitMeasurement<'a>,
    current: WitMeasurement<'a>,
}

/// The typed `bill` export: a borrowed usage in, the result's strings left
/// in guest memory until read.
type BillFunc = TypedFunc<(WitUsage<'static>,), (Result<WasmStr, WasmStr>,)>;

/// What `describe` returned, before the host adds the module's identity.
pub(super) struct Described {
    pub name: String,
    pub version: String,
    pub description: String,
    pub metrics: Vec<MetricInfo>,
    pub tags: Option<Vec<String>>,
}

/// A self-test example as the policy declared it.
pub(super) use wit::Example;

/// Per-store state: an empty WASI context and the memory cap.
pub(super) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_cap: usize,
    memory_exceeded: bool,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_cap && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.memory_exceeded = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000 && maximum.is_none_or(|max| desired <= max))
    }
}

struct Instance {
    store: Store<HostState>,
    bindings: Pricing,
    bill: BillFunc,
}

/// Ready instances of one compiled policy, configured alike.
pub(super) struct Pool {
    engine: Engine,
    pre: PricingPre<HostState>,
    /// Where `bill` is among the component's exports.
    bill: ComponentExportIndex,
    config: String,
    limits: Limits,
    idle: Mutex<Vec<Instance>>,
}

impl Pool {
    /// Pre-links the component and configures a first instance, so that a
    /// configuration the policy refuses fails the load. `interface` is the
    /// versioned name of the pricing interface the component exports.
    pub fn new(
        engine: &Engine,
        linker: &Linker<HostState>,
        component: &Component,
        interface: &str,
        config: &str,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(LoadError::Instantiate)?;
        let pre = PricingPre::new(instance_pre).map_err(LoadError::Instantiate)?;
        let bill = component
            .get_export_index(None, interface)
            .and_then(|interface| component.get_export_index(Some(&interface), "bill"))
            .ok_or_else(|| {
                LoadError::Instantiate(wasmtime::Error::msg(format!(
                    "`{interface}` exports no `bill`"
                )))
            })?;
        let pool = Pool {
            engine: engine.clone(),
            pre,
            bill,
            config: config.to_owned(),
            limits,
            idle: Mutex::new(Vec::new()),
        };
        let first = pool.instantiate().map_err(|e| match e {
            InstantiateError::Refused(message) => LoadError::Configure(message),
            InstantiateError::Call(source) => LoadError::Call {
                call: "configure",
                source,
            },
        })?;
        pool.lock().push(first);
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Instance>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn deadline_ticks(&self) -> u64 {
        let ticks = self.limits.call_timeout.as_nanos() / TICK.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// A fresh instance, configured.
    fn instantiate(&self) -> Result<Instance, InstantiateError> {
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory_cap: self.limits.memory_bytes,
            memory_exceeded: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        store.set_epoch_deadline(self.deadline_ticks());
        let made = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .and_then(|instance| {
                let bindings = Pricing::new(&mut store, &instance)?;
                let bill = instance.get_typed_func(&mut store, self.bill)?;
                Ok((bindings, bill))
            });
        let (bindings, bill) =
            made.map_err(|e| InstantiateError::Call(self.classify(e, store.data())))?;
        let mut instance = Instance {
            store,
            bindings,
            bill,
        };
        let configured = self.call_on(&mut instance, |bindings, store| {
            bindings.policy().call_configure(store, &self.config)
        });
        match configured {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(InstantiateError::Refused(message)),
            Err(e) => Err(InstantiateError::Call(e)),
        }
    }

    /// Runs `f` on `instance` under the deadline and memory cap.
    fn call_on<R>(
        &self,
        instance: &mut Instance,
        f: impl FnOnce(&Exports<'_>, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        instance.store.set_epoch_deadline(self.deadline_ticks());
        instance.store.data_mut().memory_exceeded = false;
        let exports = Exports {
            bindings: &instance.bindings,
            bill: instance.bill,
        };
        f(&exports, &mut instance.store).map_err(|e| self.classify(e, instance.store.data()))
    }

    /// Takes an idle instance (or makes one), runs `f`, and returns the
    /// instance to the pool unless the call trapped.
    fn with_instance<R>(
        &self,
        f: impl FnOnce(&Exports<'_>, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let idle = self.lock().pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate().map_err(|e| match e {
                InstantiateError::Refused(message) => CallError::Instantiate(message),
                InstantiateError::Call(error) => error,
            })?,
        };
        let result = self.call_on(&mut instance, f)?;
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(instance);
        }
        Ok(result)
    }

    fn classify(&self, error: wasmtime::Error, state: &HostState) -> CallError {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(self.limits.call_timeout),
            _ if state.memory_exceeded => CallError::MemoryLimit(self.limits.memory_bytes),
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Trap(format!("{error:#}")),
        }
    }

    pub fn describe(&self) -> Result<Described, CallError> {
        let info = self.with_instance(|b, store| b.policy().call_describe(store))?;
        Ok(Described {
            name: info.name,
            version: info.version,
            description: info.description,
            metrics: info
                .metrics
                .into_iter()
                .map(|m| MetricInfo {
                    name: m.name,
                    friendly_name: m.friendly_name,
                    unit: m.unit,
                    description: m.description,
                    amount_type: m.amount_type,
                })
                .collect(),
            tags: info.tags,
        })
    }

    pub fn examples(&self) -> Result<Vec<Example>, CallError> {
        self.with_instance(|b, store| b.policy().call_examples(store))
    }

    /// Prices one step; only the tags in `read` cross (all when `None`).
    pub fn bill(&self, usage: &Usage<'_>, read: Option<&[String]>) -> Result<Decimal, CallError> {
        let mut tags = Vec::new();
        let usage = usage.lower(read, &mut tags);
        self.with_instance(|exports, store| {
            let (result,) = exports.bill.call(&mut *store, (usage,))?;
            Ok(match result {
                Ok(text) => charge(Ok(text.to_str(&*store)?.as_ref())),
                Err(message) => charge(Err(message.to_str(&*store)?.as_ref())),
            })
        })?
    }

    /// Prices one of the policy's own examples.
    pub fn bill_example(&self, usage: &wit::Usage) -> Result<Decimal, CallError> {
        let tags: Vec<Tag<'_>> = usage
            .tags
            .iter()
            .map(|t| (t.key.as_str().into(), t.value.as_str().into()))
            .collect();
        let usage = Usage {
            metric: &usage.metric,
            project: &usage.project,
            location_id: &usage.location_id,
            tags: &tags,
            previous: (usage.previous.timestamp_ns, &usage.previous.value),
            current: (usage.current.timestamp_ns, &usage.current.value),
        };
        self.bill(&usage, None)
    }

    pub fn cost_per_hour(
        &self,
        metric: &str,
        amount: Decimal,
        at_ns: i64,
    ) -> Result<Decimal, CallError> {
        let amount = amount.to_string();
        let result = self.with_instance(|b, store| {
            b.policy().call_cost_per_hour(store, metric, &amount, at_ns)
        })?;
        charge(result.as_ref().map(String::as_str).map_err(String::as_str))
    }
}

/// What a call sees of an instance: the generated bindings and the typed
/// `bill`.
struct Exports<'a> {
    bindings: &'a Pricing,
    bill: BillFunc,
}

impl Exports<'_> {
    fn policy(&self) -> &wit::Guest {
        self.bindings.os_credits_pricing_policy()
    }
}

enum InstantiateError {
    Refused(String),
    Call(CallError),
}

/// A policy's answer as a charge: a non-negative decimal.
fn charge(result: Result<&str, &str>) -> Result<Decimal, CallError> {
    let text = result.map_err(|message| CallError::Refused(message.to_owned()))?;
    match pricing_sdk::parse_decimal(text) {
        Ok(value) if !value.is_sign_negative() || value.is_zero() => Ok(value),
        _ => Err(CallError::BadResult(text.to_owned())),
    }
}
