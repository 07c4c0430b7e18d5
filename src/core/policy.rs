//! The declarative audit policy (`invariants/policy.toml`), parsed in two stages: raw
//! serde structs that reject unknown keys, then validated types. A typo fails at load
//! time with file, line and key: a silently ignored key would silently disable a check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::finding::{Invariant, Severity};

/// The policy shipped in `invariants/`, embedded so `assayer` works from any directory.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../invariants/policy.toml");
pub const DEFAULT_POLICY_NAME: &str = "invariants/policy.toml (built in)";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// Where the stream's reorder window and memory bounds come from.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPolicy {
    /// events-v1: "default 5 s of `ts`, configurable".
    pub reorder_window: Duration,
    /// How many recent `tx_id`s are remembered for redelivery/conflict detection.
    pub dedup_window_txs: usize,
    /// How many redeemed grants are remembered for `grant.reused`.
    pub grant_memory_max: usize,
    pub streams_start_at: StreamStart,
}

/// Where a (realm, system) sequence is expected to begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The lowest `seq` seen in the first reorder window: the auditor may join a stream
    /// that has been running for years.
    FirstSeen,
    /// `seq` 1: anything before the first seen event is a gap.
    One,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EscrowRule {
    pub prefix: String,
    pub max_hold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VelocityRule {
    pub asset: String,
    pub account_prefix: String,
    pub window: Duration,
    pub max_inflow: i64,
}

/// The validated policy the engine runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub source: String,
    pub stream: StreamPolicy,
    /// Systems expected to publish; the gate checks each was heard from.
    pub expected_systems: Vec<String>,
    /// `world:` account → systems allowed to post to it or mint from it.
    pub faucets: BTreeMap<String, Vec<String>>,
    pub escrow: Vec<EscrowRule>,
    pub velocity: Vec<VelocityRule>,
    severity: BTreeMap<Invariant, Severity>,
}

impl Policy {
    /// The built-in default policy.
    pub fn builtin() -> Policy {
        Policy::parse(DEFAULT_POLICY_TOML, DEFAULT_POLICY_NAME)
            .expect("the shipped invariants/policy.toml is valid (tested)")
    }

    /// Loads `DIR/policy.toml`.
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let file = dir.join("policy.toml");
        let text = std::fs::read_to_string(&file).map_err(|source| PolicyError::Read {
            file: file.clone(),
            source,
        })?;
        Policy::parse(&text, &file.display().to_string())
    }

    pub fn severity(&self, inv: Invariant) -> Severity {
        self.severity
            .get(&inv)
            .copied()
            .unwrap_or_else(|| inv.default_severity())
    }

    pub fn faucet_allows(&self, world_account: &str, system: &str) -> bool {
        self.faucets
            .get(world_account)
            .is_some_and(|systems| systems.iter().any(|s| s == system))
    }

    pub fn escrow_rule(&self, account: &str) -> Option<&EscrowRule> {
        self.escrow.iter().find(|r| account.starts_with(&r.prefix))
    }

    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: &str, message: String| {
            PolicyError::Invalid {
                file: file.to_string(),
                line: span.map_or(1, |s| line_of(text, s.start)),
                key: key.to_string(),
                message,
            }
        };
        let raw: RawPolicy =
            from_toml(text).map_err(|(line, key, message)| PolicyError::Invalid {
                file: file.to_string(),
                line,
                key,
                message,
            })?;

        let s = raw.stream;
        let window_ms = s.reorder_window_ms.as_ref().map_or(5_000, |v| *v.get_ref());
        if window_ms > 3_600_000 {
            let span = s.reorder_window_ms.as_ref().map(Spanned::span);
            return Err(invalid(
                span,
                "stream.reorder_window_ms",
                format!(
                    "{window_ms} ms is more than an hour; the engine holds every event that long"
                ),
            ));
        }
        let positive =
            |v: Option<Spanned<u64>>, key: &str, default: u64| -> Result<u64, PolicyError> {
                match v {
                    None => Ok(default),
                    Some(v) if *v.get_ref() == 0 => Err(invalid(
                        Some(v.span()),
                        key,
                        "must be greater than zero".into(),
                    )),
                    Some(v) => Ok(*v.get_ref()),
                }
            };
        let stream = StreamPolicy {
            reorder_window: Duration::from_millis(window_ms),
            dedup_window_txs: positive(s.dedup_window_txs, "stream.dedup_window_txs", 1_000_000)?
                as usize,
            grant_memory_max: positive(s.grant_memory_max, "stream.grant_memory_max", 10_000_000)?
                as usize,
            streams_start_at: match s.streams_start_at.as_ref().map(|v| v.get_ref().as_str()) {
                None | Some("first-seen") => StreamStart::FirstSeen,
                Some("one") => StreamStart::One,
                Some(other) => {
                    return Err(invalid(
                        s.streams_start_at.as_ref().map(Spanned::span),
                        "stream.streams_start_at",
                        format!("`{other}` is not one of \"first-seen\", \"one\""),
                    ));
                }
            },
        };

        let mut faucets = BTreeMap::new();
        for (account, systems) in raw.faucets {
            if !account.get_ref().starts_with("world:") {
                return Err(invalid(
                    Some(account.span()),
                    &format!("faucets.\"{}\"", account.get_ref()),
                    "faucet accounts must be `world:` accounts".into(),
                ));
            }
            faucets.insert(account.into_inner(), systems);
        }

        let mut escrow = Vec::new();
        for r in raw.escrow {
            if r.prefix.get_ref().is_empty() || *r.max_hold_ms.get_ref() == 0 {
                return Err(invalid(
                    Some(r.prefix.span()),
                    "escrow",
                    "an escrow rule needs a non-empty `prefix` and `max_hold_ms` > 0".into(),
                ));
            }
            escrow.push(EscrowRule {
                prefix: r.prefix.into_inner(),
                max_hold: Duration::from_millis(*r.max_hold_ms.get_ref()),
            });
        }

        let mut velocity = Vec::new();
        if raw.velocity.len() > 8 {
            return Err(invalid(
                Some(raw.velocity[8].window_ms.span()),
                "velocity",
                "at most 8 velocity rules (each account caches which rules apply in 8 bits)".into(),
            ));
        }
        for r in raw.velocity {
            if *r.window_ms.get_ref() == 0 || *r.max_inflow.get_ref() <= 0 {
                return Err(invalid(
                    Some(r.window_ms.span()),
                    "velocity",
                    "a velocity rule needs `window_ms` > 0 and `max_inflow` > 0".into(),
                ));
            }
            velocity.push(VelocityRule {
                asset: r.asset,
                account_prefix: r.account_prefix,
                window: Duration::from_millis(*r.window_ms.get_ref()),
                max_inflow: *r.max_inflow.get_ref(),
            });
        }

        let mut severity = BTreeMap::new();
        for (id, sev) in raw.severity {
            let inv: Invariant =
                id.get_ref()
                    .parse()
                    .map_err(|e: super::finding::UnknownInvariant| {
                        invalid(
                            Some(id.span()),
                            &format!("severity.\"{}\"", id.get_ref()),
                            e.to_string(),
                        )
                    })?;
            let sev: Severity = sev.get_ref().parse().map_err(|e: String| {
                invalid(
                    Some(sev.span()),
                    &format!("severity.\"{}\"", id.get_ref()),
                    e,
                )
            })?;
            severity.insert(inv, sev);
        }

        Ok(Policy {
            source: file.to_string(),
            stream,
            expected_systems: raw.systems.expected,
            faucets,
            escrow,
            velocity,
            severity,
        })
    }
}

/// Deserializes TOML `text` into `T`. On error: the line, the key and serde's message.
/// The key is the dotted path serde was at when it failed (`checkpoint.batch_events_max`,
/// `velocity[1].window_ms`, an unknown key included); `-` for a syntax error outside
/// any key.
pub fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (usize, String, String)> {
    use serde_path_to_error::Segment;
    let describe = |e: &toml::de::Error, path: Option<&serde_path_to_error::Path>| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        let mut key = String::new();
        for segment in path.into_iter().flat_map(|p| p.iter()) {
            match segment {
                // `toml::Spanned` reads its value through a private field of its own.
                Segment::Map { key: k } if k.starts_with("$__") => {}
                Segment::Map { key: k } | Segment::Enum { variant: k } => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                }
                Segment::Seq { index } => key.push_str(&format!("[{index}]")),
                Segment::Unknown => {}
            }
        }
        if key.is_empty() {
            key.push('-');
        }
        (line, key, e.message().trim().to_string())
    };
    let de = toml::Deserializer::parse(text).map_err(|e| describe(&e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| describe(e.inner(), Some(e.path())))
}

/// The 1-based line of a byte offset in `text` (for errors that name the line).
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    stream: RawStream,
    #[serde(default)]
    systems: RawSystems,
    #[serde(default)]
    faucets: BTreeMap<Spanned<String>, Vec<String>>,
    #[serde(default)]
    escrow: Vec<RawEscrow>,
    #[serde(default)]
    velocity: Vec<RawVelocity>,
    #[serde(default)]
    severity: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStream {
    reorder_window_ms: Option<Spanned<u64>>,
    dedup_window_txs: Option<Spanned<u64>>,
    grant_memory_max: Option<Spanned<u64>>,
    streams_start_at: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSystems {
    #[serde(default)]
    expected: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscrow {
    prefix: Spanned<String>,
    max_hold_ms: Spanned<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVelocity {
    asset: String,
    account_prefix: String,
    window_ms: Spanned<u64>,
    max_inflow: Spanned<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_is_valid_and_covers_the_twelve_systems() {
        let p = Policy::builtin();
        for sys in [
            "loot",
            "vendor",
            "inventory",
            "bank",
            "trade",
            "mail",
            "auction",
            "crafting",
            "quest",
            "guild_bank",
            "economy",
            "character",
        ] {
            assert!(p.expected_systems.iter().any(|s| s == sys), "{sys}");
        }
        for (acct, sys) in [
            ("world:loot", "loot"),
            ("world:vendor", "vendor"),
            ("world:craft", "crafting"),
            ("world:quest", "quest"),
            ("world:auction_fee", "auction"),
            ("world:repair", "economy"),
            ("world:store", "economy"),
            ("world:deleted", "character"),
        ] {
            assert!(p.faucet_allows(acct, sys), "{acct} <- {sys}");
        }
        assert!(!p.faucet_allows("world:loot", "trade"));
        assert_eq!(p.stream.reorder_window, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[stream]\nreorder_window_ms = 5000\nreorder_windw_ms = 10\n";
        let err = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:3: stream.reorder_windw_ms:"),
            "{err}"
        );
    }

    #[test]
    fn type_errors_name_file_line_and_key() {
        let err = Policy::parse("[stream]\nreorder_window_ms = \"5s\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:2: stream.reorder_window_ms: invalid type"),
            "{err}"
        );
        let velocity = "[[velocity]]\nasset = \"gold\"\naccount_prefix = \"player:\"\nwindow_ms = 60000\nmax_inflow = 5\n";
        let text = format!("{velocity}{}", velocity.replace("60000", "\"1h\""));
        let err = Policy::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:9: velocity[1].window_ms: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let text = "[severity]\n\"tx.unbalanced\" = \"critical\"\n\"item.dupe\" = \"major\"\n";
        let err = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:3: severity.\"item.dupe\":"),
            "{err}"
        );
        let text = "[faucets]\n\"player:1\" = [\"loot\"]\n";
        let err = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("p.toml:2:") && err.contains("world:"), "{err}");
        let text = "[stream]\nstreams_start_at = \"zero\"\n";
        let err = Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:2: stream.streams_start_at"),
            "{err}"
        );
    }

    #[test]
    fn severity_override_applies() {
        let p = Policy::parse("[severity]\n\"economy.velocity\" = \"major\"\n", "p").unwrap();
        assert_eq!(p.severity(Invariant::Velocity), Severity::Major);
        assert_eq!(p.severity(Invariant::EscrowStuck), Severity::Minor);
    }
}
