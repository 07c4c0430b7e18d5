//! The deploy gate's wiring: observe the audit (PostgreSQL, the broker, Prometheus, a
//! sandboxed engine), then let `core::gate::evaluate` decide. The CLI (`assayer gate`,
//! `assayer deploy`) and the daemon (`GET /v1/gate`, the Flagger webhook, the gauges)
//! all call [`Gate::evaluate`], so every interface shows the same decision.

pub mod deploy;
pub mod drill;
pub mod hooks;

use std::path::Path;
use std::time::Duration;

use crate::adapters::amqp::{Amqp, Topology};
use crate::adapters::postgres::{self, Pg, StoreError};
use crate::adapters::{gate_store, http_client};
use crate::core::gate::{
    CheckStatus, GatePolicy, GateReport, Observations, PreflightItem, SloObservation, evaluate,
    self_test,
};
use crate::core::policy::{Policy, PolicyError};
use crate::core::time::Timestamp;
use crate::daemon::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
}

/// Everything the gate needs, loaded once.
pub struct Gate {
    pub config: Config,
    pub config_file: String,
    pub policy: Policy,
    pub gate_policy: GatePolicy,
    pg: Pg,
}

impl Gate {
    /// Loads the ledger policy and the gate policy named by `config` (or `gate_policy`,
    /// which wins), and prepares a lazy database pool.
    pub fn load(
        config: Config,
        config_file: &str,
        gate_policy: Option<&Path>,
    ) -> Result<Gate, GateError> {
        let policy = match &config.policy.dir {
            Some(dir) => Policy::load_dir(dir)?,
            None => Policy::builtin(),
        };
        let gate_policy = match gate_policy.or(config.gate.policy_file.as_deref()) {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                    file: path.to_path_buf(),
                    source,
                })?;
                GatePolicy::parse(&text, &path.display().to_string())?
            }
            None => GatePolicy::builtin(),
        };
        if !gate_policy.slos.is_empty() && config.gate.prometheus_url.is_none() {
            return Err(GateError::Usage(format!(
                "{config_file}: gate.prometheus_url: the gate policy lists {} service level(s) but no Prometheus is configured",
                gate_policy.slos.len()
            )));
        }
        let pg = Pg::lazy(
            &postgres::ConnectOptions {
                url: &config.database.url,
                pool_size_max: 2,
                connect_timeout: config.database.connect_timeout,
                statement_timeout: config.database.statement_timeout,
            },
            &config.daemon.group,
        )?;
        Ok(Gate {
            config,
            config_file: config_file.to_string(),
            policy,
            gate_policy,
            pg,
        })
    }

    pub fn pg(&self) -> &Pg {
        &self.pg
    }

    /// The decision now. Never an error: what cannot be observed fails closed.
    pub async fn evaluate(&self) -> GateReport {
        match self.observe().await {
            Ok(obs) => evaluate(&obs, &self.gate_policy),
            Err(e) => GateReport::unobservable(Timestamp::now(), &e.to_string()),
        }
    }

    /// Observes the audit. `Err` only when the database — where findings, status and
    /// reconciliations live — cannot be read at all.
    pub async fn observe(&self) -> Result<Observations, StoreError> {
        let pool = self.pg.pool();
        let c = &self.config;
        let findings = gate_store::open_findings(pool, gate_store::Scope::Production).await?;
        let groups = if c.gate.groups.is_empty() {
            vec![c.daemon.group.clone()]
        } else {
            c.gate.groups.clone()
        };
        let daemons = gate_store::daemon_status(pool, &groups).await?;
        let recon = gate_store::latest_recon(pool).await?;
        let deploy = gate_store::latest_deploy(pool, &c.daemon.group).await?;
        let realms = if !c.gate.realms.is_empty() {
            c.gate.realms.clone()
        } else if c.amqp.realms.iter().any(|r| r == "*") {
            Vec::new()
        } else {
            c.amqp.realms.clone()
        };
        let slos = self.service_levels().await;
        let preflight = self.preflight().await;
        Ok(Observations {
            now: Timestamp::now(),
            findings,
            groups,
            daemons,
            realms,
            recon,
            deploy,
            self_test: self_test(&self.policy),
            slos,
            preflight,
        })
    }

    async fn service_levels(&self) -> Vec<SloObservation> {
        let Some(url) = &self.config.gate.prometheus_url else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rule in &self.gate_policy.slos {
            let value =
                http_client::prometheus_scalar(url, &rule.query, self.config.gate.query_timeout)
                    .await;
            out.push(SloObservation {
                name: rule.name.clone(),
                value,
            });
        }
        out
    }

    /// Services reachable, migrations applied, topology present, clock in step.
    pub async fn preflight(&self) -> Vec<PreflightItem> {
        let c = &self.config;
        let item = |name: &str, status: CheckStatus, detail: String| PreflightItem {
            name: name.to_string(),
            status,
            detail,
        };
        let mut items = vec![item(
            "config",
            CheckStatus::Pass,
            format!("{} is valid", self.config_file),
        )];
        let pool = self.pg.pool();
        match gate_store::db_now(pool).await {
            Err(e) => items.push(item("database", CheckStatus::Fail, e.to_string())),
            Ok(db_now) => {
                items.push(item(
                    "database",
                    CheckStatus::Pass,
                    format!("reachable at {}", postgres_host(&c.database.url)),
                ));
                let local = Timestamp::now();
                let skew = Duration::from_nanos(local.0.abs_diff(db_now.0));
                items.push(item(
                    "clock_skew",
                    if skew <= self.gate_policy.clock_skew_max {
                        CheckStatus::Pass
                    } else {
                        CheckStatus::Fail
                    },
                    format!(
                        "this host and PostgreSQL differ by {} ms (limit {} ms)",
                        skew.as_millis(),
                        self.gate_policy.clock_skew_max.as_millis()
                    ),
                ));
                match gate_store::pending_migrations(pool).await {
                    Ok(p) if p.is_empty() => items.push(item(
                        "migrations",
                        CheckStatus::Pass,
                        "every migration this binary ships is applied".into(),
                    )),
                    Ok(p) => items.push(item(
                        "migrations",
                        CheckStatus::Fail,
                        format!(
                            "{} pending: {} (start the daemon or run `assayer migrate`)",
                            p.len(),
                            p.join(", ")
                        ),
                    )),
                    Err(e) => items.push(item("migrations", CheckStatus::Fail, e.to_string())),
                }
            }
        }
        let topology = Topology {
            exchange: c.amqp.exchange.clone(),
            queue: c.amqp.queue.clone(),
            binding_keys: c.binding_keys(),
            dead_letter_exchange: c.amqp.dead_letter_exchange.clone(),
            dead_letter_queue: c.amqp.dead_letter_queue.clone(),
            findings_exchange: c.amqp.findings_exchange.clone(),
            declare: false,
        };
        match Amqp::connect(
            &c.amqp.url,
            "assayer gate preflight",
            c.amqp.operation_timeout,
        )
        .await
        {
            Err(e) => items.push(item("broker", CheckStatus::Fail, e.to_string())),
            Ok(bus) => {
                items.push(item("broker", CheckStatus::Pass, "reachable".into()));
                match bus.declare(&topology).await {
                    Ok(()) => items.push(item(
                        "topology",
                        CheckStatus::Pass,
                        format!(
                            "exchanges {}, {}, {} and queues {}, {} present",
                            topology.exchange,
                            topology.dead_letter_exchange,
                            topology.findings_exchange,
                            topology.queue,
                            topology.dead_letter_queue
                        ),
                    )),
                    Err(e) => items.push(item("topology", CheckStatus::Fail, e.to_string())),
                }
                bus.close().await;
            }
        }
        items.extend(self.store_credentials().await);
        items.push(match &c.gate.management_url {
            None => item(
                "bindings",
                CheckStatus::Skip,
                "not verifiable over AMQP; set gate.management_url to check them through the RabbitMQ management API".into(),
            ),
            Some(url) => match http_client::rabbitmq_bindings(
                url,
                &c.amqp.url,
                &c.amqp.queue,
                &c.amqp.exchange,
                c.gate.query_timeout,
            )
            .await
            {
                Err(e) => item("bindings", CheckStatus::Fail, e),
                Ok(bound) => {
                    let missing: Vec<String> = topology
                        .binding_keys
                        .iter()
                        .filter(|k| !bound.contains(k))
                        .cloned()
                        .collect();
                    if missing.is_empty() {
                        item(
                            "bindings",
                            CheckStatus::Pass,
                            format!("{} bound with {}", c.amqp.queue, bound.join(", ")),
                        )
                    } else {
                        item(
                            "bindings",
                            CheckStatus::Fail,
                            format!(
                                "{} lacks binding(s) {} from {}",
                                c.amqp.queue,
                                missing.join(", "),
                                c.amqp.exchange
                            ),
                        )
                    }
                }
            },
        });
        items
    }
}

impl Gate {
    /// One preflight item per store: PostgreSQL credentials must not be able to write
    /// (reconciliation only reads; credentials that could write are one bug away from
    /// changing production). Redis ACLs are not inspected.
    async fn store_credentials(&self) -> Vec<PreflightItem> {
        use crate::recon::config::StoreKind;
        let mut items = Vec::new();
        for s in &self.config.recon.stores {
            let name = format!("store {} read-only", s.name);
            let (status, detail) = match s.kind {
                StoreKind::Redis => (
                    CheckStatus::Skip,
                    "Redis ACLs are not inspected; reconciliation uses SCAN/HSCAN/HGETALL only"
                        .to_string(),
                ),
                StoreKind::Postgres => {
                    match gate_store::store_write_access(&s.url, self.config.database.connect_timeout)
                        .await
                    {
                        Err(e) => (CheckStatus::Fail, format!("cannot connect: {e}")),
                        Ok((true, _)) => (
                            CheckStatus::Fail,
                            "the store's role is a superuser: give reconciliation a role with SELECT only".to_string(),
                        ),
                        Ok((false, w)) if !w.is_empty() => (
                            CheckStatus::Fail,
                            format!(
                                "the store's role can write {} table(s) ({}): give reconciliation a role with SELECT only",
                                w.len(),
                                w.join(", ")
                            ),
                        ),
                        Ok((false, _)) => (
                            CheckStatus::Pass,
                            "the store's role can read but not write".to_string(),
                        ),
                    }
                }
            };
            items.push(PreflightItem {
                name,
                status,
                detail,
            });
        }
        items
    }
}

/// The reconciliation step of `deploy begin` / `deploy verify`: every configured store
/// against the daemon group's journal, recorded in `recon_runs` (a failure too), so the
/// gate's `reconciliation` check sees it.
pub async fn reconcile(gate: &Gate) -> deploy::ReconStep {
    if gate.config.recon.stores.is_empty() {
        return deploy::ReconStep {
            run: None,
            outcome: "skipped".into(),
            detail: "no [[store]] is configured: nothing to reconcile".into(),
        };
    }
    let options = crate::recon::ReconOptions::new(crate::recon::Source::Journal);
    match crate::recon::run(&gate.config, &options).await {
        Ok(r) => deploy::ReconStep {
            run: r.run_id,
            outcome: match r.outcome {
                crate::recon::Outcome::Clean => "clean".into(),
                crate::recon::Outcome::Divergent => "divergent".into(),
            },
            detail: format!(
                "{} rows compared in {} store(s) at journal position {}, {} divergent key(s), {} ms",
                r.rows_compared,
                r.stores.len(),
                r.watermark_position.map_or("-".into(), |p| p.to_string()),
                r.findings.len(),
                r.elapsed_ms
            ),
        },
        Err(e) => deploy::ReconStep {
            run: None,
            outcome: "failed".into(),
            detail: e.to_string(),
        },
    }
}

/// `host:port/db` of a PostgreSQL URL, without credentials.
fn postgres_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_string()
}
