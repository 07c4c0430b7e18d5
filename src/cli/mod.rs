//! One module per subcommand. The CLI is the only layer that reads files, clocks and
//! terminals; it hands bytes and time to the pure core.

pub mod audit;
pub mod daemon;
pub mod demo;
pub mod deploy;
pub mod findings;
pub mod gate;
pub mod journal;
pub mod output;
pub mod reconcile;
pub mod sim;
pub mod trace;

use clap::{Parser, Subcommand};

/// assayer — data-integrity auditor for MMO economies.
#[derive(Debug, Parser)]
#[command(name = "assayer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Audit(audit::AuditArgs),
    Sim(sim::SimArgs),
    Demo(demo::DemoArgs),
    Daemon(daemon::DaemonArgs),
    CheckConfig(daemon::CheckConfigArgs),
    Gate(gate::GateArgs),
    Deploy(deploy::DeployArgs),
    Reconcile(reconcile::ReconcileArgs),
    Trace(trace::TraceArgs),
    Findings(findings::FindingsArgs),
    Journal(journal::JournalArgs),
}
