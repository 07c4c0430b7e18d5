//! The reference world's stores, as rows (issue #4): what each system's database table
//! and the Redis wallet cache hold if the game wrote every committed transaction
//! correctly — and, on request, drift planted in them with an answer key.
//!
//! Pure: the model is fed the NDJSON lines the simulator emits and yields rows and row
//! changes; `crate::adapters::sim_stores` writes them to PostgreSQL and Redis.
//!
//! The model is written independently of the auditor's ledger (it is what a game
//! server's persistence layer would do): balances are sums of postings, an item is
//! where its newest move (by commit `ts`) put it, a move to a `world:` sink deletes it.
//! Each `tx_id` is applied once (the first version delivered, as the auditor does), so
//! benign redeliveries and reordering do not change the stores.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashSet;
use serde::Serialize;

use crate::core::event::{decode, is_world};
use crate::core::finding::Invariant;
use crate::core::recon::{Expected, RowKey, Scalar, Space};
use crate::core::time::Timestamp;

/// One materialized table: the system that owns it, what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub table: &'static str,
    pub system: &'static str,
    pub space: Space,
    /// Glob patterns of the accounts (balances) or locations (items) it holds.
    pub owns: &'static [&'static str],
}

/// The reference world's tables. Vendor, crafting, quest, loot and character move
/// value between players and `world:` faucets/sinks and hold no state of their own;
/// the other systems each own their tables.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        table: "wallets",
        system: "economy",
        space: Space::Balances,
        owns: &["player:*"],
    },
    TableSpec {
        table: "inventory_items",
        system: "inventory",
        space: Space::Items,
        owns: &["player:*/bag", "player:*/equipped"],
    },
    TableSpec {
        table: "bank_gold",
        system: "bank",
        space: Space::Balances,
        owns: &["player:*/bank"],
    },
    TableSpec {
        table: "bank_items",
        system: "bank",
        space: Space::Items,
        owns: &["player:*/bank"],
    },
    TableSpec {
        table: "mail_attachments",
        system: "mail",
        space: Space::Items,
        owns: &["mail:*"],
    },
    TableSpec {
        table: "mail_gold",
        system: "mail",
        space: Space::Balances,
        owns: &["mail:*"],
    },
    TableSpec {
        table: "auction_listings",
        system: "auction",
        space: Space::Items,
        owns: &["auction:*"],
    },
    TableSpec {
        table: "auction_escrow",
        system: "auction",
        space: Space::Balances,
        owns: &["auction:*"],
    },
    TableSpec {
        table: "trade_items",
        system: "trade",
        space: Space::Items,
        owns: &["trade:*"],
    },
    TableSpec {
        table: "trade_escrow",
        system: "trade",
        space: Space::Balances,
        owns: &["trade:*"],
    },
    TableSpec {
        table: "guild_bank_items",
        system: "guild_bank",
        space: Space::Items,
        owns: &["guild:*"],
    },
    TableSpec {
        table: "guild_bank_gold",
        system: "guild_bank",
        space: Space::Balances,
        owns: &["guild:*"],
    },
];

/// The Redis wallet cache mirrors this table.
pub const CACHE_OF: &str = "wallets";
/// The store name of the Redis wallet cache (in the example config and answer keys).
pub const CACHE_STORE: &str = "wallet_cache";

/// Each table's ownership, compiled once.
static OWNERSHIP: std::sync::LazyLock<Vec<globset::GlobSet>> = std::sync::LazyLock::new(|| {
    TABLES
        .iter()
        .map(|t| {
            let owns: Vec<String> = t.owns.iter().map(|p| p.to_string()).collect();
            crate::core::recon::glob_set(&owns).expect("the built-in patterns are valid")
        })
        .collect()
});

/// The table a balance (by account) or an item copy (by location) lives in.
pub fn table_for(space: Space, owner: &str) -> Option<&'static TableSpec> {
    TABLES
        .iter()
        .zip(OWNERSHIP.iter())
        .find(|(t, g)| t.space == space && g.is_match(owner))
        .map(|(t, _)| t)
}

/// A row change to write: the key's rows in `table` are replaced by `values` (empty:
/// deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub table: &'static str,
    pub realm: String,
    pub key: RowKey,
    pub values: Vec<Scalar>,
}

/// `[[store]]` config sections describing the reference world's stores of `realm`:
/// one PostgreSQL store per table in `db` (as [`crate::adapters::sim_stores`] writes
/// them), and, with `cache = Some((redis_url, key_prefix))`, the Redis wallet cache.
/// `wallets_query` replaces the wallets table's query.
pub fn store_config_toml(
    db: &str,
    realm: &str,
    cache: Option<(&str, &str)>,
    wallets_query: Option<&str>,
) -> String {
    let mut t = String::new();
    for spec in TABLES {
        let owns: Vec<String> = spec.owns.iter().map(|p| format!("\"{p}\"")).collect();
        let (own_key, query_key, cols) = match spec.space {
            // `ctid`: pull mode reads these single-table stores by page ranges.
            Space::Balances => (
                "accounts",
                "balances_query",
                "account, asset, balance, ctid",
            ),
            Space::Items => ("locations", "items_query", "item, location, ctid"),
        };
        let query = match (spec.table, wallets_query) {
            ("wallets", Some(q)) => q.to_string(),
            _ => format!("SELECT {cols} FROM {} WHERE realm = '{realm}'", spec.table),
        };
        t.push_str(&format!(
            "[[store]]\nname = \"{}\"\nsystem = \"{}\"\nrealm = \"{realm}\"\nkind = \"postgres\"\n\
             url = \"{db}\"\n{own_key} = [{}]\n{query_key} = \"{query}\"\n\n",
            spec.table,
            spec.system,
            owns.join(", ")
        ));
    }
    if let Some((redis_url, prefix)) = cache {
        t.push_str(&format!(
            "[[store]]\nname = \"wallet_cache\"\nsystem = \"economy\"\nrealm = \"{realm}\"\nkind = \"redis\"\n\
             url = \"{redis_url}\"\naccounts = [\"player:*\"]\nkey_prefix = \"{prefix}{realm}:\"\n"
        ));
    }
    t
}

/// The stores as the game would have written them.
#[derive(Default)]
pub struct StoreWorld {
    balances: BTreeMap<(String, String, String), i128>,
    /// (realm, item) → (location, ts of the move that put it there); `None`: burned
    /// (kept, so an older move delivered late does not bring it back).
    items: BTreeMap<(String, String), (Option<String>, Timestamp)>,
    seen: FxHashSet<String>,
}

impl StoreWorld {
    pub fn new() -> StoreWorld {
        StoreWorld::default()
    }

    /// Applies one NDJSON line; returns the rows it changed. Lines that do not decode
    /// (the simulator's malformed faults) and repeated `tx_id`s change nothing.
    pub fn apply_line(&mut self, line: &[u8]) -> Vec<Change> {
        let Ok(ev) = decode(line) else {
            return Vec::new();
        };
        if !self.seen.insert(ev.wire.tx_id.to_string()) {
            return Vec::new();
        }
        let realm = ev.realm().to_string();
        let mut out = Vec::new();
        for p in &ev.wire.postings {
            if is_world(&p.account) {
                continue;
            }
            let k = (realm.clone(), p.account.to_string(), p.asset.to_string());
            let v = self.balances.entry(k.clone()).or_insert(0);
            *v += i128::from(p.delta);
            let now = *v;
            if now == 0 {
                self.balances.remove(&k);
            }
            if let Some(t) = table_for(Space::Balances, &p.account) {
                out.push(Change {
                    table: t.table,
                    realm: realm.clone(),
                    key: RowKey::Balance {
                        account: p.account.to_string(),
                        asset: p.asset.to_string(),
                    },
                    values: if now == 0 {
                        Vec::new()
                    } else {
                        vec![Scalar::Int(now)]
                    },
                });
            }
        }
        for m in &ev.wire.items {
            let k = (realm.clone(), m.item.to_string());
            let old = self.items.get(&k).cloned();
            if let Some((_, ts)) = &old
                && *ts > ev.ts
            {
                continue; // a newer move already placed it (delivered out of order)
            }
            let key = RowKey::Item {
                item: m.item.to_string(),
            };
            if let Some((Some(loc), _)) = &old
                && let Some(t) = table_for(Space::Items, loc)
            {
                out.push(Change {
                    table: t.table,
                    realm: realm.clone(),
                    key: key.clone(),
                    values: Vec::new(),
                });
            }
            if is_world(&m.to) {
                self.items.insert(k, (None, ev.ts));
            } else {
                self.items.insert(k, (Some(m.to.to_string()), ev.ts));
                if let Some(t) = table_for(Space::Items, &m.to) {
                    out.push(Change {
                        table: t.table,
                        realm: realm.clone(),
                        key,
                        values: vec![Scalar::Str(m.to.to_string())],
                    });
                }
            }
        }
        out
    }

    /// The key's value now (a balance, or an item's location), whatever table holds it.
    pub fn current(&self, realm: &str, key: &RowKey) -> Vec<Scalar> {
        match key {
            RowKey::Balance { account, asset } => self
                .balances
                .get(&(realm.to_string(), account.clone(), asset.clone()))
                .map(|v| vec![Scalar::Int(*v)])
                .unwrap_or_default(),
            RowKey::Item { item } => self
                .items
                .get(&(realm.to_string(), item.clone()))
                .and_then(|(l, _)| l.clone())
                .map(|l| vec![Scalar::Str(l)])
                .unwrap_or_default(),
        }
    }

    /// The whole state in the auditor's terms (for tests that stand in for the engine).
    pub fn expected(&self) -> Expected {
        let mut e = Expected::default();
        for ((realm, account, asset), v) in &self.balances {
            e.add_balance(realm, account, asset, *v);
        }
        for ((realm, item), (loc, _)) in &self.items {
            if let Some(loc) = loc {
                e.add_item(realm, item, loc);
            }
        }
        e
    }

    /// Every table's rows, for a full materialization.
    pub fn tables(&self) -> Tables {
        let mut t = Tables::default();
        for spec in TABLES {
            t.rows.insert(spec.table, BTreeMap::new());
        }
        for ((realm, account, asset), v) in &self.balances {
            if let Some(spec) = table_for(Space::Balances, account) {
                t.rows.entry(spec.table).or_default().insert(
                    (
                        realm.clone(),
                        RowKey::Balance {
                            account: account.clone(),
                            asset: asset.clone(),
                        },
                    ),
                    vec![Scalar::Int(*v)],
                );
            }
        }
        for ((realm, item), (loc, _)) in &self.items {
            let Some(loc) = loc else { continue };
            if let Some(spec) = table_for(Space::Items, loc) {
                t.rows.entry(spec.table).or_default().insert(
                    (realm.clone(), RowKey::Item { item: item.clone() }),
                    vec![Scalar::Str(loc.clone())],
                );
            }
        }
        t.cache = t.rows.get(CACHE_OF).cloned().unwrap_or_default();
        t
    }
}

/// Rows per table: (realm, key) → values; plus the Redis wallet cache (same shape as
/// `wallets`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tables {
    pub rows: BTreeMap<&'static str, BTreeMap<(String, RowKey), Vec<Scalar>>>,
    pub cache: BTreeMap<(String, RowKey), Vec<Scalar>>,
}

/// The changes that turn `from` into `to`: (table changes, cache changes).
pub fn diff_tables(from: &Tables, to: &Tables) -> (Vec<Change>, Vec<Change>) {
    fn diff(
        table: &'static str,
        a: &BTreeMap<(String, RowKey), Vec<Scalar>>,
        b: &BTreeMap<(String, RowKey), Vec<Scalar>>,
        out: &mut Vec<Change>,
    ) {
        for ((realm, key), v) in b {
            if a.get(&(realm.clone(), key.clone())) != Some(v) {
                out.push(Change {
                    table,
                    realm: realm.clone(),
                    key: key.clone(),
                    values: v.clone(),
                });
            }
        }
        for (realm, key) in a.keys() {
            if !b.contains_key(&(realm.clone(), key.clone())) {
                out.push(Change {
                    table,
                    realm: realm.clone(),
                    key: key.clone(),
                    values: Vec::new(),
                });
            }
        }
    }
    let mut tables = Vec::new();
    let empty = BTreeMap::new();
    for (t, rows) in &to.rows {
        diff(t, from.rows.get(t).unwrap_or(&empty), rows, &mut tables);
    }
    let mut cache = Vec::new();
    diff(CACHE_OF, &from.cache, &to.cache, &mut cache);
    (tables, cache)
}

/// A drift class that `--inject-drift` plants in the stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drift {
    /// A row's value changed (a balance, or an item's location).
    ValueChanged,
    /// A row deleted (a lost write).
    RowDeleted,
    /// A row the stream never created (a dupe done straight in the database).
    RowInserted,
    /// The Redis wallet cache holds an old balance.
    RedisStale,
}

impl Drift {
    pub const ALL: [Drift; 4] = [
        Drift::ValueChanged,
        Drift::RowDeleted,
        Drift::RowInserted,
        Drift::RedisStale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drift::ValueChanged => "value_changed",
            Drift::RowDeleted => "row_deleted",
            Drift::RowInserted => "row_inserted",
            Drift::RedisStale => "redis_stale",
        }
    }
}

/// Parses `CLASS=N` for `--inject-drift`.
pub fn parse_drift(s: &str) -> Result<(Drift, usize), String> {
    let (class, n) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected CLASS=N"))?;
    let d = Drift::ALL
        .into_iter()
        .find(|d| d.name() == class)
        .ok_or_else(|| {
            format!(
                "`{class}` is not a drift class (one of: {})",
                Drift::ALL.map(Drift::name).join(", ")
            )
        })?;
    let n: usize = n
        .parse()
        .map_err(|_| format!("`{n}`: N must be a non-negative integer"))?;
    Ok((d, n))
}

/// One planted drift: the finding reconciliation must raise for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlantedDrift {
    pub class: Drift,
    pub invariant: Invariant,
    /// The store name: the table, or [`CACHE_STORE`].
    pub store: String,
    pub system: String,
    pub realm: String,
    pub key: RowKey,
    pub expected: Vec<Scalar>,
    pub actual: Vec<Scalar>,
}

/// Plants `n` drifts of each requested class in `tables`, deterministically from
/// `seed`; no key is drifted twice. Returns what was planted (fewer than asked when
/// the world has too few rows of a kind).
pub fn inject_drift(tables: &mut Tables, plan: &[(Drift, usize)], seed: u64) -> Vec<PlantedDrift> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd81f_7000);
    let mut used: BTreeSet<(String, String, RowKey)> = BTreeSet::new();
    let mut out = Vec::new();
    let system_of = |table: &str| {
        TABLES
            .iter()
            .find(|t| t.table == table)
            .map(|t| t.system)
            .unwrap_or("economy")
    };
    // Tables that hold rows, alternating balances and items for variety.
    for &(class, n) in plan {
        for i in 0..n {
            let store_table: &'static str = match class {
                Drift::RedisStale => CACHE_OF,
                _ if i % 2 == 0 => "wallets",
                _ => "inventory_items",
            };
            let source = if class == Drift::RedisStale {
                &tables.cache
            } else {
                &tables.rows[store_table]
            };
            let store_name = if class == Drift::RedisStale {
                CACHE_STORE.to_string()
            } else {
                store_table.to_string()
            };
            if class == Drift::RowInserted {
                let realm = source
                    .keys()
                    .next()
                    .map(|(r, _)| r.clone())
                    .unwrap_or_else(|| "realm-1".into());
                let (key, value) = match store_table {
                    "wallets" => (
                        RowKey::Balance {
                            account: format!("player:{}", 900_000 + i),
                            asset: "gold".into(),
                        },
                        Scalar::Int(rng.random_range(100..10_000)),
                    ),
                    _ => (
                        RowKey::Item {
                            item: format!("itm:forged-{i}"),
                        },
                        Scalar::Str(format!("player:{}/bag", 1 + i)),
                    ),
                };
                tables
                    .rows
                    .get_mut(store_table)
                    .expect("table exists")
                    .insert((realm.clone(), key.clone()), vec![value.clone()]);
                out.push(PlantedDrift {
                    class,
                    invariant: Invariant::ReconUnexpected,
                    store: store_name,
                    system: system_of(store_table).into(),
                    realm,
                    key,
                    expected: vec![],
                    actual: vec![value],
                });
                continue;
            }
            let candidates: Vec<&(String, RowKey)> = source
                .keys()
                .filter(|(r, k)| !used.contains(&(store_name.clone(), r.clone(), k.clone())))
                .collect();
            if candidates.is_empty() {
                break;
            }
            let (realm, key) = candidates[rng.random_range(0..candidates.len())].clone();
            used.insert((store_name.clone(), realm.clone(), key.clone()));
            let expected = source[&(realm.clone(), key.clone())].clone();
            let target = if class == Drift::RedisStale {
                &mut tables.cache
            } else {
                tables.rows.get_mut(store_table).expect("table exists")
            };
            let (invariant, actual) = match class {
                Drift::RowDeleted => {
                    target.remove(&(realm.clone(), key.clone()));
                    (Invariant::ReconMissing, vec![])
                }
                _ => {
                    let new = match &expected[0] {
                        Scalar::Int(v) => Scalar::Int(v + rng.random_range(1..500)),
                        Scalar::Str(loc) => Scalar::Str(format!("{loc}-moved")),
                    };
                    target.insert((realm.clone(), key.clone()), vec![new.clone()]);
                    (Invariant::ReconValueMismatch, vec![new])
                }
            };
            out.push(PlantedDrift {
                class,
                invariant,
                store: store_name,
                system: system_of(store_table).into(),
                realm,
                key,
                expected,
                actual,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::recon::RowRef;
    use crate::sim::{Noise, SimConfig, generate};

    fn world(noise: Noise) -> Tables {
        let cfg = SimConfig {
            events: 3_000,
            noise,
            ..SimConfig::default()
        };
        let mut s = StoreWorld::new();
        generate(&cfg, &mut |l: &[u8]| {
            s.apply_line(l);
        });
        s.tables()
    }

    #[test]
    fn benign_noise_does_not_change_the_stores() {
        let (a, b) = (world(Noise::default()), world(Noise::none()));
        for (t, rows) in &a.rows {
            let other = &b.rows[t];
            let diff: Vec<_> = rows
                .iter()
                .filter(|(k, v)| other.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone(), other.get(k).cloned()))
                .chain(
                    other
                        .iter()
                        .filter(|(k, _)| !rows.contains_key(*k))
                        .map(|(k, v)| (k.clone(), Vec::new(), Some(v.clone()))),
                )
                .collect();
            assert!(diff.is_empty(), "{t}: {diff:?}");
        }
        assert_eq!(a, b);
    }

    #[test]
    fn the_stores_hold_what_the_auditor_expects() {
        use crate::core::engine::Engine;
        use crate::core::policy::Policy;
        use crate::core::recon::Expected;
        let cfg = SimConfig {
            events: 3_000,
            ..SimConfig::default()
        };
        let mut s = StoreWorld::new();
        let mut engine = Engine::new(Policy::builtin());
        let mut f = Vec::new();
        generate(&cfg, &mut |l: &[u8]| {
            s.apply_line(l);
            engine.ingest(l, Timestamp(0), &mut f);
        });
        engine.finish(Timestamp(0), &mut f);
        let e = Expected::from_engine(&engine, None);
        let t = s.tables();
        let wallets = &t.rows["wallets"];
        let want: usize = e
            .realms()
            .flat_map(|r| e.realm_refs(r, Space::Balances))
            .filter(|r| {
                let RowRef::Balance { account, .. } = r else {
                    return false;
                };
                table_for(Space::Balances, account).map(|t| t.table) == Some("wallets")
            })
            .count();
        assert_eq!(wallets.len(), want);
        for ((realm, key), v) in wallets {
            let RowKey::Balance { account, asset } = key else {
                panic!("a balance key")
            };
            assert_eq!(
                e.balance(realm, account, asset)
                    .expect("an expected balance"),
                match v[0] {
                    Scalar::Int(i) => i,
                    _ => panic!("an amount"),
                }
            );
        }
        assert!(t.rows["inventory_items"].len() > 10);
    }

    #[test]
    fn drift_is_planted_as_asked_and_deterministic() {
        let base = world(Noise::none());
        let plan = [
            (Drift::ValueChanged, 4),
            (Drift::RowDeleted, 3),
            (Drift::RowInserted, 2),
            (Drift::RedisStale, 2),
        ];
        let mut a = base.clone();
        let pa = inject_drift(&mut a, &plan, 7);
        let mut b = base.clone();
        let pb = inject_drift(&mut b, &plan, 7);
        assert_eq!(pa, pb);
        assert_eq!(a, b);
        assert_eq!(pa.len(), 11);
        assert_ne!(a, base);
        assert!(parse_drift("value_changed=3").is_ok());
        assert!(parse_drift("nope=3").is_err());
        assert!(parse_drift("row_deleted=x").is_err());
    }
}
