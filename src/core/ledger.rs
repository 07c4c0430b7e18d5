//! The ledger state machine: balances, item locations, grants, escrow holdings and
//! velocity. Events arrive here already deduplicated and in causal order (the engine's
//! reorder window did that); this module applies each one *as it happened* and raises
//! the finding at the root cause, once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use smallvec::SmallVec;

use super::finding::{Finding, Invariant, fingerprint};
use super::intern::{Class, Interner, Sym};
use super::policy::Policy;
use super::time::Timestamp;

/// An accepted event with the identifiers the ledger uses interned (`kind`, `actor` and
/// item `template` are journaled by the daemon but play no part in any invariant).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Inline up to 24 bytes (most tx_ids): no allocation made on the pipeline's decode
    /// thread to be freed on the engine's.
    pub tx_id: CompactString,
    pub realm: Sym,
    pub system: Sym,
    pub seq: u64,
    pub ts: Timestamp,
    pub grant: Option<CompactString>,
    /// Inline up to two each (most events: 0–2 postings, 0–1 item moves), so most
    /// events are built without allocating — on the pipeline's decode thread, and freed
    /// on the engine's.
    pub postings: SmallVec<[Posting; 2]>,
    pub items: SmallVec<[ItemMove; 2]>,
    pub digest: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Posting {
    pub account: Sym,
    pub asset: Sym,
    pub delta: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ItemMove {
    pub item: Sym,
    pub from: Sym,
    pub to: Sym,
}

/// (realm, account, asset).
type BalanceKey = (Sym, Sym, Sym);
/// (realm, item).
type ItemKey = (Sym, Sym);

/// Where an item's copies are. Stored packed in 4 bytes ([`PackedSlot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum ItemSlot {
    /// Exactly one live copy, at this location.
    At(Sym),
    /// Two or more live copies (or copies after a duplication): see `Ledger::copies`.
    Copies,
    /// Burned (moved to a `world:` sink); a later move resurrects it.
    Burned,
}

/// An [`ItemSlot`] in one `u32`: 0 is `Copies`, `u32::MAX` is `Burned`, anything else a
/// location's [`Sym`] (never 0 nor `u32::MAX`). The item table's entries are 12 bytes
/// instead of 16; it holds one entry per item the realm has ever seen. Snapshots hold
/// the `ItemSlot` itself.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(from = "ItemSlot", into = "ItemSlot")]
struct PackedSlot(u32);

impl PackedSlot {
    fn get(self) -> ItemSlot {
        match self.0 {
            0 => ItemSlot::Copies,
            u32::MAX => ItemSlot::Burned,
            key => ItemSlot::At(Sym::from_key(key)),
        }
    }
}

impl From<ItemSlot> for PackedSlot {
    fn from(s: ItemSlot) -> PackedSlot {
        PackedSlot(match s {
            ItemSlot::Copies => 0,
            ItemSlot::Burned => u32::MAX,
            ItemSlot::At(loc) => loc.key(),
        })
    }
}

impl From<PackedSlot> for ItemSlot {
    fn from(p: PackedSlot) -> ItemSlot {
        p.get()
    }
}

#[derive(Serialize, Deserialize)]
struct EscrowHold {
    since: Timestamp,
    opened_by: Box<str>,
    system: Sym,
    /// Non-zero balances plus item copies held.
    holdings: u32,
}

/// An `i128` stored as bytes (alignment 1 instead of 16), so a balance entry of the
/// table is 28 bytes instead of 32 and a velocity entry 72 instead of 80. Snapshots hold
/// the `i128`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i128", into = "i128")]
struct Amount([u8; 16]);

impl Amount {
    fn get(self) -> i128 {
        i128::from_ne_bytes(self.0)
    }

    /// Adds `delta` and gives (before, after).
    fn add(&mut self, delta: i64) -> (i128, i128) {
        let before = self.get();
        let after = before + i128::from(delta);
        *self = after.into();
        (before, after)
    }
}

impl From<i128> for Amount {
    fn from(v: i128) -> Amount {
        Amount(v.to_ne_bytes())
    }
}

impl From<Amount> for i128 {
    fn from(a: Amount) -> i128 {
        a.get()
    }
}

#[derive(Serialize, Deserialize)]
struct VelocityTrack {
    inflows: VecDeque<(Timestamp, i64)>,
    sum: Amount,
    flagged: bool,
}

/// Memory of redeemed grants, bounded FIFO (policy `stream.grant_memory_max`).
#[derive(Serialize, Deserialize)]
struct GrantMemory {
    by_key: FxHashMap<u128, Box<str>>,
    order: VecDeque<u128>,
    max: usize,
    forgotten: u64,
}

impl GrantMemory {
    /// 128 bits of xxh3 over (realm, grant): collisions between distinct grants are
    /// negligible (~n²/2¹²⁹) and it is cheap on every loot and quest event.
    /// The hash is of `len(realm) as u32 LE ‖ realm ‖ grant`, computed one-shot (the
    /// streaming hasher's setup cost more than the hashing); snapshots hold these keys.
    fn key(realm: &str, grant: &str) -> u128 {
        let mut buf = smallvec::SmallVec::<[u8; 192]>::new();
        buf.extend_from_slice(&(realm.len() as u32).to_le_bytes());
        buf.extend_from_slice(realm.as_bytes());
        buf.extend_from_slice(grant.as_bytes());
        xxhash_rust::xxh3::xxh3_128(&buf)
    }

    /// The tx that redeemed the grant first, if another one did.
    fn redeem(&mut self, key: u128, tx_id: &str) -> Option<&str> {
        if self.by_key.contains_key(&key) {
            let first = &self.by_key[&key];
            return (&**first != tx_id).then_some(&**first);
        }
        if self.by_key.len() >= self.max
            && let Some(old) = self.order.pop_front()
        {
            self.by_key.remove(&old);
            self.forgotten += 1;
        }
        self.by_key.insert(key, tx_id.into());
        self.order.push_back(key);
        None
    }
}

/// Counters of what the ledger did, for summaries and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerStats {
    pub applied: u64,
    pub postings: u64,
    pub item_moves: u64,
    pub grants_forgotten: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Ledger {
    balances: FxHashMap<BalanceKey, Amount>,
    items: FxHashMap<ItemKey, PackedSlot>,
    copies: FxHashMap<ItemKey, Vec<Sym>>,
    grants: GrantMemory,
    escrow: FxHashMap<(Sym, Sym), EscrowHold>,
    escrow_deadlines: BinaryHeap<Reverse<(Timestamp, Sym, Sym, Timestamp)>>,
    velocity: FxHashMap<(Sym, Sym, u8), VelocityTrack>,
    /// Derived from the policy (its velocity rules' assets); rebuilt on restore.
    #[serde(skip)]
    velocity_assets: Vec<Option<Sym>>,
    stats: LedgerStats,
}

/// Everything a ledger operation needs besides its own state.
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    pub interner: &'a mut Interner,
    pub now: Timestamp,
    pub out: &'a mut Vec<Finding>,
}

impl Ctx<'_> {
    fn class(&mut self, sym: Sym) -> Class {
        let policy = self.policy;
        self.interner.class(sym, |s| Class {
            world: super::event::is_world(s),
            escrow_rule: policy
                .escrow
                .iter()
                .position(|r| s.starts_with(&r.prefix))
                .map(|i| i as u8),
            velocity_rules: policy
                .velocity
                .iter()
                .enumerate()
                .filter(|(_, r)| s.starts_with(&r.account_prefix))
                .fold(
                    0u8,
                    |bits, (i, _)| if i < 8 { bits | (1 << i) } else { bits },
                ),
        })
    }

    fn s(&self, sym: Sym) -> String {
        self.interner.resolve(sym).to_string()
    }

    /// Emits a finding about `ev`. `key` are the parts that identify the root cause
    /// beyond invariant and realm.
    fn raise(
        &mut self,
        inv: Invariant,
        ev: &Event,
        subject: Option<String>,
        key: &[&[u8]],
        message: String,
        evidence: serde_json::Value,
    ) {
        let realm = self.s(ev.realm);
        self.out.push(Finding {
            invariant: inv,
            severity: self.policy.severity(inv),
            fingerprint: fingerprint(inv, &realm, key),
            realm,
            system: Some(self.s(ev.system)),
            tx_id: Some(ev.tx_id.to_string()),
            seq: Some(ev.seq),
            subject,
            message,
            evidence,
            detected_at: self.now,
        });
    }
}

impl Ledger {
    pub fn new(policy: &Policy, interner: &mut Interner) -> Ledger {
        Ledger {
            balances: FxHashMap::default(),
            items: FxHashMap::default(),
            copies: FxHashMap::default(),
            grants: GrantMemory {
                by_key: FxHashMap::default(),
                order: VecDeque::new(),
                max: policy.stream.grant_memory_max,
                forgotten: 0,
            },
            escrow: FxHashMap::default(),
            escrow_deadlines: BinaryHeap::new(),
            velocity: FxHashMap::default(),
            velocity_assets: policy
                .velocity
                .iter()
                .map(|r| Some(interner.intern(&r.asset)))
                .collect(),
            stats: LedgerStats::default(),
        }
    }

    /// Re-derives what comes from the policy after a restore from a snapshot, so a
    /// policy change between runs takes effect.
    pub fn rebind(&mut self, policy: &Policy, interner: &mut Interner) {
        self.velocity_assets = policy
            .velocity
            .iter()
            .map(|r| Some(interner.intern(&r.asset)))
            .collect();
        self.grants.max = policy.stream.grant_memory_max;
    }

    pub fn stats(&self) -> LedgerStats {
        let mut s = self.stats.clone();
        s.grants_forgotten = self.grants.forgotten;
        s
    }

    /// Balance of `account`'s `asset` in `realm` (0 when never touched).
    pub fn balance(&self, interner: &Interner, realm: &str, account: &str, asset: &str) -> i128 {
        match (
            interner.get(realm),
            interner.get(account),
            interner.get(asset),
        ) {
            (Some(r), Some(a), Some(s)) => self.balances.get(&(r, a, s)).map_or(0, |b| b.get()),
            _ => 0,
        }
    }

    /// The live locations of an item (several after a duplication; none when burned or
    /// unknown).
    pub fn item_locations(&self, interner: &Interner, realm: &str, item: &str) -> Vec<String> {
        let (Some(r), Some(i)) = (interner.get(realm), interner.get(item)) else {
            return Vec::new();
        };
        self.locations((r, i))
            .iter()
            .map(|l| interner.resolve(*l).to_string())
            .collect()
    }

    /// Every non-zero balance, as (realm, account, asset, balance) — the state the
    /// stream implies, for reconciliation and snapshots.
    pub fn balances<'a>(
        &'a self,
        interner: &'a Interner,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a str, i128)> + 'a {
        self.balances
            .iter()
            .filter(|(_, v)| v.get() != 0)
            .map(|((r, a, s), v)| {
                (
                    interner.resolve(*r),
                    interner.resolve(*a),
                    interner.resolve(*s),
                    v.get(),
                )
            })
    }

    /// Every live item copy, as (realm, item, location) — sorted, so two ledgers can be
    /// compared.
    pub fn item_copies(&self, interner: &Interner) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (&(realm, item), _) in self.items.iter() {
            for loc in self.locations((realm, item)) {
                out.push((
                    interner.resolve(realm).to_string(),
                    interner.resolve(item).to_string(),
                    interner.resolve(loc).to_string(),
                ));
            }
        }
        out.sort();
        out
    }

    pub fn live_items(&self) -> usize {
        self.items
            .iter()
            .filter(|(_, s)| s.get() != ItemSlot::Burned)
            .count()
    }

    pub fn live_balances(&self) -> usize {
        self.balances.values().filter(|v| v.get() != 0).count()
    }

    /// Heap bytes of the state tables, estimated from their capacities.
    pub fn heap_bytes(&self) -> usize {
        fn table<K, V>(m: &FxHashMap<K, V>) -> usize {
            m.capacity() * (std::mem::size_of::<(K, V)>() + 1)
        }
        table(&self.balances)
            + table(&self.items)
            + table(&self.copies)
            + self
                .copies
                .values()
                .map(|v| v.capacity() * 4)
                .sum::<usize>()
            + table(&self.grants.by_key)
            + self.grants.by_key.values().map(|t| t.len()).sum::<usize>()
            + self.grants.order.capacity() * 16
            + table(&self.escrow)
            + self.escrow_deadlines.capacity() * 32
            + table(&self.velocity)
            + self
                .velocity
                .values()
                .map(|v| v.inflows.capacity() * 16)
                .sum::<usize>()
    }

    fn locations(&self, key: ItemKey) -> smallvec::SmallVec<[Sym; 2]> {
        match self.items.get(&key).map(|s| s.get()) {
            Some(ItemSlot::At(loc)) => smallvec::smallvec![loc],
            Some(ItemSlot::Copies) => self
                .copies
                .get(&key)
                .map_or_else(Default::default, |v| v.as_slice().into()),
            Some(ItemSlot::Burned) | None => smallvec::SmallVec::new(),
        }
    }

    /// Applies one event in causal order.
    pub fn apply(&mut self, ev: &Event, cx: &mut Ctx<'_>) {
        self.stats.applied += 1;
        if let Some(grant) = &ev.grant {
            let key = GrantMemory::key(cx.interner.resolve(ev.realm), grant);
            if let Some(first) = self.grants.redeem(key, &ev.tx_id) {
                let first = first.to_string();
                cx.raise(
                    Invariant::GrantReused,
                    ev,
                    Some(grant.to_string()),
                    &[grant.as_bytes(), ev.tx_id.as_bytes()],
                    format!(
                        "grant `{grant}` redeemed again by {} (first redeemed by {first})",
                        ev.tx_id
                    ),
                    json!({"grant": &**grant, "first_tx_id": first, "second_tx_id": &*ev.tx_id}),
                );
            }
        }
        for p in &ev.postings {
            self.post(ev, p, cx);
        }
        for m in &ev.items {
            self.move_item(ev, m, cx);
        }
    }

    fn post(&mut self, ev: &Event, p: &Posting, cx: &mut Ctx<'_>) {
        self.stats.postings += 1;
        let class = cx.class(p.account);
        let (before, after) = self
            .balances
            .entry((ev.realm, p.account, p.asset))
            .or_default()
            .add(p.delta);
        if class.world {
            return; // faucets and sinks may go negative: that is total issuance
        }
        if before >= 0 && after < 0 {
            let (account, asset) = (cx.s(p.account), cx.s(p.asset));
            cx.raise(
                Invariant::BalanceOverdraft,
                ev,
                Some(account.clone()),
                &[account.as_bytes(), asset.as_bytes(), ev.tx_id.as_bytes()],
                format!(
                    "{account} went below zero in {asset}: {before} {:+} = {after}",
                    p.delta
                ),
                json!({"account": account, "asset": asset, "balance_before": before.to_string(),
                       "delta": p.delta, "balance_after": after.to_string()}),
            );
        }
        if class.escrow_rule.is_some() && (before == 0) != (after == 0) {
            self.escrow_change(ev, p.account, if after == 0 { -1 } else { 1 }, class, cx);
        }
        if p.delta > 0 && class.velocity_rules != 0 {
            self.velocity_inflow(ev, p, class.velocity_rules, cx);
        }
    }

    fn velocity_inflow(&mut self, ev: &Event, p: &Posting, rules: u8, cx: &mut Ctx<'_>) {
        for (i, rule) in cx.policy.velocity.iter().enumerate().take(8) {
            if rules & (1 << i) == 0 || self.velocity_assets[i] != Some(p.asset) {
                continue;
            }
            let track = self
                .velocity
                .entry((ev.realm, p.account, i as u8))
                .or_insert_with(|| VelocityTrack {
                    inflows: VecDeque::new(),
                    sum: Amount::default(),
                    flagged: false,
                });
            let horizon = ev.ts.saturating_sub(rule.window);
            while let Some(&(ts, amount)) = track.inflows.front() {
                if ts > horizon {
                    break;
                }
                track.sum.add(-amount);
                track.inflows.pop_front();
            }
            track.inflows.push_back((ev.ts, p.delta));
            let (_, sum) = track.sum.add(p.delta);
            let over = sum > i128::from(rule.max_inflow);
            if over && !track.flagged {
                track.flagged = true;
                let window_start = track.inflows.front().map_or(ev.ts, |f| f.0);
                let (account, asset) = (cx.s(p.account), rule.asset.clone());
                cx.raise(
                    Invariant::Velocity,
                    ev,
                    Some(account.clone()),
                    &[
                        account.as_bytes(),
                        asset.as_bytes(),
                        &window_start.0.to_le_bytes(),
                    ],
                    format!(
                        "{account} received {sum} {asset} within {} s (limit {})",
                        rule.window.as_secs(),
                        rule.max_inflow
                    ),
                    json!({"account": account, "asset": asset, "inflow": sum.to_string(),
                           "limit": rule.max_inflow, "window_ms": rule.window.as_millis() as u64,
                           "window_start": window_start, "crossing_delta": p.delta}),
                );
            } else if !over {
                track.flagged = false;
            }
        }
    }

    fn move_item(&mut self, ev: &Event, m: &ItemMove, cx: &mut Ctx<'_>) {
        self.stats.item_moves += 1;
        let key = (ev.realm, m.item);
        let from_class = cx.class(m.from);
        let to_class = cx.class(m.to);
        if self.move_fast(ev, m, key, from_class, to_class, cx) {
            return;
        }
        let slot = self.items.get(&key).map(|s| s.get());
        let mut placed_from: Option<Sym> = None; // the copy's previous location, if any
        match (slot, from_class.world) {
            (Some(ItemSlot::Burned), _) => {
                let item = cx.s(m.item);
                cx.raise(
                    Invariant::ItemResurrected,
                    ev,
                    Some(item.clone()),
                    &[item.as_bytes(), ev.tx_id.as_bytes()],
                    format!(
                        "{item} moved {} → {} after it was burned",
                        cx.s(m.from),
                        cx.s(m.to)
                    ),
                    json!({"item": item, "from": cx.s(m.from), "to": cx.s(m.to)}),
                );
                self.items.remove(&key);
            }
            (Some(_), true) => {
                let item = cx.s(m.item);
                let existing: Vec<String> = self.locations(key).iter().map(|l| cx.s(*l)).collect();
                cx.raise(
                    Invariant::ItemDuplicated,
                    ev,
                    Some(item.clone()),
                    &[item.as_bytes(), ev.tx_id.as_bytes()],
                    format!(
                        "{item} minted from {} into {} while it already exists at {}",
                        cx.s(m.from),
                        cx.s(m.to),
                        existing.join(", ")
                    ),
                    json!({"item": item, "minted_from": cx.s(m.from), "minted_to": cx.s(m.to),
                           "existing_locations": existing}),
                );
            }
            (None, true) => {}
            (None, false) => {
                let item = cx.s(m.item);
                cx.raise(
                    Invariant::ItemPhantomSource,
                    ev,
                    Some(item.clone()),
                    &[item.as_bytes(), ev.tx_id.as_bytes()],
                    format!(
                        "{item} moved out of {} but the stream never created it",
                        cx.s(m.from)
                    ),
                    json!({"item": item, "from": cx.s(m.from), "to": cx.s(m.to),
                           "known_locations": [], "reason": "unknown item"}),
                );
            }
            (Some(_), false) => {
                if self.locations(key).contains(&m.from) {
                    placed_from = Some(m.from);
                } else {
                    let item = cx.s(m.item);
                    let actual: Vec<String> =
                        self.locations(key).iter().map(|l| cx.s(*l)).collect();
                    cx.raise(
                        Invariant::ItemPhantomSource,
                        ev,
                        Some(item.clone()),
                        &[item.as_bytes(), ev.tx_id.as_bytes()],
                        format!(
                            "{item} moved out of {} but it is at {}",
                            cx.s(m.from),
                            actual.join(", ")
                        ),
                        json!({"item": item, "from": cx.s(m.from), "to": cx.s(m.to),
                               "known_locations": actual, "reason": "not at `from`"}),
                    );
                    // Applied as it happened: the game moved the copy it had.
                    placed_from = self.locations(key).first().copied();
                }
            }
        }
        // Take the copy out of where it was.
        if let Some(prev) = placed_from {
            self.remove_copy(key, prev);
            let c = cx.class(prev);
            if c.escrow_rule.is_some() {
                self.escrow_change(ev, prev, -1, c, cx);
            }
        }
        // Put it where it went (a `world:` destination burns it).
        if to_class.world {
            if self.locations(key).is_empty() {
                self.items.insert(key, ItemSlot::Burned.into());
                self.copies.remove(&key);
            }
        } else {
            self.add_copy(key, m.to);
            if to_class.escrow_rule.is_some() {
                self.escrow_change(ev, m.to, 1, to_class, cx);
            }
        }
    }

    /// The two moves that make up nearly all traffic, in one table lookup: a single
    /// copy leaving where the ledger has it, and a mint of an item the ledger has never
    /// seen. Same effect as the general path in `move_item`; false when neither applies.
    fn move_fast(
        &mut self,
        ev: &Event,
        m: &ItemMove,
        key: ItemKey,
        from_class: Class,
        to_class: Class,
        cx: &mut Ctx<'_>,
    ) -> bool {
        use std::collections::hash_map::Entry;
        if from_class.world {
            if to_class.world {
                return false;
            }
            match self.items.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(ItemSlot::At(m.to).into());
                }
                Entry::Occupied(_) => return false,
            }
        } else {
            match self.items.get_mut(&key) {
                Some(slot) if slot.get() == ItemSlot::At(m.from) => {
                    *slot = if to_class.world {
                        ItemSlot::Burned
                    } else {
                        ItemSlot::At(m.to)
                    }
                    .into();
                }
                _ => return false,
            }
            if from_class.escrow_rule.is_some() {
                self.escrow_change(ev, m.from, -1, from_class, cx);
            }
        }
        if !to_class.world && to_class.escrow_rule.is_some() {
            self.escrow_change(ev, m.to, 1, to_class, cx);
        }
        true
    }

    fn remove_copy(&mut self, key: ItemKey, loc: Sym) {
        match self.items.get(&key).map(|s| s.get()) {
            Some(ItemSlot::At(l)) if l == loc => {
                self.items.remove(&key);
            }
            Some(ItemSlot::Copies) => {
                if let Some(v) = self.copies.get_mut(&key) {
                    if let Some(i) = v.iter().position(|l| *l == loc) {
                        v.swap_remove(i);
                    }
                    if v.len() == 1 {
                        let last = v[0];
                        self.copies.remove(&key);
                        self.items.insert(key, ItemSlot::At(last).into());
                    } else if v.is_empty() {
                        self.copies.remove(&key);
                        self.items.remove(&key);
                    }
                }
            }
            _ => {}
        }
    }

    fn add_copy(&mut self, key: ItemKey, loc: Sym) {
        match self.items.get(&key).map(|s| s.get()) {
            Some(ItemSlot::At(l)) => {
                self.copies.insert(key, vec![l, loc]);
                self.items.insert(key, ItemSlot::Copies.into());
            }
            Some(ItemSlot::Copies) => self.copies.entry(key).or_default().push(loc),
            Some(ItemSlot::Burned) | None => {
                self.items.insert(key, ItemSlot::At(loc).into());
            }
        }
    }

    fn escrow_change(&mut self, ev: &Event, loc: Sym, delta: i32, class: Class, cx: &mut Ctx<'_>) {
        let Some(rule) = class.escrow_rule else {
            return;
        };
        let key = (ev.realm, loc);
        if delta > 0 {
            let hold = self.escrow.entry(key).or_insert_with(|| EscrowHold {
                since: ev.ts,
                opened_by: ev.tx_id.as_str().into(),
                system: ev.system,
                holdings: 0,
            });
            if hold.holdings == 0 {
                let deadline = ev
                    .ts
                    .saturating_add(cx.policy.escrow[rule as usize].max_hold);
                self.escrow_deadlines
                    .push(Reverse((deadline, ev.realm, loc, hold.since)));
            }
            hold.holdings += 1;
        } else if let Some(hold) = self.escrow.get_mut(&key) {
            hold.holdings = hold.holdings.saturating_sub(1);
            if hold.holdings == 0 {
                self.escrow.remove(&key);
            }
        }
    }

    /// Raises `escrow.stuck` for every escrow still holding value at `stream_time` past
    /// its limit. `stream_time` is the auditor's watermark in event time, never a wall
    /// clock, so replaying a stream gives the same findings.
    pub fn tick(&mut self, stream_time: Timestamp, cx: &mut Ctx<'_>) {
        while let Some(Reverse((deadline, realm, loc, since))) =
            self.escrow_deadlines.peek().copied()
        {
            if deadline >= stream_time {
                break;
            }
            self.escrow_deadlines.pop();
            let Some(hold) = self.escrow.get(&(realm, loc)) else {
                continue; // emptied in time
            };
            if hold.since != since {
                continue; // a later holding episode has its own deadline
            }
            let realm_s = cx.s(realm);
            let loc_s = cx.s(loc);
            let held_for = stream_time.since(since);
            cx.out.push(Finding {
                invariant: Invariant::EscrowStuck,
                severity: cx.policy.severity(Invariant::EscrowStuck),
                fingerprint: fingerprint(
                    Invariant::EscrowStuck,
                    &realm_s,
                    &[loc_s.as_bytes(), &since.0.to_le_bytes()],
                ),
                realm: realm_s,
                system: Some(cx.s(hold.system)),
                tx_id: Some(hold.opened_by.to_string()),
                seq: None,
                subject: Some(loc_s.clone()),
                message: format!(
                    "{loc_s} has held value since {since} ({} s, limit {} s); opened by {}",
                    held_for.as_secs(),
                    deadline.since(since).as_secs(),
                    hold.opened_by
                ),
                evidence: json!({"escrow": loc_s, "since": since, "opened_by": &*hold.opened_by,
                                 "held_ms": held_for.as_millis() as u64,
                                 "limit_ms": deadline.since(since).as_millis() as u64,
                                 "holdings": hold.holdings}),
                detected_at: cx.now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grant keys live in snapshots: the one-shot hash must equal the streaming hash
    /// earlier versions wrote, for short and for long (heap-spilling) grants.
    #[test]
    fn grant_keys_are_stable_across_versions() {
        for (realm, grant) in [("eu-1", "loot:drop:123"), ("r", &*"g".repeat(500))] {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&(realm.len() as u32).to_le_bytes());
            h.update(realm.as_bytes());
            h.update(grant.as_bytes());
            assert_eq!(GrantMemory::key(realm, grant), h.digest128());
        }
    }

    /// Snapshots hold the state as earlier versions wrote it: inline lists as `Vec`s,
    /// packed item slots as the `ItemSlot` enum, amounts as `i128`.
    #[test]
    fn compact_state_serializes_as_before() {
        let mut i = Interner::default();
        let (a, b) = (i.intern("player:1"), i.intern("gold"));
        let p = Posting {
            account: a,
            asset: b,
            delta: -5,
        };
        for n in 0..4 {
            let small: SmallVec<[Posting; 2]> = std::iter::repeat_n(p, n).collect();
            let vec: Vec<Posting> = std::iter::repeat_n(p, n).collect();
            assert_eq!(
                postcard::to_stdvec(&small).unwrap(),
                postcard::to_stdvec(&vec).unwrap()
            );
        }
        for slot in [ItemSlot::At(a), ItemSlot::Copies, ItemSlot::Burned] {
            let packed = PackedSlot::from(slot);
            assert_eq!(packed.get(), slot);
            let bytes = postcard::to_stdvec(&packed).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&slot).unwrap());
            assert_eq!(
                postcard::from_bytes::<PackedSlot>(&bytes).unwrap().get(),
                slot
            );
        }
        for v in [0i128, -1, i128::from(i64::MAX) * 3, i128::MIN] {
            let bytes = postcard::to_stdvec(&Amount::from(v)).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&v).unwrap());
            assert_eq!(postcard::from_bytes::<Amount>(&bytes).unwrap().get(), v);
        }
    }
}
