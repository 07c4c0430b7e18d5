//! `[[store]]` and `[reconcile]` in the daemon's TOML config (parsed by
//! `crate::daemon::config` in two stages: these raw structs reject unknown keys, then
//! [`validate`] builds the checked values). Documented in docs/configuration.md and
//! docs/reconciliation.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::recon::Ownership;

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawReconcile {
    concurrent_queries_per_host_max: Option<u32>,
    statement_timeout_ms: Option<u64>,
    lock_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    target_query_ms: Option<u64>,
    chunk_rows_min: Option<i64>,
    chunk_rows_max: Option<i64>,
    summary_target_query_ms: Option<u64>,
    summary_chunk_rows_max: Option<i64>,
    scan_count: Option<usize>,
    redis_timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
    recheck_rounds: Option<u32>,
    interval_ms: Option<u64>,
    tree_depth: Option<u8>,
    candidate_rows_max: Option<usize>,
    filter_bits_per_row: Option<u32>,
    last_transactions_max: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    name: String,
    system: String,
    realm: String,
    kind: String,
    url: Option<String>,
    url_env: Option<String>,
    #[serde(default)]
    accounts: Vec<String>,
    #[serde(default)]
    locations: Vec<String>,
    balances_query: Option<String>,
    items_query: Option<String>,
    key_prefix: Option<String>,
    mode: Option<String>,
}

/// Defaults, each with where its number comes from.
pub mod defaults {
    /// Two queries per database host at once: a reconciliation must never take more
    /// than a sliver of a production server's connections and cores.
    pub const CONCURRENT_QUERIES_PER_HOST_MAX: u32 = 2;
    /// A chunk is aimed at 200 ms; 5 s is far past any healthy chunk and short enough
    /// that a runaway query is cut before it hurts.
    pub const STATEMENT_TIMEOUT_MS: u64 = 5_000;
    /// Never wait behind a writer's lock for long (reads take no row locks, but DDL
    /// holds table locks): give up and report.
    pub const LOCK_TIMEOUT_MS: u64 = 1_000;
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const TARGET_QUERY_MS: u64 = 200;
    pub const CHUNK_ROWS_MIN: i64 = 1_000;
    /// Memory does not grow with a chunk (its rows are parsed and hashed in 512 KB
    /// batches as they arrive), and the target time sizes chunks; this only caps one
    /// statement's rows if a fast database would let a chunk grow further. Larger
    /// chunks mean fewer boundary queries and fewer revisited pages.
    pub const CHUNK_ROWS_MAX: i64 = 1_000_000;
    /// A summary chunk ships at most 2^tree_depth rows however many it reads, so long
    /// chunks are what keep it cheap on the wire (at 1 s, 1,000,000 rows took 8 chunks
    /// and moved 1.05% of a pull's bytes; at 2 s, half that: docs/benchmarks.md); 2 s
    /// leaves a 2.5x margin under `STATEMENT_TIMEOUT_MS` for a chunk slower than the last.
    pub const SUMMARY_TARGET_QUERY_MS: u64 = 2_000;
    /// PostgreSQL holds only the 2^tree_depth groups of a summary chunk in memory,
    /// whatever its size, so this bounds time, not memory: at the 1–5 µs a row
    /// PostgreSQL spends hashing (docs/benchmarks.md) a million rows stay under
    /// `STATEMENT_TIMEOUT_MS` even when the target would let a chunk grow further.
    pub const SUMMARY_CHUNK_ROWS_MAX: i64 = 1_000_000;
    /// Redis' own default SCAN hint is 10; a few hundred keeps each call well under a
    /// millisecond of server time while cutting round trips.
    pub const SCAN_COUNT: usize = 500;
    pub const REDIS_TIMEOUT_MS: u64 = 5_000;
    /// Longer than the daemon's readiness lag limit (30 s): a key still in flight
    /// through the stream has landed by then.
    pub const GRACE_MS: u64 = 35_000;
    pub const RECHECK_ROUNDS: u32 = 2;
    /// 2^12 = 4,096 leaves: on 10 M rows a differing leaf holds ~2,500 rows.
    pub const TREE_DEPTH: u8 = 12;
    /// Rows kept from differing leaves; past it the store is too far gone to list.
    pub const CANDIDATE_ROWS_MAX: usize = 1_000_000;
    /// 20 bits (2.5 bytes) a row probed 4 times: ~0.1% false positives, each of which
    /// only costs a second pass over the leaves it hides in.
    pub const FILTER_BITS_PER_ROW: u32 = 20;
    pub const LAST_TRANSACTIONS_MAX: i64 = 5;
}

/// Validated `[reconcile]` limits.
#[derive(Debug, Clone, Serialize)]
pub struct ReconLimits {
    pub concurrent_queries_per_host_max: u32,
    #[serde(serialize_with = "ms", rename = "statement_timeout_ms")]
    pub statement_timeout: Duration,
    #[serde(serialize_with = "ms", rename = "lock_timeout_ms")]
    pub lock_timeout: Duration,
    #[serde(serialize_with = "ms", rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ms", rename = "target_query_ms")]
    pub target_query: Duration,
    pub chunk_rows_min: i64,
    pub chunk_rows_max: i64,
    #[serde(serialize_with = "ms", rename = "summary_target_query_ms")]
    pub summary_target_query: Duration,
    pub summary_chunk_rows_max: i64,
    pub scan_count: usize,
    #[serde(serialize_with = "ms", rename = "redis_timeout_ms")]
    pub redis_timeout: Duration,
    #[serde(serialize_with = "ms", rename = "grace_ms")]
    pub grace: Duration,
    pub recheck_rounds: u32,
    /// The daemon's schedule; `None`: the daemon does not reconcile.
    #[serde(serialize_with = "opt_ms")]
    pub interval: Option<Duration>,
    pub tree_depth: u8,
    pub candidate_rows_max: usize,
    /// Pull mode's filter of expected row hashes, in bits a row (0: no filter).
    pub filter_bits_per_row: u32,
    pub last_transactions_max: i64,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_millis() as u64),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Postgres,
    Redis,
}

/// How a store is compared (docs/reconciliation.md, "Pull or summary").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    /// Rows are streamed to the auditor and digested there (every store kind).
    Pull,
    /// PostgreSQL computes per-bucket summaries (`core::summary`); only the rows of
    /// differing buckets are pulled.
    Summary,
}

/// A validated `[[store]]`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    pub name: String,
    pub system: String,
    pub realm: String,
    pub kind: StoreKind,
    pub mode: StoreMode,
    #[serde(serialize_with = "masked")]
    pub url: String,
    #[serde(skip)]
    pub own: Ownership,
    pub accounts: Vec<String>,
    pub locations: Vec<String>,
    pub balances_query: Option<String>,
    pub items_query: Option<String>,
    pub key_prefix: Option<String>,
}

fn masked<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::daemon::config::mask_url(url))
}

/// Reconciliation's part of the config.
#[derive(Debug, Clone, Serialize)]
pub struct ReconConfig {
    #[serde(rename = "reconcile")]
    pub limits: ReconLimits,
    #[serde(rename = "store")]
    pub stores: Vec<StoreConfig>,
}

/// Builds the checked values; `invalid(key, message)` makes the located error.
pub fn validate<E>(
    raw: RawReconcile,
    stores: Vec<RawStore>,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: &dyn Fn(&str, String) -> E,
) -> Result<ReconConfig, E> {
    use defaults as d;
    let pos = |v: Option<u64>, key: &str, default: u64| -> Result<u64, E> {
        match v {
            Some(0) => Err(invalid(key, "must be greater than zero".into())),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    let chunk_rows_min = raw.chunk_rows_min.unwrap_or(d::CHUNK_ROWS_MIN);
    let chunk_rows_max = raw.chunk_rows_max.unwrap_or(d::CHUNK_ROWS_MAX);
    if chunk_rows_min < 1 || chunk_rows_min > chunk_rows_max {
        return Err(invalid(
            "reconcile.chunk_rows_min",
            format!("must be between 1 and chunk_rows_max ({chunk_rows_max})"),
        ));
    }
    let summary_chunk_rows_max = raw
        .summary_chunk_rows_max
        .unwrap_or(d::SUMMARY_CHUNK_ROWS_MAX);
    if summary_chunk_rows_max < chunk_rows_min {
        return Err(invalid(
            "reconcile.summary_chunk_rows_max",
            format!("must be at least chunk_rows_min ({chunk_rows_min})"),
        ));
    }
    let tree_depth = raw.tree_depth.unwrap_or(d::TREE_DEPTH);
    if !(1..=20).contains(&tree_depth) {
        return Err(invalid(
            "reconcile.tree_depth",
            "must be between 1 and 20 (2^20 leaves take 40 MB per tree)".into(),
        ));
    }
    let limits = ReconLimits {
        concurrent_queries_per_host_max: pos(
            raw.concurrent_queries_per_host_max.map(u64::from),
            "reconcile.concurrent_queries_per_host_max",
            u64::from(d::CONCURRENT_QUERIES_PER_HOST_MAX),
        )? as u32,
        statement_timeout: Duration::from_millis(pos(
            raw.statement_timeout_ms,
            "reconcile.statement_timeout_ms",
            d::STATEMENT_TIMEOUT_MS,
        )?),
        lock_timeout: Duration::from_millis(pos(
            raw.lock_timeout_ms,
            "reconcile.lock_timeout_ms",
            d::LOCK_TIMEOUT_MS,
        )?),
        connect_timeout: Duration::from_millis(pos(
            raw.connect_timeout_ms,
            "reconcile.connect_timeout_ms",
            d::CONNECT_TIMEOUT_MS,
        )?),
        target_query: Duration::from_millis(pos(
            raw.target_query_ms,
            "reconcile.target_query_ms",
            d::TARGET_QUERY_MS,
        )?),
        chunk_rows_min,
        chunk_rows_max,
        summary_target_query: Duration::from_millis(pos(
            raw.summary_target_query_ms,
            "reconcile.summary_target_query_ms",
            d::SUMMARY_TARGET_QUERY_MS,
        )?),
        summary_chunk_rows_max,
        scan_count: pos(
            raw.scan_count.map(|v| v as u64),
            "reconcile.scan_count",
            d::SCAN_COUNT as u64,
        )? as usize,
        redis_timeout: Duration::from_millis(pos(
            raw.redis_timeout_ms,
            "reconcile.redis_timeout_ms",
            d::REDIS_TIMEOUT_MS,
        )?),
        grace: Duration::from_millis(raw.grace_ms.unwrap_or(d::GRACE_MS)),
        recheck_rounds: pos(
            raw.recheck_rounds.map(u64::from),
            "reconcile.recheck_rounds",
            u64::from(d::RECHECK_ROUNDS),
        )? as u32,
        interval: match raw.interval_ms {
            None | Some(0) => None,
            Some(v) => Some(Duration::from_millis(v)),
        },
        tree_depth,
        candidate_rows_max: pos(
            raw.candidate_rows_max.map(|v| v as u64),
            "reconcile.candidate_rows_max",
            d::CANDIDATE_ROWS_MAX as u64,
        )? as usize,
        filter_bits_per_row: match raw.filter_bits_per_row.unwrap_or(d::FILTER_BITS_PER_ROW) {
            v @ (0 | 8..=64) => v,
            _ => {
                return Err(invalid(
                    "reconcile.filter_bits_per_row",
                    "must be 0 (no filter) or between 8 and 64".into(),
                ));
            }
        },
        last_transactions_max: raw
            .last_transactions_max
            .unwrap_or(d::LAST_TRANSACTIONS_MAX)
            .max(0),
    };

    let mut out = Vec::new();
    for s in stores {
        let key = |k: &str| format!("store.{}", k);
        if s.name.is_empty() || out.iter().any(|o: &StoreConfig| o.name == s.name) {
            return Err(invalid(
                &key("name"),
                format!("`{}`: store names must be non-empty and unique", s.name),
            ));
        }
        let kind = match s.kind.as_str() {
            "postgres" => StoreKind::Postgres,
            "redis" => StoreKind::Redis,
            other => {
                return Err(invalid(
                    &key("kind"),
                    format!("store `{}`: `{other}` is not `postgres` or `redis`", s.name),
                ));
            }
        };
        let url = match (s.url, s.url_env) {
            (_, Some(var)) => env(&var).ok_or_else(|| {
                invalid(
                    &key("url_env"),
                    format!(
                        "store `{}`: environment variable `{var}` is not set",
                        s.name
                    ),
                )
            })?,
            (Some(u), None) => u,
            (None, None) => {
                return Err(invalid(
                    &key("url"),
                    format!("store `{}`: set `url` or `url_env`", s.name),
                ));
            }
        };
        let mode = match (s.mode.as_deref(), kind) {
            (None | Some("pull"), _) => StoreMode::Pull,
            (Some("summary"), StoreKind::Postgres) => StoreMode::Summary,
            (Some("summary"), StoreKind::Redis) => {
                return Err(invalid(
                    &key("mode"),
                    format!(
                        "store `{}`: `summary` is for PostgreSQL stores (Redis computes no digests)",
                        s.name
                    ),
                ));
            }
            (Some(other), _) => {
                return Err(invalid(
                    &key("mode"),
                    format!("store `{}`: `{other}` is not `pull` or `summary`", s.name),
                ));
            }
        };
        if s.accounts.is_empty() && s.locations.is_empty() {
            return Err(invalid(
                &key("accounts"),
                format!(
                    "store `{}`: own some `accounts` (balances) or `locations` (items)",
                    s.name
                ),
            ));
        }
        match kind {
            StoreKind::Postgres => {
                if !s.accounts.is_empty() && s.balances_query.is_none() {
                    return Err(invalid(
                        &key("balances_query"),
                        format!(
                            "store `{}` owns accounts: give its `balances_query`",
                            s.name
                        ),
                    ));
                }
                if !s.locations.is_empty() && s.items_query.is_none() {
                    return Err(invalid(
                        &key("items_query"),
                        format!("store `{}` owns locations: give its `items_query`", s.name),
                    ));
                }
                if s.key_prefix.is_some() {
                    return Err(invalid(
                        &key("key_prefix"),
                        format!("store `{}`: `key_prefix` is for Redis stores", s.name),
                    ));
                }
            }
            StoreKind::Redis => {
                if !s.locations.is_empty() || s.items_query.is_some() || s.balances_query.is_some()
                {
                    return Err(invalid(
                        &key("locations"),
                        format!(
                            "store `{}`: a Redis store holds balances only (no locations or queries)",
                            s.name
                        ),
                    ));
                }
                if s.key_prefix.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        &key("key_prefix"),
                        format!("store `{}`: give the wallet hashes' `key_prefix`", s.name),
                    ));
                }
            }
        }
        let own = Ownership::new(s.accounts.clone(), s.locations.clone()).map_err(|e| {
            invalid(
                &key("accounts"),
                format!("store `{}`: bad ownership pattern {e}", s.name),
            )
        })?;
        out.push(StoreConfig {
            own,
            name: s.name,
            system: s.system,
            realm: s.realm,
            kind,
            mode,
            url,
            accounts: s.accounts,
            locations: s.locations,
            balances_query: s.balances_query,
            items_query: s.items_query,
            key_prefix: s.key_prefix,
        });
    }
    Ok(ReconConfig {
        limits,
        stores: out,
    })
}
