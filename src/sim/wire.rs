//! The simulator's owned event and its renderings on the wire.
//!
//! The canonical line goes through [`WireEvent`]'s `Serialize`, so the simulator writes
//! exactly what the decoder reads. A redelivery may instead be *re-serialized*: other key
//! order, whitespace, string escapes, `ts` notation and posting order. events-v1 says
//! such a line is the same event, so every variant here must decode to the same
//! [`content_digest`](crate::core::event::content_digest) (tested).

use std::borrow::Cow;
use std::rc::Rc;

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use time::{OffsetDateTime, UtcOffset};

use crate::core::event::{WireEvent, WireItemMove, WirePosting};
use crate::core::time::Timestamp;

use super::world::Sys;

/// One currency or stackable leg.
#[derive(Clone, Debug)]
pub(super) struct Posting {
    pub account: String,
    pub asset: &'static str,
    pub delta: i64,
}

/// One unique-item movement.
#[derive(Clone, Debug)]
pub(super) struct Move {
    pub item: String,
    pub from: String,
    pub to: String,
    pub template: &'static str,
}

/// An event as the simulator builds it: owned, plus the indices delivery needs.
#[derive(Clone, Debug)]
pub(super) struct SimEvent {
    pub tx_id: String,
    /// Index into the world's realms; not on the wire (the name is).
    pub realm_idx: usize,
    pub realm: Rc<str>,
    pub sys: Sys,
    pub seq: u64,
    pub ts: Timestamp,
    pub kind: &'static str,
    pub actor: Option<String>,
    pub grant: Option<String>,
    pub postings: Vec<Posting>,
    pub items: Vec<Move>,
}

impl SimEvent {
    /// The (realm, system) stream this event belongs to, as one small key.
    pub fn stream(&self) -> u32 {
        (self.realm_idx * Sys::ALL.len() + self.sys as usize) as u32
    }

    pub fn to_wire(&self) -> WireEvent<'_> {
        WireEvent {
            v: 1,
            tx_id: Cow::Borrowed(&self.tx_id),
            realm: Some(Cow::Borrowed(&self.realm)),
            system: Cow::Borrowed(self.sys.name()),
            seq: self.seq,
            ts: Cow::Owned(self.ts.to_rfc3339()),
            kind: Cow::Borrowed(self.kind),
            actor: self.actor.as_deref().map(Cow::Borrowed),
            grant: self.grant.as_deref().map(Cow::Borrowed),
            postings: self
                .postings
                .iter()
                .map(|p| WirePosting {
                    account: Cow::Borrowed(&p.account),
                    asset: Cow::Borrowed(p.asset),
                    delta: p.delta,
                })
                .collect(),
            items: self
                .items
                .iter()
                .map(|m| WireItemMove {
                    item: Cow::Borrowed(&m.item),
                    from: Cow::Borrowed(&m.from),
                    to: Cow::Borrowed(&m.to),
                    template: Some(Cow::Borrowed(m.template)),
                })
                .collect(),
        }
    }

    /// The canonical NDJSON line (no trailing newline).
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_wire())
            .expect("an event of strings and integers always serializes")
    }
}

/// A JSON string literal for `s`.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serializes")
}

/// How one re-serialized line is spelled. Chosen once per line, like a producer's JSON
/// library settings would be.
struct Spelling {
    after_colon: &'static str,
    after_comma: &'static str,
    inside_braces: &'static str,
    /// `"player:1\/bag"`: JSON allows escaping `/`; the decoder must unescape.
    escape_slash: bool,
    /// `"player\u003a1"`: any character may be a `\u` escape.
    escape_colon: bool,
}

impl Spelling {
    fn pick(rng: &mut ChaCha8Rng) -> Spelling {
        const SPACES: [&str; 4] = ["", " ", "  ", "\t"];
        Spelling {
            after_colon: SPACES.choose(rng).copied().unwrap_or(""),
            after_comma: SPACES.choose(rng).copied().unwrap_or(""),
            inside_braces: SPACES.choose(rng).copied().unwrap_or(""),
            escape_slash: rng.random_bool(0.3),
            escape_colon: rng.random_bool(0.15),
        }
    }

    /// A string value. Our strings are plain ASCII, so serde_json's literal has no
    /// backslashes of its own and the substitutions below cannot corrupt an escape.
    fn string(&self, s: &str) -> String {
        let mut lit = json_str(s);
        if self.escape_slash {
            lit = lit.replace('/', "\\/");
        }
        if self.escape_colon {
            lit = lit.replace(':', "\\u003a");
        }
        lit
    }

    fn object(&self, fields: &[(&str, String)]) -> String {
        let mut out = String::with_capacity(256);
        out.push('{');
        out.push_str(self.inside_braces);
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
                out.push_str(self.after_comma);
            }
            out.push_str(&json_str(k));
            out.push(':');
            out.push_str(self.after_colon);
            out.push_str(v);
        }
        out.push_str(self.inside_braces);
        out.push('}');
        out
    }

    fn array(&self, elems: &[String]) -> String {
        let mut out = String::from("[");
        for (i, e) in elems.iter().enumerate() {
            if i > 0 {
                out.push(',');
                out.push_str(self.after_comma);
            }
            out.push_str(e);
        }
        out.push(']');
        out
    }
}

/// The same event, spelled differently: what a redelivery through another producer
/// replica or a re-publishing proxy looks like. Item moves keep their order (events-v1:
/// a chain A→B→C is not C→B→A); postings are a multiset and get shuffled.
pub(super) fn reserialize(ev: &SimEvent, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let sp = Spelling::pick(rng);
    let mut fields: Vec<(&str, String)> = Vec::with_capacity(11);
    fields.push(("v", "1".to_string()));
    fields.push(("tx_id", sp.string(&ev.tx_id)));
    fields.push(("realm", sp.string(&ev.realm)));
    fields.push(("system", sp.string(ev.sys.name())));
    fields.push(("seq", ev.seq.to_string()));
    fields.push(("ts", json_str(&alternate_ts(ev.ts, rng))));
    fields.push(("kind", sp.string(ev.kind)));
    if let Some(a) = &ev.actor {
        fields.push(("actor", sp.string(a)));
    }
    if let Some(g) = &ev.grant {
        fields.push(("grant", sp.string(g)));
    }
    if ev.postings.is_empty() {
        // Absent, `[]` and `null` all mean "no postings".
        match rng.random_range(0..3) {
            0 => fields.push(("postings", "[]".to_string())),
            1 => fields.push(("postings", "null".to_string())),
            _ => {}
        }
    } else {
        let mut ps: Vec<String> = ev
            .postings
            .iter()
            .map(|p| {
                let mut f = vec![
                    ("account", sp.string(&p.account)),
                    ("asset", sp.string(p.asset)),
                    ("delta", p.delta.to_string()),
                ];
                f.shuffle(rng);
                sp.object(&f)
            })
            .collect();
        ps.shuffle(rng);
        fields.push(("postings", sp.array(&ps)));
    }
    if !ev.items.is_empty() {
        let ms: Vec<String> = ev
            .items
            .iter()
            .map(|m| {
                let mut f = vec![
                    ("item", sp.string(&m.item)),
                    ("from", sp.string(&m.from)),
                    ("to", sp.string(&m.to)),
                    ("template", sp.string(m.template)),
                ];
                f.shuffle(rng);
                sp.object(&f)
            })
            .collect();
        fields.push(("items", sp.array(&ms)));
    }
    fields.shuffle(rng);
    sp.object(&fields).into_bytes()
}

/// The same instant in another RFC 3339 notation: `+00:00` for `Z`, a local offset with
/// shifted wall-clock time, or another number of fractional digits.
pub(super) fn alternate_ts(ts: Timestamp, rng: &mut ChaCha8Rng) -> String {
    // Whole-minute offsets that real servers use, including :30 and :45 zones.
    const OFFSETS_MIN: [i32; 8] = [0, 0, 60, 120, -300, -210, 330, 345];
    let offset_min = OFFSETS_MIN.choose(rng).copied().unwrap_or(0);
    let local = UtcOffset::from_whole_seconds(offset_min * 60)
        .ok()
        .and_then(|off| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts.0))
                .ok()?
                .checked_to_offset(off)
        });
    let Some(local) = local else {
        return ts.to_rfc3339();
    };
    let nanos = local.nanosecond();
    let frac = match rng.random_range(0..3) {
        0 => format!(".{nanos:09}"),
        1 if nanos % 1_000 == 0 => format!(".{:06}", nanos / 1_000),
        _ if nanos == 0 => String::new(),
        _ => format!(".{nanos:09}").trim_end_matches('0').to_string(),
    };
    let zone = if offset_min == 0 {
        if rng.random_bool(0.5) {
            "Z".to_string()
        } else {
            "+00:00".to_string()
        }
    } else {
        let sign = if offset_min < 0 { '-' } else { '+' };
        let m = offset_min.unsigned_abs();
        format!("{sign}{:02}:{:02}", m / 60, m % 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{zone}",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
    )
}
