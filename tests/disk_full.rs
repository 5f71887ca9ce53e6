//! The disk fills up under load. Simulated per process with a file size limit (`ulimit -f`):
//! past it, the WAL's or redb's writes fail with EFBIG exactly where they would fail with
//! ENOSPC on a full disk. The node must refuse further writes with a clear `unavailable`
//! error, keep running and serving reads, and after a restart with room again hold every
//! write it acknowledged and take new ones.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;

use common::{http, Node};

const WRITERS: usize = 8;
/// Per writer; 8 × 1500 × 4 KiB = 48 MiB, far past the limit, so the loop is bounded.
const MAX_WRITES: usize = 1500;
/// 4 MiB per file, in 512-byte blocks.
const LIMIT_BLOCKS: u64 = 8192;

#[test]
fn a_full_disk_stops_writes_cleanly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node {
        child: None,
        port: common::free_port(),
        data_dir: Some(data.clone()),
        cwd: None,
        env: vec![],
        log: dir.path().join("node.log"),
        file_size_limit_blocks: Some(LIMIT_BLOCKS),
    };
    node.spawn();
    node.wait_ready();

    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (acked, refusals, base) = (acked.clone(), refusals.clone(), node.url("/v1/kv"));
            thread::spawn(move || {
                for n in 0..MAX_WRITES {
                    let key = format!("w{w}/{n:05}");
                    let value = format!("{key}:").into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>();
                    let (status, body) = http("PUT", &format!("{base}/{key}"), Some(value.clone()));
                    if status == 200 {
                        acked.lock().unwrap().insert(key, value);
                    } else {
                        refusals.lock().unwrap().push((status, String::from_utf8_lossy(&body).into_owned()));
                        return;
                    }
                }
            })
        })
        .collect();
    for t in writers {
        t.join().expect("a writer panicked: the node stopped answering");
    }
    let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
    let refusals = refusals.lock().unwrap().clone();

    assert_eq!(refusals.len(), WRITERS, "every writer must hit the full disk (limit {LIMIT_BLOCKS} blocks); acked {}", acked.len());
    assert!(!acked.is_empty(), "nothing was acknowledged before the disk filled");
    for (status, body) in &refusals {
        assert_eq!(*status, 503, "a write on a full disk must answer 503, got {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(body).expect("the refusal is a JSON error");
        assert_eq!(v["error"]["code"], "unavailable", "{body}");
    }
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the node exited on a full disk:\n{}", node.log_text());

    // Still running: health says why it takes no writes, and reads go on.
    let (status, body) = http("GET", &node.url("/health"), None);
    let health = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "health must report the failure: {health}");
    assert!(health.contains("failed"), "{health}");
    let (status, _) = http("PUT", &node.url("/v1/kv/after-full"), Some(b"x".to_vec()));
    assert_eq!(status, 503, "a write after the failure must be refused too");
    for (key, value) in acked.iter().take(50) {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!((status, &body), (200, value), "read of {key} on the full node");
    }
    let log = node.log_text();
    assert!(log.contains("File too large"), "the log must name the I/O error:\n{log}");
    assert_eq!(log.matches("stops taking writes").count(), 1, "say it once, not per refused batch:\n{log}");

    // Room again: every acknowledged write is there, and writes are taken.
    node.kill9();
    node.file_size_limit_blocks = None;
    node.restart();
    for (key, value) in &acked {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!(status, 200, "acknowledged {key} lost after the disk filled");
        assert_eq!(&body, value, "acknowledged {key} has another value");
    }
    let (status, body) = http("PUT", &node.url("/v1/kv/after-restart"), Some(b"y".to_vec()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    println!("acknowledged {} writes before the disk filled; all present after the restart", acked.len());
}
