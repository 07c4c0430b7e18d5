//! Reconciliation throughput against the real PostgreSQL, with baselines measured in the
//! same run: a raw `COPY (SELECT …) TO STDOUT` of the same rows into this process (the
//! physical floor of pulling rows) and blake3 leaf hashing alone.
//!
//! A table of ROWS balances (default 1,000,000; `ASSAYER_RECON_BENCH_ROWS`) holding 20
//! differences (10 changed, 5 deleted, 5 inserted) is reconciled with `recon::run`.
//! Prints time, rows/s, bytes read, queries, differences found, peak RSS, and the ratio
//! to each baseline. Needs PostgreSQL at 127.0.0.1:5432 (creates and drops its database).
//!
//! Summary mode (PostgreSQL computes the bucket digests) runs on the same table twice:
//! unchanged (before the differences are planted), where its bytes are compared with
//! pull mode's on the same unchanged table (target < 1%), and with the 20 differences,
//! which it must find exactly. Both modes use `tree_depth` = log2(ROWS / 1000) (the
//! docs' "~rows/1000 leaves"); the unchanged summary is also run at the default depth
//! 12 for comparison.

use std::sync::Arc;
use std::time::Instant;

use assayer::core::recon::{Expected, Ownership, Row, RowKey, Scalar, hash_row};
use assayer::daemon::config::Config;
use assayer::recon::{LiveExpected, ReconOptions, Source};
use sqlx::{Connection, Executor, PgConnection};

const ADMIN: &str = "postgres://root@127.0.0.1:5432/test";

struct Fixed(Expected);

impl LiveExpected for Fixed {
    fn snapshot(&self) -> Expected {
        self.0.clone()
    }
    fn history(&self, _: &str, _: &RowKey, _: &Ownership, _: i64) -> Vec<Vec<Scalar>> {
        Vec::new()
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let rows: i64 = std::env::var("ASSAYER_RECON_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = format!("assayer_recon_bench_{}", std::process::id());
    rt.block_on(async {
        let mut admin = PgConnection::connect(ADMIN).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {ADMIN} ({e}); start it first")
        });
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .await
            .expect("create database");
        let url = format!("postgres://root@127.0.0.1:5432/{db}");
        let checks = bench(&url, rows).await;
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

/// Runs every measurement; returns (what, differences found, differences planted).
async fn bench(url: &str, rows: i64) -> Vec<(&'static str, usize, usize)> {
    let mut c = PgConnection::connect(url).await.expect("connect");
    let t = Instant::now();
    c.execute(
        "CREATE TABLE wallets (account TEXT NOT NULL, asset TEXT NOT NULL, balance BIGINT NOT NULL,
                               PRIMARY KEY (account, asset))",
    )
    .await
    .expect("create");
    sqlx::query(
        "INSERT INTO wallets SELECT 'player:' || i, 'gold', (i * 7919) % 100000 + 1 FROM generate_series(1, $1) i",
    )
    .bind(rows)
    .execute(&mut c)
    .await
    .expect("fill");
    c.execute("VACUUM ANALYZE wallets").await.expect("vacuum");
    eprintln!("setup: {rows} rows in {:.1} s", t.elapsed().as_secs_f64());

    // The expected state: the table as it was.
    let mut expected = Expected::default();
    for i in 1..=rows {
        expected.balances.insert(
            ("r".into(), format!("player:{i}"), "gold".into()),
            i128::from((i * 7919) % 100_000 + 1),
        );
    }
    let expected = Arc::new(Fixed(expected));
    let depth = ((rows as f64 / 1000.0).log2().round() as i64).clamp(1, 20) as u8;

    // Unchanged table: pull, then summary (at the docs' depth and the default).
    let pull_clean = reconcile(url, &expected, Mode::Pull, depth).await;
    let sum_clean = reconcile(url, &expected, Mode::Summary, depth).await;
    let sum_clean_12 = reconcile(url, &expected, Mode::Summary, 12).await;
    println!("recon bench: {rows} rows, tree_depth {depth}");
    pull_clean.print("pull, unchanged", None);
    sum_clean.print("summary, unchanged", Some(&pull_clean));
    sum_clean_12.print("summary, unchanged, depth 12", Some(&pull_clean));
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
        sqlx::query("INSERT INTO wallets VALUES ($1, 'gold', 42)")
            .bind(format!("player:{}", rows + k))
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
    let t = Instant::now();
    let mut acc = 0usize;
    for r in &sample {
        acc ^= hash_row(r, 12).0;
    }
    let hash_rate = sample.len() as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(acc);
    drop(sample);

    // assayer, 20 differences planted.
    let pull = reconcile(url, &expected, Mode::Pull, depth).await;
    let summ = reconcile(url, &expected, Mode::Summary, depth).await;
    let rate = pull.rows as f64 / pull.secs;
    println!("recon bench: {rows} rows, 20 differences planted");
    pull.print("pull", None);
    summ.print("summary", Some(&pull));

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
    println!(
        "  peak RSS:       {:.0} MiB (includes the expected state held in memory)",
        peak_rss_mib()
    );
    vec![
        ("pull, unchanged", pull_clean.found, 0),
        ("summary, unchanged", sum_clean.found, 0),
        ("summary, unchanged, depth 12", sum_clean_12.found, 0),
        ("pull", pull.found, 20),
        ("summary", summ.found, 20),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pull,
    Summary,
}

struct Run {
    secs: f64,
    rows: u64,
    bytes: u64,
    queries: u64,
    found: usize,
}

impl Run {
    fn print(&self, label: &str, vs: Option<&Run>) {
        println!(
            "  {:<30} {:>6.2} s, {:>9.0} rows/s, {:>10} bytes read, {:>4} queries, {} differences found{}",
            format!("{label}:"),
            self.secs,
            self.rows as f64 / self.secs,
            self.bytes,
            self.queries,
            self.found,
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
    let mode = match mode {
        Mode::Pull => "pull",
        Mode::Summary => "summary",
    };
    let text = format!(
        "[reconcile]\ngrace_ms = 0\nrecheck_rounds = 1\ntree_depth = {depth}\n\
         [[store]]\nname = \"wallets\"\nsystem = \"economy\"\nrealm = \"r\"\nkind = \"postgres\"\n\
         mode = \"{mode}\"\nurl = \"{url}\"\naccounts = [\"player:*\"]\n\
         balances_query = \"SELECT account, asset, balance FROM wallets\"\n"
    );
    let config = Config::parse(&text, "bench.toml", |_| None).expect("config");
    let source = Source::Live(expected.clone());
    let t = Instant::now();
    let report = assayer::recon::run(&config, &ReconOptions::new(source))
        .await
        .expect("reconcile");
    Run {
        secs: t.elapsed().as_secs_f64(),
        rows: report.rows_compared,
        bytes: report.bytes_read,
        queries: report.queries,
        found: report.findings.len(),
    }
}
