//! `assayer sim`: the deterministic 12-system reference world as NDJSON.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::sim::{self, FaultClass, SimConfig};

/// Generate the reference world's event stream (and an answer key of injected faults).
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Seed: the same seed and flags always give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Transactions to generate (redeliveries and injected extras come on top).
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Players per realm.
    #[arg(long, default_value_t = 200)]
    pub players: usize,
    /// Number of realms (`realm-1`, `realm-2`, ...).
    #[arg(long, default_value_t = 1)]
    pub realms: usize,
    /// Inject faults: CLASS=N, repeatable (e.g. `--inject item.duplicated=3`).
    /// CLASS is any stream-level invariant id, or a duplication pattern
    /// (`dup.mail_double_receive`, `dup.auction_cancel_buy`).
    #[arg(long, value_name = "CLASS=N", value_parser = sim::parse_fault)]
    pub inject: Vec<(FaultClass, usize)>,
    /// Redeliveries per thousand events (benign noise).
    #[arg(long, default_value_t = 10)]
    pub redelivery_per_mille: u32,
    /// Deliver strictly in commit order (no benign reordering).
    #[arg(long)]
    pub no_reorder: bool,
    /// Write events here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the answer key (which tx/subject each injected fault is) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub answer_key: Option<PathBuf>,
    /// Publish to RabbitMQ at this URL (e.g. amqp://guest:guest@127.0.0.1:5672/%2f)
    /// instead of writing NDJSON, with publisher confirms.
    #[arg(
        long,
        value_name = "AMQP_URL",
        env = "ASSAYER_AMQP_URL",
        hide_env_values = true
    )]
    pub publish: Option<String>,
    /// Exchange to publish to (a durable topic exchange; declared if missing).
    #[arg(long, default_value = "assayer.events", requires = "publish")]
    pub exchange: String,
    /// Events per second when publishing [default: as fast as the broker confirms].
    #[arg(long, requires = "publish")]
    pub rate: Option<u64>,
    /// Events per NDJSON message when publishing (1 = one JSON event per message).
    #[arg(long, default_value_t = 1, requires = "publish")]
    pub batch: usize,
    /// The reference world's stores (boxed: rarely used, keeps the command enum small).
    #[command(flatten)]
    pub stores: Box<StoreArgs>,
}

/// `assayer sim` flags for materializing the systems' stores (issue #4).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Materialize the systems' stores (tables `wallets`, `inventory_items`, ...; see
    /// docs/reconciliation.md) in this PostgreSQL database, replacing those tables. When
    /// publishing they are kept in step with the stream; otherwise written at the end.
    #[arg(long, value_name = "POSTGRES_URL")]
    pub stores_pg: Option<String>,
    /// Also keep the Redis wallet cache (`<prefix><realm>:<account>` hashes) here.
    #[arg(long, value_name = "REDIS_URL", requires = "stores_pg")]
    pub stores_redis: Option<String>,
    #[arg(long, default_value = "sim:wallet:", requires = "stores_redis")]
    pub stores_redis_prefix: String,
    /// Plant drift in the stores: CLASS=N, repeatable; CLASS is value_changed,
    /// row_deleted, row_inserted or redis_stale.
    #[arg(long, value_name = "CLASS=N", value_parser = sim::stores::parse_drift, requires = "stores_pg")]
    pub inject_drift: Vec<(sim::stores::Drift, usize)>,
    /// Write the planted drift (the findings `assayer reconcile` must raise) as JSON here.
    #[arg(long, value_name = "FILE", requires = "stores_pg")]
    pub drift_key: Option<PathBuf>,
}

impl SimArgs {
    pub fn config(&self) -> SimConfig {
        let mut cfg = SimConfig {
            seed: self.seed,
            events: self.events,
            players: self.players,
            realms: self.realms,
            inject: self
                .inject
                .iter()
                .filter_map(|&(c, n)| match c {
                    FaultClass::Invariant(i) => Some((i, n)),
                    FaultClass::Duplication(_) => None,
                })
                .collect(),
            duplications: self
                .inject
                .iter()
                .filter_map(|&(c, n)| match c {
                    FaultClass::Duplication(d) => Some((d, n)),
                    FaultClass::Invariant(_) => None,
                })
                .collect(),
            ..SimConfig::default()
        };
        cfg.noise.redelivery_per_mille = self.redelivery_per_mille;
        cfg.noise.reorder = !self.no_reorder;
        cfg
    }
}

pub fn run(args: SimArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.players == 0 || args.realms == 0 {
        anyhow::bail!("--players and --realms must be at least 1");
    }
    let mut cfg = args.config();
    if let Some(url) = &args.publish {
        // A live stream: commit times start now, so the daemon's lag and readiness
        // read as they would in production (files keep the fixed, reproducible start).
        cfg.start = crate::core::time::Timestamp::now();
        return publish(&args, cfg, url);
    }
    let out: Box<dyn Write> = match &args.out {
        Some(p) => {
            Box::new(File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut err: Option<io::Error> = None;
    let mut stores = args
        .stores
        .stores_pg
        .as_ref()
        .map(|_| sim::stores::StoreWorld::new());
    let key = sim::generate(&cfg, &mut |line: &[u8]| {
        if let Some(s) = stores.as_mut() {
            s.apply_line(line);
        }
        if err.is_none()
            && let Err(e) = out.write_all(line).and_then(|_| out.write_all(b"\n"))
        {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e).context("writing events");
    }
    out.flush().context("writing events")?;
    if let Some(world) = &stores {
        materialize(&args, world, Written::No)?;
    }
    if let Some(p) = &args.answer_key {
        let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &key).context("writing answer key")?;
    }
    eprintln!(
        "sim: {} transactions, {} lines ({} redeliveries), {} injected faults (seed {})",
        key.transactions,
        key.lines,
        key.redeliveries,
        key.faults.len(),
        key.seed
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Whether the stores were kept in step already (publishing) or are written now.
#[derive(Clone, Copy)]
enum Written {
    No,
    Already,
}

/// Writes the stores (all rows, after `changes` were streamed or not) with the
/// requested drift, and the drift key.
fn materialize(
    args: &SimArgs,
    world: &sim::stores::StoreWorld,
    written: Written,
) -> anyhow::Result<()> {
    use crate::adapters::sim_stores::SimStores;
    let Some(pg) = &args.stores.stores_pg else {
        return Ok(());
    };
    let clean = world.tables();
    let mut tables = clean.clone();
    let planted = sim::stores::inject_drift(&mut tables, &args.stores.inject_drift, args.seed);
    super::daemon::runtime()?.block_on(async {
        let s = SimStores::connect(
            pg,
            args.stores.stores_redis.as_deref(),
            &args.stores.stores_redis_prefix,
        )
        .await
        .with_context(|| format!("cannot connect to {}", crate::daemon::config::mask_url(pg)))?;
        match written {
            Written::No => {
                s.reset().await.context("creating the store tables")?;
                s.write_all(&tables).await.context("writing the stores")?;
            }
            Written::Already => {
                let drift = sim::stores::diff_tables(&clean, &tables);
                s.apply_with(&drift.0, crate::adapters::sim_stores::Mirror::TablesOnly)
                    .await
                    .context("planting drift")?;
                s.apply_cache(&drift.1)
                    .await
                    .context("planting drift in the cache")?;
            }
        }
        anyhow::Ok(())
    })?;
    if let Some(p) = &args.stores.drift_key {
        let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &planted).context("writing drift key")?;
    }
    let rows: usize = tables.rows.values().map(|t| t.len()).sum();
    eprintln!(
        "sim: stores materialized: {} rows in {} tables, {} cache entries, {} drifts planted",
        rows,
        tables.rows.len(),
        tables.cache.len(),
        planted.len()
    );
    Ok(())
}

/// How far past the newest event the closing heartbeats are: well past the default 5 s
/// reorder window, so every real event becomes due, and well inside the shortest escrow
/// limit (10 min), so trades still in flight at the end are not called stuck.
const CLOSING_HEARTBEAT_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

fn publish(args: &SimArgs, cfg: SimConfig, url: &str) -> anyhow::Result<std::process::ExitCode> {
    use crate::adapters::amqp::{self, Amqp, PublishOptions};
    if args.batch == 0 || args.batch > crate::daemon::MAX_EVENTS_PER_MESSAGE {
        anyhow::bail!(
            "--batch must be between 1 and {} (events-v1)",
            crate::daemon::MAX_EVENTS_PER_MESSAGE
        );
    }
    let opts = PublishOptions {
        exchange: args.exchange.clone(),
        rate: args.rate,
        batch: args.batch,
        confirms_in_flight_max: 1024,
    };
    let answer_key = args.answer_key.clone();
    let started = std::time::Instant::now();
    let stores_pg = args.stores.stores_pg.clone();
    let stores_redis = args.stores.stores_redis.clone();
    let stores_prefix = args.stores.stores_redis_prefix.clone();
    let (stats, key, world) = super::daemon::runtime()?.block_on(async move {
        // The stores, kept in step: the generator hands row changes to this writer as
        // it emits the events that cause them (bounded channel).
        let (ctx, mut crx) = tokio::sync::mpsc::channel::<Vec<sim::stores::Change>>(64);
        let writer = match &stores_pg {
            Some(pg) => {
                let s = crate::adapters::sim_stores::SimStores::connect(
                    pg,
                    stores_redis.as_deref(),
                    &stores_prefix,
                )
                .await
                .with_context(|| {
                    format!("cannot connect to {}", crate::daemon::config::mask_url(pg))
                })?;
                s.reset().await.context("creating the store tables")?;
                Some(tokio::spawn(async move {
                    while let Some(batch) = crx.recv().await {
                        s.apply(&batch).await?;
                    }
                    anyhow::Ok(())
                }))
            }
            None => None,
        };
        let keep_stores = writer.is_some();
        let bus = Amqp::connect(url, "assayer sim", std::time::Duration::from_secs(10))
            .await
            .with_context(|| {
                format!("cannot connect to {}", crate::daemon::config::mask_url(url))
            })?;
        amqp::declare_exchange(&bus, &opts.exchange).await?;
        // Bounded hand-off from the (synchronous) generator to the publisher.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8_192);
        let generator = tokio::task::spawn_blocking(move || {
            let mut tails = sim::StreamTails::default();
            let mut world = sim::stores::StoreWorld::new();
            let mut pending = Vec::new();
            let key = sim::generate(&cfg, &mut |line: &[u8]| {
                tails.observe(line);
                if keep_stores {
                    pending.extend(world.apply_line(line));
                    if pending.len() >= 256 {
                        let _ = ctx.blocking_send(std::mem::take(&mut pending));
                    }
                }
                let _ = tx.blocking_send(line.to_vec());
            });
            if !pending.is_empty() {
                let _ = ctx.blocking_send(pending);
            }
            drop(ctx);
            // Close every stream past the reorder window, as live systems' heartbeats
            // would, so the auditor applies the world's last seconds too.
            for hb in tails.heartbeats(CLOSING_HEARTBEAT_AFTER) {
                let _ = tx.blocking_send(hb);
            }
            (key, world)
        });
        let stats = amqp::publish_stream(&bus, &opts, rx).await?;
        let (key, world) = generator.await.context("the generator panicked")?;
        bus.close().await;
        if let Some(w) = writer {
            w.await.context("the store writer panicked")??;
        }
        anyhow::Ok((stats, key, world))
    })?;
    if args.stores.stores_pg.is_some() {
        materialize(args, &world, Written::Already)?;
    }
    if let Some(p) = &answer_key {
        let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &key).context("writing answer key")?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sim: published {} events in {} messages to exchange `{}` in {:.1} s ({:.0} events/s); {} injected faults",
        stats.events,
        stats.messages,
        args.exchange,
        secs,
        stats.events as f64 / secs.max(1e-9),
        key.faults.len()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
