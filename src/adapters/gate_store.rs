//! The deploy gate's reads and writes in PostgreSQL: open findings, daemon status,
//! reconciliation runs, deploy markers and rollback actions. Thin: rows in, core types
//! out; the scoring is `core::gate`.

use sqlx::{PgPool, Row};

use super::postgres::StoreError;
use crate::core::finding::{Invariant, Severity};
use crate::core::gate::{
    DaemonStatus, DeployMarker, OpenFinding, ReconOutcome, ReconRun, StreamStatus,
};
use crate::core::time::Timestamp;

/// `timestamptz` as epoch milliseconds, the shape every read here uses.
macro_rules! ms {
    ($col:literal) => {
        concat!("(extract(epoch from ", $col, ") * 1000)::bigint")
    };
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

/// A daemon's self-report, written every few seconds.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub group: String,
    /// `host:pid`: active and standby daemons of a group each keep their own row.
    pub instance: String,
    pub started_at: Timestamp,
    pub host: String,
    pub processing_lag_ms: i64,
    pub reorder_depth: i64,
    pub holding: bool,
    pub broker_connected: bool,
    pub journal_position: i64,
    pub streams: Vec<StreamStatus>,
}

pub async fn write_status(pool: &PgPool, s: &StatusRow) -> Result<(), StoreError> {
    let streams = serde_json::to_value(&s.streams).expect("plain data serializes");
    sqlx::query(
        "INSERT INTO daemon_status (group_name, instance, updated_at, started_at, host, processing_lag_ms,
                                    reorder_depth, broker_connected, journal_position, streams, holding)
         VALUES ($1, $9, now(), timestamptz 'epoch' + $2 * interval '1 millisecond', $3, $4, $5, $6, $7, $8, $10)
         ON CONFLICT (group_name, instance) DO UPDATE SET updated_at = now(), started_at = EXCLUDED.started_at,
           host = EXCLUDED.host, processing_lag_ms = EXCLUDED.processing_lag_ms,
           reorder_depth = EXCLUDED.reorder_depth, broker_connected = EXCLUDED.broker_connected,
           journal_position = EXCLUDED.journal_position, streams = EXCLUDED.streams,
           holding = EXCLUDED.holding",
    )
    .bind(&s.group)
    .bind(s.started_at.unix_millis())
    .bind(&s.host)
    .bind(s.processing_lag_ms)
    .bind(s.reorder_depth)
    .bind(s.broker_connected)
    .bind(s.journal_position)
    .bind(streams)
    .bind(&s.instance)
    .bind(s.holding)
    .execute(pool)
    .await?;
    Ok(())
}

/// The status rows of `groups` (all groups when empty).
pub async fn daemon_status(
    pool: &PgPool,
    groups: &[String],
) -> Result<Vec<DaemonStatus>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT group_name, ",
        ms!("updated_at"),
        ", processing_lag_ms, reorder_depth, broker_connected, streams, instance, holding
         FROM daemon_status WHERE cardinality($1::text[]) = 0 OR group_name = ANY($1)
         ORDER BY group_name, instance"
    ))
    .bind(groups)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let streams: serde_json::Value = r.get(5);
            let streams: Vec<StreamStatus> = serde_json::from_value(streams).map_err(|e| {
                StoreError::Corrupt(format!(
                    "daemon_status.streams of {}: {e}",
                    r.get::<String, _>(0)
                ))
            })?;
            Ok(DaemonStatus {
                group: r.get(0),
                instance: r.get(6),
                updated_at: ts(r.get(1)),
                processing_lag: std::time::Duration::from_millis(r.get::<i64, _>(2).max(0) as u64),
                reorder_depth: r.get::<i64, _>(3).max(0) as u64,
                holding: r.get(7),
                broker_connected: r.get(4),
                streams,
            })
        })
        .collect()
}

/// Realms the rollback drill writes its findings under: the real gate never sees
/// them, and the drill sees nothing else.
pub const DRILL_REALM_PREFIX: &str = "assayer-drill-";

/// Which findings a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every realm but the drill's.
    Production,
    /// One drill's realm only.
    Drill(&'a str),
}

/// Open findings (status `open`: acknowledged and resolved ones no longer block).
pub async fn open_findings(
    pool: &PgPool,
    scope: Scope<'_>,
) -> Result<Vec<OpenFinding>, StoreError> {
    let (drill, realm) = match scope {
        Scope::Production => (false, ""),
        Scope::Drill(r) => (true, r),
    };
    let rows = sqlx::query(concat!(
        "SELECT fingerprint, invariant, severity, realm, system, ",
        ms!("first_seen"),
        " FROM findings WHERE status = 'open'
           AND CASE WHEN $1 THEN realm = $2 ELSE NOT starts_with(realm, $3) END
         ORDER BY first_seen, fingerprint"
    ))
    .bind(drill)
    .bind(realm)
    .bind(DRILL_REALM_PREFIX)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let inv: String = r.get(1);
            let sev: String = r.get(2);
            Ok(OpenFinding {
                fingerprint: r.get(0),
                invariant: inv
                    .parse::<Invariant>()
                    .map_err(|e| StoreError::Corrupt(format!("findings.invariant: {e}")))?,
                severity: sev
                    .parse::<Severity>()
                    .map_err(|e| StoreError::Corrupt(format!("findings.severity: {e}")))?,
                realm: r.get(3),
                system: r.get(4),
                first_seen: ts(r.get(5)),
            })
        })
        .collect()
}

/// Open blocking findings first seen since `since` (the deploy window), oldest first.
pub async fn blocking_since(
    pool: &PgPool,
    since: Timestamp,
    scope: Scope<'_>,
) -> Result<Vec<OpenFinding>, StoreError> {
    Ok(open_findings(pool, scope)
        .await?
        .into_iter()
        .filter(|f| f.severity.blocks_deploy() && f.first_seen >= since)
        .collect())
}

/// The latest finished reconciliation run (of any group).
pub async fn latest_recon(pool: &PgPool) -> Result<Option<ReconRun>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('recon_runs') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let row = sqlx::query(concat!(
        "SELECT id, ",
        ms!("finished_at"),
        ", ",
        ms!("watermark_ts"),
        ", outcome, divergent_keys, error FROM recon_runs
         WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1"
    ))
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let outcome: String = r.get(3);
        Ok(ReconRun {
            id: r.get(0),
            finished_at: ts(r.get(1)),
            watermark_ts: r.get::<Option<i64>, _>(2).map(ts),
            outcome: match outcome.as_str() {
                "clean" => ReconOutcome::Clean,
                "divergent" => ReconOutcome::Divergent,
                "failed" => ReconOutcome::Failed,
                other => return Err(StoreError::Corrupt(format!("recon_runs.outcome `{other}`"))),
            },
            divergent_keys: r.get::<Option<i64>, _>(4).unwrap_or(0),
            error: r.get(5),
        })
    })
    .transpose()
}

/// The latest deploy marker of `group` that has not been rolled back.
pub async fn latest_deploy(pool: &PgPool, group: &str) -> Result<Option<DeployMarker>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT id, version, ",
        ms!("begun_at"),
        ", ",
        ms!("watermark_ts"),
        " FROM deploys WHERE group_name = $1 AND state <> 'rolled_back'
         ORDER BY begun_at DESC, id DESC LIMIT 1"
    ))
    .bind(group)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| DeployMarker {
        id: r.get(0),
        version: r.get(1),
        begun_at: ts(r.get(2)),
        watermark_ts: r.get::<Option<i64>, _>(3).map(ts),
    }))
}

/// Where a group's stream stands: its journal head, and the newest event ts of any of
/// its streams (from the daemon's last status report).
pub async fn watermark(pool: &PgPool, group: &str) -> Result<(i64, Option<Timestamp>), StoreError> {
    let r = sqlx::query(concat!(
        "SELECT coalesce((SELECT position FROM journal_heads WHERE group_name = $1), 0),
                (SELECT ",
        ms!("max((s->>'last_ts')::timestamptz)"),
        " FROM daemon_status, jsonb_array_elements(streams) s WHERE group_name = $1)"
    ))
    .bind(group)
    .fetch_one(pool)
    .await?;
    Ok((r.get(0), r.get::<Option<i64>, _>(1).map(ts)))
}

pub async fn insert_deploy(
    pool: &PgPool,
    group: &str,
    version: &str,
    by: Option<&str>,
    watermark_position: i64,
    watermark_ts: Option<Timestamp>,
) -> Result<DeployMarker, StoreError> {
    let r = sqlx::query(concat!(
        "INSERT INTO deploys (version, group_name, begun_by, watermark_position, watermark_ts)
         VALUES ($1, $2, $3, $4, timestamptz 'epoch' + $5 * interval '1 millisecond')
         RETURNING id, ",
        ms!("begun_at")
    ))
    .bind(version)
    .bind(group)
    .bind(by)
    .bind(watermark_position)
    .bind(watermark_ts.map(Timestamp::unix_millis))
    .fetch_one(pool)
    .await?;
    Ok(DeployMarker {
        id: r.get(0),
        version: version.to_string(),
        begun_at: ts(r.get(1)),
        watermark_ts,
    })
}

pub async fn set_pre_recon(pool: &PgPool, deploy: i64, run: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE deploys SET pre_recon_run = $2 WHERE id = $1")
        .bind(deploy)
        .bind(run)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn record_verify(
    pool: &PgPool,
    deploy: i64,
    decision: &str,
    report: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deploys SET verified_at = now(), verify_decision = $2, verify_report = $3,
           state = CASE WHEN state = 'begun' THEN 'verified' ELSE state END
         WHERE id = $1",
    )
    .bind(deploy)
    .bind(decision)
    .bind(report)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn mark_rolled_back(pool: &PgPool, deploy: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE deploys SET state = 'rolled_back' WHERE id = $1")
        .bind(deploy)
        .execute(pool)
        .await?;
    Ok(())
}

/// Claims the right to fire `hook` for `deploy`: true once, false ever after.
pub async fn claim_hook(
    pool: &PgPool,
    deploy: i64,
    hook: &str,
    dry_run: bool,
    kind: &str,
    trigger: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO rollback_actions (deploy_id, hook, dry_run, kind, trigger_fingerprint, outcome)
         VALUES ($1, $2, $3, $4, $5, 'firing') ON CONFLICT DO NOTHING",
    )
    .bind(deploy)
    .bind(hook)
    .bind(dry_run)
    .bind(kind)
    .bind(trigger)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn finish_hook(
    pool: &PgPool,
    deploy: i64,
    hook: &str,
    dry_run: bool,
    outcome: &str,
    detail: &str,
    elapsed_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE rollback_actions SET outcome = $4, detail = $5, elapsed_ms = $6
         WHERE deploy_id = $1 AND hook = $2 AND dry_run = $3",
    )
    .bind(deploy)
    .bind(hook)
    .bind(dry_run)
    .bind(outcome)
    .bind(detail)
    .bind(elapsed_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// The database's clock, for the clock-skew preflight item.
pub async fn db_now(pool: &PgPool) -> Result<Timestamp, StoreError> {
    let r = sqlx::query(concat!("SELECT ", ms!("clock_timestamp()")))
        .fetch_one(pool)
        .await?;
    Ok(ts(r.get(0)))
}

/// Migrations the binary ships that the database has not applied (successfully).
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let migrator = sqlx::migrate!("./migrations");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{}_{}", m.version, m.description))
        .collect())
}

/// What a store's credentials may do: (superuser, tables it may write). For the
/// preflight item "store credentials are read-only".
pub async fn store_write_access(
    url: &str,
    timeout: std::time::Duration,
) -> Result<(bool, Vec<String>), StoreError> {
    use sqlx::Connection;
    let connect = sqlx::PgConnection::connect(url);
    let mut c = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| StoreError::Timeout(timeout))??;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut c)
            .await?;
    let writable: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_toast%'
           AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
         ORDER BY 1 LIMIT 20",
    )
    .fetch_all(&mut c)
    .await?;
    let _ = c.close().await;
    Ok((superuser, writable))
}
