//! `assayer reconcile`: check once that each configured store holds what the stream
//! implies (docs/reconciliation.md). Exit 0 clean, 2 divergent, 1 error.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{FindingWriter, Format};
use crate::daemon::config::Config;
use crate::recon::{self, Outcome, ReconOptions, Record, Source};

/// Reconcile the systems' stores against the state the event stream implies.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// TOML config with `[[store]]` entries and `[reconcile]` limits (the daemon's).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Expected state from this NDJSON events file (audited offline) instead of the
    /// daemon group's checkpoint and journal in `[database]`.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Only this system's stores (repeatable).
    #[arg(long, value_name = "SYSTEM")]
    pub system: Vec<String>,
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Override `[reconcile] grace_ms`: how long to wait before re-checking candidates.
    #[arg(long, value_name = "MS")]
    pub grace_ms: Option<u64>,
    /// Do not store findings nor record the run in `[database]` (the default with
    /// `--events`).
    #[arg(long)]
    pub no_record: bool,
    /// Record the run and store findings even with `--events`.
    #[arg(long, conflicts_with = "no_record")]
    pub record: bool,
}

pub fn run(args: ReconcileArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.config)?;
    let format = Format::resolve(args.format);
    let bar = if io::stderr().is_terminal() {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {human_pos} rows read ({per_sec}) {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let journal = args.events.is_none();
    let mut options = ReconOptions::new(match &args.events {
        Some(p) => Source::Events(p.clone()),
        None => Source::Journal,
    });
    options.systems = args.system.clone();
    options.grace = args.grace_ms.map(Duration::from_millis);
    options.record = if args.record || (journal && !args.no_record) {
        Record::Yes
    } else {
        Record::No
    };
    if let Some(b) = &bar {
        let b = b.clone();
        options.progress = Some(Arc::new(move |n| b.inc(n)));
    }
    let result = super::daemon::runtime()?.block_on(recon::run(&config, &options));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = result?;
    let mut w = FindingWriter::new(format, io::stdout().lock());
    for f in &report.findings {
        w.write(f.clone())?;
    }
    w.finish()?;
    eprintln!(
        "reconcile: {} — {} stores, {} rows compared, {} bytes read, {} queries, {} divergent keys in {:.1} s{}",
        match report.outcome {
            Outcome::Clean => "clean",
            Outcome::Divergent => "DIVERGENT",
        },
        report.stores.len(),
        report.rows_compared,
        report.bytes_read,
        report.queries,
        report.findings.len(),
        report.elapsed_ms as f64 / 1000.0,
        report
            .run_id
            .map(|id| format!(" (recon_runs.id {id})"))
            .unwrap_or_default()
    );
    // Per store, so pull and summary mode's costs can be told apart.
    for s in &report.stores {
        eprintln!(
            "  {} ({}{}): {} rows, {} bytes read, {} queries, {} differing buckets{}{}",
            s.store,
            match s.mode {
                recon::config::StoreMode::Pull => "pull",
                recon::config::StoreMode::Summary => "summary",
            },
            s.chunks.map(|c| format!(" by {c}")).unwrap_or_default(),
            s.rows_compared,
            s.bytes_read,
            s.queries,
            s.differing_leaves,
            if s.reread_leaves > 0 {
                format!(" ({} read again in a second pass)", s.reread_leaves)
            } else {
                String::new()
            },
            if s.paused_ms > 0 {
                format!(
                    ", paused {:.1} s for a busy database",
                    s.paused_ms as f64 / 1000.0
                )
            } else {
                String::new()
            }
        );
    }
    Ok(match report.outcome {
        Outcome::Clean => std::process::ExitCode::SUCCESS,
        Outcome::Divergent => std::process::ExitCode::from(2),
    })
}
