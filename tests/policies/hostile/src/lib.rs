//! Test fixture: a policy that misbehaves on demand (see ../README.md).
//! Written against the raw bindings, not the SDK, so that it can break
//! the contract in ways the SDK does not allow.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

wit_bindgen::generate!({ path: "../../../pricing-sdk/wit", world: "pricing" });

use exports::os_credits::pricing::policy::{Example, Guest, PolicyInfo, Usage};
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

    fn bill(usage: Usage) -> Result<String, String> {
        match MODE.with(|m| m.borrow().clone()).as_str() {
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
            "garbage" => Ok("twelve credits".into()),
            "negative" => Ok("-1".into()),
            _ => {
                let current: i64 = usage.current.value.parse().map_err(|_| "not an integer")?;
                let previous: i64 = usage.previous.value.parse().map_err(|_| "not an integer")?;
                Ok((current - previous).to_string())
            }
        }
    }

    fn cost_per_hour(_metric: String, amount: String, _at_ns: i64) -> Result<String, String> {
        Ok(amount)
    }

    fn examples() -> Vec<Example> {
        Vec::new()
    }
}

export!(Hostile);
