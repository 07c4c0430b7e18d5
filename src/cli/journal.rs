//! `assayer journal import FILE`: journal a captured NDJSON stream into the daemon's
//! PostgreSQL exactly as the daemon would (same engine, rows and batches), without
//! RabbitMQ — to fill a support or test database.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::adapters::postgres::{ConnectOptions, Pg};
use crate::cli::trace::DbArgs;
use crate::core::policy::Policy;
use crate::core::time::Timestamp;

/// The daemon's journal in PostgreSQL.
#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub what: JournalWhat,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum JournalWhat {
    /// Audit an NDJSON file (or `-` for stdin) and journal it, with its findings.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    pub file: PathBuf,
    /// Policy directory [default: the config's policy.dir, else the built-in policy].
    #[arg(long, value_name = "DIR")]
    pub policy: Option<PathBuf>,
    /// Lines per PostgreSQL transaction.
    #[arg(long, default_value_t = 5_000)]
    pub batch_events_max: usize,
}

pub fn run(args: JournalArgs) -> anyhow::Result<std::process::ExitCode> {
    let JournalWhat::Import(a) = args.what;
    if a.batch_events_max == 0 {
        anyhow::bail!("--batch-events-max must be at least 1");
    }
    let policy_dir = match (&a.policy, &args.db.config) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(c)) => crate::daemon::config::Config::load(c)?.policy.dir,
        (None, None) => None,
    };
    let policy = match &policy_dir {
        Some(d) => Policy::load_dir(d)?,
        None => Policy::builtin(),
    };
    let (url, group) = args.db.resolve()?;
    let mut input: Box<dyn io::BufRead> = if a.file.as_os_str() == "-" {
        Box::new(BufReader::new(io::stdin()))
    } else {
        Box::new(BufReader::new(
            File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?,
        ))
    };
    let rt = crate::cli::daemon::runtime()?;
    rt.block_on(async move {
        let pg = Pg::connect(
            &ConnectOptions {
                url: &url,
                pool_size_max: 2,
                connect_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(60),
            },
            &group,
        )
        .await?;
        pg.migrate().await?;
        let r = crate::daemon::import::import(
            &pg,
            &policy,
            &mut input,
            a.batch_events_max,
            Timestamp::now(),
        )
        .await?;
        eprintln!(
            "journal import: {} lines, {} journaled, {} redeliveries, {} findings; group `{group}` head {}",
            r.lines, r.journaled, r.redelivered, r.findings, r.head
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}
