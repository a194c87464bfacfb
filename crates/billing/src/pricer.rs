//! Billing's port to the prices: [`Pricer`], and its adapters for the
//! Wasm policies ([`Module`], the price [`Schedule`]).
//! Billing reaches `policy` only through here; `policy` knows nothing of
//! billing.
//!
//! With a schedule, a step is priced by the version in force when its
//! usage happened: a step that spans a change is split at the change's
//! `from`, its value interpolated linearly in time, and each part priced
//! by its own version; the parts' deltas add up exactly to the step's.

use std::sync::Arc;

use rust_decimal::Decimal;

use os_credits_policy::schedule::{Schedule, Version};
use os_credits_policy::{CallError, Module, ModuleInfo, Step};

/// A priced step: the exact credits and the policy that priced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The exact charge (of every part).
    pub credits: Decimal,
    /// The policy that priced it, or its last part (`None` for native
    /// formulas in tests).
    pub policy: Option<Arc<ModuleInfo>>,
    /// The schedule entry that priced it, or its last part.
    pub entry: Option<i64>,
    /// The parts of a step that spans a price change, in order (empty
    /// when one version priced it all).
    pub parts: Vec<Part>,
}

impl Priced {
    /// A step priced whole, outside a schedule.
    pub fn whole(credits: Decimal, policy: Option<Arc<ModuleInfo>>) -> Self {
        Priced {
            credits,
            policy,
            entry: None,
            parts: Vec::new(),
        }
    }
}

/// One part of a step split at a price change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Where it starts: timestamp (ns) and value text.
    pub start: (i64, String),
    /// Where it ends.
    pub end: (i64, String),
    /// Its exact charge.
    pub credits: Decimal,
    /// The policy that priced it.
    pub policy: Option<Arc<ModuleInfo>>,
    /// The schedule entry that priced it.
    pub entry: Option<i64>,
}

/// What prices steps: the policies in force, one module, or a native
/// formula in tests and benchmarks.
pub trait Pricer {
    /// Whether samples of `metric` at site `location_id` are billed at all.
    fn prices(&self, location_id: &str, metric: &str) -> bool;
    /// The exact charge for each step, in order (one result per step).
    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>>;
}

/// One batch priced by `module`, the call timed for `/metrics`; each
/// charge kept to [`os_credits_core::period::PLACES`] decimal places.
fn timed(module: &Module, steps: &[Step<'_>]) -> Vec<Result<Decimal, CallError>> {
    let started = std::time::Instant::now();
    let charges = module.bill_batch(steps);
    os_credits_policy::call_latency().observe(started.elapsed().as_secs_f64());
    charges
        .into_iter()
        .map(|charge| charge.map(os_credits_core::period::kept))
        .collect()
}

/// Prices with one module.
fn priced_by(module: &Module, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
    timed(module, steps)
        .into_iter()
        .map(|credits| Ok(Priced::whole(credits?, Some(Arc::clone(module.info())))))
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

/// A step's usage interpolated at `t`, between its two measurements.
pub(super) fn value_at(step: &Step<'_>, t: i64) -> Result<Decimal, CallError> {
    let unusable =
        |why: &str| CallError::Refused(format!("cannot split the step at a price change: {why}"));
    let v0 = pricing_sdk::parse_decimal(step.previous.1).map_err(|e| unusable(&e.to_string()))?;
    let v1 = pricing_sdk::parse_decimal(step.current.1).map_err(|e| unusable(&e.to_string()))?;
    let (t0, t1) = (step.previous.0, step.current.0);
    let elapsed = Decimal::from(i128::from(t) - i128::from(t0));
    let span = Decimal::from(i128::from(t1) - i128::from(t0));
    let delta = v1.checked_sub(v0).ok_or_else(|| unusable("overflow"))?;
    let share = match delta.checked_mul(elapsed) {
        Some(product) => product.checked_div(span),
        None => elapsed
            .checked_div(span)
            .and_then(|ratio| delta.checked_mul(ratio)),
    }
    .ok_or_else(|| unusable("overflow"))?;
    v0.checked_add(share)
        .map(|value| value.normalize())
        .ok_or_else(|| unusable("overflow"))
}

/// A piece's bound: an interpolated value from `texts`, or the step's own
/// measurement.
fn bound<'t>(
    texts: &'t [String],
    (at, own): (i64, Option<usize>),
    measured: (i64, &'t str),
) -> (i64, &'t str) {
    (at, own.map_or(measured.1, |i| texts[i].as_str()))
}

/// One piece to price: a part of step `step`, from `start` to `end`
/// (indices into the texts, `None`: the step's own measurement).
struct Piece<'v> {
    step: usize,
    version: &'v Arc<Version>,
    start: (i64, Option<usize>),
    end: (i64, Option<usize>),
}

impl Pricer for Schedule {
    fn prices(&self, location_id: &str, metric: &str) -> bool {
        Schedule::prices(self, location_id, metric)
    }

    /// Each step's parts go to their versions, one batch per version.
    fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
        let mut texts: Vec<String> = Vec::new();
        let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(steps.len());
        let mut failed: Vec<Option<CallError>> = vec![None; steps.len()];
        for (index, step) in steps.iter().enumerate() {
            let (t0, t1) = (step.previous.0, step.current.0);
            if self.is_plain() {
                match self.in_force(step.location_id, t0) {
                    Some(version) => pieces.push(Piece {
                        step: index,
                        version,
                        start: (t0, None),
                        end: (t1, None),
                    }),
                    None => failed[index] = Some(CallError::missing()),
                }
                continue;
            }
            let parts = self.parts(step.location_id, t0, t1);
            if parts.is_empty() {
                failed[index] = Some(CallError::missing());
                continue;
            }
            let mut edges = Vec::with_capacity(parts.len());
            for &(at, _) in &parts[1..] {
                match value_at(step, at) {
                    Ok(value) => {
                        texts.push(value.to_string());
                        edges.push((at, Some(texts.len() - 1)));
                    }
                    Err(e) => {
                        failed[index] = Some(e);
                        break;
                    }
                }
            }
            if failed[index].is_some() {
                continue;
            }
            let starts = std::iter::once((t0, None)).chain(edges.iter().copied());
            let ends = edges.iter().copied().chain(std::iter::once((t1, None)));
            for ((start, end), (_, version)) in starts.zip(ends).zip(&parts) {
                pieces.push(Piece {
                    step: index,
                    version,
                    start,
                    end,
                });
            }
        }
        let text = |(at, own): (i64, Option<usize>), measured: (i64, &'_ str)| -> (i64, String) {
            (
                at,
                own.map_or_else(|| measured.1.to_owned(), |i| texts[i].clone()),
            )
        };
        // Price each version's pieces in one batch.
        let mut priced: Vec<Option<Result<Decimal, CallError>>> = vec![None; pieces.len()];
        let mut groups: Vec<(&Arc<Version>, Vec<usize>)> = Vec::new();
        for (index, piece) in pieces.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(v, _)| Arc::ptr_eq(v, piece.version))
            {
                Some((_, indices)) => indices.push(index),
                None => groups.push((piece.version, vec![index])),
            }
        }
        for (version, indices) in groups {
            let module = match &version.policy {
                Ok(module) => module,
                Err(why) => {
                    for index in indices {
                        priced[index] = Some(Err(CallError::Instantiate(format!(
                            "schedule entry {} ({}): {why}",
                            version.entry.id, version.entry.file
                        ))));
                    }
                    continue;
                }
            };
            let mut batch = Vec::with_capacity(indices.len());
            let mut batched = Vec::with_capacity(indices.len());
            for index in indices {
                let piece = &pieces[index];
                let step = &steps[piece.step];
                if module.info().metric(step.metric).is_none() {
                    // This version did not price the metric: its part is free.
                    priced[index] = Some(Ok(Decimal::ZERO));
                    continue;
                }
                batch.push(Step {
                    previous: bound(&texts, piece.start, step.previous),
                    current: bound(&texts, piece.end, step.current),
                    ..*step
                });
                batched.push(index);
            }
            if batch.is_empty() {
                continue;
            }
            for (index, charge) in batched.into_iter().zip(timed(module, &batch)) {
                priced[index] = Some(charge);
            }
        }
        // Put each step together from its pieces.
        let mut results: Vec<Result<Priced, CallError>> = failed
            .into_iter()
            .map(|failure| Err(failure.unwrap_or_else(CallError::missing)))
            .collect();
        let mut pieces = pieces.into_iter().zip(priced).peekable();
        while let Some((piece, charge)) = pieces.next() {
            let index = piece.step;
            let step = &steps[index];
            let mut parts = vec![(piece, charge)];
            while let Some((next, _)) = pieces.peek()
                && next.step == index
            {
                if let Some(next) = pieces.next() {
                    parts.push(next);
                }
            }
            let info = |v: &Arc<Version>| v.module().map(|m| Arc::clone(m.info()));
            let mut total = Decimal::ZERO;
            let mut split = Vec::with_capacity(parts.len());
            let mut error = None;
            for (piece, charge) in &parts {
                match charge {
                    Some(Ok(credits)) => {
                        total += *credits;
                        split.push(Part {
                            start: text(piece.start, step.previous),
                            end: text(piece.end, step.current),
                            credits: *credits,
                            policy: info(piece.version),
                            entry: Some(piece.version.entry.id),
                        });
                    }
                    Some(Err(e)) => error = error.or(Some(e.clone())),
                    None => error = error.or(Some(CallError::missing())),
                }
            }
            results[index] = match error {
                Some(e) => Err(e),
                None => {
                    let last = &parts[parts.len() - 1].0;
                    Ok(Priced {
                        credits: total,
                        policy: info(last.version),
                        entry: Some(last.version.entry.id),
                        parts: if split.len() > 1 { split } else { Vec::new() },
                    })
                }
            };
        }
        results
    }
}
