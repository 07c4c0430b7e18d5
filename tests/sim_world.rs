//! The reference world through the engine: a clean world — with redeliveries and
//! reordering within the window — yields zero findings; the same world with N planted
//! faults of each class yields exactly those N root-cause findings.

use std::collections::BTreeSet;

use assayer::core::engine::Engine;
use assayer::core::finding::{Finding, Invariant};
use assayer::core::policy::Policy;
use assayer::core::time::Timestamp;
use assayer::sim::{self, SimConfig, score};
use proptest::prelude::*;

fn world(cfg: &SimConfig) -> (Vec<Vec<u8>>, sim::AnswerKey) {
    let mut lines = Vec::new();
    let key = sim::generate(cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    (lines, key)
}

fn audit(lines: &[Vec<u8>]) -> (Engine, Vec<Finding>) {
    let mut engine = Engine::new(Policy::builtin());
    let mut out = Vec::new();
    for l in lines {
        engine.ingest(l, Timestamp(0), &mut out);
    }
    engine.finish(Timestamp(0), &mut out);
    (engine, dedup(out))
}

fn dedup(mut out: Vec<Finding>) -> Vec<Finding> {
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.fingerprint.clone()));
    out
}

fn assert_exact(key: &sim::AnswerKey, findings: &[Finding], what: &str) {
    let s = score(&key.faults, findings);
    assert!(
        s.missed.is_empty() && s.unexpected.is_empty(),
        "{what}: {} of {} planted faults found\nmissed: {:#?}\nunexpected: {:#?}",
        s.found,
        key.faults.len(),
        s.missed,
        s.unexpected
    );
}

fn state(engine: &Engine) -> BTreeSet<(String, String, String, i128)> {
    engine
        .ledger()
        .balances(engine.interner())
        .map(|(r, a, s, v)| (r.to_string(), a.to_string(), s.to_string(), v))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_clean_world_with_noise_yields_no_finding(
        seed in any::<u64>(),
        events in 1_000usize..4_000,
        players in 5usize..80,
        realms in 1usize..3,
    ) {
        let cfg = SimConfig { seed, events, players, realms, ..SimConfig::default() };
        let (lines, key) = world(&cfg);
        prop_assert!(key.faults.is_empty());
        let (engine, findings) = audit(&lines);
        prop_assert!(findings.is_empty(), "seed {seed}: {:#?}", &findings[..findings.len().min(5)]);
        prop_assert_eq!(engine.stats().redelivered as usize, key.redeliveries);
    }

    #[test]
    fn every_planted_fault_is_found_exactly_once(
        seed in any::<u64>(),
        n in 1usize..4,
        players in 20usize..80,
    ) {
        let cfg = SimConfig {
            seed,
            events: 5_000,
            players,
            realms: 1,
            inject: Invariant::STREAM.iter().map(|i| (*i, n)).collect(),
            ..SimConfig::default()
        };
        let (lines, key) = world(&cfg);
        prop_assert_eq!(key.faults.len(), n * Invariant::STREAM.len());
        let (_, findings) = audit(&lines);
        assert_exact(&key, &findings, &format!("seed {seed}, n {n}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// A daemon holds its watermark at the start of each session (`Engine::hold`). On
    /// a stream whose disorder is within the window, holding anywhere, for any stretch
    /// of it, changes only when findings are raised: the same findings (fingerprints),
    /// the same state, the same counters.
    #[test]
    fn holding_the_watermark_anywhere_changes_nothing_but_timing(
        seed in any::<u64>(),
        holds in proptest::collection::vec((0.0f64..1.0, 0usize..1_500), 1..4),
    ) {
        let cfg = SimConfig {
            seed,
            events: 5_000,
            players: 50,
            realms: 2,
            inject: Invariant::STREAM.iter().map(|i| (*i, 1)).collect(),
            ..SimConfig::default()
        };
        let (lines, key) = world(&cfg);
        let (plain, expected) = audit(&lines);
        let mut engine = Engine::new(Policy::builtin());
        let mut out = Vec::new();
        // (where a hold starts, how many events it lasts)
        let holds: Vec<(usize, usize)> = holds
            .iter()
            .map(|&(at, len)| ((at * lines.len() as f64) as usize, len))
            .collect();
        for (i, l) in lines.iter().enumerate() {
            if holds.iter().any(|&(at, _)| at == i) {
                engine.hold();
            }
            if engine.is_held() && holds.iter().any(|&(at, len)| i == at + len) {
                engine.resume(Timestamp(0), &mut out);
            }
            engine.ingest(l, Timestamp(0), &mut out);
        }
        engine.resume(Timestamp(0), &mut out);
        engine.finish(Timestamp(0), &mut out);
        let got = dedup(out);
        assert_exact(&key, &got, &format!("seed {seed}, holds {holds:?}"));
        let fp = |v: &[Finding]| v.iter().map(|f| f.fingerprint.clone()).collect::<BTreeSet<_>>();
        prop_assert_eq!(fp(&got), fp(&expected));
        prop_assert_eq!(state(&engine), state(&plain));
        let (a, b) = (engine.stats(), plain.stats());
        prop_assert_eq!(
            (a.accepted, a.redelivered, a.late, a.stale, &a.findings),
            (b.accepted, b.redelivered, b.late, b.stale, &b.findings)
        );
    }
}

#[test]
fn each_fault_class_alone_is_found_exactly() {
    for inv in Invariant::STREAM {
        let cfg = SimConfig {
            seed: 11,
            events: 3_000,
            players: 40,
            inject: vec![(inv, 2)],
            ..SimConfig::default()
        };
        let (lines, key) = world(&cfg);
        let (_, findings) = audit(&lines);
        assert_exact(&key, &findings, inv.id());
    }
}

#[test]
fn snapshot_and_restore_mid_stream_changes_nothing() {
    let cfg = SimConfig {
        seed: 5,
        events: 6_000,
        players: 50,
        realms: 2,
        inject: Invariant::STREAM.iter().map(|i| (*i, 1)).collect(),
        ..SimConfig::default()
    };
    let (lines, _) = world(&cfg);
    let (whole, expected) = audit(&lines);
    for cut in [1, lines.len() / 3, lines.len() / 2, lines.len() - 1] {
        let mut engine = Engine::new(Policy::builtin());
        let mut out = Vec::new();
        for l in &lines[..cut] {
            engine.ingest(l, Timestamp(0), &mut out);
        }
        let bytes = engine.snapshot();
        drop(engine);
        let mut engine = Engine::restore(Policy::builtin(), &bytes).expect("restore");
        for l in &lines[cut..] {
            engine.ingest(l, Timestamp(0), &mut out);
        }
        engine.finish(Timestamp(0), &mut out);
        let got = dedup(out);
        let fp = |v: &[Finding]| {
            v.iter()
                .map(|f| f.fingerprint.clone())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(fp(&got), fp(&expected), "cut at {cut}");
        assert_eq!(state(&engine), state(&whole), "cut at {cut}");
    }
}

#[test]
fn the_world_is_deterministic() {
    let cfg = SimConfig {
        seed: 3,
        events: 2_000,
        ..SimConfig::default()
    };
    assert_eq!(world(&cfg).0, world(&cfg).0);
}
