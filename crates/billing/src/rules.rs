//! The billing rules for one key (project, site, metric): whether a sample
//! is skipped, and why, or is a rise to price.

use rust_decimal::Decimal;

use os_credits_ingest::Sample;

pub use os_credits_core::account::State;

/// The state a sample leaves.
pub fn state_of(sample: &Sample<'_>) -> State {
    State {
        timestamp: sample.timestamp,
        value: sample.value,
        text: sample.text.as_ref().into(),
    }
}

/// Why a sample charges nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The first sample of its key (or the first after an adopted floor):
    /// remembered, nothing charged.
    Baseline,
    /// Not newer than the state: ignored.
    Stale,
    /// The same value as the state: nothing changes (the state keeps its
    /// timestamp, so the next step spans from the last change).
    Unchanged,
    /// A lower value (the exporter's start date changed): remembered as
    /// the new start, nothing charged.
    Reset,
}

impl Skip {
    /// The reason as `/stats` and reports count it.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Baseline => "baseline",
            Skip::Stale => "not newer",
            Skip::Unchanged => "unchanged",
            Skip::Reset => "counter reset",
        }
    }
}

/// Applies the rules to a sample at `timestamp` with `value`: `Some` skip,
/// or `None` for a rise, the step from the state to this sample to price.
pub fn skip(state: Option<&State>, timestamp: i64, value: Decimal) -> Option<Skip> {
    match state {
        None => Some(Skip::Baseline),
        Some(state) if timestamp <= state.timestamp => Some(Skip::Stale),
        Some(state) if value == state.value => Some(Skip::Unchanged),
        Some(state) if value < state.value => Some(Skip::Reset),
        Some(_) => None,
    }
}
