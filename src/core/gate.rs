//! The deploy gate's scoring: one decision — GO, MARGINAL or NO-GO — with a score from
//! 0 to 100 and a reason for every check.
//!
//! Pure: the caller observes the world (open findings, the daemon's last status, the
//! latest reconciliation, the self-test, service levels, preflight) into
//! [`Observations`], and [`evaluate`] turns them into a [`GateReport`] under the
//! [`GatePolicy`] of `invariants/gate.toml`. Every interface — the CLI, `GET /v1/gate`,
//! the Flagger webhook and the Prometheus gauge — shows the same report.
//!
//! Two kinds of rule, kept apart on purpose:
//! - **Zero tolerance**: an open blocking finding, missing or stale coverage, a failed
//!   self-test, a failed preflight item, a missing/failed/divergent reconciliation make a
//!   check `fail`, and one failed check is NO-GO whatever the score. Missing data fails
//!   closed: no daemon status, a silent system or no reconciliation never pass.
//! - **Weights**: the score is the weighted share of checks passed (a `warn` earns half
//!   of its weight); among runs with no failed check, it separates GO from MARGINAL.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::finding::{Invariant, Severity};
use super::policy::{PolicyError, from_toml};
use super::time::Timestamp;

/// The shipped gate policy (`invariants/gate.toml`).
pub const BUILTIN_GATE_TOML: &str = include_str!("../../invariants/gate.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Decision {
    Go,
    Marginal,
    NoGo,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Go => "GO",
            Decision::Marginal => "MARGINAL",
            Decision::NoGo => "NO-GO",
        }
    }

    /// The label value of the `assayer_gate_decision` gauge.
    pub fn metric_label(self) -> &'static str {
        match self {
            Decision::Go => "go",
            Decision::Marginal => "marginal",
            Decision::NoGo => "no_go",
        }
    }

    /// The CLI's exit code: 0 GO, 2 NO-GO, 3 MARGINAL (1 is the gate itself failing).
    pub fn exit_code(self) -> u8 {
        match self {
            Decision::Go => 0,
            Decision::NoGo => 2,
            Decision::Marginal => 3,
        }
    }

    pub const ALL: [Decision; 3] = [Decision::Go, Decision::Marginal, Decision::NoGo];
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
    /// Not applicable (e.g. no service levels configured): left out of the score.
    Skip,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
            CheckStatus::Skip => "skip",
        }
    }
}

/// One line of the gate's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub weight: u32,
    pub reason: String,
    /// The individual observations behind the check (one per finding class, stream,
    /// service level or preflight item), each with its own status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    pub name: String,
    pub status: CheckStatus,
    pub reason: String,
}

/// The gate's answer, identical on every interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub decision: Decision,
    pub score: u8,
    pub reason: String,
    pub evaluated_at: Timestamp,
    /// Open critical and major findings (`None` when they could not be read).
    pub open_blocking_findings: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployMarker>,
    pub checks: Vec<Check>,
}

impl GateReport {
    /// A report for when the gate could not observe the world at all (database down):
    /// fail closed, with the cause as the reason.
    pub fn unobservable(now: Timestamp, cause: &str) -> GateReport {
        GateReport {
            decision: Decision::NoGo,
            score: 0,
            reason: format!("the gate cannot observe the audit: {cause}"),
            evaluated_at: now,
            open_blocking_findings: None,
            deploy: None,
            checks: vec![Check {
                name: "coverage".into(),
                status: CheckStatus::Fail,
                weight: 0,
                reason: format!("cannot read the audit's state: {cause}"),
                details: Vec::new(),
            }],
        }
    }
}

// ---------------------------------------------------------------------------------------
// Observations
// ---------------------------------------------------------------------------------------

/// An open finding, as the gate sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenFinding {
    pub fingerprint: String,
    pub invariant: Invariant,
    pub severity: Severity,
    pub realm: String,
    pub system: Option<String>,
    pub first_seen: Timestamp,
}

/// What a daemon last reported about itself (the `daemon_status` table).
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonStatus {
    pub group: String,
    /// `host:pid` of the process (a group may have an active and standby daemons).
    pub instance: String,
    /// When the daemon last wrote its status, on the database's clock.
    pub updated_at: Timestamp,
    pub processing_lag: Duration,
    pub reorder_depth: u64,
    /// The daemon holds its order-dependent checks (the first moments of a session,
    /// `amqp.redelivery_settle_ms`): findings of what it took in may still come.
    pub holding: bool,
    pub broker_connected: bool,
    pub streams: Vec<StreamStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub realm: String,
    pub system: String,
    /// `ts` of the newest event of the stream the engine has seen.
    pub last_ts: Timestamp,
}

/// The latest reconciliation (the `recon_runs` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconRun {
    pub id: i64,
    pub finished_at: Timestamp,
    pub watermark_ts: Option<Timestamp>,
    pub outcome: ReconOutcome,
    pub divergent_keys: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconOutcome {
    Clean,
    Divergent,
    Failed,
}

/// A deploy marker (`assayer deploy begin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployMarker {
    pub id: i64,
    pub version: String,
    pub begun_at: Timestamp,
    /// The stream watermark when the deploy began: reconciliations must be later.
    pub watermark_ts: Option<Timestamp>,
}

/// One service-level query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct SloObservation {
    pub name: String,
    /// The value Prometheus returned, or why there is none.
    pub value: Result<f64, String>,
}

/// One preflight item.
#[derive(Debug, Clone, PartialEq)]
pub struct PreflightItem {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

/// Everything the gate looks at, observed at `now`.
#[derive(Debug, Clone)]
pub struct Observations {
    pub now: Timestamp,
    pub findings: Vec<OpenFinding>,
    /// The daemon groups the gate expects to be audited (each needs a live daemon).
    pub groups: Vec<String>,
    /// The status rows of those groups' daemons, one per process (none: nobody audits).
    pub daemons: Vec<DaemonStatus>,
    /// The realms the gate expects every configured system to be heard from in.
    pub realms: Vec<String>,
    pub recon: Option<ReconRun>,
    pub deploy: Option<DeployMarker>,
    /// `Ok` when the sandboxed engine caught the synthetic corruption.
    pub self_test: Result<String, String>,
    pub slos: Vec<SloObservation>,
    pub preflight: Vec<PreflightItem>,
}

// ---------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MajorAction {
    /// An open major finding fails the gate, like a critical one.
    Block,
    /// An open major finding costs `major_penalty_points` of the findings weight.
    Weigh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachAction {
    Marginal,
    NoGo,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub max: Option<f64>,
    pub min: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SloRule {
    pub name: String,
    pub query: String,
    pub bound: Bound,
}

/// The validated `invariants/gate.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatePolicy {
    pub go_score_min: u8,
    pub marginal_score_min: u8,
    pub findings_weight: u32,
    pub major_action: MajorAction,
    pub major_penalty_points: u32,
    pub minor_penalty_points: u32,
    pub minor_penalty_max_points: u32,
    pub coverage_weight: u32,
    pub heartbeat_age_max: Duration,
    pub lag_max: Duration,
    pub reorder_depth_max: u64,
    pub system_silence_max: Duration,
    pub systems: Vec<String>,
    pub recon_weight: u32,
    pub recon_required: bool,
    pub recon_age_max: Duration,
    pub recon_age_warn: Duration,
    pub self_test_weight: u32,
    pub slo_weight: u32,
    pub slo_on_breach: BreachAction,
    pub slos: Vec<SloRule>,
    pub preflight_weight: u32,
    pub clock_skew_max: Duration,
}

mod raw {
    use serde::Deserialize;

    use super::{BreachAction, MajorAction};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct GateToml {
        pub decision: Decision,
        pub findings: Findings,
        pub coverage: Coverage,
        pub reconciliation: Reconciliation,
        pub self_test: SelfTest,
        #[serde(default)]
        pub slo: Option<Slo>,
        pub preflight: Preflight,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Decision {
        pub go_score_min: u8,
        pub marginal_score_min: u8,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Findings {
        pub weight: u32,
        pub major: MajorAction,
        #[serde(default)]
        pub major_penalty_points: u32,
        pub minor_penalty_points: u32,
        pub minor_penalty_max_points: u32,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Coverage {
        pub weight: u32,
        pub heartbeat_age_max_s: u64,
        pub lag_max_s: u64,
        pub reorder_depth_max: u64,
        pub system_silence_max_s: u64,
        pub systems: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Reconciliation {
        pub weight: u32,
        pub required: bool,
        pub age_max_s: u64,
        pub age_warn_s: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SelfTest {
        pub weight: u32,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Slo {
        pub weight: u32,
        pub on_breach: BreachAction,
        #[serde(default)]
        pub check: Vec<SloCheck>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SloCheck {
        pub name: String,
        pub query: String,
        pub max: Option<f64>,
        pub min: Option<f64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Preflight {
        pub weight: u32,
        pub clock_skew_max_ms: u64,
    }
}

impl GatePolicy {
    pub fn builtin() -> GatePolicy {
        GatePolicy::parse(BUILTIN_GATE_TOML, "invariants/gate.toml")
            .expect("the shipped invariants/gate.toml is valid (tested)")
    }

    /// Parses and validates a gate policy; errors name the file, line and key.
    pub fn parse(text: &str, file: &str) -> Result<GatePolicy, PolicyError> {
        let raw: raw::GateToml =
            from_toml(text).map_err(|(line, key, message)| PolicyError::Invalid {
                file: file.to_string(),
                line,
                key,
                message,
            })?;
        let invalid = |key: &str, what: &str| PolicyError::Invalid {
            file: file.to_string(),
            line: key_line(text, key),
            key: key.to_string(),
            message: what.to_string(),
        };
        let d = &raw.decision;
        if d.go_score_min > 100 || d.marginal_score_min > d.go_score_min {
            return Err(invalid(
                "marginal_score_min",
                "need marginal_score_min <= go_score_min <= 100",
            ));
        }
        if raw.findings.major == MajorAction::Weigh && raw.findings.major_penalty_points == 0 {
            return Err(invalid(
                "major_penalty_points",
                "must be > 0 when major = \"weigh\"",
            ));
        }
        if raw.coverage.systems.is_empty() {
            return Err(invalid(
                "systems",
                "list at least one system the gate expects to hear from",
            ));
        }
        if raw.reconciliation.age_warn_s > raw.reconciliation.age_max_s {
            return Err(invalid("age_warn_s", "must be <= age_max_s"));
        }
        let (slo_weight, slo_on_breach, slos) = match raw.slo {
            None => (0, BreachAction::NoGo, Vec::new()),
            Some(s) => {
                let mut names = BTreeSet::new();
                let mut rules = Vec::new();
                for c in s.check {
                    if c.max.is_none() && c.min.is_none() {
                        return Err(invalid("check", &format!("`{}` needs max or min", c.name)));
                    }
                    if !names.insert(c.name.clone()) {
                        return Err(invalid("check", &format!("`{}` is listed twice", c.name)));
                    }
                    if c.query.trim().is_empty() {
                        return Err(invalid(
                            "query",
                            &format!("`{}` has an empty query", c.name),
                        ));
                    }
                    rules.push(SloRule {
                        name: c.name,
                        query: c.query,
                        bound: Bound {
                            max: c.max,
                            min: c.min,
                        },
                    });
                }
                (s.weight, s.on_breach, rules)
            }
        };
        Ok(GatePolicy {
            go_score_min: d.go_score_min,
            marginal_score_min: d.marginal_score_min,
            findings_weight: raw.findings.weight,
            major_action: raw.findings.major,
            major_penalty_points: raw.findings.major_penalty_points,
            minor_penalty_points: raw.findings.minor_penalty_points,
            minor_penalty_max_points: raw.findings.minor_penalty_max_points,
            coverage_weight: raw.coverage.weight,
            heartbeat_age_max: Duration::from_secs(raw.coverage.heartbeat_age_max_s),
            lag_max: Duration::from_secs(raw.coverage.lag_max_s),
            reorder_depth_max: raw.coverage.reorder_depth_max,
            system_silence_max: Duration::from_secs(raw.coverage.system_silence_max_s),
            systems: raw.coverage.systems,
            recon_weight: raw.reconciliation.weight,
            recon_required: raw.reconciliation.required,
            recon_age_max: Duration::from_secs(raw.reconciliation.age_max_s),
            recon_age_warn: Duration::from_secs(raw.reconciliation.age_warn_s),
            self_test_weight: raw.self_test.weight,
            slo_weight,
            slo_on_breach,
            slos,
            preflight_weight: raw.preflight.weight,
            clock_skew_max: Duration::from_millis(raw.preflight.clock_skew_max_ms),
        })
    }
}

/// The line where `key = ...` first appears (for semantic errors found after parsing).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim_start_matches('[').starts_with(key)
        })
        .map_or(1, |i| i + 1)
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// The gate's decision for `obs` under `policy`.
pub fn evaluate(obs: &Observations, policy: &GatePolicy) -> GateReport {
    let (findings, critical_open) = check_findings(obs, policy);
    let checks = vec![
        findings,
        check_coverage(obs, policy),
        check_recon(obs, policy),
        check_self_test(obs, policy),
        check_slos(obs, policy),
        check_preflight(obs, policy),
    ];
    let (earned, total) = checks
        .iter()
        .fold((0u64, 0u64), |(e, t), c| match c.status {
            CheckStatus::Pass => (e + 2 * u64::from(c.weight), t + 2 * u64::from(c.weight)),
            CheckStatus::Warn => (e + u64::from(c.weight), t + 2 * u64::from(c.weight)),
            CheckStatus::Fail => (e, t + 2 * u64::from(c.weight)),
            CheckStatus::Skip => (e, t),
        });
    let mut score = (earned * 100).checked_div(total).unwrap_or(0) as u8;
    // Findings that weigh (minor, and major under "weigh") cost points directly.
    score = score.saturating_sub(penalty(obs, policy).min(u32::from(u8::MAX)) as u8);
    if critical_open {
        score = 0;
    }
    let failed: Vec<&Check> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .collect();
    let slo_marginal = policy.slo_on_breach == BreachAction::Marginal
        && checks
            .iter()
            .any(|c| c.name == "service_levels" && c.status == CheckStatus::Warn);
    let (decision, reason) = if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
        (
            Decision::NoGo,
            format!("{} failed: {}", names.join(", "), failed[0].reason),
        )
    } else if score >= policy.go_score_min && !slo_marginal {
        (
            Decision::Go,
            format!(
                "every check passed (score {score} >= {})",
                policy.go_score_min
            ),
        )
    } else if score >= policy.marginal_score_min {
        let warned: Vec<&str> = checks
            .iter()
            .filter(|c| c.status == CheckStatus::Warn)
            .map(|c| c.name.as_str())
            .collect();
        (
            Decision::Marginal,
            format!(
                "no check failed, but score {score} < {} (warnings: {})",
                policy.go_score_min,
                if warned.is_empty() {
                    "none".to_string()
                } else {
                    warned.join(", ")
                }
            ),
        )
    } else {
        (
            Decision::NoGo,
            format!(
                "score {score} < marginal minimum {}",
                policy.marginal_score_min
            ),
        )
    };
    GateReport {
        decision,
        score,
        reason,
        evaluated_at: obs.now,
        open_blocking_findings: Some(
            obs.findings
                .iter()
                .filter(|f| f.severity.blocks_deploy())
                .count(),
        ),
        deploy: obs.deploy.clone(),
        checks,
    }
}

fn penalty(obs: &Observations, policy: &GatePolicy) -> u32 {
    let minors = obs
        .findings
        .iter()
        .filter(|f| !f.severity.blocks_deploy())
        .count() as u32;
    let minor = (minors * policy.minor_penalty_points).min(policy.minor_penalty_max_points);
    let major = if policy.major_action == MajorAction::Weigh {
        obs.findings
            .iter()
            .filter(|f| f.severity == Severity::Major)
            .count() as u32
            * policy.major_penalty_points
    } else {
        0
    };
    minor + major
}

/// Open findings: a critical is zero tolerance (score 0), a major blocks or weighs per
/// policy, minor and info only cost points.
fn check_findings(obs: &Observations, policy: &GatePolicy) -> (Check, bool) {
    let mut by_class: std::collections::BTreeMap<(Severity, Invariant), usize> = Default::default();
    for f in &obs.findings {
        *by_class.entry((f.severity, f.invariant)).or_default() += 1;
    }
    let count = |s: Severity| obs.findings.iter().filter(|f| f.severity == s).count();
    let (critical, major, other) = (
        count(Severity::Critical),
        count(Severity::Major),
        obs.findings.len() - count(Severity::Critical) - count(Severity::Major),
    );
    let mut details: Vec<Detail> = by_class
        .iter()
        .rev()
        .map(|(&(sev, inv), &n)| {
            let blocks = sev == Severity::Critical
                || (sev == Severity::Major && policy.major_action == MajorAction::Block);
            Detail {
                name: inv.id().to_string(),
                status: if blocks {
                    CheckStatus::Fail
                } else {
                    CheckStatus::Warn
                },
                reason: format!("{n} open {} finding(s)", sev.as_str()),
            }
        })
        .collect();
    details.sort_by_key(|d| d.status != CheckStatus::Fail);
    let blocking_names = |sev: Severity| {
        by_class
            .keys()
            .filter(|(s, _)| *s == sev)
            .map(|(_, i)| i.id())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (status, reason) = if critical > 0 {
        (
            CheckStatus::Fail,
            format!(
                "{critical} open critical finding(s) ({}): zero tolerance; acknowledge with `assayer findings ack` once investigated",
                blocking_names(Severity::Critical)
            ),
        )
    } else if major > 0 && policy.major_action == MajorAction::Block {
        (
            CheckStatus::Fail,
            format!(
                "{major} open major finding(s) ({}) block the deploy",
                blocking_names(Severity::Major)
            ),
        )
    } else if major > 0 || other > 0 {
        (
            CheckStatus::Warn,
            format!("{major} open major and {other} open minor/info finding(s) weigh on the score"),
        )
    } else {
        (CheckStatus::Pass, "no open finding".to_string())
    };
    (
        Check {
            name: "findings".into(),
            status,
            weight: policy.findings_weight,
            reason,
            details,
        },
        critical > 0,
    )
}

/// Coverage: somebody audits, is alive, keeps up, and hears every configured system.
/// Missing data fails closed.
fn check_coverage(obs: &Observations, policy: &GatePolicy) -> Check {
    let mut details = Vec::new();
    let fail = |details: Vec<Detail>, reason: String| Check {
        name: "coverage".into(),
        status: CheckStatus::Fail,
        weight: policy.coverage_weight,
        reason,
        details,
    };
    if obs.daemons.is_empty() {
        return fail(
            details,
            "no daemon has reported status: nothing is being audited".into(),
        );
    }
    let mut problems: Vec<String> = Vec::new();
    let mut groups: Vec<&str> = obs.groups.iter().map(String::as_str).collect();
    if groups.is_empty() {
        groups = obs.daemons.iter().map(|d| d.group.as_str()).collect();
    }
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        // The freshest process of the group speaks for it: a standby that is alive
        // but idle, or a row left by a pod that was replaced, does not.
        let Some(d) = obs
            .daemons
            .iter()
            .filter(|d| d.group == group)
            .max_by_key(|d| d.updated_at)
        else {
            let reason = format!("daemon group {group} has never reported status");
            problems.push(reason.clone());
            details.push(Detail {
                name: format!("daemon {group} alive"),
                status: CheckStatus::Fail,
                reason,
            });
            continue;
        };
        let age = obs.now.since(d.updated_at);
        let mut push = |name: String, ok: bool, reason: String| {
            if !ok {
                problems.push(reason.clone());
            }
            details.push(Detail {
                name,
                status: if ok {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                reason,
            });
        };
        push(
            format!("daemon {group} alive"),
            age <= policy.heartbeat_age_max,
            format!(
                "daemon {group} ({}) last reported {}s ago (limit {}s)",
                d.instance,
                age.as_secs(),
                policy.heartbeat_age_max.as_secs()
            ),
        );
        push(
            format!("daemon {group} broker"),
            d.broker_connected,
            format!(
                "daemon {group} is {}connected to the broker",
                if d.broker_connected { "" } else { "not " }
            ),
        );
        push(
            format!("daemon {group} lag"),
            d.processing_lag <= policy.lag_max,
            format!(
                "daemon {group} consumer lag {:.1}s (limit {}s)",
                d.processing_lag.as_secs_f64(),
                policy.lag_max.as_secs()
            ),
        );
        push(
            format!("daemon {group} reorder depth"),
            d.reorder_depth <= policy.reorder_depth_max,
            format!(
                "daemon {group} holds {} events in the reorder window (limit {})",
                d.reorder_depth, policy.reorder_depth_max
            ),
        );
        push(
            format!("daemon {group} settled"),
            !d.holding,
            format!(
                "daemon {group} {} order-dependent checks{}",
                if d.holding { "is holding" } else { "runs" },
                if d.holding {
                    " after a (re)connect: findings of the events it took in may still come"
                } else {
                    ""
                }
            ),
        );
    }
    // Every configured system, in every realm, heard from recently (by stream time:
    // a heartbeat event counts).
    let realms: BTreeSet<&str> = if obs.realms.is_empty() {
        obs.daemons
            .iter()
            .flat_map(|d| d.streams.iter().map(|s| s.realm.as_str()))
            .collect()
    } else {
        obs.realms.iter().map(String::as_str).collect()
    };
    if realms.is_empty() {
        problems.push("no stream has been heard from in any realm".into());
    }
    for realm in &realms {
        for system in &policy.systems {
            let last = obs
                .daemons
                .iter()
                .flat_map(|d| d.streams.iter())
                .filter(|s| s.realm == *realm && s.system == *system)
                .map(|s| s.last_ts)
                .max();
            let (ok, reason) = match last {
                None => (false, format!("{realm}/{system} never heard from")),
                Some(ts) => {
                    let silent = obs.now.since(ts);
                    (
                        silent <= policy.system_silence_max,
                        format!(
                            "{realm}/{system} last event {}s ago (limit {}s)",
                            silent.as_secs(),
                            policy.system_silence_max.as_secs()
                        ),
                    )
                }
            };
            if !ok {
                problems.push(reason.clone());
            }
            details.push(Detail {
                name: format!("{realm}/{system}"),
                status: if ok {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                reason,
            });
        }
    }
    let gaps = obs
        .findings
        .iter()
        .filter(|f| f.invariant == Invariant::SeqGap)
        .count();
    if gaps > 0 {
        problems.push(format!(
            "{gaps} unexplained sequence gap(s) open (stream.seq_gap): events were lost before the audit"
        ));
    }
    if !problems.is_empty() {
        let first = problems[0].clone();
        let more = problems.len() - 1;
        return fail(
            details,
            if more > 0 {
                format!("{first} (and {more} more)")
            } else {
                first
            },
        );
    }
    Check {
        name: "coverage".into(),
        status: CheckStatus::Pass,
        weight: policy.coverage_weight,
        reason: format!(
            "{} daemon(s) alive and current; {} system(s) heard in {} realm(s)",
            obs.daemons.len(),
            policy.systems.len(),
            realms.len()
        ),
        details,
    }
}

fn check_recon(obs: &Observations, policy: &GatePolicy) -> Check {
    let check = |status, reason: String| Check {
        name: "reconciliation".into(),
        status,
        weight: policy.recon_weight,
        reason,
        details: Vec::new(),
    };
    let missing = if policy.recon_required {
        CheckStatus::Fail
    } else {
        CheckStatus::Skip
    };
    let Some(run) = &obs.recon else {
        return check(
            missing,
            "no reconciliation has run: run `assayer reconcile` (or set reconciliation.required = false in gate.toml)".into(),
        );
    };
    if let Some(deploy) = &obs.deploy {
        let after = match (run.watermark_ts, deploy.watermark_ts) {
            (Some(run_wm), Some(deploy_wm)) => run_wm > deploy_wm,
            _ => run.finished_at > deploy.begun_at,
        };
        if !after {
            return check(
                missing,
                format!(
                    "the latest reconciliation (run {}) is from before deploy {} began: run `assayer deploy verify`",
                    run.id, deploy.version
                ),
            );
        }
    }
    let age = obs.now.since(run.finished_at);
    match run.outcome {
        ReconOutcome::Failed => check(
            CheckStatus::Fail,
            format!(
                "reconciliation run {} failed: {}",
                run.id,
                run.error.as_deref().unwrap_or("no error recorded")
            ),
        ),
        ReconOutcome::Divergent => check(
            CheckStatus::Fail,
            format!(
                "reconciliation run {} found {} divergent key(s)",
                run.id, run.divergent_keys
            ),
        ),
        ReconOutcome::Clean if age > policy.recon_age_max => check(
            CheckStatus::Fail,
            format!(
                "the latest clean reconciliation (run {}) is {}s old (limit {}s)",
                run.id,
                age.as_secs(),
                policy.recon_age_max.as_secs()
            ),
        ),
        ReconOutcome::Clean if age > policy.recon_age_warn => check(
            CheckStatus::Warn,
            format!(
                "reconciliation run {} is clean but {}s old (warn after {}s)",
                run.id,
                age.as_secs(),
                policy.recon_age_warn.as_secs()
            ),
        ),
        ReconOutcome::Clean => check(
            CheckStatus::Pass,
            format!(
                "reconciliation run {} is clean, {}s old",
                run.id,
                age.as_secs()
            ),
        ),
    }
}

fn check_self_test(obs: &Observations, policy: &GatePolicy) -> Check {
    let (status, reason) = match &obs.self_test {
        Ok(r) => (CheckStatus::Pass, r.clone()),
        Err(r) => (CheckStatus::Fail, r.clone()),
    };
    Check {
        name: "self_test".into(),
        status,
        weight: policy.self_test_weight,
        reason,
        details: Vec::new(),
    }
}

fn check_slos(obs: &Observations, policy: &GatePolicy) -> Check {
    if policy.slos.is_empty() {
        return Check {
            name: "service_levels".into(),
            status: CheckStatus::Skip,
            weight: policy.slo_weight,
            reason: "no service level configured in gate.toml".into(),
            details: Vec::new(),
        };
    }
    let breach_status = match policy.slo_on_breach {
        BreachAction::Marginal => CheckStatus::Warn,
        BreachAction::NoGo => CheckStatus::Fail,
    };
    let mut details = Vec::new();
    for rule in &policy.slos {
        let observed = obs.slos.iter().find(|o| o.name == rule.name);
        let (status, reason) = match observed.map(|o| &o.value) {
            // An unanswered query is missing data: fail closed.
            None => (CheckStatus::Fail, "not queried".to_string()),
            Some(Err(e)) => (CheckStatus::Fail, format!("query failed: {e}")),
            Some(Ok(v)) => {
                let over = rule.bound.max.is_some_and(|m| *v > m);
                let under = rule.bound.min.is_some_and(|m| *v < m);
                let bound = match (rule.bound.min, rule.bound.max) {
                    (Some(lo), Some(hi)) => format!("{lo} ≤ x ≤ {hi}"),
                    (None, Some(hi)) => format!("≤ {hi}"),
                    (Some(lo), None) => format!("≥ {lo}"),
                    (None, None) => unreachable!("validated: max or min"),
                };
                if over || under {
                    (breach_status, format!("{v} breaches {bound}"))
                } else {
                    (CheckStatus::Pass, format!("{v} within {bound}"))
                }
            }
        };
        details.push(Detail {
            name: rule.name.clone(),
            status,
            reason,
        });
    }
    summarize(
        "service_levels",
        policy.slo_weight,
        details,
        "service level",
    )
}

fn check_preflight(obs: &Observations, policy: &GatePolicy) -> Check {
    let details = obs
        .preflight
        .iter()
        .map(|p| Detail {
            name: p.name.clone(),
            status: p.status,
            reason: p.detail.clone(),
        })
        .collect::<Vec<_>>();
    if details.is_empty() {
        return Check {
            name: "preflight".into(),
            status: CheckStatus::Fail,
            weight: policy.preflight_weight,
            reason: "preflight did not run".into(),
            details,
        };
    }
    summarize(
        "preflight",
        policy.preflight_weight,
        details,
        "preflight item",
    )
}

/// A check whose status is its worst detail's.
fn summarize(name: &str, weight: u32, details: Vec<Detail>, noun: &str) -> Check {
    let worst = |s: CheckStatus| details.iter().filter(|d| d.status == s).collect::<Vec<_>>();
    let (failed, warned) = (worst(CheckStatus::Fail), worst(CheckStatus::Warn));
    let (status, reason) = if let Some(first) = failed.first() {
        (
            CheckStatus::Fail,
            format!(
                "{} {noun}(s) failed; {}: {}",
                failed.len(),
                first.name,
                first.reason
            ),
        )
    } else if let Some(first) = warned.first() {
        (
            CheckStatus::Warn,
            format!(
                "{} {noun}(s) warn; {}: {}",
                warned.len(),
                first.name,
                first.reason
            ),
        )
    } else {
        let ran = details
            .iter()
            .filter(|d| d.status != CheckStatus::Skip)
            .count();
        (CheckStatus::Pass, format!("{ran} {noun}(s) passed"))
    };
    Check {
        name: name.into(),
        status,
        weight,
        reason,
        details,
    }
}

#[cfg(test)]
mod tests;

/// The gate proves it can fail: a sandboxed engine under the live policy is fed a clean
/// control event and two known-bad ones (an item minted twice, an unbalanced
/// transaction); both must be caught and the control must pass. `Ok` says what was
/// caught; `Err` says what was missed.
pub fn self_test(policy: &super::policy::Policy) -> Result<String, String> {
    use super::engine::Engine;
    const REALM: &str = "assayer-selftest";
    let events = [
        // Clean control: a loot drop mints an item.
        r#"{"v":1,"tx_id":"selftest-1","realm":"assayer-selftest","system":"loot","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"loot.drop","grant":"selftest:corpse-1","items":[{"item":"selftest-item","from":"world:loot","to":"player:1/bag"}]}"#,
        // Known bad: the same item minted again (item.duplicated).
        r#"{"v":1,"tx_id":"selftest-2","realm":"assayer-selftest","system":"loot","seq":2,"ts":"2026-01-01T00:00:01Z","kind":"loot.drop","grant":"selftest:corpse-2","items":[{"item":"selftest-item","from":"world:loot","to":"player:2/bag"}]}"#,
        // Known bad: gold created from nothing (tx.unbalanced).
        r#"{"v":1,"tx_id":"selftest-3","realm":"assayer-selftest","system":"trade","seq":1,"ts":"2026-01-01T00:00:02Z","kind":"trade.settle","postings":[{"account":"player:1","asset":"gold","delta":5}]}"#,
    ];
    let mut engine = Engine::new(policy.clone());
    let mut found = Vec::new();
    let now = Timestamp::parse_rfc3339("2026-01-01T00:00:03Z").expect("valid literal");
    for (i, e) in events.iter().enumerate() {
        let before = found.len();
        engine.ingest(e.as_bytes(), now, &mut found);
        if i == 0 && found.len() > before {
            return Err(format!(
                "the self-test's clean control event raised {}: the policy flags clean traffic",
                found[before].invariant.id()
            ));
        }
    }
    engine.finish(Timestamp(now.0 + 3_600_000_000_000), &mut found);
    let caught = |inv: Invariant| {
        found
            .iter()
            .any(|f| f.invariant == inv && f.realm == REALM && f.severity.blocks_deploy())
    };
    let missed: Vec<&str> = [Invariant::ItemDuplicated, Invariant::TxUnbalanced]
        .into_iter()
        .filter(|&i| !caught(i))
        .map(Invariant::id)
        .collect();
    if missed.is_empty() {
        Ok("a sandboxed engine under the live policy caught item.duplicated and tx.unbalanced as blocking".into())
    } else {
        Err(format!(
            "the sandboxed engine missed {} (or the policy made it non-blocking): the gate could not fail",
            missed.join(", ")
        ))
    }
}
