//! Rollback hooks: a command, an HTTP webhook, an AMQP message. Each fires at most once
//! per deploy — the claim is a row in `rollback_actions`, taken before the hook runs —
//! and is a recorded dry run unless `[rollback] enabled = true`.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use crate::adapters::amqp::Amqp;
use crate::adapters::gate_store;
use crate::adapters::http_client;
use crate::adapters::postgres::StoreError;
use crate::core::gate::{DeployMarker, OpenFinding};
use crate::daemon::config::{Config, Hook, HookAction};

/// What happened to one hook.
#[derive(Debug, Clone, Serialize)]
pub struct HookResult {
    pub hook: String,
    pub kind: &'static str,
    /// `ok`, `failed`, `dry-run`, or `already-fired` (claimed by an earlier run).
    pub outcome: String,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// Fires every configured hook for `deploy`, triggered by `trigger`.
pub async fn fire_all(
    config: &Config,
    pool: &sqlx::PgPool,
    deploy: &DeployMarker,
    trigger: &OpenFinding,
    dry_run: bool,
) -> Result<Vec<HookResult>, StoreError> {
    let mut results = Vec::new();
    for hook in &config.rollback.hooks {
        let kind = hook.action.kind();
        if !gate_store::claim_hook(
            pool,
            deploy.id,
            &hook.name,
            dry_run,
            kind,
            &trigger.fingerprint,
        )
        .await?
        {
            results.push(HookResult {
                hook: hook.name.clone(),
                kind,
                outcome: "already-fired".into(),
                detail: format!("hook already fired for deploy {}", deploy.id),
                elapsed_ms: 0,
            });
            continue;
        }
        let started = Instant::now();
        let (outcome, detail) = if dry_run {
            (
                "dry-run",
                format!("would run {} (rollback.enabled = false)", describe(hook)),
            )
        } else {
            match fire(config, hook, deploy, trigger).await {
                Ok(d) => ("ok", d),
                Err(d) => ("failed", d),
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        gate_store::finish_hook(
            pool,
            deploy.id,
            &hook.name,
            dry_run,
            outcome,
            &detail,
            elapsed_ms as i64,
        )
        .await?;
        if outcome == "failed" {
            warn!(hook = %hook.name, deploy = deploy.id, %detail, "rollback hook failed");
        } else {
            info!(hook = %hook.name, deploy = deploy.id, outcome, %detail, "rollback hook");
        }
        results.push(HookResult {
            hook: hook.name.clone(),
            kind,
            outcome: outcome.into(),
            detail,
            elapsed_ms,
        });
    }
    Ok(results)
}

fn describe(hook: &Hook) -> String {
    match &hook.action {
        HookAction::Command { command } => format!("command {command:?}"),
        HookAction::Http { url } => format!("POST {url}"),
        HookAction::Amqp {
            exchange,
            routing_key,
        } => format!("publish to {exchange} with key {routing_key}"),
    }
}

async fn fire(
    config: &Config,
    hook: &Hook,
    deploy: &DeployMarker,
    trigger: &OpenFinding,
) -> Result<String, String> {
    let body = json!({
        "event": "assayer.rollback",
        "hook": hook.name,
        "deploy": deploy,
        "trigger": {
            "fingerprint": trigger.fingerprint,
            "invariant": trigger.invariant.id(),
            "severity": trigger.severity.as_str(),
            "realm": trigger.realm,
            "system": trigger.system,
        },
    });
    match &hook.action {
        HookAction::Command { command } => {
            let mut cmd = tokio::process::Command::new(&command[0]);
            cmd.args(&command[1..])
                .env("ASSAYER_DEPLOY_ID", deploy.id.to_string())
                .env("ASSAYER_DEPLOY_VERSION", &deploy.version)
                .env("ASSAYER_TRIGGER_FINGERPRINT", &trigger.fingerprint)
                .env("ASSAYER_TRIGGER_INVARIANT", trigger.invariant.id())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(hook.timeout, cmd.output())
                .await
                .map_err(|_| format!("timed out after {:?}", hook.timeout))?
                .map_err(|e| format!("cannot run {:?}: {e}", command[0]))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                Ok(format!("{} exited 0", command[0]))
            } else {
                Err(format!(
                    "{} exited with {}: {}",
                    command[0],
                    out.status,
                    stderr.trim()
                ))
            }
        }
        HookAction::Http { url } => http_client::post_json(url, &body, hook.timeout).await,
        HookAction::Amqp {
            exchange,
            routing_key,
        } => {
            let bus = Amqp::connect(
                &config.amqp.url,
                "assayer rollback hook",
                hook.timeout.min(Duration::from_secs(30)),
            )
            .await
            .map_err(|e| e.to_string())?;
            let r = bus
                .publish_json(
                    exchange,
                    routing_key,
                    &serde_json::to_vec(&body).expect("JSON values serialize"),
                )
                .await
                .map_err(|e| e.to_string());
            bus.close().await;
            r.map(|()| format!("published to {exchange} with key {routing_key} (confirmed)"))
        }
    }
}
