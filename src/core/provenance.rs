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

    /// Journal positions of the taint's transactions (what copies were traded for is
    /// in their postings).
    pub fn taint_positions(&self) -> Vec<i64> {
        let mut p: Vec<i64> = self
            .taint
            .iter()
            .map(|t| self.steps[t.step].position)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Gives each taint entry the postings of its transaction.
    pub fn attach_postings(&mut self, postings: &[OtherPosting]) {
        let mut by_tx: BTreeMap<&str, Vec<Leg>> = BTreeMap::new();
        for p in postings {
            by_tx.entry(p.tx_id.as_str()).or_default().push((
                p.account.clone(),
                p.asset.clone(),
                p.delta,
            ));
        }
        for t in &mut self.taint {
            if let Some(legs) = by_tx.get(t.tx_id.as_str()) {
                t.postings.clone_from(legs);
            }
        }
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
/// The taint's postings are left empty: [`ItemTrace::taint_positions`] says which
/// transactions to read them from, [`ItemTrace::attach_postings`] fills them in.
pub fn trace_item(item: &str, steps: Vec<ItemStep>) -> ItemTrace {
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
                postings: Vec::new(),
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
//
// An account can have 100,000s of postings, so its trace never reads them all: the
// daemon rolls up each account's totals and counterparties as it journals (the pure
// part is [`counterparties`], per transaction), and `adapters::journal` reads the
// rollups plus the newest postings. Where the account crossed below zero is what the
// engine raised: its `balance.overdraft` findings (one per crossing, in applied order).

/// One posting to the traced account.
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
    /// The balance of `row.asset` in `row.realm` after this posting (i128: a sum of
    /// i64 deltas).
    #[serde(serialize_with = "ser_i128")]
    pub balance: i128,
}

/// The journal's final balance of one asset in one realm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssetBalance {
    pub realm: String,
    pub asset: String,
    #[serde(serialize_with = "ser_i128")]
    pub balance: i128,
    pub postings: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counterparty {
    pub realm: String,
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
    /// Every posting the journal holds for the account (and asset, if asked).
    pub postings: u64,
    /// Final balance per realm and asset.
    pub balances: Vec<AssetBalance>,
    /// The newest postings (as many as asked), in applied order, with the running
    /// balance of their realm and asset computed over the whole history.
    pub history: Vec<BalancePoint>,
    /// Postings where a balance went from ≥ 0 to < 0, in applied order: the engine's
    /// `balance.overdraft` findings (`world:` accounts may go negative and have none;
    /// at most [`CROSSINGS_MAX`]).
    pub below_zero: Vec<BalancePoint>,
    /// The largest positive postings, largest first.
    pub largest_inflows: Vec<PostingRow>,
    /// Largest first by total volume (at most as many as asked).
    pub counterparties: Vec<Counterparty>,
    /// How many (account, asset) counterparties there are in all.
    pub counterparties_total: u64,
}

impl AccountTrace {
    /// Whether `row` is one of the below-zero crossings.
    pub fn crossed_at(&self, row: &PostingRow) -> bool {
        self.below_zero.iter().any(|z| {
            (z.row.position, &z.row.tx_id, &z.row.asset) == (row.position, &row.tx_id, &row.asset)
        })
    }
}

/// At most this many below-zero crossings are listed (an account that crosses more
/// often is a finding of its own; the first ones are what an investigator needs).
pub const CROSSINGS_MAX: i64 = 1_000;

fn ser_i128<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
    // JSON numbers lose precision past 2^53 in most readers: say it as a string.
    s.serialize_str(&v.to_string())
}

/// A counterparty posting: in transaction `tx_id`, `account` moved `delta` of `asset`.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherPosting {
    pub tx_id: String,
    pub account: String,
    pub asset: String,
    pub delta: i64,
}

/// One counterparty relation in a transaction: `account` and `counterparty` moved
/// `amount` of `asset` between them (> 0: `account` received it; < 0: sent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterpartyLeg<'a> {
    pub account: &'a str,
    pub asset: &'a str,
    pub counterparty: &'a str,
    pub amount: i64,
}

/// A transaction's counterparties, from its postings `(account, asset, delta)`.
///
/// Each account's net change of each asset is compared with every other account's
/// net change of that asset: when their signs are opposite, the two are counterparties
/// and the amount between them is the smaller of the two nets (an auction buyer who
/// pays 100 to a seller who nets 95 after a 5 fee: 95 between buyer and seller, 5
/// between buyer and the fee account; the seller and the fee account are on the same
/// side). Both directions are listed, in order of first appearance.
pub fn counterparties(postings: &[(String, String, i64)]) -> Vec<CounterpartyLeg<'_>> {
    let mut nets: Vec<(&str, &str, i128)> = Vec::new();
    for (account, asset, delta) in postings {
        match nets.iter_mut().find(|(a, s, _)| a == account && s == asset) {
            Some(n) => n.2 += i128::from(*delta),
            None => nets.push((account, asset, i128::from(*delta))),
        }
    }
    let mut out = Vec::new();
    for &(account, asset, mine) in &nets {
        for &(other, other_asset, theirs) in &nets {
            if other == account || other_asset != asset || mine == 0 || theirs == 0 {
                continue;
            }
            if (mine > 0) == (theirs > 0) {
                continue; // same side
            }
            let amount =
                i64::try_from(mine.unsigned_abs().min(theirs.unsigned_abs())).unwrap_or(i64::MAX);
            out.push(CounterpartyLeg {
                account,
                asset,
                counterparty: other,
                amount: if mine > 0 { amount } else { -amount },
            });
        }
    }
    out
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

    #[test]
    fn clean_history_has_one_copy_and_no_fork() {
        let t = trace_item(
            "i",
            vec![
                step(1, "t1", "world:loot", "player:1/bag"),
                step(2, "t2", "player:1/bag", "mail:1"),
                step(3, "t3", "mail:1", "player:2/bag"),
            ],
        );
        assert_eq!(t.copies.len(), 1);
        assert!(t.forks.is_empty());
        assert!(t.taint.is_empty());
        assert_eq!(t.copies[0].location, "player:2/bag");
    }

    #[test]
    fn double_mint_forks_at_the_second_mint() {
        let mut t = trace_item(
            "i",
            vec![
                step(1, "t1", "world:loot", "player:1/bag"),
                step(2, "t2", "world:store", "player:2/bag"),
                step(3, "t3", "player:2/bag", "trade:9"),
                step(4, "t4", "trade:9", "player:3/bag"),
            ],
        );
        assert_eq!(t.taint_positions(), [2, 3, 4]);
        t.attach_postings(&[OtherPosting {
            tx_id: "t4".into(),
            account: "player:3".into(),
            asset: "gold".into(),
            delta: -50,
        }]);
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
        assert!(t.taint[0].postings.is_empty());
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
        let t = trace_item("i", vec![step(1, "t1", "player:1/bag", "player:1/bank")]);
        assert!(t.forks.is_empty());
        assert_eq!(t.copies.len(), 1);
    }

    fn leg(a: &str, asset: &str, d: i64) -> (String, String, i64) {
        (a.into(), asset.into(), d)
    }

    #[test]
    fn counterparties_are_the_opposite_side_of_each_accounts_net() {
        // An auction sale: the buyer pays, the seller gets the price and pays the fee.
        let legs = vec![
            leg("player:buyer", "gold", -100),
            leg("player:seller", "gold", 100),
            leg("player:seller", "gold", -5),
            leg("world:auction_fee", "gold", 5),
            leg("player:buyer", "gems", 1),
            leg("world:loot", "gems", -1),
        ];
        let pairs: Vec<(&str, &str, &str, i64)> = counterparties(&legs)
            .iter()
            .map(|c| (c.account, c.asset, c.counterparty, c.amount))
            .collect();
        assert_eq!(
            pairs,
            [
                // The seller nets +95; the fee account is on the seller's side.
                ("player:buyer", "gold", "player:seller", -95),
                ("player:buyer", "gold", "world:auction_fee", -5),
                ("player:seller", "gold", "player:buyer", 95),
                ("world:auction_fee", "gold", "player:buyer", 5),
                ("player:buyer", "gems", "world:loot", 1),
                ("world:loot", "gems", "player:buyer", -1),
            ]
        );
        // A transfer to oneself nets to zero: no counterparty.
        let own = vec![leg("player:1", "gold", 7), leg("player:1", "gold", -7)];
        assert!(counterparties(&own).is_empty());
    }

    #[test]
    fn dot_quotes_hostile_names() {
        let t = trace_item(
            "a\"b",
            vec![
                step(1, "t\"1", "world:loot", "player:1/bag"),
                step(2, "t2", "world:loot", "player:2/bag"),
            ],
        );
        let d = to_dot(&t);
        assert!(d.starts_with("digraph \"a\\\"b\""), "{d}");
        assert!(d.contains("c0 -> c1"), "{d}");
    }
}
