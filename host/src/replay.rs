//! Line protocol through the parser and the billing rules: the one code
//! path behind `os-credits policy run` and the service's `/write`.
//!
//! A [`Replay`] owns a [`Book`] and counts what it saw. [`Replay::feed`]
//! applies a body of line protocol in order and tells an observer about
//! every outcome (the service turns them into ledger writes); it returns a
//! [`FeedReport`] of that body alone.

use std::collections::{BTreeMap, HashSet};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::{Book, Decided, Outcome, Pricer, UNKNOWN_METRIC, round};
use crate::ingest::{Measurement, Point, Precision, parse_lines};
use crate::policy::MAX_BATCH;

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
}

/// A replay in progress: the book and what was seen so far.
#[derive(Default)]
pub struct Replay {
    book: Book,
    whitelist: Option<HashSet<String>>,
    seen: FeedReport,
}

impl Replay {
    /// An empty replay.
    pub fn new() -> Self {
        Self::default()
    }

    /// A replay that continues from `book` (restored from the ledger).
    pub fn with_book(book: Book) -> Self {
        Replay {
            book,
            ..Self::default()
        }
    }

    /// Bills only these projects; others are counted as not whitelisted.
    pub fn whitelist(mut self, projects: Option<HashSet<String>>) -> Self {
        self.whitelist = projects;
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

    /// Replaces the book (after the ledger refused a batch, from its truth).
    pub fn reset_book(&mut self, book: Book) {
        self.book = book;
    }

    /// Everything fed so far.
    pub fn seen(&self) -> &FeedReport {
        &self.seen
    }

    /// Applies every line of `body` in order, pricing with `pricer`.
    /// Timestamps are in `precision`; points without one get `received`
    /// (ns). `progress` is called now and then with the bytes consumed;
    /// `observe` with every measurement's outcome and the book right after
    /// it was settled. Steps are priced in batches of up to [`MAX_BATCH`]:
    /// a charged step is observed when its batch is priced, after the
    /// outcomes of later lines that needed no pricing; charges are
    /// observed in line order.
    pub fn feed(
        &mut self,
        pricer: &impl Pricer,
        body: &[u8],
        precision: Precision,
        received: i64,
        mut progress: impl FnMut(usize),
        mut observe: impl FnMut(&Measurement<'_>, &Outcome, &Book),
    ) -> FeedReport {
        let mut report = FeedReport::default();
        let mut waiting = Waiting {
            points: Vec::new(),
            precision,
            received,
        };
        let mut lines = parse_lines(body);
        while let Some((number, parsed)) = lines.next() {
            report.lines += 1;
            if report.lines.is_multiple_of(4096) {
                progress(lines.offset());
            }
            let point = match parsed {
                Ok(point) => point,
                Err(e) => {
                    report.reject(INVALID_LINE, number, e.to_string());
                    continue;
                }
            };
            let location = point.tag(crate::ingest::LOCATION_TAG).unwrap_or_default();
            if !pricer.prices(location, &point.measurement) {
                report.ignore(UNKNOWN_METRIC);
                continue;
            }
            let measurement = match Measurement::from_point(&point, precision, received) {
                Ok(m) => m,
                Err(e) => {
                    report.reject(UNUSABLE_POINT, number, e.to_string());
                    continue;
                }
            };
            if let Some(whitelist) = &self.whitelist
                && !whitelist.contains(measurement.project)
            {
                report.ignore(NOT_WHITELISTED);
                continue;
            }
            let mut decided = self.book.decide(&measurement, pricer);
            if decided == Decided::Wait {
                self.price(&mut waiting, pricer, &mut report, &mut observe);
                decided = self.book.decide(&measurement, pricer);
            }
            match decided {
                Decided::Done(outcome) => settled(
                    &mut report,
                    &self.book,
                    number,
                    &measurement,
                    &outcome,
                    &mut observe,
                ),
                Decided::Price | Decided::Wait => waiting.points.push((number, point)),
            }
            if waiting.points.len() == MAX_BATCH {
                self.price(&mut waiting, pricer, &mut report, &mut observe);
            }
        }
        self.price(&mut waiting, pricer, &mut report, &mut observe);
        progress(body.len());
        self.seen.add(&report);
        report
    }

    /// Prices the waiting steps as one batch and settles them in order.
    fn price(
        &mut self,
        waiting: &mut Waiting<'_>,
        pricer: &impl Pricer,
        report: &mut FeedReport,
        observe: &mut impl FnMut(&Measurement<'_>, &Outcome, &Book),
    ) {
        if waiting.points.is_empty() {
            return;
        }
        // The same points gave these measurements before: cannot fail now.
        let (lines, measurements): (Vec<usize>, Vec<Measurement<'_>>) = waiting
            .points
            .iter()
            .filter_map(|(line, point)| {
                let m = Measurement::from_point(point, waiting.precision, waiting.received);
                Some((*line, m.ok()?))
            })
            .unzip();
        let outcomes = self.book.price(&measurements, pricer);
        for ((line, measurement), outcome) in lines.into_iter().zip(&measurements).zip(outcomes) {
            settled(report, &self.book, line, measurement, &outcome, observe);
        }
        drop(measurements);
        waiting.points.clear();
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
                rounded: round(credits, precision),
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
            total_rounded: round(total, precision),
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

/// Points whose steps wait to be priced, with their line numbers (the
/// measurements borrow from them, so the points are kept).
struct Waiting<'b> {
    points: Vec<(usize, Point<'b>)>,
    precision: Precision,
    received: i64,
}

/// Counts a settled outcome, warns about a step the policy could not
/// price, and tells the observer.
fn settled(
    report: &mut FeedReport,
    book: &Book,
    line: usize,
    measurement: &Measurement<'_>,
    outcome: &Outcome,
    observe: &mut impl FnMut(&Measurement<'_>, &Outcome, &Book),
) {
    match outcome.ignored_reason() {
        None => report.billed += 1,
        Some(reason) => report.ignore(reason),
    }
    if let Outcome::PolicyFailed(e) = outcome {
        tracing::warn!(
            project = measurement.project,
            site = measurement.location_id,
            metric = measurement.metric,
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
    observe(measurement, outcome, book);
}
