//! # os-credits-core: the words every stage shares
//!
//! The leaf of the crate graph: the values that cross from one stage of
//! the flow (`ingest -> billing -> ledger -> perun / alerts`) to another
//! without either naming the other, and the few utilities they all use.
//!
//! - [`account`]: a key (project, site, metric), its last billed state and
//!   what it was charged: billing computes them, the ledger stores them;
//! - [`schedule`]: the price schedule's entries as the ledger keeps them:
//!   the policy host builds the live schedule from them, billing appends
//!   them;
//! - [`period`]: usage assigned to periods by when it happened, and the 18
//!   decimal places credits are kept to;
//! - [`credits`]: how an exact total is shown (rounded half-even);
//! - [`time`]: the clock, in the ledger's unit (Unix nanoseconds);
//! - [`sync`]: a mutex taken even when a panic poisoned it;
//! - [`watch`]: a folder re-read when its files change.
//!
//! It must not know any stage: no ledger, no policy runtime, no billing,
//! no HTTP. It depends on nothing of the workspace.

pub mod account;
pub mod credits;
pub mod period;
pub mod schedule;
pub mod sync;
pub mod time;
pub mod watch;
