//! The shadow-audit daemon: RabbitMQ in, the pure engine in the middle, PostgreSQL for
//! durable state and findings, AMQP and HTTP out.
//!
//! Exactly-once effect by event sourcing: every input that changes the engine (an
//! accepted or malformed event) is appended to the journal in the same PostgreSQL
//! transaction as the findings it raised; deliveries are acked only after that commit.
//! On (re)start the engine is rebuilt from the last snapshot plus the journal after it,
//! so a redelivered message is recognised by its `tx_id` and changes nothing. Any
//! broker or database error ends the session: the in-memory engine (which may be ahead
//! of what is durable) is dropped, and the next session rebuilds it from PostgreSQL.

mod committer;
pub mod config;
pub mod gate_config;
pub mod gate_service;
pub mod health;
pub mod import;
pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::adapters::amqp::{self, Amqp, BusError, Topology};
use crate::adapters::http::{self, AppState};
use crate::adapters::postgres::{self, Batch, EntryKind, JournalEntry, JournalRow, Pg, StoreError};
use crate::core::engine::{Engine, Outcome, SNAPSHOT_FORMAT};
use crate::core::event::{MAX_EVENT_BYTES, ValidEvent};
use crate::core::finding::{Finding, Invariant};
use crate::core::policy::Policy;
use crate::core::time::Timestamp;

use committer::{Committer, Cut, Done, Job};
use config::Config;
use health::Health;
use metrics::Metrics;

/// events-v1: a batch message is at most 1 MiB and 10,000 events.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const MAX_EVENTS_PER_MESSAGE: usize = 10_000;
/// A session that ran this long before failing was healthy: retry it fast.
const RESET_BACKOFF_AFTER: Duration = Duration::from_secs(30);
/// Journal rows replayed per query when rebuilding the engine.
const REPLAY_CHUNK: i64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker closed the consumer")]
    ConsumerClosed,
    #[error("cannot rebuild the engine: {0}")]
    Restore(String),
}

/// Runs until `shutdown` is cancelled: reconnecting with bounded backoff after any
/// failure, serving HTTP throughout.
/// An idle daemon reports zero consumer lag after this long without a batch.
const IDLE_LAG_SETTLE: Duration = Duration::from_secs(1);

/// Keeps this process off transparent huge pages (`daemon.transparent_huge_pages =
/// false`, the default), as Redis does (`disable-thp`). The allocator asks for huge pages
/// (mimalloc advises them for its arenas), and the first touch of one makes the kernel
/// zero 2 MiB in the middle of whatever allocated it: measured on the bench host, ~5 ms of
/// CPU inside a single event's audit, each time the engine's tables or buffers grew into
/// fresh memory. That was most of the detection-latency tail (docs/benchmarks.md).
/// Pages already huge stay so; from now on the kernel hands out 4 KiB pages.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    match nix::sys::prctl::set_thp_disable(true) {
        Ok(()) => info!("transparent huge pages off for this process"),
        Err(e) => {
            warn!(error = %e, "could not turn transparent huge pages off; detection latency may have a longer tail")
        }
    }
}

/// After this long without a delivery, the next one first checks whether another
/// daemon of the group advanced the journal (see `Session::serve`).
const CATCH_UP_AFTER_SILENCE: Duration = Duration::from_secs(1);

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !config.daemon.transparent_huge_pages {
        disable_transparent_huge_pages();
    }
    let policy = match &config.policy.dir {
        Some(dir) => Policy::load_dir(dir)?,
        None => Policy::builtin(),
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        config.readiness.checkpoint_age_max,
        config.readiness.lag_max,
    ));
    let gate = Arc::new(gate_service::GateService::new(
        crate::gate::Gate::load(config.clone(), "the daemon config", None)?,
        metrics.clone(),
    ));
    let status_stop = shutdown.child_token();
    let status = tokio::spawn(gate.clone().run(health.clone(), status_stop.clone()));
    let http_stop = shutdown.child_token();
    let http = http::serve(
        config.http.listen,
        AppState {
            metrics: metrics.clone(),
            health: health.clone(),
            gate: gate.clone(),
            ui: console(&config)?,
        },
        http_stop.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http.listen))?;
    info!(listen = %config.http.listen, group = %config.daemon.group, queue = %config.amqp.queue, "assayer daemon starting");
    // Continuous reconciliation (issue #4), when `[reconcile] interval_ms` is set.
    let recon = tokio::spawn(crate::recon::schedule(
        config.clone(),
        metrics.clone(),
        shutdown.child_token(),
    ));

    let mut backoff = config.amqp.reconnect_backoff_min;
    loop {
        let session = Session::new(&config, &policy, &metrics, &health);
        let started = Instant::now();
        match session.run(shutdown.child_token()).await {
            Ok(()) => break,
            Err(e) => {
                if started.elapsed() > RESET_BACKOFF_AFTER {
                    backoff = config.amqp.reconnect_backoff_min;
                }
                metrics.reconnects.inc();
                metrics.broker_connected.set(0);
                metrics.database_connected.set(0);
                health.failed(e.to_string());
                warn!(
                    error = %e,
                    broker = %config::mask_url(&config.amqp.url),
                    database = %config::mask_url(&config.database.url),
                    retry_in_ms = backoff.as_millis() as u64,
                    "session ended; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.amqp.reconnect_backoff_max);
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    http_stop.cancel();
    status_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), status).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), recon).await;
    info!("assayer daemon stopped");
    Ok(())
}

/// The support console's state: a lazily connecting journal reader (the console answers
/// with an error page while PostgreSQL is away; the daemon does not wait for it).
fn console(config: &Config) -> anyhow::Result<Option<Arc<crate::adapters::ui::Ui>>> {
    if !config.ui.enabled {
        return Ok(None);
    }
    let journal = crate::adapters::journal::Journal::connect_lazy(
        &config.database.url,
        &config.daemon.group,
        config.database.pool_size_max,
        config.database.connect_timeout,
        config.database.statement_timeout,
    )?;
    Ok(Some(Arc::new(crate::adapters::ui::Ui {
        journal,
        ack_token: config.ui.ack_token.clone(),
    })))
}

/// The engine rebuilt from PostgreSQL, and where it stands in the journal.
pub struct Restored {
    pub engine: Engine,
    pub position: i64,
    pub events_at_snapshot: i64,
}

/// Rebuilds the engine: last snapshot, then every journal entry after it.
pub async fn restore(pg: &Pg, policy: &Policy) -> Result<Restored, DaemonError> {
    let (mut engine, mut position) = match pg.load_checkpoint().await? {
        Some(s) if s.format == SNAPSHOT_FORMAT as i32 => {
            let e = Engine::restore(policy.clone(), &s.bytes)
                .map_err(|e| DaemonError::Restore(e.to_string()))?;
            (e, s.position)
        }
        Some(s) => {
            warn!(
                found = s.format,
                "snapshot format changed; rebuilding from the whole journal"
            );
            (Engine::new(policy.clone()), 0)
        }
        None => (Engine::new(policy.clone()), 0),
    };
    let events_at_snapshot = position;
    let now = Timestamp::now();
    let mut scratch = Vec::new();
    loop {
        let rows = pg.journal_after(position, REPLAY_CHUNK).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let p = row.position;
            if p != position + 1 {
                return Err(DaemonError::Restore(format!(
                    "journal of group `{}` jumps from {position} to {p}: rows were pruned past the snapshot",
                    pg.group()
                )));
            }
            replay(&mut engine, &row, now, &mut scratch);
            scratch.clear(); // already stored when first raised
            position = p;
        }
    }
    Ok(Restored {
        engine,
        position,
        events_at_snapshot,
    })
}

/// Takes a journal row in as the session that wrote it did: held rows with the
/// watermark held, and the first row after a hold after resuming. A resume that
/// raised findings committed a snapshot taken after it (`Session::resume`), so a
/// resume replayed here raises none. A journal that ends held leaves the engine held:
/// the next session's resume raises what that session's would have.
fn replay(engine: &mut Engine, row: &JournalRow, now: Timestamp, out: &mut Vec<Finding>) {
    if row.held {
        engine.hold();
    } else {
        engine.resume(now, out);
    }
    engine.ingest(&row.body, now, out);
}

struct Session<'a> {
    config: &'a Config,
    policy: &'a Policy,
    metrics: &'a Metrics,
    health: &'a Health,
    topology: Topology,
}

/// What has been done since the last commit.
struct Pending {
    batch: Batch,
    /// Delivery tag to ack through once the batch is durable.
    last_tag: Option<u64>,
    /// When the oldest uncommitted delivery arrived.
    since: Option<Instant>,
    events: usize,
    /// Deliveries not yet acked.
    messages: usize,
    newest_ts: Option<Timestamp>,
    /// Confirms of the findings published since the last commit.
    confirms: Vec<amqp::Confirm>,
    /// The batch must carry a snapshot: a hold ended with findings (see
    /// [`Session::resume`]).
    snapshot_now: bool,
    /// Cut the batch even without deliveries: a hold ended (its findings, and the
    /// status row's `holding`, become durable through a commit).
    cut_now: bool,
}

impl Pending {
    fn new(head: i64) -> Pending {
        Pending {
            batch: Batch {
                expected_head: head,
                new_head: head,
                ..Batch::default()
            },
            last_tag: None,
            since: None,
            events: 0,
            messages: 0,
            newest_ts: None,
            confirms: Vec::new(),
            snapshot_now: false,
            cut_now: false,
        }
    }
}

impl<'a> Session<'a> {
    fn new(
        config: &'a Config,
        policy: &'a Policy,
        metrics: &'a Metrics,
        health: &'a Health,
    ) -> Self {
        let a = &config.amqp;
        Session {
            config,
            policy,
            metrics,
            health,
            topology: Topology {
                exchange: a.exchange.clone(),
                queue: a.queue.clone(),
                binding_keys: config.binding_keys(),
                dead_letter_exchange: a.dead_letter_exchange.clone(),
                dead_letter_queue: a.dead_letter_queue.clone(),
                findings_exchange: a.findings_exchange.clone(),
                declare: a.declare,
            },
        }
    }

    async fn run(&self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let c = self.config;
        let pg = Pg::connect(
            &postgres::ConnectOptions {
                url: &c.database.url,
                pool_size_max: c.database.pool_size_max,
                connect_timeout: c.database.connect_timeout,
                statement_timeout: c.database.statement_timeout,
            },
            &c.daemon.group,
        )
        .await?;
        pg.migrate().await?;
        self.metrics.database_connected.set(1);
        let bus = Amqp::connect(
            &c.amqp.url,
            &format!("assayer {}", c.daemon.group),
            c.amqp.operation_timeout,
        )
        .await?;
        let served = self.serve(&pg, &bus, shutdown).await;
        if served.is_err() {
            // This session's unacked deliveries go back to the queue only when its
            // connection closes. Close it before the next session consumes: left to the
            // client's drop, the broker could hand the next consumer newer messages
            // first (single-active-consumer moves on when the consumer goes, while its
            // channel still holds the deliveries), and those would come back after newer
            // events by more than the reorder window (false stream.seq_gap findings).
            bus.close().await;
        }
        served
    }

    /// Restores the engine and consumes until `shutdown` or an error.
    async fn serve(
        &self,
        pg: &Pg,
        bus: &Amqp,
        shutdown: CancellationToken,
    ) -> Result<(), DaemonError> {
        let c = self.config;
        let pg = pg.clone();
        bus.declare(&self.topology).await?;
        self.metrics.broker_connected.set(1);
        let restored = restore(&pg, self.policy).await?;
        let mut engine = restored.engine;
        // A daemon runs long enough to fill its redelivery window: claim it now, so it
        // never stalls an event to rehash (pages are touched as it fills).
        engine.reserve(usize::MAX);
        let mut snapshot_at = (restored.events_at_snapshot, Instant::now());
        info!(
            position = restored.position,
            "engine restored from PostgreSQL"
        );
        self.publish_outbox(&pg, bus).await?;

        let tag = format!("assayer-{}-{}", c.daemon.group, std::process::id());
        let consumer = bus
            .consume(&c.amqp.queue, c.amqp.prefetch_count_max, &tag)
            .await?;
        // Deliveries are stamped when they arrive, on a task of their own, so the
        // detection latency counts from receipt, including any wait while this session
        // was busy (the broker never has more than the prefetch window in flight, which
        // bounds the channel).
        let (mut deliveries, _stamping) =
            stamp_deliveries(consumer, usize::from(c.amqp.prefetch_count_max).max(1));
        info!(queue = %c.amqp.queue, prefetch = c.amqp.prefetch_count_max, consumer = %tag,
              "consumer registered; deliveries come while this daemon is the queue's single active consumer");
        self.health.connected(true, true);
        self.health.durable(Duration::ZERO);
        self.health.progress(progress(&engine, restored.position));
        let mut pending = Pending::new(restored.position);
        let mut committer = Committer::spawn(pg.clone(), c.checkpoint.journal_retention);
        let flush_messages = usize::from(c.amqp.prefetch_count_max / 2).max(1);
        let mut last_delivery: Option<Instant> = None;
        // When this session's hold of the watermark ends (set on its first delivery).
        let mut settle_until: Option<Instant> = None;
        let mut tick = tokio::time::interval(c.checkpoint.batch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Stop consuming, make what was received durable, ack, close.
                    let deadline = c.daemon.shutdown_deadline;
                    let drained = tokio::time::timeout(deadline, async {
                        self.flush(&mut engine, &mut pending, &mut snapshot_at, &mut committer, true).await?;
                        committer.close();
                        while committer.in_flight() > 0 {
                            let done = committer.next().await?;
                            self.committed(bus, done).await?;
                        }
                        Ok::<(), DaemonError>(())
                    })
                    .await;
                    match drained {
                        Ok(r) => r?,
                        Err(_) => warn!(deadline_ms = deadline.as_millis() as u64, "shutdown deadline passed; unacked work will be redelivered"),
                    }
                    bus.close().await;
                    return Ok(());
                }
                done = committer.next() => {
                    self.committed(bus, done?).await?;
                    // A cut deferred while the commit stage was full is due now.
                    if pending.cut_now
                        || pending.events >= c.checkpoint.batch_events_max
                        || pending.messages >= flush_messages
                        || pending.since.is_some_and(|s| s.elapsed() >= c.checkpoint.batch_interval)
                    {
                        self.flush(&mut engine, &mut pending, &mut snapshot_at, &mut committer, false).await?;
                    }
                }
                d = deliveries.recv() => {
                    let (received, d) = match d {
                        Some((at, Ok(d))) => (at, d),
                        Some((_, Err(e))) => return Err(BusError::from(e).into()),
                        None => return Err(DaemonError::ConsumerClosed),
                    };
                    if pending.since.is_none() {
                        // Another daemon of the group may have written the journal while
                        // this one's consumer stood by: a single-active-consumer queue
                        // delivers to one consumer, and once it is ours it stays ours
                        // until our channel closes (ending this session). So look at
                        // the head on the first delivery after a silence, not on every
                        // batch: that would put a database round trip (or a wait for a
                        // pool connection the commit stage holds) in front of detection.
                        // Only when nothing of ours is in flight can a head we did not
                        // expect mean that another daemon wrote. (The commit's head
                        // fence still catches anything else.)
                        let silent = last_delivery.is_none_or(|t: Instant| t.elapsed() >= CATCH_UP_AFTER_SILENCE);
                        if silent && committer.in_flight() == 0 {
                            self.catch_up(&pg, &mut engine, &mut pending).await?;
                        }
                        pending.since = Some(Instant::now());
                    }
                    last_delivery = Some(Instant::now());
                    let until = *settle_until.get_or_insert_with(|| {
                        self.hold(&mut engine)
                    });
                    let resume = engine.is_held() && Instant::now() >= until;
                    self.handle(bus, &mut engine, &mut pending, d, received, resume).await?;
                    // Cut the batch when it is full, and when half the prefetch window is
                    // unacked (else the broker stops delivering and the consumer idles
                    // until the timer). Findings were published on detection, so the
                    // batch interval does not delay them.
                    if pending.events >= c.checkpoint.batch_events_max
                        || pending.messages >= flush_messages
                    {
                        self.flush(&mut engine, &mut pending, &mut snapshot_at, &mut committer, false).await?;
                    }
                }
                _ = tick.tick() => {
                    // A hold ends on time even when no delivery comes (a finite stream
                    // taken in within the settle time).
                    if engine.is_held() && settle_until.is_some_and(|t| Instant::now() >= t) {
                        self.resume(bus, &mut engine, &mut pending).await?;
                        self.flush(&mut engine, &mut pending, &mut snapshot_at, &mut committer, false).await?;
                    }
                    if pending.since.is_some_and(|s| s.elapsed() >= c.checkpoint.batch_interval) {
                        self.flush(&mut engine, &mut pending, &mut snapshot_at, &mut committer, false).await?;
                    } else if pending.since.is_none() && committer.in_flight() == 0 {
                        self.health.idle(IDLE_LAG_SETTLE);
                    }
                }
            }
        }
    }

    /// If another daemon of the group (the previously active one) advanced the journal,
    /// replay what it wrote before touching anything.
    async fn catch_up(
        &self,
        pg: &Pg,
        engine: &mut Engine,
        pending: &mut Pending,
    ) -> Result<(), DaemonError> {
        let head = pg.head().await?;
        let mut position = pending.batch.expected_head;
        if head == position {
            return Ok(());
        }
        info!(
            from = position,
            to = head,
            "journal advanced by another daemon of this group; catching up"
        );
        let now = Timestamp::now();
        let mut scratch = Vec::new();
        while position < head {
            let rows = pg.journal_after(position, REPLAY_CHUNK).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                replay(engine, &row, now, &mut scratch);
                scratch.clear();
                position = row.position;
            }
        }
        *pending = Pending::new(position);
        Ok(())
    }

    /// Starts the session's hold of the watermark ([`Engine::hold`]), on its first
    /// delivery: until the returned deliveries of the session before are in, nothing
    /// is judged by arrival order. Returns when the hold ends.
    fn hold(&self, engine: &mut Engine) -> Instant {
        let settle = self.config.amqp.redelivery_settle;
        if !settle.is_zero() {
            engine.hold();
        }
        if engine.is_held() {
            info!(
                settle_ms = settle.as_millis() as u64,
                "holding order-dependent checks while the broker returns earlier deliveries"
            );
        }
        Instant::now() + settle
    }

    /// Ends the session's hold ([`Engine::resume`]): publishes what it releases and adds
    /// it to the pending batch. A resume that raised findings makes that batch carry a
    /// snapshot: replay can then never meet the journal rows held before it, so the
    /// resume (and its findings) happen once, whatever crashes when.
    async fn resume(
        &self,
        bus: &Amqp,
        engine: &mut Engine,
        pending: &mut Pending,
    ) -> Result<(), DaemonError> {
        let mut out = Vec::new();
        engine.resume(Timestamp::now(), &mut out);
        info!(
            findings = out.len(),
            reorder_depth = engine.reorder_depth(),
            "hold ended; order-dependent checks resumed"
        );
        if !out.is_empty() {
            pending.snapshot_now = true;
        }
        pending.cut_now = true;
        self.emit(bus, pending, out, None).await
    }

    /// Takes one delivery in, `received` when it arrived. With `resume`, first ends the
    /// session's hold.
    async fn handle(
        &self,
        bus: &Amqp,
        engine: &mut Engine,
        pending: &mut Pending,
        d: lapin::message::Delivery,
        received: Instant,
        resume: bool,
    ) -> Result<(), DaemonError> {
        self.metrics.messages_received.inc();
        let content_type = d
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_string());
        let ndjson = amqp::is_ndjson(content_type.as_deref());
        if resume {
            self.resume(bus, engine, pending).await?;
        }
        let now = Timestamp::now();
        let mut out: Vec<Finding> = Vec::new();
        let held = engine.is_held();
        let limit = if ndjson {
            MAX_MESSAGE_BYTES
        } else {
            MAX_EVENT_BYTES
        };
        let lines: Vec<&[u8]> = if ndjson {
            d.data
                .split(|b| *b == b'\n')
                .map(<[u8]>::trim_ascii)
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            vec![d.data.trim_ascii()]
        };
        let message_problem = if d.data.len() > limit {
            Some(format!(
                "message is {} bytes; events-v1 allows at most {limit} for {}",
                d.data.len(),
                if ndjson {
                    "an NDJSON batch"
                } else {
                    "one event"
                }
            ))
        } else if lines.len() > MAX_EVENTS_PER_MESSAGE {
            Some(format!(
                "message holds {} events; events-v1 allows at most {MAX_EVENTS_PER_MESSAGE}",
                lines.len()
            ))
        } else {
            None
        };
        if let Some(reason) = message_problem {
            // The whole message is set aside: one finding, one dead letter.
            engine.malformed_message(&d.data, &reason, now, &mut out);
            bus.dead_letter(
                &self.topology,
                &d.data,
                content_type.as_deref().unwrap_or(amqp::CONTENT_JSON),
                &reason,
            )
            .await?;
            self.metrics.dead_lettered.inc();
            self.metrics.outcome(Outcome::Malformed);
        } else {
            for line in lines {
                let position = pending.batch.new_head + 1;
                let mut entry = None;
                let before = out.len();
                let outcome = engine.ingest_inspect(line, now, &mut out, |v| {
                    entry = Some(journal_entry(position, v, line));
                });
                self.metrics.outcome(outcome);
                pending.events += 1;
                match outcome {
                    Outcome::Accepted => {
                        let mut e = entry.expect("accepted events are inspected");
                        e.held = held;
                        if let Some(ts) = e.ts_us {
                            let ts = Timestamp(ts.saturating_mul(1_000));
                            pending.newest_ts = Some(pending.newest_ts.map_or(ts, |t| t.max(ts)));
                        }
                        pending.batch.entries.push(e);
                        pending.batch.new_head = position;
                    }
                    Outcome::Malformed => {
                        let f = out[before..]
                            .iter()
                            .find(|f| f.invariant == Invariant::Malformed)
                            .expect("a malformed outcome raises event.malformed");
                        let reason = f.evidence["reason"]
                            .as_str()
                            .unwrap_or("malformed")
                            .to_string();
                        let mut e = malformed_entry(position, f, line);
                        e.held = held;
                        pending.batch.entries.push(e);
                        pending.batch.new_head = position;
                        bus.dead_letter(&self.topology, line, amqp::CONTENT_JSON, &reason)
                            .await?;
                        self.metrics.dead_lettered.inc();
                    }
                    Outcome::Redelivered | Outcome::Conflict | Outcome::Stale => {}
                }
            }
        }
        self.emit(bus, pending, out, Some(received)).await?;
        pending.last_tag = Some(d.delivery_tag);
        pending.messages += 1;
        Ok(())
    }

    /// Findings out at once: metrics, a WARN line, the findings exchange; then into the
    /// pending batch. `received`: when the delivery that raised them arrived (for the
    /// detection latency).
    async fn emit(
        &self,
        bus: &Amqp,
        pending: &mut Pending,
        out: Vec<Finding>,
        received: Option<Instant>,
    ) -> Result<(), DaemonError> {
        for f in &out {
            self.metrics.finding(f);
            warn!(
                invariant = %f.invariant, severity = %f.severity, realm = %f.realm,
                system = f.system.as_deref().unwrap_or("-"), tx_id = f.tx_id.as_deref().unwrap_or("-"),
                subject = f.subject.as_deref().unwrap_or("-"), fingerprint = %f.fingerprint,
                "{}", f.message
            );
            // Published on detection, before the batch commits: at-least-once (a crash
            // before the commit redelivers the event, which raises the same finding
            // with the same fingerprint), and detection latency is one send, not a
            // database commit. The confirms are awaited before the batch is handed to
            // the commit stage, which stores the findings as published.
            let confirm = bus
                .publish_finding_unconfirmed(&self.topology.findings_exchange, f)
                .await?;
            pending.confirms.push(confirm);
            if let Some(r) = received {
                self.metrics
                    .detection_latency_seconds
                    .observe(r.elapsed().as_secs_f64());
            }
        }
        pending.batch.findings.extend(out);
        Ok(())
    }

    /// Cuts the pending batch and hands it to the commit stage (its findings were
    /// published on detection; the commit stage awaits their confirms); its deliveries
    /// are acked when it is durable ([`Session::committed`]). While the commit stage is
    /// full the cut is deferred and the batch keeps growing (fewer, larger commits when
    /// the database is the bottleneck), so the session goes on detecting instead of
    /// waiting; it waits only once the batch is twice `batch_events_max`, or for the
    /// final cut.
    async fn flush(
        &self,
        engine: &mut Engine,
        pending: &mut Pending,
        snapshot_at: &mut (i64, Instant),
        committer: &mut Committer,
        final_flush: bool,
    ) -> Result<(), DaemonError> {
        if pending.last_tag.is_none() && !pending.cut_now {
            return Ok(());
        }
        let cp = &self.config.checkpoint;
        if !final_flush && committer.is_full() && pending.events < 2 * cp.batch_events_max {
            return Ok(());
        }
        let head = pending.batch.new_head;
        let due = (head - snapshot_at.0) as u64 >= cp.snapshot_interval_events
            || (head > snapshot_at.0 && snapshot_at.1.elapsed() >= cp.snapshot_interval)
            || (final_flush && head > snapshot_at.0)
            || pending.snapshot_now;
        let mut batch = std::mem::take(&mut pending.batch);
        if due {
            let bytes = engine.snapshot();
            self.metrics.snapshot_bytes.set(bytes.len() as i64);
            batch.snapshot = Some(postgres::Snapshot {
                position: head,
                format: SNAPSHOT_FORMAT as i32,
                bytes,
                events_accepted: engine.stats().accepted as i64,
            });
            *snapshot_at = (head, Instant::now());
        }
        let job = Job {
            confirms: std::mem::take(&mut pending.confirms),
            batch,
            cut: Cut {
                last_tag: pending.last_tag,
                events: pending.events,
                newest_ts: pending.newest_ts,
                progress: progress(engine, head),
            },
        };
        *pending = Pending::new(head);
        committer.submit(job).await?;

        self.metrics
            .reorder_buffer_events
            .set(engine.reorder_depth() as i64);
        let wall = Timestamp::now();
        for (realm, system, _, last_ts) in engine.streams() {
            self.metrics
                .stream_lag_seconds
                .get_or_create(&metrics::StreamLabels {
                    realm: realm.to_string(),
                    system: system.to_string(),
                })
                .set(wall.since(last_ts).as_secs_f64());
        }
        Ok(())
    }

    /// A batch is durable: ack its deliveries and report the progress.
    async fn committed(&self, bus: &Amqp, done: Done) -> Result<(), DaemonError> {
        let Done { cut, head, took } = done;
        if let Some(tag) = cut.last_tag {
            bus.ack_through(tag).await?;
        }
        self.metrics.checkpoint_seconds.observe(took.as_secs_f64());
        self.metrics.batch_events.observe(cut.events as f64);
        self.metrics.journal_position.set(head);
        let lag = cut
            .newest_ts
            .map_or(Duration::ZERO, |t| Timestamp::now().since(t));
        self.metrics.processing_lag_seconds.set(lag.as_secs_f64());
        self.health.durable(lag);
        self.health.progress(cut.progress);
        Ok(())
    }

    /// Publishes findings that were stored but not published (a crash between commit
    /// and publish).
    async fn publish_outbox(&self, pg: &Pg, bus: &Amqp) -> Result<(), DaemonError> {
        loop {
            let findings = pg.unpublished_findings(1_000).await?;
            if findings.is_empty() {
                return Ok(());
            }
            let mut done = Vec::with_capacity(findings.len());
            for f in &findings {
                bus.publish_finding(&self.topology.findings_exchange, f)
                    .await?;
                done.push(f.fingerprint.clone());
            }
            pg.mark_published(&done).await?;
        }
    }
}

/// Where the engine stands, for the status row the deploy gate reads.
/// A delivery with the instant it reached this process.
type Stamped = (Instant, Result<lapin::message::Delivery, lapin::Error>);

/// Moves `consumer` onto a task that stamps each delivery as it arrives and hands it on
/// through a channel of `capacity`. The task ends when the consumer does, when the
/// receiver is dropped, or when the returned handle is (so a session never leaves it
/// behind).
fn stamp_deliveries(
    mut consumer: lapin::Consumer,
    capacity: usize,
) -> (
    tokio::sync::mpsc::Receiver<Stamped>,
    tokio_util::task::AbortOnDropHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let task = tokio::spawn(async move {
        while let Some(d) = consumer.next().await {
            if tx.send((Instant::now(), d)).await.is_err() {
                break;
            }
        }
    });
    (rx, tokio_util::task::AbortOnDropHandle::new(task))
}

fn progress(engine: &Engine, head: i64) -> health::Progress {
    health::Progress {
        journal_position: head,
        reorder_depth: engine.reorder_depth() as u64,
        holding: engine.is_held(),
        streams: engine
            .streams()
            .map(
                |(realm, system, _, last_ts)| crate::core::gate::StreamStatus {
                    realm: realm.to_string(),
                    system: system.to_string(),
                    last_ts,
                },
            )
            .collect(),
    }
}

/// The journal row of a malformed input (set aside; its `seq` is accounted for), from
/// its `event.malformed` finding.
pub fn malformed_entry(position: i64, f: &Finding, line: &[u8]) -> JournalEntry {
    JournalEntry {
        position,
        kind: EntryKind::Malformed,
        tx_id: f.tx_id.clone(),
        realm: Some(f.realm.clone()),
        system: f.system.clone(),
        seq: f.seq.map(|s| s as i64),
        ts_us: None,
        event_kind: None,
        actor: None,
        body: line.to_vec(),
        items: Vec::new(),
        postings: Vec::new(),
        held: false,
    }
}

/// The journal row of an accepted event, with its item and posting index rows.
pub fn journal_entry(position: i64, v: &ValidEvent<'_>, body: &[u8]) -> JournalEntry {
    let w = &v.wire;
    JournalEntry {
        position,
        kind: EntryKind::Event,
        tx_id: Some(w.tx_id.to_string()),
        realm: Some(v.realm().to_string()),
        system: Some(w.system.to_string()),
        seq: Some(w.seq as i64),
        ts_us: Some(v.ts.0 / 1_000),
        event_kind: Some(w.kind.to_string()),
        actor: w.actor.as_deref().map(str::to_string),
        body: body.to_vec(),
        items: w
            .items
            .iter()
            .map(|m| (m.item.to_string(), m.from.to_string(), m.to.to_string()))
            .collect(),
        postings: w
            .postings
            .iter()
            .map(|p| (p.account.to_string(), p.asset.to_string(), p.delta))
            .collect(),
        held: false,
    }
}
