//! Each stream invariant, both ways: the violation is found (once, at its root cause,
//! with evidence), and the legitimate look-alike is not.

use assayer::core::engine::{Engine, Outcome};
use assayer::core::finding::{Finding, Invariant};
use assayer::core::policy::Policy;
use assayer::core::time::Timestamp;
use serde_json::{Value, json};

const T0: i64 = 1_795_000_000_000; // ms since epoch, 2026-11-18

#[derive(Clone)]
struct E(Value);

fn e(tx: &str, system: &str, seq: u64, t_ms: i64) -> E {
    E(json!({
        "v": 1, "tx_id": tx, "realm": "eu-1", "system": system, "seq": seq,
        "ts": Timestamp::from_unix_millis(T0 + t_ms).to_rfc3339(), "kind": format!("{system}.test"),
    }))
}

impl E {
    fn post(mut self, account: &str, asset: &str, delta: i64) -> E {
        let p = json!({"account": account, "asset": asset, "delta": delta});
        self.0
            .as_object_mut()
            .unwrap()
            .entry("postings")
            .or_insert(json!([]))
            .as_array_mut()
            .unwrap()
            .push(p);
        self
    }
    fn mv(mut self, item: &str, from: &str, to: &str) -> E {
        let m = json!({"item": item, "from": from, "to": to});
        self.0
            .as_object_mut()
            .unwrap()
            .entry("items")
            .or_insert(json!([]))
            .as_array_mut()
            .unwrap()
            .push(m);
        self
    }
    fn set(mut self, k: &str, v: Value) -> E {
        self.0[k] = v;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap()
    }
}

/// A gold loot drop to `player` (system loot, allowed faucet).
fn loot_gold(tx: &str, seq: u64, t: i64, player: &str, amount: i64) -> E {
    e(tx, "loot", seq, t)
        .post("world:loot", "gold", -amount)
        .post(player, "gold", amount)
}

fn loot_item(tx: &str, seq: u64, t: i64, item: &str, to: &str) -> E {
    e(tx, "loot", seq, t)
        .mv(item, "world:loot", to)
        .set("grant", json!(format!("loot:{tx}")))
}

struct Audit {
    engine: Engine,
    findings: Vec<Finding>,
    outcomes: Vec<Outcome>,
}

fn audit_with(policy: Policy, events: &[E]) -> Audit {
    let mut engine = Engine::new(policy);
    let mut out = Vec::new();
    let now = Timestamp::from_unix_millis(T0);
    let mut outcomes = Vec::new();
    for ev in events {
        outcomes.push(engine.ingest(&ev.bytes(), now, &mut out));
    }
    engine.finish(now, &mut out);
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.fingerprint.clone()));
    Audit {
        engine,
        findings: out,
        outcomes,
    }
}

fn audit(events: &[E]) -> Audit {
    audit_with(Policy::builtin(), events)
}

impl Audit {
    fn only(&self, inv: Invariant) -> &Finding {
        assert_eq!(
            self.findings.len(),
            1,
            "expected exactly one {inv} finding, got {:#?}",
            self.findings
        );
        assert_eq!(self.findings[0].invariant, inv, "{:#?}", self.findings);
        &self.findings[0]
    }
    fn clean(&self) {
        assert!(
            self.findings.is_empty(),
            "expected no finding, got {:#?}",
            self.findings
        );
    }
    fn balance(&self, account: &str, asset: &str) -> i128 {
        self.engine
            .ledger()
            .balance(self.engine.interner(), "eu-1", account, asset)
    }
    fn locations(&self, item: &str) -> Vec<String> {
        let mut l = self
            .engine
            .ledger()
            .item_locations(self.engine.interner(), "eu-1", item);
        l.sort();
        l
    }
}

// ---------------------------------------------------------------- tx.unbalanced

#[test]
fn unbalanced_event_is_found_with_its_residual() {
    let a = audit(&[e("t1", "loot", 1, 0)
        .post("player:1", "gold", 100)
        .post("world:loot", "gold", -90)
        .post("player:2", "gems", 5)
        .post("world:loot", "gems", -5)]);
    let f = a.only(Invariant::TxUnbalanced);
    assert_eq!(f.tx_id.as_deref(), Some("t1"));
    assert_eq!(f.evidence["residual"]["gold"], "10");
    assert!(f.evidence["residual"].get("gems").is_none());
}

#[test]
fn faucet_balanced_by_world_account_is_not_unbalanced_and_world_may_go_negative() {
    let a = audit(&[loot_gold("t1", 1, 0, "player:1", 500)]);
    a.clean();
    assert_eq!(a.balance("world:loot", "gold"), -500);
    assert_eq!(a.balance("player:1", "gold"), 500);
}

// ---------------------------------------------------------------- tx.conflict

#[test]
fn conflicting_tx_id_is_found_and_the_second_version_is_not_applied() {
    let first = loot_gold("t1", 1, 0, "player:1", 100);
    let second = loot_gold("t1", 1, 0, "player:1", 900);
    let a = audit(&[first, second]);
    let f = a.only(Invariant::TxConflict);
    assert_eq!(f.tx_id.as_deref(), Some("t1"));
    assert_eq!(f.evidence["applied"], "first");
    assert_eq!(f.evidence["second"]["postings"][1]["delta"], 900);
    assert_eq!(a.balance("player:1", "gold"), 100);
    assert_eq!(a.outcomes, vec![Outcome::Accepted, Outcome::Conflict]);
}

#[test]
fn redelivery_identical_or_reserialized_is_counted_not_flagged() {
    let ev = loot_gold("t1", 1, 0, "player:1", 100);
    // Same content: other key order, other ts notation, postings reordered.
    let mut other = ev.0.clone();
    other["ts"] = json!(
        Timestamp::from_unix_millis(T0)
            .to_rfc3339()
            .replace('Z', "+00:00")
    );
    other["postings"].as_array_mut().unwrap().reverse();
    let a = audit(&[ev.clone(), ev.clone(), E(other), ev]);
    a.clean();
    assert_eq!(a.engine.stats().redelivered, 3);
    assert_eq!(a.balance("player:1", "gold"), 100);
}

// ---------------------------------------------------------------- item.duplicated

#[test]
fn minting_an_existing_item_is_a_duplication_naming_both_copies() {
    let a = audit(&[
        loot_item("t1", 1, 0, "itm:1", "player:1/bag"),
        e("t2", "vendor", 1, 10).mv("itm:1", "world:vendor", "player:2/bag"),
    ]);
    let f = a.only(Invariant::ItemDuplicated);
    assert_eq!(f.subject.as_deref(), Some("itm:1"));
    assert_eq!(f.tx_id.as_deref(), Some("t2"));
    assert_eq!(f.evidence["existing_locations"], json!(["player:1/bag"]));
    assert_eq!(a.locations("itm:1"), vec!["player:1/bag", "player:2/bag"]);
}

#[test]
fn copies_of_a_duplicated_item_move_on_without_new_findings() {
    let a = audit(&[
        loot_item("t1", 1, 0, "itm:1", "player:1/bag"),
        loot_item("t2", 2, 10, "itm:1", "player:2/bag"),
        e("t3", "inventory", 1, 20).mv("itm:1", "player:1/bag", "player:1/equipped"),
        e("t4", "mail", 1, 30).mv("itm:1", "player:2/bag", "mail:9"),
        e("t5", "mail", 2, 40).mv("itm:1", "mail:9", "player:3/bag"),
        e("t6", "character", 1, 50).mv("itm:1", "player:3/bag", "world:deleted"),
    ]);
    a.only(Invariant::ItemDuplicated);
    assert_eq!(a.locations("itm:1"), vec!["player:1/equipped"]);
}

// ---------------------------------------------------------------- item.phantom_source

#[test]
fn moving_an_unknown_item_is_a_phantom_source() {
    let a = audit(&[e("t1", "trade", 1, 0).mv("itm:x", "player:1/bag", "player:2/bag")]);
    let f = a.only(Invariant::ItemPhantomSource);
    assert_eq!(f.evidence["reason"], "unknown item");
    assert_eq!(a.locations("itm:x"), vec!["player:2/bag"]);
}

#[test]
fn moving_an_item_from_where_it_is_not_is_a_phantom_source() {
    let a = audit(&[
        loot_item("t1", 1, 0, "itm:1", "player:1/bag"),
        e("t2", "trade", 1, 10).mv("itm:1", "player:9/bag", "player:2/bag"),
    ]);
    let f = a.only(Invariant::ItemPhantomSource);
    assert_eq!(f.evidence["known_locations"], json!(["player:1/bag"]));
}

#[test]
fn equip_arriving_before_its_loot_drop_within_the_window_is_not_a_phantom() {
    let a = audit(&[
        e("t2", "inventory", 1, 1_000).mv("itm:1", "player:1/bag", "player:1/equipped"),
        e("t3", "bank", 1, 2_000),
        loot_item("t1", 1, 900, "itm:1", "player:1/bag"),
        e("t4", "bank", 2, 9_000),
    ]);
    a.clean();
    assert_eq!(a.locations("itm:1"), vec!["player:1/equipped"]);
}

#[test]
fn dependency_arriving_after_the_window_is_a_phantom() {
    // The loot drop shows up 20 s of stream time late: beyond the 5 s window.
    let a = audit(&[
        e("t2", "inventory", 1, 1_000).mv("itm:1", "player:1/bag", "player:1/equipped"),
        e("t3", "bank", 1, 21_000),
        loot_item("t1", 1, 900, "itm:1", "player:1/bag"),
    ]);
    let kinds: Vec<_> = a.findings.iter().map(|f| f.invariant).collect();
    assert!(kinds.contains(&Invariant::ItemPhantomSource), "{kinds:?}");
}

// ---------------------------------------------------------------- item.resurrected

#[test]
fn moving_a_burned_item_is_a_resurrection() {
    let a = audit(&[
        loot_item("t1", 1, 0, "itm:1", "player:1/bag"),
        e("t2", "vendor", 1, 10).mv("itm:1", "player:1/bag", "world:vendor"),
        e("t3", "trade", 1, 20).mv("itm:1", "player:1/bag", "player:2/bag"),
    ]);
    let f = a.only(Invariant::ItemResurrected);
    assert_eq!(f.tx_id.as_deref(), Some("t3"));
    assert_eq!(a.locations("itm:1"), vec!["player:2/bag"]);
}

#[test]
fn burning_is_final_without_findings() {
    let a = audit(&[
        loot_item("t1", 1, 0, "itm:1", "player:1/bag"),
        e("t2", "vendor", 1, 10).mv("itm:1", "player:1/bag", "world:vendor"),
    ]);
    a.clean();
    assert!(a.locations("itm:1").is_empty());
}

// ---------------------------------------------------------------- grant.reused

#[test]
fn a_grant_redeemed_twice_is_found_even_with_fresh_item_ids() {
    let a = audit(&[
        loot_item("t1", 1, 0, "itm:1", "player:1/bag").set("grant", json!("loot:corpse-1:slot-2")),
        loot_item("t2", 2, 10, "itm:2", "player:1/bag").set("grant", json!("loot:corpse-1:slot-2")),
    ]);
    let f = a.only(Invariant::GrantReused);
    assert_eq!(f.subject.as_deref(), Some("loot:corpse-1:slot-2"));
    assert_eq!(f.evidence["first_tx_id"], "t1");
    assert_eq!(f.tx_id.as_deref(), Some("t2"));
}

#[test]
fn a_redelivered_grant_is_not_reused() {
    let ev = loot_item("t1", 1, 0, "itm:1", "player:1/bag");
    audit(&[ev.clone(), ev]).clean();
}

// ---------------------------------------------------------------- economy.unauthorized_faucet

#[test]
fn a_system_minting_from_a_faucet_it_does_not_own_is_found() {
    let a = audit(&[e("t1", "trade", 1, 0)
        .post("world:loot", "gold", -100)
        .post("player:1", "gold", 100)]);
    let f = a.only(Invariant::UnauthorizedFaucet);
    assert_eq!(f.subject.as_deref(), Some("world:loot"));
    assert_eq!(f.evidence["allowed_systems"], json!(["loot"]));
}

#[test]
fn an_unlisted_world_account_is_unauthorized_for_everyone() {
    let a = audit(&[e("t1", "loot", 1, 0).mv("itm:1", "world:gm_console", "player:1/bag")]);
    assert_eq!(
        a.only(Invariant::UnauthorizedFaucet).subject.as_deref(),
        Some("world:gm_console")
    );
}

#[test]
fn every_shipped_faucet_is_allowed_for_its_system() {
    let pairs = [
        ("loot", "world:loot"),
        ("vendor", "world:vendor"),
        ("crafting", "world:craft"),
        ("quest", "world:quest"),
        ("auction", "world:auction_fee"),
        ("economy", "world:repair"),
        ("economy", "world:store"),
        ("character", "world:deleted"),
    ];
    let events: Vec<E> = pairs
        .iter()
        .enumerate()
        .map(|(i, (sys, acct))| {
            let seq = 1 + pairs[..i].iter().filter(|(s, _)| s == sys).count() as u64;
            e(&format!("t{i}"), sys, seq, i as i64)
                .post(acct, "gold", -1)
                .post("player:1", "gold", 1)
        })
        .collect();
    audit(&events).clean();
}

// ---------------------------------------------------------------- balance.overdraft

#[test]
fn overdraft_is_raised_once_when_crossing_below_zero() {
    let a = audit(&[
        loot_gold("t1", 1, 0, "player:1", 100),
        e("t2", "economy", 1, 10)
            .post("player:1", "gold", -150)
            .post("world:repair", "gold", 150),
        e("t3", "economy", 2, 20)
            .post("player:1", "gold", -10)
            .post("world:repair", "gold", 10),
    ]);
    let f = a.only(Invariant::BalanceOverdraft);
    assert_eq!(f.tx_id.as_deref(), Some("t2"));
    assert_eq!(f.evidence["balance_before"], "100");
    assert_eq!(f.evidence["balance_after"], "-50");
    assert_eq!(a.balance("player:1", "gold"), -60);
}

#[test]
fn recovering_and_crossing_again_is_a_new_root_cause() {
    let a = audit(&[
        e("t1", "economy", 1, 0)
            .post("player:1", "gold", -1)
            .post("world:repair", "gold", 1),
        loot_gold("t2", 1, 10, "player:1", 5),
        e("t3", "economy", 2, 20)
            .post("player:1", "gold", -10)
            .post("world:repair", "gold", 10),
    ]);
    assert_eq!(a.findings.len(), 2, "{:#?}", a.findings);
}

#[test]
fn two_phase_trade_through_escrow_is_clean() {
    let a = audit(&[
        loot_gold("t0", 1, 0, "player:1", 100),
        loot_item("t00", 2, 0, "itm:1", "player:2/bag"),
        e("t1", "trade", 1, 10)
            .post("player:1", "gold", -100)
            .post("trade:88", "gold", 100)
            .mv("itm:1", "player:2/bag", "trade:88"),
        e("t2", "trade", 2, 1_000)
            .post("trade:88", "gold", -100)
            .post("player:2", "gold", 100)
            .mv("itm:1", "trade:88", "player:1/bag"),
    ]);
    a.clean();
    assert_eq!(a.balance("trade:88", "gold"), 0);
    assert_eq!(a.locations("itm:1"), vec!["player:1/bag"]);
}

#[test]
fn a_credit_from_another_system_arriving_late_within_the_window_prevents_overdraft() {
    // The debit (economy) is delivered before the loot credit it depends on.
    let a = audit(&[
        e("t2", "economy", 1, 2_000)
            .post("player:1", "gold", -50)
            .post("world:repair", "gold", 50),
        loot_gold("t1", 1, 1_000, "player:1", 100),
    ]);
    a.clean();
}

// ---------------------------------------------------------------- stream.seq_gap

#[test]
fn a_missing_seq_is_a_gap_once_the_window_has_passed() {
    let a = audit(&[
        e("a1", "bank", 1, 0),
        e("a2", "bank", 2, 100),
        e("a4", "bank", 4, 300),
        e("b1", "mail", 1, 20_000),
    ]);
    let f = a.only(Invariant::SeqGap);
    assert_eq!(f.seq, Some(3));
    assert_eq!(f.system.as_deref(), Some("bank"));
    assert_eq!(f.evidence["next_tx_id"], "a4");
    assert_eq!(f.evidence["missing_count"], 1);
}

#[test]
fn out_of_order_seqs_within_the_window_are_no_gap() {
    audit(&[
        e("a1", "bank", 1, 0),
        e("a3", "bank", 3, 200),
        e("a2", "bank", 2, 100),
        e("a5", "bank", 5, 400),
        e("a4", "bank", 4, 300),
        e("b1", "mail", 1, 60_000),
    ])
    .clean();
}

#[test]
fn a_gap_still_open_at_end_of_input_is_declared() {
    let a = audit(&[e("a1", "bank", 1, 0), e("a3", "bank", 3, 10)]);
    assert_eq!(a.only(Invariant::SeqGap).seq, Some(2));
}

/// A daemon's session start: the broker may hand over newer messages before the
/// previous session's returned deliveries. While held, the newer events do not move the
/// watermark past the returned ones, so they are no gap; a gap that is still missing
/// when the hold ends is declared then.
#[test]
fn a_held_watermark_waits_for_returned_deliveries_and_still_declares_real_gaps() {
    let now = Timestamp::from_unix_millis(T0);
    let mut engine = Engine::new(Policy::builtin());
    let mut out = Vec::new();
    engine.ingest(&e("a1", "bank", 1, 0).bytes(), now, &mut out);
    engine.hold();
    // Newer events first, 20–30 s of ts ahead: far beyond the 5 s reorder window.
    engine.ingest(&e("a4", "bank", 4, 20_000).bytes(), now, &mut out);
    engine.ingest(&e("m1", "mail", 1, 30_000).bytes(), now, &mut out);
    assert!(engine.reorder_depth() >= 2, "held events stay buffered");
    // Then the returned ones.
    engine.ingest(&e("a2", "bank", 2, 100).bytes(), now, &mut out);
    engine.resume(now, &mut out);
    assert!(!engine.is_held());
    let gaps: Vec<_> = out
        .iter()
        .filter(|f| f.invariant == Invariant::SeqGap)
        .collect();
    assert_eq!(gaps.len(), 1, "{out:#?}");
    assert_eq!(
        gaps[0].seq,
        Some(3),
        "seq 2 arrived while held; seq 3 never did"
    );
    assert_eq!(engine.stats().findings[&Invariant::SeqGap], 1);

    // Without the hold, the same arrival order raises a gap for seq 2 as well.
    let mut engine = Engine::new(Policy::builtin());
    let mut out = Vec::new();
    for ev in [
        e("a1", "bank", 1, 0),
        e("a4", "bank", 4, 20_000),
        e("m1", "mail", 1, 30_000),
        e("a2", "bank", 2, 100),
    ] {
        engine.ingest(&ev.bytes(), now, &mut out);
    }
    let seqs: Vec<_> = out
        .iter()
        .filter(|f| f.invariant == Invariant::SeqGap)
        .map(|f| f.seq)
        .collect();
    assert_eq!(seqs, [Some(2)], "{out:#?}");
}

#[test]
fn heartbeats_advance_the_sequence() {
    audit(&[
        e("a1", "bank", 1, 0),
        e("hb", "bank", 2, 10).set("kind", json!("heartbeat")),
        e("a3", "bank", 3, 20),
    ])
    .clean();
}

// ---------------------------------------------------------------- stream.seq_reuse

#[test]
fn a_seq_used_by_a_second_tx_id_is_reuse_and_still_applied() {
    let a = audit(&[
        loot_gold("t1", 1, 0, "player:1", 10),
        loot_gold("t2", 1, 5, "player:1", 20),
    ]);
    let f = a.only(Invariant::SeqReuse);
    assert_eq!(f.tx_id.as_deref(), Some("t2"));
    assert_eq!(f.seq, Some(1));
    assert_eq!(a.balance("player:1", "gold"), 30);
}

// ---------------------------------------------------------------- escrow.stuck

#[test]
fn escrow_holding_value_past_its_limit_is_stuck() {
    let a = audit(&[
        loot_gold("t0", 1, 0, "player:1", 100),
        e("t1", "trade", 1, 10)
            .post("player:1", "gold", -100)
            .post("trade:5", "gold", 100),
        e("hb", "bank", 1, 11 * 60_000),
    ]);
    let f = a.only(Invariant::EscrowStuck);
    assert_eq!(f.subject.as_deref(), Some("trade:5"));
    assert_eq!(f.tx_id.as_deref(), Some("t1"));
}

#[test]
fn escrow_released_in_time_or_not_yet_due_is_not_stuck() {
    audit(&[
        loot_gold("t0", 1, 0, "player:1", 100),
        e("t1", "trade", 1, 10)
            .post("player:1", "gold", -100)
            .post("trade:5", "gold", 100),
        e("t2", "trade", 2, 60_000)
            .post("trade:5", "gold", -100)
            .post("player:2", "gold", 100),
        e("t3", "mail", 1, 60_000)
            .post("player:2", "gold", -1)
            .post("mail:1", "gold", 1),
        e("hb", "bank", 1, 11 * 60_000),
    ])
    .clean();
}

// ---------------------------------------------------------------- economy.velocity

#[test]
fn inflow_above_the_limit_within_the_window_is_velocity_once() {
    let a = audit(&[
        loot_gold("t1", 1, 0, "player:1", 3_000_000),
        loot_gold("t2", 2, 1_000, "player:1", 3_000_000),
        loot_gold("t3", 3, 2_000, "player:1", 3_000_000),
    ]);
    let f = a.only(Invariant::Velocity);
    assert_eq!(f.tx_id.as_deref(), Some("t2"));
    assert_eq!(f.subject.as_deref(), Some("player:1"));
}

#[test]
fn the_same_inflow_spread_over_hours_is_fine() {
    audit(&[
        loot_gold("t1", 1, 0, "player:1", 3_000_000),
        loot_gold("t2", 2, 3_700_000, "player:1", 3_000_000),
    ])
    .clean();
}

// ---------------------------------------------------------------- event.malformed

#[test]
fn a_malformed_event_is_set_aside_with_its_reason_and_its_seq_is_not_a_gap() {
    let bad = loot_gold("t2", 2, 10, "player:1", 5).set("ts", json!("last tuesday"));
    let a = audit(&[
        loot_gold("t1", 1, 0, "player:1", 5),
        bad,
        loot_gold("t3", 3, 20, "player:1", 5),
    ]);
    let f = a.only(Invariant::Malformed);
    assert_eq!(f.tx_id.as_deref(), Some("t2"));
    assert_eq!(f.evidence["field"], "ts");
    assert_eq!(a.balance("player:1", "gold"), 10);
}

#[test]
fn garbage_bytes_are_malformed_never_a_panic() {
    let mut engine = Engine::new(Policy::builtin());
    let mut out = Vec::new();
    for bytes in [
        &b"\xff\xfe"[..],
        b"[]",
        b"null",
        b"{",
        b"{\"v\":1}",
        &[b'{'; 70_000][..],
    ] {
        assert_eq!(
            engine.ingest(bytes, Timestamp(0), &mut out),
            Outcome::Malformed
        );
    }
    assert_eq!(out.len(), 6);
    assert!(
        out.iter()
            .all(|f| f.invariant == Invariant::Malformed && f.realm == "unknown")
    );
}

// ---------------------------------------------------------------- memory bounds

#[test]
fn a_redelivery_older_than_the_memory_is_counted_stale_not_reapplied() {
    let mut policy = Policy::builtin();
    policy.stream.dedup_window_txs = 2;
    let first = loot_gold("t1", 1, 0, "player:1", 7);
    let a = audit_with(
        policy,
        &[
            first.clone(),
            loot_gold("t2", 2, 10, "player:1", 7),
            loot_gold("t3", 3, 20, "player:1", 7),
            loot_gold("t4", 4, 9_000, "player:1", 7),
            first,
        ],
    );
    a.clean();
    assert_eq!(a.engine.stats().stale, 1);
    assert_eq!(a.balance("player:1", "gold"), 28);
}

#[test]
fn findings_carry_the_spec_fields_and_stable_fingerprints() {
    let evs = [
        loot_item("t1", 1, 0, "itm:1", "player:1/bag"),
        loot_item("t2", 2, 10, "itm:1", "player:2/bag"),
    ];
    let a = audit(&evs);
    let b = audit(&evs);
    let f = a.only(Invariant::ItemDuplicated);
    assert_eq!(f.fingerprint, b.findings[0].fingerprint);
    let v = serde_json::to_value(f).unwrap();
    for k in [
        "invariant",
        "severity",
        "realm",
        "system",
        "tx_id",
        "seq",
        "subject",
        "message",
        "evidence",
        "detected_at",
        "fingerprint",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["invariant"], "item.duplicated");
}
