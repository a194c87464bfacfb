//! # pricing-sdk: write an os-credits pricing policy in plain Rust
//!
//! A pricing policy turns a step of a cumulative usage counter (for example
//! vCPU-hours of one project at one site) into credits. The os-credits host
//! loads policies as sandboxed WebAssembly components, so a site changes its
//! prices by dropping a new module into the policy folder, without rebuilding
//! or restarting the service.
//!
//! This crate is all a policy author imports:
//! - the attribute [`policy`]: an `impl` block whose methods price one
//!   metric each becomes a complete policy and its component export;
//! - the types: [`Usage`], [`Measurement`], [`PolicyInfo`], [`MetricInfo`],
//!   [`Example`], [`Error`], and [`Decimal`] (re-exported from `rust_decimal`);
//! - the [`Policy`] trait and the [`export_policy!`] macro that turns an
//!   implementation into a component exporting the `os-credits:pricing` world
//!   (`wit/pricing.wit`), for what the attribute does not say;
//! - [`parse_config`] for site parameters (TOML or JSON), [`parse_decimal`]
//!   and [`decimal_text`] (exact, and fast for plain decimals);
//! - [`testing`]: helpers to unit-test a policy natively with `cargo test`.
//!
//! Money never crosses the boundary as a float: decimals travel as text.
//! The host sends steps in batches; the generated glue unpacks them and
//! calls [`Policy::bill`] once per step.
//!
//! With the attribute (`Deserialize` and `Default` make `configure`):
//!
//! ```
//! use pricing_sdk::{Decimal, Policy};
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Flat {}
//!
//! #[pricing_sdk::policy(name = "flat", about = "one credit per vCPU-hour")]
//! impl Flat {
//!     /// Amount of vCPUs.
//!     #[metric("project_vcpu_usage", "cpu", unit = "vCPU-hours")]
//!     fn cpu(&self, vcpu_hours: Decimal) -> Decimal {
//!         vcpu_hours
//!     }
//! }
//!
//! let step = pricing_sdk::testing::step("project_vcpu_usage", "10", "15");
//! assert_eq!(Flat {}.bill(&step).unwrap(), Decimal::from(5));
//! assert_eq!(Flat {}.describe().metrics[0].friendly_name, "cpu");
//! ```
//!
//! The same with the trait:
//!
//! ```
//! use pricing_sdk::{Decimal, Error, MetricInfo, Policy, PolicyInfo, Usage};
//!
//! struct Flat;
//!
//! impl Policy for Flat {
//!     fn configure(_config: &str) -> Result<Self, Error> {
//!         Ok(Flat)
//!     }
//!     fn describe(&self) -> PolicyInfo {
//!         PolicyInfo::new("flat", "1.0.0", "one credit per vCPU-hour")
//!             .metric(MetricInfo::new("project_vcpu_usage", "cpu", "vCPU-hours", "vCPUs in use"))
//!     }
//!     fn bill(&self, usage: &Usage) -> Result<Decimal, Error> {
//!         usage.delta()
//!     }
//! }
//!
//! pricing_sdk::export_policy!(Flat);
//!
//! let step = pricing_sdk::testing::step("project_vcpu_usage", "10", "15");
//! assert_eq!(Flat.bill(&step).unwrap(), Decimal::from(5));
//! // A quote for 16 vCPUs over one hour, for free from `bill`:
//! assert_eq!(Flat.cost_per_hour("project_vcpu_usage", 16.into(), 0).unwrap(), Decimal::from(16));
//! ```

#![warn(missing_docs)]

mod types;

pub mod testing;

pub use pricing_sdk_macros::policy;
pub use rust_decimal::Decimal;
pub use types::{
    Error, Example, HOUR_NS, Measurement, MetricInfo, PolicyInfo, Timestamp, Usage, decimal_text,
    parse_config, parse_decimal, push_decimal,
};

/// The version of the WIT contract (`os-credits:pricing@…`) this SDK builds.
pub const CONTRACT_VERSION: &str = "2.0.0";

/// A pricing policy: implement this, then call [`export_policy!`] once.
///
/// The host creates a policy by [`Policy::configure`] with the site's
/// configuration text (empty for the defaults), then calls the other methods
/// any number of times. A policy must be a pure function of its input.
pub trait Policy: Sized + 'static {
    /// Builds the policy from the site's configuration (TOML or JSON text,
    /// empty for the defaults). Reject anything invalid here, with a message
    /// that tells the operator what to fix: the host refuses to activate a
    /// policy whose configuration fails.
    fn configure(config: &str) -> Result<Self, Error>;

    /// Name, version and the metrics this policy prices.
    fn describe(&self) -> PolicyInfo;

    /// The exact credits for one step of usage. The host guarantees that
    /// `usage.current` is newer than `usage.previous` and its value higher.
    /// The result must not be negative.
    fn bill(&self, usage: &Usage) -> Result<Decimal, Error>;

    /// The credits one hour of `amount` units of `metric` costs at time `at`,
    /// for price quotes (`/api/costs_per_hour`). By default, what
    /// [`Policy::bill`] charges for a step of `amount` unit-hours over the
    /// hour before `at` (project and site empty, no tags): right for any
    /// price per unit-hour. Override it when a quote differs from a bill.
    fn cost_per_hour(
        &self,
        metric: &str,
        amount: Decimal,
        at: Timestamp,
    ) -> Result<Decimal, Error> {
        let hour = Usage {
            metric: metric.to_owned(),
            project: String::new(),
            location_id: String::new(),
            tags: Vec::new(),
            previous: Measurement::new(at.saturating_sub(HOUR_NS), "0"),
            current: Measurement::new(at, decimal_text(amount)),
        };
        self.bill(&hour)
    }

    /// Example usages with the charges they must give. The host bills each
    /// of them before it activates the policy and refuses it on a mismatch.
    fn examples(&self) -> Vec<Example> {
        Vec::new()
    }
}

/// Exports a [`Policy`] implementation as the `os-credits:pricing` component.
///
/// On `wasm32` targets this generates the component exports; on any other
/// target it expands to nothing, so the same crate unit-tests natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct OsCreditsPolicyExports;

            impl $crate::__private::Guest for OsCreditsPolicyExports {
                fn describe() -> $crate::__private::wit::PolicyInfo {
                    $crate::__private::describe::<$policy>()
                }
                fn configure(config: ::std::string::String) -> Result<(), ::std::string::String> {
                    $crate::__private::configure::<$policy>(&config)
                }
                fn bill(batch: $crate::__private::wit::Batch) -> $crate::__private::wit::Charges {
                    $crate::__private::bill::<$policy>(batch)
                }
                fn cost_per_hour(
                    metric: ::std::string::String,
                    amount: ::std::string::String,
                    at_ns: i64,
                ) -> Result<::std::string::String, ::std::string::String> {
                    $crate::__private::cost_per_hour::<$policy>(&metric, &amount, at_ns)
                }
                fn examples() -> ::std::vec::Vec<$crate::__private::wit::Example> {
                    $crate::__private::examples::<$policy>()
                }
            }

            $crate::__private::export!(OsCreditsPolicyExports with_types_in $crate::__private::bindings);
        };
    };
}

/// Helpers of the code [`policy`] generates; not a public API.
#[doc(hidden)]
pub mod __macro {
    /// The policy's name from its package name: `denbi-policy` -> `denbi`.
    pub fn policy_name(package: &'static str) -> &'static str {
        package
            .strip_suffix("-policy")
            .or_else(|| package.strip_suffix("_policy"))
            .filter(|name| !name.is_empty())
            .unwrap_or(package)
    }

    /// The policy's description: the package's, or its name without one.
    pub fn policy_about(description: &'static str, package: &'static str) -> &'static str {
        match description.trim() {
            "" => policy_name(package),
            text => text,
        }
    }
}

/// Glue between the generated bindings and [`Policy`]; not a public API.
/// Built for Wasm, and natively for its own tests and the fuzz targets.
#[cfg(any(target_arch = "wasm32", test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod __private;
