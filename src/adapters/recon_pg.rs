//! Reading a system's PostgreSQL store for reconciliation, gently: every query runs in
//! a read-only transaction with `statement_timeout` and `lock_timeout`, through a pool
//! no larger than the per-host concurrency cap, in chunks whose size adapts to a target
//! query time (a chunk that ran long shrinks the next one; a second one in a row that
//! the database itself was slow on is followed by a pause as long, giving a busy
//! database room). Pull mode's
//! chunks are page (`ctid`) ranges in one snapshot when the store's query yields its
//! table's `ctid`, keyset-paginated key ranges otherwise ([`PgStore::pull`]).
//!
//! Also the assayer-side tables of reconciliation: `recon_runs`, and the journal look-ups
//! that give a divergent key its evidence and its newer expected value.
//!
//! The store's queries are the operator's: `balances_query` must yield columns named
//! `account, asset, balance`, `items_query` `item, location`. They are wrapped as a
//! subquery, so filters and ordering by key reach the underlying table's index.
//!
//! Summary mode ([`PgStore::summarize`], [`PgStore::scan_buckets`]) has PostgreSQL
//! compute the per-bucket digests of `core::summary` in SQL: the canonical text, the
//! bucket and the lanes below must stay byte-identical to that module (the integration
//! tests compare them on tricky values). Its chunks are key ranges: a cheap query finds
//! the key `n` rows ahead (an index walk, nothing hashed), then the range up to and
//! including it is summarised, so a chunk's time is bounded and duplicate keys never
//! straddle two chunks.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{
    Column as _, Executor as _, Postgres, Row as _, SqlSafeStr as _, Transaction, TypeInfo as _,
};

use crate::core::recon::{Row, RowKey, RowRef, Scalar, Space};
use crate::core::summary::{BucketSummary, Salt, Summaries};
use crate::core::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("store `{store}`: cannot connect: {source}")]
    Connect {
        store: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store `{store}`: query failed: {source}")]
    Query {
        store: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store `{store}`: {message}")]
    Data { store: String, message: String },
    #[error("store `{store}`: no answer within {timeout:?}")]
    Timeout { store: String, timeout: Duration },
}

/// How gently to read.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub connect_timeout: Duration,
    /// Pool size: queries in flight against this store at once.
    pub concurrent_queries_max: u32,
    /// Chunk sizes adapt so that one chunk takes about this long.
    pub target_query: Duration,
    pub chunk_rows_min: i64,
    pub chunk_rows_max: i64,
    /// Summary mode: chunks adapt so one summary query takes about this long.
    pub summary_target_query: Duration,
    pub summary_chunk_rows_max: i64,
}

/// Counters of one store's reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadStats {
    pub rows: u64,
    pub bytes: u64,
    pub queries: u64,
    /// Time spent pausing for a busy database (after a second slow chunk in a row).
    pub paused: Duration,
}

impl ReadStats {
    pub fn add(&mut self, o: ReadStats) {
        self.rows += o.rows;
        self.bytes += o.bytes;
        self.queries += o.queries;
        self.paused += o.paused;
    }
}

pub struct PgStore {
    name: String,
    pool: PgPool,
    balances_query: Option<String>,
    items_query: Option<String>,
    limits: ReadLimits,
}

impl PgStore {
    pub async fn connect(
        name: &str,
        url: &str,
        balances_query: Option<String>,
        items_query: Option<String>,
        limits: ReadLimits,
    ) -> Result<PgStore, ReadError> {
        let err = |source| ReadError::Connect {
            store: name.to_string(),
            source,
        };
        let opts = PgConnectOptions::from_str(url)
            .map_err(err)?
            .application_name("assayer-reconcile");
        let pool = PgPoolOptions::new()
            .max_connections(limits.concurrent_queries_max)
            .acquire_timeout(limits.connect_timeout)
            .connect_with(opts)
            .await
            .map_err(err)?;
        Ok(PgStore {
            name: name.to_string(),
            pool,
            balances_query,
            items_query,
            limits,
        })
    }

    fn query_err(&self, source: sqlx::Error) -> ReadError {
        ReadError::Query {
            store: self.name.clone(),
            source,
        }
    }

    fn sql(&self, space: Space) -> Result<(&str, &'static str), ReadError> {
        let q = match space {
            Space::Balances => self.balances_query.as_deref(),
            Space::Items => self.items_query.as_deref(),
        };
        let cols = match space {
            Space::Balances => "q.account::text, q.asset::text, q.balance::text",
            Space::Items => "q.item::text, q.location::text",
        };
        q.map(|q| (q, cols)).ok_or_else(|| ReadError::Data {
            store: self.name.clone(),
            message: format!("no query for {space:?}"),
        })
    }

    /// A read-only transaction with the limits set for its statements.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, ReadError> {
        self.begin_as("SET TRANSACTION READ ONLY").await
    }

    /// A transaction set by `set` (read only, an isolation level), with the limits set
    /// for its statements: `statement_timeout` and `lock_timeout`.
    async fn begin_as(
        &self,
        set: &'static str,
    ) -> Result<Transaction<'static, Postgres>, ReadError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.query_err(e))?;
        sqlx::query(set)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.query_err(e))?;
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)",
        )
        .bind(format!("{}ms", self.limits.statement_timeout.as_millis()))
        .bind(format!("{}ms", self.limits.lock_timeout.as_millis()))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(tx)
    }

    fn decode(&self, space: Space, r: &sqlx::postgres::PgRow) -> Result<Option<Row>, ReadError> {
        let get = |i: usize| -> Result<String, ReadError> {
            r.try_get::<Option<String>, _>(i)
                .map_err(|e| self.query_err(e))?
                .ok_or_else(|| ReadError::Data {
                    store: self.name.clone(),
                    message: format!("column {} is NULL", i + 1),
                })
        };
        Ok(match space {
            Space::Balances => {
                let (a, s, b) = (get(0)?, get(1)?, get(2)?);
                let v: i128 = b.parse().map_err(|_| ReadError::Data {
                    store: self.name.clone(),
                    message: format!("balance `{b}` of {a}/{s} is not an integer"),
                })?;
                // A zero balance and no row are the same state.
                (v != 0).then(|| Row::balance(&a, &s, v))
            }
            Space::Items => Some(Row::item(&get(0)?, &get(1)?)),
        })
    }

    /// The rows the store holds for `keys` (all of `space`), a batch of keys a query
    /// through the index: how pull mode reads the rows of a few differing leaves
    /// without reading the table again.
    pub async fn lookup_many(
        &self,
        space: Space,
        keys: &[RowKey],
    ) -> Result<(Vec<Row>, ReadStats), ReadError> {
        /// Keys a query: few enough for a nested loop over the key index.
        const KEYS_A_QUERY: usize = 1_000;
        let (q, cols) = self.sql(space)?;
        let mut stats = ReadStats::default();
        let mut out = Vec::new();
        for batch in keys.chunks(KEYS_A_QUERY) {
            let mut tx = self.begin().await?;
            let rows = match space {
                Space::Balances => {
                    let (accounts, assets): (Vec<&str>, Vec<&str>) = batch
                        .iter()
                        .filter_map(|k| match k {
                            RowKey::Balance { account, asset } => {
                                Some((account.as_str(), asset.as_str()))
                            }
                            RowKey::Item { .. } => None,
                        })
                        .unzip();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {cols} FROM ({q}) q WHERE (q.account::text, q.asset::text) IN
                           (SELECT * FROM unnest($1::text[], $2::text[]))"
                    )))
                    .bind(accounts)
                    .bind(assets)
                    .fetch_all(&mut *tx)
                    .await
                }
                Space::Items => {
                    let items: Vec<&str> = batch
                        .iter()
                        .filter_map(|k| match k {
                            RowKey::Item { item } => Some(item.as_str()),
                            RowKey::Balance { .. } => None,
                        })
                        .collect();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {cols} FROM ({q}) q WHERE q.item::text = ANY($1::text[])"
                    )))
                    .bind(items)
                    .fetch_all(&mut *tx)
                    .await
                }
            }
            .map_err(|e| self.query_err(e))?;
            tx.rollback().await.map_err(|e| self.query_err(e))?;
            stats.queries += 1;
            for r in &rows {
                stats.rows += 1;
                if let Some(row) = self.decode(space, r)? {
                    stats.bytes += row.wire_len() as u64;
                    out.push(row);
                }
            }
        }
        Ok((out, stats))
    }

    /// The values the store holds for one key now (the grace re-check), sorted.
    pub async fn lookup(&self, key: &RowKey) -> Result<(Vec<Scalar>, ReadStats), ReadError> {
        let (rows, stats) = self
            .lookup_many(key.space(), std::slice::from_ref(key))
            .await?;
        let mut out: Vec<Scalar> = rows.into_iter().map(|r| r.value).collect();
        out.sort();
        Ok((out, stats))
    }
}

/// One key-space's columns in summary mode, as SQL over the operator's query `q`.
struct SummaryCols {
    /// The two key-ordering columns (the keyset), as text.
    k0: &'static str,
    k1: &'static str,
    /// The value, as text (balances: the balance; items: the location).
    v: &'static str,
    /// Which rows exist (a zero balance and no row are the same state).
    live: &'static str,
    /// The type byte of the canonical text.
    tag: &'static str,
    /// Whether the key is (k0, k1) (balances) or k0 alone (items: k1 is the value).
    key_fields: usize,
}

fn summary_cols(space: Space) -> SummaryCols {
    match space {
        Space::Balances => SummaryCols {
            k0: "q.account::text",
            k1: "q.asset::text",
            v: "q.balance::text",
            live: "q.balance IS DISTINCT FROM 0",
            tag: "b",
            key_fields: 2,
        },
        Space::Items => SummaryCols {
            k0: "q.item::text",
            k1: "q.location::text",
            v: "q.location::text",
            live: "true",
            tag: "i",
            key_fields: 1,
        },
    }
}

/// `core::summary`'s netstring of a text column: byte length, `:`, bytes, `,`; `~`
/// for NULL (`||` with NULL is NULL). `octet_length` counts bytes of the server
/// encoding, which [`PgStore::summarize`] checks is UTF8.
fn sql_netstring(col: &str) -> String {
    format!("coalesce(octet_length({col}) || ':' || {col} || ',', '~')")
}

/// The canonical key text of a chunk row `c` (columns k0, k1, v) and the value's
/// netstring that follows it in the row text.
fn sql_texts(cols: &SummaryCols) -> (String, String) {
    let mut key = format!("'{}' || {}", cols.tag, sql_netstring("c.k0"));
    if cols.key_fields == 2 {
        key = format!("{key} || {}", sql_netstring("c.k1"));
    }
    (key, sql_netstring("c.v"))
}

/// Big-endian integer of bytes `from..from+n` of a bytea (`get_byte` returns int4;
/// every shift parenthesised: `<<` and `|` share one precedence in PostgreSQL).
fn sql_be(bytes: &str, from: usize, n: usize, ty: &str) -> String {
    (from..from + n)
        .map(|i| {
            let shift = 8 * (from + n - 1 - i);
            if shift == 0 {
                format!("get_byte({bytes}, {i})::{ty}")
            } else {
                format!("(get_byte({bytes}, {i})::{ty} << {shift})")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The bucket of a row from its key hash `kh` = `sha256(key text)` (see
/// `core::summary::bucket`). `kh` must be a column computed below an `OFFSET 0`
/// fence: PostgreSQL does not share repeated calls, and an inlined expression would
/// hash the key once per byte read.
fn sql_bucket(kh: &str, depth: u8) -> String {
    format!(
        "(({}) >> {})::int4",
        sql_be(kh, 0, 4, "int8"),
        32 - u32::from(depth)
    )
}

/// A chunk boundary: a key, and the same key as SQL literals quoted by PostgreSQL
/// (`quote_literal`), for `COPY`, which takes no parameters.
struct Bound {
    key: (String, String),
    lit: (String, String),
}

/// A key range of one chunk: rows after `after` (exclusive) up to `until` (inclusive).
/// Unbounded above, the range also takes rows with a NULL key (a keyset comparison
/// with NULL is never true), so the last chunk surfaces them instead of skipping them.
struct Range<'a> {
    after: Option<&'a Bound>,
    until: Option<&'a Bound>,
}

impl Range<'_> {
    /// The WHERE condition, binding its keys from parameter `$first` on.
    fn sql(&self, cols: &SummaryCols, first: usize) -> String {
        let mut n = first;
        self.condition(cols, |_| {
            n += 2;
            (format!("${}", n - 2), format!("${}", n - 1))
        })
    }

    /// The WHERE condition with the keys inlined as PostgreSQL-quoted literals.
    fn sql_literal(&self, cols: &SummaryCols) -> String {
        self.condition(cols, |b| (b.lit.0.clone(), b.lit.1.clone()))
    }

    /// `key > after AND key <= until`, plus the same bounds on the first key column
    /// alone: PostgreSQL estimates a row comparison's selectivity badly (a 1% range of
    /// a 10M-row table was planned as a sequential scan of all of it), a single
    /// column's from its histogram.
    fn condition(
        &self,
        cols: &SummaryCols,
        mut key: impl FnMut(&Bound) -> (String, String),
    ) -> String {
        let k = format!("({}, {})", cols.k0, cols.k1);
        let mut lower = None;
        let mut upper = None;
        if let Some(b) = self.after {
            let (a0, a1) = key(b);
            lower = Some(format!("{k0} >= {a0} AND {k} > ({a0}, {a1})", k0 = cols.k0));
        }
        if let Some(b) = self.until {
            let (u0, u1) = key(b);
            upper = Some(format!(
                "{k0} <= {u0} AND {k} <= ({u0}, {u1})",
                k0 = cols.k0
            ));
        }
        match (lower, upper) {
            (None, None) => "true".into(),
            (Some(l), Some(u)) => format!("{l} AND {u}"),
            (None, Some(u)) => u,
            (Some(l), None) => format!("(({l}) OR {} IS NULL OR {} IS NULL)", cols.k0, cols.k1),
        }
    }

    fn bind<'q>(
        &self,
        mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        for b in [self.after, self.until].into_iter().flatten() {
            query = query.bind(b.key.0.clone()).bind(b.key.1.clone());
        }
        query
    }
}

/// What a ranged pass does with each chunk.
enum Pass<'a> {
    /// Summarise every bucket (pass 1).
    Summarize {
        salt: &'a Salt,
        out: &'a mut Summaries,
    },
    /// Fetch the rows of these buckets only (pass 2).
    Rows {
        buckets: &'a [i32],
        on_rows: &'a mut (dyn FnMut(Vec<Row>) + Send),
    },
    /// Pull every row through a text `COPY` (pull mode), in batches of rows sent to
    /// `out`.
    Pull {
        out: &'a BatchSender,
        balance: BalanceColumn,
    },
}

impl PgStore {
    /// Summary mode needs `octet_length` to count UTF-8 bytes.
    async fn check_utf8(&self) -> Result<ReadStats, ReadError> {
        let mut tx = self.begin().await?;
        let enc: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.query_err(e))?;
        tx.rollback().await.map_err(|e| self.query_err(e))?;
        if enc != "UTF8" {
            return Err(ReadError::Data {
                store: self.name.clone(),
                message: format!(
                    "summary mode needs a UTF8 database (this one is {enc}); use mode = \"pull\""
                ),
            });
        }
        Ok(ReadStats {
            rows: 0,
            bytes: enc.len() as u64,
            queries: 1,
            ..ReadStats::default()
        })
    }

    /// The per-bucket summaries of `space` (`core::summary`), computed by PostgreSQL in
    /// key-range chunks; only the summaries cross the wire (≤ 2^depth rows a chunk).
    /// `ReadStats::rows` counts the rows summarised.
    pub async fn summarize(
        &self,
        space: Space,
        depth: u8,
        salt: &Salt,
    ) -> Result<(Summaries, ReadStats), ReadError> {
        let mut stats = self.check_utf8().await?;
        let mut out = Summaries::new(depth);
        stats.add(
            self.ranged(
                space,
                depth,
                Pass::Summarize {
                    salt,
                    out: &mut out,
                },
            )
            .await?,
        );
        Ok((out, stats))
    }

    /// Streams the rows of `buckets` (summary buckets at `depth`) to `on_rows`: the
    /// pull path restricted in SQL, so only those rows cross the wire.
    pub async fn scan_buckets(
        &self,
        space: Space,
        depth: u8,
        buckets: &[usize],
        mut on_rows: impl FnMut(Vec<Row>) + Send,
    ) -> Result<ReadStats, ReadError> {
        let buckets: Vec<i32> = buckets
            .iter()
            .map(|&b| {
                i32::try_from(b).map_err(|_| ReadError::Data {
                    store: self.name.clone(),
                    message: format!("bucket {b} out of range"),
                })
            })
            .collect::<Result<_, _>>()?;
        self.ranged(
            space,
            depth,
            Pass::Rows {
                buckets: &buckets,
                on_rows: &mut on_rows,
            },
        )
        .await
    }

    /// Walks `space` in key-range chunks sized to the target query time (summary's or
    /// the pull's), doing `pass` on each: one read-only transaction per chunk holding
    /// the boundary query and the pass's query.
    async fn ranged(
        &self,
        space: Space,
        depth: u8,
        mut pass: Pass<'_>,
    ) -> Result<ReadStats, ReadError> {
        let (q, _) = self.sql(space)?;
        let cols = summary_cols(space);
        let (key_text, value_text) = sql_texts(&cols);
        let bucket = sql_bucket("h.kh", depth);
        let (target, chunk_max) = match pass {
            Pass::Pull { .. } => (self.limits.target_query, self.limits.chunk_rows_max),
            _ => (
                self.limits.summary_target_query,
                self.limits.summary_chunk_rows_max,
            ),
        };
        let chunk_max = chunk_max.max(1);
        let chunk_min = self.limits.chunk_rows_min.clamp(1, chunk_max);
        let mut chunk = FIRST_CHUNK_ROWS.clamp(chunk_min, chunk_max);
        let mut stats = ReadStats::default();
        let mut pacer = Pacer::default();
        let mut after: Option<Bound> = None;
        loop {
            let started = Instant::now();
            // Time the chunk spent on the auditor's side (waiting for the expected
            // digest, hashing): part of the statement's time, not the database's.
            let mut ours = Duration::ZERO;
            let mut tx = self.begin().await?;
            // The key `chunk` rows ahead: an index walk, nothing hashed.
            let boundary_sql = format!(
                "SELECT {k0}, {k1}, quote_literal({k0}), quote_literal({k1}) FROM ({q}) q
                  WHERE {cond} ORDER BY 1, 2 OFFSET $1 LIMIT 1",
                k0 = cols.k0,
                k1 = cols.k1,
                // The boundary never needs NULL keys: those sort last and are taken
                // by the final (unbounded) chunk.
                cond = match &after {
                    None => "true".to_string(),
                    Some(_) => format!(
                        "{k0} >= $2 AND ({k0}, {}) > ($2, $3)",
                        cols.k1,
                        k0 = cols.k0
                    ),
                },
            );
            let mut bq = sqlx::query(sqlx::AssertSqlSafe(boundary_sql)).bind(chunk - 1);
            if let Some(b) = &after {
                bq = bq.bind(b.key.0.clone()).bind(b.key.1.clone());
            }
            let until: Option<Bound> = match bq
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.query_err(e))?
            {
                Some(r) => {
                    let get = |i: usize| -> Result<Option<String>, ReadError> {
                        r.try_get(i).map_err(|e| self.query_err(e))
                    };
                    match (get(0)?, get(1)?, get(2)?, get(3)?) {
                        (Some(a), Some(b), Some(la), Some(lb)) => {
                            stats.bytes += (a.len() + b.len() + la.len() + lb.len()) as u64;
                            Some(Bound {
                                key: (a, b),
                                lit: (la, lb),
                            })
                        }
                        // The boundary reached the NULL keys at the end: the rest is
                        // the final chunk.
                        _ => None,
                    }
                }
                None => None,
            };
            stats.queries += 1;
            let range = Range {
                after: after.as_ref(),
                until: until.as_ref(),
            };
            match &mut pass {
                Pass::Summarize { salt, out } => {
                    let sql = format!(
                        // Each OFFSET 0 is a fence, so the texts are built once and each
                        // hash computed once, not once per use.
                        "SELECT b, count(*)::int8, sum(l1)::int8, sum(l2)::int8 FROM (
                           SELECT {bucket} AS b, {l1} AS l1, {l2} AS l2 FROM (
                             SELECT sha256(convert_to(t.kt, 'UTF8')) AS kh,
                                    sha256(convert_to($1 || t.kt || t.vt, 'UTF8')) AS rh
                               FROM (SELECT {key_text} AS kt, {value_text} AS vt
                                       FROM (SELECT {k0} AS k0, {k1} AS k1, {v} AS v FROM ({q}) q
                                              WHERE ({live}) AND {cond}) c
                                     OFFSET 0) t
                             OFFSET 0
                           ) h
                         ) x GROUP BY b",
                        l1 = sql_be("h.rh", 0, 4, "int4"),
                        l2 = sql_be("h.rh", 4, 4, "int4"),
                        k0 = cols.k0,
                        k1 = cols.k1,
                        v = cols.v,
                        live = cols.live,
                        cond = range.sql(&cols, 2),
                    );
                    let query = range.bind(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(salt.hex()));
                    let rows = query
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| self.query_err(e))?;
                    let mut n = 0u64;
                    for r in &rows {
                        let b: i32 = r.try_get(0).map_err(|e| self.query_err(e))?;
                        let s = BucketSummary {
                            rows: r.try_get(1).map_err(|e| self.query_err(e))?,
                            lane1: r.try_get(2).map_err(|e| self.query_err(e))?,
                            lane2: r.try_get(3).map_err(|e| self.query_err(e))?,
                        };
                        n += s.rows.max(0) as u64;
                        out.merge(i64::from(b), &s)
                            .map_err(|message| ReadError::Data {
                                store: self.name.clone(),
                                message,
                            })?;
                        // bucket int4 + count and two sums, int8 each
                        stats.bytes += 4 + 3 * 8;
                    }
                    stats.rows += n;
                }
                Pass::Rows { buckets, on_rows } => {
                    let sel = match space {
                        Space::Balances => "h.k0, h.k1, h.v",
                        Space::Items => "h.k0, h.k1",
                    };
                    let n_range = [range.after, range.until].iter().flatten().count() * 2;
                    let sql = format!(
                        "SELECT {sel} FROM (
                           SELECT c.*, sha256(convert_to({key_text}, 'UTF8')) AS kh
                             FROM (SELECT {k0} AS k0, {k1} AS k1, {v} AS v FROM ({q}) q
                                    WHERE ({live}) AND {cond}) c
                           OFFSET 0
                         ) h WHERE {bucket} = ANY(${arr}::int4[])",
                        k0 = cols.k0,
                        k1 = cols.k1,
                        v = cols.v,
                        live = cols.live,
                        cond = range.sql(&cols, 1),
                        arr = n_range + 1,
                    );
                    let query = range
                        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
                        .bind(buckets.to_vec());
                    let rows = query
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| self.query_err(e))?;
                    let mut page = Vec::with_capacity(rows.len());
                    for r in &rows {
                        if let Some(row) = self.decode(space, r)? {
                            stats.bytes += row.wire_len() as u64;
                            page.push(row);
                        }
                    }
                    stats.rows += rows.len() as u64;
                    on_rows(page);
                }
                Pass::Pull { out, balance } => {
                    let sql = format!(
                        "COPY (SELECT {sel} FROM ({q}) q WHERE {cond}) TO STDOUT",
                        sel = select_list(space, *balance),
                        cond = range.sql_literal(&cols),
                    );
                    let (st, spent) = self.copy_chunk(&mut tx, &sql, space, out).await?;
                    stats.add(st);
                    ours = spent;
                }
            }
            tx.rollback().await.map_err(|e| self.query_err(e))?;
            stats.queries += 1;
            let Some(until) = until else {
                break;
            };
            after = Some(until);
            let took = started.elapsed();
            chunk = next_chunk(chunk, took, target).clamp(chunk_min, chunk_max);
            stats.paused += pacer.after_chunk(took, ours, target).await;
        }
        Ok(stats)
    }

    /// How pull mode reads `space` from this store, from PostgreSQL's description of
    /// the store's query (one round trip, and an `EXPLAIN` when the query has a `ctid`).
    pub async fn pull_plan(&self, space: Space) -> Result<PullPlan, ReadError> {
        let (q, _) = self.sql(space)?;
        let mut conn = self.pool.acquire().await.map_err(|e| self.query_err(e))?;
        let described = (&mut *conn)
            .describe(sqlx::AssertSqlSafe(format!("SELECT * FROM ({q}) q")).into_sql_str())
            .await
            .map_err(|e| self.query_err(e))?;
        let type_of = |name: &str| {
            described
                .columns()
                .iter()
                .find(|c| c.name() == name)
                .map(|c| c.type_info().name().to_ascii_uppercase())
        };
        let balance = match type_of("balance").as_deref() {
            Some("INT8" | "INT4" | "INT2") => BalanceColumn::Integer,
            _ => BalanceColumn::CastToText,
        };
        let mut pages = false;
        if type_of("ctid").as_deref() == Some("TID") {
            // Only if PostgreSQL really reads a page range as a TID Range Scan (a
            // `ctid` it cannot push down would make every chunk a full scan).
            let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM ({q}) q
                  WHERE q.ctid >= '(0,0)'::tid AND q.ctid < '(1,0)'::tid"
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.query_err(e))?;
            pages = plan_has_node(&plan, "Tid Range Scan");
            if !pages {
                tracing::warn!(
                    store = %self.name,
                    "the store's query has a ctid, but PostgreSQL does not read ctid ranges \
                     of it as a TID Range Scan: reading key ranges instead"
                );
            }
        }
        Ok(PullPlan { balance, pages })
    }

    /// Streams every row of `space` to `out` (pull mode), as batches of text `COPY`
    /// rows (~512 KB each; the receiver parses and hashes them while this keeps
    /// reading). A store whose query has a `ctid` column is read in page ranges
    /// ([`PullPlan::pages`]), any other in key ranges; either way in chunks sized to
    /// `target_query`. `ReadStats::bytes` counts the fields' bytes as sent.
    ///
    /// Returns the read's counters and how it read. An error when `out`'s receiver is
    /// gone (it stopped on an error of its own, which it reports).
    pub async fn pull(
        &self,
        space: Space,
        out: &BatchSender,
    ) -> Result<(ReadStats, PullPlan), ReadError> {
        let plan = self.pull_plan(space).await?;
        let mut stats = if plan.pages {
            self.pull_pages(space, plan.balance, out).await?
        } else {
            self.ranged(
                space,
                0,
                Pass::Pull {
                    out,
                    balance: plan.balance,
                },
            )
            .await?
        };
        stats.queries += 1;
        Ok((stats, plan))
    }

    /// Pull mode by page ranges: `ctid` ranges read by TID Range Scans, in one
    /// read-only REPEATABLE READ transaction, so each row is read exactly once even
    /// while the game writes (an updated row moves to another page; with a snapshot per
    /// chunk it could be read twice or not at all). No index is walked and no boundary
    /// looked up: PostgreSQL's cost is close to a plain `COPY` of the table. The price:
    /// the snapshot is held for the whole pull (see docs/reconciliation.md).
    async fn pull_pages(
        &self,
        space: Space,
        balance: BalanceColumn,
        out: &BatchSender,
    ) -> Result<ReadStats, ReadError> {
        /// Rows a page assumed for the first chunk (a narrow table holds ~100); the
        /// next chunks know.
        const FIRST_ROWS_A_PAGE: i64 = 100;
        /// Block numbers are 32-bit: a range reaching past it is open-ended.
        const LAST_BLOCK: i64 = u32::MAX as i64;
        let (q, _) = self.sql(space)?;
        let sel = select_list(space, balance);
        let limits = &self.limits;
        let target = limits.target_query;
        let mut stats = ReadStats::default();
        let mut pacer = Pacer::default();
        let mut tx = self.begin_snapshot().await?;
        let first_rows =
            FIRST_CHUNK_ROWS.clamp(limits.chunk_rows_min, limits.chunk_rows_max.max(1));
        let mut pages = (first_rows / FIRST_ROWS_A_PAGE).max(1);
        let mut start = 0i64;
        loop {
            let started = Instant::now();
            let end = start.saturating_add(pages);
            let last = end >= LAST_BLOCK;
            let upper = if last {
                String::new()
            } else {
                format!(" AND q.ctid < '({end},0)'::tid")
            };
            let sql = format!(
                "COPY (SELECT {sel} FROM ({q}) q WHERE q.ctid >= '({start},0)'::tid{upper})
                 TO STDOUT"
            );
            let (st, ours) = self.copy_chunk(&mut tx, &sql, space, out).await?;
            stats.add(st);
            stats.queries += 1;
            if last {
                break;
            }
            if st.rows == 0 {
                // Past the table's end, or a run of empty pages: is anything beyond?
                let more: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM ({q}) q WHERE q.ctid >= '({end},0)'::tid)"
                )))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.query_err(e))?;
                stats.queries += 1;
                if !more {
                    break;
                }
            }
            start = end;
            let took = started.elapsed();
            // The row bounds of a chunk, in pages at this chunk's rows a page.
            let (lo, hi) = match st.rows {
                0 => (1, LAST_BLOCK),
                rows => {
                    let per_page = rows as f64 / pages as f64;
                    (
                        (limits.chunk_rows_min as f64 / per_page).ceil() as i64,
                        (limits.chunk_rows_max as f64 / per_page) as i64,
                    )
                }
            };
            pages = next_chunk(pages, took, target).clamp(lo.max(1), hi.max(1));
            stats.paused += pacer.after_chunk(took, ours, target).await;
        }
        tx.rollback().await.map_err(|e| self.query_err(e))?;
        Ok(stats)
    }

    /// A read-only REPEATABLE READ transaction (one snapshot for all its statements)
    /// with the limits set for its statements.
    async fn begin_snapshot(&self) -> Result<Transaction<'static, Postgres>, ReadError> {
        self.begin_as("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
    }

    /// One chunk of [`PgStore::pull`]: `COPY (…) TO STDOUT` in text format, its
    /// complete rows sent to `out` in batches. Returns the chunk's counters and the time
    /// spent waiting for `out` (the auditor's time, not the database's).
    ///
    /// Text, not binary: PostgreSQL's binary send functions cost it ~11% more than its
    /// text output for these rows (measured with `psql` at 10M rows), and its text is
    /// as exact (escapes undone by [`CopyTuples::rows`]). Zero balances (no row, the
    /// same state as none) are sent and dropped by the receiver: a filter would cost
    /// PostgreSQL ~8% of the `COPY`, on every row.
    async fn copy_chunk(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        sql: &str,
        space: Space,
        out: &BatchSender,
    ) -> Result<(ReadStats, Duration), ReadError> {
        /// A batch is sent once this much has arrived: large enough that the per-batch
        /// costs vanish, small enough that PostgreSQL keeps sending meanwhile.
        const BATCH_BYTES: usize = 512 << 10;
        let mut stats = ReadStats::default();
        let mut ours = Duration::ZERO;
        let fields = space_fields(space);
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + (64 << 10));
        let mut stream = tx.copy_out_raw(sql).await.map_err(|e| self.query_err(e))?;
        loop {
            let next = stream.try_next().await.map_err(|e| self.query_err(e))?;
            let done = next.is_none();
            if let Some(bytes) = next {
                buf.extend_from_slice(&bytes);
                if buf.len() < BATCH_BYTES {
                    continue;
                }
            }
            let walk = walk_text(&buf, fields, done).map_err(|message| self.data_err(message))?;
            stats.rows += walk.rows as u64;
            stats.bytes += walk.field_bytes;
            let mut next_buf = Vec::with_capacity(BATCH_BYTES + (64 << 10));
            next_buf.extend_from_slice(&buf[walk.end..]);
            let mut rows = std::mem::replace(&mut buf, next_buf);
            rows.truncate(walk.end);
            if walk.rows > 0 {
                let waited = Instant::now();
                let batch = Batch::Copy(CopyTuples {
                    space,
                    rows: walk.rows,
                    bytes: rows,
                });
                out.send(batch)
                    .await
                    .map_err(|_| self.data_err("the auditor stopped taking rows".to_string()))?;
                ours += waited.elapsed();
            }
            if done {
                break;
            }
        }
        Ok((stats, ours))
    }

    fn data_err(&self, message: String) -> ReadError {
        ReadError::Data {
            store: self.name.clone(),
            message,
        }
    }
}

/// How pull mode reads a store's key space (see [`PgStore::pull_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullPlan {
    /// How the balance column is selected.
    pub balance: BalanceColumn,
    /// Page (`ctid`) ranges in one snapshot rather than key ranges.
    pub pages: bool,
}

impl PullPlan {
    /// How the chunks are cut, for reports.
    pub fn chunks(&self) -> &'static str {
        if self.pages { "pages" } else { "key ranges" }
    }
}

/// How pull mode selects the balance column: an integer column as it is (its text
/// output is the number; a `::text` cast would cost PostgreSQL an extra conversion a
/// row), any other type (`numeric`, `text`…) cast to text, as summary mode reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceColumn {
    Integer,
    CastToText,
}

/// The columns pull mode selects from the store's query `q`.
fn select_list(space: Space, balance: BalanceColumn) -> &'static str {
    match (space, balance) {
        (Space::Balances, BalanceColumn::CastToText) => {
            "q.account::text, q.asset::text, q.balance::text"
        }
        (Space::Balances, BalanceColumn::Integer) => "q.account::text, q.asset::text, q.balance",
        (Space::Items, _) => "q.item::text, q.location::text",
    }
}

fn space_fields(space: Space) -> usize {
    match space {
        Space::Balances => 3,
        Space::Items => 2,
    }
}

/// Whether an `EXPLAIN (FORMAT JSON)` plan has a node of this type anywhere.
fn plan_has_node(plan: &serde_json::Value, node_type: &str) -> bool {
    match plan {
        serde_json::Value::Object(o) => {
            o.get("Node Type").and_then(|t| t.as_str()) == Some(node_type)
                || o.values().any(|v| plan_has_node(v, node_type))
        }
        serde_json::Value::Array(a) => a.iter().any(|v| plan_has_node(v, node_type)),
        _ => false,
    }
}

/// The first chunk of a pull is modest; the target time grows it (at most 4x a chunk).
const FIRST_CHUNK_ROWS: i64 = 100_000;

/// The next chunk's size: aimed at `target` from how long this one `took`, growing or
/// shrinking at most 4x a chunk.
fn next_chunk(size: i64, took: Duration, target: Duration) -> i64 {
    let ratio = (target.as_secs_f64() / took.as_secs_f64().max(1e-4)).clamp(0.25, 4.0);
    (size as f64 * ratio) as i64
}

/// Gives a busy database room: after a second chunk in a row that the database itself
/// was slow on (more than twice the target, not counting the time the auditor held the
/// stream), a pause as long as that chunk. One slow chunk alone is a hiccup (a
/// checkpoint, a neighbour on the host, the auditor's own hashing competing for the
/// database's cores) and costs no pause: a pause after every outlier doubled the time
/// of some 10M-row pulls on a busy 2-core host; a database that stays slow still gets
/// its pauses from its second slow chunk on.
#[derive(Debug, Default)]
struct Pacer {
    slow_before: bool,
}

impl Pacer {
    /// Pauses if the database has been slow two chunks in a row; returns the pause.
    async fn after_chunk(&mut self, took: Duration, ours: Duration, target: Duration) -> Duration {
        let pause = self.pause_after(took, ours, target);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        pause
    }

    fn pause_after(&mut self, took: Duration, ours: Duration, target: Duration) -> Duration {
        let database = took.saturating_sub(ours);
        let slow = database > target * 2;
        let pause = if slow && self.slow_before {
            database
        } else {
            Duration::ZERO
        };
        self.slow_before = slow;
        pause
    }
}

/// Rows read from a store, on their way to the auditor's hashing.
pub enum Batch {
    /// Text `COPY` rows from PostgreSQL, parsed by the receiver.
    Copy(CopyTuples),
    /// Rows already decoded (Redis).
    Rows(Vec<Row>),
}

/// Where a pull sends its batches: bounded, so a reader runs at most that many batches
/// ahead of the hashing.
pub type BatchSender = tokio::sync::mpsc::Sender<Batch>;

/// Complete text `COPY` rows of one key space (each ending in a newline), as
/// PostgreSQL sent them.
pub struct CopyTuples {
    space: Space,
    rows: usize,
    bytes: Vec<u8>,
}

impl CopyTuples {
    /// The rows, borrowing their strings (escaped fields are undone in place: a field
    /// only gets shorter); a zero balance is no row (the same state as none). An error
    /// names what is wrong with which column.
    pub fn rows(&mut self) -> Result<Vec<RowRef<'_>>, String> {
        let fields = space_fields(self.space);
        // Most batches hold no escape and are valid UTF-8 as a whole: their fields are
        // sliced out of one validated string, between delimiters found in one
        // vectorised pass.
        // (Validated twice: a borrow returned from one branch of a function that
        // mutably borrows in the other is beyond the borrow checker; ~15 µs a batch.)
        if memchr::memchr(b'\\', &self.bytes).is_none() && std::str::from_utf8(&self.bytes).is_ok()
        {
            let text = std::str::from_utf8(&self.bytes).map_err(|e| e.to_string())?;
            return plain_rows(self.space, text, fields, self.rows);
        }
        let mut out = Vec::with_capacity(self.rows);
        let mut rest: &mut [u8] = &mut self.bytes;
        while !rest.is_empty() {
            let n = memchr::memchr(b'\n', rest)
                .ok_or_else(|| "a COPY batch holds a partial row".to_string())?;
            let (line, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = &mut tail[1..];
            let f = text_fields(line, fields)?;
            let text = |i: usize| -> Result<&str, String> {
                let bytes = f[i].ok_or_else(|| format!("column {} is NULL", i + 1))?;
                std::str::from_utf8(bytes)
                    .map_err(|_| format!("column {} is not valid UTF-8", i + 1))
            };
            let texts = [text(0)?, text(1)?, if fields > 2 { text(2)? } else { "" }];
            if let Some(r) = row_of(self.space, texts)? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// The rows of a batch with no escape (so no NULL either), as one valid string.
fn plain_rows(
    space: Space,
    text: &str,
    fields: usize,
    rows: usize,
) -> Result<Vec<RowRef<'_>>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(rows);
    let mut delimiters = memchr::memchr2_iter(b'\t', b'\n', bytes);
    let mut start = 0;
    while start < bytes.len() {
        let mut f = [""; 3];
        for (i, slot) in f.iter_mut().enumerate().take(fields) {
            let end = delimiters
                .next()
                .ok_or_else(|| "a COPY batch holds a partial row".to_string())?;
            let last = i + 1 == fields;
            if (bytes[end] == b'\n') != last {
                return Err(format!(
                    "COPY row of {} fields, expected {fields}",
                    if last { "more" } else { "fewer" }
                ));
            }
            *slot = &text[start..end];
            start = end + 1;
        }
        if let Some(r) = row_of(space, f)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// A row from its fields' text: `None` for a zero balance.
fn row_of(space: Space, f: [&str; 3]) -> Result<Option<RowRef<'_>>, String> {
    Ok(match space {
        Space::Balances => {
            let [account, asset, b] = f;
            // Most balances fit 64 bits, whose parsing is the cheaper.
            let balance = b
                .parse::<i64>()
                .map(i128::from)
                .or_else(|_| b.parse::<i128>())
                .map_err(|_| format!("balance `{b}` of {account}/{asset} is not an integer"))?;
            (balance != 0).then_some(RowRef::Balance {
                account,
                asset,
                balance,
            })
        }
        Space::Items => Some(RowRef::Item {
            item: f[0],
            location: f[1],
        }),
    })
}

/// The `fields` tab-separated fields of one text `COPY` line (no newline), each
/// unescaped in place; `None` for NULL (`\N`).
fn text_fields(line: &mut [u8], fields: usize) -> Result<[Option<&[u8]>; 3], String> {
    let mut out = [None; 3];
    let mut rest = line;
    for (i, slot) in out.iter_mut().enumerate().take(fields) {
        let last = i + 1 == fields;
        let field = match memchr::memchr(b'\t', rest) {
            Some(t) if !last => {
                let (field, tail) = std::mem::take(&mut rest).split_at_mut(t);
                rest = &mut tail[1..];
                field
            }
            None if last => std::mem::take(&mut rest),
            _ => {
                return Err(format!(
                    "COPY row of {} fields, expected {fields}",
                    if last { "more" } else { "fewer" }
                ));
            }
        };
        *slot = match &*field {
            b"\\N" => None,
            _ if memchr::memchr(b'\\', field).is_none() => Some(&*field),
            _ => {
                let n = unescape(field)?;
                Some(&field[..n])
            }
        };
    }
    Ok(out)
}

/// Undoes `COPY`'s text escapes in place (`\b \f \n \r \t \v`, octal `\123`, hex
/// `\x4f`, and a backslash before any other byte is that byte); returns the new length.
fn unescape(field: &mut [u8]) -> Result<usize, String> {
    let (mut r, mut w) = (0, 0);
    while r < field.len() {
        let c = field[r];
        r += 1;
        let byte = if c != b'\\' {
            c
        } else {
            let e = *field
                .get(r)
                .ok_or_else(|| "a COPY field ends in a lone backslash".to_string())?;
            r += 1;
            match e {
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match field.get(r) {
                            Some(d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                r += 1;
                            }
                            _ => break,
                        }
                    }
                    v as u8
                }
                b'x' if field.get(r).is_some_and(u8::is_ascii_hexdigit) => {
                    let mut v = 0u32;
                    for _ in 0..2 {
                        match field.get(r).and_then(|d| char::from(*d).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                r += 1;
                            }
                            None => break,
                        }
                    }
                    v as u8
                }
                other => other,
            }
        };
        field[w] = byte;
        w += 1;
    }
    Ok(w)
}

/// What [`walk_text`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Walk {
    /// The complete rows are `..end` (each ends in a newline).
    end: usize,
    rows: usize,
    /// The rows' field bytes as sent, escapes included (the "bytes read" figure).
    field_bytes: u64,
}

/// Finds the complete rows (of `fields` fields) at the start of a text `COPY` buffer.
/// With `last`, `buf` must end with a complete row.
fn walk_text(buf: &[u8], fields: usize, last: bool) -> Result<Walk, String> {
    let end = memchr::memrchr(b'\n', buf).map_or(0, |i| i + 1);
    if last && end != buf.len() {
        return Err("COPY output ended inside a row".into());
    }
    let rows = memchr::memchr_iter(b'\n', &buf[..end]).count();
    Ok(Walk {
        end,
        rows,
        // Each row's delimiters: a tab between fields and its newline.
        field_bytes: end.saturating_sub(rows * fields) as u64,
    })
}

/// The assayer database, for reconciliation's own records and journal look-ups.
#[derive(Clone)]
pub struct ReconDb {
    pool: PgPool,
}

/// One `recon_runs` row.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub group: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub watermark_ts: Option<Timestamp>,
    pub watermark_position: Option<i64>,
    pub systems: Vec<String>,
    pub outcome: &'static str,
    pub rows_compared: i64,
    pub divergent_keys: i64,
    pub bytes_read: i64,
    pub queries: i64,
    pub error: Option<String>,
    pub summary: serde_json::Value,
}

fn micros(t: Timestamp) -> i64 {
    t.0 / 1_000
}

impl ReconDb {
    pub async fn connect(url: &str, connect_timeout: Duration) -> Result<ReconDb, sqlx::Error> {
        let opts = PgConnectOptions::from_str(url)?.application_name("assayer-reconcile");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(connect_timeout)
            .connect_with(opts)
            .await?;
        Ok(ReconDb { pool })
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations").run(&self.pool).await
    }

    pub async fn record_run(&self, r: &RunRecord) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(
            "INSERT INTO recon_runs (group_name, started_at, finished_at, watermark_ts, watermark_position,
                                     systems, outcome, rows_compared, divergent_keys, bytes_read, queries,
                                     error, summary)
             VALUES ($1, timestamptz 'epoch' + $2 * interval '1 microsecond',
                     timestamptz 'epoch' + $3 * interval '1 microsecond',
                     timestamptz 'epoch' + $4 * interval '1 microsecond',
                     $5, $6, $7, $8, $9, $10, $11, $12, $13)
             RETURNING id",
        )
        .bind(&r.group)
        .bind(micros(r.started_at))
        .bind(micros(r.finished_at))
        .bind(r.watermark_ts.map(micros))
        .bind(r.watermark_position)
        .bind(&r.systems)
        .bind(r.outcome)
        .bind(r.rows_compared)
        .bind(r.divergent_keys)
        .bind(r.bytes_read)
        .bind(r.queries)
        .bind(&r.error)
        .bind(&r.summary)
        .fetch_one(&self.pool)
        .await?;
        row.try_get(0)
    }

    /// The newest journal transactions (up to `limit`) that touched a key, newest first:
    /// `[{tx_id, ts, position, system, change}]`.
    pub async fn last_transactions(
        &self,
        group: &str,
        realm: &str,
        key: &RowKey,
        limit: i64,
    ) -> Result<serde_json::Value, sqlx::Error> {
        // Newest first along the support indexes (`journal_*_trace`: key, realm, ts,
        // position), which carry the transaction's fields: no join, no sort of a busy
        // key's whole history.
        let rows = match key {
            RowKey::Balance { account, asset } => {
                sqlx::query(
                    "SELECT tx_id, ts_us, position, system, delta::text FROM journal_postings
                      WHERE group_name = $1 AND account = $3 AND realm = $2 AND asset = $4
                      ORDER BY ts_us DESC, position DESC, ord DESC LIMIT $5",
                )
                .bind(group)
                .bind(realm)
                .bind(account)
                .bind(asset)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            RowKey::Item { item } => {
                sqlx::query(
                    "SELECT tx_id, ts_us, position, system, from_loc || ' -> ' || to_loc
                   FROM journal_items
                  WHERE group_name = $1 AND item = $3 AND realm = $2
                  ORDER BY ts_us DESC, position DESC, ord DESC LIMIT $4",
                )
                .bind(group)
                .bind(realm)
                .bind(item)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::json!({
                "tx_id": r.try_get::<Option<String>, _>(0)?,
                "ts": r.try_get::<Option<i64>, _>(1)?.map(crate::core::provenance::fmt_ts_us),
                "position": r.try_get::<i64, _>(2)?,
                "system": r.try_get::<Option<String>, _>(3)?,
                "change": r.try_get::<Option<String>, _>(4)?,
            }));
        }
        Ok(serde_json::Value::Array(out))
    }

    /// The balance changes the journal applied to a key after `position`, one per
    /// transaction, in journal order.
    pub async fn balance_deltas_after(
        &self,
        group: &str,
        realm: &str,
        account: &str,
        asset: &str,
        position: i64,
    ) -> Result<Vec<i128>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT SUM(delta)::text FROM journal_postings
              WHERE group_name = $1 AND realm = $2 AND account = $3 AND asset = $4 AND position > $5
              GROUP BY position ORDER BY position",
        )
        .bind(group)
        .bind(realm)
        .bind(account)
        .bind(asset)
        .bind(position)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                s.parse()
                    .map_err(|_| sqlx::Error::Decode(format!("sum `{s}` is not an integer").into()))
            })
            .collect()
    }

    /// Where the journal moved an item after `position`, in journal order.
    pub async fn item_moves_after(
        &self,
        group: &str,
        realm: &str,
        item: &str,
        position: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT to_loc FROM journal_items
              WHERE group_name = $1 AND realm = $2 AND item = $3 AND position > $4
              ORDER BY position, ord",
        )
        .bind(group)
        .bind(realm)
        .bind(item)
        .bind(position)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text COPY stream as PostgreSQL writes it: tab-separated fields, `\N` for
    /// NULL, backslash escapes for backslashes and control characters.
    fn copy_bytes(rows: &[[Option<&str>; 3]]) -> Vec<u8> {
        let mut b = Vec::new();
        for r in rows {
            for (i, f) in r.iter().enumerate() {
                if i > 0 {
                    b.push(b'\t');
                }
                match f {
                    None => b.extend(b"\\N"),
                    Some(s) => {
                        for c in s.bytes() {
                            match c {
                                b'\\' => b.extend(b"\\\\"),
                                b'\n' => b.extend(b"\\n"),
                                b'\r' => b.extend(b"\\r"),
                                b'\t' => b.extend(b"\\t"),
                                8 => b.extend(b"\\b"),
                                12 => b.extend(b"\\f"),
                                11 => b.extend(b"\\v"),
                                c => b.push(c),
                            }
                        }
                    }
                }
            }
            b.push(b'\n');
        }
        b
    }

    /// Walks `all` as the reader receives it, cut at `cut`, and parses the batches as
    /// the auditor does: every balance row, once each.
    fn pull_rows(all: &[u8], cut: usize) -> Result<Vec<Row>, String> {
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        for (piece, last) in [(&all[..cut], false), (&all[cut..], true)] {
            buf.extend_from_slice(piece);
            let walk = walk_text(&buf, 3, last)?;
            let mut batch = CopyTuples {
                space: Space::Balances,
                rows: walk.rows,
                bytes: buf[..walk.end].to_vec(),
            };
            got.extend(batch.rows()?.iter().map(RowRef::to_row));
            buf.drain(..walk.end);
        }
        assert!(buf.is_empty(), "cut at {cut}: {} bytes left", buf.len());
        Ok(got)
    }

    /// However the stream is cut into messages, the same rows come out, once each, with
    /// every escape undone.
    #[test]
    fn the_text_copy_reader_is_independent_of_how_the_bytes_arrive() {
        let all = copy_bytes(&[
            [Some("player:1"), Some("gold"), Some("10")],
            [
                Some(""),
                Some("tab\t'q\\N\\\\x\n\r\u{8}\u{b}\u{c}end"),
                Some("170141183460469231731687303715884105727"),
            ],
            [Some("ü"), Some("🪙"), Some("-5")],
            [Some("\\"), Some("\\N"), Some("0")],
            [Some("zero"), Some("gold"), Some("7")],
        ]);
        let want = vec![
            Row::balance("player:1", "gold", 10),
            Row::balance("", "tab\t'q\\N\\\\x\n\r\u{8}\u{b}\u{c}end", i128::MAX),
            Row::balance("ü", "🪙", -5),
            // `\`/`\N` with a zero balance: no row.
            Row::balance("zero", "gold", 7),
        ];
        for cut in 0..all.len() {
            assert_eq!(pull_rows(&all, cut).expect("rows"), want, "cut at {cut}");
        }
    }

    /// Escapes PostgreSQL accepts but does not write (octal, hex) are undone too, and
    /// a backslash before any other byte is that byte.
    #[test]
    fn every_copy_text_escape_is_undone() {
        for (escaped, want) in [
            (&b"a\\101\\x42\\x4a\\7z"[..], &b"aABJ\x07z"[..]),
            (b"\\0\\00\\1234", b"\0\0S4"),
            (b"\\xg\\q\\\\", b"xgq\\"),
        ] {
            let mut f = escaped.to_vec();
            let n = unescape(&mut f).expect("unescape");
            assert_eq!(&f[..n], want, "{}", String::from_utf8_lossy(escaped));
        }
        assert!(unescape(&mut b"ab\\".to_vec()).is_err());
    }

    #[test]
    fn a_truncated_or_misshapen_copy_stream_is_an_error() {
        let all = copy_bytes(&[[Some("a"), Some("b"), Some("1")]]);
        assert!(walk_text(&all[..all.len() - 1], 3, true).is_err());
        assert_eq!(
            walk_text(&all[..all.len() - 1], 3, false)
                .expect("walk")
                .rows,
            0
        );
        let rows = |bytes: &[u8], fields: usize| {
            let space = if fields == 3 {
                Space::Balances
            } else {
                Space::Items
            };
            CopyTuples {
                space,
                rows: 1,
                bytes: bytes.to_vec(),
            }
            .rows()
            .map(|r| r.len())
        };
        assert!(rows(b"a\tb\n", 3).is_err(), "too few fields");
        assert!(rows(b"a\tb\t1\t2\n", 3).is_err(), "too many fields");
        assert!(rows(b"a\tb\t1\n", 2).is_err(), "too many for items");
        assert!(rows(b"a\tb\t1", 3).is_err(), "no newline");
        // The same through the path for batches with escapes.
        assert!(rows(b"a\\\\\tb\n", 3).is_err(), "too few fields, escaped");
        assert!(rows(b"a\\\\\tb\t1\t2\n", 3).is_err(), "too many, escaped");
        assert!(rows(b"a\\\\\tb\t1", 3).is_err(), "no newline, escaped");
        assert_eq!(rows(b"a\\\\\tb\t1\n", 3), Ok(1));
        // NULLs and bad text are errors of the row, naming the column.
        let bad = copy_bytes(&[[Some("a"), None, Some("1")]]);
        let err = pull_rows(&bad, 0).expect_err("NULL");
        assert!(err.contains("column 2 is NULL"), "{err}");
        let bad = copy_bytes(&[[Some("a"), Some("b"), Some("1.5")]]);
        let err = pull_rows(&bad, 0).expect_err("not an integer");
        assert!(err.contains("not an integer"), "{err}");
        let err = rows(b"a\t\xff\t1\n", 3).expect_err("UTF-8");
        assert!(err.contains("column 2 is not valid UTF-8"), "{err}");
    }

    /// One slow chunk is a hiccup; a second in a row gets a pause as long as it, and
    /// so does each slow one after; the auditor's own time never counts.
    #[test]
    fn the_pacer_pauses_for_a_database_that_stays_slow() {
        let ms = Duration::from_millis;
        let target = ms(200);
        let mut p = Pacer::default();
        assert_eq!(
            p.pause_after(ms(500), ms(0), target),
            ms(0),
            "a first slow chunk"
        );
        assert_eq!(p.pause_after(ms(150), ms(0), target), ms(0));
        assert_eq!(
            p.pause_after(ms(500), ms(0), target),
            ms(0),
            "a hiccup again"
        );
        assert_eq!(p.pause_after(ms(600), ms(0), target), ms(600), "slow twice");
        assert_eq!(p.pause_after(ms(700), ms(0), target), ms(700), "still slow");
        assert_eq!(
            p.pause_after(ms(900), ms(800), target),
            ms(0),
            "the auditor's time"
        );
        assert_eq!(p.pause_after(ms(500), ms(0), target), ms(0));
    }

    #[test]
    fn a_plan_is_searched_for_its_node_types() {
        let plan: serde_json::Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Limit", "Plans": [{"Node Type": "Tid Range Scan"}]}}]"#,
        )
        .expect("json");
        assert!(plan_has_node(&plan, "Tid Range Scan"));
        assert!(!plan_has_node(&plan, "Seq Scan"));
    }
}
