//! Writing the reference world's stores ([`crate::sim::stores`]) to PostgreSQL tables
//! and the Redis wallet cache: a full materialization, and row changes as the
//! simulator emits events. Test and demo tooling, not production code.
//!
//! Tables: balances `(realm, account, asset, balance BIGINT)`, items
//! `(realm, item, location)`, each keyed by its key; the Redis cache is one hash per
//! account under `<prefix><realm>:` (see `deploy/reconcile-local.toml`).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::core::recon::{RowKey, Scalar, Space};
use crate::sim::stores::{CACHE_OF, Change, TABLES, Tables};

#[derive(Debug, thiserror::Error)]
pub enum SimStoreError {
    #[error("PostgreSQL: {0}")]
    Pg(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("balance {0} does not fit a BIGINT column")]
    Range(i128),
}

/// Whether table changes also go to the Redis cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mirror {
    Cache,
    TablesOnly,
}

/// Where the reference world's stores go.
#[derive(Clone, Debug)]
pub struct SimStores {
    pool: PgPool,
    redis_url: Option<String>,
    /// Redis keys are `<redis_prefix><realm>:<account>`.
    redis_prefix: String,
}

fn space_of(table: &str) -> Space {
    TABLES
        .iter()
        .find(|t| t.table == table)
        .map(|t| t.space)
        .unwrap_or(Space::Balances)
}

impl SimStores {
    pub async fn connect(
        pg_url: &str,
        redis_url: Option<&str>,
        redis_prefix: &str,
    ) -> Result<SimStores, SimStoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(PgConnectOptions::from_str(pg_url)?.application_name("assayer-sim"))
            .await?;
        Ok(SimStores {
            pool,
            redis_url: redis_url.map(str::to_string),
            redis_prefix: redis_prefix.to_string(),
        })
    }

    /// (Re)creates every table, empty, and empties the Redis cache.
    pub async fn reset(&self) -> Result<(), SimStoreError> {
        for t in TABLES {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {}",
                t.table
            )))
            .execute(&self.pool)
            .await?;
            let ddl = match t.space {
                Space::Balances => format!(
                    "CREATE TABLE {} (realm TEXT NOT NULL, account TEXT NOT NULL, asset TEXT NOT NULL,
                                      balance BIGINT NOT NULL, PRIMARY KEY (realm, account, asset))",
                    t.table
                ),
                Space::Items => format!(
                    "CREATE TABLE {} (realm TEXT NOT NULL, item TEXT NOT NULL, location TEXT NOT NULL,
                                      PRIMARY KEY (realm, item, location))",
                    t.table
                ),
            };
            sqlx::query(sqlx::AssertSqlSafe(ddl))
                .execute(&self.pool)
                .await?;
        }
        if let Some(url) = &self.redis_url {
            super::redis::delete_prefix(url, &self.redis_prefix).await?;
        }
        Ok(())
    }

    /// Writes every row of `tables` (after [`SimStores::reset`]).
    pub async fn write_all(&self, tables: &Tables) -> Result<(), SimStoreError> {
        for (table, rows) in &tables.rows {
            let changes: Vec<Change> = rows
                .iter()
                .map(|((realm, key), values)| Change {
                    table,
                    realm: realm.clone(),
                    key: key.clone(),
                    values: values.clone(),
                })
                .collect();
            let mut conn = self.pool.acquire().await?;
            SimStores::insert(&mut conn, table, &changes).await?;
        }
        self.write_cache(tables.cache.iter().map(|((r, k), v)| (r, k, v)))
            .await?;
        Ok(())
    }

    async fn write_cache<'a>(
        &self,
        rows: impl Iterator<Item = (&'a String, &'a RowKey, &'a Vec<Scalar>)>,
    ) -> Result<(), SimStoreError> {
        let Some(url) = &self.redis_url else {
            return Ok(());
        };
        let mut by_realm: BTreeMap<&str, Vec<(RowKey, Vec<Scalar>)>> = BTreeMap::new();
        for (realm, key, values) in rows {
            by_realm
                .entry(realm)
                .or_default()
                .push((key.clone(), values.clone()));
        }
        for (realm, rows) in by_realm {
            super::redis::write_balances(url, &format!("{}{realm}:", self.redis_prefix), &rows)
                .await?;
        }
        Ok(())
    }

    async fn insert(
        conn: &mut sqlx::PgConnection,
        table: &str,
        changes: &[Change],
    ) -> Result<(), SimStoreError> {
        for chunk in changes.chunks(10_000) {
            let mut realm = Vec::new();
            let mut a = Vec::new();
            let mut b = Vec::new();
            let mut bal: Vec<i64> = Vec::new();
            for c in chunk {
                for v in &c.values {
                    realm.push(c.realm.as_str());
                    match (&c.key, v) {
                        (RowKey::Balance { account, asset }, Scalar::Int(x)) => {
                            a.push(account.as_str());
                            b.push(asset.as_str());
                            bal.push(i64::try_from(*x).map_err(|_| SimStoreError::Range(*x))?);
                        }
                        (RowKey::Item { item }, Scalar::Str(loc)) => {
                            a.push(item.as_str());
                            b.push(loc.as_str());
                        }
                        _ => {}
                    }
                }
            }
            let sql = match space_of(table) {
                Space::Balances => format!(
                    "INSERT INTO {table} (realm, account, asset, balance)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])"
                ),
                Space::Items => format!(
                    "INSERT INTO {table} (realm, item, location)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])"
                ),
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&realm)
                .bind(&a)
                .bind(&b);
            if space_of(table) == Space::Balances {
                q = q.bind(&bal);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Applies changes as the game would: tables, and the cache kept in step.
    pub async fn apply(&self, changes: &[Change]) -> Result<(), SimStoreError> {
        self.apply_with(changes, Mirror::Cache).await
    }

    /// Writes changes to the Redis cache only (its rows are keyed like `wallets`).
    pub async fn apply_cache(&self, changes: &[Change]) -> Result<(), SimStoreError> {
        self.write_cache(changes.iter().map(|c| (&c.realm, &c.key, &c.values)))
            .await
    }

    /// Applies row changes (as the game's persistence layer would, one transaction per
    /// call) to the tables and, with [`Mirror::Cache`], `wallets` changes to the Redis
    /// cache too.
    pub async fn apply_with(
        &self,
        changes: &[Change],
        mirror: Mirror,
    ) -> Result<(), SimStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for c in changes {
            match &c.key {
                RowKey::Balance { account, asset } => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {} WHERE realm = $1 AND account = $2 AND asset = $3",
                        c.table
                    )))
                    .bind(&c.realm)
                    .bind(account)
                    .bind(asset)
                    .execute(&mut *tx)
                    .await?;
                }
                RowKey::Item { item } => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {} WHERE realm = $1 AND item = $2",
                        c.table
                    )))
                    .bind(&c.realm)
                    .bind(item)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        // Insert the new values per table, after every delete of the batch, in the same
        // transaction: a reader never sees a key half-written.
        let mut by_table: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
        let mut last: BTreeMap<(&str, &str, &RowKey), &Change> = BTreeMap::new();
        for c in changes {
            last.insert((c.table, c.realm.as_str(), &c.key), c);
        }
        for c in last.values() {
            by_table.entry(c.table).or_default().push((*c).clone());
        }
        for (table, cs) in &by_table {
            SimStores::insert(&mut tx, table, cs).await?;
        }
        tx.commit().await?;
        if let (Mirror::Cache, Some(cs)) = (mirror, by_table.get(CACHE_OF)) {
            self.write_cache(cs.iter().map(|c| (&c.realm, &c.key, &c.values)))
                .await?;
        }
        Ok(())
    }
}
