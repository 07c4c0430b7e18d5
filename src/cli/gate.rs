//! `assayer gate`: the go/no-go decision, for people (table), programs (json) and CI
//! (junit, markdown). Exit codes: 0 GO, 2 NO-GO, 3 MARGINAL, 1 the gate itself failed.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use quick_xml::escape::escape;

use crate::core::gate::{CheckStatus, GateReport};
use crate::daemon::config::Config;
use crate::gate::Gate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GateFormat {
    /// A table for people.
    Table,
    /// The report as JSON (the same document as `GET /v1/gate`).
    Json,
    /// JUnit XML: one test case per check (CI test reports).
    Junit,
    /// Markdown (CI step summaries, pull-request comments).
    Markdown,
}

impl GateFormat {
    pub fn resolve(flag: Option<GateFormat>) -> GateFormat {
        flag.unwrap_or_else(|| {
            if io::stdout().is_terminal() {
                GateFormat::Table
            } else {
                GateFormat::Json
            }
        })
    }
}

/// Decide GO / MARGINAL / NO-GO from open findings, coverage, reconciliation, a
/// self-test, service levels and preflight. Exit 0 GO, 2 NO-GO, 3 MARGINAL, 1 error.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// The daemon's TOML config (database, broker, [gate] section).
    #[arg(long, short, value_name = "FILE", env = "ASSAYER_CONFIG")]
    pub config: PathBuf,
    /// Gate policy (weights, thresholds, service levels); default: the config's
    /// gate.policy_file, else the shipped invariants/gate.toml.
    #[arg(long, value_name = "FILE")]
    pub gate_policy: Option<PathBuf>,
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub format: Option<GateFormat>,
}

pub fn load(
    config: &std::path::Path,
    gate_policy: Option<&std::path::Path>,
) -> anyhow::Result<Gate> {
    let cfg = Config::load(config)?;
    Ok(Gate::load(cfg, &config.display().to_string(), gate_policy)?)
}

pub fn run(args: GateArgs) -> anyhow::Result<ExitCode> {
    let rt = super::daemon::runtime()?;
    // The lazy database pool spawns its maintenance on the runtime.
    let _rt = rt.enter();
    let gate = load(&args.config, args.gate_policy.as_deref())?;
    let report = rt.block_on(gate.evaluate());
    let mut out = io::stdout().lock();
    render(&report, GateFormat::resolve(args.format), &mut out)?;
    Ok(ExitCode::from(report.decision.exit_code()))
}

pub fn render(report: &GateReport, format: GateFormat, out: &mut dyn Write) -> io::Result<()> {
    match format {
        GateFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)
        }
        GateFormat::Table => writeln!(out, "{}", table(report)),
        GateFormat::Junit => out.write_all(junit(report).as_bytes()),
        GateFormat::Markdown => out.write_all(markdown(report).as_bytes()),
    }
}

fn mark(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Pass => "✅ pass",
        CheckStatus::Warn => "⚠️ warn",
        CheckStatus::Fail => "❌ fail",
        CheckStatus::Skip => "➖ skip",
    }
}

pub fn table(r: &GateReport) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["check", "status", "weight", "reason"]);
    for c in &r.checks {
        t.add_row([
            c.name.clone(),
            c.status.as_str().to_string(),
            c.weight.to_string(),
            c.reason.clone(),
        ]);
        for d in c.details.iter().filter(|d| d.status != CheckStatus::Pass) {
            t.add_row([
                format!("  {}", d.name),
                d.status.as_str().to_string(),
                String::new(),
                d.reason.clone(),
            ]);
        }
    }
    let deploy = r
        .deploy
        .as_ref()
        .map(|d| format!("deploy {} (#{}) began {}\n", d.version, d.id, d.begun_at))
        .unwrap_or_default();
    format!(
        "{deploy}{t}\n{}  score {}/100 — {}",
        r.decision, r.score, r.reason
    )
}

/// JUnit XML: one `<testcase>` per check; a failed check is a `<failure>`, a skipped one
/// `<skipped>`, a warning passes with its reason in `<system-out>`.
pub fn junit(r: &GateReport) -> String {
    let failures = r
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    let skipped = r
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Skip)
        .count();
    let ts = r.evaluated_at.to_rfc3339();
    // JUnit timestamps carry no zone and no fraction.
    let ts = ts.get(..19).unwrap_or(&ts);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x += &format!(
        "<testsuites name=\"assayer gate\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"0\">\n",
        n = r.checks.len()
    );
    x += &format!(
        "  <testsuite name=\"assayer.gate\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"0\" timestamp=\"{ts}\">\n",
        n = r.checks.len()
    );
    x += "    <properties>\n";
    x += &format!(
        "      <property name=\"decision\" value=\"{}\"/>\n",
        r.decision
    );
    x += &format!("      <property name=\"score\" value=\"{}\"/>\n", r.score);
    x += &format!(
        "      <property name=\"reason\" value=\"{}\"/>\n",
        escape(r.reason.as_str())
    );
    if let Some(d) = &r.deploy {
        x += &format!(
            "      <property name=\"deploy\" value=\"{}\"/>\n",
            escape(d.version.as_str())
        );
    }
    x += "    </properties>\n";
    for c in &r.checks {
        let details: String = c
            .details
            .iter()
            .map(|d| format!("{} {}: {}\n", d.status.as_str(), d.name, d.reason))
            .collect();
        x += &format!(
            "    <testcase name=\"{}\" classname=\"assayer.gate\" time=\"0\">\n",
            escape(c.name.as_str())
        );
        match c.status {
            CheckStatus::Fail => {
                x += &format!(
                    "      <failure message=\"{}\" type=\"gate.fail\">{}</failure>\n",
                    escape(c.reason.as_str()),
                    escape(details.as_str())
                );
            }
            CheckStatus::Skip => {
                x += &format!(
                    "      <skipped message=\"{}\"/>\n",
                    escape(c.reason.as_str())
                );
            }
            CheckStatus::Warn | CheckStatus::Pass => {
                x += &format!(
                    "      <system-out>{}: {}\n{}</system-out>\n",
                    c.status.as_str(),
                    escape(c.reason.as_str()),
                    escape(details.as_str())
                );
            }
        }
        x += "    </testcase>\n";
    }
    x += &format!(
        "    <system-out>{}: score {}/100: {}</system-out>\n",
        r.decision,
        r.score,
        escape(r.reason.as_str())
    );
    x += "  </testsuite>\n</testsuites>\n";
    x
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown for a CI step summary: the decision up front, then a table of checks, then
/// what did not pass in detail.
pub fn markdown(r: &GateReport) -> String {
    let icon = match r.decision {
        crate::core::gate::Decision::Go => "✅",
        crate::core::gate::Decision::Marginal => "⚠️",
        crate::core::gate::Decision::NoGo => "⛔",
    };
    let mut m = format!(
        "## {icon} assayer gate: **{}** (score {}/100)\n\n{}\n\n",
        r.decision,
        r.score,
        md_cell(&r.reason)
    );
    if let Some(d) = &r.deploy {
        m += &format!(
            "Deploy **{}** (#{}) began {}.\n\n",
            md_cell(&d.version),
            d.id,
            d.begun_at
        );
    }
    m += "| check | status | weight | reason |\n|---|---|---:|---|\n";
    for c in &r.checks {
        m += &format!(
            "| {} | {} | {} | {} |\n",
            c.name,
            mark(c.status),
            c.weight,
            md_cell(&c.reason)
        );
    }
    let notable: Vec<_> = r
        .checks
        .iter()
        .filter(|c| c.details.iter().any(|d| d.status != CheckStatus::Pass))
        .collect();
    if !notable.is_empty() {
        m += "\n<details><summary>What did not pass</summary>\n\n";
        for c in notable {
            m += &format!("**{}**\n\n", c.name);
            for d in c.details.iter().filter(|d| d.status != CheckStatus::Pass) {
                m += &format!(
                    "- {} `{}`: {}\n",
                    mark(d.status),
                    d.name,
                    md_cell(&d.reason)
                );
            }
            m += "\n";
        }
        m += "</details>\n";
    }
    m += &format!("\n<sub>evaluated {}</sub>\n", r.evaluated_at);
    m
}
