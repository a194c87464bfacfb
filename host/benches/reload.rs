//! Hot reload latency: time from a module renamed into the policy folder
//! to that module being the one that prices points (active in
//! `/api/policies`; every write applied from then on uses it). 20 swaps;
//! prints p50 and p95.
//!
//! `cargo bench -p os-credits --bench reload` (or `make bench`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const SWAPS: usize = 20;

/// The module with a custom section appended: same policy, other bytes.
fn variant(module: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![4u8];
    payload.extend_from_slice(b"test");
    payload.extend_from_slice(tag.as_bytes());
    let mut bytes = module.to_vec();
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend(payload);
    bytes
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let denbi = std::fs::read(common::wasm("denbi-policy")).expect("module");
    let folder = common::policy_dir(&[("policies.toml", "[default]\nmodule = \"current.wasm\"\n")]);
    std::fs::write(folder.path().join("current.wasm"), variant(&denbi, "start")).expect("write");
    let data = tempfile::tempdir().expect("temp dir");
    let service = common::Service::start(data.path(), folder.path(), &[]);
    let client = common::http();
    let mut latencies = Vec::with_capacity(SWAPS);
    for swap in 0..SWAPS {
        let bytes = variant(&denbi, &format!("v{swap}"));
        let sha = hex::encode(Sha256::digest(&bytes));
        let hidden = folder.path().join(".current.wasm.tmp");
        std::fs::write(&hidden, &bytes).expect("write");
        let started = Instant::now();
        std::fs::rename(&hidden, folder.path().join("current.wasm")).expect("rename");
        loop {
            let state: serde_json::Value = client
                .get(service.at("/api/policies"))
                .send()
                .and_then(|r| r.json())
                .expect("policies");
            if state["active"][0]["sha256"] == sha.as_str() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "swap {swap} never happened"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "policy/reload: {SWAPS} swaps, module written -> pricing: p50 {:.0?}, p95 {:.0?}, max {:.0?}",
        at(0.5),
        at(0.95),
        latencies[latencies.len() - 1]
    );
}
