//! assayer — a data-integrity auditor for MMO economies.
//!
//! Data flows one way: bytes → [`core::event`] (decode + validate) → [`core::engine`]
//! (redelivery window, intrinsic checks) → [`core::sequencer`] (reorder window) →
//! [`core::ledger`] (the state machine) → [`core::finding`]s → sinks.
//!
//! - [`core`]: pure, synchronous domain code. No tokio, no I/O, no clock: time is an
//!   argument. The same functions serve the CLI, the daemon, the simulator and tests.
//! - [`sim`]: the deterministic 12-system reference world and its fault injection.
//! - [`adapters`]: the only modules that talk to services — RabbitMQ (lapin),
//!   PostgreSQL (sqlx), HTTP (axum).
//! - [`daemon`]: wiring for `assayer daemon` — config, the consume → audit → commit →
//!   ack loop, checkpoints, metrics, health, shutdown.
//! - [`gate`]: wiring for the deploy gate — observe the audit (findings, daemon status,
//!   reconciliation, self-test, service levels, preflight), decide with
//!   [`core::gate`], fire rollback hooks.
//! - [`recon`]: wiring for reconciliation (`assayer reconcile`, the daemon's schedule):
//!   expected state from the engine, store readers, grace re-check, `recon_runs`.
//! - [`cli`]: one module per subcommand; reads files, clocks and terminals.

pub mod adapters;
pub mod cli;
pub mod core;
pub mod daemon;
pub mod gate;
pub mod ndjson;
pub mod recon;
pub mod sim;
