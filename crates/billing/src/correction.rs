//! Corrections and statements: the arithmetic of past usage.
//!
//! A **correction** re-prices the billed usage of a period with one module:
//! every charge whose usage overlaps `[from, to)` is cut to the period (a
//! step spanning an edge split there, its value interpolated linearly in
//! time, as at a price change), the part is priced again, and what it cost
//! before (the charge's share by time, plus the shares of earlier
//! corrections of the same charge) is subtracted. The differences become
//! correction lines, booked beside the charges, never over them.
//!
//! A **statement** assigns charges and correction lines to a period by when
//! their usage happened, shares again by time. Every share is a difference
//! of one cumulative function ([`share`]), so the shares of adjacent
//! periods add up exactly to the whole.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Pricer;
use super::pricer::value_at;
use super::rerate::{RerateFailure, recorded_step};
use os_credits_core::account::Key;
use os_credits_ledger::{
    BilledCharge, Booking, ChargeRecord, CorrectionBasis, CorrectionLine, CorrectionRecord,
    CorrectionScope, Corrections, PolicyStamp, StatementBasis, WebhookEvent, version_of,
};

/// The webhook event type of a booked correction.
pub const CORRECTION_EVENT: &str = "credits.correction_booked";
pub use os_credits_core::period::share;
use os_credits_core::schedule::Entry;
use os_credits_policy::set::DEFAULT_SITE;
use os_credits_policy::{MAX_BATCH, Step};

/// What a correction asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Why (kept with every line).
    pub reason: String,
    /// The usage it re-prices.
    pub scope: CorrectionScope,
    /// The module that re-prices it (hex SHA-256).
    pub sha256: String,
    /// Its configuration (TOML).
    pub config: String,
}

impl Request {
    /// The correction's id: the same request, the same id (a request
    /// repeated after an answer that never came books nothing twice).
    pub fn id(&self) -> String {
        let canonical = serde_json::json!([
            self.reason,
            self.scope.from,
            self.scope.to,
            self.scope.site,
            self.scope.projects,
            self.sha256,
            self.config,
        ]);
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        format!("corr-{}", &hex::encode(digest)[..20])
    }
}

/// One project's figures, decimals as exact strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectDifference {
    /// The project.
    pub project: String,
    /// What its usage in the period cost.
    pub before: Decimal,
    /// What it costs corrected.
    pub after: Decimal,
    /// `after - before`: the adjustment booked.
    pub difference: Decimal,
}

/// A correction worked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repriced {
    /// The lines to book (parts whose price changed).
    pub lines: Vec<CorrectionLine>,
    /// Per project, sorted.
    pub projects: Vec<ProjectDifference>,
    /// The sum of the differences.
    pub total: Decimal,
    /// Parts of charges re-priced.
    pub steps: usize,
}

/// The usage span of a charge: `[previous, current)`.
fn span(charge: &ChargeRecord) -> (i64, i64) {
    (charge.previous.0, charge.current.0)
}

/// One part to price: charge `index`'s usage in `[a, b)`, what it cost
/// before, its bounds' values.
struct Part {
    index: usize,
    a: i64,
    b: i64,
    before: Decimal,
    start: String,
    end: String,
}

/// Re-prices every charge of `basis` (cut to the scope's period) with
/// `pricer`; only metrics the pricer prices are re-priced. Refused with
/// every step it could not price: a correction is booked whole or not at all.
pub fn reprice(
    id: &str,
    scope: &CorrectionScope,
    basis: &CorrectionBasis,
    pricer: &impl Pricer,
) -> Result<Repriced, Vec<RerateFailure>> {
    let mut earlier: BTreeMap<i64, Vec<&CorrectionLine>> = BTreeMap::new();
    for line in &basis.earlier {
        earlier.entry(line.charge).or_default().push(line);
    }
    let mut failures = Vec::new();
    let mut parts = Vec::new();
    for (
        index,
        BilledCharge {
            id: charge_id,
            charge,
        },
    ) in basis.charges.iter().enumerate()
    {
        let key = &charge.key;
        if !pricer.prices(&key.location_id, &key.metric) {
            continue;
        }
        let (t0, t1) = span(charge);
        let (a, b) = (t0.max(scope.from), t1.min(scope.to));
        if a >= b {
            continue;
        }
        let mut before = share(charge.credits, (t0, t1), (a, b));
        for line in earlier.get(charge_id).into_iter().flatten() {
            before += share(
                line.difference,
                (line.start, line.end),
                (a.max(line.start), b.min(line.end)),
            );
        }
        let step = recorded_step(charge);
        let bound = |t: i64| -> Result<String, String> {
            if t == t0 {
                Ok(charge.previous.1.clone())
            } else if t == t1 {
                Ok(charge.current.1.clone())
            } else {
                value_at(&step, t)
                    .map(|v| v.to_string())
                    .map_err(|e| e.to_string())
            }
        };
        match (bound(a), bound(b)) {
            (Ok(start), Ok(end)) => parts.push(Part {
                index,
                a,
                b,
                before,
                start,
                end,
            }),
            (Err(error), _) | (_, Err(error)) => failures.push(failure(charge, error)),
        }
    }
    let mut lines = Vec::new();
    let mut projects: BTreeMap<&str, ProjectDifference> = BTreeMap::new();
    for chunk in parts.chunks(16 * MAX_BATCH) {
        let steps: Vec<Step<'_>> = chunk
            .iter()
            .map(|part| {
                let charge = &basis.charges[part.index].charge;
                Step {
                    previous: (part.a, part.start.as_str()),
                    current: (part.b, part.end.as_str()),
                    ..recorded_step(charge)
                }
            })
            .collect();
        for (part, priced) in chunk.iter().zip(pricer.price(&steps)) {
            let BilledCharge {
                id: charge_id,
                charge,
            } = &basis.charges[part.index];
            let after = match priced {
                Ok(priced) => priced.credits,
                Err(e) => {
                    failures.push(failure(charge, e.to_string()));
                    continue;
                }
            };
            let row = projects
                .entry(&charge.key.project)
                .or_insert_with(|| ProjectDifference {
                    project: charge.key.project.to_string(),
                    before: Decimal::ZERO,
                    after: Decimal::ZERO,
                    difference: Decimal::ZERO,
                });
            row.before += part.before;
            row.after += after;
            let difference = after - part.before;
            if !difference.is_zero() {
                lines.push(CorrectionLine {
                    correction: id.to_owned(),
                    charge: *charge_id,
                    key: charge.key.clone(),
                    start: part.a,
                    end: part.b,
                    before: part.before,
                    after,
                    difference,
                });
            }
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    let mut projects: Vec<ProjectDifference> = projects.into_values().collect();
    for row in &mut projects {
        row.difference = row.after - row.before;
    }
    Ok(Repriced {
        total: projects.iter().map(|p| p.difference).sum(),
        steps: parts.len(),
        lines,
        projects,
    })
}

/// Why a correction was not booked.
#[derive(Debug, thiserror::Error)]
pub enum CorrectionError {
    /// The module failed on some steps: nothing booked.
    #[error("the module cannot price {count} step(s), nothing booked: {shown}")]
    Unpriceable {
        /// How many.
        count: usize,
        /// The first ones.
        shown: String,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] os_credits_ledger::LedgerError),
    /// Other corrections were booked while this one was computed, again and again.
    #[error("other corrections kept being booked meanwhile: send it again")]
    Busy,
    /// The answer stored when it was booked does not read.
    #[error("the booked answer of {0} does not read: {1}")]
    Corrupt(String, String),
}

/// Which policy re-priced a correction, as its answer names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Hex SHA-256 of the module.
    pub sha256: String,
}

/// The answer to a correction: what it changes (or changed) per project.
/// Kept with the correction when it is booked (as its JSON), so that the
/// same request sent again is answered as it was then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionAnswer {
    /// The correction's id (from its request: the same request, the same id).
    pub id: String,
    /// Whether it was booked (`false`: a preview).
    pub applied: bool,
    /// Why.
    pub reason: String,
    /// The period's start, RFC 3339 (or `beginning`).
    pub from: String,
    /// The period's end, RFC 3339.
    pub to: String,
    /// The one site corrected (`None`: every site).
    pub site: Option<String>,
    /// The projects corrected (`None`: every project).
    pub only_projects: Option<Vec<String>>,
    /// The policy that re-priced the period.
    pub policy: PolicyView,
    /// Parts of charges re-priced.
    pub steps: usize,
    /// Lines booked (parts whose price changed).
    pub lines: usize,
    /// Per project, sorted.
    pub projects: Vec<ProjectDifference>,
    /// The sum of the differences, exact.
    pub total_difference: String,
}

/// The answer to a correction: what it changes (or changed) per project.
pub fn answer(
    id: &str,
    request: &Request,
    policy: &PolicyStamp,
    repriced: &Repriced,
    applied: bool,
) -> CorrectionAnswer {
    CorrectionAnswer {
        id: id.to_owned(),
        applied,
        reason: request.reason.clone(),
        from: os_credits_core::schedule::show_time(request.scope.from),
        to: os_credits_core::schedule::show_time(request.scope.to),
        site: request.scope.site.clone(),
        only_projects: request.scope.projects.clone(),
        policy: PolicyView {
            name: policy.name.clone(),
            version: policy.version.clone(),
            sha256: policy.sha256.clone(),
        },
        steps: repriced.steps,
        lines: repriced.lines.len(),
        projects: repriced.projects.clone(),
        total_difference: repriced.total.to_string(),
    }
}

/// Computes a correction with `pricer` (named `policy` in its lines) and,
/// unless `dry_run`, books it (with `webhook`, its event queued in the
/// same transaction); the answer. A correction booked before (the same
/// request) is answered as it was then; one computed while another was
/// booked is computed again.
pub fn apply(
    ledger: &dyn Corrections,
    request: &Request,
    pricer: &impl Pricer,
    policy: &PolicyStamp,
    dry_run: bool,
    webhook: bool,
) -> Result<CorrectionAnswer, CorrectionError> {
    let id = request.id();
    for _ in 0..3 {
        let basis = ledger.correction_basis(&request.scope)?;
        if !dry_run {
            tracing::info!(correction = id, charges = basis.charges.len(), reason = %request.reason, "applying correction");
        }
        let repriced = reprice(&id, &request.scope, &basis, pricer).map_err(|failures| {
            let shown: Vec<String> = failures
                .iter()
                .take(10)
                .map(|f| {
                    format!(
                        "{} {} {} at {}: {}",
                        f.project,
                        f.location_id,
                        f.metric,
                        os_credits_core::schedule::show_time(f.timestamp),
                        f.error
                    )
                })
                .collect();
            CorrectionError::Unpriceable {
                count: failures.len(),
                shown: shown.join("; "),
            }
        })?;
        if dry_run {
            return Ok(answer(&id, request, policy, &repriced, false));
        }
        let booked = answer(&id, request, policy, &repriced, true);
        let booked_json = serde_json::to_value(&booked)
            .map_err(|e| CorrectionError::Corrupt(id.clone(), e.to_string()))?;
        let record = CorrectionRecord {
            id: id.clone(),
            reason: request.reason.clone(),
            scope: request.scope.clone(),
            policy: policy.clone(),
            config: request.config.clone(),
            total: repriced.total,
            answer: booked_json.to_string(),
            booked_at: os_credits_core::time::now_ns(),
        };
        let event = webhook.then(|| {
            WebhookEvent::new(
                id.clone(),
                CORRECTION_EVENT,
                record.booked_at,
                booked_json.clone(),
            )
        });
        match ledger.book_correction(&record, &repriced.lines, basis.head, event.as_ref())? {
            Booking::Booked => {
                tracing::info!(correction = id, reason = %request.reason, total = %repriced.total, lines = repriced.lines.len(), "correction booked");
                return Ok(booked);
            }
            Booking::Already(text) => {
                return serde_json::from_str(&text)
                    .map_err(|e| CorrectionError::Corrupt(id.clone(), e.to_string()));
            }
            Booking::Stale => continue,
        }
    }
    Err(CorrectionError::Busy)
}

/// The correction a back-dated schedule entry with a `correction_reason`
/// books: the usage from its `from` on (of its site, or of every site for
/// the default's), re-priced by the schedule that holds it (so each part
/// by the version in force when it happened).
pub fn for_entry(entry: &Entry) -> Option<Request> {
    let reason = entry.correction_reason.clone()?;
    Some(Request {
        reason,
        scope: CorrectionScope {
            from: entry.from,
            to: i64::MAX,
            site: (entry.site != DEFAULT_SITE).then(|| entry.site.clone()),
            projects: None,
        },
        sha256: entry.sha256.clone(),
        config: entry.config.clone(),
    })
}

fn failure(charge: &ChargeRecord, error: String) -> RerateFailure {
    RerateFailure {
        project: charge.key.project.to_string(),
        location_id: charge.key.location_id.to_string(),
        metric: charge.key.metric.to_string(),
        timestamp: charge.current.0,
        error,
    }
}

/// One line of a statement: what a project used of a metric at a site
/// under one schedule version, or what a correction or an adjustment
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// The project.
    pub project: String,
    /// The site (empty for an adjustment from Perun).
    pub site: String,
    /// The metric (empty for an adjustment from Perun).
    pub metric: String,
    /// Usage in the period, in the metric's unit (`None`: a correction or
    /// an adjustment, which use nothing).
    pub quantity: Option<Decimal>,
    /// Exact credits.
    pub credits: Decimal,
    /// The policy that priced it (empty for an adjustment from Perun).
    pub policy: PolicyStamp,
    /// The correction, for a correction's line.
    pub correction_id: Option<String>,
    /// Why, for a correction or an adjustment.
    pub reason: Option<String>,
}

/// What a line groups: project, site, metric, then charges (`0`) before
/// corrections (`1`) before adjustments (`2`), then the version or the
/// correction.
type Group = (String, String, String, u8, String);

/// The lines of a statement over `[from, to)`: one per project, site,
/// metric and schedule version, one per project, site, metric and
/// correction, one per adjustment from Perun; sorted. Fails on a value
/// that is no decimal (a corrupt ledger).
pub fn statement(
    basis: &StatementBasis,
    (from, to): (i64, i64),
) -> Result<Vec<StatementLine>, os_credits_ledger::LedgerError> {
    let mut groups: BTreeMap<Group, StatementLine> = BTreeMap::new();
    fn group<'g>(
        groups: &'g mut BTreeMap<Group, StatementLine>,
        key: &Key,
        version: String,
        policy: &PolicyStamp,
    ) -> &'g mut StatementLine {
        groups
            .entry((
                key.project.to_string(),
                key.location_id.to_string(),
                key.metric.to_string(),
                0,
                version,
            ))
            .or_insert_with(|| StatementLine {
                project: key.project.to_string(),
                site: key.location_id.to_string(),
                metric: key.metric.to_string(),
                quantity: Some(Decimal::ZERO),
                credits: Decimal::ZERO,
                policy: policy.clone(),
                correction_id: None,
                reason: None,
            })
    }
    for total in &basis.rolled {
        let line = group(
            &mut groups,
            &total.key,
            total.version.clone(),
            &total.policy,
        );
        line.credits += total.credits;
        if let Some(quantity) = &mut line.quantity {
            *quantity += total.quantity;
        }
    }
    for (charge, window) in &basis.charges {
        let (t0, t1) = span(charge);
        let (a, b) = (t0.max(window.0.max(from)), t1.min(window.1.min(to)));
        if a >= b {
            continue;
        }
        let used = charge.usage()?;
        let line = group(&mut groups, &charge.key, version_of(charge), &charge.policy);
        line.credits += share(charge.credits, (t0, t1), (a, b));
        if let Some(quantity) = &mut line.quantity {
            *quantity += share(used, (t0, t1), (a, b));
        }
    }
    for correction in &basis.corrections {
        let line = &correction.line;
        let (a, b) = (line.start.max(from), line.end.min(to));
        if a >= b {
            continue;
        }
        let shown = groups
            .entry((
                line.key.project.to_string(),
                line.key.location_id.to_string(),
                line.key.metric.to_string(),
                1,
                line.correction.clone(),
            ))
            .or_insert_with(|| StatementLine {
                project: line.key.project.to_string(),
                site: line.key.location_id.to_string(),
                metric: line.key.metric.to_string(),
                quantity: None,
                credits: Decimal::ZERO,
                policy: correction.policy.clone(),
                correction_id: Some(line.correction.clone()),
                reason: Some(correction.reason.clone()),
            });
        shown.credits += share(line.difference, (line.start, line.end), (a, b));
    }
    let mut lines: Vec<StatementLine> = groups.into_values().collect();
    for adjustment in &basis.adjustments {
        lines.push(StatementLine {
            project: adjustment.project.clone(),
            site: String::new(),
            metric: String::new(),
            quantity: None,
            credits: adjustment.adjustment.amount,
            policy: PolicyStamp {
                name: String::new(),
                version: String::new(),
                sha256: String::new(),
            },
            correction_id: None,
            reason: Some(
                match adjustment.adjustment.kind {
                    os_credits_ledger::AdjustmentKind::Adopted => "credits used adopted from Perun",
                    os_credits_ledger::AdjustmentKind::ManualEdit => {
                        "credits used changed in Perun"
                    }
                    os_credits_ledger::AdjustmentKind::Correction => "correction",
                }
                .to_owned(),
            ),
        });
    }
    lines.sort_by(|x, y| (&x.project, &x.site, &x.metric).cmp(&(&y.project, &y.site, &y.metric)));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use os_credits_core::account::Key;
    use os_credits_ledger::{CorrectionBasis, CorrectionScope};
    use os_credits_policy::CallError;

    /// Prices a step at `rate` per unit of usage.
    struct Rate(Decimal);

    impl Pricer for Rate {
        fn prices(&self, _: &str, metric: &str) -> bool {
            metric == "cpu"
        }
        fn price(&self, steps: &[Step<'_>]) -> Vec<Result<super::super::Priced, CallError>> {
            steps
                .iter()
                .map(|s| {
                    let used = pricing_sdk::parse_decimal(s.current.1).unwrap()
                        - pricing_sdk::parse_decimal(s.previous.1).unwrap();
                    Ok(super::super::Priced::whole(used * self.0, None))
                })
                .collect()
        }
    }

    fn charge(
        metric: &str,
        previous: (i64, &str),
        current: (i64, &str),
        credits: i64,
    ) -> ChargeRecord {
        ChargeRecord {
            key: Key {
                project: "p".into(),
                location_id: "s".into(),
                metric: metric.into(),
            },
            previous: (previous.0, previous.1.into()),
            current: (current.0, current.1.into()),
            credits: Decimal::from(credits),
            charged_after: Decimal::ZERO,
            policy: PolicyStamp {
                name: "x".into(),
                version: "1".into(),
                sha256: "00".into(),
            },
            reversed: false,
            schedule_entry: Some(1),
        }
    }

    #[test]
    fn a_step_spanning_an_edge_is_repriced_for_its_part_inside() {
        // cpu 0 -> 10 over [0, 10) billed 10; the period [5, 20) takes
        // half of it (value 5 -> 10) and all of [10, 20) (10 -> 30, billed 20).
        let basis = CorrectionBasis {
            charges: vec![
                BilledCharge {
                    id: 1,
                    charge: charge("cpu", (0, "0"), (10, "10"), 10),
                },
                BilledCharge {
                    id: 2,
                    charge: charge("cpu", (10, "10"), (20, "30"), 20),
                },
                BilledCharge {
                    id: 3,
                    charge: charge("mem", (10, "0"), (20, "5"), 7),
                },
            ],
            earlier: Vec::new(),
            head: 0,
        };
        let scope = CorrectionScope {
            from: 5,
            to: 20,
            site: None,
            projects: None,
        };
        let done = reprice("c", &scope, &basis, &Rate(Decimal::TWO)).unwrap();
        assert_eq!(done.steps, 2);
        assert_eq!(done.projects[0].before, Decimal::from(25));
        assert_eq!(done.projects[0].after, Decimal::from(50));
        assert_eq!(done.total, Decimal::from(25));
        assert_eq!(done.lines[0].start, 5);
        // Booked, the same correction again changes nothing.
        let again = CorrectionBasis {
            earlier: done.lines.clone(),
            ..basis
        };
        let twice = reprice("d", &scope, &again, &Rate(Decimal::TWO)).unwrap();
        assert_eq!(twice.total, Decimal::ZERO);
        assert!(twice.lines.is_empty());
    }
}
