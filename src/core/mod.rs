//! The pure core: events, the ledger state machine, policy and findings.

pub mod engine;
pub mod event;
pub mod expected;
pub mod finding;
pub mod gate;
pub mod intern;
pub mod ledger;
pub mod merkle;
pub mod policy;
pub mod provenance;
pub mod recon;
pub mod sequencer;
pub mod summary;
pub mod time;
pub mod verdict;
