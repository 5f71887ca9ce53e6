//! Files go missing from a data directory (issue 9, reproduction 6). A node whose WAL was
//! deleted — one segment or the whole `wal/` directory — must refuse to start rather than
//! come up empty and hand out revisions again from 1; `meridian wal reset` is the explicit,
//! honest way forward, and revisions keep increasing after it. A deleted `state.redb` is
//! rebuilt from a WAL that still holds index 1 onwards.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{free_port, http, run_to_exit, Node, BIN};

const KEYS: usize = 200;

fn put(node: &Node, key: &str, value: &str) -> u64 {
    let (status, body) = http("PUT", &node.url(&format!("/v1/kv/{key}")), Some(value.as_bytes().to_vec()));
    assert_eq!(status, 200, "PUT {key}: {}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["revision"].as_u64().unwrap()
}

/// Writes `KEYS` keys; returns the highest revision acknowledged.
fn write_keys(node: &Node) -> u64 {
    (0..KEYS).map(|i| put(node, &format!("k{i:03}"), &format!("value-{i}"))).max().unwrap()
}

fn keys_present(node: &Node) -> usize {
    let (status, body) = http("GET", &node.url("/v1/kv?limit=1000"), None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["items"].as_array().unwrap().len()
}

fn env_for(data: &Path, port: u16) -> Vec<(String, String)> {
    vec![
        ("MERIDIAN_DATA_DIR".into(), data.display().to_string()),
        ("MERIDIAN_HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
        ("MERIDIAN_CHECKPOINT_INTERVAL".into(), "1h".into()),
    ]
}

/// Starts the binary on `data` and expects it to refuse: returns (exit code, stderr). If it
/// comes up instead, shows what it serves (the silent loss this file is about) and fails.
fn start_expecting_refusal(data: &Path, earlier_max_revision: u64) -> (i32, String) {
    let port = free_port();
    let log = data.with_extension("refusal.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.env_clear();
    for (k, v) in env_for(data, port) {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), std::fs::read_to_string(&log).unwrap());
        }
        if let Ok(200) = common::http_get_status(&format!("http://127.0.0.1:{port}/health")) {
            let (_, list) = http("GET", &format!("http://127.0.0.1:{port}/v1/kv?limit=1000"), None);
            let keys = serde_json::from_slice::<serde_json::Value>(&list).unwrap()["items"].as_array().unwrap().len();
            let (_, body) = http("PUT", &format!("http://127.0.0.1:{port}/v1/kv/after-loss"), Some(b"x".to_vec()));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the node started without its WAL: {keys} keys (of {KEYS} acknowledged), and the next PUT answered {} \
                 (the highest revision acknowledged before was {earlier_max_revision})",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(Instant::now() < deadline, "the node neither started nor exited within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wal_reset(data: &Path) -> (i32, String, String) {
    run_to_exit(&["wal", "reset", "--data-dir", data.to_str().unwrap()], &[], data.parent().unwrap())
}

fn segments(wal: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(wal).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wal")).collect()
}

fn assert_refusal_names_the_way_out(code: i32, err: &str, data: &Path) {
    assert_eq!(code, 1, "refusal exit code; stderr:\n{err}");
    let wal = data.join("wal");
    assert!(err.contains(&wal.display().to_string()), "the message must name the WAL path {}:\n{err}", wal.display());
    assert!(err.contains("meridian restore"), "the message must point at `meridian restore`:\n{err}");
    assert!(err.contains("meridian wal reset --data-dir"), "the message must point at `meridian wal reset`:\n{err}");
}

/// The reproduction: kill -9 before any checkpoint, then lose the WAL. The state holds none
/// of the 200 writes durably, so the node must refuse, and `wal reset` must say records were
/// lost and still never reuse a revision.
#[test]
fn a_wal_deleted_after_kill_9_refuses_to_start_and_wal_reset_never_reuses_a_revision() {
    for what in ["segment", "directory"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut node = Node::start(&data, &[("MERIDIAN_CHECKPOINT_INTERVAL", "1h")]);
        let max_rev = write_keys(&node);
        node.kill9();
        let wal = data.join("wal");
        match what {
            "segment" => {
                let segs = segments(&wal);
                assert_eq!(segs.len(), 1, "{segs:?}");
                std::fs::remove_file(&segs[0]).unwrap();
            }
            _ => std::fs::remove_dir_all(&wal).unwrap(),
        }

        let (code, err) = start_expecting_refusal(&data, max_rev);
        assert_refusal_names_the_way_out(code, &err, &data);
        eprintln!("start refused after deleting the {what} (exit {code}):\n{}", err.lines().filter(|l| l.starts_with("meridian:") || !l.contains(" ERROR ")).collect::<Vec<_>>().join("\n"));
        // Refusing twice gives the same answer: the first refusal changed nothing.
        let (code, err) = start_expecting_refusal(&data, max_rev);
        assert_refusal_names_the_way_out(code, &err, &data);

        let (code, out, err) = wal_reset(&data);
        assert_eq!(code, 0, "wal reset ({what}): {out}\n{err}");
        assert!(out.contains("lost"), "wal reset must say records were lost ({what}): {out}");
        eprintln!("wal reset after deleting the {what}:\n{out}");

        node.restart();
        let present = keys_present(&node);
        let rev = put(&node, "after-reset", "v");
        assert!(rev > max_rev, "{what}: the first revision after the reset is {rev}, not above {max_rev}");
        eprintln!("{what}: {present} of {KEYS} keys survived in the state; next revision {rev} > {max_rev}");
        assert_eq!(node.terminate(), 0);
    }
}

/// A clean stop checkpoints, so the state holds every write; the WAL is deleted afterwards.
/// Still refused (the node cannot know the WAL held nothing more); after `wal reset` every
/// key is there and revisions continue.
#[test]
fn a_wal_deleted_after_a_clean_stop_refuses_and_wal_reset_keeps_every_checkpointed_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &[("MERIDIAN_CHECKPOINT_INTERVAL", "1h")]);
    let max_rev = write_keys(&node);
    assert_eq!(node.terminate(), 0);
    std::fs::remove_dir_all(data.join("wal")).unwrap();

    let (code, err) = start_expecting_refusal(&data, max_rev);
    assert_refusal_names_the_way_out(code, &err, &data);

    let (code, out, err) = wal_reset(&data);
    assert_eq!(code, 0, "{out}\n{err}");
    node.restart();
    assert_eq!(keys_present(&node), KEYS);
    let (status, body) = http("GET", &node.url("/v1/kv/k123"), None);
    assert_eq!((status, body.as_slice()), (200, &b"value-123"[..]));
    let rev = put(&node, "after-reset", "v");
    assert!(rev > max_rev, "the first revision after the reset is {rev}, not above {max_rev}");
    // A healthy WAL has nothing to reset.
    assert_eq!(node.terminate(), 0);
    let (code, out, err) = wal_reset(&data);
    assert_ne!(code, 0, "wal reset on a healthy WAL must refuse: {out}");
    assert!(err.contains("nothing to reset"), "{err}");
}

/// state.redb deleted, the WAL intact from index 1: the state is rebuilt from the WAL.
#[test]
fn a_deleted_state_is_rebuilt_from_a_wal_that_starts_at_index_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &[("MERIDIAN_CHECKPOINT_INTERVAL", "1h")]);
    let max_rev = write_keys(&node);
    node.kill9();
    std::fs::remove_file(data.join("state.redb")).unwrap();
    node.restart();
    assert_eq!(keys_present(&node), KEYS);
    let rev = put(&node, "after", "v");
    assert!(rev > max_rev, "{rev} <= {max_rev}");
}

/// state.redb deleted after a checkpoint purged the WAL below it: the WAL alone cannot
/// rebuild the state, so the node refuses and says so.
#[test]
fn a_deleted_state_with_a_purged_wal_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &[("MERIDIAN_CHECKPOINT_INTERVAL", "1h")]);
    let max_rev = write_keys(&node);
    assert_eq!(node.terminate(), 0); // checkpoints and purges the WAL
    std::fs::remove_file(data.join("state.redb")).unwrap();
    let (code, err) = start_expecting_refusal(&data, max_rev);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("purged") && err.contains("restore"), "{err}");
}
