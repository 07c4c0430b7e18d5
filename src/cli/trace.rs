//! `assayer trace item|account`: provenance from the daemon's journal in PostgreSQL, for
//! support tickets ("my sword vanished", "he sells the same legendary twice a day").

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use crate::adapters::journal::{self, AccountQuery, ItemReport, Journal, item_report};
use crate::core::provenance::fmt_ts_us as ts;
use crate::core::provenance::{self, AccountTrace};
use crate::daemon::config::Config;

/// Support tools connect with a small pool and a short statement timeout: a trace is a
/// handful of indexed queries (benches/trace.rs: < 100 ms at 10 M journal rows).
const POOL_SIZE_MAX: u32 = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The daemon's default group (= its default queue).
const DEFAULT_GROUP: &str = "assayer.audit";

/// Where the daemon's database is: `--database-url` (or ASSAYER_DATABASE_URL), or the
/// daemon's `--config`; `--group` defaults to the config's group.
#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// PostgreSQL URL [env: ASSAYER_DATABASE_URL]; overrides the config's.
    #[arg(
        long,
        env = "ASSAYER_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
    /// The daemon's TOML config (its database URL and group).
    #[arg(long, short, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The daemon group whose journal to read [default: the config's, else assayer.audit].
    #[arg(long, global = true)]
    pub group: Option<String>,
}

impl DbArgs {
    /// (url, group).
    pub fn resolve(&self) -> anyhow::Result<(String, String)> {
        let config = match &self.config {
            Some(p) => Some(Config::load(p)?),
            None => None,
        };
        let url = match (&self.database_url, &config) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => c.database.url.clone(),
            (None, None) => anyhow::bail!(
                "say where the database is: --database-url URL (or ASSAYER_DATABASE_URL), or --config FILE"
            ),
        };
        let group = match (&self.group, &config) {
            (Some(g), _) => g.clone(),
            (None, Some(c)) => c.daemon.group.clone(),
            (None, None) => DEFAULT_GROUP.to_string(),
        };
        Ok((url, group))
    }

    pub async fn connect(&self) -> anyhow::Result<Journal> {
        let (url, group) = self.resolve()?;
        Journal::connect(
            &url,
            &group,
            POOL_SIZE_MAX,
            CONNECT_TIMEOUT,
            STATEMENT_TIMEOUT,
        )
        .await
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {}",
                crate::daemon::config::mask_url(&url)
            )
        })
    }
}

/// Trace an item's provenance or an account's balance history from the journal.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(subcommand)]
    pub what: TraceWhat,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum TraceWhat {
    /// Every move of an item, its fork point, every copy and the taint.
    Item(ItemArgs),
    /// Running balances per asset, below-zero crossings, largest inflows, counterparties.
    Account(AccountArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    Table,
    Json,
    /// Graphviz (items only): `assayer trace item X --format dot | dot -Tsvg`.
    Dot,
}

#[derive(Debug, Args)]
pub struct ItemArgs {
    pub item: String,
    /// Only this realm [default: every realm the item appears in].
    #[arg(long)]
    pub realm: Option<String>,
    #[arg(long, value_enum, default_value_t = TraceFormat::Table)]
    pub format: TraceFormat,
}

#[derive(Debug, Args)]
pub struct AccountArgs {
    pub account: String,
    /// Only this realm [default: every realm the account has postings in].
    #[arg(long)]
    pub realm: Option<String>,
    /// Only this asset (e.g. gold).
    #[arg(long)]
    pub asset: Option<String>,
    /// How many of the largest inflows to show.
    #[arg(long, default_value_t = journal::TOP_INFLOWS_DEFAULT)]
    pub top: i64,
    /// How many of the newest postings to list, with their running balance (at most
    /// 1,000,000; balances, crossings and counterparties always cover the whole
    /// history).
    #[arg(long, default_value_t = journal::HISTORY_ROWS_DEFAULT)]
    pub history_rows: i64,
    /// How many counterparties to list, largest volume first.
    #[arg(long, default_value_t = journal::COUNTERPARTIES_DEFAULT)]
    pub counterparties: i64,
    #[arg(long, value_enum, default_value_t = TraceFormat::Table)]
    pub format: TraceFormat,
}

pub fn run(args: TraceArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt = crate::cli::daemon::runtime()?;
    rt.block_on(async move {
        let j = args.db.connect().await?;
        let mut out = std::io::stdout().lock();
        match args.what {
            TraceWhat::Item(a) => {
                let r = item_report(&j, a.realm.as_deref(), &a.item).await?;
                if r.trace.steps.is_empty() {
                    anyhow::bail!(
                        "item `{}` is not in the journal of group `{}`{}",
                        a.item,
                        j.group(),
                        a.realm
                            .as_deref()
                            .map(|r| format!(" (realm {r})"))
                            .unwrap_or_default()
                    );
                }
                match a.format {
                    TraceFormat::Json => {
                        serde_json::to_writer_pretty(&mut out, &r)?;
                        writeln!(out)?;
                    }
                    TraceFormat::Dot => write!(out, "{}", provenance::to_dot(&r.trace))?,
                    TraceFormat::Table => write!(out, "{}", item_table(&r))?,
                }
            }
            TraceWhat::Account(a) => {
                let t = j
                    .account(&AccountQuery {
                        account: &a.account,
                        realm: a.realm.as_deref(),
                        asset: a.asset.as_deref(),
                        history: a.history_rows,
                        top: a.top,
                        counterparties: a.counterparties,
                    })
                    .await?;
                if t.postings == 0 {
                    anyhow::bail!(
                        "account `{}` has no postings in the journal of group `{}`",
                        a.account,
                        j.group()
                    );
                }
                match a.format {
                    TraceFormat::Json => {
                        serde_json::to_writer_pretty(&mut out, &t)?;
                        writeln!(out)?;
                    }
                    TraceFormat::Dot => {
                        anyhow::bail!(
                            "--format dot draws an item's copy tree; use table or json for accounts"
                        )
                    }
                    TraceFormat::Table => write!(out, "{}", account_table(&t))?,
                }
            }
        }
        Ok(std::process::ExitCode::SUCCESS)
    })
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

pub fn item_table(r: &ItemReport) -> String {
    let t = &r.trace;
    let mut s = String::new();
    let live = t.live_copies().count();
    s.push_str(&format!(
        "item {}: {} moves, {} copies ({} live)\n",
        t.item,
        t.steps.len(),
        t.copies.len(),
        live
    ));
    match t.fork_point() {
        None => s.push_str("fork point: none (one copy all along)\n"),
        Some(f) => {
            let step = &t.steps[f.step];
            let flagged: Vec<String> = r
                .fork_findings
                .iter()
                .filter(|x| x.tx_id.as_deref() == Some(f.tx_id.as_str()))
                .map(|x| format!("{} [{}]", x.invariant, short(&x.fingerprint)))
                .collect();
            s.push_str(&format!(
                "FORK POINT: {} at {} ({} {}, {} → {}): {} — copy {} forked from copy {}; flagged by {}\n",
                f.tx_id,
                ts(step.ts_us),
                step.system,
                step.kind,
                step.from,
                step.to,
                f.kind.as_str(),
                f.copy,
                f.parent,
                if flagged.is_empty() {
                    "no stored finding".to_string()
                } else {
                    flagged.join(", ")
                }
            ));
            for other in &t.forks[1..] {
                s.push_str(&format!(
                    "further fork: {} ({}) — copy {} from copy {}\n",
                    other.tx_id,
                    other.kind.as_str(),
                    other.copy,
                    other.parent
                ));
            }
        }
    }
    let mut tl = table();
    tl.set_header([
        "#",
        "ts",
        "tx_id",
        "realm",
        "system",
        "kind",
        "actor",
        "from → to",
        "copy",
        "",
    ]);
    for (i, st) in t.steps.iter().enumerate() {
        let fork = t.forks.iter().find(|f| f.step == i);
        tl.add_row([
            (i + 1).to_string(),
            ts(st.ts_us),
            st.tx_id.clone(),
            st.realm.clone(),
            st.system.clone(),
            st.kind.clone(),
            st.actor.clone().unwrap_or_default(),
            format!("{} → {}", st.from, st.to),
            t.step_copy[i].to_string(),
            fork.map(|f| format!("◀ FORK ({})", f.kind.as_str()))
                .unwrap_or_default(),
        ]);
    }
    s.push_str(&format!("\ntimeline\n{tl}\n"));
    let mut ct = table();
    ct.set_header(["copy", "forked from", "born in", "where now"]);
    for c in &t.copies {
        ct.add_row([
            c.id.to_string(),
            c.parent
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            t.steps[c.born_step].tx_id.clone(),
            if c.burned {
                format!("burned ({})", c.location)
            } else {
                c.location.clone()
            },
        ]);
    }
    s.push_str(&format!("\ncopies\n{ct}\n"));
    if !t.taint.is_empty() {
        let mut tt = table();
        tt.set_header([
            "tx_id",
            "copy",
            "from",
            "received by",
            "same transaction's postings",
        ]);
        for x in &t.taint {
            tt.add_row([
                x.tx_id.clone(),
                x.copy.to_string(),
                x.from_owner.clone(),
                x.receiver.clone(),
                x.postings
                    .iter()
                    .map(|(a, asset, d)| format!("{a} {d:+} {asset}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        s.push_str(&format!("\ntaint (from the fork on)\n{tt}\n"));
    }
    s
}

pub fn account_table(t: &AccountTrace) -> String {
    let mut s = format!(
        "account {}: {} postings; balances from the journal: {}\n",
        t.account,
        t.postings,
        t.balances
            .iter()
            .map(|b| format!("{} {} ({})", b.balance, b.asset, b.realm))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if t.below_zero.is_empty() {
        s.push_str("never below zero (the engine raised no balance.overdraft)\n");
    }
    for p in &t.below_zero {
        s.push_str(&format!(
            "BELOW ZERO: {} at {} ({} {}): {:+} {} → balance {}\n",
            p.row.tx_id,
            ts(p.row.ts_us),
            p.row.system,
            p.row.kind,
            p.row.delta,
            p.row.asset,
            p.balance
        ));
    }
    let mut h = table();
    h.set_header(["ts", "tx_id", "system", "kind", "asset", "delta", "balance"]);
    for p in &t.history {
        let mark = if t.crossed_at(&p.row) {
            " ◀ below 0"
        } else {
            ""
        };
        h.add_row([
            ts(p.row.ts_us),
            p.row.tx_id.clone(),
            p.row.system.clone(),
            p.row.kind.clone(),
            p.row.asset.clone(),
            format!("{:+}", p.row.delta),
            format!("{}{mark}", p.balance),
        ]);
    }
    s.push_str(&format!(
        "\nhistory (newest {} of {}; --history-rows for more)\n{h}\n",
        t.history.len(),
        t.postings
    ));
    let mut inf = table();
    inf.set_header(["ts", "tx_id", "kind", "asset", "amount"]);
    for p in &t.largest_inflows {
        inf.add_row([
            ts(p.ts_us),
            p.tx_id.clone(),
            p.kind.clone(),
            p.asset.clone(),
            p.delta.to_string(),
        ]);
    }
    s.push_str(&format!("\nlargest inflows\n{inf}\n"));
    let mut cp = table();
    cp.set_header([
        "counterparty",
        "realm",
        "asset",
        "received from",
        "sent to",
        "transactions",
    ]);
    for c in &t.counterparties {
        cp.add_row([
            c.account.clone(),
            c.realm.clone(),
            c.asset.clone(),
            c.received.to_string(),
            c.sent.to_string(),
            c.transactions.to_string(),
        ]);
    }
    s.push_str(&format!(
        "\ncounterparties (top {} of {})\n{cp}\n",
        t.counterparties.len(),
        t.counterparties_total
    ));
    s
}

fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}
