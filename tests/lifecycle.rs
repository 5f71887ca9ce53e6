//! The node's life outside the happy path: first start with defaults, a second process on
//! the same data directory, SIGTERM, backup and restore, a corrupted WAL byte, garbage on the
//! HTTP port, and the CLI tools.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{http, http_json, run_to_exit, Node};

fn put(node: &Node, key: &str, value: &str) {
    let (status, body) = http("PUT", &node.url(&format!("/v1/kv/{key}")), Some(value.as_bytes().to_vec()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

fn get(node: &Node, key: &str) -> Option<Vec<u8>> {
    let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
    (status == 200).then_some(body)
}

#[test]
fn readme_first_command_starts_a_node_with_defaults() {
    // The README runs the binary with no settings; here the only one is a loopback address
    // (the default 0.0.0.0 is not allowed on test machines). Port 7474, data in ./data.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node { child: None, port: 7474, data_dir: None, cwd: Some(dir.path().into()), env: vec![], log: dir.path().join("log"), file_size_limit_blocks: None };
    node.spawn();
    node.wait_ready();
    // The README's curl lines, as written there.
    let o = std::process::Command::new("curl").args(["-s", "-X", "PUT", "localhost:7474/v1/kv/greeting", "-d", "hello"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"revision\""), "{o:?}");
    let o = std::process::Command::new("curl").args(["-s", "localhost:7474/v1/kv/greeting"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello");
    assert!(dir.path().join("data/state.redb").exists());
    assert!(dir.path().join("data/wal").is_dir());
    assert_eq!(node.terminate(), 0);
}

#[test]
fn second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data, &[]);
    let port = common::free_port().to_string();
    let (code, _, err) = run_to_exit(
        &[],
        &[("MERIDIAN_DATA_DIR", data.to_str().unwrap()), ("MERIDIAN_HTTP_ADDR", &format!("127.0.0.1:{port}"))],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("in use by another Meridian process"), "{err}");
    // The first node is unharmed.
    put(&node, "still", "here");
}

#[test]
fn sigterm_stops_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("data"), &[]);
    for i in 0..200 {
        put(&node, &format!("k{i}"), &format!("v{i}"));
    }
    let before = http_json("GET", &node.url("/admin/digest"));
    assert_eq!(node.terminate(), 0, "log:\n{}", node.log_text());
    assert!(node.log_text().contains("shutdown complete"));
    node.restart();
    assert_eq!(http_json("GET", &node.url("/admin/digest")), before);
    assert_eq!(get(&node, "k199").as_deref(), Some(&b"v199"[..]));
}

#[test]
fn backup_restores_into_a_new_data_dir_with_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    for i in 0..300 {
        put(&node, &format!("b/{i:04}"), &"x".repeat(i));
    }
    let (status, backup) = http("GET", &node.url("/admin/backup"), None);
    assert_eq!(status, 200);
    let file = dir.path().join("meridian.backup");
    std::fs::write(&file, &backup).unwrap();

    let restored = dir.path().join("restored");
    let (code, out, err) = run_to_exit(&["restore", "--from", file.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()], &[], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored 300 keys"), "{out}");
    let copy = Node::start(&restored, &[]);
    assert_eq!(http_json("GET", &copy.url("/admin/digest"))["sha256"], http_json("GET", &node.url("/admin/digest"))["sha256"]);
    // The restored node takes writes after the restored position.
    put(&copy, "after", "restore");
    assert_eq!(get(&copy, "b/0299").unwrap().len(), 299);

    // Restoring over existing data, or from a cut backup, is refused.
    let (code, _, err) = run_to_exit(&["restore", "--from", file.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()], &[], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("in use") || err.contains("already holds"), "{err}");
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &backup[..backup.len() / 2]).unwrap();
    let other = dir.path().join("other");
    let (code, _, err) = run_to_exit(&["restore", "--from", cut.to_str().unwrap(), "--data-dir", other.to_str().unwrap()], &[], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("damaged") || err.contains("snapshot"), "{err}");
    assert!(!other.join("state.redb").exists(), "a failed restore must leave no state behind");
}

#[test]
fn corrupted_wal_byte_stops_the_node_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small segments and no checkpoint during the test, so the WAL keeps several segments.
    let mut node = Node::start(&data, &[("MERIDIAN_WAL_SEGMENT_BYTES", "8192"), ("MERIDIAN_CHECKPOINT_INTERVAL", "1h")]);
    for i in 0..100 {
        put(&node, &format!("c{i}"), &"y".repeat(200));
    }
    node.kill9();
    let mut segs: Vec<_> = std::fs::read_dir(data.join("wal")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
    segs.sort();
    assert!(segs.len() >= 3, "expected several segments, got {segs:?}");
    // Flip one payload byte in the middle of the first segment: not a torn tail.
    let victim = &segs[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();

    let (code, out, err) = run_to_exit(&["wal", "verify", data.join("wal").to_str().unwrap()], &[], dir.path());
    assert_ne!(code, 0, "verify must fail: {out}");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("offset"), "verify output lacks file/offset: {err}");

    let port = common::free_port().to_string();
    let (code, _, err) = run_to_exit(&[], &[("MERIDIAN_DATA_DIR", data.to_str().unwrap()), ("MERIDIAN_HTTP_ADDR", &format!("127.0.0.1:{port}"))], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains(name) && err.contains("offset"), "start-up error lacks file/offset: {err}");
}

#[test]
fn garbage_on_the_http_port_does_not_hurt_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    for junk in [&b"\x00\xff\x13garbage\r\n\r\n"[..], b"GET / HTTP/9.9\r\n\r\n", b"PUT /v1/kv/x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nabc", &[0x16, 0x03, 0x01, 0x00, 0xa5][..]] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(junk);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    put(&node, "alive", "yes");
    assert_eq!(get(&node, "alive").as_deref(), Some(&b"yes"[..]));
}

#[test]
fn cli_reads_and_writes_keys_and_dumps_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No checkpoint during the test: one would purge the WAL this test dumps (a loaded
    // machine made the default 1 s interval pass once, and the dump came out empty).
    let mut node = Node::start(&data, &[("MERIDIAN_CHECKPOINT_INTERVAL", "1h")]);
    let url = node.url("");
    let (code, out, err) = run_to_exit(&["kv", "--url", &url, "put", "cfg/a b", "hello world"], &[], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revision"), "{out}");
    let (code, out, _) = run_to_exit(&["kv", "--url", &url, "get", "cfg/a b"], &[], dir.path());
    assert_eq!((code, out.trim()), (0, "hello world"));
    let (code, out, _) = run_to_exit(&["kv", "--url", &url, "list", "--prefix", "cfg/"], &[], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("cfg/a b"), "{out}");
    let (code, _, _) = run_to_exit(&["kv", "--url", &url, "delete", "cfg/a b"], &[], dir.path());
    assert_eq!(code, 0);
    let (code, _, err) = run_to_exit(&["kv", "--url", &url, "get", "cfg/a b"], &[], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    let (code, _, _) = run_to_exit(&["healthcheck", "--url", &url], &[], dir.path());
    assert_eq!(code, 0);
    node.kill9();
    let (code, _, _) = run_to_exit(&["healthcheck", "--url", &url], &[], dir.path());
    assert_eq!(code, 1, "healthcheck must fail when the node is down");
    let (code, out, err) = run_to_exit(&["wal", "dump", data.join("wal").to_str().unwrap()], &[], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() >= 2, "{out}");
    let (code, out, _) = run_to_exit(&["wal", "verify", data.join("wal").to_str().unwrap()], &[], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("ok") || out.contains("torn"), "{out}");
}
