//! Order-free digests of key spaces, for reconciliation (issue #4): the state the
//! stream implies and a store's state are each summarised as a tree of buckets, and
//! only the buckets whose digests differ are fetched row by row.
//!
//! - A **row** is hashed with blake3 over a typed, length-prefixed encoding, so
//!   `("ab","c")` and `("a","bc")` differ and a value can never pass for a key.
//! - A row goes to the **bucket** chosen by the hash of its *key* alone, so string,
//!   UUID, composite or gappy keys spread evenly and a changed value stays in its bucket.
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
}

/// Each hash is blake3 in keyed mode with a key of its own, derived from a context
/// string: domain separation that costs no bytes of the hashed input.
static KEY_DOMAIN: std::sync::LazyLock<[u8; 32]> =
    std::sync::LazyLock::new(|| blake3::derive_key("assayer merkle v2 key hash", b""));
static ROW_DOMAIN: std::sync::LazyLock<[u8; 32]> =
    std::sync::LazyLock::new(|| blake3::derive_key("assayer merkle v2 row hash", b""));

/// Hash of a row's key (chooses its bucket): keyed blake3 of the key's encoding.
pub fn key_hash(key: &[Field<'_>]) -> [u8; 32] {
    keyed_hash(&KEY_DOMAIN, &[], key)
}

/// Hash of a whole row (key and value).
pub fn row_hash(key: &[Field<'_>], value: &[Field<'_>]) -> [u8; 32] {
    row_hash_of(&key_hash(key), value)
}

/// Hash of a whole row from its key's hash (which the bucket needs anyway): keyed
/// blake3 of the key hash followed by the value's encoding. A typical row (a balance
/// of an account name under 20 bytes, an item location) is one blake3 block for the
/// key and one for the row.
pub fn row_hash_of(key_hash: &[u8; 32], value: &[Field<'_>]) -> [u8; 32] {
    keyed_hash(&ROW_DOMAIN, key_hash, value)
}

/// The typed, length-prefixed encoding — `prefix`, the field count (u32 LE), and each
/// field as a type byte, then a string's length (u64 LE) and bytes or an integer's 16
/// bytes (i128 LE) — hashed with blake3 keyed by `domain`. Built in one buffer and
/// hashed in one call (blake3's incremental `update` costs more than the hashing on
/// inputs this small); encodings too long for the stack take the heap.
fn keyed_hash(domain: &[u8; 32], prefix: &[u8], fields: &[Field<'_>]) -> [u8; 32] {
    let len = prefix.len()
        + 4
        + fields
            .iter()
            .map(|f| match f {
                Field::Str(s) => 1 + 8 + s.len(),
                Field::Int(_) => 1 + 16,
            })
            .sum::<usize>();
    if len <= STACK_ROW_BYTES {
        let mut buf = [0u8; STACK_ROW_BYTES];
        let n = encode_into(&mut buf, prefix, fields);
        *blake3::keyed_hash(domain, &buf[..n]).as_bytes()
    } else {
        let mut buf = vec![0u8; len];
        let n = encode_into(&mut buf, prefix, fields);
        *blake3::keyed_hash(domain, &buf[..n]).as_bytes()
    }
}

/// Encodings that fit are hashed without an allocation.
const STACK_ROW_BYTES: usize = 192;

/// Writes the encoding of [`keyed_hash`] into `buf` (at least that long); returns
/// its length.
fn encode_into(buf: &mut [u8], prefix: &[u8], fields: &[Field<'_>]) -> usize {
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        buf[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    put(prefix);
    put(&(fields.len() as u32).to_le_bytes());
    for f in fields {
        match f {
            Field::Str(s) => {
                put(b"s");
                put(&(s.len() as u64).to_le_bytes());
                put(s.as_bytes());
            }
            Field::Int(i) => {
                put(b"i");
                put(&i.to_le_bytes());
            }
        }
    }
    n
}

/// The bucket of a key among `2^depth` leaves.
pub fn bucket_of(key_hash: &[u8; 32], depth: u8) -> usize {
    assert!(depth <= 24, "at most 2^24 leaves");
    let top = u32::from_be_bytes(key_hash[..4].try_into().expect("4 bytes"));
    if depth == 0 {
        0
    } else {
        (top >> (32 - u32::from(depth))) as usize
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
        let kh = key_hash(key);
        let leaf = self.leaf_index(bucket_of(&kh, self.depth));
        self.nodes[leaf].add_row(&row_hash_of(&kh, value));
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
                .map(|(k, s, _)| bucket_of(&key_hash(&[Field::Str(k), Field::Str(s)]), 6))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        assert_eq!(a.diff(&b), want);
        assert!(a.diff(&a).is_empty());
    }

    /// The one-buffer hashing is the documented encoding fed to keyed blake3 field by
    /// field, for rows on the stack and on the heap.
    #[test]
    fn one_buffer_hashing_equals_the_documented_encoding() {
        fn incremental(domain: &[u8; 32], prefix: &[u8], fields: &[Field<'_>]) -> [u8; 32] {
            let mut h = blake3::Hasher::new_keyed(domain);
            h.update(prefix);
            h.update(&(fields.len() as u32).to_le_bytes());
            for f in fields {
                match f {
                    Field::Str(s) => {
                        h.update(b"s");
                        h.update(&(s.len() as u64).to_le_bytes());
                        h.update(s.as_bytes());
                    }
                    Field::Int(i) => {
                        h.update(b"i");
                        h.update(&i.to_le_bytes());
                    }
                }
            }
            *h.finalize().as_bytes()
        }
        let long = "x".repeat(500);
        for (k, v) in [
            (
                vec![Field::Str("player:1"), Field::Str("gold")],
                vec![Field::Int(-7)],
            ),
            (
                vec![Field::Str(&long), Field::Str("")],
                vec![Field::Str(&long)],
            ),
            (vec![], vec![]),
        ] {
            let kh = incremental(&KEY_DOMAIN, &[], &k);
            assert_eq!(key_hash(&k), kh);
            assert_eq!(row_hash(&k, &v), incremental(&ROW_DOMAIN, &kh, &v));
        }
        assert_ne!(*KEY_DOMAIN, *ROW_DOMAIN);
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
    }
}
