//! The deterministic reference world: 12 game systems trading gold and items across
//! realms, delivered with benign bus noise, with faults planted on request and an
//! answer key naming each one.
//!
//! Pure generation — no I/O, no clock: the caller gets each NDJSON line through
//! `emit` and decides where it goes. The same config always yields the same bytes
//! (ChaCha8 seeded from `seed`; no hash-map iteration decides anything), so a failing
//! audit is reproducible from `(seed, config)` alone.
//!
//! - `world.rs`: the state model and the normal traffic of every system. A clean world
//!   raises no finding: nobody spends what they do not have, items move from where they
//!   are, escrows resolve well inside their limits, grants are fresh, inflow stays far
//!   under the velocity limit.
//! - `faults.rs`: one extra event per requested fault, built to raise exactly one
//!   finding, and applied to the model as the engine will apply it.
//! - `noise.rs`: delivery — reordering strictly inside half the reorder window,
//!   redeliveries (byte-identical or re-serialized), conflicting `tx_id` re-use.
//! - `wire.rs`: the owned event and its canonical and re-serialized spellings.
//! - `score.rs`: matching an audit's findings against the answer key.
//!
//! ```
//! use assayer::sim::{SimConfig, generate, parse_inject};
//! let cfg = SimConfig {
//!     events: 2_000,
//!     inject: vec![parse_inject("item.duplicated=2").unwrap()],
//!     ..SimConfig::default()
//! };
//! let mut lines = Vec::new();
//! let key = generate(&cfg, &mut |line: &[u8]| lines.push(line.to_vec()));
//! assert_eq!(key.lines, lines.len());
//! assert_eq!(key.faults.len(), 2);
//! ```

mod faults;
mod noise;
mod score;
pub mod stores;
mod wire;
mod world;

#[cfg(test)]
mod tests;

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::core::finding::Invariant;
use crate::core::policy::Policy;
use crate::core::time::Timestamp;

use noise::Delivery;
use world::World;

pub use score::{Score, score};

/// What world to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// Clean transactions to generate. Redeliveries, injected fault events, the clean
    /// transactions a fault needs first (a loot drop, a discard) and the closing
    /// heartbeats of a world with a stuck escrow come on top.
    pub events: usize,
    /// Players per realm (at least 1 is used).
    pub players: usize,
    /// Realms, named `realm-1`, `realm-2`, … (at least 1 is used).
    pub realms: usize,
    /// Faults to plant: stream-level classes only. `recon.*` entries (which
    /// [`parse_inject`] rejects) are ignored. At most one `economy.velocity` per player
    /// and one `balance.overdraft` per player balance (7 each) can be planted; the
    /// answer key lists what was.
    pub inject: Vec<(Invariant, usize)>,
    /// Duplication patterns to plant on top of `inject` (each its own fault class; the
    /// engine flags them as `item.phantom_source`, the answer key names the fork tx).
    pub duplications: Vec<(Duplication, usize)>,
    pub noise: Noise,
    /// The `ts` of the first committed event; each later one is 2–20 ms after the
    /// previous.
    pub start: Timestamp,
}

/// Benign delivery noise: none of it may raise a finding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Noise {
    /// Per mille of delivered events that are delivered again later.
    pub redelivery_per_mille: u32,
    /// Deliver some events before earlier ones (same stream: adjacent `seq`s swap;
    /// across streams: before the event they depend on).
    pub reorder: bool,
    /// The auditor's reorder window. Every displacement stays strictly under half of it.
    pub reorder_window: Duration,
}

impl Default for Noise {
    fn default() -> Self {
        Noise {
            redelivery_per_mille: 10,
            reorder: true,
            // events-v1: "default 5 s of `ts`".
            reorder_window: Duration::from_secs(5),
        }
    }
}

impl Noise {
    /// No redelivery, no reordering: the stream exactly as committed.
    pub fn none() -> Noise {
        Noise {
            redelivery_per_mille: 0,
            reorder: false,
            ..Noise::default()
        }
    }
}

/// 2026-11-27T08:00:00Z, the brief's opening time.
const DEFAULT_START: Timestamp = Timestamp(1_795_766_400 * 1_000_000_000);

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            events: 10_000,
            players: 200,
            realms: 1,
            inject: Vec::new(),
            duplications: Vec::new(),
            noise: Noise::default(),
            start: DEFAULT_START,
        }
    }
}

/// Parses one `--inject` value: `CLASS=COUNT` (e.g. `item.duplicated=3`), or a bare
/// `CLASS` for one fault.
pub fn parse_inject(s: &str) -> Result<(Invariant, usize), String> {
    let (name, count) = match s.split_once('=') {
        Some((n, c)) => (n.trim(), Some(c.trim())),
        None => (s.trim(), None),
    };
    let known = || {
        Invariant::STREAM
            .iter()
            .map(|i| i.id())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let inv: Invariant = name.parse().map_err(|_| {
        format!(
            "unknown fault class `{name}` in `{s}`; the simulator injects: {}",
            known()
        )
    })?;
    if !Invariant::STREAM.contains(&inv) {
        return Err(format!(
            "`{name}` is found by reconciliation against a store, not in the event stream, so the \
             simulator cannot inject it; it injects: {}",
            known()
        ));
    }
    let n = match count {
        None => 1,
        Some(c) => c.parse::<usize>().map_err(|_| {
            format!("`{s}`: the count after `=` must be a whole number ≥ 0, got `{c}`")
        })?,
    };
    Ok((inv, n))
}

/// A duplication pattern the reference world can plant beyond the invariant classes:
/// the ways a real game hands out a second copy of an item. (A double mint is
/// `item.duplicated`, a resurrection after burn `item.resurrected`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duplication {
    /// A mail is received, then received again (a second `mail.receive` of an
    /// emptied `mail:M`): the recipient holds two copies.
    MailDoubleReceive,
    /// A listing is cancelled back to the seller and also bought (an `auction.buy`
    /// of the emptied `auction:L`): seller and buyer both hold a copy.
    AuctionCancelBuy,
}

impl Duplication {
    pub const ALL: [Duplication; 2] = [
        Duplication::MailDoubleReceive,
        Duplication::AuctionCancelBuy,
    ];

    /// The fault class name `--inject` accepts.
    pub fn id(self) -> &'static str {
        match self {
            Duplication::MailDoubleReceive => "dup.mail_double_receive",
            Duplication::AuctionCancelBuy => "dup.auction_cancel_buy",
        }
    }

    /// What the engine raises for it (at the fork transaction).
    pub fn invariant(self) -> Invariant {
        Invariant::ItemPhantomSource
    }
}

/// A requested fault class: an invariant the world violates once, or a duplication
/// pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    Invariant(Invariant),
    Duplication(Duplication),
}

/// Parses one `--inject` value that may also name a duplication pattern
/// (`dup.mail_double_receive=2`).
pub fn parse_fault(s: &str) -> Result<(FaultClass, usize), String> {
    let (name, count) = match s.split_once('=') {
        Some((n, c)) => (n.trim(), Some(c.trim())),
        None => (s.trim(), None),
    };
    if let Some(d) = Duplication::ALL.into_iter().find(|d| d.id() == name) {
        let n = match count {
            None => 1,
            Some(c) => c.parse::<usize>().map_err(|_| {
                format!("`{s}`: the count after `=` must be a whole number ≥ 0, got `{c}`")
            })?,
        };
        return Ok((FaultClass::Duplication(d), n));
    }
    parse_inject(s)
        .map(|(i, n)| (FaultClass::Invariant(i), n))
        .map_err(|e| {
            let dups: Vec<&str> = Duplication::ALL.iter().map(|d| d.id()).collect();
            format!("{e}; duplication patterns: {}", dups.join(", "))
        })
}

/// One planted fault: the finding the auditor must raise for it. Fields that are `None`
/// are not asserted (the brief's per-class shape): `tx_id` for event faults, `subject`
/// for the item, grant, account or escrow at fault, `system` and `seq` for stream faults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Expected {
    pub invariant: Invariant,
    pub realm: String,
    pub system: Option<String>,
    pub tx_id: Option<String>,
    pub seq: Option<u64>,
    pub subject: Option<String>,
}

/// What was generated. `lines` = `transactions` + `redeliveries` + the number of
/// `tx.conflict` faults (a conflicting line re-uses a `tx_id`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AnswerKey {
    pub seed: u64,
    /// Distinct `tx_id`s emitted: clean transactions, fault events, malformed ones.
    pub transactions: usize,
    pub lines: usize,
    pub redeliveries: usize,
    /// In delivery order.
    pub faults: Vec<Expected>,
}

/// Generates the world; calls `emit` once per NDJSON line (no trailing newline), in
/// delivery order.
pub fn generate(cfg: &SimConfig, emit: &mut dyn FnMut(&[u8])) -> AnswerKey {
    let policy = Policy::builtin();
    // Independent streams: the plan does not shift with the world, and noise settings
    // do not change what the world commits.
    let stream = |n: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(n);
        rng
    };
    let plan = faults::plan(cfg, &mut stream(1));
    let mut world = World::new(cfg, &policy, stream(0));
    let mut out = Delivery::new(stream(2), &cfg.noise, emit);

    let mut next = 0;
    for i in 0..cfg.events {
        while let Some(&(at, class)) = plan.get(next) {
            if at > i {
                break;
            }
            world.inject_class(class, &mut out);
            next += 1;
        }
        world.step(cfg.events - i, &mut out);
    }
    for &(_, class) in &plan[next..] {
        world.inject_class(class, &mut out);
    }
    world.close(&mut out);
    out.finish();

    AnswerKey {
        seed: cfg.seed,
        transactions: out.transactions,
        lines: out.lines,
        redeliveries: out.redelivered,
        faults: std::mem::take(&mut out.faults),
    }
}

/// Tracks where each (realm, system) stream of an emitted world ends, to close it with
/// heartbeats: a live auditor applies an event only once the stream has moved a reorder
/// window past it, so a world that simply stops would leave its last seconds waiting.
/// Real systems keep sending heartbeats; a published simulation ends with them.
#[derive(Debug, Default, Clone)]
pub struct StreamTails {
    last_seq: std::collections::BTreeMap<(String, String), u64>,
    max_ts: Option<Timestamp>,
}

impl StreamTails {
    /// Notes one emitted line (lines that do not decode are ignored).
    pub fn observe(&mut self, line: &[u8]) {
        if let Ok(e) = crate::core::event::decode(line) {
            let seq = self
                .last_seq
                .entry((e.realm().to_string(), e.wire.system.to_string()))
                .or_insert(0);
            *seq = (*seq).max(e.wire.seq);
            self.max_ts = Some(self.max_ts.map_or(e.ts, |t| t.max(e.ts)));
        }
    }

    /// One heartbeat per stream, `after` past the newest event, continuing each seq.
    pub fn heartbeats(&self, after: Duration) -> Vec<Vec<u8>> {
        let Some(max_ts) = self.max_ts else {
            return Vec::new();
        };
        let ts = max_ts.saturating_add(after).to_rfc3339();
        self.last_seq
            .iter()
            .map(|((realm, system), seq)| {
                let ev = crate::core::event::WireEvent {
                    v: 1,
                    tx_id: format!("closing-{realm}-{system}-{}", seq + 1).into(),
                    realm: Some(realm.as_str().into()),
                    system: system.as_str().into(),
                    seq: seq + 1,
                    ts: ts.as_str().into(),
                    kind: "heartbeat".into(),
                    actor: None,
                    grant: None,
                    postings: SmallVec::new(),
                    items: SmallVec::new(),
                };
                serde_json::to_vec(&ev).expect("a wire event always serializes")
            })
            .collect()
    }
}
