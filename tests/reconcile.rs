//! Reconciliation against the real PostgreSQL and Redis (issue #4): the reference
//! world's stores materialized with planted drift are reconciled and every drift is
//! found exactly; a clean world written to concurrently yields nothing; a store query
//! that fails or times out is an error, never a finding.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assayer::adapters::sim_stores::SimStores;
use assayer::core::recon::{Expected, Ownership, RowKey, Scalar, Space};
use assayer::daemon::config::Config;
use assayer::recon::{self, LiveExpected, Outcome, ReconOptions, Record, Source};
use assayer::sim::stores::{Drift, StoreWorld, TABLES, inject_drift};
use assayer::sim::{Noise, SimConfig, generate};
use common::{REDIS_URL, TestDb, TestRedis};
use serde_json::{Value, json};

const REALM: &str = "realm-1";

/// A config describing the reference world's stores in `db` and the cache under
/// `redis_prefix`, with `[reconcile]` lines `reconcile`.
fn config_text(
    db: &str,
    redis_prefix: &str,
    reconcile: &str,
    wallets_query: Option<&str>,
) -> String {
    format!(
        "[database]\nurl = \"{db}\"\n[daemon]\ngroup = \"recon-test\"\n[reconcile]\n{reconcile}\n{}",
        common::store_sections(db, redis_prefix, REALM, wallets_query)
    )
}

fn parse(text: &str) -> Config {
    Config::parse(text, "test.toml", |_| None).expect("a valid config")
}

fn world_lines(events: usize, noise: Noise) -> Vec<Vec<u8>> {
    let cfg = SimConfig {
        events,
        noise,
        ..SimConfig::default()
    };
    let mut lines = Vec::new();
    generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    lines
}

fn write_events(lines: &[Vec<u8>]) -> tempfile_path::TempPath {
    let p = tempfile_path::TempPath::new("events.ndjson");
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    std::fs::write(&p.0, body).expect("write events");
    p
}

/// A file removed when dropped.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn new(name: &str) -> TempPath {
            TempPath(
                std::env::temp_dir().join(format!("{}-{name}", super::common::unique("recon"))),
            )
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn shown(space: &str, v: &[Scalar]) -> Value {
    match (space, v) {
        (_, []) => Value::Null,
        ("balances", [one]) => json!(one),
        _ => json!(v),
    }
}

/// Materializes a world (all lines applied) with `plan` drift; returns the planted list.
async fn materialize(
    db: &TestDb,
    redis: &TestRedis,
    lines: &[Vec<u8>],
    plan: &[(Drift, usize)],
) -> Vec<assayer::sim::stores::PlantedDrift> {
    let mut w = StoreWorld::new();
    for l in lines {
        w.apply_line(l);
    }
    let mut tables = w.tables();
    let planted = inject_drift(&mut tables, plan, 11);
    let s = SimStores::connect(&db.url, Some(REDIS_URL), &redis.prefix)
        .await
        .expect("connect stores");
    s.reset().await.expect("create store tables");
    s.write_all(&tables).await.expect("write stores");
    planted
}

/// Each finding as (invariant, store, realm, subject, key, expected, actual).
fn finding_keys(findings: &[assayer::core::finding::Finding]) -> BTreeSet<String> {
    findings
        .iter()
        .map(|f| {
            json!([
                f.invariant.id(),
                f.evidence["store"],
                f.realm,
                f.subject,
                f.evidence["key"],
                f.evidence["expected"],
                f.evidence["actual"]
            ])
            .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drift_class_is_found_exactly_with_key_and_values() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(6_000, Noise::default());
    let plan = [
        (Drift::ValueChanged, 4),
        (Drift::RowDeleted, 4),
        (Drift::RowInserted, 2),
        (Drift::RedisStale, 3),
    ];
    let planted = materialize(&db, &redis, &lines, &plan).await;
    assert_eq!(planted.len(), 13, "every requested drift was planted");
    let events = write_events(&lines);
    let config = parse(&config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 10\ntree_depth = 8\nchunk_rows_min = 100\nchunk_rows_max = 500",
        None,
    ));
    let mut opts = ReconOptions::new(Source::Events(events.0.clone()));
    opts.record = Record::Yes;
    let report = recon::run(&config, &opts).await.expect("reconcile");

    let want: BTreeSet<String> = planted
        .iter()
        .map(|p| {
            let space = match p.key.space() {
                Space::Balances => "balances",
                Space::Items => "items",
            };
            json!([
                p.invariant.id(),
                p.store,
                p.realm,
                p.key.subject(),
                p.key,
                shown(space, &p.expected),
                shown(space, &p.actual)
            ])
            .to_string()
        })
        .collect();
    let got = finding_keys(&report.findings);
    assert_eq!(got, want, "exactly the planted drift, with keys and values");
    assert_eq!(report.findings.len(), planted.len());
    assert_eq!(report.outcome, Outcome::Divergent);
    assert!(report.rows_compared > 1_000, "{}", report.rows_compared);
    // Only the differing leaves were fetched row by row: far fewer candidates than rows.
    let cands: usize = report.stores.iter().map(|s| s.candidates).sum();
    assert_eq!(cands, planted.len());
    // A store at rest is read once: the kept rows and keyed reads explain every leaf.
    let reread: usize = report.stores.iter().map(|s| s.reread_leaves).sum();
    assert_eq!(reread, 0, "no second pass");

    // Without the filter nothing is kept: inserted rows hide from the keyed reads, and
    // their leaves take the second pass. The same findings come out.
    let no_filter = parse(&config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 10\ntree_depth = 8\nchunk_rows_min = 100\nchunk_rows_max = 500\nfilter_bits_per_row = 0",
        None,
    ));
    let again = recon::run(
        &no_filter,
        &ReconOptions::new(Source::Events(events.0.clone())),
    )
    .await
    .expect("reconcile without the filter");
    let reread: usize = again.stores.iter().map(|s| s.reread_leaves).sum();
    assert!(reread > 0, "the inserted rows' leaves were read again");
    let got_again = finding_keys(&again.findings);
    assert_eq!(got_again, want, "the second pass finds the same drift");

    // The run is recorded and the findings stored.
    let mut c = db.connect().await;
    let row: (String, i64, i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT outcome, divergent_keys, rows_compared, queries, watermark_position FROM recon_runs",
    )
    .fetch_one(&mut c)
    .await
    .expect("one recon_runs row");
    assert_eq!(row.0, "divergent");
    assert_eq!(row.1, planted.len() as i64);
    assert_eq!(row.2, report.rows_compared as i64);
    assert!(row.3 > 0);
    assert_eq!(row.4, None, "an --events run has no journal position");
    let stored: (i64,) =
        sqlx::query_as("SELECT count(*) FROM findings WHERE invariant LIKE 'recon.%'")
            .fetch_one(&mut c)
            .await
            .expect("count findings");
    assert_eq!(stored.0, planted.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_world_reconciles_clean_and_the_cli_exits_by_outcome() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(3_000, Noise::default());
    materialize(&db, &redis, &lines, &[]).await;
    let events = write_events(&lines);
    let text = config_text(&db.url, &redis.prefix, "grace_ms = 10", None);
    let config = parse(&text);
    let report = recon::run(
        &config,
        &ReconOptions::new(Source::Events(events.0.clone())),
    )
    .await
    .expect("reconcile");
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.outcome, Outcome::Clean);
    assert_eq!(report.stores.len(), TABLES.len() + 1);

    let cfg = tempfile_path::TempPath::new("recon.toml");
    std::fs::write(&cfg.0, &text).expect("write config");
    let cli = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_assayer"))
            .args(["reconcile", "--config"])
            .arg(&cfg.0)
            .arg("--events")
            .arg(&events.0)
            .args(["--format", "json", "--grace-ms", "0"])
            .args(extra)
            .output()
            .expect("run assayer")
    };
    let out = cli(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rows compared") && err.contains("queries"),
        "{err}"
    );

    // Drift one wallet: exit 2, the finding on stdout.
    let mut c = db.connect().await;
    sqlx::query("UPDATE wallets SET balance = balance + 7 WHERE account = (SELECT min(account) FROM wallets)")
        .execute(&mut c)
        .await
        .expect("drift");
    let out = cli(&["--system", "economy"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json findings");
    assert!(!findings.is_empty());
    assert!(
        findings.iter().all(
            |f| f["invariant"] == "recon.value_mismatch" && f["evidence"]["store"] == "wallets"
        )
    );
}

/// A world the test writes to while reconciliation runs, standing in for the engine:
/// it logs every value each key takes, so the grace re-check can see writes in flight.
struct LiveWorld {
    inner: Mutex<(StoreWorld, Vec<Logged>)>,
}

/// (realm, key, the value it took).
type Logged = (String, RowKey, Vec<Scalar>);

impl LiveWorld {
    fn apply(&self, line: &[u8]) -> Vec<assayer::sim::stores::Change> {
        let mut g = self.inner.lock().expect("lock");
        let (world, log) = &mut *g;
        let changes = world.apply_line(line);
        let keys: BTreeSet<(String, RowKey)> = changes
            .iter()
            .map(|c| (c.realm.clone(), c.key.clone()))
            .collect();
        for (realm, key) in keys {
            let v = world.current(&realm, &key);
            log.push((realm, key, v));
        }
        changes
    }
}

fn owned(key: &RowKey, v: Vec<Scalar>, own: &Ownership) -> Vec<Scalar> {
    match key {
        RowKey::Balance { account, .. } if !own.owns_account(account) => Vec::new(),
        RowKey::Balance { .. } => v,
        RowKey::Item { .. } => v
            .into_iter()
            .filter(|s| matches!(s, Scalar::Str(l) if own.owns_location(l)))
            .collect(),
    }
}

impl LiveExpected for LiveWorld {
    fn snapshot(&self) -> Arc<Expected> {
        let g = self.inner.lock().expect("lock");
        let mut e = g.0.expected();
        e.watermark_position = Some(g.1.len() as i64);
        Arc::new(e)
    }

    fn history(&self, realm: &str, key: &RowKey, own: &Ownership, since: i64) -> Vec<Vec<Scalar>> {
        let g = self.inner.lock().expect("lock");
        g.1[since as usize..]
            .iter()
            .filter(|(r, k, _)| r == realm && k == key)
            .map(|(_, _, v)| owned(key, v.clone(), own))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_world_under_concurrent_writes_yields_no_finding() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(40_000, Noise::none());
    let (first, rest) = lines.split_at(10_000);
    let live = Arc::new(LiveWorld {
        inner: Mutex::new((StoreWorld::new(), Vec::new())),
    });
    for l in first {
        live.apply(l);
    }
    let stores = SimStores::connect(&db.url, Some(REDIS_URL), &redis.prefix)
        .await
        .expect("connect stores");
    stores.reset().await.expect("reset");
    let tables = live.inner.lock().expect("lock").0.tables();
    stores.write_all(&tables).await.expect("write");

    // The game keeps writing: the stream (the live world) first, the store right after.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (live, stop, batches) = (live.clone(), stop.clone(), batches.clone());
        let rest: Vec<Vec<u8>> = rest.to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(10) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let mut changes = Vec::new();
                for l in chunk {
                    changes.extend(live.apply(l));
                }
                stores.apply(&changes).await.expect("store write");
                batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let config = parse(&config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 300\nrecheck_rounds = 3\ntree_depth = 8\nchunk_rows_min = 200\nchunk_rows_max = 1000",
        None,
    ));
    let before = batches.load(std::sync::atomic::Ordering::Relaxed);
    let report = recon::run(&config, &ReconOptions::new(Source::Live(live.clone())))
        .await
        .expect("reconcile");
    let during = batches.load(std::sync::atomic::Ordering::Relaxed) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
    // How many batches depends on the machine's load; that the writes overlapped the
    // run is what matters (and the candidates below show they reached the scans).
    assert!(
        during > 0,
        "the world kept writing during the run ({during} batches)"
    );
    let cands: usize = report.stores.iter().map(|s| s.candidates).sum();
    assert!(
        cands > 0,
        "concurrent writes made candidates for the re-check to clear"
    );
    assert!(
        report.findings.is_empty(),
        "no finding in a clean world: {:#?}",
        report.findings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_query_that_fails_or_times_out_is_an_error_not_a_finding() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(1_000, Noise::none());
    materialize(&db, &redis, &lines, &[]).await;
    let events = write_events(&lines);

    // Times out: every row of the wallets query sleeps past statement_timeout_ms.
    let slow = "SELECT account, asset, balance FROM wallets WHERE pg_sleep(0.5) IS NOT NULL";
    let config = parse(&config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 0\nstatement_timeout_ms = 100",
        Some(slow),
    ));
    let mut opts = ReconOptions::new(Source::Events(events.0.clone()));
    opts.systems = vec!["economy".into()];
    opts.record = Record::Yes;
    let err = recon::run(&config, &opts)
        .await
        .expect_err("a timed-out query is an error");
    let text = err.to_string();
    assert!(
        text.contains("wallets") && text.contains("statement timeout"),
        "{text}"
    );
    let mut c = db.connect().await;
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM recon_runs ORDER BY id DESC LIMIT 1")
            .fetch_one(&mut c)
            .await
            .expect("the failed run is recorded");
    assert_eq!(row.0, "failed");
    assert!(row.1.unwrap_or_default().contains("statement timeout"));
    let stored: (i64,) = sqlx::query_as("SELECT count(*) FROM findings")
        .fetch_one(&mut c)
        .await
        .expect("count findings");
    assert_eq!(stored.0, 0, "no finding for an auditor failure");

    // Fails: the query names a table that does not exist.
    let config = parse(&config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 0",
        Some("SELECT account, asset, balance FROM no_such_table"),
    ));
    let mut opts = ReconOptions::new(Source::Events(events.0.clone()));
    opts.systems = vec!["economy".into()];
    let err = recon::run(&config, &opts)
        .await
        .expect_err("a failing query is an error");
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // Redis unreachable: an error naming the store.
    let text = config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 0\nredis_timeout_ms = 500",
        None,
    )
    .replace(REDIS_URL, "redis://127.0.0.1:1");
    let mut opts = ReconOptions::new(Source::Events(events.0.clone()));
    opts.systems = vec!["economy".into()];
    let err = recon::run(&parse(&text), &opts)
        .await
        .expect_err("an unreachable cache is an error");
    assert!(err.to_string().contains("wallet_cache"), "{err}");
}

#[test]
fn store_config_mistakes_fail_at_startup() {
    let bad = [
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"mysql\"\nurl = \"x\"\naccounts = [\"p:*\"]\n",
            "kind",
        ),
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"postgres\"\nurl = \"x\"\naccounts = [\"p:*\"]\n",
            "balances_query",
        ),
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"redis\"\nurl = \"x\"\nlocations = [\"p:*\"]\nkey_prefix = \"k:\"\n",
            "balances only",
        ),
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"postgres\"\nurl_env = \"NOPE_NOT_SET\"\naccounts = [\"p:*\"]\nbalances_query = \"q\"\n",
            "NOPE_NOT_SET",
        ),
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"postgres\"\nurl = \"x\"\naccounts = [\"p:*\"]\nbalances_query = \"q\"\ntypo = 1\n",
            "typo",
        ),
        ("[reconcile]\ntree_depth = 30\n", "tree_depth"),
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"redis\"\nurl = \"x\"\naccounts = [\"p:*\"]\nkey_prefix = \"k:\"\nmode = \"summary\"\n",
            "summary",
        ),
        (
            "[[store]]\nname = \"a\"\nsystem = \"s\"\nrealm = \"r\"\nkind = \"postgres\"\nurl = \"x\"\naccounts = [\"p:*\"]\nbalances_query = \"q\"\nmode = \"sumary\"\n",
            "sumary",
        ),
    ];
    for (text, needle) in bad {
        let err = Config::parse(text, "t.toml", |_| None).expect_err(text);
        assert!(err.to_string().contains(needle), "{err} (wanted {needle})");
    }
}

/// Journals `lines` as the daemon would (group `recon-test`, as in the config).
async fn journal(db: &TestDb, lines: &[Vec<u8>]) {
    use assayer::adapters::postgres::Batch;
    let pg = db.pg("recon-test", 2).await;
    let mut batch = Batch::default();
    for (i, l) in lines.iter().enumerate() {
        let v = assayer::core::event::decode(l).expect("a clean world decodes");
        batch
            .entries
            .push(assayer::daemon::journal_entry(i as i64 + 1, &v, l));
    }
    batch.new_head = lines.len() as i64;
    pg.commit(&batch).await.expect("journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_schedule_records_runs_and_counts_them_in_metrics() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(1_000, Noise::none());
    journal(&db, &lines).await;
    materialize(&db, &redis, &lines, &[(Drift::RowDeleted, 1)]).await;
    let config = parse(&config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 10\ninterval_ms = 100",
        None,
    ));
    let metrics = Arc::new(assayer::daemon::metrics::Metrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(recon::schedule(config, metrics.clone(), stop.clone()));
    let mut c = db.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM recon_runs")
            .fetch_one(&mut c)
            .await;
        if matches!(n, Ok((k,)) if k >= 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled runs recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.expect("schedule ends on shutdown");
    let text = metrics.encode();
    assert!(
        text.contains("assayer_recon_runs_total{outcome=\"divergent\"}"),
        "{text}"
    );
    assert!(text.contains("assayer_recon_divergent_keys 1"), "{text}");
    assert!(
        text.contains("assayer_recon_last_run_timestamp_seconds"),
        "{text}"
    );
    let outcomes: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT outcome FROM recon_runs")
        .fetch_all(&mut c)
        .await
        .expect("outcomes");
    assert_eq!(outcomes, vec![("divergent".to_string(),)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_journal_is_the_expected_state_and_names_the_last_transactions() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(3_000, Noise::none());
    journal(&db, &lines).await;

    let planted = materialize(&db, &redis, &lines, &[(Drift::ValueChanged, 2)]).await;
    let config = parse(&config_text(&db.url, &redis.prefix, "grace_ms = 10", None));
    let report = recon::run(&config, &ReconOptions::new(Source::Journal))
        .await
        .expect("reconcile");
    assert_eq!(report.watermark_position, Some(lines.len() as i64));
    assert_eq!(
        report.findings.len(),
        planted.len(),
        "{:#?}",
        report.findings
    );
    let want: BTreeSet<&str> = planted.iter().map(|p| p.key.subject()).collect();
    let got: BTreeSet<&str> = report
        .findings
        .iter()
        .filter_map(|f| f.subject.as_deref())
        .collect();
    assert_eq!(got, want);
    for f in &report.findings {
        let last = f.evidence["last_transactions"]
            .as_array()
            .expect("last transactions");
        assert!(!last.is_empty(), "{f:?}");
        assert!(last.iter().all(|t| t["tx_id"].is_string()
            && t["position"].is_i64()
            && t["ts"].as_str().is_some_and(|ts| ts.ends_with('Z'))));
    }
    // Journal runs are recorded by default.
    let mut c = db.connect().await;
    let row: (String, Option<i64>) =
        sqlx::query_as("SELECT outcome, watermark_position FROM recon_runs")
            .fetch_one(&mut c)
            .await
            .expect("recorded");
    assert_eq!(row, ("divergent".to_string(), Some(lines.len() as i64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_keeps_the_stores_in_step_while_publishing_and_plants_the_drift_it_lists() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let bus = common::TestBus::new();
    let dir = std::env::temp_dir();
    let events = tempfile_path::TempPath::new("pub-events.ndjson");
    let key = tempfile_path::TempPath::new("drift.json");
    let bin = env!("CARGO_BIN_EXE_assayer");
    let sim = |extra: &[&str]| {
        std::process::Command::new(bin)
            .current_dir(&dir)
            .args(["sim", "--events", "2000", "--seed", "5"])
            .args(extra)
            .output()
            .expect("run assayer sim")
    };
    // Publish with the stores kept in step, and drift planted at the end.
    let out = sim(&[
        "--publish",
        common::AMQP_URL,
        "--exchange",
        &bus.exchange,
        "--stores-pg",
        &db.url,
        "--stores-redis",
        REDIS_URL,
        "--stores-redis-prefix",
        &redis.prefix,
        "--inject-drift",
        "value_changed=2",
        "--inject-drift",
        "redis_stale=1",
        "--drift-key",
        key.0.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same world (same seed) as a file: the expected state.
    let out = sim(&["--out", events.0.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&key.0).expect("drift key")).expect("json");
    assert_eq!(planted.len(), 3);

    let config = parse(&config_text(&db.url, &redis.prefix, "grace_ms = 10", None));
    let report = recon::run(
        &config,
        &ReconOptions::new(Source::Events(events.0.clone())),
    )
    .await
    .expect("reconcile");
    let want: BTreeSet<String> = planted
        .iter()
        .map(|p| {
            format!(
                "{}|{}|{}",
                p["invariant"].as_str().unwrap_or(""),
                p["store"].as_str().unwrap_or(""),
                p["key"]
            )
        })
        .collect();
    let got: BTreeSet<String> = report
        .findings
        .iter()
        .map(|f| {
            format!(
                "{}|{}|{}",
                f.invariant.id(),
                f.evidence["store"].as_str().unwrap_or(""),
                f.evidence["key"]
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "the stores were in step: only the planted drift differs"
    );
}

/// The store readers' limits for the summary tests: tiny chunks, so a few dozen rows
/// already take many key-range chunks (and duplicate keys meet chunk boundaries).
fn tiny_chunks() -> assayer::adapters::recon_pg::ReadLimits {
    assayer::adapters::recon_pg::ReadLimits {
        statement_timeout: Duration::from_secs(5),
        lock_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        concurrent_queries_max: 1,
        target_query: Duration::from_millis(200),
        chunk_rows_min: 1,
        chunk_rows_max: 3,
        summary_target_query: Duration::from_millis(200),
        summary_chunk_rows_max: 3,
    }
}

/// Every row a pull sends, sorted, and its counters.
async fn pull_all(
    pg: &assayer::adapters::recon_pg::PgStore,
    space: Space,
) -> (
    Vec<assayer::core::recon::Row>,
    assayer::adapters::recon_pg::ReadStats,
) {
    use assayer::adapters::recon_pg::Batch;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let collect = tokio::spawn(async move {
        let mut rows = Vec::new();
        while let Some(b) = rx.recv().await {
            match b {
                Batch::Copy(mut t) => {
                    rows.extend(t.rows().expect("rows").iter().map(|r| r.to_row()))
                }
                Batch::Rows(r) => rows.extend(r),
            }
        }
        rows
    });
    let (st, _) = pg.pull(space, &tx).await.expect("pull");
    drop(tx);
    let mut rows = collect.await.expect("collect");
    rows.sort();
    (rows, st)
}

/// Page ranges are read in one snapshot: while the game rewrites every row (moving
/// each to another page), a pull still returns each row exactly once. An integer
/// balance is selected as it is (no cast to text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_by_pages_reads_each_row_once_while_rows_move_between_pages() {
    use assayer::adapters::recon_pg::{BalanceColumn, PgStore};
    use assayer::core::recon::Row;
    use sqlx::Connection as _;

    let db = TestDb::create().await;
    let mut c = db.connect().await;
    // ~7 rows a page: the tiny chunks below are a page or two each.
    sqlx::raw_sql(
        "CREATE TABLE w (account TEXT PRIMARY KEY, asset TEXT NOT NULL, balance INT8 NOT NULL, pad TEXT);
         INSERT INTO w SELECT 'player:' || i, 'gold', i, repeat('x', 1000) FROM generate_series(1, 300) i;",
    )
    .execute(&mut c)
    .await
    .expect("create");
    let pg = PgStore::connect(
        "moving",
        &db.url,
        Some("SELECT account, asset, balance, ctid FROM w".into()),
        None,
        tiny_chunks(),
    )
    .await
    .expect("connect");
    let plan = pg.pull_plan(Space::Balances).await.expect("plan");
    assert!(plan.pages);
    assert_eq!(plan.balance, BalanceColumn::Integer);
    let want: Vec<Row> = (1..=300)
        .map(|i| Row::balance(&format!("player:{i}"), "gold", i))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The game rewrites every row with a longer pad (no room on its page: it moves),
    // newest first, over and over, while the pulls run.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), db.url.clone());
        tokio::spawn(async move {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for i in (1..=300).rev().step_by(7) {
                    sqlx::query("UPDATE w SET pad = pad || 'y' WHERE account = $1")
                        .bind(format!("player:{i}"))
                        .execute(&mut c)
                        .await
                        .expect("update");
                }
                rounds += 1;
            }
            rounds
        })
    };
    for _ in 0..5 {
        let (pulled, st) = pull_all(&pg, Space::Balances).await;
        assert_eq!(pulled.len(), want.len(), "each row once");
        assert_eq!(pulled, want);
        assert!(st.queries > 10, "tiny chunks: {} queries", st.queries);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(writer.await.expect("writer") > 0, "the writer ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_summaries_equal_the_auditors_bit_for_bit_on_tricky_values() {
    use assayer::adapters::recon_pg::PgStore;
    use assayer::core::recon::Row;
    use assayer::core::summary::{self, Salt};

    let db = TestDb::create().await;
    let mut c = db.connect().await;
    sqlx::raw_sql(
        "CREATE TABLE w (account TEXT, asset TEXT, balance NUMERIC);
         CREATE TABLE i (item TEXT, location TEXT);",
    )
    .execute(&mut c)
    .await
    .expect("create");
    let balances: Vec<Row> = vec![
        Row::balance("", "gold", 1),
        Row::balance("player:1", "", -1),
        Row::balance("plåyer:ü", "🪙", 7),
        Row::balance("a,b", "c", 2),
        Row::balance("a", "b,c", 2),
        Row::balance("3:x,", ":", 3),
        Row::balance("~", "~,", 4),
        Row::balance("min", "gold", i128::from(i64::MIN)),
        Row::balance("max", "gold", i128::from(i64::MAX)),
        Row::balance("huge", "gold", -(10_i128.pow(30))),
        Row::balance("tab\tnew\nline", "'quote\"", 5),
        Row::balance("back\\slash", "\\x41", 6),
        // What text COPY escapes or could mistake: NULL's marker, control characters.
        Row::balance("\\N", "ctl\u{1}\r\u{8}\u{b}\u{c}\\", 8),
    ];
    let items: Vec<Row> = vec![
        Row::item("itm:1", "player:1/bag"),
        // Two copies at one place: duplicate keys that a chunk boundary must not split.
        Row::item("itm:2", "player:1/bag"),
        Row::item("itm:2", "player:1/bag"),
        Row::item("itm:2", "player:2/bank"),
        Row::item("", ""),
        Row::item("ïtem,é", "lo:c,~"),
    ];
    for r in &balances {
        let (RowKey::Balance { account, asset }, Scalar::Int(v)) = (&r.key, &r.value) else {
            unreachable!()
        };
        sqlx::query("INSERT INTO w VALUES ($1, $2, $3::numeric)")
            .bind(account)
            .bind(asset)
            .bind(v.to_string())
            .execute(&mut c)
            .await
            .expect("insert balance");
    }
    // A zero balance is no row, on both sides.
    sqlx::query("INSERT INTO w VALUES ('zero', 'gold', 0)")
        .execute(&mut c)
        .await
        .expect("insert zero");
    for r in &items {
        let (RowKey::Item { item }, Scalar::Str(l)) = (&r.key, &r.value) else {
            unreachable!()
        };
        sqlx::query("INSERT INTO i VALUES ($1, $2)")
            .bind(item)
            .bind(l)
            .execute(&mut c)
            .await
            .expect("insert item");
    }
    let pg = PgStore::connect(
        "tricky",
        &db.url,
        Some("SELECT account, asset, balance FROM w".into()),
        Some("SELECT item, location FROM i".into()),
        tiny_chunks(),
    )
    .await
    .expect("connect");
    let salt = Salt::from_bytes(*b"0123456789abcdef");
    for (space, rows) in [(Space::Balances, &balances), (Space::Items, &items)] {
        for depth in [1u8, 6] {
            let (theirs, st) = pg.summarize(space, depth, &salt).await.expect("summarize");
            let ours = summary::expected_summaries(rows.clone(), depth, &salt);
            assert_eq!(theirs, ours, "{space:?} at depth {depth}");
            assert_eq!(st.rows, rows.len() as u64, "every live row summarised once");
            assert!(st.queries > 4, "tiny chunks: {} queries", st.queries);
            // Any single change shows: the same rows less one are not equal.
            let fewer = summary::expected_summaries(rows[1..].to_vec(), depth, &salt);
            assert_ne!(theirs, fewer);
        }
        // Pass 2 fetches exactly the rows of the asked buckets.
        let depth = 3;
        let mut want_buckets = vec![
            summary::bucket(&rows[0].key, depth),
            summary::bucket(&rows[3].key, depth),
        ];
        want_buckets.dedup();
        let mut got = Vec::new();
        pg.scan_buckets(space, depth, &want_buckets, |r| got.extend(r))
            .await
            .expect("scan buckets");
        let set: std::collections::HashSet<usize> = want_buckets.iter().copied().collect();
        let mut want: Vec<Row> = rows
            .iter()
            .filter(|r| summary::in_buckets(&r.key, depth, &set))
            .cloned()
            .collect();
        want.sort();
        got.sort();
        assert!(!want.is_empty());
        assert_eq!(got, want, "{space:?}");
        // The pull (text COPY in tiny key-range chunks whose bounds PostgreSQL quotes)
        // returns every live row once: tricky keys, and both copies of a duplicate item.
        let mut all = rows.clone();
        all.sort();
        assert!(!pg.pull_plan(space).await.expect("plan").pages);
        let (pulled, st) = pull_all(&pg, space).await;
        assert_eq!(pulled, all, "{space:?} pull");
        // Two queries a chunk (boundary, COPY): more than one chunk.
        assert!(st.queries >= 4, "tiny chunks: {} queries", st.queries);
        // The same query with a ctid: page ranges, the same rows.
        let (q, cols) = match space {
            Space::Balances => ("w", "account, asset, balance"),
            Space::Items => ("i", "item, location"),
        };
        let paged = PgStore::connect(
            "tricky",
            &db.url,
            Some(format!("SELECT {cols}, ctid FROM {q}")).filter(|_| space == Space::Balances),
            Some(format!("SELECT {cols}, ctid FROM {q}")).filter(|_| space == Space::Items),
            tiny_chunks(),
        )
        .await
        .expect("connect");
        assert!(paged.pull_plan(space).await.expect("plan").pages);
        let (pulled, _) = pull_all(&paged, space).await;
        assert_eq!(pulled, all, "{space:?} pull by pages");
    }
    // Another salt, other digests: what PostgreSQL sums is salted as the auditor's.
    let other = Salt::from_bytes([9; 16]);
    let (theirs, _) = pg
        .summarize(Space::Balances, 6, &other)
        .await
        .expect("summarize");
    assert_ne!(
        theirs,
        summary::expected_summaries(balances.clone(), 6, &salt)
    );
    assert_eq!(
        theirs,
        summary::expected_summaries(balances.clone(), 6, &other)
    );

    // A NULL is never skipped: its bucket differs, and the row pull names it.
    sqlx::query("INSERT INTO w VALUES (NULL, 'gold', 5), ('nullbal', 'gold', NULL)")
        .execute(&mut c)
        .await
        .expect("insert nulls");
    let (theirs, st) = pg
        .summarize(Space::Balances, 6, &salt)
        .await
        .expect("summarize");
    assert_eq!(st.rows, balances.len() as u64 + 2);
    let differing = summary::expected_summaries(balances.clone(), 6, &salt).diff(&theirs);
    assert!(!differing.is_empty());
    let err = pg
        .scan_buckets(Space::Balances, 6, &differing, |_| {})
        .await
        .expect_err("a NULL column is an error");
    assert!(err.to_string().contains("NULL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_mode_finds_exactly_the_drift_pull_mode_finds_and_moves_less() {
    let db = TestDb::create().await;
    let redis = TestRedis::create().await;
    let lines = world_lines(4_000, Noise::default());
    let plan = [
        (Drift::ValueChanged, 3),
        (Drift::RowDeleted, 3),
        (Drift::RowInserted, 2),
        (Drift::RedisStale, 1),
    ];
    let planted = materialize(&db, &redis, &lines, &plan).await;
    let events = write_events(&lines);
    let pull_text = config_text(
        &db.url,
        &redis.prefix,
        "grace_ms = 10\ntree_depth = 6",
        None,
    );
    let summary_text = pull_text.replace(
        "kind = \"postgres\"\n",
        "kind = \"postgres\"\nmode = \"summary\"\n",
    );
    assert_eq!(
        summary_text.matches("mode = \"summary\"").count(),
        TABLES.len()
    );
    let run = |text: String| {
        let events = events.0.clone();
        async move {
            recon::run(&parse(&text), &ReconOptions::new(Source::Events(events)))
                .await
                .expect("reconcile")
        }
    };
    let pull = run(pull_text).await;
    let summ = run(summary_text).await;
    let found = |r: &recon::ReconReport| -> BTreeSet<String> {
        r.findings
            .iter()
            .map(|f| {
                json!([
                    f.invariant.id(),
                    f.evidence["store"],
                    f.evidence["key"],
                    f.evidence["expected"],
                    f.evidence["actual"]
                ])
                .to_string()
            })
            .collect()
    };
    assert_eq!(
        found(&summ),
        found(&pull),
        "the same divergences, the same values"
    );
    assert_eq!(summ.findings.len(), planted.len());
    assert_eq!(summ.rows_compared, pull.rows_compared);
    let planted_in = |store: &str| planted.iter().filter(|p| p.store == store).count();
    for (p, s) in pull.stores.iter().zip(&summ.stores) {
        assert_eq!(p.store, s.store);
        if s.store == "wallet_cache" {
            assert_eq!(s.mode, assayer::recon::config::StoreMode::Pull);
            continue;
        }
        assert_eq!(s.mode, assayer::recon::config::StoreMode::Summary);
        // Equal data, equal summaries: a bucket differs only where drift was planted
        // (an encoding mismatch would make every bucket differ).
        assert!(
            s.differing_leaves <= planted_in(&s.store),
            "{}: {} differing buckets for {} planted",
            s.store,
            s.differing_leaves,
            planted_in(&s.store)
        );
        assert_eq!(s.divergent_keys, planted_in(&s.store), "{}", s.store);
    }
    let pg_bytes = |r: &recon::ReconReport| -> u64 {
        r.stores
            .iter()
            .filter(|s| s.store != "wallet_cache")
            .map(|s| s.bytes_read)
            .sum()
    };
    assert!(
        pg_bytes(&summ) < pg_bytes(&pull),
        "summary {} bytes, pull {} bytes",
        pg_bytes(&summ),
        pg_bytes(&pull)
    );
}
