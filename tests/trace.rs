//! Support investigation against the real PostgreSQL (issue #6): a reference world with
//! every duplication pattern is journaled by the daemon's own journaling code
//! (`daemon::import`), then `trace item` must name each planted fork transaction and
//! every copy, `trace account` must agree with the engine's balances, and the
//! `findings` and `trace` commands must work end to end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use assayer::adapters::journal::{AccountQuery, item_report};
use assayer::adapters::journal::{FindingFilter, Journal};
use assayer::core::engine::Engine;
use assayer::core::finding::Invariant;
use assayer::core::policy::Policy;
use assayer::core::provenance::{ForkKind, counterparties};
use assayer::core::time::Timestamp;
use assayer::sim::{self, Duplication, SimConfig};
use common::TestDb;
use std::time::Duration;

const GROUP: &str = "support.test";

fn world() -> (Vec<Vec<u8>>, sim::AnswerKey, SimConfig) {
    let cfg = SimConfig {
        seed: 606,
        events: 4_000,
        players: 40,
        realms: 2,
        inject: vec![
            (Invariant::ItemDuplicated, 2),
            (Invariant::ItemResurrected, 2),
            (Invariant::BalanceOverdraft, 2),
        ],
        duplications: vec![
            (Duplication::MailDoubleReceive, 2),
            (Duplication::AuctionCancelBuy, 2),
        ],
        ..SimConfig::default()
    };
    let mut lines = Vec::new();
    let key = sim::generate(&cfg, &mut |l: &[u8]| lines.push(l.to_vec()));
    (lines, key, cfg)
}

/// The engine after the whole stream, reorder window drained (as the import leaves it).
fn finished_engine(lines: &[Vec<u8>]) -> Engine {
    let mut engine = Engine::new(Policy::builtin());
    let mut out = Vec::new();
    for l in lines {
        engine.ingest(l, Timestamp(0), &mut out);
    }
    engine.finish(Timestamp(0), &mut out);
    engine
}

async fn journaled(db: &TestDb, lines: &[Vec<u8>]) -> Journal {
    let pg = db.pg(GROUP, 2).await;
    let mut input: Vec<u8> = lines.join(&b'\n');
    input.push(b'\n');
    let report = assayer::daemon::import::import(
        &pg,
        &Policy::builtin(),
        &mut input.as_slice(),
        500,
        Timestamp::now(),
    )
    .await
    .expect("import");
    assert_eq!(report.lines as usize, lines.len());
    Journal::connect(
        &db.url,
        GROUP,
        2,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await
    .expect("journal")
}

/// Every (tx_id, from, to) move of `item` in the raw stream, once per tx_id.
fn raw_moves(lines: &[Vec<u8>], realm: &str, item: &str) -> Vec<(String, String, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for l in lines {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(l) else {
            continue;
        };
        if v["realm"].as_str().unwrap_or("default") != realm {
            continue;
        }
        let tx = v["tx_id"].as_str().unwrap_or_default().to_string();
        for m in v["items"].as_array().into_iter().flatten() {
            if m["item"] == item && seen.insert(tx.clone()) {
                out.push((
                    tx.clone(),
                    m["from"].as_str().unwrap_or_default().to_string(),
                    m["to"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_item_names_the_fork_tx_and_every_copy_for_each_duplication_pattern() {
    let (lines, key, _) = world();
    let engine = finished_engine(&lines);
    let db = TestDb::create().await;
    let j = journaled(&db, &lines).await;

    let mut by_pattern: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &key.faults {
        let pattern = match e.invariant {
            Invariant::ItemDuplicated => "double mint",
            Invariant::ItemResurrected => "resurrection after burn",
            Invariant::ItemPhantomSource => "second release",
            _ => continue,
        };
        let item = e.subject.as_deref().expect("item faults name the item");
        let fork_tx = e.tx_id.as_deref().expect("item faults name the tx");
        let r = item_report(&j, Some(e.realm.as_str()), item)
            .await
            .expect("trace");
        let t = &r.trace;
        let ctx = format!("{pattern} of {item} in {}", e.realm);

        // The journal holds every move of the item exactly once, redeliveries or not.
        let raw = raw_moves(&lines, &e.realm, item);
        assert_eq!(t.steps.len(), raw.len(), "{ctx}: moves");
        let fork = t
            .fork_point()
            .unwrap_or_else(|| panic!("{ctx}: no fork found"));
        assert_eq!(fork.tx_id, fork_tx, "{ctx}: fork tx");
        assert_eq!(t.forks.len(), 1, "{ctx}: forks {:?}", t.forks);
        assert!(
            r.fork_findings
                .iter()
                .any(|f| f.invariant == e.invariant.id() && f.tx_id.as_deref() == Some(fork_tx)),
            "{ctx}: the finding that flagged the fork: {:?}",
            r.fork_findings
        );

        let mut live: Vec<String> = t.live_copies().map(|c| c.location.clone()).collect();
        live.sort();
        match e.invariant {
            Invariant::ItemDuplicated => {
                assert_eq!(fork.kind, ForkKind::DoubleMint, "{ctx}");
                // The engine keeps every copy of a double mint: it must agree.
                let mut held = engine
                    .ledger()
                    .item_locations(engine.interner(), &e.realm, item);
                held.sort();
                assert_eq!(live, held, "{ctx}: live copies");
                assert_eq!(live.len(), 2, "{ctx}");
            }
            Invariant::ItemResurrected => {
                assert_eq!(fork.kind, ForkKind::Resurrection, "{ctx}");
                assert_eq!(t.copies.len(), 2, "{ctx}");
                assert!(
                    t.copies[fork.parent].burned,
                    "{ctx}: the original was burned"
                );
                let held = engine
                    .ledger()
                    .item_locations(engine.interner(), &e.realm, item);
                assert_eq!(live, held, "{ctx}: live copies");
            }
            _ => {
                assert_eq!(fork.kind, ForkKind::SecondRelease, "{ctx}");
                // Two releases out of the same escrow: each destination holds a copy
                // (the item is frozen afterwards).
                let (_, from, _) = raw
                    .iter()
                    .find(|(tx, _, _)| tx == fork_tx)
                    .expect("fork move in the raw stream");
                let mut want: Vec<String> = raw
                    .iter()
                    .filter(|(_, f, _)| f == from)
                    .map(|(_, _, to)| to.clone())
                    .collect();
                want.sort();
                assert_eq!(want.len(), 2, "{ctx}: two releases of {from}");
                assert_eq!(live, want, "{ctx}: live copies");
                let kind = &t.steps[fork.step].kind;
                assert!(
                    kind == "mail.receive" || kind == "auction.buy",
                    "{ctx}: fork kind {kind}"
                );
                let name = if kind == "mail.receive" {
                    "mail double receive"
                } else {
                    "auction cancel/buy race"
                };
                *by_pattern.entry(name).or_default() += 1;
                assert!(!t.taint.is_empty(), "{ctx}: taint");
                continue;
            }
        }
        *by_pattern.entry(pattern).or_default() += 1;
    }
    for p in [
        "double mint",
        "resurrection after burn",
        "mail double receive",
        "auction cancel/buy race",
    ] {
        assert_eq!(
            by_pattern.get(p).copied(),
            Some(2),
            "{p} traced: {by_pattern:?}"
        );
    }
}

/// Counterparty totals of `account` in `realm` recomputed from the raw stream (each
/// tx_id once): (counterparty, asset) → (received, sent, transactions).
fn raw_counterparties(
    lines: &[Vec<u8>],
    realm: &str,
    account: &str,
) -> BTreeMap<(String, String), (i64, i64, u64)> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<(String, String), (i64, i64, u64)> = BTreeMap::new();
    for l in lines {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(l) else {
            continue;
        };
        if v["realm"].as_str().unwrap_or("default") != realm
            || !seen.insert(v["tx_id"].as_str().unwrap_or_default().to_string())
        {
            continue;
        }
        let legs: Vec<(String, String, i64)> = v["postings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["account"].as_str().unwrap_or_default().to_string(),
                    p["asset"].as_str().unwrap_or_default().to_string(),
                    p["delta"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        for c in counterparties(&legs)
            .iter()
            .filter(|c| c.account == account)
        {
            let e = out
                .entry((c.counterparty.to_string(), c.asset.to_string()))
                .or_default();
            if c.amount > 0 {
                e.0 += c.amount;
            } else {
                e.1 -= c.amount;
            }
            e.2 += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_account_agrees_with_the_engine_and_finds_the_overdraft() {
    let (lines, key, _) = world();
    let engine = finished_engine(&lines);
    let db = TestDb::create().await;
    let j = journaled(&db, &lines).await;

    let overdrafts: Vec<_> = key
        .faults
        .iter()
        .filter(|e| e.invariant == Invariant::BalanceOverdraft)
        .collect();
    assert_eq!(overdrafts.len(), 2);
    for e in overdrafts {
        let account = e.subject.as_deref().expect("overdraft names the account");
        let t = j
            .account(&AccountQuery {
                realm: Some(e.realm.as_str()),
                top: 5,
                counterparties: 1_000,
                history: 30,
                ..AccountQuery::new(account)
            })
            .await
            .expect("trace account");
        // Rolled-up balances agree with the engine's ledger...
        assert!(!t.balances.is_empty());
        for b in &t.balances {
            let held = engine
                .ledger()
                .balance(engine.interner(), &e.realm, account, &b.asset);
            assert_eq!(b.balance, held, "{account} {}", b.asset);
        }
        // ... and with the running balance counted back over the newest postings.
        assert_eq!(t.history.len() as u64, t.postings.min(30));
        for b in &t.balances {
            let newest = t.history.iter().rev().find(|p| p.row.asset == b.asset);
            if let Some(p) = newest {
                assert_eq!(p.balance, b.balance, "{account} {}", b.asset);
            }
        }
        for w in t
            .history
            .windows(2)
            .filter(|w| w[0].row.asset == w[1].row.asset)
        {
            assert_eq!(w[1].balance - w[0].balance, i128::from(w[1].row.delta));
        }
        let crossed: Vec<&str> = t.below_zero.iter().map(|p| p.row.tx_id.as_str()).collect();
        assert!(
            crossed.contains(&e.tx_id.as_deref().unwrap()),
            "{account}: crossings {crossed:?}, expected {:?}",
            e.tx_id
        );
        assert!(t.below_zero.iter().all(|p| p.balance < 0));
        // Counterparties: every one, with the totals the raw stream implies.
        let got: BTreeMap<(String, String), (i64, i64, u64)> = t
            .counterparties
            .iter()
            .map(|c| {
                (
                    (c.account.clone(), c.asset.clone()),
                    (c.received, c.sent, c.transactions),
                )
            })
            .collect();
        assert!(!got.is_empty(), "{account}: counterparties");
        assert_eq!(t.counterparties_total as usize, got.len());
        assert_eq!(
            got,
            raw_counterparties(&lines, &e.realm, account),
            "{account}"
        );
        assert!(t.largest_inflows.len() <= 5);
        for w in t.largest_inflows.windows(2) {
            assert!(w[0].delta >= w[1].delta);
        }
    }
}

fn assayer(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(args)
        .args(["--database-url", &db.url, "--group", GROUP])
        .output()
        .expect("run assayer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_findings_commands_end_to_end() {
    let (lines, key, _) = world();
    let db = TestDb::create().await;
    let j = journaled(&db, &lines).await;
    let e = key
        .faults
        .iter()
        .find(|e| e.invariant == Invariant::ItemPhantomSource)
        .expect("a second release");
    let item = e.subject.clone().unwrap();
    let fork_tx = e.tx_id.clone().unwrap();

    // trace item: table, json, dot.
    let (ok, table, err) = assayer(&db, &["trace", "item", &item, "--realm", &e.realm]);
    assert!(ok, "{err}");
    assert!(table.contains(&format!("FORK POINT: {fork_tx}")), "{table}");
    assert!(table.contains("item.phantom_source"), "{table}");
    let (ok, json, err) = assayer(&db, &["trace", "item", &item, "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["forks"][0]["tx_id"], fork_tx.as_str());
    assert_eq!(v["item"], item.as_str());
    let (ok, dot, err) = assayer(&db, &["trace", "item", &item, "--format", "dot"]);
    assert!(ok, "{err}");
    assert!(
        dot.starts_with("digraph") && dot.contains("c0 -> c1"),
        "{dot}"
    );
    let (ok, _, err) = assayer(&db, &["trace", "item", "itm:no-such-item"]);
    assert!(!ok && err.contains("not in the journal"), "{err}");

    // trace account.
    let buyer = "player:1";
    let (ok, acct, err) = assayer(&db, &["trace", "account", buyer, "--asset", "gold"]);
    assert!(ok, "{err}");
    assert!(
        acct.contains("largest inflows") && acct.contains("counterparties"),
        "{acct}"
    );

    // findings list with filters, show by prefix, ack.
    let all = j
        .count_findings(&FindingFilter::default())
        .await
        .expect("count");
    assert!(all > 0);
    let (ok, list, err) = assayer(
        &db,
        &[
            "findings",
            "list",
            "--invariant",
            "item.phantom_source",
            "--format",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list).expect("json list");
    assert_eq!(
        rows.len(),
        key.faults
            .iter()
            .filter(|f| f.invariant == Invariant::ItemPhantomSource)
            .count()
    );
    assert!(
        rows.iter()
            .all(|r| r["invariant"] == "item.phantom_source" && r["status"] == "open")
    );
    let fp = rows[0]["fingerprint"].as_str().unwrap().to_string();
    let (ok, show, err) = assayer(&db, &["findings", "show", &fp[..10]]);
    assert!(ok, "{err}");
    assert!(show.contains(&fp) && show.contains("evidence"), "{show}");
    let (ok, _, err) = assayer(&db, &["findings", "show", "zzzz"]);
    assert!(!ok && err.contains("no finding"), "{err}");
    let (ok, _, err) = assayer(&db, &["findings", "list", "--severity", "huge"]);
    assert!(!ok && err.contains("huge"), "{err}");
    let (ok, _, err) = assayer(&db, &["findings", "list", "--since", "yesterday-ish"]);
    assert!(!ok && err.contains("--since"), "{err}");

    let (ok, acked, err) = assayer(
        &db,
        &[
            "findings",
            "ack",
            &fp[..10],
            "--by",
            "alice",
            "--reason",
            "ticket 42",
            "--format",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let a: serde_json::Value = serde_json::from_str(&acked).expect("json");
    assert_eq!(a["status"], "acknowledged");
    assert_eq!(a["status_by"], "alice");
    assert_eq!(a["status_reason"], "ticket 42");
    assert!(a["status_at"].is_string());
    let (ok, list, err) = assayer(
        &db,
        &[
            "findings",
            "list",
            "--status",
            "acknowledged",
            "--since",
            "1h",
            "--format",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list).expect("json list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["fingerprint"], fp.as_str());
    let (ok, _, err) = assayer(&db, &["findings", "ack", &fp, "--by", "", "--reason", "x"]);
    assert!(!ok && err.contains("--by"), "{err}");
}
