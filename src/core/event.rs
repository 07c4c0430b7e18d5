//! events-v1 on the wire: decoding, every rule of the contract, and the content digest
//! that tells a redelivery from a conflicting re-use of a `tx_id`.
//!
//! Decoding borrows from the input buffer wherever the JSON has no escapes, so the hot
//! path allocates only the two small vectors of postings and item moves.

use std::borrow::Cow;

use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// events-v1: "An event is at most 64 KiB".
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// events-v1: "at most 256 postings and 256 item moves".
pub const MAX_POSTINGS: usize = 256;
pub const MAX_ITEM_MOVES: usize = 256;
/// events-v1 field limits.
pub const MAX_TX_ID_BYTES: usize = 64;
pub const MAX_REALM_BYTES: usize = 32;
pub const MAX_SYSTEM_BYTES: usize = 32;
pub const MAX_KIND_BYTES: usize = 64;
pub const MAX_GRANT_BYTES: usize = 128;
/// Not in events-v1: our limits on identifiers the spec leaves open (docs/invariants.md,
/// "Decisions where the contract is silent"). Generous enough for any real key, small
/// enough that a garbage producer cannot make the auditor intern megabytes.
pub const MAX_ACCOUNT_BYTES: usize = 256;
pub const MAX_ASSET_BYTES: usize = 64;
pub const MAX_ITEM_BYTES: usize = 128;
pub const MAX_ACTOR_BYTES: usize = 256;
pub const MAX_TEMPLATE_BYTES: usize = 128;

pub const DEFAULT_REALM: &str = "default";

/// The event exactly as on the wire. `Deserialize` borrows strings where it can;
/// `Serialize` is what the simulator writes. Unknown fields are tolerated (ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent<'a> {
    pub v: u64,
    #[serde(borrow)]
    pub tx_id: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub system: Cow<'a, str>,
    pub seq: u64,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        skip_serializing_if = "SmallVec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub postings: SmallVec<[WirePosting<'a>; 2]>,
    #[serde(
        borrow,
        default,
        skip_serializing_if = "SmallVec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub items: SmallVec<[WireItemMove<'a>; 2]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePosting<'a> {
    #[serde(borrow)]
    pub account: Cow<'a, str>,
    #[serde(borrow)]
    pub asset: Cow<'a, str>,
    pub delta: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireItemMove<'a> {
    #[serde(borrow)]
    pub item: Cow<'a, str>,
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow)]
    pub to: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Cow<'a, str>>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<SmallVec<[T; 2]>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<SmallVec<[T; 2]>>::deserialize(d)?.unwrap_or_default())
}

/// A decoded event that satisfies every rule of events-v1.
#[derive(Debug, Clone)]
pub struct ValidEvent<'a> {
    pub wire: WireEvent<'a>,
    pub ts: Timestamp,
    /// Content digest over the contract fields (see [`content_digest`]).
    pub digest: u64,
    /// Every asset's postings sum to zero (else `tx.unbalanced`).
    pub balanced: bool,
    /// A pipeline's decode stage found that the event raises no intrinsic finding
    /// under the engine's policy ([`crate::core::engine::intrinsically_clean`]), so the
    /// engine stage skips those checks. `decode` leaves it false.
    pub prechecked: bool,
}

impl ValidEvent<'_> {
    pub fn realm(&self) -> &str {
        self.wire.realm.as_deref().unwrap_or(DEFAULT_REALM)
    }
}

/// Why bytes are not a valid events-v1 event. Becomes one `event.malformed` finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong, in words a producer's engineer can act on.
    pub reason: String,
    /// The offending field path, e.g. `postings[3].delta`, when known.
    pub field: Option<String>,
    /// Best-effort identification of the event, when the bytes allow it.
    pub tx_id: Option<String>,
    pub realm: Option<String>,
    pub system: Option<String>,
    pub seq: Option<u64>,
}

impl Malformed {
    fn new(reason: impl Into<String>, field: Option<String>) -> Malformed {
        Malformed {
            reason: reason.into(),
            field,
            tx_id: None,
            realm: None,
            system: None,
            seq: None,
        }
    }
}

/// Decodes and validates one event. Never panics, whatever the bytes.
// The error is large, but it is the rare path and is consumed at once.
#[allow(clippy::result_large_err)]
pub fn decode(bytes: &[u8]) -> Result<ValidEvent<'_>, Malformed> {
    if bytes.len() > MAX_EVENT_BYTES {
        let mut m = Malformed::new(
            format!(
                "event is {} bytes; events-v1 allows at most {MAX_EVENT_BYTES}",
                bytes.len()
            ),
            None,
        );
        identify_best_effort(&mut m, &bytes[..bytes.len().min(4096)]);
        return Err(m);
    }
    // UTF-8 is checked once for the whole event (a fast scan over ASCII), so the JSON
    // reader can borrow every string without checking each again.
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let mut m = Malformed::new(
                format!(
                    "event is not valid UTF-8 (bad byte at offset {})",
                    e.valid_up_to()
                ),
                None,
            );
            // The bad byte is most likely inside one string: read the rest to name the
            // producer (the JSON reader refuses invalid UTF-8 anywhere).
            identify_best_effort(&mut m, String::from_utf8_lossy(bytes).as_bytes());
            return Err(m);
        }
    };
    let wire: WireEvent<'_> = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(e) => {
            let mut m = Malformed::new(describe_json_error(&e), None);
            identify_best_effort(&mut m, bytes);
            return Err(m);
        }
    };
    validate(wire).map_err(|(mut m, w)| {
        m.tx_id = Some(w.tx_id.clone().into_owned());
        m.realm = w.realm.as_deref().map(str::to_owned);
        m.system = Some(w.system.clone().into_owned());
        m.seq = Some(w.seq);
        m
    })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "is not valid JSON",
        Category::Data => "does not match events-v1",
        Category::Eof => "is truncated",
    };
    format!("event {what}: {e}")
}

/// Pulls `tx_id`, `realm`, `system`, `seq` out of bytes that failed to decode, so the
/// finding can name the producer. Only runs on the (rare) malformed path.
fn identify_best_effort(m: &mut Malformed, bytes: &[u8]) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(bytes)
    else {
        return;
    };
    let s = |k: &str| {
        obj.get(k)
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(128).collect::<String>())
    };
    m.tx_id = s("tx_id");
    m.realm = s("realm");
    m.system = s("system");
    m.seq = obj.get("seq").and_then(|v| v.as_u64());
}

type Invalid<'a> = (Malformed, WireEvent<'a>);

#[allow(clippy::result_large_err)]
fn validate(wire: WireEvent<'_>) -> Result<ValidEvent<'_>, Invalid<'_>> {
    macro_rules! bail {
        ($field:expr, $($fmt:tt)+) => {
            return Err((Malformed::new(format!($($fmt)+), Some($field.to_string())), wire))
        };
    }
    if wire.v != 1 {
        bail!(
            "v",
            "unsupported format version `v: {}`; this auditor reads version 1",
            wire.v
        );
    }
    if let Err(why) = check_tx_id(&wire.tx_id) {
        bail!("tx_id", "{why}");
    }
    if let Some(realm) = &wire.realm
        && let Err(why) = check_len("realm", realm, MAX_REALM_BYTES)
    {
        bail!("realm", "{why}");
    }
    if let Err(why) = check_len("system", &wire.system, MAX_SYSTEM_BYTES) {
        bail!("system", "{why}");
    }
    if wire.seq == 0 {
        bail!("seq", "`seq` must be an integer ≥ 1, got 0");
    }
    let ts = match Timestamp::parse_rfc3339(&wire.ts) {
        Ok(ts) => ts,
        Err(why) => bail!("ts", "{why}"),
    };
    if let Err(why) = check_len("kind", &wire.kind, MAX_KIND_BYTES) {
        bail!("kind", "{why}");
    }
    if let Some(actor) = &wire.actor
        && let Err(why) = check_len("actor", actor, MAX_ACTOR_BYTES)
    {
        bail!("actor", "{why}");
    }
    if let Some(grant) = &wire.grant
        && let Err(why) = check_len("grant", grant, MAX_GRANT_BYTES)
    {
        bail!("grant", "{why}");
    }
    if wire.postings.len() > MAX_POSTINGS {
        bail!(
            "postings",
            "{} postings; events-v1 allows at most {MAX_POSTINGS}",
            wire.postings.len()
        );
    }
    if wire.items.len() > MAX_ITEM_MOVES {
        bail!(
            "items",
            "{} item moves; events-v1 allows at most {MAX_ITEM_MOVES}",
            wire.items.len()
        );
    }
    for (i, p) in wire.postings.iter().enumerate() {
        if let Err(why) = check_location(&p.account) {
            bail!(format!("postings[{i}].account"), "{why}");
        }
        if let Err(why) = check_len("asset", &p.asset, MAX_ASSET_BYTES) {
            bail!(format!("postings[{i}].asset"), "{why}");
        }
        if p.delta == 0 {
            bail!(format!("postings[{i}].delta"), "`delta` must be non-zero");
        }
    }
    let balanced = match sums(&wire.postings) {
        Err(asset) => bail!(
            "postings",
            "the deltas of asset `{asset}` overflow a signed 64-bit integer when summed"
        ),
        Ok(balanced) => balanced,
    };
    for (i, m) in wire.items.iter().enumerate() {
        if let Err(why) = check_len("item", &m.item, MAX_ITEM_BYTES) {
            bail!(format!("items[{i}].item"), "{why}");
        }
        if let Err(why) = check_location(&m.from) {
            bail!(format!("items[{i}].from"), "{why}");
        }
        if let Err(why) = check_location(&m.to) {
            bail!(format!("items[{i}].to"), "{why}");
        }
        if let Some(t) = &m.template
            && let Err(why) = check_len("template", t, MAX_TEMPLATE_BYTES)
        {
            bail!(format!("items[{i}].template"), "{why}");
        }
    }
    let digest = content_digest(&wire, ts);
    Ok(ValidEvent {
        wire,
        ts,
        digest,
        balanced,
        prechecked: false,
    })
}

fn check_len(name: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        Err(format!("`{name}` must not be empty"))
    } else if s.len() > max {
        Err(format!("`{name}` is {} bytes; the limit is {max}", s.len()))
    } else {
        Ok(())
    }
}

fn check_tx_id(s: &str) -> Result<(), String> {
    check_len("tx_id", s, MAX_TX_ID_BYTES)?;
    match s
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-')))
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "`tx_id` may only hold [A-Za-z0-9:_.-]; byte {i} is {:?}",
            s[i..].chars().next().unwrap_or('?')
        )),
    }
}

/// `owner:id` optionally followed by `/container`, each part non-empty.
fn check_location(s: &str) -> Result<(), String> {
    check_len("account", s, MAX_ACCOUNT_BYTES)?;
    let (head, container) = match s.split_once('/') {
        Some((h, c)) => (h, Some(c)),
        None => (s, None),
    };
    let Some((owner, id)) = head.split_once(':') else {
        return Err(format!("`{s}` is not an `owner:id` account or location"));
    };
    if owner.is_empty() || id.is_empty() {
        return Err(format!(
            "`{s}` is not an `owner:id` account or location (empty owner or id)"
        ));
    }
    if container == Some("") {
        return Err(format!("`{s}` has an empty `/container`"));
    }
    if s.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "`{}` contains whitespace or control characters",
            s.escape_debug()
        ));
    }
    Ok(())
}

/// Sums each asset's postings: `Err(asset)` when its positive or negative deltas
/// overflow i64 when summed (keeping both one-signed sums in range guarantees every
/// partial sum, in any order, is too), else whether every asset sums to zero.
fn sums<'a>(postings: &'a [WirePosting<'_>]) -> Result<bool, &'a str> {
    let mut balanced = true;
    for (i, p) in postings.iter().enumerate() {
        if postings[..i].iter().any(|q| q.asset == p.asset) {
            continue; // this asset was summed at its first posting
        }
        let (mut pos, mut neg) = (0i64, 0i64);
        for q in postings[i..].iter().filter(|q| q.asset == p.asset) {
            let ok = if q.delta > 0 {
                pos.checked_add(q.delta).map(|v| pos = v)
            } else {
                neg.checked_add(q.delta).map(|v| neg = v)
            };
            if ok.is_none() {
                return Err(&p.asset);
            }
        }
        balanced &= i128::from(pos) + i128::from(neg) == 0;
    }
    Ok(balanced)
}

/// The per-asset sum of the postings when it is not zero, in first-seen asset order.
pub fn residuals<'a>(postings: &'a [WirePosting<'_>]) -> Vec<(&'a str, i128)> {
    let mut out: Vec<(&str, i128)> = Vec::new();
    for p in postings {
        match out.iter_mut().find(|(a, _)| *a == p.asset) {
            Some((_, sum)) => *sum += i128::from(p.delta),
            None => out.push((&p.asset, i128::from(p.delta))),
        }
    }
    out.retain(|(_, sum)| *sum != 0);
    out
}

/// A digest of what the event *means*, so that a redelivery re-serialized with other
/// key order, whitespace, escapes, timestamp notation or posting order is recognised as
/// the same event. Item moves keep their order (a chain A→B→C in one event is not the
/// same as C→B→A); postings are a multiset (their hashes are summed, which is
/// order-free and counts duplicates). Unknown fields are not content.
///
/// xxh3 rather than blake3: this runs on every event, and a 64-bit non-cryptographic
/// digest is enough to tell a redelivery from a changed re-send of the *same* tx_id.
pub fn content_digest(w: &WireEvent<'_>, ts: Timestamp) -> u64 {
    use xxhash_rust::xxh3::{Xxh3, xxh3_64};
    let mut h = Xxh3::new();
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u32).to_le_bytes());
        h.update(b);
    };
    put(&w.v.to_le_bytes());
    put(w.tx_id.as_bytes());
    put(w.realm.as_deref().unwrap_or(DEFAULT_REALM).as_bytes());
    put(w.system.as_bytes());
    put(&w.seq.to_le_bytes());
    put(&ts.0.to_le_bytes());
    put(w.kind.as_bytes());
    put(w.actor.as_deref().unwrap_or("\u{0}none").as_bytes());
    put(w.grant.as_deref().unwrap_or("\u{0}none").as_bytes());
    let mut postings: u64 = 0;
    let mut buf = [0u8; 512];
    for p in &w.postings {
        let (a, s) = (p.account.as_bytes(), p.asset.as_bytes());
        let n = a.len() + s.len() + 16;
        let one = if n <= buf.len() {
            buf[..4].copy_from_slice(&(a.len() as u32).to_le_bytes());
            buf[4..4 + a.len()].copy_from_slice(a);
            let o = 4 + a.len();
            buf[o..o + 4].copy_from_slice(&(s.len() as u32).to_le_bytes());
            buf[o + 4..o + 4 + s.len()].copy_from_slice(s);
            let o = o + 4 + s.len();
            buf[o..o + 8].copy_from_slice(&p.delta.to_le_bytes());
            xxh3_64(&buf[..o + 8])
        } else {
            let mut v = Vec::with_capacity(n);
            v.extend_from_slice(&(a.len() as u32).to_le_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(&(s.len() as u32).to_le_bytes());
            v.extend_from_slice(s);
            v.extend_from_slice(&p.delta.to_le_bytes());
            xxh3_64(&v)
        };
        postings = postings.wrapping_add(one);
    }
    put(&(w.postings.len() as u64).to_le_bytes());
    put(&postings.to_le_bytes());
    put(&(w.items.len() as u64).to_le_bytes());
    for m in &w.items {
        put(m.item.as_bytes());
        put(m.from.as_bytes());
        put(m.to.as_bytes());
        put(m.template.as_deref().unwrap_or("\u{0}none").as_bytes());
    }
    h.digest()
}

/// `world:` accounts are the economy's faucets and sinks.
pub fn is_world(account: &str) -> bool {
    account.starts_with("world:")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"v":1,"tx_id":"trade-000815","realm":"eu-1","system":"trade","seq":815,"ts":"2026-11-27T08:00:00.120Z","kind":"trade.settle","actor":"player:42","postings":[{"account":"player:42","asset":"gold","delta":-150},{"account":"player:77","asset":"gold","delta":150}],"items":[{"item":"itm:9f2c01","from":"player:77/bag","to":"player:42/bag","template":"sword_of_dawn"}]}"#;

    const PINNED_DIGEST: u64 = 0x28eb_a64e_e9f6_7e7b;

    fn reason(json: &str) -> String {
        decode(json.as_bytes()).unwrap_err().reason
    }

    /// Digests live in snapshots (the redelivery window, buffered events): pinned.
    #[test]
    fn the_content_digest_is_stable_across_versions() {
        let v = decode(GOOD.as_bytes()).unwrap();
        assert_eq!(v.digest, PINNED_DIGEST, "{:#x}", v.digest);
    }

    #[test]
    fn decodes_the_spec_example() {
        let e = decode(GOOD.as_bytes()).unwrap();
        assert_eq!(e.wire.tx_id, "trade-000815");
        assert_eq!(e.realm(), "eu-1");
        assert_eq!(e.wire.postings.len(), 2);
        assert_eq!(e.wire.items[0].template.as_deref(), Some("sword_of_dawn"));
        assert!(matches!(e.wire.tx_id, Cow::Borrowed(_)), "hot path borrows");
    }

    #[test]
    fn tolerates_unknown_fields_and_defaults_realm() {
        let json = r#"{"v":1,"tx_id":"a","system":"loot","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"heartbeat","x-trace":{"a":[1,2]}}"#;
        let e = decode(json.as_bytes()).unwrap();
        assert_eq!(e.realm(), "default");
        assert!(e.wire.postings.is_empty() && e.wire.items.is_empty());
    }

    #[test]
    fn redelivery_in_other_notation_has_the_same_digest() {
        let other = r#"{ "kind":"trade.settle", "v":1, "tx_id":"trade-000815","realm":"eu-1","system":"trade","seq":815,"ts":"2026-11-27T09:00:00.12+01:00","actor":"player:42","postings":[{"account":"player:77","asset":"gold","delta":150},{"account":"player:42","asset":"gold","delta":-150}],"items":[{"item":"itm:9f2c01","from":"player:77\/bag","to":"player:42/bag","template":"sword_of_dawn"}],"extra":true}"#;
        let a = decode(GOOD.as_bytes()).unwrap();
        let b = decode(other.as_bytes()).unwrap();
        assert_eq!(a.digest, b.digest);
        let changed = GOOD.replace("150}", "151}");
        assert_ne!(a.digest, decode(changed.as_bytes()).unwrap().digest);
    }

    #[test]
    fn every_rule_is_enforced_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            (r#"{"v":2}"#, "does not match"),
            ("not json", "not valid JSON"),
            (r#"{"v":1,"tx_id":"a"#, "truncated"),
            (
                &GOOD.replace(r#""v":1"#, r#""v":2"#),
                "unsupported format version",
            ),
            (&GOOD.replace("trade-000815", "trade 815"), "may only hold"),
            (&GOOD.replace("trade-000815", ""), "must not be empty"),
            (
                &GOOD.replace("trade-000815", &"x".repeat(65)),
                "limit is 64",
            ),
            (&GOOD.replace("eu-1", &"r".repeat(33)), "limit is 32"),
            (&GOOD.replace(r#""seq":815"#, r#""seq":0"#), "≥ 1"),
            (
                &GOOD.replace(r#""seq":815"#, r#""seq":-4"#),
                "does not match",
            ),
            (
                &GOOD.replace(r#""seq":815"#, r#""seq":"815""#),
                "does not match",
            ),
            (
                &GOOD.replace("2026-11-27T08:00:00.120Z", "2026-11-27 08:00"),
                "RFC 3339",
            ),
            (&GOOD.replace("-150", "0"), "non-zero"),
            (&GOOD.replace("-150", "-1.5"), "does not match"),
            (
                &GOOD.replace("-150", "9223372036854775808"),
                "does not match",
            ),
            (&GOOD.replace("player:77/bag", "player77"), "owner:id"),
            (
                &GOOD.replace("player:77/bag", "player:77/"),
                "empty `/container`",
            ),
            (
                &GOOD.replace(r#""kind":"trade.settle""#, r#""kind":"""#),
                "must not be empty",
            ),
            (&GOOD.replace(r#""v":1,"#, ""), "missing field `v`"),
            (
                &GOOD.replace(r#""v":1,"#, r#""v":1,"v":1,"#),
                "duplicate field",
            ),
        ];
        for (json, want) in cases {
            let got = reason(json);
            assert!(got.contains(want), "{json}\n  => {got}\n  wanted: {want}");
        }
    }

    #[test]
    fn invalid_utf8_is_malformed_with_its_offset_and_non_ascii_decodes() {
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("sword").unwrap();
        bytes[at] = 0xff;
        let m = decode(&bytes).unwrap_err();
        assert!(
            m.reason
                .contains(&format!("not valid UTF-8 (bad byte at offset {at})")),
            "{}",
            m.reason
        );
        assert_eq!(m.tx_id.as_deref(), Some("trade-000815"));
        let accented = GOOD.replace("sword_of_dawn", "épée_de_l’aube");
        let e = decode(accented.as_bytes()).unwrap();
        assert_eq!(e.wire.items[0].template.as_deref(), Some("épée_de_l’aube"));
    }

    #[test]
    fn limits_on_size_and_counts() {
        let big = format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(MAX_EVENT_BYTES));
        assert!(reason(&big).contains("at most 65536"));
        let postings: Vec<String> = (0..257)
            .map(|i| format!(r#"{{"account":"player:{i}","asset":"gold","delta":1}}"#))
            .collect();
        let json = format!(
            r#"{{"v":1,"tx_id":"a","system":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"k","postings":[{}]}}"#,
            postings.join(",")
        );
        assert!(reason(&json).contains("at most 256"));
    }

    #[test]
    fn overflow_when_summed_is_malformed_but_max_values_are_fine() {
        let p = |d: i64| format!(r#"{{"account":"player:1","asset":"gold","delta":{d}}}"#);
        let ev = |ps: Vec<String>| {
            format!(
                r#"{{"v":1,"tx_id":"a","system":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"k","postings":[{}]}}"#,
                ps.join(",")
            )
        };
        assert!(decode(ev(vec![p(i64::MAX), p(-i64::MAX)]).as_bytes()).is_ok());
        let r = reason(&ev(vec![p(i64::MAX), p(1), p(-5)]));
        assert!(r.contains("overflow"), "{r}");
    }

    #[test]
    fn malformed_names_the_event_when_it_can() {
        let m = decode(GOOD.replace("-150", "0").as_bytes()).unwrap_err();
        assert_eq!(m.tx_id.as_deref(), Some("trade-000815"));
        assert_eq!(m.field.as_deref(), Some("postings[0].delta"));
        let m = decode(GOOD.replace(r#""seq":815"#, r#""seq":"x""#).as_bytes()).unwrap_err();
        assert_eq!(m.tx_id.as_deref(), Some("trade-000815"));
        assert_eq!(m.system.as_deref(), Some("trade"));
    }

    #[test]
    fn residuals_sum_per_asset() {
        let json = GOOD.replace(r#""delta":150"#, r#""delta":149"#);
        let e = decode(json.as_bytes()).unwrap();
        assert_eq!(residuals(&e.wire.postings), vec![("gold", -1)]);
    }
}
