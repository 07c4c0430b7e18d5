//! The state the stream implies at a watermark, as reconciliation compares it: non-zero
//! balances of non-`world:` accounts and live item copies, per realm.
//!
//! Compact, because a reconciliation holds it whole next to the engine: every string
//! lives once in one arena (realms and assets, the few values repeated on every row,
//! are interned), and the rows are flat vectors read in order — ~48 bytes a balance and
//! ~40 an item copy plus their key text, where owned `String` maps took ~230. Looking a
//! balance up ([`Expected::balance`], for tests and tools; reconciliation itself never
//! looks keys up) builds a hash index of the balances on first use.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use super::engine::Engine;
use super::event::is_world;
use super::recon::{Ownership, Row, RowRef, Space};
use super::time::Timestamp;

/// A string in the arena.
#[derive(Clone, Copy, Debug)]
struct Span {
    at: usize,
    len: u32,
}

#[derive(Clone, Debug)]
struct Balance {
    realm: u32,
    asset: u32,
    account: Span,
    balance: i128,
}

#[derive(Clone, Debug)]
struct Item {
    realm: u32,
    item: Span,
    location: Span,
}

/// A small set of distinct strings (realms, assets), by index.
#[derive(Clone, Debug, Default)]
struct Names {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Names {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.index.get(s).copied()
    }

    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// The newest committed `ts` applied (the stream watermark compared at).
    pub watermark_ts: Option<Timestamp>,
    /// The journal position the state is at (`None` for an offline `--events` audit).
    pub watermark_position: Option<i64>,
    text: String,
    realms: Names,
    assets: Names,
    balances: Vec<Balance>,
    items: Vec<Item>,
    /// Per balance row, the top 32 bits of the hash of (realm, account, asset) above its
    /// place in the low 32 bits, sorted: 8 bytes a row, built on the first look-up.
    index: OnceLock<Vec<u64>>,
}

fn key_of(realm: &str, account: &str, asset: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (realm, account, asset).hash(&mut h);
    h.finish()
}

impl Expected {
    /// Copies the state out of a finished engine (every accepted event applied).
    pub fn from_engine(engine: &Engine, watermark_position: Option<i64>) -> Expected {
        let interner = engine.interner();
        let ledger = engine.ledger();
        let mut e = Expected {
            watermark_ts: engine.streams().map(|(_, _, _, ts)| ts).max(),
            watermark_position,
            ..Expected::default()
        };
        for (realm, account, asset, v) in ledger.balances(interner) {
            if !is_world(account) {
                e.add_balance(realm, account, asset, v);
            }
        }
        for (realm, item, loc) in ledger.item_copies(interner) {
            e.add_item(&realm, &item, &loc);
        }
        e
    }

    fn put(&mut self, s: &str) -> Span {
        let at = self.text.len();
        self.text.push_str(s);
        Span {
            at,
            // A key or location longer than 4 GiB cannot come out of events-v1.
            len: u32::try_from(s.len()).unwrap_or(u32::MAX),
        }
    }

    fn str(&self, s: Span) -> &str {
        &self.text[s.at..s.at + s.len as usize]
    }

    /// Adds a balance (each (realm, account, asset) once; zero balances are no row). At
    /// most 2^31 rows of each space can be looked up.
    pub fn add_balance(&mut self, realm: &str, account: &str, asset: &str, balance: i128) {
        let realm = self.realms.intern(realm);
        let asset = self.assets.intern(asset);
        let account = self.put(account);
        self.balances.push(Balance {
            realm,
            asset,
            account,
            balance,
        });
        self.index = OnceLock::new();
    }

    /// Adds one live copy of an item at a location.
    pub fn add_item(&mut self, realm: &str, item: &str, location: &str) {
        let realm = self.realms.intern(realm);
        let item = self.put(item);
        let location = self.put(location);
        self.items.push(Item {
            realm,
            item,
            location,
        });
    }

    /// The heap memory the state holds (strings, rows, the key index once built).
    pub fn heap_bytes(&self) -> usize {
        // Each name twice (the list and the map's key) plus ~48 bytes of map entry.
        let names = |n: &Names| {
            n.names.iter().map(|s| 2 * s.capacity() + 48).sum::<usize>()
                + n.names.capacity() * std::mem::size_of::<String>()
        };
        self.text.capacity()
            + names(&self.realms)
            + names(&self.assets)
            + self.balances.capacity() * std::mem::size_of::<Balance>()
            + self.items.capacity() * std::mem::size_of::<Item>()
            + self.index.get().map_or(0, |i| i.capacity() * 8)
    }

    /// Rows of `space` in all realms and slices (an upper bound of a slice's size).
    pub fn len(&self, space: Space) -> usize {
        match space {
            Space::Balances => self.balances.len(),
            Space::Items => self.items.len(),
        }
    }

    /// The realms the state has rows in.
    pub fn realms(&self) -> impl Iterator<Item = &str> {
        self.realms.names.iter().map(String::as_str)
    }

    /// One balance (`None`: no row).
    pub fn balance(&self, realm: &str, account: &str, asset: &str) -> Option<i128> {
        self.lookup(realm, account, asset)
            .map(|i| self.balances[i].balance)
            .next()
    }

    /// The expected rows of one store: its realm, its space, its owned keys.
    pub fn slice<'a>(
        &'a self,
        realm: &'a str,
        space: Space,
        own: &'a Ownership,
    ) -> Box<dyn Iterator<Item = Row> + 'a> {
        Box::new(self.slice_refs(realm, space, own).map(|r| r.to_row()))
    }

    /// [`Expected::slice`] borrowed, for digesting without copies.
    pub fn slice_refs<'a>(
        &'a self,
        realm: &'a str,
        space: Space,
        own: &'a Ownership,
    ) -> impl Iterator<Item = RowRef<'a>> + 'a {
        self.realm_refs(realm, space).filter(move |r| own.owns(r))
    }

    /// Every expected row of one realm and space, owned by any store (filter with
    /// [`Ownership::owns`], e.g. in parallel), in the order they were added.
    pub fn realm_refs<'a>(
        &'a self,
        realm: &str,
        space: Space,
    ) -> Box<dyn Iterator<Item = RowRef<'a>> + Send + 'a> {
        let Some(r) = self.realms.get(realm) else {
            return Box::new(std::iter::empty());
        };
        match space {
            Space::Balances => {
                Box::new(self.balances.iter().filter(move |b| b.realm == r).map(|b| {
                    RowRef::Balance {
                        account: self.str(b.account),
                        asset: self.assets.name(b.asset),
                        balance: b.balance,
                    }
                }))
            }
            Space::Items => {
                Box::new(
                    self.items
                        .iter()
                        .filter(move |i| i.realm == r)
                        .map(|i| RowRef::Item {
                            item: self.str(i.item),
                            location: self.str(i.location),
                        }),
                )
            }
        }
    }

    /// The balance rows of (realm, account, asset): one at most.
    fn lookup<'a>(
        &'a self,
        realm: &'a str,
        account: &'a str,
        asset: &'a str,
    ) -> impl Iterator<Item = usize> + 'a {
        const HIGH: u64 = !0xFFFF_FFFF;
        let index = self.index.get_or_init(|| {
            let mut v: Vec<u64> = self
                .balances
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let h = key_of(
                        self.realms.name(b.realm),
                        self.str(b.account),
                        self.assets.name(b.asset),
                    );
                    (h & HIGH) | i as u64
                })
                .collect();
            v.sort_unstable();
            v
        });
        // Equal top bits: the key's row, and the rare other key that shares them (told
        // apart by comparing the strings).
        let top = key_of(realm, account, asset) & HIGH;
        let from = index.partition_point(|&x| x < top);
        index[from..]
            .iter()
            .take_while(move |&&x| x & HIGH == top)
            .map(|&x| (x & 0xFFFF_FFFF) as usize)
            .filter(move |&i| {
                self.balances.get(i).is_some_and(|b| {
                    self.realms.name(b.realm) == realm
                        && self.str(b.account) == account
                        && self.assets.name(b.asset) == asset
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_as_added_and_keys_are_found() {
        let mut e = Expected::default();
        e.add_balance("r1", "player:1", "gold", 3);
        e.add_balance("r2", "player:1", "gold", 4);
        e.add_balance("r1", "player:1", "gem", -2);
        e.add_item("r1", "itm:1", "player:1/bank");
        e.add_item("r1", "itm:1", "player:1/bag");
        e.add_item("r1", "itm:2", "player:2/bag");
        assert_eq!(e.len(Space::Balances), 3);
        assert_eq!(e.len(Space::Items), 3);
        assert_eq!(e.balance("r1", "player:1", "gold"), Some(3));
        assert_eq!(e.balance("r2", "player:1", "gold"), Some(4));
        assert_eq!(e.balance("r2", "player:1", "gem"), None);
        assert_eq!(e.balance("r3", "player:1", "gold"), None);
        let all = Ownership::new(vec!["*".into()], vec!["*/*".into()]).expect("globs");
        // Both copies of itm:1 come back.
        let items: Vec<Row> = e.slice("r1", Space::Items, &all).collect();
        assert_eq!(
            items,
            vec![
                Row::item("itm:1", "player:1/bank"),
                Row::item("itm:1", "player:1/bag"),
                Row::item("itm:2", "player:2/bag")
            ]
        );
        let r1: Vec<Row> = e.slice("r1", Space::Balances, &all).collect();
        assert_eq!(
            r1,
            vec![
                Row::balance("player:1", "gold", 3),
                Row::balance("player:1", "gem", -2)
            ]
        );
        // Added after a look-up: found too (the index is rebuilt).
        e.add_balance("r1", "player:9", "gold", 1);
        assert_eq!(e.balance("r1", "player:9", "gold"), Some(1));
        assert!(e.realm_refs("nowhere", Space::Items).next().is_none());
    }
}
