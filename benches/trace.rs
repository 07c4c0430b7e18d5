//! Support tracing at scale (issue #6): a journal of 10,000,000 events in PostgreSQL
//! (filled with `generate_series`, rows shaped like the daemon's: every event a journal
//! row with a JSON body; half move one item, half post two legs), then
//! - `trace item` of an item with 10,000 moves,
//! - `trace account` of an account with 100,000 postings (as the console asks: the
//!   newest 500 postings, 10 largest inflows, 50 counterparties),
//!
//! each through the same code the CLI and the console run
//! (`adapters::journal::{item_report, Journal::account}`), against a baseline measured
//! in the same run: the raw indexed SELECT of the same rows. Target: < 100 ms each.
//!
//! `cargo bench --bench trace` (PostgreSQL at 127.0.0.1:5432, trust auth). Set
//! `ASSAYER_BENCH_EVENTS` to try a smaller journal (the figures then mean less).

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

use assayer::adapters::journal::{AccountQuery, Journal, item_report};
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
    // Item moves and postings carry their transaction's columns, like the daemon's.
    const TS_US: &str =
        "(extract(epoch FROM timestamptz '2026-11-27 08:00:00Z') * 1000000)::bigint + g * 1000";
    // Even events move one item; every ITEM_EVERY-th moves the traced item along a
    // chain of players (all in realm-1: ITEM_EVERY is even, so g % 2 + 1 = 1).
    c.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO journal_items (group_name, position, realm, item, from_loc, to_loc, ord,
                                    tx_id, ts_us, system, kind, actor)
         SELECT '{GROUP}', g, 'realm-' || (g % 2 + 1),
                CASE WHEN g % {ITEM_EVERY} = 0 THEN 'itm:traced' ELSE 'itm:' || (g % 2000000) END,
                CASE WHEN g = {ITEM_EVERY} THEN 'world:loot'
                     WHEN g % {ITEM_EVERY} = 0 THEN 'player:' || (g / {ITEM_EVERY} - 1) || '/bag'
                     ELSE 'player:' || (g % 50000) || '/bag' END,
                CASE WHEN g % {ITEM_EVERY} = 0 THEN 'player:' || (g / {ITEM_EVERY}) || '/bag'
                     ELSE 'player:' || ((g + 1) % 50000) || '/bag' END,
                0, 'tx-' || g, {TS_US}, 'sys' || (g % 12), 'inventory.move', 'player:' || (g % 50000)
           FROM generate_series(2::bigint, {events}, 2) g"
    )))
    .await?;
    // Odd events post two legs (A → B); every ACCOUNT_EVERY-th (g % 100 = 1, realm-2)
    // has the traced account as A.
    let legs = format!(
        "SELECT g, 'realm-' || (g % 2 + 1) AS realm,
                CASE WHEN g % {ACCOUNT_EVERY} = 1 THEN 'player:traced' ELSE 'player:' || (g % 50000) END AS a,
                'player:' || ((g * 7) % 50000) AS b,
                CASE WHEN g % 3 = 0 THEN -(g % 500 + 1) ELSE g % 500 + 1 END AS d
           FROM generate_series(1::bigint, {events}, 2) g"
    );
    c.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO journal_postings (group_name, position, realm, account, asset, delta, ord,
                                       tx_id, ts_us, system, kind)
         SELECT '{GROUP}', g, realm, acct, 'gold', delta, ord, 'tx-' || g, {TS_US},
                'sys' || (g % 12), 'economy.transfer'
           FROM ({legs}) l,
                LATERAL (VALUES (l.a, l.d, 0), (l.b, -l.d, 1)) AS leg(acct, delta, ord)"
    )))
    .await?;
    // The rollups the daemon keeps as it journals.
    c.execute(
        "INSERT INTO account_rollups (group_name, account, realm, asset, postings, balance)
         SELECT group_name, account, realm, asset, count(*), sum(delta)
           FROM journal_postings GROUP BY group_name, account, realm, asset",
    )
    .await?;
    c.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO account_counterparties
                (group_name, account, realm, asset, counterparty, received, sent, transactions)
         SELECT '{GROUP}', acct, realm, 'gold', party,
                coalesce(sum(amount) FILTER (WHERE amount > 0), 0),
                coalesce(-sum(amount) FILTER (WHERE amount < 0), 0), count(*)
           FROM ({legs}) l,
                LATERAL (VALUES (l.a, l.b, l.d), (l.b, l.a, -l.d)) AS pair(acct, party, amount)
          WHERE l.a <> l.b
          GROUP BY acct, realm, party"
    )))
    .await?;
    // What autovacuum does to an insert-only table in production.
    c.execute("VACUUM ANALYZE journal").await?;
    c.execute("VACUUM ANALYZE journal_items").await?;
    c.execute("VACUUM ANALYZE journal_postings").await?;
    c.execute("VACUUM ANALYZE account_rollups").await?;
    c.execute("VACUUM ANALYZE account_counterparties").await?;
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
              WHERE group_name = $1 AND item = 'itm:traced' ORDER BY position",
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
              WHERE group_name = $1 AND account = 'player:traced' AND realm = 'realm-2'
              ORDER BY ts_us, position, ord",
        )
        .bind(GROUP)
        .fetch_all(&pool)
    })
    .await;
    let n = n?.len();
    // What the console's account page asks for.
    let q = AccountQuery {
        history: 500,
        counterparties: 50,
        ..AccountQuery::new("player:traced")
    };
    let (acct_t, t) = time_it(|| j.account(&q)).await;
    let t = t?;
    assert_eq!(
        t.postings as usize, n,
        "trace and baseline see the same postings"
    );
    assert_eq!(t.history.len(), 500);
    let sum: i64 = sqlx::query_scalar(
        "SELECT sum(delta)::bigint FROM journal_postings WHERE group_name = $1 AND account = 'player:traced'",
    )
    .bind(GROUP)
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        t.balances[0].balance,
        i128::from(sum),
        "rollup balance = sum of postings"
    );
    assert_eq!(
        t.history.last().map(|p| p.balance),
        Some(i128::from(sum)),
        "the newest posting's running balance is the account's balance"
    );
    println!(
        "trace account: {} postings (history {}, {} of {} counterparties) in {:.1} ms (baseline indexed SELECT of the postings {:.1} ms, ratio {:.2}×) — target < 100 ms: {}",
        t.postings,
        t.history.len(),
        t.counterparties.len(),
        t.counterparties_total,
        ms(acct_t),
        ms(base_acct),
        ms(acct_t) / ms(base_acct).max(0.001),
        if ms(acct_t) < 100.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
