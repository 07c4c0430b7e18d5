//! The deploy workflow: `begin` records a marker at the stream watermark (and
//! reconciles), `verify` reconciles at a later watermark and gates, `watch` watches the
//! post-deploy window and fires the rollback hooks once on a blocking finding.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::hooks::{self, HookResult};
use super::{Gate, GateError};
use crate::adapters::gate_store::{self, Scope};
use crate::core::gate::{DeployMarker, GateReport, OpenFinding};
use crate::core::time::Timestamp;

#[derive(Debug, Serialize)]
pub struct Begun {
    pub deploy: DeployMarker,
    pub watermark_position: i64,
    pub reconciliation: ReconStep,
}

/// What the reconciliation step of `begin`/`verify` did.
#[derive(Debug, Serialize)]
pub struct ReconStep {
    /// `recon_runs.id` of the run, when one ran.
    pub run: Option<i64>,
    pub outcome: String,
    pub detail: String,
}

/// Records a deploy marker at the current watermark, then reconciles (pre-deploy).
pub async fn begin(gate: &Gate, version: &str, by: Option<&str>) -> Result<Begun, GateError> {
    if version.trim().is_empty() {
        return Err(GateError::Usage("--version must not be empty".into()));
    }
    let pool = gate.pg().pool();
    let group = &gate.config.daemon.group;
    let (position, watermark_ts) = gate_store::watermark(pool, group).await?;
    let deploy =
        gate_store::insert_deploy(pool, group, version, by, position, watermark_ts).await?;
    let reconciliation = super::reconcile(gate).await;
    if let Some(run) = reconciliation.run {
        gate_store::set_pre_recon(pool, deploy.id, run).await?;
    }
    Ok(Begun {
        deploy,
        watermark_position: position,
        reconciliation,
    })
}

#[derive(Debug, Serialize)]
pub struct Verified {
    pub reconciliation: ReconStep,
    pub report: GateReport,
}

/// Reconciles at the current (post-deploy) watermark, then gates; records the decision
/// on the deploy marker.
pub async fn verify(gate: &Gate) -> Result<Verified, GateError> {
    let pool = gate.pg().pool();
    let deploy = gate_store::latest_deploy(pool, &gate.config.daemon.group)
        .await?
        .ok_or_else(no_marker)?;
    let reconciliation = super::reconcile(gate).await;
    let report = gate.evaluate().await;
    gate_store::record_verify(
        pool,
        deploy.id,
        report.decision.as_str(),
        &serde_json::to_value(&report).expect("reports serialize"),
    )
    .await?;
    Ok(Verified {
        reconciliation,
        report,
    })
}

fn no_marker() -> GateError {
    GateError::Usage(
        "no deploy marker for this group: run `assayer deploy begin --version V` first".into(),
    )
}

#[derive(Debug, Serialize)]
pub struct Watched {
    pub deploy: DeployMarker,
    /// The blocking finding that triggered the rollback, if any.
    pub trigger: Option<TriggerView>,
    pub hooks: Vec<HookResult>,
    pub dry_run: bool,
    pub watched_ms: u64,
    /// Why the watch ended: `window-passed`, `rollback`, or `interrupted`.
    pub ended: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TriggerView {
    pub fingerprint: String,
    pub invariant: &'static str,
    pub severity: &'static str,
    pub realm: String,
    pub system: Option<String>,
    pub first_seen: Timestamp,
}

impl From<&OpenFinding> for TriggerView {
    fn from(f: &OpenFinding) -> Self {
        TriggerView {
            fingerprint: f.fingerprint.clone(),
            invariant: f.invariant.id(),
            severity: f.severity.as_str(),
            realm: f.realm.clone(),
            system: f.system.clone(),
            first_seen: f.first_seen,
        }
    }
}

/// Watches the latest deploy of the config's group for `window`: the first open
/// blocking finding first seen after the deploy began fires every rollback hook once.
pub async fn watch(
    gate: &Gate,
    window: Duration,
    shutdown: CancellationToken,
) -> Result<Watched, GateError> {
    let pool = gate.pg().pool();
    let deploy = gate_store::latest_deploy(pool, &gate.config.daemon.group)
        .await?
        .ok_or_else(no_marker)?;
    watch_deploy(gate, deploy, Scope::Production, window, shutdown).await
}

/// Watches `deploy` for blocking findings in `scope`.
pub async fn watch_deploy(
    gate: &Gate,
    deploy: DeployMarker,
    scope: Scope<'_>,
    window: Duration,
    shutdown: CancellationToken,
) -> Result<Watched, GateError> {
    let pool = gate.pg().pool();
    let dry_run = !gate.config.rollback.enabled;
    let started = Instant::now();
    loop {
        let blocking = gate_store::blocking_since(pool, deploy.begun_at, scope).await?;
        if let Some(trigger) = blocking.first() {
            let results = hooks::fire_all(&gate.config, pool, &deploy, trigger, dry_run).await?;
            if !dry_run && results.iter().any(|r| r.outcome == "ok") {
                gate_store::mark_rolled_back(pool, deploy.id).await?;
            }
            return Ok(Watched {
                deploy,
                trigger: Some(trigger.into()),
                hooks: results,
                dry_run,
                watched_ms: started.elapsed().as_millis() as u64,
                ended: "rollback",
            });
        }
        let ended = if started.elapsed() >= window {
            Some("window-passed")
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => Some("interrupted"),
                _ = tokio::time::sleep(gate.config.rollback.watch_poll.min(window.saturating_sub(started.elapsed()))) => None,
            }
        };
        if let Some(ended) = ended {
            return Ok(Watched {
                deploy,
                trigger: None,
                hooks: Vec::new(),
                dry_run,
                watched_ms: started.elapsed().as_millis() as u64,
                ended,
            });
        }
    }
}
