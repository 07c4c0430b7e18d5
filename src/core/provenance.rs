//! Provenance for support investigations (issue #6): an item's copy tree, its fork
//! point and taint, and an account's balance history — computed from journal rows the
//! caller fetched, in the order the engine applied them (`ts`, then journal position).
//!
//! Pure: no I/O, no clock. The adapter (`adapters::journal`) reads the rows; the CLI and
//! the web console render the result.
//!
//! Copy semantics (the investigator's view, which may differ from the ledger's
//! bookkeeping): a move takes the copy that is at `from`. When no copy is at `from`
//! but the item exists elsewhere, the game *handed out another copy* (a second mail
//! receive, a listing both cancelled and bought): that move is a fork. A mint from a
//! `world:` location while a copy is alive is a fork (double mint); a move of an item
//! whose every copy was burned is a fork (resurrection). A move to a `world:` location
//! burns the copy.

use std::collections::BTreeMap;

use serde::Serialize;

/// One item move as journaled (`journal_items` joined with `journal`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemStep {
    pub position: i64,
    pub tx_id: String,
    pub realm: String,
    pub system: String,
    pub kind: String,
    /// Microseconds since the epoch.
    pub ts_us: i64,
    pub actor: Option<String>,
    pub from: String,
    pub to: String,
}

/// One leg of a transaction: (account, asset, delta).
pub type Leg = (String, String, i64);

/// How a fork created its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkKind {
    /// Minted from a `world:` location while a copy was alive.
    DoubleMint,
    /// Moved out of a location that held no copy while a copy was alive elsewhere
    /// (double receive, cancel/buy race).
    SecondRelease,
    /// Moved or minted after every copy was burned.
    Resurrection,
}

impl ForkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForkKind::DoubleMint => "double_mint",
            ForkKind::SecondRelease => "second_release",
            ForkKind::Resurrection => "resurrection",
        }
    }
}

/// One copy of the item. Copy 0 is the original (the first one the journal shows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Copy {
    pub id: usize,
    /// The copy it was forked from (`None` for the original, or for a copy whose item
    /// the journal first shows outside a mint — history pruned or never recorded).
    pub parent: Option<usize>,
    /// Index into `steps` of the step that created it.
    pub born_step: usize,
    /// Where it is now (its last `to`), or the `world:` sink that burned it.
    pub location: String,
    pub burned: bool,
    /// Indexes into `steps` of every step that moved this copy, in order.
    pub steps: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fork {
    pub step: usize,
    pub tx_id: String,
    pub kind: ForkKind,
    /// The copy that came into existence.
    pub copy: usize,
    pub parent: usize,
}

/// A transfer of a copy from the fork on into an owner's hands, and what moved the
/// other way in the same transaction (what the copy was traded for).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Taint {
    pub step: usize,
    pub tx_id: String,
    pub copy: usize,
    /// The owner (`player:42`) that received the copy.
    pub receiver: String,
    pub from_owner: String,
    /// Postings of the same transaction: (account, asset, delta).
    pub postings: Vec<Leg>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemTrace {
    pub item: String,
    pub steps: Vec<ItemStep>,
    /// Per step: the copy it moved or created.
    pub step_copy: Vec<usize>,
    pub copies: Vec<Copy>,
    /// Every fork, in order; the first is the fork point.
    pub forks: Vec<Fork>,
    pub taint: Vec<Taint>,
}

impl ItemTrace {
    pub fn fork_point(&self) -> Option<&Fork> {
        self.forks.first()
    }

    pub fn live_copies(&self) -> impl Iterator<Item = &Copy> {
        self.copies.iter().filter(|c| !c.burned)
    }
}

/// `world:` locations mint and burn (events-v1).
pub fn is_world(loc: &str) -> bool {
    loc.starts_with("world:")
}

/// The owner part of a location: `player:42/bag` → `player:42`.
pub fn owner(loc: &str) -> &str {
    loc.split_once('/').map_or(loc, |(o, _)| o)
}

/// Builds the copy tree. `steps` must be in applied order (`ts`, then position);
/// `postings_of(tx_id)` gives the postings of a transaction for the taint.
pub fn trace_item(
    item: &str,
    steps: Vec<ItemStep>,
    postings_of: &dyn Fn(&str) -> Vec<Leg>,
) -> ItemTrace {
    let mut copies: Vec<Copy> = Vec::new();
    let mut forks = Vec::new();
    let mut step_copy = Vec::with_capacity(steps.len());
    // The copy that most recently left each location: the parent of a second release.
    let mut last_left: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        let live = |copies: &[Copy]| copies.iter().filter(|c| !c.burned).count();
        let at_from = copies
            .iter()
            .position(|c| !c.burned && c.location == s.from);
        let copy = match at_from {
            Some(c) if !is_world(&s.from) => c,
            _ => {
                let any_live = live(&copies) > 0;
                let kind = if copies.is_empty() {
                    None
                } else if !any_live {
                    Some(ForkKind::Resurrection)
                } else if is_world(&s.from) {
                    Some(ForkKind::DoubleMint)
                } else {
                    Some(ForkKind::SecondRelease)
                };
                let parent = match kind {
                    None => None,
                    Some(ForkKind::Resurrection) => copies.iter().rposition(|c| c.burned),
                    Some(ForkKind::SecondRelease) => last_left
                        .get(s.from.as_str())
                        .copied()
                        .or_else(|| copies.iter().position(|c| !c.burned)),
                    Some(ForkKind::DoubleMint) => copies.iter().position(|c| !c.burned),
                };
                let id = copies.len();
                copies.push(Copy {
                    id,
                    parent,
                    born_step: i,
                    location: s.from.clone(),
                    burned: false,
                    steps: Vec::new(),
                });
                if let (Some(kind), Some(parent)) = (kind, parent) {
                    forks.push(Fork {
                        step: i,
                        tx_id: s.tx_id.clone(),
                        kind,
                        copy: id,
                        parent,
                    });
                }
                id
            }
        };
        last_left.insert(s.from.as_str(), copy);
        let c = &mut copies[copy];
        c.location = s.to.clone();
        c.burned = is_world(&s.to);
        c.steps.push(i);
        step_copy.push(copy);
    }
    let mut taint = Vec::new();
    if let Some(first) = forks.first() {
        for (i, s) in steps.iter().enumerate().skip(first.step) {
            let (to, from) = (owner(&s.to), owner(&s.from));
            if is_world(&s.to) || to == from {
                continue;
            }
            taint.push(Taint {
                step: i,
                tx_id: s.tx_id.clone(),
                copy: step_copy[i],
                receiver: to.to_string(),
                from_owner: from.to_string(),
                postings: postings_of(&s.tx_id),
            });
        }
    }
    ItemTrace {
        item: item.to_string(),
        steps,
        step_copy,
        copies,
        forks,
        taint,
    }
}

/// RFC 3339 (UTC, milliseconds) from microseconds since the epoch, for display.
pub fn fmt_ts_us(us: i64) -> String {
    let ns = i128::from(us) * 1_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| us.to_string())
}

// ----- accounts ---------------------------------------------------------------------

/// One posting to the traced account, with the transaction's other postings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostingRow {
    pub position: i64,
    pub tx_id: String,
    pub realm: String,
    pub system: String,
    pub kind: String,
    pub ts_us: i64,
    pub asset: String,
    pub delta: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalancePoint {
    pub row: PostingRow,
    /// The balance of `row.asset` after this posting (i128: a sum of i64 deltas).
    #[serde(serialize_with = "ser_i128")]
    pub balance: i128,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counterparty {
    pub account: String,
    pub asset: String,
    /// Sum of what the traced account received in transactions with this party.
    pub received: i64,
    pub sent: i64,
    pub transactions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountTrace {
    pub account: String,
    /// Balance history in applied order, running total per asset.
    pub history: Vec<BalancePoint>,
    /// Final balance per asset.
    #[serde(serialize_with = "ser_balances")]
    pub balances: BTreeMap<String, i128>,
    /// Indexes into `history` where an asset's balance went from ≥ 0 to < 0.
    pub below_zero: Vec<usize>,
    /// Indexes into `history` of the largest positive postings, largest first.
    pub largest_inflows: Vec<usize>,
    /// Largest first by total volume.
    pub counterparties: Vec<Counterparty>,
}

fn ser_i128<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
    // JSON numbers lose precision past 2^53 in most readers: say it as a string.
    s.serialize_str(&v.to_string())
}

fn ser_balances<S: serde::Serializer>(v: &BTreeMap<String, i128>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, b) in v {
        m.serialize_entry(k, &b.to_string())?;
    }
    m.end()
}

/// A counterparty posting: in transaction `tx_id`, `account` moved `delta` of `asset`.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherPosting {
    pub tx_id: String,
    pub account: String,
    pub asset: String,
    pub delta: i64,
}

/// Running totals per asset, below-zero crossings, the `top` largest inflows and the
/// counterparties (accounts posting the same asset with the opposite sign in the same
/// transaction). `rows` must be in applied order.
pub fn trace_account(
    account: &str,
    rows: Vec<PostingRow>,
    others: &[OtherPosting],
    top: usize,
) -> AccountTrace {
    let mut balances: BTreeMap<String, i128> = BTreeMap::new();
    let mut history = Vec::with_capacity(rows.len());
    let mut below_zero = Vec::new();
    for row in rows {
        let b = balances.entry(row.asset.clone()).or_insert(0);
        let before = *b;
        *b += i128::from(row.delta);
        if before >= 0 && *b < 0 {
            below_zero.push(history.len());
        }
        history.push(BalancePoint { balance: *b, row });
    }
    let mut inflows: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].row.delta > 0)
        .collect();
    inflows.sort_by(|&a, &b| {
        history[b]
            .row
            .delta
            .cmp(&history[a].row.delta)
            .then(a.cmp(&b))
    });
    inflows.truncate(top);

    // Our net delta per (tx, asset), to know which side we were on.
    let mut ours: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for p in &history {
        *ours
            .entry((p.row.tx_id.as_str(), p.row.asset.as_str()))
            .or_insert(0) += p.row.delta;
    }
    let mut parties: BTreeMap<(String, String), Counterparty> = BTreeMap::new();
    for o in others {
        if o.account == account {
            continue;
        }
        let Some(&mine) = ours.get(&(o.tx_id.as_str(), o.asset.as_str())) else {
            continue;
        };
        if mine == 0 || o.delta == 0 || (mine > 0) == (o.delta > 0) {
            continue; // same side: not our counterparty in this asset
        }
        let c = parties
            .entry((o.account.clone(), o.asset.clone()))
            .or_insert_with(|| Counterparty {
                account: o.account.clone(),
                asset: o.asset.clone(),
                received: 0,
                sent: 0,
                transactions: 0,
            });
        // What moved between us is bounded by both sides.
        let amount = mine.unsigned_abs().min(o.delta.unsigned_abs());
        let amount = i64::try_from(amount).unwrap_or(i64::MAX);
        if mine > 0 {
            c.received = c.received.saturating_add(amount);
        } else {
            c.sent = c.sent.saturating_add(amount);
        }
        c.transactions += 1;
    }
    let mut counterparties: Vec<Counterparty> = parties.into_values().collect();
    counterparties.sort_by(|a, b| {
        (b.received.saturating_add(b.sent))
            .cmp(&a.received.saturating_add(a.sent))
            .then_with(|| a.account.cmp(&b.account))
    });
    AccountTrace {
        account: account.to_string(),
        history,
        balances,
        below_zero,
        largest_inflows: inflows,
        counterparties,
    }
}

/// Graphviz `dot` of the copy tree: one node per copy (where it is now), an edge per
/// fork labelled with its transaction. Strings are quoted with `"` and `\` escaped.
pub fn to_dot(t: &ItemTrace) -> String {
    /// Escapes for inside a dot double-quoted string.
    fn esc(s: &str) -> String {
        let mut o = String::with_capacity(s.len());
        for ch in s.chars() {
            match ch {
                '"' | '\\' => {
                    o.push('\\');
                    o.push(ch);
                }
                '\n' | '\r' => o.push(' '),
                _ => o.push(ch),
            }
        }
        o
    }
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", esc(&t.item));
    for c in &t.copies {
        let born = &t.steps[c.born_step];
        let color = if c.parent.is_some() {
            ", color=red"
        } else {
            ""
        };
        out.push_str(&format!(
            "  c{} [shape=box, label=\"copy {}\\nborn {} ({})\\n{} {}\"{color}];\n",
            c.id,
            c.id,
            esc(&born.tx_id),
            esc(&born.kind),
            if c.burned { "burned at" } else { "now at" },
            esc(&c.location),
        ));
    }
    for f in &t.forks {
        out.push_str(&format!(
            "  c{} -> c{} [label=\"{} {}\", color=red];\n",
            f.parent,
            f.copy,
            f.kind.as_str(),
            esc(&f.tx_id)
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(pos: i64, tx: &str, from: &str, to: &str) -> ItemStep {
        ItemStep {
            position: pos,
            tx_id: tx.to_string(),
            realm: "r".into(),
            system: "s".into(),
            kind: "k".into(),
            ts_us: pos,
            actor: None,
            from: from.into(),
            to: to.into(),
        }
    }

    fn none(_: &str) -> Vec<Leg> {
        Vec::new()
    }

    #[test]
    fn clean_history_has_one_copy_and_no_fork() {
        let t = trace_item(
            "i",
            vec![
                step(1, "t1", "world:loot", "player:1/bag"),
                step(2, "t2", "player:1/bag", "mail:1"),
                step(3, "t3", "mail:1", "player:2/bag"),
            ],
            &none,
        );
        assert_eq!(t.copies.len(), 1);
        assert!(t.forks.is_empty());
        assert!(t.taint.is_empty());
        assert_eq!(t.copies[0].location, "player:2/bag");
    }

    #[test]
    fn double_mint_forks_at_the_second_mint() {
        let t = trace_item(
            "i",
            vec![
                step(1, "t1", "world:loot", "player:1/bag"),
                step(2, "t2", "world:store", "player:2/bag"),
                step(3, "t3", "player:2/bag", "trade:9"),
                step(4, "t4", "trade:9", "player:3/bag"),
            ],
            &|tx| {
                if tx == "t4" {
                    vec![("player:3".into(), "gold".into(), -50)]
                } else {
                    vec![]
                }
            },
        );
        let f = t.fork_point().expect("a fork");
        assert_eq!(
            (f.tx_id.as_str(), f.kind, f.parent, f.copy),
            ("t2", ForkKind::DoubleMint, 0, 1)
        );
        let locs: Vec<&str> = t.live_copies().map(|c| c.location.as_str()).collect();
        assert_eq!(locs, ["player:1/bag", "player:3/bag"]);
        let receivers: Vec<&str> = t.taint.iter().map(|x| x.receiver.as_str()).collect();
        assert_eq!(receivers, ["player:2", "trade:9", "player:3"]);
        assert_eq!(t.taint[2].postings.len(), 1);
    }

    #[test]
    fn second_release_from_an_emptied_escrow_forks() {
        let t = trace_item(
            "i",
            vec![
                step(1, "t1", "world:loot", "player:1/bag"),
                step(2, "t2", "player:1/bag", "mail:1"),
                step(3, "t3", "mail:1", "player:2/bag"),
                step(4, "t4", "mail:1", "player:2/bag"),
            ],
            &none,
        );
        let f = t.fork_point().expect("a fork");
        assert_eq!((f.tx_id.as_str(), f.kind), ("t4", ForkKind::SecondRelease));
        assert_eq!(t.live_copies().count(), 2);
    }

    #[test]
    fn resurrection_forks_from_the_burned_copy() {
        let t = trace_item(
            "i",
            vec![
                step(1, "t1", "world:loot", "player:1/bag"),
                step(2, "t2", "player:1/bag", "world:vendor"),
                step(3, "t3", "player:1/bag", "player:1/equipped"),
            ],
            &none,
        );
        let f = t.fork_point().expect("a fork");
        assert_eq!(
            (f.tx_id.as_str(), f.kind, f.parent),
            ("t3", ForkKind::Resurrection, 0)
        );
        assert!(t.copies[0].burned);
        assert_eq!(t.live_copies().count(), 1);
    }

    #[test]
    fn unrecorded_origin_is_not_a_fork() {
        let t = trace_item(
            "i",
            vec![step(1, "t1", "player:1/bag", "player:1/bank")],
            &none,
        );
        assert!(t.forks.is_empty());
        assert_eq!(t.copies.len(), 1);
    }

    fn prow(pos: i64, tx: &str, asset: &str, delta: i64) -> PostingRow {
        PostingRow {
            position: pos,
            tx_id: tx.into(),
            realm: "r".into(),
            system: "s".into(),
            kind: "k".into(),
            ts_us: pos,
            asset: asset.into(),
            delta,
        }
    }

    #[test]
    fn account_running_totals_crossings_inflows_and_counterparties() {
        let rows = vec![
            prow(1, "t1", "gold", 100),
            prow(2, "t2", "gold", -150),
            prow(3, "t3", "gems", 5),
            prow(4, "t4", "gold", 500),
            prow(5, "t5", "gold", -600),
        ];
        let o = |tx: &str, a: &str, asset: &str, d: i64| OtherPosting {
            tx_id: tx.into(),
            account: a.into(),
            asset: asset.into(),
            delta: d,
        };
        let others = vec![
            o("t1", "world:loot", "gold", -100),
            o("t2", "player:2", "gold", 150),
            o("t4", "player:2", "gold", -500),
            o("t5", "world:vendor", "gold", 600),
            o("t5", "player:9", "gold", -3), // same side as nobody: not a counterparty
            o("t3", "player:1", "gems", 5),  // same sign as ours: not a counterparty
        ];
        let t = trace_account("player:1", rows, &others, 2);
        let bal: Vec<i128> = t.history.iter().map(|p| p.balance).collect();
        assert_eq!(bal, [100, -50, 5, 450, -150]);
        assert_eq!(t.below_zero, [1, 4]);
        assert_eq!(t.largest_inflows, [3, 0]);
        assert_eq!(t.balances["gold"], -150);
        let p2 = t
            .counterparties
            .iter()
            .find(|c| c.account == "player:2")
            .unwrap();
        assert_eq!((p2.received, p2.sent, p2.transactions), (500, 150, 2));
        assert_eq!(t.counterparties[0].account, "player:2");
        assert!(t.counterparties.iter().all(|c| c.account != "player:9"));
    }

    #[test]
    fn dot_quotes_hostile_names() {
        let t = trace_item(
            "a\"b",
            vec![
                step(1, "t\"1", "world:loot", "player:1/bag"),
                step(2, "t2", "world:loot", "player:2/bag"),
            ],
            &none,
        );
        let d = to_dot(&t);
        assert!(d.starts_with("digraph \"a\\\"b\""), "{d}");
        assert!(d.contains("c0 -> c1"), "{d}");
    }
}
