//! Glue between the generated component bindings and [`Policy`].
//!
//! One policy per component: its configured instance lives in a
//! thread-local (a component instance is single-threaded).

use std::any::Any;
use std::cell::RefCell;

use crate::{Decimal, Error, Measurement, Policy, Usage, parse_decimal};

/// The bindings of the `os-credits:pricing` world.
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "pricing",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "pricing_sdk::__private::bindings",
    });
}

pub use bindings::export;
pub use bindings::exports::os_credits::pricing::policy::Guest;

/// The WIT types, as the generated bindings spell them.
pub mod wit {
    pub use super::bindings::exports::os_credits::pricing::policy::{Example, PolicyInfo, Usage};
    pub use super::bindings::os_credits::pricing::types::{Measurement, MetricInfo, Tag};
}

thread_local! {
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Runs `f` on the configured policy, configuring it with the defaults
/// when the host did not call `configure` first.
fn with_policy<P: Policy, R>(f: impl FnOnce(&P) -> R) -> Result<R, String> {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        if state.as_ref().and_then(|p| p.downcast_ref::<P>()).is_none() {
            let policy = P::configure("").map_err(|e| e.to_string())?;
            *state = Some(Box::new(policy));
        }
        match state.as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(policy) => Ok(f(policy)),
            None => Err("policy state lost".to_owned()),
        }
    })
}

pub fn configure<P: Policy>(config: &str) -> Result<(), String> {
    let policy = P::configure(config).map_err(|e| e.to_string())?;
    STATE.with(|state| *state.borrow_mut() = Some(Box::new(policy)));
    Ok(())
}

pub fn describe<P: Policy>() -> wit::PolicyInfo {
    let info = match with_policy::<P, _>(|p| p.describe()) {
        Ok(info) => info,
        // describe cannot fail in the contract; a trap makes the host
        // refuse the module with this message in its error.
        Err(e) => panic!("policy cannot be configured with its defaults: {e}"),
    };
    wit::PolicyInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        metrics: info
            .metrics
            .into_iter()
            .map(|m| wit::MetricInfo {
                name: m.name,
                friendly_name: m.friendly_name,
                unit: m.unit,
                description: m.description,
                amount_type: m.amount_type,
            })
            .collect(),
        tags: info.tags,
    }
}

fn from_wit(usage: wit::Usage) -> Usage {
    Usage {
        metric: usage.metric,
        project: usage.project,
        location_id: usage.location_id,
        tags: usage.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        previous: Measurement::new(usage.previous.timestamp_ns, usage.previous.value),
        current: Measurement::new(usage.current.timestamp_ns, usage.current.value),
    }
}

fn to_wit(usage: Usage) -> wit::Usage {
    let measurement = |m: Measurement| wit::Measurement {
        timestamp_ns: m.timestamp,
        value: m.value,
    };
    wit::Usage {
        metric: usage.metric,
        project: usage.project,
        location_id: usage.location_id,
        tags: usage
            .tags
            .into_iter()
            .map(|(key, value)| wit::Tag { key, value })
            .collect(),
        previous: measurement(usage.previous),
        current: measurement(usage.current),
    }
}

fn charge_text(result: Result<Decimal, Error>) -> Result<String, String> {
    match result {
        Ok(charge) if charge.is_sign_negative() && !charge.is_zero() => {
            Err(format!("policy computed a negative charge {charge}"))
        }
        Ok(charge) => Ok(charge.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn bill<P: Policy>(usage: wit::Usage) -> Result<String, String> {
    let usage = from_wit(usage);
    with_policy::<P, _>(|p| charge_text(p.bill(&usage)))?
}

pub fn cost_per_hour<P: Policy>(metric: &str, amount: &str, at_ns: i64) -> Result<String, String> {
    let amount = parse_decimal(amount).map_err(|e| e.to_string())?;
    with_policy::<P, _>(|p| charge_text(p.cost_per_hour(metric, amount, at_ns)))?
}

pub fn examples<P: Policy>() -> Vec<wit::Example> {
    with_policy::<P, _>(|p| p.examples())
        .unwrap_or_default()
        .into_iter()
        .map(|e| wit::Example {
            name: e.name,
            usage: to_wit(e.usage),
            expected: e.expected.to_string(),
        })
        .collect()
}
