//! When a project's credits run out at its recent pace: a forecast from
//! the ledger's [`Pace`], by the time usage happened (never by when the
//! points arrived). The API, the alerts and `/metrics` share it.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::ledger::Pace;
use crate::schedule::show_time as rfc3339;

/// One hour, in ns.
const HOUR: i64 = 3_600_000_000_000;
/// The default window, in hours.
pub const DEFAULT_WINDOW_HOURS: u32 = 24;
/// The longest window, in hours (90 days).
pub const MAX_WINDOW_HOURS: u32 = 2160;

/// The window's length in ns.
pub fn window_ns(hours: u32) -> i64 {
    i64::from(hours) * HOUR
}

/// A project's forecast (times in ns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forecast {
    /// The project.
    pub project: String,
    /// Exact credits used.
    pub used: Decimal,
    /// Credits granted, when known.
    pub granted: Option<Decimal>,
    /// The window, in hours.
    pub window_hours: u32,
    /// Credits per hour in the window's measured part (0 without one):
    /// its credits x 1 h / its length.
    pub rate_per_hour: Decimal,
    /// The latest billed measurement.
    pub latest_measurement: Option<i64>,
    /// When used reaches granted at this rate (the latest measurement +
    /// (granted - used) x the measured length / its credits, in whole
    /// seconds): `None` when granted is unknown or the rate is zero.
    pub runs_out_at: Option<i64>,
    /// Used reached granted.
    pub exhausted: bool,
    /// When the project ends (Perun), when known.
    pub ends_at: Option<i64>,
    /// Whether the credits last until the end: `None` when granted or the
    /// end is unknown.
    pub lasts_until_end: Option<bool>,
}

impl Forecast {
    /// The forecast of `pace` over a window of `window_hours`.
    pub fn of(pace: &Pace, window_hours: u32) -> Forecast {
        let project = &pace.project;
        let used = project.used();
        // Measured time in ns, and what it cost: the rate and the run-out
        // are taken from them directly (multiplying first), not through a
        // rounded rate.
        let measured = pace
            .latest
            .map_or(0, |latest| latest.saturating_sub(pace.measured_from).max(0));
        let per = |amount: Decimal, numerator: i64, denominator: Decimal| {
            amount
                .checked_mul(Decimal::from(numerator))
                .and_then(|product| product.checked_div(denominator))
                .unwrap_or_default()
        };
        let rate_per_hour = if measured > 0 {
            per(pace.credits, HOUR, Decimal::from(measured))
        } else {
            Decimal::ZERO
        };
        let runs_out_at = match (project.granted, pace.latest) {
            (Some(granted), Some(latest)) if rate_per_hour > Decimal::ZERO => {
                let ns = per(granted - used, measured, pace.credits).floor();
                let ns = i64::try_from(ns).unwrap_or(if ns.is_sign_negative() {
                    i64::MIN
                } else {
                    i64::MAX
                });
                // Whole seconds, as shown.
                Some(latest.saturating_add(ns).div_euclid(1_000_000_000) * 1_000_000_000)
            }
            _ => None,
        };
        let lasts_until_end = match (project.granted, project.ends_at) {
            (Some(_), Some(end)) => Some(runs_out_at.is_none_or(|out| out >= end)),
            _ => None,
        };
        Forecast {
            project: project.project.clone(),
            used,
            granted: project.granted,
            window_hours,
            rate_per_hour,
            latest_measurement: pace.latest,
            runs_out_at,
            exhausted: project.granted.is_some_and(|granted| used >= granted),
            ends_at: project.ends_at,
            lasts_until_end,
        }
    }

    /// Whether to warn: the credits run out within `warning` (ns) of the
    /// latest measurement, or before the project ends.
    pub fn warns(&self, warning: i64) -> bool {
        match (self.runs_out_at, self.latest_measurement) {
            (Some(out), Some(latest)) => {
                out <= latest.saturating_add(warning) || self.lasts_until_end == Some(false)
            }
            _ => false,
        }
    }

    /// As the API answers it: decimals as exact strings, times in RFC 3339.
    pub fn answer(&self) -> ForecastAnswer {
        ForecastAnswer {
            project: self.project.clone(),
            used: self.used.normalize().to_string(),
            granted: self.granted.map(|g| g.normalize().to_string()),
            window_hours: self.window_hours,
            rate_per_hour: self.rate_per_hour.normalize().to_string(),
            latest_measurement: self.latest_measurement.map(rfc3339),
            runs_out_at: self.runs_out_at.map(rfc3339),
            exhausted: self.exhausted,
            ends_at: self.ends_at.map(rfc3339),
            lasts_until_end: self.lasts_until_end,
        }
    }
}

/// The API's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForecastAnswer {
    /// The project.
    pub project: String,
    /// Exact credits used.
    pub used: String,
    /// Credits granted, when known.
    pub granted: Option<String>,
    /// The window, in hours.
    pub window_hours: u32,
    /// Credits per hour.
    pub rate_per_hour: String,
    /// The latest billed measurement.
    pub latest_measurement: Option<String>,
    /// When the credits run out at this rate.
    pub runs_out_at: Option<String>,
    /// Used reached granted.
    pub exhausted: bool,
    /// When the project ends.
    pub ends_at: Option<String>,
    /// Whether the credits last until then.
    pub lasts_until_end: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ProjectRecord;

    fn pace(used: &str, granted: Option<&str>, ends_at: Option<i64>, credits: &str) -> Pace {
        Pace {
            project: ProjectRecord {
                project: "p".into(),
                charged: used.parse().unwrap(),
                adopted: Decimal::ZERO,
                granted: granted.map(|g| g.parse().unwrap()),
                emails: vec![],
                ends_at,
            },
            latest: Some(10 * HOUR),
            measured_from: 6 * HOUR,
            credits: credits.parse().unwrap(),
        }
    }

    #[test]
    fn credits_run_out_at_the_pace_of_the_measured_window() {
        // 8 credits in 4 measured hours: 2 an hour; 100 left: 50 hours.
        let f = Forecast::of(&pace("100", Some("200"), None, "8"), 24);
        assert_eq!(f.rate_per_hour, Decimal::from(2));
        assert_eq!(f.runs_out_at, Some(60 * HOUR));
        assert!(!f.exhausted);
        assert_eq!(f.lasts_until_end, None);
        assert!(!f.warns(49 * HOUR));
        assert!(f.warns(50 * HOUR));
        // The project ends before: warned whatever the days.
        let f = Forecast::of(&pace("100", Some("200"), Some(61 * HOUR), "8"), 24);
        assert_eq!(f.lasts_until_end, Some(false));
        assert!(f.warns(0));
        let f = Forecast::of(&pace("100", Some("200"), Some(60 * HOUR), "8"), 24);
        assert_eq!(f.lasts_until_end, Some(true));
    }

    #[test]
    fn no_forecast_without_granted_or_pace() {
        let f = Forecast::of(&pace("100", None, Some(HOUR), "8"), 24);
        assert_eq!((f.runs_out_at, f.lasts_until_end), (None, None));
        let f = Forecast::of(&pace("100", Some("200"), Some(HOUR), "0"), 24);
        assert_eq!(f.runs_out_at, None);
        assert_eq!(f.lasts_until_end, Some(true));
        assert!(!f.warns(i64::MAX));
        // Exhausted: runs out in the past.
        let f = Forecast::of(&pace("300", Some("200"), None, "8"), 24);
        assert!(f.exhausted);
        assert_eq!(f.runs_out_at, Some(-40 * HOUR));
        let answer = f.answer();
        assert_eq!(answer.rate_per_hour, "2");
        assert_eq!(
            answer.latest_measurement.as_deref(),
            Some("1970-01-01T10:00:00Z")
        );
    }
}
