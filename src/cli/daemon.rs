//! `assayer daemon` and `assayer check-config`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::daemon::config::Config;

/// Run the shadow-audit daemon: consume events from RabbitMQ, audit them, keep state
/// and findings in PostgreSQL.
///
/// On its `[http] listen` address (default 127.0.0.1:9187) it serves /healthz, /readyz,
/// /metrics (Prometheus), /v1/gate and /v1/gate/flagger (the deploy gate, for CI, Argo
/// Rollouts and Flagger) and /ui (the support console). SIGTERM or SIGINT stops it
/// gracefully: it finishes the batch, checkpoints, acks and exits.
///
/// It logs to stderr (JSON lines unless stderr is a terminal): its lifecycle at INFO,
/// findings and reconnects at WARN. ASSAYER_LOG sets the filter (default
/// `warn,assayer=info`).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// TOML config file (docs/configuration.md). Secrets may come from
    /// ASSAYER_DATABASE_URL and ASSAYER_AMQP_URL.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
}

/// Validate a daemon config file and print the effective config (secrets masked).
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.config)?;
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        crate::daemon::run(config, shutdown).await
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn check(args: CheckConfigArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(&args.config)?;
    if let Some(dir) = &config.policy.dir {
        crate::core::policy::Policy::load_dir(dir)?;
    }
    let shown = toml::to_string_pretty(&config).context("rendering the effective config")?;
    println!(
        "# {}: valid. Effective config (defaults filled in, secrets masked; a valid config file itself):\n",
        args.config.display()
    );
    print!("{shown}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// The daemon's runtime: two workers match the reference machine; the pipeline itself
/// is one task, the rest is HTTP and signal handling.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    token.cancel();
}
