//! Re-rating: what the ledger's recorded steps would have cost under
//! another policy. Read-only; the engine of `os-credits policy rerate`.
//!
//! The steps are the ones billed (previous -> current measurement of each
//! charge), so the result is what the other policy would have charged had it
//! been in force: the billing rules decide the steps, not the prices. Tags
//! are not stored with charges; a policy that reads tags sees none here.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::Pricer;
use os_credits_ledger::ChargeRecord;
use os_credits_policy::{MAX_BATCH, Step};

/// Steps handed to the pricer at a time (it calls the policy in batches
/// of [`MAX_BATCH`]).
const CHUNK: usize = 16 * MAX_BATCH;

/// One project's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectRerate {
    /// The project.
    pub project: String,
    /// Steps re-priced.
    pub steps: usize,
    /// What was billed (exact).
    pub billed: Decimal,
    /// What the other policy would have charged (exact).
    pub would_be: Decimal,
    /// `would_be - billed`.
    pub difference: Decimal,
}

/// A step the other policy could not price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RerateFailure {
    /// The project.
    pub project: String,
    /// The site.
    pub location_id: String,
    /// The metric.
    pub metric: String,
    /// Timestamp (ns) of the step's measurement.
    pub timestamp: i64,
    /// Why.
    pub error: String,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rerate {
    /// Per project, sorted.
    pub projects: Vec<ProjectRerate>,
    /// Sums over all projects.
    pub billed: Decimal,
    /// Sums over all projects.
    pub would_be: Decimal,
    /// Sums over all projects.
    pub difference: Decimal,
    /// Steps the other policy failed on (not counted in `would_be`).
    pub failures: Vec<RerateFailure>,
}

/// The step a charge billed, as a pricer takes it (no tags: they are not
/// stored with charges).
pub(super) fn recorded_step(charge: &ChargeRecord) -> Step<'_> {
    Step {
        metric: &charge.key.metric,
        project: &charge.key.project,
        location_id: &charge.key.location_id,
        tags: &[],
        previous: (charge.previous.0, &charge.previous.1),
        current: (charge.current.0, &charge.current.1),
    }
}

/// Prices every charge's step with `pricer` (in batches) and compares.
pub fn rerate(charges: &[ChargeRecord], pricer: &impl Pricer) -> Rerate {
    let mut projects: BTreeMap<&str, ProjectRerate> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut priceable = Vec::new();
    for charge in charges {
        let key = &charge.key;
        let row = projects
            .entry(&key.project)
            .or_insert_with(|| ProjectRerate {
                project: key.project.to_string(),
                steps: 0,
                billed: Decimal::ZERO,
                would_be: Decimal::ZERO,
                difference: Decimal::ZERO,
            });
        row.steps += 1;
        row.billed += charge.credits;
        if pricer.prices(&key.location_id, &key.metric) {
            priceable.push(charge);
        }
    }
    for chunk in priceable.chunks(CHUNK) {
        let usages: Vec<Step<'_>> = chunk.iter().map(|charge| recorded_step(charge)).collect();
        for (charge, priced) in chunk.iter().zip(pricer.price(&usages)) {
            let key = &charge.key;
            match priced {
                Ok(priced) => {
                    if let Some(row) = projects.get_mut(&*key.project) {
                        row.would_be += priced.credits;
                    }
                }
                Err(e) => failures.push(RerateFailure {
                    project: key.project.to_string(),
                    location_id: key.location_id.to_string(),
                    metric: key.metric.to_string(),
                    timestamp: charge.current.0,
                    error: e.to_string(),
                }),
            }
        }
    }
    let mut projects: Vec<ProjectRerate> = projects.into_values().collect();
    for row in &mut projects {
        row.difference = row.would_be - row.billed;
    }
    let billed = projects.iter().map(|p| p.billed).sum();
    let would_be = projects.iter().map(|p| p.would_be).sum();
    Rerate {
        projects,
        billed,
        would_be,
        difference: would_be - billed,
        failures,
    }
}
