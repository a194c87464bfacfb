//! The SDK's batch unpacking, as a guest sees the host's columns: never
//! panics, and whatever the columns, every step gets exactly one charge or
//! one failure, in order.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pricing_sdk::__private::{bill, wit};
use pricing_sdk::{Decimal, Error, MetricInfo, Policy, PolicyInfo, Usage};

/// Charges the step's difference (errors on bad decimals, as a policy would).
struct Delta;

impl Policy for Delta {
    fn configure(_config: &str) -> Result<Self, Error> {
        Ok(Delta)
    }
    fn describe(&self) -> PolicyInfo {
        PolicyInfo::new("delta", "1", "the difference").metric(MetricInfo::new("m", "m", "u", "d"))
    }
    fn bill(&self, usage: &Usage) -> Result<Decimal, Error> {
        let tags = usage.tags.len();
        Ok(usage.delta()?.abs() + Decimal::from(tags as u64))
    }
}

#[derive(Debug, Arbitrary)]
struct Columns {
    text: String,
    ends: Vec<u32>,
    timestamps: Vec<i64>,
    tag_counts: Vec<u8>,
}

fuzz_target!(|columns: Columns| {
    let steps = columns.tag_counts.len();
    let batch = wit::Batch {
        text: columns.text,
        ends: columns.ends,
        timestamps: columns.timestamps,
        tag_counts: columns.tag_counts.iter().map(|&n| u32::from(n)).collect(),
    };
    let charges = bill::<Delta>(batch);
    assert_eq!(charges.ends.len(), steps, "one charge or failure per step");
    assert!(charges.ends.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(
        charges.ends.last().map_or(0, |&e| e as usize),
        charges.text.len()
    );
    assert!(charges.failed.windows(2).all(|w| w[0] < w[1]));
    assert!(charges.failed.iter().all(|&i| (i as usize) < steps));
    // Every charge that did not fail is a decimal.
    let mut start = 0;
    for (index, &end) in charges.ends.iter().enumerate() {
        let text = &charges.text[start..end as usize];
        if !charges.failed.contains(&(index as u32)) {
            assert!(pricing_sdk::parse_decimal(text).is_ok(), "{text:?}");
        }
        start = end as usize;
    }
});
