//! Reading a system's PostgreSQL store for reconciliation, gently: every query runs in
//! a read-only transaction with `statement_timeout` and `lock_timeout`, through a pool
//! no larger than the per-host concurrency cap, in keyset-paginated chunks whose size
//! adapts to a target query time (a chunk that ran long shrinks the next one and pauses
//! as long as it ran, giving a busy database room).
//!
//! Also the assayer-side tables of reconciliation: `recon_runs`, and the journal look-ups
//! that give a divergent key its evidence and its newer expected value.
//!
//! The store's queries are the operator's: `balances_query` must yield columns named
//! `account, asset, balance`, `items_query` `item, location`. They are wrapped as a
//! subquery, so filters and ordering by key reach the underlying table's index.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row as _, Transaction};

use crate::core::recon::{Row, RowKey, Scalar, Space};
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
}

/// Counters of one store's reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadStats {
    pub rows: u64,
    pub bytes: u64,
    pub queries: u64,
}

impl ReadStats {
    pub fn add(&mut self, o: ReadStats) {
        self.rows += o.rows;
        self.bytes += o.bytes;
        self.queries += o.queries;
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
        let mut tx = self.pool.begin().await.map_err(|e| self.query_err(e))?;
        sqlx::query("SET TRANSACTION READ ONLY")
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

    /// Streams every row of `space` to `on_rows` in chunks (keyset pagination by key,
    /// chunk size adapting to the target query time). Memory: one chunk.
    pub async fn scan(
        &self,
        space: Space,
        mut on_rows: impl FnMut(Vec<Row>),
    ) -> Result<ReadStats, ReadError> {
        let (q, cols) = self.sql(space)?;
        let order = match space {
            Space::Balances => "1, 2",
            Space::Items => "1, 2",
        };
        let mut stats = ReadStats::default();
        let mut chunk = self
            .limits
            .chunk_rows_min
            .max(1_000)
            .min(self.limits.chunk_rows_max);
        let mut after: Option<(String, String)> = None;
        loop {
            let started = Instant::now();
            let mut tx = self.begin().await?;
            let sql = match after {
                None => format!("SELECT {cols} FROM ({q}) q ORDER BY {order} LIMIT $1"),
                Some(_) => format!(
                    "SELECT {cols} FROM ({q}) q WHERE ({k}) > ($2, $3) ORDER BY {order} LIMIT $1",
                    k = match space {
                        Space::Balances => "q.account::text, q.asset::text",
                        Space::Items => "q.item::text, q.location::text",
                    }
                ),
            };
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(chunk);
            if let Some((a, b)) = &after {
                query = query.bind(a.clone()).bind(b.clone());
            }
            let mut rows = Vec::with_capacity(chunk as usize);
            let mut got = 0i64;
            let mut last: Option<(String, String)> = None;
            {
                let mut stream = query.fetch(&mut *tx);
                while let Some(r) = stream.try_next().await.map_err(|e| self.query_err(e))? {
                    got += 1;
                    let k0: String = r
                        .try_get::<Option<String>, _>(0)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    let k1: String = r
                        .try_get::<Option<String>, _>(1)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    stats.bytes += (k0.len() + k1.len()) as u64;
                    if let Some(row) = self.decode(space, &r)? {
                        stats.bytes += row.value.wire_len() as u64;
                        rows.push(row);
                    }
                    last = Some((k0, k1));
                }
            }
            tx.rollback().await.map_err(|e| self.query_err(e))?;
            stats.queries += 1;
            stats.rows += got as u64;
            on_rows(rows);
            if got < chunk {
                break;
            }
            after = last;
            // Adapt: aim the next chunk at the target time; pause after a slow one.
            let took = started.elapsed();
            let target = self.limits.target_query.as_secs_f64();
            let ratio = (target / took.as_secs_f64().max(1e-4)).clamp(0.25, 4.0);
            chunk = ((chunk as f64 * ratio) as i64)
                .clamp(self.limits.chunk_rows_min, self.limits.chunk_rows_max);
            if took > self.limits.target_query * 2 {
                tokio::time::sleep(took).await;
            }
        }
        Ok(stats)
    }

    /// The values the store holds for one key now (the grace re-check).
    pub async fn lookup(&self, key: &RowKey) -> Result<(Vec<Scalar>, ReadStats), ReadError> {
        let space = key.space();
        let (q, cols) = self.sql(space)?;
        let mut tx = self.begin().await?;
        let rows =
            match key {
                RowKey::Balance { account, asset } => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {cols} FROM ({q}) q WHERE q.account::text = $1 AND q.asset::text = $2"
                )))
                .bind(account)
                .bind(asset)
                .fetch_all(&mut *tx)
                .await,
                RowKey::Item { item } => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {cols} FROM ({q}) q WHERE q.item::text = $1"
                    )))
                    .bind(item)
                    .fetch_all(&mut *tx)
                    .await
                }
            }
            .map_err(|e| self.query_err(e))?;
        tx.rollback().await.map_err(|e| self.query_err(e))?;
        let mut stats = ReadStats {
            queries: 1,
            ..ReadStats::default()
        };
        let mut out = Vec::new();
        for r in &rows {
            stats.rows += 1;
            if let Some(row) = self.decode(space, r)? {
                stats.bytes += row.wire_len() as u64;
                out.push(row.value);
            }
        }
        out.sort();
        Ok((out, stats))
    }
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
        let rows = match key {
            RowKey::Balance { account, asset } => {
                sqlx::query(
                    "SELECT j.tx_id, j.ts::text, j.position, j.system, p.delta::text
                       FROM journal_postings p JOIN journal j
                         ON j.group_name = p.group_name AND j.position = p.position
                      WHERE p.group_name = $1 AND p.realm = $2 AND p.account = $3 AND p.asset = $4
                      ORDER BY p.position DESC LIMIT $5",
                )
                .bind(group)
                .bind(realm)
                .bind(account)
                .bind(asset)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            RowKey::Item { item } => sqlx::query(
                "SELECT j.tx_id, j.ts::text, j.position, j.system, i.from_loc || ' -> ' || i.to_loc
                       FROM journal_items i JOIN journal j
                         ON j.group_name = i.group_name AND j.position = i.position
                      WHERE i.group_name = $1 AND i.realm = $2 AND i.item = $3
                      ORDER BY i.position DESC LIMIT $4",
            )
            .bind(group)
            .bind(realm)
            .bind(item)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
        };
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::json!({
                "tx_id": r.try_get::<Option<String>, _>(0)?,
                "ts": r.try_get::<Option<String>, _>(1)?,
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
