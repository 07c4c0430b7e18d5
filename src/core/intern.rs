//! Interned identifiers. Every realm, system, account, location, asset and item id is
//! stored once and referred to by a 4-byte [`Sym`], which keeps per-balance and per-item
//! state a few bytes wide (the engine's memory budget is < 200 bytes per live entry).

use lasso::{Key, Rodeo, Spur};
use serde::{Deserialize, Serialize};

/// An interned string. Only meaningful with the [`Interner`] that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sym(Spur);

impl Sym {
    /// A dense index (0-based), usable to index side tables.
    pub fn index(self) -> usize {
        self.0.into_usize()
    }
}

/// Cached per-string facts, so the hot path does not re-parse prefixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Class {
    /// A `world:` account or location (faucet/sink).
    pub world: bool,
    /// Index into the policy's escrow rules when the string matches an escrow prefix.
    pub escrow_rule: Option<u8>,
    /// Bit i set when velocity rule i's account prefix matches (rules 0..8).
    pub velocity_rules: u8,
}

#[derive(Serialize, Deserialize)]
pub struct Interner {
    rodeo: Rodeo<Spur, foldhash::fast::FixedState>,
    /// Derived from the policy: rebuilt lazily, never snapshotted.
    #[serde(skip)]
    classes: Vec<Option<Class>>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            rodeo: Rodeo::with_hasher(foldhash::fast::FixedState::default()),
            classes: Vec::new(),
        }
    }
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Sym {
        Sym(self.rodeo.get_or_intern(s))
    }

    pub fn get(&self, s: &str) -> Option<Sym> {
        self.rodeo.get(s).map(Sym)
    }

    pub fn resolve(&self, sym: Sym) -> &str {
        self.rodeo.resolve(&sym.0)
    }

    pub fn len(&self) -> usize {
        self.rodeo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rodeo.is_empty()
    }

    /// The class of `sym`, computed once by `classify` and cached.
    pub fn class(&mut self, sym: Sym, classify: impl FnOnce(&str) -> Class) -> Class {
        let i = sym.index();
        if i >= self.classes.len() {
            self.classes.resize(i + 1, None);
        }
        if let Some(c) = self.classes[i] {
            return c;
        }
        let c = classify(self.rodeo.resolve(&sym.0));
        self.classes[i] = Some(c);
        c
    }

    /// Heap bytes held: the string arena plus the lookup tables (estimated from
    /// capacities; hashbrown stores one control byte per bucket).
    pub fn heap_bytes(&self) -> usize {
        let strings = self.rodeo.current_memory_usage();
        let n = self.rodeo.len();
        // Rodeo keeps a hash table of keys and a Vec<&str> of all strings.
        let table = n.next_power_of_two() * 8 / 7 * (std::mem::size_of::<Spur>() + 1);
        let vec = n * std::mem::size_of::<&str>();
        strings + table + vec + self.classes.capacity() * std::mem::size_of::<Option<Class>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_idempotent_and_resolves() {
        let mut i = Interner::default();
        let a = i.intern("player:42");
        let b = i.intern("player:42");
        assert_eq!(a, b);
        assert_eq!(i.resolve(a), "player:42");
        assert_eq!(i.get("nope"), None);
        let c = i.class(a, |s| Class {
            world: s.starts_with("world:"),
            escrow_rule: None,
            velocity_rules: 0,
        });
        assert!(!c.world);
    }
}
