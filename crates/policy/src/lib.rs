//! # os-credits-policy: the Wasm host for pricing policies
//!
//! A [`PolicyRuntime`] owns the wasmtime engine (component model, epoch
//! interruption) and a linker with WASI on an empty context: a policy gets
//! no files, no environment, no network and no stdio. [`PolicyRuntime::load`]
//! compiles a module once, checks its contract version, configures it,
//! reads its [`describe`](Module::info) and runs its self-test examples;
//! the result is a [`Module`] that prices usage through a pool of ready
//! instances.
//!
//! Every call runs under two limits ([`Limits`]): a wall-clock deadline
//! (epoch interruption, checked by a ticker thread) and a memory cap. A trap,
//! a timeout or a result that is not a decimal is a [`CallError`] for that
//! one call; an instance that trapped is dropped, never reused.
//!
//! What it owns: loading and vetting modules ([`PolicyRuntime`], [`set`],
//! [`signature`]), compiled code on disk ([`cache`]), `policies.toml`
//! ([`mapping`]), the live price schedule it gives ([`schedule`]) and hot
//! reload of the policy folder ([`registry`]). What it must not know:
//! billing, the ledger and the service; it sees usage only as the
//! [`Step`]s it is asked to price.
//!
//! Without the default feature `runtime` the crate is only [`mapping`],
//! the `policies.toml` parser: pure text in, entries out, which the fuzz
//! targets build without wasmtime.

pub mod mapping;

#[cfg(feature = "runtime")]
pub mod cache;
#[cfg(feature = "runtime")]
mod instance;
#[cfg(feature = "runtime")]
pub mod registry;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "runtime")]
pub mod schedule;
#[cfg(feature = "runtime")]
pub mod set;
#[cfg(feature = "runtime")]
pub mod signature;

#[cfg(feature = "runtime")]
pub use runtime::*;
