//! Billing's port to the prices: [`Pricer`], and its adapter for the Wasm
//! policies ([`Module`], [`PolicySet`]). Billing reaches `policy` only
//! through here; `policy` knows nothing of billing.

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::policy::set::PolicySet;
use crate::policy::{CallError, Module, ModuleInfo, Step};

/// A priced step: the exact credits and the policy that priced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The exact charge.
    pub credits: Decimal,
    /// The policy that priced it (`None` for native formulas in tests).
    pub policy: Option<Arc<ModuleInfo>>,
}

/// What prices steps: the policies in force, one module, or a native
/// formula in tests and benchmarks.
pub trait Pricer {
    /// Whether samples of `metric` at site `location_id` are billed at all.
    fn prices(&self, location_id: &str, metric: &str) -> bool;
    /// The exact charge for each step, in order (one result per step).
    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>>;
}

/// Prices with one module, timing each call for `/metrics`.
fn priced_by(module: &Module, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
    let started = std::time::Instant::now();
    let charges = module.bill_batch(steps);
    crate::policy::call_latency().observe(started.elapsed().as_secs_f64());
    charges
        .into_iter()
        .map(|credits| {
            Ok(Priced {
                credits: credits?,
                policy: Some(Arc::clone(module.info())),
            })
        })
        .collect()
}

impl Pricer for Module {
    fn prices(&self, _location_id: &str, metric: &str) -> bool {
        self.info().metric(metric).is_some()
    }

    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
        priced_by(self, steps)
    }
}

impl Pricer for PolicySet {
    fn prices(&self, location_id: &str, metric: &str) -> bool {
        self.for_site(location_id).info().metric(metric).is_some()
    }

    /// Each site's steps go to its module, one batch per module.
    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
        if !self.per_site() {
            return priced_by(self.default_module(), steps);
        }
        let mut groups: Vec<(&Arc<Module>, Vec<usize>)> = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let module = self.for_site(step.location_id);
            match groups.iter_mut().find(|(m, _)| Arc::ptr_eq(m, module)) {
                Some((_, indices)) => indices.push(index),
                None => groups.push((module, vec![index])),
            }
        }
        let mut priced: Vec<Option<Result<Priced, CallError>>> = vec![None; steps.len()];
        for (module, indices) in groups {
            let batch: Vec<Step<'_>> = indices.iter().map(|&i| steps[i]).collect();
            for (index, result) in indices.into_iter().zip(priced_by(module, &batch)) {
                priced[index] = Some(result);
            }
        }
        priced
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(CallError::missing())))
            .collect()
    }
}
