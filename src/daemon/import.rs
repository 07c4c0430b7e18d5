//! Journaling an NDJSON stream straight into PostgreSQL, without RabbitMQ: the same
//! engine calls, the same journal rows ([`super::journal_entry`],
//! [`super::malformed_entry`]) and the same [`Pg::commit`] batches as the daemon. Used by
//! `assayer journal import` (filling a support database from a captured stream) and by
//! the trace tests, so they exercise the real journal format.

use std::io::BufRead;

use crate::adapters::postgres::{Batch, Pg, Snapshot};
use crate::core::engine::{Outcome, SNAPSHOT_FORMAT};
use crate::core::event::MAX_EVENT_BYTES;
use crate::core::finding::{Finding, Invariant};
use crate::core::policy::Policy;
use crate::core::time::Timestamp;
use crate::ndjson::read_line_bounded;

use super::{DaemonError, journal_entry, malformed_entry, restore};

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub lines: u64,
    pub journaled: u64,
    pub redelivered: u64,
    pub findings: u64,
    pub head: i64,
}

/// Reads NDJSON lines from `input` and journals them on top of what the group's journal
/// already holds (the engine is restored first, exactly as the daemon does). Commits
/// every `batch_events_max` lines; at the end drains the reorder window
/// (`Engine::finish`) and stores a snapshot. `now` is the wall-clock stand-in the
/// engine stamps findings with.
pub async fn import(
    pg: &Pg,
    policy: &Policy,
    input: &mut dyn BufRead,
    batch_events_max: usize,
    now: Timestamp,
) -> Result<ImportReport, DaemonError> {
    assert!(batch_events_max > 0, "batch_events_max is validated ≥ 1");
    let restored = restore(pg, policy).await?;
    let mut engine = restored.engine;
    let mut report = ImportReport {
        head: restored.position,
        ..ImportReport::default()
    };
    let mut batch = Batch {
        expected_head: report.head,
        new_head: report.head,
        ..Batch::default()
    };
    let mut buf = Vec::new();
    let mut pending_lines = 0usize;
    loop {
        // Bounded read: a line longer than an event may be is set aside by the engine
        // anyway; do not buffer gigabytes to find that out.
        let read = read_line_bounded(input, &mut buf, MAX_EVENT_BYTES + 1)
            .map_err(|e| DaemonError::Restore(format!("reading the input: {e}")))?;
        if read.is_none() {
            break;
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        report.lines += 1;
        let position = batch.new_head + 1;
        let mut out: Vec<Finding> = Vec::new();
        let mut entry = None;
        let outcome = engine.ingest_inspect(line, now, &mut out, |v| {
            entry = Some(journal_entry(position, v, line));
        });
        match outcome {
            Outcome::Accepted => {
                batch
                    .entries
                    .push(entry.expect("accepted events are inspected"));
                batch.new_head = position;
                report.journaled += 1;
            }
            Outcome::Malformed => {
                let f = out
                    .iter()
                    .find(|f| f.invariant == Invariant::Malformed)
                    .expect("a malformed outcome raises event.malformed");
                batch.entries.push(malformed_entry(position, f, line));
                batch.new_head = position;
                report.journaled += 1;
            }
            Outcome::Redelivered => report.redelivered += 1,
            Outcome::Conflict | Outcome::Stale => {}
        }
        report.findings += out.len() as u64;
        batch.findings.extend(out);
        pending_lines += 1;
        if pending_lines >= batch_events_max {
            pg.commit(&batch).await?;
            batch = Batch {
                expected_head: batch.new_head,
                new_head: batch.new_head,
                ..Batch::default()
            };
            pending_lines = 0;
        }
    }
    let mut out = Vec::new();
    engine.finish(now, &mut out);
    report.findings += out.len() as u64;
    batch.findings.extend(out);
    batch.snapshot = Some(Snapshot {
        position: batch.new_head,
        format: SNAPSHOT_FORMAT as i32,
        bytes: engine.snapshot(),
        events_accepted: engine.stats().accepted as i64,
    });
    pg.commit(&batch).await?;
    report.head = batch.new_head;
    Ok(report)
}
