//! Reconciliation throughput against the real PostgreSQL, with baselines measured in the
//! same run: a raw `COPY (SELECT …) TO STDOUT` of the same rows into this process (the
//! physical floor of pulling rows) and blake3 leaf hashing alone.
//!
//! Tables of ROWS balances (1,000,000 and 10,000,000 by default;
//! `ASSAYER_RECON_BENCH_ROWS=1000000` for one size) holding 20 differences (10 changed,
//! 5 deleted, 5 inserted) are reconciled with `recon::run`. Prints time, rows/s, bytes
//! read, queries, differences found, peak RSS, and the ratio to each baseline. Needs
//! PostgreSQL at 127.0.0.1:5432 (creates and drops its database).
//!
//! The peer tool, `reladiff` (PyPI, pinned, installed on first use into a virtual
//! environment under `target/`), diffs the same table against a copy of the expected
//! state with its hashdiff algorithm, through a proxy that counts the bytes PostgreSQL
//! sends it. It cannot key on text, so the table carries an integer `id` for it.
//!
//! Summary mode (PostgreSQL computes the bucket digests) runs on the same table twice:
//! unchanged (before the differences are planted), where its bytes are compared with
//! pull mode's on the same unchanged table (target < 1%), and with the 20 differences,
//! which it must find exactly. Both modes are configured with `tree_depth` =
//! log2(ROWS / 1000) (the docs' "~rows/1000 leaves"); summary mode makes it shallower
//! where its summaries would pass ~1% of a pull's bytes (`core::summary::depth_for`).

use std::sync::Arc;
use std::time::Instant;

use assayer::core::recon::{Expected, Ownership, Row, RowKey, RowRef, Scalar};
use assayer::daemon::config::Config;
use assayer::recon::{LiveExpected, ReconOptions, Source};
use sqlx::{Connection, Executor, PgConnection};

const ADMIN: &str = "postgres://root@127.0.0.1:5432/test";

// The allocator of the `assayer` binary, so the figures are those `assayer reconcile`
// would give.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixed(Arc<Expected>);

impl LiveExpected for Fixed {
    fn snapshot(&self) -> Arc<Expected> {
        self.0.clone()
    }
    fn history(&self, _: &str, _: &RowKey, _: &Ownership, _: i64) -> Vec<Vec<Scalar>> {
        Vec::new()
    }
}

/// The peak resident set (since the last [`reset_peak`]), in MiB.
fn peak_rss_mib() -> f64 {
    status_kb("VmHWM:") / 1024.0
}

/// The resident set now, in MiB.
fn rss_mib() -> f64 {
    status_kb("VmRSS:") / 1024.0
}

fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Resets the process's peak RSS to the current RSS (Linux `clear_refs` 5), so the
/// peak of one run can be read afterwards.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    // Table sizes, comma-separated: the issue's 1M and 10M by default.
    let sizes: Vec<i64> = std::env::var("ASSAYER_RECON_BENCH_ROWS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("ASSAYER_RECON_BENCH_ROWS: row counts, comma-separated")
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let venv = reladiff_venv();
    for rows in sizes {
        let db = format!("assayer_recon_bench_{}_{rows}", std::process::id());
        rt.block_on(async {
            let mut admin = PgConnection::connect(ADMIN).await.unwrap_or_else(|e| {
                panic!("PostgreSQL is not reachable at {ADMIN} ({e}); start it first")
            });
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .await
                .expect("create database");
            let url = format!("postgres://root@127.0.0.1:5432/{db}");
            let checks = bench(&url, &db, rows, &venv).await;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {db} WITH (FORCE)"
                )))
                .await
                .expect("drop database");
            // Checked after the database is dropped, so a failure leaves nothing behind.
            for (what, found, want) in checks {
                assert_eq!(found, want, "{what}: differences found");
            }
        });
    }
}

/// The peer tool: `reladiff` from PyPI in a virtual environment under `target/`
/// (created on first use; pinned version).
fn reladiff_venv() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reladiff-venv");
    let bin = dir.join("bin/reladiff");
    if !bin.exists() {
        eprintln!(
            "installing reladiff {RELADIFF} from PyPI into {}",
            dir.display()
        );
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(dir.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    &format!("reladiff[postgresql]=={RELADIFF}"),
                ])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not install reladiff into {} (needs python3 with venv and PyPI)",
            dir.display()
        );
    }
    bin
}

const RELADIFF: &str = "0.6.0";

/// A TCP proxy to PostgreSQL counting the bytes the server sends: what the peer tool
/// pulls over the wire.
async fn counting_proxy() -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    let from_server = Arc::new(AtomicU64::new(0));
    let counter = from_server.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                    return;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, mut server_w) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_r, &mut server_w).await;
                });
                // Counted as it passes, so the total is complete once the client exits.
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if client_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (port, from_server)
}

/// reladiff's hashdiff between the expected table and the store, through the counting
/// proxy. reladiff cannot key on text, so it keys on the table's integer `id` and
/// compares the other columns (the same rows assayer compares by (account, asset)).
async fn reladiff(db: &str, rows: i64, bin: &std::path::Path) -> Run {
    let (port, bytes) = counting_proxy().await;
    let url = format!("postgresql://root@127.0.0.1:{port}/{db}");
    let t = Instant::now();
    let out = tokio::process::Command::new(bin)
        .args([url.as_str(), "wallets_expected", url.as_str(), "wallets"])
        .args(["-k", "id", "-c", "account", "-c", "asset", "-c", "balance"])
        .args(["-a", "hashdiff", "--json"])
        .output()
        .await
        .expect("run reladiff");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "reladiff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON line per differing row version (`["-", [id, …]]`, `["+", [id, …]]`):
    // a difference is a distinct id.
    let keys: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v[1][0].as_str().map(str::to_string))
        .collect();
    Run {
        secs,
        peak_mib: 0.0,
        rows: rows as u64,
        bytes: bytes.load(std::sync::atomic::Ordering::Relaxed),
        queries: 0,
        found: keys.len(),
    }
}

/// Runs every measurement; returns (what, differences found, differences planted).
async fn bench(
    url: &str,
    db: &str,
    rows: i64,
    venv: &std::path::Path,
) -> Vec<(&'static str, usize, usize)> {
    let mut c = PgConnection::connect(url).await.expect("connect");
    let t = Instant::now();
    c.execute(
        "CREATE TABLE wallets (account TEXT NOT NULL, asset TEXT NOT NULL, balance BIGINT NOT NULL,
                               id BIGINT NOT NULL UNIQUE, PRIMARY KEY (account, asset))",
    )
    .await
    .expect("create");
    sqlx::query(
        "INSERT INTO wallets SELECT 'player:' || i, 'gold', (i * 7919) % 100000 + 1, i FROM generate_series(1, $1) i",
    )
    .bind(rows)
    .execute(&mut c)
    .await
    .expect("fill");
    // `ASSAYER_RECON_BENCH_ONLY=pull`: pull mode and the baselines only (a quick
    // iteration; the checks below then skip summary mode and the peer tool).
    let only_pull = std::env::var("ASSAYER_RECON_BENCH_ONLY").is_ok_and(|v| v == "pull");
    // The expected state as a table too, for the peer tool (which diffs two tables).
    if !only_pull {
        c.execute("CREATE TABLE wallets_expected AS SELECT * FROM wallets")
            .await
            .expect("expected table");
        c.execute("CREATE UNIQUE INDEX ON wallets_expected (id)")
            .await
            .expect("expected index");
        c.execute("VACUUM ANALYZE wallets_expected")
            .await
            .expect("vacuum");
    }
    c.execute("VACUUM ANALYZE wallets").await.expect("vacuum");
    // The setup's gigabyte of dirty pages written out now, not by the checkpointer and
    // the kernel during the first timed run.
    c.execute("CHECKPOINT").await.expect("checkpoint");
    eprintln!("setup: {rows} rows in {:.1} s", t.elapsed().as_secs_f64());

    // The expected state: the table as it was.
    let mut expected = Expected::default();
    for i in 1..=rows {
        expected.add_balance(
            "r",
            &format!("player:{i}"),
            "gold",
            i128::from((i * 7919) % 100_000 + 1),
        );
    }
    let expected_mib = expected.heap_bytes() as f64 / 1048576.0;
    let expected = Arc::new(Fixed(Arc::new(expected)));
    let depth = ((rows as f64 / 1000.0).log2().round() as i64).clamp(1, 20) as u8;

    // Unchanged table: pull, then summary.
    let pull_clean = reconcile(url, &expected, Mode::Pull, depth).await;
    let sum_clean = if only_pull {
        Run::skipped()
    } else {
        reconcile(url, &expected, Mode::Summary, depth).await
    };
    println!("recon bench: {rows} rows, tree_depth {depth}");
    pull_clean.print("pull, unchanged", None);
    if !only_pull {
        sum_clean.print("summary, unchanged", Some(&pull_clean));
    }
    // 20 differences: 10 changed, 5 deleted, 5 inserted.
    let step = rows / 21;
    for k in 1..=10 {
        sqlx::query("UPDATE wallets SET balance = balance + 1 WHERE account = $1")
            .bind(format!("player:{}", k * step))
            .execute(&mut c)
            .await
            .expect("change");
    }
    for k in 11..=15 {
        sqlx::query("DELETE FROM wallets WHERE account = $1")
            .bind(format!("player:{}", k * step))
            .execute(&mut c)
            .await
            .expect("delete");
    }
    for k in 1..=5 {
        sqlx::query("INSERT INTO wallets VALUES ($1, 'gold', 42, $2)")
            .bind(format!("player:{}", rows + k))
            .bind(rows + k)
            .execute(&mut c)
            .await
            .expect("insert");
    }

    // Baseline 1: raw COPY of the same rows into this process.
    let t = Instant::now();
    let mut copy_bytes = 0u64;
    {
        use futures_util::TryStreamExt;
        let mut s = c
            .copy_out_raw("COPY (SELECT account, asset, balance FROM wallets) TO STDOUT")
            .await
            .expect("copy");
        while let Some(chunk) = s.try_next().await.expect("copy chunk") {
            copy_bytes += chunk.len() as u64;
        }
    }
    let copy_s = t.elapsed().as_secs_f64();
    let copy_rate = rows as f64 / copy_s;

    // Baseline 2: blake3 leaf hashing alone (bucket + row hash), one thread.
    let sample: Vec<Row> = (1..=rows.min(1_000_000))
        .map(|i| Row::balance(&format!("player:{i}"), "gold", i128::from(i)))
        .collect();
    // As the pull hashes them: borrowed rows, 16 per blake3 pass.
    let refs: Vec<RowRef<'_>> = sample.iter().filter_map(Row::as_ref).collect();
    let mut out = vec![(0, [0; 32]); 65_536];
    let t = Instant::now();
    let mut acc = 0usize;
    for batch in refs.chunks(out.len()) {
        let out = &mut out[..batch.len()];
        RowRef::hash_many(batch, 12, out);
        acc ^= out[0].0;
    }
    let hash_rate = sample.len() as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(acc);
    drop(refs);
    drop(sample);

    // assayer, 20 differences planted.
    let pull = reconcile(url, &expected, Mode::Pull, depth).await;
    let summ = if only_pull {
        Run::skipped()
    } else {
        reconcile(url, &expected, Mode::Summary, depth).await
    };
    let rate = pull.rows as f64 / pull.secs;
    println!("recon bench: {rows} rows, 20 differences planted");
    pull.print("pull", None);
    if !only_pull {
        summ.print("summary", Some(&pull));
    }

    println!(
        "  raw COPY:       {:.2} s, {:.0} rows/s, {} bytes  (assayer / COPY rate = {:.2})",
        copy_s,
        copy_rate,
        copy_bytes,
        rate / copy_rate
    );
    println!(
        "  blake3 leaves:  {:.0} rows/s on one thread (assayer / hashing rate = {:.2})",
        hash_rate,
        rate / hash_rate
    );
    let peer = if only_pull {
        Run::skipped()
    } else {
        let peer = reladiff(db, rows, venv).await;
        peer.print_peer(&format!("reladiff {RELADIFF} (hashdiff)"), &pull);
        peer
    };
    let run_peak = [&pull_clean, &sum_clean, &pull, &summ]
        .iter()
        .map(|r| r.peak_mib)
        .fold(0.0, f64::max);
    println!(
        "  memory:         peak {:.0} MiB above the expected state during any run (target < 256 MiB); the expected state itself {:.0} MiB ({:.0} bytes per row, the engine's world state)",
        run_peak,
        expected_mib,
        expected_mib * 1048576.0 / rows as f64
    );
    let mut checks = vec![
        ("pull, unchanged", pull_clean.found, 0),
        ("pull", pull.found, 20),
    ];
    if !only_pull {
        checks.extend([
            ("summary, unchanged", sum_clean.found, 0),
            ("summary", summ.found, 20),
            ("reladiff", peer.found, 20),
        ]);
    }
    checks
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pull,
    Summary,
}

struct Run {
    secs: f64,
    /// Peak RSS of the run above the process's RSS before it.
    peak_mib: f64,
    rows: u64,
    bytes: u64,
    queries: u64,
    found: usize,
}

impl Run {
    /// A run not made (`ASSAYER_RECON_BENCH_ONLY=pull`).
    fn skipped() -> Run {
        Run {
            secs: f64::NAN,
            peak_mib: 0.0,
            rows: 0,
            bytes: 0,
            queries: 0,
            found: 0,
        }
    }

    /// The peer tool's line, against assayer's pull run on the same table.
    fn print_peer(&self, label: &str, ours: &Run) {
        println!(
            "  {:<30} {:>6.2} s, {:>9.0} rows/s, {:>10} bytes from PostgreSQL, {} differences found  (assayer pull is {:.1}x faster; target >= 10x at 10M rows)",
            format!("{label}:"),
            self.secs,
            self.rows as f64 / self.secs,
            self.bytes,
            self.found,
            self.secs / ours.secs
        );
    }

    fn print(&self, label: &str, vs: Option<&Run>) {
        println!(
            "  {:<30} {:>6.2} s, {:>9.0} rows/s, {:>10} bytes read, {:>4} queries, {} differences found, peak +{:.0} MiB{}",
            format!("{label}:"),
            self.secs,
            self.rows as f64 / self.secs,
            self.bytes,
            self.queries,
            self.found,
            self.peak_mib,
            vs.map(|p| format!(
                "  (bytes = {:.3}% of pull's, target < 1%; time {:.2}x pull's)",
                100.0 * self.bytes as f64 / p.bytes as f64,
                self.secs / p.secs
            ))
            .unwrap_or_default()
        );
    }
}

async fn reconcile(url: &str, expected: &Arc<Fixed>, mode: Mode, depth: u8) -> Run {
    // The memory of the run itself: its peak above what the process held before it
    // (the expected state, which is the engine's, not the run's).
    reset_peak();
    let before = rss_mib();
    let mode = match mode {
        Mode::Pull => "pull",
        Mode::Summary => "summary",
    };
    let text = format!(
        "[reconcile]\ngrace_ms = 0\nrecheck_rounds = 1\ntree_depth = {depth}\n\
         [[store]]\nname = \"wallets\"\nsystem = \"economy\"\nrealm = \"r\"\nkind = \"postgres\"\n\
         mode = \"{mode}\"\nurl = \"{url}\"\naccounts = [\"player:*\"]\n\
         balances_query = \"SELECT account, asset, balance, ctid FROM wallets\"\n"
    );
    let config = Config::parse(&text, "bench.toml", |_| None).expect("config");
    let source = Source::Live(expected.clone());
    let t = Instant::now();
    let report = assayer::recon::run(&config, &ReconOptions::new(source))
        .await
        .expect("reconcile");
    Run {
        secs: t.elapsed().as_secs_f64(),
        peak_mib: peak_rss_mib() - before,
        rows: report.rows_compared,
        bytes: report.bytes_read,
        queries: report.queries,
        found: report.findings.len(),
    }
}
