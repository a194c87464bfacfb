//! # os-credits-billing: what a sample costs, given what came before
//!
//! It owns the rules, the exact book, the billing thread and its group
//! commits, re-rating and corrections. It takes samples from
//! `os-credits-ingest`, prices them only through its own [`Pricer`] port
//! (whose adapter for the Wasm policies of `os-credits-policy` lives
//! here) and writes `os-credits-ledger`. It must not know the service:
//! HTTP, replicas, Perun, mails, webhooks; Cargo's graph keeps it so.
//!
//! Per key (project, site, metric) the state is the last billed sample.
//! Samples are applied in arrival order ([`rules`]):
//! - the first sample of a key is a baseline: nothing is charged;
//! - a sample not newer than the state is ignored (stale);
//! - a sample with the same value changes nothing (the state keeps its
//!   timestamp, so the next step spans from the last change);
//! - a lower value (the exporter's start date changed) re-baselines without
//!   a charge;
//! - otherwise the policy prices (previous, current) and the **exact**
//!   charge is added to the key's and the project's totals.
//!
//! A key adopted from the service we replace ([`Book::rebase`]) waits for a
//! sample newer than that service's last billed one: older samples are
//! stale, the first newer one is a baseline. A step the policy cannot price
//! (error, trap, timeout) leaves the state as it was: the next sample
//! prices the whole span, so nothing is lost.
//!
//! - [`rules`]: the rules for one key;
//! - [`book`]: every key's state and exact totals; [`Book::apply`] is the
//!   one entry point (decide, wait, price in batches);
//! - [`pricer`]: the port to the prices and its adapter for the policies;
//! - [`intake`]: decoded items through the book, with a report (`/write`
//!   and `policy run`);
//! - [`engine`]: the billing thread: queued writes, one ledger transaction
//!   per group of writes, answers after the commit;
//! - [`rerate`]: recorded steps priced by another policy (dry run);
//! - [`correction`]: past usage re-priced (corrections) and assigned to
//!   periods (statements), shared by time.
//!
//! Totals stay exact; [`os_credits_core::credits::round`] applies the precision only
//! when a total is shown or written.

pub mod book;
pub mod correction;
pub mod engine;
pub mod intake;
pub mod pricer;
pub mod prices;
pub mod rerate;
pub mod rules;
pub mod scope;

pub use book::{Account, Book, Charge, Key, Outcome, UNKNOWN_METRIC};
pub use pricer::{Priced, Pricer};
pub use rules::{Skip, State};
