//! The de.NBI pricing policy: `project_vcpu_usage` at 1 credit per
//! vCPU-hour, `project_mb_usage` at 0.3 credits per GiB-hour.
//!
//! Configuration (all optional): `cpu_price`, `ram_price` (credits per unit
//! hour) and `ram_unit` (`"GiB"`, or `"MiB"` for the 2019 exporter, which
//! divides the RAM price by 1024).

use pricing_sdk::testing::step;
use pricing_sdk::{Decimal, Error, Example, MetricInfo, Policy, PolicyInfo, Usage};
use pricing_sdk::{export_policy, parse_config};

const CPU: &str = "project_vcpu_usage";
const RAM: &str = "project_mb_usage";

const METRICS: &[MetricInfo] = &[
    MetricInfo::new(CPU, "cpu", "vCPU-hours", "Amount of vCPUs."),
    MetricInfo::decimal(RAM, "ram", "GiB-hours", "Amount of RAM."),
];

/// Prices in credits per unit-hour; `ram_unit = "MiB"` divides the RAM price by 1024.
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Denbi {
    cpu_price: Decimal,
    ram_price: Decimal,
    ram_unit: RamUnit,
}

#[derive(serde::Deserialize, PartialEq)]
enum RamUnit {
    GiB,
    MiB,
}

impl Default for Denbi {
    fn default() -> Self {
        let (cpu_price, ram_price) = (Decimal::ONE, Decimal::new(3, 1));
        let ram_unit = RamUnit::GiB;
        Denbi {
            cpu_price,
            ram_price,
            ram_unit,
        }
    }
}

impl Policy for Denbi {
    fn configure(config: &str) -> Result<Self, Error> {
        parse_config(config)
    }

    fn describe(&self) -> PolicyInfo {
        let about = "de.NBI: credits per vCPU-hour and RAM-hour";
        let mut info = PolicyInfo::new("denbi", env!("CARGO_PKG_VERSION"), about).metrics(METRICS);
        if self.ram_unit == RamUnit::MiB {
            info.metrics[1].unit = "MiB-hours".into();
        }
        info.reads_tags(&[])
    }

    fn bill(&self, usage: &Usage) -> Result<Decimal, Error> {
        let price = match usage.metric.as_str() {
            CPU => self.cpu_price,
            RAM if self.ram_unit == RamUnit::MiB => self.ram_price / Decimal::from(1024),
            RAM => self.ram_price,
            other => return Err(Error::new(format!("de.NBI policy does not price {other}"))),
        };
        Ok(usage.delta()? * price)
    }

    fn examples(&self) -> Vec<Example> {
        let five_hours = self.cpu_price * Decimal::from(5);
        vec![Example::new(
            "+5 vCPU-hours",
            step(CPU, "10", "15"),
            five_hours,
        )]
    }
}

export_policy!(Denbi);

#[cfg(test)]
mod tests {
    use super::*;
    use pricing_sdk::testing::check_examples;

    fn bill(config: &str, metric: &str, from: &str, to: &str) -> Decimal {
        Denbi::configure(config)
            .unwrap()
            .bill(&step(metric, from, to))
            .unwrap()
    }

    #[test]
    fn five_vcpu_hours_cost_five_credits() {
        assert_eq!(bill("", CPU, "100", "105"), Decimal::from(5));
    }

    #[test]
    fn ram_costs_point_three_per_gib_hour_or_per_1024_mib_hours() {
        assert_eq!(bill("", RAM, "0", "10").to_string(), "3.0");
        assert_eq!(
            bill("ram_unit = \"MiB\"", RAM, "0", "1024"),
            Decimal::new(3, 1)
        );
    }

    #[test]
    fn quote_for_16_cpus_and_32_gib_is_25_6() {
        let denbi = Denbi::default();
        let quote = denbi.cost_per_hour(CPU, 16.into(), 0).unwrap()
            + denbi.cost_per_hour(RAM, 32.into(), 0).unwrap();
        assert_eq!(quote, Decimal::new(256, 1));
    }

    #[test]
    fn prices_are_configurable_and_unknown_keys_refused() {
        assert_eq!(
            bill("cpu_price = \"0.001\"", CPU, "0", "1").to_string(),
            "0.001"
        );
        assert!(Denbi::configure("cpu_prize = 2").is_err());
        assert!(Denbi::configure("ram_unit = \"TiB\"").is_err());
        assert!(
            Denbi::default()
                .bill(&step("go_goroutines", "1", "2"))
                .is_err()
        );
    }

    #[test]
    fn examples_hold_for_default_and_custom_prices() {
        assert_eq!(check_examples::<Denbi>(""), Ok(1));
        assert_eq!(check_examples::<Denbi>("cpu_price = \"2.5\""), Ok(1));
    }
}
