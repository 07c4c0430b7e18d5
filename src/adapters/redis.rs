//! Redis (the `redis` crate), for reconciliation: reading a balance cache laid out as one
//! hash per account — key `<key_prefix><account>`, field = asset, value = balance — and
//! writing the reference world's wallet cache. The only module that imports `redis`.
//!
//! Reads only go through `SCAN` / `HSCAN` with a bounded `COUNT`, never `KEYS` or
//! `HGETALL` on a hash of unknown size, so a reconciliation never blocks the server for
//! long. Every call has a timeout.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use super::recon_pg::{Batch, BatchSender, ReadStats};
use crate::core::recon::{Row, RowKey, Scalar};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("store `{store}`: Redis: {source}")]
    Redis {
        store: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("store `{store}`: Redis did not answer within {timeout:?}")]
    Timeout { store: String, timeout: Duration },
    #[error("store `{store}`: {message}")]
    Data { store: String, message: String },
}

/// Escapes glob characters of a literal prefix for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub struct RedisStore {
    name: String,
    con: MultiplexedConnection,
    key_prefix: String,
    scan_count: usize,
    timeout: Duration,
}

impl RedisStore {
    pub async fn connect(
        name: &str,
        url: &str,
        key_prefix: &str,
        scan_count: usize,
        timeout: Duration,
    ) -> Result<RedisStore, RedisError> {
        let err = |source| RedisError::Redis {
            store: name.to_string(),
            source,
        };
        let client = redis::Client::open(url).map_err(err)?;
        let con = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| RedisError::Timeout {
                store: name.to_string(),
                timeout,
            })?
            .map_err(err)?;
        Ok(RedisStore {
            name: name.to_string(),
            con,
            key_prefix: key_prefix.to_string(),
            scan_count,
            timeout,
        })
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut con = self.con.clone();
        tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut con))
            .await
            .map_err(|_| RedisError::Timeout {
                store: self.name.clone(),
                timeout: self.timeout,
            })?
            .map_err(|source| RedisError::Redis {
                store: self.name.clone(),
                source,
            })
    }

    fn parse(&self, account: &str, asset: &str, v: &str) -> Result<Option<Row>, RedisError> {
        let b: i128 = v.parse().map_err(|_| RedisError::Data {
            store: self.name.clone(),
            message: format!("balance `{v}` of {account}/{asset} is not an integer"),
        })?;
        Ok((b != 0).then(|| Row::balance(account, asset, b)))
    }

    /// Every balance row, sent to `out` one `SCAN` page at a time.
    pub async fn scan(&self, out: &BatchSender) -> Result<ReadStats, RedisError> {
        let mut stats = ReadStats::default();
        let pattern = format!("{}*", glob_escape(&self.key_prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .call(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(self.scan_count),
                )
                .await?;
            stats.queries += 1;
            let mut rows = Vec::new();
            for key in keys {
                stats.bytes += key.len() as u64;
                let Some(account) = key.strip_prefix(&self.key_prefix) else {
                    continue;
                };
                let (fields, s) = self.hash_fields(&key).await?;
                stats.add(s);
                for (asset, v) in fields {
                    stats.rows += 1;
                    if let Some(r) = self.parse(account, &asset, &v)? {
                        rows.push(r);
                    }
                }
            }
            out.send(Batch::Rows(rows))
                .await
                .map_err(|_| RedisError::Data {
                    store: self.name.clone(),
                    message: "the auditor stopped taking rows".into(),
                })?;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(stats)
    }

    async fn hash_fields(
        &self,
        key: &str,
    ) -> Result<(Vec<(String, String)>, ReadStats), RedisError> {
        let mut stats = ReadStats::default();
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .call(
                    redis::cmd("HSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(self.scan_count),
                )
                .await?;
            stats.queries += 1;
            for pair in flat.chunks(2) {
                if let [f, v] = pair {
                    stats.bytes += (f.len() + v.len()) as u64;
                    out.push((f.clone(), v.clone()));
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // HSCAN may return a field twice while the hash is rehashing.
        out.sort();
        out.dedup();
        Ok((out, stats))
    }

    /// The cache's value for one key now (the grace re-check).
    pub async fn lookup(&self, key: &RowKey) -> Result<(Vec<Scalar>, ReadStats), RedisError> {
        let RowKey::Balance { account, asset } = key else {
            return Err(RedisError::Data {
                store: self.name.clone(),
                message: "a Redis store holds balances only".into(),
            });
        };
        let v: Option<String> = self
            .call(
                redis::cmd("HGET")
                    .arg(format!("{}{account}", self.key_prefix))
                    .arg(asset),
            )
            .await?;
        let stats = ReadStats {
            rows: u64::from(v.is_some()),
            bytes: v.as_ref().map_or(0, |s| s.len() as u64),
            queries: 1,
            ..ReadStats::default()
        };
        let out = match v {
            Some(v) => self
                .parse(account, asset, &v)?
                .map(|r| vec![r.value])
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok((out, stats))
    }
}

/// Writes balances into a wallet cache (`<prefix><account>` hashes), pipelined.
/// `values` empty deletes the field.
pub async fn write_balances(
    url: &str,
    key_prefix: &str,
    rows: &[(RowKey, Vec<Scalar>)],
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    for chunk in rows.chunks(1_000) {
        let mut pipe = redis::pipe();
        for (key, values) in chunk {
            let RowKey::Balance { account, asset } = key else {
                continue;
            };
            let k = format!("{key_prefix}{account}");
            match values.first() {
                Some(Scalar::Int(v)) => {
                    pipe.hset(k, asset, v.to_string()).ignore();
                }
                _ => {
                    pipe.hdel(k, asset).ignore();
                }
            }
        }
        pipe.query_async::<()>(&mut con).await?;
    }
    Ok(())
}

/// Deletes every key under a prefix (SCAN + DEL), for tests and re-materialization.
pub async fn delete_prefix(url: &str, key_prefix: &str) -> Result<u64, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{}*", glob_escape(key_prefix));
    let mut cursor: u64 = 0;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            let n: u64 = con.del(&keys).await?;
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(deleted)
}
