//! Reconciliation, the pure part (issue #4): which slice of the state the stream implies
//! a store must hold, how store rows and expected rows are digested into a Merkle tree
//! of key-hash buckets ([`super::merkle`]), how the rows of differing buckets become
//! candidate divergences, how a candidate is confirmed after the grace re-check, and
//! how a confirmed one becomes a [`Finding`].
//!
//! No I/O and no clock: the wiring in `crate::recon` reads the stores, sleeps the grace
//! period and passes the detection time in.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;
use serde_json::json;

use super::finding::{Finding, Invariant, fingerprint};
use super::merkle::{self, BucketDigest, Field, Tree, bucket_of, key_hash};
use super::time::Timestamp;

/// The two key spaces a store can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    /// `(account, asset) → balance`.
    Balances,
    /// `item → location` (one row per live copy).
    Items,
}

/// The key of one reconciled row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum RowKey {
    Balance { account: String, asset: String },
    Item { item: String },
}

/// Which key space a key is in, as the first field of its hashed encoding.
const TAG_BALANCE: u8 = b'b';
const TAG_ITEM: u8 = b'i';

impl RowKey {
    pub fn space(&self) -> Space {
        match self {
            RowKey::Balance { .. } => Space::Balances,
            RowKey::Item { .. } => Space::Items,
        }
    }

    /// The account or item the key is about (a finding's `subject`).
    pub fn subject(&self) -> &str {
        match self {
            RowKey::Balance { account, .. } => account,
            RowKey::Item { item } => item,
        }
    }

    /// Human-readable, for messages: `player:1/gold` or `itm:1-2a`.
    pub fn display(&self) -> String {
        match self {
            RowKey::Balance { account, asset } => format!("{account}/{asset}"),
            RowKey::Item { item } => item.clone(),
        }
    }

    fn fields(&self) -> [Field<'_>; 3] {
        match self {
            RowKey::Balance { account, asset } => [
                Field::Tag(TAG_BALANCE),
                Field::Str(account),
                Field::Str(asset),
            ],
            // Padded to one length so both spaces share one code path; the type tag keeps
            // them apart.
            RowKey::Item { item } => [Field::Tag(TAG_ITEM), Field::Str(item), Field::Str("")],
        }
    }

    /// The key's bucket among `2^depth` leaves.
    pub fn bucket(&self, depth: u8) -> usize {
        bucket_of(key_hash(&self.fields()), depth)
    }
}

/// One value of a row: a balance, or one location of an item.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i128),
    Str(String),
}

impl Scalar {
    fn field(&self) -> Field<'_> {
        match self {
            Scalar::Int(i) => Field::Int(*i),
            Scalar::Str(s) => Field::Str(s),
        }
    }

    /// Bytes this value occupies on the wire, roughly (for the "bytes read" figure).
    pub fn wire_len(&self) -> usize {
        match self {
            Scalar::Int(i) => i.to_string().len(),
            Scalar::Str(s) => s.len(),
        }
    }
}

/// One row: a balance row, or one copy of an item at a location.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub key: RowKey,
    pub value: Scalar,
}

impl Row {
    pub fn balance(account: &str, asset: &str, balance: i128) -> Row {
        Row {
            key: RowKey::Balance {
                account: account.to_string(),
                asset: asset.to_string(),
            },
            value: Scalar::Int(balance),
        }
    }

    pub fn item(item: &str, location: &str) -> Row {
        Row {
            key: RowKey::Item {
                item: item.to_string(),
            },
            value: Scalar::Str(location.to_string()),
        }
    }

    pub fn wire_len(&self) -> usize {
        let k = match &self.key {
            RowKey::Balance { account, asset } => account.len() + asset.len(),
            RowKey::Item { item } => item.len(),
        };
        k + self.value.wire_len()
    }
}

/// A row borrowed from a store's read buffer or from the expected state: digested
/// without copying its strings (the pull path hashes millions of these a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowRef<'a> {
    Balance {
        account: &'a str,
        asset: &'a str,
        balance: i128,
    },
    Item {
        item: &'a str,
        location: &'a str,
    },
}

impl RowRef<'_> {
    /// The same key fields as [`RowKey`]'s (one encoding for both).
    fn key_fields(&self) -> [Field<'_>; 3] {
        match *self {
            RowRef::Balance { account, asset, .. } => [
                Field::Tag(TAG_BALANCE),
                Field::Str(account),
                Field::Str(asset),
            ],
            RowRef::Item { item, .. } => [Field::Tag(TAG_ITEM), Field::Str(item), Field::Str("")],
        }
    }

    fn value_field(&self) -> Field<'_> {
        match *self {
            RowRef::Balance { balance, .. } => Field::Int(balance),
            RowRef::Item { location, .. } => Field::Str(location),
        }
    }

    /// The row's bucket among `2^depth` leaves (the same as its key's).
    pub fn bucket(&self, depth: u8) -> usize {
        bucket_of(key_hash(&self.key_fields()), depth)
    }

    /// The row's bucket and hash, as [`add_row`] computes them (the key hashed once).
    pub fn hash(&self, depth: u8) -> (usize, [u8; 32]) {
        let (kh, rh) = merkle::hash_row(&self.key_fields(), &[self.value_field()]);
        (bucket_of(kh, depth), rh)
    }

    /// [`RowRef::hash`] of each of `rows` into the same index of `out`, many rows per
    /// blake3 pass ([`merkle::hash_rows`]): the way to hash more than a few rows.
    pub fn hash_many(rows: &[RowRef<'_>], depth: u8, out: &mut [(usize, [u8; 32])]) {
        merkle::hash_rows(rows, depth, out);
    }

    pub fn to_row(&self) -> Row {
        match *self {
            RowRef::Balance {
                account,
                asset,
                balance,
            } => Row::balance(account, asset, balance),
            RowRef::Item { item, location } => Row::item(item, location),
        }
    }

    /// Bytes of the row's fields as text (the "bytes read" figure).
    pub fn wire_len(&self) -> usize {
        match *self {
            RowRef::Balance {
                account,
                asset,
                balance,
            } => account.len() + asset.len() + Scalar::Int(balance).wire_len(),
            RowRef::Item { item, location } => item.len() + location.len(),
        }
    }
}

impl merkle::RowFields for RowRef<'_> {
    fn row_fields(&self) -> ([Field<'_>; 3], [Field<'_>; 1]) {
        (self.key_fields(), [self.value_field()])
    }
}

impl Row {
    /// The row borrowed; `None` for a value of the wrong type for its key (never built
    /// by the readers: a balance is an integer, a location a string).
    pub fn as_ref(&self) -> Option<RowRef<'_>> {
        match (&self.key, &self.value) {
            (RowKey::Balance { account, asset }, Scalar::Int(balance)) => Some(RowRef::Balance {
                account,
                asset,
                balance: *balance,
            }),
            (RowKey::Item { item }, Scalar::Str(location)) => Some(RowRef::Item { item, location }),
            _ => None,
        }
    }
}

/// Adds a row to a Merkle tree of key-hash buckets.
pub fn add_row(tree: &mut Tree, row: &Row) {
    tree.add(&row.key.fields(), &[row.value.field()]);
}

/// A row's bucket and hash (pure, so rows can be hashed in parallel), the same as
/// [`add_row`] computes.
pub fn hash_row(row: &Row, depth: u8) -> (usize, [u8; 32]) {
    match row.as_ref() {
        Some(r) => r.hash(depth),
        None => {
            let (kh, rh) = merkle::hash_row(&row.key.fields(), &[row.value.field()]);
            (bucket_of(kh, depth), rh)
        }
    }
}

/// Which accounts (balances) and item locations a store owns, as glob patterns in
/// which `*` and `?` never match a `/` (so `player:*` is a wallet, `player:*/bank` a
/// bank slot), `{a,b}` alternatives and `[...]` classes as in `globset`.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    pub accounts: Vec<String>,
    pub locations: Vec<String>,
    accounts_m: Matcher,
    locations_m: Matcher,
}

/// A store's globs, matched per expected row (millions a run): the common shape
/// `prefix*` (a literal prefix, one trailing `*`) is a prefix test; anything else goes
/// through `globset`.
#[derive(Clone, Debug)]
enum Matcher {
    /// Literal prefixes whose `*` matches any rest without a `/`.
    Prefixes(Vec<String>),
    Globs(GlobSet),
}

impl Default for Matcher {
    fn default() -> Matcher {
        Matcher::Globs(GlobSet::empty())
    }
}

impl Matcher {
    fn new(patterns: &[String]) -> Result<Matcher, String> {
        let globs = glob_set(patterns)?;
        let prefixes: Option<Vec<String>> = patterns
            .iter()
            .map(|p| {
                let prefix = p.strip_suffix('*')?;
                let meta = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\');
                (!prefix.contains(meta)).then(|| prefix.to_string())
            })
            .collect();
        Ok(match prefixes {
            Some(p) if !p.is_empty() => Matcher::Prefixes(p),
            _ => Matcher::Globs(globs),
        })
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Prefixes(ps) => ps.iter().any(|p| {
                s.strip_prefix(p.as_str())
                    .is_some_and(|rest| !rest.contains('/'))
            }),
            Matcher::Globs(g) => g.is_match(s),
        }
    }
}

/// Builds a glob set with `/` as a separator `*` does not cross.
pub fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(
            GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`{p}`: {e}"))?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

impl Ownership {
    pub fn new(accounts: Vec<String>, locations: Vec<String>) -> Result<Ownership, String> {
        Ok(Ownership {
            accounts_m: Matcher::new(&accounts)?,
            locations_m: Matcher::new(&locations)?,
            accounts,
            locations,
        })
    }

    pub fn owns_account(&self, account: &str) -> bool {
        self.accounts_m.is_match(account)
    }

    pub fn owns_location(&self, location: &str) -> bool {
        self.locations_m.is_match(location)
    }

    /// Whether a row is in this store's slice.
    pub fn owns(&self, row: &RowRef<'_>) -> bool {
        match row {
            RowRef::Balance { account, .. } => self.owns_account(account),
            RowRef::Item { location, .. } => self.owns_location(location),
        }
    }

    pub fn spaces(&self) -> Vec<Space> {
        let mut s = Vec::new();
        if !self.accounts.is_empty() {
            s.push(Space::Balances);
        }
        if !self.locations.is_empty() {
            s.push(Space::Items);
        }
        s
    }
}

pub use super::expected::Expected;

/// A key whose store values differ from the expected ones (not yet confirmed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub key: RowKey,
    /// Sorted; empty when the stream implies no row.
    pub expected: Vec<Scalar>,
    /// Sorted; empty when the store holds no row.
    pub actual: Vec<Scalar>,
}

impl Candidate {
    pub fn invariant(&self) -> Invariant {
        if self.expected.is_empty() {
            Invariant::ReconUnexpected
        } else if self.actual.is_empty() {
            Invariant::ReconMissing
        } else {
            Invariant::ReconValueMismatch
        }
    }
}

/// Groups rows by key, values sorted.
pub fn group(rows: impl IntoIterator<Item = Row>) -> BTreeMap<RowKey, Vec<Scalar>> {
    let mut m: BTreeMap<RowKey, Vec<Scalar>> = BTreeMap::new();
    for r in rows {
        m.entry(r.key).or_default().push(r.value);
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

/// The keys whose values differ between the expected and the actual rows of the same
/// buckets, in key order.
pub fn candidates(
    expected: impl IntoIterator<Item = Row>,
    actual: impl IntoIterator<Item = Row>,
) -> Vec<Candidate> {
    let mut e = group(expected);
    let a = group(actual);
    let mut out = Vec::new();
    for (key, actual) in a {
        let expected = e.remove(&key).unwrap_or_default();
        if expected != actual {
            out.push(Candidate {
                key,
                expected,
                actual,
            });
        }
    }
    for (key, expected) in e {
        out.push(Candidate {
            key,
            expected,
            actual: Vec::new(),
        });
    }
    out.sort_by(|x, y| x.key.cmp(&y.key));
    out
}

/// The grace re-check. `actual_now` is the key re-read from the store; `history` is
/// every value the stream gave the key from the watermark on, read a grace period
/// *after* the store (its last entry is the newest). A store value the stream passed
/// through is a write in flight (the store ahead of or behind the stream), not a
/// divergence; anything else stays a candidate, now showing the newest expected value.
///
/// The price: a store stuck at a value the key held since the watermark (a write lost
/// after it) is only caught by the next run, whose watermark is past it.
pub fn recheck(
    c: &Candidate,
    history: &[Vec<Scalar>],
    actual_now: Vec<Scalar>,
) -> Option<Candidate> {
    let mut actual_now = actual_now;
    actual_now.sort();
    let mut newest = Vec::new();
    for h in history {
        let mut h = h.clone();
        h.sort();
        if h == actual_now {
            return None;
        }
        newest = h;
    }
    Some(Candidate {
        key: c.key.clone(),
        expected: newest,
        actual: actual_now,
    })
}

/// Where a confirmed divergence was found.
#[derive(Clone, Debug)]
pub struct FindingContext<'a> {
    pub store: &'a str,
    pub system: &'a str,
    pub realm: &'a str,
    pub watermark_ts: Option<Timestamp>,
    pub watermark_position: Option<i64>,
    pub detected_at: Timestamp,
}

/// A confirmed divergence as a finding. `last_transactions` are the journal's newest
/// transactions that touched the key (empty without a database). The fingerprint is
/// (store, key, class): the same divergence found by the next run is stored once.
pub fn to_finding(
    c: &Candidate,
    cx: &FindingContext<'_>,
    last_transactions: serde_json::Value,
) -> Finding {
    let inv = c.invariant();
    let show = |v: &[Scalar]| -> serde_json::Value {
        match (c.key.space(), v) {
            (_, []) => serde_json::Value::Null,
            (Space::Balances, [one]) => json!(one),
            _ => json!(v),
        }
    };
    let key_text = c.key.display();
    let message = match inv {
        Invariant::ReconMissing => format!(
            "store `{}` lacks {key_text} (expected {})",
            cx.store,
            show(&c.expected)
        ),
        Invariant::ReconUnexpected => format!(
            "store `{}` holds {key_text} = {} that the stream never created",
            cx.store,
            show(&c.actual)
        ),
        _ => format!(
            "store `{}` has {key_text} = {}, the stream implies {}",
            cx.store,
            show(&c.actual),
            show(&c.expected)
        ),
    };
    let space = match c.key.space() {
        Space::Balances => "balances",
        Space::Items => "items",
    };
    Finding {
        invariant: inv,
        severity: inv.default_severity(),
        realm: cx.realm.to_string(),
        system: Some(cx.system.to_string()),
        tx_id: None,
        seq: None,
        subject: Some(c.key.subject().to_string()),
        message,
        evidence: json!({
            "store": cx.store,
            "space": space,
            "key": c.key,
            "expected": show(&c.expected),
            "actual": show(&c.actual),
            "watermark_ts": cx.watermark_ts.map(|t| t.to_string()),
            "watermark_position": cx.watermark_position,
            "last_transactions": last_transactions,
        }),
        detected_at: cx.detected_at,
        fingerprint: fingerprint(
            inv,
            cx.realm,
            &[cx.store.as_bytes(), space.as_bytes(), key_text.as_bytes()],
        ),
    }
}

/// Pull mode's shortcut past a second read of the store. Pass 1 kept the store rows
/// that are not in the expected state (`kept`, tested against a filter of expected
/// row hashes: none is missed, a few may pass as expected). For each differing leaf,
/// the store's rows are then most likely the kept rows plus the expected rows of the
/// keys those do not touch — or that less one of those expected rows, deleted from the
/// store (a lost write). A guess is taken only where it reproduces the store's own leaf
/// digest (count and sum mod 2²⁵⁶: a coincidence is as likely as a blake3 collision)
/// exactly. Returns the rows of the leaves so explained, and the leaves that were not
/// (several deleted rows, an item copy beside an expected one, a filter false
/// positive, a write since pass 1): their rows must be read again.
pub fn explain_leaves(
    expected: &[Row],
    kept: &[Row],
    theirs: &Tree,
    differing: &[usize],
) -> (Vec<Row>, Vec<usize>) {
    let depth = theirs.depth();
    // Per leaf: the guessed rows, and whether each is an expected one.
    let mut guess: BTreeMap<usize, Vec<(&Row, bool)>> =
        differing.iter().map(|&b| (b, Vec::new())).collect();
    let mut touched: std::collections::HashSet<&RowKey> = std::collections::HashSet::new();
    for r in kept {
        touched.insert(&r.key);
        if let Some(rows) = guess.get_mut(&r.key.bucket(depth)) {
            rows.push((r, false));
        }
    }
    for r in expected {
        if touched.contains(&r.key) {
            continue;
        }
        if let Some(rows) = guess.get_mut(&r.key.bucket(depth)) {
            rows.push((r, true));
        }
    }
    let mut explained = Vec::new();
    let mut unexplained = Vec::new();
    for (bucket, rows) in guess {
        let hashes: Vec<[u8; 32]> = rows.iter().map(|(r, _)| hash_row(r, depth).1).collect();
        let mut digest = BucketDigest::default();
        for h in &hashes {
            digest.add_row(h);
        }
        let leaf = theirs.leaf(bucket);
        let deleted = if digest == leaf {
            None
        } else {
            // One expected row too many: the one whose hash is the difference.
            let extra = digest.less(&leaf);
            match rows
                .iter()
                .zip(&hashes)
                .position(|((_, exp), h)| *exp && BucketDigest::of_row(h) == extra)
            {
                Some(i) => Some(i),
                None => {
                    unexplained.push(bucket);
                    continue;
                }
            }
        };
        explained.extend(
            rows.into_iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != deleted)
                .map(|(_, (r, _))| r.clone()),
        );
    }
    (explained, unexplained)
}

/// Whether `rows` (all of one leaf) are exactly the leaf whose digest is `leaf`.
pub fn is_leaf<'a>(rows: impl IntoIterator<Item = &'a Row>, depth: u8, leaf: BucketDigest) -> bool {
    digest_of(rows, depth) == leaf
}

fn digest_of<'a>(rows: impl IntoIterator<Item = &'a Row>, depth: u8) -> BucketDigest {
    let mut d = BucketDigest::default();
    for r in rows {
        d.add_row(&hash_row(r, depth).1);
    }
    d
}

/// Builds the expected tree of one store's slice.
pub fn expected_tree(rows: impl IntoIterator<Item = Row>, depth: u8) -> Tree {
    let mut t = Tree::new(depth);
    for r in rows {
        add_row(&mut t, &r);
    }
    t.seal();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        /// The whole pure pipeline: digest both sides, diff the trees, compare only the
        /// rows of differing leaves — exactly the mutated keys come out, with their class.
        #[test]
        fn tree_diff_then_candidates_names_exactly_the_mutated_keys(
            n in 1usize..400,
            changes in proptest::collection::btree_set(0usize..400, 0..8),
            deletes in proptest::collection::btree_set(0usize..400, 0..8),
            inserts in 0usize..5,
            depth in 1u8..9,
        ) {
            let expected: Vec<Row> = (0..n).map(|i| Row::balance(&format!("player:{i}"), "gold", i as i128 * 3)).collect();
            let mut actual: BTreeMap<RowKey, Scalar> = expected.iter().map(|r| (r.key.clone(), r.value.clone())).collect();
            let mut want: BTreeMap<RowKey, Invariant> = BTreeMap::new();
            for &i in changes.iter().filter(|&&i| i < n) {
                let k = expected[i].key.clone();
                actual.insert(k.clone(), Scalar::Int(-1));
                want.insert(k, Invariant::ReconValueMismatch);
            }
            for &i in deletes.iter().filter(|&&i| i < n && !changes.contains(&i)) {
                let k = expected[i].key.clone();
                actual.remove(&k);
                want.insert(k, Invariant::ReconMissing);
            }
            for j in 0..inserts {
                let r = Row::balance(&format!("forged:{j}"), "gold", 5);
                want.insert(r.key.clone(), Invariant::ReconUnexpected);
                actual.insert(r.key, r.value);
            }
            let actual: Vec<Row> = actual.into_iter().map(|(key, value)| Row { key, value }).collect();
            let ours = expected_tree(expected.clone(), depth);
            let mut theirs = Tree::new(depth);
            for r in &actual {
                let (b, h) = hash_row(r, depth);
                theirs.add_hashed(b, &h);
            }
            theirs.seal();
            let differing: std::collections::HashSet<usize> = ours.diff(&theirs).into_iter().collect();
            let keep = |r: &Row| differing.contains(&r.key.bucket(depth));
            let got: BTreeMap<RowKey, Invariant> = candidates(
                expected.iter().filter(|r| keep(r)).cloned(),
                actual.iter().filter(|r| keep(r)).cloned(),
            )
            .into_iter()
            .map(|c| (c.key.clone(), c.invariant()))
            .collect();
            prop_assert_eq!(got, want);
        }
    }

    /// A borrowed row digests exactly as its owned form (one encoding for both).
    #[test]
    fn borrowed_rows_hash_as_owned_rows() {
        for r in [
            Row::balance("player:1", "gold", -3),
            Row::item("itm:1", "player:1/bag"),
            Row::item("", ""),
        ] {
            let b = r.as_ref().expect("well-typed");
            for depth in [1, 12] {
                assert_eq!(b.bucket(depth), r.key.bucket(depth));
                let mut t1 = Tree::new(depth);
                add_row(&mut t1, &r);
                let mut t2 = Tree::new(depth);
                let (bucket, h) = b.hash(depth);
                t2.add_hashed(bucket, &h);
                assert_eq!(t1, t2);
            }
            assert_eq!(b.to_row(), r);
        }
    }

    /// Changed and inserted rows are explained by the kept rows alone, one deleted row
    /// a leaf by the digests; several deleted rows or an item copy beside an expected
    /// one are not (those leaves are read again); an explained leaf's rows are exactly
    /// the store's.
    #[test]
    fn explain_leaves_accepts_only_what_reproduces_the_leaf_digest() {
        let depth = 4;
        let tree_of = |rows: &[Row]| {
            let mut t = Tree::new(depth);
            for r in rows {
                add_row(&mut t, r);
            }
            t.seal();
            t
        };
        // The leaves left unexplained and all the differing ones.
        let check = |expected: &[Row], store: Vec<Row>, kept: Vec<Row>| {
            let theirs = tree_of(&store);
            let differing = tree_of(expected).diff(&theirs);
            let exp: Vec<Row> = expected
                .iter()
                .filter(|r| differing.contains(&r.key.bucket(depth)))
                .cloned()
                .collect();
            let (mut rows, unexplained) = explain_leaves(&exp, &kept, &theirs, &differing);
            let mut want: Vec<Row> = store
                .into_iter()
                .filter(|r| {
                    let b = r.key.bucket(depth);
                    differing.contains(&b) && !unexplained.contains(&b)
                })
                .collect();
            want.sort();
            rows.sort();
            assert_eq!(rows, want);
            (unexplained, differing)
        };
        let expected: Vec<Row> = (0..200)
            .map(|i| Row::balance(&format!("player:{i}"), "gold", i + 1))
            .collect();
        // A changed balance and an inserted one: kept, and explained.
        let mut store = expected.clone();
        store[7] = Row::balance("player:7", "gold", 999);
        store.push(Row::balance("intruder", "gold", 5));
        let kept = vec![store[7].clone(), store[200].clone()];
        assert!(check(&expected, store, kept).0.is_empty());
        // A deleted balance: nothing kept, the leaf less that row is the store's.
        let mut store = expected.clone();
        store.remove(42);
        assert!(check(&expected, store, vec![]).0.is_empty());
        // A second row of the deleted one's leaf, deleted or changed.
        let mut store = expected.clone();
        let gone = store.remove(42);
        let other = store
            .iter()
            .position(|r| r.key.bucket(depth) == gone.key.bucket(depth))
            .expect("another row in the leaf");
        // Both deleted: unexplained (read again).
        let mut fewer = store.clone();
        fewer.remove(other);
        assert_eq!(
            check(&expected, fewer, vec![]).0,
            vec![gone.key.bucket(depth)]
        );
        // One deleted beside one changed: explained.
        let changed = match &store[other].key {
            RowKey::Balance { account, asset } => Row::balance(account, asset, -1),
            RowKey::Item { .. } => unreachable!(),
        };
        store[other] = changed.clone();
        assert!(check(&expected, store, vec![changed]).0.is_empty());
        // An item copy beside an expected one: the kept row does not explain it.
        let items: Vec<Row> = (0..50)
            .map(|i| Row::item(&format!("itm:{i}"), "p/bag"))
            .collect();
        let mut store = items.clone();
        store.push(Row::item("itm:3", "p/bank"));
        let (unexplained, differing) = check(&items, store, vec![Row::item("itm:3", "p/bank")]);
        assert_eq!(unexplained, differing);
    }

    #[test]
    fn a_digest_less_a_subset_is_the_digest_of_the_rest() {
        let h = |i: u8| *blake3::hash(&[i]).as_bytes();
        let mut all = BucketDigest::default();
        let mut some = BucketDigest::default();
        for i in 0..20 {
            all.add_row(&h(i));
            if i != 7 {
                some.add_row(&h(i));
            }
        }
        assert_eq!(all.less(&some), BucketDigest::of_row(&h(7)));
        assert_eq!(all.less(&all), BucketDigest::default());
        assert_eq!(some.merge(&all.less(&some)), all);
    }

    /// The prefix fast path matches exactly what the glob set matches.
    #[test]
    fn prefix_globs_match_as_globset_does() {
        let patterns: Vec<String> = ["player:*", "guild:*", "x*"].map(String::from).to_vec();
        let fast = Matcher::new(&patterns).expect("patterns");
        assert!(matches!(fast, Matcher::Prefixes(_)));
        let slow = glob_set(&patterns).expect("patterns");
        for s in [
            "player:1",
            "player:",
            "player:1/bag",
            "playe",
            "guild:7",
            "guild:7/bank",
            "x",
            "xy/z",
            "",
            "/player:1",
            "Player:1",
            "player:ü",
        ] {
            assert_eq!(fast.is_match(s), slow.is_match(s), "{s:?}");
        }
        // Any other shape keeps the glob set.
        for p in ["player:*/bag", "p?:*", "player:[0-9]*", "exact"] {
            assert!(
                matches!(
                    Matcher::new(&[p.to_string()]).expect("p"),
                    Matcher::Globs(_)
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn candidates_classify_every_drift() {
        let expected = vec![
            Row::balance("player:1", "gold", 10),
            Row::balance("player:2", "gold", 5),
            Row::item("itm:1", "player:1/bag"),
        ];
        let actual = vec![
            Row::balance("player:1", "gold", 11),
            Row::balance("player:9", "gold", 7),
            Row::item("itm:1", "player:1/bag"),
        ];
        let c = candidates(expected, actual);
        let kinds: Vec<_> = c.iter().map(|c| (c.key.display(), c.invariant())).collect();
        assert_eq!(
            kinds,
            vec![
                ("player:1/gold".to_string(), Invariant::ReconValueMismatch),
                ("player:2/gold".to_string(), Invariant::ReconMissing),
                ("player:9/gold".to_string(), Invariant::ReconUnexpected),
            ]
        );
    }

    #[test]
    fn a_duplicated_item_row_is_a_value_mismatch() {
        let c = candidates(
            vec![Row::item("itm:1", "player:1/bag")],
            vec![
                Row::item("itm:1", "player:1/bag"),
                Row::item("itm:1", "player:2/bag"),
            ],
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].invariant(), Invariant::ReconValueMismatch);
    }

    #[test]
    fn recheck_drops_a_converged_candidate() {
        let c = Candidate {
            key: RowKey::Balance {
                account: "player:1".into(),
                asset: "gold".into(),
            },
            expected: vec![Scalar::Int(10)],
            actual: vec![Scalar::Int(12)],
        };
        let history = [
            vec![Scalar::Int(10)],
            vec![Scalar::Int(12)],
            vec![Scalar::Int(15)],
        ];
        // The store is behind (12) or at the newest value: in flight, not divergent.
        assert!(recheck(&c, &history, vec![Scalar::Int(12)]).is_none());
        assert!(recheck(&c, &history, vec![Scalar::Int(15)]).is_none());
        // A value the stream never gave the key stays, with the newest expectation.
        let still = recheck(&c, &history, vec![Scalar::Int(13)]).unwrap();
        assert_eq!(still.expected, vec![Scalar::Int(15)]);
        assert_eq!(still.actual, vec![Scalar::Int(13)]);
        // Missing: the key had a value all along.
        assert!(recheck(&c, &history, vec![]).is_some());
    }

    #[test]
    fn ownership_globs_slice_the_expected_state() {
        let mut e = Expected::default();
        e.add_balance("r", "player:1", "gold", 3);
        e.add_balance("r", "guild:1/bank", "gold", 4);
        e.add_balance("r", "player:1/bank", "gold", 5);
        e.add_item("r", "itm:1", "player:1/bag");
        e.add_item("r", "itm:1", "player:1/bank");
        let own = Ownership::new(vec!["player:*".into()], vec!["player:*/bank".into()]).unwrap();
        let b: Vec<Row> = e.slice("r", Space::Balances, &own).collect();
        assert_eq!(b, vec![Row::balance("player:1", "gold", 3)]);
        let i: Vec<Row> = e.slice("r", Space::Items, &own).collect();
        assert_eq!(i, vec![Row::item("itm:1", "player:1/bank")]);
        assert!(e.slice("other", Space::Items, &own).next().is_none());
        assert!(Ownership::new(vec!["player:[".into()], vec![]).is_err());
    }

    #[test]
    fn fingerprints_are_stable_per_store_and_key() {
        let c = Candidate {
            key: RowKey::Item {
                item: "itm:1".into(),
            },
            expected: vec![],
            actual: vec![Scalar::Str("player:1/bag".into())],
        };
        let cx = FindingContext {
            store: "inv",
            system: "inventory",
            realm: "r",
            watermark_ts: None,
            watermark_position: None,
            detected_at: Timestamp(0),
        };
        let a = to_finding(&c, &cx, json!([]));
        let b = to_finding(
            &c,
            &FindingContext {
                detected_at: Timestamp(99),
                ..cx.clone()
            },
            json!([]),
        );
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.invariant, Invariant::ReconUnexpected);
        assert_eq!(a.evidence["actual"], json!(["player:1/bag"]));
    }
}
