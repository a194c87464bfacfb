//! # os-credits: the host service
//!
//! Bills OpenStack projects in credits from the cumulative usage the
//! project usage exporter publishes. Data flows one way:
//!
//! ```text
//! ingest (line protocol) -> billing (rules, exact decimals) -> ledger -> perun / notify
//!                              |
//!                            policy (Wasm pricing modules)
//! ```
//!
//! - [`ingest`]: InfluxDB line protocol to [`ingest::Measurement`]s;
//! - [`billing`]: the per-key rules and the exact [`billing::Book`];
//! - [`policy`]: the wasmtime host for pricing policies;
//! - [`ledger`]: the durable truth (SQLite): states, charges, outbox;
//! - [`perun`]: the outbox published to Perun, adoption from the old service;
//! - [`notify`]: threshold mails to the maintainers;
//! - [`replay`]: a file of measurements through the same parser and rules,
//!   as `os-credits policy run` shows it.

pub mod api;
pub mod billing;
pub mod config;
pub mod engine;
pub mod ingest;
pub mod ledger;
pub mod notify;
pub mod perun;
pub mod policy;
pub mod replay;
pub mod rerate;
