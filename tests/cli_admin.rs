//! The operator's CLI against real nodes: `meridian status` (table and JSON), `promote`,
//! `switchover`, `backup`, `digest`; a node that is down (exit 3), a wrong or missing token
//! (exit 1, saying so), a refused operation, and `status` across an HA pair after a failover.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ha::{wait_role, HaOpts, HaPair};
use common::{free_port, http, run_to_exit, Node};

/// The HA test measures a failover; keep it apart from the other process tests here.
static SERIAL: Mutex<()> = Mutex::new(());

const TOKEN: &str = "admin-s3cret";

fn cli(args: &[&str], url: &str, token: Option<&str>, cwd: &Path) -> (i32, String, String) {
    let mut env = vec![("MERIDIAN_URL", url)];
    if let Some(t) = token {
        env.push(("MERIDIAN_ADMIN_TOKEN", t));
    }
    run_to_exit(args, &env, cwd)
}

fn status_json(url: &str, cwd: &Path) -> serde_json::Value {
    let (code, out, err) = cli(&["status", "-o", "json"], url, Some(TOKEN), cwd);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status -o json printed no JSON ({e}): {out}"))
}

/// `(node, role, reachable)` for every node `status` lists.
fn roles(v: &serde_json::Value) -> Vec<(String, String, bool)> {
    let mut r: Vec<_> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap().to_owned(), n["role"].as_str().unwrap().to_owned(), n["reachable"].as_bool().unwrap()))
        .collect();
    r.sort();
    r
}

fn wait_status(url: &str, cwd: &Path, want: &[(&str, &str, bool)]) -> serde_json::Value {
    let want: Vec<(String, String, bool)> = want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), *c)).collect();
    let start = Instant::now();
    loop {
        let v = status_json(url, cwd);
        if roles(&v) == want {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "status never showed {want:?}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn standalone_status_digest_backup_and_refusals() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(&dir.path().join("d"), &[("MERIDIAN_CLUSTER_NODE_ID", "solo"), ("MERIDIAN_ADMIN_TOKEN", TOKEN)]);
    for i in 0..50 {
        assert_eq!(http("PUT", &n.url(&format!("/v1/kv/key{i}")), Some(vec![b'x'; 1000])).0, 200);
    }
    let url = n.url("");

    let (code, out, err) = cli(&["status"], &url, Some(TOKEN), dir.path());
    assert_eq!(code, 0, "{err}");
    eprintln!("{out}");
    let line = out.lines().find(|l| l.starts_with("solo")).unwrap_or_else(|| panic!("no row for the node: {out}"));
    assert!(line.contains("primary") && line.contains("healthy") && line.contains("50/50"), "{line}");
    assert!(out.lines().nth(1).is_some_and(|h| h.starts_with("NODE") && h.contains("ROLE") && h.contains("LAG")), "{out}");
    let v = status_json(&url, dir.path());
    assert_eq!((v["mode"].as_str(), v["nodes"].as_array().unwrap().len()), (Some("standalone"), 1));

    let (code, out, err) = cli(&["digest"], &url, Some(TOKEN), dir.path());
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["keys"], 50, "{d}");

    // A backup that restores into a node holding the same state.
    let file = dir.path().join("b.backup");
    let (code, _, err) = cli(&["backup", "--out", file.to_str().unwrap()], &url, Some(TOKEN), dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("backup: wrote") && !dir.path().join("b.backup.partial").exists(), "{err}");
    let restored = dir.path().join("restored");
    let (code, out, err) = run_to_exit(&["restore", "--from", file.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()], &[], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let r = Node::start(&restored, &[]);
    let (_, out, _) = cli(&["digest"], &r.url(""), None, dir.path());
    let d2: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d2["sha256"], d["sha256"], "the restored backup holds other state");

    // Wrong and missing token: refused, exit 1, saying which.
    let (code, _, err) = cli(&["digest"], &url, Some("wrong"), dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("refused the admin token") && err.contains("MERIDIAN_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = cli(&["backup", "--out", dir.path().join("x").to_str().unwrap()], &url, None, dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("needs an admin token") && !dir.path().join("x").exists(), "{err}");

    // An operation the mode cannot do: refused with the node's reason.
    let (code, _, err) = cli(&["promote"], &url, Some(TOKEN), dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("not supported in standalone mode"), "{err}");

    // A node that is down: exit 3, saying it cannot be reached.
    let down = format!("http://127.0.0.1:{}", free_port());
    for cmd in [&["status"][..], &["promote"], &["switchover"], &["digest"], &["backup", "--out", "y"]] {
        let (code, _, err) = cli(cmd, &down, Some(TOKEN), dir.path());
        assert_eq!(code, 3, "{cmd:?}: {err}");
        assert!(err.contains("cannot reach") && err.contains(&down), "{cmd:?}: {err}");
    }
}

#[test]
fn ha_status_switchover_promote_and_status_after_a_failover() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", extra: vec![("MERIDIAN_ADMIN_TOKEN", TOKEN.to_owned())], ..HaOpts::default() });
    let cwd = pair.dir.path().to_path_buf();
    let (a, b) = (pair.a.url(""), pair.b.url(""));
    // Each node's view names both, whichever is asked.
    wait_status(&a, &cwd, &[("node-a", "primary", true), ("node-b", "standby", true)]);
    let v = wait_status(&b, &cwd, &[("node-a", "primary", true), ("node-b", "standby", true)]);
    assert_eq!(v["nodes"][0]["sync_mode"], "sync");
    let (_, table, _) = cli(&["status"], &b, Some(TOKEN), &cwd);
    eprintln!("{table}");
    assert!(table.lines().any(|l| l.starts_with("node-a") && l.contains("primary")) && table.lines().any(|l| l.starts_with("node-b") && l.contains("standby")), "{table}");

    // Switchover, asked of the primary.
    let (code, out, err) = cli(&["switchover"], &a, Some(TOKEN), &cwd);
    assert_eq!(code, 0, "{out}{err}");
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    wait_status(&a, &cwd, &[("node-a", "standby", true), ("node-b", "primary", true)]);

    // Promote, asked of the standby (in sync: no force needed); the old primary is fenced and follows.
    let (code, out, err) = cli(&["promote"], &a, Some(TOKEN), &cwd);
    assert_eq!(code, 0, "{out}{err}");
    wait_role(&pair.a, "primary", Duration::from_secs(15));
    wait_role(&pair.b, "standby", Duration::from_secs(15));
    // A takeover starts with the old primary out of sync; a write it receives brings it back,
    // and only an in-sync standby takes over by itself in sync mode.
    let start = Instant::now();
    loop {
        assert_eq!(http("PUT", &pair.a.url("/v1/kv/after-promote"), Some(b"x".to_vec())).0, 200);
        let v = status_json(&a, &cwd);
        if v["nodes"][0]["node_id"] == "node-a" && v["nodes"][0]["in_sync"] == true {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "node-b never got back in sync: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Failover: kill -9 the primary; the survivor shows itself primary and the other down.
    pair.a.kill9();
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    let v = wait_status(&b, &cwd, &[("node-a", "unknown", false), ("node-b", "primary", true)]);
    let (code, table, err) = cli(&["status"], &b, Some(TOKEN), &cwd);
    assert_eq!(code, 0, "{err}");
    eprintln!("after the failover:\n{table}");
    assert!(table.lines().any(|l| l.starts_with("node-a") && l.contains("down")), "{table}");
    assert!(v["nodes"][0]["epoch"].as_u64().unwrap() >= 3, "three role changes, three epochs: {v}");
}
