//! Instances of one compiled policy: the generated bindings, the per-store
//! state (empty WASI, memory cap) and the pool of ready instances.

use std::sync::Mutex;

use rust_decimal::Decimal;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Lift, Linker, Lower, ResourceTable, TypedFunc,
};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::runtime::TICK;
use crate::{CallError, Limits, LoadError, Metric, Tag};

use os_credits_core::sync::Locked;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../pricing-sdk/wit",
        world: "pricing",
    });
}

use bindings::exports::os_credits::pricing::policy as wit;
use bindings::{Pricing, PricingPre};

/// Idle instances kept per policy; more are created under load and
/// dropped when returned to a full pool.
const MAX_IDLE: usize = 64;

/// A step of usage to price: a key's last billed sample to its new one,
/// borrowed from what is being billed.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
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

/// The most steps priced in one call: keeps a call well inside its
/// deadline and the batch's memory small.
pub const MAX_BATCH: usize = 256;

/// `batch` of the WIT contract, borrowing the packed columns: lowered
/// straight into the guest's memory as four block copies.
#[derive(ComponentType, Lower)]
#[component(record)]
struct WitBatch<'a> {
    text: &'a str,
    ends: &'a [u32],
    timestamps: &'a [i64],
    #[component(name = "tag-counts")]
    tag_counts: &'a [u32],
}

/// Steps packed for one `bill` call, in the contract's columns.
#[derive(Default)]
struct Packer {
    text: String,
    ends: Vec<u32>,
    timestamps: Vec<i64>,
    tag_counts: Vec<u32>,
}

/// A length or offset as the contract's `u32`. A batch's text stays far
/// below 4 GiB: at most [`MAX_BATCH`] steps from one request body.
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Packer {
    fn string(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(u32_of(self.text.len()));
    }

    /// Adds a step with only the tags in `read` (all when `None`).
    fn push(&mut self, usage: &Step<'_>, read: Option<&[String]>) {
        for s in [
            usage.metric,
            usage.project,
            usage.location_id,
            usage.previous.1,
            usage.current.1,
        ] {
            self.string(s);
        }
        self.timestamps.extend([usage.previous.0, usage.current.0]);
        let mut count = 0;
        for (key, value) in usage.tags {
            if read.is_none_or(|keys| keys.iter().any(|k| k == key)) {
                self.string(key);
                self.string(value);
                count += 1;
            }
        }
        self.tag_counts.push(count);
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.timestamps.clear();
        self.tag_counts.clear();
    }

    fn batch(&self) -> WitBatch<'_> {
        WitBatch {
            text: &self.text,
            ends: &self.ends,
            timestamps: &self.timestamps,
            tag_counts: &self.tag_counts,
        }
    }
}

/// `charges` of the WIT contract, lifted as owned columns (the guest frees
/// its copies when the call returns).
#[derive(ComponentType, Lift)]
#[component(record)]
struct WitCharges {
    text: String,
    ends: Vec<u32>,
    failed: Vec<u32>,
}

impl WitCharges {
    /// Each step's charge, checked: `steps` texts that cover the text
    /// in order, failures named by valid indices.
    fn charges(&self, steps: usize) -> Result<Vec<Result<Decimal, CallError>>, CallError> {
        if self.ends.len() != steps {
            return Err(CallError::ResultCount {
                steps,
                results: self.ends.len(),
            });
        }
        let mut failed = self.failed.iter().map(|&i| i as usize).peekable();
        let mut start = 0;
        let charges = self
            .ends
            .iter()
            .enumerate()
            .map(|(index, &end)| {
                let end = end as usize;
                let text = self.text.get(start..end);
                start = end.max(start);
                let is_error = failed.next_if_eq(&index).is_some();
                match text {
                    None => Err(CallError::BadResult(format!(
                        "charge {index} ends at byte {end}, outside the charges' text"
                    ))),
                    Some(message) if is_error => Err(CallError::Refused(message.to_owned())),
                    Some(charge) => self::charge(charge),
                }
            })
            .collect();
        match failed.next() {
            Some(index) => Err(CallError::BadResult(format!(
                "step {index} reported failed is not a step of the batch (or out of order)"
            ))),
            None => Ok(charges),
        }
    }
}

/// The typed `bill` export: a borrowed batch in, the charges out.
type BillFunc = TypedFunc<(WitBatch<'static>,), (WitCharges,)>;

/// What `describe` returned, before the host adds the module's identity.
pub(super) struct Described {
    pub name: String,
    pub version: String,
    pub description: String,
    pub metrics: Vec<Metric>,
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
        pool.idle.locked().push(first);
        Ok(pool)
    }

    pub fn idle(&self) -> usize {
        self.idle.locked().len()
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
        let idle = self.idle.locked().pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate().map_err(|e| match e {
                InstantiateError::Refused(message) => CallError::Instantiate(message),
                InstantiateError::Call(error) => error,
            })?,
        };
        let result = self.call_on(&mut instance, f)?;
        let mut idle = self.idle.locked();
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
                .map(|m| Metric {
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

    /// Prices `usages` in calls of at most [`MAX_BATCH`] steps, with only
    /// the tags in `read` (all when `None`); one result per usage, in
    /// order. A call that fails as a whole (a trap, a timeout, the memory
    /// cap, a wrong number of results) is retried one step per call, so
    /// that a step that breaks the policy fails alone.
    pub fn bill(
        &self,
        usages: &[Step<'_>],
        read: Option<&[String]>,
    ) -> Vec<Result<Decimal, CallError>> {
        let mut packer = Packer::default();
        let mut priced = Vec::with_capacity(usages.len());
        for chunk in usages.chunks(MAX_BATCH) {
            match self.call_bill(&mut packer, chunk, read) {
                Ok(results) => priced.extend(results),
                Err(e) if chunk.len() == 1 => priced.push(Err(e)),
                Err(_) => priced.extend(chunk.iter().map(|usage| {
                    self.call_bill(&mut packer, std::slice::from_ref(usage), read)
                        .and_then(|mut one| one.pop().unwrap_or_else(|| Err(CallError::missing())))
                })),
            }
        }
        priced
    }

    /// One `bill` call for `usages`.
    fn call_bill(
        &self,
        packer: &mut Packer,
        usages: &[Step<'_>],
        read: Option<&[String]>,
    ) -> Result<Vec<Result<Decimal, CallError>>, CallError> {
        packer.clear();
        for usage in usages {
            packer.push(usage, read);
        }
        let batch = packer.batch();
        let (charges,) = self.with_instance(|exports, store| exports.bill.call(store, (batch,)))?;
        charges.charges(usages.len())
    }

    /// Prices one of the policy's own examples.
    pub fn bill_example(
        &self,
        usage: &bindings::os_credits::pricing::types::Usage,
    ) -> Result<Decimal, CallError> {
        let tags: Vec<Tag<'_>> = usage
            .tags
            .iter()
            .map(|t| (t.key.as_str().into(), t.value.as_str().into()))
            .collect();
        let usage = Step {
            metric: &usage.metric,
            project: &usage.project,
            location_id: &usage.location_id,
            tags: &tags,
            previous: (usage.previous.timestamp_ns, &usage.previous.value),
            current: (usage.current.timestamp_ns, &usage.current.value),
        };
        self.bill(&[usage], None)
            .pop()
            .unwrap_or_else(|| Err(CallError::missing()))
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
        charge(result.map_err(CallError::Refused)?.as_str())
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
fn charge(text: &str) -> Result<Decimal, CallError> {
    match pricing_sdk::parse_decimal(text) {
        Ok(value) if !value.is_sign_negative() || value.is_zero() => Ok(value),
        _ => Err(CallError::BadResult(text.to_owned())),
    }
}
