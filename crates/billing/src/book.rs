//! The book: every key's state and the exact totals, and the one entry
//! point of billing, [`Book::apply`], which owns the protocol of deciding,
//! waiting and pricing.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use rust_decimal::Decimal;

use super::pricer::{Part, Priced, Pricer};
use super::rules::{Skip, skip, state_of};
pub use os_credits_core::account::{Account, Key, State};
use os_credits_ingest::Sample;
use os_credits_policy::{CallError, MAX_BATCH, ModuleInfo, Step};

/// The reason counted for samples of a metric the policy does not price.
pub const UNKNOWN_METRIC: &str = "unknown metric";
/// The reason counted for new keys refused at the book's limit.
pub const TOO_MANY_KEYS: &str = "too many keys";
/// The reason counted for steps a policy failed to price.
pub const POLICY_ERROR: &str = "policy error";

/// A charged step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The exact credits.
    pub credits: Decimal,
    /// The state before the step (the previous sample).
    pub previous: State,
    /// The policy that priced it (its last part).
    pub policy: Option<Arc<ModuleInfo>>,
    /// The schedule entry that priced it (its last part).
    pub entry: Option<i64>,
    /// The parts of a step split at a price change, in order (empty when
    /// one version priced it all).
    pub parts: Vec<Part>,
    /// The project's exact charged total right after this charge.
    pub project_total: Decimal,
}

/// What applying one sample did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The step was priced and charged.
    Charged(Charge),
    /// The policy does not price this metric.
    UnknownMetric,
    /// Nothing charged, by the rules.
    Skipped(Skip),
    /// The policy failed on this step; the state is unchanged.
    PolicyFailed(CallError),
    /// A new key, refused: the book holds its limit of keys already.
    TooManyKeys(usize),
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
            Outcome::Charged(_) | Outcome::Skipped(Skip::Baseline | Skip::Reset)
        )
    }

    /// Why nothing was charged, as a short reason; `None` for a charge.
    pub fn ignored_reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Charged(_) => None,
            Outcome::UnknownMetric => Some(UNKNOWN_METRIC),
            Outcome::Skipped(skip) => Some(skip.reason()),
            Outcome::PolicyFailed(_) => Some(POLICY_ERROR),
            Outcome::TooManyKeys(_) => Some(TOO_MANY_KEYS),
        }
    }
}

/// What the rules made of a sample, inside [`Book::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Settled without pricing.
    Settled(Outcome),
    /// A rise to price.
    Price,
    /// A step of this key already waits: price first, then decide again.
    Wait,
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

/// The in-memory book of all keys: states and exact totals.
///
/// Names are interned: a project's name is stored once for all its keys,
/// a site's and a metric's once for the whole book.
#[derive(Debug)]
pub struct Book {
    accounts: HashMap<Key, Account>,
    projects: HashMap<Arc<str>, Decimal>,
    names: hashbrown::HashSet<Arc<str>>,
    /// New keys beyond this many are refused (memory stays bounded
    /// whatever a sender makes up).
    max_keys: usize,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            accounts: HashMap::new(),
            projects: HashMap::new(),
            names: hashbrown::HashSet::new(),
            max_keys: usize::MAX,
        }
    }
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

    /// Refuses new keys once the book holds `max_keys` (the ones it holds
    /// go on billing).
    pub fn limit_keys(&mut self, max_keys: usize) {
        self.max_keys = max_keys;
    }

    /// The most keys the book takes.
    pub fn max_keys(&self) -> usize {
        self.max_keys
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

    /// Applies `samples` in order and returns what each did. The rules
    /// decide every sample; the rises wait and are priced together (at
    /// most [`MAX_BATCH`] per call), and a key with a step waiting makes its
    /// next sample wait until that step is settled, so the outcome is the
    /// same as pricing one sample at a time. A step the policy cannot price
    /// leaves the key's state alone: the next sample prices the whole span.
    /// Whether the pricer prices a sample's metric is asked once per sample.
    pub fn apply(&mut self, samples: &[Sample<'_>], pricer: &impl Pricer) -> Vec<Outcome> {
        let priced: Vec<bool> = samples
            .iter()
            .map(|s| pricer.prices(&s.location_id, &s.metric))
            .collect();
        self.apply_where(samples, pricer, |index| priced[index])
    }

    /// [`Book::apply`] for samples whose metrics the caller already knows
    /// the pricer prices (the intake asks once per sample, when it sorts
    /// them): nothing is asked again.
    pub fn apply_priced(&mut self, samples: &[Sample<'_>], pricer: &impl Pricer) -> Vec<Outcome> {
        self.apply_where(samples, pricer, |_| true)
    }

    fn apply_where(
        &mut self,
        samples: &[Sample<'_>],
        pricer: &impl Pricer,
        priced: impl Fn(usize) -> bool,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; samples.len()];
        let mut waiting: Vec<usize> = Vec::new();
        for (index, sample) in samples.iter().enumerate() {
            if !priced(index) {
                outcomes[index] = Some(Outcome::UnknownMetric);
                continue;
            }
            let mut next = self.decide(sample);
            if next == Next::Wait {
                self.price(samples, &mut waiting, &mut outcomes, pricer);
                next = self.decide(sample);
            }
            match next {
                Next::Settled(outcome) => outcomes[index] = Some(outcome),
                Next::Price | Next::Wait => waiting.push(index),
            }
            if waiting.len() == MAX_BATCH {
                self.price(samples, &mut waiting, &mut outcomes, pricer);
            }
        }
        self.price(samples, &mut waiting, &mut outcomes, pricer);
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Outcome::PolicyFailed(CallError::missing())))
            .collect()
    }

    /// The rules for one sample. A rise changes nothing yet: its key is
    /// marked pending until [`Book::price`] settles it.
    fn decide(&mut self, s: &Sample<'_>) -> Next {
        let key = KeyRef(&s.project, &s.location_id, &s.metric);
        let Some(account) = self.accounts.get_mut(&key) else {
            if self.accounts.len() >= self.max_keys {
                return Next::Settled(Outcome::TooManyKeys(self.max_keys));
            }
            let key = self.intern(&s.project, &s.location_id, &s.metric);
            self.accounts.insert(key, Account::baseline(state_of(s)));
            return Next::Settled(Outcome::Skipped(Skip::Baseline));
        };
        if account.pending {
            return Next::Wait;
        }
        if account.awaiting_baseline {
            if s.timestamp <= account.state.timestamp {
                return Next::Settled(Outcome::Skipped(Skip::Stale));
            }
            account.state = state_of(s);
            account.awaiting_baseline = false;
            return Next::Settled(Outcome::Skipped(Skip::Baseline));
        }
        match skip(Some(&account.state), s.timestamp, s.value) {
            None => {
                account.pending = true;
                Next::Price
            }
            Some(Skip::Reset) => {
                account.state = state_of(s);
                Next::Settled(Outcome::Skipped(Skip::Reset))
            }
            Some(other) => Next::Settled(Outcome::Skipped(other)),
        }
    }

    /// Prices the waiting samples (indices into `samples`) as one batch and
    /// settles them in order.
    fn price(
        &mut self,
        samples: &[Sample<'_>],
        waiting: &mut Vec<usize>,
        outcomes: &mut [Option<Outcome>],
        pricer: &impl Pricer,
    ) {
        if waiting.is_empty() {
            return;
        }
        let steps: Vec<Step<'_>> = waiting
            .iter()
            .filter_map(|&index| {
                let s = &samples[index];
                let account = self.account(&s.project, &s.location_id, &s.metric)?;
                Some(Step {
                    metric: &s.metric,
                    project: &s.project,
                    location_id: &s.location_id,
                    tags: &s.tags,
                    previous: (account.state.timestamp, &account.state.text),
                    current: (s.timestamp, &s.text),
                })
            })
            .collect();
        let priced = if steps.len() == waiting.len() {
            pricer.price(&steps)
        } else {
            Vec::new()
        };
        drop(steps);
        let mut priced = priced.into_iter();
        for index in waiting.drain(..) {
            outcomes[index] = Some(self.settle(&samples[index], priced.next()));
        }
    }

    /// Settles one priced step (`None`: it was not priced).
    fn settle(&mut self, s: &Sample<'_>, priced: Option<Result<Priced, CallError>>) -> Outcome {
        let key = KeyRef(&s.project, &s.location_id, &s.metric);
        let Some(account) = self.accounts.get_mut(&key) else {
            return Outcome::PolicyFailed(CallError::missing());
        };
        account.pending = false;
        match priced {
            Some(Ok(Priced {
                credits,
                policy,
                entry,
                parts,
            })) => {
                let previous = std::mem::replace(&mut account.state, state_of(s));
                account.charged += credits;
                let total = match self.projects.get_mut(&*s.project) {
                    Some(total) => {
                        *total += credits;
                        *total
                    }
                    None => {
                        let project = intern(&mut self.names, &s.project);
                        self.projects.insert(project, credits);
                        credits
                    }
                };
                Outcome::Charged(Charge {
                    credits,
                    previous,
                    policy,
                    entry,
                    parts,
                    project_total: total,
                })
            }
            Some(Err(e)) => Outcome::PolicyFailed(e),
            None => Outcome::PolicyFailed(CallError::missing()),
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
    use os_credits_ingest::{Item, Precision, lines};
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

    impl Native {
        fn bill(&self, step: &Step<'_>) -> Result<Priced, CallError> {
            self.calls.set(self.calls.get() + 1);
            if self.fail || self.fail_once.get() == Some(step.project) {
                self.fail_once.set(None);
                return Err(CallError::Refused("down".into()));
            }
            let current: Decimal = step.current.1.parse().unwrap();
            let previous: Decimal = step.previous.1.parse().unwrap();
            Ok(Priced::whole((current - previous) * self.price, None))
        }
    }

    impl Pricer for Native {
        fn prices(&self, _location_id: &str, metric: &str) -> bool {
            metric == "project_vcpu_usage"
        }
        fn price(&self, steps: &[Step<'_>]) -> Vec<Result<Priced, CallError>> {
            self.batches.set(self.batches.get() + 1);
            steps.iter().map(|step| self.bill(step)).collect()
        }
    }

    /// The samples of a body (every line must be a sample).
    fn samples(body: &str) -> Vec<Sample<'_>> {
        lines(body.as_bytes(), Precision::Seconds, 0)
            .map(|(_, item)| match item {
                Item::Sample(sample) => sample,
                other => panic!("not a sample: {other:?}"),
            })
            .collect()
    }

    /// Applies `body` in one call, as the service does.
    fn run(book: &mut Book, pricer: &Native, body: &str) -> Vec<Outcome> {
        book.apply(&samples(body), pricer)
    }

    /// Applies `body` one sample per call: each step priced alone.
    fn run_one_by_one(book: &mut Book, pricer: &Native, body: &str) -> Vec<Outcome> {
        samples(body)
            .iter()
            .flat_map(|sample| book.apply(std::slice::from_ref(sample), pricer))
            .collect()
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
        let expected = run_one_by_one(&mut sequential, &one_by_one, &body);

        let batched = Native::at("2");
        batched.fail_once.set(Some("q"));
        let mut book = Book::new();
        let outcomes = run(&mut book, &batched, &body);

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
        assert_eq!(outcomes[0], Outcome::Skipped(Skip::Stale));
        assert_eq!(outcomes[1], Outcome::Skipped(Skip::Baseline));
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
        assert_eq!(outcomes, vec![Outcome::Skipped(Skip::Baseline)]);
        // +5 seven days later: 5 credits
        let outcomes = run(&mut book, &pricer, &line("p", "105", 1 + week));
        assert_eq!(credits(&outcomes), vec![Some(Decimal::from(5))]);
        let Outcome::Charged(charge) = &outcomes[0] else {
            panic!("not a charge")
        };
        assert_eq!(charge.previous.text.as_ref(), "100");
        // same timestamp, higher value: ignored
        let outcomes = run(&mut book, &pricer, &line("p", "200", 1 + week));
        assert_eq!(outcomes, vec![Outcome::Skipped(Skip::Stale)]);
        // same value seven days later: nothing, state unchanged
        let outcomes = run(&mut book, &pricer, &line("p", "105", 1 + 2 * week));
        assert_eq!(outcomes, vec![Outcome::Skipped(Skip::Unchanged)]);
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
        assert_eq!(
            os_credits_core::credits::round(five.project_total("p"), 2).to_string(),
            "0.00"
        );
        // the sixth: 0.006 exact, 0.01 rounded
        assert_eq!(book.project_total("p").to_string(), "0.006");
        assert_eq!(
            os_credits_core::credits::round(book.project_total("p"), 2).to_string(),
            "0.01"
        );
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
        assert_eq!(outcomes[2], Outcome::Skipped(Skip::Reset));
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
}
