//! `assayer findings list|show|ack`: the daemon's stored findings, for people (table)
//! and programs (JSON).

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};

use crate::adapters::journal::{FindingFilter, FindingRow};
use crate::cli::trace::DbArgs;

/// List, inspect and acknowledge the findings the daemon stored.
#[derive(Debug, Args)]
pub struct FindingsArgs {
    #[command(subcommand)]
    pub what: FindingsWhat,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum FindingsWhat {
    /// Findings matching the filters, newest first.
    List(ListArgs),
    /// One finding with its evidence (ID = fingerprint or a unique prefix).
    Show(ShowArgs),
    /// Mark a finding acknowledged: who and why are stored with it.
    Ack(AckArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_parser = ["critical", "major", "minor", "info"])]
    pub severity: Option<String>,
    /// An invariant id, e.g. item.duplicated.
    #[arg(long)]
    pub invariant: Option<String>,
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long)]
    pub realm: Option<String>,
    #[arg(long, value_parser = ["open", "acknowledged", "resolved"])]
    pub status: Option<String>,
    /// Detected at or after: an RFC 3339 instant (2026-11-27T08:00:00Z) or an age
    /// (90m, 24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many (≤ 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Debug, Args)]
pub struct AckArgs {
    pub id: String,
    /// Who acknowledges (stored as status_by).
    #[arg(long)]
    pub by: String,
    /// Why (stored as status_reason).
    #[arg(long)]
    pub reason: String,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// `--since`: an RFC 3339 instant, or an age before `now_us`.
pub fn parse_since(s: &str, now_us: i64) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000) as i64);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_us.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))),
        Err(e) => anyhow::bail!(
            "--since `{s}`: neither an RFC 3339 instant (2026-11-27T08:00:00Z) nor an age like 24h ({e})"
        ),
    }
}

pub fn run(args: FindingsArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt = crate::cli::daemon::runtime()?;
    rt.block_on(async move {
        let j = args.db.connect().await?;
        let mut out = std::io::stdout().lock();
        match args.what {
            FindingsWhat::List(a) => {
                let now_us =
                    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
                let filter = FindingFilter {
                    severity: a.severity,
                    invariant: a.invariant,
                    system: a.system,
                    realm: a.realm,
                    status: a.status,
                    since_us: a
                        .since
                        .as_deref()
                        .map(|s| parse_since(s, now_us))
                        .transpose()?,
                    ..FindingFilter::default()
                };
                if !(1..=crate::adapters::journal::FINDINGS_PAGE_MAX).contains(&a.limit) {
                    anyhow::bail!(
                        "--limit must be 1..={}",
                        crate::adapters::journal::FINDINGS_PAGE_MAX
                    );
                }
                let total = j.count_findings(&filter).await?;
                let rows = j.findings(&filter, a.limit, a.offset).await?;
                match a.format {
                    ListFormat::Json => {
                        serde_json::to_writer_pretty(&mut out, &rows)?;
                        writeln!(out)?;
                    }
                    ListFormat::Table => {
                        write!(out, "{}", list_table(&rows))?;
                        writeln!(
                            out,
                            "{} of {total} matching findings (offset {})",
                            rows.len(),
                            a.offset
                        )?;
                    }
                }
            }
            FindingsWhat::Show(a) => {
                let f = j.finding(&a.id).await?;
                write_one(&mut out, &f, a.format)?;
            }
            FindingsWhat::Ack(a) => {
                let f = j.ack(&a.id, &a.by, &a.reason).await?;
                write_one(&mut out, &f, a.format)?;
            }
        }
        Ok(std::process::ExitCode::SUCCESS)
    })
}

fn write_one(out: &mut dyn Write, f: &FindingRow, format: ListFormat) -> anyhow::Result<()> {
    match format {
        ListFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, f)?;
            writeln!(out)?;
        }
        ListFormat::Table => write!(out, "{}", show_text(f))?,
    }
    Ok(())
}

pub fn list_table(rows: &[FindingRow]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    t.set_header([
        "fingerprint",
        "severity",
        "invariant",
        "realm",
        "system",
        "tx_id",
        "subject",
        "status",
        "detected",
    ]);
    for f in rows {
        t.add_row([
            f.fingerprint
                .get(..12)
                .unwrap_or(&f.fingerprint)
                .to_string(),
            f.severity.clone(),
            f.invariant.clone(),
            f.realm.clone(),
            f.system.clone().unwrap_or_default(),
            f.tx_id.clone().unwrap_or_default(),
            f.subject.clone().unwrap_or_default(),
            f.status.clone(),
            f.detected_at.clone(),
        ]);
    }
    format!("{t}\n")
}

pub fn show_text(f: &FindingRow) -> String {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let mut s = format!(
        "finding     {}\ninvariant   {} ({})\nrealm       {}\nsystem      {}\ntx_id       {}\nseq         {}\nsubject     {}\nmessage     {}\ndetected    {}\nseen        {}× (first {}, last {})\nstatus      {}",
        f.fingerprint,
        f.invariant,
        f.severity,
        f.realm,
        opt(&f.system),
        opt(&f.tx_id),
        f.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        opt(&f.subject),
        f.message,
        f.detected_at,
        f.occurrences,
        f.first_seen,
        f.last_seen,
        f.status,
    );
    if let Some(by) = &f.status_by {
        s.push_str(&format!(
            " by {by} at {}: {}",
            opt(&f.status_at),
            opt(&f.status_reason)
        ));
    }
    s.push_str("\nevidence    ");
    s.push_str(&serde_json::to_string_pretty(&f.evidence).unwrap_or_default());
    s.push('\n');
    s
}
