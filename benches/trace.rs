//! Support tracing at scale (issue #6): a journal of 10,000,000 events in PostgreSQL
//! (filled with `generate_series`, rows shaped like the daemon's: every event a journal
//! row with a JSON body; half move one item, half post two legs), then
//! - `trace item` of an item with 10,000 moves,
//! - `trace account` of an account with 100,000 postings,
//!
//! each through the same code the CLI and the console run
//! (`adapters::journal::{item_report, account_report}`), against a baseline measured in
//! the same run: the raw indexed SELECT of the same rows. Target: < 100 ms each.
//!
//! `cargo bench --bench trace` (PostgreSQL at 127.0.0.1:5432, trust auth). Set
//! `ASSAYER_BENCH_EVENTS` to try a smaller journal (the figures then mean less).

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

use assayer::adapters::journal::{Journal, account_report, item_report};
use assayer::adapters::postgres::{ConnectOptions, Pg};

const PG_ADMIN: &str = "postgres://root@127.0.0.1:5432/test";
const GROUP: &str = "bench";
const EVENTS: i64 = 10_000_000;
/// Every 1,000th event moves the traced item; every 100th posts to the traced account.
const ITEM_EVERY: i64 = 1_000;
const ACCOUNT_EVERY: i64 = 100;
const RUNS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_it<F, Fut, T>(mut f: F) -> (Duration, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = f().await;
        times.push(t.elapsed());
        last = Some(r);
    }
    (median(times), last.expect("RUNS > 0"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: i64 = std::env::var("ASSAYER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EVENTS);
    let mut admin = PgConnection::connect(PG_ADMIN).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {PG_ADMIN} ({e}). Start it with:\n  \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    });
    let name = format!("assayer_bench_trace_{}", std::process::id());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create bench database");
    let url = format!("postgres://root@127.0.0.1:5432/{name}");
    let result = run(&url, events).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await
        .expect("drop bench database");
    if let Err(e) = result {
        panic!("bench failed: {e}");
    }
}

async fn run(url: &str, events: i64) -> anyhow::Result<()> {
    let pg = Pg::connect(
        &ConnectOptions {
            url,
            pool_size_max: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(3_600),
        },
        GROUP,
    )
    .await?;
    pg.migrate().await?;
    let mut c = PgConnection::connect(url).await?;
    c.execute("SET synchronous_commit = off").await?;
    let t = Instant::now();
    // Journal rows: 2 realms, 12 systems, a JSON body like the daemon stores.
    c.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO journal (position, group_name, entry_kind, tx_id, realm, system, seq, ts, kind, actor, body)
         SELECT g, '{GROUP}', 'event', 'tx-' || g, 'realm-' || (g % 2 + 1), 'sys' || (g % 12), g,
                timestamptz '2026-11-27 08:00:00Z' + g * interval '1 ms',
                CASE WHEN g % 2 = 0 THEN 'inventory.move' ELSE 'economy.transfer' END,
                'player:' || (g % 50000),
                convert_to('{{\"tx_id\":\"tx-' || g || '\",\"realm\":\"realm-' || (g % 2 + 1) || '\",\"system\":\"sys' || (g % 12) || '\",\"seq\":' || g || ',\"kind\":\"k\"}}', 'UTF8')
           FROM generate_series(1, {events}) g"
    )))
    .await?;
    // Even events move one item; every ITEM_EVERY-th moves the traced item along a
    // chain of players (all in realm-1: ITEM_EVERY is even, so g % 2 + 1 = 1).
    c.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO journal_items (group_name, position, realm, item, from_loc, to_loc, ord)
         SELECT '{GROUP}', g, 'realm-' || (g % 2 + 1),
                CASE WHEN g % {ITEM_EVERY} = 0 THEN 'itm:traced' ELSE 'itm:' || (g % 2000000) END,
                CASE WHEN g = {ITEM_EVERY} THEN 'world:loot'
                     WHEN g % {ITEM_EVERY} = 0 THEN 'player:' || (g / {ITEM_EVERY} - 1) || '/bag'
                     ELSE 'player:' || (g % 50000) || '/bag' END,
                CASE WHEN g % {ITEM_EVERY} = 0 THEN 'player:' || (g / {ITEM_EVERY}) || '/bag'
                     ELSE 'player:' || ((g + 1) % 50000) || '/bag' END,
                0
           FROM generate_series(2, {events}, 2) g"
    )))
    .await?;
    // Odd events post two legs; every ACCOUNT_EVERY-th (g % 100 = 1, realm-2) involves
    // the traced account.
    c.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO journal_postings (group_name, position, realm, account, asset, delta, ord)
         SELECT '{GROUP}', g, 'realm-' || (g % 2 + 1),
                CASE WHEN g % {ACCOUNT_EVERY} = 1 THEN 'player:traced' ELSE 'player:' || (g % 50000) END,
                'gold', CASE WHEN g % 3 = 0 THEN -(g % 500 + 1) ELSE g % 500 + 1 END, 0
           FROM generate_series(1, {events}, 2) g
         UNION ALL
         SELECT '{GROUP}', g, 'realm-' || (g % 2 + 1), 'player:' || ((g * 7) % 50000), 'gold',
                CASE WHEN g % 3 = 0 THEN g % 500 + 1 ELSE -(g % 500 + 1) END, 1
           FROM generate_series(1, {events}, 2) g"
    )))
    .await?;
    c.execute("ANALYZE journal").await?;
    c.execute("ANALYZE journal_items").await?;
    c.execute("ANALYZE journal_postings").await?;
    println!(
        "trace bench: filled {events} journal events ({} item moves, {} postings) in {:.1} s",
        events / 2,
        events,
        t.elapsed().as_secs_f64()
    );

    let pool = sqlx::PgPool::connect(url).await?;
    let j = Journal::connect(
        url,
        GROUP,
        2,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await?;

    // Baseline: the raw indexed SELECT of the item's rows.
    let (base_item, n) = time_it(|| {
        sqlx::query(
            "SELECT position, from_loc, to_loc FROM journal_items
              WHERE realm = 'realm-1' AND item = 'itm:traced' AND group_name = $1 ORDER BY position",
        )
        .bind(GROUP)
        .fetch_all(&pool)
    })
    .await;
    let n = n?.len();
    let (item_t, report) = time_it(|| item_report(&j, None, "itm:traced")).await;
    let report = report?;
    assert_eq!(
        report.trace.steps.len(),
        n,
        "trace and baseline see the same moves"
    );
    assert_eq!(report.trace.copies.len(), 1);
    println!(
        "trace item: {} moves in {:.1} ms (baseline indexed SELECT {:.1} ms, ratio {:.2}×) — target < 100 ms: {}",
        report.trace.steps.len(),
        ms(item_t),
        ms(base_item),
        ms(item_t) / ms(base_item).max(0.001),
        if ms(item_t) < 100.0 { "met" } else { "MISSED" }
    );

    let (base_acct, n) = time_it(|| {
        sqlx::query(
            "SELECT position, asset, delta FROM journal_postings
              WHERE realm = 'realm-2' AND account = 'player:traced' AND group_name = $1 ORDER BY position",
        )
        .bind(GROUP)
        .fetch_all(&pool)
    })
    .await;
    let n = n?.len();
    let (acct_t, t) = time_it(|| account_report(&j, None, "player:traced", None, 10)).await;
    let t = t?;
    assert_eq!(
        t.history.len(),
        n,
        "trace and baseline see the same postings"
    );
    println!(
        "trace account: {} postings, {} counterparties in {:.1} ms (baseline indexed SELECT {:.1} ms, ratio {:.2}×) — target < 100 ms: {}",
        t.history.len(),
        t.counterparties.len(),
        ms(acct_t),
        ms(base_acct),
        ms(acct_t) / ms(base_acct).max(0.001),
        if ms(acct_t) < 100.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
