//! assayer — a data-integrity auditor for MMO economies.
//!
//! Data flows one way: bytes → [`core::event`] (decode + validate) → [`core::engine`]
//! (dedup, reorder window, sequencing) → [`core::ledger`] (the state machine) →
//! [`core::finding`]s → sinks.
//!
//! - [`core`]: pure, synchronous domain code. No tokio, no I/O, no clock: time is an
//!   argument. The same functions serve the CLI, the daemon, the simulator and tests.
//! - [`sim`]: the deterministic 12-system reference world and its fault injection.
//! - [`cli`]: one module per subcommand; the only place that reads files and clocks.

pub mod cli;
pub mod core;
pub mod sim;
