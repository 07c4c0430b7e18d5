//! Reading NDJSON event streams: a bounded line reader, and the two-stage audit
//! pipeline (read, decode and intern ids on one thread; the engine on the other) that
//! `assayer audit`, its benchmark and reconciliation's `--events` share.

use std::io::{self, BufRead};

use crate::core::engine::{Engine, event_ids, intrinsically_clean, prepare_event};
use crate::core::event::{MAX_EVENT_BYTES, ValidEvent, decode};
use crate::core::finding::Finding;
use crate::core::intern::{Lookup, LookupStage, NewIds, Prefetched};
use crate::core::ledger::Event;
use crate::core::policy::Policy;
use crate::core::time::Timestamp;

/// Lines decoded per hand-off between the two pipeline stages.
const CHUNK_LINES: usize = 2_048;
/// Input bytes per hand-off: a chunk closes at `CHUNK_LINES` lines or this many bytes.
const CHUNK_BYTES: usize = 1 << 20;
/// A chunk buffer's capacity: it closes past `CHUNK_BYTES`, so one more event fits.
const CHUNK_CAPACITY: usize = CHUNK_BYTES + MAX_EVENT_BYTES + 1;
/// Chunks in flight between the stages (bounded: the reader cannot run away).
const CHUNKS_IN_FLIGHT: usize = 4;

/// One input line, decoded (or not) by the first stage, borrowing from its chunk.
// Nearly every line is `Valid`: boxing it would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Decoded<'a> {
    /// With the ledger's view of it, its ids interned by the decode stage.
    /// Boxed: rare (events with an intrinsic finding), and a chunk's entries are as
    /// large as its largest variant.
    Valid(Box<(ValidEvent<'a>, Event)>),
    /// An event that raises no intrinsic finding: its ledger view and its line (the
    /// decoded event was dropped on the decode thread, [`Engine::ingest_clean`]).
    Clean(Event, &'a [u8]),
    Malformed {
        why: crate::core::event::Malformed,
        bytes: &'a [u8],
        /// The real length of a line longer than an event may be (only a prefix kept).
        overlong: Option<u64>,
    },
}

/// A chunk's lines: (line number, what decoding made of it).
type Lines<'a> = Vec<(u64, Decoded<'a>)>;

self_cell::self_cell!(
    /// A block of input lines and their decoding, which borrows every string from the
    /// block: one allocation per chunk crosses the threads, not one per string.
    struct Chunk {
        owner: Vec<u8>,
        #[not_covariant]
        dependent: Lines,
    }
);

/// A generous guess at how many events a file of `bytes` holds (events-v1 lines run
/// 250–500 bytes), for [`Engine::reserve`]: reserving too much only claims address
/// space, too little leaves some growth for later.
pub fn events_in(bytes: u64) -> usize {
    usize::try_from(bytes / 256).unwrap_or(usize::MAX)
}

/// Feeds every line of `reader` through the engine and finishes it. Blank lines are
/// skipped; a line longer than an event may be is read in bounded memory and reported
/// malformed. Malformed findings get the input line number in their evidence.
///
/// Two stages on two threads: reading, decoding and interning ids on one (with the
/// engine's lookup table, lent for the run: [`Engine::lend_lookup`]), the engine on
/// the other, handing over bounded chunks of decoded events with the ids new in each.
/// Emptied chunk buffers go back to the reader for reuse.
pub fn audit_stream<R: BufRead + Send>(
    engine: &mut Engine,
    reader: R,
    mut on_finding: impl FnMut(Finding),
) -> io::Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Chunk, NewIds)>(CHUNKS_IN_FLIGHT);
        let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 1);
        let policy = engine.policy().clone();
        let mut lookup = engine.lend_lookup();
        let decoder = scope.spawn(move || {
            let r = decode_lines(reader, &policy, &mut lookup, tx, spare_rx);
            (lookup, r)
        });
        let mut out = Vec::new();
        let mut now = Timestamp::now();
        for (mut chunk, ids) in rx {
            now = now.max(Timestamp::now());
            engine.learn_ids(&ids);
            chunk.with_dependent_mut(|_, lines| {
                for (line_no, d) in lines.drain(..) {
                    match d {
                        Decoded::Valid(valid) => {
                            engine.ingest_prepared(Ok(*valid), now, &mut out, |_| {});
                            out.drain(..).for_each(&mut on_finding);
                        }
                        Decoded::Clean(ev, line) => {
                            engine.ingest_clean(ev, line, now, &mut out);
                            out.drain(..).for_each(&mut on_finding);
                        }
                        Decoded::Malformed {
                            why,
                            bytes,
                            overlong,
                        } => {
                            engine.ingest_prepared(Err((why, bytes)), now, &mut out, |_| {});
                            for mut f in out.drain(..) {
                                if f.invariant == crate::core::finding::Invariant::Malformed {
                                    annotate_malformed(&mut f, line_no, overlong);
                                }
                                on_finding(f);
                            }
                        }
                    }
                }
            });
            // A full spare queue or a finished reader: the buffer is simply freed.
            let _ = spare_tx.try_send(chunk.into_owner());
        }
        let (lookup, read) = decoder
            .join()
            .map_err(|_| io::Error::other("the decoding thread panicked"))?;
        engine.return_lookup(lookup);
        read?;
        engine.finish(Timestamp::now(), &mut out);
        out.drain(..).for_each(&mut on_finding);
        Ok(())
    })
}

fn annotate_malformed(f: &mut Finding, line_no: u64, overlong: Option<u64>) {
    let Some(ev) = f.evidence.as_object_mut() else {
        return;
    };
    ev.insert("line".into(), line_no.into());
    if let Some(total) = overlong {
        let why = format!("event is {total} bytes; events-v1 allows at most {MAX_EVENT_BYTES}");
        ev.insert("bytes".into(), total.into());
        ev.insert("reason".into(), why.clone().into());
        f.message = format!("malformed event set aside: {why}");
    }
}

/// The first stage: reads lines into a chunk buffer and decodes them in place, sending
/// chunks downstream. Stops early (without error) when the engine side has gone away.
fn decode_lines<R: BufRead>(
    mut reader: R,
    policy: &Policy,
    lookup: &mut Lookup,
    tx: std::sync::mpsc::SyncSender<(Chunk, NewIds)>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let mut line_no: u64 = 0;
    let mut buf = Vec::with_capacity(CHUNK_CAPACITY);
    // (line number, start, end, overlong) of each non-blank line in `buf`.
    let mut spans: Vec<(u64, usize, usize, Option<u64>)> = Vec::with_capacity(CHUNK_LINES);
    loop {
        // Lines are read straight into the chunk's buffer (no copy through a line buffer).
        let at = buf.len();
        let read = append_line_bounded(&mut reader, &mut buf, MAX_EVENT_BYTES + 1)?;
        if let Some(overlong) = read {
            line_no += 1;
            let line = &buf[at..];
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                buf.truncate(at);
            } else {
                let start = at + (trimmed.as_ptr() as usize - line.as_ptr() as usize);
                let end = start + trimmed.len();
                buf.truncate(end);
                spans.push((line_no, start, end, overlong));
            }
        }
        let full = spans.len() == CHUNK_LINES || buf.len() >= CHUNK_BYTES;
        if !spans.is_empty() && (full || read.is_none()) {
            let mut next = spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK_CAPACITY));
            next.clear();
            let owner = std::mem::replace(&mut buf, next);
            let mut new = NewIds::default();
            let chunk = Chunk::new(owner, |b| {
                // Each valid event's ids are interned one event late: its table buckets
                // are prefetched when it is decoded, and by the time the next event is
                // decoded they are in cache (interning was ~20% of this stage, nearly
                // all of it waiting on memory).
                let mut lines: Lines = Vec::with_capacity(spans.len());
                // Two slots, used in turn, so that a decoded event (~500 bytes) is
                // written once and never moved again unless it goes to the engine whole.
                let mut slots: [Behind<'_>; 2] = [None, None];
                let mut ids: [Vec<Prefetched>; 2] = [Vec::new(), Vec::new()];
                let mut cur = 0;
                for (no, start, end, overlong) in spans.drain(..) {
                    let bytes = &b[start..end];
                    let prev = 1 - cur;
                    match decode(bytes) {
                        Ok(v) => {
                            let (_, v, _) = slots[cur].insert((no, v, bytes));
                            v.prechecked = intrinsically_clean(policy, v);
                            ids[cur].clear();
                            ids[cur].extend(event_ids(v).map(|s| lookup.prefetch(s)));
                            if let Some(l) =
                                intern_ids(lookup, &mut new, &ids[prev], &mut slots[prev])
                            {
                                lines.push(l);
                            }
                            cur = prev;
                        }
                        Err(why) => {
                            if let Some(l) =
                                intern_ids(lookup, &mut new, &ids[prev], &mut slots[prev])
                            {
                                lines.push(l);
                            }
                            lines.push((
                                no,
                                Decoded::Malformed {
                                    why,
                                    bytes,
                                    overlong,
                                },
                            ));
                        }
                    }
                }
                if let Some(l) = intern_ids(lookup, &mut new, &ids[1 - cur], &mut slots[1 - cur]) {
                    lines.push(l);
                }
                lines
            });
            if tx.send((chunk, new)).is_err() {
                return Ok(());
            }
        }
        if read.is_none() {
            return Ok(());
        }
    }
}

/// A decoded event waiting for its ids to be interned: (line number, event, line).
type Behind<'a> = Option<(u64, ValidEvent<'a>, &'a [u8])>;

/// Interns the ids of the event in `slot`, if any (`prefetched` by
/// [`Lookup::prefetch`]), and makes it a chunk line for the engine: its ledger view
/// and line when it raises no intrinsic finding (the decoded event is dropped where it
/// lies), else whole. Empties the slot.
fn intern_ids<'a>(
    lookup: &mut Lookup,
    new: &mut NewIds,
    prefetched: &[Prefetched],
    slot: &mut Behind<'a>,
) -> Option<(u64, Decoded<'a>)> {
    let (no, v, line) = slot.as_ref()?;
    let (no, line) = (*no, *line);
    let mut stage = LookupStage {
        lookup,
        new,
        prefetched,
    };
    let ev = prepare_event(&mut stage, v);
    let d = if v.prechecked {
        *slot = None;
        Decoded::Clean(ev, line)
    } else {
        let (_, v, _) = slot.take()?;
        Decoded::Valid(Box::new((v, ev)))
    };
    Some((no, d))
}

/// Reads one line into `buf` (without the newline), keeping at most `max` bytes. Returns
/// `None` at end of input, `Some(None)` for a line that fit, and `Some(Some(total))`
/// for a longer line whose first `max` bytes were kept and the rest skipped.
pub fn read_line_bounded<R: BufRead + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<Option<u64>>> {
    buf.clear();
    append_line_bounded(reader, buf, max)
}

/// [`read_line_bounded`], appending the line to what `buf` already holds (`max` counts
/// the line's bytes only).
fn append_line_bounded<R: BufRead + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<Option<u64>>> {
    let at = buf.len();
    let mut total: u64 = 0;
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len() - at);
        buf.extend_from_slice(&chunk[..take.min(room)]);
        total += take as u64;
        reader.consume(if done { take + 1 } else { take });
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some((total > max as u64).then_some(total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn bounded_reader_keeps_a_prefix_of_long_lines() {
        let data = format!("short\n{}\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(16, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut buf, 10).unwrap(), Some(None));
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 10).unwrap(),
            Some(Some(100))
        );
        assert_eq!(buf.len(), 10);
        assert_eq!(read_line_bounded(&mut r, &mut buf, 10).unwrap(), Some(None));
        assert_eq!(buf, b"last");
        assert_eq!(read_line_bounded(&mut r, &mut buf, 10).unwrap(), None);
    }

    /// The two-stage pipeline gives what feeding the engine line by line gives, across
    /// chunk boundaries (by line count and by bytes), with blank, malformed and overlong
    /// lines among the events.
    #[test]
    fn pipeline_matches_the_engine_fed_line_by_line() {
        let cfg = crate::sim::SimConfig {
            seed: 7,
            events: 6_000,
            inject: vec![
                ("item.duplicated".parse().unwrap(), 3),
                ("tx.unbalanced".parse().unwrap(), 3),
                ("economy.unauthorized_faucet".parse().unwrap(), 3),
                // Raised from a clean event's line, decoded again on the engine side.
                ("tx.conflict".parse().unwrap(), 3),
                ("stream.seq_reuse".parse().unwrap(), 3),
            ],
            ..crate::sim::SimConfig::default()
        };
        let mut lines: Vec<Vec<u8>> = Vec::new();
        crate::sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
        lines.insert(10, Vec::new());
        lines.insert(2_047, b"{not json".to_vec());
        lines.insert(2_049, vec![b'x'; MAX_EVENT_BYTES + 100]);
        lines.insert(4_500, b"   ".to_vec());
        let input: Vec<u8> = lines
            .iter()
            .flat_map(|l| l.iter().chain(b"\n"))
            .copied()
            .collect();

        let mut engine = Engine::new(Policy::builtin());
        let mut piped = Vec::new();
        audit_stream(&mut engine, &input[..], |f| piped.push(f)).unwrap();

        let mut single = Engine::new(Policy::builtin());
        let mut direct = Vec::new();
        let now = Timestamp::now();
        for (i, l) in lines.iter().enumerate() {
            let l = l.trim_ascii();
            if l.is_empty() {
                continue;
            }
            let before = direct.len();
            let keep = &l[..l.len().min(MAX_EVENT_BYTES + 1)];
            let overlong = (l.len() > MAX_EVENT_BYTES + 1).then_some(l.len() as u64);
            single.ingest(keep, now, &mut direct);
            for f in &mut direct[before..] {
                if f.invariant == crate::core::finding::Invariant::Malformed {
                    annotate_malformed(f, i as u64 + 1, overlong);
                }
            }
        }
        single.finish(now, &mut direct);

        let key = |f: &Finding| (f.fingerprint.clone(), f.message.clone(), f.evidence.clone());
        assert_eq!(
            piped.iter().map(key).collect::<Vec<_>>(),
            direct.iter().map(key).collect::<Vec<_>>()
        );
        assert_eq!(engine.stats().received, single.stats().received);
        assert_eq!(engine.stats().accepted, single.stats().accepted);
        for inv in [
            crate::core::finding::Invariant::TxConflict,
            crate::core::finding::Invariant::SeqReuse,
        ] {
            assert_eq!(
                piped.iter().filter(|f| f.invariant == inv).count(),
                3,
                "{inv:?}"
            );
        }
        // The decode stage interned every id with the lent lookup, in the order the
        // engine would have: same symbols, same state, byte for byte; and the engine
        // has its lookup back.
        assert!(engine.snapshot() == single.snapshot());
        assert_eq!(
            engine.ledger().item_copies(engine.interner()),
            single.ledger().item_copies(single.interner())
        );
        let malformed: Vec<_> = piped
            .iter()
            .filter(|f| f.invariant == crate::core::finding::Invariant::Malformed)
            .map(|f| f.evidence["line"].as_u64())
            .collect();
        assert_eq!(malformed, vec![Some(2_048), Some(2_050)]);
        for inv in [
            "item.duplicated",
            "tx.unbalanced",
            "economy.unauthorized_faucet",
        ] {
            assert!(piped.iter().any(|f| f.invariant.id() == inv), "{inv}");
        }
    }
}
