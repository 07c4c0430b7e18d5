//! In-database summaries (issue #4, summary mode): per-bucket digests that PostgreSQL
//! computes with its own built-ins (`sha256`, `convert_to`, `get_byte`) and that this
//! module reproduces bit for bit from the expected state, so a store whose data equals
//! the stream's moves only bucket summaries, never rows.
//!
//! Pull mode ([`super::merkle`]) hashes with blake3, which PostgreSQL cannot compute;
//! this is a second, SQL-reproducible digest of the same rows. The SQL side lives in
//! `adapters::recon_pg` and must stay byte-identical to [`key_text`] / [`row_text`];
//! `tests/reconcile.rs` checks the two against the real PostgreSQL.
//!
//! **Canonical text (v1).** Every field is a netstring: its length in UTF-8 bytes in
//! decimal, `:`, the bytes, `,` (so separators inside values are plain bytes and
//! `("ab","c")` ≠ `("a","bc")`). A SQL `NULL` field is the single byte `~`, which no
//! netstring starts with (the auditor's expected rows never hold one: a `NULL` makes its
//! bucket differ, and the row pull that follows reports it). A leading type byte keeps
//! the two key spaces apart:
//!
//! | space | key text | row text |
//! |---|---|---|
//! | balances | `b` ns(account) ns(asset) | key text, ns(balance in decimal: `-5`, `0` never) |
//! | items | `i` ns(item) | key text, ns(location) |
//!
//! e.g. `b8:player:1,4:gold,3:-12,`.
//!
//! **Bucket** (key only, so a changed value stays in its bucket and an item's copies
//! share one): the first 4 bytes of `sha256(key text)` as a big-endian `u32`, shifted
//! right by `32 − depth`.
//!
//! **Row digest**: `d = sha256(salt ‖ row text)` where `salt` is a fresh 32-hex-digit
//! string per run. Its bytes 0..4 and 4..8 as big-endian `i32`s are two lanes.
//!
//! **Bucket summary**: (row count, Σ lane 1, Σ lane 2). PostgreSQL's `sum(int4)` is an
//! exact `int8` for a chunk (fewer than 2³² rows); the auditor adds chunks with wrapping
//! `i64` arithmetic on both sides, so the comparison is exact modulo 2⁶⁴ per lane.
//! Unlike XOR, a duplicated row or two equal rows do not cancel. A changed bucket keeps
//! an equal summary with probability about 2⁻⁶⁴; the per-run salt keeps it that way
//! against someone who writes rows chosen to cancel out (a sum of 64-bit digests is open
//! to generalized-birthday searches when the hash is known in advance: with the salt it
//! is not known until the run asks).

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::recon::{Row, RowKey, Scalar};

/// The per-run secret mixed into every row digest: 16 random bytes, sent to PostgreSQL
/// as 32 lowercase hex digits (so it is fixed-length ASCII in front of the row text).
#[derive(Clone, PartialEq, Eq)]
pub struct Salt(String);

impl Salt {
    pub fn from_bytes(bytes: [u8; 16]) -> Salt {
        let mut s = String::with_capacity(32);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Salt(s)
    }

    /// The hex text, as bound to the SQL query.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

fn netstring(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s.as_bytes());
    out.push(b',');
}

/// The canonical key text (the table in the module docs).
pub fn key_text(key: &RowKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    match key {
        RowKey::Balance { account, asset } => {
            out.push(b'b');
            netstring(&mut out, account);
            netstring(&mut out, asset);
        }
        RowKey::Item { item } => {
            out.push(b'i');
            netstring(&mut out, item);
        }
    }
    out
}

/// The canonical row text: the key text followed by the value's netstring.
pub fn row_text(row: &Row) -> Vec<u8> {
    let mut out = key_text(&row.key);
    match &row.value {
        Scalar::Int(i) => netstring(&mut out, &i.to_string()),
        Scalar::Str(s) => netstring(&mut out, s),
    }
    out
}

/// A key's bucket among `2^depth` (depth 1..=24, as the tree).
pub fn bucket(key: &RowKey, depth: u8) -> usize {
    assert!((1..=24).contains(&depth), "1..=24 bucket bits");
    let h = Sha256::digest(key_text(key));
    let top = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    (top >> (32 - u32::from(depth))) as usize
}

/// A row's two digest lanes (bytes 0..4 and 4..8 of `sha256(salt ‖ row text)`).
pub fn row_lanes(salt: &Salt, row: &Row) -> (i32, i32) {
    let mut h = Sha256::new();
    h.update(salt.hex().as_bytes());
    h.update(row_text(row));
    let d = h.finalize();
    (
        i32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        i32::from_be_bytes([d[4], d[5], d[6], d[7]]),
    )
}

/// One bucket's summary: row count and the two lane sums (wrapping, see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketSummary {
    pub rows: i64,
    pub lane1: i64,
    pub lane2: i64,
}

impl BucketSummary {
    pub fn add_row(&mut self, (l1, l2): (i32, i32)) {
        self.rows = self.rows.wrapping_add(1);
        self.lane1 = self.lane1.wrapping_add(i64::from(l1));
        self.lane2 = self.lane2.wrapping_add(i64::from(l2));
    }

    /// Adds the summary of a disjoint set of rows (another chunk).
    pub fn merge(&mut self, o: &BucketSummary) {
        self.rows = self.rows.wrapping_add(o.rows);
        self.lane1 = self.lane1.wrapping_add(o.lane1);
        self.lane2 = self.lane2.wrapping_add(o.lane2);
    }
}

/// The summaries of one key space: `2^depth` buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summaries {
    depth: u8,
    buckets: Vec<BucketSummary>,
}

impl Summaries {
    pub fn new(depth: u8) -> Summaries {
        assert!((1..=24).contains(&depth), "1..=24 bucket bits");
        Summaries {
            depth,
            buckets: vec![BucketSummary::default(); 1 << depth],
        }
    }

    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// Adds one chunk's summary of a bucket. The bucket number comes from the database:
    /// out of range is an error (a summary query that does not match this code), never
    /// a panic.
    pub fn merge(&mut self, bucket: i64, s: &BucketSummary) -> Result<(), String> {
        let slot = usize::try_from(bucket)
            .ok()
            .and_then(|b| self.buckets.get_mut(b))
            .ok_or_else(|| {
                format!(
                    "bucket {bucket} is outside 0..{} (depth {})",
                    1u64 << self.depth,
                    self.depth
                )
            })?;
        slot.merge(s);
        Ok(())
    }

    pub fn add_row(&mut self, salt: &Salt, row: &Row) {
        let (b, lanes) = hash_row(row, self.depth, salt);
        self.add_hashed(b, lanes);
    }

    /// Adds a row hashed by [`hash_row`] at this depth (a bucket out of range is a
    /// programmer error).
    pub fn add_hashed(&mut self, bucket: usize, lanes: (i32, i32)) {
        self.buckets[bucket].add_row(lanes);
    }

    pub fn get(&self, bucket: usize) -> Option<&BucketSummary> {
        self.buckets.get(bucket)
    }

    /// The buckets whose summaries differ, ascending.
    pub fn diff(&self, other: &Summaries) -> Vec<usize> {
        assert_eq!(self.depth, other.depth, "summaries of one depth");
        (0..self.buckets.len())
            .filter(|&b| self.buckets[b] != other.buckets[b])
            .collect()
    }
}

/// A row's bucket and lanes (pure, so the wiring can hash rows in parallel); what
/// [`Summaries::add_row`] adds.
pub fn hash_row(row: &Row, depth: u8, salt: &Salt) -> (usize, (i32, i32)) {
    (bucket(&row.key, depth), row_lanes(salt, row))
}

/// The summaries of the expected rows of one store's slice (one thread; the wiring
/// hashes large slices in parallel with [`hash_row`] and [`Summaries::add_hashed`]).
pub fn expected_summaries(
    rows: impl IntoIterator<Item = Row>,
    depth: u8,
    salt: &Salt,
) -> Summaries {
    let mut s = Summaries::new(depth);
    for r in rows {
        s.add_row(salt, &r);
    }
    s
}

/// The tree depth summary mode uses: the configured one, made shallower where it would
/// ship more than ~1% of a pull's bytes. Every chunk sends up to 2^depth summaries of
/// 28 bytes where a pull sends ~23 bytes a row, so 2^depth stays under
/// rows / (256 × chunks) for the slice's `rows` (~0.5%), with chunks estimated as
/// rows / `chunk_rows_max` but at least 3 (the adaptive chunks start small): the margin
/// is for a busy database, whose chunks shrink to their target time, so that twice the
/// estimated chunks still stay under 1%. Never below depth 6 (64 summaries a chunk:
/// nothing on the wire), nor above the configured depth. A shallower tree only means
/// more rows fetched per differing bucket.
pub fn depth_for(configured: u8, rows: usize, chunk_rows_max: i64) -> u8 {
    let chunks = (rows as f64 / chunk_rows_max.max(1) as f64).ceil().max(3.0);
    let fits = rows as f64 / (256.0 * chunks);
    let fits = if fits < 2.0 {
        0
    } else {
        fits.log2().floor() as u8
    };
    configured.min(fits.max(6))
}

/// Whether a row's key falls in one of `buckets` (the rows of differing buckets).
pub fn in_buckets(key: &RowKey, depth: u8, buckets: &HashSet<usize>) -> bool {
    buckets.contains(&bucket(key, depth))
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_depth_keeps_summaries_near_one_percent_of_a_pull() {
        // The configured depth where it is small enough.
        assert_eq!(depth_for(8, 10_000_000, 1_000_000), 8);
        // 1M rows (about 3 chunks): 3 × 2^10 × 28 bytes = 0.4% of ~23 MB.
        assert_eq!(depth_for(12, 1_000_000, 1_000_000), 10);
        // 10M rows in ≥ 10 chunks: 10 × 2^11 × 28 bytes = 0.25% of ~230 MB.
        assert_eq!(depth_for(16, 10_000_000, 1_000_000), 11);
        // Small tables keep a useful tree; never deeper than configured.
        assert_eq!(depth_for(12, 10, 3), 6);
        assert_eq!(depth_for(4, 10, 3), 4);
    }

    use super::*;

    use proptest::prelude::*;

    #[test]
    fn canonical_text_is_length_prefixed_and_typed() {
        assert_eq!(
            row_text(&Row::balance("player:1", "gold", -12)),
            b"b8:player:1,4:gold,3:-12,".to_vec()
        );
        assert_eq!(
            row_text(&Row::item("itm:é", "a,b")),
            "i6:itm:é,3:a,b,".as_bytes().to_vec()
        );
        // Moving a separator between fields changes the text.
        assert_ne!(
            key_text(&RowKey::Balance {
                account: "ab".into(),
                asset: "c".into()
            }),
            key_text(&RowKey::Balance {
                account: "a".into(),
                asset: "bc".into()
            })
        );
        // An item and a balance never share a key text.
        assert_ne!(
            key_text(&RowKey::Item { item: "x".into() })[0],
            key_text(&RowKey::Balance {
                account: "x".into(),
                asset: String::new()
            })[0]
        );
    }

    #[test]
    fn a_known_vector_pins_the_encoding() {
        // Computed independently (coreutils `sha256sum`, Python `hashlib`): a change here
        // means PostgreSQL's side must change too.
        // sha256("b8:player:1,4:gold,") = 0be159e5…: top 12 bits 0x0be = 190.
        let k = RowKey::Balance {
            account: "player:1".into(),
            asset: "gold".into(),
        };
        assert_eq!(bucket(&k, 12), 190);
        assert_eq!(bucket(&k, 1), 0);
        // sha256("000…0" (32 zeros) "b8:player:1,4:gold,3:-12,") = a6a20e4d 19ceb9b9 …
        let salt = Salt::from_bytes([0; 16]);
        assert_eq!(
            row_lanes(&salt, &Row::balance("player:1", "gold", -12)),
            (0xa6a2_0e4d_u32 as i32, 0x19ce_b9b9)
        );
        assert_eq!(0xa6a2_0e4d_u32 as i32, -1_499_328_947);
    }

    #[test]
    fn a_duplicated_row_and_two_equal_rows_do_not_cancel() {
        let salt = Salt::from_bytes([7; 16]);
        let r = Row::item("itm:1", "player:1/bag");
        let mut one = Summaries::new(4);
        one.add_row(&salt, &r);
        let mut two = one.clone();
        two.add_row(&salt, &r);
        assert_eq!(one.diff(&two), vec![bucket(&r.key, 4)]);
        assert!(Summaries::new(4).diff(&two).len() == 1);
    }

    #[test]
    fn a_bucket_out_of_range_is_an_error_not_a_panic() {
        let mut s = Summaries::new(3);
        assert!(s.merge(8, &BucketSummary::default()).is_err());
        assert!(s.merge(-1, &BucketSummary::default()).is_err());
        assert!(s.merge(7, &BucketSummary::default()).is_ok());
    }

    #[test]
    fn the_salt_changes_every_digest_and_hides_in_debug() {
        let r = Row::balance("player:1", "gold", 5);
        let a = Salt::from_bytes([0; 16]);
        let b = Salt::from_bytes([1; 16]);
        assert_eq!(a.hex().len(), 32);
        assert_ne!(row_lanes(&a, &r), row_lanes(&b, &r));
        assert_eq!(format!("{a:?}"), "Salt(..)");
    }

    proptest! {
        /// Order-free (chunks merged in any split equal one pass), and any single
        /// changed, removed or added row shows in exactly its bucket.
        #[test]
        fn chunks_merge_to_the_whole_and_any_change_shows(
            n in 1usize..200,
            split in 0usize..200,
            victim in 0usize..200,
            depth in 1u8..8,
            seed in any::<[u8; 16]>(),
        ) {
            let salt = Salt::from_bytes(seed);
            let rows: Vec<Row> = (0..n).map(|i| Row::balance(&format!("player:{i}"), "gold", i as i128 - 50)).collect();
            let whole = expected_summaries(rows.clone(), depth, &salt);
            let split = split.min(n);
            let mut merged = Summaries::new(depth);
            for part in [&rows[..split], &rows[split..]] {
                let p = expected_summaries(part.to_vec(), depth, &salt);
                for (b, s) in p.buckets.iter().enumerate() {
                    merged.merge(b as i64, s).unwrap();
                }
            }
            prop_assert_eq!(&merged, &whole);

            let v = victim % n;
            let mut changed = rows.clone();
            changed[v].value = Scalar::Int(1_000_000);
            prop_assert_eq!(whole.diff(&expected_summaries(changed, depth, &salt)), vec![bucket(&rows[v].key, depth)]);
            let mut removed = rows.clone();
            let gone = removed.remove(v);
            prop_assert_eq!(whole.diff(&expected_summaries(removed, depth, &salt)), vec![bucket(&gone.key, depth)]);
        }
    }
}
