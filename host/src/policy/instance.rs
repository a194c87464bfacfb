//! Instances of one compiled policy: the generated bindings, the per-store
//! state (empty WASI, memory cap) and the pool of ready instances.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rust_decimal::Decimal;
use wasmtime::component::{Component, Linker, ResourceTable};
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
use bindings::os_credits::pricing::types as wit_types;
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

impl Usage<'_> {
    /// The WIT record, with only the tags in `read` (all when `None`).
    pub(super) fn to_wit(self, read: Option<&[String]>) -> wit::Usage {
        let measurement = |(timestamp_ns, value): (i64, &str)| wit_types::Measurement {
            timestamp_ns,
            value: value.to_owned(),
        };
        wit::Usage {
            metric: self.metric.to_owned(),
            project: self.project.to_owned(),
            location_id: self.location_id.to_owned(),
            tags: self
                .tags
                .iter()
                .filter(|(key, _)| read.is_none_or(|keys| keys.iter().any(|k| k == key)))
                .map(|(key, value)| wit_types::Tag {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            previous: measurement(self.previous),
            current: measurement(self.current),
        }
    }
}

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
}

/// Ready instances of one compiled policy, configured alike.
pub(super) struct Pool {
    engine: Engine,
    pre: PricingPre<HostState>,
    config: String,
    limits: Limits,
    idle: Mutex<Vec<Instance>>,
}

impl Pool {
    /// Pre-links the component and configures a first instance, so that a
    /// configuration the policy refuses fails the load.
    pub fn new(
        engine: &Engine,
        linker: &Linker<HostState>,
        component: &Component,
        config: &str,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(LoadError::Instantiate)?;
        let pre = PricingPre::new(instance_pre).map_err(LoadError::Instantiate)?;
        let pool = Pool {
            engine: engine.clone(),
            pre,
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
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| InstantiateError::Call(self.classify(e, store.data())))?;
        let mut instance = Instance { store, bindings };
        let configured = self.call_on(&mut instance, |bindings, store| {
            bindings
                .os_credits_pricing_policy()
                .call_configure(store, &self.config)
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
        f: impl FnOnce(&Pricing, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        instance.store.set_epoch_deadline(self.deadline_ticks());
        instance.store.data_mut().memory_exceeded = false;
        f(&instance.bindings, &mut instance.store)
            .map_err(|e| self.classify(e, instance.store.data()))
    }

    /// Takes an idle instance (or makes one), runs `f`, and returns the
    /// instance to the pool unless the call trapped.
    fn with_instance<R>(
        &self,
        f: impl FnOnce(&Pricing, &mut Store<HostState>) -> wasmtime::Result<R>,
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
        let info =
            self.with_instance(|b, store| b.os_credits_pricing_policy().call_describe(store))?;
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
        self.with_instance(|b, store| b.os_credits_pricing_policy().call_examples(store))
    }

    pub fn bill_wit(&self, usage: &wit::Usage) -> Result<Decimal, CallError> {
        let result =
            self.with_instance(|b, store| b.os_credits_pricing_policy().call_bill(store, usage))?;
        charge(result)
    }

    pub fn cost_per_hour(
        &self,
        metric: &str,
        amount: Decimal,
        at_ns: i64,
    ) -> Result<Decimal, CallError> {
        let amount = amount.to_string();
        let result = self.with_instance(|b, store| {
            b.os_credits_pricing_policy()
                .call_cost_per_hour(store, metric, &amount, at_ns)
        })?;
        charge(result)
    }
}

enum InstantiateError {
    Refused(String),
    Call(CallError),
}

/// A policy's answer as a charge: a non-negative decimal.
fn charge(result: Result<String, String>) -> Result<Decimal, CallError> {
    let text = result.map_err(CallError::Refused)?;
    let value =
        pricing_sdk::parse_decimal(&text).map_err(|_| CallError::BadResult(text.clone()))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(CallError::BadResult(text));
    }
    Ok(value)
}
