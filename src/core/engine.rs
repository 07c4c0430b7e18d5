//! The audit engine: bytes in, findings out. Pure and synchronous; the caller passes
//! the time. One engine audits any number of realms and systems.
//!
//! ```text
//! ingest(bytes) ─► decode ──malformed──► event.malformed
//!                    │
//!                    ▼
//!              redelivery window ──same tx_id, same content──► counted
//!                    │            ──same tx_id, other content─► tx.conflict
//!                    ▼
//!        intrinsic checks (tx.unbalanced, economy.unauthorized_faucet)
//!                    │
//!                    ▼
//!        sequencer (reorder window) ──► stream.seq_gap / stream.seq_reuse
//!                    │  causal order
//!                    ▼
//!                 ledger ──► item.*, grant.reused, balance.overdraft,
//!                            escrow.stuck, economy.velocity
//! ```

use std::collections::{BTreeMap, VecDeque};

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::event::{self, Malformed, ValidEvent};
use super::finding::{Finding, Invariant, fingerprint};
use super::intern::{Intern, Interner, Lookup};
use super::ledger::{Ctx, Event, ItemMove, Ledger, LedgerStats, Posting};
use super::policy::Policy;
use super::sequencer::{Released, Sequencer, Slot, StreamId};
use super::time::Timestamp;

/// What became of one ingested event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New and valid: buffered for the reorder window, then applied.
    Accepted,
    /// A redelivery of an event already seen (same `tx_id`, same content): counted.
    Redelivered,
    /// A `tx_id` seen before with different content: `tx.conflict`, not applied.
    Conflict,
    /// A `seq` older than the redelivery memory, from a `tx_id` no longer remembered:
    /// almost surely a very late redelivery. Counted, not applied (docs/invariants.md).
    Stale,
    /// Not a valid events-v1 event: `event.malformed`, set aside.
    Malformed,
}

/// Counters for the summary and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub received: u64,
    pub accepted: u64,
    pub redelivered: u64,
    pub conflicts: u64,
    pub stale: u64,
    pub malformed: u64,
    /// Applied outside their stream's sequence: arrived after their seq was declared
    /// missing, or re-used a seq.
    pub late: u64,
    pub findings: BTreeMap<Invariant, u64>,
    pub ledger: LedgerStats,
    pub redelivery_memory_forgotten: u64,
}

/// Approximate heap bytes per component, for the memory budget.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryReport {
    pub interner_bytes: usize,
    pub interned_ids: usize,
    pub ledger_bytes: usize,
    pub redelivery_window_bytes: usize,
    pub reorder_buffer_bytes: usize,
    pub live_items: usize,
    pub live_balances: usize,
    pub remembered_tx_ids: usize,
}

impl MemoryReport {
    pub fn total(&self) -> usize {
        self.interner_bytes
            + self.ledger_bytes
            + self.redelivery_window_bytes
            + self.reorder_buffer_bytes
    }
}

/// What is remembered of a recent transaction.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct TxMemo {
    /// More bits of the tx_id hash, so two ids colliding on the 64-bit key are told
    /// apart.
    check: u32,
    stream: StreamId,
    seq: u64,
    digest: u64,
}

/// Bounded memory of recent `tx_id`s (policy `stream.dedup_window_txs`), FIFO.
#[derive(Serialize, Deserialize)]
struct RedeliveryWindow {
    memo: FxHashMap<u64, TxMemo>,
    by_seq: FxHashMap<(StreamId, u64), u64>,
    order: VecDeque<u64>,
    cap: usize,
    forgotten: u64,
}

/// True when `v` raises none of the findings that depend on the event alone
/// (`tx.unbalanced`, `economy.unauthorized_faucet`) under `policy`. Pure, so a pipeline's
/// decode stage can run it on its own core and set [`ValidEvent::prechecked`].
pub fn intrinsically_clean(policy: &Policy, v: &ValidEvent<'_>) -> bool {
    v.balanced && unauthorized_faucets(policy, &v.wire).next().is_none()
}

/// The `world:` accounts `w` posts to or mints from without the policy's authority, with
/// what it did there, in event order (an account may repeat).
fn unauthorized_faucets<'w>(
    policy: &'w Policy,
    w: &'w event::WireEvent<'_>,
) -> impl Iterator<Item = (&'w str, &'static str)> {
    w.postings
        .iter()
        .map(|p| (&*p.account, "posts to"))
        .chain(w.items.iter().map(|m| (&*m.from, "mints from")))
        .filter(|(a, _)| event::is_world(a) && !policy.faucet_allows(a, &w.system))
}

/// The ledger's view of `v`, every id interned through `i` in a fixed order — realm,
/// system, each posting's account and asset, each move's item, from and to — so an
/// engine fed line by line and a pipeline whose decode stage interns (with the lookup
/// the engine lent it) give every id the same symbol.
/// The ids [`prepare_event`] interns, in the order it interns them.
pub fn event_ids<'a>(v: &'a ValidEvent<'_>) -> impl Iterator<Item = &'a str> {
    let w = &v.wire;
    [v.realm(), &*w.system]
        .into_iter()
        .chain(w.postings.iter().flat_map(|p| [&*p.account, &*p.asset]))
        .chain(w.items.iter().flat_map(|m| [&*m.item, &*m.from, &*m.to]))
}

pub fn prepare_event(i: &mut impl Intern, v: &ValidEvent<'_>) -> Event {
    let w = &v.wire;
    let realm = i.intern(v.realm());
    let system = i.intern(&w.system);
    Event {
        realm,
        system,
        seq: w.seq,
        ts: v.ts,
        grant: w.grant.as_deref().map(CompactString::from),
        postings: w
            .postings
            .iter()
            .map(|p| Posting {
                account: i.intern(&p.account),
                asset: i.intern(&p.asset),
                delta: p.delta,
            })
            .collect(),
        items: w
            .items
            .iter()
            .map(|m| ItemMove {
                item: i.intern(&m.item),
                from: i.intern(&m.from),
                to: i.intern(&m.to),
            })
            .collect(),
        digest: v.digest,
        tx_id: CompactString::from(&*w.tx_id),
    }
}

/// An accepted event as the engine has it besides its ledger view ([`Event`]).
// A value on the stack for the length of one `accept`: boxing the large variant would
// allocate for every event the daemon takes in.
#[allow(clippy::large_enum_variant)]
enum Source<'a> {
    Decoded(ValidEvent<'a>),
    /// The line of an event a pipeline's decode stage found intrinsically clean
    /// ([`Engine::ingest_clean`]).
    Line(&'a [u8]),
}

impl Source<'_> {
    /// Runs `f` on the decoded event, decoding a [`Source::Line`] again.
    fn with<R>(&self, f: impl FnOnce(&ValidEvent<'_>) -> R) -> R {
        match self {
            Source::Decoded(v) => f(v),
            Source::Line(line) => {
                // Decoding is a pure function of the bytes, and these decoded once.
                let v = event::decode(line).expect("a line that decoded once decodes again");
                f(&v)
            }
        }
    }
}

/// 64 bits of key and 32 more of check from xxh3-128 of the tx_id: 96 bits in all, so
/// two distinct tx_ids are taken for one with negligible probability (~n²/2⁹⁷).
fn tx_key(tx_id: &str) -> (u64, u32) {
    let h = xxhash_rust::xxh3::xxh3_128(tx_id.as_bytes());
    (h as u64, (h >> 64) as u32)
}

impl RedeliveryWindow {
    fn get(&self, key: u64, check: u32) -> Option<TxMemo> {
        self.memo.get(&key).copied().filter(|m| m.check == check)
    }

    /// Remembers a tx, forgetting the oldest when full. Returns what was forgotten.
    fn remember(&mut self, key: u64, memo: TxMemo) -> Option<TxMemo> {
        let mut evicted = None;
        if self.memo.len() >= self.cap
            && let Some(old) = self.order.pop_front()
            && let Some(m) = self.memo.remove(&old)
        {
            self.by_seq.remove(&(m.stream, m.seq));
            self.forgotten += 1;
            evicted = Some(m);
        }
        if self.memo.insert(key, memo).is_none() {
            self.order.push_back(key);
        }
        self.by_seq.entry((memo.stream, memo.seq)).or_insert(key);
        evicted
    }

    fn heap_bytes(&self) -> usize {
        self.memo.capacity() * (std::mem::size_of::<(u64, TxMemo)>() + 1)
            + self.by_seq.capacity() * (std::mem::size_of::<((StreamId, u64), u64)>() + 1)
            + self.order.capacity() * 8
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot format {found} is not the supported format {SNAPSHOT_FORMAT}")]
    Version { found: u32 },
    #[error("snapshot is corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
}

/// Bumped whenever the engine's state layout changes.
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    interner: &'a Interner,
    sequencer: &'a Sequencer,
    ledger: &'a Ledger,
    window: &'a RedeliveryWindow,
    max_ts: Timestamp,
    stats: &'a EngineStats,
}

#[derive(Deserialize)]
struct Snapshot {
    format: u32,
    interner: Interner,
    sequencer: Sequencer,
    ledger: Ledger,
    window: RedeliveryWindow,
    max_ts: Timestamp,
    stats: EngineStats,
}

#[derive(Deserialize)]
struct SnapshotHeader {
    format: u32,
}

pub struct Engine {
    policy: Policy,
    interner: Interner,
    sequencer: Sequencer,
    ledger: Ledger,
    window: RedeliveryWindow,
    max_ts: Timestamp,
    stats: EngineStats,
    released: Vec<Released>,
    /// While true the watermark stands still (see [`Engine::hold`]). A property of a
    /// consuming session, not of the state: never snapshotted.
    held: bool,
}

impl Engine {
    pub fn new(policy: Policy) -> Engine {
        let mut interner = Interner::default();
        let ledger = Ledger::new(&policy, &mut interner);
        Engine {
            sequencer: Sequencer::new(policy.stream.streams_start_at),
            window: RedeliveryWindow {
                memo: FxHashMap::default(),
                by_seq: FxHashMap::default(),
                order: VecDeque::new(),
                cap: policy.stream.dedup_window_txs,
                forgotten: 0,
            },
            policy,
            interner,
            ledger,
            max_ts: Timestamp::MIN,
            stats: EngineStats::default(),
            released: Vec::new(),
            held: false,
        }
    }

    /// The whole engine state — balances, items, grants, escrow and velocity
    /// tracking, the redelivery window, sequence positions and the reorder buffer — as
    /// bytes. `restore` of these bytes followed by the same input gives the same
    /// findings and state as never having stopped.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&SnapshotRef {
            format: SNAPSHOT_FORMAT,
            interner: &self.interner,
            sequencer: &self.sequencer,
            ledger: &self.ledger,
            window: &self.window,
            max_ts: self.max_ts,
            stats: &self.stats,
        })
        .expect("serializing plain in-memory data to a Vec cannot fail")
    }

    /// Rebuilds an engine from [`Engine::snapshot`] bytes under `policy` (which may
    /// differ from the one the snapshot was taken under: its limits apply from now on).
    pub fn restore(policy: Policy, bytes: &[u8]) -> Result<Engine, SnapshotError> {
        let header: SnapshotHeader = postcard::from_bytes(bytes)?;
        if header.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Version {
                found: header.format,
            });
        }
        let mut s: Snapshot = postcard::from_bytes(bytes)?;
        debug_assert_eq!(s.format, SNAPSHOT_FORMAT);
        s.ledger.rebind(&policy, &mut s.interner);
        s.sequencer.rebind(policy.stream.streams_start_at);
        s.window.cap = policy.stream.dedup_window_txs;
        Ok(Engine {
            policy,
            interner: s.interner,
            sequencer: s.sequencer,
            ledger: s.ledger,
            window: s.window,
            max_ts: s.max_ts,
            stats: s.stats,
            released: Vec::new(),
            held: false,
        })
    }

    /// Makes room up front for about `events` more events. The redelivery window takes
    /// one entry per accepted event up to its cap (`stream.dedup_window_txs`); growing
    /// it by doubling rehashes every entry into freshly zeroed pages at each step, a
    /// tenth of the engine's time over a 1,000,000-event file and, in the daemon, a
    /// stall of the event being audited when it happens. Reserving only claims
    /// address space: pages are touched as entries land in them.
    pub fn reserve(&mut self, events: usize) {
        let w = &mut self.window;
        let more = events.min(w.cap.saturating_sub(w.memo.len()));
        w.memo.reserve(more);
        w.by_seq.reserve(more);
        w.order.reserve(more);
    }

    /// Lends the interner's lookup table to a pipeline's decode stage, which then
    /// interns each event's ids ([`prepare_event`]) on its own core; the new ids it
    /// made reach this engine with [`Engine::learn_ids`] before the events that use
    /// them. Until [`Engine::return_lookup`], only [`Engine::ingest_prepared`] may be
    /// fed to this engine.
    pub fn lend_lookup(&mut self) -> Lookup {
        self.interner.lend_lookup()
    }

    pub fn return_lookup(&mut self, lookup: Lookup) {
        self.interner.return_lookup(lookup);
    }

    /// Takes in the ids a decode stage interned with the lent lookup, in its order.
    pub fn learn_ids(&mut self, ids: &super::intern::NewIds) {
        self.interner.learn(ids);
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn interner(&self) -> &Interner {
        &self.interner
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.ledger = self.ledger.stats();
        s.redelivery_memory_forgotten = self.window.forgotten;
        s
    }

    /// Events held in the reorder buffer.
    pub fn reorder_depth(&self) -> usize {
        self.sequencer.depth()
    }

    /// Per (realm, system): the next seq expected and the newest `ts` heard.
    pub fn streams(&self) -> impl Iterator<Item = (&str, &str, Option<u64>, Timestamp)> {
        self.sequencer.streams().map(|s| {
            (
                self.interner.resolve(s.realm),
                self.interner.resolve(s.system),
                s.next_seq(),
                s.last_ts,
            )
        })
    }

    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            interner_bytes: self.interner.heap_bytes(),
            interned_ids: self.interner.len(),
            ledger_bytes: self.ledger.heap_bytes(),
            redelivery_window_bytes: self.window.heap_bytes(),
            reorder_buffer_bytes: self.sequencer.depth() * (std::mem::size_of::<Event>() + 64),
            live_items: self.ledger.live_items(),
            live_balances: self.ledger.live_balances(),
            remembered_tx_ids: self.window.memo.len(),
        }
    }

    /// Ingests one event's bytes. Findings go to `out`; `now` stamps them.
    pub fn ingest(&mut self, bytes: &[u8], now: Timestamp, out: &mut Vec<Finding>) -> Outcome {
        self.ingest_inspect(bytes, now, out, |_| {})
    }

    /// [`Engine::ingest`], handing an accepted event to `on_accept` before it is
    /// buffered (the daemon journals it without decoding it twice).
    pub fn ingest_inspect(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
        out: &mut Vec<Finding>,
        on_accept: impl FnOnce(&ValidEvent<'_>),
    ) -> Outcome {
        let decoded = event::decode(bytes).map_err(|m| (m, bytes));
        self.ingest_decoded(decoded, now, out, on_accept)
    }

    /// The engine's half of [`Engine::ingest`] for an event decoded elsewhere (a
    /// pipeline's decode stage, see `ndjson::audit_stream`): decoding is stateless, so it can run
    /// on another core. Malformed input comes with its bytes (for the evidence).
    pub fn ingest_decoded(
        &mut self,
        decoded: Result<ValidEvent<'_>, (Malformed, &[u8])>,
        now: Timestamp,
        out: &mut Vec<Finding>,
        on_accept: impl FnOnce(&ValidEvent<'_>),
    ) -> Outcome {
        let prepared = decoded.map(|v| {
            let ev = prepare_event(&mut self.interner, &v);
            (v, ev)
        });
        self.ingest_prepared(prepared, now, out, on_accept)
    }

    /// [`Engine::ingest_decoded`] for an event whose ids a pipeline's decode stage has
    /// already interned, with the lookup table this engine lent it
    /// ([`Engine::lend_lookup`]) and [`prepare_event`].
    pub fn ingest_prepared(
        &mut self,
        prepared: Result<(ValidEvent<'_>, Event), (Malformed, &[u8])>,
        now: Timestamp,
        out: &mut Vec<Finding>,
        on_accept: impl FnOnce(&ValidEvent<'_>),
    ) -> Outcome {
        self.take_in(
            prepared.map(|(v, ev)| (Source::Decoded(v), ev)),
            now,
            out,
            on_accept,
        )
    }

    /// [`Engine::ingest_prepared`] for an event a pipeline's decode stage found
    /// intrinsically clean ([`intrinsically_clean`]): the engine gets its ledger view and
    /// its line, not the decoded event, so nothing allocated for decoding crosses to the
    /// engine's thread. The line is decoded again only if a finding needs its fields (a
    /// conflicting redelivery, a reused seq): `line` must be the line `ev` was prepared
    /// from, which is why only the crate's pipeline calls this.
    pub(crate) fn ingest_clean(
        &mut self,
        ev: Event,
        line: &[u8],
        now: Timestamp,
        out: &mut Vec<Finding>,
    ) -> Outcome {
        self.take_in(Ok((Source::Line(line), ev)), now, out, |_| {})
    }

    fn take_in(
        &mut self,
        prepared: Result<(Source<'_>, Event), (Malformed, &[u8])>,
        now: Timestamp,
        out: &mut Vec<Finding>,
        on_accept: impl FnOnce(&ValidEvent<'_>),
    ) -> Outcome {
        self.stats.received += 1;
        let before = out.len();
        let outcome = match prepared {
            Err((m, bytes)) => {
                self.malformed(bytes, m, now, out);
                Outcome::Malformed
            }
            Ok((v, ev)) => self.accept(v, ev, now, out, on_accept),
        };
        if outcome == Outcome::Accepted {
            self.drain(now, out);
        }
        self.count(&out[before..]);
        outcome
    }

    /// A contract breach of a whole message (an NDJSON batch over 1 MiB or 10,000
    /// events): one `event.malformed` for the message; none of its events is applied.
    pub fn malformed_message(
        &mut self,
        bytes: &[u8],
        reason: &str,
        now: Timestamp,
        out: &mut Vec<Finding>,
    ) {
        self.stats.received += 1;
        let before = out.len();
        let m = Malformed {
            reason: reason.to_string(),
            field: None,
            tx_id: None,
            realm: None,
            system: None,
            seq: None,
        };
        self.malformed(bytes, m, now, out);
        self.count(&out[before..]);
    }

    /// End of input: every buffered event is due; gaps between buffered events are
    /// declared. Escrow limits are judged at the newest event time seen, never beyond.
    pub fn finish(&mut self, now: Timestamp, out: &mut Vec<Finding>) {
        let before = out.len();
        self.release(Timestamp::MAX, now, out);
        self.tick(self.max_ts, now, out);
        self.count(&out[before..]);
    }

    fn count(&mut self, new: &[Finding]) {
        for f in new {
            *self.stats.findings.entry(f.invariant).or_default() += 1;
        }
    }

    /// Lets the ledger run at `stream_time` (escrow deadlines).
    fn tick(&mut self, stream_time: Timestamp, now: Timestamp, out: &mut Vec<Finding>) {
        let mut cx = Ctx {
            policy: &self.policy,
            interner: &mut self.interner,
            now,
            out,
        };
        self.ledger.tick(stream_time, &mut cx);
    }

    /// Stops the reorder watermark: events are still accepted (and their intrinsic
    /// findings raised), but nothing is released to the ledger, no gap is declared and no
    /// escrow deadline passes until [`Engine::resume`]. A daemon holds at the start of
    /// each consuming session, while the broker may still be returning the deliveries of
    /// the session before it *behind* newer messages (quorum queues do, see
    /// docs/operations.md); judged at once, the newer events would move the watermark
    /// past the returned ones and make their arrival look like gaps.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// Ends [`Engine::hold`] and releases whatever is due by now.
    pub fn resume(&mut self, now: Timestamp, out: &mut Vec<Finding>) {
        if std::mem::take(&mut self.held) {
            let before = out.len();
            self.drain(now, out);
            self.count(&out[before..]);
        }
    }

    /// Whether the watermark is held ([`Engine::hold`]).
    pub fn is_held(&self) -> bool {
        self.held
    }

    fn drain(&mut self, now: Timestamp, out: &mut Vec<Finding>) {
        if self.held {
            return;
        }
        let watermark = self
            .max_ts
            .saturating_sub(self.policy.stream.reorder_window);
        self.release(watermark, now, out);
        self.tick(watermark, now, out);
    }

    fn release(&mut self, watermark: Timestamp, now: Timestamp, out: &mut Vec<Finding>) {
        let mut released = std::mem::take(&mut self.released);
        self.sequencer.release(watermark, &mut released);
        for r in released.drain(..) {
            match r {
                Released::Apply(ev) => {
                    let mut cx = Ctx {
                        policy: &self.policy,
                        interner: &mut self.interner,
                        now,
                        out,
                    };
                    self.ledger.apply(&ev, &mut cx);
                }
                Released::Gap {
                    stream,
                    from,
                    to,
                    last_applied,
                    next_tx_id,
                    next_seq,
                    next_ts,
                } => {
                    let s = self.sequencer.stream(stream);
                    let realm = self.interner.resolve(s.realm).to_string();
                    let system = self.interner.resolve(s.system).to_string();
                    let count = to - from + 1;
                    let seqs = if count == 1 {
                        format!("seq {from} is")
                    } else {
                        format!("seqs {from}–{to} ({count}) are")
                    };
                    out.push(Finding {
                        invariant: Invariant::SeqGap,
                        severity: self.policy.severity(Invariant::SeqGap),
                        fingerprint: fingerprint(
                            Invariant::SeqGap,
                            &realm,
                            &[system.as_bytes(), &from.to_le_bytes()],
                        ),
                        message: format!(
                            "{realm}/{system}: {seqs} still missing after the reorder window (next seen: seq {next_seq}, {next_tx_id})"
                        ),
                        evidence: json!({"missing_from": from, "missing_to": to, "missing_count": count,
                                         "last_applied_seq": last_applied, "next_seq": next_seq,
                                         "next_tx_id": &*next_tx_id, "next_ts": next_ts,
                                         "reorder_window_ms": self.policy.stream.reorder_window.as_millis() as u64}),
                        realm,
                        system: Some(system),
                        tx_id: None,
                        seq: Some(from),
                        subject: None,
                        detected_at: now,
                    });
                }
            }
        }
        self.released = released;
    }

    /// `on_accept` is called for a [`Source::Decoded`] event only.
    fn accept(
        &mut self,
        v: Source<'_>,
        ev: Event,
        now: Timestamp,
        out: &mut Vec<Finding>,
        on_accept: impl FnOnce(&ValidEvent<'_>),
    ) -> Outcome {
        let (key, check) = tx_key(&ev.tx_id);
        if let Some(first) = self.window.get(key, check) {
            if first.digest == ev.digest {
                self.stats.redelivered += 1;
                return Outcome::Redelivered;
            }
            self.stats.conflicts += 1;
            v.with(|v| self.conflict(v, first, now, out));
            return Outcome::Conflict;
        }
        let stream = self.sequencer.stream_id(ev.realm, ev.system);
        let seq = ev.seq;

        // Whose is this seq?
        let reused_by = self.window.by_seq.get(&(stream, seq)).copied();
        let slot = self.sequencer.slot(stream, seq);
        let loose = match (reused_by, slot) {
            (Some(_), _) | (None, Slot::Pending) => {
                v.with(|v| self.seq_reuse(v, reused_by, now, out));
                true
            }
            (None, Slot::Passed) => {
                if seq <= self.sequencer.stream(stream).forgotten_through {
                    self.stats.stale += 1;
                    return Outcome::Stale;
                }
                self.stats.late += 1;
                true
            }
            (None, Slot::Free | Slot::Malformed) => false,
        };
        if let Some(old) = self.window.remember(
            key,
            TxMemo {
                check,
                stream,
                seq,
                digest: ev.digest,
            },
        ) {
            let s = self.sequencer.stream_mut(old.stream);
            s.forgotten_through = s.forgotten_through.max(old.seq);
        }
        self.stats.accepted += 1;
        if let Source::Decoded(v) = &v {
            on_accept(v);
            self.intrinsic_checks(v, now, out);
        }
        self.max_ts = self.max_ts.max(ev.ts);
        if loose {
            self.sequencer.push_loose(stream, ev);
        } else {
            self.sequencer.push(stream, ev);
        }
        Outcome::Accepted
    }

    /// Checks that depend on the event alone: no other event can explain them, so they
    /// are raised on arrival rather than after the reorder window.
    fn intrinsic_checks(&mut self, v: &ValidEvent<'_>, now: Timestamp, out: &mut Vec<Finding>) {
        if v.prechecked {
            debug_assert!(intrinsically_clean(&self.policy, v));
            return;
        }
        let w = &v.wire;
        let residuals = if v.balanced {
            Vec::new()
        } else {
            event::residuals(&w.postings)
        };
        if !residuals.is_empty() {
            let listed: Vec<String> = residuals
                .iter()
                .map(|(a, r)| format!("{a} {r:+}"))
                .collect();
            let evidence = json!({
                "residual": residuals.iter().map(|(a, r)| (a.to_string(), json!(r.to_string()))).collect::<serde_json::Map<_, _>>(),
                "postings": w.postings,
            });
            out.push(self.finding_for(
                Invariant::TxUnbalanced,
                v,
                None,
                &[w.tx_id.as_bytes()],
                format!(
                    "postings of {} do not sum to zero: {}",
                    w.tx_id,
                    listed.join(", ")
                ),
                evidence,
                now,
            ));
        }
        let mut flagged: Vec<&str> = Vec::new();
        for (account, verb) in unauthorized_faucets(&self.policy, w) {
            if flagged.contains(&account) {
                continue;
            }
            flagged.push(account);
            let allowed = self
                .policy
                .faucets
                .get(account)
                .cloned()
                .unwrap_or_default();
            out.push(self.finding_for(
                Invariant::UnauthorizedFaucet,
                v,
                Some(account.to_string()),
                &[w.tx_id.as_bytes(), account.as_bytes()],
                format!(
                    "system `{}` {verb} `{account}`, which the policy allows only for {}",
                    w.system,
                    if allowed.is_empty() {
                        "no system".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
                json!({"account": account, "system": &*w.system, "allowed_systems": allowed,
                       "kind": &*w.kind, "policy": &self.policy.source}),
                now,
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finding_for(
        &self,
        inv: Invariant,
        v: &ValidEvent<'_>,
        subject: Option<String>,
        key: &[&[u8]],
        message: String,
        evidence: serde_json::Value,
        now: Timestamp,
    ) -> Finding {
        Finding {
            invariant: inv,
            severity: self.policy.severity(inv),
            realm: v.realm().to_string(),
            system: Some(v.wire.system.to_string()),
            tx_id: Some(v.wire.tx_id.to_string()),
            seq: Some(v.wire.seq),
            subject,
            message,
            evidence,
            detected_at: now,
            fingerprint: fingerprint(inv, v.realm(), key),
        }
    }

    fn conflict(
        &mut self,
        v: &ValidEvent<'_>,
        first: TxMemo,
        now: Timestamp,
        out: &mut Vec<Finding>,
    ) {
        let first_stream = self.sequencer.stream(first.stream);
        // The second version as decoded (the contract's fields; unknown ones dropped).
        let second = serde_json::to_value(&v.wire).unwrap_or(serde_json::Value::Null);
        let evidence = json!({
            "first": {"realm": self.interner.resolve(first_stream.realm),
                      "system": self.interner.resolve(first_stream.system),
                      "seq": first.seq, "digest": format!("{:016x}", first.digest)},
            "second": second,
            "second_digest": format!("{:016x}", v.digest),
            "applied": "first",
        });
        out.push(self.finding_for(
            Invariant::TxConflict,
            v,
            None,
            &[v.wire.tx_id.as_bytes(), &v.digest.to_le_bytes()],
            format!(
                "tx_id {} arrived again with different content; the first version stays applied, this one is set aside",
                v.wire.tx_id
            ),
            evidence,
            now,
        ));
    }

    fn seq_reuse(
        &mut self,
        v: &ValidEvent<'_>,
        holder: Option<u64>,
        now: Timestamp,
        out: &mut Vec<Finding>,
    ) {
        let w = &v.wire;
        let holder_seen = holder.is_some();
        out.push(self.finding_for(
            Invariant::SeqReuse,
            v,
            None,
            &[
                w.system.as_bytes(),
                &w.seq.to_le_bytes(),
                w.tx_id.as_bytes(),
            ],
            format!(
                "{}/{} seq {} used again by {} (a different tx_id already holds it)",
                v.realm(),
                w.system,
                w.seq,
                w.tx_id
            ),
            json!({"seq": w.seq, "tx_id": &*w.tx_id, "slot_holder_remembered": holder_seen,
                   "applied": "yes, outside the sequence"}),
            now,
        ));
    }

    fn malformed(&mut self, bytes: &[u8], m: Malformed, now: Timestamp, out: &mut Vec<Finding>) {
        self.stats.malformed += 1;
        let realm = m.realm.clone().unwrap_or_else(|| "unknown".into());
        // Account for its seq so the same root cause is not reported again as a gap.
        if let (Some(system), Some(seq)) = (&m.system, m.seq)
            && seq > 0
            && !system.is_empty()
        {
            let r = self
                .interner
                .intern(m.realm.as_deref().unwrap_or(event::DEFAULT_REALM));
            let s = self.interner.intern(system);
            let id = self.sequencer.stream_id(r, s);
            self.sequencer.mark_malformed(id, seq, None);
        }
        let excerpt: String = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        let digest = blake3::hash(bytes);
        out.push(Finding {
            invariant: Invariant::Malformed,
            severity: self.policy.severity(Invariant::Malformed),
            fingerprint: fingerprint(Invariant::Malformed, &realm, &[digest.as_bytes()]),
            realm,
            system: m.system.clone(),
            tx_id: m.tx_id.clone(),
            seq: m.seq,
            subject: None,
            message: format!("malformed event set aside: {}", m.reason),
            evidence: json!({"reason": m.reason, "field": m.field, "bytes": bytes.len(),
                             "excerpt": excerpt, "truncated": bytes.len() > 512}),
            detected_at: now,
        });
    }
}
