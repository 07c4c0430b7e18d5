//! The daemon's TOML config, parsed in two stages (raw serde structs that reject unknown
//! keys, then validated values). Secrets come from the environment when set:
//! `ASSAYER_DATABASE_URL`, `ASSAYER_AMQP_URL`. Every key is documented in
//! docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::policy::from_toml;

use super::gate_config;
pub use super::gate_config::{GateConfig, Hook, HookAction, RollbackConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// The validated config the daemon runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub policy: PolicyConfig,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub checkpoint: CheckpointConfig,
    pub http: HttpConfig,
    pub readiness: ReadinessConfig,
    pub gate: GateConfig,
    pub rollback: RollbackConfig,
    /// `[reconcile]` and `[[store]]` (issue #4).
    #[serde(flatten)]
    pub recon: crate::recon::config::ReconConfig,
    pub ui: UiConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    /// Names this daemon's journal and checkpoint in PostgreSQL. Daemons that share a
    /// queue (active + standby) share a group.
    pub group: String,
    #[serde(serialize_with = "ms", rename = "shutdown_deadline_ms")]
    pub shutdown_deadline: Duration,
    /// Whether the process may use transparent huge pages (see
    /// `daemon::disable_transparent_huge_pages`).
    pub transparent_huge_pages: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyConfig {
    /// Policy directory; `None` = the built-in shipped policy.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    #[serde(serialize_with = "masked")]
    pub url: String,
    pub pool_size_max: u32,
    #[serde(serialize_with = "ms", rename = "connect_timeout_ms")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ms", rename = "statement_timeout_ms")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AmqpConfig {
    #[serde(serialize_with = "masked")]
    pub url: String,
    /// Declare the topology (true) or only verify that it exists (false, passive).
    pub declare: bool,
    pub exchange: String,
    pub queue: String,
    /// Realms this daemon audits: its queue is bound with `<realm>.*` for each
    /// (`"*"` binds everything).
    pub realms: Vec<String>,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub findings_exchange: String,
    pub prefetch_count_max: u16,
    #[serde(serialize_with = "ms", rename = "reconnect_backoff_min_ms")]
    pub reconnect_backoff_min: Duration,
    #[serde(serialize_with = "ms", rename = "reconnect_backoff_max_ms")]
    pub reconnect_backoff_max: Duration,
    #[serde(serialize_with = "ms", rename = "operation_timeout_ms")]
    pub operation_timeout: Duration,
    /// How long each consuming session holds the reorder watermark after its first
    /// delivery (`Engine::hold`), so that the deliveries the broker returns from the
    /// session before arrive first. Zero: no hold.
    #[serde(serialize_with = "ms", rename = "redelivery_settle_ms")]
    pub redelivery_settle: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointConfig {
    #[serde(serialize_with = "ms", rename = "batch_interval_ms")]
    pub batch_interval: Duration,
    pub batch_events_max: usize,
    pub snapshot_interval_events: u64,
    #[serde(serialize_with = "ms", rename = "snapshot_interval_ms")]
    pub snapshot_interval: Duration,
    #[serde(serialize_with = "hours", rename = "journal_retention_hours")]
    pub journal_retention: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

/// The support console at `/ui` (issue #6).
#[derive(Debug, Clone, Serialize)]
pub struct UiConfig {
    pub enabled: bool,
    /// The environment variable holding the token that allows acknowledging findings
    /// from the console; without it the console is read-only.
    pub ack_token_env: Option<String>,
    /// The token itself (never printed).
    #[serde(skip)]
    pub ack_token: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadinessConfig {
    #[serde(serialize_with = "ms", rename = "lag_max_ms")]
    pub lag_max: Duration,
    #[serde(serialize_with = "ms", rename = "checkpoint_age_max_ms")]
    pub checkpoint_age_max: Duration,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn hours<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs() / 3_600)
}

fn masked<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

/// A connection URL fit to print: its password (if any) shown as `****`
/// (`amqp://u:****@mq:5672/%2f`). Text that does not parse as a URL is shown only
/// when it holds no `@` (it might hold credentials in a shape we cannot read).
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => match u.set_password(Some("****")) {
            Ok(()) => u.to_string(),
            Err(()) => "<URL with credentials, not shown>".to_string(),
        },
        Ok(_) => raw.to_string(),
        Err(_) if raw.contains('@') => "<unparsable URL, not shown>".to_string(),
        Err(_) => raw.to_string(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    amqp: RawAmqp,
    #[serde(default)]
    checkpoint: RawCheckpoint,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    readiness: RawReadiness,
    #[serde(default)]
    gate: gate_config::RawGate,
    #[serde(default)]
    rollback: gate_config::RawRollback,
    #[serde(default)]
    reconcile: crate::recon::config::RawReconcile,
    #[serde(default)]
    store: Vec<crate::recon::config::RawStore>,
    #[serde(default)]
    ui: RawUi,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUi {
    enabled: Option<bool>,
    ack_token_env: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    group: Option<String>,
    shutdown_deadline_ms: Option<u64>,
    transparent_huge_pages: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    pool_size_max: Option<u32>,
    connect_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAmqp {
    url: Option<String>,
    declare: Option<bool>,
    exchange: Option<String>,
    queue: Option<String>,
    realms: Option<Vec<String>>,
    dead_letter_exchange: Option<String>,
    dead_letter_queue: Option<String>,
    findings_exchange: Option<String>,
    prefetch_count_max: Option<u16>,
    reconnect_backoff_min_ms: Option<u64>,
    reconnect_backoff_max_ms: Option<u64>,
    operation_timeout_ms: Option<u64>,
    redelivery_settle_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    batch_interval_ms: Option<u64>,
    batch_events_max: Option<usize>,
    snapshot_interval_events: Option<u64>,
    snapshot_interval_ms: Option<u64>,
    journal_retention_hours: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReadiness {
    lag_max_ms: Option<u64>,
    checkpoint_age_max_ms: Option<u64>,
}

/// Defaults, each with where its number comes from.
pub mod defaults {
    pub const DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/assayer";
    pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// Writes are batched; a handful of connections covers the journal writer, the
    /// HTTP readiness probe and maintenance.
    pub const POOL_SIZE_MAX: u32 = 4;
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const STATEMENT_TIMEOUT_MS: u64 = 30_000;
    /// Unacked messages in flight: enough to keep a batch of 5,000 events filling while
    /// the previous one commits, small enough that a crash redelivers seconds of work.
    pub const PREFETCH_COUNT_MAX: u16 = 2_000;
    pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
    pub const RECONNECT_BACKOFF_MAX_MS: u64 = 10_000;
    pub const OPERATION_TIMEOUT_MS: u64 = 10_000;
    /// A RabbitMQ 3.10 quorum queue was seen returning a failed session's deliveries
    /// after ~500 newer messages, ~25 ms into the next session: 40 times that.
    pub const REDELIVERY_SETTLE_MS: u64 = 1_000;
    /// A batch commits at least this often: bounds detection-to-durable latency.
    pub const BATCH_INTERVAL_MS: u64 = 50;
    pub const BATCH_EVENTS_MAX: usize = 5_000;
    /// Replay after a crash is bounded by the events since the last snapshot.
    pub const SNAPSHOT_INTERVAL_EVENTS: u64 = 250_000;
    pub const SNAPSHOT_INTERVAL_MS: u64 = 60_000;
    pub const JOURNAL_RETENTION_HOURS: u64 = 24 * 30;
    pub const HTTP_LISTEN: &str = "127.0.0.1:9187";
    pub const LAG_MAX_MS: u64 = 30_000;
    pub const CHECKPOINT_AGE_MAX_MS: u64 = 30_000;
    pub const SHUTDOWN_DEADLINE_MS: u64 = 10_000;
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), |k| {
            std::env::var(k).ok()
        })
    }

    /// Parses `text`; `env` supplies `ASSAYER_DATABASE_URL` / `ASSAYER_AMQP_URL`.
    pub fn parse(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        use defaults as d;
        let raw: Raw = from_toml(text).map_err(|(line, key, message)| ConfigError::Invalid {
            file: file.to_string(),
            line,
            key,
            message,
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: find_line(text, key),
            key: key.to_string(),
            message,
        };
        let positive = |v: Option<u64>, key: &str, default: u64| -> Result<u64, ConfigError> {
            match v {
                Some(0) => Err(invalid(key, "must be greater than zero".into())),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };

        let a = raw.amqp;
        let queue = a.queue.unwrap_or_else(|| "assayer.audit".into());
        let realms = a.realms.unwrap_or_else(|| vec!["*".into()]);
        if realms.is_empty() {
            return Err(invalid(
                "amqp.realms",
                "list at least one realm, or \"*\"".into(),
            ));
        }
        if let Some(bad) = realms
            .iter()
            .find(|r| r.is_empty() || r.contains(['.', '#']))
        {
            return Err(invalid(
                "amqp.realms",
                format!("`{bad}` cannot be a routing-key segment (empty, or holds `.`/`#`)"),
            ));
        }
        let backoff_min = positive(
            a.reconnect_backoff_min_ms,
            "amqp.reconnect_backoff_min_ms",
            d::RECONNECT_BACKOFF_MIN_MS,
        )?;
        let backoff_max = positive(
            a.reconnect_backoff_max_ms,
            "amqp.reconnect_backoff_max_ms",
            d::RECONNECT_BACKOFF_MAX_MS,
        )?;
        if backoff_min > backoff_max {
            return Err(invalid(
                "amqp.reconnect_backoff_min_ms",
                format!("{backoff_min} is more than reconnect_backoff_max_ms ({backoff_max})"),
            ));
        }
        let prefetch = match a.prefetch_count_max {
            Some(0) => {
                return Err(invalid(
                    "amqp.prefetch_count_max",
                    "must be greater than zero (0 means unlimited in AMQP)".into(),
                ));
            }
            Some(v) => v,
            None => d::PREFETCH_COUNT_MAX,
        };
        let listen_s = raw.http.listen.unwrap_or_else(|| d::HTTP_LISTEN.into());
        let listen: SocketAddr = listen_s.parse().map_err(|e| {
            invalid(
                "http.listen",
                format!("`{listen_s}` is not an address:port ({e})"),
            )
        })?;
        let c = raw.checkpoint;
        let batch_events_max = match c.batch_events_max {
            Some(0) => {
                return Err(invalid(
                    "checkpoint.batch_events_max",
                    "must be greater than zero".into(),
                ));
            }
            Some(v) => v,
            None => d::BATCH_EVENTS_MAX,
        };

        let gate = gate_config::gate(raw.gate, &invalid)?;
        let rollback = gate_config::rollback(raw.rollback, &invalid)?;
        let recon = crate::recon::config::validate(raw.reconcile, raw.store, &env, &invalid)?;

        let ack_token = match &raw.ui.ack_token_env {
            None => None,
            Some(var) => match env(var) {
                Some(t) if !t.trim().is_empty() => Some(t),
                _ => {
                    return Err(invalid(
                        "ui.ack_token_env",
                        format!(
                            "the environment variable `{var}` is not set (or empty); set it, or remove the key for a read-only console"
                        ),
                    ));
                }
            },
        };

        Ok(Config {
            gate,
            rollback,
            recon,
            ui: UiConfig {
                enabled: raw.ui.enabled.unwrap_or(true),
                ack_token_env: raw.ui.ack_token_env,
                ack_token,
            },
            daemon: DaemonConfig {
                group: raw.daemon.group.unwrap_or_else(|| queue.clone()),
                shutdown_deadline: Duration::from_millis(positive(
                    raw.daemon.shutdown_deadline_ms,
                    "daemon.shutdown_deadline_ms",
                    d::SHUTDOWN_DEADLINE_MS,
                )?),
                transparent_huge_pages: raw.daemon.transparent_huge_pages.unwrap_or(false),
            },
            policy: PolicyConfig {
                dir: raw.policy.dir,
            },
            database: DatabaseConfig {
                url: env("ASSAYER_DATABASE_URL")
                    .or(raw.database.url)
                    .unwrap_or_else(|| d::DATABASE_URL.into()),
                pool_size_max: positive(
                    raw.database.pool_size_max.map(u64::from),
                    "database.pool_size_max",
                    u64::from(d::POOL_SIZE_MAX),
                )? as u32,
                connect_timeout: Duration::from_millis(positive(
                    raw.database.connect_timeout_ms,
                    "database.connect_timeout_ms",
                    d::CONNECT_TIMEOUT_MS,
                )?),
                statement_timeout: Duration::from_millis(positive(
                    raw.database.statement_timeout_ms,
                    "database.statement_timeout_ms",
                    d::STATEMENT_TIMEOUT_MS,
                )?),
            },
            amqp: AmqpConfig {
                url: env("ASSAYER_AMQP_URL")
                    .or(a.url)
                    .unwrap_or_else(|| d::AMQP_URL.into()),
                declare: a.declare.unwrap_or(true),
                exchange: a.exchange.unwrap_or_else(|| "assayer.events".into()),
                dead_letter_exchange: a
                    .dead_letter_exchange
                    .unwrap_or_else(|| "assayer.dead".into()),
                dead_letter_queue: a
                    .dead_letter_queue
                    .unwrap_or_else(|| format!("{queue}.dead")),
                findings_exchange: a
                    .findings_exchange
                    .unwrap_or_else(|| "assayer.findings".into()),
                queue,
                realms,
                prefetch_count_max: prefetch,
                reconnect_backoff_min: Duration::from_millis(backoff_min),
                reconnect_backoff_max: Duration::from_millis(backoff_max),
                operation_timeout: Duration::from_millis(positive(
                    a.operation_timeout_ms,
                    "amqp.operation_timeout_ms",
                    d::OPERATION_TIMEOUT_MS,
                )?),
                redelivery_settle: Duration::from_millis(
                    a.redelivery_settle_ms.unwrap_or(d::REDELIVERY_SETTLE_MS),
                ),
            },
            checkpoint: CheckpointConfig {
                batch_interval: Duration::from_millis(positive(
                    c.batch_interval_ms,
                    "checkpoint.batch_interval_ms",
                    d::BATCH_INTERVAL_MS,
                )?),
                batch_events_max,
                snapshot_interval_events: positive(
                    c.snapshot_interval_events,
                    "checkpoint.snapshot_interval_events",
                    d::SNAPSHOT_INTERVAL_EVENTS,
                )?,
                snapshot_interval: Duration::from_millis(positive(
                    c.snapshot_interval_ms,
                    "checkpoint.snapshot_interval_ms",
                    d::SNAPSHOT_INTERVAL_MS,
                )?),
                journal_retention: Duration::from_secs(
                    3600 * positive(
                        c.journal_retention_hours,
                        "checkpoint.journal_retention_hours",
                        d::JOURNAL_RETENTION_HOURS,
                    )?,
                ),
            },
            http: HttpConfig { listen },
            readiness: ReadinessConfig {
                lag_max: Duration::from_millis(positive(
                    raw.readiness.lag_max_ms,
                    "readiness.lag_max_ms",
                    d::LAG_MAX_MS,
                )?),
                checkpoint_age_max: Duration::from_millis(positive(
                    raw.readiness.checkpoint_age_max_ms,
                    "readiness.checkpoint_age_max_ms",
                    d::CHECKPOINT_AGE_MAX_MS,
                )?),
            },
        })
    }

    /// The routing keys this daemon's queue is bound with.
    pub fn binding_keys(&self) -> Vec<String> {
        if self.amqp.realms.iter().any(|r| r == "*") {
            vec!["#".into()]
        } else {
            self.amqp.realms.iter().map(|r| format!("{r}.*")).collect()
        }
    }
}

/// Best-effort line of `section.key` in the text, for semantic errors.
fn find_line(text: &str, dotted: &str) -> usize {
    let key = dotted.rsplit('.').next().unwrap_or(dotted);
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "c.toml", |_| None)
    }

    #[test]
    fn empty_config_gets_safe_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.amqp.prefetch_count_max, defaults::PREFETCH_COUNT_MAX);
        assert_eq!(c.binding_keys(), vec!["#"]);
        assert_eq!(c.daemon.group, "assayer.audit");
    }

    #[test]
    fn unknown_key_fails_with_line_and_key() {
        let err = parse("[amqp]\nqueue = \"q\"\nprefetch = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:3: amqp.prefetch:"), "{err}");
    }

    #[test]
    fn type_errors_name_line_and_key() {
        let err = parse("[daemon]\ngroup = \"g\"\n[checkpoint]\nbatch_events_max = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:4: checkpoint.batch_events_max: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let err = parse("[amqp]\n\nprefetch_count_max = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:3: amqp.prefetch_count_max:"),
            "{err}"
        );
        let err = parse("[amqp]\nrealms = [\"eu.1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:2: amqp.realms:"), "{err}");
        let err = parse("[http]\nlisten = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.listen"), "{err}");
    }

    #[test]
    fn env_overrides_secrets_and_output_masks_them() {
        let c = Config::parse("[database]\nurl = \"postgres://a:b@h/db\"\n", "c", |k| {
            (k == "ASSAYER_AMQP_URL").then(|| "amqp://u:hunter2@mq:5672/%2f".to_string())
        })
        .unwrap();
        assert_eq!(c.amqp.url, "amqp://u:hunter2@mq:5672/%2f");
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            !shown.contains("hunter2") && shown.contains("u:****@mq"),
            "{shown}"
        );
        assert!(shown.contains("a:****@h/db"), "{shown}");
        assert_eq!(
            mask_url("postgres://root@db:5432/a"),
            "postgres://root@db:5432/a"
        );
        assert_eq!(
            mask_url("postgres://u:p%40ss@db/a?sslmode=require"),
            "postgres://u:****@db/a?sslmode=require"
        );
        assert!(!mask_url("amqp://u:se cret@mq:99999/").contains("se cret"));
    }

    #[test]
    fn realms_become_binding_keys() {
        let c = parse("[amqp]\nrealms = [\"eu-1\", \"eu-2\"]\n").unwrap();
        assert_eq!(c.binding_keys(), vec!["eu-1.*", "eu-2.*"]);
    }
}

#[cfg(test)]
mod effective_config_round_trip {
    use super::*;

    /// `check-config` prints the effective config; fed back in, it must parse to the
    /// same config (an operator pins the defaults by copying it).
    #[test]
    fn the_effective_config_parses_back_to_itself() {
        for file in [
            "assayer.toml",
            "local.toml",
            "reconcile-local.toml",
            "compose-assayer.toml",
        ] {
            let path = format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("deploy config");
            let c = Config::parse(&text, &path, |_| None).expect("deploy config parses");
            let shown = toml::to_string_pretty(&c).expect("renders");
            let again = Config::parse(&shown, "effective.toml", |_| None).unwrap_or_else(|e| {
                panic!("{file}: effective config does not parse: {e}\n{shown}")
            });
            assert_eq!(
                toml::to_string_pretty(&again).unwrap(),
                shown,
                "{file}: effective config changes when parsed back"
            );
        }
    }

    #[test]
    fn rollback_hooks_and_gate_settings_round_trip_too() {
        let text = r#"
[gate]
realms = ["eu-1"]
cache_ms = 100
[rollback]
enabled = true
watch_poll_ms = 500
[[rollback.hook]]
name = "cmd"
kind = "command"
command = ["sh", "-c", "true"]
timeout_ms = 1000
[[rollback.hook]]
name = "web"
kind = "http"
url = "http://127.0.0.1:1/rollback"
[[rollback.hook]]
name = "bus"
kind = "amqp"
exchange = "ops"
routing_key = "rollback"
[ui]
enabled = false
"#;
        let c = Config::parse(text, "c.toml", |_| None).expect("parses");
        let shown = toml::to_string_pretty(&c).unwrap();
        let again = Config::parse(&shown, "effective.toml", |_| None)
            .unwrap_or_else(|e| panic!("effective config does not parse: {e}\n{shown}"));
        assert_eq!(toml::to_string_pretty(&again).unwrap(), shown);
        assert_eq!(again.rollback.hooks.len(), 3);
    }
}
