//! # The tariff policy: the template to copy for your own site
//!
//! It shows what the plain de.NBI policy cannot express:
//! - **prices that change at an effective date**: `periods`, each with the
//!   prices in force from its `from` instant (UTC) on. A step that spans a
//!   change is split pro rata by time, so every hour is billed at the price
//!   in force during that hour;
//! - **weights by size**: `weights.<metric>`, tiers on the average amount in
//!   use during the step (for example 48 vCPUs = 48 vCPU-hours per hour). The
//!   highest tier whose `from_size` the size reaches sets the weight.
//!
//! ```toml
//! [[periods]]
//! from = "1970-01-01T00:00:00Z"
//! prices = { cpu = "1", ram = "0.3" }
//!
//! [[periods]]
//! from = "2024-05-02T01:00:00Z"
//! prices = { cpu = "1.25", ram = "0.35" }
//!
//! [[weights.cpu]]
//! from_size = "64"
//! weight = "0.9"
//! ```
//!
//! Without configuration it charges the de.NBI prices (1 per vCPU-hour,
//! 0.3 per GiB-hour) with weight 1, so it is a drop-in starting point.
//! `examples/tariff.toml` holds a fuller configuration.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pricing_sdk::{Decimal, Error, Example, MetricInfo, Policy, PolicyInfo, Timestamp, Usage};
use pricing_sdk::{export_policy, parse_config, testing::step};
use serde::Deserialize;

/// The metrics this policy prices.
const METRICS: &[MetricInfo] = &[
    MetricInfo::decimal(
        "project_vcpu_usage",
        "cpu",
        "vCPU-hours",
        "Amount of vCPUs.",
    ),
    MetricInfo::decimal(
        "project_mb_usage",
        "ram",
        "GiB-hours",
        "Amount of RAM in GiB.",
    ),
];

/// Site parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// Price periods, any order; sorted by `from` when configured.
    periods: Vec<Period>,
    /// Size tiers per friendly metric name; a metric without tiers has weight 1.
    #[serde(default)]
    weights: BTreeMap<String, Vec<Tier>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Period {
    from: DateTime<Utc>,
    /// Credits per unit-hour, by friendly metric name.
    prices: BTreeMap<String, Decimal>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Tier {
    from_size: Decimal,
    weight: Decimal,
}

impl Default for Tariff {
    fn default() -> Self {
        let prices = [("cpu", Decimal::ONE), ("ram", Decimal::new(3, 1))];
        Tariff {
            periods: vec![Period {
                from: DateTime::UNIX_EPOCH,
                prices: prices.into_iter().map(|(m, p)| (m.to_owned(), p)).collect(),
            }],
            weights: BTreeMap::new(),
        }
    }
}

fn friendly_name(metric: &str) -> Result<&'static str, Error> {
    METRICS
        .iter()
        .find(|m| m.name == metric)
        .map(|m| m.friendly_name.as_ref())
        .ok_or_else(|| Error::new(format!("tariff policy does not price {metric}")))
}

fn nanos(at: &DateTime<Utc>) -> Timestamp {
    at.timestamp_nanos_opt().unwrap_or(i64::MIN)
}

impl Tariff {
    /// The price of `metric` (friendly name) in `period`.
    fn price(period: &Period, metric: &str) -> Result<Decimal, Error> {
        period.prices.get(metric).copied().ok_or_else(|| {
            Error::new(format!(
                "period from {} has no price for {metric}",
                period.from
            ))
        })
    }

    /// The weight for an average `size` in use.
    fn weight(&self, metric: &str, size: Decimal) -> Decimal {
        let tiers = self
            .weights
            .get(metric)
            .map(Vec::as_slice)
            .unwrap_or_default();
        tiers
            .iter()
            .rfind(|t| size >= t.from_size)
            .map_or(Decimal::ONE, |t| t.weight)
    }

    /// Index of the period in force at `at`.
    fn period_at(&self, at: Timestamp) -> Result<usize, Error> {
        self.periods
            .iter()
            .rposition(|p| nanos(&p.from) <= at)
            .ok_or_else(|| Error::new(format!("no price period covers {at} ns")))
    }
}

impl Policy for Tariff {
    fn configure(config: &str) -> Result<Self, Error> {
        let mut tariff: Tariff = parse_config(config)?;
        if tariff.periods.is_empty() {
            return Err(Error::new("at least one entry in `periods` is required"));
        }
        tariff.periods.sort_by_key(|p| p.from);
        for period in &tariff.periods {
            for (metric, price) in &period.prices {
                if !METRICS.iter().any(|m| m.friendly_name == metric.as_str()) {
                    return Err(Error::new(format!(
                        "period from {}: unknown metric {metric:?} (known: cpu, ram)",
                        period.from
                    )));
                }
                if price.is_sign_negative() {
                    return Err(Error::new(format!(
                        "period from {}: negative price for {metric}",
                        period.from
                    )));
                }
            }
        }
        for (metric, tiers) in &mut tariff.weights {
            tiers.sort_by_key(|t| t.from_size);
            if tiers.iter().any(|t| t.weight.is_sign_negative()) {
                return Err(Error::new(format!("weights.{metric}: negative weight")));
            }
        }
        Ok(tariff)
    }

    fn describe(&self) -> PolicyInfo {
        PolicyInfo::new(
            "tariff",
            env!("CARGO_PKG_VERSION"),
            "dated prices per unit-hour, weighted by size",
        )
        .metrics(METRICS)
        .reads_tags(&[])
    }

    fn bill(&self, usage: &Usage) -> Result<Decimal, Error> {
        let metric = friendly_name(&usage.metric)?;
        let delta = usage.delta()?;
        let (start, end) = (usage.previous.timestamp, usage.current.timestamp);
        let span = Decimal::from(end - start);
        let weight = self.weight(metric, delta / usage.hours());
        let first = self.period_at(start)?;
        let last = self.period_at(end - 1)?;
        if first == last {
            // The common case, and exact: no split.
            return Ok(delta * Self::price(&self.periods[first], metric)? * weight);
        }
        let mut charge = Decimal::ZERO;
        for index in first..=last {
            let period = &self.periods[index];
            let from = nanos(&period.from).max(start);
            let to = self
                .periods
                .get(index + 1)
                .map_or(end, |next| nanos(&next.from).min(end));
            let share = Decimal::from(to - from) / span;
            charge += delta * share * Self::price(period, metric)? * weight;
        }
        Ok(charge)
    }

    fn cost_per_hour(
        &self,
        metric: &str,
        amount: Decimal,
        at: Timestamp,
    ) -> Result<Decimal, Error> {
        let metric = friendly_name(metric)?;
        let period = &self.periods[self.period_at(at)?];
        Ok(amount * Self::price(period, metric)? * self.weight(metric, amount))
    }

    fn examples(&self) -> Vec<Example> {
        // Two vCPUs for one hour at the start of the first period.
        let start = nanos(&self.periods[0].from);
        let usage = step("project_vcpu_usage", "0", "2").at(start, start + pricing_sdk::HOUR_NS);
        let expected = self.cost_per_hour("project_vcpu_usage", Decimal::from(2), start);
        match expected {
            Ok(expected) => vec![Example::new("two vCPUs for an hour", usage, expected)],
            Err(_) => Vec::new(),
        }
    }
}

export_policy!(Tariff);

#[cfg(test)]
mod tests {
    use super::*;
    use pricing_sdk::HOUR_NS;

    const CONFIG: &str = r#"
        [[periods]]
        from = "2024-05-02T01:00:00Z"
        prices = { cpu = "2", ram = "0.5" }

        [[periods]]
        from = "2020-01-01T00:00:00Z"
        prices = { cpu = "1", ram = "0.3" }

        [[weights.cpu]]
        from_size = "0"
        weight = "1"

        [[weights.cpu]]
        from_size = "64"
        weight = "0.5"
    "#;

    fn at(text: &str) -> Timestamp {
        nanos(&text.parse::<DateTime<Utc>>().unwrap())
    }

    #[test]
    fn default_equals_denbi_prices() {
        let tariff = Tariff::configure("").unwrap();
        assert_eq!(
            tariff
                .bill(&step("project_vcpu_usage", "10", "15"))
                .unwrap(),
            Decimal::from(5)
        );
        assert_eq!(
            tariff
                .bill(&step("project_mb_usage", "0", "10"))
                .unwrap()
                .to_string(),
            "3.0"
        );
    }

    #[test]
    fn a_step_before_the_change_pays_the_old_price_after_it_the_new() {
        let tariff = Tariff::configure(CONFIG).unwrap();
        let noon = at("2024-05-01T12:00:00Z");
        let before = step("project_vcpu_usage", "0", "4").at(noon, noon + HOUR_NS);
        assert_eq!(tariff.bill(&before).unwrap(), Decimal::from(4));
        let later = at("2024-05-02T02:00:00Z");
        let after = step("project_vcpu_usage", "0", "4").at(later, later + HOUR_NS);
        assert_eq!(tariff.bill(&after).unwrap(), Decimal::from(8));
    }

    #[test]
    fn a_step_spanning_the_change_is_split_by_time() {
        let tariff = Tariff::configure(CONFIG).unwrap();
        let start = at("2024-05-02T00:30:00Z");
        // 4 vCPU-hours over one hour, half before (price 1), half after (price 2).
        let usage = step("project_vcpu_usage", "0", "4").at(start, start + HOUR_NS);
        assert_eq!(tariff.bill(&usage).unwrap(), Decimal::from(6));
    }

    #[test]
    fn large_projects_get_the_weight_of_their_tier() {
        let tariff = Tariff::configure(CONFIG).unwrap();
        let noon = at("2024-05-01T12:00:00Z");
        // 126 vCPU-hours in 2 hours: 63 vCPUs on average, below the 64 tier
        let big = step("project_vcpu_usage", "0", "126").at(noon, noon + 2 * HOUR_NS);
        assert_eq!(tariff.bill(&big).unwrap(), Decimal::from(126));
        // 128 vCPU-hours in 1 hour: 128 vCPUs, weight 0.5
        let bigger = step("project_vcpu_usage", "0", "128").at(noon, noon + HOUR_NS);
        assert_eq!(tariff.bill(&bigger).unwrap(), Decimal::from(64));
        let quote = tariff.cost_per_hour(
            "project_vcpu_usage",
            Decimal::from(64),
            at("2024-06-01T00:00:00Z"),
        );
        assert_eq!(quote.unwrap(), Decimal::from(64));
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        let err = |config: &str| {
            Tariff::configure(config)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("periods = []").contains("at least one"));
        assert!(
            err("[[periods]]\nfrom = \"2020-01-01T00:00:00Z\"\nprices = { gpu = \"1\" }")
                .contains("unknown metric")
        );
        assert!(err("[[periods]]\nfrom = \"yesterday\"\nprices = {}").contains("invalid TOML"));
        let early = step("project_vcpu_usage", "0", "1").at(0, HOUR_NS);
        assert!(Tariff::configure(CONFIG).unwrap().bill(&early).is_err());
    }

    #[test]
    fn examples_hold() {
        assert_eq!(pricing_sdk::testing::check_examples::<Tariff>(""), Ok(1));
        assert_eq!(
            pricing_sdk::testing::check_examples::<Tariff>(CONFIG),
            Ok(1)
        );
    }
}
