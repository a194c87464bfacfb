//! Replays line protocol through the parser and the billing rules the
//! service uses, and summarises what it would bill: the engine behind
//! `os-credits policy run`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::{Book, Outcome, Pricer, UNKNOWN_METRIC, round};
use crate::ingest::{Measurement, Precision, parse_lines};

/// How many line errors a report lists (all are counted).
const LISTED_ERRORS: usize = 100;

/// Reason counted for lines that could not be parsed.
const INVALID_LINE: &str = "invalid line";

/// A replay in progress.
pub struct Replay<'p, P: Pricer> {
    pricer: &'p P,
    book: Book,
    lines: usize,
    billed: usize,
    ignored: BTreeMap<&'static str, usize>,
    errors: Vec<LineIssue>,
}

/// A line that billed nothing because it is broken or unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineIssue {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
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
    /// The first broken or unusable lines (up to 100).
    pub errors: Vec<LineIssue>,
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

impl<'p, P: Pricer> Replay<'p, P> {
    /// An empty replay pricing with `pricer`.
    pub fn new(pricer: &'p P) -> Self {
        Replay {
            pricer,
            book: Book::new(),
            lines: 0,
            billed: 0,
            ignored: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Applies every line of `body`, whose timestamps are in `precision`;
    /// points without a timestamp get `received` (ns). `progress` is called
    /// now and then with the number of bytes consumed.
    pub fn feed(
        &mut self,
        body: &[u8],
        precision: Precision,
        received: i64,
        mut progress: impl FnMut(usize),
    ) {
        let mut lines = parse_lines(body);
        while let Some((number, parsed)) = lines.next() {
            self.lines += 1;
            if self.lines.is_multiple_of(4096) {
                progress(lines.offset());
            }
            let point = match parsed {
                Ok(point) => point,
                Err(e) => {
                    self.ignore(INVALID_LINE, number, e.message);
                    continue;
                }
            };
            if !self.pricer.prices(&point.measurement) {
                self.count(UNKNOWN_METRIC);
                continue;
            }
            let measurement = match Measurement::from_point(&point, precision, received) {
                Ok(m) => m,
                Err(e) => {
                    self.ignore("unusable point", number, e.to_string());
                    continue;
                }
            };
            let outcome = self.book.apply(&measurement, self.pricer);
            match outcome.ignored_reason() {
                None => self.billed += 1,
                Some(reason) => {
                    self.count(reason);
                    if let Outcome::PolicyFailed(e) = outcome {
                        self.note(number, e.to_string());
                    }
                }
            }
        }
        progress(body.len());
    }

    fn count(&mut self, reason: &'static str) {
        *self.ignored.entry(reason).or_default() += 1;
    }

    fn ignore(&mut self, reason: &'static str, line: usize, error: String) {
        self.count(reason);
        self.note(line, error);
    }

    fn note(&mut self, line: usize, error: String) {
        if self.errors.len() < LISTED_ERRORS {
            self.errors.push(LineIssue { line, error });
        }
    }

    /// The book so far.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// What was billed, with totals rounded to `precision` places.
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
        Report {
            lines: self.lines,
            billed: self.billed,
            ignored: self.lines - self.billed,
            ignored_by_reason: self.ignored.clone(),
            errors: self.errors.clone(),
            charges,
            projects,
            total,
            total_rounded: round(total, precision),
            precision,
        }
    }
}
