//! Rendering findings for people (table) and programs (ndjson, json).

use std::collections::HashSet;
use std::io::{self, IsTerminal, Write};

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use crate::core::finding::Finding;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One finding per line, as JSON (for pipes and log shippers).
    Ndjson,
    /// One JSON array of all findings.
    Json,
    /// A table for people.
    Table,
}

impl Format {
    /// The default: a table on a terminal, NDJSON otherwise.
    pub fn resolve(flag: Option<Format>) -> Format {
        flag.unwrap_or_else(|| {
            if io::stdout().is_terminal() {
                Format::Table
            } else {
                Format::Ndjson
            }
        })
    }
}

/// Writes findings as they come (NDJSON) or at the end (JSON, table); a finding raised
/// twice with the same fingerprint is written once.
pub struct FindingWriter<W: Write> {
    format: Format,
    out: W,
    seen: HashSet<String>,
    held: Vec<Finding>,
}

impl<W: Write> FindingWriter<W> {
    pub fn new(format: Format, out: W) -> Self {
        FindingWriter {
            format,
            out,
            seen: HashSet::new(),
            held: Vec::new(),
        }
    }

    /// Returns whether the finding was new.
    pub fn write(&mut self, f: Finding) -> io::Result<bool> {
        if !self.seen.insert(f.fingerprint.clone()) {
            return Ok(false);
        }
        match self.format {
            Format::Ndjson => {
                serde_json::to_writer(&mut self.out, &f)?;
                self.out.write_all(b"\n")?;
                self.held.push(f);
            }
            Format::Json | Format::Table => self.held.push(f),
        }
        Ok(true)
    }

    /// Every distinct finding written so far.
    pub fn findings(&self) -> &[Finding] {
        &self.held
    }

    pub fn finish(mut self) -> io::Result<Vec<Finding>> {
        match self.format {
            Format::Ndjson => {}
            Format::Json => {
                serde_json::to_writer_pretty(&mut self.out, &self.held)?;
                self.out.write_all(b"\n")?;
            }
            Format::Table => {
                if self.held.is_empty() {
                    writeln!(self.out, "No findings.")?;
                } else {
                    writeln!(self.out, "{}", table(&self.held))?;
                }
            }
        }
        self.out.flush()?;
        Ok(self.held)
    }
}

pub fn table(findings: &[Finding]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "severity",
            "invariant",
            "realm/system",
            "tx_id",
            "subject",
            "message",
        ]);
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.invariant.cmp(&b.invariant))
    });
    for f in sorted {
        t.add_row([
            f.severity.to_string(),
            f.invariant.to_string(),
            format!("{}/{}", f.realm, f.system.as_deref().unwrap_or("-")),
            f.tx_id.clone().unwrap_or_else(|| "-".into()),
            f.subject.clone().unwrap_or_else(|| "-".into()),
            f.message.clone(),
        ]);
    }
    t
}
