//! The de.NBI pricing policy: credits per vCPU-hour and per GiB-hour of RAM.
use pricing_sdk::Decimal;

/// Credits per vCPU-hour (`cpu_price`, default 1) and per GiB-hour of RAM (`ram_price`, 0.3).
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Denbi {
    cpu_price: Decimal,
    ram_price: Decimal,
}

#[pricing_sdk::policy]
impl Denbi {
    fn default() -> Self {
        Denbi { cpu_price: Decimal::ONE, ram_price: Decimal::new(3, 1) }
    }
    #[metric("project_vcpu_usage", "cpu", unit = "vCPU-hours", about = "Amount of vCPUs.")]
    fn cpu(&self, vcpu_hours: Decimal) -> Decimal {
        vcpu_hours * self.cpu_price
    }
    #[metric("project_mb_usage", "ram", unit = "GiB-hours", about = "Amount of RAM.", decimal)]
    fn ram(&self, gib_hours: Decimal) -> Decimal {
        gib_hours * self.ram_price
    }
}
