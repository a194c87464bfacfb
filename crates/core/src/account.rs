//! The values billing and the ledger share: a key (project, site, metric),
//! its last billed state and what it has been charged. A leaf: it names
//! nothing of the crate, so the ledger can store these without naming
//! billing, the layer above it.

use std::sync::Arc;

use rust_decimal::Decimal;

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

/// The last billed sample of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Unix time in ns.
    pub timestamp: i64,
    /// The value, exact.
    pub value: Decimal,
    /// The value's text as it arrived (what the policy sees).
    pub text: Box<str>,
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
    /// A step of this key waits to be priced; only ever set while billing
    /// decides and prices a batch, never stored.
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
