//! The `[gate]` and `[rollback]` sections of the daemon config: where the deploy gate
//! looks (its policy file, the realms and daemon groups it judges, Prometheus) and what
//! a rollback does (hooks, dry-run unless enabled).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::ConfigError;

#[derive(Debug, Clone, Serialize)]
pub struct GateConfig {
    /// The gate policy (weights, thresholds, service levels); `None` = the shipped
    /// `invariants/gate.toml`.
    pub policy_file: Option<PathBuf>,
    /// Realms every configured system must be heard from in; empty = the daemon's
    /// `amqp.realms` unless that is `"*"`, then every realm seen.
    pub realms: Vec<String>,
    /// Daemon groups whose status counts for coverage; empty = this config's group.
    pub groups: Vec<String>,
    /// Prometheus HTTP API base URL for the service-level checks.
    pub prometheus_url: Option<String>,
    /// RabbitMQ management API base URL (e.g. `http://127.0.0.1:15672`), to verify the
    /// queue's bindings in preflight; the AMQP URL's credentials are used.
    pub management_url: Option<String>,
    #[serde(serialize_with = "ms", rename = "query_timeout_ms")]
    pub query_timeout: Duration,
    /// `GET /v1/gate` answers from a report at most this old.
    #[serde(serialize_with = "ms", rename = "cache_ms")]
    pub cache: Duration,
    /// How often the daemon re-evaluates the gate for its metrics.
    #[serde(serialize_with = "ms", rename = "interval_ms")]
    pub interval: Duration,
    /// How often the daemon writes its status row (the gate's coverage input).
    #[serde(serialize_with = "ms", rename = "status_interval_ms")]
    pub status_interval: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackConfig {
    /// Hooks really fire only when true; otherwise every firing is a recorded dry run.
    pub enabled: bool,
    #[serde(serialize_with = "ms", rename = "watch_poll_ms")]
    pub watch_poll: Duration,
    #[serde(rename = "hook")]
    pub hooks: Vec<Hook>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hook {
    pub name: String,
    #[serde(flatten)]
    pub action: HookAction,
    #[serde(serialize_with = "ms", rename = "timeout_ms")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HookAction {
    /// Runs `command[0]` with the rest as arguments (no shell); the deploy and the
    /// triggering finding are passed in `ASSAYER_*` environment variables.
    Command { command: Vec<String> },
    /// POSTs a JSON body (deploy, trigger finding) to `url`; 2xx is success.
    Http { url: String },
    /// Publishes the same JSON body to `exchange` with `routing_key` on the daemon's
    /// broker (persistent, confirmed).
    Amqp {
        exchange: String,
        routing_key: String,
    },
}

impl HookAction {
    pub fn kind(&self) -> &'static str {
        match self {
            HookAction::Command { .. } => "command",
            HookAction::Http { .. } => "http",
            HookAction::Amqp { .. } => "amqp",
        }
    }
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

pub mod defaults {
    pub const QUERY_TIMEOUT_MS: u64 = 5_000;
    pub const CACHE_MS: u64 = 5_000;
    pub const INTERVAL_MS: u64 = 15_000;
    /// Well under the gate policy's `heartbeat_age_max_s` (30 s shipped).
    pub const STATUS_INTERVAL_MS: u64 = 2_000;
    pub const WATCH_POLL_MS: u64 = 2_000;
    pub const HOOK_TIMEOUT_MS: u64 = 30_000;
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    policy_file: Option<PathBuf>,
    realms: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    prometheus_url: Option<String>,
    management_url: Option<String>,
    query_timeout_ms: Option<u64>,
    cache_ms: Option<u64>,
    interval_ms: Option<u64>,
    status_interval_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollback {
    enabled: Option<bool>,
    watch_poll_ms: Option<u64>,
    #[serde(default)]
    hook: Vec<RawHook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: String,
    kind: String,
    command: Option<Vec<String>>,
    url: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    timeout_ms: Option<u64>,
}

fn positive(
    v: Option<u64>,
    key: &str,
    default: u64,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, "must be greater than zero".into())),
        Some(v) => Ok(Duration::from_millis(v)),
        None => Ok(Duration::from_millis(default)),
    }
}

pub(super) fn gate(
    raw: RawGate,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<GateConfig, ConfigError> {
    use defaults as d;
    for (key, url) in [
        ("gate.prometheus_url", &raw.prometheus_url),
        ("gate.management_url", &raw.management_url),
    ] {
        if let Some(url) = url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(key, format!("`{url}` is not an http(s) URL")));
        }
    }
    Ok(GateConfig {
        policy_file: raw.policy_file,
        realms: raw.realms.unwrap_or_default(),
        groups: raw.groups.unwrap_or_default(),
        prometheus_url: raw
            .prometheus_url
            .map(|u| u.trim_end_matches('/').to_string()),
        management_url: raw
            .management_url
            .map(|u| u.trim_end_matches('/').to_string()),
        query_timeout: positive(
            raw.query_timeout_ms,
            "gate.query_timeout_ms",
            d::QUERY_TIMEOUT_MS,
            invalid,
        )?,
        cache: positive(raw.cache_ms, "gate.cache_ms", d::CACHE_MS, invalid)?,
        interval: positive(raw.interval_ms, "gate.interval_ms", d::INTERVAL_MS, invalid)?,
        status_interval: positive(
            raw.status_interval_ms,
            "gate.status_interval_ms",
            d::STATUS_INTERVAL_MS,
            invalid,
        )?,
    })
}

pub(super) fn rollback(
    raw: RawRollback,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<RollbackConfig, ConfigError> {
    let mut hooks: Vec<Hook> = Vec::new();
    for h in raw.hook {
        if h.name.is_empty() || hooks.iter().any(|o| o.name == h.name) {
            return Err(invalid(
                "rollback.hook.name",
                format!("hook names must be unique and non-empty (`{}`)", h.name),
            ));
        }
        let need = |v: Option<String>, key: &str| {
            v.filter(|s| !s.is_empty()).ok_or_else(|| {
                invalid(
                    &format!("rollback.hook.{key}"),
                    format!("hook `{}` of kind {} needs `{key}`", h.name, h.kind),
                )
            })
        };
        let stray = |present: bool, key: &str| -> Result<(), ConfigError> {
            if present {
                Err(invalid(
                    &format!("rollback.hook.{key}"),
                    format!("hook `{}` of kind {} does not take `{key}`", h.name, h.kind),
                ))
            } else {
                Ok(())
            }
        };
        let action = match h.kind.as_str() {
            "command" => {
                stray(h.url.is_some(), "url")?;
                stray(h.exchange.is_some() || h.routing_key.is_some(), "exchange")?;
                let command = h.command.clone().filter(|c| !c.is_empty()).ok_or_else(|| {
                    invalid(
                        "rollback.hook.command",
                        format!(
                            "hook `{}` needs `command = [\"program\", \"arg\"...]`",
                            h.name
                        ),
                    )
                })?;
                HookAction::Command { command }
            }
            "http" => {
                stray(h.command.is_some(), "command")?;
                stray(h.exchange.is_some() || h.routing_key.is_some(), "exchange")?;
                let url = need(h.url.clone(), "url")?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "rollback.hook.url",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
                HookAction::Http { url }
            }
            "amqp" => {
                stray(h.command.is_some(), "command")?;
                stray(h.url.is_some(), "url")?;
                HookAction::Amqp {
                    exchange: need(h.exchange.clone(), "exchange")?,
                    routing_key: need(h.routing_key.clone(), "routing_key")?,
                }
            }
            other => {
                return Err(invalid(
                    "rollback.hook.kind",
                    format!(
                        "hook `{}`: kind `{other}` is not one of command, http, amqp",
                        h.name
                    ),
                ));
            }
        };
        hooks.push(Hook {
            name: h.name,
            action,
            timeout: positive(
                h.timeout_ms,
                "rollback.hook.timeout_ms",
                defaults::HOOK_TIMEOUT_MS,
                invalid,
            )?,
        });
    }
    Ok(RollbackConfig {
        enabled: raw.enabled.unwrap_or(false),
        watch_poll: positive(
            raw.watch_poll_ms,
            "rollback.watch_poll_ms",
            defaults::WATCH_POLL_MS,
            invalid,
        )?,
        hooks,
    })
}
