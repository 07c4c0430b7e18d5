//! Reconciliation wiring (issue #4): the expected state from the engine, each store
//! read gently and digested into a Merkle tree of key-hash buckets, only differing
//! leaves fetched row by row, every candidate re-checked after a grace period, findings
//! stored and the run recorded in `recon_runs`. The pure logic is
//! [`crate::core::recon`] (and [`crate::core::summary`] for PostgreSQL stores in
//! summary mode, where the database computes the bucket digests); the store readers are
//! `adapters::{recon_pg, redis}`.
//!
//! Entry point for the CLI, the daemon's schedule and the deploy gate: [`run`].

pub mod config;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::adapters::postgres::{ConnectOptions, Pg};
use crate::adapters::recon_pg::{
    Batch, BatchSender, PgStore, ReadError, ReadLimits, ReadStats, ReconDb, RunRecord,
};
use crate::adapters::redis::{RedisError, RedisStore};
use crate::core::engine::Engine;
use crate::core::event::is_world;
use crate::core::finding::Finding;
use crate::core::merkle::Tree;
use crate::core::policy::Policy;
use crate::core::recon::{
    self as core_recon, Candidate, Expected, FindingContext, Ownership, Row, RowKey, RowRef,
    Scalar, Space,
};
use crate::core::summary::{self, Salt};
use crate::core::time::Timestamp;
use crate::daemon::config::Config;

use config::{ReconLimits, StoreConfig, StoreKind, StoreMode};

#[derive(Debug, thiserror::Error)]
pub enum ReconError {
    #[error("{0}")]
    Store(#[from] ReadError),
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("assayer database: {0}")]
    Database(String),
    #[error("events file {path}: {message}")]
    Events { path: PathBuf, message: String },
    #[error("policy: {0}")]
    Policy(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "store `{store}`: more than {max} rows in differing leaves; the store is too far from the stream to list row by row"
    )]
    TooManyCandidates { store: String, max: usize },
}

/// The state the stream implies, as a live source: the integration tests and embedders
/// that run their own engine give one; `assayer reconcile` uses the journal or a file.
pub trait LiveExpected: Send + Sync {
    /// The state at the current watermark; its `watermark_position` is the source's
    /// own mark, handed back to [`LiveExpected::history`]. Shared, not copied: a
    /// world's state is the largest thing a run touches.
    fn snapshot(&self) -> Arc<Expected>;
    /// Every value the key took after `since` in the store's slice (`own`), oldest
    /// first, the current one last (empty when it has not changed since).
    fn history(&self, realm: &str, key: &RowKey, own: &Ownership, since: i64) -> Vec<Vec<Scalar>>;
}

/// Where the expected state comes from.
#[derive(Clone)]
pub enum Source {
    /// The daemon group's latest checkpoint plus journal tail, in `[database]`.
    Journal,
    /// Audit an NDJSON events file offline.
    Events(PathBuf),
    /// A live source.
    Live(Arc<dyn LiveExpected>),
}

/// Whether to store findings and record the run in the assayer database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Yes,
    No,
}

#[derive(Clone)]
pub struct ReconOptions {
    pub source: Source,
    /// Only these systems' stores (empty: all).
    pub systems: Vec<String>,
    pub record: Record,
    /// Overrides `[reconcile] grace_ms` (e.g. `--grace-ms 0` for an offline check).
    pub grace: Option<Duration>,
    /// Rows read so far, for a progress bar.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl ReconOptions {
    /// Runs against the journal are recorded; offline ones are not.
    pub fn new(source: Source) -> ReconOptions {
        ReconOptions {
            record: if matches!(source, Source::Journal) {
                Record::Yes
            } else {
                Record::No
            },
            source,
            systems: Vec::new(),
            grace: None,
            progress: None,
        }
    }
}

/// One store's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    pub store: String,
    pub system: String,
    pub mode: StoreMode,
    pub rows_compared: u64,
    pub bytes_read: u64,
    pub queries: u64,
    pub differing_leaves: usize,
    /// Differing leaves that neither the kept rows nor a keyed read explained, read
    /// again by a second pass over the store (pull mode; summary mode's pass 2 is not
    /// counted).
    pub reread_leaves: usize,
    pub candidates: usize,
    pub divergent_keys: usize,
    /// How a PostgreSQL store's pull was cut: `pages` (its query has a `ctid`) or `key
    /// ranges`; none for summary mode and Redis.
    pub chunks: Option<&'static str>,
    /// Time the reads paused for a busy database (PostgreSQL: after a second chunk in
    /// a row that the database was slow on).
    pub paused_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconReport {
    pub outcome: Outcome,
    pub findings: Vec<Finding>,
    pub stores: Vec<StoreReport>,
    pub rows_compared: u64,
    pub bytes_read: u64,
    pub queries: u64,
    pub elapsed_ms: u64,
    pub watermark_ts: Option<String>,
    pub watermark_position: Option<i64>,
    /// The `recon_runs.id` when recorded.
    pub run_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Clean,
    Divergent,
}

/// A reader of one store.
enum Reader {
    Pg(PgStore),
    Redis(RedisStore),
}

impl Reader {
    async fn open(s: &StoreConfig, l: &ReconLimits) -> Result<Reader, ReconError> {
        Ok(match s.kind {
            StoreKind::Postgres => Reader::Pg(
                PgStore::connect(
                    &s.name,
                    &s.url,
                    s.balances_query.clone(),
                    s.items_query.clone(),
                    ReadLimits {
                        statement_timeout: l.statement_timeout,
                        lock_timeout: l.lock_timeout,
                        connect_timeout: l.connect_timeout,
                        concurrent_queries_max: 1,
                        target_query: l.target_query,
                        chunk_rows_min: l.chunk_rows_min,
                        chunk_rows_max: l.chunk_rows_max,
                        summary_target_query: l.summary_target_query,
                        summary_chunk_rows_max: l.summary_chunk_rows_max,
                    },
                )
                .await?,
            ),
            StoreKind::Redis => Reader::Redis(
                RedisStore::connect(
                    &s.name,
                    &s.url,
                    s.key_prefix.as_deref().unwrap_or_default(),
                    l.scan_count,
                    l.redis_timeout,
                )
                .await?,
            ),
        })
    }

    /// Every row of `space`, sent to `out` in batches (PostgreSQL: text COPY rows;
    /// Redis: a SCAN page of rows).
    /// Returns the read's counters and, for PostgreSQL, how its chunks were cut.
    async fn pull(
        &self,
        space: Space,
        out: &BatchSender,
    ) -> Result<(ReadStats, Option<&'static str>), ReconError> {
        Ok(match self {
            Reader::Pg(p) => {
                let (stats, plan) = p.pull(space, out).await?;
                (stats, Some(plan.chunks()))
            }
            Reader::Redis(r) => (r.scan(out).await?, None),
        })
    }

    /// The rows the store holds for `keys`, all of one space.
    async fn lookup_many(
        &self,
        space: Space,
        keys: &[RowKey],
    ) -> Result<(Vec<Row>, ReadStats), ReconError> {
        Ok(match self {
            Reader::Pg(p) => p.lookup_many(space, keys).await?,
            Reader::Redis(r) => {
                let mut out = Vec::new();
                let mut stats = ReadStats::default();
                for k in keys {
                    let (values, st) = r.lookup(k).await?;
                    stats.add(st);
                    out.extend(values.into_iter().map(|value| Row {
                        key: k.clone(),
                        value,
                    }));
                }
                (out, stats)
            }
        })
    }

    async fn lookup(&self, key: &RowKey) -> Result<(Vec<Scalar>, ReadStats), ReconError> {
        Ok(match self {
            Reader::Pg(p) => p.lookup(key).await?,
            Reader::Redis(r) => r.lookup(key).await?,
        })
    }
}

/// The expected state and how to ask for a key's newer value.
enum ExpectedSource {
    Static(Expected),
    Journal {
        expected: Expected,
        db: ReconDb,
        group: String,
    },
    Live(Arc<dyn LiveExpected>, Arc<Expected>),
}

impl ExpectedSource {
    fn expected(&self) -> &Expected {
        match self {
            ExpectedSource::Static(e) => e,
            ExpectedSource::Journal { expected, .. } => expected,
            ExpectedSource::Live(_, e) => e,
        }
    }

    /// The values the stream gave the key from the watermark on, oldest first: the
    /// values `at_watermark` (the candidate's expected values: no key look-up in the
    /// expected state, whose index would cost 8 bytes a row) first, the newest last.
    async fn history(
        &self,
        realm: &str,
        key: &RowKey,
        own: &Ownership,
        at_watermark: &[Scalar],
    ) -> Result<Vec<Vec<Scalar>>, ReconError> {
        let mut out = vec![at_watermark.to_vec()];
        match self {
            ExpectedSource::Static(_) => {}
            ExpectedSource::Live(l, e) => {
                out.extend(l.history(realm, key, own, e.watermark_position.unwrap_or(0)));
            }
            ExpectedSource::Journal {
                expected,
                db,
                group,
            } => {
                let at = expected.watermark_position.unwrap_or(0);
                let db_err = |e: sqlx::Error| ReconError::Database(e.to_string());
                match key {
                    RowKey::Balance { account, asset } => {
                        if !own.owns_account(account) {
                            return Ok(out);
                        }
                        let mut v = match at_watermark.first() {
                            Some(Scalar::Int(v)) => *v,
                            _ => 0,
                        };
                        for d in db
                            .balance_deltas_after(group, realm, account, asset, at)
                            .await
                            .map_err(db_err)?
                        {
                            v += d;
                            out.push(if v == 0 {
                                Vec::new()
                            } else {
                                vec![Scalar::Int(v)]
                            });
                        }
                    }
                    RowKey::Item { item } => {
                        for to in db
                            .item_moves_after(group, realm, item, at)
                            .await
                            .map_err(db_err)?
                        {
                            out.push(if is_world(&to) || !own.owns_location(&to) {
                                Vec::new()
                            } else {
                                vec![Scalar::Str(to)]
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Runs one reconciliation of every configured store (or `options.systems`' stores)
/// against the expected state. Divergences are findings in the report (never an
/// `Err`); an `Err` means the auditor could not finish (a store unreachable, a query
/// that failed or timed out): then the run is recorded as `failed`.
pub async fn run(config: &Config, options: &ReconOptions) -> Result<ReconReport, ReconError> {
    let started_at = Timestamp::now();
    let clock = Instant::now();
    let stores: Vec<&StoreConfig> = config
        .recon
        .stores
        .iter()
        .filter(|s| options.systems.is_empty() || options.systems.contains(&s.system))
        .collect();
    if stores.is_empty() {
        return Err(ReconError::Config(if config.recon.stores.is_empty() {
            "no [[store]] configured".into()
        } else {
            format!("no store of system(s) {}", options.systems.join(", "))
        }));
    }
    let systems: Vec<String> = {
        let mut s: Vec<String> = stores.iter().map(|s| s.system.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let want_db = matches!(options.source, Source::Journal) || options.record == Record::Yes;
    let db = if want_db {
        let db = ReconDb::connect(&config.database.url, config.database.connect_timeout)
            .await
            .map_err(|e| ReconError::Database(e.to_string()))?;
        db.migrate()
            .await
            .map_err(|e| ReconError::Database(e.to_string()))?;
        Some(db)
    } else {
        None
    };
    let result = reconcile(config, options, &stores, db.as_ref()).await;
    let finished_at = Timestamp::now();
    let group = config.daemon.group.clone();
    match result {
        Ok(mut report) => {
            report.elapsed_ms = clock.elapsed().as_millis() as u64;
            if let (Some(db), Record::Yes) = (&db, options.record) {
                let pg = connect_pg(config).await?;
                pg.store_findings(&report.findings)
                    .await
                    .map_err(|e| ReconError::Database(e.to_string()))?;
                let rec = RunRecord {
                    group,
                    started_at,
                    finished_at,
                    watermark_ts: report
                        .watermark_ts
                        .as_deref()
                        .and_then(|t| Timestamp::parse_rfc3339(t).ok()),
                    watermark_position: report.watermark_position,
                    systems,
                    outcome: match report.outcome {
                        Outcome::Clean => "clean",
                        Outcome::Divergent => "divergent",
                    },
                    rows_compared: report.rows_compared as i64,
                    divergent_keys: report.findings.len() as i64,
                    bytes_read: report.bytes_read as i64,
                    queries: report.queries as i64,
                    error: None,
                    summary: serde_json::json!({ "stores": report.stores, "elapsed_ms": report.elapsed_ms }),
                };
                report.run_id = Some(
                    db.record_run(&rec)
                        .await
                        .map_err(|e| ReconError::Database(e.to_string()))?,
                );
            }
            Ok(report)
        }
        Err(e) => {
            if let (Some(db), Record::Yes) = (&db, options.record) {
                let rec = RunRecord {
                    group,
                    started_at,
                    finished_at,
                    watermark_ts: None,
                    watermark_position: None,
                    systems,
                    outcome: "failed",
                    rows_compared: 0,
                    divergent_keys: 0,
                    bytes_read: 0,
                    queries: 0,
                    error: Some(e.to_string()),
                    summary: serde_json::json!({}),
                };
                // The run's own error is the one to report; a failure to record it is logged.
                if let Err(re) = db.record_run(&rec).await {
                    tracing::warn!(error = %re, "cannot record the failed reconciliation run");
                }
            }
            Err(e)
        }
    }
}

async fn connect_pg(config: &Config) -> Result<Pg, ReconError> {
    Pg::connect(
        &ConnectOptions {
            url: &config.database.url,
            pool_size_max: 2,
            connect_timeout: config.database.connect_timeout,
            statement_timeout: config.database.statement_timeout,
        },
        &config.daemon.group,
    )
    .await
    .map_err(|e| ReconError::Database(e.to_string()))
}

fn load_policy(config: &Config) -> Result<Policy, ReconError> {
    match &config.policy.dir {
        Some(dir) => Policy::load_dir(dir).map_err(|e| ReconError::Policy(e.to_string())),
        None => Ok(Policy::builtin()),
    }
}

/// The expected state from an events file: audited offline, every event applied.
fn expected_from_file(path: &PathBuf, policy: Policy) -> Result<Expected, ReconError> {
    let err = |message: String| ReconError::Events {
        path: path.clone(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut engine = Engine::new(policy);
    if let Ok(m) = f.metadata() {
        engine.reserve(crate::ndjson::events_in(m.len()));
    }
    let reader = std::io::BufReader::with_capacity(1 << 20, f);
    // Stream findings are `assayer audit`'s business: only the state is kept.
    crate::ndjson::audit_stream(&mut engine, reader, |_| {}).map_err(|e| err(e.to_string()))?;
    Ok(Expected::from_engine(&engine, None))
}

async fn expected_source(
    config: &Config,
    options: &ReconOptions,
    db: Option<&ReconDb>,
) -> Result<ExpectedSource, ReconError> {
    Ok(match &options.source {
        Source::Events(path) => {
            let policy = load_policy(config)?;
            let path = path.clone();
            let e = tokio::task::spawn_blocking(move || expected_from_file(&path, policy))
                .await
                .map_err(|e| ReconError::Config(format!("the audit thread failed: {e}")))??;
            ExpectedSource::Static(e)
        }
        Source::Live(l) => ExpectedSource::Live(l.clone(), l.snapshot()),
        Source::Journal => {
            let policy = load_policy(config)?;
            let pg = connect_pg(config).await?;
            let restored = crate::daemon::restore(&pg, &policy)
                .await
                .map_err(|e| ReconError::Database(e.to_string()))?;
            let mut engine = restored.engine;
            let mut out = Vec::new();
            // Apply what the reorder window still holds: the state at the journal head.
            engine.finish(Timestamp::now(), &mut out);
            ExpectedSource::Journal {
                expected: Expected::from_engine(&engine, Some(restored.position)),
                db: db.cloned().ok_or_else(|| {
                    ReconError::Config("the journal source needs [database]".into())
                })?,
                group: config.daemon.group.clone(),
            }
        }
    })
}

async fn reconcile(
    config: &Config,
    options: &ReconOptions,
    stores: &[&StoreConfig],
    db: Option<&ReconDb>,
) -> Result<ReconReport, ReconError> {
    let limits = &config.recon.limits;
    let source = Arc::new(expected_source(config, options, db).await?);
    let grace = options.grace.unwrap_or(limits.grace);
    // Fresh per run: summary digests cannot be anticipated by whoever writes the rows.
    let salt = Salt::from_bytes(rand::random());
    // One permit per query in flight on a host; a store issues one query at a time and
    // holds its permit while reading, never while it waits out the grace period.
    let mut hosts: BTreeMap<String, Arc<Semaphore>> = BTreeMap::new();
    let mut tasks = Vec::new();
    for s in stores {
        let host = host_of(&s.url);
        let sem = hosts
            .entry(host)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    limits.concurrent_queries_per_host_max as usize,
                ))
            })
            .clone();
        let s = (*s).clone();
        let limits = limits.clone();
        let source = source.clone();
        let progress = options.progress.clone();
        let salt = salt.clone();
        tasks.push(tokio::spawn(async move {
            reconcile_store(&s, &limits, &source, &salt, grace, progress, &sem).await
        }));
    }
    let mut per_store = Vec::new();
    for t in tasks {
        per_store.push(
            t.await
                .map_err(|e| ReconError::Config(format!("a store task failed: {e}")))??,
        );
    }
    let expected = source.expected();
    let now = Timestamp::now();
    let mut findings = Vec::new();
    let mut reports = Vec::new();
    for (s, (report, confirmed)) in stores.iter().zip(per_store) {
        for c in confirmed {
            let last = match (db, &options.source) {
                (Some(db), Source::Journal) => db
                    .last_transactions(
                        &config.daemon.group,
                        &s.realm,
                        &c.key,
                        limits.last_transactions_max,
                    )
                    .await
                    .map_err(|e| ReconError::Database(e.to_string()))?,
                _ => serde_json::json!([]),
            };
            let cx = FindingContext {
                store: &s.name,
                system: &s.system,
                realm: &s.realm,
                watermark_ts: expected.watermark_ts,
                watermark_position: expected.watermark_position,
                detected_at: now,
            };
            findings.push(core_recon::to_finding(&c, &cx, last));
        }
        reports.push(report);
    }
    let sum = |f: fn(&StoreReport) -> u64| reports.iter().map(f).sum::<u64>();
    Ok(ReconReport {
        outcome: if findings.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Divergent
        },
        rows_compared: sum(|r| r.rows_compared),
        bytes_read: sum(|r| r.bytes_read),
        queries: sum(|r| r.queries),
        findings,
        stores: reports,
        elapsed_ms: 0,
        watermark_ts: expected.watermark_ts.map(|t| t.to_rfc3339()),
        watermark_position: expected.watermark_position,
        run_id: None,
    })
}

/// `scheme://user:pw@host:port/db` → `host:port` (the unit of the concurrency cap).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

/// Rows hashed in parallel once a batch holds this many (fewer: not worth the threads).
const PARALLEL_ROWS: usize = 4_096;

/// Read batches that may wait for the hashing (~512 KB each: 64 MB), so the store keeps
/// sending while the expected side is digested.
const BATCHES_AHEAD: usize = 128;

/// Reads every row of `space` on this task while the blocking pool first runs `prepare`,
/// then hands `take` each batch's rows as it arrives: the store's sending, the reading
/// and the hashing overlap, and no row is taken before `prepare` is done. Returns what
/// `take` built, the read's counters and how its chunks were cut (PostgreSQL). A bad row
/// stops both sides with its error.
async fn pull_through<S: Send + 'static>(
    reader: &Reader,
    store: &str,
    space: Space,
    prepare: impl FnOnce() -> S + Send + 'static,
    mut take: impl FnMut(&mut S, &[RowRef<'_>]) + Send + 'static,
) -> Result<(S, ReadStats, Option<&'static str>), ReconError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(BATCHES_AHEAD);
    let store = store.to_string();
    let worker = tokio::task::spawn_blocking(move || -> Result<S, ReadError> {
        let mut state = prepare();
        while let Some(batch) = rx.blocking_recv() {
            match batch {
                Batch::Copy(mut tuples) => {
                    let rows = tuples.rows().map_err(|message| ReadError::Data {
                        store: store.clone(),
                        message,
                    })?;
                    take(&mut state, &rows);
                }
                Batch::Rows(rows) => {
                    let refs: Vec<RowRef<'_>> = rows.iter().filter_map(Row::as_ref).collect();
                    take(&mut state, &refs);
                }
            }
        }
        Ok(state)
    });
    let read = reader.pull(space, &tx).await;
    drop(tx);
    // The worker's error first: the reader only saw it stop taking rows.
    let state = worker
        .await
        .map_err(|e| ReconError::Config(format!("the hashing thread failed: {e}")))??;
    let (stats, chunks) = read?;
    Ok((state, stats, chunks))
}

/// Pass 1 of a pull: both trees, the expected rows' filter, and the store rows the
/// filter never saw.
struct StoreSide {
    ours: ExpectedDigest,
    theirs: Tree,
    kept: Vec<Row>,
}

/// Hashes a batch of rows in parallel and adds them to the tree. With `expected`, the
/// rows whose hashes the filter has never seen (certainly not in the expected state)
/// are copied into `kept`.
fn digest_rows(
    tree: &mut Tree,
    rows: &[RowRef<'_>],
    expected: Option<&ExpectedRows>,
    kept: &mut Vec<Row>,
) {
    let parallel = rows.len() >= PARALLEL_ROWS;
    let hashed = hash_batch(rows, tree.depth());
    // The filter is probed in a loop of its own, not between two hashings: each probe
    // is a cache miss, and a loop that fetches blocks ahead keeps many in flight.
    let unexpected: Vec<bool> = match expected {
        None => Vec::new(),
        Some(f) if parallel => hashed
            .par_chunks(4_096)
            .flat_map_iter(|c| f.unexpected(c))
            .collect(),
        Some(f) => f.unexpected(&hashed),
    };
    for (b, h) in &hashed {
        tree.add_hashed(*b, h);
    }
    for (r, _) in rows.iter().zip(&unexpected).filter(|(_, keep)| **keep) {
        kept.push(r.to_row());
    }
}

/// The bucket and hash of each row, many rows per blake3 pass, and the passes spread
/// over the cores for a large batch.
fn hash_batch(rows: &[RowRef<'_>], depth: u8) -> Vec<(usize, [u8; 32])> {
    /// Rows a parallel task hashes: enough that the task's cost vanishes.
    const TASK_ROWS: usize = 1_024;
    let mut out = vec![(0, [0; 32]); rows.len()];
    if rows.len() >= PARALLEL_ROWS {
        out.par_chunks_mut(TASK_ROWS)
            .zip(rows.par_chunks(TASK_ROWS))
            .for_each(|(o, r)| RowRef::hash_many(r, depth, o));
    } else {
        RowRef::hash_many(rows, depth, &mut out);
    }
    out
}

/// A filter of the expected rows' hashes: a blocked Bloom filter (no false negatives)
/// of `filter_bits_per_row` (default 20) bits a row. Each row sets [`FILTER_BITS`] bits
/// inside one 64-byte block, so an insert or a probe is one cache miss on a filter of
/// millions of rows, not one a bit as in a classic Bloom filter (fastbloom's, used
/// before: 4 probes over 20 bits a row had the expected side's digest wait on memory
/// for half its time). At 20 bits a row, ~0.05% false positives (tested below); each
/// false positive among the changed or inserted rows sends its leaf to a keyed read or
/// a second pass. At most [`FILTER_BYTES_MAX`]: past ~27M rows a slice gets fewer bits
/// a row, so the run's memory stays bounded whatever the table's size.
///
/// Written here rather than taken from a crate: the crates of blocked ("split block")
/// filters hash their keys themselves, and these keys are blake3 hashes already —
/// every bit the filter needs is in them.
struct ExpectedRows {
    blocks: Vec<FilterBlock>,
}

/// One cache line of the filter.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct FilterBlock([u64; 8]);

/// Bits a row sets in its block.
const FILTER_BITS: usize = 6;

/// The row filter's most memory (64 MB: 20 bits a row up to ~27M rows).
const FILTER_BYTES_MAX: usize = 64 << 20;

impl ExpectedRows {
    fn new(rows: usize, bits_per_row: u32) -> ExpectedRows {
        let bytes = (rows.max(64) * bits_per_row as usize / 8).min(FILTER_BYTES_MAX);
        ExpectedRows {
            blocks: vec![FilterBlock::default(); bytes.div_ceil(64)],
        }
    }

    /// A row hash's block: the hash is uniform, so its bytes are the filter's hashes —
    /// eight pick the block (by multiply-shift, no division).
    fn block_of(&self, h: &[u8; 32]) -> usize {
        let pick = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        ((u128::from(pick) * self.blocks.len() as u128) >> 64) as usize
    }

    /// A row hash's block, and its bits there (word, bit): nine bits each, from the
    /// hash's next sixteen bytes.
    fn place(&self, h: &[u8; 32]) -> (usize, [(usize, u64); FILTER_BITS]) {
        let block = self.block_of(h);
        let mut bits = u128::from_le_bytes(h[16..32].try_into().expect("16 bytes"));
        let places = std::array::from_fn(|_| {
            let at = (bits & 511) as usize;
            bits >>= 9;
            (at >> 6, 1u64 << (at & 63))
        });
        (block, places)
    }

    fn insert(&mut self, h: &[u8; 32]) {
        let (b, places) = self.place(h);
        let block = &mut self.blocks[b].0;
        for (word, bit) in places {
            block[word] |= bit;
        }
    }

    fn may_hold(&self, h: &[u8; 32]) -> bool {
        let (b, places) = self.place(h);
        let block = &self.blocks[b].0;
        places.iter().all(|&(word, bit)| block[word] & bit != 0)
    }

    /// Inserts every row hash of `hashed`, each block fetched [`PREFETCH_AHEAD`] rows
    /// before it is written (twice the rate of waiting for each miss in turn).
    fn insert_all(&mut self, hashed: &[(usize, [u8; 32])]) {
        for (i, (_, h)) in hashed.iter().enumerate() {
            if let Some((_, ahead)) = hashed.get(i + PREFETCH_AHEAD) {
                prefetch(&self.blocks[self.block_of(ahead)]);
            }
            self.insert(h);
        }
    }

    /// Whether each row hash of `hashed` is certainly not in the filter (a row the
    /// expected state does not hold), prefetching as [`ExpectedRows::insert_all`].
    fn unexpected(&self, hashed: &[(usize, [u8; 32])]) -> Vec<bool> {
        let mut out = Vec::with_capacity(hashed.len());
        for (i, (_, h)) in hashed.iter().enumerate() {
            if let Some((_, ahead)) = hashed.get(i + PREFETCH_AHEAD) {
                prefetch(&self.blocks[self.block_of(ahead)]);
            }
            out.push(!self.may_hold(h));
        }
        out
    }
}

/// How many rows ahead the filter's blocks are fetched: enough misses in flight to
/// hide the memory's latency (measured: 33 → 15 ns a row at 10M rows, 16 ahead).
const PREFETCH_AHEAD: usize = 16;

/// Asks the CPU to start loading a filter block into its cache: a hint, with no
/// effect on what the program computes.
#[inline]
fn prefetch(block: &FilterBlock) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs only SSE, which every x86_64 CPU has, and it never
    // faults; the address is a live reference besides.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((block as *const FilterBlock).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

/// Hands `rows` to `f` a batch at a time, for filtering and hashing in parallel
/// (memory: one batch, whatever the slice's size).
fn in_batches<'a>(rows: impl Iterator<Item = RowRef<'a>>, mut f: impl FnMut(&[RowRef<'a>])) {
    const BATCH_ROWS: usize = 65_536;
    let mut rows = rows.peekable();
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    while rows.peek().is_some() {
        batch.clear();
        batch.extend(rows.by_ref().take(BATCH_ROWS));
        f(&batch);
    }
}

/// What the digest of a store's expected rows leaves behind.
struct ExpectedDigest {
    tree: Tree,
    filter: Option<ExpectedRows>,
    /// The leaf of each row of the realm, in order (`NOT_OWNED` for a row the store
    /// does not own): the rows of a few differing leaves are then found without
    /// hashing every key again. 2 bytes a row; only for trees of at most 2^15 leaves
    /// and slices of at most [`LEAVES_ROWS_MAX`] rows.
    leaves: Option<Vec<u16>>,
}

/// The most rows whose leaves are noted (64 MB); a larger slice finds the expected rows
/// of differing leaves by hashing their keys again, so the run's memory stays bounded.
const LEAVES_ROWS_MAX: usize = 32 << 20;

/// A row of the realm outside the store's slice, in [`ExpectedDigest::leaves`].
const NOT_OWNED: u16 = u16::MAX;

/// The tree and the row filter of a store's expected rows (`rows` of its realm, kept
/// if `own`ed); memory: one batch, the filter and the leaves.
fn expected_digest<'a>(
    rows: impl Iterator<Item = RowRef<'a>>,
    own: &Ownership,
    depth: u8,
    rows_hint: usize,
    filter_bits_per_row: u32,
) -> ExpectedDigest {
    let mut tree = Tree::new(depth);
    let mut filter =
        (filter_bits_per_row > 0).then(|| ExpectedRows::new(rows_hint, filter_bits_per_row));
    let mut leaves =
        (depth <= 15 && rows_hint <= LEAVES_ROWS_MAX).then(|| Vec::with_capacity(rows_hint));
    in_batches(rows, |batch| {
        let mine: Vec<bool> = batch
            .par_iter()
            .with_min_len(1_024)
            .map(|r| own.owns(r))
            .collect();
        let all = mine.iter().all(|m| *m);
        let owned: Vec<RowRef<'_>> = if all {
            Vec::new()
        } else {
            batch
                .iter()
                .zip(&mine)
                .filter_map(|(r, m)| m.then_some(*r))
                .collect()
        };
        let hashed = hash_batch(if all { batch } else { &owned }, depth);
        for (b, h) in &hashed {
            tree.add_hashed(*b, h);
        }
        // In a loop of their own, so the CPU overlaps the inserts' cache misses.
        if let Some(f) = filter.as_mut() {
            f.insert_all(&hashed);
        }
        if let Some(l) = leaves.as_mut() {
            let mut owned_leaves = hashed.iter().map(|(b, _)| *b as u16);
            l.extend(mine.iter().map(|m| match m {
                true => owned_leaves.next().unwrap_or(NOT_OWNED),
                false => NOT_OWNED,
            }));
        }
    });
    tree.seal();
    ExpectedDigest {
        tree,
        filter,
        leaves,
    }
}

/// A store's expected rows in the leaves `keep`: found from the digest's `leaves` where
/// it has them, else by hashing the keys again (xxh3, a few ns a row, in parallel).
fn expected_in<'a>(
    rows: impl Iterator<Item = RowRef<'a>>,
    own: &Ownership,
    keep: &HashSet<usize>,
    depth: u8,
    leaves: Option<&[u16]>,
) -> Vec<Row> {
    let mut wanted = vec![false; 1 << depth];
    for &b in keep {
        wanted[b] = true;
    }
    if let Some(leaves) = leaves {
        // Skipped rows are passed over with `nth`, never built.
        let mut rows = rows;
        let mut next = 0;
        let mut out = Vec::new();
        for (i, l) in leaves.iter().enumerate() {
            if *l != NOT_OWNED && wanted[usize::from(*l)] {
                match rows.nth(i - next) {
                    Some(r) => out.push(r.to_row()),
                    None => break,
                }
                next = i + 1;
            }
        }
        return out;
    }
    let mut out = Vec::new();
    in_batches(rows, |batch| {
        out.par_extend(
            batch
                .par_iter()
                .with_min_len(1_024)
                .filter(|r| wanted[r.bucket(depth)] && own.owns(r))
                .map(RowRef::to_row),
        );
    });
    out
}

/// The rows of `rows` whose buckets are in `keep`, copied out of the batch.
fn rows_in(rows: &[RowRef<'_>], keep: &HashSet<usize>, depth: u8) -> Vec<Row> {
    if rows.len() >= PARALLEL_ROWS {
        rows.par_iter()
            .with_min_len(1_024)
            .filter(|r| keep.contains(&r.bucket(depth)))
            .map(RowRef::to_row)
            .collect()
    } else {
        rows.iter()
            .filter(|r| keep.contains(&r.bucket(depth)))
            .map(RowRef::to_row)
            .collect()
    }
}

/// The candidate rows of pass 2, or the error that the store is too far from the
/// stream to list row by row.
fn keep_at_most(kept: Vec<Row>, max: usize, store: &str) -> Result<Vec<Row>, ReconError> {
    if kept.len() > max {
        return Err(ReconError::TooManyCandidates {
            store: store.to_string(),
            max,
        });
    }
    Ok(kept)
}

async fn reconcile_store(
    s: &StoreConfig,
    limits: &ReconLimits,
    source: &Arc<ExpectedSource>,
    salt: &Salt,
    grace: Duration,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    host: &Semaphore,
) -> Result<(StoreReport, Vec<Candidate>), ReconError> {
    let permit = || async {
        host.acquire()
            .await
            .map_err(|e| ReconError::Config(e.to_string()))
    };
    let reading = permit().await?;
    let reader = Reader::open(s, limits).await?;
    let depth = limits.tree_depth;
    let expected = source.expected();
    let mut stats = ReadStats::default();
    let mut leaves = 0usize;
    let mut pull_chunks = None;
    let mut reread = 0usize;
    let mut compared = 0u64;
    let mut cands: Vec<Candidate> = Vec::new();
    let tick = move |n: u64| {
        if let Some(p) = &progress {
            p(n)
        }
    };
    for space in s.own.spaces() {
        if s.mode == StoreMode::Summary {
            let Reader::Pg(pg) = &reader else {
                return Err(ReconError::Config(format!(
                    "store `{}`: summary mode needs a PostgreSQL store",
                    s.name
                )));
            };
            let depth =
                summary::depth_for(depth, expected.len(space), limits.summary_chunk_rows_max);
            let (differing, st) =
                summary_differing(s, pg, source, salt, space, depth, &tick).await?;
            compared += st.rows;
            stats.add(st);
            leaves += differing.len();
            if differing.is_empty() {
                continue;
            }
            // Pass 2: the rows of differing buckets only, filtered in SQL.
            let mut kept: Vec<Row> = Vec::new();
            stats.add(
                pg.scan_buckets(space, depth, &differing, |rows| {
                    if kept.len() <= limits.candidate_rows_max {
                        kept.extend(rows);
                    }
                })
                .await?,
            );
            let kept = keep_at_most(kept, limits.candidate_rows_max, &s.name)?;
            let set: HashSet<usize> = differing.into_iter().collect();
            let exp_rows = expected
                .slice(&s.realm, space, &s.own)
                .filter(|r| summary::in_buckets(&r.key, depth, &set));
            cands.extend(core_recon::candidates(exp_rows, kept));
            continue;
        }
        // On the blocking pool: first the expected side (its tree, and a filter of its
        // row hashes), then the store's rows as they arrive (their tree, keeping the
        // rows the filter never saw). This task meanwhile keeps reading, so the store's
        // sending, the reading and the hashing overlap.
        let prepare = {
            let (source, realm, own) = (source.clone(), s.realm.clone(), s.own.clone());
            let bits = limits.filter_bits_per_row;
            move || {
                let e = source.expected();
                StoreSide {
                    ours: expected_digest(
                        e.realm_refs(&realm, space),
                        &own,
                        depth,
                        e.len(space),
                        bits,
                    ),
                    theirs: Tree::new(depth),
                    kept: Vec::new(),
                }
            }
        };
        let cap = limits.candidate_rows_max;
        let tick1 = tick.clone();
        let (side, first, chunks) =
            pull_through(&reader, &s.name, space, prepare, move |side, rows| {
                tick1(rows.len() as u64);
                digest_rows(
                    &mut side.theirs,
                    rows,
                    side.ours.filter.as_ref(),
                    &mut side.kept,
                );
                // Past the cap the kept rows are useless: stop copying them.
                if side.kept.len() > cap {
                    side.kept.truncate(cap + 1);
                }
            })
            .await?;
        let StoreSide {
            ours,
            mut theirs,
            kept,
        } = side;
        pull_chunks = pull_chunks.or(chunks);
        compared += first.rows;
        stats.add(first);
        theirs.seal();
        let differing = ours.tree.diff(&theirs);
        leaves += differing.len();
        if differing.is_empty() {
            continue;
        }
        let kept = keep_at_most(kept, limits.candidate_rows_max, &s.name)?;
        let set: HashSet<usize> = differing.iter().copied().collect();
        let exp_rows = expected_in(
            expected.realm_refs(&s.realm, space),
            &s.own,
            &set,
            depth,
            ours.leaves.as_deref(),
        );
        // Most differing leaves are explained by the kept rows alone; the others are
        // read by key through the index, and only what that cannot explain either is
        // read again in full (pass 2).
        let (mut actual, unexplained) =
            core_recon::explain_leaves(&exp_rows, &kept, &theirs, &differing);
        if !unexplained.is_empty() {
            let uset: HashSet<usize> = unexplained.into_iter().collect();
            let mut keys: Vec<RowKey> = exp_rows
                .iter()
                .chain(&kept)
                .filter(|r| uset.contains(&r.key.bucket(depth)))
                .map(|r| r.key.clone())
                .collect();
            keys.sort();
            keys.dedup();
            let (fetched, st) = reader.lookup_many(space, &keys).await?;
            stats.add(st);
            let mut by_leaf: BTreeMap<usize, Vec<Row>> =
                uset.iter().map(|&b| (b, Vec::new())).collect();
            for r in fetched {
                if let Some(rows) = by_leaf.get_mut(&r.key.bucket(depth)) {
                    rows.push(r);
                }
            }
            let mut still: HashSet<usize> = HashSet::new();
            for (b, rows) in by_leaf {
                if core_recon::is_leaf(&rows, depth, theirs.leaf(b)) {
                    actual.extend(rows);
                } else {
                    still.insert(b);
                }
            }
            reread += still.len();
            if !still.is_empty() {
                // Pass 2: only the rows of the leaves nothing else explains.
                let (again, st, _) = pull_through(
                    &reader,
                    &s.name,
                    space,
                    Vec::new,
                    move |again: &mut Vec<Row>, rows| {
                        if again.len() <= cap {
                            again.extend(rows_in(rows, &still, depth));
                        }
                    },
                )
                .await?;
                stats.add(st);
                actual.extend(keep_at_most(again, limits.candidate_rows_max, &s.name)?);
            }
        }
        cands.extend(core_recon::candidates(exp_rows, actual));
    }
    let found = cands.len();
    drop(reading);
    // The grace re-check: re-read each candidate from the store, wait the grace period
    // (longer than the stream's lag), then accept the store's value if the stream gave
    // the key that value at some point since the watermark: a write in flight.
    // A surviving candidate's `expected` is the stream's newest value; the history
    // starts from the value at the watermark.
    let at_watermark: HashMap<RowKey, Vec<Scalar>> = cands
        .iter()
        .map(|c| (c.key.clone(), c.expected.clone()))
        .collect();
    for _ in 0..limits.recheck_rounds {
        if cands.is_empty() {
            break;
        }
        let mut reread = Vec::with_capacity(cands.len());
        {
            let _reading = permit().await?;
            for c in &cands {
                let (actual, st) = reader.lookup(&c.key).await?;
                stats.add(st);
                reread.push(actual);
            }
        }
        tokio::time::sleep(grace).await;
        let mut still = Vec::new();
        for (c, actual) in cands.iter().zip(reread) {
            let history = source
                .history(
                    &s.realm,
                    &c.key,
                    &s.own,
                    at_watermark.get(&c.key).map_or(&[], Vec::as_slice),
                )
                .await?;
            if let Some(c) = core_recon::recheck(c, &history, actual) {
                still.push(c);
            }
        }
        cands = still;
    }
    Ok((
        StoreReport {
            store: s.name.clone(),
            system: s.system.clone(),
            mode: s.mode,
            rows_compared: compared,
            bytes_read: stats.bytes,
            queries: stats.queries,
            differing_leaves: leaves,
            reread_leaves: reread,
            candidates: found,
            divergent_keys: cands.len(),
            chunks: pull_chunks,
            paused_ms: stats.paused.as_millis() as u64,
        },
        cands,
    ))
}

/// Summaries of expected rows, hashed in parallel a batch at a time (two SHA-256 a
/// row), so memory is one batch whatever the slice's size.
fn summarize_rows(rows: impl Iterator<Item = Row>, depth: u8, salt: &Salt) -> summary::Summaries {
    /// Enough rows to keep the cores busy, few enough to stay a few MB.
    const BATCH_ROWS: usize = 16_384;
    let mut out = summary::Summaries::new(depth);
    let mut rows = rows.peekable();
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    while rows.peek().is_some() {
        batch.clear();
        batch.extend(rows.by_ref().take(BATCH_ROWS));
        let hashed: Vec<(usize, (i32, i32))> = batch
            .par_iter()
            .with_min_len(1_024)
            .map(|r| summary::hash_row(r, depth, salt))
            .collect();
        for (b, lanes) in hashed {
            out.add_hashed(b, lanes);
        }
    }
    out
}

/// Summary mode, pass 1: PostgreSQL summarises the store's buckets while the expected
/// slice is summarised here (on the blocking pool: two SHA-256 a row); returns the
/// differing buckets and the summary reads.
async fn summary_differing(
    s: &StoreConfig,
    pg: &PgStore,
    source: &Arc<ExpectedSource>,
    salt: &Salt,
    space: Space,
    depth: u8,
    tick: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<usize>, ReadStats), ReconError> {
    let ours = {
        let (source, realm, own, salt) =
            (source.clone(), s.realm.clone(), s.own.clone(), salt.clone());
        tokio::task::spawn_blocking(move || {
            summarize_rows(source.expected().slice(&realm, space, &own), depth, &salt)
        })
    };
    let (ours, theirs) = tokio::join!(ours, pg.summarize(space, depth, salt));
    let ours = ours.map_err(|e| ReconError::Config(format!("the summary thread failed: {e}")))?;
    let (theirs, st) = theirs?;
    tick(st.rows);
    Ok((ours.diff(&theirs), st))
}

/// The daemon's continuous reconciliation: every `[reconcile] interval_ms`, one run
/// against the journal (recorded, findings stored), with metrics and a WARN per
/// divergent key. Returns when `shutdown` is cancelled; a failed run is logged and
/// counted, and the schedule goes on.
pub async fn schedule(
    config: Config,
    metrics: Arc<crate::daemon::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(interval) = config.recon.limits.interval else {
        return;
    };
    if config.recon.stores.is_empty() {
        return;
    }
    let mut opts = ReconOptions::new(Source::Journal);
    opts.record = Record::Yes;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = run(&config, &opts) => r,
        };
        let outcome = match &result {
            Ok(r) => {
                for f in &r.findings {
                    tracing::warn!(invariant = f.invariant.id(), realm = %f.realm, system = ?f.system, subject = ?f.subject, "{}", f.message);
                    metrics.finding(f);
                }
                metrics.recon_divergent_keys.set(r.findings.len() as i64);
                match r.outcome {
                    Outcome::Clean => "clean",
                    Outcome::Divergent => "divergent",
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation run failed");
                "failed"
            }
        };
        metrics
            .recon_runs
            .get_or_create(&crate::daemon::metrics::OutcomeLabel { outcome })
            .inc();
        metrics
            .recon_last_run_timestamp_seconds
            .set(Timestamp::now().0 as f64 / 1e9);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row filter never forgets a row, and at the default 20 bits a row passes
    /// well under 0.1% of rows it never saw.
    #[test]
    fn the_row_filter_has_no_false_negatives_and_few_false_positives() {
        let hash = |i: u64| *blake3::hash(&i.to_le_bytes()).as_bytes();
        let rows = 200_000u64;
        let mut f = ExpectedRows::new(rows as usize, 20);
        for i in 0..rows {
            f.insert(&hash(i));
        }
        assert!((0..rows).all(|i| f.may_hold(&hash(i))));
        let passed = (rows..rows * 6).filter(|&i| f.may_hold(&hash(i))).count();
        let rate = passed as f64 / (rows * 5) as f64;
        assert!(rate < 0.001, "false positive rate {rate}");
        // Fewer bits a row, more false positives, never a false negative.
        let mut small = ExpectedRows::new(rows as usize, 8);
        for i in 0..rows {
            small.insert(&hash(i));
        }
        assert!((0..rows).all(|i| small.may_hold(&hash(i))));
        let passed_small = (rows..rows * 6)
            .filter(|&i| small.may_hold(&hash(i)))
            .count();
        assert!(passed_small > passed);
        // The prefetching loops give what the row-at-a-time calls give.
        let hashed: Vec<(usize, [u8; 32])> = (0..1_000).map(|i| (0, hash(i))).collect();
        let mut bulk = ExpectedRows::new(1_000, 20);
        bulk.insert_all(&hashed[..500]);
        let mut one = ExpectedRows::new(1_000, 20);
        hashed[..500].iter().for_each(|(_, h)| one.insert(h));
        let want: Vec<bool> = hashed.iter().map(|(_, h)| !one.may_hold(h)).collect();
        assert_eq!(bulk.unexpected(&hashed), want);
        assert!(want[..500].iter().all(|u| !u) && want[500..].iter().any(|u| *u));
    }

    #[test]
    fn the_concurrency_cap_is_per_host() {
        assert_eq!(host_of("postgres://u:p@db1:5432/game?x=1"), "db1:5432");
        assert_eq!(host_of("redis://127.0.0.1:6379/0"), "127.0.0.1:6379");
        assert_eq!(host_of("postgres://db2/game"), "db2");
    }
}
