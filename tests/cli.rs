//! The command line as a user meets it: exit codes, formats, errors that say what to do.

use std::path::PathBuf;
use std::process::{Command, Output};

fn assayer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(args)
        .env_remove("ASSAYER_AMQP_URL")
        .output()
        .expect("run assayer")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("assayer-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn audit_of_a_clean_world_exits_0_and_says_go() {
    let dir = tmp("clean");
    let world = dir.join("w.ndjson");
    let out = assayer(&[
        "sim",
        "--seed",
        "4",
        "--events",
        "3000",
        "--out",
        world.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = assayer(&["audit", "--input", world.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "no findings, nothing on stdout (ndjson in a pipe)"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("verdict: GO") && err.contains("redeliveries"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn audit_with_blocking_findings_exits_2_and_matches_the_answer_key() {
    let dir = tmp("faulty");
    let world = dir.join("w.ndjson");
    let key = dir.join("key.json");
    let out = assayer(&[
        "sim",
        "--seed",
        "9",
        "--events",
        "4000",
        "--inject",
        "item.duplicated=2",
        "--inject",
        "escrow.stuck",
        "--out",
        world.to_str().unwrap(),
        "--answer-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = assayer(&[
        "audit",
        "--input",
        world.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json array");
    let key: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    assert_eq!(findings.len(), key["faults"].as_array().unwrap().len());
    let dupes: Vec<_> = findings
        .iter()
        .filter(|f| f["invariant"] == "item.duplicated")
        .collect();
    assert_eq!(dupes.len(), 2);
    assert!(text(&out.stderr).contains("verdict: NO-GO"));

    let out = assayer(&[
        "audit",
        "--input",
        world.to_str().unwrap(),
        "--format",
        "table",
    ]);
    let table = text(&out.stdout);
    assert!(
        table.contains("item.duplicated") && table.contains("critical"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn audit_reads_stdin_and_reports_malformed_lines_with_their_line_number() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_assayer"))
        .args(["audit", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"\n{\"v\":1,\"tx_id\":\"a\",\"system\":\"bank\",\"seq\":1,\"ts\":\"2026-11-27T08:00:00Z\",\"kind\":\"heartbeat\"}\nnot json at all\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    // A malformed event is minor: it does not block.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let f: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(f["invariant"], "event.malformed");
    assert_eq!(f["evidence"]["line"], 3);
    assert!(
        f["evidence"]["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
}

#[test]
fn failures_of_the_tool_exit_1_with_a_clear_message() {
    let out = assayer(&["audit", "--input", "/nonexistent/events.ndjson"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot open input /nonexistent/events.ndjson"),
        "{err}"
    );

    let dir = tmp("policy");
    std::fs::write(dir.join("policy.toml"), "[stream]\nreorder_window = 5\n").unwrap();
    let out = assayer(&["audit", "--input", "-", "--policy", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("policy.toml:2: stream.reorder_window: unknown field"),
        "{err}"
    );

    let out = assayer(&["audit", "--input", "x", "--format", "yaml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad flags exit 1: 2 means blocking findings"
    );
    let out = assayer(&["sim", "--inject", "item.dupe=1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("item.dupe"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sim_is_deterministic() {
    let a = assayer(&["sim", "--seed", "5", "--events", "500"]);
    let b = assayer(&["sim", "--seed", "5", "--events", "500"]);
    let c = assayer(&["sim", "--seed", "6", "--events", "500"]);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
}

#[test]
fn demo_runs_without_services_and_finds_every_planted_fault() {
    let out = assayer(&["demo", "--events", "5000"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let s = text(&out.stdout);
    assert!(s.contains("planted faults found, 0 false alarm(s)"), "{s}");
    assert!(s.contains("NO-GO"), "{s}");
}
