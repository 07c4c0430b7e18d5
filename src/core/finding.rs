//! Findings: the product. A finding is a domain result (the data failed), never an
//! `Err` (the auditor failed).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// Every invariant id of events-v1, in the spec's table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Invariant {
    #[serde(rename = "tx.unbalanced")]
    TxUnbalanced,
    #[serde(rename = "tx.conflict")]
    TxConflict,
    #[serde(rename = "item.duplicated")]
    ItemDuplicated,
    #[serde(rename = "item.phantom_source")]
    ItemPhantomSource,
    #[serde(rename = "item.resurrected")]
    ItemResurrected,
    #[serde(rename = "grant.reused")]
    GrantReused,
    #[serde(rename = "economy.unauthorized_faucet")]
    UnauthorizedFaucet,
    #[serde(rename = "balance.overdraft")]
    BalanceOverdraft,
    #[serde(rename = "stream.seq_gap")]
    SeqGap,
    #[serde(rename = "stream.seq_reuse")]
    SeqReuse,
    #[serde(rename = "recon.missing")]
    ReconMissing,
    #[serde(rename = "recon.unexpected")]
    ReconUnexpected,
    #[serde(rename = "recon.value_mismatch")]
    ReconValueMismatch,
    #[serde(rename = "escrow.stuck")]
    EscrowStuck,
    #[serde(rename = "economy.velocity")]
    Velocity,
    #[serde(rename = "event.malformed")]
    Malformed,
}

impl Invariant {
    pub const ALL: [Invariant; 16] = [
        Invariant::TxUnbalanced,
        Invariant::TxConflict,
        Invariant::ItemDuplicated,
        Invariant::ItemPhantomSource,
        Invariant::ItemResurrected,
        Invariant::GrantReused,
        Invariant::UnauthorizedFaucet,
        Invariant::BalanceOverdraft,
        Invariant::SeqGap,
        Invariant::SeqReuse,
        Invariant::ReconMissing,
        Invariant::ReconUnexpected,
        Invariant::ReconValueMismatch,
        Invariant::EscrowStuck,
        Invariant::Velocity,
        Invariant::Malformed,
    ];

    /// The invariants the stream engine raises (all but the `recon.*` family).
    pub const STREAM: [Invariant; 13] = [
        Invariant::TxUnbalanced,
        Invariant::TxConflict,
        Invariant::ItemDuplicated,
        Invariant::ItemPhantomSource,
        Invariant::ItemResurrected,
        Invariant::GrantReused,
        Invariant::UnauthorizedFaucet,
        Invariant::BalanceOverdraft,
        Invariant::SeqGap,
        Invariant::SeqReuse,
        Invariant::EscrowStuck,
        Invariant::Velocity,
        Invariant::Malformed,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Invariant::TxUnbalanced => "tx.unbalanced",
            Invariant::TxConflict => "tx.conflict",
            Invariant::ItemDuplicated => "item.duplicated",
            Invariant::ItemPhantomSource => "item.phantom_source",
            Invariant::ItemResurrected => "item.resurrected",
            Invariant::GrantReused => "grant.reused",
            Invariant::UnauthorizedFaucet => "economy.unauthorized_faucet",
            Invariant::BalanceOverdraft => "balance.overdraft",
            Invariant::SeqGap => "stream.seq_gap",
            Invariant::SeqReuse => "stream.seq_reuse",
            Invariant::ReconMissing => "recon.missing",
            Invariant::ReconUnexpected => "recon.unexpected",
            Invariant::ReconValueMismatch => "recon.value_mismatch",
            Invariant::EscrowStuck => "escrow.stuck",
            Invariant::Velocity => "economy.velocity",
            Invariant::Malformed => "event.malformed",
        }
    }

    /// The severity events-v1 assigns; a policy may override it.
    pub fn default_severity(self) -> Severity {
        match self {
            Invariant::TxUnbalanced
            | Invariant::TxConflict
            | Invariant::ItemDuplicated
            | Invariant::ItemPhantomSource
            | Invariant::ItemResurrected
            | Invariant::GrantReused
            | Invariant::UnauthorizedFaucet
            | Invariant::ReconUnexpected => Severity::Critical,
            Invariant::BalanceOverdraft
            | Invariant::SeqGap
            | Invariant::SeqReuse
            | Invariant::ReconMissing
            | Invariant::ReconValueMismatch => Severity::Major,
            Invariant::EscrowStuck | Invariant::Velocity | Invariant::Malformed => Severity::Minor,
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown invariant id `{0}` (known: tx.unbalanced, tx.conflict, item.duplicated, item.phantom_source, item.resurrected, grant.reused, economy.unauthorized_faucet, balance.overdraft, stream.seq_gap, stream.seq_reuse, recon.missing, recon.unexpected, recon.value_mismatch, escrow.stuck, economy.velocity, event.malformed)"
)]
pub struct UnknownInvariant(pub String);

impl FromStr for Invariant {
    type Err = UnknownInvariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Invariant::ALL
            .into_iter()
            .find(|i| i.id() == s)
            .ok_or_else(|| UnknownInvariant(s.to_string()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Minor,
    Major,
    Critical,
}

impl Severity {
    /// `critical` and `major` block a deploy; `minor` and `info` do not (events-v1).
    pub fn blocks_deploy(self) -> bool {
        matches!(self, Severity::Critical | Severity::Major)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "minor" => Ok(Severity::Minor),
            "major" => Ok(Severity::Major),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity `{other}` (expected critical, major, minor or info)"
            )),
        }
    }
}

/// One violation, with the stable field names of events-v1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub invariant: Invariant,
    pub severity: Severity,
    pub realm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub message: String,
    pub evidence: serde_json::Value,
    pub detected_at: Timestamp,
    pub fingerprint: String,
}

/// Builds the stable fingerprint of a violation from the parts that identify its root
/// cause (never the detection time): the same violation seen after a restart, or by two
/// replicas, gets the same fingerprint and is stored once.
pub fn fingerprint(invariant: Invariant, realm: &str, parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"assayer.finding.v1\0");
    for p in std::iter::once(invariant.id().as_bytes())
        .chain(std::iter::once(realm.as_bytes()))
        .chain(parts.iter().copied())
    {
        // Length-prefixed so that ("ab","c") and ("a","bc") differ.
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let hash = h.finalize();
    hash.to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_serde_and_from_str() {
        for inv in Invariant::ALL {
            let json = serde_json::to_string(&inv).unwrap();
            assert_eq!(json, format!("\"{}\"", inv.id()));
            assert_eq!(inv.id().parse::<Invariant>().unwrap(), inv);
        }
        assert!("item.dupe".parse::<Invariant>().is_err());
    }

    #[test]
    fn fingerprint_is_length_prefixed_and_stable() {
        let a = fingerprint(Invariant::TxUnbalanced, "eu", &[b"ab", b"c"]);
        let b = fingerprint(Invariant::TxUnbalanced, "eu", &[b"a", b"bc"]);
        assert_ne!(a, b);
        assert_eq!(
            a,
            fingerprint(Invariant::TxUnbalanced, "eu", &[b"ab", b"c"])
        );
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn only_critical_and_major_block() {
        assert!(Severity::Critical.blocks_deploy());
        assert!(Severity::Major.blocks_deploy());
        assert!(!Severity::Minor.blocks_deploy());
        assert!(!Severity::Info.blocks_deploy());
    }
}
