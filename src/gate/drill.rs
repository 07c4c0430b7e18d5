//! `assayer deploy drill`: the rollback path, end to end, on the reference world — in a
//! scratch realm (`assayer-drill-<id>`), a scratch schema for its stores and a deploy
//! marker of its own, so it never touches the real gate.
//!
//! Steps, each timed: materialize a clean reference world's stores; reconcile them
//! (clean); record a deploy marker; the "bad release" creates gold through the stream
//! (`tx.unbalanced`) and writes a row straight into a store; reconciliation catches the write;
//! `watch` sees the blocking finding and fires the configured rollback hooks (dry-run
//! unless `[rollback] enabled = true`); the drill restores the store (standing in for
//! the data restore of a real rollback); the post-rollback reconciliation is clean.
//! The drill's findings are left resolved and its schema dropped.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::hooks::HookResult;
use super::{Gate, GateError};
use crate::adapters::gate_store::{self, DRILL_REALM_PREFIX, Scope};
use crate::adapters::postgres::{self, Pg};
use crate::adapters::sim_stores::SimStores;
use crate::core::engine::Engine;
use crate::core::time::Timestamp;
use crate::daemon::config::Config;
use crate::recon::{self, ReconOptions, Record, Source};
use crate::sim::stores::{Change, Drift, StoreWorld, TABLES, inject_drift, store_config_toml};
use crate::sim::{self, Noise, SimConfig};

#[derive(Debug, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub elapsed_ms: u64,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub realm: String,
    pub deploy_id: Option<i64>,
    pub dry_run: bool,
    pub ok: bool,
    pub steps: Vec<Step>,
    pub hooks: Vec<HookResult>,
    pub elapsed_ms: u64,
}

struct Steps {
    steps: Vec<Step>,
    started: Instant,
}

impl Steps {
    fn record(&mut self, name: &'static str, ok: bool, detail: String) -> bool {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        self.started = Instant::now();
        tracing::info!(step = name, ok, %detail, "drill");
        self.steps.push(Step {
            name,
            ok,
            elapsed_ms,
            detail,
        });
        ok
    }
}

/// Runs the drill with `events` clean events. `Err` only when the drill could not be
/// set up; a step that fails is in the report (`ok = false`).
pub async fn drill(gate: &Gate, events: usize) -> Result<DrillReport, GateError> {
    let started = Instant::now();
    let id = format!(
        "{:x}{:04x}",
        Timestamp::now().unix_millis(),
        std::process::id() & 0xffff
    );
    let realm = format!("{DRILL_REALM_PREFIX}{id}");
    let schema = format!("assayer_drill_{id}");
    let pool = gate.pg().pool();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(pool)
        .await
        .map_err(|e| GateError::Usage(format!("cannot create the drill's scratch schema: {e}")))?;
    let result = run(gate, events, &id, &realm, &schema).await;
    // Clean up whatever happened: the schema goes, the drill's findings are resolved.
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(pool)
    .await;
    let _ = sqlx::query(
        "UPDATE findings SET status = 'resolved', status_by = 'assayer deploy drill',
           status_reason = 'rollback drill', status_at = now()
         WHERE realm = $1 AND status <> 'resolved'",
    )
    .bind(&realm)
    .execute(pool)
    .await;
    let (steps, hooks, deploy_id) = result?;
    Ok(DrillReport {
        ok: steps.iter().all(|s| s.ok),
        realm,
        deploy_id,
        dry_run: !gate.config.rollback.enabled,
        steps,
        hooks,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

type Outcome = (Vec<Step>, Vec<HookResult>, Option<i64>);

async fn run(
    gate: &Gate,
    events: usize,
    id: &str,
    realm: &str,
    schema: &str,
) -> Result<Outcome, GateError> {
    let mut s = Steps {
        steps: Vec::new(),
        started: Instant::now(),
    };
    let pool = gate.pg().pool();
    let config = &gate.config;

    // 1. A clean reference world, its stream ending now, in the drill's realm.
    let mut lines = world(events, realm);
    let mut world = StoreWorld::new();
    for l in &lines {
        world.apply_line(l);
    }
    let tables = world.tables();
    let store_url = with_search_path(&config.database.url, schema);
    let stores = SimStores::connect(&store_url, None, "")
        .await
        .map_err(|e| GateError::Usage(format!("drill stores: {e}")))?;
    let written = async {
        stores.reset().await?;
        stores.write_all(&tables).await
    }
    .await;
    if !s.record(
        "materialize stores",
        written.is_ok(),
        match &written {
            Ok(()) => format!(
                "{} events, {} rows in {} tables of schema {schema}",
                lines.len(),
                tables.rows.values().map(|r| r.len()).sum::<usize>(),
                tables.rows.len()
            ),
            Err(e) => e.to_string(),
        },
    ) {
        return Ok((s.steps, Vec::new(), None));
    }
    let drill_config = drill_config(config, &store_url, realm)?;

    // 2. Pre-deploy reconciliation: clean.
    let pre = reconcile(&drill_config, &lines).await;
    if !s.record(
        "pre-deploy reconciliation",
        pre.as_ref().is_ok_and(|n| *n == 0),
        describe(&pre),
    ) {
        return Ok((s.steps, Vec::new(), None));
    }

    // 3. The deploy marker (its own group: never the real deploy's).
    let group = format!("drill:{}:{id}", config.daemon.group);
    let deploy = gate_store::insert_deploy(
        pool,
        &group,
        &format!("drill-{id}"),
        Some("assayer deploy drill"),
        lines.len() as i64,
        Some(Timestamp::now()),
    )
    .await?;
    s.record(
        "deploy marker",
        true,
        format!("deploy #{} in group {group}", deploy.id),
    );

    // 4. The bad release: gold created through the stream, and a row written straight
    //    into a store.
    lines.push(corrupt_event(&lines, realm));
    let mut engine = Engine::new(gate.policy.clone());
    let mut findings = Vec::new();
    let now = Timestamp::now();
    for l in &lines {
        engine.ingest(l, now, &mut findings);
    }
    engine.finish(Timestamp(now.0 + 3_600_000_000_000), &mut findings);
    let blocking: Vec<_> = findings
        .into_iter()
        .filter(|f| f.severity.blocks_deploy())
        .collect();
    let mut tables_now = tables.clone();
    let planted = inject_drift(&mut tables_now, &[(Drift::RowInserted, 1)], 3);
    let direct = planted.first().and_then(|p| {
        let table = TABLES.iter().find(|t| t.table == p.store)?.table;
        Some(Change {
            table,
            realm: p.realm.clone(),
            key: p.key.clone(),
            values: p.actual.clone(),
        })
    });
    let Some(direct) = direct else {
        s.record(
            "inject corruption",
            false,
            "the world has no row to plant a direct write next to".into(),
        );
        return Ok((s.steps, Vec::new(), Some(deploy.id)));
    };
    let pg = Pg::lazy(
        &postgres::ConnectOptions {
            url: &config.database.url,
            pool_size_max: 1,
            connect_timeout: config.database.connect_timeout,
            statement_timeout: config.database.statement_timeout,
        },
        &group,
    )?;
    pg.store_findings(&blocking).await?;
    let wrote = stores.apply(std::slice::from_ref(&direct)).await;
    let injected = wrote.is_ok()
        && blocking
            .iter()
            .any(|f| f.invariant == crate::core::finding::Invariant::TxUnbalanced);
    s.record(
        "inject corruption",
        injected,
        format!(
            "500 gold taken from world:loot into nothing ({} blocking finding(s): {}); {} written straight into {}{}",
            blocking.len(),
            blocking
                .iter()
                .map(|f| f.invariant.id())
                .collect::<Vec<_>>()
                .join(", "),
            direct.key.display(),
            direct.table,
            wrote.err().map(|e| format!(" — failed: {e}")).unwrap_or_default()
        ),
    );

    // 5. Reconciliation catches the direct write.
    let caught = reconcile(&drill_config, &lines).await;
    s.record(
        "reconciliation detects the write",
        caught.as_ref().is_ok_and(|n| *n >= 1),
        describe(&caught),
    );

    // 6. Watch fires the rollback hooks.
    let watched = super::deploy::watch_deploy(
        gate,
        deploy.clone(),
        Scope::Drill(realm),
        Duration::from_secs(60),
        CancellationToken::new(),
    )
    .await?;
    let hooks = watched.hooks;
    let fired_ok = watched.trigger.is_some()
        && hooks
            .iter()
            .all(|h| h.outcome == "ok" || h.outcome == "dry-run");
    s.record(
        "watch fires rollback hooks",
        fired_ok,
        match &watched.trigger {
            None => "no blocking finding seen within 60 s".into(),
            Some(t) => format!(
                "{} seen after {} ms; hooks: {}",
                t.invariant,
                watched.watched_ms,
                if hooks.is_empty() {
                    "none configured".to_string()
                } else {
                    hooks
                        .iter()
                        .map(|h| format!("{} {}", h.hook, h.outcome))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        },
    );

    // 7. The rollback restores the store (here the drill plays the data restore).
    let undo = Change {
        values: Vec::new(),
        ..direct
    };
    let restored = stores.apply(std::slice::from_ref(&undo)).await;
    s.record(
        "restore the store",
        restored.is_ok(),
        match restored {
            Ok(()) => format!("removed {} from {}", undo.key.display(), undo.table),
            Err(e) => e.to_string(),
        },
    );
    gate_store::mark_rolled_back(pool, deploy.id).await?;

    // 8. Post-rollback reconciliation: clean again.
    let post = reconcile(&drill_config, &lines).await;
    s.record(
        "post-rollback reconciliation",
        post.as_ref().is_ok_and(|n| *n == 0),
        describe(&post),
    );
    Ok((s.steps, hooks, Some(deploy.id)))
}

/// A clean world whose stream ends now, moved to the drill's realm.
fn world(events: usize, realm: &str) -> Vec<Vec<u8>> {
    let mut cfg = SimConfig {
        seed: 17,
        events,
        players: 40,
        noise: Noise::none(),
        ..SimConfig::default()
    };
    cfg.start = Timestamp(Timestamp::now().0 - events as i64 * 20_000_000);
    let from = b"\"realm\":\"realm-1\"";
    let to = format!("\"realm\":\"{realm}\"");
    let mut lines = Vec::new();
    sim::generate(&cfg, &mut |l: &[u8]| {
        // The simulator's canonical lines spell the realm exactly like this.
        let mut out = Vec::with_capacity(l.len() + to.len());
        let mut rest = l;
        while let Some(i) = memchr::memmem::find(rest, from) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(to.as_bytes());
            rest = &rest[i + from.len()..];
        }
        out.extend_from_slice(rest);
        lines.push(out);
    });
    lines
}

/// The bad release's stream-side corruption: a loot drop that takes 500 gold out of
/// the `world:loot` faucet and gives it to nobody (`tx.unbalanced`). It touches only a
/// `world:` balance, which no store holds, so reconciliation judges the stores alone.
fn corrupt_event(lines: &[Vec<u8>], realm: &str) -> Vec<u8> {
    let mut loot_seq = 0u64;
    for l in lines {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(l) else {
            continue;
        };
        if v["system"] == "loot" {
            loot_seq = loot_seq.max(v["seq"].as_u64().unwrap_or(0));
        }
    }
    let line = serde_json::json!({
        "v": 1,
        "tx_id": format!("drill-bad-release-{}", loot_seq + 1),
        "realm": realm,
        "system": "loot",
        "seq": loot_seq + 1,
        "ts": Timestamp::now().to_rfc3339(),
        "kind": "loot.drop",
        "actor": "player:drill",
        "postings": [{"account": "world:loot", "asset": "gold", "delta": -500}],
    });
    serde_json::to_vec(&line).expect("JSON values serialize")
}

/// The drill's reconciliation config: the daemon config with the scratch stores.
fn drill_config(config: &Config, store_url: &str, realm: &str) -> Result<Config, GateError> {
    let text = format!(
        "[database]\nurl = \"{}\"\n[reconcile]\ngrace_ms = 1\n{}",
        config.database.url,
        store_config_toml(store_url, realm, None, None)
    );
    let parsed = Config::parse(&text, "the drill's store config", |_| None)
        .map_err(|e| GateError::Usage(e.to_string()))?;
    Ok(Config {
        recon: parsed.recon,
        ..config.clone()
    })
}

/// Reconciles the scratch stores against `lines`: the number of divergent keys.
async fn reconcile(config: &Config, lines: &[Vec<u8>]) -> Result<usize, String> {
    let path = std::env::temp_dir().join(format!(
        "assayer-drill-{}-{}.ndjson",
        std::process::id(),
        Timestamp::now().unix_millis()
    ));
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut options = ReconOptions::new(Source::Events(path.clone()));
    options.record = Record::No;
    options.grace = Some(Duration::from_millis(1));
    let r = recon::run(config, &options).await;
    let _ = std::fs::remove_file(&path);
    r.map(|r| r.findings.len()).map_err(|e| e.to_string())
}

fn describe(r: &Result<usize, String>) -> String {
    match r {
        Ok(0) => "clean".into(),
        Ok(n) => format!("{n} divergent key(s)"),
        Err(e) => format!("failed: {e}"),
    }
}

/// `url` with the session's `search_path` set to `schema`.
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}
