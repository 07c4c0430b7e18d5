//! HTTP (axum): `/healthz` (process alive), `/readyz` (can do its job now), `/metrics`
//! (OpenMetrics), `/v1/gate` (the deploy gate's report, always 200 with an explicit
//! decision, for Argo Rollouts' web provider), `/v1/gate/flagger` (Flagger's webhook:
//! 2xx only for GO) and the support console under `/ui` (`adapters::ui`). The only
//! modules that import axum.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::core::gate::Decision;
use crate::daemon::gate_service::GateService;
use crate::daemon::health::Health;
use crate::daemon::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub gate: Arc<GateService>,
    /// The support console (`/ui`), when enabled.
    pub ui: Option<Arc<crate::adapters::ui::Ui>>,
}

pub fn router(state: AppState) -> Router {
    let console = match &state.ui {
        Some(ui) => crate::adapters::ui::routes(ui.clone()),
        None => Router::new(),
    };
    Router::new()
        .merge(console)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/gate", get(gate))
        .route("/v1/gate/flagger", post(flagger).get(flagger))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let report = s.health.readiness();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

/// Always 200: the decision is in the body (`decision`: GO, MARGINAL, NO-GO), so a
/// caller can tell "NO-GO" from "the gate is unreachable".
async fn gate(State(s): State<AppState>) -> impl IntoResponse {
    Json(s.gate.report().await)
}

/// Flagger's webhook contract: any 2xx lets the canary advance, anything else halts it.
/// 200 only for GO; MARGINAL and NO-GO answer 412 with the report.
async fn flagger(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.gate.report().await;
    let code = if r.decision == Decision::Go {
        StatusCode::OK
    } else {
        StatusCode::PRECONDITION_FAILED
    };
    (code, Json(r))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Binds `addr` (so a taken port fails at startup, not later) and serves until
/// `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }))
}
