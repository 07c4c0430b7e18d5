//! Fault injection: one planted root cause per requested fault, each with its
//! [`Expected`] answer.
//!
//! Every fault is an *extra* event on top of the clean transactions, built to raise
//! exactly one finding under the engine's semantics (events-v1: a violating event is
//! still applied as it happened; the second version of a conflicting `tx_id` is not;
//! a malformed event is set aside but consumes its `seq`). The world model applies the
//! fault's effects the same way, so that later clean traffic neither repeats nor hides
//! it: an overdrawn wallet is never debited again while negative, a duplicated item is
//! never burned, an item claimed from the wrong place is frozen, a player pushed over the
//! velocity limit receives nothing more for the rest of the window.
//!
//! When a fault needs material the world does not have yet (an item, a burned item, a
//! redeemed grant, a stream with a `seq`), it first commits the clean transaction that
//! makes it (a loot drop, a discard, a heartbeat), so every requested fault is planted —
//! except beyond what the world can hold: `economy.velocity` once per player, and
//! `balance.overdraft` once per player balance (wallet, bank, gems, four stackables).
//! The answer key lists what was planted.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::core::finding::Invariant;

use super::noise::Delivery;
use super::wire::{Posting, SimEvent};
use super::world::{
    Burned, Draft, GEMS, GOLD, Item, LOOT_TEMPLATES, Overdrawable, Place, Redeemed, STACKS,
    STORE_TEMPLATES, SeqMode, Sys, WORLD_LOOT, WORLD_QUEST, WORLD_REPAIR, WORLD_STORE,
    WORLD_VENDOR, World, bag, bank, equipped, pick_burnable, place_loc, player, trade_acct,
};
use super::{Duplication, Expected, FaultClass, SimConfig};

/// No fault before this many transactions: players first need something to lose.
const FAULT_FREE_PREFIX: usize = 50;
/// A `world:` account no policy lists: touching it is unauthorized for every system.
const UNLISTED_WORLD: &str = "world:gm_tools";
/// How far past the trade limit the closing heartbeats go, so the escrow is stuck by
/// any reading of "past".
const STUCK_MARGIN_NS: i64 = 60 * 1_000_000_000;

/// Where each requested fault goes: a transaction index in
/// `[min(50, events), events]` (`events` = after the last clean transaction), sorted.
pub(super) fn plan(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> Vec<(usize, FaultClass)> {
    let lo = cfg.events.min(FAULT_FREE_PREFIX);
    let mut plan = Vec::new();
    for &(inv, n) in &cfg.inject {
        if !Invariant::STREAM.contains(&inv) {
            continue; // recon.* needs a store; parse_inject rejects it
        }
        for _ in 0..n {
            plan.push((
                rng.random_range(lo..=cfg.events),
                FaultClass::Invariant(inv),
            ));
        }
    }
    // After the invariant classes, so a world without duplications draws exactly as
    // before (same seed, same bytes).
    for &(dup, n) in &cfg.duplications {
        for _ in 0..n {
            plan.push((
                rng.random_range(lo..=cfg.events),
                FaultClass::Duplication(dup),
            ));
        }
    }
    // Shuffle then stable-sort: faults planned at the same index come in random order.
    plan.shuffle(rng);
    plan.sort_by_key(|&(at, _)| at);
    plan
}

/// The answer for a fault carried by `ev`, naming its `tx_id`.
fn expect_tx(inv: Invariant, ev: &SimEvent, subject: Option<String>) -> Expected {
    Expected {
        invariant: inv,
        realm: ev.realm.to_string(),
        system: None,
        tx_id: Some(ev.tx_id.clone()),
        seq: None,
        subject,
    }
}

impl World {
    /// Plants one fault of any class in a random realm.
    pub fn inject_class(&mut self, class: FaultClass, out: &mut Delivery) {
        match class {
            FaultClass::Invariant(inv) => self.inject(inv, out),
            FaultClass::Duplication(d) => {
                let r = self.rng.random_range(0..self.realms.len());
                match d {
                    Duplication::MailDoubleReceive => self.fault_mail_double_receive(r, out),
                    Duplication::AuctionCancelBuy => self.fault_auction_cancel_buy(r, out),
                }
            }
        }
    }

    /// A bag item of some player (looted first if nobody has one): (player, index).
    fn ensure_bag_item(&mut self, r: usize, out: &mut Delivery) -> (usize, usize) {
        for _ in 0..32 {
            let p = self.random_player();
            let realm = &self.realms[r];
            if let Some(k) = pick_burnable(&mut self.rng, &realm.players[p].bag, &realm.dup_items) {
                return (p, k);
            }
        }
        let p = self.random_player();
        self.loot_one_item(r, p, out);
        (p, self.realms[r].players[p].bag.len() - 1)
    }

    /// `dup.mail_double_receive`: a clean `mail.send` of a bag item and its clean
    /// `mail.receive`, then a second `mail.receive` of the emptied mail (the fork: the
    /// recipient now holds two copies; the engine flags `item.phantom_source` there).
    /// The item is frozen afterwards, like every duplicated item.
    fn fault_mail_double_receive(&mut self, r: usize, out: &mut Delivery) {
        let (p, k) = self.ensure_bag_item(r, out);
        let q = if self.players < 2 {
            p
        } else {
            self.random_other(p)
        };
        let send_ix = self.next_ix;
        self.realms[r].next_mail += 1;
        let acct = format!("mail:{}", self.realms[r].next_mail);
        let mut d = Draft::new(r, Sys::Mail, "mail.send");
        d.actor = Some(player(p));
        let it = self.realms[r].players[p].bag.swap_remove(k);
        d.depends_on(Some(it.last));
        let name = self.item_name(r, it.id);
        d.mv(name.clone(), bag(p), acct.clone(), it.template);
        self.commit(d, out);
        for fork in [false, true] {
            let mut d = Draft::new(r, Sys::Mail, "mail.receive");
            d.actor = Some(player(q));
            d.depends_on(Some(send_ix));
            d.mv(name.clone(), acct.clone(), bag(q), it.template);
            if fork {
                let subject = name.clone();
                self.commit_fault(d, SeqMode::Next, out, |ev| {
                    expect_tx(Invariant::ItemPhantomSource, ev, Some(subject))
                });
            } else {
                self.commit(d, out);
            }
        }
        self.realms[r].dup_items.insert(it.id);
    }

    /// `dup.auction_cancel_buy`: a clean `auction.list` of a bag item and its clean
    /// `auction.cancel` back to the seller, then an `auction.buy` of the emptied listing
    /// (the fork: the buyer pays — when someone can — and gets a second copy). The
    /// engine flags `item.phantom_source` at the buy. The item is frozen afterwards.
    fn fault_auction_cancel_buy(&mut self, r: usize, out: &mut Delivery) {
        let (p, k) = self.ensure_bag_item(r, out);
        let list_ix = self.next_ix;
        self.realms[r].next_auction += 1;
        let acct = format!("auction:{}", self.realms[r].next_auction);
        let mut d = Draft::new(r, Sys::Auction, "auction.list");
        d.actor = Some(player(p));
        let it = self.realms[r].players[p].bag.swap_remove(k);
        d.depends_on(Some(it.last));
        let name = self.item_name(r, it.id);
        d.mv(name.clone(), bag(p), acct.clone(), it.template);
        self.commit(d, out);
        let mut d = Draft::new(r, Sys::Auction, "auction.cancel");
        d.actor = Some(player(p));
        d.depends_on(Some(list_ix));
        d.mv(name.clone(), acct.clone(), bag(p), it.template);
        self.commit(d, out);

        let buy_ix = self.next_ix;
        let q = if self.players < 2 {
            p
        } else {
            self.random_other(p)
        };
        let price = self.rng.random_range(10..=400);
        let mut d = Draft::new(r, Sys::Auction, "auction.buy");
        d.actor = Some(player(q));
        d.depends_on(Some(list_ix));
        if q != p && self.realms[r].players[q].gold >= price && self.room(r, p) >= price {
            d.depends_on(self.realms[r].players[q].last_credit);
            d.transfer(player(q), player(p), GOLD, price);
            self.realms[r].players[q].gold -= price;
            self.receive_gold(r, p, price, buy_ix);
        }
        d.mv(name.clone(), acct, bag(q), it.template);
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::ItemPhantomSource, ev, Some(name))
        });
        self.realms[r].dup_items.insert(it.id);
    }

    /// Plants one fault of class `inv` in a random realm.
    pub fn inject(&mut self, inv: Invariant, out: &mut Delivery) {
        let r = self.rng.random_range(0..self.realms.len());
        match inv {
            Invariant::TxUnbalanced => self.fault_unbalanced(r, out),
            Invariant::TxConflict => self.fault_conflict(r, out),
            Invariant::ItemDuplicated => self.fault_duplicated(r, out),
            Invariant::ItemPhantomSource => self.fault_phantom(r, out),
            Invariant::ItemResurrected => self.fault_resurrected(r, out),
            Invariant::GrantReused => self.fault_grant_reused(r, out),
            Invariant::UnauthorizedFaucet => self.fault_unauthorized(r, out),
            Invariant::BalanceOverdraft => self.fault_overdraft(r, out),
            Invariant::SeqGap => self.fault_seq_gap(r, out),
            Invariant::SeqReuse => self.fault_seq_reuse(r, out),
            Invariant::EscrowStuck => self.fault_escrow_stuck(r, out),
            Invariant::Velocity => self.fault_velocity(r, out),
            Invariant::Malformed => self.fault_malformed(r, out),
            Invariant::ReconMissing
            | Invariant::ReconUnexpected
            | Invariant::ReconValueMismatch => {
                debug_assert!(false, "recon.* is not a stream fault; plan() drops it");
            }
        }
    }

    fn commit_fault(
        &mut self,
        d: Draft,
        mode: SeqMode,
        out: &mut Delivery,
        expected: impl FnOnce(&SimEvent) -> Expected,
    ) -> SimEvent {
        let (ev, _ix) = self.stamp(d, mode);
        self.mark_valid(&ev);
        let exp = expected(&ev);
        out.push_fault(ev.ts.0, ev.stream(), ev.seq, ev.canonical(), exp);
        ev
    }

    fn random_player(&mut self) -> usize {
        self.rng.random_range(0..self.players)
    }

    // ----- material --------------------------------------------------------------

    /// A live, never-duplicated item some player holds: (player, place, index).
    fn ensure_item(&mut self, r: usize, out: &mut Delivery) -> (usize, Place, usize) {
        for _ in 0..32 {
            let p = self.random_player();
            let place = [Place::Bag, Place::Bank, Place::Equipped]
                .choose(&mut self.rng)
                .copied()
                .unwrap_or(Place::Bag);
            let realm = &mut self.realms[r];
            if let Some(k) = pick_burnable(
                &mut self.rng,
                realm.players[p].container(place),
                &realm.dup_items,
            ) {
                return (p, place, k);
            }
        }
        let p = self.random_player();
        self.loot_one_item(r, p, out);
        (p, Place::Bag, self.realms[r].players[p].bag.len() - 1)
    }

    /// A burned item, taken off the ring (each is resurrected at most once).
    fn ensure_burned(&mut self, r: usize, out: &mut Delivery) -> Burned {
        let n = self.realms[r].burned.len();
        if n > 0 {
            let k = self.rng.random_range(0..n);
            if let Some(b) = self.realms[r].burned.remove(k) {
                return b;
            }
        }
        let mut found = None;
        for _ in 0..32 {
            let p = self.random_player();
            let realm = &self.realms[r];
            if let Some(k) = pick_burnable(&mut self.rng, &realm.players[p].bag, &realm.dup_items) {
                found = Some((p, k));
                break;
            }
        }
        let (p, k) = match found {
            Some(pk) => pk,
            None => {
                let p = self.random_player();
                self.loot_one_item(r, p, out);
                (p, self.realms[r].players[p].bag.len() - 1)
            }
        };
        self.discard_at(r, p, k, out);
        self.realms[r]
            .burned
            .pop_back()
            .expect("discard_at remembers the burned item")
    }

    /// A redeemed grant, taken off the ring (each is reused at most once).
    fn ensure_grant(&mut self, r: usize, out: &mut Delivery) -> Redeemed {
        let n = self.realms[r].grants.len();
        if n > 0 {
            let k = self.rng.random_range(0..n);
            if let Some(g) = self.realms[r].grants.remove(k) {
                return g;
            }
        }
        let p = self.random_player();
        self.loot_one_item(r, p, out);
        self.realms[r]
            .grants
            .pop_back()
            .expect("loot_one_item remembers its grant")
    }

    /// A system of realm `r` that has published at least one valid event (so its
    /// stream has started, and has a valid `seq` to re-use).
    fn ensure_stream(&mut self, r: usize, out: &mut Delivery) -> Sys {
        let live: Vec<Sys> = Sys::ALL
            .into_iter()
            .filter(|&s| self.realms[r].valid_seq[s as usize] >= 1)
            .collect();
        if let Some(&s) = live.choose(&mut self.rng) {
            return s;
        }
        let s = Sys::ALL.choose(&mut self.rng).copied().unwrap_or(Sys::Loot);
        self.heartbeat(r, s, out);
        s
    }

    // ----- the faults ------------------------------------------------------------

    /// Value from nowhere: a credit whose debit leg is missing or short. Credits only,
    /// so nobody is overdrawn; gold counts against the velocity budget like any inflow.
    fn fault_unbalanced(&mut self, r: usize, out: &mut Delivery) {
        let p = self.random_player();
        let ix = self.next_ix;
        let x = self.rng.random_range(10..=500);
        let mut d;
        if self.room(r, p) >= x {
            if self.rng.random_bool(0.5) {
                d = Draft::new(r, Sys::Trade, "trade.settle");
                d.postings.push(Posting {
                    account: player(p),
                    asset: GOLD,
                    delta: x,
                });
            } else {
                d = Draft::new(r, Sys::Loot, "loot.drop");
                d.grant = Some(self.fresh_corpse_grant(r));
                let short = self.rng.random_range(1..x);
                d.postings.push(Posting {
                    account: WORLD_LOOT.to_string(),
                    asset: GOLD,
                    delta: -(x - short),
                });
                d.postings.push(Posting {
                    account: player(p),
                    asset: GOLD,
                    delta: x,
                });
            }
            self.receive_gold(r, p, x, ix);
        } else {
            d = Draft::new(r, Sys::Mail, "mail.receive");
            d.postings.push(Posting {
                account: player(p),
                asset: STACKS[1],
                delta: x,
            });
            self.realms[r].players[p].stacks[1] += x;
        }
        d.actor = Some(player(p));
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::TxUnbalanced, ev, None)
        });
    }

    /// Delivery re-emits an already delivered clean `tx_id` with other content; the
    /// engine keeps the first version, so the world model is untouched.
    fn fault_conflict(&mut self, r: usize, out: &mut Delivery) {
        if self.clean_commits == 0 {
            let s = Sys::ALL.choose(&mut self.rng).copied().unwrap_or(Sys::Loot);
            self.heartbeat(r, s, out);
        }
        out.push_conflict(self.clock);
    }

    /// Mints, from a faucet the system may use, the id of an item that is live.
    fn fault_duplicated(&mut self, r: usize, out: &mut Delivery) {
        let (p, place, k) = self.ensure_item(r, out);
        let it = self.realms[r].players[p].container(place)[k];
        let q = self.random_player();
        let ix = self.next_ix;
        let mut d = if self.rng.random_bool(0.5) {
            let mut d = Draft::new(r, Sys::Loot, "loot.drop");
            d.grant = Some(self.fresh_corpse_grant(r));
            d.mv(self.item_name(r, it.id), WORLD_LOOT, bag(q), it.template);
            d
        } else {
            let mut d = Draft::new(r, Sys::Economy, "economy.store_purchase");
            d.mv(self.item_name(r, it.id), WORLD_STORE, bag(q), it.template);
            d
        };
        d.actor = Some(player(q));
        self.realms[r].players[q].bag.push(Item { last: ix, ..it });
        self.realms[r].dup_items.insert(it.id);
        let subject = self.item_name(r, it.id);
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::ItemDuplicated, ev, Some(subject))
        });
    }

    /// Moves an item from where it is not: an id never minted (which then lives where
    /// it was moved to), or a live item claimed from another place (then frozen: which
    /// of its places the engine keeps is its choice, so nothing touches it again).
    fn fault_phantom(&mut self, r: usize, out: &mut Delivery) {
        let ix = self.next_ix;
        let (d, subject) = if self.rng.random_bool(0.5) {
            let p = self.random_player();
            let id = self.new_item_id(r);
            let template = LOOT_TEMPLATES
                .choose(&mut self.rng)
                .copied()
                .unwrap_or("trinket");
            let name = self.item_name(r, id);
            let (mut d, to) = if self.rng.random_bool(0.5) {
                (
                    Draft::new(r, Sys::Inventory, "inventory.equip"),
                    Place::Equipped,
                )
            } else {
                (Draft::new(r, Sys::Bank, "bank.deposit"), Place::Bank)
            };
            d.actor = Some(player(p));
            d.mv(name.clone(), bag(p), place_loc(p, to), template);
            self.realms[r].players[p].container(to).push(Item {
                id,
                template,
                last: ix,
            });
            (d, name)
        } else {
            let (p, place, k) = self.ensure_item(r, out);
            let it = self.realms[r].players[p].container(place).swap_remove(k);
            let name = self.item_name(r, it.id);
            let mut d = if self.players >= 2 {
                let q = self.random_other(p);
                let mut d = Draft::new(r, Sys::Inventory, "inventory.equip");
                d.actor = Some(player(q));
                d.mv(name.clone(), bag(q), equipped(q), it.template);
                d
            } else if place == Place::Bag {
                let mut d = Draft::new(r, Sys::Bank, "bank.withdraw");
                d.mv(name.clone(), bank(p), bag(p), it.template);
                d
            } else {
                let mut d = Draft::new(r, Sys::Inventory, "inventory.equip");
                d.mv(name.clone(), bag(p), equipped(p), it.template);
                d
            };
            if d.actor.is_none() {
                d.actor = Some(player(p));
            }
            (d, name)
        };
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::ItemPhantomSource, ev, Some(subject))
        });
    }

    fn random_other(&mut self, p: usize) -> usize {
        let q = self.rng.random_range(0..self.players - 1);
        if q >= p { q + 1 } else { q }
    }

    /// Moves, or re-mints, an item after it was burned. It then stays frozen.
    fn fault_resurrected(&mut self, r: usize, out: &mut Delivery) {
        let b = self.ensure_burned(r, out);
        let name = self.item_name(r, b.item.id);
        let mut d = if self.rng.random_bool(0.5) {
            let mut d = Draft::new(r, Sys::Inventory, "inventory.equip");
            d.mv(
                name.clone(),
                bag(b.owner),
                equipped(b.owner),
                b.item.template,
            );
            d
        } else {
            let mut d = Draft::new(r, Sys::Loot, "loot.drop");
            d.grant = Some(self.fresh_corpse_grant(r));
            d.mv(name.clone(), WORLD_LOOT, bag(b.owner), b.item.template);
            d
        };
        d.actor = Some(player(b.owner));
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::ItemResurrected, ev, Some(name))
        });
    }

    /// A second, otherwise valid redemption of a redeemed grant, with fresh item ids.
    fn fault_grant_reused(&mut self, r: usize, out: &mut Delivery) {
        let g = self.ensure_grant(r, out);
        let ix = self.next_ix;
        let (sys, kind, faucet, gold) = match g.sys {
            Sys::Quest => (
                Sys::Quest,
                "quest.reward",
                WORLD_QUEST,
                self.rng.random_range(20..=400),
            ),
            _ => (
                Sys::Loot,
                "loot.drop",
                WORLD_LOOT,
                self.rng.random_range(1..=50),
            ),
        };
        // A corpse can be looted twice by someone else; a quest names its player.
        let p = if sys == Sys::Loot && self.rng.random_bool(0.5) {
            self.random_player()
        } else {
            g.player
        };
        let mut d = Draft::new(r, sys, kind);
        d.actor = Some(player(p));
        d.grant = Some(g.grant.clone());
        if self.room(r, p) >= gold {
            d.transfer(faucet, player(p), GOLD, gold);
            self.receive_gold(r, p, gold, ix);
        }
        self.mint_to_bag(&mut d, r, p, faucet, LOOT_TEMPLATES, ix);
        let subject = g.grant;
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::GrantReused, ev, Some(subject))
        });
    }

    /// A system touches exactly one `world:` account it is not allowed: credits gold
    /// from it, mints an item from it, or pays gold into it.
    fn fault_unauthorized(&mut self, r: usize, out: &mut Delivery) {
        let pick = if self.rng.random_bool(0.2) {
            None
        } else {
            let n = self.faucets.len();
            (n > 0).then(|| self.rng.random_range(0..n))
        };
        let (account, allowed): (String, Vec<String>) = match pick {
            Some(k) => self.faucets[k].clone(),
            None => (UNLISTED_WORLD.to_string(), Vec::new()),
        };
        let systems: Vec<Sys> = Sys::ALL
            .into_iter()
            .filter(|s| !allowed.iter().any(|a| a == s.name()))
            .collect();
        let Some(&sys) = systems.choose(&mut self.rng) else {
            debug_assert!(false, "no world account is open to all 12 systems");
            return;
        };
        let p = self.random_player();
        let ix = self.next_ix;
        let x = self.rng.random_range(10..=300);
        let mut d = Draft::new(r, sys, sys.paying_kind());
        d.actor = Some(player(p));
        let variant = self.rng.random_range(0..3);
        if variant == 0 && self.room(r, p) >= x {
            d.transfer(account.clone(), player(p), GOLD, x);
            self.receive_gold(r, p, x, ix);
        } else if variant == 2 && self.realms[r].players[p].gold >= x {
            d.transfer(player(p), account.clone(), GOLD, x);
            self.realms[r].players[p].gold -= x;
        } else {
            let id = self.new_item_id(r);
            let template = LOOT_TEMPLATES
                .choose(&mut self.rng)
                .copied()
                .unwrap_or("trinket");
            d.mv(self.item_name(r, id), account.clone(), bag(p), template);
            self.realms[r].players[p].bag.push(Item {
                id,
                template,
                last: ix,
            });
        }
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::UnauthorizedFaucet, ev, Some(account))
        });
    }

    /// A player balance goes from ≥ 0 to < 0: the wallet (a repair costing more than
    /// the player has), the bank (a withdrawal of more than is in it), gems (a store
    /// purchase beyond them) or a stackable (selling potions one does not have). Each
    /// balance is overdrawn at most once; the model never debits it while negative.
    fn fault_overdraft(&mut self, r0: usize, out: &mut Delivery) {
        let nr = self.realms.len();
        for dr in 0..nr {
            let r = (r0 + dr) % nr;
            let start = self.random_player();
            for dp in 0..self.players {
                let p = (start + dp) % self.players;
                if self.try_overdraft(r, p, out) {
                    return;
                }
            }
        }
        // Every balance of every player is spent: the answer key holds fewer faults.
    }

    fn try_overdraft(&mut self, r: usize, p: usize, out: &mut Delivery) -> bool {
        let ix = self.next_ix;
        let k = self.rng.random_range(1..=100);
        let room = self.room(r, p);
        let pl = &self.realms[r].players[p];
        let eligible: Vec<Overdrawable> = Overdrawable::ALL
            .into_iter()
            .filter(|&o| {
                pl.overdrawn & o.bit() == 0
                    && match o {
                        Overdrawable::Wallet => pl.gold >= 0,
                        Overdrawable::Bank => pl.bank_gold >= 0 && room >= pl.bank_gold + k,
                        Overdrawable::Gems => pl.gems >= 0,
                        Overdrawable::Stack(s) => pl.stacks[s] >= 0,
                    }
            })
            .collect();
        // Gold first: the overdraft a live-ops engineer meets most.
        let gold: Vec<Overdrawable> = eligible
            .iter()
            .copied()
            .filter(|o| matches!(o, Overdrawable::Wallet | Overdrawable::Bank))
            .collect();
        let pool = if !gold.is_empty() && self.rng.random_bool(0.7) {
            &gold
        } else {
            &eligible
        };
        let Some(&what) = pool.choose(&mut self.rng) else {
            return false;
        };
        let (gold, in_bank, gems) = (pl.gold, pl.bank_gold, pl.gems);
        let mut d;
        match what {
            Overdrawable::Wallet => {
                d = Draft::new(r, Sys::Economy, "economy.repair");
                d.transfer(player(p), WORLD_REPAIR, GOLD, gold + k);
                self.realms[r].players[p].gold = -k;
            }
            Overdrawable::Bank => {
                d = Draft::new(r, Sys::Bank, "bank.withdraw");
                d.transfer(bank(p), player(p), GOLD, in_bank + k);
                self.realms[r].players[p].bank_gold = -k;
                self.receive_gold(r, p, in_bank + k, ix);
            }
            Overdrawable::Gems => {
                d = Draft::new(r, Sys::Economy, "economy.store_purchase");
                d.transfer(player(p), WORLD_STORE, GEMS, gems + k);
                self.realms[r].players[p].gems = -k;
                self.mint_to_bag(&mut d, r, p, WORLD_STORE, STORE_TEMPLATES, ix);
            }
            Overdrawable::Stack(s) => {
                let have = self.realms[r].players[p].stacks[s];
                d = Draft::new(r, Sys::Vendor, "vendor.sell");
                d.transfer(player(p), WORLD_VENDOR, STACKS[s], have + k);
                self.realms[r].players[p].stacks[s] = -k;
                let price = (have + k).min(60);
                if room >= price {
                    d.transfer(WORLD_VENDOR, player(p), GOLD, price);
                    self.receive_gold(r, p, price, ix);
                }
            }
        }
        self.realms[r].players[p].overdrawn |= what.bit();
        let subject = if what == Overdrawable::Bank {
            bank(p)
        } else {
            player(p)
        };
        d.actor = Some(player(p));
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::BalanceOverdraft, ev, Some(subject))
        });
        true
    }

    /// A heartbeat that skips one `seq`: the skipped one is the gap (never seq 1, since
    /// the stream has used at least one).
    fn fault_seq_gap(&mut self, r: usize, out: &mut Delivery) {
        let sys = self.ensure_stream(r, out);
        let missing = self.realms[r].seq[sys as usize] + 1;
        self.commit_fault(
            Draft::new(r, sys, "heartbeat"),
            SeqMode::SkipOne,
            out,
            |ev| Expected {
                invariant: Invariant::SeqGap,
                realm: ev.realm.to_string(),
                system: Some(sys.name().to_string()),
                tx_id: None,
                seq: Some(missing),
                subject: None,
            },
        );
    }

    /// A heartbeat with a new `tx_id` that re-uses the last `seq` a valid event of its
    /// stream carried. Delivered after the original (pinned), with a later `ts`, so it
    /// is unambiguously the re-use.
    fn fault_seq_reuse(&mut self, r: usize, out: &mut Delivery) {
        let sys = self.ensure_stream(r, out);
        self.commit_fault(Draft::new(r, sys, "heartbeat"), SeqMode::Reuse, out, |ev| {
            Expected {
                invariant: Invariant::SeqReuse,
                realm: ev.realm.to_string(),
                system: Some(sys.name().to_string()),
                tx_id: Some(ev.tx_id.clone()),
                seq: Some(ev.seq),
                subject: None,
            }
        });
    }

    /// A one-sided `trade.open` that never settles. Its gold and item stay in the
    /// escrow for good; `close` makes the stream run past the limit if it must.
    fn fault_escrow_stuck(&mut self, r: usize, out: &mut Delivery) {
        let p = self.random_player();
        {
            let pl = &self.realms[r].players[p];
            if pl.gold < 1 && pl.bag.is_empty() {
                self.loot_one_item(r, p, out);
            }
        }
        let ix = self.next_ix;
        let (gold, bag_len) = {
            let pl = &self.realms[r].players[p];
            (pl.gold, pl.bag.len())
        };
        let g = if gold >= 1 {
            self.rng.random_range(1..=gold.min(300))
        } else {
            0
        };
        let with_item = bag_len > 0 && (g == 0 || self.rng.random_bool(0.5));
        self.realms[r].next_trade += 1;
        let acct = trade_acct(self.realms[r].next_trade);
        let mut d = Draft::new(r, Sys::Trade, "trade.open");
        d.actor = Some(player(p));
        if g > 0 {
            d.transfer(player(p), acct.clone(), GOLD, g);
            self.realms[r].players[p].gold -= g;
        }
        if with_item {
            // Into the escrow and out of the model: it never comes back.
            let _stuck = self.bag_to_escrow(&mut d, r, p, 1, &acct, ix);
        }
        let subject = acct.clone();
        let ev = self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::EscrowStuck, ev, Some(subject))
        });
        let until = ev
            .ts
            .0
            .saturating_add(self.trade_hold_max_ns)
            .saturating_add(STUCK_MARGIN_NS);
        self.stuck_until = Some(self.stuck_until.map_or(until, |u| u.max(until)));
    }

    /// A loot drop of 6/5 of the policy's gold inflow limit to a player who has never
    /// been pushed over it. The model counts it, so the player receives no more gold
    /// until the window has passed.
    fn fault_velocity(&mut self, r0: usize, out: &mut Delivery) {
        let nr = self.realms.len();
        let mut target = None;
        'search: for dr in 0..nr {
            let r = (r0 + dr) % nr;
            let start = self.random_player();
            for dp in 0..self.players {
                let p = (start + dp) % self.players;
                if !self.realms[r].players[p].velocity_hit {
                    target = Some((r, p));
                    break 'search;
                }
            }
        }
        let Some((r, p)) = target else {
            // One per player (the engine reports a player once): the answer key holds
            // fewer faults.
            return;
        };
        let ix = self.next_ix;
        let amount = self.max_inflow.saturating_add(self.max_inflow / 5);
        let mut d = Draft::new(r, Sys::Loot, "loot.drop");
        d.actor = Some(player(p));
        d.grant = Some(self.fresh_corpse_grant(r));
        d.transfer(WORLD_LOOT, player(p), GOLD, amount);
        self.receive_gold(r, p, amount, ix);
        self.realms[r].players[p].velocity_hit = true;
        let subject = player(p);
        self.commit_fault(d, SeqMode::Next, out, |ev| {
            expect_tx(Invariant::Velocity, ev, Some(subject))
        });
    }

    /// An event that breaks the contract but still names itself (`tx_id`, `realm`,
    /// `system`, `seq`). It takes the next `seq` (the engine counts it consumed) and
    /// is not applied to the model.
    fn fault_malformed(&mut self, r: usize, out: &mut Delivery) {
        let sys = Sys::ALL.choose(&mut self.rng).copied().unwrap_or(Sys::Loot);
        let p = self.random_player();
        let q = if self.players >= 2 {
            self.random_other(p)
        } else {
            p
        };
        let mut d = Draft::new(r, sys, sys.paying_kind());
        d.actor = Some(player(p));
        let (ev, _ix) = self.stamp(d, SeqMode::Next);
        let mut v = serde_json::to_value(ev.to_wire()).expect("an event serializes to JSON");
        let Some(obj) = v.as_object_mut() else {
            unreachable!("a struct serializes to a JSON object");
        };
        match self.rng.random_range(0..6) {
            0 => {
                obj.insert(
                    "postings".into(),
                    json!([{"account": player(p), "asset": GOLD, "delta": 0}]),
                );
            }
            1 => {
                let bad = match self.rng.random_range(0..3) {
                    // No offset. (A space for `T` would not do: RFC 3339 allows it.)
                    0 => Value::from(ev.ts.to_rfc3339().trim_end_matches('Z').to_string()),
                    1 => Value::from("yesterday"),
                    _ => Value::from(ev.ts.unix_millis() / 1_000),
                };
                obj.insert("ts".into(), bad);
            }
            2 => {
                obj.remove("kind");
            }
            3 => {
                obj.insert("v".into(), Value::from(2));
            }
            4 => {
                let legs: Vec<Value> = (0..300)
                    .map(|i| {
                        let (acct, delta) = if i % 2 == 0 {
                            (player(p), -1)
                        } else {
                            (player(q), 1)
                        };
                        json!({"account": acct, "asset": GOLD, "delta": delta})
                    })
                    .collect();
                obj.insert("postings".into(), Value::Array(legs));
            }
            _ => {
                obj.insert(
                    "postings".into(),
                    json!([
                        {"account": "gold_pool", "asset": GOLD, "delta": -5},
                        {"account": player(p), "asset": GOLD, "delta": 5},
                    ]),
                );
            }
        }
        let line = serde_json::to_vec(&v).expect("a JSON value serializes");
        let expected = Expected {
            invariant: Invariant::Malformed,
            realm: ev.realm.to_string(),
            system: Some(sys.name().to_string()),
            tx_id: Some(ev.tx_id.clone()),
            seq: Some(ev.seq),
            subject: None,
        };
        out.push_fault(ev.ts.0, ev.stream(), ev.seq, line, expected);
    }
}
