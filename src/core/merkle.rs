//! Order-free digests of key spaces, for reconciliation (issue #4): the state the
//! stream implies and a store's state are each summarised as a tree of buckets, and
//! only the buckets whose digests differ are fetched row by row.
//!
//! - A **row** is hashed with keyed blake3 over a typed, length-prefixed encoding,
//!   padded with zeros to whole 64-byte blocks, so `("ab","c")` and `("a","bc")` differ
//!   and a value can never pass for a key. The encoding is prefix-free (field counts,
//!   typed and length-prefixed fields), so the padding never makes two rows equal; it
//!   lets [`hash_rows`] hash 16 rows in one SIMD pass.
//! - A row goes to the **bucket** chosen by the hash (xxh3) of its *key* alone, so
//!   string, UUID, composite or gappy keys spread evenly and a changed value stays in its
//!   bucket.
//! - A **bucket digest** is the row count plus the sum of row hashes modulo 2²⁵⁶:
//!   independent of row order, and — unlike XOR — a duplicated row or two equal rows
//!   do not cancel out.
//! - A **tree** combines buckets pairwise up to one root; comparing two trees top-down
//!   names the differing leaves while touching only the subtrees that differ.

/// One field of a row, typed so that values of different types never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Str(&'a str),
    Int(i128),
    /// A one-byte tag (which key space a key belongs to).
    Tag(u8),
}

/// The row hash is blake3 in keyed mode with a key derived from a context string:
/// domain separation that costs no bytes of the hashed input.
static ROW_DOMAIN: std::sync::LazyLock<[u8; 32]> =
    std::sync::LazyLock::new(|| blake3::derive_key("assayer merkle v4 row hash", b""));
/// Seed of the key hash (xxh3), so buckets are not a bare xxh3 of the key.
const KEY_SEED: u64 = 0x6173_7361_7965_7233; // "assayer3"

/// Hash of a row's key: chooses its bucket. xxh3-64 of the key's encoding — a bucket
/// needs an even spread, not collision resistance (rows are compared by their blake3
/// row hash, which covers the key too).
pub fn key_hash(key: &[Field<'_>]) -> u64 {
    with_buffer(encoded_len(key), |buf| {
        let k = encode_into(buf, key);
        xxhash_rust::xxh3::xxh3_64_with_seed(&buf[..k], KEY_SEED)
    })
}

/// Hash of a whole row (key and value).
pub fn row_hash(key: &[Field<'_>], value: &[Field<'_>]) -> [u8; 32] {
    hash_row(key, value).1
}

/// A row's key hash and row hash from one encoding: the key's encoding followed by the
/// value's; the key hash is xxh3 of the key's part, the row hash keyed blake3 of the
/// whole, padded with zeros to whole blocks. A typical row (an account name and asset
/// under ~30 bytes together) is one 64-byte blake3 block. [`hash_rows`] gives the same
/// hashes for many rows at once, several times faster.
pub fn hash_row(key: &[Field<'_>], value: &[Field<'_>]) -> (u64, [u8; 32]) {
    with_buffer(padded(encoded_len(key) + encoded_len(value)), |buf| {
        let k = encode_into(buf, key);
        let n = k + encode_into(&mut buf[k..], value);
        (
            xxhash_rust::xxh3::xxh3_64_with_seed(&buf[..k], KEY_SEED),
            *blake3::keyed_hash(&ROW_DOMAIN, &buf[..padded(n)]).as_bytes(),
        )
    })
}

/// A blake3 block: a row's encoding is padded with zeros to a whole number of them.
const BLOCK: usize = 64;

/// An encoding's length padded to whole blocks (at least one).
fn padded(n: usize) -> usize {
    n.div_ceil(BLOCK).max(1) * BLOCK
}

/// The fields of a row, for [`hash_rows`]: its key's and its value's.
pub trait RowFields {
    fn row_fields(&self) -> ([Field<'_>; 3], [Field<'_>; 1]);
}

/// Rows hashed side by side: blake3 compresses up to 16 one-block (or two-block)
/// inputs in one SIMD pass (AVX-512; 8 with AVX2), ~5x the rate of one row at a time.
const LANES: usize = 16;

/// The bucket (among `2^depth` leaves) and row hash of each of `rows`, into the same
/// index of `out`: exactly [`hash_row`]'s, computed [`LANES`] rows at a time. Rows of
/// one or two blocks share a SIMD pass with rows of their size; longer ones (rare: a
/// key and value over 128 bytes) are hashed one by one.
///
/// The SIMD pass is blake3's `platform::Platform::hash_many`, which the crate exports
/// for benchmarks rather than as a stable API: the crate's version is pinned, and the
/// tests check it against `blake3::keyed_hash` for every encoding length.
pub fn hash_rows<R: RowFields>(rows: &[R], depth: u8, out: &mut [(usize, [u8; 32])]) {
    assert_eq!(rows.len(), out.len(), "one output per row");
    let mut one = Lanes::<BLOCK>::new();
    let mut two = Lanes::<{ 2 * BLOCK }>::new();
    for (rows, out) in rows.chunks(LANES).zip(out.chunks_mut(LANES)) {
        for (i, (r, o)) in rows.iter().zip(out.iter_mut()).enumerate() {
            let (key, value) = r.row_fields();
            let len = encoded_len(&key) + encoded_len(&value);
            let kh = if len <= BLOCK {
                one.push(i, &key, &value)
            } else if len <= 2 * BLOCK {
                two.push(i, &key, &value)
            } else {
                let (kh, rh) = hash_row(&key, &value);
                o.1 = rh;
                kh
            };
            o.0 = bucket_of(kh, depth);
        }
        one.hash_into(out);
        two.hash_into(out);
    }
}

/// Up to [`LANES`] encodings of `N` bytes (zero-padded) waiting for one SIMD pass.
struct Lanes<const N: usize> {
    blocks: [[u8; N]; LANES],
    /// The index (in the group of rows) of each filled lane.
    row: [usize; LANES],
    filled: usize,
}

impl<const N: usize> Lanes<N> {
    fn new() -> Self {
        Lanes {
            blocks: [[0; N]; LANES],
            row: [0; LANES],
            filled: 0,
        }
    }

    /// Encodes a row into the next lane; returns its key hash.
    fn push(&mut self, row: usize, key: &[Field<'_>], value: &[Field<'_>]) -> u64 {
        let b = &mut self.blocks[self.filled];
        let k = encode_into(b, key);
        encode_into(&mut b[k..], value);
        self.row[self.filled] = row;
        self.filled += 1;
        xxhash_rust::xxh3::xxh3_64_with_seed(&b[..k], KEY_SEED)
    }

    /// Hashes the filled lanes (keyed blake3 of each whole `N`-byte input, one chunk,
    /// so: first block CHUNK_START, last block CHUNK_END | ROOT) into `out`, then
    /// empties them (zeroed again: an encoding writes only its own length).
    fn hash_into(&mut self, out: &mut [(usize, [u8; 32])]) {
        /// Flags of the BLAKE3 specification (§2.1).
        const CHUNK_START: u8 = 1;
        const CHUNK_END: u8 = 2;
        const ROOT: u8 = 8;
        const KEYED_HASH: u8 = 16;
        if self.filled == 0 {
            return;
        }
        let inputs: [&[u8; N]; LANES] = std::array::from_fn(|i| &self.blocks[i]);
        let mut hashes = [0u8; 32 * LANES];
        BLAKE3.hash_many::<N>(
            &inputs[..self.filled],
            &ROW_KEY_WORDS,
            0,
            blake3::IncrementCounter::No,
            KEYED_HASH,
            CHUNK_START,
            CHUNK_END | ROOT,
            &mut hashes,
        );
        for (lane, h) in hashes.chunks_exact(32).take(self.filled).enumerate() {
            out[self.row[lane]].1.copy_from_slice(h);
        }
        self.blocks[..self.filled].fill([0; N]);
        self.filled = 0;
    }
}

/// The best blake3 implementation for this CPU, detected once.
static BLAKE3: std::sync::LazyLock<blake3::platform::Platform> =
    std::sync::LazyLock::new(blake3::platform::Platform::detect);

/// [`ROW_DOMAIN`] as blake3's key words.
static ROW_KEY_WORDS: std::sync::LazyLock<[u32; 8]> =
    std::sync::LazyLock::new(|| blake3::platform::words_from_le_bytes_32(&ROW_DOMAIN));

/// Encodings that fit are hashed without an allocation.
const STACK_ROW_BYTES: usize = 192;

/// Runs `f` on a zeroed buffer of at least `len` bytes: on the stack when it fits.
fn with_buffer<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    if len <= STACK_ROW_BYTES {
        f(&mut [0u8; STACK_ROW_BYTES])
    } else {
        f(&mut vec![0u8; len])
    }
}

fn encoded_len(fields: &[Field<'_>]) -> usize {
    1 + fields
        .iter()
        .map(|f| match f {
            Field::Str(s) => 1 + 4 + s.len(),
            Field::Int(_) => 1 + 16,
            Field::Tag(_) => 2,
        })
        .sum::<usize>()
}

/// The typed, length-prefixed encoding of a list of fields: the field count (one
/// byte), then each field as a type byte and a string's length (u32 LE) and bytes, an
/// integer's 16 bytes (i128 LE) or a tag's byte. Writes into `buf` (at least
/// [`encoded_len`] long); returns the length.
fn encode_into(buf: &mut [u8], fields: &[Field<'_>]) -> usize {
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        buf[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    // At most a handful of fields per row (a key, a value): a count of one byte.
    put(&[u8::try_from(fields.len()).expect("at most 255 fields")]);
    for f in fields {
        match f {
            Field::Str(s) => {
                put(b"s");
                // Store values come from PostgreSQL (≤ 1 GB) or Redis (≤ 512 MB).
                put(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
                put(s.as_bytes());
            }
            Field::Int(i) => {
                put(b"i");
                put(&i.to_le_bytes());
            }
            Field::Tag(t) => put(&[b't', *t]),
        }
    }
    n
}

/// The bucket of a key among `2^depth` leaves: the key hash's top bits.
pub fn bucket_of(key_hash: u64, depth: u8) -> usize {
    assert!(depth <= 24, "at most 2^24 leaves");
    if depth == 0 {
        0
    } else {
        (key_hash >> (64 - u32::from(depth))) as usize
    }
}

/// Count plus sum of row hashes modulo 2²⁵⁶ (little-endian limbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketDigest {
    pub rows: u64,
    pub sum: [u64; 4],
}

impl BucketDigest {
    pub fn add_row(&mut self, row_hash: &[u8; 32]) {
        self.rows += 1;
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let add = u64::from_le_bytes(row_hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let t = u128::from(*limb) + u128::from(add) + carry;
            *limb = t as u64;
            carry = t >> 64;
        }
    }

    /// Combines two digests (the sum of disjoint row sets).
    pub fn merge(&self, other: &BucketDigest) -> BucketDigest {
        let mut out = BucketDigest {
            rows: self.rows + other.rows,
            sum: [0; 4],
        };
        let mut carry = 0u128;
        for i in 0..4 {
            let t = u128::from(self.sum[i]) + u128::from(other.sum[i]) + carry;
            out.sum[i] = t as u64;
            carry = t >> 64;
        }
        out
    }

    /// The digest of the rows in `self` but not in `other` (a subset of them): the
    /// difference of the counts and of the sums, modulo 2²⁵⁶.
    pub fn less(&self, other: &BucketDigest) -> BucketDigest {
        let mut out = BucketDigest {
            rows: self.rows.wrapping_sub(other.rows),
            sum: [0; 4],
        };
        let mut borrow = false;
        for i in 0..4 {
            let (d, b1) = self.sum[i].overflowing_sub(other.sum[i]);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            out.sum[i] = d;
            borrow = b1 || b2;
        }
        out
    }

    /// The digest of one row.
    pub fn of_row(row_hash: &[u8; 32]) -> BucketDigest {
        let mut d = BucketDigest::default();
        d.add_row(row_hash);
        d
    }
}

/// A complete binary tree over `2^depth` bucket digests; node `i`'s children are
/// `2i+1`, `2i+2` (node 0 is the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    depth: u8,
    nodes: Vec<BucketDigest>,
}

impl Tree {
    pub fn new(depth: u8) -> Tree {
        assert!(depth <= 24, "at most 2^24 leaves");
        Tree {
            depth,
            nodes: vec![BucketDigest::default(); (1usize << (depth + 1)) - 1],
        }
    }

    fn leaf_index(&self, bucket: usize) -> usize {
        (1usize << self.depth) - 1 + bucket
    }

    pub fn add(&mut self, key: &[Field<'_>], value: &[Field<'_>]) {
        let (kh, rh) = hash_row(key, value);
        let leaf = self.leaf_index(bucket_of(kh, self.depth));
        self.nodes[leaf].add_row(&rh);
    }

    /// Adds a row hashed elsewhere (e.g. in parallel), to the leaf `bucket`.
    pub fn add_hashed(&mut self, bucket: usize, row_hash: &[u8; 32]) {
        let leaf = self.leaf_index(bucket);
        self.nodes[leaf].add_row(row_hash);
    }

    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The digest of one leaf.
    pub fn leaf(&self, bucket: usize) -> BucketDigest {
        self.nodes[self.leaf_index(bucket)]
    }

    /// Fills the inner nodes from the leaves (call once after adding rows).
    pub fn seal(&mut self) {
        for i in (0..self.leaf_index(0)).rev() {
            self.nodes[i] = self.nodes[2 * i + 1].merge(&self.nodes[2 * i + 2]);
        }
    }

    pub fn root(&self) -> BucketDigest {
        self.nodes[0]
    }

    /// The buckets whose digests differ, found top-down: subtrees with equal digests
    /// are never descended.
    pub fn diff(&self, other: &Tree) -> Vec<usize> {
        assert_eq!(self.depth, other.depth, "trees of one depth");
        let first_leaf = self.leaf_index(0);
        let mut out = Vec::new();
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if self.nodes[i] == other.nodes[i] {
                continue;
            }
            if i >= first_leaf {
                out.push(i - first_leaf);
            } else {
                stack.push(2 * i + 2);
                stack.push(2 * i + 1);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Row = (String, String, i64);

    fn tree(rows: &[Row]) -> Tree {
        let mut t = Tree::new(6);
        for (a, b, v) in rows {
            t.add(
                &[Field::Str(a), Field::Str(b)],
                &[Field::Int(i128::from(*v))],
            );
        }
        t.seal();
        t
    }

    fn rows() -> impl Strategy<Value = Vec<Row>> {
        proptest::collection::vec(("[a-z:0-9]{1,8}", "[a-z]{1,4}", any::<i64>()), 1..60)
    }

    proptest! {
        #[test]
        fn the_digest_is_independent_of_row_order(mut rs in rows(), seed in any::<u64>()) {
            let a = tree(&rs);
            // A deterministic shuffle.
            let n = rs.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 7) % (i as u64 + 1)) as usize;
                rs.swap(i, j);
            }
            prop_assert_eq!(a.root(), tree(&rs).root());
        }

        #[test]
        fn any_single_field_mutation_changes_the_digest(rs in rows(), which in 0usize..60, field in 0u8..3) {
            let i = which % rs.len();
            let mut m = rs.clone();
            match field {
                0 => m[i].0.push('x'),
                1 => m[i].1.push('x'),
                _ => m[i].2 = m[i].2.wrapping_add(1),
            }
            let (a, b) = (tree(&rs), tree(&m));
            prop_assert_ne!(a.root(), b.root());
            prop_assert!(!a.diff(&b).is_empty());
        }

        #[test]
        fn a_duplicated_row_is_detected(rs in rows(), which in 0usize..60) {
            let mut m = rs.clone();
            m.push(rs[which % rs.len()].clone());
            prop_assert_ne!(tree(&rs).root(), tree(&m).root());
        }

        #[test]
        fn a_swapped_pair_of_values_is_detected(rs in rows(), x in 0usize..60, y in 0usize..60) {
            let (i, j) = (x % rs.len(), y % rs.len());
            prop_assume!(rs[i].2 != rs[j].2 && (rs[i].0 != rs[j].0 || rs[i].1 != rs[j].1));
            let mut m = rs.clone();
            let (vi, vj) = (m[i].2, m[j].2);
            m[i].2 = vj;
            m[j].2 = vi;
            prop_assert_ne!(tree(&rs).root(), tree(&m).root());
        }
    }

    #[test]
    fn diff_names_exactly_the_buckets_of_changed_keys() {
        let base: Vec<Row> = (0..500)
            .map(|i| (format!("player:{i}"), "gold".to_string(), i64::from(i)))
            .collect();
        let mut changed = base.clone();
        changed[17].2 += 1;
        changed.remove(300);
        let (a, b) = (tree(&base), tree(&changed));
        let want: Vec<usize> = {
            let mut v: Vec<usize> = [&base[17], &base[300]]
                .iter()
                .map(|(k, s, _)| bucket_of(key_hash(&[Field::Str(k), Field::Str(s)]), 6))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        assert_eq!(a.diff(&b), want);
        assert!(a.diff(&a).is_empty());
    }

    /// The one-buffer hashing is the documented encoding, padded with zeros to whole
    /// blocks, fed to keyed blake3 (and to xxh3 for the key) field by field, for rows on
    /// the stack and on the heap.
    #[test]
    fn one_buffer_hashing_equals_the_documented_encoding() {
        fn encoding(fields: &[Field<'_>]) -> Vec<u8> {
            let mut out = vec![fields.len() as u8];
            for f in fields {
                match f {
                    Field::Str(s) => {
                        out.push(b's');
                        out.extend((s.len() as u32).to_le_bytes());
                        out.extend(s.as_bytes());
                    }
                    Field::Int(i) => {
                        out.push(b'i');
                        out.extend(i.to_le_bytes());
                    }
                    Field::Tag(t) => out.extend([b't', *t]),
                }
            }
            out
        }
        let long = "x".repeat(500);
        for (k, v) in [
            (
                vec![Field::Tag(1), Field::Str("player:1"), Field::Str("gold")],
                vec![Field::Int(-7)],
            ),
            (
                vec![Field::Str(&long), Field::Str("")],
                vec![Field::Str(&long)],
            ),
            (vec![], vec![]),
        ] {
            let (key, value) = (encoding(&k), encoding(&v));
            let mut h = blake3::Hasher::new_keyed(&ROW_DOMAIN);
            h.update(&key);
            h.update(&value);
            let n = key.len() + value.len();
            h.update(&vec![0; n.div_ceil(64).max(1) * 64 - n]);
            assert_eq!(
                hash_row(&k, &v),
                (
                    xxhash_rust::xxh3::xxh3_64_with_seed(&key, KEY_SEED),
                    *h.finalize().as_bytes()
                )
            );
            assert_eq!(
                key_hash(&k),
                hash_row(&k, &v).0,
                "the value never moves a row"
            );
        }
    }

    struct Fields(String, String, i128);

    impl RowFields for Fields {
        fn row_fields(&self) -> ([Field<'_>; 3], [Field<'_>; 1]) {
            (
                [Field::Tag(1), Field::Str(&self.0), Field::Str(&self.1)],
                [Field::Int(self.2)],
            )
        }
    }

    /// The SIMD pass gives every row exactly [`hash_row`]'s bucket and hash, for every
    /// encoding length from one block to past two (where rows go one by one), in groups
    /// that mix lengths and do not fill all lanes.
    #[test]
    fn hashing_rows_side_by_side_equals_one_at_a_time() {
        // A key of 31 + the strings' lengths bytes with an integer value: 31..=200.
        let rows: Vec<Fields> = (0..170)
            .map(|n| {
                let account = "a".repeat(n);
                Fields(account, format!("g{}", n % 7), i128::from(n as i64) - 80)
            })
            .collect();
        for take in [1, 15, 16, 17, 40, rows.len()] {
            let rows = &rows[..take];
            let mut out = vec![(0, [0; 32]); rows.len()];
            hash_rows(rows, 9, &mut out);
            for (r, o) in rows.iter().zip(&out) {
                let (k, v) = r.row_fields();
                let (kh, rh) = hash_row(&k, &v);
                assert_eq!(*o, (bucket_of(kh, 9), rh), "row of {} bytes", r.0.len());
            }
        }
    }

    /// A balance row of typical size is one blake3 block (the point of the compact
    /// encoding: one compression a row).
    #[test]
    fn a_typical_row_is_one_block() {
        let key = [
            Field::Tag(1),
            Field::Str("guild:12345/bank"),
            Field::Str("herb_silverleaf"),
        ];
        assert!(encoded_len(&key) + encoded_len(&[Field::Int(i128::MAX)]) <= 64);
    }

    #[test]
    fn typed_length_prefixed_encoding_separates_lookalikes() {
        let r1 = row_hash(&[Field::Str("ab"), Field::Str("c")], &[]);
        let r2 = row_hash(&[Field::Str("a"), Field::Str("bc")], &[]);
        let r3 = row_hash(&[Field::Str("1")], &[]);
        let r4 = row_hash(&[Field::Int(1)], &[]);
        let r5 = row_hash(&[Field::Str("k")], &[Field::Str("v")]);
        let r6 = row_hash(&[Field::Str("k"), Field::Str("v")], &[]);
        assert_ne!(r1, r2);
        assert_ne!(r3, r4);
        assert_ne!(r5, r6);
        let r7 = row_hash(&[Field::Tag(1)], &[]);
        let r8 = row_hash(&[Field::Tag(2)], &[]);
        let r9 = row_hash(&[Field::Int(1)], &[]);
        assert_ne!(r7, r8);
        assert_ne!(r7, r9);
    }
}
