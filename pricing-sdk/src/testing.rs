//! Helpers to unit-test a policy natively with `cargo test`.
//!
//! ```
//! use pricing_sdk::testing::step;
//! use pricing_sdk::HOUR_NS;
//!
//! // project "test-project" at site "1": 10 -> 15 over one hour
//! let usage = step("project_vcpu_usage", "10", "15")
//!     .at(0, HOUR_NS)
//!     .with_tag("project_id", "3f43ded4a06992e2");
//! assert_eq!(usage.delta().unwrap().to_string(), "5");
//! ```

use crate::{Error, HOUR_NS, Measurement, Policy, Timestamp, Usage};

/// A step of `metric` from value `previous` to value `current`, one hour
/// long (from Unix time 0), for project `test-project` at site `1`.
pub fn step(metric: &str, previous: &str, current: &str) -> Usage {
    Usage {
        metric: metric.to_owned(),
        project: "test-project".to_owned(),
        location_id: "1".to_owned(),
        tags: Vec::new(),
        previous: Measurement::new(0, previous),
        current: Measurement::new(HOUR_NS, current),
    }
}

impl Usage {
    /// Sets the timestamps (ns) of the previous and current measurement.
    pub fn at(mut self, previous: Timestamp, current: Timestamp) -> Self {
        self.previous.timestamp = previous;
        self.current.timestamp = current;
        self
    }

    /// Sets the project.
    pub fn for_project(mut self, project: &str) -> Self {
        self.project = project.to_owned();
        self
    }

    /// Sets the site (`location_id`).
    pub fn at_site(mut self, location_id: &str) -> Self {
        self.location_id = location_id.to_owned();
        self
    }

    /// Adds a tag, keeping tags sorted by key as the host does.
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.to_owned(), value.to_owned()));
        self.tags.sort();
        self
    }
}

/// Configures `P` with `config` and bills each of its
/// [`examples`](Policy::examples), as the host does before activation.
/// Returns how many examples passed, or the first that failed.
pub fn check_examples<P: Policy>(config: &str) -> Result<usize, Error> {
    let policy = P::configure(config)?;
    let examples = policy.examples();
    for example in &examples {
        let charge = policy
            .bill(&example.usage)
            .map_err(|e| Error::new(format!("example {:?}: {e}", example.name)))?;
        if charge != example.expected {
            return Err(Error::new(format!(
                "example {:?}: billed {charge}, expected {}",
                example.name, example.expected
            )));
        }
    }
    Ok(examples.len())
}
