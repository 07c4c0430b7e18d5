//! The stream-only deploy verdict: what `assayer audit` and `assayer demo` report, and
//! the first input of the full deploy gate. Zero tolerance: one open blocking finding
//! (critical or major) is NO-GO.

use std::collections::BTreeMap;

use serde::Serialize;

use super::finding::{Finding, Invariant, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Decision {
    Go,
    NoGo,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    pub blocking: usize,
    pub by_severity: BTreeMap<Severity, usize>,
    /// The invariants that block, most severe first.
    pub blocking_invariants: Vec<Invariant>,
    pub reason: String,
}

impl Verdict {
    pub fn of(findings: &[Finding]) -> Verdict {
        let mut by_severity = BTreeMap::new();
        let mut blocking_invariants: Vec<(Severity, Invariant)> = Vec::new();
        for f in findings {
            *by_severity.entry(f.severity).or_insert(0) += 1;
            if f.severity.blocks_deploy()
                && !blocking_invariants.iter().any(|(_, i)| *i == f.invariant)
            {
                blocking_invariants.push((f.severity, f.invariant));
            }
        }
        blocking_invariants.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let blocking = findings
            .iter()
            .filter(|f| f.severity.blocks_deploy())
            .count();
        let decision = if blocking == 0 {
            Decision::Go
        } else {
            Decision::NoGo
        };
        let reason = if blocking == 0 {
            "no critical or major finding".to_string()
        } else {
            format!(
                "{blocking} blocking finding(s): {}",
                blocking_invariants
                    .iter()
                    .map(|(_, i)| i.id())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Verdict {
            decision,
            blocking,
            by_severity,
            blocking_invariants: blocking_invariants.into_iter().map(|(_, i)| i).collect(),
            reason,
        }
    }
}
