use super::*;
use crate::core::policy::Policy;

const NOW_MS: i64 = 1_800_000_000_000;

fn ts_ago(secs: i64) -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS - secs * 1000)
}

fn healthy() -> Observations {
    let policy = GatePolicy::builtin();
    let streams = policy
        .systems
        .iter()
        .map(|s| StreamStatus {
            realm: "eu-1".into(),
            system: s.clone(),
            last_ts: ts_ago(2),
        })
        .collect();
    Observations {
        now: Timestamp::from_unix_millis(NOW_MS),
        findings: Vec::new(),
        groups: vec!["eu".into()],
        daemons: vec![DaemonStatus {
            group: "eu".into(),
            instance: "host-a:1".into(),
            updated_at: ts_ago(1),
            processing_lag: Duration::from_millis(300),
            reorder_depth: 10,
            holding: false,
            broker_connected: true,
            streams,
        }],
        realms: vec!["eu-1".into()],
        recon: Some(ReconRun {
            id: 7,
            finished_at: ts_ago(60),
            watermark_ts: Some(ts_ago(65)),
            outcome: ReconOutcome::Clean,
            divergent_keys: 0,
            error: None,
        }),
        deploy: None,
        self_test: Ok("caught".into()),
        slos: Vec::new(),
        preflight: vec![PreflightItem {
            name: "database".into(),
            status: CheckStatus::Pass,
            detail: "reachable".into(),
        }],
    }
}

fn finding(inv: Invariant) -> OpenFinding {
    OpenFinding {
        fingerprint: format!("fp-{}", inv.id()),
        invariant: inv,
        severity: inv.default_severity(),
        realm: "eu-1".into(),
        system: Some("loot".into()),
        first_seen: ts_ago(5),
    }
}

fn check<'a>(r: &'a GateReport, name: &str) -> &'a Check {
    r.checks.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn the_shipped_gate_policy_parses() {
    let p = GatePolicy::builtin();
    assert_eq!(p.systems.len(), 12);
    assert_eq!(p.major_action, MajorAction::Block);
}

#[test]
fn unknown_keys_and_bad_values_name_file_line_and_key() {
    let text = BUILTIN_GATE_TOML.replace("lag_max_s = 60", "lag_max_s = 60\nlag_max_sec = 5");
    let e = GatePolicy::parse(&text, "gate.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("gate.toml:"), "{e}");
    assert!(e.contains("lag_max_sec"), "{e}");
    let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
    assert!(
        text.lines()
            .nth(line - 1)
            .unwrap()
            .starts_with("lag_max_sec = 5")
    );

    let text = BUILTIN_GATE_TOML.replace("marginal_score_min = 50", "marginal_score_min = 95");
    let e = GatePolicy::parse(&text, "gate.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("marginal_score_min"), "{e}");
}

#[test]
fn a_healthy_audit_is_go_with_full_score() {
    let r = evaluate(&healthy(), &GatePolicy::builtin());
    assert_eq!(r.decision, Decision::Go, "{r:#?}");
    assert_eq!(r.score, 100);
    assert_eq!(check(&r, "service_levels").status, CheckStatus::Skip);
}

#[test]
fn one_open_critical_finding_is_no_go_with_score_zero() {
    let mut o = healthy();
    o.findings.push(finding(Invariant::ItemDuplicated));
    let r = evaluate(&o, &GatePolicy::builtin());
    assert_eq!(r.decision, Decision::NoGo);
    assert_eq!(r.score, 0);
    assert!(r.reason.contains("item.duplicated"), "{}", r.reason);
}

#[test]
fn a_major_finding_blocks_or_weighs_per_policy() {
    let mut o = healthy();
    o.findings.push(finding(Invariant::BalanceOverdraft));
    let r = evaluate(&o, &GatePolicy::builtin());
    assert_eq!(r.decision, Decision::NoGo);
    assert!(r.reason.contains("balance.overdraft"), "{}", r.reason);
    assert!(r.score > 0);

    let weigh = BUILTIN_GATE_TOML.replace("major = \"block\"", "major = \"weigh\"");
    let p = GatePolicy::parse(&weigh, "gate.toml").unwrap();
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::Marginal, "{r:#?}");
    assert_eq!(check(&r, "findings").status, CheckStatus::Warn);
}

#[test]
fn minor_findings_cost_points_up_to_a_cap() {
    let mut o = healthy();
    o.findings.push(finding(Invariant::EscrowStuck));
    let r = evaluate(&o, &GatePolicy::builtin());
    // Findings check warns (half of 40 of 100 lost = 80) minus 3 points.
    assert_eq!(r.score, 77);
    assert_eq!(r.decision, Decision::Marginal);
    for _ in 0..20 {
        o.findings.push(finding(Invariant::Velocity));
    }
    let r = evaluate(&o, &GatePolicy::builtin());
    assert_eq!(r.score, 65);
    assert_eq!(r.decision, Decision::Marginal);
}

#[test]
fn no_daemon_status_fails_closed() {
    let mut o = healthy();
    o.daemons.clear();
    let r = evaluate(&o, &GatePolicy::builtin());
    assert_eq!(r.decision, Decision::NoGo);
    assert!(
        r.reason.contains("nothing is being audited"),
        "{}",
        r.reason
    );
}

#[test]
fn a_stopped_or_lagging_daemon_or_a_silent_system_is_no_go() {
    let p = GatePolicy::builtin();
    let mut o = healthy();
    o.daemons[0].updated_at = ts_ago(120);
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(r.reason.contains("last reported 120s ago"), "{}", r.reason);

    let mut o = healthy();
    o.daemons[0].processing_lag = Duration::from_secs(600);
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(r.reason.contains("consumer lag 600.0s"), "{}", r.reason);

    let mut o = healthy();
    o.daemons[0].streams.retain(|s| s.system != "mail");
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(
        r.reason.contains("eu-1/mail never heard from"),
        "{}",
        r.reason
    );

    let mut o = healthy();
    o.daemons[0].streams[0].last_ts = ts_ago(3600);
    assert_eq!(evaluate(&o, &p).decision, Decision::NoGo);

    let mut o = healthy();
    o.findings.push(finding(Invariant::SeqGap));
    let r = evaluate(&o, &p);
    assert_eq!(check(&r, "coverage").status, CheckStatus::Fail);

    // A daemon still holding its order-dependent checks has not judged what it took in.
    let mut o = healthy();
    o.daemons[0].holding = true;
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(
        r.reason.contains("is holding order-dependent checks"),
        "{}",
        r.reason
    );
}

#[test]
fn the_freshest_process_of_a_group_speaks_for_it() {
    let p = GatePolicy::builtin();
    // A replaced pod's stale row does not block while the new one reports.
    let mut o = healthy();
    let mut stale = o.daemons[0].clone();
    stale.instance = "host-old:9".into();
    stale.updated_at = ts_ago(3600);
    stale.broker_connected = false;
    o.daemons.push(stale);
    assert_eq!(evaluate(&o, &p).decision, Decision::Go);
    // An expected group with no daemon at all fails closed.
    o.groups.push("us".into());
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(
        r.reason.contains("daemon group us has never reported"),
        "{}",
        r.reason
    );
}

#[test]
fn reconciliation_must_be_clean_recent_and_after_the_deploy_marker() {
    let p = GatePolicy::builtin();
    let mut o = healthy();
    o.recon = None;
    assert_eq!(evaluate(&o, &p).decision, Decision::NoGo);

    let mut o = healthy();
    o.deploy = Some(DeployMarker {
        id: 1,
        version: "v2".into(),
        begun_at: ts_ago(30),
        watermark_ts: Some(ts_ago(31)),
    });
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(r.reason.contains("before deploy v2 began"), "{}", r.reason);
    o.recon.as_mut().unwrap().watermark_ts = Some(ts_ago(10));
    assert_eq!(evaluate(&o, &p).decision, Decision::Go);

    let mut o = healthy();
    o.recon.as_mut().unwrap().outcome = ReconOutcome::Divergent;
    o.recon.as_mut().unwrap().divergent_keys = 3;
    let r = evaluate(&o, &p);
    assert!(r.reason.contains("3 divergent key(s)"), "{}", r.reason);

    let mut o = healthy();
    o.recon.as_mut().unwrap().finished_at = ts_ago(1800);
    let r = evaluate(&o, &p);
    assert_eq!(check(&r, "reconciliation").status, CheckStatus::Warn);
    assert_eq!(
        r.decision,
        Decision::Go,
        "a warn costs half of 20: score 90"
    );
    assert_eq!(r.score, 90);
    o.recon.as_mut().unwrap().finished_at = ts_ago(7200);
    assert_eq!(evaluate(&o, &p).decision, Decision::NoGo);

    let optional = BUILTIN_GATE_TOML.replace("required = true", "required = false");
    let p = GatePolicy::parse(&optional, "gate.toml").unwrap();
    let mut o = healthy();
    o.recon = None;
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::Go);
    assert_eq!(check(&r, "reconciliation").status, CheckStatus::Skip);
}

#[test]
fn service_levels_breach_per_policy_and_fail_closed_when_unanswered() {
    let text = BUILTIN_GATE_TOML.replace(
        "# [[slo.check]]\n# name = \"frame time p99\"",
        "[[slo.check]]\nname = \"frame time p99\"\nquery = \"q\"\nmax = 0.0167\n# name = \"frame time p99\"",
    );
    let p = GatePolicy::parse(&text, "gate.toml").unwrap();
    assert_eq!(p.slos.len(), 1);
    let mut o = healthy();
    o.slos = vec![SloObservation {
        name: "frame time p99".into(),
        value: Ok(0.012),
    }];
    assert_eq!(evaluate(&o, &p).decision, Decision::Go);
    o.slos[0].value = Ok(0.020);
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(r.reason.contains("0.02 breaches ≤ 0.0167"), "{}", r.reason);
    o.slos[0].value = Err("connection refused".into());
    assert_eq!(evaluate(&o, &p).decision, Decision::NoGo);

    let marginal = text.replace("on_breach = \"no_go\"", "on_breach = \"marginal\"");
    let p = GatePolicy::parse(&marginal, "gate.toml").unwrap();
    o.slos[0].value = Ok(0.020);
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::Marginal, "{r:#?}");
}

#[test]
fn a_failed_preflight_item_or_self_test_is_no_go() {
    let p = GatePolicy::builtin();
    let mut o = healthy();
    o.preflight.push(PreflightItem {
        name: "migrations".into(),
        status: CheckStatus::Fail,
        detail: "2 pending".into(),
    });
    let r = evaluate(&o, &p);
    assert_eq!(r.decision, Decision::NoGo);
    assert!(r.reason.contains("migrations: 2 pending"), "{}", r.reason);

    let mut o = healthy();
    o.self_test = Err("missed".into());
    assert_eq!(evaluate(&o, &p).decision, Decision::NoGo);
}

#[test]
fn the_self_test_catches_corruption_under_the_shipped_policy() {
    let r = self_test(&Policy::builtin());
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn the_self_test_fails_when_the_policy_makes_corruption_non_blocking() {
    let text = crate::core::policy::DEFAULT_POLICY_TOML
        .replace("[severity]", "[severity]\n\"item.duplicated\" = \"minor\"");
    let policy = Policy::parse(&text, "policy.toml").unwrap();
    let e = self_test(&policy).unwrap_err();
    assert!(e.contains("item.duplicated"), "{e}");
}

#[test]
fn decisions_serialize_as_the_wire_strings() {
    assert_eq!(serde_json::to_string(&Decision::NoGo).unwrap(), "\"NO-GO\"");
    assert_eq!(Decision::NoGo.exit_code(), 2);
    assert_eq!(Decision::Marginal.exit_code(), 3);
}
