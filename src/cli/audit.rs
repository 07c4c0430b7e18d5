//! `assayer audit`: NDJSON events in, findings out, a summary on stderr.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{FindingWriter, Format};
use crate::core::engine::{Engine, EngineStats};
use crate::core::policy::Policy;
use crate::core::verdict::{Decision, Verdict};
use crate::ndjson::{audit_stream, events_in};

/// Audit an NDJSON event stream offline.
///
/// Exit status: 0 no blocking finding, 2 blocking findings (critical or major),
/// 1 the audit itself failed (bad flags, unreadable input or policy).
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// NDJSON file of events-v1 events, or `-` for stdin.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Output format for findings [default: table on a terminal, ndjson otherwise].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Policy directory holding policy.toml [default: the shipped invariants/].
    #[arg(long, value_name = "DIR")]
    pub policy: Option<PathBuf>,
    /// Override the policy's reorder window (milliseconds of event `ts`).
    #[arg(long, value_name = "MS")]
    pub reorder_window_ms: Option<u64>,
    /// Write the summary to stderr as JSON instead of text.
    #[arg(long)]
    pub summary_json: bool,
}

pub fn load_policy(dir: Option<&Path>, reorder_window_ms: Option<u64>) -> anyhow::Result<Policy> {
    let mut policy = match dir {
        Some(dir) => Policy::load_dir(dir)?,
        None => Policy::builtin(),
    };
    if let Some(ms) = reorder_window_ms {
        policy.stream.reorder_window = Duration::from_millis(ms);
    }
    Ok(policy)
}

pub fn run(args: AuditArgs) -> anyhow::Result<std::process::ExitCode> {
    let policy = load_policy(args.policy.as_deref(), args.reorder_window_ms)?;
    let (reader, size): (Box<dyn Read + Send>, Option<u64>) = if args.input.as_os_str() == "-" {
        (Box::new(io::stdin()), None)
    } else {
        let f = File::open(&args.input)
            .with_context(|| format!("cannot open input {}", args.input.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let progress = progress_bar(size);
    let reader = BufReader::with_capacity(1 << 20, progress.wrap_read(reader));

    let format = Format::resolve(args.format);
    let stdout = io::stdout().lock();
    let mut writer = FindingWriter::new(format, io::BufWriter::new(stdout));
    let mut engine = Engine::new(policy);
    if let Some(size) = size {
        engine.reserve(events_in(size));
    }
    let started = Instant::now();
    let mut write_err = None;
    audit_stream(&mut engine, reader, |f| {
        if write_err.is_none()
            && let Err(e) = writer.write(f)
        {
            write_err = Some(e);
        }
    })
    .with_context(|| format!("reading {}", args.input.display()))?;
    progress.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e).context("writing findings");
    }
    let findings = writer.finish().context("writing findings")?;
    let elapsed = started.elapsed();
    let verdict = Verdict::of(&findings);
    let summary = Summary::new(&engine.stats(), elapsed, &verdict, engine.policy());
    let mut err = io::stderr().lock();
    if args.summary_json {
        serde_json::to_writer_pretty(&mut err, &summary)?;
        writeln!(err)?;
    } else {
        summary.write_text(&mut err)?;
    }
    Ok(match verdict.decision {
        Decision::Go => std::process::ExitCode::SUCCESS,
        Decision::NoGo => std::process::ExitCode::from(2),
    })
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(n) if n > 8 << 20 => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} auditing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        Some(_) => ProgressBar::hidden(),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} auditing {bytes} read, {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    }
}

/// The run summary written to stderr.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub events_received: u64,
    pub accepted: u64,
    pub redeliveries: u64,
    pub conflicts: u64,
    pub malformed: u64,
    pub stale: u64,
    pub late: u64,
    pub findings_by_invariant: std::collections::BTreeMap<String, u64>,
    pub elapsed_ms: u64,
    pub events_per_second: u64,
    pub verdict: Decision,
    pub verdict_reason: String,
    pub policy: String,
    pub reorder_window_ms: u64,
}

impl Summary {
    pub fn new(s: &EngineStats, elapsed: Duration, verdict: &Verdict, policy: &Policy) -> Summary {
        Summary {
            events_received: s.received,
            accepted: s.accepted,
            redeliveries: s.redelivered,
            conflicts: s.conflicts,
            malformed: s.malformed,
            stale: s.stale,
            late: s.late,
            findings_by_invariant: s
                .findings
                .iter()
                .map(|(k, v)| (k.id().to_string(), *v))
                .collect(),
            elapsed_ms: elapsed.as_millis() as u64,
            events_per_second: (s.received as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
            verdict: verdict.decision,
            verdict_reason: verdict.reason.clone(),
            policy: policy.source.clone(),
            reorder_window_ms: policy.stream.reorder_window.as_millis() as u64,
        }
    }

    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "audited {} events in {:.2} s ({} events/s): {} accepted, {} redeliveries, {} conflicts, {} malformed, {} stale, {} late",
            self.events_received,
            self.elapsed_ms as f64 / 1000.0,
            self.events_per_second,
            self.accepted,
            self.redeliveries,
            self.conflicts,
            self.malformed,
            self.stale,
            self.late
        )?;
        if self.findings_by_invariant.is_empty() {
            writeln!(w, "findings: none")?;
        } else {
            let parts: Vec<String> = self
                .findings_by_invariant
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(w, "findings: {}", parts.join(", "))?;
        }
        let decision = match self.verdict {
            Decision::Go => "GO",
            Decision::NoGo => "NO-GO",
        };
        writeln!(
            w,
            "verdict: {decision} ({}); policy {}, reorder window {} ms",
            self.verdict_reason, self.policy, self.reorder_window_ms
        )
    }
}
