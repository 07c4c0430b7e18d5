//! The daemon's side of the deploy gate: `GET /v1/gate` answers from a report at most
//! `gate.cache_ms` old (concurrent requests share one evaluation), the gauges follow
//! every `gate.interval_ms`, and the daemon's status row — the gate's evidence that
//! somebody is auditing — is rewritten every `gate.status_interval_ms`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::health::Health;
use super::metrics::Metrics;
use crate::adapters::gate_store::{self, StatusRow};
use crate::core::gate::GateReport;
use crate::core::time::Timestamp;
use crate::gate::Gate;

pub struct GateService {
    gate: Gate,
    metrics: Arc<Metrics>,
    cache: tokio::sync::Mutex<Option<(Instant, GateReport)>>,
}

impl GateService {
    pub fn new(gate: Gate, metrics: Arc<Metrics>) -> GateService {
        GateService {
            gate,
            metrics,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The current report (cached up to `gate.cache_ms`).
    pub async fn report(&self) -> GateReport {
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < self.gate.config.gate.cache
        {
            return r.clone();
        }
        // Stamped when the evaluation began, not when it ended: its reads are that old,
        // and a slow evaluation must not pass a report older than `cache_ms` as fresh
        // (a reconciliation recorded while it ran was answered as missing).
        let started = Instant::now();
        let r = self.gate.evaluate().await;
        self.metrics.gate(&r);
        *cache = Some((started, r.clone()));
        r
    }

    /// Writes the status row and refreshes the gate gauges until `shutdown`.
    pub async fn run(self: Arc<Self>, health: Arc<Health>, shutdown: CancellationToken) {
        let c = &self.gate.config;
        let started_at = Timestamp::now();
        let host = hostname();
        let instance = format!("{host}:{}", std::process::id());
        let mut status_tick = tokio::time::interval(c.gate.status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gate_tick = tokio::time::interval(c.gate.interval);
        gate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = status_tick.tick() => {
                    let (broker, lag, p) = health.status();
                    let row = StatusRow {
                        group: c.daemon.group.clone(),
                        instance: instance.clone(),
                        started_at,
                        host: host.clone(),
                        processing_lag_ms: lag.as_millis() as i64,
                        reorder_depth: p.reorder_depth as i64,
                        holding: p.holding,
                        broker_connected: broker,
                        journal_position: p.journal_position,
                        streams: p.streams,
                    };
                    let write = gate_store::write_status(self.gate.pg().pool(), &row);
                    match tokio::time::timeout(Duration::from_secs(5), write).await {
                        Ok(Ok(())) => {}
                        // The session reports database trouble; the row going stale is
                        // exactly what the gate should see.
                        Ok(Err(e)) => debug!(error = %e, "status row not written"),
                        Err(_) => debug!("status row write timed out"),
                    }
                }
                _ = gate_tick.tick() => {
                    self.report().await;
                }
            }
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
