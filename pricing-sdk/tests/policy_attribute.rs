//! `#[pricing_sdk::policy]` by behaviour: two policies that between them
//! use every form the attribute takes, billed, described, configured and
//! self-tested through the `Policy` trait it implements.

use pricing_sdk::testing::{check_examples, step};
use pricing_sdk::{Decimal, Error, Example, Policy, Usage};

/// Every option: a chosen name, version and description, declared tags, a
/// method of the step returning `Result`, a method of the increase
/// returning `Decimal`, descriptions from a doc comment and from `about`,
/// decimal quote amounts, examples, and `Default` from the block.
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Flavors {
    gpu_price: Decimal,
    large_factor: Decimal,
}

#[pricing_sdk::policy(name = "flavors", version = "2.1.0", about = "GPUs by flavor", tags = ["flavor"])]
impl Flavors {
    fn default() -> Self {
        Flavors {
            gpu_price: Decimal::from(10),
            large_factor: Decimal::from(2),
        }
    }

    /// GPUs in use.
    ///
    /// (Only the first paragraph becomes the description.)
    #[metric("project_gpu_usage", "gpu", unit = "GPU-hours")]
    fn gpu(&self, usage: &Usage) -> Result<Decimal, Error> {
        let factor = match usage.tag("flavor") {
            Some("large") => self.large_factor,
            Some(_) | None => Decimal::ONE,
        };
        if usage.hours() > Decimal::from(24) {
            return Err(Error::new("a GPU step longer than a day"));
        }
        Ok(usage.delta()? * self.gpu_price * factor)
    }

    #[metric(
        "project_disk_usage",
        "disk",
        unit = "TiB-hours",
        about = "Disk space.",
        decimal
    )]
    fn disk(&self, tib_hours: Decimal) -> Decimal {
        tib_hours / Decimal::from(4)
    }

    fn examples(&self) -> Vec<Example> {
        let large = step("project_gpu_usage", "0", "1").with_tag("flavor", "large");
        let expected = self.gpu_price * self.large_factor;
        vec![Example::new("a large GPU-hour", large, expected)]
    }
}

/// No options: name and version from the package, no tags read.
#[derive(serde::Deserialize, Default)]
struct Plain {}

#[pricing_sdk::policy]
impl Plain {
    /// vCPUs.
    #[metric("project_vcpu_usage", "cpu", unit = "vCPU-hours")]
    fn cpu(&self, vcpu_hours: Decimal) -> Decimal {
        vcpu_hours
    }
}

#[test]
fn each_metric_goes_to_its_method_and_others_are_refused() {
    let flavors = Flavors::configure("").unwrap();
    let gpu = step("project_gpu_usage", "1", "3");
    assert_eq!(flavors.bill(&gpu).unwrap(), Decimal::from(20));
    let large = gpu.clone().with_tag("flavor", "large");
    assert_eq!(flavors.bill(&large).unwrap(), Decimal::from(40));
    let disk = step("project_disk_usage", "0", "1");
    assert_eq!(flavors.bill(&disk).unwrap().to_string(), "0.25");
    let long = step("project_gpu_usage", "1", "3").at(0, 25 * pricing_sdk::HOUR_NS);
    let refused = flavors.bill(&long).unwrap_err();
    assert_eq!(refused.to_string(), "a GPU step longer than a day");
    let other = flavors
        .bill(&step("project_vcpu_usage", "1", "3"))
        .unwrap_err();
    assert_eq!(
        other.to_string(),
        "policy flavors does not price project_vcpu_usage"
    );
    let unreadable = flavors.bill(&step("project_disk_usage", "x", "1"));
    assert!(unreadable.is_err(), "an unreadable value fails the step");
}

#[test]
fn configure_reads_the_settings_over_the_blocks_default() {
    let flavors = Flavors::configure("gpu_price = \"3\"").unwrap();
    let gpu = step("project_gpu_usage", "0", "1");
    assert_eq!(flavors.bill(&gpu).unwrap(), Decimal::from(3));
    assert_eq!(flavors.large_factor, Decimal::from(2));
    let error = Flavors::configure("gpu_prise = \"3\"").err().unwrap();
    assert!(error.to_string().contains("gpu_prise"), "{error}");
    assert!(Plain::configure("").is_ok());
}

#[test]
fn describe_says_what_the_attribute_was_given_or_the_package() {
    let info = Flavors::default().describe();
    assert_eq!(
        (&*info.name, &*info.version, &*info.description),
        ("flavors", "2.1.0", "GPUs by flavor")
    );
    let metrics: Vec<_> = info
        .metrics
        .iter()
        .map(|m| {
            let text = [&m.name, &m.friendly_name, &m.unit, &m.description];
            let text = text.map(|t| t.to_string());
            (text, m.amount_type.to_string())
        })
        .collect();
    let expected = |name: &str, friendly: &str, unit: &str, about: &str, amounts: &str| {
        let text = [name, friendly, unit, about].map(str::to_owned);
        (text, amounts.to_owned())
    };
    assert_eq!(
        metrics,
        [
            expected(
                "project_gpu_usage",
                "gpu",
                "GPU-hours",
                "GPUs in use.",
                "int"
            ),
            expected(
                "project_disk_usage",
                "disk",
                "TiB-hours",
                "Disk space.",
                "decimal"
            ),
        ]
    );
    assert_eq!(info.tags, Some(vec!["flavor".to_owned()]));

    let plain = Plain {}.describe();
    assert_eq!(plain.name, "pricing-sdk", "no -policy suffix to strip here");
    assert_eq!(plain.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(plain.description, env!("CARGO_PKG_DESCRIPTION"));
    let none: Vec<String> = Vec::new();
    assert_eq!(
        plain.tags,
        Some(none),
        "a policy of increases reads no tags"
    );
}

#[test]
fn examples_come_from_the_block_and_hold() {
    assert_eq!(check_examples::<Flavors>(""), Ok(1));
    assert_eq!(check_examples::<Flavors>("large_factor = \"3\""), Ok(1));
    assert_eq!(check_examples::<Plain>(""), Ok(0));
}

#[test]
fn names_lose_the_policy_suffix() {
    use pricing_sdk::__macro::{policy_about, policy_name};
    assert_eq!(policy_name("denbi-policy"), "denbi");
    assert_eq!(policy_name("my_site_policy"), "my_site");
    assert_eq!(policy_name("-policy"), "-policy");
    assert_eq!(policy_name("flat"), "flat");
    assert_eq!(policy_about("  ", "flat-policy"), "flat");
    assert_eq!(policy_about("Flat prices", "flat-policy"), "Flat prices");
}
