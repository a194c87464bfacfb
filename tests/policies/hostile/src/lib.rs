//! Test fixture: a policy that misbehaves on demand (see ../README.md).
//! Written against the raw bindings, not the SDK, so that it can break
//! the contract in ways the SDK does not allow.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

wit_bindgen::generate!({ path: "../../../pricing-sdk/wit", world: "pricing" });

use exports::os_credits::pricing::policy::{Batch, Charges, Example, Guest, PolicyInfo};
use os_credits::pricing::types::MetricInfo;

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
}

struct Hostile;

impl Guest for Hostile {
    fn describe() -> PolicyInfo {
        PolicyInfo {
            name: "hostile".into(),
            version: "0.0.1".into(),
            description: MODE.with(|m| m.borrow().clone()),
            metrics: vec![MetricInfo {
                name: "project_vcpu_usage".into(),
                friendly_name: "cpu".into(),
                unit: "vCPU-hours".into(),
                description: "test".into(),
                amount_type: "int".into(),
            }],
            tags: None,
        }
    }

    fn configure(config: String) -> Result<(), String> {
        if config == "refuse" {
            return Err("refusing this configuration".into());
        }
        MODE.with(|m| *m.borrow_mut() = config);
        Ok(())
    }

    fn bill(batch: Batch) -> Charges {
        let mode = MODE.with(|m| m.borrow().clone());
        // Per step, its five strings (metric, project, location-id,
        // previous and current value) and two per tag.
        let mut strings = Vec::new();
        let mut start = 0;
        for &end in &batch.ends {
            strings.push(&batch.text[start..end as usize]);
            start = end as usize;
        }
        let mut first = 0;
        let steps: Vec<&[&str]> = batch
            .tag_counts
            .iter()
            .map(|&tags| {
                let step = &strings[first..first + 5 + 2 * tags as usize];
                first += step.len();
                step
            })
            .collect();
        match mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("policy bug"),
            "short" => written(Vec::new()),
            _ => written(
                steps
                    .iter()
                    .map(|step| {
                        if let Some(project) = mode.strip_prefix("trap-on:")
                            && step[1] == project
                        {
                            panic!("policy bug on {project}");
                        }
                        match mode.as_str() {
                            "garbage" => Ok("twelve credits".into()),
                            "negative" => Ok("-1".into()),
                            _ => {
                                let value =
                                    |text: &str| text.parse::<i64>().map_err(|_| "not an integer");
                                Ok((value(step[4])? - value(step[3])?).to_string())
                            }
                        }
                    })
                    .collect(),
            ),
        }
    }

    fn cost_per_hour(_metric: String, amount: String, _at_ns: i64) -> Result<String, String> {
        Ok(amount)
    }

    fn examples() -> Vec<Example> {
        Vec::new()
    }
}

/// Per-step results in the contract's columns.
fn written(results: Vec<Result<String, String>>) -> Charges {
    let mut charges = Charges {
        text: String::new(),
        ends: Vec::new(),
        failed: Vec::new(),
    };
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(text) => charges.text.push_str(&text),
            Err(message) => {
                charges.failed.push(index as u32);
                charges.text.push_str(&message);
            }
        }
        charges.ends.push(charges.text.len() as u32);
    }
    charges
}

export!(Hostile);
