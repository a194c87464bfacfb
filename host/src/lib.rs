//! # os-credits: the host service
//!
//! Bills OpenStack projects in credits from the cumulative usage the
//! project usage exporter publishes. Data flows one way:
//!
//! ```text
//! api -> replica (leader or follower) -> billing (rules, exact decimals) -> ledger -> perun / alerts
//!                                          |  uses ingest (line protocol, remote write)
//!                                          Pricer port -> policy (Wasm pricing modules)
//! ```
//!
//! - [`api`]: the HTTP routes;
//! - [`ingest`]: line protocol and Prometheus remote write to
//!   [`ingest::Sample`]s (imports nothing of the crate);
//! - [`billing`]: the rules, the exact [`billing::Book`], the billing
//!   thread, `policy run`'s intake; prices only through [`billing::Pricer`];
//! - [`policy`]: the wasmtime host for pricing policies (knows nothing of
//!   billing);
//! - [`replica`]: leader or follower on a replicated ledger (lock, lease, inbox);
//! - [`ledger`]: the durable truth, one role trait per client, each
//!   written once over SQLite and PostgreSQL;
//! - [`perun`]: the outbox published to Perun, adoption from the old service;
//! - [`alerts`]: alerts (thresholds, run-out warnings) by mail and webhook;
//! - [`forecast`]: when a project's credits run out at its recent pace,
//!   from the ledger;
//! - [`schedule`]: the price schedule's entries as the ledger keeps them (a leaf);
//! - [`account`]: the key, state and account billing and the ledger share (a leaf);
//! - [`credits`]: how totals are shown (rounding), for api, perun and alerts;
//! - [`http`]: the HTTP client of the service's own requests (a leaf);
//! - [`writers`]: who may write measurements (credentials, site scopes);
//! - [`watch`]: re-reading files when they change (a leaf).
//!
//! `tests/layers.rs` keeps these import rules.

// The stages below the service, each a crate of its own (Cargo's graph
// keeps the flow one way), under the short names the service's modules and
// its tests use.
pub use os_credits_billing as billing;
pub use os_credits_core::{account, credits, period, schedule, sync, time, watch};
pub use os_credits_ingest as ingest;
pub use os_credits_ledger as ledger;
pub use os_credits_policy as policy;

pub mod alerts;
pub mod api;
pub mod config;
pub mod forecast;
pub mod http;
pub mod leader;
pub mod perun;
pub mod replica;
pub mod service;
pub mod writers;
