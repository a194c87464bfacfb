//! Publishing to Perun: the last stage of `ledger -> perun`.
//!
//! [`client`] speaks Perun's JSON-RPC; [`sync`] reads the ledger's outbox
//! and writes each charged project's `denbiCreditsCurrent` (rounded, as a
//! string) and per site `denbiCreditTimestamps`, at most once per interval
//! per project, retrying with backoff. It never blocks billing: the outbox
//! lives in the ledger, so Perun being down loses nothing. Every write is
//! recorded as an intent first; [`reconcile`] tells our own values (and an
//! unset one) from a hand edit when they are read back.

pub mod client;
pub mod reconcile;
pub mod sync;
