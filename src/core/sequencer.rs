//! The reorder window: holds accepted events until no event still inside the window
//! could change what they mean, then releases them in causal order — per (realm,
//! system) in `seq` order, across systems in `ts` order — and declares sequence gaps
//! once the window has passed.
//!
//! An event with timestamp `t` is *due* once the watermark `max_ts_seen - window`
//! reaches `t`. A due event is applied when every lower `seq` of its stream has been
//! applied, or is missing although a due event sits above it: that missing range has
//! been outstanding for a whole window and is a `stream.seq_gap`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::intern::Sym;
use super::ledger::Event;
use super::policy::StreamStart;
use super::time::Timestamp;

/// Index of a (realm, system) stream.
pub type StreamId = u32;

/// What the sequencer hands back, in the order the ledger must see it.
#[derive(Debug)]
pub enum Released {
    Apply(Event),
    Gap {
        stream: StreamId,
        /// First missing seq.
        from: u64,
        /// Last missing seq (inclusive).
        to: u64,
        last_applied: Option<u64>,
        /// The event that was waiting above the gap.
        next_tx_id: Box<str>,
        next_seq: u64,
        next_ts: Timestamp,
    },
}

/// Where a (stream, seq) slot stands, as far as the sequencer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Not seen yet and still ahead of the stream's position.
    Free,
    /// Held in the buffer by another event.
    Pending,
    /// Consumed by an event that was malformed (set aside, its seq accounted for).
    Malformed,
    /// Behind the stream's position: applied, declared missing, or malformed.
    Passed,
}

#[derive(Serialize, Deserialize)]
struct Pending {
    ev: Event,
    due: bool,
}

/// A stream's buffered events by seq: a deque kept sorted. Events mostly arrive in seq
/// order and leave from the front, so both ends are O(1) and an event is moved once
/// each way (a B-tree shifted ~a node of 120-byte events on every removal from the
/// front). Snapshots hold it as a map, as they held the `BTreeMap` it replaced.
#[derive(Default)]
struct SeqBuffer(VecDeque<(u64, Pending)>);

impl SeqBuffer {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        // The newest seq is the likeliest to be asked about or appended after.
        match self.0.back() {
            Some((last, _)) if *last < seq => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&seq, |(s, _)| *s),
        }
    }

    fn contains(&self, seq: u64) -> bool {
        self.find(seq).is_ok()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Pending> {
        let i = self.find(seq).ok()?;
        Some(&mut self.0[i].1)
    }

    /// Buffers `p` at `seq`, replacing what was there.
    fn insert(&mut self, seq: u64, p: Pending) {
        match self.find(seq) {
            Ok(i) => self.0[i].1 = p,
            Err(i) => self.0.insert(i, (seq, p)),
        }
    }

    fn first(&self) -> Option<(u64, &Pending)> {
        self.0.front().map(|(s, p)| (*s, p))
    }

    fn pop_first(&mut self) -> Option<(u64, Pending)> {
        self.0.pop_front()
    }
}

impl Serialize for SeqBuffer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(s, p)| (s, p)))
    }
}

impl<'de> Deserialize<'de> for SeqBuffer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u64, Pending>::deserialize(deserializer)?;
        Ok(SeqBuffer(map.into_iter().collect()))
    }
}

#[derive(Serialize, Deserialize)]
pub struct StreamState {
    pub realm: Sym,
    pub system: Sym,
    /// The next seq to apply; `None` until the stream's first release.
    next: Option<u64>,
    pending: SeqBuffer,
    malformed: BTreeSet<u64>,
    /// Highest `ts` seen on this stream (heartbeats included).
    pub last_ts: Timestamp,
    /// Redelivery memory forgot every tx of this stream up to this seq.
    pub forgotten_through: u64,
}

impl StreamState {
    pub fn next_seq(&self) -> Option<u64> {
        self.next
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
enum Lane {
    Seq,
    Loose,
}

/// (ts, arrival, stream, seq, lane): ordered by ts, then arrival.
type HeapEntry = (Timestamp, u64, StreamId, u64, Lane);

#[derive(Serialize, Deserialize)]
pub struct Sequencer {
    /// From the policy; rebound on restore.
    #[serde(skip, default = "default_start")]
    start: StreamStart,
    streams: Vec<StreamState>,
    index: FxHashMap<(Sym, Sym), StreamId>,
    /// (ts, arrival, stream, seq, lane): min-heap of everything not yet due.
    heap: BinaryHeap<Reverse<HeapEntry>>,
    /// Events applied outside their stream's sequence (late arrivals, seq re-use).
    loose: FxHashMap<u64, Event>,
    arrivals: u64,
    buffered: usize,
}

fn default_start() -> StreamStart {
    StreamStart::FirstSeen
}

impl Sequencer {
    pub fn rebind(&mut self, start: StreamStart) {
        self.start = start;
    }

    pub fn new(start: StreamStart) -> Sequencer {
        Sequencer {
            start,
            streams: Vec::new(),
            index: FxHashMap::default(),
            heap: BinaryHeap::new(),
            loose: FxHashMap::default(),
            arrivals: 0,
            buffered: 0,
        }
    }

    pub fn stream_id(&mut self, realm: Sym, system: Sym) -> StreamId {
        let next_id = self.streams.len() as StreamId;
        *self.index.entry((realm, system)).or_insert_with(|| {
            self.streams.push(StreamState {
                realm,
                system,
                next: None,
                pending: SeqBuffer::default(),
                malformed: BTreeSet::new(),
                last_ts: Timestamp::MIN,
                forgotten_through: 0,
            });
            next_id
        })
    }

    pub fn stream(&self, id: StreamId) -> &StreamState {
        &self.streams[id as usize]
    }

    pub fn stream_mut(&mut self, id: StreamId) -> &mut StreamState {
        &mut self.streams[id as usize]
    }

    pub fn streams(&self) -> impl Iterator<Item = &StreamState> {
        self.streams.iter()
    }

    /// Events held in the reorder buffer.
    pub fn depth(&self) -> usize {
        self.buffered
    }

    pub fn slot(&self, id: StreamId, seq: u64) -> Slot {
        let s = &self.streams[id as usize];
        if s.next.is_some_and(|n| seq < n) {
            Slot::Passed
        } else if s.pending.contains(seq) {
            Slot::Pending
        } else if s.malformed.contains(&seq) {
            Slot::Malformed
        } else {
            Slot::Free
        }
    }

    /// Buffers an event that owns its (stream, seq) slot.
    pub fn push(&mut self, id: StreamId, ev: Event) {
        let (ts, seq) = (ev.ts, ev.seq);
        let s = &mut self.streams[id as usize];
        s.last_ts = s.last_ts.max(ts);
        s.malformed.remove(&seq);
        let arrival = self.next_arrival();
        self.heap.push(Reverse((ts, arrival, id, seq, Lane::Seq)));
        self.streams[id as usize]
            .pending
            .insert(seq, Pending { ev, due: false });
        self.buffered += 1;
    }

    /// Buffers an event that is applied outside its stream's sequence (its slot was
    /// already passed or used): it still waits for the window, so cross-system order
    /// holds for it too.
    pub fn push_loose(&mut self, id: StreamId, ev: Event) {
        let s = &mut self.streams[id as usize];
        s.last_ts = s.last_ts.max(ev.ts);
        let arrival = self.next_arrival();
        self.heap
            .push(Reverse((ev.ts, arrival, id, ev.seq, Lane::Loose)));
        self.loose.insert(arrival, ev);
        self.buffered += 1;
    }

    /// Accounts for the seq of an event that was set aside as malformed, so it is not
    /// reported a second time as a gap.
    pub fn mark_malformed(&mut self, id: StreamId, seq: u64, ts: Option<Timestamp>) {
        let s = &mut self.streams[id as usize];
        if let Some(ts) = ts {
            s.last_ts = s.last_ts.max(ts);
        }
        if s.next.is_none_or(|n| seq >= n) && !s.pending.contains(seq) {
            s.malformed.insert(seq);
        }
    }

    fn next_arrival(&mut self) -> u64 {
        self.arrivals += 1;
        self.arrivals
    }

    /// Releases everything due at `watermark`, in order, into `out`.
    pub fn release(&mut self, watermark: Timestamp, out: &mut Vec<Released>) {
        while let Some(Reverse((ts, arrival, id, seq, lane))) = self.heap.peek().copied() {
            if ts > watermark {
                break;
            }
            self.heap.pop();
            match lane {
                Lane::Loose => {
                    if let Some(ev) = self.loose.remove(&arrival) {
                        self.buffered -= 1;
                        out.push(Released::Apply(ev));
                    }
                }
                Lane::Seq => {
                    if let Some(p) = self.streams[id as usize].pending.get_mut(seq) {
                        p.due = true;
                    }
                    self.settle(id, out);
                }
            }
        }
    }

    /// Applies the stream's due events that nothing missing below them blocks.
    fn settle(&mut self, id: StreamId, out: &mut Vec<Released>) {
        let start = self.start;
        let mut applied = 0;
        let s = &mut self.streams[id as usize];
        if s.next.is_none() {
            let lowest = [
                s.pending.first().map(|(seq, _)| seq),
                s.malformed.first().copied(),
            ]
            .into_iter()
            .flatten()
            .min();
            s.next = Some(match start {
                StreamStart::One => 1,
                StreamStart::FirstSeen => lowest.unwrap_or(1),
            });
        }
        loop {
            let mut next = s.next.expect("set above");
            while s.malformed.remove(&next) {
                next += 1;
            }
            s.next = Some(next);
            if !s.pending.first().is_some_and(|(_, p)| p.due) {
                break;
            }
            let (seq, p) = s.pending.pop_first().expect("checked above");
            if seq > next {
                let before: Vec<u64> = s.malformed.range(next..seq).copied().collect();
                for m in &before {
                    s.malformed.remove(m);
                }
                // Missing ranges between `next` and `seq`, split by malformed seqs.
                let mut from = next;
                for m in before.into_iter().chain(std::iter::once(seq)) {
                    if m > from {
                        out.push(Released::Gap {
                            stream: id,
                            from,
                            to: m - 1,
                            last_applied: next.checked_sub(1).filter(|v| *v > 0),
                            next_tx_id: p.ev.tx_id.as_str().into(),
                            next_seq: seq,
                            next_ts: p.ev.ts,
                        });
                    }
                    from = m + 1;
                }
            }
            applied += 1;
            s.next = Some(seq + 1);
            out.push(Released::Apply(p.ev));
        }
        self.buffered -= applied;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::intern::Interner;

    fn pending(i: &mut Interner, seq: u64) -> Pending {
        Pending {
            ev: Event {
                tx_id: format!("tx-{seq}").into(),
                realm: i.intern("realm-1"),
                system: i.intern("trade"),
                seq,
                ts: Timestamp(seq as i64),
                grant: None,
                postings: Default::default(),
                items: Default::default(),
                digest: seq,
            },
            due: seq.is_multiple_of(2),
        }
    }

    #[test]
    fn the_seq_buffer_keeps_seq_order_and_snapshots_as_the_btree_map_did() {
        let mut i = Interner::default();
        let mut buf = SeqBuffer::default();
        let mut map = BTreeMap::new();
        for seq in [5, 6, 9, 7, 1, 8, 6] {
            buf.insert(seq, pending(&mut i, seq));
            map.insert(seq, pending(&mut i, seq));
        }
        assert!(buf.contains(7) && !buf.contains(2) && !buf.contains(10));
        assert_eq!(
            postcard::to_stdvec(&buf).unwrap(),
            postcard::to_stdvec(&map).unwrap()
        );
        let back: SeqBuffer = postcard::from_bytes(&postcard::to_stdvec(&map).unwrap()).unwrap();
        let seqs: Vec<u64> = back.0.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 5, 6, 7, 8, 9]);
        buf.get_mut(9).unwrap().due = true;
        assert!(buf.0.back().unwrap().1.due);
        assert_eq!(buf.pop_first().map(|(s, _)| s), Some(1));
        assert_eq!(buf.first().map(|(s, _)| s), Some(5));
    }
}
