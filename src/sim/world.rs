//! The world model and its normal traffic.
//!
//! Each realm is its own ledger: players with a wallet (`player:N`: gold, gems and
//! stackables), a bag, a bank and equipped slots; guild banks; and escrows in flight
//! (`trade:T`, `mail:M`, `auction:L`). The model is the simulator's promise that a clean
//! world never violates an invariant: every debit is checked against the balance the
//! model holds, every item moves from where the model has it, every escrow is resolved
//! well inside its policy limit, every grant is fresh, and every player's gold inflow is
//! kept under half the policy's velocity limit. Faults (see `faults.rs`) mutate the same
//! model exactly as the auditor will apply them, so that no fault leaks into later,
//! clean traffic as a collateral finding.
//!
//! Memory is proportional to the world (players, their items, open escrows and two small
//! rings per realm), never to the number of events.

use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeInclusive;
use std::rc::Rc;

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashSet;

use crate::core::policy::Policy;
use crate::core::time::Timestamp;

use super::SimConfig;
use super::noise::Delivery;
use super::wire::{Move, Posting, SimEvent};

/// The 12 reference systems, in the order of `invariants/policy.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Sys {
    Loot,
    Vendor,
    Inventory,
    Bank,
    Trade,
    Mail,
    Auction,
    Crafting,
    Quest,
    GuildBank,
    Economy,
    Character,
}

impl Sys {
    pub const ALL: [Sys; 12] = [
        Sys::Loot,
        Sys::Vendor,
        Sys::Inventory,
        Sys::Bank,
        Sys::Trade,
        Sys::Mail,
        Sys::Auction,
        Sys::Crafting,
        Sys::Quest,
        Sys::GuildBank,
        Sys::Economy,
        Sys::Character,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sys::Loot => "loot",
            Sys::Vendor => "vendor",
            Sys::Inventory => "inventory",
            Sys::Bank => "bank",
            Sys::Trade => "trade",
            Sys::Mail => "mail",
            Sys::Auction => "auction",
            Sys::Crafting => "crafting",
            Sys::Quest => "quest",
            Sys::GuildBank => "guild_bank",
            Sys::Economy => "economy",
            Sys::Character => "character",
        }
    }

    /// A kind this system plausibly publishes when it moves value to a player; fault
    /// carriers use it so they look like the traffic they hide in.
    pub fn paying_kind(self) -> &'static str {
        match self {
            Sys::Loot => "loot.drop",
            Sys::Vendor => "vendor.sell",
            Sys::Inventory => "inventory.unequip",
            Sys::Bank => "bank.withdraw",
            Sys::Trade => "trade.settle",
            Sys::Mail => "mail.receive",
            Sys::Auction => "auction.buy",
            Sys::Crafting => "craft.make",
            Sys::Quest => "quest.reward",
            Sys::GuildBank => "guild.withdraw",
            Sys::Economy => "economy.store_purchase",
            Sys::Character => "character.discard",
        }
    }
}

pub(super) const GOLD: &str = "gold";
pub(super) const GEMS: &str = "gems";
/// Stackable goods, held as assets on `player:N`.
pub(super) const STACKS: [&str; 4] = [
    "potion_minor",
    "iron_ore",
    "herb_silverleaf",
    "arrow_bundle",
];
const POTION: usize = 0;
const ORE: usize = 1;
const HERB: usize = 2;
const ARROWS: usize = 3;

pub(super) const WORLD_LOOT: &str = "world:loot";
pub(super) const WORLD_VENDOR: &str = "world:vendor";
pub(super) const WORLD_CRAFT: &str = "world:craft";
pub(super) const WORLD_QUEST: &str = "world:quest";
pub(super) const WORLD_AUCTION_FEE: &str = "world:auction_fee";
pub(super) const WORLD_REPAIR: &str = "world:repair";
pub(super) const WORLD_STORE: &str = "world:store";
pub(super) const WORLD_DELETED: &str = "world:deleted";

pub(super) const LOOT_TEMPLATES: &[&str] = &[
    "sword_of_dawn",
    "iron_helm",
    "oak_longbow",
    "leather_boots",
    "ring_of_haste",
    "amulet_of_tides",
    "mage_robe",
    "steel_shield",
    "dagger_of_dusk",
    "ember_staff",
];
const VENDOR_TEMPLATES: &[&str] = &[
    "apprentice_wand",
    "traveler_cloak",
    "fishing_rod",
    "lantern",
];
const CRAFT_TEMPLATES: &[&str] = &[
    "forged_blade",
    "iron_gauntlets",
    "silverleaf_elixir_flask",
    "rune_band",
];
pub(super) const STORE_TEMPLATES: &[&str] = &["mount_griffin", "pet_fox", "costume_pirate"];

/// The global clock advances 2–20 ms per committed event (the brief), in µs so that `ts`
/// carries sub-millisecond digits like real commit times.
const TICK_US: RangeInclusive<i64> = 2_000..=20_000;
/// Container caps: keep memory proportional to players and inventories realistic.
const BAG_MAX: usize = 24;
const BANK_MAX: usize = 48;
const EQUIPPED_MAX: usize = 8;
const GUILD_ITEMS_MAX: usize = 64;
/// Each player completes each quest once; a player runs out after this many.
const QUESTS_MAX: u32 = 400;
/// Players per guild.
const GUILD_SIZE: usize = 25;
/// Burned items and redeemed grants remembered per realm, for faults to reuse.
const RING_MAX: usize = 256;
/// Escrow hold times, far inside the policy limits (trade 10 min, auction 48 h, mail
/// 30 d). The auction maximum also bounds how far ahead an inflow is reserved (see
/// [`Inflow`]).
const TRADE_HOLD_MS: RangeInclusive<i64> = 50..=3_000;
const MAIL_HOLD_MS: RangeInclusive<i64> = 100..=60_000;
const AUCTION_HOLD_MS: RangeInclusive<i64> = 1_000..=600_000;

/// The velocity tracker's resolution: `INFLOW_BUCKETS` buckets of a sixth of the policy
/// window each cover at least 7/6 of the window back from now, which is the window
/// itself plus the longest time an escrow credit is reserved ahead of its delivery
/// (auction, 10 min ≤ 1/6 of the 1 h window).
const INFLOW_BUCKETS: usize = 8;
const INFLOW_BUCKETS_PER_WINDOW: i64 = 6;

/// One unique item instance, as a container holds it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Item {
    pub id: u64,
    pub template: &'static str,
    /// The commit index of the last event that touched it: a dependency that delivery
    /// may reorder around.
    pub last: u64,
}

/// An over-approximation of a player's gold inflow in any policy window (both
/// `player:N` and `player:N/bank` count, conservatively, against one budget).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Inflow {
    newest: i64,
    sums: [i64; INFLOW_BUCKETS],
}

impl Inflow {
    fn roll(&mut self, bucket: i64) {
        if bucket <= self.newest {
            return;
        }
        let steps = (bucket - self.newest).min(INFLOW_BUCKETS as i64);
        for k in 1..=steps {
            self.sums[((self.newest + k) as usize) % INFLOW_BUCKETS] = 0;
        }
        self.newest = bucket;
    }

    fn total(&self) -> i64 {
        self.sums.iter().sum()
    }

    fn add(&mut self, bucket: i64, amount: i64) {
        self.roll(bucket);
        let b = (bucket as usize) % INFLOW_BUCKETS;
        self.sums[b] = self.sums[b].saturating_add(amount);
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Player {
    pub gold: i64,
    pub bank_gold: i64,
    pub gems: i64,
    pub stacks: [i64; 4],
    pub bag: Vec<Item>,
    pub bank: Vec<Item>,
    pub equipped: Vec<Item>,
    pub quests_done: u32,
    pub inflow: Inflow,
    /// Commit index of the last event that credited this player's wallet.
    pub last_credit: Option<u64>,
    /// Balances an injected overdraft already took below zero, one bit per
    /// [`Overdrawable`]: never chosen again, so each overdraft fault is one crossing.
    pub overdrawn: u8,
    /// Already pushed over the velocity limit by a fault: the engine reports a player
    /// once, so a second fault on the same player would be invisible.
    pub velocity_hit: bool,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Guild {
    pub gold: i64,
    pub items: Vec<Item>,
}

/// A player balance that an overdraft fault can take below zero (a bit of
/// [`Player::overdrawn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Overdrawable {
    Wallet,
    Bank,
    Gems,
    Stack(usize),
}

impl Overdrawable {
    pub const ALL: [Overdrawable; 7] = [
        Overdrawable::Wallet,
        Overdrawable::Bank,
        Overdrawable::Gems,
        Overdrawable::Stack(0),
        Overdrawable::Stack(1),
        Overdrawable::Stack(2),
        Overdrawable::Stack(3),
    ];

    pub fn bit(self) -> u8 {
        match self {
            Overdrawable::Wallet => 1,
            Overdrawable::Bank => 2,
            Overdrawable::Gems => 4,
            Overdrawable::Stack(s) => 8 << s,
        }
    }
}

/// Where in a player's possession an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    Bag,
    Bank,
    Equipped,
}

impl Player {
    pub fn container(&mut self, place: Place) -> &mut Vec<Item> {
        match place {
            Place::Bag => &mut self.bag,
            Place::Bank => &mut self.bank,
            Place::Equipped => &mut self.equipped,
        }
    }
}

/// A burned item, for `item.resurrected`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Burned {
    pub item: Item,
    /// Whose bag it was burned from.
    pub owner: usize,
}

/// A redeemed grant, for `grant.reused`.
#[derive(Clone, Debug)]
pub(super) struct Redeemed {
    pub sys: Sys,
    pub grant: String,
    pub player: usize,
}

pub(super) struct Realm {
    pub name: Rc<str>,
    /// 1-based, as in `realm-1` and `itm:1-…`.
    pub number: usize,
    pub players: Vec<Player>,
    pub guilds: Vec<Guild>,
    /// Last `seq` used per system.
    pub seq: [u64; 12],
    /// Last `seq` per system carried by a valid event. A malformed event consumes its
    /// `seq` but the engine may let a later event fill it, so `stream.seq_reuse` only
    /// ever re-uses a valid event's `seq`.
    pub valid_seq: [u64; 12],
    pub next_tx: u64,
    pub next_item: u64,
    pub next_trade: u64,
    pub next_mail: u64,
    pub next_auction: u64,
    pub next_corpse: u64,
    /// Items minted twice by `item.duplicated`: both copies live and may move, but are
    /// never burned (which copy a burn kills is the engine's choice, so a later move of
    /// the other copy would be ambiguous) nor reused by other faults.
    pub dup_items: FxHashSet<u64>,
    pub burned: VecDeque<Burned>,
    pub grants: VecDeque<Redeemed>,
}

/// An escrow in flight, resolved at its deadline.
pub(super) enum Escrow {
    Trade {
        realm: usize,
        id: u64,
        a: usize,
        b: usize,
        gold_a: i64,
        gold_b: i64,
        items_a: Vec<Item>,
        items_b: Vec<Item>,
        /// Decided at open, so that the inflow it causes can be reserved then.
        settle: bool,
        open_ix: u64,
    },
    Mail {
        realm: usize,
        id: u64,
        to: usize,
        gold: i64,
        item: Option<Item>,
        open_ix: u64,
    },
    Auction {
        realm: usize,
        id: u64,
        seller: usize,
        item: Item,
        price: i64,
        open_ix: u64,
    },
}

/// How a committed event takes its `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SeqMode {
    /// The next one: gapless.
    Next,
    /// Skip one (`stream.seq_gap`).
    SkipOne,
    /// The last one a valid event carried, again (`stream.seq_reuse`).
    Reuse,
}

/// An event under construction; `commit` stamps tx_id, seq and ts.
pub(super) struct Draft {
    pub realm: usize,
    pub sys: Sys,
    pub kind: &'static str,
    pub actor: Option<String>,
    pub grant: Option<String>,
    pub postings: Vec<Posting>,
    pub items: Vec<Move>,
    pub dep: Option<u64>,
}

impl Draft {
    pub fn new(realm: usize, sys: Sys, kind: &'static str) -> Draft {
        Draft {
            realm,
            sys,
            kind,
            actor: None,
            grant: None,
            postings: Vec::new(),
            items: Vec::new(),
            dep: None,
        }
    }

    /// A balanced pair of legs.
    pub fn transfer(
        &mut self,
        from: impl Into<String>,
        to: impl Into<String>,
        asset: &'static str,
        amount: i64,
    ) {
        debug_assert!(amount > 0, "a transfer moves a positive amount");
        self.postings.push(Posting {
            account: from.into(),
            asset,
            delta: -amount,
        });
        self.postings.push(Posting {
            account: to.into(),
            asset,
            delta: amount,
        });
    }

    pub fn mv(
        &mut self,
        item: String,
        from: impl Into<String>,
        to: impl Into<String>,
        template: &'static str,
    ) {
        self.items.push(Move {
            item,
            from: from.into(),
            to: to.into(),
            template,
        });
    }

    pub fn depends_on(&mut self, ix: Option<u64>) {
        self.dep = self.dep.max(ix);
    }
}

pub(super) fn player(p: usize) -> String {
    format!("player:{}", p + 1)
}
pub(super) fn bag(p: usize) -> String {
    format!("player:{}/bag", p + 1)
}
pub(super) fn bank(p: usize) -> String {
    format!("player:{}/bank", p + 1)
}
pub(super) fn equipped(p: usize) -> String {
    format!("player:{}/equipped", p + 1)
}
pub(super) fn place_loc(p: usize, place: Place) -> String {
    match place {
        Place::Bag => bag(p),
        Place::Bank => bank(p),
        Place::Equipped => equipped(p),
    }
}
fn guild_bank(g: usize) -> String {
    format!("guild:{}/bank", g + 1)
}
pub(super) fn trade_acct(t: u64) -> String {
    format!("trade:{t}")
}
fn mail_acct(m: u64) -> String {
    format!("mail:{m}")
}
fn auction_acct(l: u64) -> String {
    format!("auction:{l}")
}

/// A random index into `items` whose item may be burned (not a duplicated id).
pub(super) fn pick_burnable(
    rng: &mut ChaCha8Rng,
    items: &[Item],
    dup: &FxHashSet<u64>,
) -> Option<usize> {
    if items.is_empty() {
        return None;
    }
    for _ in 0..4 {
        let k = rng.random_range(0..items.len());
        if !dup.contains(&items[k].id) {
            return Some(k);
        }
    }
    items.iter().position(|it| !dup.contains(&it.id))
}

/// The normal actions and their relative weights per transaction.
#[derive(Clone, Copy, Debug)]
enum Action {
    Loot,
    Quest,
    VendorBuy,
    VendorSell,
    Equip,
    Unequip,
    BankDeposit,
    BankWithdraw,
    TradeOpen,
    MailSend,
    AuctionList,
    Craft,
    GuildDeposit,
    GuildWithdraw,
    Repair,
    StorePurchase,
    Discard,
    Heartbeat,
}

const ACTIONS: [(Action, u32); 18] = [
    (Action::Loot, 20),
    (Action::Quest, 5),
    (Action::VendorBuy, 8),
    (Action::VendorSell, 6),
    (Action::Equip, 5),
    (Action::Unequip, 3),
    (Action::BankDeposit, 4),
    (Action::BankWithdraw, 3),
    (Action::TradeOpen, 5),
    (Action::MailSend, 4),
    (Action::AuctionList, 4),
    (Action::Craft, 4),
    (Action::GuildDeposit, 3),
    (Action::GuildWithdraw, 2),
    (Action::Repair, 3),
    (Action::StorePurchase, 2),
    (Action::Discard, 2),
    (Action::Heartbeat, 3),
];

pub(super) struct World {
    pub rng: ChaCha8Rng,
    /// The global commit clock (ns); every committed event advances it.
    pub clock: i64,
    pub realms: Vec<Realm>,
    pub players: usize,
    /// Commit index of the next event.
    pub next_ix: u64,
    /// Clean events committed so far.
    pub clean_commits: u64,
    pub escrows: BTreeMap<(i64, u64), Escrow>,
    next_escrow_key: u64,
    /// Half the policy's gold inflow limit: the most a clean world lets in per window.
    inflow_budget: i64,
    inflow_bucket_ns: i64,
    /// The policy's gold inflow limit (for `economy.velocity`).
    pub max_inflow: i64,
    /// The policy's trade escrow limit (for `escrow.stuck`).
    pub trade_hold_max_ns: i64,
    pub reorder_window_ns: i64,
    /// The latest time by which every stuck escrow is past its limit.
    pub stuck_until: Option<i64>,
    /// The policy's faucet authority: `world:` account → systems allowed to touch it.
    pub faucets: Vec<(String, Vec<String>)>,
}

fn ms(v: i64) -> i64 {
    v * 1_000_000
}

impl World {
    pub fn new(cfg: &SimConfig, policy: &Policy, rng: ChaCha8Rng) -> World {
        let players = cfg.players.max(1);
        let guilds = players.div_ceil(GUILD_SIZE);
        let realms = (1..=cfg.realms.max(1))
            .map(|number| Realm {
                name: Rc::from(format!("realm-{number}")),
                number,
                players: vec![Player::default(); players],
                guilds: vec![Guild::default(); guilds],
                seq: [0; 12],
                valid_seq: [0; 12],
                next_tx: 0,
                next_item: 0,
                next_trade: 0,
                next_mail: 0,
                next_auction: 0,
                next_corpse: 0,
                dup_items: FxHashSet::default(),
                burned: VecDeque::new(),
                grants: VecDeque::new(),
            })
            .collect();
        let velocity = policy
            .velocity
            .iter()
            .filter(|v| v.asset == GOLD && "player:1".starts_with(&v.account_prefix))
            .min_by_key(|v| v.max_inflow);
        let (max_inflow, window_ns) = match velocity {
            Some(v) => (
                v.max_inflow,
                i64::try_from(v.window.as_nanos()).unwrap_or(i64::MAX),
            ),
            // No rule: nothing to stay under; the fault still uses the shipped figure.
            None => (5_000_000, ms(3_600_000)),
        };
        let trade_hold_max_ns = policy.escrow_rule("trade:1").map_or(ms(600_000), |r| {
            i64::try_from(r.max_hold.as_nanos()).unwrap_or(i64::MAX)
        });
        World {
            rng,
            clock: cfg.start.0,
            realms,
            players,
            next_ix: 0,
            clean_commits: 0,
            escrows: BTreeMap::new(),
            next_escrow_key: 0,
            inflow_budget: max_inflow / 2,
            inflow_bucket_ns: (window_ns / INFLOW_BUCKETS_PER_WINDOW).max(1),
            max_inflow,
            trade_hold_max_ns,
            reorder_window_ns: i64::try_from(policy.stream.reorder_window.as_nanos())
                .unwrap_or(i64::MAX),
            stuck_until: None,
            faucets: policy
                .faucets
                .iter()
                .map(|(a, s)| (a.clone(), s.clone()))
                .collect(),
        }
    }

    // ----- stamping and committing -------------------------------------------------

    /// Gives a draft its tx_id, seq and ts. The clock advances first (after the first
    /// event), so every event has its own, strictly later `ts`: commit order is `ts` order.
    pub fn stamp(&mut self, d: Draft, mode: SeqMode) -> (SimEvent, u64) {
        if self.next_ix > 0 {
            // The first event is committed at `start` itself.
            self.clock += self.rng.random_range(TICK_US) * 1_000;
        }
        let ix = self.next_ix;
        self.next_ix += 1;
        let realm = &mut self.realms[d.realm];
        let s = d.sys as usize;
        let seq = match mode {
            SeqMode::Next => {
                realm.seq[s] += 1;
                realm.seq[s]
            }
            SeqMode::SkipOne => {
                realm.seq[s] += 2;
                realm.seq[s]
            }
            SeqMode::Reuse => {
                debug_assert!(realm.valid_seq[s] >= 1, "reuse needs a used seq");
                realm.valid_seq[s]
            }
        };
        realm.next_tx += 1;
        let ev = SimEvent {
            tx_id: format!("tx-r{}-{:08}", realm.number, realm.next_tx),
            realm_idx: d.realm,
            realm: Rc::clone(&realm.name),
            sys: d.sys,
            seq,
            ts: Timestamp(self.clock),
            kind: d.kind,
            actor: d.actor,
            grant: d.grant,
            postings: d.postings,
            items: d.items,
        };
        (ev, ix)
    }

    /// Records that a valid (decodable) event carries `ev.seq`.
    pub fn mark_valid(&mut self, ev: &SimEvent) {
        let v = &mut self.realms[ev.realm_idx].valid_seq[ev.sys as usize];
        *v = (*v).max(ev.seq);
    }

    /// Commits a clean event.
    pub fn commit(&mut self, d: Draft, out: &mut Delivery) {
        debug_assert!(
            crate::core::event::residuals(&as_wire_postings(&d.postings)).is_empty(),
            "clean events balance"
        );
        let dep = d.dep;
        let (ev, ix) = self.stamp(d, SeqMode::Next);
        self.mark_valid(&ev);
        self.clean_commits += 1;
        out.push_clean(ev, ix, dep);
    }

    // ----- model helpers -----------------------------------------------------------

    pub fn item_name(&self, r: usize, id: u64) -> String {
        format!("itm:{}-{:x}", self.realms[r].number, id)
    }

    pub fn new_item_id(&mut self, r: usize) -> u64 {
        let realm = &mut self.realms[r];
        realm.next_item += 1;
        realm.next_item
    }

    /// Mints a fresh item from `world` into `p`'s bag.
    pub fn mint_to_bag(
        &mut self,
        d: &mut Draft,
        r: usize,
        p: usize,
        world: &str,
        templates: &[&'static str],
        ix: u64,
    ) {
        let id = self.new_item_id(r);
        let template = templates
            .choose(&mut self.rng)
            .copied()
            .unwrap_or("trinket");
        d.mv(self.item_name(r, id), world, bag(p), template);
        self.realms[r].players[p].bag.push(Item {
            id,
            template,
            last: ix,
        });
    }

    /// How much more gold `p` may receive now without risking the velocity limit.
    pub fn room(&mut self, r: usize, p: usize) -> i64 {
        let bucket = self.clock / self.inflow_bucket_ns;
        let inflow = &mut self.realms[r].players[p].inflow;
        inflow.roll(bucket);
        self.inflow_budget - inflow.total()
    }

    /// Counts `amount` of inflow to `p` now (or reserves it for an escrow resolution).
    pub fn count_inflow(&mut self, r: usize, p: usize, amount: i64) {
        let bucket = self.clock / self.inflow_bucket_ns;
        self.realms[r].players[p].inflow.add(bucket, amount);
    }

    /// Credits gold to `p`'s wallet now, counting the inflow.
    pub fn receive_gold(&mut self, r: usize, p: usize, amount: i64, ix: u64) {
        self.count_inflow(r, p, amount);
        let pl = &mut self.realms[r].players[p];
        pl.gold += amount;
        pl.last_credit = Some(ix);
    }

    pub fn fresh_corpse_grant(&mut self, r: usize) -> String {
        let realm = &mut self.realms[r];
        realm.next_corpse += 1;
        let slot = self.rng.random_range(1..=4);
        format!("loot:corpse-{}:slot-{slot}", realm.next_corpse)
    }

    pub fn remember_grant(&mut self, r: usize, sys: Sys, grant: String, p: usize) {
        let ring = &mut self.realms[r].grants;
        if ring.len() == RING_MAX {
            ring.pop_front();
        }
        ring.push_back(Redeemed {
            sys,
            grant,
            player: p,
        });
    }

    pub fn remember_burned(&mut self, r: usize, item: Item, owner: usize) {
        let ring = &mut self.realms[r].burned;
        if ring.len() == RING_MAX {
            ring.pop_front();
        }
        ring.push_back(Burned { item, owner });
    }

    fn other_player(&mut self, p: usize) -> usize {
        if self.players < 2 {
            return p;
        }
        let q = self.rng.random_range(0..self.players - 1);
        if q >= p { q + 1 } else { q }
    }

    fn add_escrow(&mut self, deadline: i64, e: Escrow) {
        self.next_escrow_key += 1;
        self.escrows.insert((deadline, self.next_escrow_key), e);
    }

    // ----- the traffic -------------------------------------------------------------

    /// Generates one clean transaction. `remaining` counts this one: once the open
    /// escrows need every remaining transaction to resolve, no new one opens, so the
    /// world ends with every legitimate escrow empty.
    pub fn step(&mut self, remaining: usize, out: &mut Delivery) {
        if let Some((&(deadline, _), _)) = self.escrows.first_key_value()
            && (deadline <= self.clock || self.escrows.len() >= remaining)
        {
            if let Some((_, e)) = self.escrows.pop_first() {
                self.resolve(e, out);
            }
            return;
        }
        let may_open = self.escrows.len() + 1 < remaining;
        let r = self.rng.random_range(0..self.realms.len());
        let p = self.rng.random_range(0..self.players);
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        let mut action = Action::Loot;
        for (a, w) in ACTIONS {
            if roll < w {
                action = a;
                break;
            }
            roll -= w;
        }
        let done = match action {
            Action::Loot => {
                self.loot_drop(r, p, out);
                true
            }
            Action::Quest => self.quest_reward(r, p, out),
            Action::VendorBuy => self.vendor_buy(r, p, out),
            Action::VendorSell => self.vendor_sell(r, p, out),
            Action::Equip => self.equip(r, p, out),
            Action::Unequip => self.unequip(r, p, out),
            Action::BankDeposit => self.bank_deposit(r, p, out),
            Action::BankWithdraw => self.bank_withdraw(r, p, out),
            Action::TradeOpen => may_open && self.trade_open(r, p, out),
            Action::MailSend => may_open && self.mail_send(r, p, out),
            Action::AuctionList => may_open && self.auction_list(r, p, out),
            Action::Craft => self.craft(r, p, out),
            Action::GuildDeposit => self.guild_deposit(r, p, out),
            Action::GuildWithdraw => self.guild_withdraw(r, p, out),
            Action::Repair => self.repair(r, p, out),
            Action::StorePurchase => self.store_purchase(r, p, out),
            Action::Discard => self.discard(r, p, out),
            Action::Heartbeat => {
                let sys = Sys::ALL.choose(&mut self.rng).copied().unwrap_or(Sys::Loot);
                self.heartbeat(r, sys, out);
                true
            }
        };
        if !done {
            // Players start with nothing: whatever they cannot afford yet, they loot.
            self.loot_drop(r, p, out);
        }
    }

    pub fn heartbeat(&mut self, r: usize, sys: Sys, out: &mut Delivery) {
        self.commit(Draft::new(r, sys, "heartbeat"), out);
    }

    /// Always succeeds: a stackable drop needs no room anywhere.
    pub fn loot_drop(&mut self, r: usize, p: usize, out: &mut Delivery) {
        let ix = self.next_ix;
        let mut d = Draft::new(r, Sys::Loot, "loot.drop");
        d.actor = Some(player(p));
        let grant = self.fresh_corpse_grant(r);
        d.grant = Some(grant.clone());
        if self.rng.random_bool(0.7) {
            let g = self.rng.random_range(1..=50);
            if self.room(r, p) >= g {
                d.transfer(WORLD_LOOT, player(p), GOLD, g);
                self.receive_gold(r, p, g, ix);
            }
        }
        if self.realms[r].players[p].bag.len() < BAG_MAX {
            for _ in 0..self.rng.random_range(0..=2) {
                self.mint_to_bag(&mut d, r, p, WORLD_LOOT, LOOT_TEMPLATES, ix);
            }
        }
        if (d.postings.is_empty() && d.items.is_empty()) || self.rng.random_bool(0.3) {
            let s = if self.rng.random_bool(0.5) { ORE } else { HERB };
            let n = self.rng.random_range(1..=5);
            d.transfer(WORLD_LOOT, player(p), STACKS[s], n);
            self.realms[r].players[p].stacks[s] += n;
        }
        self.remember_grant(r, Sys::Loot, grant, p);
        self.commit(d, out);
    }

    /// A clean loot drop of exactly one item into `p`'s bag; faults use it to make
    /// sure there is something to work with.
    pub fn loot_one_item(&mut self, r: usize, p: usize, out: &mut Delivery) {
        let ix = self.next_ix;
        let mut d = Draft::new(r, Sys::Loot, "loot.drop");
        d.actor = Some(player(p));
        let grant = self.fresh_corpse_grant(r);
        d.grant = Some(grant.clone());
        self.mint_to_bag(&mut d, r, p, WORLD_LOOT, LOOT_TEMPLATES, ix);
        self.remember_grant(r, Sys::Loot, grant, p);
        self.commit(d, out);
    }

    fn quest_reward(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let (done, bag_len) = {
            let pl = &self.realms[r].players[p];
            (pl.quests_done, pl.bag.len())
        };
        if done >= QUESTS_MAX {
            return false;
        }
        let gold = self.rng.random_range(20..=400);
        let give_gold = self.room(r, p) >= gold;
        let give_item = bag_len < BAG_MAX && (!give_gold || self.rng.random_bool(0.5));
        if !give_gold && !give_item {
            return false;
        }
        let q = done + 1;
        let grant = format!("quest:{q}:player:{}", p + 1);
        let mut d = Draft::new(r, Sys::Quest, "quest.reward");
        d.actor = Some(player(p));
        d.grant = Some(grant.clone());
        if give_gold {
            d.transfer(WORLD_QUEST, player(p), GOLD, gold);
            self.receive_gold(r, p, gold, ix);
        }
        if give_item {
            self.mint_to_bag(&mut d, r, p, WORLD_QUEST, LOOT_TEMPLATES, ix);
        }
        self.realms[r].players[p].quests_done = q;
        self.remember_grant(r, Sys::Quest, grant, p);
        self.commit(d, out);
        true
    }

    fn vendor_buy(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let (gold, bag_len, last_credit) = {
            let pl = &self.realms[r].players[p];
            (pl.gold, pl.bag.len(), pl.last_credit)
        };
        let mut d = Draft::new(r, Sys::Vendor, "vendor.buy");
        d.actor = Some(player(p));
        d.depends_on(last_credit);
        if self.rng.random_bool(0.5) {
            let s = if self.rng.random_bool(0.5) {
                POTION
            } else {
                ARROWS
            };
            let qty = self.rng.random_range(1..=5);
            let cost = qty * self.rng.random_range(2..=10);
            if gold < cost {
                return false;
            }
            d.transfer(player(p), WORLD_VENDOR, GOLD, cost);
            d.transfer(WORLD_VENDOR, player(p), STACKS[s], qty);
            let pl = &mut self.realms[r].players[p];
            pl.gold -= cost;
            pl.stacks[s] += qty;
        } else {
            let cost = self.rng.random_range(20..=120);
            if gold < cost || bag_len >= BAG_MAX {
                return false;
            }
            d.transfer(player(p), WORLD_VENDOR, GOLD, cost);
            self.realms[r].players[p].gold -= cost;
            self.mint_to_bag(&mut d, r, p, WORLD_VENDOR, VENDOR_TEMPLATES, ix);
        }
        self.commit(d, out);
        true
    }

    fn vendor_sell(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let price = self.rng.random_range(1..=60);
        if self.room(r, p) < price {
            return false;
        }
        let mut d = Draft::new(r, Sys::Vendor, "vendor.sell");
        d.actor = Some(player(p));
        let realm = &mut self.realms[r];
        let pick = if self.rng.random_bool(0.7) {
            pick_burnable(&mut self.rng, &realm.players[p].bag, &realm.dup_items)
        } else {
            None
        };
        if let Some(k) = pick {
            let it = realm.players[p].bag.swap_remove(k);
            d.depends_on(Some(it.last));
            let name = self.item_name(r, it.id);
            d.mv(name, bag(p), WORLD_VENDOR, it.template);
            d.transfer(WORLD_VENDOR, player(p), GOLD, price);
            self.receive_gold(r, p, price, ix);
            self.remember_burned(r, it, p);
        } else {
            let pl = &realm.players[p];
            let Some(s) = [POTION, ARROWS, ORE, HERB]
                .into_iter()
                .find(|&s| pl.stacks[s] > 0)
            else {
                return false;
            };
            let qty = self.rng.random_range(1..=pl.stacks[s].min(5));
            d.depends_on(pl.last_credit);
            d.transfer(player(p), WORLD_VENDOR, STACKS[s], qty);
            d.transfer(WORLD_VENDOR, player(p), GOLD, qty);
            self.realms[r].players[p].stacks[s] -= qty;
            self.receive_gold(r, p, qty, ix);
        }
        self.commit(d, out);
        true
    }

    /// Moves a random item between two of `p`'s own containers.
    fn shuffle_item(
        &mut self,
        r: usize,
        p: usize,
        (from, to): (Place, Place),
        cap: usize,
        (sys, kind): (Sys, &'static str),
        out: &mut Delivery,
    ) -> bool {
        let ix = self.next_ix;
        let pl = &mut self.realms[r].players[p];
        if pl.container(from).is_empty() || pl.container(to).len() >= cap {
            return false;
        }
        let k = self.rng.random_range(0..pl.container(from).len());
        let mut it = pl.container(from).swap_remove(k);
        let mut d = Draft::new(r, sys, kind);
        d.actor = Some(player(p));
        d.depends_on(Some(it.last));
        it.last = ix;
        pl.container(to).push(it);
        d.mv(
            self.item_name(r, it.id),
            place_loc(p, from),
            place_loc(p, to),
            it.template,
        );
        self.commit(d, out);
        true
    }

    fn equip(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let what = (Sys::Inventory, "inventory.equip");
        self.shuffle_item(r, p, (Place::Bag, Place::Equipped), EQUIPPED_MAX, what, out)
    }

    fn unequip(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let what = (Sys::Inventory, "inventory.unequip");
        self.shuffle_item(r, p, (Place::Equipped, Place::Bag), usize::MAX, what, out)
    }

    fn bank_deposit(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        if self.rng.random_bool(0.5) {
            return self.shuffle_item(
                r,
                p,
                (Place::Bag, Place::Bank),
                BANK_MAX,
                (Sys::Bank, "bank.deposit"),
                out,
            );
        }
        let ix = self.next_ix;
        let gold = self.realms[r].players[p].gold;
        if gold < 1 {
            return false;
        }
        let amount = self.rng.random_range(1..=gold.min(500));
        // `player:N/bank` matches the velocity prefix `player:` too.
        if self.room(r, p) < amount {
            return false;
        }
        self.count_inflow(r, p, amount);
        let mut d = Draft::new(r, Sys::Bank, "bank.deposit");
        d.actor = Some(player(p));
        let pl = &mut self.realms[r].players[p];
        d.depends_on(pl.last_credit);
        pl.gold -= amount;
        pl.bank_gold += amount;
        pl.last_credit = Some(ix);
        d.transfer(player(p), bank(p), GOLD, amount);
        self.commit(d, out);
        true
    }

    fn bank_withdraw(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        if self.rng.random_bool(0.5) {
            return self.shuffle_item(
                r,
                p,
                (Place::Bank, Place::Bag),
                usize::MAX,
                (Sys::Bank, "bank.withdraw"),
                out,
            );
        }
        let ix = self.next_ix;
        let in_bank = self.realms[r].players[p].bank_gold;
        if in_bank < 1 {
            return false;
        }
        let amount = self.rng.random_range(1..=in_bank.min(500));
        if self.room(r, p) < amount {
            return false;
        }
        let mut d = Draft::new(r, Sys::Bank, "bank.withdraw");
        d.actor = Some(player(p));
        d.depends_on(self.realms[r].players[p].last_credit);
        self.realms[r].players[p].bank_gold -= amount;
        self.receive_gold(r, p, amount, ix);
        d.transfer(bank(p), player(p), GOLD, amount);
        self.commit(d, out);
        true
    }

    /// What `p` offers in a trade: some gold (≤ 300) and up to two bag items.
    fn offer(&mut self, r: usize, p: usize) -> (i64, usize) {
        let (gold, bag_len) = {
            let pl = &self.realms[r].players[p];
            (pl.gold, pl.bag.len())
        };
        let g = if gold >= 1 && self.rng.random_bool(0.6) {
            self.rng.random_range(1..=gold.min(300))
        } else {
            0
        };
        let n = if bag_len > 0 && self.rng.random_bool(0.4) {
            self.rng.random_range(1..=bag_len.min(2))
        } else {
            0
        };
        (g, n)
    }

    /// Takes `n` random items out of `p`'s bag into an escrow location.
    pub fn bag_to_escrow(
        &mut self,
        d: &mut Draft,
        r: usize,
        p: usize,
        n: usize,
        escrow: &str,
        ix: u64,
    ) -> Vec<Item> {
        let mut taken = Vec::with_capacity(n);
        for _ in 0..n {
            let bag_items = &mut self.realms[r].players[p].bag;
            let k = self.rng.random_range(0..bag_items.len());
            let mut it = bag_items.swap_remove(k);
            d.depends_on(Some(it.last));
            it.last = ix;
            d.mv(self.item_name(r, it.id), bag(p), escrow, it.template);
            taken.push(it);
        }
        taken
    }

    fn trade_open(&mut self, r: usize, a: usize, out: &mut Delivery) -> bool {
        if self.players < 2 {
            return false;
        }
        let ix = self.next_ix;
        let b = self.other_player(a);
        let (gold_a, n_a) = self.offer(r, a);
        let (gold_b, n_b) = self.offer(r, b);
        if gold_a == 0 && gold_b == 0 && n_a == 0 && n_b == 0 {
            return false;
        }
        let settle = self.rng.random_bool(0.9);
        let (a_gets, b_gets) = if settle {
            (gold_b, gold_a)
        } else {
            (gold_a, gold_b)
        };
        if self.room(r, a) < a_gets || self.room(r, b) < b_gets {
            return false;
        }
        self.count_inflow(r, a, a_gets);
        self.count_inflow(r, b, b_gets);
        self.realms[r].next_trade += 1;
        let id = self.realms[r].next_trade;
        let acct = trade_acct(id);
        let mut d = Draft::new(r, Sys::Trade, "trade.open");
        d.actor = Some(player(a));
        for (p, g) in [(a, gold_a), (b, gold_b)] {
            if g > 0 {
                let pl = &mut self.realms[r].players[p];
                d.depends_on(pl.last_credit);
                pl.gold -= g;
                d.transfer(player(p), acct.clone(), GOLD, g);
            }
        }
        let items_a = self.bag_to_escrow(&mut d, r, a, n_a, &acct, ix);
        let items_b = self.bag_to_escrow(&mut d, r, b, n_b, &acct, ix);
        let deadline = self.clock + ms(self.rng.random_range(TRADE_HOLD_MS));
        let e = Escrow::Trade {
            realm: r,
            id,
            a,
            b,
            gold_a,
            gold_b,
            items_a,
            items_b,
            settle,
            open_ix: ix,
        };
        self.add_escrow(deadline, e);
        self.commit(d, out);
        true
    }

    fn mail_send(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let to = self.other_player(p);
        let (gold, bag_len) = {
            let pl = &self.realms[r].players[p];
            (pl.gold, pl.bag.len())
        };
        let g = if gold >= 1 && self.rng.random_bool(0.6) {
            self.rng.random_range(1..=gold.min(200))
        } else {
            0
        };
        let with_item = bag_len > 0 && (g == 0 || self.rng.random_bool(0.4));
        if (g == 0 && !with_item) || self.room(r, to) < g {
            return false;
        }
        self.count_inflow(r, to, g);
        self.realms[r].next_mail += 1;
        let id = self.realms[r].next_mail;
        let acct = mail_acct(id);
        let mut d = Draft::new(r, Sys::Mail, "mail.send");
        d.actor = Some(player(p));
        if g > 0 {
            let pl = &mut self.realms[r].players[p];
            d.depends_on(pl.last_credit);
            pl.gold -= g;
            d.transfer(player(p), acct.clone(), GOLD, g);
        }
        let item = if with_item {
            self.bag_to_escrow(&mut d, r, p, 1, &acct, ix).pop()
        } else {
            None
        };
        let deadline = self.clock + ms(self.rng.random_range(MAIL_HOLD_MS));
        self.add_escrow(
            deadline,
            Escrow::Mail {
                realm: r,
                id,
                to,
                gold: g,
                item,
                open_ix: ix,
            },
        );
        self.commit(d, out);
        true
    }

    fn auction_list(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let (gold, bag_len) = {
            let pl = &self.realms[r].players[p];
            (pl.gold, pl.bag.len())
        };
        let price = self.rng.random_range(10..=400);
        let fee = (price / 20).max(1);
        let proceeds = price - price / 10;
        if bag_len == 0 || gold < fee || self.room(r, p) < proceeds {
            return false;
        }
        self.count_inflow(r, p, proceeds);
        self.realms[r].next_auction += 1;
        let id = self.realms[r].next_auction;
        let acct = auction_acct(id);
        let mut d = Draft::new(r, Sys::Auction, "auction.list");
        d.actor = Some(player(p));
        let pl = &mut self.realms[r].players[p];
        d.depends_on(pl.last_credit);
        pl.gold -= fee;
        d.transfer(player(p), WORLD_AUCTION_FEE, GOLD, fee);
        let Some(item) = self.bag_to_escrow(&mut d, r, p, 1, &acct, ix).pop() else {
            debug_assert!(false, "the bag was checked non-empty");
            return false;
        };
        let deadline = self.clock + ms(self.rng.random_range(AUCTION_HOLD_MS));
        self.add_escrow(
            deadline,
            Escrow::Auction {
                realm: r,
                id,
                seller: p,
                item,
                price,
                open_ix: ix,
            },
        );
        self.commit(d, out);
        true
    }

    /// Empties an escrow: settle or cancel a trade, deliver a mail, sell or withdraw an
    /// auction listing. Each is one transaction.
    fn resolve(&mut self, e: Escrow, out: &mut Delivery) {
        let ix = self.next_ix;
        match e {
            Escrow::Trade {
                realm: r,
                id,
                a,
                b,
                gold_a,
                gold_b,
                items_a,
                items_b,
                settle,
                open_ix,
            } => {
                let acct = trade_acct(id);
                let kind = if settle {
                    "trade.settle"
                } else {
                    "trade.cancel"
                };
                let mut d = Draft::new(r, Sys::Trade, kind);
                d.actor = Some(player(a));
                d.depends_on(Some(open_ix));
                let (dest_a, dest_b) = if settle { (b, a) } else { (a, b) };
                for (dest, g, items) in [(dest_a, gold_a, items_a), (dest_b, gold_b, items_b)] {
                    if g > 0 {
                        d.transfer(acct.clone(), player(dest), GOLD, g);
                        let pl = &mut self.realms[r].players[dest];
                        pl.gold += g;
                        pl.last_credit = Some(ix);
                    }
                    for mut it in items {
                        d.mv(
                            self.item_name(r, it.id),
                            acct.clone(),
                            bag(dest),
                            it.template,
                        );
                        it.last = ix;
                        self.realms[r].players[dest].bag.push(it);
                    }
                }
                self.commit(d, out);
            }
            Escrow::Mail {
                realm: r,
                id,
                to,
                gold,
                item,
                open_ix,
            } => {
                let acct = mail_acct(id);
                let mut d = Draft::new(r, Sys::Mail, "mail.receive");
                d.actor = Some(player(to));
                d.depends_on(Some(open_ix));
                if gold > 0 {
                    d.transfer(acct.clone(), player(to), GOLD, gold);
                    let pl = &mut self.realms[r].players[to];
                    pl.gold += gold;
                    pl.last_credit = Some(ix);
                }
                if let Some(mut it) = item {
                    d.mv(self.item_name(r, it.id), acct, bag(to), it.template);
                    it.last = ix;
                    self.realms[r].players[to].bag.push(it);
                }
                self.commit(d, out);
            }
            Escrow::Auction {
                realm: r,
                id,
                seller,
                mut item,
                price,
                open_ix,
            } => {
                let acct = auction_acct(id);
                let mut buyer = None;
                if self.players > 1 && self.rng.random_bool(0.75) {
                    for _ in 0..8 {
                        let q = self.other_player(seller);
                        if self.realms[r].players[q].gold >= price {
                            buyer = Some(q);
                            break;
                        }
                    }
                }
                let name = self.item_name(r, item.id);
                item.last = ix;
                let d = if let Some(q) = buyer {
                    let cut = price / 10;
                    let mut d = Draft::new(r, Sys::Auction, "auction.buy");
                    d.actor = Some(player(q));
                    d.depends_on(Some(open_ix));
                    d.depends_on(self.realms[r].players[q].last_credit);
                    d.postings.push(Posting {
                        account: player(q),
                        asset: GOLD,
                        delta: -price,
                    });
                    d.postings.push(Posting {
                        account: player(seller),
                        asset: GOLD,
                        delta: price - cut,
                    });
                    if cut > 0 {
                        d.postings.push(Posting {
                            account: WORLD_AUCTION_FEE.to_string(),
                            asset: GOLD,
                            delta: cut,
                        });
                    }
                    d.mv(name, acct, bag(q), item.template);
                    let players = &mut self.realms[r].players;
                    players[q].gold -= price;
                    players[q].bag.push(item);
                    players[seller].gold += price - cut;
                    players[seller].last_credit = Some(ix);
                    d
                } else {
                    let mut d = Draft::new(r, Sys::Auction, "auction.cancel");
                    d.actor = Some(player(seller));
                    d.depends_on(Some(open_ix));
                    d.mv(name, acct, bag(seller), item.template);
                    self.realms[r].players[seller].bag.push(item);
                    d
                };
                self.commit(d, out);
            }
        }
    }

    fn craft(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let (ore, herb, bag_len, last_credit) = {
            let pl = &self.realms[r].players[p];
            (
                pl.stacks[ORE],
                pl.stacks[HERB],
                pl.bag.len(),
                pl.last_credit,
            )
        };
        if ore < 3 || bag_len >= BAG_MAX {
            return false;
        }
        let use_ore = self.rng.random_range(3..=ore.min(6));
        let use_herb = if herb >= 1 && self.rng.random_bool(0.5) {
            self.rng.random_range(1..=herb.min(3))
        } else {
            0
        };
        let mut d = Draft::new(r, Sys::Crafting, "craft.make");
        d.actor = Some(player(p));
        d.depends_on(last_credit);
        d.transfer(player(p), WORLD_CRAFT, STACKS[ORE], use_ore);
        if use_herb > 0 {
            d.transfer(player(p), WORLD_CRAFT, STACKS[HERB], use_herb);
        }
        let realm = &mut self.realms[r];
        realm.players[p].stacks[ORE] -= use_ore;
        realm.players[p].stacks[HERB] -= use_herb;
        let burn = if self.rng.random_bool(0.4) {
            pick_burnable(&mut self.rng, &realm.players[p].bag, &realm.dup_items)
        } else {
            None
        };
        if let Some(k) = burn {
            let it = realm.players[p].bag.swap_remove(k);
            d.depends_on(Some(it.last));
            d.mv(self.item_name(r, it.id), bag(p), WORLD_CRAFT, it.template);
            self.remember_burned(r, it, p);
        }
        self.mint_to_bag(&mut d, r, p, WORLD_CRAFT, CRAFT_TEMPLATES, ix);
        self.commit(d, out);
        true
    }

    fn guild_deposit(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let g = p / GUILD_SIZE;
        let mut d = Draft::new(r, Sys::GuildBank, "guild.deposit");
        d.actor = Some(player(p));
        let realm = &mut self.realms[r];
        let pl = &mut realm.players[p];
        if self.rng.random_bool(0.5) {
            if pl.bag.is_empty() || realm.guilds[g].items.len() >= GUILD_ITEMS_MAX {
                return false;
            }
            let k = self.rng.random_range(0..pl.bag.len());
            let mut it = pl.bag.swap_remove(k);
            d.depends_on(Some(it.last));
            it.last = ix;
            realm.guilds[g].items.push(it);
            d.mv(self.item_name(r, it.id), bag(p), guild_bank(g), it.template);
        } else {
            if pl.gold < 1 {
                return false;
            }
            let amount = self.rng.random_range(1..=pl.gold.min(200));
            d.depends_on(pl.last_credit);
            pl.gold -= amount;
            realm.guilds[g].gold += amount;
            d.transfer(player(p), guild_bank(g), GOLD, amount);
        }
        self.commit(d, out);
        true
    }

    fn guild_withdraw(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let g = p / GUILD_SIZE;
        let mut d = Draft::new(r, Sys::GuildBank, "guild.withdraw");
        d.actor = Some(player(p));
        if self.rng.random_bool(0.5) {
            let realm = &mut self.realms[r];
            if realm.guilds[g].items.is_empty() {
                return false;
            }
            let k = self.rng.random_range(0..realm.guilds[g].items.len());
            let mut it = realm.guilds[g].items.swap_remove(k);
            d.depends_on(Some(it.last));
            it.last = ix;
            realm.players[p].bag.push(it);
            d.mv(self.item_name(r, it.id), guild_bank(g), bag(p), it.template);
        } else {
            let in_guild = self.realms[r].guilds[g].gold;
            if in_guild < 1 {
                return false;
            }
            let amount = self.rng.random_range(1..=in_guild.min(200));
            if self.room(r, p) < amount {
                return false;
            }
            self.realms[r].guilds[g].gold -= amount;
            self.receive_gold(r, p, amount, ix);
            d.transfer(guild_bank(g), player(p), GOLD, amount);
        }
        self.commit(d, out);
        true
    }

    fn repair(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let cost = self.rng.random_range(5..=80);
        let pl = &mut self.realms[r].players[p];
        if pl.gold < cost {
            return false;
        }
        let mut d = Draft::new(r, Sys::Economy, "economy.repair");
        d.actor = Some(player(p));
        d.depends_on(pl.last_credit);
        pl.gold -= cost;
        d.transfer(player(p), WORLD_REPAIR, GOLD, cost);
        self.commit(d, out);
        true
    }

    /// Real-money purchases: gems from the store, or a store item paid in gems or cash
    /// (cash leaves no posting here; the payment system is not a game ledger).
    fn store_purchase(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let mut d = Draft::new(r, Sys::Economy, "economy.store_purchase");
        d.actor = Some(player(p));
        if self.rng.random_bool(0.4) {
            let n = self.rng.random_range(100..=1_000);
            d.transfer(WORLD_STORE, player(p), GEMS, n);
            self.realms[r].players[p].gems += n;
        } else {
            let price = self.rng.random_range(50..=300);
            let pl = &mut self.realms[r].players[p];
            if pl.bag.len() >= BAG_MAX {
                return false;
            }
            if pl.gems >= price && self.rng.random_bool(0.5) {
                pl.gems -= price;
                d.transfer(player(p), WORLD_STORE, GEMS, price);
            }
            self.mint_to_bag(&mut d, r, p, WORLD_STORE, STORE_TEMPLATES, ix);
        }
        self.commit(d, out);
        true
    }

    fn discard(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let realm = &mut self.realms[r];
        let Some(k) = pick_burnable(&mut self.rng, &realm.players[p].bag, &realm.dup_items) else {
            return false;
        };
        self.discard_at(r, p, k, out);
        true
    }

    /// Burns the `k`-th item of `p`'s bag to `world:deleted`.
    pub fn discard_at(&mut self, r: usize, p: usize, k: usize, out: &mut Delivery) {
        let it = self.realms[r].players[p].bag.swap_remove(k);
        let mut d = Draft::new(r, Sys::Character, "character.discard");
        d.actor = Some(player(p));
        d.depends_on(Some(it.last));
        d.mv(self.item_name(r, it.id), bag(p), WORLD_DELETED, it.template);
        self.remember_burned(r, it, p);
        self.commit(d, out);
    }

    /// Ends the world. A stuck escrow is only a finding once the stream has run past
    /// its limit; if the traffic did not span that long, every stream of every realm
    /// publishes a heartbeat past it, and again a reorder window later so that the first
    /// round is surely applied before the auditor finishes.
    pub fn close(&mut self, out: &mut Delivery) {
        let Some(until) = self.stuck_until else {
            return;
        };
        if self.clock >= until {
            return;
        }
        self.clock = until;
        for round in 0..2 {
            if round == 1 {
                self.clock += self.reorder_window_ns + ms(1_000);
            }
            for r in 0..self.realms.len() {
                for sys in Sys::ALL {
                    self.heartbeat(r, sys, out);
                }
            }
        }
    }
}

/// Borrowed postings for [`crate::core::event::residuals`] (debug checks only).
fn as_wire_postings(ps: &[Posting]) -> Vec<crate::core::event::WirePosting<'_>> {
    ps.iter()
        .map(|p| crate::core::event::WirePosting {
            account: std::borrow::Cow::Borrowed(&p.account),
            asset: std::borrow::Cow::Borrowed(p.asset),
            delta: p.delta,
        })
        .collect()
}
