//! The billing rules: what a measurement costs, given what came before.
//!
//! Per key (project, site, metric) the state is the last billed measurement.
//! Points are applied in arrival order ([`decide`]):
//! - the first point of a key is a baseline: nothing is charged;
//! - a point not newer than the state is ignored (stale);
//! - a point with the same value changes nothing (the state keeps its
//!   timestamp, so the next step spans from the last change);
//! - a lower value (the exporter's start date changed) re-baselines without
//!   a charge;
//! - otherwise the policy prices (previous, current) and the **exact**
//!   charge is added to the key's and the project's totals.
//!
//! A key adopted from the service we replace ([`Book::rebase`]) waits for a
//! point newer than that service's last billed one: older points are
//! stale, the first newer one is a baseline.
//!
//! A step the policy cannot price (error, trap, timeout) leaves the state as
//! it was: the next point prices the whole span, so nothing is lost.
//!
//! Steps are priced in batches ([`Book::decide`], then [`Book::price`]):
//! one call into a Wasm policy serves many steps. A key has at most one
//! step waiting to be priced; its next point waits until that is settled.
//! Totals stay exact; [`round`] applies the precision only when a total is
//! shown or written. This module knows nothing of HTTP, storage or Perun.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::ingest::Measurement;
use crate::policy::{CallError, Policy, PolicyInfo, Usage};

/// A priced step: the exact credits and the policy that priced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The exact charge.
    pub credits: Decimal,
    /// The policy that priced it (`None` for native formulas in tests).
    pub policy: Option<Arc<PolicyInfo>>,
}

/// What prices steps: a loaded [`Policy`], a set of them mapped to sites,
/// or a native formula in tests and benchmarks.
pub trait Pricer {
    /// Whether points of `metric` at site `location_id` are billed at all.
    fn prices(&self, location_id: &str, metric: &str) -> bool;
    /// The exact charge for one step.
    fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError>;
    /// The exact charges for several steps, in order. The default prices
    /// them one by one; a Wasm policy prices a batch per call.
    fn bill_batch(&self, usages: &[Usage<'_>]) -> Vec<Result<Priced, CallError>> {
        usages.iter().map(|usage| self.bill(usage)).collect()
    }
}

impl Pricer for Policy {
    fn prices(&self, _location_id: &str, metric: &str) -> bool {
        self.info().metric(metric).is_some()
    }

    fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError> {
        Ok(Priced {
            credits: Policy::bill(self, usage)?,
            policy: Some(Arc::clone(self.info())),
        })
    }

    fn bill_batch(&self, usages: &[Usage<'_>]) -> Vec<Result<Priced, CallError>> {
        Policy::bill_batch(self, usages)
            .into_iter()
            .map(|credits| {
                Ok(Priced {
                    credits: credits?,
                    policy: Some(Arc::clone(self.info())),
                })
            })
            .collect()
    }
}

/// The last billed measurement of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Unix time in ns.
    pub timestamp: i64,
    /// The value, exact.
    pub value: Decimal,
    /// The value's text as it arrived (what the policy sees).
    pub text: Box<str>,
}

impl State {
    /// The state a measurement leaves.
    pub fn of(measurement: &Measurement<'_>) -> Self {
        State {
            timestamp: measurement.timestamp,
            value: measurement.value,
            text: measurement.text.into(),
        }
    }
}

/// What the rules say about a point, before any pricing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// First point of its key: remember it, charge nothing.
    Baseline,
    /// Not newer than the state: ignore.
    Stale,
    /// Same value as the state: nothing changes.
    Unchanged,
    /// Lower value: remember it, charge nothing.
    Reset,
    /// Higher value: price the step from the state to this point.
    Bill,
}

/// Applies the rules to a point at `timestamp` with `value`.
pub fn decide(state: Option<&State>, timestamp: i64, value: Decimal) -> Decision {
    match state {
        None => Decision::Baseline,
        Some(state) if timestamp <= state.timestamp => Decision::Stale,
        Some(state) if value == state.value => Decision::Unchanged,
        Some(state) if value < state.value => Decision::Reset,
        Some(_) => Decision::Bill,
    }
}

/// Rounds an exact total half-even to `precision` places, always showing
/// that many places (`5` -> `5.00`).
pub fn round(total: Decimal, precision: u32) -> Decimal {
    let mut rounded =
        total.round_dp_with_strategy(precision, RoundingStrategy::MidpointNearestEven);
    rounded.rescale(precision);
    rounded
}

/// The reason counted for points of a metric the policy does not price.
pub const UNKNOWN_METRIC: &str = "unknown metric";

/// A charged step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The exact credits.
    pub credits: Decimal,
    /// The state before the step (the previous measurement).
    pub previous: State,
    /// The policy that priced it.
    pub policy: Option<Arc<PolicyInfo>>,
}

/// What applying one measurement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The step was priced.
    Charged(Charge),
    /// The policy does not price this metric.
    UnknownMetric,
    /// Nothing charged; see [`Decision`].
    Decided(Decision),
    /// The policy failed on this step; the state is unchanged.
    PolicyFailed(CallError),
}

impl Outcome {
    /// The exact credits charged, if any.
    pub fn credits(&self) -> Option<Decimal> {
        match self {
            Outcome::Charged(charge) => Some(charge.credits),
            _ => None,
        }
    }

    /// Whether the key's state changed (and must be stored).
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Outcome::Charged(_) | Outcome::Decided(Decision::Baseline | Decision::Reset)
        )
    }

    /// Why nothing was charged, as a short reason; `None` for a charge.
    pub fn ignored_reason(&self) -> Option<&'static str> {
        Some(match self {
            Outcome::Charged(_) => return None,
            Outcome::UnknownMetric => UNKNOWN_METRIC,
            Outcome::Decided(Decision::Baseline) => "baseline",
            Outcome::Decided(Decision::Stale) => "not newer",
            Outcome::Decided(Decision::Unchanged) => "unchanged",
            Outcome::Decided(Decision::Reset) => "counter reset",
            Outcome::Decided(Decision::Bill) => "not billed",
            Outcome::PolicyFailed(_) => "policy error",
        })
    }
}

/// What [`Book::decide`] made of a measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Settled without pricing.
    Done(Outcome),
    /// A step to price: pass the measurement to [`Book::price`].
    Price,
    /// A step of this key already waits to be priced: price the waiting
    /// steps first, then decide again.
    Wait,
}

/// A key: project, site, metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The project.
    pub project: Arc<str>,
    /// The site (`location_id`).
    pub location_id: Arc<str>,
    /// The metric.
    pub metric: Arc<str>,
}

/// A borrowed key for lookups without allocating.
struct KeyRef<'a>(&'a str, &'a str, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as the derived `Hash` of `Key`.
        self.0.hash(state);
        self.1.hash(state);
        self.2.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.project == *self.0 && *key.location_id == *self.1 && *key.metric == *self.2
    }
}

/// A key's state and what it has been charged so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The last billed measurement.
    pub state: State,
    /// The exact sum of this key's charges.
    pub charged: Decimal,
    /// Adopted from elsewhere: the state's timestamp is a floor, and the
    /// first point newer than it is a baseline, not a step.
    pub awaiting_baseline: bool,
    /// A step of this key waits to be priced ([`Book::price`]); only ever
    /// set between [`Book::decide`] and [`Book::price`], never stored.
    pub pending: bool,
}

impl Account {
    /// A key's first point: its baseline, nothing charged.
    pub fn baseline(state: State) -> Self {
        Account {
            state,
            charged: Decimal::ZERO,
            awaiting_baseline: false,
            pending: false,
        }
    }
}

/// The in-memory book of all keys: states and exact totals.
///
/// Names are interned: a project's name is stored once for all its keys,
/// a site's and a metric's once for the whole book.
#[derive(Debug, Default)]
pub struct Book {
    accounts: HashMap<Key, Account>,
    projects: HashMap<Arc<str>, Decimal>,
    names: hashbrown::HashSet<Arc<str>>,
}

/// The shared copy of `name` in `names`, added if new.
fn intern(names: &mut hashbrown::HashSet<Arc<str>>, name: &str) -> Arc<str> {
    match names.get(name) {
        Some(shared) => Arc::clone(shared),
        None => {
            let shared: Arc<str> = name.into();
            names.insert(Arc::clone(&shared));
            shared
        }
    }
}

impl Book {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// A book holding these accounts (as the ledger stored them).
    pub fn restore(accounts: impl IntoIterator<Item = (Key, Account)>) -> Self {
        let mut book = Book::new();
        for (key, account) in accounts {
            let key = book.intern(&key.project, &key.location_id, &key.metric);
            *book.projects.entry(Arc::clone(&key.project)).or_default() += account.charged;
            book.accounts.insert(key, account);
        }
        book
    }

    /// The key with its names shared with the rest of the book.
    fn intern(&mut self, project: &str, location_id: &str, metric: &str) -> Key {
        Key {
            project: intern(&mut self.names, project),
            location_id: intern(&mut self.names, location_id),
            metric: intern(&mut self.names, metric),
        }
    }

    /// Adopts a floor from the service we replace, which billed this key up
    /// to its measurement at `floor` (ns): `reversed` (the exact sum of this
    /// key's charges whose step started before the floor, billed twice
    /// otherwise) is taken off the key's and the project's totals. A key
    /// whose state is older than the floor waits for a point newer than it,
    /// which becomes its baseline; a state exactly at the floor is the very
    /// measurement the old service stopped at, and billing continues from
    /// it. A key never seen gets the floor as its state, awaiting a
    /// baseline. Returns the key and its account as they now are.
    pub fn rebase(
        &mut self,
        project: &str,
        location_id: &str,
        metric: &str,
        floor: i64,
        reversed: Decimal,
    ) -> (Key, Account) {
        if !reversed.is_zero()
            && let Some(total) = self.projects.get_mut(project)
        {
            *total -= reversed;
        }
        if let Some((key, account)) =
            self.accounts
                .get_key_value_mut(&KeyRef(project, location_id, metric))
        {
            account.charged -= reversed;
            if account.state.timestamp < floor {
                account.state.timestamp = floor;
                account.awaiting_baseline = true;
            }
            return (key.clone(), account.clone());
        }
        let key = self.intern(project, location_id, metric);
        let account = Account {
            state: State {
                timestamp: floor,
                value: Decimal::ZERO,
                text: "0".into(),
            },
            charged: Decimal::ZERO,
            awaiting_baseline: true,
            pending: false,
        };
        self.accounts.insert(key.clone(), account.clone());
        (key, account)
    }

    /// The account of a key.
    pub fn account(&self, project: &str, location_id: &str, metric: &str) -> Option<&Account> {
        self.accounts.get(&KeyRef(project, location_id, metric))
    }

    /// The book's key (cheap to clone: its names are shared) and account.
    pub fn entry(
        &self,
        project: &str,
        location_id: &str,
        metric: &str,
    ) -> Option<(&Key, &Account)> {
        self.accounts
            .get_key_value(&KeyRef(project, location_id, metric))
    }

    /// Applies one measurement, pricing it with `pricer` when the rules say
    /// so (a batch of one; [`Book::decide`] and [`Book::price`] batch).
    pub fn apply(&mut self, m: &Measurement<'_>, pricer: &impl Pricer) -> Outcome {
        match self.decide(m, pricer) {
            Decided::Done(outcome) => outcome,
            Decided::Price | Decided::Wait => {
                let mut outcomes = self.price(std::slice::from_ref(m), pricer);
                outcomes.pop().unwrap_or(Outcome::Decided(Decision::Bill))
            }
        }
    }

    /// Applies the rules to one measurement. A step to price changes
    /// nothing yet: the key is marked pending until [`Book::price`]
    /// settles it with the other waiting steps.
    pub fn decide(&mut self, m: &Measurement<'_>, pricer: &impl Pricer) -> Decided {
        if !pricer.prices(m.location_id, m.metric) {
            return Decided::Done(Outcome::UnknownMetric);
        }
        let key = KeyRef(m.project, m.location_id, m.metric);
        let Some(account) = self.accounts.get_mut(&key) else {
            let key = self.intern(m.project, m.location_id, m.metric);
            self.accounts.insert(key, Account::baseline(State::of(m)));
            return Decided::Done(Outcome::Decided(Decision::Baseline));
        };
        if account.pending {
            return Decided::Wait;
        }
        if account.awaiting_baseline {
            if m.timestamp <= account.state.timestamp {
                return Decided::Done(Outcome::Decided(Decision::Stale));
            }
            account.state = State::of(m);
            account.awaiting_baseline = false;
            return Decided::Done(Outcome::Decided(Decision::Baseline));
        }
        match decide(Some(&account.state), m.timestamp, m.value) {
            Decision::Bill => {
                account.pending = true;
                Decided::Price
            }
            Decision::Reset => {
                account.state = State::of(m);
                Decided::Done(Outcome::Decided(Decision::Reset))
            }
            other => Decided::Done(Outcome::Decided(other)),
        }
    }

    /// Prices the steps [`Book::decide`] left waiting, in one batch, and
    /// settles them in order: a charge moves the key's state and adds to
    /// the totals; a failure leaves the state as it was. `waiting` are the
    /// measurements `decide` answered [`Decided::Price`] for.
    pub fn price(&mut self, waiting: &[Measurement<'_>], pricer: &impl Pricer) -> Vec<Outcome> {
        if waiting.is_empty() {
            return Vec::new();
        }
        let usages: Vec<Usage<'_>> = waiting
            .iter()
            .filter_map(|m| {
                let account = self.account(m.project, m.location_id, m.metric)?;
                Some(Usage {
                    metric: m.metric,
                    project: m.project,
                    location_id: m.location_id,
                    tags: m.tags,
                    previous: (account.state.timestamp, &account.state.text),
                    current: (m.timestamp, m.text),
                })
            })
            .collect();
        let priced = if usages.len() == waiting.len() {
            pricer.bill_batch(&usages)
        } else {
            Vec::new()
        };
        drop(usages);
        let mut priced = priced.into_iter();
        waiting
            .iter()
            .map(|m| self.settle(m, priced.next()))
            .collect()
    }

    /// Settles one priced step (`None`: it was not priced).
    fn settle(
        &mut self,
        m: &Measurement<'_>,
        priced: Option<Result<Priced, CallError>>,
    ) -> Outcome {
        let key = KeyRef(m.project, m.location_id, m.metric);
        let Some(account) = self.accounts.get_mut(&key) else {
            return Outcome::Decided(Decision::Bill);
        };
        account.pending = false;
        match priced {
            Some(Ok(Priced { credits, policy })) => {
                let previous = std::mem::replace(&mut account.state, State::of(m));
                account.charged += credits;
                match self.projects.get_mut(m.project) {
                    Some(total) => *total += credits,
                    None => {
                        let project = intern(&mut self.names, m.project);
                        self.projects.insert(project, credits);
                    }
                }
                Outcome::Charged(Charge {
                    credits,
                    previous,
                    policy,
                })
            }
            Some(Err(e)) => Outcome::PolicyFailed(e),
            None => Outcome::Decided(Decision::Bill),
        }
    }

    /// Every key with its account, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = (&Key, &Account)> {
        self.accounts.iter()
    }

    /// The exact credits a project was charged (zero if never).
    pub fn project_total(&self, project: &str) -> Decimal {
        self.projects.get(project).copied().unwrap_or_default()
    }

    /// Every project that has a key, with its exact total, in no particular order.
    pub fn projects(&self) -> impl Iterator<Item = (&str, Decimal)> {
        let mut seen: Vec<&str> = self.accounts.keys().map(|k| &*k.project).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().map(|p| (p, self.project_total(p)))
    }

    /// The exact sum over all projects.
    pub fn total(&self) -> Decimal {
        self.projects.values().sum()
    }

    /// How many keys the book holds.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether the book holds no key.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Precision, parse_lines};
    use std::cell::Cell;

    /// Bills `price × (current - previous)` natively, counting calls.
    struct Native {
        price: Decimal,
        calls: Cell<usize>,
        batches: Cell<usize>,
        fail: bool,
        /// Fails the next step of this project, once.
        fail_once: Cell<Option<&'static str>>,
    }

    impl Native {
        fn at(price: &str) -> Self {
            Native {
                price: price.parse().unwrap(),
                calls: Cell::new(0),
                batches: Cell::new(0),
                fail: false,
                fail_once: Cell::new(None),
            }
        }
    }

    impl Pricer for Native {
        fn prices(&self, _location_id: &str, metric: &str) -> bool {
            metric == "project_vcpu_usage"
        }
        fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError> {
            self.calls.set(self.calls.get() + 1);
            if self.fail || self.fail_once.get() == Some(usage.project) {
                self.fail_once.set(None);
                return Err(CallError::Refused("down".into()));
            }
            let current: Decimal = usage.current.1.parse().unwrap();
            let previous: Decimal = usage.previous.1.parse().unwrap();
            Ok(Priced {
                credits: (current - previous) * self.price,
                policy: None,
            })
        }
    }

    impl Native {
        fn batch(&self, usages: &[Usage<'_>]) -> Vec<Result<Priced, CallError>> {
            self.batches.set(self.batches.get() + 1);
            usages.iter().map(|usage| self.bill(usage)).collect()
        }
    }

    /// `Native`, pricing through its batch entry point.
    struct Batched<'a>(&'a Native);

    impl Pricer for Batched<'_> {
        fn prices(&self, location_id: &str, metric: &str) -> bool {
            self.0.prices(location_id, metric)
        }
        fn bill(&self, usage: &Usage<'_>) -> Result<Priced, CallError> {
            self.0.bill(usage)
        }
        fn bill_batch(&self, usages: &[Usage<'_>]) -> Vec<Result<Priced, CallError>> {
            self.0.batch(usages)
        }
    }

    /// Applies `body` as the service does: steps wait and are priced
    /// together, a key's next point waits until its step is settled.
    /// Outcomes in line order.
    fn run_batched(book: &mut Book, pricer: &Native, body: &str) -> Vec<Outcome> {
        let pricer = Batched(pricer);
        let points: Vec<_> = parse_lines(body.as_bytes())
            .map(|(_, point)| point.unwrap())
            .collect();
        let measurements: Vec<_> = points
            .iter()
            .map(|point| Measurement::from_point(point, Precision::Seconds, 0).unwrap())
            .collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; measurements.len()];
        let mut waiting: Vec<usize> = Vec::new();
        let price = |book: &mut Book, waiting: &mut Vec<usize>, outcomes: &mut Vec<_>| {
            let batch: Vec<_> = waiting.iter().map(|&i| measurements[i].clone()).collect();
            for (i, outcome) in waiting.drain(..).zip(book.price(&batch, &pricer)) {
                outcomes[i] = Some(outcome);
            }
        };
        for (i, m) in measurements.iter().enumerate() {
            let mut decided = book.decide(m, &pricer);
            if decided == Decided::Wait {
                price(book, &mut waiting, &mut outcomes);
                decided = book.decide(m, &pricer);
            }
            match decided {
                Decided::Done(outcome) => outcomes[i] = Some(outcome),
                Decided::Price | Decided::Wait => waiting.push(i),
            }
        }
        price(book, &mut waiting, &mut outcomes);
        outcomes.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn steps_priced_in_batches_settle_as_if_priced_one_by_one() {
        // p and q interleaved; q's first step fails once and is billed with
        // its next point; p's third point waits for its second to settle.
        let body = [
            line("p", "1", 1),
            line("q", "1", 1),
            line("p", "3", 2),
            line("q", "5", 2),
            line("p", "4", 3),
            line("q", "6", 3),
            line("r", "7", 3),
            line("p", "4", 4),
            line("q", "2", 4),
        ]
        .concat();
        let one_by_one = Native::at("2");
        one_by_one.fail_once.set(Some("q"));
        let mut sequential = Book::new();
        let expected = run(&mut sequential, &one_by_one, &body);

        let batched = Native::at("2");
        batched.fail_once.set(Some("q"));
        let mut book = Book::new();
        let outcomes = run_batched(&mut book, &batched, &body);

        assert_eq!(outcomes, expected);
        assert!(matches!(outcomes[3], Outcome::PolicyFailed(_)));
        // q billed 1 -> 6 at its third point: the whole span.
        assert_eq!(outcomes[5].credits(), Some(Decimal::from(10)));
        assert_eq!(book.project_total("p"), Decimal::from(6));
        assert_eq!(book.project_total("q"), Decimal::from(10));
        for (key, account) in sequential.accounts() {
            let batched = book.account(&key.project, &key.location_id, &key.metric);
            assert_eq!(batched, Some(account));
            assert!(!account.pending);
        }
        // Two batches (p's third point, then its fourth, forced them), not
        // one call per step; nothing left waiting makes no call.
        assert_eq!(batched.calls.get(), one_by_one.calls.get());
        assert_eq!(batched.batches.get(), 2);
    }

    fn run(book: &mut Book, pricer: &Native, body: &str) -> Vec<Outcome> {
        parse_lines(body.as_bytes())
            .map(|(_, point)| {
                let point = point.unwrap();
                let m = Measurement::from_point(&point, Precision::Seconds, 0).unwrap();
                book.apply(&m, pricer)
            })
            .collect()
    }

    /// What each outcome charged (`None` for no charge).
    fn credits(outcomes: &[Outcome]) -> Vec<Option<Decimal>> {
        outcomes.iter().map(Outcome::credits).collect()
    }

    fn line(project: &str, value: &str, ts: i64) -> String {
        format!("project_vcpu_usage,location_id=8676,project_name={project} value={value} {ts}\n")
    }

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn a_rebased_key_ignores_points_up_to_the_floor_and_baselines_the_next() {
        let pricer = Native::at("1");
        let mut book = Book::new();
        // Billed here: 10 -> 12 (2 credits) -> 15 (3 credits).
        let body = [line("p", "10", 1), line("p", "12", 2), line("p", "15", 3)].concat();
        run(&mut book, &pricer, &body);
        assert_eq!(book.project_total("p"), Decimal::from(5));
        // The old service billed up to t=3.5: both steps started before it
        // and are reversed.
        let floor = 3 * SECOND + SECOND / 2;
        let (_, account) = book.rebase("p", "8676", "project_vcpu_usage", floor, 5.into());
        assert!(account.awaiting_baseline);
        assert_eq!(account.charged, Decimal::ZERO);
        assert_eq!(book.project_total("p"), Decimal::ZERO);
        let outcomes = run(
            &mut book,
            &pricer,
            &[line("p", "16", 3), line("p", "20", 4), line("p", "21", 5)].concat(),
        );
        assert_eq!(outcomes[0], Outcome::Decided(Decision::Stale));
        assert_eq!(outcomes[1], Outcome::Decided(Decision::Baseline));
        assert_eq!(credits(&outcomes)[2], Some(Decimal::ONE));
        assert_eq!(book.project_total("p"), Decimal::ONE);
    }

    #[test]
    fn a_floor_older_than_the_state_keeps_it_and_an_unknown_key_gets_the_floor() {
        let pricer = Native::at("1");
        let mut book = Book::new();
        run(
            &mut book,
            &pricer,
            &[line("p", "10", 5), line("p", "12", 6)].concat(),
        );
        let (_, kept) = book.rebase("p", "8676", "project_vcpu_usage", 4 * SECOND, Decimal::ZERO);
        assert!(!kept.awaiting_baseline);
        assert_eq!(kept.state.timestamp, 6 * SECOND);
        // A floor exactly at the state: the old service stopped at this very
        // measurement, billing continues from it.
        let (_, same) = book.rebase("p", "8676", "project_vcpu_usage", 6 * SECOND, Decimal::ZERO);
        assert!(!same.awaiting_baseline);
        let outcomes = run(&mut book, &pricer, &line("p", "13", 7));
        assert_eq!(credits(&outcomes), vec![Some(Decimal::ONE)]);
        assert_eq!(book.project_total("p"), Decimal::from(3));
        let (key, fresh) =
            book.rebase("q", "8676", "project_vcpu_usage", 9 * SECOND, Decimal::ZERO);
        assert_eq!(&*key.project, "q");
        assert!(fresh.awaiting_baseline);
        let outcomes = run(
            &mut book,
            &pricer,
            &[line("q", "1", 8), line("q", "2", 10), line("q", "4", 11)].concat(),
        );
        assert_eq!(credits(&outcomes), vec![None, None, Some(Decimal::from(2))]);
    }

    #[test]
    fn original_service_cases() {
        let pricer = Native::at("1");
        let mut book = Book::new();
        let week = 7 * 24 * 3600;
        // first write: nothing billed
        let outcomes = run(&mut book, &pricer, &line("p", "100", 1));
        assert_eq!(outcomes, vec![Outcome::Decided(Decision::Baseline)]);
        // +5 seven days later: 5 credits
        let outcomes = run(&mut book, &pricer, &line("p", "105", 1 + week));
        assert_eq!(credits(&outcomes), vec![Some(Decimal::from(5))]);
        let Outcome::Charged(charge) = &outcomes[0] else {
            panic!("not a charge")
        };
        assert_eq!(charge.previous.text.as_ref(), "100");
        // same timestamp, higher value: ignored
        let outcomes = run(&mut book, &pricer, &line("p", "200", 1 + week));
        assert_eq!(outcomes, vec![Outcome::Decided(Decision::Stale)]);
        // same value seven days later: nothing, state unchanged
        let outcomes = run(&mut book, &pricer, &line("p", "105", 1 + 2 * week));
        assert_eq!(outcomes, vec![Outcome::Decided(Decision::Unchanged)]);
        let account = book.accounts().next().unwrap().1;
        assert_eq!(account.state.timestamp, (1 + week) * 1_000_000_000);
        assert_eq!(book.project_total("p"), Decimal::from(5));
        assert_eq!(pricer.calls.get(), 1);
    }

    #[test]
    fn small_steps_accumulate_exactly_and_round_only_when_shown() {
        let pricer = Native::at("0.001");
        let mut book = Book::new();
        let body: String = (0..=6).map(|i| line("p", &i.to_string(), 10 + i)).collect();
        let outcomes = run(&mut book, &pricer, &body);
        assert_eq!(credits(&outcomes).iter().flatten().count(), 6);
        // after five +1 steps: 0.005 exact, 0.00 rounded half-even
        let mut five = Book::new();
        let body: String = (0..=5).map(|i| line("p", &i.to_string(), 10 + i)).collect();
        run(&mut five, &pricer, &body);
        assert_eq!(five.project_total("p").to_string(), "0.005");
        assert_eq!(round(five.project_total("p"), 2).to_string(), "0.00");
        // the sixth: 0.006 exact, 0.01 rounded
        assert_eq!(book.project_total("p").to_string(), "0.006");
        assert_eq!(round(book.project_total("p"), 2).to_string(), "0.01");
    }

    #[test]
    fn a_drop_rebaselines_and_later_growth_bills_again() {
        let pricer = Native::at("1");
        let mut book = Book::new();
        let body = [
            line("p", "50", 1),
            line("p", "60", 2),
            line("p", "3", 3),
            line("p", "8", 4),
        ]
        .concat();
        let outcomes = run(&mut book, &pricer, &body);
        assert_eq!(outcomes[2], Outcome::Decided(Decision::Reset));
        assert_eq!(outcomes[3].credits(), Some(Decimal::from(5)));
        assert_eq!(book.project_total("p"), Decimal::from(15));
    }

    #[test]
    fn a_policy_failure_keeps_the_state_so_the_next_point_bills_the_whole_span() {
        let mut failing = Native::at("1");
        failing.fail = true;
        let mut book = Book::new();
        let outcomes = run(
            &mut book,
            &failing,
            &[line("p", "1", 1), line("p", "4", 2)].concat(),
        );
        assert!(matches!(outcomes[1], Outcome::PolicyFailed(_)));
        let pricer = Native::at("1");
        let outcomes = run(&mut book, &pricer, &line("p", "10", 3));
        assert_eq!(credits(&outcomes), vec![Some(Decimal::from(9))]);
    }

    #[test]
    fn keys_are_separate_per_project_site_and_metric() {
        let pricer = Native::at("1");
        let mut book = Book::new();
        let body = "project_vcpu_usage,location_id=1,project_name=a value=1 1\n\
                    project_vcpu_usage,location_id=2,project_name=a value=100 1\n\
                    project_vcpu_usage,location_id=1,project_name=b value=50 1\n\
                    go_goroutines,location_id=1,project_name=a value=7 1\n\
                    project_vcpu_usage,location_id=1,project_name=a value=3 2\n\
                    project_vcpu_usage,location_id=2,project_name=a value=104 2\n\
                    project_vcpu_usage,location_id=1,project_name=b value=51 2\n";
        let outcomes = run(&mut book, &pricer, body);
        assert_eq!(outcomes[3], Outcome::UnknownMetric);
        assert_eq!(book.len(), 3);
        assert_eq!(book.project_total("a"), Decimal::from(6));
        assert_eq!(book.project_total("b"), Decimal::from(1));
        assert_eq!(book.total(), Decimal::from(7));
        let restored = Book::restore(book.accounts().map(|(k, a)| (k.clone(), a.clone())));
        assert_eq!(restored.project_total("a"), Decimal::from(6));
        assert_eq!(
            restored
                .account("a", "2", "project_vcpu_usage")
                .map(|a| a.state.timestamp),
            Some(2_000_000_000)
        );
        let projects: Vec<_> = book.projects().collect();
        assert_eq!(
            projects,
            vec![("a", Decimal::from(6)), ("b", Decimal::from(1))]
        );
    }

    #[test]
    fn rounding_is_half_even_with_fixed_places() {
        assert_eq!(round("0.125".parse().unwrap(), 2).to_string(), "0.12");
        assert_eq!(round("0.135".parse().unwrap(), 2).to_string(), "0.14");
        assert_eq!(round(Decimal::from(5), 2).to_string(), "5.00");
    }
}
