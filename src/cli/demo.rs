//! `assayer demo`: the reference world with a few planted faults, audited in-process —
//! no database, broker or file needed — and explained for a newcomer.

use std::io::{self, Write};
use std::time::Instant;

use clap::Args;

use crate::core::engine::Engine;
use crate::core::finding::{Finding, Invariant};
use crate::core::policy::Policy;
use crate::core::time::Timestamp;
use crate::core::verdict::{Decision, Verdict};
use crate::sim::{self, SimConfig, score};

/// Run the simulated 12-system world with planted faults through the auditor and
/// explain what it found. Needs no running service.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Transactions in the simulated world.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    #[arg(long, default_value_t = 300)]
    pub players: usize,
    /// Print every finding's full evidence as JSON.
    #[arg(long)]
    pub evidence: bool,
}

/// The faults the demo plants: one of each kind a live-ops engineer meets first.
const PLANTED: [Invariant; 7] = [
    Invariant::ItemDuplicated,
    Invariant::GrantReused,
    Invariant::BalanceOverdraft,
    Invariant::TxConflict,
    Invariant::SeqGap,
    Invariant::EscrowStuck,
    Invariant::Malformed,
];

fn explain(inv: Invariant) -> &'static str {
    match inv {
        Invariant::TxUnbalanced => "every event's postings sum to zero per asset",
        Invariant::TxConflict => "a tx_id never comes back with different content",
        Invariant::ItemDuplicated => "an item is never minted while it already exists",
        Invariant::ItemPhantomSource => "an item only moves from where it is",
        Invariant::ItemResurrected => "a burned item stays burned",
        Invariant::GrantReused => "a loot slot / quest reward is redeemed once",
        Invariant::UnauthorizedFaucet => {
            "only the allowed system creates value from a world: account"
        }
        Invariant::BalanceOverdraft => "no player, guild or escrow balance goes below zero",
        Invariant::SeqGap => "no transaction of a system is lost (gapless seq)",
        Invariant::SeqReuse => "no seq is used by two transactions",
        Invariant::EscrowStuck => "trade/mail/auction escrow is released in time",
        Invariant::Velocity => "no account receives more than the policy allows per window",
        Invariant::Malformed => "every event obeys the events-v1 contract",
        Invariant::ReconMissing | Invariant::ReconUnexpected | Invariant::ReconValueMismatch => {
            "stores match the stream (reconciliation)"
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let policy = Policy::builtin();
    let cfg = SimConfig {
        seed: args.seed,
        events: args.events,
        players: args.players,
        realms: 1,
        inject: PLANTED.iter().map(|i| (*i, 1)).collect(),
        ..SimConfig::default()
    };
    let window_ms = policy.stream.reorder_window.as_millis();
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(cfg.events + cfg.events / 50);
    let key = sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));

    let started = Instant::now();
    let mut engine = Engine::new(policy);
    let mut out = Vec::new();
    let now = Timestamp::now();
    for l in &lines {
        engine.ingest(l, now, &mut out);
    }
    engine.finish(now, &mut out);
    let elapsed = started.elapsed();
    let findings = dedup(out);
    let stats = engine.stats();
    let verdict = Verdict::of(&findings);
    let s = score(&key.faults, &findings);

    let mut w = io::stdout().lock();
    writeln!(
        w,
        "assayer demo — a simulated MMO economy audited in-process (no services needed)\n"
    )?;
    writeln!(
        w,
        "World   {} transactions from 12 systems (loot, quest, vendor, inventory, bank, trade,\n        mail, auction, crafting, guild_bank, economy, character), {} players, seed {}.",
        key.transactions, args.players, args.seed
    )?;
    writeln!(
        w,
        "Noise   {} redeliveries and events reordered within the {window_ms} ms window: delivery is\n        messy, and none of that may raise a finding.",
        key.redeliveries
    )?;
    writeln!(
        w,
        "Planted {} faults: {}.\n",
        key.faults.len(),
        PLANTED.map(|i| i.id()).join(", ")
    )?;
    writeln!(w, "Checked on every event:")?;
    for inv in Invariant::STREAM {
        let n = stats.findings.get(&inv).copied().unwrap_or(0);
        let mark = if n == 0 {
            "ok".to_string()
        } else {
            format!("{n} finding(s)")
        };
        writeln!(w, "  {:<29} {:<62} {mark}", inv.id(), explain(inv))?;
    }
    writeln!(w, "\nFindings ({}):", findings.len())?;
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.invariant.cmp(&b.invariant))
    });
    for (i, f) in sorted.iter().enumerate() {
        writeln!(
            w,
            "{:>3}. {:<8} {:<22} {}/{} tx {}",
            i + 1,
            f.severity.to_string().to_uppercase(),
            f.invariant.id(),
            f.realm,
            f.system.as_deref().unwrap_or("-"),
            f.tx_id.as_deref().unwrap_or("-")
        )?;
        writeln!(w, "     {}", f.message)?;
        if args.evidence {
            writeln!(w, "     evidence: {}", f.evidence)?;
        }
    }
    writeln!(
        w,
        "\nAnswer key: {}/{} planted faults found, {} false alarm(s).",
        s.found,
        key.faults.len(),
        s.unexpected.len()
    )?;
    for m in &s.missed {
        writeln!(
            w,
            "  MISSED {} tx {:?} subject {:?}",
            m.invariant, m.tx_id, m.subject
        )?;
    }
    for f in &s.unexpected {
        writeln!(w, "  FALSE ALARM {} {}", f.invariant, f.message)?;
    }
    let decision = match verdict.decision {
        Decision::Go => "GO",
        Decision::NoGo => "NO-GO",
    };
    writeln!(
        w,
        "Deploy gate on these stream checks: {decision} — {}.",
        verdict.reason
    )?;
    writeln!(
        w,
        "Audited {} events ({} redeliveries counted, not flagged) in {:.2} s.",
        stats.received,
        stats.redelivered,
        elapsed.as_secs_f64()
    )?;
    writeln!(
        w,
        "\nNext: `assayer sim --help`, `assayer audit --help`; docs/invariants.md explains each check."
    )?;
    Ok(if s.missed.is_empty() && s.unexpected.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// Keeps the first finding of each fingerprint, as every findings sink does.
pub fn dedup(findings: Vec<Finding>) -> Vec<Finding> {
    let mut seen = std::collections::HashSet::new();
    findings
        .into_iter()
        .filter(|f| seen.insert(f.fingerprint.clone()))
        .collect()
}
