//! Glue between the generated component bindings and [`Policy`].
//!
//! One policy per component: its configured instance lives in a
//! thread-local (a component instance is single-threaded).

use std::any::Any;
use std::cell::RefCell;
use std::fmt::Write as _;

use crate::{
    Decimal, Error, Measurement, Policy, Usage, decimal_text, parse_decimal, push_decimal,
};

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
    pub use super::bindings::exports::os_credits::pricing::policy::{
        Batch, Charges, Example, PolicyInfo,
    };
    pub use super::bindings::os_credits::pricing::types::{Measurement, MetricInfo, Tag, Usage};
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
                name: m.name.into_owned(),
                friendly_name: m.friendly_name.into_owned(),
                unit: m.unit.into_owned(),
                description: m.description.into_owned(),
                amount_type: m.amount_type.into_owned(),
            })
            .collect(),
        tags: info.tags,
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
        Ok(charge) => Ok(decimal_text(charge)),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads a batch's columns step by step.
struct Columns<'b> {
    batch: &'b wit::Batch,
    /// Next entry of `ends`.
    string: usize,
    /// Where the next string starts in `text`.
    start: usize,
}

impl<'b> Columns<'b> {
    fn new(batch: &'b wit::Batch) -> Result<Self, String> {
        let steps = batch.tag_counts.len();
        let strings = batch
            .tag_counts
            .iter()
            .try_fold(5 * steps, |n, &tags| n.checked_add(2 * tags as usize));
        if batch.timestamps.len() != 2 * steps || strings != Some(batch.ends.len()) {
            return Err(format!(
                "malformed batch: {steps} steps, {} timestamps, {} strings",
                batch.timestamps.len(),
                batch.ends.len()
            ));
        }
        Ok(Columns {
            batch,
            string: 0,
            start: 0,
        })
    }

    /// The next string of the text.
    fn next_str(&mut self) -> Result<&'b str, String> {
        let end = self.batch.ends.get(self.string).map(|&end| end as usize);
        let text = end.and_then(|end| self.batch.text.get(self.start..end));
        self.string += 1;
        match (text, end) {
            (Some(text), Some(end)) => {
                self.start = end;
                Ok(text)
            }
            _ => Err(format!(
                "malformed batch: string {} is not in the text",
                self.string - 1
            )),
        }
    }

    /// Fills `usage` (reusing its strings) with step `index`.
    fn unpack(&mut self, index: usize, usage: &mut Usage) -> Result<(), String> {
        set(&mut usage.metric, self.next_str()?);
        set(&mut usage.project, self.next_str()?);
        set(&mut usage.location_id, self.next_str()?);
        set(&mut usage.previous.value, self.next_str()?);
        set(&mut usage.current.value, self.next_str()?);
        usage.previous.timestamp = self.batch.timestamps[2 * index];
        usage.current.timestamp = self.batch.timestamps[2 * index + 1];
        usage.tags.clear();
        for _ in 0..self.batch.tag_counts[index] {
            let (key, value) = (self.next_str()?, self.next_str()?);
            usage.tags.push((key.to_owned(), value.to_owned()));
        }
        Ok(())
    }
}

/// Overwrites `into` with `from`, keeping its allocation.
fn set(into: &mut String, from: &str) {
    into.clear();
    into.push_str(from);
}

/// Charges written one step after the other.
struct Written(wit::Charges);

impl Written {
    fn new(steps: usize) -> Self {
        Written(wit::Charges {
            text: String::with_capacity(steps * 16),
            ends: Vec::with_capacity(steps),
            failed: Vec::new(),
        })
    }

    fn push(&mut self, index: usize, charge: Result<Decimal, String>) {
        let charges = &mut self.0;
        match charge {
            Ok(charge) if charge.is_sign_negative() && !charge.is_zero() => {
                charges.failed.push(index as u32);
                let _ = write!(charges.text, "policy computed a negative charge {charge}");
            }
            Ok(charge) => push_decimal(&mut charges.text, charge),
            Err(message) => {
                charges.failed.push(index as u32);
                charges.text.push_str(&message);
            }
        }
        charges.ends.push(charges.text.len() as u32);
    }
}

/// Prices every step of `batch` in order. One `Usage` is reused for all
/// steps, so unpacking a step allocates only for its tags, and all
/// charges are written into one text.
pub fn bill<P: Policy>(batch: wit::Batch) -> wit::Charges {
    let steps = batch.tag_counts.len();
    let mut written = Written::new(steps);
    let mut usage = Usage {
        metric: String::new(),
        project: String::new(),
        location_id: String::new(),
        tags: Vec::new(),
        previous: Measurement::new(0, String::new()),
        current: Measurement::new(0, String::new()),
    };
    let priced = Columns::new(&batch).and_then(|mut columns| {
        with_policy::<P, _>(|p| {
            for index in 0..steps {
                let charge = columns
                    .unpack(index, &mut usage)
                    .and_then(|()| p.bill(&usage).map_err(|e| e.to_string()));
                written.push(index, charge);
            }
        })
    });
    if let Err(e) = priced {
        written = Written::new(steps);
        for index in 0..steps {
            written.push(index, Err(e.clone()));
        }
    }
    written.0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PolicyInfo, Timestamp};

    /// Bills the growth of the counter; refuses project `no`.
    struct Growth;

    impl Policy for Growth {
        fn configure(_config: &str) -> Result<Self, Error> {
            Ok(Growth)
        }
        fn describe(&self) -> PolicyInfo {
            PolicyInfo::new("growth", "0", "test")
        }
        fn bill(&self, usage: &Usage) -> Result<Decimal, Error> {
            if usage.project == "no" {
                return Err(Error::new(format!(
                    "not {} at {}",
                    usage.project, usage.location_id
                )));
            }
            let tags: Vec<String> = usage.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(
                tags.join(","),
                if usage.project == "tagged" {
                    "a=1,b=2"
                } else {
                    ""
                }
            );
            usage.delta()
        }
        fn cost_per_hour(&self, _: &str, amount: Decimal, _: Timestamp) -> Result<Decimal, Error> {
            Ok(amount)
        }
    }

    /// A step: project, previous and current value, tags.
    type Step<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

    /// A batch as the host packs it.
    fn batch(steps: &[Step<'_>]) -> wit::Batch {
        let mut batch = wit::Batch {
            text: String::new(),
            ends: Vec::new(),
            timestamps: Vec::new(),
            tag_counts: Vec::new(),
        };
        for &(project, previous, current, tags) in steps {
            let strings = ["project_vcpu_usage", project, "8676", previous, current];
            for s in strings
                .into_iter()
                .chain(tags.iter().flat_map(|(k, v)| [*k, *v]))
            {
                batch.text.push_str(s);
                batch.ends.push(batch.text.len() as u32);
            }
            batch.timestamps.extend([0, 3_600]);
            batch.tag_counts.push(tags.len() as u32);
        }
        batch
    }

    /// Each step's text and whether it failed.
    fn read(charges: &wit::Charges) -> Vec<(&str, bool)> {
        let mut start = 0;
        (0..charges.ends.len())
            .map(|i| {
                let end = charges.ends[i] as usize;
                let text = &charges.text[start..end];
                start = end;
                (text, charges.failed.contains(&(i as u32)))
            })
            .collect()
    }

    #[test]
    fn a_batch_is_priced_step_by_step_into_columns() {
        let charges = bill::<Growth>(batch(&[
            ("a", "1", "3", &[]),
            ("no", "1", "4", &[]),
            ("tagged", "0.5", "1.75", &[("a", "1"), ("b", "2")]),
            ("c", "x", "1", &[]),
            ("d", "10749.617071944445", "10750.617071944445", &[]),
        ]));
        assert_eq!(
            read(&charges),
            [
                ("2", false),
                ("not no at 8676", true),
                ("1.25", false),
                (
                    "invalid decimal \"x\": Invalid decimal: unknown character",
                    true
                ),
                ("1.000000000000", false),
            ]
        );
        assert_eq!(charges.failed, [1, 3]);
    }

    #[test]
    fn a_malformed_batch_fails_every_step_with_the_reason() {
        let mut short = batch(&[("a", "1", "3", &[]), ("b", "1", "2", &[])]);
        short.ends.pop();
        let charges = bill::<Growth>(short);
        let steps = read(&charges);
        assert_eq!(steps.len(), 2);
        for (text, failed) in steps {
            assert!(
                failed && text.starts_with("malformed batch: 2 steps"),
                "{text}"
            );
        }

        // Offsets past the text (or inside a character) fail their step.
        let mut outside = batch(&[("é", "1", "3", &[])]);
        outside.ends[1] -= 1;
        let charges = bill::<Growth>(outside);
        assert_eq!(read(&charges).len(), 1);
        assert_eq!(charges.failed, [0]);
    }
}
