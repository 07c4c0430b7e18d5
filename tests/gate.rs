//! The deploy gate against a real daemon, RabbitMQ and PostgreSQL: GO on a clean world,
//! NO-GO for every blocking finding class (named), fail-closed coverage, MARGINAL, one
//! decision on every interface, rollback hooks fired exactly once and never in dry-run.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assayer::core::finding::Invariant;
use assayer::core::time::Timestamp;
use assayer::sim::{self, SimConfig};
use common::*;
use serde_json::Value;

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(unique("assayer-gate"));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A reference world whose stream time ends about now (so every system is "recent").
fn world_ending_now(events: usize, inject: Vec<(Invariant, usize)>, seed: u64) -> Vec<Vec<u8>> {
    let probe = SimConfig {
        seed,
        events,
        players: 60,
        inject: inject.clone(),
        ..SimConfig::default()
    };
    // Generate once to learn the stream's span, then again ending ~now.
    let mut first_last = (i64::MAX, i64::MIN);
    sim::generate(&probe, &mut |l: &[u8]| {
        let v: Value = serde_json::from_slice(l).unwrap_or(Value::Null);
        if let Some(ts) = v["ts"].as_str()
            && let Ok(t) = Timestamp::parse_rfc3339(ts)
        {
            first_last = (first_last.0.min(t.0), first_last.1.max(t.0));
        }
    });
    let span = first_last.1 - first_last.0;
    let cfg = SimConfig {
        start: Timestamp(Timestamp::now().0 - span - 2_000_000_000),
        ..probe
    };
    let mut lines = Vec::new();
    sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    // Close the reorder window right away (heartbeats 6 s of stream time later).
    let mut tails = sim::StreamTails::default();
    for l in &lines {
        tails.observe(l);
    }
    lines.extend(tails.heartbeats(Duration::from_secs(6)));
    lines
}

/// The shipped gate policy with test-sized limits: a daemon that has not reported for
/// 3 s is down; reconciliation is not required unless `recon_required`.
fn gate_policy(dir: &Path, recon_required: bool, extra_edit: &dyn Fn(String) -> String) -> PathBuf {
    let text = assayer::core::gate::BUILTIN_GATE_TOML
        .replace("heartbeat_age_max_s = 30", "heartbeat_age_max_s = 3")
        .replace(
            "required = true",
            if recon_required {
                "required = true"
            } else {
                "required = false"
            },
        );
    let path = dir.join("gate.toml");
    std::fs::write(&path, extra_edit(text)).unwrap();
    path
}

/// The daemon and the CLI read the same gate policy (through the config), so every
/// interface decides alike.
fn gate_section(policy: &Path) -> String {
    format!(
        "[gate]\npolicy_file = \"{}\"\ncache_ms = 50\ninterval_ms = 500\nstatus_interval_ms = 250\n",
        policy.display()
    )
}

/// Runs `assayer gate --format json`: (exit code, report).
fn gate_cli(config: &Path, policy: &Path) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["gate", "--format", "json", "--config"])
        .arg(config)
        .arg("--gate-policy")
        .arg(policy)
        .output()
        .expect("run assayer gate");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gate printed no JSON ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// Polls the gate until `want` holds (the daemon's status row needs a moment).
async fn gate_until(
    config: &Path,
    policy: &Path,
    what: &str,
    want: impl Fn(i32, &Value) -> bool,
) -> (i32, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, r) = gate_cli(config, policy);
        if want(code, &r) {
            return (code, r);
        }
        if std::time::Instant::now() > deadline {
            panic!("gate never reached {what}; last: exit {code}\n{r:#}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A login role that may only read (`SELECT`) the tables of `db`'s public schema, as
/// reconciliation's store credentials should be; dropped with the guard.
struct ReadOnlyRole {
    name: String,
    db_url: String,
}

impl ReadOnlyRole {
    async fn create(db: &TestDb) -> ReadOnlyRole {
        let name = unique("ro");
        let mut admin = db.connect().await;
        for sql in [
            format!("CREATE ROLE {name} LOGIN"),
            format!("GRANT CONNECT ON DATABASE {} TO {name}", db.name),
            format!("GRANT USAGE ON SCHEMA public TO {name}"),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}"),
            // Tables (re)created later by the store writer too.
            format!("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .expect("read-only role");
        }
        ReadOnlyRole {
            db_url: db
                .url
                .replace("postgres://root@", &format!("postgres://{name}@")),
            name,
        }
    }
}

impl Drop for ReadOnlyRole {
    fn drop(&mut self) {
        let (name, url) = (
            self.name.clone(),
            self.db_url
                .replace(&format!("postgres://{}@", self.name), "postgres://root@"),
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP OWNED BY {name}")))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
                if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Writes the reference world's stores for `lines` into `db` (and the Redis cache
/// under `redis`), with `drift` planted.
async fn materialize(
    db: &TestDb,
    redis: &TestRedis,
    lines: &[Vec<u8>],
    drift: &[(assayer::sim::stores::Drift, usize)],
) -> Vec<assayer::sim::stores::PlantedDrift> {
    let mut w = assayer::sim::stores::StoreWorld::new();
    for l in lines {
        w.apply_line(l);
    }
    let mut tables = w.tables();
    let planted = assayer::sim::stores::inject_drift(&mut tables, drift, 5);
    let s =
        assayer::adapters::sim_stores::SimStores::connect(&db.url, Some(REDIS_URL), &redis.prefix)
            .await
            .expect("connect stores");
    s.reset().await.expect("create store tables");
    s.write_all(&tables).await.expect("write stores");
    planted
}

fn reconcile(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["reconcile", "--format", "json", "--config"])
        .arg(config)
        .output()
        .expect("run assayer reconcile")
}

async fn ack_invariant(db: &TestDb, inv: &str) -> u64 {
    let mut c = db.connect().await;
    sqlx::query(
        "UPDATE findings SET status = 'acknowledged', status_by = 'test', status_reason = 'investigated',
           status_at = now() WHERE invariant = $1 AND status = 'open'",
    )
    .bind(inv)
    .execute(&mut c)
    .await
    .unwrap()
    .rows_affected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_world_is_go_everywhere_then_marginal_then_no_go_when_the_daemon_stops() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let bus = TestBus::new();
    bus.declare().await;
    let dir = tempdir();
    let port = free_port();
    // The shipped policy: reconciliation required.
    let policy = gate_policy(&dir, true, &|t| t);
    let lines = world_ending_now(3_000, Vec::new(), 5);
    let journaled = offline(&lines).journaled;
    let ro = ReadOnlyRole::create(&db).await;
    materialize(&db, &redis, &lines, &[]).await;
    bus.publish(lines, 20).await;
    let stores = store_sections(&ro.db_url, &redis.prefix, "realm-1", None);
    let config = write_config(
        &dir,
        &db,
        &bus,
        port,
        &format!(
            "{}\n[reconcile]\ngrace_ms = 10\n{stores}",
            gate_section(&policy)
        ),
    );
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    wait_for_head(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;

    // No reconciliation yet: fail closed.
    let (code, r) = gate_until(&config, &policy, "NO-GO without reconciliation", |_, r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("no reconciliation has run"))
    })
    .await;
    assert_eq!(code, 2, "{r:#}");
    let out = reconcile(&config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // GO, exit 0 — and the same decision from /v1/gate and the gauge.
    let (code, cli) = gate_until(&config, &policy, "GO", |c, _| c == 0).await;
    assert_eq!(cli["decision"], "GO", "{cli:#}");
    assert_eq!(cli["score"], 100, "{cli:#}");
    let (status, body) = http_get(port, "/v1/gate").expect("GET /v1/gate");
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["decision"], cli["decision"], "{api:#}");
    assert_eq!(api["score"], cli["score"]);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("assayer_gate_decision{decision=\"go\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("assayer_gate_decision{decision=\"no_go\"} 0"));
    assert!(metrics.contains("assayer_gate_score 100"), "{metrics}");
    let (flagger, _) = http_get(port, "/v1/gate/flagger").unwrap();
    assert_eq!(flagger, 200);
    assert_eq!(code, 0);

    // A minor finding (a malformed event) weighs: MARGINAL, exit 3, on every interface.
    bus.publish(vec![b"{\"v\":1,\"tx_id\":\"broken\"".to_vec()], 1)
        .await;
    let (code, cli) = gate_until(&config, &policy, "MARGINAL", |c, _| c == 3).await;
    assert_eq!(cli["decision"], "MARGINAL", "{cli:#}");
    assert!(
        cli["reason"].as_str().unwrap().contains("findings"),
        "{cli:#}"
    );
    let api: Value = serde_json::from_str(&http_get(port, "/v1/gate").unwrap().1).unwrap();
    assert_eq!(api["decision"], "MARGINAL");
    assert_eq!(api["score"], cli["score"]);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("assayer_gate_decision{decision=\"marginal\"} 1"));
    assert_eq!(http_get(port, "/v1/gate/flagger").unwrap().0, 412);
    assert_eq!(code, 3);

    // The stores drift: each reconciliation class blocks, named, until acknowledged;
    // the divergent run itself blocks until the stores are repaired and reconciled.
    use assayer::sim::stores::Drift;
    let planted = materialize(
        &db,
        &redis,
        &journal_lines(&db).await,
        &[
            (Drift::ValueChanged, 1),
            (Drift::RowDeleted, 1),
            (Drift::RowInserted, 1),
        ],
    )
    .await;
    assert_eq!(planted.len(), 3);
    let out = reconcile(&config);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for inv in [
        Invariant::ReconUnexpected,
        Invariant::ReconMissing,
        Invariant::ReconValueMismatch,
    ] {
        let (code, r) = gate_cli(&config, &policy);
        assert_eq!(code, 2, "{r:#}");
        assert!(
            r.to_string().contains(inv.id()),
            "{} not named:\n{r:#}",
            inv.id()
        );
        assert!(ack_invariant(&db, inv.id()).await >= 1, "{}", inv.id());
    }
    let (code, r) = gate_cli(&config, &policy);
    assert_eq!(code, 2, "{r:#}");
    assert!(
        r["reason"].as_str().unwrap().contains("divergent key(s)"),
        "{r:#}"
    );
    materialize(&db, &redis, &journal_lines(&db).await, &[]).await;
    let out = reconcile(&config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, r) = gate_until(&config, &policy, "MARGINAL after repair", |c, _| c == 3).await;
    assert_eq!(r["decision"], "MARGINAL", "{r:#}");
    assert_eq!(code, 3);

    // The daemon stops: its status row goes stale and the gate fails closed.
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    let (code, cli) = gate_until(&config, &policy, "NO-GO", |c, _| c == 2).await;
    assert_eq!(cli["decision"], "NO-GO");
    let reason = cli["reason"].as_str().unwrap();
    assert!(reason.contains("coverage"), "{reason}");
    assert!(reason.contains("last reported"), "{reason}");
    assert_eq!(code, 2);
}

/// A daemon auditing a reference world whose stream ends now, with the gate set up.
struct Audited {
    db: TestDb,
    bus: TestBus,
    dir: PathBuf,
    policy: PathBuf,
    config: PathBuf,
    port: u16,
    /// Kept alive for the test (killed when dropped).
    _daemon: DaemonProc,
    offline: Offline,
}

/// Publishes the world, starts the daemon with `extra(policy)` in its config and waits
/// until everything is journaled.
async fn audited(
    events: usize,
    inject: Vec<(Invariant, usize)>,
    seed: u64,
    extra: &dyn Fn(&Path) -> String,
) -> Audited {
    let db = TestDb::create().await;
    let bus = TestBus::new();
    bus.declare().await;
    let dir = tempdir();
    let policy = gate_policy(&dir, false, &|t| t);
    let lines = world_ending_now(events, inject, seed);
    let off = offline(&lines);
    bus.publish(lines, 20).await;
    let port = free_port();
    let config = write_config(&dir, &db, &bus, port, &extra(&policy));
    let daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    wait_audited(
        &db,
        &bus.queue,
        off.journaled,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    Audited {
        db,
        bus,
        dir,
        policy,
        config,
        port,
        _daemon: daemon,
        offline: off,
    }
}

/// `[rollback]` with a command hook appending to `marker` and an HTTP hook to a
/// receiver on `http_port`.
fn hooks_toml(enabled: bool, marker: &Path, http_port: u16) -> String {
    format!(
        "[rollback]\nenabled = {enabled}\nwatch_poll_ms = 100\n\
         [[rollback.hook]]\nname = \"write-file\"\nkind = \"command\"\n\
         command = [\"sh\", \"-c\", \"echo $ASSAYER_TRIGGER_INVARIANT >> {}\"]\n\
         [[rollback.hook]]\nname = \"webhook\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{http_port}/rollback\"\n",
        marker.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blocking_finding_class_is_no_go_naming_it_until_acknowledged() {
    let blocking: Vec<Invariant> = Invariant::STREAM
        .iter()
        .copied()
        .filter(|i| i.default_severity().blocks_deploy())
        .collect();
    assert_eq!(blocking.len(), 10);
    let a = audited(
        3_000,
        blocking.iter().map(|i| (*i, 1)).collect(),
        9,
        &gate_section,
    )
    .await;
    let (db, config, policy, off) = (&a.db, &a.config, &a.policy, &a.offline);
    let stored: i64 = {
        let mut c = db.connect().await;
        sqlx::query_scalar("SELECT count(*) FROM findings")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(stored as usize, off.findings.len());

    // Most severe first: criticals force score 0; each class is named until a person
    // acknowledges it.
    for (i, inv) in blocking.iter().enumerate() {
        let (code, r) = gate_cli(config, policy);
        assert_eq!(code, 2, "{r:#}");
        assert_eq!(r["decision"], "NO-GO");
        let findings = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "findings")
            .unwrap();
        assert_eq!(findings["status"], "fail");
        let named: Vec<&str> = findings["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert!(
            named.contains(&inv.id()),
            "{} not named in {named:?}",
            inv.id()
        );
        // The headline names an open blocking class, never an acknowledged one.
        let reason = r["reason"].as_str().unwrap();
        assert!(
            blocking[i..].iter().any(|open| reason.contains(open.id())),
            "{reason}"
        );
        assert!(
            !blocking[..i]
                .iter()
                .any(|acked| named.contains(&acked.id())),
            "{named:?}"
        );
        if inv.default_severity() == assayer::core::finding::Severity::Critical {
            assert_eq!(r["score"], 0, "a critical is zero tolerance");
        }
        assert!(ack_invariant(db, inv.id()).await >= 1, "{}", inv.id());
    }
    // Everything investigated and acknowledged: GO (the daemon is still auditing).
    let (code, r) = gate_until(config, policy, "GO", |c, _| c == 0).await;
    assert_eq!(r["decision"], "GO", "{r:#}");
    assert_eq!(code, 0);
}

/// The event bodies the daemon journaled, in order (what the stores should reflect).
async fn journal_lines(db: &TestDb) -> Vec<Vec<u8>> {
    let mut c = db.connect().await;
    sqlx::query_scalar("SELECT body FROM journal WHERE entry_kind = 'event' ORDER BY position")
        .fetch_all(&mut c)
        .await
        .expect("journal bodies")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_daemon_is_no_go() {
    let a = audited(1_000, Vec::new(), 3, &gate_section).await;
    let (bus, config, policy) = (&a.bus, &a.config, &a.policy);
    gate_until(config, policy, "GO", |c, _| c == 0).await;

    // A system starts delivering ten minutes behind (a backlog draining): every batch
    // the daemon commits is 600 s old, beyond the 60 s limit.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        let exchange = bus.exchange.clone();
        tokio::spawn(async move {
            let feed = TestBus::connect().await;
            let mut seq = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ts = Timestamp(Timestamp::now().0 - 600_000_000_000).to_rfc3339();
                let body = format!(
                    r#"{{"v":1,"tx_id":"late-{seq}","realm":"realm-1","system":"backlog","seq":{seq},"ts":"{ts}","kind":"heartbeat"}}"#
                );
                feed.publish_json(&exchange, "realm-1.backlog", body.as_bytes())
                    .await
                    .expect("publish");
                seq += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            feed.close().await;
        })
    };
    let (code, r) = gate_until(config, policy, "NO-GO for lag", |_, r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("consumer lag"))
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.await.unwrap();
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(r["decision"], "NO-GO");
}

#[test]
fn the_gate_with_no_daemon_and_no_database_fails_closed_with_exit_2() {
    let dir = tempdir();
    let config = dir.join("assayer.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"postgres://root@127.0.0.1:1/nowhere\"\nconnect_timeout_ms = 500\n\
         [amqp]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\noperation_timeout_ms = 500\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["gate", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["decision"], "NO-GO");
    assert!(
        r["reason"].as_str().unwrap().contains("cannot observe"),
        "{r:#}"
    );
}

#[test]
fn a_bad_gate_policy_is_an_error_naming_file_line_and_key_exit_1() {
    let dir = tempdir();
    let config = dir.join("assayer.toml");
    std::fs::write(&config, "").unwrap();
    let policy = dir.join("gate.toml");
    std::fs::write(
        &policy,
        assayer::core::gate::BUILTIN_GATE_TOML.replace("lag_max_s", "lag_max_secs"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["gate", "--config"])
        .arg(&config)
        .arg("--gate-policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gate.toml:"), "{err}");
    assert!(err.contains("lag_max_secs"), "{err}");
}

/// A one-route HTTP receiver: counts POSTs and keeps their bodies.
fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then Content-Length bytes of body.
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        if head.starts_with("POST") {
                            g.lock().unwrap().push(body.to_string());
                        }
                        break;
                    }
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

fn assayer(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run assayer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fires_each_rollback_hook_exactly_once_and_never_in_dry_run() {
    let (http_port, received) = receiver();
    let scratch = tempdir();
    let marker = scratch.join("rolled-back.txt");
    let marker_path = marker.as_path();
    let hooks = |enabled: bool| {
        move |policy: &Path| {
            format!(
                "{}\n{}",
                gate_section(policy),
                hooks_toml(enabled, marker_path, http_port)
            )
        }
    };
    let a = audited(1_000, Vec::new(), 11, &hooks(false)).await;
    let (db, bus, config) = (&a.db, &a.bus, &a.config);
    let out = assayer(
        &["deploy", "begin", "--version", "v2.1.0", "--by", "ci"],
        config,
    );
    assert!(out.status.success(), "{out:?}");
    let begun: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(begun["deploy"]["version"], "v2.1.0");

    // A clean window passes: exit 0, nothing fired.
    let out = assayer(&["deploy", "watch", "--for", "1s"], config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Corruption after the marker: gold from nothing (tx.unbalanced, critical).
    let now = Timestamp::now().to_rfc3339();
    bus.publish(
        vec![format!(
            r#"{{"v":1,"tx_id":"exploit-1","realm":"realm-1","system":"blackmarket","seq":1,"ts":"{now}","kind":"trade.settle","postings":[{{"account":"player:1","asset":"gold","delta":100000}}]}}"#
        ).into_bytes()],
        1,
    )
    .await;

    // Dry run (rollback.enabled = false): recorded, but nothing runs.
    let out = assayer(&["deploy", "watch", "--for", "60s"], config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["dry_run"], true);
    assert_eq!(w["trigger"]["invariant"], "tx.unbalanced", "{w:#}");
    assert!(
        w["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["outcome"] == "dry-run"),
        "{w:#}"
    );
    assert!(!marker.exists(), "a dry run must not run the command");
    assert!(
        received.lock().unwrap().is_empty(),
        "a dry run must not call the webhook"
    );

    // Enabled: each hook fires once.
    let config = &write_config(&a.dir, db, bus, a.port, &hooks(true)(&a.policy));
    let out = assayer(&["deploy", "watch", "--for", "60s"], config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["dry_run"], false);
    assert!(
        w["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["outcome"] == "ok"),
        "{w:#}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "tx.unbalanced\n");
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 1);
        let body: Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(body["deploy"]["version"], "v2.1.0");
        assert_eq!(body["trigger"]["invariant"], "tx.unbalanced");
    }
    // Rolled back: the deploy is closed, a second watch has nothing to fire.
    let out = assayer(&["deploy", "watch", "--for", "1s"], config);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no deploy marker"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
    assert_eq!(received.lock().unwrap().len(), 1);
    let mut c = db.connect().await;
    let rows: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT hook, dry_run, outcome FROM rollback_actions ORDER BY hook, dry_run",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("webhook".into(), false, "ok".into()),
            ("webhook".into(), true, "dry-run".into()),
            ("write-file".into(), false, "ok".into()),
            ("write-file".into(), true, "dry-run".into()),
        ]
    );
}

#[test]
fn junit_output_validates_against_the_junit_schema_and_markdown_reads_well() {
    use assayer::core::gate::*;
    // A report with every status, built by the real evaluator.
    let policy = GatePolicy::builtin();
    let obs = Observations {
        now: Timestamp::now(),
        findings: vec![OpenFinding {
            fingerprint: "abc".into(),
            invariant: Invariant::ItemDuplicated,
            severity: Invariant::ItemDuplicated.default_severity(),
            realm: "eu-1".into(),
            system: Some("mail".into()),
            first_seen: Timestamp::now(),
        }],
        groups: Vec::new(),
        daemons: Vec::new(),
        realms: vec!["eu-1".into()],
        recon: None,
        deploy: Some(DeployMarker {
            id: 3,
            version: "v1 <rc> & \"quoted\"".into(),
            begun_at: Timestamp::now(),
            watermark_ts: None,
        }),
        self_test: Ok("caught".into()),
        slos: Vec::new(),
        preflight: vec![PreflightItem {
            name: "bindings".into(),
            status: CheckStatus::Warn,
            detail: "x < y & z".into(),
        }],
    };
    let report = evaluate(&obs, &policy);
    let dir = tempdir();
    let xml = dir.join("gate.xml");
    std::fs::write(&xml, assayer::cli::gate::junit(&report)).unwrap();
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit.xsd");
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(&xml)
        .output()
        .unwrap_or_else(|e| {
            panic!("xmllint is missing ({e}); install it with: apt-get install -y libxml2-utils")
        });
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&xml).unwrap()
    );
    let text = std::fs::read_to_string(&xml).unwrap();
    assert!(text.contains("failures=\"3\""), "{text}");
    assert!(text.contains("<skipped"), "{text}");

    let md = assayer::cli::gate::markdown(&report);
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[0].starts_with("## ⛔ assayer gate: **NO-GO** (score 0/100)"),
        "{md}"
    );
    assert!(md.contains("| check | status | weight | reason |"), "{md}");
    for c in &report.checks {
        assert!(
            md.lines()
                .any(|l| l.starts_with(&format!("| {} |", c.name))),
            "{} missing:\n{md}",
            c.name
        );
    }
    assert!(md.contains("`item.duplicated`"), "{md}");
    // Table cells never break the table.
    assert!(
        md.lines()
            .filter(|l| l.starts_with("| "))
            .all(|l| l.matches(" | ").count() == 3
                || l.starts_with("| check")
                || l.starts_with("|---")),
        "{md}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_fires_each_real_hook_exactly_once_and_never_in_dry_run() {
    let db = TestDb::create().await;
    let dir = tempdir();
    let (http_port, received) = receiver();
    let marker = dir.join("drill-fired.txt");
    let config = |enabled: bool| {
        let path = dir.join(format!("drill-{enabled}.toml"));
        std::fs::write(
            &path,
            format!(
                "[database]\nurl = \"{}\"\n{}",
                db.url,
                hooks_toml(enabled, &marker, http_port)
            ),
        )
        .unwrap();
        path
    };
    let drill = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_assayer"))
            .args(["deploy", "drill", "--events", "800", "--config"])
            .arg(path)
            .output()
            .expect("run the drill");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        (
            out.status.code(),
            report,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Dry run: every step passes, the hooks are recorded as dry runs, nothing runs.
    let (code, r, err) = drill(&config(false));
    assert_eq!(code, Some(0), "{err}\n{r:#}");
    assert_eq!(r["dry_run"], true);
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "materialize stores",
            "pre-deploy reconciliation",
            "deploy marker",
            "inject corruption",
            "reconciliation detects the write",
            "watch fires rollback hooks",
            "restore the store",
            "post-rollback reconciliation"
        ]
    );
    assert!(
        r["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["outcome"] == "dry-run"),
        "{r:#}"
    );
    assert!(!marker.exists());
    assert!(received.lock().unwrap().is_empty());

    // Enabled: each hook fires exactly once.
    let (code, r, err) = drill(&config(true));
    assert_eq!(code, Some(0), "{err}\n{r:#}");
    assert!(
        r["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["outcome"] == "ok"),
        "{r:#}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "tx.unbalanced\n");
    assert_eq!(received.lock().unwrap().len(), 1);
    for s in r["steps"].as_array().unwrap() {
        assert!(s["elapsed_ms"].is_u64(), "{s}");
    }

    // The drill leaves nothing that blocks the real gate: no open finding, no schema.
    let mut c = db.connect().await;
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM findings WHERE status = 'open'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(open, 0);
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'assayer_drill%'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(schemas, 0);
}
