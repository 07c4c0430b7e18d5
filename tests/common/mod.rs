//! Shared fixtures for integration tests against the real PostgreSQL and RabbitMQ.
//! Each test gets its own database and its own exchanges/queues (unique names), and
//! removes them when it ends, so tests run in parallel and leave nothing behind. A
//! missing service fails the test with the command that starts it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assayer::adapters::amqp::{self, Amqp, PublishOptions};
use sqlx::{Connection, Executor, PgConnection};

pub const PG_ADMIN: &str = "postgres://root@127.0.0.1:5432/test";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = &N;
    format!(
        "{prefix}_{}_{:x}_{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A database of its own, dropped (WITH FORCE) when this guard goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let mut admin = PgConnection::connect(PG_ADMIN).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {PG_ADMIN} ({e}). Start it with:\n  \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            )
        });
        let name = unique("assayer_t");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let url = format!("postgres://root@127.0.0.1:5432/{name}");
        TestDb { name, url }
    }

    /// The daemon's store on this database for `group`, migrated.
    pub async fn pg(&self, group: &str, pool_size_max: u32) -> assayer::adapters::postgres::Pg {
        use assayer::adapters::postgres::{ConnectOptions, Pg};
        let pg = Pg::connect(
            &ConnectOptions {
                url: &self.url,
                pool_size_max,
                connect_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(30),
            },
            group,
        )
        .await
        .expect("connect to test database");
        pg.migrate().await.expect("migrate");
        pg
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(PG_ADMIN).await {
                        let _ = admin
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Unique AMQP names for one test; deleted when this guard goes.
pub struct TestBus {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub findings_exchange: String,
}

impl TestBus {
    pub fn new() -> TestBus {
        let p = unique("assayer-t");
        TestBus {
            exchange: format!("{p}.events"),
            queue: format!("{p}.audit"),
            dead_letter_exchange: format!("{p}.dead"),
            dead_letter_queue: format!("{p}.audit.dead"),
            findings_exchange: format!("{p}.findings"),
        }
    }

    pub async fn connect() -> Amqp {
        Amqp::connect(AMQP_URL, "assayer test", Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ is not reachable at {AMQP_URL} ({e}). Start it with:\n  \
                     rabbitmq-server -detached && rabbitmqctl await_startup"
                )
            })
    }

    pub fn topology(&self) -> amqp::Topology {
        amqp::Topology {
            exchange: self.exchange.clone(),
            queue: self.queue.clone(),
            binding_keys: vec!["#".into()],
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            dead_letter_queue: self.dead_letter_queue.clone(),
            findings_exchange: self.findings_exchange.clone(),
            declare: true,
        }
    }

    /// Declares the daemon's topology up front, so events published before the
    /// daemon starts are queued.
    pub async fn declare(&self) {
        let bus = Self::connect().await;
        bus.declare(&self.topology())
            .await
            .expect("declare topology");
        bus.close().await;
    }

    pub async fn publish(&self, lines: Vec<Vec<u8>>, batch: usize) {
        let bus = Self::connect().await;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let feeder = tokio::spawn(async move {
            for l in lines {
                if tx.send(l).await.is_err() {
                    break;
                }
            }
        });
        let opts = PublishOptions {
            exchange: self.exchange.clone(),
            rate: None,
            batch,
            confirms_in_flight_max: 512,
        };
        amqp::publish_stream(&bus, &opts, rx)
            .await
            .expect("publish");
        feeder.await.expect("feeder");
        bus.close().await;
    }

    /// Messages ready in `queue` (not counting unacked ones).
    pub async fn ready(&self, queue: &str) -> u32 {
        let bus = Self::connect().await;
        let q = bus
            .channel()
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("passive declare");
        bus.close().await;
        q.message_count()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let names = (
            [self.queue.clone(), self.dead_letter_queue.clone()],
            [
                self.exchange.clone(),
                self.dead_letter_exchange.clone(),
                self.findings_exchange.clone(),
            ],
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(bus) =
                    Amqp::connect(AMQP_URL, "assayer test cleanup", Duration::from_secs(5)).await
                else {
                    return;
                };
                for q in &names.0 {
                    let _ = bus
                        .channel()
                        .queue_delete(
                            q.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await;
                }
                for e in &names.1 {
                    let _ = bus
                        .channel()
                        .exchange_delete(
                            e.as_str().into(),
                            lapin::options::ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
                bus.close().await;
            });
        })
        .join();
    }
}

/// A free TCP port on loopback (bound and released: a small race, fine in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Writes a daemon config for this test's database and bus.
pub fn write_config(
    dir: &std::path::Path,
    db: &TestDb,
    bus: &TestBus,
    port: u16,
    extra: &str,
) -> PathBuf {
    let path = dir.join("assayer.toml");
    let text = format!(
        r#"[daemon]
group = "{queue}"
shutdown_deadline_ms = 10000

[database]
url = "{db}"

[amqp]
url = "{amqp}"
exchange = "{exchange}"
queue = "{queue}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dlq}"
findings_exchange = "{fx}"
reconnect_backoff_min_ms = 50
reconnect_backoff_max_ms = 1000

[http]
listen = "127.0.0.1:{port}"
{extra}
"#,
        queue = bus.queue,
        db = db.url,
        amqp = AMQP_URL,
        exchange = bus.exchange,
        dlx = bus.dead_letter_exchange,
        dlq = bus.dead_letter_queue,
        fx = bus.findings_exchange,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

pub struct DaemonProc {
    pub child: Child,
    pub log: PathBuf,
}

impl DaemonProc {
    pub fn start(config: &std::path::Path, log: PathBuf) -> DaemonProc {
        DaemonProc::start_with_env(config, log, &[])
    }

    /// Starts the daemon with extra environment variables (e.g. a console token).
    pub fn start_with_env(
        config: &std::path::Path,
        log: PathBuf,
        envs: &[(&str, &str)],
    ) -> DaemonProc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_assayer"))
            .arg("daemon")
            .arg("--config")
            .arg(config)
            .env("ASSAYER_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn assayer daemon");
        DaemonProc { child, log }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "daemon did not stop within 30 s of SIGTERM; log: {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// The journal head of a group (0 before the first commit).
pub async fn head(db: &TestDb, group: &str) -> i64 {
    let mut c = db.connect().await;
    sqlx::query_scalar::<_, i64>("SELECT position FROM journal_heads WHERE group_name = $1")
        .bind(group)
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Waits until the journal head reaches `target` (panics with the daemon log after
/// `timeout`).
pub async fn wait_for_head(
    db: &TestDb,
    group: &str,
    target: i64,
    timeout: Duration,
    daemon: Option<&DaemonProc>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let h = head(db, group).await;
        if h >= target {
            return;
        }
        if Instant::now() > deadline {
            let log = daemon.map(|d| d.log_text()).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "journal head {h} did not reach {target} within {timeout:?}; daemon log tail:\n{tail}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a daemon of `group` reports (its `daemon_status` row) that it has
/// journaled `position` and holds no order-dependent checks: every finding of the
/// inputs up to there is stored. (A daemon holds for the first moments of a session,
/// `amqp.redelivery_settle_ms`; a stream taken in within them is judged after.)
pub async fn wait_settled(
    db: &TestDb,
    group: &str,
    position: i64,
    timeout: Duration,
    daemon: Option<&DaemonProc>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut c = db.connect().await;
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM daemon_status
              WHERE group_name = $1 AND journal_position >= $2 AND NOT holding",
        )
        .bind(group)
        .bind(position)
        .fetch_one(&mut c)
        .await
        .unwrap_or(0);
        if settled > 0 {
            return;
        }
        if Instant::now() > deadline {
            let log = daemon.map(|d| d.log_text()).unwrap_or_default();
            panic!(
                "daemon of {group} did not report settled at {position} within {timeout:?}:\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for_head`] up to `target`, then [`wait_settled`] there (half a minute more
/// at most): every input up to `target` is journaled and judged, its findings stored.
pub async fn wait_audited(
    db: &TestDb,
    group: &str,
    target: i64,
    timeout: Duration,
    daemon: Option<&DaemonProc>,
) {
    wait_for_head(db, group, target, timeout, daemon).await;
    wait_settled(db, group, target, Duration::from_secs(30), daemon).await;
}

/// One heartbeat per (realm, system) of `lines`, one minute of stream time after the
/// newest event, so every real event leaves the reorder window.
pub fn closing_heartbeats(lines: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut tails = assayer::sim::StreamTails::default();
    for l in lines {
        tails.observe(l);
    }
    tails.heartbeats(Duration::from_secs(60))
}

/// What an uninterrupted run makes of `lines`: the engine, its findings (one per
/// fingerprint), how many inputs the journal should hold (accepted + malformed), and
/// the accepted tx_ids.
pub struct Offline {
    pub engine: assayer::core::engine::Engine,
    pub findings: Vec<assayer::core::finding::Finding>,
    pub journaled: i64,
    pub accepted: std::collections::BTreeSet<String>,
}

pub fn offline(lines: &[Vec<u8>]) -> Offline {
    use assayer::core::engine::{Engine, Outcome};
    let mut engine = Engine::new(assayer::core::policy::Policy::builtin());
    let mut out = Vec::new();
    let mut journaled = 0;
    let mut accepted = std::collections::BTreeSet::new();
    for l in lines {
        let outcome = engine.ingest_inspect(l, assayer::core::time::Timestamp(0), &mut out, |v| {
            accepted.insert(v.wire.tx_id.to_string());
        });
        if matches!(outcome, Outcome::Accepted | Outcome::Malformed) {
            journaled += 1;
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.fingerprint.clone()));
    Offline {
        engine,
        findings: out,
        journaled,
        accepted,
    }
}

/// A plain HTTP/1.0 GET against loopback: (status, body). Test-only: the daemon's
/// endpoints are tiny and the suite should not pull in an HTTP client stack.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `path` until `ok` accepts the response or `timeout` passes.
pub async fn wait_http(
    port: u16,
    path: &str,
    timeout: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((code, body)) = http_get(port, path) {
            if ok(code, &body) || Instant::now() > deadline {
                return (code, body);
            }
        } else if Instant::now() > deadline {
            panic!("nothing answers on 127.0.0.1:{port}{path}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `[[store]]` sections describing the reference world's stores of `realm` in the
/// database `db` (tables written by `SimStores`) and its Redis wallet cache under
/// `redis_prefix`; `wallets_query` replaces the wallets table's query.
pub fn store_sections(
    db: &str,
    redis_prefix: &str,
    realm: &str,
    wallets_query: Option<&str>,
) -> String {
    assayer::sim::stores::store_config_toml(
        db,
        realm,
        Some((REDIS_URL, redis_prefix)),
        wallets_query,
    )
}

/// A Redis key prefix of its own; every key under it is deleted when this guard goes.
pub struct TestRedis {
    pub prefix: String,
}

impl TestRedis {
    pub async fn create() -> TestRedis {
        let prefix = format!("{}:", unique("assayer-t"));
        assayer::adapters::redis::delete_prefix(REDIS_URL, &prefix)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Redis is not reachable at {REDIS_URL} ({e}). Start it with:\n  \
                     redis-server --daemonize yes"
                )
            });
        TestRedis { prefix }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = assayer::adapters::redis::delete_prefix(REDIS_URL, &prefix).await;
                });
            }
        })
        .join();
    }
}
