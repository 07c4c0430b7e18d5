//! Interned identifiers. Every realm, system, account, location, asset and item id is
//! stored once and referred to by a 4-byte [`Sym`], which keeps per-balance and per-item
//! state a few bytes wide (the engine's memory budget is < 200 bytes per live entry).
//!
//! A string is known by 96 bits of its xxh3-128 hash, the way the redelivery window
//! knows a `tx_id`: the lookup table holds the hash beside the symbol, so finding an
//! id costs one probe of the table and never a read of the string itself. With a
//! generic interner (it compares strings) each lookup of an id not in cache made two
//! more dependent memory reads — the string's address, then its bytes — and a
//! typical event looks up five such ids. Two distinct ids are taken for one with
//! probability ~n²/2⁹⁷ (10⁹ ids: ~10⁻¹¹), as for `tx_id`s (docs/invariants.md).

use std::num::NonZeroU32;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An interned string. Only meaningful with the [`Interner`] that made it. Serialized
/// as its index + 1, as snapshots written with the `lasso` interner hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sym(NonZeroU32);

impl Sym {
    /// A dense index (0-based), usable to index side tables.
    pub fn index(self) -> usize {
        self.0.get() as usize - 1
    }

    fn from_index(i: usize) -> Sym {
        // u32::MAX stays free: packed ledger slots use it as a marker.
        let key = u32::try_from(i + 1)
            .ok()
            .filter(|k| *k != u32::MAX)
            .and_then(NonZeroU32::new)
            .expect("more than 4 billion distinct ids in one engine");
        Sym(key)
    }

    /// The symbol as a non-zero `u32` below `u32::MAX`, for packing into other words.
    pub fn key(self) -> u32 {
        self.0.get()
    }

    /// The inverse of [`Sym::key`]. Panics on 0.
    pub fn from_key(key: u32) -> Sym {
        Sym(NonZeroU32::new(key).expect("a symbol key is never 0"))
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

/// One entry of the lookup table: 96 bits of the string's hash and its symbol's key
/// (0: a free slot; a [`Sym`] key is never 0).
#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    check: u32,
    sym: u32,
}

/// Entries per bucket: a bucket is one 64-byte cache line.
const SLOTS: usize = 4;

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([Slot; SLOTS]);

/// The lookup table: buckets of one cache line, probed linearly from the bucket the
/// hash picks, filled at most 4/5. Finding an id that is not in cache costs one cache
/// miss (a hashbrown table reads a control group, then the entry: two dependent
/// misses, ~90% of the decode stage's interning time in a profile), and
/// [`IdTable::prefetch`] can start that miss while the stage still parses: hashbrown
/// exposes neither the layout nor a prefetch. Entries are never removed, so a probe
/// that meets a free slot has not found its id.
#[derive(Default)]
struct IdTable {
    buckets: Vec<Bucket>,
    len: usize,
}

impl IdTable {
    fn find(&self, hash: u64, check: u32) -> Option<Sym> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut b = hash as usize & mask;
        loop {
            for s in &self.buckets[b].0 {
                if s.sym == 0 {
                    return None;
                }
                if s.hash == hash && s.check == check {
                    return Some(Sym::from_key(s.sym));
                }
            }
            b = (b + 1) & mask;
        }
    }

    /// Adds an id the table does not hold.
    fn insert(&mut self, hash: u64, check: u32, sym: Sym) {
        self.reserve(1);
        self.place(Slot {
            hash,
            check,
            sym: sym.key(),
        });
        self.len += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.buckets.len() - 1;
        let mut b = slot.hash as usize & mask;
        loop {
            if let Some(free) = self.buckets[b].0.iter_mut().find(|s| s.sym == 0) {
                *free = slot;
                return;
            }
            b = (b + 1) & mask;
        }
    }

    /// Room for `additional` more ids without growing.
    fn reserve(&mut self, additional: usize) {
        let need = self.len + additional;
        if need * 5 <= self.buckets.len() * SLOTS * 4 {
            return;
        }
        let buckets = (need * 5 / 4 / SLOTS + 1).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.buckets, vec![Bucket::default(); buckets]);
        for b in old {
            for s in b.0 {
                if s.sym != 0 {
                    self.place(s);
                }
            }
        }
    }

    /// Starts loading the bucket `hash` picks into the cache.
    fn prefetch(&self, hash: u64) {
        if self.buckets.is_empty() {
            return;
        }
        let b = &self.buckets[hash as usize & (self.buckets.len() - 1)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it reads nothing the program can observe, and
        // the address is of a live bucket anyway.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>((b as *const Bucket).cast::<i8>());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = b;
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }
}

/// Strings are appended to chunks of this many bytes (ids are at most a few hundred
/// bytes; a longer string gets a chunk of its own), so the arena grows without copying.
const CHUNK: usize = 1 << 20;
/// A span packs a string's place: its chunk and offset (40 bits), its length (24 bits).
const LEN_BITS: u32 = 24;

#[derive(Default)]
pub struct Interner {
    table: IdTable,
    /// The table is lent to a pipeline's decode stage ([`Interner::lend_lookup`]).
    lent: bool,
    /// Per symbol, where its bytes are: `(chunk * CHUNK + offset) << LEN_BITS | len`.
    spans: Vec<u64>,
    chunks: Vec<String>,
    /// Derived from the policy: rebuilt lazily, never snapshotted.
    classes: Vec<Option<Class>>,
}

/// Appends `s` to the arena (`chunks`, `spans`) and gives it the next symbol.
fn push(chunks: &mut Vec<String>, spans: &mut Vec<u64>, s: &str) -> Sym {
    assert!(s.len() < 1 << LEN_BITS, "an id of {} bytes", s.len());
    let room = chunks.last().map_or(0, |c| CHUNK.saturating_sub(c.len()));
    if room < s.len() {
        chunks.push(String::with_capacity(CHUNK.max(s.len())));
    }
    let chunk = chunks.len() - 1;
    let last = &mut chunks[chunk];
    let start = (chunk * CHUNK + last.len()) as u64;
    last.push_str(s);
    let sym = Sym::from_index(spans.len());
    spans.push(start << LEN_BITS | s.len() as u64);
    sym
}

fn hash(s: &str) -> (u64, u32) {
    let h = xxhash_rust::xxh3::xxh3_128(s.as_bytes());
    (h as u64, (h >> 64) as u32)
}

/// Something that gives strings symbols: the [`Interner`] itself, or a decode stage
/// holding its lent lookup table ([`LookupStage`]).
pub trait Intern {
    fn intern(&mut self, s: &str) -> Sym;
}

impl Intern for Interner {
    fn intern(&mut self, s: &str) -> Sym {
        Interner::intern(self, s)
    }
}

/// An interner's lookup table, lent to a pipeline's decode stage so that the lookups —
/// a random memory read per id, the interner's whole cost — run on that core. It
/// numbers new ids on from where the interner stood; the engine appends their strings,
/// in the same order, before it sees an event that uses them.
pub struct Lookup {
    table: IdTable,
    len: usize,
}

/// Ids a [`Lookup`] made, in symbol order: their bytes, one after another, and lengths.
#[derive(Default)]
pub struct NewIds {
    bytes: String,
    lens: Vec<u32>,
}

impl NewIds {
    fn iter(&self) -> impl Iterator<Item = &str> {
        self.lens.iter().scan(0usize, |at, len| {
            let s = &self.bytes[*at..*at + *len as usize];
            *at += *len as usize;
            Some(s)
        })
    }
}

/// An id a decode stage will intern soon: its hash, computed once, its table bucket
/// already on its way into the cache ([`Lookup::prefetch`]).
#[derive(Clone, Copy)]
pub struct Prefetched {
    /// The string's address and length: the hash is used for exactly that string.
    at: usize,
    len: usize,
    hash: u64,
    check: u32,
}

impl Lookup {
    /// Hashes `s` and starts loading its table bucket, so that interning it after some
    /// other work (the stage parses the next event meanwhile) does not wait on memory.
    pub fn prefetch(&self, s: &str) -> Prefetched {
        let (hash, check) = hash(s);
        self.table.prefetch(hash);
        Prefetched {
            at: s.as_ptr() as usize,
            len: s.len(),
            hash,
            check,
        }
    }
}

/// A decode stage's way to intern: the lent table, and where its new ids go.
pub struct LookupStage<'a> {
    pub lookup: &'a mut Lookup,
    pub new: &'a mut NewIds,
    /// The ids about to be interned, in order, as [`Lookup::prefetch`] left them (a
    /// string that is not the next one here is hashed afresh).
    pub prefetched: &'a [Prefetched],
}

impl Intern for LookupStage<'_> {
    fn intern(&mut self, s: &str) -> Sym {
        let (hash, check) = match self.prefetched.split_first() {
            Some((p, rest)) if p.at == s.as_ptr() as usize && p.len == s.len() => {
                self.prefetched = rest;
                (p.hash, p.check)
            }
            _ => hash(s),
        };
        let Lookup { table, len } = &mut *self.lookup;
        let new = &mut *self.new;
        find_or_insert(table, hash, check, || {
            let sym = Sym::from_index(*len);
            *len += 1;
            new.bytes.push_str(s);
            new.lens.push(s.len() as u32);
            sym
        })
    }
}

/// The symbol `table` knows `s` by, or the one `next` gives it (then remembered).
fn find_or_insert(table: &mut IdTable, hash: u64, check: u32, next: impl FnOnce() -> Sym) -> Sym {
    if let Some(sym) = table.find(hash, check) {
        return sym;
    }
    let sym = next();
    table.insert(hash, check, sym);
    sym
}

impl Interner {
    /// Hands the lookup table to a pipeline stage. Interning here is a bug until
    /// [`Interner::return_lookup`] (it would number ids twice), and panics.
    pub fn lend_lookup(&mut self) -> Lookup {
        assert!(!self.lent, "the interner's lookup is already lent");
        self.lent = true;
        Lookup {
            table: std::mem::take(&mut self.table),
            len: self.len(),
        }
    }

    /// Takes the table back; every id it made must have been [learned](Self::learn).
    pub fn return_lookup(&mut self, lookup: Lookup) {
        assert_eq!(
            lookup.len,
            self.len(),
            "ids made by the lent lookup were not all learned"
        );
        self.table = lookup.table;
        self.lent = false;
    }

    /// Appends the strings of ids a lent [`Lookup`] made.
    pub fn learn(&mut self, ids: &NewIds) {
        for s in ids.iter() {
            push(&mut self.chunks, &mut self.spans, s);
        }
    }

    pub fn intern(&mut self, s: &str) -> Sym {
        assert!(
            !self.lent,
            "interning while the lookup is lent to a pipeline stage"
        );
        let Interner {
            table,
            spans,
            chunks,
            ..
        } = self;
        let (hash, check) = hash(s);
        find_or_insert(table, hash, check, || push(chunks, spans, s))
    }

    pub fn get(&self, s: &str) -> Option<Sym> {
        assert!(
            !self.lent,
            "looking up while the lookup is lent to a pipeline stage"
        );
        let (hash, check) = hash(s);
        self.table.find(hash, check)
    }

    pub fn resolve(&self, sym: Sym) -> &str {
        let span = self.spans[sym.index()];
        let start = (span >> LEN_BITS) as usize;
        let len = (span & ((1 << LEN_BITS) - 1)) as usize;
        let (chunk, offset) = (start / CHUNK, start % CHUNK);
        &self.chunks[chunk][offset..offset + len]
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
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
        let c = classify(self.resolve(sym));
        self.classes[i] = Some(c);
        c
    }

    /// Heap bytes held: the string arena, the spans and the lookup table.
    pub fn heap_bytes(&self) -> usize {
        let strings: usize = self.chunks.iter().map(String::capacity).sum();
        let table = self.table.heap_bytes();
        strings
            + table
            + self.spans.capacity() * std::mem::size_of::<u64>()
            + self.classes.capacity() * std::mem::size_of::<Option<Class>>()
    }
}

/// Snapshots hold the strings in symbol order, as a sequence (the layout `lasso`
/// wrote, so older checkpoints restore unchanged).
impl Serialize for Interner {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for i in 0..self.len() {
            seq.serialize_element(self.resolve(Sym::from_index(i)))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Interner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strings;
        impl<'de> Visitor<'de> for Strings {
            type Value = Interner;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of distinct strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Interner, A::Error> {
                let mut interner = Interner::default();
                let n = seq.size_hint().unwrap_or(0);
                interner.table.reserve(n);
                interner.spans.reserve(n);
                while let Some(s) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    let before = interner.len();
                    interner.intern(&s);
                    if interner.len() == before {
                        return Err(serde::de::Error::custom(format!(
                            "the string `{s}` appears twice"
                        )));
                    }
                }
                Ok(interner)
            }
        }
        deserializer.deserialize_seq(Strings)
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

    #[test]
    fn strings_resolve_across_chunks_and_long_strings_get_their_own() {
        let mut i = Interner::default();
        let long = "x".repeat(CHUNK + 10);
        let mut syms = Vec::new();
        for n in 0..200_000 {
            syms.push((i.intern(&format!("item:{n}")), format!("item:{n}")));
            if n == 100_000 {
                syms.push((i.intern(&long), long.clone()));
            }
        }
        assert!(i.chunks.len() > 3);
        for (sym, s) in &syms {
            assert_eq!(i.resolve(*sym), s);
            assert_eq!(i.get(s), Some(*sym));
        }
        assert_eq!(i.len(), syms.len());
    }

    #[test]
    fn a_lent_lookup_numbers_ids_as_the_interner_would_whatever_was_prefetched() {
        let mut direct = Interner::default();
        let mut lent = Interner::default();
        let mut lookup = lent.lend_lookup();
        let mut new = NewIds::default();
        let ids: Vec<String> = (0..50_000)
            .map(|n| format!("player:{}", n % 20_000))
            .collect();
        for pair in ids.chunks(2) {
            // Prefetched out of order, and one string that is not interned at all: the
            // stage hashes afresh whatever is not next in the list.
            let stray = String::from("never:interned");
            let prefetched: Vec<Prefetched> = pair
                .iter()
                .rev()
                .chain([&stray])
                .map(|s| lookup.prefetch(s))
                .collect();
            let mut stage = LookupStage {
                lookup: &mut lookup,
                new: &mut new,
                prefetched: &prefetched,
            };
            for s in pair {
                assert_eq!(stage.intern(s), direct.intern(s), "{s}");
            }
        }
        lent.learn(&new);
        lent.return_lookup(lookup);
        assert_eq!(lent.len(), 20_000);
        for s in &ids {
            assert_eq!(lent.get(s), direct.get(s));
        }
        assert_eq!(lent.get("never:interned"), None);
    }

    #[test]
    fn snapshots_keep_symbols_and_read_what_lasso_wrote() {
        let mut i = Interner::default();
        let a = i.intern("realm-1");
        let b = i.intern("player:7:bag");
        let bytes = postcard::to_stdvec(&i).unwrap();
        // lasso serialized a Rodeo as its strings in key order, a key as index + 1.
        let lasso = postcard::to_stdvec(&vec!["realm-1", "player:7:bag"]).unwrap();
        assert_eq!(bytes, lasso);
        assert_eq!(
            postcard::to_stdvec(&b).unwrap(),
            postcard::to_stdvec(&2u32).unwrap()
        );
        let r: Interner = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(r.get("realm-1"), Some(a));
        assert_eq!(r.resolve(b), "player:7:bag");
        let twice = postcard::to_stdvec(&vec!["a", "a"]).unwrap();
        assert!(postcard::from_bytes::<Interner>(&twice).is_err());
    }
}
