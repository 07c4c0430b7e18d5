//! The daemon's commit stage: writes batches to PostgreSQL on its own task, in order,
//! while the session goes on consuming and auditing the next batch.
//!
//! ```text
//! session ──Job (batch, last delivery tag)──► committer ──pg.commit──► PostgreSQL
//!    ▲                                            │
//!    └──────────────Done (ack through tag)────────┘
//! ```
//!
//! Exactly-once effect is unchanged: a delivery is acked by the session only when the
//! `Done` of the batch holding it arrives, i.e. after that batch committed. Up to
//! [`COMMITS_IN_FLIGHT`] batches are written at once, each in its own transaction; each
//! one's rollup upserts and journal-head fence (`Batch::expected_head`) are issued only
//! after its predecessor committed (`Pg::commit_after`), so batches become durable
//! strictly in the order they were cut and are reported `Done` in that order. At most
//! [`JOBS_QUEUED`] batches wait behind the ones being written; meanwhile the session
//! lets its next batch grow (up to twice `batch_events_max`) before it waits too, so a
//! slow database slows consumption down (the broker's prefetch window fills) rather
//! than growing memory.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::adapters::amqp::Confirm;
use crate::adapters::postgres::{Batch, Pg, StoreError};
use crate::core::time::Timestamp;

use super::{DaemonError, health};

/// Batches that may wait while [`COMMITS_IN_FLIGHT`] are being written.
const JOBS_QUEUED: usize = 1;

/// Batches written at once, each in its own transaction on its own connection. The
/// second one's journal inserts run while the first one upserts its rollups and
/// commits; its own rollups and journal-head fence wait for the first one's commit
/// (`Pg::commit_after`), so batches still become durable strictly in order.
const COMMITS_IN_FLIGHT: usize = 2;

/// What the session needs back once a batch is durable (the commit stage only carries
/// it).
pub struct Cut {
    /// Every delivery up to this tag is in the batch (or in an earlier one). `None`: a
    /// batch cut without a delivery, when a hold ended between deliveries (it carries
    /// the hold's findings and a snapshot, or nothing but the new status).
    pub last_tag: Option<u64>,
    pub events: usize,
    /// Newest event time in the batch, for the processing lag.
    pub newest_ts: Option<Timestamp>,
    /// Where the engine stood when the batch was cut (for the status row).
    pub progress: health::Progress,
}

/// A batch cut by the session.
pub struct Job {
    /// A batch carrying a snapshot is followed by pruning the journal past retention.
    pub batch: Batch,
    pub cut: Cut,
    /// The broker's confirms of the batch's findings, published on detection: awaited
    /// here, before the batch commits (findings are stored as published), so the
    /// session never waits on a broker round trip.
    pub confirms: Vec<Confirm>,
}

/// A committed batch.
pub struct Done {
    pub cut: Cut,
    /// The journal head the batch left.
    pub head: i64,
    /// From the start of the batch's transaction to its commit (its wait for the
    /// previous batch's commit included).
    pub took: Duration,
}

/// The session's handle on the commit task. Dropping it aborts the task: a session
/// that failed must not keep writing behind the next session's back.
pub struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::UnboundedReceiver<Result<Done, DaemonError>>,
    task: JoinHandle<()>,
    in_flight: usize,
}

impl Committer {
    pub fn spawn(pg: Pg, journal_retention: Duration) -> Committer {
        let (jobs, rx) = mpsc::channel(JOBS_QUEUED);
        let (done_tx, done) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(pg, journal_retention, rx, done_tx));
        Committer {
            jobs: Some(jobs),
            done,
            task,
            in_flight: 0,
        }
    }

    /// Batches handed over and not yet reported done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a batch handed over now would have to wait for room
    /// ([`Committer::submit`] would block).
    pub fn is_full(&self) -> bool {
        self.in_flight >= COMMITS_IN_FLIGHT + JOBS_QUEUED
    }

    /// Hands a batch over, waiting while [`JOBS_QUEUED`] batches already wait.
    pub async fn submit(&mut self, job: Job) -> Result<(), DaemonError> {
        let sent = match &self.jobs {
            Some(tx) => tx.send(job).await.is_ok(),
            None => false,
        };
        if !sent {
            // The task ended after reporting why on `done`: that is the error. (Batches
            // it committed before are durable; the session ends on this error, and
            // their unacked deliveries come back and are recognised by `tx_id`.)
            while let Some(r) = self.done.recv().await {
                r?;
            }
            return Err(StoreError::CommitterStopped.into());
        }
        self.in_flight += 1;
        Ok(())
    }

    /// The next committed batch, in order. Pending while nothing is in flight.
    pub async fn next(&mut self) -> Result<Done, DaemonError> {
        if self.in_flight == 0 {
            return std::future::pending().await;
        }
        match self.done.recv().await {
            Some(r) => {
                self.in_flight -= 1;
                r
            }
            None => Err(StoreError::CommitterStopped.into()),
        }
    }

    /// No more batches: the ones in flight are still reported by [`Committer::next`].
    pub fn close(&mut self) {
        self.jobs = None;
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    pg: Pg,
    journal_retention: Duration,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Result<Done, DaemonError>>,
) {
    // The head the last durable batch left: a batch's rollups and fence wait until it
    // is their `Job::batch.expected_head`.
    let durable = watch::Sender::new(0i64);
    // Transactions in flight, polled together, finished in the order they were cut.
    let mut writing = FuturesOrdered::new();
    let mut open = true;
    // The journal pruning started after the last snapshot, if it is still running.
    let mut pruning: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            job = jobs.recv(), if open && writing.len() < COMMITS_IN_FLIGHT => match job {
                Some(job) => {
                    if writing.is_empty() {
                        // Nothing in flight: the previous batch (if any) is durable.
                        durable.send_replace(job.batch.expected_head);
                    }
                    writing.push_back(write(&pg, &durable, job));
                }
                None => open = false,
            },
            r = writing.next(), if !writing.is_empty() => {
                let Some(r) = r else { continue };
                let (done_ok, snapshot) = match r {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                if snapshot && pruning.as_ref().is_none_or(JoinHandle::is_finished) {
                    // Retention: journal rows the new snapshot covers and that are old
                    // enough, on a task of its own (those rows are never written again,
                    // so it need not hold up the batches being written).
                    let pg = pg.clone();
                    pruning = Some(tokio::spawn(async move {
                        match pg.prune_journal(journal_retention).await {
                            Ok(0) => {}
                            Ok(n) => info!(rows = n, "pruned journal rows past retention"),
                            Err(e) => warn!(error = %e, "journal pruning failed; will retry at the next snapshot"),
                        }
                    }));
                }
                if done.send(Ok(done_ok)).is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// Writes one batch, fencing it after its predecessor is durable; returns what the
/// session needs and whether it carried a snapshot.
async fn write(
    pg: &Pg,
    durable: &watch::Sender<i64>,
    job: Job,
) -> Result<(Done, bool), DaemonError> {
    let started = Instant::now();
    for confirm in job.confirms {
        confirm.wait().await?;
    }
    let b = &job.batch;
    let mut predecessor = durable.subscribe();
    let after_predecessor = async move {
        // The sender lives as long as every write; `wait_for` cannot fail here.
        let _ = predecessor.wait_for(|h| *h == b.expected_head).await;
    };
    let has_writes = !b.entries.is_empty() || !b.findings.is_empty() || b.snapshot.is_some();
    if has_writes {
        pg.commit_after(b, after_predecessor).await?;
    } else {
        after_predecessor.await;
    }
    durable.send_replace(b.new_head);
    let took = started.elapsed();
    let head = b.new_head;
    let snapshot = b.snapshot.is_some();
    Ok((
        Done {
            cut: job.cut,
            head,
            took,
        },
        snapshot,
    ))
}
