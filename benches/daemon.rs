//! The daemon end to end against the real RabbitMQ and PostgreSQL, next to the raw
//! broker baseline measured in the same run.
//!
//! `cargo bench --bench daemon` (env `ASSAYER_BENCH_EVENTS`, default 1,000,000).
//!
//! 1. publishes N simulated events, one per message, to an exchange feeding two queues;
//! 2. baseline: a bare lapin consumer drains one queue (consume + ack, nothing else);
//! 3. the daemon drains the other (decode, audit, journal + checkpoint, ack);
//! 4. the same N events as NDJSON batches of 100 events per message, daemon again;
//! 5. at a steady 10,000 events/s with planted `tx.unbalanced` faults (no reorder wait),
//!    the latency from publish to the finding arriving on the findings exchange — an
//!    upper bound of the daemon's receipt → publish latency;
//! 6. PostgreSQL floors: what the barest journal of every event indexed by item and
//!    account costs the database here (`pg_floor`).
//!
//! For passes 2–4 it prints the CPU per event of the broker, PostgreSQL and this
//! process, read from `/proc` (`common/cpu.rs`), and from the floors the least CPU each
//! throughput target needs against the cores this host has.
//!
//! Targets (issue #3): single events ≥ 80 % of the raw consume rate; batches ≥ 200,000
//! events/s; p99 detection latency < 10 ms.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use assayer::adapters::amqp::{self, Amqp, PublishOptions, Topology};
use assayer::core::finding::Invariant;
use assayer::daemon::config::Config;
use assayer::sim::{self, SimConfig};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::Cpu;

/// Events per NDJSON message in the steady-rate latency pass.
const STEADY_BATCH: usize = 10;
const PG_ADMIN: &str = "postgres://root@127.0.0.1:5432/test";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: usize = std::env::var("ASSAYER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(n));
}

struct Names {
    prefix: String,
}

impl Names {
    fn topology(&self, tag: &str) -> Topology {
        let p = format!("{}-{tag}", self.prefix);
        Topology {
            exchange: format!("{p}.events"),
            queue: format!("{p}.audit"),
            binding_keys: vec!["#".into()],
            dead_letter_exchange: format!("{p}.dead"),
            dead_letter_queue: format!("{p}.audit.dead"),
            findings_exchange: format!("{p}.findings"),
            declare: true,
        }
    }
}

async fn bench(n: usize) {
    let id = format!("{}", std::process::id());
    let names = Names {
        prefix: format!("assayer-bench-{id}"),
    };
    let db_name = format!("assayer_bench_{id}");
    let mut admin = PgConnection::connect(PG_ADMIN)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (pg_ctlcluster ... main start)");
    // One database per pass, so a pass never writes into indexes grown by another.
    for pass in ["single", "batch", "latency", "floor"] {
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {db_name}_{pass}"
            )))
            .await
            .expect("create db");
    }
    let db_url = format!("postgres://root@127.0.0.1:5432/{db_name}");
    let bus = Amqp::connect(AMQP_URL, "assayer bench", Duration::from_secs(10))
        .await
        .expect("RabbitMQ at 127.0.0.1:5672");

    let t = Instant::now();
    let cfg = SimConfig {
        seed: 42,
        events: n,
        players: 20_000,
        realms: 2,
        ..SimConfig::default()
    };
    let mut lines = Vec::with_capacity(n + n / 50);
    let key = sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    println!(
        "world: {} lines ({} redeliveries) generated in {:.1} s",
        key.lines,
        key.redeliveries,
        t.elapsed().as_secs_f64()
    );

    let passes = std::env::var("ASSAYER_BENCH_PASSES")
        .unwrap_or_else(|_| "single,batch,latency,floor".into());
    let run = |p: &str| passes.split(',').any(|x| x.trim() == p);

    // ---- single events: one exchange, the daemon's queue plus a raw baseline queue
    let single = names.topology("single");
    bus.declare(&single).await.expect("declare");
    let raw_queue = format!("{}-single.raw", names.prefix);
    declare_raw_queue(&bus, &raw_queue, &single.exchange).await;
    // A pass not run stays at zero events, and its rate reads NaN.
    let (mut raw, mut single_used, mut batch_used) = Default::default();
    if run("single") {
        let t = Instant::now();
        publish(&bus, &single.exchange, &lines, 1, None).await;
        let publish_rate = lines.len() as f64 / t.elapsed().as_secs_f64();
        println!(
            "published {} single-event messages at {:.0} msg/s (publisher confirms)",
            lines.len(),
            publish_rate
        );
        raw = raw_consume(&bus, &raw_queue, lines.len()).await;
        (single_used, _) =
            run_daemon(&format!("{db_url}_single"), &single, "single", &lines, None).await;
    }
    // Each pass's database goes when the pass is done: a million journaled events
    // must not weigh on the next pass (its pages in the shared buffers, and autovacuum
    // working through it where autovacuum is on; it is off on the reference machine).
    drop_database(&mut admin, &format!("{db_name}_single")).await;

    // ---- NDJSON batches of 100
    let batched = names.topology("batch");
    bus.declare(&batched).await.expect("declare");
    if run("batch") {
        let t = Instant::now();
        publish(&bus, &batched.exchange, &lines, 100, None).await;
        println!(
            "published {} events as NDJSON batches of 100 in {:.1} s",
            lines.len(),
            t.elapsed().as_secs_f64()
        );
        (batch_used, _) =
            run_daemon(&format!("{db_url}_batch"), &batched, "batch", &lines, None).await;
    }
    drop_database(&mut admin, &format!("{db_name}_batch")).await;

    // ---- latency at a steady 10,000 events/s
    let lat = names.topology("latency");
    bus.declare(&lat).await.expect("declare");
    let lat_cfg = SimConfig {
        seed: 7,
        events: 100_000,
        players: 2_000,
        inject: vec![(Invariant::TxUnbalanced, 300)],
        noise: sim::Noise {
            redelivery_per_mille: 0,
            reorder: false,
            ..sim::Noise::default()
        },
        ..SimConfig::default()
    };
    let mut lat_lines = Vec::new();
    let lat_key = sim::generate(&lat_cfg, &mut |l: &[u8]| lat_lines.push(l.to_vec()));
    let faulty: std::collections::HashSet<String> = lat_key
        .faults
        .iter()
        .filter_map(|f| f.tx_id.clone())
        .collect();
    let relay = if run("latency") {
        relay_latency(
            &format!("{}-relay", names.prefix),
            &lat_lines,
            10_000,
            faulty.clone(),
        )
        .await
    } else {
        Vec::new()
    };
    let latencies = if !run("latency") {
        None
    } else {
        run_daemon(
            &format!("{db_url}_latency"),
            &lat,
            "latency",
            &lat_lines,
            Some((10_000, faulty)),
        )
        .await
        .1
    };
    // What any design would cost PostgreSQL here (see `pg_floor`).
    let floor = if run("floor") {
        Some(pg_floor(&format!("{db_url}_floor"), &lines).await)
    } else {
        None
    };
    drop_database(&mut admin, &format!("{db_name}_floor")).await;

    let (raw_rate, daemon_rate, batch_rate) = (raw.rate(), single_used.rate(), batch_used.rate());
    println!("\n{:<58} {:>12} {:>9}", "pass", "events/s", "ratio");
    println!(
        "{:<58} {:>12.0} {:>9}",
        "raw lapin consume + ack, 1 event/message (baseline)", raw_rate, "1.00x"
    );
    println!(
        "{:<58} {:>12.0} {:>8.2}x   target >= 0.80x",
        "daemon end to end, 1 event/message",
        daemon_rate,
        daemon_rate / raw_rate
    );
    println!(
        "{:<58} {:>12.0} {:>8.2}x   target >= 200,000/s",
        "daemon end to end, NDJSON 100 events/message",
        batch_rate,
        batch_rate / raw_rate
    );
    print_ceilings(floor, raw, [single_used, batch_used]);
    if let Some((l, own)) = latencies.filter(|(l, _)| !l.is_empty()) {
        let (relay, daemon) = (Quantiles::of(relay), Quantiles::of(l));
        println!(
            "\ndetection latency at 10,000 events/s (NDJSON, 10 events/message), publish -> arrival on a listener:"
        );
        println!(
            "  bare relay (consume, republish; baseline) ({} findings): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            relay.n, relay.p50, relay.p99, relay.max
        );
        println!(
            "  daemon ({} findings): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; p99 {:.2}x the relay's, +{:.2} ms",
            daemon.n,
            daemon.p50,
            daemon.p99,
            daemon.max,
            daemon.p99 / relay.p99,
            daemon.p99 - relay.p99
        );
        println!("  daemon, its own receipt -> publish histogram {own}   target p99 < 10 ms");
    }

    // ---- clean up
    for t in [&single, &batched, &lat] {
        delete_topology(
            &bus,
            &[&t.queue, &t.dead_letter_queue],
            &[&t.exchange, &t.dead_letter_exchange, &t.findings_exchange],
        )
        .await;
    }
    delete_topology(&bus, &[&raw_queue], &[]).await;
    bus.close().await;
    drop_database(&mut admin, &format!("{db_name}_latency")).await;
}

/// What these cores allow at all: the CPU the targets need, from the floors measured
/// in this run, against the cores there are.
fn print_ceilings(floor: Option<Floor>, raw: Used, [single, batch]: [Used; 2]) {
    let cores = cpu::cores();
    println!("\nwhere the CPU goes (µs per event, from /proc, while each pass ran):");
    for (name, used) in [
        ("raw consume + ack", raw),
        ("daemon, 1 event/message", single),
        ("daemon, NDJSON 100/message", batch),
    ] {
        if used.ran() {
            println!("  {name:<28} {}", used.line("event"));
        }
    }
    let Some(f) = floor else {
        return;
    };
    println!(
        "\nPostgreSQL floors (server-side, CPU per event; {:.1} item moves + postings per event):",
        f.keys_per_event
    );
    println!(
        "  ordered: a row per event + a (key, position) B-tree entry per key   {:>6.1} µs",
        f.ordered_us
    );
    println!(
        "  chunked: a row per 100 events, keys in a GIN-indexed array          {:>6.1} µs   (a key's events only by decoding whole chunks)",
        f.chunked_us
    );
    let verdict = |need: f64| {
        if need > cores {
            ": more than this host has"
        } else {
            ""
        }
    };
    println!(
        "what the targets need at least, with the ordered floor (trace reads a key's events in order):"
    );
    if raw.ran() {
        // At 0.8x the raw rate the broker and a bare consumer do at least what they did
        // per message in the raw pass, and PostgreSQL at least the floor.
        let rate = 0.8 * raw.rate();
        let consume = raw.cpu.per_unit(raw.units);
        let need = rate * (consume + f.ordered_us) / 1e6;
        println!(
            "  single events at 0.80x raw = {rate:.0}/s: {need:.2} cores (consume + ack {consume:.1} µs + PostgreSQL {:.1} µs per event) of {cores}{}",
            f.ordered_us,
            verdict(need)
        );
    }
    let need = 200_000.0 * f.ordered_us / 1e6;
    println!(
        "  batches at 200,000 events/s: {need:.2} cores of PostgreSQL alone, of {cores}{}",
        verdict(need)
    );
    let need = 200_000.0 * f.chunked_us / 1e6;
    println!(
        "  (with the chunked floor instead: {need:.2} cores of PostgreSQL alone{})",
        verdict(need)
    );
    for (name, used) in [("single events", single), ("batches", batch)] {
        if used.ran() {
            println!(
                "  this build, {name}: PostgreSQL {:.1} µs per event = {:.1}x the ordered floor",
                used.postgres_us(),
                used.postgres_us() / f.ordered_us
            );
        }
    }
}

async fn drop_database(admin: &mut PgConnection, name: &str) {
    let _ = admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await;
}

async fn declare_raw_queue(bus: &Amqp, queue: &str, exchange: &str) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    bus.channel()
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("raw queue");
    bind_all(bus.channel(), queue, exchange).await;
}

/// Binds `queue` to every routing key of `exchange`.
async fn bind_all(chan: &lapin::Channel, queue: &str, exchange: &str) {
    chan.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
}

/// Publishes `lines`; with `rate`, records the publish instant of each tx in `faulty`.
async fn publish(bus: &Amqp, exchange: &str, lines: &[Vec<u8>], batch: usize, rate: Option<u64>) {
    let (tx, rx) = tokio::sync::mpsc::channel(8192);
    let owned: Vec<Vec<u8>> = lines.to_vec();
    let feeder = tokio::spawn(async move {
        for l in owned {
            if tx.send(l).await.is_err() {
                break;
            }
        }
    });
    let opts = PublishOptions {
        exchange: exchange.to_string(),
        rate,
        batch,
        confirms_in_flight_max: 2048,
    };
    amqp::publish_stream(bus, &opts, rx).await.expect("publish");
    feeder.await.expect("feeder");
}

/// A bare consumer: consume with prefetch 2000, ack every 100 deliveries (multiple).
/// Returns what the pass used.
async fn raw_consume(bus: &Amqp, queue: &str, expect: usize) -> Used {
    let chan = bus.channel();
    chan.basic_qos(2000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = chan
        .basic_consume(
            queue.into(),
            "raw-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let t = Instant::now();
    let cpu0 = Cpu::now();
    let mut got = 0usize;
    while got < expect {
        let d = consumer.next().await.expect("stream").expect("delivery");
        got += 1;
        if got.is_multiple_of(100) || got == expect {
            chan.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
    }
    let used = Used {
        cpu: Cpu::now().since(&cpu0),
        wall: t.elapsed().as_secs_f64(),
        units: got as f64,
    };
    let _ = chan
        .basic_cancel(
            "raw-bench".into(),
            lapin::options::BasicCancelOptions::default(),
        )
        .await;
    used
}

/// Runs the daemon in-process on `t` until it has journaled every input of `lines`.
/// With `steady`, the lines are published at that rate while the daemon runs, and the
/// publish → finding-received latency of each faulty tx is returned.
async fn run_daemon(
    db_url: &str,
    t: &Topology,
    group: &str,
    lines: &[Vec<u8>],
    steady: Option<(u64, std::collections::HashSet<String>)>,
) -> (Used, Option<(Vec<Duration>, String)>) {
    let (_, _, journaled) = offline(lines);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[daemon]\ngroup = \"{group}\"\n[database]\nurl = \"{db_url}\"\n[amqp]\nurl = \"{AMQP_URL}\"\nexchange = \"{}\"\nqueue = \"{}\"\ndead_letter_exchange = \"{}\"\ndead_letter_queue = \"{}\"\nfindings_exchange = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        t.exchange, t.queue, t.dead_letter_exchange, t.dead_letter_queue, t.findings_exchange
    );
    let config = Config::parse(&text, "bench", |_| None).expect("config");
    let pg = assayer::adapters::postgres::Pg::connect(
        &assayer::adapters::postgres::ConnectOptions {
            url: db_url,
            pool_size_max: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        },
        group,
    )
    .await
    .expect("pg");
    pg.migrate().await.expect("migrate");

    // A findings listener for the latency pass.
    let (listener, mut findings) = listen(
        &t.findings_exchange,
        &format!("{}.findings-listener", t.queue),
    )
    .await;

    let token = CancellationToken::new();
    let daemon = tokio::spawn(assayer::daemon::run(config, token.clone()));
    let mut latencies = None;
    let t0 = Instant::now();
    let cpu_t0 = Cpu::now();
    if let Some((rate, faulty)) = steady {
        // Wait for the daemon to be consuming, then publish at the steady rate.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (publisher, sent) = steady_publish(&t.exchange, lines, rate, faulty);
        let got = collect(&mut findings, &sent, &publisher, async |_| {
            pg.head().await.unwrap_or(0) >= journaled
        })
        .await;
        publisher.await.expect("publisher");
        latencies = Some((got, own_latency_quantiles(port).await));
    }
    // Throughput is timed from the first journaled batch (connect, migrate and restore
    // are start-up, not throughput).
    let mut first: Option<(Instant, i64, Cpu)> = None;
    loop {
        let h = pg.head().await.unwrap_or(0);
        if first.is_none() && h > 0 {
            first = Some((Instant::now(), h, Cpu::now()));
        }
        if h >= journaled {
            break;
        }
        if t0.elapsed() > Duration::from_secs(900) {
            panic!(
                "daemon did not finish in 15 minutes (head {} of {journaled})",
                pg.head().await.unwrap_or(0)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let used = match first {
        Some((at, h0, cpu0)) if journaled > h0 => Used {
            cpu: Cpu::now().since(&cpu0),
            wall: at.elapsed().as_secs_f64(),
            units: (journaled - h0) as f64,
        },
        _ => Used {
            cpu: Cpu::now().since(&cpu_t0),
            wall: t0.elapsed().as_secs_f64(),
            units: lines.len() as f64,
        },
    };
    token.cancel();
    let _ = daemon.await;
    listener.close().await;
    (used, latencies)
}

/// What a timed pass used: CPU, wall-clock seconds, and the events (or messages) it
/// handled.
#[derive(Clone, Copy, Default)]
struct Used {
    cpu: Cpu,
    wall: f64,
    units: f64,
}

impl Used {
    /// Whether the pass ran (it handled something).
    fn ran(&self) -> bool {
        self.units > 0.0
    }

    /// Events (or messages) per second; NaN for a pass that did not run.
    fn rate(&self) -> f64 {
        self.units / self.wall
    }

    fn line(&self, unit: &str) -> String {
        self.cpu.per(self.units, unit, self.wall)
    }

    /// PostgreSQL CPU per unit, in µs.
    fn postgres_us(&self) -> f64 {
        self.cpu.postgres * 1e6 / self.units
    }
}

/// PostgreSQL's CPU per event for two bare journals of every event with an index by
/// item and by account, measured here on `db_url` (server-side `INSERT … SELECT`, minus
/// the cost of merely generating the same rows: no client, no network, no tx_id index,
/// no rollups):
///
/// * `ordered`: one row per event holding a body as long as the stream's lines, and
///   one narrow `(key, position)` B-tree entry per item move and posting — the least a
///   journal costs that hands `trace` a key's events in order, as #6's trace targets
///   need;
/// * `chunked`: one row per 100 events with the keys in an array under a GIN index —
///   cheaper to write, but a key's events are then found only by decoding whole chunks.
struct Floor {
    keys_per_event: f64,
    ordered_us: f64,
    chunked_us: f64,
}

async fn pg_floor(db_url: &str, lines: &[Vec<u8>]) -> Floor {
    const CHUNK: usize = 100;
    let sample = &lines[..lines.len().min(200_000)];
    let n = sample.len() as f64;
    let mut keys = 0usize;
    let mut bytes = 0usize;
    for l in sample {
        bytes += l.len();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(l) {
            for field in ["postings", "items"] {
                keys += v[field].as_array().map_or(0, Vec::len);
            }
        }
    }
    let (keys_per_event, body) = (keys as f64 / n, (bytes as f64 / n).round() as usize);
    let mut c = PgConnection::connect(db_url).await.expect("floor db");
    c.execute(
        "CREATE TABLE floor_journal (group_name TEXT NOT NULL, position BIGINT NOT NULL,
                                     body BYTEA NOT NULL, PRIMARY KEY (group_name, position));
         CREATE TABLE floor_keys (group_name TEXT NOT NULL, key BIGINT NOT NULL,
                                  position BIGINT NOT NULL);
         CREATE INDEX ON floor_keys (group_name, key, position);
         CREATE TABLE floor_chunks (group_name TEXT NOT NULL, first BIGINT NOT NULL,
                                    body BYTEA NOT NULL, keys BIGINT[] NOT NULL,
                                    PRIMARY KEY (group_name, first));
         CREATE INDEX floor_chunks_keys ON floor_chunks USING gin (keys);",
    )
    .await
    .expect("floor tables");
    let journal = format!(
        "SELECT 'g', i, convert_to(rpad(md5(i::text), {body}, md5((-i)::text)), 'UTF8') \
         FROM generate_series(1, {n}) i"
    );
    let index = format!(
        "SELECT 'g', (random() * 1e12)::bigint, (i / {keys_per_event})::bigint \
         FROM generate_series(1, {}) i",
        (n * keys_per_event).round()
    );
    // `+ 0 * c` ties the key array to its chunk (else it is computed once).
    let chunks = format!(
        "SELECT 'g', c, convert_to(rpad(md5(c::text), {}, md5((-c)::text)), 'UTF8'), \
                ARRAY(SELECT (random() * 1e12)::bigint + 0 * c \
                        FROM generate_series(1, {})) \
         FROM generate_series(1, {}) c",
        body * CHUNK,
        (keys_per_event * CHUNK as f64).round(),
        (n / CHUNK as f64).round()
    );
    let us = |cpu: f64| cpu * 1e6 / n;
    let mut cost = [0.0; 3];
    for (i, (generate, table)) in [
        (&journal, "floor_journal"),
        (&index, "floor_keys"),
        (&chunks, "floor_chunks"),
    ]
    .into_iter()
    .enumerate()
    {
        let cpu0 = Cpu::now();
        c.execute(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM ({generate}) s"
        )))
        .await
        .expect("floor generate");
        let cpu1 = Cpu::now();
        c.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} {generate}"
        )))
        .await
        .expect("floor insert");
        if table == "floor_chunks" {
            // GIN defers entries to a pending list: count merging it in too.
            c.execute("SELECT gin_clean_pending_list('floor_chunks_keys')")
                .await
                .expect("floor gin merge");
        }
        let cpu2 = Cpu::now();
        cost[i] = us(cpu2.since(&cpu1).postgres - cpu1.since(&cpu0).postgres);
    }
    let _ = c.close().await;
    Floor {
        keys_per_event,
        ordered_us: cost[0] + cost[1],
        chunked_us: cost[2],
    }
}

/// Entries the daemon will journal for `lines` (accepted + malformed).
fn offline(lines: &[Vec<u8>]) -> (assayer::core::engine::Engine, (), i64) {
    use assayer::core::engine::{Engine, Outcome};
    let mut engine = Engine::new(assayer::core::policy::Policy::builtin());
    let mut out = Vec::new();
    let mut n = 0;
    for l in lines {
        if matches!(
            engine.ingest(l, assayer::core::time::Timestamp(0), &mut out),
            Outcome::Accepted | Outcome::Malformed
        ) {
            n += 1;
        }
        out.clear();
    }
    (engine, (), n)
}

/// The daemon's own receipt -> publish latency, from its `detection_latency_seconds`
/// histogram on /metrics: the smallest bucket bound holding 50 % and 99 % of the
/// findings (an upper bound of each quantile, as exact as the buckets).
async fn own_latency_quantiles(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
    })
    .await
    .expect("metrics request")
    .expect("GET /metrics");
    // (upper bound in seconds, cumulative count)
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.contains("detection_latency_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let Some(&(_, total)) = buckets.last() else {
        return "no detection_latency_seconds histogram on /metrics".into();
    };
    let bound = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::INFINITY, |(le, _)| le * 1e3)
    };
    format!(
        "({total} findings): p50 <= {:.1} ms, p99 <= {:.1} ms",
        bound(0.50),
        bound(0.99)
    )
}

type Sent = std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>>;

/// A listener on `exchange` (every routing key): an exclusive queue, consumed without
/// acks. Returns its connection (close it when done) and its deliveries.
async fn listen(exchange: &str, queue: &str) -> (Amqp, lapin::Consumer) {
    let listener = Amqp::connect(AMQP_URL, "assayer bench findings", Duration::from_secs(10))
        .await
        .expect("amqp");
    let chan = listener.channel();
    chan.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("listener queue");
    declare_topic_exchange(chan, exchange).await;
    bind_all(chan, queue, exchange).await;
    let deliveries = chan
        .basic_consume(
            queue.into(),
            "lat".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume findings");
    (listener, deliveries)
}

/// Header naming the faulty transactions a steady-rate message carries (the relay
/// baseline forwards them without parsing the events; the daemon ignores it).
const FAULTY_HEADER: &str = "x-bench-faulty";

/// Publishes `lines` to `exchange` at `rate` events/s as NDJSON messages of
/// [`STEADY_BATCH`] events, recording when each faulty transaction was sent.
fn steady_publish(
    exchange: &str,
    lines: &[Vec<u8>],
    rate: u64,
    faulty: std::collections::HashSet<String>,
) -> (tokio::task::JoinHandle<()>, Sent) {
    let sent = Sent::default();
    let exchange = exchange.to_string();
    let owned: Vec<Vec<u8>> = lines.to_vec();
    let sent2 = sent.clone();
    // Producers at this rate batch (events-v1 allows NDJSON messages): 10 events per
    // message, 1,000 messages/s. One event per message at 10,000/s saturates this
    // 2-core box's broker (quorum queue + confirms) before the daemon.
    let publisher = tokio::spawn(async move {
        let bus = Amqp::connect(AMQP_URL, "assayer bench steady", Duration::from_secs(10))
            .await
            .expect("amqp");
        let start = Instant::now();
        for (i, batch) in owned.chunks(STEADY_BATCH).enumerate() {
            let due = start + Duration::from_secs_f64((i * STEADY_BATCH) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let (realm, _) = amqp::routing_key(&batch[0]);
            let mut body = Vec::new();
            let mut faulty_here = Vec::new();
            for l in batch {
                body.extend_from_slice(l);
                body.push(b'\n');
                let txid = serde_json::from_slice::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["tx_id"].as_str().map(str::to_string));
                if let Some(tx) = txid.filter(|t| faulty.contains(t)) {
                    faulty_here.push(tx);
                }
            }
            let mut headers = FieldTable::default();
            if !faulty_here.is_empty() {
                headers.insert(
                    FAULTY_HEADER.into(),
                    AMQPValue::LongString(faulty_here.join(",").into()),
                );
            }
            let now = Instant::now();
            for tx in faulty_here {
                sent2.lock().unwrap().insert(tx, now);
            }
            bus.publisher()
                .basic_publish(
                    exchange.as_str().into(),
                    format!("{realm}.batch").as_str().into(),
                    Default::default(),
                    &body,
                    lapin::BasicProperties::default()
                        .with_content_type(amqp::CONTENT_NDJSON.into())
                        .with_headers(headers),
                )
                .await
                .expect("publish");
        }
        bus.close().await;
    });
    (publisher, sent)
}

/// The publish -> arrival latency of every `tx.unbalanced` finding on `findings`, until
/// the publisher finished and `done` says everything was processed.
async fn collect(
    findings: &mut lapin::Consumer,
    sent: &Sent,
    publisher: &tokio::task::JoinHandle<()>,
    done: impl AsyncFn(usize) -> bool,
) -> Vec<Duration> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), findings.next()).await {
            Ok(Some(Ok(d))) => {
                let arrived = Instant::now();
                let f: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
                if f["invariant"] == "tx.unbalanced"
                    && let Some(at) = f["tx_id"]
                        .as_str()
                        .and_then(|tx| sent.lock().unwrap().get(tx).copied())
                {
                    got.push(arrived - at);
                }
            }
            _ => {
                if publisher.is_finished() && done(got.len()).await {
                    break;
                }
            }
        }
    }
    got
}

/// The latency baseline: the same steady stream through the same kind of queue, to a
/// bare relay that republishes each faulty transaction's id to a findings-like exchange
/// as soon as it takes the message (no decoding, no audit, no database), measured by the
/// same listener. What is left above it is the daemon's.
async fn relay_latency(
    prefix: &str,
    lines: &[Vec<u8>],
    rate: u64,
    faulty: std::collections::HashSet<String>,
) -> Vec<Duration> {
    let (exchange, queue, out) = (
        format!("{prefix}.events"),
        format!("{prefix}.relay"),
        format!("{prefix}.relayed"),
    );
    let bus = Amqp::connect(AMQP_URL, "assayer bench relay", Duration::from_secs(10))
        .await
        .expect("amqp");
    declare_topic_exchange(bus.channel(), &exchange).await;
    declare_raw_queue(&bus, &queue, &exchange).await;
    let (listener, mut relayed) = listen(&out, &format!("{prefix}.relayed-listener")).await;
    let chan = bus.channel().clone();
    chan.basic_qos(2000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = chan
        .basic_consume(
            queue.as_str().into(),
            "relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let want = faulty.len();
    let publish = bus.publisher().clone();
    let out2 = out.clone();
    let relay = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let txs = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(FAULTY_HEADER).cloned());
            if let Some(AMQPValue::LongString(txs)) = txs {
                for tx in txs.to_string().split(',') {
                    let body = serde_json::json!({"invariant": "tx.unbalanced", "tx_id": tx});
                    // Like the daemon's findings: confirm mode, not awaited here.
                    let _confirm = publish
                        .basic_publish(
                            out2.as_str().into(),
                            "critical.tx.unbalanced".into(),
                            Default::default(),
                            body.to_string().as_bytes(),
                            lapin::BasicProperties::default(),
                        )
                        .await
                        .expect("relay publish");
                }
            }
            chan.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .expect("ack");
        }
    });
    let (publisher, sent) = steady_publish(&exchange, lines, rate, faulty);
    let got = collect(&mut relayed, &sent, &publisher, async |n| n >= want).await;
    relay.abort();
    listener.close().await;
    delete_topology(&bus, &[&queue], &[&exchange, &out]).await;
    bus.close().await;
    got
}

/// Deletes the bench's queues and exchanges (what is already gone is no error).
async fn delete_topology(bus: &Amqp, queues: &[&String], exchanges: &[&String]) {
    for q in queues {
        let _ = bus
            .channel()
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in exchanges {
        let _ = bus
            .channel()
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// p50, p99 and max of a set of latencies, in milliseconds.
struct Quantiles {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of(mut l: Vec<Duration>) -> Quantiles {
        l.sort();
        let pct = |p: f64| match l.len() {
            0 => f64::NAN,
            n => l[((n as f64 * p).ceil() as usize).clamp(1, n) - 1].as_secs_f64() * 1e3,
        };
        Quantiles {
            n: l.len(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: pct(1.0),
        }
    }
}

/// A durable topic exchange (as the daemon declares its own).
async fn declare_topic_exchange(chan: &lapin::Channel, name: &str) {
    chan.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}
