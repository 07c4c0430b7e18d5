//! Tests of the simulator, including a deliberately naive oracle: it applies events-v1
//! the slow, obvious way (dedup by `tx_id`, sort by `ts`, check each rule) so that the
//! answer key can be verified without the engine. It is not the engine: it reads the
//! whole stream at once and ignores the reorder window.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::core::event::{decode, is_world, residuals};
use crate::core::finding::Invariant;
use crate::core::policy::Policy;
use crate::core::time::Timestamp;

use super::wire::{alternate_ts, reserialize};
use super::*;

fn run(cfg: &SimConfig) -> (Vec<Vec<u8>>, AnswerKey) {
    let mut lines = Vec::new();
    let key = generate(cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    (lines, key)
}

fn cfg(seed: u64, events: usize, players: usize, realms: usize) -> SimConfig {
    SimConfig {
        seed,
        events,
        players,
        realms,
        ..SimConfig::default()
    }
}

fn every_fault(n: usize) -> Vec<(Invariant, usize)> {
    Invariant::STREAM.iter().map(|&i| (i, n)).collect()
}

// ----- the oracle ------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Found {
    inv: Invariant,
    realm: String,
    system: Option<String>,
    tx_id: Option<String>,
    seq: Option<u64>,
    subject: Option<String>,
}

impl Found {
    fn tx(inv: Invariant, e: &Applied, subject: Option<String>) -> Found {
        Found {
            inv,
            realm: e.realm.clone(),
            system: Some(e.system.clone()),
            tx_id: Some(e.tx_id.clone()),
            seq: Some(e.seq),
            subject,
        }
    }
}

struct Applied {
    ts: i64,
    order: usize,
    realm: String,
    system: String,
    seq: u64,
    tx_id: String,
    grant: Option<String>,
    postings: Vec<(String, String, i64)>,
    items: Vec<(String, String, String)>,
    unbalanced: bool,
}

/// What the oracle saw besides findings, for the clean-world checks.
#[derive(Default)]
struct Stats {
    /// The largest gold inflow any one player (wallet and bank together) had in any
    /// policy window.
    max_player_inflow: i64,
    /// The longest any escrow held value, per prefix.
    max_escrow_hold_ns: BTreeMap<String, i64>,
}

/// (realm, system or account).
type Key = (String, String);
/// Inflows inside the velocity window: (ts, amount).
type Window = VecDeque<(i64, i64)>;

fn audit(lines: &[Vec<u8>]) -> (Vec<Found>, Stats) {
    let policy = Policy::builtin();
    let mut found = Vec::new();
    let mut stats = Stats::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut events = Vec::new();
    // (realm, system) -> [(seq, ts, tx_id)]
    let mut streams: BTreeMap<Key, Vec<(u64, i64, String)>> = BTreeMap::new();
    for (order, line) in lines.iter().enumerate() {
        match decode(line) {
            Ok(ev) => {
                let tx = ev.wire.tx_id.to_string();
                match seen.get(&tx) {
                    Some(&d) if d == ev.digest => continue,
                    Some(_) => {
                        found.push(Found {
                            inv: Invariant::TxConflict,
                            realm: ev.realm().to_string(),
                            system: Some(ev.wire.system.to_string()),
                            tx_id: Some(tx),
                            seq: Some(ev.wire.seq),
                            subject: None,
                        });
                        continue;
                    }
                    None => {}
                }
                seen.insert(tx.clone(), ev.digest);
                let key = (ev.realm().to_string(), ev.wire.system.to_string());
                streams
                    .entry(key)
                    .or_default()
                    .push((ev.wire.seq, ev.ts.0, tx.clone()));
                events.push(Applied {
                    ts: ev.ts.0,
                    order,
                    realm: ev.realm().to_string(),
                    system: ev.wire.system.to_string(),
                    seq: ev.wire.seq,
                    tx_id: tx,
                    grant: ev.wire.grant.as_deref().map(str::to_string),
                    postings: ev
                        .wire
                        .postings
                        .iter()
                        .map(|p| (p.account.to_string(), p.asset.to_string(), p.delta))
                        .collect(),
                    items: ev
                        .wire
                        .items
                        .iter()
                        .map(|m| (m.item.to_string(), m.from.to_string(), m.to.to_string()))
                        .collect(),
                    unbalanced: !residuals(&ev.wire.postings).is_empty(),
                });
            }
            Err(m) => {
                let realm = m.realm.clone().unwrap_or_else(|| "default".into());
                if let (Some(sys), Some(seq), Some(tx)) = (&m.system, m.seq, &m.tx_id) {
                    streams
                        .entry((realm.clone(), sys.clone()))
                        .or_default()
                        .push((seq, i64::MAX, tx.clone()));
                }
                found.push(Found {
                    inv: Invariant::Malformed,
                    realm,
                    system: m.system,
                    tx_id: m.tx_id,
                    seq: m.seq,
                    subject: None,
                });
            }
        }
    }

    for ((realm, system), mut v) in streams {
        v.sort();
        for w in v.windows(2) {
            let ((s0, _, t0), (s1, _, t1)) = (&w[0], &w[1]);
            if s0 == s1 && t0 != t1 {
                found.push(Found {
                    inv: Invariant::SeqReuse,
                    realm: realm.clone(),
                    system: Some(system.clone()),
                    tx_id: Some(t1.clone()),
                    seq: Some(*s1),
                    subject: None,
                });
            }
            for missing in s0 + 1..*s1 {
                found.push(Found {
                    inv: Invariant::SeqGap,
                    realm: realm.clone(),
                    system: Some(system.clone()),
                    tx_id: None,
                    seq: Some(missing),
                    subject: None,
                });
            }
        }
    }

    events.sort_by_key(|e| (e.ts, e.order));
    let vel = policy
        .velocity
        .iter()
        .find(|v| v.asset == "gold")
        .expect("the shipped policy limits gold");
    let window = vel.window.as_nanos() as i64;
    let mut bal: HashMap<(String, String, String), i64> = HashMap::new();
    let mut live: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut burned: HashSet<(String, String)> = HashSet::new();
    let mut grants: HashSet<(String, String)> = HashSet::new();
    let mut escrow_items: HashMap<(String, String), i64> = HashMap::new();
    let mut escrow_since: BTreeMap<(String, String), (i64, String)> = BTreeMap::new();
    let mut stuck_reported: HashSet<(String, String)> = HashSet::new();
    let mut inflow: HashMap<Key, (Window, i64, bool)> = HashMap::new();
    let mut player_inflow: HashMap<Key, (Window, i64)> = HashMap::new();
    for e in &events {
        if e.unbalanced {
            found.push(Found::tx(Invariant::TxUnbalanced, e, None));
        }
        let mut worlds: BTreeSet<&str> = BTreeSet::new();
        for (a, _, _) in &e.postings {
            if is_world(a) {
                worlds.insert(a);
            }
        }
        for (_, f, t) in &e.items {
            for l in [f, t] {
                if is_world(l) {
                    worlds.insert(l);
                }
            }
        }
        for w in worlds {
            if !policy.faucet_allows(w, &e.system) {
                found.push(Found::tx(
                    Invariant::UnauthorizedFaucet,
                    e,
                    Some(w.to_string()),
                ));
            }
        }
        if let Some(g) = &e.grant
            && !grants.insert((e.realm.clone(), g.clone()))
        {
            found.push(Found::tx(Invariant::GrantReused, e, Some(g.clone())));
        }
        let mut touched_escrows: BTreeSet<String> = BTreeSet::new();
        let mut overdrawn_here: BTreeSet<String> = BTreeSet::new();
        for (a, asset, delta) in &e.postings {
            let b = bal
                .entry((e.realm.clone(), a.clone(), asset.clone()))
                .or_default();
            let old = *b;
            *b += delta;
            if !is_world(a) && old >= 0 && *b < 0 && overdrawn_here.insert(a.clone()) {
                found.push(Found::tx(Invariant::BalanceOverdraft, e, Some(a.clone())));
            }
            if policy.escrow_rule(a).is_some() {
                touched_escrows.insert(a.clone());
            }
            if asset == &vel.asset && a.starts_with(&vel.account_prefix) && *delta > 0 {
                let (q, sum, flagged) = inflow.entry((e.realm.clone(), a.clone())).or_default();
                q.push_back((e.ts, *delta));
                *sum += delta;
                while q.front().is_some_and(|&(t, _)| t <= e.ts - window) {
                    if let Some((_, d)) = q.pop_front() {
                        *sum -= d;
                    }
                }
                if *sum > vel.max_inflow && !*flagged {
                    *flagged = true;
                    found.push(Found::tx(Invariant::Velocity, e, Some(a.clone())));
                }
                let owner = a.split('/').next().unwrap_or(a).to_string();
                let (q, sum) = player_inflow.entry((e.realm.clone(), owner)).or_default();
                q.push_back((e.ts, *delta));
                *sum += delta;
                while q.front().is_some_and(|&(t, _)| t <= e.ts - window) {
                    if let Some((_, d)) = q.pop_front() {
                        *sum -= d;
                    }
                }
                if *sum <= vel.max_inflow {
                    stats.max_player_inflow = stats.max_player_inflow.max(*sum);
                }
            }
        }
        for (item, from, to) in &e.items {
            let key = (e.realm.clone(), item.clone());
            let locs = live.entry(key.clone()).or_default();
            let subject = Some(item.clone());
            if is_world(from) {
                if !locs.is_empty() {
                    found.push(Found::tx(Invariant::ItemDuplicated, e, subject));
                } else if burned.contains(&key) {
                    found.push(Found::tx(Invariant::ItemResurrected, e, subject));
                }
            } else if locs.is_empty() && burned.contains(&key) {
                found.push(Found::tx(Invariant::ItemResurrected, e, subject));
            } else if !locs.contains(from) {
                found.push(Found::tx(Invariant::ItemPhantomSource, e, subject));
            }
            if !is_world(from) {
                if let Some(i) = locs.iter().position(|l| l == from) {
                    locs.remove(i);
                } else if locs.len() == 1 {
                    locs.clear();
                }
                if policy.escrow_rule(from).is_some() {
                    *escrow_items
                        .entry((e.realm.clone(), from.clone()))
                        .or_default() -= 1;
                    touched_escrows.insert(from.clone());
                }
            }
            if is_world(to) {
                if locs.is_empty() {
                    burned.insert(key);
                }
            } else {
                locs.push(to.clone());
                burned.remove(&key);
                if policy.escrow_rule(to).is_some() {
                    *escrow_items
                        .entry((e.realm.clone(), to.clone()))
                        .or_default() += 1;
                    touched_escrows.insert(to.clone());
                }
            }
        }
        for acct in touched_escrows {
            let k = (e.realm.clone(), acct.clone());
            let holds = escrow_items.get(&k).is_some_and(|&n| n != 0)
                || bal
                    .iter()
                    .any(|((r, a, _), v)| r == &e.realm && a == &acct && *v != 0);
            if holds {
                escrow_since.entry(k).or_insert((e.ts, e.tx_id.clone()));
            } else if let Some((since, _)) = escrow_since.remove(&k) {
                let prefix = policy
                    .escrow_rule(&acct)
                    .map(|r| r.prefix.clone())
                    .unwrap_or_default();
                let h = stats.max_escrow_hold_ns.entry(prefix).or_default();
                *h = (*h).max(e.ts - since);
            }
        }
        for ((realm, acct), (since, tx)) in &escrow_since {
            let max = policy
                .escrow_rule(acct)
                .map_or(i64::MAX, |r| r.max_hold.as_nanos() as i64);
            if e.ts - since > max && stuck_reported.insert((realm.clone(), acct.clone())) {
                found.push(Found {
                    inv: Invariant::EscrowStuck,
                    realm: realm.clone(),
                    system: None,
                    tx_id: Some(tx.clone()),
                    seq: None,
                    subject: Some(acct.clone()),
                });
            }
        }
    }
    (found, stats)
}

fn matches(e: &Expected, f: &Found) -> bool {
    fn opt<T: PartialEq>(want: &Option<T>, got: &Option<T>) -> bool {
        want.is_none() || want == got
    }
    e.invariant == f.inv
        && e.realm == f.realm
        && opt(&e.system, &f.system)
        && opt(&e.tx_id, &f.tx_id)
        && opt(&e.seq, &f.seq)
        && opt(&e.subject, &f.subject)
}

/// Every expected fault found exactly once, and nothing else.
fn assert_oracle_agrees(cfg: &SimConfig) {
    let (lines, key) = run(cfg);
    let (mut found, _) = audit(&lines);
    let mut missing = Vec::new();
    for e in &key.faults {
        match found.iter().position(|f| matches(e, f)) {
            Some(i) => {
                found.remove(i);
            }
            None => missing.push(e.clone()),
        }
    }
    assert!(
        missing.is_empty() && found.is_empty(),
        "seed {} events {} players {} realms {}\nexpected but not found: {missing:#?}\nfound but not expected: {found:#?}",
        cfg.seed,
        cfg.events,
        cfg.players,
        cfg.realms
    );
}

// ----- the tests -------------------------------------------------------------------

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let mut c = cfg(7, 3_000, 40, 2);
    c.inject = every_fault(1);
    let (a, ka) = run(&c);
    let (b, kb) = run(&c);
    assert_eq!(a, b);
    assert_eq!(ka.faults, kb.faults);
    c.seed = 8;
    let (d, _) = run(&c);
    assert_ne!(a, d);
}

#[test]
fn noise_settings_do_not_change_what_the_world_commits() {
    let mut quiet = cfg(3, 2_000, 30, 1);
    quiet.noise = Noise::none();
    let (q, _) = run(&quiet);
    let (n, _) = run(&cfg(3, 2_000, 30, 1));
    let set = |lines: &[Vec<u8>]| {
        lines
            .iter()
            .map(|l| decode(l).unwrap().digest)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(set(&q), set(&n));
}

#[test]
fn every_clean_line_decodes_balanced() {
    let (lines, key) = run(&cfg(11, 5_000, 60, 2));
    assert_eq!(key.lines, lines.len());
    assert!(key.faults.is_empty());
    for l in &lines {
        let ev = decode(l).unwrap_or_else(|m| panic!("{}: {m:?}", String::from_utf8_lossy(l)));
        assert!(
            residuals(&ev.wire.postings).is_empty(),
            "{}",
            String::from_utf8_lossy(l)
        );
        assert!(!l.contains(&b'\n'));
    }
}

#[test]
fn clean_streams_are_gapless_from_one() {
    let (lines, _) = run(&cfg(12, 5_000, 60, 3));
    let mut streams: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for l in &lines {
        let ev = decode(l).unwrap();
        streams
            .entry((ev.realm().to_string(), ev.wire.system.to_string()))
            .or_default()
            .insert(ev.wire.tx_id.to_string(), ev.wire.seq);
    }
    assert_eq!(streams.len(), 36, "12 systems × 3 realms");
    for (k, txs) in streams {
        let mut seqs: Vec<u64> = txs.into_values().collect();
        seqs.sort();
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, want, "{k:?}");
    }
}

#[test]
fn all_twelve_systems_and_their_kinds_appear() {
    let (lines, _) = run(&cfg(13, 10_000, 200, 1));
    let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in &lines {
        let ev = decode(l).unwrap();
        kinds
            .entry(ev.wire.system.to_string())
            .or_default()
            .insert(ev.wire.kind.to_string());
    }
    let policy = Policy::builtin();
    for sys in &policy.expected_systems {
        assert!(kinds.contains_key(sys), "{sys} never published");
    }
    assert_eq!(kinds.len(), 12);
    for k in [
        "loot.drop",
        "quest.reward",
        "vendor.buy",
        "vendor.sell",
        "inventory.equip",
        "inventory.unequip",
        "bank.deposit",
        "bank.withdraw",
        "trade.open",
        "trade.settle",
        "trade.cancel",
        "mail.send",
        "mail.receive",
        "auction.list",
        "auction.buy",
        "auction.cancel",
        "craft.make",
        "guild.deposit",
        "guild.withdraw",
        "economy.repair",
        "economy.store_purchase",
        "character.discard",
        "heartbeat",
    ] {
        assert!(
            kinds.values().any(|s| s.contains(k)),
            "{k} never happened: {kinds:?}"
        );
    }
}

#[test]
fn parse_inject_accepts_and_rejects() {
    assert_eq!(
        parse_inject("item.duplicated=3"),
        Ok((Invariant::ItemDuplicated, 3))
    );
    assert_eq!(
        parse_inject(" stream.seq_gap = 0 "),
        Ok((Invariant::SeqGap, 0))
    );
    assert_eq!(
        parse_inject("economy.velocity"),
        Ok((Invariant::Velocity, 1))
    );
    for inv in Invariant::STREAM {
        assert_eq!(parse_inject(&format!("{}=2", inv.id())), Ok((inv, 2)));
    }
    let e = parse_inject("item.dupe=1").unwrap_err();
    assert!(
        e.contains("unknown fault class `item.dupe`") && e.contains("item.duplicated"),
        "{e}"
    );
    for recon in [
        "recon.missing=1",
        "recon.unexpected",
        "recon.value_mismatch=2",
    ] {
        let e = parse_inject(recon).unwrap_err();
        assert!(e.contains("reconciliation"), "{e}");
    }
    for bad in [
        "tx.unbalanced=",
        "tx.unbalanced=-1",
        "tx.unbalanced=x",
        "tx.unbalanced=1.5",
    ] {
        assert!(
            parse_inject(bad).unwrap_err().contains("whole number"),
            "{bad}"
        );
    }
}

#[test]
fn answer_key_has_exactly_the_requested_faults() {
    let mut c = cfg(21, 5_000, 100, 2);
    c.inject = every_fault(3);
    c.inject.push((Invariant::ItemDuplicated, 2));
    let (lines, key) = run(&c);
    for inv in Invariant::STREAM {
        let want = if inv == Invariant::ItemDuplicated {
            5
        } else {
            3
        };
        let got = key.faults.iter().filter(|f| f.invariant == inv).count();
        assert_eq!(got, want, "{inv}");
    }
    assert_eq!(key.lines, lines.len());
    let conflicts = key
        .faults
        .iter()
        .filter(|f| f.invariant == Invariant::TxConflict)
        .count();
    assert_eq!(key.lines, key.transactions + key.redeliveries + conflicts);
    let json = serde_json::to_string(&key).unwrap();
    let back: AnswerKey = serde_json::from_str(&json).unwrap();
    assert_eq!(back.faults, key.faults);
}

#[test]
fn faults_are_spread_and_never_in_the_first_fifty() {
    let mut c = cfg(22, 5_000, 100, 1);
    c.noise = Noise::none();
    c.inject = vec![(Invariant::TxUnbalanced, 40)];
    let (lines, key) = run(&c);
    let fault_txs: HashSet<&str> = key
        .faults
        .iter()
        .filter_map(|f| f.tx_id.as_deref())
        .collect();
    let positions: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| fault_txs.contains(decode(l).unwrap().wire.tx_id.as_ref()))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions.len(), 40);
    assert!(positions[0] >= 50, "{positions:?}");
    assert!(
        positions.iter().any(|&p| p < 2_500) && positions.iter().any(|&p| p > 2_500),
        "{positions:?}"
    );
}

#[test]
fn redeliveries_are_the_same_event_and_counted() {
    let mut c = cfg(31, 5_000, 60, 2);
    c.noise.redelivery_per_mille = 50;
    c.inject = vec![(Invariant::TxConflict, 2)];
    let (lines, key) = run(&c);
    let mut seen: HashMap<String, u64> = HashMap::new();
    let (mut same, mut different, mut respelled) = (0, 0, 0);
    let mut first_line: HashMap<String, Vec<u8>> = HashMap::new();
    for l in &lines {
        let ev = decode(l).unwrap();
        let tx = ev.wire.tx_id.to_string();
        match seen.get(&tx) {
            None => {
                seen.insert(tx.clone(), ev.digest);
                first_line.insert(tx, l.clone());
            }
            Some(&d) if d == ev.digest => {
                same += 1;
                if first_line[&tx] != *l {
                    respelled += 1;
                }
            }
            Some(_) => different += 1,
        }
    }
    assert_eq!(same, key.redeliveries);
    assert_eq!(different, 2);
    assert!(key.redeliveries > 100, "{}", key.redeliveries);
    assert!(
        respelled > key.redeliveries / 4 && respelled < key.redeliveries,
        "{respelled}"
    );
}

#[test]
fn redelivery_distance_is_bounded() {
    let mut c = cfg(32, 30_000, 200, 1);
    c.noise.redelivery_per_mille = 20;
    let (lines, _) = run(&c);
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut max_gap = 0;
    for (i, l) in lines.iter().enumerate() {
        let tx = decode(l).unwrap().wire.tx_id.to_string();
        match first.get(&tx) {
            Some(&j) => max_gap = max_gap.max(i - j),
            None => {
                first.insert(tx, i);
            }
        }
    }
    assert!(
        max_gap > 2_000,
        "some redeliveries come much later: {max_gap}"
    );
    assert!(max_gap < 25_000, "{max_gap}");
}

#[test]
fn reordering_stays_strictly_inside_half_the_window_and_happens() {
    for window_ms in [5_000u64, 1_000, 200] {
        let mut c = cfg(41, 8_000, 30, 2);
        c.noise.reorder_window = std::time::Duration::from_millis(window_ms);
        c.inject = every_fault(2);
        let (lines, _) = run(&c);
        let half = (window_ms * 1_000_000 / 2) as i64;
        let mut seen = HashSet::new();
        let mut newest = i64::MIN;
        let (mut inversions, mut stream_swaps) = (0, 0);
        let mut last_seq: HashMap<(String, String), u64> = HashMap::new();
        for l in &lines {
            let Ok(ev) = decode(l) else { continue };
            if !seen.insert(ev.wire.tx_id.to_string()) {
                continue;
            }
            if ev.ts.0 < newest {
                inversions += 1;
                assert!(
                    newest - ev.ts.0 < half,
                    "displaced by {} ns",
                    newest - ev.ts.0
                );
            }
            newest = newest.max(ev.ts.0);
            let k = (ev.realm().to_string(), ev.wire.system.to_string());
            if last_seq.get(&k).is_some_and(|&s| s > ev.wire.seq) {
                stream_swaps += 1;
            }
            let s = last_seq.entry(k).or_default();
            *s = (*s).max(ev.wire.seq);
        }
        assert!(inversions > 50, "window {window_ms}: {inversions}");
        assert!(stream_swaps > 5, "window {window_ms}: {stream_swaps}");
    }
}

#[test]
fn no_reorder_means_commit_order() {
    let mut c = cfg(42, 3_000, 30, 1);
    c.noise.reorder = false;
    let (lines, _) = run(&c);
    let mut seen = HashSet::new();
    let mut newest = i64::MIN;
    for l in &lines {
        let ev = decode(l).unwrap();
        if seen.insert(ev.wire.tx_id.to_string()) {
            assert!(ev.ts.0 > newest);
            newest = ev.ts.0;
        }
    }
}

#[test]
fn alternate_notations_are_the_same_instant_and_event() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let start = SimConfig::default().start;
    for k in 0..2_000i64 {
        let ts = Timestamp(start.0 + k * 7_919_123_000 + (k % 3) * 1_000);
        let s = alternate_ts(ts, &mut rng);
        assert_eq!(Timestamp::parse_rfc3339(&s), Ok(ts), "{s}");
    }
    let mut c = cfg(43, 500, 10, 1);
    c.noise = Noise::none();
    let (lines, _) = run(&c);
    let mut world_rng = ChaCha8Rng::seed_from_u64(6);
    for l in &lines {
        let a = decode(l).unwrap();
        let ev = sim_event_from(&a);
        for _ in 0..3 {
            let alt = reserialize(&ev, &mut world_rng);
            let b =
                decode(&alt).unwrap_or_else(|m| panic!("{}: {m:?}", String::from_utf8_lossy(&alt)));
            assert_eq!(
                a.digest,
                b.digest,
                "{}\n{}",
                String::from_utf8_lossy(l),
                String::from_utf8_lossy(&alt)
            );
        }
    }
}

/// Rebuilds the simulator's owned event from a decoded canonical line.
fn sim_event_from(v: &crate::core::event::ValidEvent<'_>) -> super::wire::SimEvent {
    use super::world::Sys;
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    super::wire::SimEvent {
        tx_id: v.wire.tx_id.to_string(),
        realm_idx: 0,
        realm: std::rc::Rc::from(v.realm()),
        sys: Sys::ALL
            .into_iter()
            .find(|s| s.name() == v.wire.system)
            .unwrap(),
        seq: v.wire.seq,
        ts: v.ts,
        kind: leak(&v.wire.kind),
        actor: v.wire.actor.as_deref().map(str::to_string),
        grant: v.wire.grant.as_deref().map(str::to_string),
        postings: v
            .wire
            .postings
            .iter()
            .map(|p| super::wire::Posting {
                account: p.account.to_string(),
                asset: leak(&p.asset),
                delta: p.delta,
            })
            .collect(),
        items: v
            .wire
            .items
            .iter()
            .map(|m| super::wire::Move {
                item: m.item.to_string(),
                from: m.from.to_string(),
                to: m.to.to_string(),
                template: leak(m.template.as_deref().unwrap_or("")),
            })
            .collect(),
    }
}

#[test]
fn clean_worlds_raise_nothing_and_stay_far_inside_the_limits() {
    let policy = Policy::builtin();
    let budget = policy.velocity[0].max_inflow / 2;
    for (seed, events, players, realms) in [
        (1, 8_000, 200, 1),
        (2, 8_000, 3, 1),
        (3, 6_000, 1, 2),
        (4, 6_000, 40, 3),
        (5, 20_000, 2, 1),
    ] {
        let (lines, key) = run(&cfg(seed, events, players, realms));
        let (found, stats) = audit(&lines);
        assert!(found.is_empty(), "seed {seed}: {found:#?}");
        assert!(key.faults.is_empty());
        assert!(
            stats.max_player_inflow <= budget,
            "seed {seed}: inflow {}",
            stats.max_player_inflow
        );
        for (prefix, hold) in &stats.max_escrow_hold_ns {
            let rule = policy.escrow_rule(prefix).unwrap();
            assert!(
                *hold * 10 < rule.max_hold.as_nanos() as i64,
                "seed {seed}: {prefix} held {hold} ns"
            );
        }
    }
}

#[test]
fn faulted_worlds_raise_exactly_the_answer_key() {
    for (seed, events, players, realms, each) in [
        (1, 5_000, 200, 1, 3),
        (2, 5_000, 20, 2, 3),
        (3, 3_000, 5, 3, 2),
        (4, 8_000, 100, 1, 5),
        (5, 2_000, 2, 1, 1),
    ] {
        let mut c = cfg(seed, events, players, realms);
        c.inject = every_fault(each);
        assert_oracle_agrees(&c);
    }
}

#[test]
fn faults_work_in_tiny_worlds() {
    for (events, players) in [(0, 1), (1, 1), (10, 1), (60, 2), (100, 1)] {
        let mut c = cfg(9, events, players, 1);
        c.inject = every_fault(1);
        let (_, key) = run(&c);
        assert_eq!(
            key.faults.len(),
            Invariant::STREAM.len(),
            "events {events} players {players}"
        );
        assert_oracle_agrees(&c);
    }
}

#[test]
fn escrow_stuck_runs_the_stream_past_the_limit() {
    let mut c = cfg(51, 1_000, 20, 2);
    c.inject = vec![(Invariant::EscrowStuck, 2)];
    let (lines, key) = run(&c);
    let last = lines
        .iter()
        .filter_map(|l| decode(l).ok())
        .map(|e| e.ts.0)
        .max()
        .unwrap();
    let span = last - c.start.0;
    assert!(span > 600 * 1_000_000_000, "stream spans {span} ns");
    assert_eq!(key.faults.len(), 2);
    assert_oracle_agrees(&c);
}

#[test]
fn score_matches_asserted_fields_only_and_counts_false_alarms() {
    use crate::core::finding::{Finding, Severity};
    let finding = |inv: Invariant, tx: &str, subject: Option<&str>| Finding {
        invariant: inv,
        severity: Severity::Critical,
        realm: "realm-1".into(),
        system: Some("loot".into()),
        tx_id: Some(tx.into()),
        seq: Some(9),
        subject: subject.map(str::to_string),
        message: String::new(),
        evidence: serde_json::Value::Null,
        detected_at: Timestamp(0),
        fingerprint: tx.into(),
    };
    let want = |inv: Invariant, tx: &str, subject: Option<&str>| Expected {
        invariant: inv,
        realm: "realm-1".into(),
        system: None,
        tx_id: Some(tx.into()),
        seq: None,
        subject: subject.map(str::to_string),
    };
    let findings = vec![
        finding(Invariant::ItemDuplicated, "a", Some("itm:1-1")),
        finding(Invariant::TxUnbalanced, "b", None),
        finding(Invariant::GrantReused, "c", Some("loot:corpse-1:slot-1")),
    ];
    let expected = vec![
        want(Invariant::ItemDuplicated, "a", Some("itm:1-1")),
        want(Invariant::TxUnbalanced, "b", None),
        want(Invariant::GrantReused, "c", Some("loot:corpse-2:slot-1")),
    ];
    let s = score(&expected, &findings);
    assert_eq!(s.found, 2);
    assert_eq!(s.missed, vec![&expected[2]]);
    assert_eq!(s.unexpected, vec![&findings[2]]);
    let s = score(&expected[..2], &findings[..2]);
    assert!(s.missed.is_empty() && s.unexpected.is_empty());
}

#[test]
fn duplication_patterns_raise_phantom_source_at_the_fork_tx() {
    for (seed, events, players, realms) in [(11, 3_000, 50, 1), (12, 2_000, 2, 2), (13, 200, 1, 1)]
    {
        let mut c = cfg(seed, events, players, realms);
        c.inject = vec![
            (Invariant::ItemDuplicated, 1),
            (Invariant::ItemResurrected, 1),
        ];
        c.duplications = Duplication::ALL.iter().map(|&d| (d, 2)).collect();
        let (_, key) = run(&c);
        assert_eq!(key.faults.len(), 6, "seed {seed}");
        let phantom = key
            .faults
            .iter()
            .filter(|e| e.invariant == Invariant::ItemPhantomSource)
            .count();
        assert_eq!(phantom, 4, "seed {seed}");
        assert_oracle_agrees(&c);
    }
}

#[test]
fn parse_fault_accepts_duplication_patterns_and_invariants() {
    assert_eq!(
        parse_fault("dup.mail_double_receive=3"),
        Ok((FaultClass::Duplication(Duplication::MailDoubleReceive), 3))
    );
    assert_eq!(
        parse_fault("dup.auction_cancel_buy"),
        Ok((FaultClass::Duplication(Duplication::AuctionCancelBuy), 1))
    );
    assert_eq!(
        parse_fault("item.duplicated=2"),
        Ok((FaultClass::Invariant(Invariant::ItemDuplicated), 2))
    );
    let e = parse_fault("dup.nope").unwrap_err();
    assert!(e.contains("dup.mail_double_receive"), "{e}");
    assert!(parse_fault("dup.auction_cancel_buy=x").is_err());
}
