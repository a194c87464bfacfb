//! The de.NBI prices, natively: what the attribute generated bills, quotes,
//! describes and refuses.

use denbi_policy::Denbi;
use pricing_sdk::testing::step;
use pricing_sdk::{Decimal, Policy};

const CPU: &str = "project_vcpu_usage";
const RAM: &str = "project_mb_usage";

fn bill(config: &str, metric: &str, from: &str, to: &str) -> Decimal {
    Denbi::configure(config).unwrap().bill(&step(metric, from, to)).unwrap()
}

#[test]
fn five_vcpu_hours_cost_five_credits() {
    assert_eq!(bill("", CPU, "100", "105"), Decimal::from(5));
}

#[test]
fn ram_costs_point_three_per_gib_hour() {
    assert_eq!(bill("", RAM, "0", "10"), Decimal::from(3));
    assert_eq!(bill("", RAM, "0", "0.5").to_string(), "0.15");
}

#[test]
fn quote_for_16_cpus_and_32_gib_is_25_6() {
    let denbi = Denbi::default();
    let quote = denbi.cost_per_hour(CPU, 16.into(), 0).unwrap()
        + denbi.cost_per_hour(RAM, 32.into(), 0).unwrap();
    assert_eq!(quote, Decimal::new(256, 1));
}

#[test]
fn prices_are_configurable_and_mistakes_refused() {
    assert_eq!(bill("cpu_price = \"0.001\"", CPU, "0", "1").to_string(), "0.001");
    assert_eq!(bill("{\"ram_price\": \"1\"}", RAM, "0", "2"), Decimal::from(2));
    assert_eq!(bill("ram_price = \"1\"", CPU, "0", "2"), Decimal::from(2), "cpu keeps its default");
    let misspelt = Denbi::configure("cpu_prize = 2").err().unwrap().to_string();
    assert!(misspelt.contains("cpu_prize"), "{misspelt}");
    assert!(Denbi::configure("cpu_price = \"one\"").is_err());
    let other = Denbi::default().bill(&step("go_goroutines", "1", "2")).unwrap_err();
    assert_eq!(other.to_string(), "policy denbi does not price go_goroutines");
}

#[test]
fn it_describes_itself_from_its_crate_and_reads_no_tags() {
    let info = Denbi::default().describe();
    assert_eq!(info.name, "denbi");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.description, env!("CARGO_PKG_DESCRIPTION"));
    let metrics: Vec<_> = info
        .metrics
        .iter()
        .map(|m| (&*m.name, &*m.friendly_name, &*m.unit, &*m.description, &*m.amount_type))
        .collect();
    assert_eq!(
        metrics,
        [
            (CPU, "cpu", "vCPU-hours", "Amount of vCPUs.", "int"),
            (RAM, "ram", "GiB-hours", "Amount of RAM.", "decimal"),
        ]
    );
    assert_eq!(info.tags, Some(Vec::new()));
}
