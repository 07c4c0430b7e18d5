//! Scoring an audit against the simulator's answer key: which planted faults were
//! found, which were missed, and which findings nobody planted (false alarms).

use std::collections::HashSet;

use crate::core::finding::Finding;

use super::Expected;

#[derive(Debug, Default)]
pub struct Score<'a> {
    pub found: usize,
    pub missed: Vec<&'a Expected>,
    pub unexpected: Vec<&'a Finding>,
}

impl Expected {
    /// A finding matches when invariant and realm agree and so does every field the
    /// answer key names.
    pub fn matches(&self, f: &Finding) -> bool {
        self.invariant == f.invariant
            && self.realm == f.realm
            && self
                .system
                .as_ref()
                .is_none_or(|s| f.system.as_ref() == Some(s))
            && self
                .tx_id
                .as_ref()
                .is_none_or(|t| f.tx_id.as_ref() == Some(t))
            && self.seq.is_none_or(|s| f.seq == Some(s))
            && self
                .subject
                .as_ref()
                .is_none_or(|s| f.subject.as_ref() == Some(s))
    }
}

/// Matches each expected fault to one distinct finding.
pub fn score<'a>(expected: &'a [Expected], findings: &'a [Finding]) -> Score<'a> {
    let mut used = HashSet::new();
    let mut s = Score::default();
    for e in expected {
        match findings
            .iter()
            .enumerate()
            .find(|(i, f)| !used.contains(i) && e.matches(f))
        {
            Some((i, _)) => {
                used.insert(i);
                s.found += 1;
            }
            None => s.missed.push(e),
        }
    }
    s.unexpected = findings
        .iter()
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .map(|(_, f)| f)
        .collect();
    s
}
