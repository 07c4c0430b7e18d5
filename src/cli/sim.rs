//! `assayer sim`: the deterministic 12-system reference world as NDJSON.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::core::finding::Invariant;
use crate::sim::{self, SimConfig};

/// Generate the reference world's event stream (and an answer key of injected faults).
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Seed: the same seed and flags always give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Transactions to generate (redeliveries and injected extras come on top).
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Players per realm.
    #[arg(long, default_value_t = 200)]
    pub players: usize,
    /// Number of realms (`realm-1`, `realm-2`, ...).
    #[arg(long, default_value_t = 1)]
    pub realms: usize,
    /// Inject faults: CLASS=N, repeatable (e.g. `--inject item.duplicated=3`).
    /// CLASS is any stream-level invariant id.
    #[arg(long, value_name = "CLASS=N", value_parser = sim::parse_inject)]
    pub inject: Vec<(Invariant, usize)>,
    /// Redeliveries per thousand events (benign noise).
    #[arg(long, default_value_t = 10)]
    pub redelivery_per_mille: u32,
    /// Deliver strictly in commit order (no benign reordering).
    #[arg(long)]
    pub no_reorder: bool,
    /// Write events here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the answer key (which tx/subject each injected fault is) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub answer_key: Option<PathBuf>,
}

impl SimArgs {
    pub fn config(&self) -> SimConfig {
        let mut cfg = SimConfig {
            seed: self.seed,
            events: self.events,
            players: self.players,
            realms: self.realms,
            inject: self.inject.clone(),
            ..SimConfig::default()
        };
        cfg.noise.redelivery_per_mille = self.redelivery_per_mille;
        cfg.noise.reorder = !self.no_reorder;
        cfg
    }
}

pub fn run(args: SimArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.players == 0 || args.realms == 0 {
        anyhow::bail!("--players and --realms must be at least 1");
    }
    let cfg = args.config();
    let out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut err: Option<io::Error> = None;
    let key = sim::generate(&cfg, &mut |line: &[u8]| {
        if err.is_none() {
            if let Err(e) = out.write_all(line).and_then(|_| out.write_all(b"\n")) {
                err = Some(e);
            }
        }
    });
    if let Some(e) = err {
        return Err(e).context("writing events");
    }
    out.flush().context("writing events")?;
    if let Some(p) = &args.answer_key {
        let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &key).context("writing answer key")?;
    }
    eprintln!(
        "sim: {} transactions, {} lines ({} redeliveries), {} injected faults (seed {})",
        key.transactions,
        key.lines,
        key.redeliveries,
        key.faults.len(),
        key.seed
    );
    Ok(std::process::ExitCode::SUCCESS)
}
