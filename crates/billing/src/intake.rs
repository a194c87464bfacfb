//! The intake: decoded items through the billing rules, with a report of
//! what each did. The one code path of the service's `/write` (through
//! [`super::engine`]) and of `os-credits policy run`.
//!
//! An [`Intake`] owns the [`Book`] and counts what it saw. [`Intake::feed`]
//! takes the items of one body (from any decoder of [`os_credits_ingest`]),
//! filters what is not billed (unknown metric, broken lines, projects
//! outside the whitelist), hands the samples to [`Book::apply`] in chunks,
//! and tells a recorder about every outcome, in order (the engine turns
//! them into ledger writes). It returns a [`FeedReport`] of that body alone.

use std::collections::{BTreeMap, HashSet};

use rust_decimal::Decimal;
use serde::Serialize;

use super::book::{Book, Outcome, TOO_MANY_KEYS, UNKNOWN_METRIC};
use super::pricer::Pricer;
use super::scope::{Scope, Scoped};
use os_credits_ingest::{Decoded, Item, Sample};

/// Samples handed to [`Book::apply`] at a time: bounds the memory a body
/// of any size holds (its samples borrow from it) while keeping the
/// policy's batches full.
const CHUNK: usize = 4096;

/// How many line problems a report lists (all are counted).
pub const LISTED_ISSUES: usize = 100;

/// Reason counted for lines that could not be parsed.
pub const INVALID_LINE: &str = "invalid line";
/// Reason counted for points of a priced metric that lack a value or tag.
pub const UNUSABLE_POINT: &str = "unusable point";
/// Reason counted for projects outside the whitelist.
pub const NOT_WHITELISTED: &str = "not whitelisted";

/// A line that billed nothing because something is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineIssue {
    /// 1-based line number in its body.
    pub line: usize,
    /// What is wrong.
    pub error: String,
}

/// What one body did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedReport {
    /// Lines read (blank and comment lines not counted).
    pub lines: usize,
    /// Lines that were charged.
    pub billed: usize,
    /// Lines that charged nothing, by reason.
    pub ignored: BTreeMap<&'static str, usize>,
    /// Lines refused as broken or unusable (the first [`LISTED_ISSUES`]).
    pub rejected: Vec<LineIssue>,
    /// How many lines were refused in all.
    pub rejected_count: usize,
    /// Steps the policy failed to price (the first [`LISTED_ISSUES`]); they
    /// are billed with the key's next point.
    pub policy_errors: Vec<LineIssue>,
    /// Points of sites the writer may not bill, per site (also counted in
    /// `ignored` as [`super::scope::SITE_NOT_ALLOWED`], which is all that
    /// [`Intake::seen`] keeps of them).
    pub out_of_scope: BTreeMap<String, usize>,
}

impl FeedReport {
    fn ignore(&mut self, reason: &'static str) {
        *self.ignored.entry(reason).or_default() += 1;
    }

    fn reject(&mut self, reason: &'static str, line: usize, error: String) {
        self.ignore(reason);
        self.rejected_count += 1;
        if self.rejected.len() < LISTED_ISSUES {
            self.rejected.push(LineIssue { line, error });
        }
    }

    fn add(&mut self, other: &FeedReport) {
        self.lines += other.lines;
        self.billed += other.billed;
        for (reason, n) in &other.ignored {
            *self.ignored.entry(reason).or_default() += n;
        }
        self.rejected_count += other.rejected_count;
        let room = LISTED_ISSUES.saturating_sub(self.rejected.len());
        self.rejected
            .extend(other.rejected.iter().take(room).cloned());
        let room = LISTED_ISSUES.saturating_sub(self.policy_errors.len());
        self.policy_errors
            .extend(other.policy_errors.iter().take(room).cloned());
    }

    /// Points refused as out of the writer's scope, in all.
    pub fn out_of_scope_count(&self) -> usize {
        self.out_of_scope.values().sum()
    }

    /// Whether every line was a point of a site the writer may not bill
    /// (and there was at least one).
    pub fn nothing_allowed(&self) -> bool {
        self.lines > 0 && self.out_of_scope_count() == self.lines
    }
}

/// Billing in progress: the book and what was seen so far.
#[derive(Default)]
pub struct Intake {
    book: Book,
    whitelist: Option<HashSet<String>>,
    horizon: Option<std::time::Duration>,
    seen: FeedReport,
}

impl Intake {
    /// An empty intake.
    pub fn new() -> Self {
        Self::default()
    }

    /// An intake that continues from `book` (restored from the ledger).
    pub fn with_book(book: Book) -> Self {
        Intake {
            book,
            ..Self::default()
        }
    }

    /// Bills only these projects; others are counted as not whitelisted.
    pub fn whitelist(mut self, projects: Option<HashSet<String>>) -> Self {
        self.whitelist = projects;
        self
    }

    /// Refuses samples more than `tolerance` ahead of the clock: one point
    /// from the future would leave its key waiting for that time, every
    /// real point until then stale.
    pub fn horizon(mut self, tolerance: Option<std::time::Duration>) -> Self {
        self.horizon = tolerance;
        self
    }

    /// Refuses new keys once the book holds `max_keys`.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.book.limit_keys(max_keys);
        self
    }

    /// The book so far.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The book, to change outside a feed (floors adopted from Perun).
    pub fn book_mut(&mut self) -> &mut Book {
        &mut self.book
    }

    /// Replaces the book (after the ledger refused a batch, from its
    /// truth), keeping its limit of keys.
    pub fn reset_book(&mut self, mut book: Book) {
        book.limit_keys(self.book.max_keys());
        self.book = book;
    }

    /// Everything fed so far.
    pub fn seen(&self) -> &FeedReport {
        &self.seen
    }

    /// Bills the items of one body in order, pricing with `pricer`.
    /// `progress` is called now and then with how far the decoder got;
    /// `record` with every sample's outcome, in order, and the book once
    /// the sample's chunk is settled.
    pub fn feed<'b>(
        &mut self,
        pricer: &impl Pricer,
        mut items: impl Decoded<'b>,
        mut progress: impl FnMut(usize),
        mut record: impl FnMut(&Sample<'b>, &Outcome, &Book),
    ) -> FeedReport {
        let mut report = FeedReport::default();
        let latest = self.horizon.map(|tolerance| {
            let now = os_credits_core::time::now_ns();
            now.saturating_add(i64::try_from(tolerance.as_nanos()).unwrap_or(i64::MAX))
        });
        let mut chunk: Vec<(usize, Sample<'b>)> = Vec::with_capacity(CHUNK);
        while let Some((line, item)) = items.next() {
            report.lines += 1;
            if report.lines.is_multiple_of(4096) {
                progress(items.offset());
            }
            let sample = match item {
                Item::Sample(sample) => sample,
                Item::Invalid(error) => {
                    report.reject(INVALID_LINE, line, error);
                    continue;
                }
                Item::Ignored(reason) => {
                    report.ignore(reason);
                    continue;
                }
                Item::Unusable {
                    metric,
                    location_id,
                    why,
                } => {
                    if pricer.prices(location_id.as_deref().unwrap_or_default(), &metric) {
                        report.reject(UNUSABLE_POINT, line, why.to_string());
                    } else {
                        report.ignore(UNKNOWN_METRIC);
                    }
                    continue;
                }
            };
            if !pricer.prices(&sample.location_id, &sample.metric) {
                report.ignore(UNKNOWN_METRIC);
                continue;
            }
            if let Some(latest) = latest
                && sample.timestamp > latest
            {
                let tolerance = self.horizon.unwrap_or_default();
                report.reject(
                    UNUSABLE_POINT,
                    line,
                    format!("timestamp is more than {tolerance:?} in the future"),
                );
                continue;
            }
            if let Some(whitelist) = &self.whitelist
                && !whitelist.contains(sample.project.as_ref())
            {
                report.ignore(NOT_WHITELISTED);
                continue;
            }
            chunk.push((line, sample));
            if chunk.len() == CHUNK {
                self.apply(&mut chunk, pricer, &mut report, &mut record);
            }
        }
        self.apply(&mut chunk, pricer, &mut report, &mut record);
        progress(items.offset());
        self.seen.add(&report);
        report
    }

    /// [`Intake::feed`] for a writer limited to `scope`: points of other
    /// sites bill nothing and are counted per site in the report's
    /// `out_of_scope`.
    pub fn feed_scoped<'b>(
        &mut self,
        pricer: &impl Pricer,
        items: impl Decoded<'b>,
        scope: Option<&Scope>,
        record: impl FnMut(&Sample<'b>, &Outcome, &Book),
    ) -> FeedReport {
        let mut items = Scoped::new(items, scope);
        let mut report = self.feed(pricer, &mut items, |_| {}, record);
        report.out_of_scope = items.take_refused();
        report
    }

    /// Applies a chunk of samples and reports every outcome in order.
    fn apply<'b>(
        &mut self,
        chunk: &mut Vec<(usize, Sample<'b>)>,
        pricer: &impl Pricer,
        report: &mut FeedReport,
        record: &mut impl FnMut(&Sample<'b>, &Outcome, &Book),
    ) {
        if chunk.is_empty() {
            return;
        }
        let (lines, samples): (Vec<usize>, Vec<Sample<'b>>) = chunk.drain(..).unzip();
        let outcomes = self.book.apply_priced(&samples, pricer);
        for ((line, sample), outcome) in lines.into_iter().zip(&samples).zip(&outcomes) {
            match outcome {
                Outcome::TooManyKeys(limit) => report.reject(
                    TOO_MANY_KEYS,
                    line,
                    format!(
                        "new project, site and metric refused: the service holds its limit of {limit} keys (OS_CREDITS_MAX_KEYS)"
                    ),
                ),
                _ => match outcome.ignored_reason() {
                    None => report.billed += 1,
                    Some(reason) => report.ignore(reason),
                },
            }
            if let Outcome::PolicyFailed(e) = outcome {
                tracing::warn!(
                    project = %sample.project,
                    site = %sample.location_id,
                    metric = %sample.metric,
                    line,
                    "step not billed yet: {e}"
                );
                if report.policy_errors.len() < LISTED_ISSUES {
                    report.policy_errors.push(LineIssue {
                        line,
                        error: e.to_string(),
                    });
                }
            }
            record(sample, outcome, &self.book);
        }
    }

    /// What was billed so far, with totals rounded to `precision` places.
    pub fn report(&self, precision: u32) -> Report {
        let mut charges: Vec<ChargeRow> = self
            .book
            .accounts()
            .map(|(key, account)| ChargeRow {
                project: key.project.to_string(),
                location_id: key.location_id.to_string(),
                metric: key.metric.to_string(),
                credits: account.charged,
            })
            .collect();
        charges.sort_by(|a, b| {
            (&a.project, &a.location_id, &a.metric).cmp(&(&b.project, &b.location_id, &b.metric))
        });
        let projects = self
            .book
            .projects()
            .map(|(project, credits)| ProjectRow {
                project: project.to_owned(),
                credits,
                rounded: os_credits_core::credits::round(credits, precision),
            })
            .collect();
        let total = self.book.total();
        let seen = &self.seen;
        Report {
            lines: seen.lines,
            billed: seen.billed,
            ignored: seen.lines - seen.billed,
            ignored_by_reason: seen.ignored.clone(),
            errors: seen.rejected.clone(),
            policy_errors: seen.policy_errors.clone(),
            charges,
            projects,
            total,
            total_rounded: os_credits_core::credits::round(total, precision),
            precision,
        }
    }
}

/// One key's exact charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChargeRow {
    /// The project.
    pub project: String,
    /// The site.
    pub location_id: String,
    /// The metric.
    pub metric: String,
    /// Exact credits.
    pub credits: Decimal,
}

/// One project's exact and rounded total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectRow {
    /// The project.
    pub project: String,
    /// Exact credits.
    pub credits: Decimal,
    /// Rounded half-even to the precision, as the service shows it.
    pub rounded: Decimal,
}

/// What a replay billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Lines read (blank and comment lines not counted).
    pub lines: usize,
    /// Lines that were charged.
    pub billed: usize,
    /// Lines that charged nothing, for any reason.
    pub ignored: usize,
    /// `ignored` by reason.
    pub ignored_by_reason: BTreeMap<&'static str, usize>,
    /// The first broken or unusable lines.
    pub errors: Vec<LineIssue>,
    /// The first steps the policy failed to price.
    pub policy_errors: Vec<LineIssue>,
    /// Per project, site and metric, sorted.
    pub charges: Vec<ChargeRow>,
    /// Per project, sorted.
    pub projects: Vec<ProjectRow>,
    /// Exact sum over all projects.
    pub total: Decimal,
    /// `total` rounded.
    pub total_rounded: Decimal,
    /// Decimal places of the rounded figures.
    pub precision: u32,
}
