//! The daemon against the real RabbitMQ and PostgreSQL: findings end to end, crash
//! safety under SIGKILL, recovery from killed connections, dead-lettering.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use assayer::core::finding::Invariant;
use assayer::core::policy::Policy;
use assayer::sim::{self, SimConfig};
use common::*;

fn world(cfg: &SimConfig) -> (Vec<Vec<u8>>, sim::AnswerKey) {
    let mut lines = Vec::new();
    let key = sim::generate(cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    lines.extend(closing_heartbeats(&lines));
    (lines, key)
}

async fn stored_fingerprints(db: &TestDb) -> BTreeSet<String> {
    let mut c = db.connect().await;
    sqlx::query_scalar::<_, String>("SELECT fingerprint FROM findings")
        .fetch_all(&mut c)
        .await
        .expect("findings")
        .into_iter()
        .collect()
}

async fn journal_tx_ids(db: &TestDb) -> (i64, BTreeSet<String>) {
    let mut c = db.connect().await;
    let rows: Vec<Option<String>> =
        sqlx::query_scalar("SELECT tx_id FROM journal WHERE entry_kind = 'event'")
            .fetch_all(&mut c)
            .await
            .expect("journal");
    let n = rows.len() as i64;
    (n, rows.into_iter().flatten().collect())
}

/// Balances (realm, account, asset, balance) and item copies (realm, item, location).
type State = (
    Vec<(String, String, String, i128)>,
    Vec<(String, String, String)>,
);

/// Final engine state as the daemon left it in PostgreSQL.
async fn durable_state(db: &TestDb, group: &str) -> State {
    let pg = assayer::adapters::postgres::Pg::connect(
        &assayer::adapters::postgres::ConnectOptions {
            url: &db.url,
            pool_size_max: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
        },
        group,
    )
    .await
    .expect("pg");
    let r = assayer::daemon::restore(&pg, &Policy::builtin())
        .await
        .expect("restore");
    state_of(&r.engine)
}

/// A database and declared bus topology of this test's own.
async fn fresh() -> (TestDb, TestBus) {
    let db = TestDb::create().await;
    let bus = TestBus::new();
    bus.declare().await;
    (db, bus)
}

/// The daemon's durable findings and state equal those of the offline engine that saw
/// the same stream without interruption.
async fn assert_same_as_uninterrupted(
    db: &TestDb,
    bus: &TestBus,
    expected: &[assayer::core::finding::Finding],
    state: &State,
) {
    let want: BTreeSet<String> = expected.iter().map(|f| f.fingerprint.clone()).collect();
    let stored = stored_fingerprints(db).await;
    if stored != want {
        // Name the findings that differ, not just their fingerprints.
        let mut c = db.connect().await;
        let extra: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT fingerprint, invariant, tx_id, message FROM findings
              WHERE NOT (fingerprint = ANY($1)) ORDER BY detected_at",
        )
        .bind(want.iter().cloned().collect::<Vec<_>>())
        .fetch_all(&mut c)
        .await
        .expect("findings");
        let missing: Vec<String> = expected
            .iter()
            .filter(|f| !stored.contains(&f.fingerprint))
            .map(|f| format!("{} {} {}", f.fingerprint, f.invariant, f.message))
            .collect();
        panic!(
            "findings differ from the uninterrupted run's\nextra: {extra:#?}\nmissing: {missing:#?}"
        );
    }
    assert_eq!(&durable_state(db, &bus.queue).await, state, "state");
    // The support rollups were written exactly once too: they add up to the balances.
    let nonzero = |b: &[(String, String, String, i128)]| -> Vec<(String, String, String, i128)> {
        b.iter().filter(|x| x.3 != 0).cloned().collect()
    };
    assert_eq!(
        nonzero(&rolled_up_balances(db, &bus.queue).await),
        nonzero(&state.0),
        "account_rollups"
    );
}

/// (realm, account, asset, balance) from the support rollups, sorted.
async fn rolled_up_balances(db: &TestDb, group: &str) -> Vec<(String, String, String, i128)> {
    let mut c = db.connect().await;
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT realm, account, asset, balance::text FROM account_rollups
          WHERE group_name = $1 ORDER BY realm, account, asset",
    )
    .bind(group)
    .fetch_all(&mut c)
    .await
    .expect("account_rollups");
    let mut out: Vec<_> = rows
        .into_iter()
        .map(|(r, a, s, b)| (r, a, s, b.parse().expect("integer balance")))
        .collect();
    out.sort();
    out
}

fn state_of(e: &assayer::core::engine::Engine) -> State {
    let mut b: Vec<_> = e
        .ledger()
        .balances(e.interner())
        .map(|(r, a, s, v)| (r.to_string(), a.to_string(), s.to_string(), v))
        .collect();
    b.sort();
    (b, e.ledger().item_copies(e.interner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_world_published_to_rabbitmq_yields_exactly_its_findings_in_postgres() {
    let (db, bus) = fresh().await;
    let cfg = SimConfig {
        seed: 21,
        events: 4_000,
        players: 60,
        inject: Invariant::STREAM.iter().map(|i| (*i, 1)).collect(),
        ..SimConfig::default()
    };
    let (lines, key) = world(&cfg);
    let Offline {
        findings: expected,
        journaled,
        ..
    } = offline(&lines);
    let s = sim::score(&key.faults, &expected);
    assert!(
        s.missed.is_empty() && s.unexpected.is_empty(),
        "offline engine disagrees with the answer key: {s:?}"
    );
    bus.publish(lines, 1).await;

    let dir = tempdir();
    let config = write_config(&dir, &db, &bus, free_port(), "");
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    // The whole stream may have been taken in during the session's first second, while
    // the daemon holds order-dependent checks (`amqp.redelivery_settle_ms`): their
    // findings are stored when the hold ends.
    wait_audited(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    // `daemon.transparent_huge_pages` defaults to false: the kernel says the process is
    // off THP (huge-page faults were the detection-latency tail).
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
        .expect("the daemon's /proc status");
    assert!(
        proc_status.lines().any(|l| l == "THP_enabled:\t0"),
        "the daemon should have turned transparent huge pages off: {:?}",
        proc_status.lines().find(|l| l.starts_with("THP_enabled"))
    );
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status:?}\n{}",
        daemon.log_text()
    );

    let want: BTreeSet<String> = expected.iter().map(|f| f.fingerprint.clone()).collect();
    assert_eq!(stored_fingerprints(&db).await, want);
    // Every finding was published to the findings exchange (the outbox is empty).
    let mut c = db.connect().await;
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM findings WHERE published_at IS NULL")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
    // Nothing is left unacked or ready in the queue.
    assert_eq!(bus.ready(&bus.queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let (db, bus) = fresh().await;
    let cfg = SimConfig {
        seed: 99,
        events: 200_000,
        players: 2_000,
        realms: 2,
        inject: Invariant::STREAM.iter().map(|i| (*i, 2)).collect(),
        ..SimConfig::default()
    };
    let (lines, _) = world(&cfg);
    let Offline {
        engine,
        findings: expected,
        journaled,
        accepted: expected_tx,
    } = offline(&lines);
    let expected_state = state_of(&engine);
    bus.publish(lines, 1).await;

    let dir = tempdir();
    // Small batches and frequent snapshots so kills land between every kind of write.
    let config = write_config(
        &dir,
        &db,
        &bus,
        free_port(),
        "[checkpoint]\nbatch_events_max = 1000\nsnapshot_interval_events = 30000\n",
    );
    let log = dir.join("daemon.log");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    for fraction in [0.15, 0.4, 0.65, 0.85] {
        let mut daemon = DaemonProc::start(&config, log.clone());
        // A pseudo-random point past `fraction` of the stream.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let jitter = (seed % 5_000) as i64;
        let target = (journaled as f64 * fraction) as i64 + jitter;
        wait_for_head(
            &db,
            &bus.queue,
            target,
            Duration::from_secs(240),
            Some(&daemon),
        )
        .await;
        daemon.kill9();
        kills += 1;
    }
    assert!(kills >= 3);
    let mut daemon = DaemonProc::start(&config, log.clone());
    wait_audited(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(300),
        Some(&daemon),
    )
    .await;
    let status = daemon.terminate();
    assert!(status.success(), "{}", daemon.log_text());

    let (n, txs) = journal_tx_ids(&db).await;
    assert_eq!(
        n as usize,
        expected_tx.len(),
        "journal rows: nothing twice, nothing lost"
    );
    assert_eq!(txs, expected_tx);
    assert_same_as_uninterrupted(&db, &bus, &expected, &expected_state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_amqp_and_postgres_connections_recover_with_the_same_result() {
    let (db, bus) = fresh().await;
    let cfg = SimConfig {
        seed: 7,
        events: 60_000,
        players: 500,
        inject: Invariant::STREAM.iter().map(|i| (*i, 1)).collect(),
        ..SimConfig::default()
    };
    let (lines, _) = world(&cfg);
    let Offline {
        engine,
        findings: expected,
        journaled,
        ..
    } = offline(&lines);
    bus.publish(lines, 1).await;

    let dir = tempdir();
    let config = write_config(
        &dir,
        &db,
        &bus,
        free_port(),
        "[checkpoint]\nbatch_events_max = 500\n",
    );
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    wait_for_head(
        &db,
        &bus.queue,
        journaled / 4,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    // Close the daemon's AMQP connection from the broker side.
    let closed = close_amqp_connections(&format!("assayer {}", bus.queue));
    assert!(
        closed > 0,
        "found no AMQP connection of the daemon to close"
    );
    wait_for_head(
        &db,
        &bus.queue,
        journaled / 2,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    // Terminate its PostgreSQL backends.
    let mut c = db.connect().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'assayer') t",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(
        killed > 0,
        "found no PostgreSQL backend of the daemon to terminate"
    );
    wait_audited(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(180),
        Some(&daemon),
    )
    .await;
    let status = daemon.terminate();
    assert!(status.success(), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("reconnecting"),
        "the daemon should have logged its recoveries:\n{log}"
    );

    assert_same_as_uninterrupted(&db, &bus, &expected, &state_of(&engine)).await;
    let (n, txs) = journal_tx_ids(&db).await;
    assert_eq!(n as usize, txs.len(), "no tx journaled twice");
}

/// What a quorum queue may do after a consumer fails: hand the next session newer
/// messages before the failed session's returned ones, further apart in `ts` than the
/// reorder window. The daemon holds order-dependent checks for the first moments of each
/// session (`amqp.redelivery_settle_ms`), so the late block is no gap; and a daemon
/// killed during its hold replays the held journal rows held, with the same result as
/// an uninterrupted run of the stream in its original order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_messages_ahead_of_returned_ones_at_session_start_raise_no_false_gap() {
    let (db, bus) = fresh().await;
    let cfg = SimConfig {
        seed: 5,
        events: 6_000,
        players: 80,
        ..SimConfig::default()
    };
    let mut lines = Vec::new();
    sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    let closing = closing_heartbeats(&lines);
    let mut all = lines.clone();
    all.extend(closing.iter().cloned());
    let Offline {
        engine,
        findings: expected,
        journaled,
        ..
    } = offline(&all);

    // The broker's order: a block of "returned" events comes after newer ones that are
    // more than 3 reorder windows ahead of it in ts.
    let ts = |l: &[u8]| -> i64 {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        assayer::core::time::Timestamp::parse_rfc3339(v["ts"].as_str().unwrap())
            .unwrap()
            .0
    };
    let (a, b) = (lines.len() / 4, lines.len() / 4 + 300);
    let returned_newest = lines[a..b].iter().map(|l| ts(l)).max().unwrap();
    let c = (b..lines.len())
        .find(|&k| ts(&lines[k]) > returned_newest + 15_000_000_000)
        .expect("a world long enough to move events 15 s ahead")
        + 200;
    assert!(c < lines.len(), "world too short for the reorder");
    let mut broker_order = lines[..a].to_vec();
    broker_order.extend_from_slice(&lines[b..c]);
    broker_order.extend_from_slice(&lines[a..b]);
    broker_order.extend_from_slice(&lines[c..]);
    // Without the hold the same order is findings: the test would notice a daemon
    // that does not hold.
    let unheld = offline(&broker_order);
    assert!(
        unheld
            .findings
            .iter()
            .any(|f| f.invariant == Invariant::SeqGap),
        "the reordered stream must look gappy to an engine that does not hold"
    );
    bus.publish(broker_order, 1).await;

    let dir = tempdir();
    let config = write_config(
        &dir,
        &db,
        &bus,
        free_port(),
        "[checkpoint]\nbatch_events_max = 500\n",
    );
    // Long enough that a loaded CI host takes the reordered block in within it (the
    // daemon takes the whole stream in within ~2 s here).
    let settle = "redelivery_settle_ms = 8000\n";
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[amqp]\n", &format!("[amqp]\n{settle}")),
    )
    .unwrap();

    // The whole reordered stream is taken in while the first session holds; the daemon
    // is killed before its hold ends (no delivery after it), its rows journaled held.
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    let taken = journaled - closing.len() as i64;
    wait_for_head(
        &db,
        &bus.queue,
        taken,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    let held: i64 = {
        let mut c = db.connect().await;
        sqlx::query_scalar("SELECT count(*) FROM journal WHERE held")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert!(
        held > 0,
        "no journal row was taken in held:\n{}",
        daemon.log_text()
    );
    daemon.kill9();

    // A new process replays the journal (held again), holds anew on its first delivery
    // and resumes on a delivery after the settle time.
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    let half = closing.len() / 2;
    bus.publish(closing[..half].to_vec(), 1).await;
    wait_for_head(
        &db,
        &bus.queue,
        taken + half as i64,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    bus.publish(closing[half..].to_vec(), 1).await;
    wait_audited(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(120),
        Some(&daemon),
    )
    .await;
    let status = daemon.terminate();
    assert!(status.success(), "{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("hold ended"),
        "{}",
        daemon.log_text()
    );
    assert_same_as_uninterrupted(&db, &bus, &expected, &state_of(&engine)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_dead_lettered_with_reasons_while_the_rest_flows() {
    let (db, bus) = fresh().await;
    let good = |seq: u64| {
        serde_json::to_vec(&serde_json::json!({
            "v": 1, "tx_id": format!("ok-{seq}"), "realm": "eu-1", "system": "loot", "seq": seq,
            "ts": assayer::core::time::Timestamp(1_795_000_000_000_000_000 + seq as i64 * 1_000_000).to_rfc3339(),
            "kind": "loot.drop",
            "postings": [{"account": "world:loot", "asset": "gold", "delta": -5},
                         {"account": "player:1", "asset": "gold", "delta": 5}]
        }))
        .unwrap()
    };
    let bad_ts = String::from_utf8(good(2))
        .unwrap()
        .replace("\"ts\":\"", "\"ts\":\"x")
        .into_bytes();
    let oversized_event = {
        let mut v: serde_json::Value = serde_json::from_slice(&good(3)).unwrap();
        v["pad"] = serde_json::json!("x".repeat(70 * 1024));
        serde_json::to_vec(&v).unwrap()
    };
    let amqp_bus = TestBus::connect().await;
    let publish = |body: Vec<u8>, ct: &'static str| {
        let chan = amqp_bus.publisher().clone();
        let exchange = bus.exchange.clone();
        async move {
            chan.basic_publish(
                exchange.as_str().into(),
                "eu-1.loot".into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default().with_content_type(ct.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    publish(good(1), "application/json").await;
    publish(bad_ts, "application/json").await; // seq 2: malformed event
    publish(oversized_event, "application/json").await; // seq 3: > 64 KiB
    // A batch with one bad line among good ones (seq 4..6, the middle one broken).
    let mut batch = good(4);
    batch.extend_from_slice(b"\n{\"v\":1,\"tx_id\":\"bad line\"}\n");
    batch.extend_from_slice(&good(6));
    publish(batch, "application/x-ndjson").await;
    // A batch over 1 MiB.
    let mut huge = Vec::new();
    while huge.len() <= 1024 * 1024 {
        huge.extend_from_slice(&good(7));
        huge.push(b'\n');
    }
    publish(huge, "application/x-ndjson").await;
    publish(good(8), "application/json").await;
    amqp_bus.close().await;

    let dir = tempdir();
    let config = write_config(&dir, &db, &bus, free_port(), "");
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    // Journal: good 1, 4, 6, 8 accepted + 2 malformed events (seq 2, the bad line). The
    // oversized messages are set aside whole, before any event of them is read.
    wait_for_head(&db, &bus.queue, 6, Duration::from_secs(60), Some(&daemon)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.terminate();

    // The dead-letter queue holds the four set-aside messages, each with its reason.
    let reader = TestBus::connect().await;
    let mut reasons = Vec::new();
    while let Some(m) = reader
        .channel()
        .basic_get(
            bus.dead_letter_queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        reasons.push(
            assayer::adapters::amqp::reason_header(&m.delivery.properties).unwrap_or_default(),
        );
    }
    reader.close().await;
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("RFC 3339")),
        "{reasons:#?}"
    );
    assert!(reasons.iter().any(|r| r.contains("65536")), "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("missing field `system`")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("1048576")),
        "{reasons:#?}"
    );

    let mut c = db.connect().await;
    let malformed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM findings WHERE invariant = 'event.malformed'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(malformed, 4);
    let accepted: Vec<String> = sqlx::query_scalar(
        "SELECT tx_id FROM journal WHERE entry_kind = 'event' ORDER BY position",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(accepted, vec!["ok-1", "ok-4", "ok-6", "ok-8"]);
    assert_eq!(bus.ready(&bus.queue).await, 0);
}

/// A directory of this test's own (configs, daemon logs), removed when the test
/// passes and kept when it fails, so the daemon's log can be read.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for reading: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tempdir() -> TempDir {
    let d = std::env::temp_dir().join(unique("assayer-test"));
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

/// Closes (broker side) every AMQP connection whose client-given name is `name`.
fn close_amqp_connections(name: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (is RabbitMQ installed? start it with `rabbitmq-server -detached`)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(name)) {
        if let Some(pid) = line.split_whitespace().next() {
            let ok = std::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "assayer test: forced close"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                closed += 1;
            }
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_over_http() {
    let (db, bus) = fresh().await;
    let cfg = SimConfig {
        seed: 3,
        events: 2_000,
        players: 40,
        inject: vec![(Invariant::ItemDuplicated, 1), (Invariant::TxUnbalanced, 1)],
        ..SimConfig::default()
    };
    let (lines, _) = world(&cfg);
    let journaled = offline(&lines).journaled;
    bus.publish(lines, 50).await;
    let dir = tempdir();
    let port = free_port();
    let config = write_config(&dir, &db, &bus, port, "");
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    wait_for_head(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(60),
        Some(&daemon),
    )
    .await;

    let (code, body) = wait_http(port, "/healthz", Duration::from_secs(10), |c, _| c == 200).await;
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = wait_http(port, "/readyz", Duration::from_secs(10), |c, _| c == 200).await;
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["broker_connected"], true);
    assert_eq!(ready["database_connected"], true);

    let (code, metrics) =
        wait_http(port, "/metrics", Duration::from_secs(10), |c, _| c == 200).await;
    assert_eq!(code, 200);
    for name in [
        "assayer_messages_received_total",
        "assayer_events_total{outcome=\"accepted\"}",
        "assayer_events_total{outcome=\"redelivered\"}",
        "assayer_findings_total{invariant=\"item.duplicated\",severity=\"critical\"} 1",
        "assayer_findings_total{invariant=\"tx.unbalanced\",severity=\"critical\"} 1",
        "assayer_stream_lag_seconds{realm=\"realm-1\",system=\"loot\"}",
        "assayer_checkpoint_duration_seconds_bucket",
        "assayer_reorder_buffer_events",
        "assayer_detection_latency_seconds_bucket",
        "assayer_journal_position",
        "# EOF",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // No player, account or item id ever appears in a label.
    for forbidden in ["player:", "itm:", "trade:", "guild:"] {
        assert!(
            !metrics.contains(forbidden),
            "{forbidden} in a metric label:\n{metrics}"
        );
    }
    let status = daemon.terminate();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_keeps_the_daemon_alive_retrying_and_not_ready() {
    let db = TestDb::create().await;
    let bus = TestBus::new();
    let dir = tempdir();
    let port = free_port();
    let config = write_config(&dir, &db, &bus, port, "");
    // Point it at a port where no broker listens.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&config, text).unwrap();
    let mut daemon = DaemonProc::start(&config, dir.join("daemon.log"));
    let (code, _) = wait_http(port, "/healthz", Duration::from_secs(10), |c, _| c == 200).await;
    assert_eq!(code, 200);
    let (code, body) = wait_http(port, "/readyz", Duration::from_secs(10), |_, b| {
        b.contains("last_error\":\"")
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("RabbitMQ"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM while retrying exits cleanly");
    assert!(daemon.log_text().contains("reconnecting"));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked_and_rejects_typos() {
    let dir = tempdir();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[amqp]\nurl = \"amqp://guest:s3cret@127.0.0.1:5672/%2f\"\nrealms = [\"eu-1\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["check-config", "--config"])
        .arg(&good)
        .env_remove("ASSAYER_AMQP_URL")
        .env("ASSAYER_DATABASE_URL", "postgres://app:pa55@db/assayer")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("guest:****@127.0.0.1") && !stdout.contains("s3cret"),
        "{stdout}"
    );
    assert!(
        stdout.contains("app:****@db") && !stdout.contains("pa55"),
        "{stdout}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[amqp]\nqueue = \"q\"\nprefetch = 10\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bad.toml:3: amqp.prefetch: unknown field `prefetch`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_on_the_same_queue_takes_over_from_the_shared_journal() {
    let (db, bus) = fresh().await;
    let cfg = SimConfig {
        seed: 17,
        events: 40_000,
        players: 300,
        inject: Invariant::STREAM.iter().map(|i| (*i, 1)).collect(),
        ..SimConfig::default()
    };
    let (lines, _) = world(&cfg);
    let Offline {
        engine,
        findings: expected,
        journaled,
        ..
    } = offline(&lines);
    let dir = tempdir();
    let active_cfg = write_config(
        &dir,
        &db,
        &bus,
        free_port(),
        "[checkpoint]\nbatch_events_max = 500\n",
    );
    let standby_dir = dir.join("standby");
    std::fs::create_dir_all(&standby_dir).unwrap();
    let standby_cfg = write_config(
        &standby_dir,
        &db,
        &bus,
        free_port(),
        "[checkpoint]\nbatch_events_max = 500\n",
    );
    let mut active = DaemonProc::start(&active_cfg, dir.join("active.log"));
    wait_for_head(&db, &bus.queue, 0, Duration::from_secs(5), None).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the first consumer becomes the active one
    let mut standby = DaemonProc::start(&standby_cfg, dir.join("standby.log"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    bus.publish(lines, 1).await;
    wait_for_head(
        &db,
        &bus.queue,
        journaled / 3,
        Duration::from_secs(120),
        Some(&active),
    )
    .await;
    active.kill9();
    wait_audited(
        &db,
        &bus.queue,
        journaled,
        Duration::from_secs(180),
        Some(&standby),
    )
    .await;
    let status = standby.terminate();
    assert!(status.success(), "{}", standby.log_text());
    assert!(
        standby.log_text().contains("catching up")
            || standby.log_text().contains("engine restored"),
        "{}",
        standby.log_text()
    );
    assert_same_as_uninterrupted(&db, &bus, &expected, &state_of(&engine)).await;
}

/// The commit stage writes two batches at once (`Pg::commit_after`). A small batch
/// racing ahead of a big one must neither deadlock with it on the rollup rows both
/// touch (the `world:` accounts) nor become durable first, and the rollups must add
/// up to exactly the journaled postings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_written_at_once_commit_in_order_without_deadlock() {
    let db = TestDb::create().await;
    let pg = db.pg("pair", 3).await;
    let mut lines = Vec::new();
    sim::generate(
        &SimConfig {
            seed: 11,
            events: 3_000,
            players: 200,
            noise: sim::Noise::none(),
            ..SimConfig::default()
        },
        &mut |l: &[u8]| lines.push(l.to_vec()),
    );
    let split = lines.len() - 100;
    let (big, small) = (
        journal_batch(&lines, 0, split),
        journal_batch(&lines, split, lines.len()),
    );

    let (durable_tx, durable_rx) = tokio::sync::oneshot::channel::<()>();
    let first = async {
        let r = pg.commit_after(&big, std::future::ready(())).await;
        let _ = durable_tx.send(());
        r
    };
    let second = pg.commit_after(&small, async {
        let _ = durable_rx.await;
    });
    let (r1, r2) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(first, second)
    })
    .await
    .expect("two batches written at once must not wait on each other forever");
    r1.expect("the first batch commits");
    r2.expect("the second batch commits after it");
    assert_eq!(head(&db, "pair").await, lines.len() as i64);

    let mut c = db.connect().await;
    let (postings, wrong): (i64, i64) = sqlx::query_as(
        "WITH p AS (SELECT account, realm, asset, count(*) AS n, sum(delta) AS s
                      FROM journal_postings WHERE group_name = 'pair' GROUP BY 1, 2, 3)
         SELECT (SELECT count(*) FROM journal_postings),
                count(*) FILTER (WHERE r.postings IS DISTINCT FROM p.n
                                    OR r.balance IS DISTINCT FROM p.s)
           FROM p FULL JOIN account_rollups r USING (account, realm, asset)",
    )
    .fetch_one(&mut c)
    .await
    .expect("rollups");
    assert!(postings > 3_000, "the world posts: {postings}");
    assert_eq!(wrong, 0, "rollups differ from the journaled postings");
}

/// Retention: pruning removes exactly the journal rows (and their item and posting
/// rows) that are older than the retention and covered by the group's snapshot, and
/// nothing of another group; the rollups keep counting what was pruned.
#[tokio::test]
async fn journal_pruning_removes_only_old_rows_the_snapshot_covers() {
    use assayer::adapters::postgres::{Batch, Snapshot};
    let db = TestDb::create().await;
    let (pg, other) = (db.pg("prune", 2).await, db.pg("other", 2).await);
    let mut lines = Vec::new();
    sim::generate(
        &SimConfig {
            seed: 5,
            events: 3_000,
            players: 100,
            noise: sim::Noise::none(),
            ..SimConfig::default()
        },
        &mut |l: &[u8]| lines.push(l.to_vec()),
    );
    let batch = |from: usize, to: usize, snapshot: bool| Batch {
        snapshot: snapshot.then(|| Snapshot {
            position: to as i64,
            format: 1,
            bytes: Vec::new(),
            events_accepted: to as i64,
        }),
        ..journal_batch(&lines, from, to)
    };
    let retention = Duration::from_secs(30 * 24 * 3600);
    for (from, to, snapshot) in [
        (0, 1_000, false),
        (1_000, 2_000, true),
        (2_000, 3_000, false),
    ] {
        pg.commit(&batch(from, to, snapshot)).await.expect("commit");
    }
    other.commit(&batch(0, 1_000, true)).await.expect("commit");
    assert_eq!(
        pg.prune_journal(retention).await.expect("prune"),
        0,
        "nothing is old yet"
    );

    let mut c = db.connect().await;
    // Age positions 1..=1500 of both groups, and 2500 (past the snapshot) of `prune`.
    sqlx::query(
        "UPDATE journal SET received_at = now() - interval '40 days'
          WHERE position <= 1500 OR (group_name = 'prune' AND position = 2500)",
    )
    .execute(&mut c)
    .await
    .expect("age rows");
    let due = scalar(&db,
        "SELECT (SELECT count(*) FROM journal WHERE group_name = 'prune' AND position <= 1500)
              + (SELECT count(*) FROM journal_items WHERE group_name = 'prune' AND position <= 1500)
              + (SELECT count(*) FROM journal_postings WHERE group_name = 'prune' AND position <= 1500)",
    )
    .await;
    let rollups = "SELECT sum(postings)::bigint FROM account_rollups WHERE group_name = 'prune'";
    let rolled_up = scalar(&db, rollups).await;

    assert_eq!(
        pg.prune_journal(retention).await.expect("prune"),
        due as u64
    );
    for (sql, want) in [
        (
            "SELECT min(position) FROM journal WHERE group_name = 'prune'",
            1_501,
        ),
        (
            "SELECT count(*) FROM journal WHERE group_name = 'prune'",
            1_500,
        ),
        (
            "SELECT count(*) FROM journal_items WHERE group_name = 'prune' AND position <= 1500",
            0,
        ),
        (
            "SELECT count(*) FROM journal_postings WHERE group_name = 'prune' AND position <= 1500",
            0,
        ),
        (
            "SELECT count(*) FROM journal WHERE group_name = 'other'",
            1_000,
        ),
    ] {
        assert_eq!(scalar(&db, sql).await, want, "{sql}");
    }
    assert_eq!(
        scalar(&db, rollups).await,
        rolled_up,
        "rollups are not pruned"
    );
    assert_eq!(
        pg.prune_journal(retention).await.expect("prune"),
        0,
        "once is enough"
    );
}

async fn scalar(db: &TestDb, sql: &'static str) -> i64 {
    let mut c = db.connect().await;
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&mut c)
        .await
        .expect(sql)
}

/// Lines `from..to` of a clean world as one journal batch (positions `from + 1..=to`).
fn journal_batch(lines: &[Vec<u8>], from: usize, to: usize) -> assayer::adapters::postgres::Batch {
    let mut b = assayer::adapters::postgres::Batch {
        expected_head: from as i64,
        new_head: to as i64,
        ..Default::default()
    };
    for (i, l) in lines[from..to].iter().enumerate() {
        let v = assayer::core::event::decode(l).expect("a clean world decodes");
        b.entries
            .push(assayer::daemon::journal_entry((from + i) as i64 + 1, &v, l));
    }
    b
}
