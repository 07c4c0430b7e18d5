//! Delivery: how the bus hands the world's events to the auditor. Benign noise only —
//! reordering inside the reorder window and at-least-once redelivery — plus the one
//! fault that lives in delivery rather than in the world, a conflicting re-use of an
//! earlier `tx_id`.
//!
//! Events enter in commit (`ts`) order and wait in a short buffer, where a new event may
//! jump ahead of an earlier one: of the same stream (two adjacent `seq`s swap) or of
//! another stream it depends on (an equip delivered before the loot drop that minted the
//! item). Every jump stays *strictly* under half the reorder window in `ts`, so an
//! auditor that waits the whole window always sees the dependency in time. Injected
//! fault events are pinned: nothing moves across them, so the root cause each one
//! plants cannot be blurred by noise.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::core::finding::Invariant;

use super::wire::{SimEvent, reserialize};
use super::{Expected, Noise};

/// How often a fresh event with a still-buffered dependency is delivered before it.
const P_DEPENDENCY_FIRST: f64 = 0.25;
/// How often a fresh event swaps with the previous event of its own stream.
const P_ADJACENT_SWAP: f64 = 0.02;
/// A hard cap on the reorder buffer (events); the `ts` horizon normally keeps it to a
/// few hundred. Popping at the front never creates a new displacement.
const BUFFER_MAX: usize = 4_096;
/// Recently delivered clean events a conflicting re-use can be drawn from.
const CONFLICT_SOURCES_MAX: usize = 1_024;
/// Redelivery delay in lines. The brief: "sometimes much later, up to ~20,000 lines,
/// never more than 500,000" — well inside the auditor's 1,000,000-tx dedup memory.
const REDELIVERY_DELAY_MAX_LINES: usize = 20_000;

/// What waits in the reorder buffer.
pub(super) struct Pending {
    /// Commit order; dependencies name it.
    ix: u64,
    ts: i64,
    stream: u32,
    seq: u64,
    body: Body,
}

enum Body {
    /// Ordinary traffic: may be reordered, redelivered, and serve as a conflict source.
    Clean { ev: Rc<SimEvent>, line: Vec<u8> },
    /// An injected fault carrier: pinned, delivered once.
    Fault { line: Vec<u8>, expected: Expected },
    /// Re-emit some earlier delivered `tx_id` with different content when this point of
    /// the stream is reached (pinned).
    Conflict,
}

impl Pending {
    fn pinned(&self) -> bool {
        !matches!(self.body, Body::Clean { .. })
    }
}

/// A redelivery waiting for its line number. Ordered by (due, order) only.
struct Scheduled {
    due: usize,
    order: u64,
    ev: Rc<SimEvent>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// The delivery stage, owning the caller's `emit`.
pub(super) struct Delivery<'e> {
    emit: &'e mut dyn FnMut(&[u8]),
    rng: ChaCha8Rng,
    reorder: bool,
    /// Half the reorder window: every displacement stays strictly below it.
    half_window_ns: i64,
    redelivery_p: f64,
    buf: VecDeque<Pending>,
    redeliveries: BinaryHeap<Reverse<Scheduled>>,
    scheduled: u64,
    conflict_sources: VecDeque<Rc<SimEvent>>,
    /// Lines emitted so far, redeliveries included.
    pub lines: usize,
    pub redelivered: usize,
    /// Distinct `tx_id`s emitted (clean, fault carriers, malformed).
    pub transactions: usize,
    /// The answer key, in delivery order.
    pub faults: Vec<Expected>,
}

impl<'e> Delivery<'e> {
    pub fn new(rng: ChaCha8Rng, noise: &Noise, emit: &'e mut dyn FnMut(&[u8])) -> Self {
        let half = i64::try_from(noise.reorder_window.as_nanos() / 2).unwrap_or(i64::MAX);
        Delivery {
            emit,
            rng,
            reorder: noise.reorder,
            half_window_ns: half,
            redelivery_p: f64::from(noise.redelivery_per_mille.min(1_000)) / 1_000.0,
            buf: VecDeque::new(),
            redeliveries: BinaryHeap::new(),
            scheduled: 0,
            conflict_sources: VecDeque::new(),
            lines: 0,
            redelivered: 0,
            transactions: 0,
            faults: Vec::new(),
        }
    }

    /// A clean event, committed as the `ix`-th event; `dep` is the latest earlier event
    /// it depends on (item or gold), a candidate to be overtaken.
    pub fn push_clean(&mut self, ev: SimEvent, ix: u64, dep: Option<u64>) {
        let line = ev.canonical();
        let p = Pending {
            ix,
            ts: ev.ts.0,
            stream: ev.stream(),
            seq: ev.seq,
            body: Body::Clean {
                ev: Rc::new(ev),
                line,
            },
        };
        self.push(p, dep);
    }

    /// A fault carrier (a whole line, possibly malformed on purpose).
    pub fn push_fault(
        &mut self,
        ev_ts: i64,
        stream: u32,
        seq: u64,
        line: Vec<u8>,
        expected: Expected,
    ) {
        let p = Pending {
            ix: u64::MAX,
            ts: ev_ts,
            stream,
            seq,
            body: Body::Fault { line, expected },
        };
        self.push(p, None);
    }

    /// A conflicting re-use of an earlier `tx_id`, realised when this point is delivered.
    pub fn push_conflict(&mut self, now_ns: i64) {
        let p = Pending {
            ix: u64::MAX,
            ts: now_ns,
            stream: u32::MAX,
            seq: 0,
            body: Body::Conflict,
        };
        self.push(p, None);
    }

    fn push(&mut self, p: Pending, dep: Option<u64>) {
        let newest = p.ts;
        let movable = self.reorder && !p.pinned();
        self.buf.push_back(p);
        if movable {
            let moved = match dep {
                Some(d) if self.rng.random_bool(P_DEPENDENCY_FIRST) => self.try_overtake(d),
                _ => false,
            };
            if !moved && self.rng.random_bool(P_ADJACENT_SWAP) {
                self.try_swap_in_stream();
            }
        }
        while let Some(front) = self.buf.front() {
            if front.ts > newest.saturating_sub(self.half_window_ns) && self.buf.len() <= BUFFER_MAX
            {
                break;
            }
            if let Some(p) = self.buf.pop_front() {
                self.deliver(p);
            }
        }
    }

    /// Whether the newest event may move to index `j`: it jumps only clean events, none
    /// of its own stream except (when `same_stream_at_j`) the one at `j`, and every one
    /// of them less than half a window older than it.
    fn may_jump_to(&self, j: usize, same_stream_at_j: bool) -> bool {
        let Some(e) = self.buf.back() else {
            return false;
        };
        let last = self.buf.len() - 1;
        (j..last).all(|k| {
            let o = &self.buf[k];
            !o.pinned()
                && (o.stream != e.stream || (same_stream_at_j && k == j))
                && e.ts - o.ts < self.half_window_ns
        })
    }

    fn move_newest_to(&mut self, j: usize) {
        if let Some(e) = self.buf.pop_back() {
            self.buf.insert(j, e);
        }
    }

    /// Delivers the newest event before the still-buffered event `dep_ix` it depends on.
    fn try_overtake(&mut self, dep_ix: u64) -> bool {
        let last = self.buf.len() - 1;
        let Some(j) = (0..last).rev().find(|&k| self.buf[k].ix == dep_ix) else {
            return false;
        };
        if self.may_jump_to(j, false) {
            self.move_newest_to(j);
            true
        } else {
            false
        }
    }

    /// Swaps the newest event with the previous `seq` of its stream, if still buffered.
    fn try_swap_in_stream(&mut self) {
        let last = self.buf.len() - 1;
        let (stream, seq) = (self.buf[last].stream, self.buf[last].seq);
        let Some(j) = (0..last).rev().find(|&k| self.buf[k].stream == stream) else {
            return;
        };
        if self.buf[j].seq + 1 == seq && self.may_jump_to(j, true) {
            self.move_newest_to(j);
        }
    }

    fn out(&mut self, line: &[u8]) {
        (self.emit)(line);
        self.lines += 1;
    }

    fn deliver(&mut self, p: Pending) {
        match p.body {
            Body::Clean { ev, line } => {
                self.out(&line);
                self.transactions += 1;
                if self.redelivery_p > 0.0 && self.rng.random_bool(self.redelivery_p) {
                    let due = self.lines + self.redelivery_delay();
                    self.scheduled += 1;
                    self.redeliveries.push(Reverse(Scheduled {
                        due,
                        order: self.scheduled,
                        ev: Rc::clone(&ev),
                    }));
                }
                if self.conflict_sources.len() == CONFLICT_SOURCES_MAX {
                    self.conflict_sources.pop_front();
                }
                self.conflict_sources.push_back(ev);
            }
            Body::Fault { line, expected } => {
                self.out(&line);
                self.transactions += 1;
                self.faults.push(expected);
            }
            Body::Conflict => self.deliver_conflict(),
        }
        self.flush_due_redeliveries();
    }

    /// Mostly soon, sometimes minutes of traffic later.
    fn redelivery_delay(&mut self) -> usize {
        match self.rng.random_range(0..100) {
            0..70 => self.rng.random_range(1..=100),
            70..95 => self.rng.random_range(100..=2_000),
            _ => self.rng.random_range(2_000..=REDELIVERY_DELAY_MAX_LINES),
        }
    }

    fn flush_due_redeliveries(&mut self) {
        while self
            .redeliveries
            .peek()
            .is_some_and(|Reverse(s)| s.due <= self.lines)
        {
            if let Some(Reverse(s)) = self.redeliveries.pop() {
                self.redeliver(&s.ev);
            }
        }
    }

    fn redeliver(&mut self, ev: &SimEvent) {
        let line = if self.rng.random_bool(0.5) {
            ev.canonical()
        } else {
            reserialize(ev, &mut self.rng)
        };
        self.out(&line);
        self.redelivered += 1;
    }

    /// The same `tx_id`, realm, system, seq and ts with different content: every delta
    /// doubled (still balanced), or for an event without postings another actor.
    fn deliver_conflict(&mut self) {
        if self.conflict_sources.is_empty() {
            debug_assert!(false, "the world commits a clean event before any conflict");
            return;
        }
        let n = self.conflict_sources.len();
        let mut pick = self.rng.random_range(0..n);
        for _ in 0..16 {
            if !self.conflict_sources[pick].postings.is_empty() {
                break;
            }
            pick = self.rng.random_range(0..n);
        }
        // Taken out, so that two conflicts never target (and duplicate) the same tx_id.
        let Some(src) = self.conflict_sources.remove(pick) else {
            return;
        };
        let mut ev = SimEvent::clone(&src);
        if ev.postings.is_empty() {
            ev.actor = Some(match ev.actor.take() {
                Some(a) if a != "player:1" => "player:1".to_string(),
                _ => "player:2".to_string(),
            });
        } else {
            for p in &mut ev.postings {
                p.delta = p.delta.saturating_mul(2);
            }
        }
        let line = ev.canonical();
        self.out(&line);
        self.faults.push(Expected {
            invariant: Invariant::TxConflict,
            realm: ev.realm.to_string(),
            system: None,
            tx_id: Some(ev.tx_id.clone()),
            seq: None,
            subject: None,
        });
    }

    /// Delivers everything still buffered, then every pending redelivery.
    pub fn finish(&mut self) {
        while let Some(p) = self.buf.pop_front() {
            self.deliver(p);
        }
        while let Some(Reverse(s)) = self.redeliveries.pop() {
            self.redeliver(&s.ev);
        }
    }
}
