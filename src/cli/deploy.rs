//! `assayer deploy begin|verify|watch`: the deploy workflow around the gate.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::gate::{GateFormat, load, render};
use crate::gate::deploy;

/// Deploy workflow: mark a deploy, verify it, watch it and roll it back.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The daemon's TOML config (database, broker, [gate] and [rollback] sections).
    #[arg(
        long,
        short,
        value_name = "FILE",
        env = "ASSAYER_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Gate policy file (default: the config's gate.policy_file, else the shipped one).
    #[arg(long, value_name = "FILE", global = true)]
    pub gate_policy: Option<PathBuf>,
    #[command(subcommand)]
    pub step: Step,
}

#[derive(Debug, Subcommand)]
pub enum Step {
    /// Record a deploy marker at the current stream watermark and reconcile
    /// (pre-deploy). Prints the marker as JSON.
    Begin {
        /// The version being deployed (any label: a tag, a commit, a build number).
        #[arg(long)]
        version: String,
        /// Who deploys (recorded on the marker).
        #[arg(long)]
        by: Option<String>,
    },
    /// Reconcile at a watermark after the marker, then gate. Exit codes as `assayer gate`.
    Verify {
        #[arg(long, value_enum)]
        format: Option<GateFormat>,
    },
    /// Watch the post-deploy window; on a blocking finding first seen after the marker,
    /// fire the rollback hooks once (dry-run unless [rollback] enabled = true).
    /// Exit 0 when the window passes clean, 2 when a rollback was triggered.
    Watch {
        /// How long to watch, e.g. 30m, 90s, 1h.
        #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "30m")]
        window: Duration,
    },
    /// Rehearse the rollback path end to end on the reference world, in a scratch realm
    /// and schema: deploy marker, injected corruption, watch firing the configured hooks
    /// (dry-run unless [rollback] enabled = true), post-rollback reconciliation. Exit 0
    /// when every step passed, 2 when one failed.
    Drill {
        /// Clean events in the drill's reference world.
        #[arg(long, default_value_t = 2_000)]
        events: usize,
    },
}

pub fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let Some(config) = args.config.as_deref() else {
        anyhow::bail!("--config FILE (or ASSAYER_CONFIG) is required");
    };
    let rt = super::daemon::runtime()?;
    let _rt = rt.enter();
    let gate = load(config, args.gate_policy.as_deref())?;
    // The deploy tables may not exist yet on a database no daemon has used.
    rt.block_on(gate.pg().migrate())?;
    let mut out = io::stdout().lock();
    match args.step {
        Step::Begin { version, by } => {
            let begun = rt.block_on(deploy::begin(&gate, &version, by.as_deref()))?;
            eprintln!(
                "deploy {} (#{}) begun at journal position {}; pre-deploy reconciliation: {} ({})",
                begun.deploy.version,
                begun.deploy.id,
                begun.watermark_position,
                begun.reconciliation.outcome,
                begun.reconciliation.detail
            );
            serde_json::to_writer_pretty(&mut out, &begun)?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        Step::Verify { format } => {
            let v = rt.block_on(deploy::verify(&gate))?;
            eprintln!(
                "post-deploy reconciliation: {} ({})",
                v.reconciliation.outcome, v.reconciliation.detail
            );
            render(&v.report, GateFormat::resolve(format), &mut out)?;
            Ok(ExitCode::from(v.report.decision.exit_code()))
        }
        Step::Drill { events } => {
            let report = rt.block_on(crate::gate::drill::drill(&gate, events))?;
            for st in &report.steps {
                eprintln!(
                    "{} {:<34} {:>6} ms  {}",
                    if st.ok { "ok  " } else { "FAIL" },
                    st.name,
                    st.elapsed_ms,
                    st.detail
                );
            }
            eprintln!(
                "drill {} in {} ms{}",
                if report.ok { "passed" } else { "FAILED" },
                report.elapsed_ms,
                if report.dry_run {
                    " (hooks dry-run: rollback.enabled = false)"
                } else {
                    ""
                }
            );
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Step::Watch { window } => {
            let watched = rt.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(super::daemon::cancel_on_signal(shutdown.clone()));
                deploy::watch(&gate, window, shutdown).await
            })?;
            match &watched.trigger {
                Some(t) => eprintln!(
                    "deploy {}: blocking finding {} ({}) — rollback {}",
                    watched.deploy.version,
                    t.fingerprint,
                    t.invariant,
                    if watched.dry_run {
                        "hooks dry-run (rollback.enabled = false)"
                    } else {
                        "hooks fired"
                    }
                ),
                None => eprintln!(
                    "deploy {}: watch ended ({}) after {} ms, no blocking finding",
                    watched.deploy.version, watched.ended, watched.watched_ms
                ),
            }
            serde_json::to_writer_pretty(&mut out, &watched)?;
            writeln!(out)?;
            Ok(if watched.trigger.is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
